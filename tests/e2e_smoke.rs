//! A tiny run of the end-to-end benchmark harness (no speed assertion), so the
//! harness keeps working: both modes complete, every expected output arrives,
//! the reports render, and a report compared with itself shows no regression.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../benches/support/e2e_harness.rs"]
mod harness;

mod support;

#[test]
fn the_e2e_harness_runs_end_to_end_on_tiny_counts() {
    support::require_broker();
    let settings = harness::Settings {
        events: 3_000,
        rate: 500,
        seconds: 2,
        peer: false,
    };
    let report = harness::run(
        settings,
        std::path::Path::new(env!("CARGO_BIN_EXE_kaflowsql")),
    );
    assert!(report.complete(), "{report:?}");
    assert!(report.baseline_events_per_s > 0.0 && report.kaflowsql_events_per_s > 0.0);
    assert!(report.peak_rss_mb > 0.0);
    let json = report.to_json();
    assert_eq!(
        json["max_throughput"]["expected_outputs"],
        report.expected_outputs
    );
    assert!(report.to_markdown().contains("| iot | max throughput"));
    assert!(harness::regressions(&json, &json).is_empty());
    let mut slower = json.clone();
    slower["max_throughput"]["kaflowsql_events_per_s"] =
        serde_json::json!(report.kaflowsql_events_per_s * 2.0);
    assert_eq!(
        harness::regressions(&json, &slower).len(),
        1,
        "a 50% drop is flagged"
    );
}
