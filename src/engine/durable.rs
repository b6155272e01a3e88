//! The engine's durable side while it runs: changes staged by the state
//! tables are written once per micro-batch (or every [`WRITE_EVERY`]
//! changes); checkpoints record the offsets the state reflects; under a
//! memory budget, cold join keys leave memory once their changes are in
//! RocksDB (the tables read them back when a lookup needs them).
//!
//! Consistency rule: records and dimension changes are written ahead of
//! their checkpoint. A held smart event is written only if it is still held
//! at the next write (most are released within their micro-batch), and its
//! stored copy is deleted only by the checkpoint of the epoch whose output
//! released it, so an undelivered emission is made again after a crash.
//! Restoring and dropping state is [`super::ownership`]'s job.

use std::collections::{HashMap, HashSet};

use super::held::HeldId;
use super::sources::Table;
use super::{Engine, EngineError};
use crate::codec::Event;
use crate::store::layout::{self, NEVER};
use crate::store::{Checkpoint, PipelineStore, StoreError, Target};

/// Staged changes after which the engine writes without waiting for a flush.
const WRITE_EVERY: usize = 4096;
/// Records between checks of the memory budget.
const BUDGET_CHECK_EVERY: u32 = 1024;
/// After eviction, hot state is at most this share of the budget.
const EVICT_TO: f64 = 0.8;

/// The durable side of one engine.
#[derive(Debug, Default)]
pub(super) struct Durable {
    /// Durable state, if attached.
    pub(super) store: Option<PipelineStore>,
    /// Bound on hot state bytes (with a store).
    pub(super) budget: Option<u64>,
    /// Stored held events released since the last checkpoint.
    pub(super) released: Vec<crate::state::Origin>,
    /// Records pushed since state was last written.
    since_write: u32,
    /// Held events not yet written.
    unwritten_held: Vec<HeldId>,
    /// Held events whose copy is in RocksDB.
    pub(super) written_held: HashSet<HeldId>,
}

impl Engine {
    /// Notes a new held smart-emission event; it is written with the next
    /// state write if it is still held then.
    pub(super) fn note_held(&mut self, id: HeldId) {
        if self.durable.store.is_some() {
            self.durable.unwritten_held.push(id);
        }
    }

    /// Notes that held event `id` was released: a stored copy goes with the
    /// checkpoint of the epoch that carries the release's output.
    pub(super) fn note_release(&mut self, id: HeldId, event: &Event) {
        if self.durable.written_held.remove(&id) {
            self.durable
                .released
                .push((event.topic, event.partition, event.offset));
        }
    }

    /// Stages the held events noted since the last write that are still held.
    fn stage_held(&mut self) {
        let durable = &mut self.durable;
        let Some(store) = durable.store.as_mut() else {
            durable.unwritten_held.clear();
            return;
        };
        for id in durable.unwritten_held.drain(..) {
            let Some(h) = self.held.get(id) else {
                continue;
            };
            let e = &h.event;
            let origin = (e.topic, e.partition, e.offset);
            store.put(
                Target::Meta,
                |b| layout::held_key(origin, b),
                |b| layout::encode_event(e, NEVER, b),
            );
            durable.written_held.insert(id);
        }
    }

    /// Writes staged state changes when enough have gathered, and at least
    /// every [`BUDGET_CHECK_EVERY`] records under a budget (which it then enforces).
    pub(super) fn maybe_write_state(&mut self) -> Result<(), EngineError> {
        self.durable.since_write += 1;
        let due = self
            .durable
            .store
            .as_ref()
            .is_some_and(|s| s.staged() >= WRITE_EVERY)
            || (self.durable.budget.is_some() && self.durable.since_write >= BUDGET_CHECK_EVERY);
        if due {
            self.write_state()?;
        }
        Ok(())
    }

    /// Writes staged state changes (one batch), then moves cold keys out of
    /// memory while hot state is over its budget.
    pub fn write_state(&mut self) -> Result<(), EngineError> {
        self.durable.since_write = 0;
        self.stage_held();
        if let Some(store) = self.durable.store.as_mut() {
            store.write()?;
        }
        let Some(budget) = self.durable.budget else {
            return Ok(());
        };
        let total = self.state_memory();
        if total <= budget {
            return Ok(());
        }
        // Keys leave memory only once their changes are in RocksDB, so a later
        // read of an absent key never needs to wait for the writer.
        if let Some(store) = self.durable.store.as_mut() {
            store.write_and_wait()?;
        }
        let goal = (budget as f64 * EVICT_TO) as u64;
        for s in &mut self.sources {
            let share = |m: u64| (m as f64 * goal as f64 / total as f64) as u64;
            match &mut s.table {
                Table::Stream(t) => {
                    t.evict(share(t.stats().memory()));
                }
                Table::Dimension(t) => {
                    t.evict(share(t.stats().memory()));
                }
                Table::Unstored => {}
            }
        }
        Ok(())
    }

    /// Memory held by join state (entries and their overhead), in bytes.
    pub fn state_memory(&self) -> u64 {
        self.sources.iter().map(|s| s.memory()).sum()
    }

    /// What a checkpoint of the records processed so far holds: `offsets`
    /// (next offset per topic and partition), the clock, and the held events
    /// released since the last one.
    pub fn checkpoint(&mut self, offsets: HashMap<(String, i32), i64>) -> Checkpoint {
        let (watermark, stream_time) = self.clock.snapshot();
        Checkpoint {
            offsets,
            watermark,
            stream_time,
            released: std::mem::take(&mut self.durable.released),
        }
    }

    /// Makes `checkpoint` durable (after its epoch's outputs were delivered).
    pub fn commit_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<(), EngineError> {
        if let Some(store) = self.durable.store.as_mut() {
            store.checkpoint(checkpoint)?;
        }
        Ok(())
    }

    /// Whether durable state is attached.
    pub fn is_durable(&self) -> bool {
        self.durable.store.is_some()
    }
}

/// The error for a store that should be attached and is not: a bug.
pub(super) fn no_store() -> StoreError {
    StoreError::Open {
        path: Default::default(),
        reason: "no state store attached (this is a bug)".into(),
    }
}
