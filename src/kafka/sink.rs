//! The output side: an idempotent producer whose deliveries are counted per
//! *epoch* (the records produced from one engine flush). An epoch is
//! delivered once every record of it, and of every earlier epoch, is
//! acknowledged by the broker; what that makes committable is the
//! [`crate::offsets::Ledger`]'s business.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use super::{client_config, KafkaError};

pub use crate::offsets::CommitOffsets;

/// The newest epoch whose records, and every earlier epoch's, are delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// Its id, as [`Sink::seal`] returned it.
    pub epoch: usize,
}

/// Delivery reports, filled by librdkafka's callback during `poll`.
#[derive(Default)]
pub struct SinkContext {
    reports: Mutex<Reports>,
    /// What the cluster refused, if it did.
    refusal: super::refusal::Refusal,
}

#[derive(Default)]
struct Reports {
    acked: HashMap<usize, u64>,
    failure: Option<KafkaError>,
}

impl ClientContext for SinkContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.refusal.note(&error, reason);
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, epoch: usize) {
        let Ok(mut reports) = self.reports.lock() else {
            return;
        };
        match result {
            Ok(_) => *reports.acked.entry(epoch).or_insert(0) += 1,
            Err((e, msg)) => {
                use rdkafka::message::Message;
                if reports.failure.is_none() {
                    reports.failure = Some(KafkaError::Delivery {
                        topic: msg.topic().to_string(),
                        reason: e.to_string(),
                    });
                }
            }
        }
    }
}

struct Epoch {
    id: usize,
    sent: u64,
    acked: u64,
}

/// The producer plus epoch bookkeeping.
pub struct Sink {
    producer: BaseProducer<SinkContext>,
    sealed: VecDeque<Epoch>,
    open_id: usize,
    open_sent: u64,
    /// Records produced.
    pub produced: u64,
    /// Set on shutdown: a send waiting for room in the queue gives up.
    shutdown: Option<Arc<AtomicBool>>,
}

impl Sink {
    /// An idempotent producer (`acks=all`) with the given properties on top.
    pub fn new(properties: &BTreeMap<String, String>) -> Result<Self, KafkaError> {
        let base = super::properties(&[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "1"),
            ("queue.buffering.max.messages", "200000"),
        ]);
        let producer = client_config([&base, properties])
            .create_with_context(SinkContext::default())
            .map_err(|e| KafkaError::client("cannot create the producer", e))?;
        Ok(Self {
            producer,
            sealed: VecDeque::new(),
            open_id: 1,
            open_sent: 0,
            produced: 0,
            shutdown: None,
        })
    }

    /// Makes a send that waits for room in a full queue give up (with
    /// [`KafkaError::Interrupted`]) once `shutdown` is set, so a stop request
    /// is honoured whatever the broker does.
    pub fn with_shutdown(mut self, shutdown: Arc<AtomicBool>) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// Produces one record in the open epoch; waits (serving deliveries)
    /// while librdkafka's queue is full, which slows the consumer down.
    pub fn send(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: OwnedHeaders,
    ) -> Result<(), KafkaError> {
        let mut record: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(topic, self.open_id).headers(headers);
        if let Some(v) = value {
            record = record.payload(v);
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((e, back)) => {
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) {
                        self.producer.poll(Duration::from_millis(10));
                        self.check_failure()?;
                        if self
                            .shutdown
                            .as_ref()
                            .is_some_and(|s| s.load(Ordering::Relaxed))
                        {
                            return Err(KafkaError::Interrupted);
                        }
                        record = back;
                    } else {
                        return Err(KafkaError::client(
                            format!("cannot produce to `{topic}`"),
                            e,
                        ));
                    }
                }
            }
        }
        self.open_sent += 1;
        self.produced += 1;
        Ok(())
    }

    /// Produces an output row, with the source headers of its driving event.
    pub fn send_output(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        driving: (&str, i32, i64),
    ) -> Result<(), KafkaError> {
        let h = super::with_source_headers(
            OwnedHeaders::new_with_capacity(3),
            driving.0,
            driving.1,
            driving.2,
        );
        self.send(topic, key, Some(value), h)
    }

    /// Produces a dead letter of `pipeline` to `topic`: its original headers
    /// (`original`, empty when the record is no longer at hand), then
    /// kaflowsql's (source, reason, pipeline, value kind).
    pub fn send_dead_letter(
        &mut self,
        topic: &str,
        pipeline: &str,
        dead: &crate::engine::DeadLetter,
        original: &[(String, Vec<u8>)],
    ) -> Result<(), KafkaError> {
        let h = super::dlq::dead_letter_headers(pipeline, dead, original);
        self.send(
            topic,
            dead.key.as_deref(),
            // A tombstone's dead letter is a tombstone too.
            dead.value.as_deref(),
            h,
        )
    }

    /// Closes the open epoch; returns its id (see [`Delivered`]).
    pub fn seal(&mut self) -> usize {
        let id = self.open_id;
        self.sealed.push_back(Epoch {
            id,
            sent: self.open_sent,
            acked: 0,
        });
        self.open_id = self.open_id.wrapping_add(1).max(1);
        self.open_sent = 0;
        id
    }

    fn reports(
        producer: &BaseProducer<SinkContext>,
    ) -> Result<std::sync::MutexGuard<'_, Reports>, KafkaError> {
        producer
            .context()
            .reports
            .lock()
            .map_err(|_| KafkaError::Delivery {
                topic: String::new(),
                reason: "delivery report lock poisoned (this is a bug)".into(),
            })
    }

    fn check_failure(&self) -> Result<(), KafkaError> {
        if let Some(reason) = self.producer.context().refusal.get() {
            return Err(KafkaError::Refused {
                context: "cannot produce".into(),
                reason,
            });
        }
        let mut reports = Self::reports(&self.producer)?;
        match reports.failure.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Serves delivery callbacks; returns the newest epoch that is delivered
    /// along with every earlier one (None if none completed).
    pub fn poll(&mut self, timeout: Duration) -> Result<Option<Delivered>, KafkaError> {
        self.producer.poll(timeout);
        self.check_failure()?;
        {
            let mut reports = Self::reports(&self.producer)?;
            for epoch in self.sealed.iter_mut() {
                if let Some(n) = reports.acked.remove(&epoch.id) {
                    epoch.acked += n;
                }
            }
        }
        let mut done = None;
        while self.sealed.front().is_some_and(|e| e.acked >= e.sent) {
            done = self.sealed.pop_front().map(|e| Delivered { epoch: e.id });
        }
        Ok(done)
    }

    /// Records produced but not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.sealed
            .iter()
            .map(|e| e.sent - e.acked.min(e.sent))
            .sum::<u64>()
            + self.open_sent
    }

    /// Waits until every sealed epoch is delivered (or `timeout` passes);
    /// returns the newest delivered epoch seen.
    pub fn drain(&mut self, timeout: Duration) -> Result<Option<Delivered>, KafkaError> {
        let deadline = Instant::now() + timeout;
        let mut newest = None;
        loop {
            if let Some(o) = self.poll(Duration::from_millis(20))? {
                newest = Some(o);
            }
            if self.sealed.is_empty() || Instant::now() >= deadline {
                return Ok(newest);
            }
        }
    }

    /// Flushes librdkafka's queue.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer
            .flush(timeout)
            .map_err(|e| KafkaError::client("cannot flush the producer", e))
    }
}
