//! The engine of one pipeline: records in, enriched rows and dead letters out.
//!
//! For each record: decode once into a shared [`Event`], advance the
//! watermark (timing out held events), update the state of every source that
//! reads the topic, and enumerate the joined rows the arrival makes. Rows
//! collect into a micro-batch that DuckDB evaluates in one call; the emission
//! rules then decide, group by group and in arrival order, what is written.
//! Results do not depend on where batches are cut.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use duckdb::arrow::array::{Array, UInt32Array};
use duckdb::arrow::compute::take_record_batch;
use duckdb::arrow::error::ArrowError;

use crate::codec::{encode_json_rows, key_bytes, DecodeError, Event, TopicSchema};
use crate::config::{Emission, OnTimeout, Pipeline};
use crate::emit::{Held, HeldId};
use crate::eval::EvalError;
use crate::join::{key_of, Joiner, LookupStats, Miss, Mode, Probe, Scratch, SourceState, Table};
use crate::offsets::OffsetPins;
use crate::sql::{ColumnRef, JoinKind, QueryPlan, Role};
use crate::state::{DimensionTable, ShardStats, StreamTable};
use crate::store::{PipelineStore, StoreError};

mod clock;
mod durable;
mod evaluate;

pub use clock::NO_TIMESTAMP;
use clock::{wall_clock_ms, Clock};
pub(crate) use evaluate::is_condition;
use evaluate::{BatchColumn, Evaluated, Evaluation};

pub use durable::RestoreReport;

/// Default bound on rows per micro-batch.
pub const DEFAULT_BATCH_ROWS: usize = 4096;

/// Records between sweeps of expired state.
const SWEEP_EVERY: u32 = 4096;

/// A record as it comes from Kafka (or a recorded input file).
#[derive(Clone, Copy, Debug)]
pub struct SourceRecord<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Kafka timestamp, epoch milliseconds ([`NO_TIMESTAMP`], or any
    /// negative value, when the record has none).
    pub timestamp: i64,
    /// Kafka key.
    pub key: Option<&'a [u8]>,
    /// Kafka value; None is a tombstone.
    pub value: Option<&'a [u8]>,
}

/// Where a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// Topic index in the pipeline ([`Engine::topic_name`]).
    pub topic: u16,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

impl Origin {
    fn of(event: &Event) -> Self {
        Self {
            topic: event.topic,
            partition: event.partition,
            offset: event.offset,
        }
    }
}

/// One output record; its key and value bytes live in [`Outputs`]' buffer
/// (read them with [`Outputs::key`] and [`Outputs::value`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputRow {
    /// Kafka key (text of the `output.key` column), as a range of the buffer.
    key: Option<Range<usize>>,
    /// JSON object, as a range of the buffer.
    value: Range<usize>,
    /// The driving event of the row.
    pub driving: Origin,
    /// The arrival that produced the row.
    pub trigger: Origin,
}

/// A record that could not be processed, with why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Original key.
    pub key: Option<Vec<u8>>,
    /// Original value.
    pub value: Option<Vec<u8>>,
    /// Why it was refused.
    pub reason: String,
    /// The class of the reason, as the `kind` label of
    /// `kaflowsql_errors_total{domain="data"}` (see [`crate::error::KINDS`]).
    pub kind: &'static str,
    /// True when `value` is not the record's original bytes but the JSON of
    /// its decoded columns (a row that failed in SQL after its record's
    /// micro-batch was gone); the caller puts the original back when it still
    /// holds the record.
    pub decoded_copy: bool,
}

/// What the engine produced since the caller last drained it.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Rows to write, in order.
    pub rows: Vec<OutputRow>,
    /// Records to send to the dead-letter topic.
    pub dead_letters: Vec<DeadLetter>,
    /// Key and value bytes of every row (one allocation per batch, not per row).
    data: Vec<u8>,
}

impl Outputs {
    /// The Kafka key of `row`.
    pub fn key(&self, row: &OutputRow) -> Option<&[u8]> {
        row.key.as_ref().map(|r| &self.data[r.clone()])
    }

    /// The JSON value of `row`.
    pub fn value(&self, row: &OutputRow) -> &[u8] {
        &self.data[row.value.clone()]
    }

    /// Forgets every row (after they were written).
    pub fn clear_rows(&mut self) {
        self.rows.clear();
        self.data.clear();
    }
}

