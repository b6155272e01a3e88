//! Durable state through the real broker: `kill -9` in the middle of 200,000
//! events (a stream-stream join plus a dimension, four partitions) loses no
//! output; a restart resumes from the state checkpoint instead of re-reading;
//! a dimension of 1,000,000 keys joins correctly under a memory budget far
//! smaller than it; and a state directory that is not kaflowsql's stops the
//! process before it starts, untouched.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;

use std::process::Command;
use std::time::{Duration, Instant};

use kaflowsql::config::Pipeline;
use kaflowsql::engine::Engine;
use kaflowsql::testing::{run, Recorded};
use support::{create_topics, producer, read_topic, require_broker, unique, Kaflowsql};

const T0: i64 = 1_700_000_000_000;

/// Orders joined with their payments and enriched with the customer's tier.
fn pipeline_text(suffix: &str) -> String {
    format!(
        "name: paid_orders_{suffix}
query: |
  SELECT o.order_id, o.customer_id, c.tier, o.total, p.payment_id, p.amount
  FROM orders_{suffix} o
  JOIN payments_{suffix} p ON o.order_id = p.order_id
  LEFT JOIN customers_{suffix} c ON o.customer_id = c.customer_id
output:
  topic: paid_orders_{suffix}
  key: order_id
emission:
  type: immediate
state:
  events:
    default_ttl: 1h
  dimensions:
    - customers_{suffix}
"
    )
}

fn rec(topic: String, partition: i32, key: String, value: String, ts: i64) -> (Recorded, i32) {
    (
        Recorded {
            topic,
            partition: 0,
            offset: 0,
            timestamp: ts,
            key: Some(key.into_bytes()),
            value: Some(value.into_bytes()),
        },
        partition,
    )
}

fn count_lines(out: &[support::Received]) -> HashMap<String, i64> {
    let mut counts = HashMap::new();
    for r in out {
        let v: serde_json::Value = serde_json::from_str(&r.line()).unwrap();
        *counts.entry(v.to_string()).or_insert(0) += 1;
    }
    counts
}

