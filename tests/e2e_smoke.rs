//! A tiny run of the end-to-end benchmark harness (no speed assertion), so the
//! harness keeps working: every scenario, the fixed-rate and burst modes
//! complete, every expected output arrives, the reports render, and a report
//! compared with itself shows no regression.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../benches/support/e2e_harness.rs"]
mod harness;

mod support;

#[test]
fn the_e2e_harness_runs_every_scenario_on_tiny_counts() {
    support::require_broker();
    let settings = harness::Settings {
        events: 2_000,
        rate: 500,
        seconds: 2,
        burst_base: 100,
        burst_seconds: 1,
        peer: false,
        // The Avro leg of iot runs too: its outputs are counted by complete().
        avro: true,
        // Flink is measured in the benchmark only (its JVM takes ~10 s).
        flink: false,
        repeats: 1,
        // Other test binaries may use the broker: never restart it here.
        fresh_broker: false,
        scenarios: Vec::new(),
    };
    let report = harness::run(
        &settings,
        std::path::Path::new(env!("CARGO_BIN_EXE_kaflowsql")),
    );
    assert!(report.complete(), "{report:?}");
    let names: Vec<&str> = report
        .throughput
        .iter()
        .map(|t| t.scenario.as_str())
        .collect();
    assert_eq!(names, ["iot", "trades", "orders", "user-events"]);
    assert!(
        report.throughput[0].avro_events_per_s.is_some(),
        "{:?}",
        report.throughput[0]
    );
    for t in &report.throughput {
        assert!(t.expected_outputs > 0, "{t:?}");
        assert!(
            t.baseline_events_per_s > 0.0 && t.kaflowsql_events_per_s > 0.0,
            "{t:?}"
        );
        assert!(t.peak_rss_mb > 0.0, "{t:?}");
    }
    // The data's hit rates: 75% of devices known; symbols 90% and traders all.
    assert!((report.throughput[0].join_hit_rate - 0.75).abs() < 0.02);
    assert!((report.throughput[1].join_hit_rate - 0.95).abs() < 0.02);
    let burst = report.burst.as_ref().unwrap();
    assert_eq!(burst.burst_rate, 1_000);
    assert!(burst.kaflowsql_recovery_s >= 0.0 && burst.kaflowsql_ms[2] > 0.0);
    let json = report.to_json();
    assert_eq!(json["max_throughput"].as_array().unwrap().len(), 4);
    assert!(report
        .to_markdown()
        .contains("| trades | high-dimensional join |"));
    assert!(harness::regressions(&json, &json).is_empty());
    let mut faster = json.clone();
    faster["max_throughput"][1]["kaflowsql_events_per_s"] =
        serde_json::json!(report.throughput[1].kaflowsql_events_per_s * 2.0);
    assert_eq!(
        harness::regressions(&json, &faster),
        [format!(
            "trades: throughput fell 50% ({:.0} -> {:.0} events/s)",
            report.throughput[1].kaflowsql_events_per_s * 2.0,
            report.throughput[1].kaflowsql_events_per_s
        )],
        "a 50% drop is flagged"
    );
}
