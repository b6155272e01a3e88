//! A client of a Confluent-compatible schema registry (Confluent's REST API:
//! `GET /schemas/ids/{id}`, `POST /subjects/{subject}/versions`,
//! `GET /subjects/{subject}/versions/latest`), over HTTP or HTTPS with basic
//! auth, through `ureq`.
//!
//! Writer schemas are fetched once per id and kept for the life of the
//! process (an id's schema never changes in a registry). An id the registry
//! does not know is remembered for [`NOT_FOUND_TTL`], so a flood of records
//! with a bad id does not become a flood of requests.
//!
//! Errors say whether waiting can heal them ([`RegistryError::heals`]): a
//! registry that cannot be reached, answers 5xx or 429 is an outage (the
//! caller retries with backoff); 401/403 is a refusal (wrong credentials);
//! 404 on a schema id is the record's problem (its bytes name a schema that
//! does not exist).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;

use crate::codec::AvroSchema;

/// How long an id the registry said it does not know is answered from
/// memory.
pub const NOT_FOUND_TTL: Duration = Duration::from_secs(30);

/// Where the registry is and how to reach it (`kafka.schemaRegistry`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Base URL, `http://host:port` or `https://...` (a path prefix is kept).
    pub url: String,
    /// Basic-auth user.
    pub username: Option<String>,
    /// Basic-auth password (resolved secret; never printed).
    pub password: Option<String>,
    /// PEM file of the CA that signs the registry's certificate (default:
    /// the system's web roots).
    pub ca: Option<PathBuf>,
    /// PEM client certificate, for registries that require mutual TLS.
    pub certificate: Option<PathBuf>,
    /// PEM private key of `certificate`.
    pub key: Option<PathBuf>,
    /// Timeout of one request.
    pub timeout: Duration,
    /// How output subjects are named.
    pub subject_strategy: SubjectStrategy,
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca", &self.ca)
            .field("certificate", &self.certificate)
            .field("key", &self.key)
            .field("timeout", &self.timeout)
            .field("subject_strategy", &self.subject_strategy)
            .finish()
    }
}

/// Confluent's subject name strategies for the output value's schema.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum SubjectStrategy {
    /// `<topic>-value` (TopicNameStrategy, the default).
    #[default]
    #[serde(rename = "TopicNameStrategy", alias = "topic")]
    TopicName,
    /// The record's full name (RecordNameStrategy).
    #[serde(rename = "RecordNameStrategy", alias = "record")]
    RecordName,
    /// `<topic>-<record full name>` (TopicRecordNameStrategy).
    #[serde(rename = "TopicRecordNameStrategy", alias = "topic_record")]
    TopicRecordName,
}

impl SubjectStrategy {
    /// The subject of the value schema of `topic` whose record is named `record`.
    pub fn subject(self, topic: &str, record: &str) -> String {
        match self {
            SubjectStrategy::TopicName => format!("{topic}-value"),
            SubjectStrategy::RecordName => record.to_string(),
            SubjectStrategy::TopicRecordName => format!("{topic}-{record}"),
        }
    }
}

