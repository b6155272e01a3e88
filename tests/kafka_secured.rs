//! Secured Kafka (issue #19): kaflowsql consumes and produces over TLS with a
//! CA it verifies, against Tansu behind a TLS endpoint
//! (`deploy/local/secured-broker.sh`); and the errors that cannot heal (a
//! wrong CA, credentials the brokers refuse, an unknown SASL mechanism) stop
//! it at start with exit code 3 and the reason, within seconds, instead of
//! retrying forever.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use support::{free_port, now_ms, repo_root, unique};

/// The secured endpoint's ports: TLS on `base + 1`, SASL_SSL on `base + 3`.
/// One test at a time holds it (tests of one binary run in parallel).
struct Secured {
    base: u16,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Secured {
    fn start() -> Self {
        let guard = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let base: u16 = std::env::var("KAFLOWSQL_SECURED_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(9492);
        let status = Command::new(repo_root().join("deploy/local/secured-broker.sh"))
            .args(["start", &base.to_string()])
            .status()
            .unwrap();
        assert!(
            status.success(),
            "deploy/local/secured-broker.sh start failed"
        );
        Self {
            base,
            _one_at_a_time: guard,
        }
    }

    fn tls(&self) -> String {
        format!("127.0.0.1:{}", self.base + 1)
    }

    fn sasl_ssl(&self) -> String {
        format!("127.0.0.1:{}", self.base + 3)
    }

    fn file(&self, name: &str) -> PathBuf {
        repo_root().join(format!(".deps/tls-{}/{name}", self.base))
    }
}

impl Drop for Secured {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("deploy/local/secured-broker.sh"))
            .args(["stop", &self.base.to_string()])
            .stdout(Stdio::null())
            .status();
    }
}

/// A global config for `brokers` with `security` (YAML under `kafka.security`).
fn config(dir: &Path, brokers: &str, security: &str, properties: &str) -> (PathBuf, u16) {
    let port = free_port();
    let path = dir.join(format!("kaflowsql-{port}.yaml"));
    std::fs::write(
        &path,
        format!(
            "kafka:\n  brokers: {brokers}\n  properties:\n    session.timeout.ms: \"6000\"\n{properties}  security:\n{security}http:\n  listen: 127.0.0.1:{port}\n"
        ),
    )
    .unwrap();
    (path, port)
}

fn pipeline(dir: &Path, input: &str, output: &str) -> PathBuf {
    let path = dir.join("secured.yaml");
    std::fs::write(
        &path,
        format!(
            "name: {input}\nquery: |\n  SELECT e.id, e.n * 2 AS twice FROM \"{input}\" e\noutput:\n  topic: {output}\n  key: id\nstate:\n  events:\n    default_ttl: 1h\n"
        ),
    )
    .unwrap();
    path
}

fn run(dir: &Path, config: &Path, pipeline: &Path) -> (Child, PathBuf) {
    let log = dir.join(format!("run-{}.log", free_port()));
    let child = Command::new(env!("CARGO_BIN_EXE_kaflowsql"))
        .arg("run")
        .arg("--config")
        .arg(config)
        .arg(pipeline)
        .env("KAFLOWSQL_STATE_ROCKSDB_PATH", dir.join(unique("state")))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (child, log)
}

