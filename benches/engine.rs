//! Engine benchmarks on one thread, without Kafka: decode → shard → join →
//! DuckDB → encode.
//!
//! - `simple_enrichment`: a stream LEFT JOIN one dimension (95% of events hit).
//! - `three_way_join`: a stream joined with another stream and a dimension.
//! - baseline `decode_only`: decoding the same records, nothing else.
//!
//! Throughput comes from criterion (elements = events). After criterion, a
//! latency pass prints p50/p95/p99 per-event latency (from push to the end of
//! the flush that emits it) at micro-batches of 256 and 4096 rows.
//!
//! Run: `cargo bench --bench engine` (add `-- --quick` for a short run).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::time::Instant;

use criterion::{criterion_group, Criterion, Throughput};
use kaflowsql::codec::TopicSchema;
use kaflowsql::config::Pipeline;
use kaflowsql::engine::{Engine, Outputs, SourceRecord};
use kaflowsql::telemetry::{PipelineMetrics, Registry};

/// The same allocator as the `kaflowsql` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EVENTS: usize = 100_000;
const KEYS: usize = 10_000;

struct Rec {
    topic: &'static str,
    key: Vec<u8>,
    value: Vec<u8>,
    ts: i64,
}

/// The simple enrichment: a SELECT list of plain columns, a projection that
/// needs no DuckDB call (`crate::sql::plain_projection`).
fn simple_pipeline() -> Pipeline {
    simple_pipeline_selecting("e.user_id, e.event_type, e.amount, p.plan, p.country")
}

/// The same with an expression in the SELECT list, evaluated by DuckDB.
fn simple_sql_pipeline() -> Pipeline {
    simple_pipeline_selecting(
        "e.user_id, e.event_type, e.amount, p.plan, p.country,\n         CASE WHEN e.amount > 50 THEN 'high' ELSE 'low' END AS band",
    )
}

fn simple_pipeline_selecting(select: &str) -> Pipeline {
    let text = format!(
        "name: bench_simple
query: |
  SELECT {select}
  FROM user_events e
  LEFT JOIN user_profiles p ON e.user_id = p.user_id
output:
  topic: out
  key: user_id
state:
  events:
    default_ttl: 5m
  dimensions: [user_profiles]
"
    );
    Pipeline::parse(Path::new("bench.yaml"), &text).unwrap()
}

fn three_way_pipeline() -> Pipeline {
    Pipeline::parse(
        Path::new("bench.yaml"),
        "name: bench_three_way
query: |
  SELECT o.order_id, o.total, p.amount, c.name
  FROM orders o
  JOIN payments p ON o.order_id = p.order_id
  LEFT JOIN customers c ON o.customer_id = c.customer_id
output:
  topic: out
  key: order_id
state:
  events:
    default_ttl: 10m
  dimensions: [customers]
",
    )
    .unwrap()
}

/// Profiles for 95% of the keys, then events over all keys.
fn simple_records() -> (Vec<Rec>, Vec<Rec>) {
    let dims = (0..KEYS)
        .filter(|k| k % 20 != 0)
        .map(|k| Rec {
            topic: "user_profiles",
            key: format!("u{k}").into_bytes(),
            value: format!(
                r#"{{"user_id":"u{k}","plan":"pro","country":"DE","signup":"2024-01-01"}}"#
            )
            .into_bytes(),
            ts: 0,
        })
        .collect();
    let events = (0..EVENTS)
        .map(|i| {
            let k = (i * 7919) % KEYS;
            Rec {
                topic: "user_events",
                key: format!("u{k}").into_bytes(),
                value: format!(
                    r#"{{"user_id":"u{k}","event_type":"click","amount":{}.5,"page":"/home","session":"s{i}"}}"#,
                    i % 100
                )
                .into_bytes(),
                ts: 1_000 + i as i64,
            }
        })
        .collect();
    (dims, events)
}

