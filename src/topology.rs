//! Wiring of one running pipeline: dimension bootstrap, the consume → engine
//! → produce loop, commits that never pass an undelivered output or a record
//! still needed in state, and a graceful drain on shutdown.
//!
//! One thread per pipeline runs the whole loop: records move in batches of up
//! to `maxPollRecords`, each batch is evaluated once, its outputs are produced
//! in one epoch, and a full producer queue blocks the loop (backpressure).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::config::{Emission, GlobalConfig, Pipeline};
use crate::engine::{Engine, EngineError, Outputs};
use crate::error::{Classified, Domain, LogLimit, Retry};
use crate::kafka::sink::{CommitOffsets, Delivered, Sink};
use crate::kafka::source::{DimensionSource, EventSource, Ownership, Record};
use crate::kafka::KafkaError;
use crate::offsets::committable;
use crate::sql::Role;
use crate::store::{Checkpoint, StateDb};
use crate::telemetry::PipelineMetrics;

/// Why a pipeline stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Kafka failed in a way the pipeline cannot go on from.
    #[error("pipeline `{pipeline}`: {source}")]
    Kafka {
        /// The pipeline.
        pipeline: String,
        /// The failure.
        source: Box<KafkaError>,
    },
    /// The engine failed.
    #[error("pipeline `{pipeline}`: {source}")]
    Engine {
        /// The pipeline.
        pipeline: String,
        /// The failure.
        source: Box<EngineError>,
    },
}

impl Classified for RunError {
    fn domain(&self) -> Domain {
        match self {
            RunError::Kafka { source, .. } => source.domain(),
            RunError::Engine { source, .. } => source.domain(),
        }
    }

    fn retry(&self) -> Retry {
        match self {
            RunError::Kafka { source, .. } => source.retry(),
            RunError::Engine { source, .. } => source.retry(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            RunError::Kafka { source, .. } => source.kind(),
            RunError::Engine { source, .. } => source.kind(),
        }
    }
}

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Group or static partition ownership.
    pub ownership: Ownership,
    /// Longest wait for the producer to deliver everything at shutdown.
    pub drain_timeout: Duration,
    /// How often delivered offsets are committed.
    pub commit_interval: Duration,
    /// Longest wait for the dimensions to be read to their end at start,
    /// where the broker never tells the end (`kafka.consumer.dimensionLoadTimeout`).
    pub dimension_timeout: Duration,
    /// After this long without event-stream records, event time advances with the wall clock.
    pub idle_watermark_after: Duration,
    /// Durable state (None: state in memory only, rebuilt from Kafka on restart).
    pub state: Option<Arc<StateDb>>,
    /// Bound on each pipeline's hot state in bytes.
    pub memory_budget: Option<u64>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            ownership: Ownership::Group,
            drain_timeout: Duration::from_secs(30),
            commit_interval: Duration::from_millis(200),
            dimension_timeout: crate::config::default_dimension_load_timeout(),
            idle_watermark_after: Duration::from_secs(1),
            state: None,
            memory_budget: None,
        }
    }
}

struct Runner<'a> {
    pipeline: &'a Pipeline,
    engine: Engine,
    sink: Sink,
    metrics: Arc<PipelineMetrics>,
    /// Next offset to read per event-stream partition, for records already evaluated.
    next: HashMap<(u16, i32), i64>,
    /// Next offset to read per dimension partition.
    dimension_next: HashMap<(u16, i32), i64>,
    /// Records before these offsets are already in the restored state.
    resume: HashMap<(u16, i32), i64>,
    /// Checkpoints of sealed epochs, oldest first, written once delivered.
    checkpoints: VecDeque<(usize, Checkpoint)>,
    /// Delivered epochs' checkpoints, merged, waiting for the next commit.
    ready: Option<Checkpoint>,
    out: Outputs,
}

