//! The output thread: writes each micro-batch's output rows to Kafka off the
//! pipeline thread.
//!
//! Building a record's source headers and handing the record to librdkafka
//! (`rd_kafka_producev`: allocations, a copy, a lock and a clock read per
//! record) took about a fifth of the pipeline thread's time through the
//! broker, and the pipeline thread is what bounds a scenario like iot
//! (docs/performance.md, "Where the time goes through the broker"). Here it
//! overlaps with the next micro-batch, on the other core.
//!
//! Order and delivery are as before: one thread writes the batches in the
//! order they were handed over, so the outputs keep their order per key
//! (librdkafka's idempotent producer keeps it per partition). A batch's rows
//! count in the epoch they were handed over in ([`super::sink::Sink`]), so
//! its source offsets are committed only after the broker acknowledged every
//! one of them. A write that fails is kept as the producer's failure, which
//! the pipeline thread's next delivery poll returns (the pipeline stops; no
//! offset past it is committed).

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use super::sink::SinkContext;
use super::KafkaError;

/// Batches handed over and not yet written before a hand-over waits: one
/// being written, one waiting, so the pipeline thread runs at most one
/// micro-batch ahead of the output thread.
const QUEUED_BATCHES: usize = 1;

/// The output rows of one micro-batch for one topic: keys and values copied
/// into one buffer, with the driving event (topic, partition, offset) of
/// each for its source headers.
#[derive(Debug, Default)]
pub struct OutputBatch {
    topic: String,
    epoch: usize,
    /// Source topic names; a row names its own by index.
    sources: Vec<String>,
    data: Vec<u8>,
    rows: Vec<Row>,
}

#[derive(Debug)]
struct Row {
    key: Option<Range<usize>>,
    value: Range<usize>,
    source: usize,
    partition: i32,
    offset: i64,
}

impl OutputBatch {
    /// Appends a row: `key` and `value` are copied; `driving` is the
    /// (topic, partition, offset) of its driving event.
    pub fn push(&mut self, key: Option<&[u8]>, value: &[u8], driving: (&str, i32, i64)) {
        let source = match self.sources.iter().position(|s| s == driving.0) {
            Some(i) => i,
            None => {
                self.sources.push(driving.0.to_string());
                self.sources.len() - 1
            }
        };
        let key = key.map(|k| {
            let start = self.data.len();
            self.data.extend_from_slice(k);
            start..self.data.len()
        });
        let start = self.data.len();
        self.data.extend_from_slice(value);
        self.rows.push(Row {
            key,
            value: start..self.data.len(),
            source,
            partition: driving.1,
            offset: driving.2,
        });
    }

    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether it holds no row.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn clear(&mut self) {
        self.rows.clear();
        self.data.clear();
        self.sources.clear();
    }

    /// Produces every row, tagged with the batch's epoch; waits (serving
    /// deliveries) while librdkafka's queue is full, and gives up with
    /// [`KafkaError::Interrupted`] once `shutdown` is set.
    fn write(
        &self,
        producer: &BaseProducer<SinkContext>,
        shutdown: &AtomicBool,
    ) -> Result<(), KafkaError> {
        for row in &self.rows {
            let headers = super::with_source_headers(
                OwnedHeaders::new_with_capacity(3),
                &self.sources[row.source],
                row.partition,
                row.offset,
            );
            let mut record: BaseRecord<'_, [u8], [u8], usize> =
                BaseRecord::with_opaque_to(&self.topic, self.epoch)
                    .headers(headers)
                    .payload(&self.data[row.value.clone()]);
            if let Some(k) = &row.key {
                record = record.key(&self.data[k.clone()]);
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((e, back))
                        if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) =>
                    {
                        producer.poll(Duration::from_millis(10));
                        if shutdown.load(Ordering::Relaxed) {
                            return Err(KafkaError::Interrupted);
                        }
                        record = back;
                    }
                    Err((e, _)) => {
                        return Err(KafkaError::client(
                            format!("cannot produce to `{}`", self.topic),
                            e,
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}

/// The output thread and its queue.
pub(super) struct Sender {
    queue: SyncSender<OutputBatch>,
    /// Written batches, emptied, for reuse (their buffers keep their size).
    spare: Receiver<OutputBatch>,
    /// Batches handed over and not yet written.
    pending: Arc<AtomicU64>,
}

impl Sender {
    /// Starts the thread writing to `producer`; `shutdown` interrupts a
    /// write waiting for room in librdkafka's queue.
    pub(super) fn start(
        producer: Arc<BaseProducer<SinkContext>>,
        shutdown: Arc<AtomicBool>,
    ) -> Result<Self, KafkaError> {
        let (queue, batches) = mpsc::sync_channel::<OutputBatch>(QUEUED_BATCHES);
        let (recycle, spare) = mpsc::sync_channel::<OutputBatch>(QUEUED_BATCHES + 1);
        let pending = Arc::new(AtomicU64::new(0));
        let left = pending.clone();
        std::thread::Builder::new()
            .name("kaflowsql-output".into())
            .spawn(move || {
                let mut failed = false;
                for mut batch in batches {
                    // After a failure nothing more is written: the pipeline
                    // stops at its next delivery poll, and what was not
                    // acknowledged is read again after a restart.
                    if !failed {
                        if let Err(e) = batch.write(&producer, &shutdown) {
                            producer.context().fail(e);
                            failed = true;
                        }
                    }
                    batch.clear();
                    left.fetch_sub(1, Ordering::Release);
                    // A full spare queue drops the batch: only buffers are lost.
                    let _ = recycle.try_send(batch);
                }
            })
            .map_err(|e| KafkaError::Delivery {
                topic: String::new(),
                reason: format!("cannot start the output thread: {e}"),
            })?;
        Ok(Self {
            queue,
            spare,
            pending,
        })
    }

    /// An empty batch for `topic` (a written one reused when there is one).
    pub(super) fn batch(&self, topic: &str) -> OutputBatch {
        let mut b = self.spare.try_recv().unwrap_or_default();
        b.topic.clear();
        b.topic.push_str(topic);
        b
    }

    /// Queues `batch` (tagged with `epoch`) for writing; waits while the
    /// thread is a batch behind. Errors when the thread is gone.
    pub(super) fn hand_over(&self, mut batch: OutputBatch, epoch: usize) -> Result<(), KafkaError> {
        batch.epoch = epoch;
        self.pending.fetch_add(1, Ordering::Relaxed);
        self.queue.send(batch).map_err(|_| {
            self.pending.fetch_sub(1, Ordering::Release);
            KafkaError::Delivery {
                topic: String::new(),
                reason: "the output thread stopped".into(),
            }
        })
    }

    /// Whether every batch handed over was written (or given up).
    pub(super) fn idle(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }
}