/// Customers, then orders each followed (later) by its payment.
fn three_way_records() -> (Vec<Rec>, Vec<Rec>) {
    let dims = (0..KEYS)
        .map(|k| Rec {
            topic: "customers",
            key: format!("c{k}").into_bytes(),
            value: format!(r#"{{"customer_id":"c{k}","name":"Customer {k}"}}"#).into_bytes(),
            ts: 0,
        })
        .collect();
    let mut events = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS / 2 {
        events.push(Rec {
            topic: "orders",
            key: format!("o{i}").into_bytes(),
            value: format!(
                r#"{{"order_id":"o{i}","customer_id":"c{}","total":{}.0}}"#,
                i % KEYS,
                i % 500
            )
            .into_bytes(),
            ts: 1_000 + 2 * i as i64,
        });
        if i >= 50 {
            let j = i - 50;
            events.push(Rec {
                topic: "payments",
                key: format!("o{j}").into_bytes(),
                value: format!(r#"{{"order_id":"o{j}","amount":{}.0}}"#, j % 500).into_bytes(),
                ts: 1_001 + 2 * i as i64,
            });
        }
    }
    (dims, events)
}

/// Feeds records in micro-batches of the default size, as `kaflowsql run`
/// does; with `metrics`, records them after every batch as the run loop does.
fn feed(engine: &mut Engine, recs: &[Rec], out: &mut Outputs, metrics: Option<&PipelineMetrics>) {
    for (c, chunk) in recs
        .chunks(kaflowsql::engine::DEFAULT_BATCH_ROWS)
        .enumerate()
    {
        let started = Instant::now();
        let sql_before = engine.stats().sql_nanos;
        for (i, r) in chunk.iter().enumerate() {
            engine
                .push(
                    &SourceRecord {
                        topic: r.topic,
                        partition: 0,
                        offset: (c * kaflowsql::engine::DEFAULT_BATCH_ROWS + i) as i64,
                        timestamp: r.ts,
                        key: Some(&r.key),
                        value: Some(&r.value),
                    },
                    out,
                )
                .unwrap();
        }
        engine.flush(out).unwrap();
        if let Some(m) = metrics {
            m.record_batch(engine, Some(started), chunk.len() as u64, sql_before);
        }
        out.clear_rows();
    }
}

fn loaded_engine(p: &Pipeline, dims: &[Rec]) -> Engine {
    let mut engine = Engine::new(p).unwrap();
    let mut out = Outputs::default();
    feed(&mut engine, dims, &mut out, None);
    engine
}

fn benches(c: &mut Criterion) {
    let (dims, events) = simple_records();
    let simple = simple_pipeline();
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.sample_size(10);

    group.bench_function("decode_only_baseline", |b| {
        let mut schema = TopicSchema::new(
            "user_events",
            vec!["user_id".into(), "event_type".into(), "amount".into()],
            &[],
            None,
            &["user_id".to_string()],
        );
        b.iter(|| {
            for (i, r) in events.iter().enumerate() {
                std::hint::black_box(
                    schema
                        .decode(0, 0, i as i64, r.ts, Some(&r.key), &r.value)
                        .unwrap(),
                );
            }
        })
    });

    group.bench_function("simple_enrichment", |b| {
        b.iter_batched_ref(
            || (loaded_engine(&simple, &dims), Outputs::default()),
            |(engine, out)| feed(engine, &events, out, None),
            criterion::BatchSize::LargeInput,
        )
    });

    // An expression in the SELECT list: every batch through DuckDB.
    let simple_sql = simple_sql_pipeline();
    group.bench_function("simple_enrichment_sql_expression", |b| {
        b.iter_batched_ref(
            || (loaded_engine(&simple_sql, &dims), Outputs::default()),
            |(engine, out)| feed(engine, &events, out, None),
            criterion::BatchSize::LargeInput,
        )
    });

    // The same with metrics recorded as `kaflowsql run` records them (sampled
    // lookup timing, counters and histograms after every batch).
    // Histogram samples are folded into buckets between iterations, as the
    // HTTP server's upkeep does every second.
    let registry = Registry::new();
    let metrics = registry.pipeline("bench");
    group.bench_function("simple_enrichment_with_metrics", |b| {
        b.iter_batched_ref(
            || {
                registry.upkeep();
                let engine =
                    loaded_engine(&simple, &dims).with_lookup_timing(metrics.lookup_histogram());
                (engine, Outputs::default())
            },
            |(engine, out)| feed(engine, &events, out, Some(&metrics)),
            criterion::BatchSize::LargeInput,
        )
    });

    let (cdims, cevents) = three_way_records();
    let three = three_way_pipeline();
    group.throughput(Throughput::Elements(cevents.len() as u64));
    group.bench_function("three_way_join", |b| {
        b.iter_batched_ref(
            || (loaded_engine(&three, &cdims), Outputs::default()),
            |(engine, out)| feed(engine, &cevents, out, None),
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// Per-event latency: each event waits for its batch's flush to finish.
fn latency_report(name: &str, p: &Pipeline, dims: &[Rec], events: &[Rec], batch: usize) {
    let mut engine = loaded_engine(p, dims).with_batch_rows(batch);
    let mut out = Outputs::default();
    let mut latencies_ns: Vec<u64> = Vec::with_capacity(events.len());
    let mut pushed_at: Vec<Instant> = Vec::with_capacity(batch);
    let started = Instant::now();
    for (i, r) in events.iter().enumerate() {
        pushed_at.push(Instant::now());
        engine
            .push(
                &SourceRecord {
                    topic: r.topic,
                    partition: 0,
                    offset: i as i64,
                    timestamp: r.ts,
                    key: Some(&r.key),
                    value: Some(&r.value),
                },
                &mut out,
            )
            .unwrap();
        if engine.pending_rows() == 0 || pushed_at.len() >= batch {
            engine.flush(&mut out).unwrap();
            let done = Instant::now();
            latencies_ns.extend(pushed_at.drain(..).map(|t| (done - t).as_nanos() as u64));
            out.clear_rows();
        }
    }
    engine.flush(&mut out).unwrap();
    let done = Instant::now();
    latencies_ns.extend(pushed_at.drain(..).map(|t| (done - t).as_nanos() as u64));
    let elapsed = started.elapsed();
    latencies_ns.sort_unstable();
    let q = |f: f64| latencies_ns[((latencies_ns.len() - 1) as f64 * f) as usize] as f64 / 1e6;
    println!(
        "latency {name}: {} events in {:.3}s = {:.0} events/s; per-event latency p50 {:.3} ms, p95 {:.3} ms, p99 {:.3} ms (batch {batch})",
        events.len(),
        elapsed.as_secs_f64(),
        events.len() as f64 / elapsed.as_secs_f64(),
        q(0.50),
        q(0.95),
        q(0.99)
    );
}

criterion_group!(engine_benches, benches);

/// One pass without criterion, for instruction counting under callgrind:
/// `KAFLOWSQL_BENCH_ONCE=setup|plain|metrics` (the difference of the counts
/// is the cost of the feed, and of recording metrics on top of it), and
/// `setup-sql|sql` for the pipeline with an expression evaluated by DuckDB,
/// `setup-three-way|three-way` for the three-way join.
fn once(mode: &str) {
    if mode.ends_with("three-way") {
        // `setup-three-way|three-way`: the three-way join's records.
        let (dims, events) = three_way_records();
        let mut engine = loaded_engine(&three_way_pipeline(), &dims);
        if mode == "three-way" {
            feed(&mut engine, &events, &mut Outputs::default(), None);
        }
        return;
    }
    let (dims, events) = simple_records();
    let simple = if mode.ends_with("sql") {
        simple_sql_pipeline()
    } else {
        simple_pipeline()
    };
    let registry = Registry::new();
    let metrics = registry.pipeline("bench");
    let mut engine = loaded_engine(&simple, &dims);
    let mut out = Outputs::default();
    match mode {
        "plain" | "sql" => feed(&mut engine, &events, &mut out, None),
        "metrics" => {
            let mut engine = engine.with_lookup_timing(metrics.lookup_histogram());
            feed(&mut engine, &events, &mut out, Some(&metrics));
            registry.upkeep();
        }
        _ => {}
    }
}

fn main() {
    if let Ok(mode) = std::env::var("KAFLOWSQL_BENCH_ONCE") {
        once(&mode);
        return;
    }
    engine_benches();
    Criterion::default().configure_from_args().final_summary();
    for batch in [256, kaflowsql::engine::DEFAULT_BATCH_ROWS] {
        let (dims, events) = simple_records();
        latency_report(
            "simple_enrichment",
            &simple_pipeline(),
            &dims,
            &events,
            batch,
        );
        let (dims, events) = three_way_records();
        latency_report(
            "three_way_join",
            &three_way_pipeline(),
            &dims,
            &events,
            batch,
        );
    }
}
