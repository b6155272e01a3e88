//! Connecting to a secured Kafka cluster (`kafka.security`): the common
//! settings as first-class keys (protocol, SASL mechanism and credentials,
//! TLS files, hostname verification), secrets read from the environment or
//! from files, and the librdkafka properties they stand for. Raw librdkafka
//! properties still pass through `kafka.properties`, except those the
//! delivery guarantee depends on ([`GUARDED`]).
//!
//! Secrets are held as [`Secret`]s: their `Debug` never shows the value, and
//! no log line, `explain` output or error message carries one.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

/// `kafka.security`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// `security.protocol`: `PLAINTEXT` (default), `SSL`, `SASL_PLAINTEXT`
    /// or `SASL_SSL`.
    pub protocol: Option<Protocol>,
    /// SASL settings (protocols `SASL_*`).
    pub sasl: Option<SaslConfig>,
    /// TLS settings (protocols `SSL`, `SASL_SSL`).
    pub tls: Option<TlsConfig>,
}

/// `security.protocol`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum Protocol {
    /// No TLS, no SASL.
    #[serde(rename = "PLAINTEXT", alias = "plaintext")]
    Plaintext,
    /// TLS.
    #[serde(rename = "SSL", alias = "ssl", alias = "TLS", alias = "tls")]
    Ssl,
    /// SASL without TLS.
    #[serde(rename = "SASL_PLAINTEXT", alias = "sasl_plaintext")]
    SaslPlaintext,
    /// SASL over TLS (what managed services use).
    #[serde(rename = "SASL_SSL", alias = "sasl_ssl")]
    SaslSsl,
}

impl Protocol {
    fn property(self) -> &'static str {
        match self {
            Protocol::Plaintext => "PLAINTEXT",
            Protocol::Ssl => "SSL",
            Protocol::SaslPlaintext => "SASL_PLAINTEXT",
            Protocol::SaslSsl => "SASL_SSL",
        }
    }

    fn sasl(self) -> bool {
        matches!(self, Protocol::SaslPlaintext | Protocol::SaslSsl)
    }
}

/// `kafka.security.sasl`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SaslConfig {
    /// `sasl.mechanism`.
    pub mechanism: Mechanism,
    /// `sasl.username` (PLAIN, SCRAM).
    pub username: Option<Secret>,
    /// `sasl.password` (PLAIN, SCRAM).
    pub password: Option<Secret>,
    /// OAUTHBEARER through librdkafka's OIDC client-credentials flow.
    pub oauthbearer: Option<OAuthConfig>,
}

/// `sasl.mechanism`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum Mechanism {
    /// PLAIN (Confluent Cloud API keys, Azure Event Hubs).
    #[serde(rename = "PLAIN")]
    Plain,
    /// SCRAM-SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM-SHA-512 (Amazon MSK, Aiven, Redpanda).
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// OAUTHBEARER with OIDC.
    #[serde(rename = "OAUTHBEARER")]
    OAuthBearer,
}

impl Mechanism {
    fn property(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
            Mechanism::OAuthBearer => "OAUTHBEARER",
        }
    }
}

/// `kafka.security.sasl.oauthbearer`: the OIDC client-credentials grant.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OAuthConfig {
    /// `sasl.oauthbearer.token.endpoint.url`.
    pub token_endpoint_url: String,
    /// `sasl.oauthbearer.client.id`.
    pub client_id: Secret,
    /// `sasl.oauthbearer.client.secret`.
    pub client_secret: Secret,
    /// `sasl.oauthbearer.scope`.
    pub scope: Option<String>,
}

/// `kafka.security.tls`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsConfig {
    /// `ssl.ca.location`: PEM file of the CA that signed the brokers'
    /// certificates (default: the system's CA store).
    pub ca: Option<PathBuf>,
    /// `ssl.certificate.location`: client certificate (mutual TLS).
    pub certificate: Option<PathBuf>,
    /// `ssl.key.location`: the client certificate's private key.
    pub key: Option<PathBuf>,
    /// `ssl.key.password`.
    pub key_password: Option<Secret>,
    /// Whether the broker's certificate must name the host connected to
    /// (`ssl.endpoint.identification.algorithm`: `https`, else `none`).
    #[serde(default = "yes")]
    pub verify_hostname: bool,
}