/// What went wrong talking to the registry.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry cannot be reached, or answered 5xx or 429: may heal.
    #[error("schema registry at {url} is unavailable: {reason}")]
    Unavailable {
        /// The request's URL.
        url: String,
        /// What happened.
        reason: String,
    },
    /// 401 or 403: the credentials are wrong or lack a permission.
    #[error("schema registry at {url} refused the request ({status}): {message}; check kafka.schemaRegistry's username and password")]
    Refused {
        /// The request's URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The registry's message.
        message: String,
    },
    /// The TLS handshake failed (a certificate of another CA, a wrong
    /// name, a client certificate the registry refuses).
    #[error("TLS with the schema registry at {url} failed: {reason}; check kafka.schemaRegistry.url and tls (ca, certificate, key)")]
    Tls {
        /// The request's URL.
        url: String,
        /// What TLS said.
        reason: String,
    },
    /// 404: no such schema id, subject or version (Confluent's 40401,
    /// 40402, 40403).
    #[error("schema registry has no {what} (error {code}: {message})")]
    NotFound {
        /// What was looked up (`schema id 7`, `subject orders-value`).
        what: String,
        /// Confluent's error code.
        code: u32,
        /// The registry's message.
        message: String,
    },
    /// 409: the schema is not compatible with the subject's earlier versions.
    #[error("schema registry refused the schema for subject `{subject}` as incompatible with its earlier versions (409): {message}")]
    Incompatible {
        /// The subject.
        subject: String,
        /// The registry's message.
        message: String,
    },
    /// Any other answer (422 invalid schema, 400, unexpected bodies).
    #[error("schema registry answered {status} to {url}: {message}")]
    Rejected {
        /// The request's URL.
        url: String,
        /// HTTP status (0 for a body that could not be read).
        status: u16,
        /// The registry's message.
        message: String,
    },
    /// The client cannot be set up (a TLS file that does not load).
    #[error("schema registry client: {0}")]
    Setup(String),
    /// A schema the registry returned does not parse as Avro.
    #[error("schema registry returned a schema that is not valid Avro ({what}): {reason}")]
    BadSchema {
        /// Which schema.
        what: String,
        /// The parser's message.
        reason: String,
    },
}

impl RegistryError {
    /// Whether waiting and retrying may heal it (an outage).
    pub fn heals(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }
}