/// Counters of one engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Records pushed.
    pub records: u64,
    /// Records sent to dead letters.
    pub dead_letters: u64,
    /// Output rows emitted.
    pub emitted: u64,
    /// Joined rows dropped by WHERE.
    pub filtered: u64,
    /// Smart emission: held events that timed out and were dropped.
    pub timeouts_dropped: u64,
    /// Smart emission: held events that timed out and were emitted with NULLs.
    pub timeouts_emitted: u64,
    /// Join lookups and hits.
    pub lookups: LookupStats,
    /// Events removed from state by TTL.
    pub evictions: u64,
    /// Micro-batches evaluated.
    pub batches: u64,
    /// Event-stream records already expired on arrival (neither stored nor joined).
    pub late: u64,
    /// Nanoseconds spent in DuckDB.
    pub sql_nanos: u64,
}

/// Why the engine stopped. Bad records never cause this; they become dead letters.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// DuckDB failed.
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// Arrow conversion failed: this is a bug.
    #[error("arrow conversion failed (this is a bug): {0}")]
    Arrow(#[from] ArrowError),
    /// A record from a topic the pipeline does not read: the caller's bug.
    #[error("topic `{0}` is not read by this pipeline")]
    UnknownTopic(String),
    /// Durable state failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl crate::error::Classified for EngineError {
    fn domain(&self) -> crate::error::Domain {
        use crate::error::Domain;
        match self {
            EngineError::Eval(e) => e.domain(),
            EngineError::Store(e) => e.domain(),
            EngineError::Arrow(_) | EngineError::UnknownTopic(_) => Domain::Internal,
        }
    }

    fn retry(&self) -> crate::error::Retry {
        crate::error::Retry::Never
    }

    fn kind(&self) -> &'static str {
        match self {
            EngineError::Eval(e) => e.kind(),
            EngineError::Store(e) => e.kind(),
            EngineError::Arrow(_) => "arrow",
            EngineError::UnknownTopic(_) => "bug",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GroupKind {
    /// Immediate: emit every kept row.
    Emit,
    /// Smart: emit when the rows are complete.
    Smart(HeldId),
    /// Smart: the held event's timeout.
    Timeout(HeldId),
}

#[derive(Debug)]
struct Group {
    kind: GroupKind,
    driving: Origin,
    trigger: Origin,
    rows: Range<usize>,
}

struct TopicState {
    schema: TopicSchema,
    sources: Vec<usize>,
    /// How long its records stay joinable (None: never expire).
    ttl_ms: Option<i64>,
}

/// One pipeline's engine.
pub struct Engine {
    plan: QueryPlan,
    emission: Emission,
    key_column: Option<usize>,
    topics: Vec<TopicState>,
    topic_index: HashMap<String, u16>,
    sources: Vec<SourceState>,
    /// Event time: the only owner of the watermark.
    clock: Clock,
    /// The wall clock in epoch ms, read every 1024 records.
    now_ms: i64,
    /// Records since the wall clock was read.
    since_clock_read: u32,
    held: Held,
    pins: OffsetPins,
    rows: Vec<Option<Arc<Event>>>,
    groups: Vec<Group>,
    evaluation: Evaluation,
    stats: EngineStats,
    max_batch_rows: usize,
    since_sweep: u32,
    probes: Vec<Probe>,
    scratch: Scratch,
    lookup_timing: Option<metrics::Histogram>,
    enumerations: u64,
    ids: Vec<HeldId>,
    key_buf: Vec<u8>,
    /// Durable state, if attached.
    store: Option<PipelineStore>,
    /// Bound on hot state bytes (with a store).
    budget: Option<u64>,
    /// Held events released since the last checkpoint.
    released: Vec<crate::state::Origin>,
    /// Lookups of keys that left memory, found by the last enumeration.
    misses: Vec<Miss>,
    /// A state read failed where no error could be returned at once.
    store_error: Option<StoreError>,
    /// Records pushed since state was last written.
    since_write: u32,
    /// Held events not yet written (most are released before the next write).
    unwritten_held: Vec<HeldId>,
    /// Held events whose copy is in RocksDB.
    written_held: std::collections::HashSet<HeldId>,
}

fn add_column(columns: &mut Vec<String>, name: &str) -> usize {
    match columns.iter().position(|c| c == name) {
        Some(i) => i,
        None => {
            columns.push(name.to_string());
            columns.len() - 1
        }
    }
}

impl Engine {
    /// Builds the engine of `pipeline`.
    pub fn new(pipeline: &Pipeline) -> Result<Self, EngineError> {
        let plan = pipeline.plan.clone();
        let stores_driving = matches!(pipeline.emission, Emission::Immediate)
            && plan
                .joins
                .iter()
                .any(|j| j.kind == JoinKind::Inner && plan.sources[j.source].role == Role::Stream);
        // Topics in first-use order, each with the union of its sources' columns.
        let mut topic_names: Vec<String> = Vec::new();
        let mut topic_columns: Vec<Vec<String>> = Vec::new();
        let mut topic_keys: Vec<Vec<String>> = Vec::new();
        let mut sources = Vec::new();
        for (s, src) in plan.sources.iter().enumerate() {
            let t = match topic_names.iter().position(|n| n == &src.topic) {
                Some(t) => t,
                None => {
                    topic_names.push(src.topic.clone());
                    topic_columns.push(Vec::new());
                    topic_keys.push(Vec::new());
                    topic_names.len() - 1
                }
            };
            let columns: Vec<usize> = src
                .columns
                .iter()
                .map(|c| add_column(&mut topic_columns[t], c))
                .collect();
            for k in plan.key_columns(s) {
                if !topic_keys[t].contains(&src.columns[k]) {
                    topic_keys[t].push(src.columns[k].clone());
                }
            }
            let index: Vec<usize> = if s == 0 {
                plan.stream_key.iter().map(|&c| columns[c]).collect()
            } else {
                plan.join_of(s)
                    .map(|j| j.keys.iter().map(|(_, c)| columns[*c]).collect())
                    .unwrap_or_default()
            };
            let ttl = pipeline.ttl_of(&src.topic);
            let table = match (s, src.role) {
                (0, _) if !stores_driving => Table::Unstored,
                (_, Role::Dimension) => Table::Dimension(DimensionTable::new(ttl)),
                (_, Role::Stream) => Table::Stream(StreamTable::new(ttl)),
            };
            sources.push(SourceState {
                topic: t as u16,
                role: src.role,
                columns,
                index,
                table,
            });
        }
        let topics = topic_names
            .iter()
            .enumerate()
            .map(|(t, name)| {
                let spec = pipeline.sources.get(name).cloned().unwrap_or_default();
                let is_dimension = sources
                    .iter()
                    .any(|s| s.topic as usize == t && s.role == Role::Dimension);
                TopicState {
                    schema: TopicSchema::new(
                        name,
                        topic_columns[t].clone(),
                        &spec.columns,
                        spec.timestamp.as_deref(),
                        &topic_keys[t],
                    )
                    .keep_kafka_key(is_dimension),
                    sources: (0..plan.sources.len())
                        .filter(|&s| sources[s].topic as usize == t)
                        .collect(),
                    ttl_ms: pipeline.ttl_of(name),
                }
            })
            .collect::<Vec<_>>();
        // The schema may have added key or timestamp columns after the query's
        // columns; source column indices stay valid because they come first.
        let streams: Vec<bool> = topics
            .iter()
            .map(|t| t.sources.iter().any(|&s| sources[s].role == Role::Stream))
            .collect();
        let topic_index = topic_names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u16))
            .collect();
        Ok(Self {
            plan,
            emission: pipeline.emission.clone(),
            key_column: pipeline.output.key,
            topics,
            topic_index,
            sources,
            clock: Clock::new(&streams, pipeline.max_ahead_ms),
            now_ms: wall_clock_ms(),
            since_clock_read: 0,
            held: Held::default(),
            pins: OffsetPins::default(),
            rows: Vec::new(),
            groups: Vec::new(),
            evaluation: Evaluation::new()?,
            stats: EngineStats::default(),
            max_batch_rows: DEFAULT_BATCH_ROWS,
            since_sweep: 0,
            probes: Vec::new(),
            scratch: Scratch::default(),
            lookup_timing: None,
            enumerations: 0,
            ids: Vec::new(),
            key_buf: Vec::new(),
            store: None,
            budget: None,
            released: Vec::new(),
            misses: Vec::new(),
            store_error: None,
            since_write: 0,
            unwritten_held: Vec::new(),
            written_held: std::collections::HashSet::new(),
        })
    }

    /// Records state lookup latency into `histogram`, timing one enumeration in
    /// 64 (the clock is not read per lookup on the hot path).
    pub fn with_lookup_timing(mut self, histogram: metrics::Histogram) -> Self {
        self.lookup_timing = Some(histogram);
        self
    }

    /// Sets the bound on rows per micro-batch (at least 1).
    pub fn with_batch_rows(mut self, rows: usize) -> Self {
        self.max_batch_rows = rows.max(1);
        self
    }

    /// The topics this engine reads, by index.
    pub fn topic_names(&self) -> impl Iterator<Item = &str> {
        self.topics.iter().map(|t| t.schema.topic.as_str())
    }

    /// The name of topic `index`.
    pub fn topic_name(&self, index: u16) -> &str {
        self.topics
            .get(index as usize)
            .map_or("", |t| t.schema.topic.as_str())
    }

    /// Whether `topic` is a dimension of this pipeline.
    pub fn is_dimension(&self, topic: &str) -> bool {
        self.topic_index.get(topic).is_some_and(|&t| {
            self.topics[t as usize]
                .sources
                .iter()
                .all(|&s| self.sources[s].role == Role::Dimension)
        })
    }

    /// Counters.
    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// State counters per source (alias, role, summed over shards).
    pub fn state_stats(&self) -> Vec<(String, Role, ShardStats)> {
        self.sources
            .iter()
            .zip(&self.plan.sources)
            .map(|(s, p)| {
                let stats = match &s.table {
                    Table::Unstored => ShardStats::default(),
                    Table::Stream(t) => t.stats(),
                    Table::Dimension(t) => t.stats(),
                };
                (p.alias.clone(), p.role, stats)
            })
            .collect()
    }

    /// Number of driving events held by smart emission.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The oldest offset of a partition that is still needed: held by state
    /// for future joins or by smart emission. Offsets before it can be committed
    /// once their outputs are delivered.
    pub fn oldest_pinned(&self, topic: u16, partition: i32) -> Option<i64> {
        self.pins.oldest(topic, partition)
    }

    /// The index of a topic by name.
    pub fn topic_index(&self, topic: &str) -> Option<u16> {
        // A pipeline reads a handful of topics: a scan beats hashing the name.
        self.topics
            .iter()
            .position(|t| t.schema.topic == topic)
            .map(|i| i as u16)
    }

    /// The current watermark (see [`clock`]).
    pub fn watermark(&self) -> i64 {
        self.clock.watermark()
    }

    /// Rows waiting for the next [`Engine::flush`].
    pub fn pending_rows(&self) -> usize {
        self.rows.len() / self.plan.sources.len().max(1)
    }

    /// Processes one record. Evaluates the batch when it is full.
    pub fn push(
        &mut self,
        record: &SourceRecord<'_>,
        out: &mut Outputs,
    ) -> Result<(), EngineError> {
        let Some(t) = self.topic_index(record.topic) else {
            return Err(EngineError::UnknownTopic(record.topic.to_string()));
        };
        self.stats.records += 1;
        let dead = |kind: &'static str, reason: String| DeadLetter {
            topic: record.topic.to_string(),
            partition: record.partition,
            offset: record.offset,
            key: record.key.map(<[u8]>::to_vec),
            value: record.value.map(<[u8]>::to_vec),
            reason,
            kind,
            decoded_copy: false,
        };
        let Some(value) = record.value else {
            if let Some(reason) = self.tombstone(t, record.key) {
                self.stats.dead_letters += 1;
                out.dead_letters.push(dead("tombstone", reason));
            }
            return Ok(());
        };
        let event = match self.topics[t as usize].schema.decode(
            t,
            record.partition,
            record.offset,
            record.timestamp,
            record.key,
            value,
        ) {
            Ok(e) => Arc::new(e),
            Err(e) => {
                self.stats.dead_letters += 1;
                out.dead_letters.push(dead("decode", reason_of(&e)));
                return Ok(());
            }
        };
        // The wall clock bounds event time to within an hour by default: one
        // read per 1024 records is precise enough and off the per-record path.
        if self.since_clock_read == 0 {
            self.now_ms = wall_clock_ms();
        }
        self.since_clock_read = (self.since_clock_read + 1) % 1024;
        if let Some(reason) = self.refuse_time(t, record.timestamp, event.timestamp) {
            self.stats.dead_letters += 1;
            out.dead_letters.push(dead("event_time", reason));
            return Ok(());
        }
        if self.clock.is_stream(t)
            && self
                .clock
                .is_late(event.timestamp, self.topics[t as usize].ttl_ms)
        {
            self.stats.late += 1;
            return Ok(());
        }
        if let Some(wm) = self.clock.observe(t, event.timestamp) {
            self.on_watermark(wm);
        }
        let trigger = Origin::of(&event);
        for i in 0..self.topics[t as usize].sources.len() {
            let s = self.topics[t as usize].sources[i];
            if s == 0 {
                self.drive(&event);
            } else {
                self.ingest(s, &event, trigger);
            }
        }
        self.since_sweep += 1;
        if self.since_sweep >= SWEEP_EVERY {
            self.sweep();
        }
        if let Some(e) = self.store_error.take() {
            return Err(e.into());
        }
        if self.rows.len() >= self.max_batch_rows * self.plan.sources.len() {
            self.flush(out)?;
        }
        self.maybe_write_state()
    }

    /// Moves the watermark forward without a record (an idle source's wall clock).
    pub fn advance_watermark(&mut self, to: i64, out: &mut Outputs) -> Result<(), EngineError> {
        if let Some(wm) = self.clock.advance_all(to) {
            self.on_watermark(wm);
        }
        if let Some(e) = self.store_error.take() {
            return Err(e.into());
        }
        if !self.groups.is_empty()
            && self.rows.len() >= self.max_batch_rows * self.plan.sources.len()
        {
            self.flush(out)?;
        }
        Ok(())
    }

    /// Why the event time of a record of topic `t` cannot be used (its Kafka
    /// timestamp `kafka`, its event time `ts`); None when it can. Event
    /// streams, and dimensions with a TTL, need event time.
    fn refuse_time(&self, t: u16, kafka: i64, ts: i64) -> Option<String> {
        let needs_time = self.clock.is_stream(t) || self.topics[t as usize].ttl_ms.is_some();
        if !needs_time {
            return None;
        }
        let declared = self.topics[t as usize].schema.timestamp_column.is_some();
        if !declared && kafka < 0 {
            return Some(
                "the record has no Kafka timestamp and its source declares no timestamp column (sources.<topic>.timestamp): its event time is unknown".to_string(),
            );
        }
        self.clock.refuse(ts, self.now_ms)
    }

    /// Evaluates every pending row and decides what is emitted.
    pub fn flush(&mut self, out: &mut Outputs) -> Result<(), EngineError> {
        // Rows enumerated while a state read failed miss records: none of
        // them may become output (the pipeline stops before committing).
        if let Some(e) = self.store_error.take() {
            return Err(e.into());
        }
        self.sweep();
        if self.groups.is_empty() {
            self.rows.clear();
            return self.write_state();
        }
        let groups = std::mem::take(&mut self.groups);
        let rows = std::mem::take(&mut self.rows);
        let result = self.evaluate(&rows, groups.last().map_or(0, |g| g.rows.end));
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                self.rows = rows;
                self.groups = groups;
                return Err(e);
            }
        };
        self.decide(&groups, &rows, result, out)?;
        self.rows = rows;
        self.rows.clear();
        self.stats.batches += 1;
        self.write_state()
    }

    fn tombstone(&mut self, t: u16, key: Option<&[u8]>) -> Option<String> {
        let mut refused = None;
        let mut deleted: Vec<(usize, Vec<u8>)> = Vec::new();
        for &s in &self.topics[t as usize].sources {
            match (&mut self.sources[s].table, key) {
                (Table::Dimension(_), Some(k)) => deleted.push((s, k.to_vec())),
                (Table::Dimension(_), None) => {
                    refused =
                        Some("tombstone (null value) without a key: nothing to delete".to_string())
                }
                _ => refused = Some(
                    "null value (tombstone) on an event stream: event streams carry JSON objects"
                        .to_string(),
                ),
            }
        }
        for (s, primary) in deleted {
            if let Err(e) = self.make_primary_resident(s, &primary) {
                self.store_error.get_or_insert(e);
            }
            if let Table::Dimension(table) = &mut self.sources[s].table {
                let old = table.delete(&primary);
                if old.is_some() {
                    self.persist_dimension(s, &primary, None, old);
                }
            }
        }
        refused
    }

    /// The watermark moved to `wm`: held smart events whose timeout passed
    /// are queued for their verdict.
    fn on_watermark(&mut self, wm: i64) {
        if let Emission::Smart { .. } = self.emission {
            let mut due = std::mem::take(&mut self.ids);
            self.held.due(wm, &mut due);
            for &id in &due {
                let Some(h) = self.held.get(id) else { continue };
                let event = h.event.clone();
                let origin = Origin::of(&event);
                self.enumerate_group(
                    GroupKind::Timeout(id),
                    &event,
                    None,
                    Mode::Outer,
                    origin,
                    false,
                );
            }
            self.ids = due;
        }
    }

    fn sweep(&mut self) {
        self.since_sweep = 0;
        let wm = self.clock.watermark();
        let pins = &mut self.pins;
        for s in &mut self.sources {
            self.stats.evictions += match &mut s.table {
                Table::Stream(t) => t.expire(wm, |(topic, p, o)| pins.unpin(topic, p, o)),
                Table::Dimension(t) => t.expire(wm),
                Table::Unstored => 0,
            };
        }
    }

    /// A driving event arrives.
    fn drive(&mut self, event: &Arc<Event>) {
        if let Table::Stream(_) = &self.sources[0].table {
            if let Some(hash) = key_of(event, &self.sources[0].index, &mut self.key_buf) {
                self.insert_stream(0, hash, event);
            }
        }
        let origin = Origin::of(event);
        match self.emission {
            Emission::Immediate => {
                self.enumerate_group(GroupKind::Emit, event, None, Mode::Normal, origin, false)
            }
            Emission::Smart { timeout_ms, .. } => {
                let id = self
                    .held
                    .hold(event.clone(), event.timestamp.saturating_add(timeout_ms));
                self.pins.pin(event.topic, event.partition, event.offset);
                self.persist_held(id);
                self.enumerate_group(
                    GroupKind::Smart(id),
                    event,
                    None,
                    Mode::Normal,
                    origin,
                    true,
                );
            }
        }
    }

    /// A record of a joined source arrives.
    fn ingest(&mut self, s: usize, event: &Arc<Event>, trigger: Origin) {
        let Some(hash) = key_of(event, &self.sources[s].index, &mut self.key_buf) else {
            return;
        };
        match &self.sources[s].table {
            Table::Dimension(_) => {
                let key = std::mem::take(&mut self.key_buf);
                let primary = event.key.as_deref().unwrap_or(&key).to_vec();
                self.upsert_dimension(s, &primary, hash, &key, event);
                self.key_buf = key;
            }
            Table::Stream(_) => self.insert_stream(s, hash, event),
            Table::Unstored => {}
        }
        match self.emission {
            Emission::Immediate => {
                let inner_stream = self.sources[s].role == Role::Stream
                    && self
                        .plan
                        .join_of(s)
                        .is_some_and(|j| j.kind == JoinKind::Inner);
                if !inner_stream {
                    return;
                }
                // Every combination whose last member is this event.
                self.fault_in(0, hash);
                let drivers: Vec<Arc<Event>> = match &self.sources[0].table {
                    Table::Stream(t) => t
                        .lookup(hash, &self.key_buf, self.clock.watermark())
                        .cloned()
                        .collect(),
                    _ => Vec::new(),
                };
                for d in drivers {
                    self.enumerate_group(
                        GroupKind::Emit,
                        &d,
                        Some((s, event)),
                        Mode::Normal,
                        trigger,
                        false,
                    );
                }
            }
            Emission::Smart { .. } => {
                let mut ids = std::mem::take(&mut self.ids);
                self.held.waiting_on((s, hash), &mut ids);
                for &id in &ids {
                    let Some(h) = self.held.get(id) else { continue };
                    let driving = h.event.clone();
                    self.enumerate_group(
                        GroupKind::Smart(id),
                        &driving,
                        None,
                        Mode::Normal,
                        trigger,
                        true,
                    );
                }
                self.ids = ids;
            }
        }
    }

    /// Adds an event-stream record to source `s` (memory and disk).
    fn insert_stream(&mut self, s: usize, hash: u64, event: &Arc<Event>) {
        let key = std::mem::take(&mut self.key_buf);
        if let Err(e) = self.make_resident(s, hash, &key) {
            self.store_error.get_or_insert(e);
        }
        if let Table::Stream(table) = &mut self.sources[s].table {
            table.insert(hash, &key, event.clone());
            self.pins.pin(event.topic, event.partition, event.offset);
        }
        self.persist_stream(s, hash, &key, event);
        self.key_buf = key;
    }

    /// Sets a dimension record (memory and disk).
    fn upsert_dimension(
        &mut self,
        s: usize,
        primary: &[u8],
        hash: u64,
        key: &[u8],
        event: &Arc<Event>,
    ) {
        let faulted = self
            .make_primary_resident(s, primary)
            .and_then(|()| self.make_resident(s, hash, key));
        if let Err(e) = faulted {
            self.store_error.get_or_insert(e);
        }
        let old = match &mut self.sources[s].table {
            Table::Dimension(table) => table.upsert(primary, hash, key, event.clone()),
            _ => return,
        };
        self.persist_dimension(s, primary, Some((hash, key, event)), old);
    }

    /// Brings the current key (`key_buf`) of source `s` into memory.
    fn fault_in(&mut self, s: usize, hash: u64) {
        let key = std::mem::take(&mut self.key_buf);
        if let Err(e) = self.make_resident(s, hash, &key) {
            self.store_error.get_or_insert(e);
        }
        self.key_buf = key;
    }

    fn enumerate_group(
        &mut self,
        kind: GroupKind,
        driving: &Arc<Event>,
        pinned: Option<(usize, &Arc<Event>)>,
        mode: Mode,
        trigger: Origin,
        register: bool,
    ) {
        let stride = self.plan.sources.len();
        let start = self.rows.len() / stride;
        self.enumerations += 1;
        let timed = self.lookup_timing.is_some() && self.enumerations % 64 == 0;
        let (started, lookups_before) = (timed.then(Instant::now), self.stats.lookups.lookups);
        let (rows_before, stats_before) = (self.rows.len(), self.stats.lookups);
        // Keys that left memory are brought back and the rows enumerated again
        // (a chain of joins may reveal one more such key per round).
        let mut rounds = 0;
        let n = loop {
            self.misses.clear();
            self.probes.clear();
            let joiner = Joiner {
                plan: &self.plan,
                sources: &self.sources,
                watermark: self.clock.watermark(),
            };
            let probes = if register {
                Some(&mut self.probes)
            } else {
                None
            };
            let n = joiner.enumerate(
                driving,
                pinned,
                mode,
                &mut self.rows,
                probes,
                &mut self.stats.lookups,
                &mut self.scratch,
                &mut self.misses,
            );
            if self.misses.is_empty() || self.store.is_none() || rounds > self.plan.joins.len() {
                break n;
            }
            rounds += 1;
            for (s, hash, key) in std::mem::take(&mut self.misses) {
                if let Err(e) = self.make_resident(s, hash, &key) {
                    self.store_error.get_or_insert(e);
                }
            }
            self.rows.truncate(rows_before);
            self.stats.lookups = stats_before;
        };
        if let (Some(t), Some(h)) = (started, &self.lookup_timing) {
            let lookups = self.stats.lookups.lookups - lookups_before;
            if lookups > 0 {
                h.record_many(t.elapsed().as_secs_f64() / lookups as f64, lookups as usize);
            }
        }
        if let GroupKind::Smart(id) = kind {
            self.held.register(id, &self.probes);
        }
        if n == 0 && kind == GroupKind::Emit {
            return;
        }
        self.groups.push(Group {
            kind,
            driving: Origin::of(driving),
            trigger,
            rows: start..start + n,
        });
    }

    /// Runs the evaluation stage over the first `count` rows of `rows`.
    fn evaluate(
        &mut self,
        rows: &[Option<Arc<Event>>],
        count: usize,
    ) -> Result<Option<Evaluated>, EngineError> {
        let mut columns = Vec::new();
        for (s, src) in self.plan.sources.iter().enumerate() {
            let schema = &self.topics[self.sources[s].topic as usize].schema;
            for c in 0..src.columns.len() {
                let topic_column = self.sources[s].columns[c];
                columns.push(BatchColumn {
                    column: ColumnRef {
                        source: s,
                        column: c,
                    },
                    topic_column,
                    ty: schema.column_type(topic_column),
                });
            }
        }
        let result = self.evaluation.run(&self.plan, &columns, rows, count);
        self.stats.sql_nanos = self.evaluation.sql_nanos;
        result
    }

    /// Stops holding `id` and unpins its offset; false if it was not held.
    fn release(&mut self, id: HeldId) -> bool {
        match self.held.release(id) {
            Some(h) => {
                self.pins
                    .unpin(h.event.topic, h.event.partition, h.event.offset);
                self.persist_release(id, &h.event);
                true
            }
            None => false,
        }
    }

    /// A dead letter for `event`, whose row failed in SQL: its decoded
    /// columns stand in for its original bytes until the caller swaps them.
    fn dead_row(&self, event: &Event, reason: &str) -> DeadLetter {
        let schema = &self.topics[event.topic as usize].schema;
        let mut value = Vec::new();
        crate::codec::encode_decoded_json(&schema.columns, &event.values, &mut value);
        DeadLetter {
            topic: schema.topic.clone(),
            partition: event.partition,
            offset: event.offset,
            key: event.key.as_deref().map(<[u8]>::to_vec),
            value: Some(value),
            reason: reason.to_string(),
            kind: "sql_row",
            decoded_copy: true,
        }
    }

    /// Decides, group by group in arrival order, which evaluated rows are
    /// written; a group with a row that failed in SQL sends its driving
    /// record to the dead letters instead (a held smart event is released).
    fn decide(
        &mut self,
        groups: &[Group],
        rows: &[Option<Arc<Event>>],
        result: Option<Evaluated>,
        out: &mut Outputs,
    ) -> Result<(), EngineError> {
        let stride = self.plan.sources.len();
        let mut picked: Vec<u32> = Vec::new();
        let mut origins: Vec<(Origin, Origin)> = Vec::new();
        let mut dead: Vec<Origin> = Vec::new();
        let kept = |ev: &Evaluated, row: usize| -> Option<bool> {
            let i = ev.position[row];
            if i == u32::MAX {
                return None;
            }
            Some(match &ev.keep {
                // WHERE NULL keeps nothing, as in SQL.
                Some(k) => k.is_valid(i as usize) && k.value(i as usize),
                None => true,
            })
        };
        let complete = |ev: &Evaluated, row: usize, require: &[usize]| -> bool {
            let i = ev.position[row];
            i != u32::MAX
                && require
                    .iter()
                    .all(|&c| !ev.values.column(c).is_null(i as usize))
        };
        for g in groups {
            let failure = result.as_ref().and_then(|ev| {
                g.rows
                    .clone()
                    .find_map(|r| ev.failure(r).map(str::to_string))
            });
            if let Some(why) = &failure {
                let driving = rows.get(g.rows.start * stride).and_then(Option::as_ref);
                if let Some(event) = driving {
                    if !dead.contains(&g.driving) {
                        dead.push(g.driving);
                        let letter = self.dead_row(event, why);
                        out.dead_letters.push(letter);
                        self.stats.dead_letters += 1;
                    }
                }
            }
            let mut take = |ev: &Evaluated, row: usize, stats: &mut EngineStats| match kept(ev, row)
            {
                Some(true) => {
                    picked.push(ev.position[row]);
                    origins.push((g.driving, g.trigger));
                }
                Some(false) => stats.filtered += 1,
                None => {}
            };
            match g.kind {
                GroupKind::Emit => {
                    let Some(ev) = &result else { continue };
                    for row in g.rows.clone() {
                        take(ev, row, &mut self.stats);
                    }
                }
                GroupKind::Smart(id) => {
                    if self.held.get(id).is_none() {
                        continue;
                    }
                    if failure.is_some() {
                        self.release(id);
                        continue;
                    }
                    let Emission::Smart { require, .. } = &self.emission else {
                        continue;
                    };
                    let Some(ev) = &result else { continue };
                    let done: Vec<usize> = g
                        .rows
                        .clone()
                        .filter(|&r| complete(ev, r, require))
                        .collect();
                    if done.is_empty() {
                        continue;
                    }
                    for row in done {
                        take(ev, row, &mut self.stats);
                    }
                    self.release(id);
                }
                GroupKind::Timeout(id) => {
                    if !self.release(id) || failure.is_some() {
                        continue;
                    }
                    let emit = matches!(
                        self.emission,
                        Emission::Smart {
                            on_timeout: OnTimeout::Emit,
                            ..
                        }
                    );
                    if !emit {
                        self.stats.timeouts_dropped += 1;
                        continue;
                    }
                    self.stats.timeouts_emitted += 1;
                    let Some(ev) = &result else { continue };
                    for row in g.rows.clone() {
                        take(ev, row, &mut self.stats);
                    }
                }
            }
        }
        let Some(ev) = result else { return Ok(()) };
        if picked.is_empty() {
            return Ok(());
        }
        let chosen = take_record_batch(&ev.values, &UInt32Array::from(picked))?;
        let base = out.data.len();
        let ends = encode_json_rows(&chosen, &mut out.data)?;
        let mut start = base;
        for (i, &end) in ends.iter().enumerate() {
            let key = match self.key_column {
                Some(c) => {
                    let at = out.data.len();
                    key_bytes(chosen.column(c).as_ref(), i, &mut out.data)?
                        .then_some(at..out.data.len())
                }
                None => None,
            };
            let (driving, trigger) = origins[i];
            out.rows.push(OutputRow {
                key,
                value: start..end,
                driving,
                trigger,
            });
            start = end + 1;
        }
        self.stats.emitted += ends.len() as u64;
        Ok(())
    }
}

fn reason_of(e: &DecodeError) -> String {
    e.to_string()
}
