//! The input side: the consumer of a pipeline's event streams (consumer group
//! with range assignment, or static ownership of one partition
//! of every stream), the reader of its dimensions (every partition, from the
//! beginning, on every instance), and metadata checks before start.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{info, warn};

use super::bootstrap::{Bootstrap, Outcome};
use super::refusal::RefusalContext;
use super::sink::CommitOffsets;
use super::{client_config, KafkaError};
use crate::error::LogLimit;

/// How an instance owns the partitions of its event streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// A consumer group shares the partitions among instances.
    Group,
    /// This instance owns partition N of every event stream (one container per partition).
    Static(i32),
}

/// Offsets known safe to commit, shared with the rebalance callback so a
/// revoked partition is committed as far as is safe before it is let go.
pub type SafeOffsets = Arc<Mutex<CommitOffsets>>;

/// Consumer lag per (topic, partition), from librdkafka's statistics.
pub type Lag = Arc<Mutex<BTreeMap<(String, i32), i64>>>;

/// A change of the partitions this instance owns, in the order librdkafka
/// made them (group mode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rebalanced {
    /// These partitions were given up (their safe offsets were committed).
    Revoked(Vec<(String, i32)>),
    /// These partitions were added.
    Assigned(Vec<(String, i32)>),
}

/// Logs rebalances, commits the safe offsets of revoked partitions, notes
/// every change for the run loop, and keeps the consumer lag that
/// librdkafka's statistics report.
pub struct SourceContext {
    safe: SafeOffsets,
    pipeline: String,
    lag: Lag,
    /// Set at the first assignment (the group joined; static: at once).
    assigned: AtomicBool,
    /// Changes not yet taken by the run loop; `changed` says there are some
    /// (one relaxed load per poll instead of a lock).
    changes: Mutex<Vec<Rebalanced>>,
    changed: AtomicBool,
    /// What the cluster refused, if it did.
    refusal: super::refusal::Refusal,
}

impl super::refusal::Refusals for SourceContext {
    fn refusal(&self) -> &super::refusal::Refusal {
        &self.refusal
    }
}

impl SourceContext {
    fn note(&self, change: Rebalanced) {
        if let Ok(mut changes) = self.changes.lock() {
            changes.push(change);
            self.changed.store(true, Ordering::Release);
        }
    }
}

fn partitions_of(list: &TopicPartitionList) -> Vec<(String, i32)> {
    list.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ClientContext for SourceContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.refusal.note(&error, reason);
    }

    /// Reads consumer lag from librdkafka's statistics JSON directly (only the
    /// fields needed, so brokers that leave others out do not break it).
    fn stats_raw(&self, statistics: &[u8]) {
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(statistics) else {
            return;
        };
        let Ok(mut lag) = self.lag.lock() else { return };
        lag.clear();
        let Some(topics) = json.get("topics").and_then(|t| t.as_object()) else {
            return;
        };
        for (topic, t) in topics {
            let Some(partitions) = t.get("partitions").and_then(|p| p.as_object()) else {
                continue;
            };
            for (partition, p) in partitions {
                let partition: i32 = partition.parse().unwrap_or(-1);
                let value = p
                    .get("consumer_lag")
                    .and_then(serde_json::Value::as_i64)
                    .unwrap_or(-1);
                // -1: unknown; partition -1 is librdkafka's internal UA partition.
                if partition >= 0 && value >= 0 {
                    lag.insert((topic.clone(), partition), value);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let Ok(mut safe) = self.safe.lock() else {
                return;
            };
            let mut commit = TopicPartitionList::new();
            for e in list.elements() {
                // Taken out: a later owner's offsets are not ours to commit.
                if let Some(o) = safe.remove(&(e.topic().to_string(), e.partition())) {
                    let _ =
                        commit.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o));
                }
            }
            drop(safe);
            self.note(Rebalanced::Revoked(partitions_of(list)));
            if commit.count() > 0 {
                if let Err(error) = consumer.commit(&commit, CommitMode::Sync) {
                    warn!(pipeline = %self.pipeline, %error, "Commit of revoked partitions failed; the next owner re-reads from the previous commit.");
                }
            }
            info!(pipeline = %self.pipeline, partitions = list.count(), "Partitions revoked.");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            // Zero partitions is an assignment too: a member of a group with
            // more members than partitions is ready with nothing to read.
            self.assigned.store(true, Ordering::Relaxed);
            self.note(Rebalanced::Assigned(partitions_of(list)));
            info!(pipeline = %self.pipeline, partitions = list.count(), "Partitions assigned.");
        }
    }
}

