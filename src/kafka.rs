//! The Kafka edge (the only module that imports rdkafka): consumers for event
//! streams and dimensions, the idempotent producer with delivery tracking,
//! dead-letter records, and topic metadata checks.

pub mod bootstrap;
pub mod dlq;
pub mod peek;
pub mod refusal;
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
    /// The cluster refused this client (credentials, TLS): waiting cannot help.
    #[error("{context}: the brokers refused the connection: {reason}; check kafka.security (protocol, mechanism, username and password, CA file) against the cluster's settings")]
    Refused {
        /// What was being done.
        context: String,
        /// librdkafka's reason.
        reason: String,
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
    /// Shutdown was requested while the producer's queue was full: the record
    /// was not produced, and its epoch is never committed.
    #[error("shutdown requested while waiting for room in the producer queue")]
    Interrupted,
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
    /// `original` when the dead letter carries the record's own key and
    /// value; `decoded-columns` when its value is the JSON of the columns the
    /// query read (a row that failed in SQL after its record's micro-batch).
    pub const DLQ_VALUE: &str = "kaflowsql.dlq.value";
}

impl crate::error::Classified for KafkaError {
    fn domain(&self) -> crate::error::Domain {
        use crate::error::Domain;
        use rdkafka::error::KafkaError as Rd;
        use rdkafka::types::RDKafkaErrorCode as Code;
        match self {
            KafkaError::Client { source, .. } => match source {
                // librdkafka refused its configuration (an unknown property,
                // an unsupported value): waiting cannot fix it.
                Rd::ClientConfig(..) | Rd::ClientCreation(_) => Domain::Config,
                other => match other.rdkafka_error_code() {
                    Some(
                        Code::Authentication
                        | Code::SaslAuthenticationFailed
                        | Code::TopicAuthorizationFailed
                        | Code::GroupAuthorizationFailed
                        | Code::ClusterAuthorizationFailed
                        | Code::InvalidConfig,
                    ) => Domain::Config,
                    Some(code) if refusal::is_refusal(code) => Domain::Config,
                    _ => Domain::External,
                },
            },
            KafkaError::NotCoPartitioned { .. }
            | KafkaError::NoSuchPartition { .. }
            | KafkaError::Refused { .. } => Domain::Config,
            KafkaError::MissingTopic { .. }
            | KafkaError::Delivery { .. }
            | KafkaError::Interrupted => Domain::External,
        }
    }

    fn retry(&self) -> crate::error::Retry {
        use crate::error::{Domain, Retry};
        match self {
            // Undeliverable after librdkafka's own retries (message.timeout.ms).
            KafkaError::Delivery { .. } | KafkaError::Interrupted => Retry::Never,
            _ if self.domain() == Domain::External => Retry::WithBackoff,
            _ => Retry::Never,
        }
    }

    fn kind(&self) -> &'static str {
        use crate::error::Domain;
        match self {
            KafkaError::Client { .. } if self.domain() == Domain::Config => "kafka_client_config",
            KafkaError::Client { .. } => "kafka_client",
            KafkaError::MissingTopic { .. } => "missing_topic",
            KafkaError::Refused { .. } => "kafka_refused",
            KafkaError::NotCoPartitioned { .. } => "not_co_partitioned",
            KafkaError::NoSuchPartition { .. } => "no_such_partition",
            KafkaError::Delivery { .. } | KafkaError::Interrupted => "delivery",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Classified, Domain, Retry};
    use rdkafka::error::KafkaError as Rd;
    use rdkafka::types::RDKafkaErrorCode as Code;

    #[test]
    fn errors_that_cannot_heal_are_not_retried() {
        let refused = KafkaError::client(
            "cannot create the producer",
            Rd::ClientCreation(
                "Unsupported value \"SASL_SSL\" for configuration property \"security.protocol\""
                    .into(),
            ),
        );
        assert_eq!(
            (refused.domain(), refused.retry()),
            (Domain::Config, Retry::Never)
        );
        assert_eq!(refused.kind(), "kafka_client_config");
        let auth = KafkaError::client(
            "commit failed",
            Rd::ConsumerCommit(Code::SaslAuthenticationFailed),
        );
        assert_eq!(auth.domain(), Domain::Config);
        let down = KafkaError::client(
            "cannot read metadata",
            Rd::MetadataFetch(Code::BrokerTransportFailure),
        );
        assert_eq!(
            (down.domain(), down.retry()),
            (Domain::External, Retry::WithBackoff)
        );
        let co = KafkaError::NotCoPartitioned { detail: "x".into() };
        assert_eq!((co.domain(), co.retry()), (Domain::Config, Retry::Never));
        assert_eq!(KafkaError::Interrupted.retry(), Retry::Never);
        let missing = KafkaError::MissingTopic {
            topic: "t".into(),
            brokers: "b".into(),
        };
        assert_eq!(
            missing.retry(),
            Retry::WithBackoff,
            "a topic may be created later"
        );
    }
}
