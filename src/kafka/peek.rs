//! `kaflowsql peek`: the first records of a topic, for a quick look at output.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

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
/// waiting at most `timeout`.
pub fn peek(
    brokers: &str,
    topic: &str,
    count: usize,
    timeout: Duration,
) -> Result<Vec<Peeked>, KafkaError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "kaflowsql-peek")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| KafkaError::client("cannot create a consumer", e))?;
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