/// A record read from Kafka, borrowed from its consumer until dropped (a
/// micro-batch holds its records so that dead letters carry their original
/// bytes and headers).
pub struct Record<'a> {
    message: BorrowedMessage<'a>,
}

impl Record<'_> {
    /// Topic name.
    pub fn topic(&self) -> &str {
        self.message.topic()
    }

    /// Partition.
    pub fn partition(&self) -> i32 {
        self.message.partition()
    }

    /// Offset.
    pub fn offset(&self) -> i64 {
        self.message.offset()
    }

    /// Kafka key.
    pub fn key(&self) -> Option<&[u8]> {
        self.message.key()
    }

    /// Kafka value; None is a tombstone.
    pub fn value(&self) -> Option<&[u8]> {
        self.message.payload()
    }

    /// Its headers, copied (only needed for dead letters).
    pub fn headers(&self) -> Vec<(String, Vec<u8>)> {
        headers_of(&self.message)
    }

    /// Kafka timestamp in epoch ms ([`crate::engine::NO_TIMESTAMP`] when the record has none).
    pub fn timestamp(&self) -> i64 {
        self.message
            .timestamp()
            .to_millis()
            .unwrap_or(crate::engine::NO_TIMESTAMP)
    }

    /// The record as the engine takes it.
    pub fn source_record(&self) -> crate::engine::SourceRecord<'_> {
        crate::engine::SourceRecord {
            topic: self.topic(),
            partition: self.partition(),
            offset: self.offset(),
            timestamp: self.timestamp(),
            key: self.key(),
            value: self.value(),
        }
    }
}

/// A message's headers, copied, in order.
pub(super) fn headers_of(message: &impl Message) -> Vec<(String, Vec<u8>)> {
    message
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `consumer`: a record, a consume error, or None when nothing came in `timeout`.
fn poll<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    timeout: Duration,
) -> Option<Result<Record<'_>, KafkaError>> {
    consumer.poll(timeout).map(|r| {
        r.map(|message| Record { message })
            .map_err(|e| KafkaError::client("consume failed", e))
    })
}

/// Partition count of each topic; a missing topic is an error, and so is
/// a refusal of the cluster (credentials, TLS), reported within about a
/// second of librdkafka seeing it rather than after the whole wait.
pub fn partition_counts<C: ConsumerContext + super::refusal::Refusals>(
    consumer: &BaseConsumer<C>,
    topics: &[String],
    brokers: &str,
) -> Result<BTreeMap<String, usize>, KafkaError> {
    let mut counts = BTreeMap::new();
    for topic in topics {
        let context = || format!("cannot read metadata of `{topic}` from {brokers}");
        let deadline = Instant::now() + Duration::from_secs(10);
        let md = loop {
            match consumer.fetch_metadata(Some(topic), Duration::from_secs(1)) {
                Ok(md) => break md,
                Err(e) => {
                    if let Some(reason) = refusal_within(consumer, Duration::from_millis(200)) {
                        return Err(KafkaError::Refused {
                            context: context(),
                            reason,
                        });
                    }
                    if Instant::now() >= deadline {
                        // librdkafka may report the refusal just after the
                        // wait (a slow handshake, verbose debug logging):
                        // a few more seconds to hear it before calling this
                        // an outage.
                        if let Some(reason) = refusal_within(consumer, Duration::from_secs(5)) {
                            return Err(KafkaError::Refused {
                                context: context(),
                                reason,
                            });
                        }
                        return Err(KafkaError::client(context(), e));
                    }
                }
            }
        };
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        if n == 0 {
            return Err(KafkaError::MissingTopic {
                topic: topic.clone(),
                brokers: brokers.to_string(),
            });
        }
        counts.insert(topic.clone(), n);
    }
    Ok(counts)
}

