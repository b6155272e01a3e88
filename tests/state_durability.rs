//! Durable state on real RocksDB, without Kafka: a pipeline stopped and
//! restarted (cleanly, or crashed with state written past its checkpoint)
//! gives the same output as one uninterrupted run; a memory budget far
//! smaller than the state gives the same output as no budget; expired
//! records are not joined after a restart and leave the disk on compaction;
//! foreign, locked, damaged and outdated state directories are refused
//! without being changed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kaflowsql::config::{ByteSize, Pipeline, RocksDbConfig, StateConfig};
use kaflowsql::engine::{Engine, Outputs, RestoreReport, SourceRecord};
use kaflowsql::store::{StateDb, StoreError};
use kaflowsql::testing::{output_line, run, Recorded};

fn root() -> PathBuf {
    std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    )
}

fn pipeline(name: &str) -> Pipeline {
    Pipeline::load(&root().join("pipelines").join(name)).unwrap()
}

fn config(dir: &Path, memory: Option<u64>) -> StateConfig {
    StateConfig {
        rocksdb: RocksDbConfig {
            path: Some(dir.to_path_buf()),
            ..RocksDbConfig::default()
        },
        memory: memory.map(ByteSize),
        ttl: None,
    }
}

/// A tiny deterministic generator (no dependency, same data on every run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn record(topic: &str, partition: i32, key: &str, value: String, ts: i64) -> Recorded {
    Recorded {
        topic: topic.into(),
        partition,
        offset: 0,
        timestamp: ts,
        key: Some(key.as_bytes().to_vec()),
        value: Some(value.into_bytes()),
    }
}

/// Numbers offsets per (topic, partition) in list order, as Kafka would.
fn with_offsets(mut records: Vec<Recorded>) -> Vec<Recorded> {
    let mut next: HashMap<(String, i32), i64> = HashMap::new();
    for r in &mut records {
        let o = next.entry((r.topic.clone(), r.partition)).or_insert(0);
        r.offset = *o;
        *o += 1;
    }
    records
}

/// Orders and payments (payment i follows order i+5), `keys` apart in time by `gap_ms`.
fn orders(n: usize, gap_ms: i64, seed: u64) -> Vec<Recorded> {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    let t0 = 1_700_000_000_000;
    for i in 0..n + 5 {
        let part = |j: usize| (j % 4) as i32;
        if i < n {
            let v = format!(
                r#"{{"order_id":"o{i}","customer_id":"c{}","total":{}.0}}"#,
                rng.below(50),
                rng.below(300)
            );
            out.push(record(
                "orders",
                part(i),
                &format!("o{i}"),
                v,
                t0 + i as i64 * gap_ms,
            ));
        }
        if i >= 5 {
            let j = i - 5;
            let v = format!(
                r#"{{"payment_id":"p{j}","order_id":"o{j}","amount":{}.0,"method":"card"}}"#,
                rng.below(300)
            );
            out.push(record(
                "payments",
                part(j),
                &format!("o{j}"),
                v,
                t0 + i as i64 * gap_ms + 1,
            ));
        }
    }
    with_offsets(out)
}

