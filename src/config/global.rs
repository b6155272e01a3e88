//! The global config file (`kaflowsql.yaml`): Kafka, RocksDB and HTTP
//! settings shared by every pipeline of a process. Environment variables
//! override the file (`KAFLOWSQL_KAFKA_BROKERS`, `KAFLOWSQL_HTTP_LISTEN`,
//! `KAFLOWSQL_STATE_ROCKSDB_PATH`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::registry::RegistrySetting;
use super::security::{guarded, SecurityConfig};
use super::{read, yaml_diagnostic, ByteSize, ConfigError, Diagnostic, Diagnostics, Locations};
use crate::registry::RegistryConfig;

/// Default broker list.
pub const fn default_brokers() -> &'static str {
    "localhost:9092"
}

/// Default HTTP listen address (the guide's `:8080`).
pub const fn default_listen() -> &'static str {
    "0.0.0.0:8080"
}

/// The whole global config.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GlobalConfig {
    /// Kafka client settings.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// State settings.
    #[serde(default)]
    pub state: StateConfig,
    /// HTTP server for metrics, health and profiling.
    #[serde(default)]
    pub http: HttpConfig,
    /// KaflowSQL's `emitter` (a periodic emitter): accepted, ignored with a
    /// warning (kaflowsql emits per micro-batch; see `emission`).
    #[serde(default)]
    pub emitter: Option<serde_yaml_ng::Value>,
    /// Keys accepted for KaflowSQL's files that kaflowsql ignores, each with
    /// what to use instead (logged once at start).
    #[serde(skip)]
    pub warnings: Vec<Diagnostic>,
    /// The librdkafka properties `kafka.security` stands for, secrets
    /// resolved (filled by [`GlobalConfig::parse`]; never printed).
    #[serde(skip)]
    security_properties: Redacted,
    /// The schema registry's client settings, password resolved (filled
    /// by [`GlobalConfig::parse`] from `kafka.schemaRegistry`).
    #[serde(skip)]
    pub registry: Option<RegistryConfig>,
}

/// Properties that hold secrets: `Debug` shows their keys only.
#[derive(Clone, Default, PartialEq)]
struct Redacted(BTreeMap<String, String>);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// Kafka client settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: `host:port[,host:port...]`, or a YAML list of them.
    #[serde(default = "brokers", deserialize_with = "string_or_list")]
    pub brokers: String,
    /// Consumer tuning (the guide's keys).
    #[serde(default)]
    pub consumer: ConsumerConfig,
    /// Producer tuning (the guide's keys).
    #[serde(default)]
    pub producer: ProducerConfig,
    /// Raw librdkafka properties, passed through to every client.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// The schema registry of Avro sources and outputs: a URL, or a block
    /// with basic auth and TLS (`src/config/registry.rs`).
    #[serde(default, rename = "schemaRegistry")]
    pub schema_registry: Option<RegistrySetting>,
    /// KaflowSQL's `kafka.useAvro`: sources whose pipeline does not say
    /// `sources.<topic>.format` are Avro in Confluent's wire format.
    #[serde(default, rename = "useAvro")]
    pub use_avro: bool,
    /// TLS and SASL to the brokers.
    #[serde(default)]
    pub security: SecurityConfig,
}

/// A broker list written as one string or as a YAML list.
fn string_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Brokers {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Brokers::deserialize(d)? {
        Brokers::One(s) => s,
        Brokers::Many(list) => list.join(","),
    })
}

fn brokers() -> String {
    default_brokers().to_string()
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: brokers(),
            consumer: ConsumerConfig::default(),
            producer: ProducerConfig::default(),
            properties: BTreeMap::new(),
            schema_registry: None,
            use_avro: false,
            security: SecurityConfig::default(),
        }
    }
}

/// Consumer keys from the guide.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConsumerConfig {
    /// `fetch.min.bytes`.
    pub fetch_min_bytes: Option<u64>,
    /// `fetch.wait.max.ms`.
    pub fetch_max_wait: Option<u64>,
    /// Records taken per poll batch.
    pub max_poll_records: Option<u64>,
    /// (new) Longest wait at start for the dimensions to be read to their
    /// end where the broker never tells the end; default
    /// [`default_dimension_load_timeout`].
    pub dimension_load_timeout: Option<super::HumanDuration>,
}

