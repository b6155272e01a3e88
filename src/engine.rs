//! The engine of one pipeline: records in, enriched rows and dead letters out.
//!
//! One record goes through the stages in this order, each in its own file:
//!
//! 1. [`ingest`]: decode once into a shared [`Event`], check its time with
//!    the [`clock`] (the one owner of event time and the watermark), store
//!    it in the state of every source that reads its topic ([`sources`]).
//! 2. [`join`]: enumerate the joined rows the arrival makes into the
//!    micro-batch, grouped by the decision they await.
//! 3. [`evaluate`]: when the micro-batch is full (or the caller flushes),
//!    DuckDB evaluates the SELECT list and WHERE over it in one call.
//! 4. [`emit`]: the emission rules decide, group by group in arrival order,
//!    which rows are written ([`output`]).
//! 5. [`durable`]: state changes go to RocksDB once per micro-batch;
//!    checkpoints record the offsets they reflect. [`ownership`] restores
//!    state at start and drops revoked partitions.
//!
//! Results do not depend on where micro-batches are cut.
//!
//! [`Event`]: crate::codec::Event

use std::sync::Arc;

use duckdb::arrow::error::ArrowError;

use crate::codec::Event;
use crate::config::{Emission, Pipeline};
use crate::eval::EvalError;
use crate::offsets::OffsetPins;
use crate::sql::{ColumnRef, QueryPlan, Role};
use crate::state::ShardStats;
use crate::store::StoreError;

mod clock;
mod durable;
mod emit;
mod evaluate;
mod held;
mod ingest;
mod join;
mod output;
mod ownership;
mod sources;
mod topics;

use clock::Clock;
pub use clock::NO_TIMESTAMP;
pub(crate) use evaluate::is_condition;
use evaluate::{BatchColumn, Evaluated, Evaluation};
pub use join::LookupStats;
pub use output::{DeadLetter, Origin, OutputRow, Outputs};
pub use ownership::RestoreReport;
pub use topics::Topics;

/// A topic of the pipeline: its index in [`Topics`] (first-use order in the query).
pub type TopicId = u16;

/// Default bound on rows per micro-batch.
pub const DEFAULT_BATCH_ROWS: usize = 4096;

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
    /// Records with a missing or NULL join key: they match nothing (SQL).
    pub null_keys: u64,
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

/// One pipeline's engine.
pub struct Engine {
    plan: QueryPlan,
    emission: Emission,
    /// How result rows become output records (key, whole records).
    layout: output::RowLayout,
    topics: Topics,
    sources: Vec<sources::SourceState>,
    clock: Clock,
    held: held::Held,
    pins: OffsetPins,
    batch: join::Batch,
    join: join::JoinScratch,
    evaluation: Evaluation,
    stats: EngineStats,
    max_batch_rows: usize,
    /// Records since expired state was last swept.
    since_sweep: u32,
    durable: durable::Durable,
}

impl Engine {
    /// Builds the engine of `pipeline`.
    ///
    /// Errors: DuckDB cannot be opened.
    pub fn new(pipeline: &Pipeline) -> Result<Self, EngineError> {
        let (topics, sources) = topics::resolve(pipeline);
        let streams: Vec<bool> = topics
            .list
            .iter()
            .map(|t| t.sources.iter().any(|&s| sources[s].role == Role::Stream))
            .collect();
        Ok(Self {
            plan: pipeline.plan.clone(),
            emission: pipeline.emission.clone(),
            layout: output::RowLayout::of(pipeline),
            topics,
            sources,
            clock: Clock::new(&streams, pipeline.max_ahead_ms),
            held: held::Held::default(),
            pins: OffsetPins::default(),
            batch: join::Batch::default(),
            join: join::JoinScratch::default(),
            evaluation: Evaluation::new()?,
            stats: EngineStats::default(),
            max_batch_rows: DEFAULT_BATCH_ROWS,
            since_sweep: 0,
            durable: durable::Durable::default(),
        })
    }

    /// Records state lookup latency into `histogram`, timing one enumeration in
    /// 64 (the clock is not read per lookup on the hot path).
    pub fn with_lookup_timing(mut self, histogram: metrics::Histogram) -> Self {
        self.join.lookup_timing = Some(histogram);
        self
    }

    /// Sets the bound on rows per micro-batch (at least 1).
    pub fn with_batch_rows(mut self, rows: usize) -> Self {
        self.max_batch_rows = rows.max(1);
        self
    }

    /// The topics this engine reads, by [`TopicId`].
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// The name of topic `id`.
    pub fn topic_name(&self, id: TopicId) -> &str {
        self.topics.name(id)
    }

    /// The id of a topic by name.
    pub fn topic_index(&self, topic: &str) -> Option<TopicId> {
        self.topics.id(topic)
    }

