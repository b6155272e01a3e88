//! Join state benchmarks, one thread, no Kafka:
//!
//! 1. `entry_bytes`: heap bytes per hot state entry (an event-stream record
//!    held in a 256-shard table), counted by a counting allocator, against
//!    the payload the record carries (its decoded values).
//! 2. `write_throughput`: a stream-stream join (every event kept in state)
//!    with state in memory only versus written to RocksDB, same run, same data.
//! 3. `restart`: time from opening the state directory to a ready engine
//!    (state restored) holding 1,000,000 dimension entries, without and with
//!    a memory budget.
//!
//! Run: `cargo bench --bench state` (about one minute; `STATE_BENCH_KEYS` sets
//! the restart size). Writes `$CARGO_TARGET_DIR/bench/state.json`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::alloc::{GlobalAlloc, Layout};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use kaflowsql::codec::{canonical_key, hash_key, Event, Value};
use kaflowsql::config::{ByteSize, Pipeline, RocksDbConfig, StateConfig};
use kaflowsql::engine::{Engine, Outputs, SourceRecord};
use kaflowsql::state::{KeyColumns, StreamTable};
use kaflowsql::store::StateDb;

/// mimalloc, as in the binary, with a count of live heap bytes.
struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: every method forwards to mimalloc with the caller's arguments
// unchanged, so mimalloc's GlobalAlloc contract is the caller's; the counter
// is a plain atomic and never touches the allocation.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: forwarded as is (see the impl's comment).
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: forwarded as is (see the impl's comment).
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        // SAFETY: forwarded as is (see the impl's comment).
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn pipeline(text: &str) -> Pipeline {
    Pipeline::parse(Path::new("bench.yaml"), text).unwrap()
}

fn orders_pipeline() -> Pipeline {
    pipeline(
        "name: bench_orders
query: |
  SELECT o.order_id, o.total, p.amount
  FROM orders o
  JOIN payments p ON o.order_id = p.order_id
output:
  topic: out
  key: order_id
state:
  events:
    default_ttl: 1h
",
    )
}

fn symbols_pipeline() -> Pipeline {
    pipeline(
        "name: bench_symbols
query: |
  SELECT t.trade_id, s.name, s.sector
  FROM trades t
  LEFT JOIN dim_symbols s ON t.symbol = s.symbol
output:
  topic: out
  key: trade_id
state:
  dimensions: [dim_symbols]
",
    )
}

fn state_config(dir: &Path, memory: Option<u64>) -> StateConfig {
    StateConfig {
        rocksdb: RocksDbConfig {
            path: Some(dir.to_path_buf()),
            ..RocksDbConfig::default()
        },
        memory: memory.map(ByteSize),
        ttl: None,
    }
}

/// Heap bytes a stream table adds per entry (beyond the decoded event it
/// shares), for keys holding one record (the worst case) and four.
fn entry_bytes() -> (f64, f64, f64) {
    // Hash tables grow by doubling, so the overhead depends on where the
    // count falls between two sizes: 1,000,000 entries leave the shards' tables
    // about half full, 700,000 about two thirds.
    let measure = |n: usize, per_key: usize| -> (f64, f64) {
        let mut events = Vec::with_capacity(n);
        let mut keys = Vec::with_capacity(n);
        let mut event_bytes = 0usize;
        for i in 0..n {
            let id = i / per_key;
            let values: Box<[Value]> = vec![
                Value::Str(format!("o{id}").into()),
                Value::Str(format!("c{}", i % 997).into()),
                Value::Float(i as f64),
            ]
            .into_boxed_slice();
            let mut k = Vec::new();
            canonical_key(&values[..1], &mut k);
            keys.push(k);
            let e = Event {
                topic: 0,
                partition: 0,
                offset: i as i64,
                timestamp: i as i64,
                key: None,
                values,
            };
            event_bytes += e.size_bytes();
            // The shared event exists before state takes a reference to it.
            events.push(Arc::new(e));
        }
        let mut table = StreamTable::new(Some(3_600_000), KeyColumns::new(&[0]));
        let before = LIVE.load(Ordering::Relaxed);
        for (e, k) in events.into_iter().zip(&keys) {
            table.insert(hash_key(k), k, e);
        }
        let after = LIVE.load(Ordering::Relaxed);
        drop(table);
        // Table structures, plus the Arc header (strong and weak counts) that
        // sharing costs each event.
        let overhead = (after - before) as f64 / n as f64 + 16.0;
        (overhead, event_bytes as f64 / n as f64)
    };
    let (one, payload) = measure(1_000_000, 1);
    let (four, _) = measure(1_000_000, 4);
    let (one_fuller, _) = measure(700_000, 1);
    println!(
        "entry_bytes: {one_fuller:.1} bytes per entry with one record per key at 700,000 entries"
    );
    println!(
        "entry_bytes: {one:.1} bytes of overhead per entry with one record per key, {four:.1} with four \
         (bucket and hash slot, expiry entry, Arc header), beyond the {payload:.1}-byte decoded event"
    );
    (one, four, payload)
}

struct Rec {
    topic: &'static str,
    partition: i32,
    offset: i64,
    key: Vec<u8>,
    value: Vec<u8>,
    ts: i64,
}

fn orders_records(n: usize) -> Vec<Rec> {
    let mut out = Vec::with_capacity(2 * n);
    for i in 0..n {
        out.push(Rec {
            topic: "orders",
            partition: 0,
            offset: i as i64,
            key: format!("o{i}").into_bytes(),
            value: format!(
                r#"{{"order_id":"o{i}","customer_id":"c{}","total":{}.5}}"#,
                i % 997,
                i % 300
            )
            .into_bytes(),
            ts: 1_700_000_000_000 + i as i64,
        });
        if i >= 10 {
            let j = i - 10;
            out.push(Rec {
                topic: "payments",
                partition: 0,
                offset: j as i64,
                key: format!("o{j}").into_bytes(),
                value: format!(
                    r#"{{"payment_id":"p{j}","order_id":"o{j}","amount":{}.5}}"#,
                    j % 300
                )
                .into_bytes(),
                ts: 1_700_000_000_000 + i as i64,
            });
        }
    }
    out
}

fn feed(engine: &mut Engine, records: &[Rec]) -> u64 {
    let mut out = Outputs::default();
    let mut emitted = 0;
    for r in records {
        engine
            .push(
                &SourceRecord {
                    topic: r.topic,
                    partition: r.partition,
                    offset: r.offset,
                    timestamp: r.ts,
                    key: Some(&r.key),
                    value: Some(&r.value),
                },
                &mut out,
            )
            .unwrap();
        if out.rows.len() > 10_000 {
            emitted += out.rows.len() as u64;
            out.rows.clear();
            out.clear_rows();
        }
    }
    engine.flush(&mut out).unwrap();
    emitted + out.rows.len() as u64
}

/// Alternating runs of each side (the machine is shared: medians of several).
const RUNS: usize = 7;

/// Events per second through the stream-stream join, memory only vs RocksDB.
fn write_throughput() -> (f64, f64) {
    let records = orders_records(200_000);
    let p = orders_pipeline();
    let mut memory = Vec::new();
    let mut durable = Vec::new();
    for _ in 0..RUNS {
        let mut engine = Engine::new(&p).unwrap();
        let t = Instant::now();
        let n = feed(&mut engine, &records);
        memory.push(records.len() as f64 / t.elapsed().as_secs_f64());
        assert!(n > 190_000);

        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&state_config(dir.path(), None)).unwrap();
        let mut engine = Engine::new(&p).unwrap();
        let store = db
            .pipeline(&p.name, &engine.fingerprint(&p), &engine.stored_sources())
            .unwrap();
        engine.attach_store(store, None).unwrap();
        let t = Instant::now();
        let n = feed(&mut engine, &records);
        durable.push(records.len() as f64 / t.elapsed().as_secs_f64());
        assert!(n > 190_000);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (m, d) = (median(&mut memory), median(&mut durable));
    println!(
        "write_throughput: memory only {:.0} events/s, RocksDB {:.0} events/s (medians of {RUNS} alternating runs; ratio {:.2})",
        m,
        d,
        d / m
    );
    (m, d)
}

/// Seconds to open and restore `keys` dimension entries, without and with a budget.
fn restart(keys: usize) -> (f64, f64) {
    let p = symbols_pipeline();
    let dir = tempfile::tempdir().unwrap();
    {
        let db = StateDb::open(&state_config(dir.path(), None)).unwrap();
        let mut engine = Engine::new(&p).unwrap();
        let store = db
            .pipeline(&p.name, &engine.fingerprint(&p), &engine.stored_sources())
            .unwrap();
        engine.attach_store(store, None).unwrap();
        let records: Vec<Rec> = (0..keys)
            .map(|s| Rec {
                topic: "dim_symbols",
                partition: 0,
                offset: s as i64,
                key: format!("S{s}").into_bytes(),
                value: format!(
                    r#"{{"symbol":"S{s}","name":"Company {s}","sector":"sector{}"}}"#,
                    s % 11
                )
                .into_bytes(),
                ts: 1_700_000_000_000,
            })
            .collect();
        feed(&mut engine, &records);
        let mut offsets = std::collections::HashMap::new();
        offsets.insert(("dim_symbols".to_string(), 0), keys as i64);
        let c = engine.checkpoint(offsets);
        engine.commit_checkpoint(&c).unwrap();
    }
    let mut times = Vec::new();
    for memory in [None, Some(64 * 1024 * 1024)] {
        let t = Instant::now();
        let db = StateDb::open(&state_config(dir.path(), memory)).unwrap();
        let mut engine = Engine::new(&p).unwrap();
        let store = db
            .pipeline(&p.name, &engine.fingerprint(&p), &engine.stored_sources())
            .unwrap();
        let (_, report) = engine.attach_store(store, db.memory_budget()).unwrap();
        let secs = t.elapsed().as_secs_f64();
        println!(
            "restart: {keys} entries, budget {}: ready in {secs:.2} s ({} loaded, {} left on disk)",
            memory.map_or("none".to_string(), |m| format!("{} MiB", m >> 20)),
            report.loaded,
            report.on_disk
        );
        times.push(secs);
    }
    (times[0], times[1])
}

fn main() {
    let keys = std::env::var("STATE_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    if std::env::var("STATE_BENCH_ONLY").as_deref() == Ok("write") {
        // For profilers: the write throughput part alone.
        write_throughput();
        return;
    }
    let (entry, entry_four, payload) = entry_bytes();
    let (memory, durable) = write_throughput();
    let (restore, restore_budget) = restart(keys);
    let json = serde_json::json!({
        "entry_overhead_bytes_one_per_key": entry,
        "entry_overhead_bytes_four_per_key": entry_four,
        "entry_event_bytes": payload,
        "write_events_per_s_memory": memory,
        "write_events_per_s_rocksdb": durable,
        "write_ratio": durable / memory,
        "restart_entries": keys,
        "restart_seconds": restore,
        "restart_seconds_budget_64mib": restore_budget,
    });
    let dir = std::path::PathBuf::from(
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()),
    )
    .join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("state.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
    println!("{json}");
}