#[test]
fn kill_9_in_the_middle_of_200k_events_loses_nothing_and_resumes_from_state() {
    require_broker();
    let dir = tempfile::tempdir().unwrap();
    let suffix = unique("st").replace('-', "_");
    let file = dir.path().join("paid_orders.yaml");
    std::fs::write(&file, pipeline_text(&suffix)).unwrap();
    let (orders, payments, customers, output) = (
        format!("orders_{suffix}"),
        format!("payments_{suffix}"),
        format!("customers_{suffix}"),
        format!("paid_orders_{suffix}"),
    );
    create_topics(&[(&orders, 4), (&payments, 4), (&customers, 1), (&output, 1)]);

    let n = 100_000;
    let mut records = Vec::new();
    for c in 0..1_000 {
        let v = format!(r#"{{"customer_id":"c{c}","tier":"tier{}"}}"#, c % 5);
        records.push(rec(customers.clone(), 0, format!("c{c}"), v, T0));
    }
    for i in 0..n + 50 {
        if i < n {
            let v = format!(
                r#"{{"order_id":"o{i}","customer_id":"c{}","total":{}.0}}"#,
                i % 1_100,
                i % 300
            );
            records.push(rec(
                orders.clone(),
                (i % 4) as i32,
                format!("o{i}"),
                v,
                T0 + i as i64,
            ));
        }
        if i >= 50 {
            let j = i - 50;
            let v = format!(
                r#"{{"payment_id":"p{j}","order_id":"o{j}","amount":{}.0}}"#,
                j % 300
            );
            records.push(rec(
                payments.clone(),
                (j % 4) as i32,
                format!("o{j}"),
                v,
                T0 + i as i64,
            ));
        }
    }
    let pipeline = Pipeline::load(&file).unwrap();
    let plain: Vec<Recorded> = records.iter().map(|(r, _)| r.clone()).collect();
    let expected = run(&mut Engine::new(&pipeline).unwrap(), &plain)
        .unwrap()
        .lines;
    assert_eq!(expected.len(), n, "every order has one payment");

    let p = producer();
    for (r, partition) in &records {
        p.send(
            &r.topic,
            Some(*partition),
            r.key.as_deref(),
            r.value.as_deref(),
            r.timestamp,
        );
    }
    p.flush();

    // Group mode: this one instance owns all four partitions.
    let first = Kaflowsql::start(dir.path(), &[&file], &[]);
    first.wait_until(Duration::from_secs(120), |k| {
        k.metric("kaflowsql_output_records_total") >= (n / 3) as f64
    });
    let before_kill = first.metric("kaflowsql_output_records_total");
    first.kill9();

    let started = Instant::now();
    let second = Kaflowsql::start(dir.path(), &[&file], &[]);
    let restore_log = second.log_text();
    let out = read_topic(&output, n, Duration::from_secs(2), Duration::from_secs(180));
    let mut counts = count_lines(&out);
    let mut missing = 0;
    for e in &expected {
        let v: serde_json::Value = serde_json::from_str(e).unwrap();
        match counts.get_mut(&v.to_string()) {
            Some(c) if *c > 0 => *c -= 1,
            _ => missing += 1,
        }
    }
    let extra: i64 = counts.values().sum();
    let reprocessed = second.metric("kaflowsql_events_processed_total");
    println!(
        "crash test: {n} expected, {} read, {missing} missing, {extra} duplicates (at-least-once); \
         {before_kill} outputs before kill -9; after restart {reprocessed} events processed, \
         all outputs read {:?} after the restart",
        out.len(),
        started.elapsed()
    );
    assert_eq!(missing, 0, "no expected output is lost");
    assert!(
        restore_log.contains("State restored."),
        "the restart restores state:\n{restore_log}"
    );
    assert!(
        reprocessed < (2 * n) as f64,
        "the restart resumes from the checkpoint, not from the start ({reprocessed} events re-read)"
    );
    assert!(second.terminate().success());
}

#[test]
fn a_million_key_dimension_joins_correctly_under_a_small_memory_budget() {
    require_broker();
    let dir = tempfile::tempdir().unwrap();
    let suffix = unique("big").replace('-', "_");
    let root = support::repo_root();
    let (local, renames) =
        support::localize(&root.join("pipelines/trades.yaml"), dir.path(), &suffix);
    let (trades, symbols, traders, output) = (
        renames["trades"].clone(),
        renames["dim_symbols"].clone(),
        renames["dim_traders"].clone(),
        renames["enriched_trades"].clone(),
    );
    create_topics(&[(&trades, 1), (&symbols, 1), (&traders, 1), (&output, 1)]);
    let keys = 1_000_000u64;
    let p = producer();
    for s in 0..keys {
        let v = format!(
            r#"{{"symbol":"S{s}","name":"Company {s}","sector":"sector{}"}}"#,
            s % 11
        );
        p.send(
            &symbols,
            Some(0),
            Some(format!("S{s}").as_bytes()),
            Some(v.as_bytes()),
            T0,
        );
    }
    p.send(
        &traders,
        Some(0),
        Some(b"T1"),
        Some(br#"{"trader_id":"T1","desk":"D","region":"EU"}"#),
        T0,
    );
    p.flush();

    // About 150 MB of dimension state in memory without a budget; 8 MB allowed.
    let config_extra = "state:\n  memory: 8MB\n";
    let k = Kaflowsql::start_with_config(dir.path(), "state", &[&local], config_extra);
    let trades_n = 5_000u64;
    let mut expected = HashMap::new();
    for i in 0..trades_n {
        // Spread over the whole key space, plus some symbols with no record.
        let s = (i * 7_919) % (keys + keys / 20);
        let v =
            format!(r#"{{"trade_id":{i},"symbol":"S{s}","trader_id":"T1","qty":1,"price":2.0}}"#);
        p.send(
            &trades,
            Some(0),
            Some(format!("S{s}").as_bytes()),
            Some(v.as_bytes()),
            T0 + i as i64,
        );
        let company = (s < keys).then(|| format!("Company {s}"));
        expected.insert(i, company);
    }
    p.flush();
    let out = read_topic(
        &output,
        trades_n as usize,
        Duration::from_secs(2),
        Duration::from_secs(300),
    );
    assert_eq!(out.len() as u64, trades_n, "one output per trade");
    let mut wrong = 0;
    for r in &out {
        let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
        let id = v["trade_id"].as_u64().unwrap();
        let company = v["company"].as_str().map(str::to_string);
        if expected.get(&id) != Some(&company) {
            wrong += 1;
        }
    }
    let entries = k.metric("kaflowsql_state_entries_total");
    let bytes = k.metric("kaflowsql_state_size_bytes");
    let rss = k.metric("kaflowsql_memory_usage_bytes");
    println!(
        "budget test: {} trades joined against {keys} keys, {wrong} wrong; in memory {entries} entries, \
         {bytes} bytes of state; RSS {:.0} MB",
        out.len(),
        rss / 1e6
    );
    assert_eq!(
        wrong, 0,
        "every trade is enriched with its own symbol's record"
    );
    assert!(
        entries < (keys / 4) as f64,
        "most dimension records stay on disk ({entries} in memory)"
    );
    assert!(k.terminate().success());
}

#[test]
fn a_foreign_state_directory_stops_the_process_before_it_starts() {
    require_broker();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("precious.db"), "not kaflowsql's").unwrap();
    let root = support::repo_root();
    let out = Command::new(env!("CARGO_BIN_EXE_kaflowsql"))
        .arg("run")
        .arg(root.join("pipelines/trades.yaml"))
        .env("KAFLOWSQL_STATE_ROCKSDB_PATH", &state)
        .env(
            "KAFLOWSQL_HTTP_LISTEN",
            format!("127.0.0.1:{}", support::free_port()),
        )
        .env("KAFLOWSQL_KAFKA_BROKERS", support::brokers())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("is not a kaflowsql state directory") && stderr.contains("help:"),
        "{stderr}"
    );
    let names: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["precious.db"], "nothing was written");
}

