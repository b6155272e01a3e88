//! The metrics of one running pipeline: `metrics` handles registered once
//! with the pipeline's `pipeline` label, so the hot path only touches atomics
//! (the engine's counters are copied after every micro-batch; histograms get
//! their samples there). Every metric name and its help text is in this file.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics::{Counter, Gauge, Histogram, Unit};

/// Consumer lag per event-stream partition, as librdkafka's statistics report it.
pub type ConsumerLag = Arc<Mutex<BTreeMap<(String, i32), i64>>>;

/// Registers the help text of every metric (on the current recorder).
// One statement per metric: a list, longer than a function should be, kept
// whole so every metric's name, unit and help read in one place.
pub(super) fn describe() {
    describe_counter!(
        "kaflowsql_events_processed_total",
        "Records read from the pipeline's topics (streams and dimensions)."
    );
    describe_gauge!(
        "kaflowsql_events_per_second",
        "Records read per second over the last window of at least one second."
    );
    describe_gauge!(
        "kaflowsql_join_success_rate",
        "Share of join lookups that found a match (same value as kaflowsql_join_hit_rate)."
    );
    describe_gauge!(
        "kaflowsql_join_hit_rate",
        "Share of join lookups that found a match."
    );
    describe_counter!("kaflowsql_join_lookups_total", "Join state lookups made.");
    describe_counter!(
        "kaflowsql_micro_batches_total",
        "Micro-batches of event-stream records evaluated (records per batch: events processed / this)."
    );
    describe_gauge!(
        "kaflowsql_state_entries_total",
        "Events held in join state."
    );
    describe_gauge!(
        "kaflowsql_state_size_bytes",
        Unit::Bytes,
        "Bytes of join state in memory."
    );
    describe_counter!(
        "kaflowsql_state_evictions_total",
        "Events removed from state by TTL."
    );
    describe_counter!(
        "kaflowsql_late_records_total",
        "Event-stream records already expired on arrival (timestamp + TTL behind their partition's watermark): neither stored nor joined."
    );
    describe_counter!(
        "kaflowsql_null_join_keys_total",
        "Records with a missing or NULL join key: they match nothing (a LEFT join NULL-extends, an INNER join gives no row), as in SQL."
    );
    describe_counter!("kaflowsql_output_records_total", "Output records produced.");
    describe_counter!(
        "kaflowsql_dlq_records_total",
        "Records sent to the dead-letter topic."
    );
    describe_counter!(
        "kaflowsql_smart_timeouts_dropped_total",
        "Smart-emission events dropped at their timeout."
    );
    describe_counter!(
        "kaflowsql_smart_timeouts_emitted_total",
        "Smart-emission events emitted with NULLs at their timeout."
    );
    describe_gauge!(
        "kaflowsql_smart_held_events",
        "Events held by smart emission now."
    );
    describe_counter!(
        "kaflowsql_producer_errors_total",
        "Output deliveries that failed."
    );
    describe_counter!(
        "kaflowsql_errors_total",
        "Errors by domain (config, data, external, internal) and kind: dead letters, retries, failures that stopped the pipeline."
    );
    describe_gauge!(
        "kaflowsql_dimension_partitions_pending",
        "Dimension partitions not yet read to their end at start."
    );
    describe_gauge!(
        "kaflowsql_ready",
        "1 when partitions are assigned, dimensions loaded and state restored."
    );
    describe_gauge!(
        "kaflowsql_consumer_lag",
        "Records behind the partition's end, per event-stream partition."
    );
    describe_histogram!(
        "kaflowsql_processing_duration_histogram",
        Unit::Seconds,
        "Per event: time from its micro-batch's first record to the batch's outputs handed to the producer."
    );
    describe_histogram!(
        "kaflowsql_join_lookup_duration",
        Unit::Seconds,
        "Join state lookup time (one enumeration in 64 timed)."
    );
    describe_histogram!(
        "kaflowsql_sql_execution_duration",
        Unit::Seconds,
        "DuckDB time per micro-batch."
    );
    describe_gauge!(
        "kaflowsql_memory_usage_bytes",
        Unit::Bytes,
        "Resident memory of the process."
    );
    describe_gauge!(
        "kaflowsql_rocksdb_cache_usage",
        Unit::Bytes,
        "Bytes in RocksDB's block cache."
    );
}