impl Runner<'_> {
    fn kafka(&self, source: KafkaError) -> RunError {
        RunError::Kafka {
            pipeline: self.pipeline.name.clone(),
            source: Box::new(source),
        }
    }

    fn engine_err(&self, source: EngineError) -> RunError {
        RunError::Engine {
            pipeline: self.pipeline.name.clone(),
            source: Box::new(source),
        }
    }

    /// Pushes one record (the last of `batch`, the records of the current
    /// micro-batch so far); dead letters go out at once.
    fn push(&mut self, batch: &[Record<'_>], track: bool) -> Result<(), RunError> {
        let Some(m) = batch.last() else {
            return Ok(());
        };
        let Some(t) = self.engine.topic_index(m.topic()) else {
            return Ok(());
        };
        let at = (t, m.partition());
        if track {
            self.next.insert(at, m.offset() + 1);
        } else {
            self.dimension_next.insert(at, m.offset() + 1);
        }
        if self.resume.get(&at).is_some_and(|&r| m.offset() < r) {
            // Already reflected by restored state, its outputs delivered.
            return Ok(());
        }
        self.engine
            .push(&m.source_record(), &mut self.out)
            .map_err(|e| self.engine_err(e))?;
        self.send_dead_letters(batch)
    }

    /// Produces every pending dead letter, each with its record's original
    /// key, value and headers when `batch` still holds the record.
    fn send_dead_letters(&mut self, batch: &[Record<'_>]) -> Result<(), RunError> {
        if self.out.dead_letters.is_empty() {
            return Ok(());
        }
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
            self.sink
                .send_dead_letter(
                    &self.pipeline.output.dlq_topic,
                    &self.pipeline.name,
                    &dead,
                    &headers,
                )
                .map_err(|e| self.kafka(e))?;
            self.metrics.dlq_records(1);
            self.metrics.error(Domain::Data, dead.kind);
        }
        Ok(())
    }

    /// Evaluates pending rows, produces them and seals the epoch; `batch`
    /// holds the micro-batch's records (for the dead letters of rows that
    /// failed in SQL).
    fn flush(
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
        for row in &self.out.rows {
            let driving = (
                self.engine.topic_name(row.driving.topic),
                row.driving.partition,
                row.driving.offset,
            );
            let sent = self.sink.send_output(
                &self.pipeline.output.topic,
                self.out.key(row),
                self.out.value(row),
                driving,
            );
            if let Err(e) = sent {
                return Err(RunError::Kafka {
                    pipeline: self.pipeline.name.clone(),
                    source: Box::new(e),
                });
            }
        }
        self.metrics.output_records(self.out.rows.len() as u64);
        self.out.clear_rows();
        let mut offsets = CommitOffsets::new();
        for (&(t, p), &next) in &self.next {
            offsets.insert(
                (self.engine.topic_name(t).to_string(), p),
                committable(next, self.engine.oldest_pinned(t, p)),
            );
        }
        let epoch = self.sink.seal(offsets);
        if self.engine.is_durable() {
            let resume = self
                .next
                .iter()
                .chain(&self.dimension_next)
                .map(|(&(t, p), &o)| ((self.engine.topic_name(t).to_string(), p), o))
                .collect();
            let checkpoint = self.engine.checkpoint(resume);
            self.checkpoints.push_back((epoch, checkpoint));
        }
        self.publish(started, events, sql_before);
        Ok(())
    }

    /// Notes that every epoch up to `done` is delivered: their checkpoints
    /// merge into the next one to write.
    fn delivered(&mut self, done: &Delivered) {
        while self
            .checkpoints
            .front()
            .is_some_and(|(id, _)| *id <= done.epoch)
        {
            if let Some((_, c)) = self.checkpoints.pop_front() {
                match self.ready.as_mut() {
                    Some(m) => m.absorb(c),
                    None => self.ready = Some(c),
                }
            }
        }
    }

    /// Makes the delivered epochs' state durable (one batch, WAL synced);
    /// their offsets may be committed to Kafka after this returns.
    fn write_checkpoint(&mut self) -> Result<(), RunError> {
        if let Some(c) = self.ready.take() {
            self.engine
                .commit_checkpoint(&c)
                .map_err(|e| self.engine_err(e))?;
        }
        Ok(())
    }

    fn publish(&self, started: Option<Instant>, events: u64, sql_before: u64) {
        self.metrics
            .record_batch(&self.engine, started, events, sql_before);
    }
}