/// Waits for `child` to exit within `timeout`; None if it is still running
/// (then killed).
fn exit_within(child: &mut Child, timeout: Duration) -> Option<(ExitStatus, Duration)> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if let Some(status) = child.try_wait().unwrap() {
            return Some((status, started.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A producer over TLS, verifying the test CA.
fn tls_producer(secured: &Secured) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", secured.tls())
        .set("security.protocol", "SSL")
        .set(
            "ssl.ca.location",
            secured.file("ca.pem").display().to_string(),
        )
        .set("linger.ms", "0")
        .create()
        .unwrap()
}

#[test]
fn consumes_and_produces_over_tls_with_a_verified_ca() {
    let secured = Secured::start();
    let dir = tempfile::tempdir().unwrap();
    let input = unique("tls_in").replace('-', "_");
    let output = unique("tls_out").replace('-', "_");
    let producer = tls_producer(&secured);
    let now = now_ms();
    for i in 0..20 {
        let value = format!(r#"{{"id":"k{i}","n":{i}}}"#);
        let key = format!("k{i}");
        producer
            .send(
                BaseRecord::to(&input)
                    .key(&key)
                    .payload(&value)
                    .timestamp(now + i),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(20)).unwrap();
    let ca = secured.file("ca.pem");
    let (cfg, _) = config(
        dir.path(),
        &secured.tls(),
        &format!("    protocol: SSL\n    tls:\n      ca: {}\n", ca.display()),
        "",
    );
    let (mut child, log) = run(dir.path(), &cfg, &pipeline(dir.path(), &input, &output));
    // The outputs, read back over TLS with the same config (`peek --config`).
    let deadline = Instant::now() + Duration::from_secs(60);
    let lines = loop {
        let out = Command::new(env!("CARGO_BIN_EXE_kaflowsql"))
            .args(["peek", "--config"])
            .arg(&cfg)
            .args(["--topic", &output, "--count", "20"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= 20 || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        lines.len(),
        20,
        "outputs over TLS; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let mut values: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .collect();
    values.sort_by_key(|v| v["value"]["twice"].as_i64());
    assert_eq!(
        values[7],
        serde_json::json!({"key":"k7","value":{"id":"k7","twice":14}})
    );
}

/// Each refusal: the process exits with `code` within seconds, and its log
/// says why.
fn refused(secured_brokers: &str, security: &str, properties: &str, code: i32, why: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let input = unique("refused").replace('-', "_");
    let (cfg, _) = config(dir.path(), secured_brokers, security, properties);
    let (mut child, log) = run(dir.path(), &cfg, &pipeline(dir.path(), &input, "out"));
    let exited = exit_within(&mut child, Duration::from_secs(30));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let (status, after) =
        exited.unwrap_or_else(|| panic!("still retrying after 30 s; log:\n{text}"));
    assert_eq!(status.code(), Some(code), "exit code; log:\n{text}");
    assert!(
        after < Duration::from_secs(20),
        "took {after:?}; log:\n{text}"
    );
    assert!(
        why.iter().any(|w| text.contains(w)),
        "the log names the reason ({why:?}):\n{text}"
    );
    eprintln!("refused in {after:?}");
}

#[test]
fn a_certificate_signed_by_another_ca_stops_at_start() {
    let secured = Secured::start();
    let other = secured.file("other-ca.pem");
    refused(
        &secured.tls(),
        &format!(
            "    protocol: SSL\n    tls:\n      ca: {}\n",
            other.display()
        ),
        "",
        3,
        &["certificate verify failed", "SSL handshake failed"],
    );
}

#[test]
fn credentials_the_brokers_refuse_stop_at_start() {
    let secured = Secured::start();
    let ca = secured.file("ca.pem");
    refused(
        &secured.sasl_ssl(),
        &format!(
            "    protocol: SASL_SSL\n    sasl:\n      mechanism: SCRAM-SHA-512\n      username: kaflowsql\n      password: {{ env: KAFLOWSQL_TEST_NO_SUCH_PASSWORD_VAR }}\n    tls:\n      ca: {}\n",
            ca.display()
        ),
        "",
        // An unset secret is a problem of the config file, caught at load
        // (exit 2, as any invalid file), before connecting.
        2,
        &["`KAFLOWSQL_TEST_NO_SUCH_PASSWORD_VAR` is not set"],
    );
    refused(
        &secured.sasl_ssl(),
        &format!(
            "    protocol: SASL_SSL\n    sasl:\n      mechanism: SCRAM-SHA-512\n      username: kaflowsql\n      password: not-the-password\n    tls:\n      ca: {}\n",
            ca.display()
        ),
        "",
        3,
        &["SASL SCRAM authentication failed", "Authentication"],
    );
    // A mechanism the brokers do not offer: librdkafka reports it later
    // than a wrong password (about 10 s), still a refusal, not an outage.
    refused(
        &secured.sasl_ssl(),
        &format!(
            "    protocol: SASL_SSL\n    sasl:\n      mechanism: PLAIN\n      username: kaflowsql\n      password: p\n    tls:\n      ca: {}\n",
            ca.display()
        ),
        "",
        3,
        &["PLAIN", "Authentication"],
    );
}

#[test]
fn an_unknown_mechanism_stops_at_start() {
    let secured = Secured::start();
    let ca = secured.file("ca.pem");
    // Through the raw librdkafka property: librdkafka refuses it.
    refused(
        &secured.sasl_ssl(),
        &format!("    tls:\n      ca: {}\n", ca.display()),
        "    security.protocol: SASL_SSL\n    sasl.mechanism: NOT-A-MECHANISM\n    sasl.username: u\n    sasl.password: p\n",
        3,
        &["NOT-A-MECHANISM"],
    );
}
