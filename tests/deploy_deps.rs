//! The install step works on a fresh machine: `deploy/local/deps.sh` decides
//! every apt package by its name, and what the build and the tests need is
//! either on the fresh image (`deploy/local/fresh-image-apt-packages.tsv`, the
//! packages of a new machine of the project's kind) or in the script's plan
//! for that machine.
//!
//! The needs are derived here independently of the script's own list, so a
//! requirement dropped from `deploy/local/apt-packages`, or a new one that
//! nobody added, fails a test: native crates come from `Cargo.lock` (an
//! unknown `-sys` crate fails until it is mapped below), commands from the
//! tests' `Command::new("...")` calls and from the scripts in `deploy/local/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
}

/// Package names of a dpkg-query/TSV listing (first field, `:arch` dropped).
fn names(file: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|n| n.split(':').next().unwrap_or(n).to_string())
        .collect()
}

fn fresh_file() -> PathBuf {
    root().join("deploy/local/fresh-image-apt-packages.tsv")
}

/// What deps.sh would install on a machine with the packages of `installed`.
fn plan(installed: &Path, extra: &[&str]) -> BTreeSet<String> {
    let out = Command::new("bash")
        .arg(root().join("deploy/local/deps.sh"))
        .arg("--plan")
        .arg(installed)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deps.sh --plan failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The requirements of deploy/local/apt-packages: (group, alternatives).
fn requirements() -> Vec<(String, Vec<String>)> {
    std::fs::read_to_string(root().join("deploy/local/apt-packages"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut f = l.split_whitespace();
            let group = f.next().unwrap().to_string();
            let alts = f.next().unwrap().split('|').map(str::to_string).collect();
            (group, alts)
        })
        .collect()
}

/// Packages a fresh machine has after deps.sh ran: its own plus the plan,
/// plus what the planned packages depend on (read from dpkg on this machine,
/// where deps.sh installed them before the tests).
fn after_install() -> BTreeSet<String> {
    let mut have = names(&fresh_file());
    let planned = plan(&fresh_file(), &[]);
    let mut todo: Vec<String> = planned.iter().cloned().collect();
    while let Some(p) = todo.pop() {
        if !have.insert(p.clone()) {
            continue;
        }
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${Depends},${Pre-Depends}", &p])
            .output()
            .unwrap();
        if !out.status.success() {
            // A dependency may be a virtual package; a planned one must be here.
            assert!(
                !planned.contains(&p),
                "`{p}` is in deps.sh's plan but not installed here: run deploy/local/deps.sh first"
            );
            continue;
        }
        for dep in String::from_utf8_lossy(&out.stdout).split(',') {
            // `a (>= 1) | b`: the first alternative is what apt installs.
            let first = dep.split('|').next().unwrap_or("").trim();
            let name = first.split([' ', ':']).next().unwrap_or("");
            if !name.is_empty() && !have.contains(name) {
                todo.push(name.to_string());
            }
        }
    }
    have
}

#[test]
fn the_plan_for_a_fresh_machine_holds_every_requirement_it_lacks() {
    let fresh = names(&fresh_file());
    assert!(fresh.len() > 500, "the fresh list looks truncated");
    // The fresh image has libclang-cpp14 (another library), not libclang-dev:
    // the trap a file glob fell into.
    assert!(fresh.contains("libclang-cpp14") && !fresh.contains("libclang-dev"));
    let all = plan(&fresh_file(), &[]);
    let build = plan(&fresh_file(), &["--build"]);
    assert!(all.contains("libclang-dev"), "{all:?}");
    for (group, alts) in requirements() {
        let met = alts.iter().any(|a| fresh.contains(a));
        let planned = all.contains(&alts[0]);
        assert!(
            met || planned,
            "requirement {alts:?} ({group}) is neither on the fresh image nor in the plan {all:?}"
        );
        assert!(
            !(met && planned),
            "{alts:?} is installed already but planned"
        );
        if group == "build" {
            assert_eq!(build.contains(&alts[0]), planned, "--build plans {alts:?}");
        } else {
            assert!(
                !build.contains(&alts[0]),
                "--build plans the test need {alts:?}"
            );
        }
    }
    // A machine that has everything installs nothing.
    let dir = tempfile::tempdir().unwrap();
    let everything = dir.path().join("all.txt");
    let mut listed: Vec<String> = fresh.iter().cloned().collect();
    listed.extend(requirements().into_iter().map(|(_, a)| a[0].clone()));
    std::fs::write(&everything, listed.join("\n")).unwrap();
    assert!(plan(&everything, &[]).is_empty());
}

/// `--flink` adds the Java runtime of Flink's mini-cluster (the differential
/// suite's reference), and only with that flag.
#[test]
fn the_flink_group_is_planned_only_with_its_flag() {
    let dir = tempfile::tempdir().unwrap();
    let without_java = dir.path().join("no-java.txt");
    let listed: Vec<String> = names(&fresh_file())
        .into_iter()
        .filter(|n| !n.starts_with("openjdk-"))
        .collect();
    std::fs::write(&without_java, listed.join("\n")).unwrap();
    let java = "openjdk-17-jre-headless";
    assert!(plan(&without_java, &["--flink"]).contains(java));
    assert!(!plan(&without_java, &[]).contains(java));
    assert!(!plan(&without_java, &["--build"]).contains(java));
    // The fresh image has it.
    assert!(!plan(&fresh_file(), &["--flink"]).contains(java));
}

/// Crates of `Cargo.lock` that build or link native code, and the apt
/// packages (alternatives joined by `|`) they need on Linux. An empty list:
/// bundled and built by `cc` (g++/gcc is a requirement of its own), or not
/// built on Linux.
const NATIVE: &[(&str, &[&str])] = &[
    ("librocksdb-sys", &["libclang-dev", "g++"]),
    ("bindgen", &["libclang-dev"]),
    ("clang-sys", &["libclang-dev"]),
    (
        "rdkafka-sys",
        &["cmake", "libcurl4-openssl-dev", "zlib1g-dev", "g++"],
    ),
    ("cmake", &["cmake"]),
    ("cc", &["g++"]),
    ("pkg-config", &["pkg-config"]),
    ("libz-sys", &["zlib1g-dev", "pkg-config"]),
    ("libduckdb-sys", &["npm|nodejs"]),
    ("libmimalloc-sys", &["g++"]),
    ("lz4-sys", &["g++"]),
    ("bzip2-sys", &["g++"]),
    ("openssl-sys", &["libssl-dev", "pkg-config"]),
    ("curl-sys", &["libcurl4-openssl-dev", "pkg-config"]),
    ("zstd-sys", &["g++"]),
    ("linux-raw-sys", &[]),
    ("windows-sys", &[]),
    ("core-foundation-sys", &[]),
    ("js-sys", &[]),
    ("web-sys", &[]),
    ("wasm-bindgen", &[]),
    ("wit-bindgen", &[]),
];

fn met(alternatives: &str, have: &BTreeSet<String>) -> bool {
    alternatives.split('|').any(|a| have.contains(a))
}

#[test]
fn native_dependencies_of_cargo_lock_are_installed_on_a_fresh_machine() {
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).unwrap();
    let crates: BTreeSet<&str> = lock
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .collect();
    let known: BTreeMap<&str, &[&str]> = NATIVE.iter().copied().collect();
    let have = after_install();
    let mut checked = 0;
    for c in &crates {
        let native = c.ends_with("-sys") || known.contains_key(c);
        if !native {
            continue;
        }
        let Some(needs) = known.get(c) else {
            panic!(
                "Cargo.lock has the native crate `{c}`, which this test does not know: add what it needs \
                 from Debian to NATIVE here and to deploy/local/apt-packages"
            );
        };
        for need in *needs {
            assert!(
                met(need, &have),
                "`{c}` needs the Debian package {need}, which a fresh machine lacks after deploy/local/deps.sh"
            );
            checked += 1;
        }
    }
    assert!(crates.contains("librocksdb-sys") && checked >= 5);
}

