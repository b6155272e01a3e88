//! `kaflowsql peek`: the first records of a topic, for a quick look at output.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::refusal::RefusalContext;
use rdkafka::message::Message;
use std::collections::BTreeMap;

use rdkafka::{Offset, TopicPartitionList};

use super::KafkaError;

/// A record's key, value and headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peeked {
    /// Kafka key.
    pub key: Option<Vec<u8>>,
    /// Kafka value (empty for a tombstone).
    pub value: Vec<u8>,
    /// Headers in order (a dead letter's reason is `kaflowsql.dlq.reason`).
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Up to `count` records of `topic` from the beginning of each partition,
/// waiting at most `timeout`; the consumer has `properties` (the global
/// config's: brokers, security) under its own group, never committing.
pub fn peek(
    properties: &BTreeMap<String, String>,
    topic: &str,
    count: usize,
    timeout: Duration,
) -> Result<Vec<Peeked>, KafkaError> {
    let brokers = properties
        .get("bootstrap.servers")
        .map_or("localhost:9092", String::as_str);
    let base = super::properties(&[
        ("bootstrap.servers", brokers),
        ("group.id", "kaflowsql-peek"),
        ("enable.auto.commit", "false"),
    ]);
    let own = super::properties(&[
        ("group.id", "kaflowsql-peek"),
        ("enable.auto.commit", "false"),
    ]);
    let consumer: BaseConsumer<RefusalContext> = super::client_config([&base, properties, &own])
        .create_with_context(RefusalContext::default())
        .map_err(|e| KafkaError::client("cannot create a consumer", e))?;
    // The same check as `run`: a refusal (TLS, SASL) is named, not an outage.
    super::source::partition_counts(&consumer, &[topic.to_string()], brokers)?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| KafkaError::client(format!("cannot read metadata of `{topic}`"), e))?;
    let mut list = TopicPartitionList::new();
    for t in md.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            list.add_partition_offset(topic, p.id(), Offset::Beginning)
                .map_err(|e| KafkaError::client("cannot assign", e))?;
        }
    }
    if list.count() == 0 {
        return Err(KafkaError::MissingTopic {
            topic: topic.to_string(),
            brokers: brokers.to_string(),
        });
    }
    consumer
        .assign(&list)
        .map_err(|e| KafkaError::client("cannot assign", e))?;
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < count && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let headers = super::source::headers_of(&m);
            out.push(Peeked {
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
    }
    Ok(out)
}
