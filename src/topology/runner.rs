//! The running loop of one pipeline: each step of [`super::run_pipeline`]
//! after restore is a method of [`Runner`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::formats::Converted;
use super::{connect, topics_of, Resume, RunError, RunOptions};
use crate::config::{GlobalConfig, Pipeline};
use crate::engine::{Engine, EngineError, Outputs, SourceRecord};
use crate::error::{Domain, LogLimit};
use crate::kafka::sink::Sink;
use crate::kafka::source::{DimensionSource, EventSource, Rebalanced, Record};
use crate::kafka::KafkaError;
use crate::offsets::{Input, Ledger};
use crate::sql::Role;
use crate::telemetry::PipelineMetrics;

/// One running pipeline: the engine, the producer, the offset ledger and
/// what the loop needs between steps.
pub(super) struct Runner<'a> {
    pub(super) pipeline: &'a Pipeline,
    pub(super) options: &'a RunOptions,
    pub(super) engine: Engine,
    pub(super) sink: Sink,
    pub(super) ledger: Ledger,
    pub(super) metrics: Arc<PipelineMetrics>,
    pub(super) shutdown: Arc<AtomicBool>,
    pub(super) out: Outputs,
    /// Avro in and out at the edge.
    pub(super) formats: super::Formats,
    /// Whether the first assignment was seen (group mode).
    pub(super) assigned_once: bool,
    /// Partitions revoked, decided at the next assignment.
    pub(super) pending_revoked: Vec<(String, i32)>,
    pub(super) last_commit: Instant,
    pub(super) dimension_log: LogLimit,
    pub(super) consume_log: LogLimit,
    pub(super) commit_log: LogLimit,
}

impl<'a> Runner<'a> {
    fn kafka(&self, source: KafkaError) -> RunError {
        RunError::kafka(self.pipeline, source)
    }