/// How long the dimension bootstrap waits for a broker that never tells a
/// partition's end before output starts anyway (logged): five minutes reads
/// millions of records on a healthy broker, where the end is known long before.
pub const fn default_dimension_load_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(300)
}

/// Producer keys from the guide.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProducerConfig {
    /// `batch.size` in bytes.
    pub batch_size: Option<u64>,
    /// `linger.ms`.
    pub linger_ms: Option<u64>,
    /// `compression.type`: none, gzip, snappy, lz4, zstd.
    pub compression: Option<String>,
}

/// State settings.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// RocksDB settings.
    #[serde(default)]
    pub rocksdb: RocksDbConfig,
    /// Memory budget for hot state.
    #[serde(default)]
    pub memory: Option<ByteSize>,
    /// KaflowSQL's `state.ttl`: the TTL of event streams in pipelines that
    /// set neither `state.events.default_ttl` nor `window`.
    #[serde(default)]
    pub ttl: Option<super::HumanDuration>,
}

/// RocksDB tuning keys from the guide.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RocksDbConfig {
    /// Directory of the state database.
    pub path: Option<PathBuf>,
    /// Bytes per memtable.
    pub write_buffer_size: Option<ByteSize>,
    /// Memtables kept.
    pub max_write_buffer_number: Option<u32>,
    /// Block size in bytes.
    pub block_size: Option<ByteSize>,
    /// Block cache in bytes.
    pub block_cache: Option<ByteSize>,
    /// KaflowSQL's periodic (and S3) checkpoints: accepted, ignored with a
    /// warning (kaflowsql checkpoints with every delivered epoch).
    pub checkpoint: Option<serde_yaml_ng::Value>,
}

/// The HTTP server.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address of `/metrics`, `/healthz` and `/readyz`.
    #[serde(default = "listen")]
    pub listen: String,
    /// CPU profiling (`/debug/pprof/profile`), off unless enabled, on a
    /// listener of its own.
    #[serde(default)]
    pub profiling: ProfilingConfig,
}

fn listen() -> String {
    default_listen().to_string()
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: listen(),
            profiling: ProfilingConfig::default(),
        }
    }
}

/// `http.profiling`: sampling the process is costly and its unwinder is not
/// signal-safe, so it is off by default and, when on, listens on loopback
/// unless told otherwise (reach it with `kubectl port-forward`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProfilingConfig {
    /// Whether `/debug/pprof/profile` is served.
    #[serde(default)]
    pub enabled: bool,
    /// Its listen address.
    #[serde(default = "profiling_listen")]
    pub listen: String,
}

/// Default listen address of the profiling endpoint: loopback only.
pub const fn default_profiling_listen() -> &'static str {
    "127.0.0.1:6060"
}

fn profiling_listen() -> String {
    default_profiling_listen().to_string()
}

impl Default for ProfilingConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: profiling_listen(),
        }
    }
}