#[test]
fn expired_records_are_not_joined_after_a_restart_and_compaction_removes_them() {
    require_broker();
    let dir = tempfile::tempdir().unwrap();
    let suffix = unique("ttl").replace('-', "_");
    let root = support::repo_root();
    let (local, renames) =
        support::localize(&root.join("pipelines/orders.yaml"), dir.path(), &suffix);
    let (orders, payments, output) = (
        renames["orders"].clone(),
        renames["payments"].clone(),
        renames["paid_orders"].clone(),
    );
    create_topics(&[(&orders, 1), (&payments, 1), (&output, 1)]);
    let minute = 60_000;
    let p = producer();
    for i in 0..500 {
        let v = format!(r#"{{"order_id":"old{i}","customer_id":"c","total":1.0}}"#);
        p.send(
            &orders,
            Some(0),
            Some(format!("old{i}").as_bytes()),
            Some(v.as_bytes()),
            T0,
        );
    }
    // Eleven minutes later (the TTL is ten): the old orders expire.
    let late = r#"{"order_id":"late","customer_id":"c","total":1.0}"#;
    p.send(
        &orders,
        Some(0),
        Some(b"late"),
        Some(late.as_bytes()),
        T0 + 11 * minute,
    );
    p.flush();
    let k = Kaflowsql::start(dir.path(), &[&local], &[]);
    k.wait_until(Duration::from_secs(60), |k| {
        k.metric("kaflowsql_events_processed_total") >= 501.0
    });
    k.wait_until(Duration::from_secs(30), |k| {
        k.metric("kaflowsql_state_evictions_total") >= 500.0
    });
    assert!(k.terminate().success());

    let state = dir.path().join("state");
    let inspect = || {
        let out = Command::new(env!("CARGO_BIN_EXE_kaflowsql"))
            .args(["state", "inspect"])
            .env("KAFLOWSQL_STATE_ROCKSDB_PATH", &state)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.starts_with("paid_orders") && l.contains("/o "))
            .unwrap_or_else(|| panic!("no orders line in:\n{text}"))
            .to_string();
        let n: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        (n[0], n[2], text)
    };
    let (entries, expired, text) = inspect();
    println!("before compaction:\n{text}");
    assert!(
        entries >= 500 && expired >= 500,
        "expired records wait for compaction:\n{text}"
    );

    // After a restart the expired orders are not joined.
    let k = Kaflowsql::start(dir.path(), &[&local], &[]);
    let pay = r#"{"payment_id":"p1","order_id":"old1","amount":1.0,"method":"card"}"#;
    let pay_late = r#"{"payment_id":"p2","order_id":"late","amount":1.0,"method":"card"}"#;
    p.send(
        &payments,
        Some(0),
        Some(b"old1"),
        Some(pay.as_bytes()),
        T0 + 11 * minute,
    );
    p.send(
        &payments,
        Some(0),
        Some(b"late"),
        Some(pay_late.as_bytes()),
        T0 + 11 * minute,
    );
    p.flush();
    let out = read_topic(&output, 1, Duration::from_secs(3), Duration::from_secs(60));
    let ids: Vec<String> = out
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.value).unwrap()["order_id"].to_string()
        })
        .collect();
    assert_eq!(ids, vec!["\"late\""], "only the live order joins");
    assert!(k.terminate().success());

    let out = Command::new(env!("CARGO_BIN_EXE_kaflowsql"))
        .args(["state", "compact"])
        .env("KAFLOWSQL_STATE_ROCKSDB_PATH", &state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (entries, expired, text) = inspect();
    println!("after compaction:\n{text}");
    assert_eq!(
        (entries, expired),
        (1, 0),
        "only the live order is left on disk:\n{text}"
    );
}
