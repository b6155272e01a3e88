//! Delivery guarantees on the real broker, with the stream-stream join of
//! `pipelines/orders.yaml` (its state pins offsets until records expire):
//! static partition mode, a consumer group losing a member, and `kill -9`
//! in the middle of a run. No expected output may be missing; duplicates are
//! allowed (at-least-once) and reported.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kaflowsql::config::Pipeline;
use kaflowsql::engine::Engine;
use kaflowsql::testing::{run, Recorded};
use support::{create_topics, localize, producer, read_topic, require_broker, unique, Kaflowsql};

struct Setup {
    _dir: tempfile::TempDir,
    local: PathBuf,
    renames: std::collections::BTreeMap<String, String>,
    output: String,
    expected: Vec<String>,
    records: Vec<(Recorded, i32)>,
}

/// Orders and their payments (payment i follows order i+5), on `partitions` partitions.
fn setup(orders: usize, partitions: i32) -> Setup {
    require_broker();
    let root = support::repo_root();
    let file = root.join("pipelines/orders.yaml");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut records = Vec::new();
    let order = |i: usize| Recorded {
        topic: "orders".into(),
        partition: 0,
        offset: 0,
        timestamp: now + i as i64,
        key: Some(format!("o{i}").into_bytes()),
        value: Some(
            format!(
                r#"{{"order_id":"o{i}","customer_id":"c{}","total":{}.0}}"#,
                i % 50,
                i % 300
            )
            .into_bytes(),
        ),
    };
    let payment = |i: usize| Recorded {
        topic: "payments".into(),
        partition: 0,
        offset: 0,
        timestamp: now + i as i64 + 5,
        key: Some(format!("o{i}").into_bytes()),
        value: Some(
            format!(
                r#"{{"payment_id":"p{i}","order_id":"o{i}","amount":{}.0,"method":"card"}}"#,
                i % 300
            )
            .into_bytes(),
        ),
    };
    for i in 0..orders + 5 {
        if i < orders {
            records.push((order(i), (i % partitions as usize) as i32));
        }
        if i >= 5 {
            let j = i - 5;
            records.push((payment(j), (j % partitions as usize) as i32));
        }
    }
    let pipeline = Pipeline::load(&file).unwrap();
    let mut engine = Engine::new(&pipeline).unwrap();
    let plain: Vec<Recorded> = records.iter().map(|(r, _)| r.clone()).collect();
    let expected = run(&mut engine, &plain).unwrap().lines;
    assert_eq!(expected.len(), orders, "every order has one payment");

    let dir = tempfile::tempdir().unwrap();
    let suffix = unique("dl").replace('-', "_");
    let (local, renames) = localize(&file, dir.path(), &suffix);
    let output = renames["paid_orders"].clone();
    create_topics(&[
        (&renames["orders"], partitions),
        (&renames["payments"], partitions),
        (&output, 1),
    ]);
    Setup {
        _dir: dir,
        local,
        renames,
        output,
        expected,
        records,
    }
}

impl Setup {
    fn produce(&self, range: std::ops::Range<usize>) {
        let p = producer();
        for (r, partition) in &self.records[range] {
            p.send(
                &self.renames[&r.topic],
                Some(*partition),
                r.key.as_deref(),
                r.value.as_deref(),
                r.timestamp,
            );
        }
        p.flush();
    }

    fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// Reads the output; asserts nothing expected is missing; returns the duplicate count.
    fn check(&self, name: &str, exact: bool) -> usize {
        let out = read_topic(
            &self.output,
            self.expected.len(),
            Duration::from_secs(1),
            Duration::from_secs(90),
        );
        let mut counts: HashMap<String, i64> = HashMap::new();
        for r in &out {
            let v: serde_json::Value = serde_json::from_str(&r.line()).unwrap();
            *counts.entry(v.to_string()).or_default() += 1;
        }
        let mut missing = 0;
        for e in &self.expected {
            let v: serde_json::Value = serde_json::from_str(e).unwrap();
            match counts.get_mut(&v.to_string()) {
                Some(c) if *c > 0 => *c -= 1,
                _ => missing += 1,
            }
        }
        let extra: i64 = counts.values().sum();
        println!(
            "{name}: {} expected, {} read, {missing} missing, {extra} duplicate or unexpected",
            self.expected.len(),
            out.len()
        );
        assert_eq!(missing, 0, "{name}: expected outputs are missing");
        if exact {
            assert_eq!(
                extra, 0,
                "{name}: no restart happened, so no duplicates are allowed"
            );
        }
        extra as usize
    }
}