fn yes() -> bool {
    true
}

/// A secret value: written in the file (`password: s3cret`, for local
/// tests), or read from an environment variable (`{ env: KAFKA_PASSWORD }`)
/// or a file (`{ file: /var/run/secrets/kafka/password }`, trailing newline
/// dropped) when the config is loaded.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Secret {
    /// The value itself.
    Literal(String),
    /// An environment variable that holds it.
    Env {
        /// The variable's name.
        env: String,
    },
    /// A file that holds it (a mounted Kubernetes Secret).
    File {
        /// The file.
        file: PathBuf,
    },
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Literal(_) => f.write_str("Secret(***)"),
            Secret::Env { env } => write!(f, "Secret(env {env})"),
            Secret::File { file } => write!(f, "Secret(file {})", file.display()),
        }
    }
}

impl Secret {
    /// The value, read through `var` for environment variables.
    ///
    /// Errors: the variable is unset, or the file cannot be read; the
    /// message names the variable or file, never a value.
    pub fn resolve(&self, var: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
        match self {
            Secret::Literal(v) => Ok(v.clone()),
            Secret::Env { env } => {
                var(env).ok_or_else(|| format!("the environment variable `{env}` is not set"))
            }
            Secret::File { file } => std::fs::read_to_string(file)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| format!("cannot read `{}`: {e}", file.display())),
        }
    }
}

/// A problem with `kafka.security`, at a key path (`kafka.security.tls.ca`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityProblem {
    /// The key the problem is at.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// What to do.
    pub help: String,
}