/// Commands the scripts and tests run: `Command::new("x")` literals in
/// tests/ and benches/, and the first word of each command in deploy/local/*.sh.
fn commands() -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut rust_files = Vec::new();
    for dir in ["tests", "tests/support", "benches", "benches/support"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "rs") {
                rust_files.push(p);
            }
        }
    }
    for p in rust_files {
        let text = std::fs::read_to_string(&p).unwrap();
        for part in text.split("Command::new(\"").skip(1) {
            if let Some(name) = part.split('"').next() {
                found.insert(name.to_string(), p.display().to_string());
            }
        }
    }
    for e in std::fs::read_dir(root().join("deploy/local")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "sh") {
            continue;
        }
        // The body of a here-document is input to another program, not commands.
        let mut heredoc: Option<String> = None;
        for line in std::fs::read_to_string(&p).unwrap().lines() {
            if let Some(end) = &heredoc {
                if line.trim() == end {
                    heredoc = None;
                }
                continue;
            }
            if let Some(i) = line.find("<<") {
                let tag: String = line[i + 2..]
                    .trim_start_matches('-')
                    .trim()
                    .trim_matches(['\'', '"'])
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !tag.is_empty() {
                    heredoc = Some(tag);
                }
            }
            let code = line.split(" #").next().unwrap_or("").trim();
            if code.starts_with('#') {
                continue;
            }
            for segment in code.split(['|', ';', '&', '(', ')', '`', '{', '}']) {
                let word = segment.split_whitespace().find(|w| {
                    !w.contains('=')
                        && !matches!(*w, "!" | "then" | "do" | "else" | "exec" | "nohup" | "time")
                });
                if let Some(w) = word {
                    if w.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
                    {
                        found.insert(w.to_string(), p.display().to_string());
                    }
                }
            }
        }
    }
    found
}

