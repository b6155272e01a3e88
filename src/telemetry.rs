//! Metrics and the HTTP endpoints operators scrape: `/metrics` (Prometheus
//! text, the guide's metric names), `/healthz`, `/readyz` and the CPU
//! profile (`http.rs`, axum).
//!
//! Hot-path counters are plain atomics updated once per micro-batch and
//! rendered when Prometheus scrapes; every metric name lives in this file.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod http;
pub mod profile;

pub use http::{router, serve};

/// Histogram bucket bounds in seconds, from 10 µs.
const BUCKETS: [f64; 16] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 1.0, 10.0,
];

/// A fixed-bucket histogram of seconds.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; 17],
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records `n` observations of `seconds` each.
    pub fn observe_n(&self, seconds: f64, n: u64) {
        let i = BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(n, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add((seconds * 1e9) as u64 * n, Ordering::Relaxed);
    }

    /// Records one observation.
    pub fn observe(&self, seconds: f64) {
        self.observe_n(seconds, 1);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// The metrics of one running pipeline.
#[derive(Debug, Default)]
pub struct PipelineMetrics {
    /// Pipeline name (the `pipeline` label).
    pub name: String,
    /// Records read from the pipeline's topics.
    pub events_processed: AtomicU64,
    /// Output records produced.
    pub output_records: AtomicU64,
    /// Records sent to the dead-letter topic.
    pub dlq_records: AtomicU64,
    /// Join lookups made.
    pub join_lookups: AtomicU64,
    /// Join lookups that found a match.
    pub join_hits: AtomicU64,
    /// Events in state.
    pub state_entries: AtomicU64,
    /// Bytes of state.
    pub state_bytes: AtomicU64,
    /// Events evicted by TTL.
    pub state_evictions: AtomicU64,
    /// Smart emission timeouts (dropped).
    pub smart_timeouts_dropped: AtomicU64,
    /// Smart emission timeouts (emitted with NULLs).
    pub smart_timeouts_emitted: AtomicU64,
    /// Driving events held by smart emission now.
    pub smart_held: AtomicU64,
    /// Producer delivery failures.
    pub producer_errors: AtomicU64,
    /// Dimension partitions still being read at start.
    pub dimension_partitions_pending: AtomicU64,
    /// Dimensions read to their end and partitions assigned.
    pub ready: AtomicBool,
    /// Consumer lag per event-stream partition (from librdkafka statistics).
    pub consumer_lag: Arc<Mutex<std::collections::BTreeMap<(String, i32), i64>>>,
    /// Per-event time from arrival to the end of its micro-batch.
    pub processing_duration: Histogram,
    /// DuckDB time per micro-batch.
    pub sql_execution_duration: Histogram,
    /// State lookup latency (sampled: one enumeration in 64).
    pub join_lookup_duration: Arc<Histogram>,
    rate: Mutex<RateWindow>,
}

#[derive(Debug)]
struct RateWindow {
    at: Instant,
    count: u64,
    rate: f64,
}

impl Default for RateWindow {
    fn default() -> Self {
        Self {
            at: Instant::now(),
            count: 0,
            rate: 0.0,
        }
    }
}

impl PipelineMetrics {
    /// Metrics for pipeline `name`.
    pub fn new(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_string(),
            ..Self::default()
        })
    }

    /// Events per second over the last window of at least one second.
    fn events_per_second(&self) -> f64 {
        let total = self.events_processed.load(Ordering::Relaxed);
        let Ok(mut w) = self.rate.lock() else {
            return 0.0;
        };
        let elapsed = w.at.elapsed();
        if elapsed >= Duration::from_secs(1) {
            w.rate = (total.saturating_sub(w.count)) as f64 / elapsed.as_secs_f64();
            w.count = total;
            w.at = Instant::now();
        }
        w.rate
    }

    /// Copies the engine's counters after a micro-batch and records its
    /// latency: `events` records whose batch started at `started`;
    /// `sql_nanos_before` is the engine's DuckDB time before the batch.
    pub fn record_batch(
        &self,
        engine: &crate::engine::Engine,
        started: Option<Instant>,
        events: u64,
        sql_nanos_before: u64,
    ) {
        let s = engine.stats();
        self.events_processed.store(s.records, Ordering::Relaxed);
        self.join_lookups
            .store(s.lookups.lookups, Ordering::Relaxed);
        self.join_hits.store(s.lookups.hits, Ordering::Relaxed);
        self.state_evictions.store(s.evictions, Ordering::Relaxed);
        self.smart_timeouts_dropped
            .store(s.timeouts_dropped, Ordering::Relaxed);
        self.smart_timeouts_emitted
            .store(s.timeouts_emitted, Ordering::Relaxed);
        self.smart_held
            .store(engine.held() as u64, Ordering::Relaxed);
        let (mut entries, mut bytes) = (0, 0);
        for (_, _, st) in engine.state_stats() {
            entries += st.entries;
            bytes += st.bytes;
        }
        self.state_entries.store(entries, Ordering::Relaxed);
        self.state_bytes.store(bytes, Ordering::Relaxed);
        if s.sql_nanos > sql_nanos_before {
            self.sql_execution_duration
                .observe((s.sql_nanos - sql_nanos_before) as f64 / 1e9);
        }
        if let (Some(t), true) = (started, events > 0) {
            self.processing_duration
                .observe_n(t.elapsed().as_secs_f64(), events);
        }
    }

    fn render(&self, out: &mut String) {
        let l = format!("pipeline=\"{}\"", self.name.replace('"', "'"));
        let g = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let lookups = g(&self.join_lookups);
        let hit_rate = if lookups == 0 {
            0.0
        } else {
            g(&self.join_hits) as f64 / lookups as f64
        };
        let rows: [(&str, &str, String); 16] = [
            (
                "kaflowsql_events_processed_total",
                "counter",
                g(&self.events_processed).to_string(),
            ),
            (
                "kaflowsql_events_per_second",
                "gauge",
                format!("{:.1}", self.events_per_second()),
            ),
            (
                "kaflowsql_join_success_rate",
                "gauge",
                format!("{hit_rate:.6}"),
            ),
            ("kaflowsql_join_hit_rate", "gauge", format!("{hit_rate:.6}")),
            (
                "kaflowsql_join_lookups_total",
                "counter",
                lookups.to_string(),
            ),
            (
                "kaflowsql_state_entries_total",
                "gauge",
                g(&self.state_entries).to_string(),
            ),
            (
                "kaflowsql_state_size_bytes",
                "gauge",
                g(&self.state_bytes).to_string(),
            ),
            (
                "kaflowsql_state_evictions_total",
                "counter",
                g(&self.state_evictions).to_string(),
            ),
            (
                "kaflowsql_output_records_total",
                "counter",
                g(&self.output_records).to_string(),
            ),
            (
                "kaflowsql_dlq_records_total",
                "counter",
                g(&self.dlq_records).to_string(),
            ),
            (
                "kaflowsql_smart_timeouts_dropped_total",
                "counter",
                g(&self.smart_timeouts_dropped).to_string(),
            ),
            (
                "kaflowsql_smart_timeouts_emitted_total",
                "counter",
                g(&self.smart_timeouts_emitted).to_string(),
            ),
            (
                "kaflowsql_smart_held_events",
                "gauge",
                g(&self.smart_held).to_string(),
            ),
            (
                "kaflowsql_producer_errors_total",
                "counter",
                g(&self.producer_errors).to_string(),
            ),
            (
                "kaflowsql_dimension_partitions_pending",
                "gauge",
                g(&self.dimension_partitions_pending).to_string(),
            ),
            (
                "kaflowsql_ready",
                "gauge",
                u8::from(self.ready.load(Ordering::Relaxed)).to_string(),
            ),
        ];
        for (name, kind, value) in rows {
            let _ = writeln!(out, "# TYPE {name} {kind}\n{name}{{{l}}} {value}");
        }
        let _ = writeln!(out, "# TYPE kaflowsql_consumer_lag gauge");
        if let Ok(lag) = self.consumer_lag.lock() {
            for ((topic, partition), v) in lag.iter() {
                let _ = writeln!(
                    out,
                    "kaflowsql_consumer_lag{{{l},topic=\"{}\",partition=\"{partition}\"}} {v}",
                    topic.replace('"', "'")
                );
            }
        }
        let _ = writeln!(
            out,
            "# TYPE kaflowsql_processing_duration_histogram histogram"
        );
        self.processing_duration
            .render(out, "kaflowsql_processing_duration_histogram", &l);
        let _ = writeln!(out, "# TYPE kaflowsql_join_lookup_duration histogram");
        self.join_lookup_duration
            .render(out, "kaflowsql_join_lookup_duration", &l);
        let _ = writeln!(out, "# TYPE kaflowsql_sql_execution_duration histogram");
        self.sql_execution_duration
            .render(out, "kaflowsql_sql_execution_duration", &l);
    }
}

