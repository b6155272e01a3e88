//! The schema registry client against the project's test registry
//! (`deploy/local/schema-registry.py`) over real HTTP on 127.0.0.1: ids are
//! fetched once, Confluent's error codes become the client's errors, basic
//! auth and TLS with a private CA work, and an outage is told apart from a
//! refusal.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kaflowsql::codec::AvroSchema;
use kaflowsql::registry::{RegistryConfig, RegistryError, SchemaRegistry};
use support::Registry;

const V1: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"}]}"#;
const V2: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"},{"name":"b","type":["null","string"],"default":null}]}"#;
/// Adds a field without a default: BACKWARD-incompatible.
const V3: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"},{"name":"c","type":"string"}]}"#;

fn client(config: RegistryConfig) -> SchemaRegistry {
    SchemaRegistry::new(&RegistryConfig {
        timeout: Duration::from_secs(5),
        ..config
    })
    .unwrap()
}

#[test]
fn registers_fetches_and_names_confluent_errors() {
    let registry = Registry::start(&[]);
    let c = registry.client();
    let (v1, v2, v3) = (
        AvroSchema::parse(V1).unwrap(),
        AvroSchema::parse(V2).unwrap(),
        AvroSchema::parse(V3).unwrap(),
    );
    let id1 = c.register("t-value", &v1).unwrap();
    assert_eq!(
        c.register("t-value", &v1).unwrap(),
        id1,
        "same schema, same id"
    );
    let id2 = c.register("t-value", &v2).unwrap();
    assert_ne!(id1, id2);
    match c.register("t-value", &v3) {
        Err(RegistryError::Incompatible { subject, .. }) => assert_eq!(subject, "t-value"),
        other => panic!("expected 409, got {other:?}"),
    }
    let (latest, schema) = c.latest("t-value").unwrap();
    assert_eq!(latest, id2);
    assert_eq!(schema.schema(), v2.schema());
    // A fresh client reads the schema by id from the registry.
    let fresh = registry.client();
    assert_eq!(fresh.schema(id1).unwrap().schema(), v1.schema());
    match fresh.schema(4242) {
        Err(e @ RegistryError::NotFound { code: 40403, .. }) => assert!(!e.heals()),
        other => panic!("expected 40403, got {other:?}"),
    }
    match fresh.latest("nobody-value") {
        Err(RegistryError::NotFound { code: 40401, .. }) => {}
        other => panic!("expected 40401, got {other:?}"),
    }
    // Once fetched, an id is answered from memory (the registry is gone).
    drop(registry);
    assert_eq!(fresh.schema(id1).unwrap().schema(), v1.schema());
    match fresh.schema(id2) {
        Err(e) => assert!(e.heals(), "an unreachable registry is an outage: {e}"),
        Ok(_) => panic!("the registry is stopped"),
    }
}

#[test]
fn basic_auth_is_sent_and_wrong_credentials_are_a_refusal() {
    let registry = Registry::start(&["--basic-auth", "key:s3cret"]);
    let v1 = AvroSchema::parse(V1).unwrap();
    let good = client(RegistryConfig {
        url: registry.url.clone(),
        username: Some("key".into()),
        password: Some("s3cret".into()),
        ..RegistryConfig::default()
    });
    let id = good.register("a-value", &v1).unwrap();
    let bad = client(RegistryConfig {
        url: registry.url.clone(),
        username: Some("key".into()),
        password: Some("wrong".into()),
        ..RegistryConfig::default()
    });
    match bad.schema(id) {
        Err(e @ RegistryError::Refused { status: 401, .. }) => {
            assert!(!e.heals());
            assert!(!e.to_string().contains("wrong"), "{e}");
        }
        other => panic!("expected 401, got {other:?}"),
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs (deploy/local/apt-packages, test group)");
    assert!(status.success(), "openssl {args:?}");
}

#[test]
fn tls_with_a_private_ca_is_verified() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=test CA",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "other.key",
            "-out",
            "other.pem",
            "-days",
            "2",
            "-subj",
            "/CN=other CA",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    let cert = d.join("server.pem");
    let key = d.join("server.key");
    let registry = Registry::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let url = registry.url.replace("http://", "https://");
    let trusted = client(RegistryConfig {
        url: url.clone(),
        ca: Some(d.join("ca.pem")),
        ..RegistryConfig::default()
    });
    let id = trusted
        .register("tls-value", &AvroSchema::parse(V1).unwrap())
        .unwrap();
    let untrusted = client(RegistryConfig {
        url,
        ca: Some(d.join("other.pem")),
        ..RegistryConfig::default()
    });
    match untrusted.schema(id) {
        Err(e @ RegistryError::Tls { .. }) => assert!(!e.heals()),
        other => panic!("a certificate of another CA is a refusal, not an outage: {other:?}"),
    }
    match SchemaRegistry::new(&RegistryConfig {
        url: registry.url.clone(),
        ca: Some(d.join("missing.pem")),
        ..RegistryConfig::default()
    }) {
        Err(RegistryError::Setup(m)) => assert!(m.contains("missing.pem"), "{m}"),
        other => panic!("expected a setup error, got {other:?}"),
    }
}
