//! The end-to-end benchmark's results: per-scenario throughput, fixed-rate
//! and burst latency, their JSON and Markdown forms, and the regression check
//! against a previous JSON report.

#![allow(dead_code)]

use std::collections::HashMap;

/// Max-throughput figures of one scenario.
#[derive(Clone, Debug, Default)]
pub struct Throughput {
    pub scenario: String,
    pub guide_row: String,
    pub description: String,
    /// Event-stream records (input events).
    pub events: u64,
    pub baseline_events_per_s: f64,
    pub kaflowsql_events_per_s: f64,
    pub outputs: u64,
    pub expected_outputs: u64,
    pub peak_rss_mb: f64,
    pub join_hit_rate: f64,
    /// Records per micro-batch, on average (records read / DuckDB evaluations).
    pub mean_batch_rows: f64,
    /// The Quix Streams peer (None when not run or failed).
    pub peer_events_per_s: Option<f64>,
    pub peer_outputs: Option<u64>,
    /// Every round's figure (the medians above are of these).
    pub baseline_runs: Vec<f64>,
    pub kaflowsql_runs: Vec<f64>,
    pub peer_runs: Vec<f64>,
    /// kaflowsql on the same data as Avro through the schema registry
    /// (iot; None when not run or outputs went missing).
    pub avro_events_per_s: Option<f64>,
    pub avro_outputs: Option<u64>,
    pub avro_runs: Vec<f64>,
    /// Flink SQL 2.0 on the same data (iot; None when not run or rows lost).
    pub flink_events_per_s: Option<f64>,
    pub flink_outputs: Option<u64>,
    pub flink_runs: Vec<f64>,
    /// User + system CPU per input event, µs (medians over the rounds):
    /// kaflowsql's process, the passthrough's share of the harness process,
    /// the Quix Streams and Flink process groups.
    pub kaflowsql_cpu_us: Option<f64>,
    pub baseline_cpu_us: Option<f64>,
    pub peer_cpu_us: Option<f64>,
    pub flink_cpu_us: Option<f64>,
}

impl Throughput {
    pub fn ratio_to_baseline(&self) -> f64 {
        self.kaflowsql_events_per_s / self.baseline_events_per_s.max(1.0)
    }
    pub fn complete(&self) -> bool {
        self.outputs == self.expected_outputs
            && self.avro_outputs.is_none_or(|a| a == self.expected_outputs)
            && self
                .flink_outputs
                .is_none_or(|f| f == self.expected_outputs)
            && self.peer_outputs.is_none_or(|p| p == self.expected_outputs)
    }
}

/// Latency of a fixed-rate or burst run, baseline and kaflowsql.
#[derive(Clone, Debug, Default)]
pub struct Latency {
    pub scenario: String,
    pub rate: u64,
    pub seconds: u64,
    /// Burst rate (burst mode only).
    pub burst_rate: u64,
    pub baseline_ms: [f64; 3],
    pub kaflowsql_ms: [f64; 3],
    /// Seconds from the burst's end until the last burst event's output
    /// arrived (burst mode only).
    pub baseline_recovery_s: f64,
    pub kaflowsql_recovery_s: f64,
    pub outputs: u64,
    pub expected_outputs: u64,
}

impl Latency {
    fn json(&self) -> serde_json::Value {
        let q = |v: &[f64; 3]| serde_json::json!({"p50": v[0], "p95": v[1], "p99": v[2]});
        serde_json::json!({
            "scenario": self.scenario,
            "rate": self.rate,
            "seconds": self.seconds,
            "burst_rate": self.burst_rate,
            "baseline_ms": q(&self.baseline_ms),
            "kaflowsql_ms": q(&self.kaflowsql_ms),
            "baseline_recovery_s": self.baseline_recovery_s,
            "kaflowsql_recovery_s": self.kaflowsql_recovery_s,
            "outputs": self.outputs,
            "expected_outputs": self.expected_outputs,
        })
    }
}

/// What one harness run measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub throughput: Vec<Throughput>,
    pub fixed_rate: Option<Latency>,
    pub burst: Option<Latency>,
}

