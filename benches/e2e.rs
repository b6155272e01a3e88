//! End-to-end benchmark through the local broker: the IoT enrichment against
//! a passthrough copy measured in the same run (see `support/e2e_harness.rs`).
//!
//! Run: `deploy/local/broker.sh restart && cargo bench --bench e2e [-- --compare previous.json]`
//! (`E2E_EVENTS`, `E2E_RATE`, `E2E_SECONDS` change the sizes; `E2E_PEER=1`
//! adds the Quix Streams peer, which needs `pip install quixstreams==3.28.1`
//! into `.deps/venv`). Writes
//! `<target>/bench/e2e.json` and `e2e.md`; exits non-zero when outputs are
//! missing or, with `--compare`, when throughput or p99 regressed by more than 10%.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "support/e2e_harness.rs"]
mod harness;

use std::path::PathBuf;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let compare = args
        .iter()
        .position(|a| a == "--compare")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let settings = harness::Settings {
        events: env_or("E2E_EVENTS", 200_000),
        rate: env_or("E2E_RATE", 10_000),
        seconds: env_or("E2E_SECONDS", 5),
        // The Quix Streams peer is off by default: on Tansu 0.6.0 it does not
        // complete (see docs/performance.md). E2E_PEER=1 runs it.
        peer: std::env::var("E2E_PEER").is_ok_and(|v| v == "1"),
    };
    let report = harness::run(
        settings,
        std::path::Path::new(env!("CARGO_BIN_EXE_kaflowsql")),
    );
    let dir = PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
        .join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    let json = report.to_json();
    std::fs::write(
        dir.join("e2e.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("e2e.md"), report.to_markdown()).unwrap();
    println!(
        "\n{}\nreports: {}/e2e.json, e2e.md",
        report.to_markdown(),
        dir.display()
    );
    let mut failed = !report.complete();
    if let Some(previous) = compare {
        let before: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&previous).unwrap()).unwrap();
        for r in harness::regressions(&json, &before) {
            println!("REGRESSION against {previous}: {r}");
            failed = true;
        }
    }
    if failed {
        std::process::exit(1);
    }
}
