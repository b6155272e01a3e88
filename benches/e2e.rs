//! End-to-end benchmark through the local broker: every shipped pipeline
//! against a passthrough copy measured in the same run, the IoT one against a
//! Quix Streams peer too (see `support/e2e_harness.rs`).
//!
//! Run: `deploy/local/broker.sh restart && cargo bench --bench e2e [-- --compare previous.json]`
//! (`E2E_EVENTS` stream records per scenario, `E2E_REPEATS` alternating rounds
//! (medians reported), `E2E_SCENARIOS=iot,trades,...`,
//! `E2E_RATE`/`E2E_SECONDS` for the fixed-rate mode, `E2E_BURST_BASE`/
//! `E2E_BURST_SECONDS` for the burst; `E2E_AVRO=0` skips the Avro-in leg of iot
//! (the same data as Avro through `deploy/local/schema-registry.py`); `E2E_FLINK=0` skips Flink SQL 2.0
//! on every scenario (`benches/support/flink_peer.py`, `.deps/flink-venv` from `deploy/local/deps.sh --flink`;
//! `E2E_FLINK_PARALLELISM`, 1); `E2E_PEER=0` skips the Quix Streams peer, which
//! needs quixstreams 3.28.1 in `.deps/venv`, installed by deploy/local/deps.sh). Writes
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
        burst_base: env_or("E2E_BURST_BASE", 1_000),
        burst_seconds: env_or("E2E_BURST_SECONDS", 3),
        peer: std::env::var("E2E_PEER").map_or(true, |v| v != "0"),
        avro: std::env::var("E2E_AVRO").map_or(true, |v| v != "0"),
        flink: std::env::var("E2E_FLINK").map_or(true, |v| v != "0"),
        repeats: env_or("E2E_REPEATS", 3) as u32,
        fresh_broker: true,
        scenarios: std::env::var("E2E_SCENARIOS")
            .map(|v| v.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
    };
    // E2E_KAFLOWSQL: another build of the binary (a before/after comparison).
    let binary = std::env::var_os("E2E_KAFLOWSQL").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_kaflowsql")),
        PathBuf::from,
    );
    let report = harness::run(&settings, &binary);
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