impl Report {
    /// True when no expected output is missing (a run that lost rows failed).
    pub fn complete(&self) -> bool {
        self.throughput.iter().all(Throughput::complete)
            && [&self.fixed_rate, &self.burst]
                .into_iter()
                .flatten()
                .all(|l| l.outputs == l.expected_outputs)
    }

    pub fn to_json(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .throughput
            .iter()
            .map(|t| {
                serde_json::json!({
                    "scenario": t.scenario,
                    "guide_row": t.guide_row,
                    "description": t.description,
                    "events": t.events,
                    "baseline_events_per_s": t.baseline_events_per_s,
                    "kaflowsql_events_per_s": t.kaflowsql_events_per_s,
                    "ratio_to_baseline": t.ratio_to_baseline(),
                    "outputs": t.outputs,
                    "expected_outputs": t.expected_outputs,
                    "peak_rss_mb": t.peak_rss_mb,
                    "join_hit_rate": t.join_hit_rate,
                    "mean_batch_rows": t.mean_batch_rows,
                    "rounds": {"baseline_events_per_s": t.baseline_runs, "kaflowsql_events_per_s": t.kaflowsql_runs, "peer_events_per_s": t.peer_runs},
                    "peer_quixstreams_events_per_s": t.peer_events_per_s,
                    "avro_events_per_s": t.avro_events_per_s,
                    "flink_events_per_s": t.flink_events_per_s,
                    "flink_rounds": t.flink_runs,
                    "flink_outputs": t.flink_outputs,
                    "cpu_us_per_event": {"kaflowsql": t.kaflowsql_cpu_us, "passthrough": t.baseline_cpu_us, "quixstreams": t.peer_cpu_us, "flink": t.flink_cpu_us},
                    "avro_rounds": t.avro_runs,
                    "avro_outputs": t.avro_outputs,
                    "peer_outputs": t.peer_outputs,
                    "ratio_to_peer": t.peer_events_per_s.map(|p| t.kaflowsql_events_per_s / p.max(1.0)),
                })
            })
            .collect();
        serde_json::json!({
            "machine": format!("{} cores shared by broker (Tansu 0.6.0), generator, pipeline and reader", std::thread::available_parallelism().map_or(0, |n| n.get())),
            "max_throughput": rows,
            "fixed_rate": self.fixed_rate.as_ref().map(Latency::json),
            "burst": self.burst.as_ref().map(Latency::json),
            "complete": self.complete(),
        })
    }

