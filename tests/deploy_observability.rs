//! The shipped Grafana dashboard and Prometheus alert rules parse, and every
//! metric they query is one kaflowsql exports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kaflowsql::telemetry::Registry;

fn exported_names() -> Vec<String> {
    let r = Registry::new();
    let p = r.pipeline("p");
    if let Ok(mut lag) = p.consumer_lag().lock() {
        lag.insert(("t".to_string(), 0), 0);
    }
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
    let root = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
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
        "ConsumerLagGrowing",
        "DeadLettersGrowing",
    ] {
        assert!(alerts.iter().any(|a| a == guide), "missing alert {guide}");
    }
}

#[test]
fn dashboard_parses_and_uses_exported_metrics() {
    let root = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
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
        "Consumer lag",
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

#[test]
fn promtool_accepts_the_alert_rules() {
    let root = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(root.join("deploy/prometheus/alerts.yaml"))
        .output()
        .expect("promtool is installed (deploy/local/deps.sh)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// promtool parses the exposition; its only lint findings are names the
/// guide fixes (a gauge ending in `_total`, a histogram named `..._histogram`).
#[test]
fn promtool_parses_the_exposition() {
    use std::io::Write as _;
    let r = Registry::new();
    let p = r.pipeline("p");
    p.output_records(3);
    p.lookup_histogram().record(0.000_2);
    if let Ok(mut lag) = p.consumer_lag().lock() {
        lag.insert(("t".to_string(), 0), 7);
    }
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (deploy/local/deps.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(r.render().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let fixed_by_guide = [
        "kaflowsql_processing_duration_histogram metric name should not include type 'histogram'",
        "kaflowsql_state_entries_total non-counter metrics should not have \"_total\" suffix",
    ];
    let findings: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !fixed_by_guide.contains(l))
        .collect();
    assert!(
        findings.is_empty(),
        "promtool: {findings:?} (exit {:?})",
        out.status.code()
    );
}
