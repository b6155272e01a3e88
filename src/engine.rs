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

use duckdb::arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
    UInt32Array,
};
use duckdb::arrow::compute::{concat_batches, take_record_batch};
use duckdb::arrow::datatypes::{DataType, Field, Schema, UInt32Type};
use duckdb::arrow::error::ArrowError;
use duckdb::arrow::record_batch::RecordBatch;

use crate::codec::{
    encode_json_rows, key_bytes, ColumnType, DecodeError, Event, TopicSchema, Value,
};
use crate::config::{Emission, OnTimeout, Pipeline};
use crate::emit::{Held, HeldId};
use crate::eval::{EvalError, Evaluator};
use crate::join::{key_of, Joiner, LookupStats, Miss, Mode, Probe, Scratch, SourceState, Table};
use crate::offsets::OffsetPins;
use crate::sql::{ColumnRef, DuckSql, JoinKind, QueryPlan, Role};
use crate::state::{DimensionTable, ShardStats, StreamTable};
use crate::store::{PipelineStore, StoreError};

mod durable;

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
    /// Kafka timestamp, epoch milliseconds.
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
}

/// One pipeline's engine.
pub struct Engine {
    plan: QueryPlan,
    emission: Emission,
    key_column: Option<usize>,
    topics: Vec<TopicState>,
    topic_index: HashMap<String, u16>,
    sources: Vec<SourceState>,
    watermark: i64,
    /// Largest event time per topic: Some for event streams, None for dimensions.
    stream_time: Vec<Option<i64>>,
    held: Held,
    pins: OffsetPins,
    rows: Vec<Option<Arc<Event>>>,
    groups: Vec<Group>,
    evaluator: Evaluator,
    sql_cache: HashMap<Vec<Option<ColumnType>>, DuckSql>,
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
                }
            })
            .collect::<Vec<_>>();
        // The schema may have added key or timestamp columns after the query's
        // columns; source column indices stay valid because they come first.
        let stream_time = topics
            .iter()
            .map(|t| {
                t.sources
                    .iter()
                    .any(|&s| sources[s].role == Role::Stream)
                    .then_some(i64::MIN)
            })
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
            watermark: i64::MIN,
            stream_time,
            held: Held::default(),
            pins: OffsetPins::default(),
            rows: Vec::new(),
            groups: Vec::new(),
            evaluator: Evaluator::new()?,
            sql_cache: HashMap::new(),
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

    /// The current watermark (largest event time seen).
    pub fn watermark(&self) -> i64 {
        self.watermark
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
        let dead = |reason: String| DeadLetter {
            topic: record.topic.to_string(),
            partition: record.partition,
            offset: record.offset,
            key: record.key.map(<[u8]>::to_vec),
            value: record.value.map(<[u8]>::to_vec),
            reason,
        };
        let Some(value) = record.value else {
            if let Some(reason) = self.tombstone(t, record.key) {
                self.stats.dead_letters += 1;
                out.dead_letters.push(dead(reason));
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
                out.dead_letters.push(dead(reason_of(&e)));
                return Ok(());
            }
        };
        self.observe_time(t, event.timestamp);
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
        for m in self.stream_time.iter_mut().flatten() {
            *m = (*m).max(to);
        }
        self.advance_to(to);
        if !self.groups.is_empty()
            && self.rows.len() >= self.max_batch_rows * self.plan.sources.len()
        {
            self.flush(out)?;
        }
        Ok(())
    }

    /// Evaluates every pending row and decides what is emitted.
    pub fn flush(&mut self, out: &mut Outputs) -> Result<(), EngineError> {
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
        self.decide(&groups, result, out)?;
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

    /// Notes event time `ts` on topic `t`. The watermark is the smallest of
    /// the event streams' largest timestamps (streams not seen yet do not hold
    /// it back), so a stream read ahead of another does not expire the other's
    /// records early. Dimensions do not move it.
    fn observe_time(&mut self, t: u16, ts: i64) {
        match self.stream_time.get_mut(t as usize) {
            Some(Some(m)) => *m = (*m).max(ts),
            // A dimension topic.
            _ => return,
        }
        let wm = self
            .stream_time
            .iter()
            .flatten()
            .copied()
            .filter(|&m| m > i64::MIN)
            .min()
            .unwrap_or(i64::MIN);
        self.advance_to(wm);
    }

    fn advance_to(&mut self, to: i64) {
        if to <= self.watermark {
            return;
        }
        self.watermark = to;
        if let Emission::Smart { .. } = self.emission {
            let mut due = std::mem::take(&mut self.ids);
            self.held.due(self.watermark, &mut due);
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
        let wm = self.watermark;
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
                        .lookup(hash, &self.key_buf, self.watermark)
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
                watermark: self.watermark,
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

    /// Runs DuckDB over the rows; returns the result and, per batch row, its result index.
    fn evaluate(
        &mut self,
        rows: &[Option<Arc<Event>>],
        count: usize,
    ) -> Result<Option<Evaluated>, EngineError> {
        if count == 0 {
            return Ok(None);
        }
        let stride = self.plan.sources.len();
        let mut refs: Vec<(ColumnRef, ColumnType)> = Vec::new();
        let mut signature = Vec::new();
        for (s, src) in self.plan.sources.iter().enumerate() {
            let schema = &self.topics[self.sources[s].topic as usize].schema;
            for c in 0..src.columns.len() {
                let ty = schema.column_type(self.sources[s].columns[c]);
                signature.push(ty);
                if let Some(ty) = ty {
                    refs.push((
                        ColumnRef {
                            source: s,
                            column: c,
                        },
                        ty,
                    ));
                }
            }
        }
        let mut fields = Vec::with_capacity(refs.len() + 1);
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(refs.len() + 1);
        for &(r, ty) in &refs {
            let topic_col = self.sources[r.source].columns[r.column];
            let values = (0..count).map(|i| {
                rows[i * stride + r.source]
                    .as_ref()
                    .map(|e| &e.values[topic_col])
            });
            let (dt, array) = build_array(ty, values, count);
            fields.push(Field::new(
                crate::sql::batch_column_name(&self.plan, r),
                dt,
                true,
            ));
            arrays.push(array);
        }
        fields.push(Field::new(crate::sql::ROW_COLUMN, DataType::UInt32, false));
        arrays.push(std::sync::Arc::new(UInt32Array::from_iter_values(
            0..count as u32,
        )));
        let input = RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), arrays)?;
        let from = self.evaluator.from_clause();
        let plan = &self.plan;
        let sql = self.sql_cache.entry(signature.clone()).or_insert_with(|| {
            let present = |r: ColumnRef| refs.iter().any(|(x, _)| *x == r);
            let mut sql = DuckSql::build(plan, &from, &present);
            sql.text = format!("{} /* shape {} */", sql.text, shape_id(&signature));
            sql
        });
        let (text, has_filter) = (sql.text.clone(), sql.has_filter);
        let started = Instant::now();
        let batches = self.evaluator.evaluate(&text, input)?;
        self.stats.sql_nanos += started.elapsed().as_nanos() as u64;
        let Some(first) = batches.first() else {
            return Ok(None);
        };
        let result = concat_batches(&first.schema(), &batches)?;
        let outputs = self.plan.outputs.len();
        let row_col = result
            .column(result.num_columns() - 1)
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(|| ArrowError::CastError("__kf_row is not UINTEGER".into()))?
            .clone();
        let mut position = vec![u32::MAX; count];
        for (i, r) in row_col.values().iter().enumerate() {
            if let Some(p) = position.get_mut(*r as usize) {
                *p = i as u32;
            }
        }
        let keep = if has_filter {
            Some(result.column(outputs).as_boolean().clone())
        } else {
            None
        };
        Ok(Some(Evaluated {
            values: result.project(&(0..outputs).collect::<Vec<_>>())?,
            keep,
            position,
        }))
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

    fn decide(
        &mut self,
        groups: &[Group],
        result: Option<Evaluated>,
        out: &mut Outputs,
    ) -> Result<(), EngineError> {
        let mut picked: Vec<u32> = Vec::new();
        let mut origins: Vec<(Origin, Origin)> = Vec::new();
        let kept = |ev: &Evaluated, row: usize| -> Option<u32> {
            let i = ev.position[row];
            if i == u32::MAX {
                return None;
            }
            match &ev.keep {
                Some(k) if !k.value(i as usize) => None,
                _ => Some(i),
            }
        };
        let complete = |ev: &Evaluated, row: usize, require: &[usize]| -> bool {
            let i = ev.position[row];
            i != u32::MAX
                && require
                    .iter()
                    .all(|&c| !ev.values.column(c).is_null(i as usize))
        };
        for g in groups {
            match g.kind {
                GroupKind::Emit => {
                    let Some(ev) = &result else { continue };
                    for row in g.rows.clone() {
                        match kept(ev, row) {
                            Some(i) => {
                                picked.push(i);
                                origins.push((g.driving, g.trigger));
                            }
                            None => self.stats.filtered += 1,
                        }
                    }
                }
                GroupKind::Smart(id) => {
                    if self.held.get(id).is_none() {
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
                        match kept(ev, row) {
                            Some(i) => {
                                picked.push(i);
                                origins.push((g.driving, g.trigger));
                            }
                            None => self.stats.filtered += 1,
                        }
                    }
                    self.release(id);
                }
                GroupKind::Timeout(id) => {
                    if !self.release(id) {
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
                        match kept(ev, row) {
                            Some(i) => {
                                picked.push(i);
                                origins.push((g.driving, g.trigger));
                            }
                            None => self.stats.filtered += 1,
                        }
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

struct Evaluated {
    values: RecordBatch,
    keep: Option<duckdb::arrow::array::BooleanArray>,
    position: Vec<u32>,
}

fn shape_id(signature: &[Option<ColumnType>]) -> String {
    signature
        .iter()
        .map(|t| match t {
            None => 'n',
            Some(ColumnType::Boolean) => 'b',
            Some(ColumnType::BigInt) => 'i',
            Some(ColumnType::Double) => 'd',
            Some(ColumnType::Varchar) => 's',
            Some(ColumnType::Json) => 'j',
        })
        .collect()
}

fn build_array<'a>(
    ty: ColumnType,
    values: impl Iterator<Item = Option<&'a Value>>,
    count: usize,
) -> (DataType, ArrayRef) {
    match ty {
        ColumnType::Boolean => {
            let mut b = BooleanBuilder::with_capacity(count);
            for v in values {
                b.append_option(match v {
                    Some(Value::Bool(x)) => Some(*x),
                    _ => None,
                });
            }
            (DataType::Boolean, Arc::new(b.finish()))
        }
        ColumnType::BigInt => {
            let mut b = Int64Builder::with_capacity(count);
            for v in values {
                b.append_option(match v {
                    Some(Value::Int(x)) => Some(*x),
                    _ => None,
                });
            }
            (DataType::Int64, Arc::new(b.finish()))
        }
        ColumnType::Double => {
            let mut b = Float64Builder::with_capacity(count);
            for v in values {
                b.append_option(match v {
                    Some(Value::Float(x)) => Some(*x),
                    Some(Value::Int(x)) => Some(*x as f64),
                    _ => None,
                });
            }
            (DataType::Float64, Arc::new(b.finish()))
        }
        ColumnType::Varchar | ColumnType::Json => {
            let mut b = StringBuilder::with_capacity(count, count * 16);
            for v in values {
                match v {
                    Some(Value::Str(s)) | Some(Value::Json(s)) => b.append_value(s),
                    _ => b.append_null(),
                }
            }
            (DataType::Utf8, Arc::new(b.finish()))
        }
    }
}

fn reason_of(e: &DecodeError) -> String {
    e.to_string()
}