impl crate::error::Classified for RegistryError {
    fn domain(&self) -> crate::error::Domain {
        use crate::error::Domain;
        match self {
            RegistryError::Unavailable { .. } => Domain::External,
            RegistryError::NotFound { .. } | RegistryError::BadSchema { .. } => Domain::Data,
            _ => Domain::Config,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            RegistryError::Unavailable { .. } => "schema_registry",
            RegistryError::NotFound { .. } | RegistryError::BadSchema { .. } => "decode",
            _ => "schema_registry_config",
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error_code: u32,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct SchemaBody {
    schema: String,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
}

#[derive(Deserialize)]
struct IdBody {
    id: u32,
}

#[derive(Deserialize)]
struct VersionBody {
    id: u32,
    schema: String,
}

/// A schema registry client; cheap to share behind an `Arc`.
pub struct SchemaRegistry {
    agent: ureq::Agent,
    base: String,
    authorization: Option<String>,
    by_id: Mutex<HashMap<u32, Arc<AvroSchema>>>,
    missing: Mutex<HashMap<u32, (Instant, RegistryError)>>,
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field("base", &self.base)
            .finish()
    }
}

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

impl SchemaRegistry {
    /// A client of the registry `config` names. Nothing is sent yet.
    ///
    /// Errors: [`RegistryError::Setup`] when a TLS file cannot be read or
    /// parsed.
    pub fn new(config: &RegistryConfig) -> Result<Self, RegistryError> {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = &config.ca {
            let pem = read_file(ca, "tls.ca")?;
            let certs = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| RegistryError::Setup(format!("{}: {e}", ca.display())))?;
            if certs.is_empty() {
                return Err(RegistryError::Setup(format!(
                    "{}: no certificate in the file",
                    ca.display()
                )));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)));
        }
        match (&config.certificate, &config.key) {
            (Some(cert), Some(key)) => {
                let chain = ureq::tls::parse_pem(&read_file(cert, "tls.certificate")?)
                    .filter_map(|item| match item {
                        Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                        Ok(_) => None,
                        Err(e) => Some(Err(e)),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| RegistryError::Setup(format!("{}: {e}", cert.display())))?;
                let key = ureq::tls::PrivateKey::from_pem(&read_file(key, "tls.key")?)
                    .map_err(|e| RegistryError::Setup(format!("{}: {e}", key.display())))?;
                tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)));
            }
            (None, None) => {}
            _ => {
                return Err(RegistryError::Setup(
                    "tls.certificate and tls.key go together: give both or neither".into(),
                ))
            }
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(if config.timeout.is_zero() {
                Duration::from_secs(10)
            } else {
                config.timeout
            }))
            .http_status_as_error(false)
            .tls_config(tls.build())
            .build()
            .into();
        let authorization = config.username.as_ref().map(|user| {
            let pair = format!("{user}:{}", config.password.as_deref().unwrap_or(""));
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        Ok(Self {
            agent,
            base: config.url.trim_end_matches('/').to_string(),
            authorization,
            by_id: Mutex::new(HashMap::new()),
            missing: Mutex::new(HashMap::new()),
        })
    }

    /// The writer schema registered under `id`, fetched once.
    ///
    /// Errors: [`RegistryError::NotFound`] (40403) for an id the registry
    /// does not know; [`RegistryError::BadSchema`] for a schema that is not
    /// Avro (a Protobuf or JSON Schema id); an outage or refusal as is.
    pub fn schema(&self, id: u32) -> Result<Arc<AvroSchema>, RegistryError> {
        if let Some(s) = lock(&self.by_id).get(&id) {
            return Ok(s.clone());
        }
        if let Some((at, e)) = lock(&self.missing).get(&id) {
            if at.elapsed() < NOT_FOUND_TTL {
                return Err(e.clone());
            }
        }
        let what = format!("schema id {id}");
        let body: SchemaBody = match self.get(&format!("/schemas/ids/{id}"), &what) {
            Ok(b) => b,
            Err(e @ RegistryError::NotFound { .. }) => {
                lock(&self.missing).insert(id, (Instant::now(), e.clone()));
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if let Some(kind) = body.schema_type.filter(|t| t != "AVRO") {
            return Err(RegistryError::BadSchema {
                what,
                reason: format!("it is a {kind} schema, not Avro"),
            });
        }
        let schema = AvroSchema::parse(&body.schema).map_err(|e| RegistryError::BadSchema {
            what,
            reason: e.to_string(),
        })?;
        let schema = Arc::new(schema);
        lock(&self.by_id).insert(id, schema.clone());
        Ok(schema)
    }

    /// Registers `schema` under `subject` (or finds it there) and returns
    /// its id, which is then known to [`SchemaRegistry::schema`].
    ///
    /// Errors: [`RegistryError::Incompatible`] (409) when the subject's
    /// compatibility rule refuses it; [`RegistryError::Rejected`] (422) for
    /// a schema the registry finds invalid.
    pub fn register(&self, subject: &str, schema: &AvroSchema) -> Result<u32, RegistryError> {
        let path = format!("/subjects/{}/versions", encode_segment(subject));
        let body = serde_json::json!({ "schema": schema.text() }).to_string();
        let id: IdBody = match self.send(&path, Some(&body), &format!("subject {subject}")) {
            Ok(b) => b,
            Err(RegistryError::Rejected {
                status: 409,
                message,
                ..
            }) => {
                return Err(RegistryError::Incompatible {
                    subject: subject.to_string(),
                    message,
                })
            }
            Err(e) => return Err(e),
        };
        lock(&self.by_id).insert(id.id, Arc::new(schema.clone()));
        Ok(id.id)
    }

    /// The latest schema of `subject`, with its id.
    ///
    /// Errors: [`RegistryError::NotFound`] (40401) for an unknown subject.
    pub fn latest(&self, subject: &str) -> Result<(u32, Arc<AvroSchema>), RegistryError> {
        let path = format!("/subjects/{}/versions/latest", encode_segment(subject));
        let what = format!("subject {subject}");
        let body: VersionBody = self.get(&path, &what)?;
        let schema = AvroSchema::parse(&body.schema).map_err(|e| RegistryError::BadSchema {
            what,
            reason: e.to_string(),
        })?;
        let schema = Arc::new(schema);
        lock(&self.by_id).insert(body.id, schema.clone());
        Ok((body.id, schema))
    }

    fn get<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        what: &str,
    ) -> Result<T, RegistryError> {
        self.send(path, None, what)
    }

    fn send<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        body: Option<&str>,
        what: &str,
    ) -> Result<T, RegistryError> {
        let url = format!("{}{path}", self.base);
        let unavailable = |reason: String| RegistryError::Unavailable {
            url: url.clone(),
            reason,
        };
        let response = match body {
            Some(body) => {
                let mut request = self
                    .agent
                    .post(&url)
                    .header("Accept", CONTENT_TYPE)
                    .header("Content-Type", CONTENT_TYPE);
                if let Some(a) = &self.authorization {
                    request = request.header("Authorization", a);
                }
                request.send(body)
            }
            None => {
                let mut request = self.agent.get(&url).header("Accept", CONTENT_TYPE);
                if let Some(a) = &self.authorization {
                    request = request.header("Authorization", a);
                }
                request.call()
            }
        };
        let mut response = response.map_err(|e| {
            if is_tls(&e) {
                RegistryError::Tls {
                    url: url.clone(),
                    reason: e.to_string(),
                }
            } else {
                unavailable(e.to_string())
            }
        })?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| unavailable(format!("reading the answer: {e}")))?;
        if (200..300).contains(&status) {
            return serde_json::from_str(&text).map_err(|e| RegistryError::Rejected {
                url: url.clone(),
                status: 0,
                message: format!("unexpected answer {text:.200}: {e}"),
            });
        }
        let error: ErrorBody = serde_json::from_str(&text).unwrap_or(ErrorBody {
            error_code: u32::from(status),
            message: text.chars().take(200).collect(),
        });
        Err(match status {
            401 | 403 => RegistryError::Refused {
                url,
                status,
                message: error.message,
            },
            404 => RegistryError::NotFound {
                what: what.to_string(),
                code: error.error_code,
                message: error.message,
            },
            429 | 500..=599 => unavailable(format!("{status}: {}", error.message)),
            _ => RegistryError::Rejected {
                url,
                status,
                message: error.message,
            },
        })
    }
}