/// Serves the consumer's events (librdkafka hands error events to the
/// context only while it is polled; nothing is assigned yet, so no record
/// comes) for up to `wait`, until a refusal is noted.
fn refusal_within<C: ConsumerContext + super::refusal::Refusals>(
    consumer: &BaseConsumer<C>,
    wait: Duration,
) -> Option<String> {
    let until = Instant::now() + wait;
    loop {
        if let Some(reason) = consumer.context().refusal().get() {
            return Some(reason);
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let _ = consumer.poll(left.min(Duration::from_millis(50)));
    }
}

/// Joined event streams must have one partition count.
pub fn check_copartitioned(counts: &BTreeMap<String, usize>) -> Result<(), KafkaError> {
    let mut distinct: Vec<usize> = counts.values().copied().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() > 1 {
        let detail = counts
            .iter()
            .map(|(t, n)| format!("`{t}` has {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(KafkaError::NotCoPartitioned { detail });
    }
    Ok(())
}

/// The consumer of a pipeline's event streams.
pub struct EventSource {
    consumer: BaseConsumer<SourceContext>,
    /// Offsets safe to commit (shared with the rebalance callback).
    safe: SafeOffsets,
}

/// librdkafka's `fetch.queue.backoff.ms` unless configured (its default is 1000).
const FETCH_QUEUE_BACKOFF_MS: &str = "5";

/// How often librdkafka reports statistics (consumer lag) by default.
const STATISTICS_INTERVAL_MS: &str = "5000";

impl EventSource {
    /// Creates the consumer and joins the group or assigns the static partition
    /// (from `resume`, where durable state left off, if it has the partition).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        pipeline: &str,
        group: &str,
        topics: &[String],
        ownership: Ownership,
        properties: &BTreeMap<String, String>,
        brokers: &str,
        lag: Lag,
        resume: &HashMap<(String, i32), i64>,
    ) -> Result<Self, KafkaError> {
        let base = super::properties(&[
            ("statistics.interval.ms", STATISTICS_INTERVAL_MS),
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            // Range gives every member the same partition numbers of every
            // topic it subscribes to (equal partition counts, checked before
            // start): partition p of one event stream is joined with
            // partition p of the others, so they must have one owner, as
            // Kafka Streams requires of co-partitioned topics. (Sticky and
            // round-robin assignors split them.)
            ("partition.assignment.strategy", "range"),
            // librdkafka waits 1 s before fetching again once its local queue
            // is over its threshold: a pipeline slower than the fetch then
            // idles for up to a second (measured: 0.4 of the throughput
            // through the broker); 5 ms keeps fetching without spinning.
            ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS),
        ]);
        let safe: SafeOffsets = Arc::new(Mutex::new(CommitOffsets::new()));
        let consumer: BaseConsumer<SourceContext> = client_config([&base, properties])
            .create_with_context(SourceContext {
                safe: safe.clone(),
                pipeline: pipeline.to_string(),
                lag,
                assigned: AtomicBool::new(false),
                changes: Mutex::new(Vec::new()),
                changed: AtomicBool::new(false),
                refusal: Default::default(),
            })
            .map_err(|e| KafkaError::client("cannot create the consumer", e))?;
        let counts = partition_counts(&consumer, topics, brokers)?;
        check_copartitioned(&counts)?;
        match ownership {
            Ownership::Group => {
                let names: Vec<&str> = topics.iter().map(String::as_str).collect();
                consumer
                    .subscribe(&names)
                    .map_err(|e| KafkaError::client("cannot subscribe", e))?;
            }
            Ownership::Static(p) => {
                let mut list = TopicPartitionList::new();
                for (topic, &count) in &counts {
                    if p < 0 || p as usize >= count {
                        return Err(KafkaError::NoSuchPartition {
                            partition: p,
                            topic: topic.clone(),
                            count,
                        });
                    }
                    list.add_partition(topic, p);
                }
                // Resume where durable state left off, else from the group's
                // committed offsets, else from the beginning.
                let committed = consumer
                    .committed_offsets(list.clone(), Duration::from_secs(10))
                    .map_err(|e| KafkaError::client("cannot read committed offsets", e))?;
                let mut start = TopicPartitionList::new();
                for e in committed.elements() {
                    let stored = resume.get(&(e.topic().to_string(), e.partition()));
                    let offset = match (stored, e.offset()) {
                        (Some(&o), _) => Offset::Offset(o),
                        (None, Offset::Offset(o)) => Offset::Offset(o),
                        _ => Offset::Beginning,
                    };
                    start
                        .add_partition_offset(e.topic(), e.partition(), offset)
                        .map_err(|e| KafkaError::client("cannot set the start offset", e))?;
                }
                consumer
                    .assign(&start)
                    .map_err(|e| KafkaError::client("cannot assign the partition", e))?;
                consumer.context().assigned.store(true, Ordering::Relaxed);
            }
        }
        Ok(Self { consumer, safe })
    }

    /// The next record of the event streams, waiting at most `timeout`.
    pub fn poll(&self, timeout: Duration) -> Option<Result<Record<'_>, KafkaError>> {
        poll(&self.consumer, timeout)
    }

    /// Records `offsets` as safe to commit when a partition is revoked.
    pub fn mark_safe(&self, offsets: &CommitOffsets) {
        if let Ok(mut safe) = self.safe.lock() {
            safe.extend(offsets.iter().map(|(k, v)| (k.clone(), *v)));
        }
    }

    /// Every offset known safe to commit so far.
    pub fn safe_offsets(&self) -> CommitOffsets {
        self.safe.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Commits `offsets` without waiting (a failure is retried by the next commit).
    pub fn commit_async(&self, offsets: &CommitOffsets) -> Result<(), KafkaError> {
        self.commit(offsets, CommitMode::Async)
    }

    /// Commits `offsets` and waits for the broker's answer (at shutdown).
    pub fn commit_sync(&self, offsets: &CommitOffsets) -> Result<(), KafkaError> {
        self.commit(offsets, CommitMode::Sync)
    }

    /// Leaves the consumer group (static ownership: gives up the assignment).
    pub fn leave(&self) {
        self.consumer.unsubscribe();
    }

    /// The ownership changes since the last call, oldest first (group mode;
    /// empty at once when there were none).
    pub fn rebalanced(&self) -> Vec<Rebalanced> {
        let context = self.consumer.context();
        if !context.changed.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        context
            .changes
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }

    /// Whether partitions were assigned (the group joined, or static ownership).
    pub fn assigned(&self) -> bool {
        self.consumer.context().assigned.load(Ordering::Relaxed)
    }

    /// Commits `offsets` (next offsets to read) and records them as safe.
    fn commit(&self, offsets: &CommitOffsets, mode: CommitMode) -> Result<(), KafkaError> {
        if let Ok(mut safe) = self.safe.lock() {
            safe.extend(offsets.iter().map(|(k, v)| (k.clone(), *v)));
        }
        let assigned = self
            .consumer
            .assignment()
            .map_err(|e| KafkaError::client("cannot read the assignment", e))?;
        let mut list = TopicPartitionList::new();
        for e in assigned.elements() {
            if let Some(&o) = offsets.get(&(e.topic().to_string(), e.partition())) {
                list.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o))
                    .map_err(|e| KafkaError::client("cannot build the commit", e))?;
            }
        }
        if list.count() == 0 {
            return Ok(());
        }
        self.consumer
            .commit(&list, mode)
            .map_err(|e| KafkaError::client("commit failed", e))
    }
}