    pub fn to_markdown(&self) -> String {
        let mut md = String::from(
            "| scenario | guide row | events | passthrough | kaflowsql | ratio | outputs | peak RSS | hit rate |\n|---|---|---|---|---|---|---|---|---|\n",
        );
        for t in &self.throughput {
            md += &format!(
                "| {} | {} | {} | {:.0} ev/s | {:.0} ev/s | **{:.2}** | {} of {}{} | {:.0} MB | {:.3} |\n",
                t.scenario,
                t.guide_row,
                t.events,
                t.baseline_events_per_s,
                t.kaflowsql_events_per_s,
                t.ratio_to_baseline(),
                t.outputs,
                t.expected_outputs,
                if t.outputs == t.expected_outputs { "" } else { " FAILED" },
                t.peak_rss_mb,
                t.join_hit_rate
            );
        }
        for t in &self.throughput {
            match (t.peer_events_per_s, t.peer_outputs) {
                (Some(p), _) => {
                    md += &format!(
                        "\nPeer (Quix Streams), {}: {p:.0} ev/s; kaflowsql / peer = **{:.1}**\n",
                        t.scenario,
                        t.kaflowsql_events_per_s / p.max(1.0)
                    )
                }
                (None, Some(n)) => {
                    md += &format!(
                        "\nPeer (Quix Streams), {}: FAILED ({n} of {} outputs)\n",
                        t.scenario, t.expected_outputs
                    )
                }
                _ => {}
            }
        }
        md += "\nCPU per input event (user + system, µs, medians):\n\n| scenario | passthrough | kaflowsql | Quix Streams | Flink SQL |\n|---|---|---|---|---|\n";
        let us = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.2}"));
        for t in &self.throughput {
            md += &format!(
                "| {} | {} | {} | {} | {} |\n",
                t.scenario,
                us(t.baseline_cpu_us),
                us(t.kaflowsql_cpu_us),
                us(t.peer_cpu_us),
                us(t.flink_cpu_us)
            );
        }
        for t in &self.throughput {
            match (t.flink_events_per_s, t.flink_outputs) {
                (Some(f), _) => {
                    md += &format!(
                        "\nFlink SQL 2.0, {}: {f:.0} ev/s; kaflowsql / Flink = **{:.1}**\n",
                        t.scenario,
                        t.kaflowsql_events_per_s / f.max(1.0)
                    )
                }
                (None, Some(n)) => {
                    md += &format!(
                        "\nFlink SQL 2.0, {}: FAILED ({n} of {} outputs)\n",
                        t.scenario, t.expected_outputs
                    )
                }
                _ => {}
            }
        }
        for t in &self.throughput {
            match (t.avro_events_per_s, t.avro_outputs) {
                (Some(a), _) => {
                    md += &format!(
                        "\nAvro in (Confluent wire format, schema registry), {}: {a:.0} ev/s; Avro / JSON = **{:.2}**\n",
                        t.scenario,
                        a / t.kaflowsql_events_per_s.max(1.0)
                    )
                }
                (None, Some(n)) => {
                    md += &format!(
                        "\nAvro in, {}: FAILED ({n} of {} outputs)\n",
                        t.scenario, t.expected_outputs
                    )
                }
                _ => {}
            }
        }
        for l in [&self.fixed_rate, &self.burst].into_iter().flatten() {
            let (b, k) = (&l.baseline_ms, &l.kaflowsql_ms);
            let mode = if l.burst_rate > 0 {
                format!(
                    "{}/s with a {} s burst at {}/s",
                    l.rate, l.seconds, l.burst_rate
                )
            } else {
                format!("fixed {}/s for {} s", l.rate, l.seconds)
            };
            md += &format!(
                "\n{}, {mode}: latency production → arrival p50 / p95 / p99: passthrough {:.1} / {:.1} / {:.1} ms, kaflowsql {:.1} / {:.1} / {:.1} ms ({} of {} outputs)",
                l.scenario, b[0], b[1], b[2], k[0], k[1], k[2], l.outputs, l.expected_outputs
            );
            if l.burst_rate > 0 {
                md += &format!(
                    "; caught up {:.2} s after the burst (passthrough {:.2} s)",
                    l.kaflowsql_recovery_s, l.baseline_recovery_s
                );
            }
            md += "\n";
        }
        md
    }
}

/// Regressions of more than 10% in throughput or p99 against a previous JSON report.
pub fn regressions(current: &serde_json::Value, previous: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    let rows = |v: &serde_json::Value| -> HashMap<String, f64> {
        v["max_throughput"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter_map(|r| {
                        Some((
                            r["scenario"].as_str()?.to_string(),
                            r["kaflowsql_events_per_s"].as_f64()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let before = rows(previous);
    for (scenario, now) in rows(current) {
        if let Some(&b) = before.get(&scenario) {
            if now < b * 0.9 {
                out.push(format!(
                    "{scenario}: throughput fell {:.0}% ({b:.0} -> {now:.0} events/s)",
                    (1.0 - now / b) * 100.0
                ));
            }
        }
    }
    for mode in ["fixed_rate", "burst"] {
        let p99 = |v: &serde_json::Value| v[mode]["kaflowsql_ms"]["p99"].as_f64();
        if let (Some(now), Some(b)) = (p99(current), p99(previous)) {
            if now > b * 1.1 {
                out.push(format!(
                    "{mode}: p99 latency rose {:.0}% ({b:.2} -> {now:.2} ms)",
                    (now / b - 1.0) * 100.0
                ));
            }
        }
    }
    out
}