    fn engine_err(&self, source: EngineError) -> RunError {
        RunError::engine(self.pipeline, source)
    }

    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// Step 1: reads every dimension to its end before any output. Returns
    /// the dimension source (None inside: the pipeline has no dimension),
    /// or None when shutdown was requested first.
    pub(super) fn bootstrap_dimensions(
        &mut self,
        global: &GlobalConfig,
        restored: &Resume,
    ) -> Result<Option<Option<DimensionSource>>, RunError> {
        let dims = topics_of(self.pipeline, Role::Dimension);
        if dims.is_empty() {
            return Ok(Some(None));
        }
        let properties = global.consumer_properties();
        let started = Instant::now();
        let connected = connect(
            "read the dimension topics",
            &self.shutdown,
            &self.metrics,
            || {
                DimensionSource::start(
                    &dims,
                    &properties,
                    &global.kafka.brokers,
                    self.options.dimension_timeout,
                    restored,
                )
            },
        );
        let Some(mut d) = connected.map_err(|e| self.kafka(e))? else {
            return Ok(None);
        };
        let mut loaded: u64 = 0;
        self.metrics.dimension_partitions_pending(d.remaining());
        while !d.caught_up() && !self.stopping() {
            match d.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let (topic, partition, offset) =
                        (m.topic().to_string(), m.partition(), m.offset());
                    let mut one = vec![m];
                    self.push(&mut one, Input::Dimension)?;
                    loaded += 1;
                    d.progressed(&topic, partition, offset);
                }
                Some(Err(error)) => self.read_failed(&error, "dimension_read"),
                None => d.idle(),
            }
            self.metrics.dimension_partitions_pending(d.remaining());
        }
        self.deliver(None, 0, &[])?;
        info!(pipeline = %self.pipeline.name, topics = ?dims, records = loaded, elapsed = ?started.elapsed(), "Dimensions loaded.");
        Ok(Some(Some(d)))
    }

    /// Step 2: joins the group (or takes the static partition) of the event
    /// streams; None when shutdown was requested first.
    pub(super) fn subscribe(
        &mut self,
        global: &GlobalConfig,
        restored: &Resume,
    ) -> Result<Option<EventSource>, RunError> {
        let streams = topics_of(self.pipeline, Role::Stream);
        let properties = global.consumer_properties();
        let p = self.pipeline;
        let connected = connect(
            "consume the event streams",
            &self.shutdown,
            &self.metrics,
            || {
                EventSource::start(
                    &p.name,
                    &p.consumer_group,
                    &streams,
                    self.options.ownership,
                    &properties,
                    &global.kafka.brokers,
                    self.metrics.consumer_lag(),
                    restored,
                )
            },
        );
        let source = connected.map_err(|e| self.kafka(e))?;
        if source.is_some() {
            info!(
                pipeline = %p.name,
                group = %p.consumer_group,
                ownership = ?self.options.ownership,
                streams = ?streams,
                output = %p.output.topic,
                "Pipeline running."
            );
        }
        Ok(source)
    }

    /// Step 3, the loop: poll a micro-batch (dimension updates, then event
    /// records), evaluate and deliver it, take delivery reports, checkpoint
    /// and commit; until shutdown or a fatal error.
    pub(super) fn run<'s>(
        &mut self,
        source: &'s EventSource,
        dimensions: Option<&'s DimensionSource>,
    ) -> Result<(), RunError> {
        let mut ready = false;
        while !self.stopping() {
            // Ready once partitions are assigned (dimensions and state are by now).
            if !ready && source.assigned() {
                self.metrics.set_ready(true);
                ready = true;
            }
            // The micro-batch's records, held until it is evaluated (dead
            // letters of rows that fail in SQL carry their original bytes).
            let mut batch: Vec<Record<'s>> = Vec::new();
            let updates = self.poll_dimensions(dimensions, &mut batch)?;
            let started = Instant::now();
            let events = self.poll_events(source, &mut batch)?;
            self.engine
                .idle(events, self.options.idle_watermark_after, &mut self.out)
                .map_err(|e| self.engine_err(e))?;
            if events > 0
                || updates > 0
                || self.engine.pending_rows() > 0
                || !self.out.rows.is_empty()
            {
                self.deliver(Some(started), events, &batch)?;
            }
            drop(batch);
            self.acknowledge(source)?;
            self.commit(source)?;
        }
        Ok(())
    }

    /// Pushes the last record of `batch`, read from `input`, unless restored
    /// state already reflects it; dead letters go out at once. The topic is
    /// resolved to its id here, once per record.
    fn push(&mut self, batch: &mut [Record<'_>], input: Input) -> Result<(), RunError> {
        let Some(m) = batch.last() else {
            return Ok(());
        };
        let Some(t) = self.engine.topic_index(m.topic()) else {
            return Ok(());
        };
        // An Avro value becomes JSON before the record is read: a registry
        // outage holds it here, so it is neither read nor committed.
        let converted = self
            .formats
            .source_value(t, m.value(), &self.shutdown, &self.metrics);
        let value = match converted {
            Ok(Converted::Value(v)) => v,
            Ok(Converted::Stopped) => return Ok(()),
            Ok(Converted::Dead(kind, reason)) => {
                if self.ledger.read((t, m.partition()), m.offset(), input) {
                    self.engine
                        .dead_letter(&m.source_record(), kind, reason, &mut self.out);
                }
                return self.send_dead_letters(batch);
            }
            Err(e) => return Err(RunError::registry(self.pipeline, e)),
        };
        if !self.ledger.read((t, m.partition()), m.offset(), input) {
            return Ok(());
        }
        let record = SourceRecord {
            value,
            ..m.source_record()
        };
        self.engine
            .push_from(t, &record, &mut self.out)
            .map_err(|e| RunError::engine(self.pipeline, e))?;
        self.send_dead_letters(batch)
    }

    /// Polls dimension updates into `batch` (they keep flowing in); returns how many.
    fn poll_dimensions<'s>(
        &mut self,
        dimensions: Option<&'s DimensionSource>,
        batch: &mut Vec<Record<'s>>,
    ) -> Result<u64, RunError> {
        let Some(d) = dimensions else { return Ok(0) };
        let mut n = 0;
        while n < self.options.max_poll_records.max(1) {
            match d.poll(Duration::ZERO) {
                Some(Ok(m)) => {
                    batch.push(m);
                    self.push(batch, Input::Dimension)?;
                    n += 1;
                }
                Some(Err(error)) => {
                    self.read_failed(&error, "dimension_read");
                    break;
                }
                None => break,
            }
        }
        Ok(n as u64)
    }

    /// Polls event records into `batch`, up to `maxPollRecords`; ownership
    /// changes are applied between records. Returns how many were read.
    fn poll_events<'s>(
        &mut self,
        source: &'s EventSource,
        batch: &mut Vec<Record<'s>>,
    ) -> Result<u64, RunError> {
        let mut n = 0;
        let mut wait = Duration::from_millis(50);
        while n < self.options.max_poll_records.max(1) {
            let polled = source.poll(wait);
            // A revoke happens inside poll: records it returns after one
            // belong to the new assignment and must not be dropped with it.
            self.rebalance(source)?;
            match polled {
                Some(Ok(m)) => {
                    self.settle()?;
                    batch.push(m);
                    self.push(batch, Input::Stream)?;
                    n += 1;
                    wait = Duration::ZERO;
                }
                Some(Err(error)) => {
                    self.read_failed(&error, "consume");
                    break;
                }
                None => break,
            }
        }
        Ok(n as u64)
    }

    /// Applies ownership changes (group mode). A revoke is decided at the
    /// assignment that follows it: a partition revoked and assigned back in
    /// the same rebalance keeps its state, and its records re-read from the
    /// committed offset up to where this instance had read are skipped (they
    /// are in state, their outputs produced); a partition not assigned back
    /// has its state, read position and checkpointed offset dropped. At the
    /// first assignment, so do restored partitions this instance did not get.
    fn rebalance(&mut self, source: &EventSource) -> Result<(), RunError> {
        for change in source.rebalanced() {
            match change {
                Rebalanced::Revoked(list) => self.pending_revoked.extend(list),
                Rebalanced::Assigned(list) => self.assigned(&list)?,
            }
        }
        Ok(())
    }

    fn assigned(&mut self, list: &[(String, i32)]) -> Result<(), RunError> {
        let mut gone = std::mem::take(&mut self.pending_revoked);
        for (t, p) in gone.iter().filter(|tp| list.contains(tp)) {
            if let Some(id) = self.engine.topic_index(t) {
                self.ledger.keep((id, *p));
            }
        }
        gone.retain(|tp| !list.contains(tp));
        if !self.assigned_once {
            self.assigned_once = true;
            let restored: Vec<(u16, i32)> = self.ledger.restored().collect();
            for (t, p) in restored {
                let tp = (self.engine.topic_name(t).to_string(), p);
                if !list.contains(&tp) {
                    gone.push(tp);
                }
            }
        }
        self.drop_partitions(&gone)
    }

    /// A record arrived: revokes not followed by an assignment (cooperative
    /// rebalancing, where revoked partitions do not come back in the same
    /// round) are final.
    fn settle(&mut self) -> Result<(), RunError> {
        if self.pending_revoked.is_empty() {
            return Ok(());
        }
        let gone = std::mem::take(&mut self.pending_revoked);
        self.drop_partitions(&gone)
    }

    fn drop_partitions(&mut self, partitions: &[(String, i32)]) -> Result<(), RunError> {
        let named: Vec<((u16, i32), &str)> = partitions
            .iter()
            .filter_map(|(t, p)| self.engine.topic_index(t).map(|id| ((id, *p), t.as_str())))
            .collect();
        if named.is_empty() {
            return Ok(());
        }
        self.ledger.revoke(&named);
        let dropped = self.engine.revoke(&named).map_err(|e| self.engine_err(e))?;
        info!(pipeline = %self.pipeline.name, partitions = ?partitions, records = dropped, "State of partitions no longer owned dropped.");
        Ok(())
    }

    /// Counts and logs (rate-limited) a failed read; librdkafka retries it.
    fn read_failed(&mut self, error: &KafkaError, kind: &'static str) {
        self.metrics.error(Domain::External, kind);
        let log = match kind {
            "consume" => &mut self.consume_log,
            _ => &mut self.dimension_log,
        };
        if let Some(suppressed) = log.allow() {
            warn!(%error, suppressed, kind, "Read failed; librdkafka retries.");
        }
    }

    /// Step 4: evaluates pending rows, produces them and seals the epoch with
    /// the offsets it makes committable and its state checkpoint. `batch`
    /// holds the micro-batch's records (for the dead letters of rows that
    /// failed in SQL).
    fn deliver(
        &mut self,
        started: Option<Instant>,
        events: u64,
        batch: &[Record<'_>],
    ) -> Result<(), RunError> {
        let sql_before = self.engine.stats().sql_nanos;
        self.engine
            .flush(&mut self.out)
            .map_err(|e| self.engine_err(e))?;
        self.send_dead_letters(batch)?;
        let mut unfit = Vec::new();
        let mut written = 0u64;
        for row in &self.out.rows {
            let d = row.driving;
            let driving = (self.engine.topic_name(d.topic), d.partition, d.offset);
            let value = match self.formats.output_value(self.out.value(row)) {
                Ok(v) => v,
                Err(reason) => {
                    unfit.push(self.engine.unfit_row(d, self.out.value(row), reason));
                    continue;
                }
            };
            let sent = self.sink.send_output(
                &self.pipeline.output.topic,
                self.out.key(row),
                value,
                driving,
            );
            if let Err(e) = sent {
                return Err(RunError::kafka(self.pipeline, e));
            }
            written += 1;
        }
        self.metrics.output_records(written);
        self.out.clear_rows();
        if !unfit.is_empty() {
            self.out.dead_letters.extend(unfit);
            self.send_dead_letters(batch)?;
        }
        let engine = &self.engine;
        let commit = self.ledger.commit_offsets(
            |t| engine.topic_name(t),
            |(t, p)| engine.oldest_pinned(t, p),
        );
        let offsets = self.ledger.checkpoint_offsets(|t| engine.topic_name(t));
        let checkpoint = self
            .engine
            .is_durable()
            .then(|| self.engine.checkpoint(offsets));
        let epoch = self.sink.seal();
        self.ledger.seal(epoch, commit, checkpoint);
        self.metrics
            .record_batch(&self.engine, started, events, sql_before);
        Ok(())
    }

    /// Produces every pending dead letter, each with its record's original
    /// key, value and headers when `batch` still holds the record.
    fn send_dead_letters(&mut self, batch: &[Record<'_>]) -> Result<(), RunError> {
        for mut dead in std::mem::take(&mut self.out.dead_letters) {
            let original = batch.iter().rev().find(|m| {
                m.offset() == dead.offset
                    && m.partition() == dead.partition
                    && m.topic() == dead.topic
            });
            let headers: Vec<(String, Vec<u8>)> = match original {
                Some(m) => {
                    if dead.decoded_copy {
                        dead.key = m.key().map(<[u8]>::to_vec);
                        dead.value = m.value().map(<[u8]>::to_vec);
                        dead.decoded_copy = false;
                    }
                    m.headers()
                }
                None => Vec::new(),
            };
            let p = self.pipeline;
            self.sink
                .send_dead_letter(&p.output.dlq_topic, &p.name, &dead, &headers)
                .map_err(|e| self.kafka(e))?;
            self.metrics.dlq_records(1);
            self.metrics.error(Domain::Data, dead.kind);
        }
        Ok(())
    }

    /// Step 5: takes the producer's delivery reports; delivered epochs'
    /// offsets become safe (a revoke commits them).
    fn acknowledge(&mut self, source: &EventSource) -> Result<(), RunError> {
        match self.sink.poll(Duration::ZERO) {
            Ok(Some(done)) => {
                let offsets = self.ledger.delivered(done.epoch);
                source.mark_safe(&offsets);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                self.metrics.producer_error();
                Err(self.kafka(e))
            }
        }
    }

    /// Step 6, every commit interval: the delivered epochs' state checkpoint
    /// is made durable first, then their offsets are committed to Kafka (a
    /// failed commit is counted and retried with the next one).
    fn commit(&mut self, source: &EventSource) -> Result<(), RunError> {
        if !self.ledger.has_uncommitted()
            || self.last_commit.elapsed() < self.options.commit_interval
        {
            return Ok(());
        }
        self.write_checkpoint()?;
        let offsets = self.ledger.take_uncommitted();
        if let Err(error) = source.commit_async(&offsets) {
            self.metrics.error(Domain::External, "commit");
            if let Some(suppressed) = self.commit_log.allow() {
                warn!(%error, suppressed, "Commit failed; it is retried with the next one.");
            }
        }
        self.last_commit = Instant::now();
        Ok(())
    }

    fn write_checkpoint(&mut self) -> Result<(), RunError> {
        if let Some(c) = self.ledger.take_checkpoint() {
            self.engine
                .commit_checkpoint(&c)
                .map_err(|e| self.engine_err(e))?;
        }
        Ok(())
    }

    /// Step 7, on the way out: evaluates what is pending (after a clean
    /// stop), waits for the producer, writes the last checkpoint and commits
    /// what was delivered. A stop requested while the producer's queue was
    /// full is a clean stop: the record that did not fit is not committed.
    pub(super) fn drain(
        mut self,
        source: &EventSource,
        result: Result<(), RunError>,
    ) -> Result<(), RunError> {
        self.metrics.set_ready(false);
        let interrupted = matches!(&result, Err(RunError::Kafka { source, .. }) if matches!(**source, KafkaError::Interrupted));
        let mut result = if interrupted { Ok(()) } else { result };
        let timeout = self.options.drain_timeout;
        let drained = match &result {
            Ok(()) if !interrupted => self.deliver(None, 0, &[]).and_then(|()| {
                self.sink
                    .drain(timeout)
                    .map_err(|e| RunError::kafka(self.pipeline, e))
            }),
            Ok(()) => self.sink.drain(timeout).map_err(|e| self.kafka(e)),
            Err(_) => self
                .sink
                .drain(Duration::from_secs(5))
                .map_err(|e| self.kafka(e)),
        };
        match drained {
            Ok(Some(done)) => {
                self.ledger.delivered(done.epoch);
            }
            Ok(None) => {}
            Err(e) => {
                error!(error = %e, "Draining the producer failed; committing only what was delivered.");
            }
        }
        let mut safe = source.safe_offsets();
        match self.write_checkpoint() {
            Ok(()) => safe.extend(self.ledger.take_uncommitted()),
            Err(e) => {
                error!(error = %e, "Writing the last state checkpoint failed; its offsets are not committed.");
                result = result.and(Err(e));
            }
        }
        if let Err(error) = source.commit_sync(&safe) {
            warn!(%error, "Final commit failed; a restart re-reads from the previous commit.");
        }
        info!(
            pipeline = %self.pipeline.name,
            produced = self.sink.produced,
            in_flight = self.sink.in_flight(),
            "Pipeline stopped."
        );
        source.leave();
        result
    }
}