/// The metrics of one running pipeline.
#[derive(Debug)]
pub struct PipelineMetrics {
    /// Pipeline name (the `pipeline` label).
    pub name: String,
    events_processed: Counter,
    events_per_second: Gauge,
    join_success_rate: Gauge,
    join_hit_rate: Gauge,
    join_lookups: Counter,
    micro_batches: Counter,
    state_entries: Gauge,
    state_bytes: Gauge,
    state_evictions: Counter,
    late_records: Counter,
    null_join_keys: Counter,
    output_records: Counter,
    dlq_records: Counter,
    smart_timeouts_dropped: Counter,
    smart_timeouts_emitted: Counter,
    smart_held: Gauge,
    producer_errors: Counter,
    /// `kaflowsql_errors_total` per (domain, kind) of [`crate::error::KINDS`].
    errors: Vec<(crate::error::Domain, &'static str, Counter)>,
    dimension_partitions_pending: Gauge,
    ready_gauge: Gauge,
    processing_duration: Histogram,
    sql_execution_duration: Histogram,
    join_lookup_duration: Histogram,
    ready: AtomicBool,
    /// Records read so far (for the per-second rate, computed at scrape).
    events_total: AtomicU64,
    rate: Mutex<RateWindow>,
    consumer_lag: ConsumerLag,
    /// Partitions whose lag gauge was set at the last scrape.
    lag_reported: Mutex<std::collections::BTreeSet<(String, i32)>>,
}

#[derive(Debug)]
struct RateWindow {
    at: Instant,
    count: u64,
    rate: f64,
}

impl PipelineMetrics {
    /// Registers the metrics of pipeline `name` on the current recorder (the
    /// registry's; with no recorder, they record nothing).
    pub fn new(name: &str) -> Arc<Self> {
        let l = [("pipeline", name.to_string())];
        Arc::new(Self {
            name: name.to_string(),
            events_processed: counter!("kaflowsql_events_processed_total", &l),
            events_per_second: gauge!("kaflowsql_events_per_second", &l),
            join_success_rate: gauge!("kaflowsql_join_success_rate", &l),
            join_hit_rate: gauge!("kaflowsql_join_hit_rate", &l),
            join_lookups: counter!("kaflowsql_join_lookups_total", &l),
            micro_batches: counter!("kaflowsql_micro_batches_total", &l),
            state_entries: gauge!("kaflowsql_state_entries_total", &l),
            state_bytes: gauge!("kaflowsql_state_size_bytes", &l),
            state_evictions: counter!("kaflowsql_state_evictions_total", &l),
            late_records: counter!("kaflowsql_late_records_total", &l),
            null_join_keys: counter!("kaflowsql_null_join_keys_total", &l),
            output_records: counter!("kaflowsql_output_records_total", &l),
            dlq_records: counter!("kaflowsql_dlq_records_total", &l),
            smart_timeouts_dropped: counter!("kaflowsql_smart_timeouts_dropped_total", &l),
            smart_timeouts_emitted: counter!("kaflowsql_smart_timeouts_emitted_total", &l),
            smart_held: gauge!("kaflowsql_smart_held_events", &l),
            producer_errors: counter!("kaflowsql_producer_errors_total", &l),
            errors: crate::error::KINDS
                .iter()
                .map(|&(domain, kind)| {
                    let labels = [
                        ("pipeline", name.to_string()),
                        ("domain", domain.as_str().to_string()),
                        ("kind", kind.to_string()),
                    ];
                    (domain, kind, counter!("kaflowsql_errors_total", &labels))
                })
                .collect(),
            dimension_partitions_pending: gauge!("kaflowsql_dimension_partitions_pending", &l),
            ready_gauge: gauge!("kaflowsql_ready", &l),
            processing_duration: histogram!("kaflowsql_processing_duration_histogram", &l),
            sql_execution_duration: histogram!("kaflowsql_sql_execution_duration", &l),
            join_lookup_duration: histogram!("kaflowsql_join_lookup_duration", &l),
            ready: AtomicBool::new(false),
            events_total: AtomicU64::new(0),
            rate: Mutex::new(RateWindow {
                at: Instant::now(),
                count: 0,
                rate: 0.0,
            }),
            consumer_lag: ConsumerLag::default(),
            lag_reported: Mutex::new(std::collections::BTreeSet::new()),
        })
    }

    /// The histogram the engine records sampled lookup times into.
    pub fn lookup_histogram(&self) -> Histogram {
        self.join_lookup_duration.clone()
    }

