//! Every pipeline in `pipelines/` runs through the offline runner against its
//! fixtures, with several micro-batch sizes (results must not depend on where
//! batches are cut), and `kaflowsql validate`, `explain` and `test` work on it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use kaflowsql::config::Pipeline;
use kaflowsql::engine::Engine;
use kaflowsql::testing::{compare, read_expected, read_input, run};

fn pipelines() -> Vec<(PathBuf, PathBuf)> {
    let root = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    )
    .join("pipelines");
    let mut found: Vec<(PathBuf, PathBuf)> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| {
            let path = e.ok()?.path();
            (path.extension()? == "yaml").then(|| {
                let stem = path.file_stem().unwrap().to_owned();
                (path.clone(), root.join("fixtures").join(stem))
            })
        })
        .collect();
    found.sort();
    found
}

#[test]
fn every_pipeline_has_fixtures_and_matches_them_at_any_batch_size() {
    let all = pipelines();
    assert!(
        all.len() >= 4,
        "expected the four example pipelines, found {all:?}"
    );
    for (file, fixtures) in all {
        let pipeline = Pipeline::load(&file).unwrap_or_else(|e| panic!("{e}"));
        let input = read_input(&fixtures.join("input.jsonl")).unwrap();
        let expected = read_expected(&fixtures.join("expected.jsonl")).unwrap();
        assert!(!expected.is_empty(), "{} expects no rows", file.display());
        let mut first: Option<Vec<String>> = None;
        for batch_rows in [1, 2, 3, 4096] {
            let mut engine = Engine::new(&pipeline).unwrap().with_batch_rows(batch_rows);
            let out = run(&mut engine, &input).unwrap();
            let verdict = compare(&out.lines, &expected, false);
            assert!(
                verdict.matches(),
                "{} with batches of {batch_rows}:\n{}",
                file.display(),
                verdict.report()
            );
            match &first {
                None => first = Some(out.lines),
                Some(f) => assert_eq!(f, &out.lines, "output bytes depend on the batch size"),
            }
        }
    }
}

fn kaflowsql(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kaflowsql"))
        .args(args)
        .current_dir(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

#[test]
fn cli_validate_explain_and_test_work_on_every_pipeline() {
    for (file, fixtures) in pipelines() {
        let f = file.to_str().unwrap();
        let v = kaflowsql(&["validate", f]);
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
        let e = kaflowsql(&["explain", f]);
        assert!(e.status.success());
        let text = String::from_utf8_lossy(&e.stdout);
        assert!(
            text.contains("driving stream") && text.contains("DuckDB runs"),
            "{text}"
        );
        let t = kaflowsql(&[
            "test",
            f,
            "--input",
            fixtures.join("input.jsonl").to_str().unwrap(),
            "--expect",
            fixtures.join("expected.jsonl").to_str().unwrap(),
        ]);
        assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stdout));
    }
}

#[test]
fn cli_test_prints_a_diff_and_fails_on_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("expected.jsonl");
    std::fs::write(&wrong, "{\"key\":\"AAPL\",\"value\":{\"trade_id\":99}}\n").unwrap();
    let out = kaflowsql(&[
        "test",
        "pipelines/trades.yaml",
        "--input",
        "pipelines/fixtures/trades/input.jsonl",
        "--expect",
        wrong.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("- {\"key\":\"AAPL\",\"value\":{\"trade_id\":99}}"),
        "{text}"
    );
    assert!(text.contains("5 unexpected line(s)"), "{text}");
}

#[test]
fn cli_output_is_byte_identical_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    for i in 0..2 {
        let out = dir.path().join(format!("out{i}.jsonl"));
        let r = kaflowsql(&[
            "test",
            "pipelines/user_events.yaml",
            "--input",
            "pipelines/fixtures/user_events/input.jsonl",
            "--output",
            out.to_str().unwrap(),
        ]);
        assert!(r.status.success());
        outputs.push(std::fs::read(out).unwrap());
    }
    assert_eq!(outputs[0], outputs[1]);
    assert_eq!(outputs[0].iter().filter(|b| **b == b'\n').count(), 5);
}

#[test]
fn cli_validate_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "name: x\nquery: |\n  SELECT a.id FROM a\n  RIGHT JOIN b ON a.id = b.id\noutput:\n  topic: out\n",
    )
    .unwrap();
    let out = kaflowsql(&["validate", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:4:"), "{err}");
    assert!(err.contains("RIGHT JOIN is not supported yet"), "{err}");
    assert!(err.contains("help:"), "{err}");
}
