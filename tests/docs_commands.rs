//! The docs cannot rot: every shell command in README.md and docs/*.md is
//! checked against the code, and every pipeline they show is validated.
//!
//! - `kaflowsql ...`: the subcommand exists and takes every `--flag` written;
//!   offline commands on files of this repository (`validate`, `explain`,
//!   `test`) run and succeed.
//! - `fakegen ...`: checked by `fakegen/tests/documented_flags.rs` (where
//!   its binary is built).
//! - scripts and paths (`deploy/local/*.sh`, `docker -f`, `kubectl -f`): exist.
//! - `cargo bench --bench X`: `benches/X.rs` exists.
//! - `curl .../path`: the HTTP server answers that path.
//!
//! A command of another kind fails the test, so a new kind of documented
//! command gets a check here. Commands that need a broker, a container engine
//! or a cluster run elsewhere: the demo script, `tests/kafka_*.rs`, and the
//! manifest checks in `tests/deploy_manifests.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    )
}

fn doc_files() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// Fenced blocks of `lang`: (file, first line number, lines).
fn blocks(lang: &str) -> Vec<(PathBuf, usize, Vec<String>)> {
    let mut out = Vec::new();
    for file in doc_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut open: Option<(String, usize, Vec<String>)> = None;
        for (i, line) in text.lines().enumerate() {
            if let Some(rest) = line.trim_start().strip_prefix("```") {
                match open.take() {
                    None => open = Some((rest.trim().to_string(), i + 2, Vec::new())),
                    Some((l, start, body)) => {
                        if l == lang {
                            out.push((file.clone(), start, body));
                        }
                    }
                }
            } else if let Some((_, _, body)) = open.as_mut() {
                body.push(line.to_string());
            }
        }
    }
    out
}

/// Shell commands of a block: continuations joined, comments and heredoc
/// bodies dropped, `&&` and `;` split.
fn commands(body: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut heredoc: Option<String> = None;
    let mut pending = String::new();
    for line in body {
        if let Some(end) = &heredoc {
            if line.trim() == end {
                heredoc = None;
            }
            continue;
        }
        let line = match line.find(" #") {
            Some(i) => &line[..i],
            None if line.trim_start().starts_with('#') => "",
            None => line,
        };
        if let Some(i) = line.find("<<'") {
            let end = line[i + 3..].split('\'').next().unwrap_or_default();
            heredoc = Some(end.to_string());
        }
        if let Some(head) = line.trim_end().strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        for part in pending.split("&&").flat_map(|p| p.split(';')) {
            let part = part.trim();
            if !part.is_empty() {
                out.push(part.to_string());
            }
        }
        pending.clear();
    }
    out
}

fn help(binary: &str, args: &[&str]) -> String {
    let out = Command::new(binary)
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`{} {} --help` failed: {}",
        binary,
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn flags(tokens: &[&str]) -> Vec<String> {
    tokens
        .iter()
        .filter(|t| t.starts_with("--") && t.len() > 2)
        .map(|t| {
            t.split('=')
                .next()
                .unwrap_or(t)
                .trim_matches(['[', ']'])
                .to_string()
        })
        .collect()
}

fn check_kaflowsql(tokens: &[&str], at: &str) {
    let bin = env!("CARGO_BIN_EXE_kaflowsql");
    let sub: Vec<&str> = match tokens.get(1) {
        Some(&"state") => tokens.iter().skip(1).take(2).copied().collect(),
        Some(s) => vec![*s],
        None => vec![],
    };
    let text = help(bin, &sub);
    for flag in flags(tokens) {
        assert!(
            text.contains(&flag),
            "{at}: `kaflowsql {}` has no {flag}",
            sub.join(" ")
        );
    }
    // Offline commands on files of this repository run for real.
    let files: Vec<&str> = tokens
        .iter()
        .skip(2)
        .copied()
        .filter(|t| !t.starts_with('-'))
        .collect();
    let offline = matches!(sub.first(), Some(&"validate" | &"explain" | &"test"));
    if offline && !files.is_empty() && files.iter().all(|f| root().join(f).is_file()) {
        let out = Command::new(bin)
            .args(&tokens[1..])
            .current_dir(root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{at}: `{}` failed:\n{}{}",
            tokens.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn check_path(path: &str, at: &str) {
    let p = path.trim_end_matches('/');
    assert!(root().join(p).exists(), "{at}: `{path}` does not exist");
}

fn check(command: &str, at: &str) {
    let tokens: Vec<&str> = command.split_whitespace().collect();
    // Leading VAR=value assignments set the environment of the command.
    let start = tokens
        .iter()
        .position(|t| !t.contains('=') || t.starts_with('-'))
        .unwrap_or(0);
    let tokens = &tokens[start..];
    let Some(&first) = tokens.first() else {
        return;
    };
    let after = |flag: &str| {
        tokens
            .iter()
            .position(|t| *t == flag)
            .and_then(|i| tokens.get(i + 1))
            .copied()
    };
    match first {
        "kaflowsql" => check_kaflowsql(tokens, at),
        // Its flags: fakegen/tests/documented_flags.rs.
        "fakegen" => {}
        "cargo" => {
            if let Some(bench) = after("--bench") {
                check_path(&format!("benches/{bench}.rs"), at);
            }
        }
        "docker" | "kubectl" => {
            if let Some(path) = after("-f") {
                check_path(path, at);
            }
        }
        "curl" => {
            let url = tokens.iter().find(|t| t.starts_with("http")).unwrap();
            let path = url.splitn(4, '/').nth(3).unwrap_or_default();
            let path = format!("/{}", path.split('?').next().unwrap_or_default());
            assert!(
                ["/metrics", "/healthz", "/readyz", "/debug/pprof/profile"]
                    .contains(&path.as_str()),
                "{at}: the server has no {path}"
            );
        }
        // Shell plumbing around other commands.
        "cat" | "cp" | "git" | "for" | "do" | "done" | "valgrind" | "perf" | "printf" | "chmod"
        | "YAML" => {}
        p if p.contains('/') => check_path(p, at),
        other => panic!("{at}: no check for documented command `{other}` (add one in this test)"),
    }
}

#[test]
fn every_documented_command_exists_and_offline_ones_run() {
    let mut checked = 0;
    for (file, line, body) in blocks("bash") {
        let at = format!("{}:{line}", file.strip_prefix(root()).unwrap().display());
        for c in commands(&body) {
            check(&c, &at);
            checked += 1;
        }
    }
    assert!(checked >= 20, "found the documented commands ({checked})");
}

#[test]
fn every_documented_pipeline_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (file, line, body) in blocks("yaml") {
        let text = body.join("\n");
        if !text.contains("query:") {
            continue;
        }
        let at = format!("{}:{line}", file.strip_prefix(root()).unwrap().display());
        let path = dir.path().join(format!("doc-{checked}.yaml"));
        std::fs::write(&path, &text).unwrap();
        if let Err(e) = kaflowsql::config::Pipeline::load(&path) {
            panic!("{at}: the documented pipeline is invalid:\n{e}");
        }
        checked += 1;
    }
    assert!(checked >= 2, "found the documented pipelines ({checked})");
}