#[test]
fn static_partition_mode_two_instances_produce_exactly_the_full_output() {
    let s = setup(2_000, 2);
    let a = Kaflowsql::start(s.dir(), &[&s.local], &["--partition", "0"]);
    let b = Kaflowsql::start(s.dir(), &[&s.local], &["--partition", "1"]);
    s.produce(0..s.records.len());
    let total = s.records.len() as f64;
    a.wait_until(Duration::from_secs(60), |_| {
        a.metric("kaflowsql_events_processed_total") + b.metric("kaflowsql_events_processed_total")
            >= total
    });
    s.check("static partitions", true);
    let half = a.metric("kaflowsql_events_processed_total");
    assert!(
        half > 0.0 && half < total,
        "each instance reads only its partition ({half} of {total})"
    );
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}

#[test]
fn kill_9_mid_run_loses_no_output() {
    let s = setup(15_000, 4);
    s.produce(0..s.records.len());
    let first = Kaflowsql::start(s.dir(), &[&s.local], &[]);
    first.wait_until(Duration::from_secs(60), |k| {
        k.metric("kaflowsql_output_records_total") >= 3_000.0
    });
    first.kill9();
    let second = Kaflowsql::start(s.dir(), &[&s.local], &[]);
    let dups = s.check("kill -9 and restart", false);
    println!("kill -9: {dups} duplicates after restart (at-least-once)");
    assert!(second.terminate().success());
}

#[test]
fn a_group_member_leaving_mid_run_loses_no_output() {
    let s = setup(10_000, 4);
    let a = Kaflowsql::start_named(s.dir(), "state-a", &[&s.local], &[]);
    let b = Kaflowsql::start_named(s.dir(), "state-b", &[&s.local], &[]);
    s.produce(0..s.records.len() / 2);
    b.wait_until(Duration::from_secs(60), |_| {
        a.metric("kaflowsql_events_processed_total") + b.metric("kaflowsql_events_processed_total")
            >= 2_000.0
    });
    assert!(
        b.terminate().success(),
        "a member leaving drains and exits 0"
    );
    s.produce(s.records.len() / 2..s.records.len());
    let dups = s.check("group member leaves", false);
    println!("group: {dups} duplicates after the rebalance (at-least-once)");
    assert!(a.terminate().success());
}

#[test]
fn sigterm_commits_everything_delivered_so_a_restart_repeats_nothing() {
    // SIGTERM drains, writes the last state checkpoint and commits every
    // delivered record; the restart resumes the dimensions from the
    // checkpoint instead of reading them from the beginning.
    require_broker();
    let root = support::repo_root();
    let dir = tempfile::tempdir().unwrap();
    let suffix = unique("term").replace('-', "_");
    let (local, renames) = localize(&root.join("pipelines/trades.yaml"), dir.path(), &suffix);
    create_topics(&[
        (&renames["trades"], 2),
        (&renames["dim_symbols"], 1),
        (&renames["dim_traders"], 1),
        (&renames["enriched_trades"], 1),
    ]);
    let p = producer();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for s in ["AAPL", "MSFT"] {
        let v = format!(r#"{{"symbol":"{s}","name":"{s} Inc.","sector":"Tech"}}"#);
        p.send(
            &renames["dim_symbols"],
            None,
            Some(s.as_bytes()),
            Some(v.as_bytes()),
            now,
        );
    }
    p.send(
        &renames["dim_traders"],
        None,
        Some(b"T1"),
        Some(br#"{"trader_id":"T1","desk":"D","region":"EU"}"#),
        now,
    );
    for i in 0..1_000 {
        let sym = if i % 2 == 0 { "AAPL" } else { "MSFT" };
        let v = format!(
            r#"{{"trade_id":{i},"symbol":"{sym}","trader_id":"T1","qty":{i},"price":1.5}}"#
        );
        p.send(
            &renames["trades"],
            Some(i % 2),
            Some(sym.as_bytes()),
            Some(v.as_bytes()),
            now + i as i64,
        );
    }
    p.flush();
    let first = Kaflowsql::start(dir.path(), &[&local], &[]);
    first.wait_until(Duration::from_secs(60), |k| {
        k.metric("kaflowsql_output_records_total") >= 1_000.0
    });
    assert_eq!(first.metric("kaflowsql_join_hit_rate"), 1.0);
    assert!(first.terminate().success());
    let second = Kaflowsql::start(dir.path(), &[&local], &[]);
    // Give the group time to assign partitions (Tansu: about half the session timeout).
    std::thread::sleep(Duration::from_secs(5));
    let reread = second.metric("kaflowsql_events_processed_total");
    let repeated = second.metric("kaflowsql_output_records_total");
    assert!(second.terminate().success());
    println!("restart after SIGTERM: {reread} records read again, {repeated} outputs repeated");
    assert_eq!(
        reread, 0.0,
        "nothing is read again: events resume from the commit, dimensions from the state checkpoint"
    );
    assert_eq!(repeated, 0.0);
    let out = read_topic(
        &renames["enriched_trades"],
        1_000,
        Duration::from_millis(500),
        Duration::from_secs(30),
    );
    assert_eq!(out.len(), 1_000);
}
