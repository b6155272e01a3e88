//! Metrics and the HTTP endpoints operators scrape: `/metrics` (Prometheus
//! text, the guide's metric names), `/healthz`, `/readyz` and the CPU
//! profile (`http.rs`, axum).
//!
//! Metrics go through the `metrics` facade to a `metrics-exporter-prometheus`
//! recorder owned by the [`Registry`]: each pipeline registers its handles
//! once (`pipeline.rs`), the hot path updates them once per micro-batch, and
//! gauges that are cheaper to read than to keep (rate, memory, lag, block
//! cache) are set when Prometheus scrapes.

use std::sync::{Arc, Mutex, OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

mod http;
mod pipeline;
pub mod profile;

pub use http::{profiling_router, router, serve, serve_profiling};
pub use pipeline::{ConsumerLag, PipelineMetrics};

/// Histogram bucket bounds in seconds, from 10 µs.
pub const BUCKETS: [f64; 16] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 1.0, 10.0,
];

/// How often histogram samples are folded into their buckets when nobody
/// scrapes (bounds the memory samples take between scrapes).
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Every pipeline's metrics, and process-wide ones, on one Prometheus recorder.
pub struct Registry {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    pipelines: Mutex<Vec<Arc<PipelineMetrics>>>,
    state: OnceLock<Arc<crate::store::StateDb>>,
    /// The first pipeline failure: `/healthz` and `/readyz` answer 503 from then on.
    failure: OnceLock<String>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// A registry with the guide's histogram buckets and every metric described.
    pub fn new() -> Self {
        // BUCKETS is non-empty, set_buckets' only error; summaries otherwise.
        let recorder = PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, pipeline::describe);
        Self {
            recorder,
            handle,
            pipelines: Mutex::new(Vec::new()),
            state: OnceLock::new(),
            failure: OnceLock::new(),
        }
    }

    /// Registers the metrics of pipeline `name`.
    pub fn pipeline(&self, name: &str) -> Arc<PipelineMetrics> {
        let m = metrics::with_local_recorder(&self.recorder, || PipelineMetrics::new(name));
        if let Ok(mut p) = self.pipelines.lock() {
            p.push(m.clone());
        }
        m
    }

    /// Reports the block cache of `state` as `kaflowsql_rocksdb_cache_usage`.
    pub fn set_state(&self, state: Arc<crate::store::StateDb>) {
        let _ = self.state.set(state);
    }

    /// Folds histogram samples into buckets (call every [`UPKEEP_INTERVAL`]).
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        metrics::with_local_recorder(&self.recorder, || {
            if let Ok(p) = self.pipelines.lock() {
                for m in p.iter() {
                    m.refresh();
                }
            }
            metrics::gauge!("kaflowsql_memory_usage_bytes").set(resident_bytes() as f64);
            if let Some(state) = self.state.get() {
                metrics::gauge!("kaflowsql_rocksdb_cache_usage").set(state.cache_usage() as f64);
            }
        });
        self.handle.render()
    }

    /// Records that a pipeline failed (the first failure is kept): the
    /// process is going down, and health says so.
    pub fn set_failed(&self, why: impl Into<String>) {
        let _ = self.failure.set(why.into());
    }

    /// Why a pipeline failed, if one did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    /// True when every pipeline is ready.
    pub fn ready(&self) -> bool {
        self.pipelines
            .lock()
            .map(|p| !p.is_empty() && p.iter().all(|m| m.is_ready()))
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

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn renders_the_guides_names_with_cumulative_buckets() {
        let r = Registry::new();
        let m = r.pipeline("p1");
        m.output_records(10);
        m.dlq_records(2);
        m.lookup_histogram().record(0.000_3);
        m.lookup_histogram().record(0.000_3);
        m.lookup_histogram().record(20.0);
        if let Ok(mut lag) = m.consumer_lag().lock() {
            lag.insert(("orders".to_string(), 3), 42);
        }
        let text = r.render();
        assert_eq!(
            line(&text, "kaflowsql_consumer_lag{"),
            Some("kaflowsql_consumer_lag{pipeline=\"p1\",topic=\"orders\",partition=\"3\"} 42"),
            "{text}"
        );
        assert_eq!(
            line(&text, "kaflowsql_output_records_total{"),
            Some("kaflowsql_output_records_total{pipeline=\"p1\"} 10")
        );
        assert_eq!(
            line(&text, "kaflowsql_dlq_records_total{"),
            Some("kaflowsql_dlq_records_total{pipeline=\"p1\"} 2")
        );
        assert_eq!(
            line(
                &text,
                "kaflowsql_join_lookup_duration_bucket{pipeline=\"p1\",le=\"0.0005\"}"
            ),
            Some("kaflowsql_join_lookup_duration_bucket{pipeline=\"p1\",le=\"0.0005\"} 2")
        );
        assert_eq!(
            line(
                &text,
                "kaflowsql_join_lookup_duration_bucket{pipeline=\"p1\",le=\"+Inf\"}"
            ),
            Some("kaflowsql_join_lookup_duration_bucket{pipeline=\"p1\",le=\"+Inf\"} 3")
        );
        assert_eq!(
            line(
                &text,
                "kaflowsql_join_lookup_duration_bucket{pipeline=\"p1\",le=\"0.00001\"}"
            ),
            Some("kaflowsql_join_lookup_duration_bucket{pipeline=\"p1\",le=\"0.00001\"} 0")
        );
        assert!(text.contains("# TYPE kaflowsql_processing_duration_histogram histogram"));
        assert!(text.contains("kaflowsql_processing_duration_histogram_count{pipeline=\"p1\"} 0"));
        assert!(text.contains("kaflowsql_memory_usage_bytes "));
        assert!(text.contains("# HELP kaflowsql_join_hit_rate "));
        assert_eq!(
            line(&text, "kaflowsql_ready{"),
            Some("kaflowsql_ready{pipeline=\"p1\"} 0")
        );
        // The partition is revoked: its lag reads 0 from then on.
        if let Ok(mut lag) = m.consumer_lag().lock() {
            lag.clear();
        }
        assert_eq!(
            line(&r.render(), "kaflowsql_consumer_lag{"),
            Some("kaflowsql_consumer_lag{pipeline=\"p1\",topic=\"orders\",partition=\"3\"} 0")
        );
        assert!(!r.ready());
        m.set_ready(true);
        assert!(r.ready());
        assert_eq!(r.failure(), None);
        r.set_failed("pipeline `p1`: boom");
        r.set_failed("a later failure");
        assert_eq!(r.failure(), Some("pipeline `p1`: boom"));
        assert_eq!(
            line(&r.render(), "kaflowsql_ready{"),
            Some("kaflowsql_ready{pipeline=\"p1\"} 1")
        );
    }

    #[test]
    fn registries_do_not_share_metrics() {
        let (a, b) = (Registry::new(), Registry::new());
        a.pipeline("a").output_records(5);
        let _ = b.pipeline("b");
        assert!(!b.render().contains("pipeline=\"a\""));
        assert!(a
            .render()
            .contains("kaflowsql_output_records_total{pipeline=\"a\"} 5"));
    }

    #[test]
    fn samples_are_folded_by_upkeep_without_a_scrape() {
        let r = Registry::new();
        let m = r.pipeline("p");
        let h = m.lookup_histogram();
        h.record_many(0.001, 1000);
        r.upkeep();
        assert!(r
            .render()
            .contains("kaflowsql_join_lookup_duration_count{pipeline=\"p\"} 1000"));
    }
}