    /// Where the consumer writes lag from librdkafka's statistics.
    pub fn consumer_lag(&self) -> ConsumerLag {
        self.consumer_lag.clone()
    }

    /// Counts `n` records sent to the dead-letter topic.
    pub fn dlq_records(&self, n: u64) {
        self.dlq_records.increment(n);
    }

    /// Counts `n` output records produced.
    pub fn output_records(&self, n: u64) {
        self.output_records.increment(n);
    }

    /// Counts a failed output delivery.
    pub fn producer_error(&self) {
        self.producer_errors.increment(1);
    }

    /// Dimension partitions not yet read to their end.
    pub fn dimension_partitions_pending(&self, n: usize) {
        self.dimension_partitions_pending.set(n as f64);
    }

    /// Counts one error of `domain` and `kind` (a kind missing from
    /// [`crate::error::KINDS`] is counted as an internal `bug`).
    pub fn error(&self, domain: crate::error::Domain, kind: &str) {
        let found = self
            .errors
            .iter()
            .find(|(d, k, _)| *d == domain && *k == kind)
            .or_else(|| self.errors.iter().find(|(_, k, _)| *k == "bug"));
        if let Some((_, _, c)) = found {
            c.increment(1);
        }
    }

    /// Marks the pipeline ready (or not) for `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
        self.ready_gauge.set(f64::from(u8::from(ready)));
    }

    /// True once partitions are assigned, dimensions loaded and state restored.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
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
        self.events_total.store(s.records, Ordering::Relaxed);
        self.events_processed.absolute(s.records);
        self.join_lookups.absolute(s.lookups.lookups);
        if s.lookups.lookups > 0 {
            let rate = s.lookups.hits as f64 / s.lookups.lookups as f64;
            self.join_hit_rate.set(rate);
            self.join_success_rate.set(rate);
        }
        self.state_evictions.absolute(s.evictions);
        self.late_records.absolute(s.late);
        self.null_join_keys.absolute(s.null_keys);
        self.smart_timeouts_dropped.absolute(s.timeouts_dropped);
        self.smart_timeouts_emitted.absolute(s.timeouts_emitted);
        self.smart_held.set(engine.held() as f64);
        let (mut entries, mut bytes) = (0, 0);
        for (_, _, st) in engine.state_stats() {
            entries += st.entries;
            bytes += st.bytes;
        }
        self.state_entries.set(entries as f64);
        self.state_bytes.set(bytes as f64);
        if s.sql_nanos > sql_nanos_before {
            self.sql_execution_duration
                .record((s.sql_nanos - sql_nanos_before) as f64 / 1e9);
        }
        if events > 0 {
            self.micro_batches.increment(1);
        }
        if let (Some(t), true) = (started, events > 0) {
            // Every event of the batch waited this long: one sample each, so
            // quantiles are per event, not per batch.
            self.processing_duration
                .record_many(t.elapsed().as_secs_f64(), events as usize);
        }
    }

    /// Sets the gauges computed at scrape time: the per-second rate and the
    /// consumer lag (registered per partition as partitions appear).
    pub(super) fn refresh(&self) {
        let total = self.events_total.load(Ordering::Relaxed);
        if let Ok(mut w) = self.rate.lock() {
            let elapsed = w.at.elapsed();
            if elapsed >= Duration::from_secs(1) {
                w.rate = total.saturating_sub(w.count) as f64 / elapsed.as_secs_f64();
                w.count = total;
                w.at = Instant::now();
            }
            self.events_per_second.set(w.rate);
        }
        let (Ok(lag), Ok(mut reported)) = (self.consumer_lag.lock(), self.lag_reported.lock())
        else {
            return;
        };
        let lag_gauge = |(topic, partition): &(String, i32)| {
            gauge!(
                "kaflowsql_consumer_lag",
                "pipeline" => self.name.clone(),
                "topic" => topic.clone(),
                "partition" => partition.to_string()
            )
        };
        // A partition this instance no longer reads (revoked) reports 0, not
        // its last lag: sums over instances stay right after a rebalance.
        for gone in reported.iter().filter(|k| !lag.contains_key(*k)) {
            lag_gauge(gone).set(0.0);
        }
        for (key, v) in lag.iter() {
            lag_gauge(key).set(*v as f64);
        }
        *reported = lag.keys().cloned().collect();
    }
}