/// Trades against two dimensions, with dimension updates along the way
/// (only before `updates_until`, so a crash window never holds one).
fn trades(n: usize, symbols: usize, seed: u64, updates_until: usize) -> Vec<Recorded> {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    let t0 = 1_700_000_000_000;
    for s in 0..symbols {
        let v = format!(
            r#"{{"symbol":"S{s}","name":"Company {s}","sector":"sector{}"}}"#,
            s % 7
        );
        out.push(record("dim_symbols", 0, &format!("S{s}"), v, t0));
    }
    for d in 0..20 {
        let v = format!(
            r#"{{"trader_id":"T{d}","desk":"desk{}","region":"R{}"}}"#,
            d % 3,
            d % 2
        );
        out.push(record("dim_traders", 0, &format!("T{d}"), v, t0));
    }
    for i in 0..n {
        if i < updates_until && rng.below(20) == 0 {
            let s = rng.below(symbols as u64);
            let v = format!(r#"{{"symbol":"S{s}","name":"Renamed {s} at {i}","sector":"x"}}"#);
            out.push(record("dim_symbols", 0, &format!("S{s}"), v, t0 + i as i64));
        }
        // One symbol in ten has no dimension record (a LEFT JOIN miss).
        let s = rng.below(symbols as u64 + symbols as u64 / 10);
        let v = format!(
            r#"{{"trade_id":{i},"symbol":"S{s}","trader_id":"T{}","qty":{},"price":{}.5}}"#,
            rng.below(25),
            rng.below(1000),
            rng.below(500)
        );
        out.push(record(
            "trades",
            (s % 4) as i32,
            &format!("S{s}"),
            v,
            t0 + i as i64,
        ));
    }
    with_offsets(out)
}

/// User events (smart emission) with profiles arriving late for some users
/// and transactions; profiles only before `profiles_until`.
fn user_events(n: usize, seed: u64, profiles_until: usize) -> Vec<Recorded> {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    let t0 = 1_700_000_000_000;
    for i in 0..n {
        let ts = t0 + i as i64 * 100;
        let u = rng.below(60);
        let p = (u % 4) as i32;
        match rng.below(10) {
            0 if i < profiles_until => {
                let v = format!(
                    r#"{{"user_id":"u{u}","plan":"plan{}","country":"C{}"}}"#,
                    i % 3,
                    u % 5
                );
                out.push(record("user_profiles", 0, &format!("u{u}"), v, ts));
            }
            1 | 2 => {
                let v = format!(r#"{{"user_id":"u{u}","amount":{}.25}}"#, rng.below(100));
                out.push(record("transactions", p, &format!("u{u}"), v, ts));
            }
            _ => {
                let kind = ["click", "view", "heartbeat", "buy"][rng.below(4) as usize];
                let v = format!(r#"{{"user_id":"u{u}","event_type":"{kind}","ts":{ts}}}"#);
                out.push(record("user_events", p, &format!("u{u}"), v, ts));
            }
        }
    }
    with_offsets(out)
}

/// A stop in a run: at record `at` the outputs so far are delivered and a
/// checkpoint is written; then `crash_window` more records are processed
/// (state written, outputs lost) before the process dies.
#[derive(Clone, Copy)]
struct Stop {
    at: usize,
    crash_window: usize,
}

struct Instance {
    engine: Engine,
    db: Arc<StateDb>,
    resume: HashMap<(String, i32), i64>,
    report: RestoreReport,
}

fn open(p: &Pipeline, dir: &Path, memory: Option<u64>) -> Instance {
    let db = StateDb::open(&config(dir, memory)).unwrap();
    let mut engine = Engine::new(p).unwrap().with_batch_rows(64);
    let store = db
        .pipeline(&p.name, &engine.fingerprint(p), &engine.stored_sources())
        .unwrap();
    let (restored, report) = engine.attach_store(store, db.memory_budget()).unwrap();
    Instance {
        engine,
        db,
        resume: restored.offsets,
        report,
    }
}

fn push(i: &mut Instance, r: &Recorded, out: &mut Outputs, next: &mut HashMap<(String, i32), i64>) {
    next.insert((r.topic.clone(), r.partition), r.offset + 1);
    if i.resume
        .get(&(r.topic.clone(), r.partition))
        .is_some_and(|&o| r.offset < o)
    {
        return;
    }
    i.engine
        .push(
            &SourceRecord {
                topic: &r.topic,
                partition: r.partition,
                offset: r.offset,
                timestamp: r.timestamp,
                key: r.key.as_deref(),
                value: r.value.as_deref(),
            },
            out,
        )
        .unwrap();
}

fn lines(out: &Outputs) -> Vec<String> {
    out.rows
        .iter()
        .map(|r| output_line(out.key(r), out.value(r)))
        .collect()
}

/// Runs `records` with the given stops; returns every delivered output line
/// and what the restarts restored (summed).
fn run_with_stops(
    p: &Pipeline,
    records: &[Recorded],
    stops: &[Stop],
    memory: Option<u64>,
) -> (Vec<String>, RestoreReport) {
    let mut restored = RestoreReport::default();
    let dir = tempfile::tempdir().unwrap();
    let mut delivered = Vec::new();
    let mut next: HashMap<(String, i32), i64> = HashMap::new();
    let mut pos = 0;
    let mut inst = open(p, dir.path(), memory);
    for stop in stops {
        let mut out = Outputs::default();
        for r in &records[pos..stop.at] {
            push(&mut inst, r, &mut out, &mut next);
        }
        inst.engine.flush(&mut out).unwrap();
        delivered.extend(lines(&out));
        let checkpoint = inst.engine.checkpoint(next.clone());
        inst.engine.commit_checkpoint(&checkpoint).unwrap();
        let mut lost = Outputs::default();
        let mut after = next.clone();
        for r in &records[stop.at..(stop.at + stop.crash_window).min(records.len())] {
            push(&mut inst, r, &mut lost, &mut after);
        }
        inst.engine.flush(&mut lost).unwrap();
        drop(inst);
        inst = open(p, dir.path(), memory);
        restored.loaded += inst.report.loaded;
        restored.on_disk += inst.report.on_disk;
        restored.replayed += inst.report.replayed;
        restored.held += inst.report.held;
        pos = stop.at;
    }
    let mut out = Outputs::default();
    for r in &records[pos..] {
        push(&mut inst, r, &mut out, &mut next);
    }
    inst.engine.flush(&mut out).unwrap();
    delivered.extend(lines(&out));
    drop(inst);
    (delivered, restored)
}

fn offline(p: &Pipeline, records: &[Recorded]) -> Vec<String> {
    let mut engine = Engine::new(p).unwrap();
    run(&mut engine, records).unwrap().lines
}

fn assert_same_multiset(name: &str, expected: &[String], actual: &[String]) {
    let canon = |v: &[String]| {
        let mut c: Vec<String> = v
            .iter()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .unwrap()
                    .to_string()
            })
            .collect();
        c.sort();
        c
    };
    let (e, a) = (canon(expected), canon(actual));
    assert!(!e.is_empty(), "{name}: the scenario produces output");
    let mut missing = e.clone();
    let mut extra = Vec::new();
    for l in &a {
        match missing.iter().position(|m| m == l) {
            Some(i) => {
                missing.swap_remove(i);
            }
            None => extra.push(l.clone()),
        }
    }
    if !missing.is_empty() || !extra.is_empty() {
        eprintln!(
            "{name}: missing {:?}\nextra {:?}",
            &missing[..missing.len().min(5)],
            &extra[..extra.len().min(5)]
        );
    }
    assert_eq!(
        e.len(),
        a.len(),
        "{name}: {} expected rows, {} delivered",
        e.len(),
        a.len()
    );
    assert!(
        e == a,
        "{name}: delivered rows differ from an uninterrupted run"
    );
}

#[test]
fn stream_stream_join_survives_clean_restarts_and_crashes() {
    let p = pipeline("orders.yaml");
    let records = orders(3_000, 10, 7);
    let expected = offline(&p, &records);
    assert_eq!(expected.len(), 3_000);
    let clean = [
        Stop {
            at: 1_000,
            crash_window: 0,
        },
        Stop {
            at: 4_100,
            crash_window: 0,
        },
    ];
    let (out, r) = run_with_stops(&p, &records, &clean, None);
    assert_same_multiset("clean restarts", &expected, &out);
    assert!(r.loaded > 0 && r.replayed == 0, "{r:?}");
    let crashes = [
        Stop {
            at: 777,
            crash_window: 500,
        },
        Stop {
            at: 2_500,
            crash_window: 1_200,
        },
        Stop {
            at: 5_000,
            crash_window: 3,
        },
    ];
    let (out, r) = run_with_stops(&p, &records, &crashes, None);
    assert_same_multiset("crashes", &expected, &out);
    assert!(
        r.replayed > 0,
        "records written past the checkpoint are dropped on restore: {r:?}"
    );
}

#[test]
fn dimension_enrichment_survives_restarts_and_crashes() {
    let p = pipeline("trades.yaml");
    let records = trades(6_000, 300, 11, 2_500);
    let expected = offline(&p, &records);
    let stops = [
        Stop {
            at: 1_500,
            crash_window: 0,
        },
        Stop {
            at: 3_400,
            crash_window: 900,
        },
        Stop {
            at: 5_000,
            crash_window: 400,
        },
    ];
    let (out, r) = run_with_stops(&p, &records, &stops, None);
    assert_same_multiset("trades", &expected, &out);
    assert!(
        r.loaded >= 3 * 300,
        "dimensions restored at each restart: {r:?}"
    );
}

#[test]
fn held_smart_emission_events_survive_restarts_and_crashes() {
    let p = pipeline("user_events.yaml");
    let records = user_events(6_000, 5, 2_000);
    let expected = offline(&p, &records);
    let stops = [
        Stop {
            at: 900,
            crash_window: 0,
        },
        Stop {
            at: 2_600,
            crash_window: 700,
        },
        Stop {
            at: 4_100,
            crash_window: 1_500,
        },
    ];
    let (out, r) = run_with_stops(&p, &records, &stops, None);
    assert_same_multiset("user events", &expected, &out);
    assert!(r.held > 0, "held events restored: {r:?}");
}

#[test]
fn a_tiny_memory_budget_gives_the_same_joins_as_an_unlimited_one() {
    // 64 KiB: a small fraction of the state (hundreds of KiB) must stay in memory.
    let budget = Some(64 * 1024);
    let p = pipeline("trades.yaml");
    let records = trades(8_000, 2_000, 3, 8_000);
    let expected = offline(&p, &records);
    let stops = [Stop {
        at: 4_000,
        crash_window: 0,
    }];
    let (out, r) = run_with_stops(&p, &records, &stops, budget);
    assert_same_multiset("trades, tiny budget", &expected, &out);
    assert!(
        r.on_disk > r.loaded,
        "most state stays on disk at restart: {r:?}"
    );
    let p = pipeline("orders.yaml");
    let records = orders(4_000, 10, 9);
    let expected = offline(&p, &records);
    let stops = [Stop {
        at: 3_000,
        crash_window: 800,
    }];
    let (out, r) = run_with_stops(&p, &records, &stops, budget);
    assert_same_multiset("orders, tiny budget", &expected, &out);
    assert!(
        r.on_disk > r.loaded,
        "most state stays on disk at restart: {r:?}"
    );
}

#[test]
fn a_budget_keeps_hot_state_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline("trades.yaml");
    let budget = 256 * 1024;
    let mut inst = open(&p, dir.path(), Some(budget * 4 / 3));
    let records = trades(0, 20_000, 1, 0);
    let mut out = Outputs::default();
    let mut next = HashMap::new();
    for r in &records {
        push(&mut inst, r, &mut out, &mut next);
    }
    inst.engine.flush(&mut out).unwrap();
    let held = inst.engine.state_memory();
    assert!(
        held <= budget,
        "hot state {held} bytes exceeds the {budget}-byte budget"
    );
    let entries: u64 = inst
        .engine
        .state_stats()
        .iter()
        .map(|(_, _, s)| s.entries)
        .sum();
    assert!(
        entries < 20_000,
        "some of the 20,020 dimension records left memory ({entries} held)"
    );
    let on_disk: u64 = inst
        .db
        .inspect(Some(&p.name))
        .unwrap()
        .iter()
        .map(|f| f.entries())
        .sum();
    assert_eq!(on_disk, 20_020, "every record is on disk");
}