#[test]
fn commands_of_the_scripts_and_tests_come_from_the_fresh_image_or_the_plan() {
    let have = after_install();
    let home = std::env::var("HOME").unwrap_or_default();
    // Outside apt, a new machine of this kind has the Rust toolchain (rustup)
    // and CPython with pip (pyenv); .deps/ is deps.sh's own.
    let outside_apt = [
        format!("{home}/.cargo"),
        format!("{home}/.rustup"),
        format!("{home}/.pyenv"),
        root().join(".deps").display().to_string(),
    ];
    let mut checked = 0;
    for (cmd, file) in commands() {
        let kind = Command::new("bash")
            .args(["-c", &format!("type -t -- {cmd}")])
            .output()
            .unwrap();
        let kind = String::from_utf8_lossy(&kind.stdout).trim().to_string();
        if kind != "file" {
            // Builtins, keywords, functions of the script, or a word that is no command.
            continue;
        }
        let path = Command::new("bash")
            .args(["-c", &format!("type -P -- {cmd}")])
            .output()
            .unwrap();
        let path = String::from_utf8_lossy(&path.stdout).trim().to_string();
        if outside_apt.iter().any(|r| path.starts_with(r.as_str())) {
            continue;
        }
        let real = std::fs::canonicalize(&path).unwrap_or_else(|_| PathBuf::from(&path));
        // dpkg knows a file by the path its package ships, which may be the
        // other side of the /bin -> /usr/bin merge.
        let mut candidates = vec![PathBuf::from(&path), real.clone()];
        for p in [PathBuf::from(&path), real] {
            let text = p.display().to_string();
            for (merged, plain) in [("/usr/bin/", "/bin/"), ("/usr/sbin/", "/sbin/")] {
                if let Some(rest) = text.strip_prefix(merged) {
                    candidates.push(PathBuf::from(format!("{plain}{rest}")));
                } else if let Some(rest) = text.strip_prefix(plain) {
                    candidates.push(PathBuf::from(format!("{merged}{rest}")));
                }
            }
        }
        let owners: Vec<String> = candidates
            .iter()
            .filter_map(|p| {
                let out = Command::new("dpkg").arg("-S").arg(p).output().ok()?;
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                out.status.success().then_some(text)
            })
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| l.split(": ").next())
                    .flat_map(|o| {
                        o.split(", ")
                            .map(|x| x.split(':').next().unwrap_or(x).trim().to_string())
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(
            !owners.is_empty(),
            "{file} runs `{cmd}` ({path}), which no Debian package of this machine owns: install it in deploy/local/deps.sh"
        );
        assert!(
            owners.iter().any(|o| have.contains(o)),
            "{file} runs `{cmd}` from {owners:?}, which a fresh machine lacks after deploy/local/deps.sh: add it to deploy/local/apt-packages"
        );
        checked += 1;
    }
    assert!(checked >= 5, "too few commands found ({checked})");
}
