//! Every `fakegen` command written in the README, the docs, the demo script
//! and the compose file uses flags fakegen has (the docs cannot rot).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn documented_fakegen_flags_exist() {
    let root = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    )
    .join("..");
    let help = Command::new(env!("CARGO_BIN_EXE_fakegen"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let mut files = vec![
        root.join("README.md"),
        root.join("deploy/local/demo.sh"),
        root.join("deploy/compose/compose.yaml"),
    ];
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        files.push(e.unwrap().path());
    }
    let mut checked = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut entrypoint = None;
        for (i, line) in text.lines().enumerate() {
            if line.contains(r#"entrypoint: ["fakegen"]"#) {
                entrypoint = Some(i);
            }
            // A command line, or a compose service's arguments to fakegen.
            let compose_args = line.contains("command:") && entrypoint.is_some_and(|e| i <= e + 3);
            let Some(at) = line
                .find("fakegen")
                .filter(|_| line.contains("--"))
                .or(compose_args.then_some(0))
            else {
                continue;
            };
            for token in
                line[at..].split(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == '`')
            {
                let Some(flag) = token
                    .strip_prefix("--")
                    .map(|f| f.split('=').next().unwrap_or(f))
                else {
                    continue;
                };
                if flag.is_empty() {
                    continue;
                }
                assert!(
                    help.contains(&format!("--{flag}")),
                    "{}:{}: fakegen has no --{flag}",
                    file.display(),
                    i + 1
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "found the documented flags ({checked})");
}
