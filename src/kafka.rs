//! The Kafka edge (the only module that imports rdkafka): consumers for event
//! streams and dimensions, the idempotent producer with delivery tracking,
//! dead-letter records, and topic metadata checks.

pub mod dlq;
pub mod peek;
pub mod sink;
pub mod source;

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

/// A Kafka failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// A client call failed.
    #[error("{context}: {source}")]
    Client {
        /// What was being done.
        context: String,
        /// The client error.
        source: rdkafka::error::KafkaError,
    },
    /// A topic the pipeline reads does not exist.
    #[error("topic `{topic}` does not exist on {brokers}; create it (or enable auto-creation) before starting the pipeline")]
    MissingTopic {
        /// The topic.
        topic: String,
        /// The brokers asked.
        brokers: String,
    },
    /// Joined event streams have different partition counts.
    #[error("event streams joined with each other must be co-partitioned, but {detail}; repartition them to the same partition count (and the same key)")]
    NotCoPartitioned {
        /// Which topics have how many partitions.
        detail: String,
    },
    /// The instance was asked to own a partition the topics do not have.
    #[error(
        "--partition {partition} is out of range: `{topic}` has {count} partition(s) (0..{count})"
    )]
    NoSuchPartition {
        /// The partition asked for.
        partition: i32,
        /// The topic.
        topic: String,
        /// Its partition count.
        count: usize,
    },
    /// The producer could not deliver a record: the pipeline stops.
    #[error("delivery to `{topic}` failed: {reason}")]
    Delivery {
        /// The topic.
        topic: String,
        /// Why.
        reason: String,
    },
}

impl KafkaError {
    /// Wraps a client error with what was being done.
    pub fn client(context: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        Self::Client {
            context: context.into(),
            source,
        }
    }
}

/// Properties from literal pairs (kaflowsql's defaults for one kind of client).
pub fn properties(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A librdkafka config from properties (later keys win).
pub fn client_config<'a>(
    layers: impl IntoIterator<Item = &'a BTreeMap<String, String>>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    for layer in layers {
        for (k, v) in layer {
            config.set(k, v);
        }
    }
    config
}

/// Appends the three source headers (topic, partition, offset) to `headers`.
pub fn with_source_headers(
    headers: rdkafka::message::OwnedHeaders,
    topic: &str,
    partition: i32,
    offset: i64,
) -> rdkafka::message::OwnedHeaders {
    use rdkafka::message::Header;
    let (partition, offset) = (partition.to_string(), offset.to_string());
    headers
        .insert(Header {
            key: headers::SOURCE_TOPIC,
            value: Some(topic),
        })
        .insert(Header {
            key: headers::SOURCE_PARTITION,
            value: Some(&partition),
        })
        .insert(Header {
            key: headers::SOURCE_OFFSET,
            value: Some(&offset),
        })
}

/// Header names kaflowsql writes.
pub mod headers {
    /// Topic of the driving event (on outputs) or of the refused record (on dead letters).
    pub const SOURCE_TOPIC: &str = "kaflowsql.source.topic";
    /// Partition of that record.
    pub const SOURCE_PARTITION: &str = "kaflowsql.source.partition";
    /// Offset of that record.
    pub const SOURCE_OFFSET: &str = "kaflowsql.source.offset";
    /// Why a record went to the dead-letter topic.
    pub const DLQ_REASON: &str = "kaflowsql.dlq.reason";
    /// The pipeline that refused it.
    pub const DLQ_PIPELINE: &str = "kaflowsql.dlq.pipeline";
}