impl GlobalConfig {
    /// Loads `file` (or the defaults when None), then applies environment overrides.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = match file {
            Some(file) => {
                let text = read(file)?;
                Self::parse(file, &text)?
            }
            None => Self::default(),
        };
        config.apply_env(|k| std::env::var(k).ok());
        Ok(config)
    }

    /// Parses config text; secrets are read from the process environment.
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::parse_with(file, text, &|k| std::env::var(k).ok())
    }

    /// Parses config text, reading secrets' environment variables through
    /// `var`. Refuses, each at its line and column: what does not
    /// deserialize, `kafka.properties` keys the delivery guarantee depends
    /// on, and `kafka.security` settings that cannot work (a missing file,
    /// an unset secret, SASL without credentials).
    pub fn parse_with(
        file: &Path,
        text: &str,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let text = &super::env::expand(file, text, var)
            .map_err(|d| ConfigError::Invalid(Diagnostics(d)))?;
        let mut config: Self = serde_yaml_ng::from_str(text)
            .map_err(|e| ConfigError::Invalid(Diagnostics(vec![yaml_diagnostic(file, &e)])))?;
        let at = Locations::of(text);
        let mut problems: Vec<Diagnostic> = Vec::new();
        if config.kafka.brokers.split(',').all(|b| b.trim().is_empty()) {
            problems.push(
                Diagnostic::new(file, at.value("kafka.brokers"), "kafka.brokers is empty")
                    .with_help(
                    "give host:port of at least one broker, as a string (a:9092,b:9092) or a list",
                ),
            );
        }
        for key in config.kafka.properties.keys() {
            if let Some(why) = guarded(key) {
                let path = format!("kafka.properties.{key}");
                problems.push(
                    Diagnostic::new(
                        file,
                        at.key(&path),
                        format!("{path} cannot be set: {why}"),
                    )
                    .with_help("remove it; docs/operations.md (Delivery guarantee) lists the properties kaflowsql sets itself"),
                );
            }
        }
        let mut warn = |path: &str, message: &str, help: &str| {
            config.warnings.push(
                Diagnostic::new(file, at.key(path), message.to_string())
                    .with_help(help.to_string())
                    .as_warning(),
            )
        };
        if config.emitter.is_some() {
            warn(
                "emitter",
                "emitter is ignored: kaflowsql emits the rows of each micro-batch as soon as it is evaluated",
                "remove it; a pipeline's `emission` (immediate, or smart with `require` and `timeout`) decides when rows go out",
            );
        }
        if config.state.rocksdb.checkpoint.is_some() {
            warn(
                "state.rocksdb.checkpoint",
                "state.rocksdb.checkpoint is ignored: kaflowsql checkpoints state with every delivered micro-batch (WAL synced before offsets are committed), and has no S3 checkpoints",
                "remove it; keep state on a persistent volume (docs/operations.md, State); a lost volume is rebuilt from Kafka",
            );
        }
        if let Some(setting) = &config.kafka.schema_registry {
            match setting.resolve(var) {
                Ok(r) => config.registry = Some(r),
                Err(found) => problems.extend(found.into_iter().map(|(path, message, help)| {
                    Diagnostic::new(file, at.key(&path), message).with_help(help)
                })),
            }
        }
        match config.kafka.security.properties(var) {
            Ok(p) => config.security_properties = Redacted(p),
            Err(found) => problems.extend(
                found
                    .into_iter()
                    .map(|p| Diagnostic::new(file, at.key(&p.path), p.message).with_help(p.help)),
            ),
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            problems.sort_by_key(|d| (d.position.line, d.position.column));
            Err(ConfigError::Invalid(Diagnostics(problems)))
        }
    }

    /// Applies `KAFLOWSQL_*` overrides read through `var`.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) {
        if let Some(v) = var("KAFLOWSQL_KAFKA_BROKERS") {
            self.kafka.brokers = v;
        }
        if let Some(v) = var("KAFLOWSQL_KAFKA_SCHEMA_REGISTRY") {
            match &mut self.registry {
                Some(r) => r.url = v,
                None => {
                    self.registry = Some(RegistryConfig {
                        url: v,
                        timeout: std::time::Duration::from_secs(10),
                        ..RegistryConfig::default()
                    })
                }
            }
        }
        if let Some(v) = var("KAFLOWSQL_HTTP_LISTEN") {
            self.http.listen = v;
        }
        if let Some(v) = var("KAFLOWSQL_STATE_ROCKSDB_PATH") {
            self.state.rocksdb.path = Some(PathBuf::from(v));
        }
    }

    /// librdkafka properties for a consumer, from the guide's keys and the pass-through map.
    pub fn consumer_properties(&self) -> BTreeMap<String, String> {
        let mut p = self.security_properties.0.clone();
        p.insert("bootstrap.servers".into(), self.kafka.brokers.clone());
        let c = &self.kafka.consumer;
        if let Some(v) = c.fetch_min_bytes {
            p.insert("fetch.min.bytes".into(), v.to_string());
        }
        if let Some(v) = c.fetch_max_wait {
            p.insert("fetch.wait.max.ms".into(), v.to_string());
        }
        p.extend(self.kafka.properties.clone());
        p
    }

    /// librdkafka properties for a producer, from the guide's keys and the pass-through map.
    pub fn producer_properties(&self) -> BTreeMap<String, String> {
        let mut p = self.security_properties.0.clone();
        p.insert("bootstrap.servers".into(), self.kafka.brokers.clone());
        let c = &self.kafka.producer;
        if let Some(v) = c.batch_size {
            p.insert("batch.size".into(), v.to_string());
        }
        if let Some(v) = c.linger_ms {
            p.insert("linger.ms".into(), v.to_string());
        }
        if let Some(v) = &c.compression {
            p.insert("compression.type".into(), v.clone());
        }
        p.extend(
            self.kafka
                .properties
                .iter()
                .filter(|(k, _)| !is_consumer_only(k))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        p
    }
}