#[test]
fn expired_records_are_not_joined_after_a_restart_and_leave_the_disk() {
    let p = pipeline("orders.yaml");
    let dir = tempfile::tempdir().unwrap();
    let t0 = 1_700_000_000_000i64;
    let minute = 60_000;
    let mut records = Vec::new();
    for i in 0..100 {
        let v = format!(r#"{{"order_id":"old{i}","customer_id":"c","total":1.0}}"#);
        records.push(record("orders", 0, &format!("old{i}"), v, t0));
    }
    let records = with_offsets(records);
    let mut inst = open(&p, dir.path(), None);
    let mut out = Outputs::default();
    let mut next = HashMap::new();
    for r in &records {
        push(&mut inst, r, &mut out, &mut next);
    }
    // Event time of their partition moves 11 minutes on (the TTL is 10):
    // the old orders expire.
    let mut late = record(
        "orders",
        0,
        "new",
        r#"{"order_id":"new","customer_id":"c","total":1.0}"#.into(),
        t0 + 11 * minute,
    );
    late.offset = 100;
    push(&mut inst, &late, &mut out, &mut next);
    inst.engine.flush(&mut out).unwrap();
    let checkpoint = inst.engine.checkpoint(next.clone());
    inst.engine.commit_checkpoint(&checkpoint).unwrap();
    let evicted = inst.engine.stats().evictions;
    drop(inst);

    let mut inst = open(&p, dir.path(), None);
    let mut out = Outputs::default();
    let payment = with_offsets(vec![record(
        "payments",
        0,
        "old1",
        r#"{"payment_id":"p","order_id":"old1","amount":1.0,"method":"card"}"#.into(),
        t0 + 11 * minute,
    )]);
    push(&mut inst, &payment[0], &mut out, &mut next);
    inst.engine.flush(&mut out).unwrap();
    assert!(
        out.rows.is_empty(),
        "an expired order is not joined after a restart"
    );
    let db = inst.db.clone();
    drop(inst);
    let before: u64 = db
        .inspect(Some(&p.name))
        .unwrap()
        .iter()
        .map(|f| f.entries())
        .sum();
    db.compact().unwrap();
    let after: u64 = db
        .inspect(Some(&p.name))
        .unwrap()
        .iter()
        .map(|f| f.entries())
        .sum();
    println!("evictions counted before restart: {evicted}; on disk: {before} before compaction, {after} after");
    assert!(evicted >= 100, "expiry counted in memory ({evicted})");
    assert!(
        before >= 100,
        "expired records wait on disk for compaction ({before})"
    );
    assert_eq!(
        after, 2,
        "compaction removes the 100 expired orders; `new` and the payment stay"
    );
}

#[test]
fn foreign_locked_damaged_and_outdated_directories_are_refused_untouched() {
    // Foreign: a non-empty directory without the marker.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    let e = StateDb::open(&config(dir.path(), None)).unwrap_err();
    assert!(matches!(e, StoreError::Foreign { .. }), "{e}");
    assert!(e.to_string().contains("help:"), "{e}");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["notes.txt"], "nothing was written");

    // Locked: a second open of a directory in use.
    let dir = tempfile::tempdir().unwrap();
    let first = StateDb::open(&config(dir.path(), None)).unwrap();
    let e = StateDb::open(&config(dir.path(), None)).unwrap_err();
    assert!(matches!(e, StoreError::Locked { .. }), "{e}");
    drop(first);

    // Outdated: the same pipeline name with other columns.
    let p = pipeline("orders.yaml");
    drop(open(&p, dir.path(), None));
    let changed = Pipeline::parse(
        &root().join("pipelines/orders.yaml"),
        &std::fs::read_to_string(root().join("pipelines/orders.yaml"))
            .unwrap()
            .replace("p.method,", "p.method, p.currency,"),
    )
    .unwrap();
    let db = StateDb::open(&config(dir.path(), None)).unwrap();
    let engine = Engine::new(&changed).unwrap();
    let e = db
        .pipeline(
            &changed.name,
            &engine.fingerprint(&changed),
            &engine.stored_sources(),
        )
        .unwrap_err();
    assert!(matches!(e, StoreError::Version { .. }), "{e}");
    assert!(
        e.to_string().contains("kaflowsql state reset paid_orders"),
        "{e}"
    );
    // Reset clears it; the new version then opens.
    assert!(db.reset(&changed.name).unwrap() > 0);
    db.pipeline(
        &changed.name,
        &engine.fingerprint(&changed),
        &engine.stored_sources(),
    )
    .unwrap();
    drop(db);

    // Damaged: RocksDB's files replaced with garbage.
    let dir = tempfile::tempdir().unwrap();
    drop(StateDb::open(&config(dir.path(), None)).unwrap());
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("MANIFEST") || name == "CURRENT" {
            std::fs::write(&path, b"garbage").unwrap();
        }
    }
    let e = StateDb::open(&config(dir.path(), None)).unwrap_err();
    assert!(matches!(e, StoreError::Open { .. }), "{e}");
    assert!(
        e.to_string().contains("cannot open the state database"),
        "{e}"
    );
}

