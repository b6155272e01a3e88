//! The deployment files are checked with what can run here (no container
//! engine): hadolint on the Dockerfile, the Kubernetes schemas on the
//! manifests, and kaflowsql's own loaders on the configs they carry. Both
//! linters come from `deploy/local/deps.sh`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kaflowsql::config::{GlobalConfig, Pipeline};

fn root() -> PathBuf {
    std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    )
}

fn tool(name: &str) -> PathBuf {
    let path = root().join(".deps/venv/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run deploy/local/deps.sh",
        path.display()
    );
    path
}

#[test]
fn dockerfile_passes_hadolint_and_builds_as_ci_does() {
    let out = Command::new(tool("hadolint"))
        .arg("--config")
        .arg(root().join("deploy/.hadolint.yaml"))
        .arg(root().join("deploy/Dockerfile"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let docker = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let deps = std::fs::read_to_string(root().join("deploy/local/deps.sh")).unwrap();
    // The same DuckDB library as the tests link, and the locked workspace build.
    let duck = "@duckdb/node-bindings-linux-x64@1.5.6-r.1";
    assert!(deps.contains(duck));
    assert!(docker.contains("cargo build --release --locked --workspace --bins"));
    assert!(docker.contains("USER 10001") && docker.contains("ENTRYPOINT [\"kaflowsql\"]"));
    assert!(docker.contains("VOLUME [\"/var/lib/kaflowsql\"]"));
    assert!(docker.contains("KAFLOWSQL_STATE_ROCKSDB_PATH=/var/lib/kaflowsql/state"));
    // The build stage installs through the same script and package list as a
    // developer machine and CI (tests/deploy_deps.rs checks the list itself).
    assert!(
        docker.contains("COPY deploy/local/deps.sh deploy/local/apt-packages deploy/local/"),
        "the build stage copies the install script and its package list"
    );
    assert!(docker.contains("RUN deploy/local/deps.sh --build"));
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    assert!(
        ignore.lines().any(|l| l == ".deps"),
        "a local .deps must not replace the image's"
    );
}

#[test]
fn kubernetes_manifests_match_the_schemas() {
    let files: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(files.len() >= 4);
    let out = Command::new(tool("kubernetes-validate"))
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("passed").count(), files.len(), "{text}");
}

#[test]
fn the_configmap_and_statefulset_run_a_valid_pipeline_per_partition() {
    let text = std::fs::read_to_string(root().join("deploy/k8s/configmap.yaml")).unwrap();
    let cm: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let global = cm["data"]["kaflowsql.yaml"].as_str().unwrap();
    // The credentials are Secret values in the pod's environment, not ConfigMap text.
    let env = |k: &str| {
        ["KAFKA_USERNAME", "KAFKA_PASSWORD"]
            .contains(&k)
            .then(|| "x".to_string())
    };
    let parsed =
        GlobalConfig::parse_with(Path::new("configmap:kaflowsql.yaml"), global, &env).unwrap();
    assert_eq!(
        parsed.consumer_properties()["security.protocol"],
        "SASL_SSL"
    );
    assert!(!global.contains("password: ") || global.contains("password: { env: KAFKA_PASSWORD }"));
    let pipeline = cm["data"]["user_events.yaml"].as_str().unwrap();
    Pipeline::parse(Path::new("configmap:user_events.yaml"), pipeline)
        .unwrap_or_else(|e| panic!("{e}"));

    let text = std::fs::read_to_string(root().join("deploy/k8s/statefulset.yaml")).unwrap();
    let sts: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    let from_secret: Vec<&str> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|e| e["valueFrom"]["secretKeyRef"]["name"].as_str() == Some("kaflowsql-kafka"))
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(from_secret, ["KAFKA_USERNAME", "KAFKA_PASSWORD"]);
    let secret: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("deploy/k8s/secret.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(secret["kind"].as_str(), Some("Secret"));
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let at = args.iter().position(|a| *a == "--partition").unwrap();
    assert_eq!(args[at + 1], "auto", "the pod ordinal picks the partition");
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert!(!sts["spec"]["volumeClaimTemplates"]
        .as_sequence()
        .unwrap()
        .is_empty());
}

#[test]
fn the_compose_stack_refers_to_files_that_exist() {
    let dir = root().join("deploy/compose");
    let text = std::fs::read_to_string(dir.join("compose.yaml")).unwrap();
    let compose: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let services = compose["services"].as_mapping().unwrap();
    for name in ["kafka", "kaflowsql", "fakegen", "prometheus", "grafana"] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    for (_, svc) in services {
        for v in svc["volumes"].as_sequence().into_iter().flatten() {
            let host = v.as_str().unwrap().split(':').next().unwrap();
            if host.starts_with('.') {
                assert!(dir.join(host).exists(), "{host} does not exist");
            }
        }
    }
    let global = std::fs::read_to_string(dir.join("kaflowsql.yaml")).unwrap();
    GlobalConfig::parse(Path::new("compose/kaflowsql.yaml"), &global).unwrap();
}