/// Runs `attempt` until it succeeds, retrying with backoff (0.5 s doubling
/// to 30 s) while its error says it may heal; an error that cannot heal (a
/// client configuration refused, topics not co-partitioned) returns at once.
/// None: shutdown was requested while waiting.
fn connect<T>(
    what: &str,
    shutdown: &AtomicBool,
    metrics: &PipelineMetrics,
    mut attempt: impl FnMut() -> Result<T, KafkaError>,
) -> Result<Option<T>, KafkaError> {
    let mut backoff = Duration::from_millis(500);
    let mut limit = LogLimit::new(Duration::from_secs(10));
    loop {
        match attempt() {
            Ok(v) => return Ok(Some(v)),
            Err(e) => {
                metrics.error(e.domain(), e.kind());
                if e.retry() == Retry::Never {
                    return Err(e);
                }
                if let Some(suppressed) = limit.allow() {
                    warn!(error = %e, domain = %e.domain(), suppressed, "Cannot {what} yet; retrying in {:?}.", backoff);
                }
                let until = Instant::now() + backoff;
                while Instant::now() < until {
                    if shutdown.load(Ordering::Relaxed) {
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Runs `pipeline` until `shutdown` is set or a fatal error.
pub fn run_pipeline(
    pipeline: &Pipeline,
    global: &GlobalConfig,
    options: &RunOptions,
    metrics: Arc<PipelineMetrics>,
    shutdown: Arc<AtomicBool>,
) -> Result<(), RunError> {
    let name = pipeline.name.clone();
    let kafka = |source| RunError::Kafka {
        pipeline: name.clone(),
        source: Box::new(source),
    };
    let engine_err = |source: EngineError| RunError::Engine {
        pipeline: name.clone(),
        source: Box::new(source),
    };
    let mut engine = Engine::new(pipeline)
        .map_err(engine_err)?
        .with_lookup_timing(metrics.lookup_histogram());
    let mut resume_by_name: HashMap<(String, i32), i64> = HashMap::new();
    if let Some(db) = &options.state {
        let started = Instant::now();
        let store = db
            .pipeline(
                &pipeline.name,
                &engine.fingerprint(pipeline),
                &engine.stored_sources(),
            )
            .map_err(|e| engine_err(e.into()))?;
        let (restored, report) = engine
            .attach_store(store, options.memory_budget)
            .map_err(engine_err)?;
        info!(
            pipeline = %pipeline.name,
            path = %db.path().display(),
            loaded = report.loaded,
            on_disk = report.on_disk,
            replayed = report.replayed,
            held = report.held,
            partitions = restored.offsets.len(),
            elapsed = ?started.elapsed(),
            "State restored."
        );
        resume_by_name = restored.offsets;
    }
    let resume: HashMap<(u16, i32), i64> = resume_by_name
        .iter()
        .filter_map(|((topic, p), &o)| engine.topic_index(topic).map(|t| ((t, *p), o)))
        .collect();
    let topics_of = |role: Role| {
        unique(
            pipeline
                .plan
                .sources
                .iter()
                .filter(|s| s.role == role)
                .map(|s| s.topic.clone()),
        )
    };
    let (streams, dims) = (topics_of(Role::Stream), topics_of(Role::Dimension));
    let consumer_props = global.consumer_properties();
    let brokers = global.kafka.brokers.clone();
    let max_poll = global
        .kafka
        .consumer
        .max_poll_records
        .unwrap_or(4096)
        .max(1) as usize;

    let sink = match connect("create the producer", &shutdown, &metrics, || {
        Sink::new(&global.producer_properties()).map(|s| s.with_shutdown(shutdown.clone()))
    })
    .map_err(kafka)?
    {
        Some(s) => s,
        None => return Ok(()),
    };
    let mut runner = Runner {
        pipeline,
        engine,
        sink,
        metrics: metrics.clone(),
        next: HashMap::new(),
        dimension_next: HashMap::new(),
        resume,
        checkpoints: VecDeque::new(),
        ready: None,
        out: Outputs::default(),
    };

    // Dimensions first: no output until they are read to their end offsets.
    let mut dimensions = if dims.is_empty() {
        None
    } else {
        match connect("read the dimension topics", &shutdown, &metrics, || {
            DimensionSource::start(
                &dims,
                &consumer_props,
                &brokers,
                options.dimension_timeout,
                &resume_by_name,
            )
        })
        .map_err(kafka)?
        {
            Some(d) => Some(d),
            None => return Ok(()),
        }
    };
    let started = Instant::now();
    let mut dimension_log = LogLimit::new(Duration::from_secs(10));
    let mut consume_log = LogLimit::new(Duration::from_secs(10));
    let mut commit_log = LogLimit::new(Duration::from_secs(10));
    if let Some(d) = dimensions.as_mut() {
        let mut loaded: u64 = 0;
        metrics.dimension_partitions_pending(d.remaining());
        while !d.caught_up() && !shutdown.load(Ordering::Relaxed) {
            match d.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let (topic, partition, offset) =
                        (m.topic().to_string(), m.partition(), m.offset());
                    runner.push(&[m], false)?;
                    loaded += 1;
                    d.progressed(&topic, partition, offset);
                }
                Some(Err(error)) => {
                    metrics.error(Domain::External, "dimension_read");
                    if let Some(suppressed) = dimension_log.allow() {
                        warn!(%error, suppressed, "Dimension read failed; retrying.");
                    }
                }
                None => d.idle(),
            }
            metrics.dimension_partitions_pending(d.remaining());
        }
        runner.flush(None, 0, &[])?;
        info!(pipeline = %pipeline.name, topics = ?dims, records = loaded, elapsed = ?started.elapsed(), "Dimensions loaded.");
    }

    let source = match connect("consume the event streams", &shutdown, &metrics, || {
        EventSource::start(
            &pipeline.name,
            &pipeline.consumer_group,
            &streams,
            options.ownership,
            &consumer_props,
            &brokers,
            metrics.consumer_lag(),
            &resume_by_name,
        )
    })
    .map_err(kafka)?
    {
        Some(s) => s,
        None => return Ok(()),
    };
    info!(
        pipeline = %pipeline.name,
        group = %pipeline.consumer_group,
        ownership = ?options.ownership,
        streams = ?streams,
        output = %pipeline.output.topic,
        "Pipeline running."
    );

    let smart = matches!(pipeline.emission, Emission::Smart { .. });
    let mut last_commit = Instant::now();
    // Delivered offsets not yet committed (the next commit takes them all).
    let mut uncommitted = CommitOffsets::new();
    let mut last_event = Instant::now();
    let mut watermark_at_last_event = i64::MIN;
    let mut ready = false;
    let result = loop {
        if shutdown.load(Ordering::Relaxed) {
            break Ok(());
        }
        // Ready once partitions are assigned (dimensions and state are by now).
        if !ready && source.assigned() {
            metrics.set_ready(true);
            ready = true;
        }
        // The micro-batch's records, held until it is evaluated (dead letters
        // of rows that fail in SQL carry their original bytes).
        let mut batch: Vec<Record<'_>> = Vec::new();
        let mut failed: Option<RunError> = None;
        // Dimension updates keep flowing in.
        let mut pushed_dimensions = 0u64;
        if let Some(d) = dimensions.as_ref() {
            for _ in 0..max_poll {
                match d.poll(Duration::ZERO) {
                    Some(Ok(m)) => {
                        batch.push(m);
                        runner.push(&batch, false)?;
                        pushed_dimensions += 1;
                    }
                    Some(Err(error)) => {
                        metrics.error(Domain::External, "dimension_read");
                        if let Some(suppressed) = dimension_log.allow() {
                            warn!(%error, suppressed, "Dimension read failed.");
                        }
                        break;
                    }
                    None => break,
                }
            }
        }
        if let Some(e) = failed.take() {
            break Err(e);
        }
        let batch_started = Instant::now();
        let mut n = 0u64;
        let mut wait = Duration::from_millis(50);
        while (n as usize) < max_poll {
            match source.poll(wait) {
                Some(Ok(m)) => {
                    batch.push(m);
                    if let Err(e) = runner.push(&batch, true) {
                        failed = Some(e);
                        break;
                    }
                    n += 1;
                    wait = Duration::ZERO;
                }
                Some(Err(error)) => {
                    metrics.error(Domain::External, "consume");
                    if let Some(suppressed) = consume_log.allow() {
                        warn!(%error, suppressed, "Consume failed; librdkafka retries.");
                    }
                    break;
                }
                None => break,
            }
        }
        if let Some(e) = failed.take() {
            break Err(e);
        }
        if n > 0 {
            last_event = Instant::now();
            watermark_at_last_event = runner.engine.watermark();
        } else if smart
            && last_event.elapsed() >= options.idle_watermark_after
            && watermark_at_last_event > i64::MIN
        {
            let advanced =
                watermark_at_last_event.saturating_add(last_event.elapsed().as_millis() as i64);
            let mut out = std::mem::take(&mut runner.out);
            runner
                .engine
                .advance_watermark(advanced, &mut out)
                .map_err(|e| runner.engine_err(e))?;
            runner.out = out;
        }
        if n > 0
            || pushed_dimensions > 0
            || runner.engine.pending_rows() > 0
            || !runner.out.rows.is_empty()
        {
            if let Err(e) = runner.flush(Some(batch_started), n, &batch) {
                break Err(e);
            }
        }
        drop(batch);
        match runner.sink.poll(Duration::ZERO) {
            Ok(Some(done)) => {
                runner.delivered(&done);
                // A revoke commits these (see SourceContext); the partitions'
                // next owner rebuilds whatever a checkpoint did not cover.
                source.mark_safe(&done.offsets);
                uncommitted.extend(done.offsets);
            }
            Ok(None) => {}
            Err(e) => {
                metrics.producer_error();
                break Err(runner.kafka(e));
            }
        }
        // Every commit interval: state checkpoint first, then Kafka.
        if !uncommitted.is_empty() && last_commit.elapsed() >= options.commit_interval {
            if let Err(e) = runner.write_checkpoint() {
                break Err(e);
            }
            let offsets = std::mem::take(&mut uncommitted);
            if let Err(error) = source.commit_async(&offsets) {
                metrics.error(Domain::External, "commit");
                if let Some(suppressed) = commit_log.allow() {
                    warn!(%error, suppressed, "Commit failed; it is retried with the next one.");
                }
            }
            last_commit = Instant::now();
        }
    };

    // Drain: evaluate what is pending, deliver everything, commit what was
    // delivered. A stop requested while the producer's queue was full is a
    // clean stop: the record that did not fit is not committed.
    metrics.set_ready(false);
    let interrupted = matches!(&result, Err(RunError::Kafka { source, .. }) if matches!(**source, KafkaError::Interrupted));
    let result = if interrupted { Ok(()) } else { result };
    let drained = match &result {
        Ok(()) if interrupted => runner
            .sink
            .drain(options.drain_timeout)
            .map_err(|e| runner.kafka(e)),
        Ok(()) => runner.flush(None, 0, &[]).and_then(|()| {
            runner
                .sink
                .drain(options.drain_timeout)
                .map_err(|e| runner.kafka(e))
        }),
        Err(_) => runner
            .sink
            .drain(Duration::from_secs(5))
            .map_err(|e| runner.kafka(e)),
    };
    let newest = match drained {
        Ok(o) => o,
        Err(e) => {
            error!(error = %e, "Draining the producer failed; committing only what was delivered.");
            None
        }
    };
    let mut result = result;
    if let Some(done) = &newest {
        runner.delivered(done);
    }
    let newest = match newest.map(|done| runner.write_checkpoint().map(|()| done)) {
        Some(Ok(done)) => Some(done),
        Some(Err(e)) => {
            error!(error = %e, "Writing the last state checkpoint failed; its offsets are not committed.");
            result = result.and(Err(e));
            None
        }
        None => None,
    };
    let safe: CommitOffsets = {
        let mut all = source.safe_offsets();
        if let Some(done) = newest {
            all.extend(done.offsets);
        }
        all
    };
    if let Err(error) = source.commit_sync(&safe) {
        warn!(%error, "Final commit failed; a restart re-reads from the previous commit.");
    }
    info!(
        pipeline = %pipeline.name,
        produced = runner.sink.produced,
        in_flight = runner.sink.in_flight(),
        "Pipeline stopped."
    );
    source.leave();
    result
}

fn unique(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for i in items {
        if !v.contains(&i) {
            v.push(i);
        }
    }
    v
}