/// Group mode hands a partition to another member and back: the engine
/// drops the partition's state on revoke (memory, disk and its checkpointed
/// offset), so re-reading it from the committed offset after the
/// assignment back holds each record once, and a later arrival joins once.
#[test]
fn a_partition_revoked_and_assigned_back_is_held_once() {
    let p = pipeline("orders.yaml");
    let dir = tempfile::tempdir().unwrap();
    let now = 1_700_000_000_000;
    let order = |partition: i32, offset: i64, id: &str| Recorded {
        topic: "orders".into(),
        partition,
        offset,
        timestamp: now,
        key: Some(id.as_bytes().to_vec()),
        value: Some(format!(r#"{{"order_id":"{id}","customer_id":"c","total":10}}"#).into_bytes()),
    };
    let payment = |offset: i64, id: &str| Recorded {
        topic: "payments".into(),
        partition: 0,
        offset,
        timestamp: now + 1,
        key: Some(id.as_bytes().to_vec()),
        value: Some(
            format!(
                r#"{{"payment_id":"p{offset}","order_id":"{id}","amount":10,"method":"card"}}"#
            )
            .into_bytes(),
        ),
    };
    let mut i = open(&p, dir.path(), None);
    let (mut out, mut next) = (Outputs::default(), HashMap::new());
    push(&mut i, &order(0, 0, "o1"), &mut out, &mut next);
    push(&mut i, &order(1, 0, "o2"), &mut out, &mut next);
    i.engine.flush(&mut out).unwrap();
    let orders = i.engine.topic_index("orders").unwrap();
    let checkpoint = i.engine.checkpoint(next.clone());
    i.engine.commit_checkpoint(&checkpoint).unwrap();

    // Partition 0 leaves, then comes back: it is read again from offset 0.
    let dropped = i.engine.revoke(&[((orders, 0), "orders")]).unwrap();
    assert_eq!(dropped, 1, "o1 left memory");
    assert_eq!(
        i.engine.oldest_pinned(orders, 0),
        None,
        "its pin went with it"
    );
    assert_eq!(
        i.engine.oldest_pinned(orders, 1),
        Some(0),
        "partition 1 is untouched"
    );
    push(&mut i, &order(0, 0, "o1"), &mut out, &mut next);
    push(&mut i, &payment(0, "o1"), &mut out, &mut next);
    push(&mut i, &payment(1, "o2"), &mut out, &mut next);
    i.engine.flush(&mut out).unwrap();
    let joined = lines(&out);
    assert_eq!(
        joined.iter().filter(|l| l.contains("\"o1\"")).count(),
        1,
        "o1 joins once, not once per copy: {joined:?}"
    );
    assert_eq!(joined.iter().filter(|l| l.contains("\"o2\"")).count(), 1);

    // A partition revoked for good leaves the disk too: a restart of this
    // instance neither restores its records nor skips them on re-read.
    i.engine.revoke(&[((orders, 0), "orders")]).unwrap();
    drop(i);
    let restarted = open(&p, dir.path(), None);
    assert!(
        !restarted.resume.contains_key(&("orders".to_string(), 0)),
        "the checkpointed offset of a revoked partition is gone: {:?}",
        restarted.resume
    );
    assert_eq!(
        restarted.report.loaded, 1,
        "only o2 (partition 1) comes back: {:?}",
        restarted.report
    );
}