    /// Whether `topic` is only a dimension of this pipeline.
    pub fn is_dimension(&self, topic: &str) -> bool {
        self.topics.id(topic).is_some_and(|t| {
            self.topics
                .get(t)
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
                    sources::Table::Unstored => ShardStats::default(),
                    sources::Table::Stream(t) => t.stats(),
                    sources::Table::Dimension(t) => t.stats(),
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
    pub fn oldest_pinned(&self, topic: TopicId, partition: i32) -> Option<i64> {
        self.pins.oldest(topic, partition)
    }

    /// The lowest partition watermark (see [`clock`]).
    pub fn watermark(&self) -> i64 {
        self.clock.low()
    }

    /// Rows waiting for the next [`Engine::flush`].
    pub fn pending_rows(&self) -> usize {
        self.batch.rows.len() / self.plan.sources.len().max(1)
    }

    /// Moves the watermark forward without a record (an idle source's wall clock).
    pub fn advance_watermark(&mut self, to: i64, out: &mut Outputs) -> Result<(), EngineError> {
        for (p, wm) in self.clock.advance_all(to) {
            self.on_watermark(p, wm)?;
        }
        self.flush_if_full(out)
    }

    /// Called once per poll of the event streams with the number of records
    /// it brought: under smart emission, after `idle_after` without any, event
    /// time moves with the wall clock so held events time out.
    pub fn idle(
        &mut self,
        records: u64,
        idle_after: std::time::Duration,
        out: &mut Outputs,
    ) -> Result<(), EngineError> {
        let moved = self.clock.idle(records, idle_after);
        if !matches!(self.emission, Emission::Smart { .. }) || moved.is_empty() {
            return Ok(());
        }
        for (p, wm) in moved {
            self.on_watermark(p, wm)?;
        }
        self.flush_if_full(out)
    }

    fn flush_if_full(&mut self, out: &mut Outputs) -> Result<(), EngineError> {
        let full = self.batch.rows.len() >= self.max_batch_rows * self.plan.sources.len();
        if !self.batch.groups.is_empty() && full {
            self.flush(out)?;
        }
        Ok(())
    }

    /// Evaluates every pending row and decides what is emitted; then writes
    /// the state changes of the micro-batch.
    pub fn flush(&mut self, out: &mut Outputs) -> Result<(), EngineError> {
        self.sweep();
        if self.batch.groups.is_empty() {
            self.batch.rows.clear();
            return self.write_state();
        }
        let groups = std::mem::take(&mut self.batch.groups);
        let mut rows = std::mem::take(&mut self.batch.rows);
        let columns = self.batch_columns();
        let classes = evaluate::classes(&columns, &groups, &rows, self.plan.sources.len());
        let decided = if classes.types.len() == 1 {
            let count = groups.last().map_or(0, |g| g.rows.end);
            self.evaluate(&rows, count, &classes.types[0])
                .and_then(|r| self.decide(&groups, &rows, r.as_ref(), out))
        } else {
            self.decide_by_class(&groups, &rows, &classes, out)
        };
        if let Err(e) = decided {
            self.batch.rows = rows;
            self.batch.groups = groups;
            return Err(e);
        }
        rows.clear();
        self.batch.rows = rows;
        self.stats.batches += 1;
        self.write_state()
    }

    /// Evaluates each class of the batch once, then decides the groups in
    /// their order, each with its class's result.
    fn decide_by_class(
        &mut self,
        groups: &[join::Group],
        rows: &[Option<Arc<Event>>],
        classes: &evaluate::Classes,
        out: &mut Outputs,
    ) -> Result<(), EngineError> {
        let stride = self.plan.sources.len();
        let mut parts = Vec::new();
        for (k, columns) in classes.types.iter().enumerate() {
            let mut part_rows = Vec::new();
            let mut part_groups = Vec::new();
            for (g, _) in groups.iter().zip(&classes.of).filter(|(_, &c)| c == k) {
                part_groups.push(g.moved(part_rows.len() / stride));
                part_rows.extend_from_slice(&rows[g.rows.start * stride..g.rows.end * stride]);
            }
            let result = self.evaluate(&part_rows, part_rows.len() / stride, columns)?;
            parts.push((part_rows, part_groups, result, 0usize));
        }
        let mut i = 0;
        while i < groups.len() {
            let k = classes.of[i];
            let run = classes.of[i..].iter().take_while(|&&c| c == k).count();
            let (part_rows, part_groups, result, next) = &mut parts[k];
            let decided = &part_groups[*next..*next + run];
            self.decide(decided, part_rows, result.as_ref(), out)?;
            *next += run;
            i += run;
        }
        Ok(())
    }

    /// Runs the evaluation stage over the first `count` rows of `rows`.
    fn evaluate(
        &mut self,
        rows: &[Option<Arc<Event>>],
        count: usize,
        columns: &[BatchColumn],
    ) -> Result<Option<Evaluated>, EngineError> {
        let result = self.evaluation.run(&self.plan, columns, rows, count);
        self.stats.sql_nanos = self.evaluation.sql_nanos;
        result
    }

    /// The batch's columns: every column the query reads, with its type now.
    fn batch_columns(&self) -> Vec<BatchColumn> {
        let mut columns = Vec::new();
        for (s, src) in self.plan.sources.iter().enumerate() {
            let schema = &self.topics.get(self.sources[s].topic).schema;
            for c in 0..src.columns.len() {
                let topic_column = self.sources[s].columns[c];
                columns.push(BatchColumn {
                    column: ColumnRef {
                        source: s,
                        column: c,
                    },
                    topic_column,
                    ty: schema.column_type(topic_column),
                    inferred: !schema.is_declared(topic_column),
                });
            }
        }
        columns
    }
}