/// librdkafka properties that only consumers take (the producer would warn).
fn is_consumer_only(key: &str) -> bool {
    const CONSUMER: &[&str] = &[
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "max.poll.interval.ms",
        "auto.offset.reset",
        "enable.auto.commit",
        "auto.commit.interval.ms",
        "enable.auto.offset.store",
        "partition.assignment.strategy",
        "isolation.level",
        "queued.min.messages",
        "queued.max.messages.kbytes",
        "check.crcs",
    ];
    CONSUMER.contains(&key) || key.starts_with("group.") || key.starts_with("fetch.")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUIDE: &str = r#"
kafka:
  brokers: broker:9092
  consumer:
    fetchMinBytes: 1048576
    fetchMaxWait: 100
    maxPollRecords: 10000
  producer:
    batchSize: 1048576
    lingerMs: 5
    compression: "lz4"
  properties:
    client.id: kaflowsql-test
state:
  rocksdb:
    path: /var/lib/kaflowsql
    writeBufferSize: 67108864
    maxWriteBufferNumber: 3
    blockSize: 65536
    blockCache: 256MB
"#;

    #[test]
    fn reads_the_guides_keys_and_maps_them_to_librdkafka() {
        let c = GlobalConfig::parse(Path::new("k.yaml"), GUIDE).unwrap();
        assert_eq!(c.state.rocksdb.block_cache, Some(ByteSize(256 << 20)));
        let consumer = c.consumer_properties();
        assert_eq!(consumer["fetch.min.bytes"], "1048576");
        assert_eq!(consumer["fetch.wait.max.ms"], "100");
        assert_eq!(consumer["client.id"], "kaflowsql-test");
        let producer = c.producer_properties();
        assert_eq!(producer["compression.type"], "lz4");
        assert_eq!(producer["linger.ms"], "5");
        assert_eq!(producer["client.id"], "kaflowsql-test");
        assert!(!producer.contains_key("fetch.min.bytes"));
        assert_eq!(c.http.listen, "0.0.0.0:8080");
    }

    #[test]
    fn brokers_may_be_a_list_and_security_reaches_every_client() {
        let c = GlobalConfig::parse_with(
            Path::new("k.yaml"),
            "kafka:\n  brokers: [a:9092, b:9092]\n  security:\n    protocol: SASL_SSL\n    sasl: { mechanism: PLAIN, username: key, password: { env: SECRET } }\n",
            &|k| (k == "SECRET").then(|| "v".to_string()),
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "a:9092,b:9092");
        for p in [c.consumer_properties(), c.producer_properties()] {
            assert_eq!(p["security.protocol"], "SASL_SSL");
            assert_eq!(p["sasl.password"], "v");
        }
        assert!(
            !format!("{c:?}").contains("\"v\""),
            "the secret is not in Debug"
        );
    }

    #[test]
    fn guarded_properties_and_unusable_security_are_refused_at_their_line() {
        let err = GlobalConfig::parse_with(
            Path::new("k.yaml"),
            "kafka:\n  properties:\n    client.id: x\n    enable.auto.commit: \"true\"\n  security:\n    sasl: { mechanism: SCRAM-SHA-512, username: u, password: { env: PW } }\n",
            &|_| None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("k.yaml:4:5: error: kafka.properties.enable.auto.commit cannot be set"),
            "{err}"
        );
        assert!(err.contains("k.yaml:6:"), "{err}");
        assert!(err.contains("`PW` is not set"), "{err}");
    }

    /// KaflowSQL's global config shape: brokers as a list, `${VAR}` and
    /// `${VAR:-default}`, keys kaflowsql has in another form accepted with
    /// a warning that says what to use instead.
    #[test]
    fn kaflowsql_files_load_with_warnings_for_what_is_ignored() {
        let text = "kafka:\n  brokers: [\"${KAFKA_BROKERS}\"]\n  schemaRegistry: http://localhost:8081\nemitter:\n  interval: 1s\nstate:\n  ttl: ${STATE_TTL:-24h}\n  rocksdb:\n    path: /var/lib/kaflowsql\n    checkpoint:\n      enabled: true\n      interval: 5m\n      s3: { enabled: false, bucket: b, region: r, endpoint: e, accessKey: a, secretKey: s, prefix: p }\n";
        let env = |k: &str| (k == "KAFKA_BROKERS").then(|| "k1:9092".to_string());
        let c = GlobalConfig::parse_with(Path::new("kaflowsql.yaml"), text, &env).unwrap();
        assert_eq!(c.kafka.brokers, "k1:9092");
        assert_eq!(
            c.state.ttl.map(|d| d.0),
            Some(std::time::Duration::from_secs(86_400))
        );
        let warnings: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].starts_with("kaflowsql.yaml:4:1: warning: emitter is ignored"),
            "{warnings:?}"
        );
        assert!(
            warnings[1].contains("state.rocksdb.checkpoint is ignored"),
            "{warnings:?}"
        );
        assert_eq!(
            c.registry.as_ref().map(|r| r.url.as_str()),
            Some("http://localhost:8081")
        );
    }

    /// `kafka.schemaRegistry` as a block: basic auth with a secret, TLS
    /// files checked, the subject strategy; problems at their line.
    #[test]
    fn schema_registry_blocks_resolve_secrets_and_check_files() {
        let text = "kafka:\n  useAvro: true\n  schemaRegistry:\n    url: https://r:8081\n    username: key\n    password: { env: SR_SECRET }\n    subjectNameStrategy: TopicRecordNameStrategy\n";
        let env = |k: &str| (k == "SR_SECRET").then(|| "s3cret".to_string());
        let c = GlobalConfig::parse_with(Path::new("k.yaml"), text, &env).unwrap();
        let r = c.registry.clone().unwrap();
        assert!(c.kafka.use_avro);
        assert_eq!(r.password.as_deref(), Some("s3cret"));
        assert_eq!(
            r.subject_strategy,
            crate::registry::SubjectStrategy::TopicRecordName
        );
        assert!(!format!("{c:?}").contains("s3cret"));
        let bad = "kafka:\n  schemaRegistry:\n    url: registry:8081\n    password: { env: NOPE }\n    tls: { ca: /no/such/ca.pem }\n";
        let err = GlobalConfig::parse_with(Path::new("k.yaml"), bad, &|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("k.yaml:3:5: error: kafka.schemaRegistry `registry:8081` is not an http"),
            "{err}"
        );
        assert!(
            err.contains("k.yaml:4:5: error: kafka.schemaRegistry.password cannot be read"),
            "{err}"
        );
        assert!(err.contains("password is set without a username"), "{err}");
        assert!(
            err.contains("kafka.schemaRegistry.tls.ca: `/no/such/ca.pem` is not a readable file"),
            "{err}"
        );
    }

    #[test]
    fn profiling_is_off_and_on_loopback_by_default() {
        let c = GlobalConfig::parse(Path::new("k.yaml"), GUIDE).unwrap();
        assert!(!c.http.profiling.enabled);
        assert_eq!(c.http.profiling.listen, "127.0.0.1:6060");
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut c = GlobalConfig::parse(Path::new("k.yaml"), GUIDE).unwrap();
        c.apply_env(|k| (k == "KAFLOWSQL_KAFKA_BROKERS").then(|| "127.0.0.1:1".to_string()));
        assert_eq!(c.kafka.brokers, "127.0.0.1:1");
    }

    #[test]
    fn unknown_keys_are_located() {
        let err = GlobalConfig::parse(Path::new("k.yaml"), "kafka:\n  brokerz: x\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("k.yaml:2:"), "{text}");
        assert!(text.contains("unknown field `brokerz`"), "{text}");
    }
}