/// Whether a transport error is TLS refusing the peer (which waiting does
/// not heal), not the network.
fn is_tls(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Tls(_) | ureq::Error::Pem(_) | ureq::Error::Rustls(_) => true,
        ureq::Error::Io(io) => io
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some()),
        _ => false,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read_file(path: &PathBuf, key: &str) -> Result<Vec<u8>, RegistryError> {
    std::fs::read(path).map_err(|e| {
        RegistryError::Setup(format!(
            "kafka.schemaRegistry.{key}: cannot read {}: {e}",
            path.display()
        ))
    })
}

/// Percent-encodes a subject for a URL path segment.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_confluent_strategies() {
        assert_eq!(
            SubjectStrategy::TopicName.subject("out", "ns.Rec"),
            "out-value"
        );
        assert_eq!(
            SubjectStrategy::RecordName.subject("out", "ns.Rec"),
            "ns.Rec"
        );
        assert_eq!(
            SubjectStrategy::TopicRecordName.subject("out", "ns.Rec"),
            "out-ns.Rec"
        );
        assert_eq!(encode_segment("a b/c-value"), "a%20b%2Fc-value");
    }

    #[test]
    fn passwords_are_not_printed() {
        let c = RegistryConfig {
            url: "http://r".into(),
            username: Some("u".into()),
            password: Some("hunter2".into()),
            ..RegistryConfig::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn an_unreachable_registry_is_an_outage() {
        // Port 9 (discard) is closed on 127.0.0.1 here: connection refused.
        let r = match SchemaRegistry::new(&RegistryConfig {
            url: "http://127.0.0.1:9".into(),
            timeout: Duration::from_secs(2),
            ..RegistryConfig::default()
        }) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        match r.schema(1) {
            Err(e) => assert!(e.heals(), "{e}"),
            Ok(_) => panic!("no registry answers there"),
        }
    }
}
