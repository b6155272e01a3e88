//! The shipped Grafana dashboard and Prometheus alert rules parse, and every
//! metric they query is one kaflowsql exports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use kaflowsql::telemetry::{PipelineMetrics, Registry};

fn exported_names() -> Vec<String> {
    let r = Registry::default();
    r.add(PipelineMetrics::new("p"));
    r.render()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("kaflowsql_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        out.push(name);
    }
    out
}

fn check(expr: &str, exported: &[String]) {
    let names = metric_names(expr);
    assert!(!names.is_empty(), "`{expr}` queries no kaflowsql metric");
    for n in names {
        assert!(
            exported.contains(&n),
            "`{expr}` queries `{n}`, which kaflowsql does not export"
        );
    }
}

#[test]
fn alert_rules_parse_and_use_exported_metrics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yaml")).unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let exported = exported_names();
    let mut alerts = Vec::new();
    for group in doc["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            alerts.push(rule["alert"].as_str().unwrap().to_string());
            check(rule["expr"].as_str().unwrap(), &exported);
        }
    }
    for guide in [
        "HighLatency",
        "LowThroughput",
        "LowJoinRate",
        "DeadLettersGrowing",
    ] {
        assert!(alerts.iter().any(|a| a == guide), "missing alert {guide}");
    }
}

#[test]
fn dashboard_parses_and_uses_exported_metrics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("deploy/grafana/kaflowsql.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let exported = exported_names();
    let panels = doc["panels"].as_array().unwrap();
    let titles: Vec<&str> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for want in [
        "Processing rate",
        "Join success rate",
        "P99 latency",
        "Memory",
        "Dead letters",
    ] {
        assert!(
            titles.iter().any(|t| t.starts_with(want)),
            "missing panel {want}: {titles:?}"
        );
    }
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            check(t["expr"].as_str().unwrap(), &exported);
        }
    }
}