impl SecurityConfig {
    /// The librdkafka properties these settings stand for, secrets resolved
    /// through `var`; checked for what can be checked before connecting
    /// (files exist, credentials are complete, settings fit the protocol).
    pub fn properties(
        &self,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<BTreeMap<String, String>, Vec<SecurityProblem>> {
        let mut p = BTreeMap::new();
        let mut problems = Vec::new();
        let protocol = self.protocol.unwrap_or(match (&self.sasl, &self.tls) {
            (Some(_), Some(_)) => Protocol::SaslSsl,
            (Some(_), None) => Protocol::SaslPlaintext,
            (None, Some(_)) => Protocol::Ssl,
            (None, None) => Protocol::Plaintext,
        });
        p.insert("security.protocol".into(), protocol.property().into());
        let secret = |path: &str,
                      s: &Secret,
                      key: &str,
                      p: &mut BTreeMap<String, String>,
                      problems: &mut Vec<SecurityProblem>| {
            match s.resolve(var) {
                Ok(v) => {
                    p.insert(key.to_string(), v);
                }
                Err(why) => problems.push(SecurityProblem {
                    path: path.to_string(),
                    message: format!("{path}: {why}"),
                    help: "set the variable or mount the file before start, or write the value"
                        .to_string(),
                }),
            }
        };
        match (&self.sasl, protocol.sasl()) {
            (Some(sasl), true) => {
                p.insert("sasl.mechanism".into(), sasl.mechanism.property().into());
                match sasl.mechanism {
                    Mechanism::OAuthBearer => match &sasl.oauthbearer {
                        Some(o) => {
                            p.insert("sasl.oauthbearer.method".into(), "oidc".into());
                            p.insert(
                                "sasl.oauthbearer.token.endpoint.url".into(),
                                o.token_endpoint_url.clone(),
                            );
                            if let Some(scope) = &o.scope {
                                p.insert("sasl.oauthbearer.scope".into(), scope.clone());
                            }
                            secret(
                                "kafka.security.sasl.oauthbearer.clientId",
                                &o.client_id,
                                "sasl.oauthbearer.client.id",
                                &mut p,
                                &mut problems,
                            );
                            secret(
                                "kafka.security.sasl.oauthbearer.clientSecret",
                                &o.client_secret,
                                "sasl.oauthbearer.client.secret",
                                &mut p,
                                &mut problems,
                            );
                        }
                        None => problems.push(SecurityProblem {
                            path: "kafka.security.sasl".into(),
                            message: "kafka.security.sasl: OAUTHBEARER needs `oauthbearer` (tokenEndpointUrl, clientId, clientSecret)".into(),
                            help: "add kafka.security.sasl.oauthbearer, or choose PLAIN or SCRAM-SHA-512 with username and password".into(),
                        }),
                    },
                    _ => match (&sasl.username, &sasl.password) {
                        (Some(u), Some(pw)) => {
                            let (p, problems) = (&mut p, &mut problems);
                            secret("kafka.security.sasl.username", u, "sasl.username", p, problems);
                            secret("kafka.security.sasl.password", pw, "sasl.password", p, problems);
                        }
                        _ => problems.push(SecurityProblem {
                            path: "kafka.security.sasl".into(),
                            message: format!(
                                "kafka.security.sasl: {} needs `username` and `password`",
                                sasl.mechanism.property()
                            ),
                            help: "add both; read the password from the environment: `password: { env: KAFKA_PASSWORD }`".into(),
                        }),
                    },
                }
            }
            (None, true) => problems.push(SecurityProblem {
                path: "kafka.security.protocol".into(),
                message: format!(
                    "kafka.security.protocol: {} needs kafka.security.sasl",
                    protocol.property()
                ),
                help: "add sasl: { mechanism: SCRAM-SHA-512, username: ..., password: { env: KAFKA_PASSWORD } }, or use protocol SSL".into(),
            }),
            (Some(_), false) => problems.push(SecurityProblem {
                path: "kafka.security.sasl".into(),
                message: format!(
                    "kafka.security.sasl is set, but the protocol is {}, which does not use SASL",
                    protocol.property()
                ),
                help: "use protocol SASL_SSL (or SASL_PLAINTEXT), or remove sasl".into(),
            }),
            (None, false) => {}
        }
        let tls_protocol = matches!(protocol, Protocol::Ssl | Protocol::SaslSsl);
        match (&self.tls, tls_protocol) {
            (Some(tls), true) => {
                for (path, file, key) in [
                    ("kafka.security.tls.ca", &tls.ca, "ssl.ca.location"),
                    (
                        "kafka.security.tls.certificate",
                        &tls.certificate,
                        "ssl.certificate.location",
                    ),
                    ("kafka.security.tls.key", &tls.key, "ssl.key.location"),
                ] {
                    let Some(file) = file else { continue };
                    if std::fs::metadata(file).is_err() {
                        problems.push(SecurityProblem {
                            path: path.into(),
                            message: format!("{path}: `{}` does not exist or cannot be read", file.display()),
                            help: "give the path of a PEM file readable by kaflowsql (in Kubernetes, a mounted Secret)".into(),
                        });
                    }
                    p.insert(key.into(), file.display().to_string());
                }
                if tls.certificate.is_some() != tls.key.is_some() {
                    problems.push(SecurityProblem {
                        path: "kafka.security.tls".into(),
                        message:
                            "kafka.security.tls: `certificate` and `key` go together (mutual TLS)"
                                .into(),
                        help: "give both, or neither".into(),
                    });
                }
                if let Some(pw) = &tls.key_password {
                    secret(
                        "kafka.security.tls.keyPassword",
                        pw,
                        "ssl.key.password",
                        &mut p,
                        &mut problems,
                    );
                }
                p.insert(
                    "ssl.endpoint.identification.algorithm".into(),
                    if tls.verify_hostname { "https" } else { "none" }.into(),
                );
            }
            (Some(_), false) => problems.push(SecurityProblem {
                path: "kafka.security.tls".into(),
                message: format!(
                    "kafka.security.tls is set, but the protocol is {}, which does not use TLS",
                    protocol.property()
                ),
                help: "use protocol SSL or SASL_SSL, or remove tls".into(),
            }),
            _ => {}
        }
        if problems.is_empty() {
            Ok(p)
        } else {
            Err(problems)
        }
    }
}

/// librdkafka properties `kafka.properties` may not set, with why: each
/// would break at-least-once delivery (or the co-partitioned join) that
/// kaflowsql's own settings give (docs/operations.md, Delivery guarantee).
pub const GUARDED: &[(&str, &str)] = &[
    ("enable.auto.commit", "kaflowsql commits offsets itself, only after the outputs they produced are delivered and the state is durable; an automatic commit would pass records not yet processed (lost on a crash)"),
    ("auto.commit.interval.ms", "kaflowsql commits offsets itself (see enable.auto.commit)"),
    ("enable.auto.offset.store", "kaflowsql stores the offsets to commit itself, after delivery"),
    ("auto.offset.reset", "a pipeline without a committed offset reads from the earliest record; `latest` would skip every record written before its first start"),
    ("group.id", "each pipeline is its own consumer group (its name); set `consumer_group` in the pipeline file instead"),
    ("partition.assignment.strategy", "co-partitioned streams need the range assignor (partition N of each stream to one member); others split joins"),
    ("isolation.level", "kaflowsql reads read_committed input as librdkafka's default does; read_uncommitted would join records of aborted transactions"),
    ("enable.idempotence", "the producer is idempotent, so a retried send never writes an output twice"),
    ("acks", "outputs are acknowledged by all in-sync replicas (acks=all) before offsets are committed"),
    ("request.required.acks", "outputs are acknowledged by all in-sync replicas (acks=all) before offsets are committed"),
    ("transactional.id", "kaflowsql's producer is not transactional; a transactional id changes how sends and commits work"),
    ("enable.partition.eof", "kaflowsql handles partition ends itself; these events would be taken for records"),
];

/// Why `key` may not be set in `kafka.properties`, if it may not.
pub fn guarded(key: &str) -> Option<&'static str> {
    GUARDED.iter().find(|(k, _)| *k == key).map(|(_, why)| *why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> SecurityConfig {
        serde_yaml_ng::from_str(text).unwrap()
    }

    #[test]
    fn sasl_ssl_maps_to_librdkafka_with_secrets_from_the_environment() {
        let s = parse(
            "protocol: SASL_SSL\nsasl:\n  mechanism: SCRAM-SHA-512\n  username: kaflowsql\n  password: { env: KAFKA_PASSWORD }\ntls:\n  verifyHostname: false\n",
        );
        let env = |k: &str| (k == "KAFKA_PASSWORD").then(|| "s3cret".to_string());
        let p = s.properties(&env).unwrap();
        assert_eq!(p["security.protocol"], "SASL_SSL");
        assert_eq!(p["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(p["sasl.username"], "kaflowsql");
        assert_eq!(p["sasl.password"], "s3cret");
        assert_eq!(p["ssl.endpoint.identification.algorithm"], "none");
        // The secret never shows in Debug.
        let shown = format!("{s:?}");
        assert!(!shown.contains("s3cret") && shown.contains("env KAFKA_PASSWORD"));
        let literal = parse("sasl: { mechanism: PLAIN, username: u, password: hunter2 }\n");
        assert!(!format!("{literal:?}").contains("hunter2"));
    }

    #[test]
    fn secrets_come_from_files_without_their_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "from-file\n").unwrap();
        let s = parse(&format!(
            "sasl:\n  mechanism: PLAIN\n  username: u\n  password: {{ file: {} }}\n",
            file.display()
        ));
        let p = s.properties(&|_| None).unwrap();
        assert_eq!(p["security.protocol"], "SASL_PLAINTEXT");
        assert_eq!(p["sasl.password"], "from-file");
    }

    #[test]
    fn problems_name_the_key_and_never_the_value() {
        let s = parse(
            "protocol: SASL_SSL\nsasl:\n  mechanism: SCRAM-SHA-256\n  username: u\n  password: { env: NOPE }\ntls:\n  ca: /no/such/ca.pem\n  certificate: /no/such/c.pem\n",
        );
        let problems = s.properties(&|_| None).unwrap_err();
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "kafka.security.sasl.password",
                "kafka.security.tls.ca",
                "kafka.security.tls.certificate",
                "kafka.security.tls"
            ]
        );
        assert!(problems[0].message.contains("`NOPE` is not set"));
        let missing = parse("protocol: SASL_SSL\n")
            .properties(&|_| None)
            .unwrap_err();
        assert!(missing[0].message.contains("needs kafka.security.sasl"));
        assert!(
            serde_yaml_ng::from_str::<SecurityConfig>("sasl: { mechanism: GSSAPI }\n").is_err()
        );
    }

    #[test]
    fn delivery_properties_are_guarded() {
        for key in [
            "enable.auto.commit",
            "enable.idempotence",
            "group.id",
            "acks",
        ] {
            assert!(guarded(key).is_some(), "{key}");
        }
        assert!(guarded("client.id").is_none());
        assert!(guarded("security.protocol").is_none());
    }
}