/// Reads every partition of the dimension topics from the beginning.
pub struct DimensionSource {
    /// The consumer (assigned, never committing).
    consumer: BaseConsumer<RefusalContext>,
    bootstrap: Bootstrap,
    waiting_log: LogLimit,
}

impl DimensionSource {
    /// Assigns every partition of `topics` from the beginning (or from where
    /// durable state left off, `resume`) and notes the end offsets listed
    /// now: output waits until they are read (see [`super::bootstrap`]), for
    /// at most `timeout` where the broker never tells.
    pub fn start(
        topics: &[String],
        properties: &BTreeMap<String, String>,
        brokers: &str,
        timeout: Duration,
        resume: &HashMap<(String, i32), i64>,
    ) -> Result<Self, KafkaError> {
        let base = super::properties(&[
            ("group.id", "kaflowsql-dimensions"),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS),
        ]);
        let consumer: BaseConsumer<RefusalContext> = client_config([&base, properties])
            .create_with_context(RefusalContext::default())
            .map_err(|e| KafkaError::client("cannot create the dimension consumer", e))?;
        let counts = partition_counts(&consumer, topics, brokers)?;
        let mut list = TopicPartitionList::new();
        let mut partitions = Vec::new();
        for (topic, &n) in &counts {
            for p in 0..n as i32 {
                let from = resume.get(&(topic.clone(), p)).copied();
                let offset = from.map_or(Offset::Beginning, Offset::Offset);
                list.add_partition_offset(topic, p, offset)
                    .map_err(|e| KafkaError::client("cannot assign a dimension partition", e))?;
                let (low, high) = consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .map_err(|e| {
                        KafkaError::client(
                            format!("cannot read the end offset of `{topic}`[{p}]"),
                            e,
                        )
                    })?;
                partitions.push(((topic.clone(), p), low.max(from.unwrap_or(0)), high));
            }
        }
        consumer
            .assign(&list)
            .map_err(|e| KafkaError::client("cannot assign the dimension partitions", e))?;
        Ok(Self {
            consumer,
            bootstrap: Bootstrap::new(partitions, timeout, Instant::now()),
            waiting_log: LogLimit::new(Duration::from_secs(10)),
        })
    }

    /// The next dimension record, waiting at most `timeout`.
    pub fn poll(&self, timeout: Duration) -> Option<Result<Record<'_>, KafkaError>> {
        poll(&self.consumer, timeout)
    }

    /// Whether the bootstrap is over: every dimension partition read to its
    /// end, or the bound passed (logged).
    pub fn caught_up(&self) -> bool {
        self.bootstrap.outcome() != Outcome::Waiting
    }

    /// Partitions still being bootstrapped.
    pub fn remaining(&self) -> usize {
        self.bootstrap.remaining()
    }

    /// Notes that `offset` of a partition was read.
    pub fn progressed(&mut self, topic: &str, partition: i32, offset: i64) {
        self.bootstrap.progressed(topic, partition, offset);
        self.settle();
    }

    /// Notes that a poll returned nothing: decides again (a fetch response
    /// may have told the end), and says what it waits for every 10 s.
    pub fn idle(&mut self) {
        if self.settle() == Outcome::Waiting {
            if let Some(suppressed) = self.waiting_log.allow() {
                let pending = self.bootstrap.pending();
                info!(
                    partitions = pending.len(),
                    first = ?pending.first(),
                    suppressed,
                    "Waiting for the dimension partitions to be read to their end (topic, partition, next offset, end listed at start)."
                );
            }
        }
    }

    fn settle(&mut self) -> Outcome {
        let before = self.bootstrap.outcome();
        let consumer = &self.consumer;
        let outcome = self
            .bootstrap
            .settle(|t, p| cached_high_watermark(consumer, t, p), Instant::now());
        if before == Outcome::Waiting && outcome == Outcome::TimedOut {
            warn!(
                pending = ?self.bootstrap.pending(),
                "The broker did not tell the end of these dimension partitions within kafka.consumer.dimensionLoadTimeout; output starts without them being read to their end."
            );
        }
        outcome
    }
}

/// The high watermark librdkafka cached from the last fetch response of a
/// partition (`rd_kafka_get_watermark_offsets`: no request to the broker;
/// rust-rdkafka does not wrap it). `None` before a fetch answered.
#[allow(unsafe_code)]
fn cached_high_watermark(
    consumer: &BaseConsumer<RefusalContext>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1_i64, -1_i64);
    // SAFETY: `native_ptr` is the live rd_kafka_t handle owned by `consumer`,
    // which the shared borrow keeps alive for the whole call; `topic` is a
    // NUL-terminated string that outlives the call and librdkafka only reads
    // it; `low` and `high` are valid, exclusive i64 out-pointers to locals.
    // The function only reads librdkafka's partition state under its own lock.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn co_partitioning_is_checked() {
        let mut counts = BTreeMap::new();
        counts.insert("orders".to_string(), 4);
        counts.insert("payments".to_string(), 4);
        assert!(check_copartitioned(&counts).is_ok());
        counts.insert("refunds".to_string(), 2);
        let e = check_copartitioned(&counts).unwrap_err().to_string();
        assert!(
            e.contains("`refunds` has 2") && e.contains("`orders` has 4"),
            "{e}"
        );
    }
}
