//! The global config file (`kaflowsql.yaml`): Kafka, RocksDB and HTTP
//! settings shared by every pipeline of a process. Environment variables
//! override the file (`KAFLOWSQL_KAFKA_BROKERS`, `KAFLOWSQL_HTTP_LISTEN`,
//! `KAFLOWSQL_STATE_ROCKSDB_PATH`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{read, yaml_diagnostic, ByteSize, ConfigError, Diagnostics};

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
}

/// Kafka client settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    #[serde(default = "brokers")]
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
    /// Schema registry URL (for Avro; not used yet).
    #[serde(default, rename = "schemaRegistry")]
    pub schema_registry: Option<String>,
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
}

/// The HTTP server.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address.
    #[serde(default = "listen")]
    pub listen: String,
}

fn listen() -> String {
    default_listen().to_string()
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { listen: listen() }
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

    /// Parses config text.
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml_ng::from_str(text)
            .map_err(|e| ConfigError::Invalid(Diagnostics(vec![yaml_diagnostic(file, &e)])))
    }

    /// Applies `KAFLOWSQL_*` overrides read through `var`.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) {
        if let Some(v) = var("KAFLOWSQL_KAFKA_BROKERS") {
            self.kafka.brokers = v;
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
        let mut p = BTreeMap::new();
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
        let mut p = BTreeMap::new();
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