/// Every pipeline's metrics, and process-wide ones.
#[derive(Debug, Default)]
pub struct Registry {
    pipelines: Mutex<Vec<Arc<PipelineMetrics>>>,
    state: std::sync::OnceLock<Arc<crate::store::StateDb>>,
}

impl Registry {
    /// Reports the block cache of `state` as `kaflowsql_rocksdb_cache_usage`.
    pub fn set_state(&self, state: Arc<crate::store::StateDb>) {
        let _ = self.state.set(state);
    }

    /// Adds a pipeline.
    pub fn add(&self, metrics: Arc<PipelineMetrics>) {
        if let Ok(mut p) = self.pipelines.lock() {
            p.push(metrics);
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Ok(p) = self.pipelines.lock() {
            for m in p.iter() {
                m.render(&mut out);
            }
        }
        let _ = writeln!(
            out,
            "# TYPE kaflowsql_memory_usage_bytes gauge\nkaflowsql_memory_usage_bytes {}",
            resident_bytes()
        );
        if let Some(state) = self.state.get() {
            let _ = writeln!(
                out,
                "# HELP kaflowsql_rocksdb_cache_usage Bytes in RocksDB's block cache.\n# TYPE kaflowsql_rocksdb_cache_usage gauge\nkaflowsql_rocksdb_cache_usage {}",
                state.cache_usage()
            );
        }
        out
    }

    /// True when every pipeline is ready.
    pub fn ready(&self) -> bool {
        self.pipelines
            .lock()
            .map(|p| !p.is_empty() && p.iter().all(|m| m.ready.load(Ordering::Relaxed)))
            .unwrap_or(false)
    }
}

/// Resident set size of this process in bytes (0 where /proc is absent).
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_guides_names_with_cumulative_buckets() {
        let m = PipelineMetrics::new("p1");
        m.events_processed.fetch_add(10, Ordering::Relaxed);
        m.join_lookups.fetch_add(4, Ordering::Relaxed);
        m.join_hits.fetch_add(3, Ordering::Relaxed);
        m.processing_duration.observe_n(0.000_3, 2);
        m.processing_duration.observe(20.0);
        if let Ok(mut lag) = m.consumer_lag.lock() {
            lag.insert(("orders".to_string(), 3), 42);
        }
        let r = Registry::default();
        r.add(m);
        let text = r.render();
        assert!(
            text.contains(
                "kaflowsql_consumer_lag{pipeline=\"p1\",topic=\"orders\",partition=\"3\"} 42"
            ),
            "{text}"
        );
        assert!(
            text.contains("kaflowsql_events_processed_total{pipeline=\"p1\"} 10"),
            "{text}"
        );
        assert!(text.contains("kaflowsql_join_hit_rate{pipeline=\"p1\"} 0.750000"));
        assert!(text.contains(
            "kaflowsql_processing_duration_histogram_bucket{pipeline=\"p1\",le=\"0.0005\"} 2"
        ));
        assert!(text.contains(
            "kaflowsql_processing_duration_histogram_bucket{pipeline=\"p1\",le=\"+Inf\"} 3"
        ));
        assert!(text.contains("kaflowsql_memory_usage_bytes "));
        assert!(text.contains("kaflowsql_join_lookup_duration_count{pipeline=\"p1\"} 0"));
        assert!(!r.ready());
    }
}
