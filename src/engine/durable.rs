//! The engine's durable side: every change to join state is staged for
//! RocksDB as it happens and written once per micro-batch; checkpoints record
//! the offsets the state reflects; a restart restores state, held events and
//! the clock; and under a memory budget cold join keys leave memory and come
//! back from disk when a lookup needs them.
//!
//! Consistency rule: records and dimension changes are written ahead of
//! their checkpoint. On restore an event-stream record at or after its
//! partition's checkpointed offset is dropped (the source replays it), while
//! dimension records are kept (replaying an upsert is idempotent). A held
//! event is deleted only by the checkpoint of the epoch whose output released
//! it, so an undelivered emission is made again after a crash.

use std::sync::Arc;

use tracing::warn;

use super::{Engine, EngineError, GroupKind, Origin};
use crate::codec::{hash_key, Event};
use crate::config::Emission;
use crate::emit::HeldId;
use crate::join::{Mode, Table};
use crate::state::Location;
use crate::store::layout::{self, NEVER};
use crate::store::{Checkpoint, PipelineStore, Restored, StoreError, Target};

/// Staged changes after which the engine writes without waiting for a flush.
const WRITE_EVERY: usize = 4096;
/// Records between checks of the memory budget.
const BUDGET_CHECK_EVERY: u32 = 1024;
/// After eviction, hot state is at most this share of the budget.
const EVICT_TO: f64 = 0.8;

/// What a restore found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Records put back into memory.
    pub loaded: u64,
    /// Records left on disk (over the memory budget).
    pub on_disk: u64,
    /// Event-stream records dropped because their source replays them.
    pub replayed: u64,
    /// Held smart-emission events restored.
    pub held: u64,
}

/// The join key of a record key: `r | shard | len | key | suffix`.
fn split_record_key(k: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_be_bytes(k.get(2..6)?.try_into().ok()?) as usize;
    Some((k.get(6..6 + len)?, k.get(6 + len..)?))
}

impl Engine {
    /// What identifies this pipeline's state layout: topics, their columns
    /// and declared types, sources, join keys and the emission mode.
    pub fn fingerprint(&self, pipeline: &crate::config::Pipeline) -> String {
        let mut text = String::from("kaflowsql-state-v1");
        for t in &self.topics {
            text.push_str(&format!("|topic {} {:?}", t.schema.topic, t.schema.columns));
            if let Some(spec) = pipeline.sources.get(&t.schema.topic) {
                text.push_str(&format!(" {:?} {:?}", spec.timestamp, spec.columns));
            }
        }
        for (s, p) in self.sources.iter().zip(&self.plan.sources) {
            let kind = match s.table {
                Table::Unstored => "unstored",
                Table::Stream(_) => "stream",
                Table::Dimension(_) => "dimension",
            };
            text.push_str(&format!(
                "|source {} {} {:?} {kind}",
                p.alias, s.topic, s.index
            ));
        }
        let emission = match &self.emission {
            Emission::Immediate => "immediate",
            Emission::Smart { .. } => "smart",
        };
        format!("{}|{emission}", text)
    }

    /// Column family names: one per source that keeps state.
    pub fn stored_sources(&self) -> Vec<Option<String>> {
        self.sources
            .iter()
            .zip(&self.plan.sources)
            .map(|(s, p)| (!matches!(s.table, Table::Unstored)).then(|| p.alias.clone()))
            .collect()
    }

    /// Attaches durable state, restoring what it holds; `budget` bounds hot
    /// state in bytes. Returns the offsets the restored state reflects.
    pub fn attach_store(
        &mut self,
        store: PipelineStore,
        budget: Option<u64>,
    ) -> Result<(Restored, RestoreReport), EngineError> {
        self.store = Some(store);
        self.budget = budget;
        let restored = self.store_ref()?.restored()?;
        if let Some((watermark, times)) = &restored.clock {
            if let Err(why) = self
                .clock
                .restore(*watermark, times, super::wall_clock_ms())
            {
                warn!(reason = %why, "Restored event time refused.");
            }
        }
        let mut report = RestoreReport::default();
        for s in 0..self.sources.len() {
            self.restore_source(s, &restored, &mut report)?;
        }
        if matches!(self.emission, Emission::Smart { .. }) {
            self.restore_held(&restored, &mut report)?;
        }
        self.write_state()?;
        Ok((restored, report))
    }

    fn store_ref(&self) -> Result<&PipelineStore, StoreError> {
        self.store.as_ref().ok_or_else(no_store)
    }

    fn resume_of(&self, restored: &Restored, event: &Event) -> Option<i64> {
        let topic = self.topic_name(event.topic).to_string();
        restored.offsets.get(&(topic, event.partition)).copied()
    }

    /// Brings an event read from disk into the engine: its column types are
    /// observed again (types are learned per run).
    fn revive(&mut self, mut event: Event) -> Option<Arc<Event>> {
        let schema = &mut self.topics.get_mut(event.topic as usize)?.schema;
        match schema.observe(&mut event.values) {
            Ok(()) => Some(Arc::new(event)),
            Err(e) => {
                warn!(error = %e, topic = %schema.topic, "A stored record no longer fits its column types; dropped from state.");
                None
            }
        }
    }

    fn over_budget(&self, adding: u64) -> bool {
        self.budget
            .is_some_and(|b| self.state_memory().saturating_add(adding) > b)
    }

    /// Memory held by join state (entries and their overhead).
    pub fn state_memory(&self) -> u64 {
        self.sources
            .iter()
            .map(|s| match &s.table {
                Table::Unstored => 0,
                Table::Stream(t) => t.stats().memory(),
                Table::Dimension(t) => t.stats().memory(),
            })
            .sum()
    }

    fn restore_source(
        &mut self,
        s: usize,
        restored: &Restored,
        report: &mut RestoreReport,
    ) -> Result<(), EngineError> {
        if matches!(self.sources[s].table, Table::Unstored) {
            return Ok(());
        }
        let target = Target::Source(s);
        let mut stale: Vec<Vec<u8>> = Vec::new();
        // The store is taken out while its records stream into the tables.
        let store = self.store.take().ok_or_else(no_store)?;
        let scanned = store.scan(target, &[layout::RECORD], |k, v| {
            let Some((key, suffix)) = split_record_key(k) else {
                return Ok(());
            };
            let (expire_at, event) = store.decode(target, v)?;
            let is_stream = matches!(self.sources[s].table, Table::Stream(_));
            if is_stream
                && self
                    .resume_of(restored, &event)
                    .is_none_or(|r| event.offset >= r)
            {
                stale.push(k.to_vec());
                report.replayed += 1;
                return Ok(());
            }
            if expire_at < self.clock.watermark() {
                return Ok(());
            }
            let size = event.size_bytes() as u64 + crate::state::ENTRY_OVERHEAD;
            let fits = !self.over_budget(size);
            let hash = hash_key(key);
            let Some(event) = self.revive(event) else {
                return Ok(());
            };
            match &mut self.sources[s].table {
                // A key is all in memory or all on disk: a bucket in memory
                // is completed even over the budget.
                Table::Stream(t) => {
                    self.pins.pin(event.topic, event.partition, event.offset);
                    if t.has(hash, key) || (fits && !t.spilled()) {
                        t.insert(hash, key, event);
                        report.loaded += 1;
                    } else {
                        t.track(hash, &event);
                        t.mark_spilled();
                        report.on_disk += 1;
                    }
                }
                Table::Dimension(t) => {
                    if t.has(hash, key) || (fits && !t.spilled()) {
                        t.upsert(suffix, hash, key, event);
                        report.loaded += 1;
                    } else {
                        t.mark_spilled();
                        report.on_disk += 1;
                    }
                }
                Table::Unstored => {}
            }
            Ok(())
        });
        self.store = Some(store);
        scanned?;
        if let Some(store) = self.store.as_mut() {
            for k in stale {
                store.delete(target, |b| b.extend_from_slice(&k));
            }
        }
        // Before anything reads this source back from disk.
        if let Some(store) = self.store.as_mut() {
            store.write_and_wait()?;
        }
        Ok(())
    }

    fn restore_held(
        &mut self,
        restored: &Restored,
        report: &mut RestoreReport,
    ) -> Result<(), EngineError> {
        let Emission::Smart { timeout_ms, .. } = self.emission else {
            return Ok(());
        };
        let mut held: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        self.store_ref()?
            .scan(Target::Meta, &[layout::HELD], |k, v| {
                held.push((k.to_vec(), v.to_vec()));
                Ok(())
            })?;
        for (k, v) in held {
            let (_, event) = self.store_ref()?.decode(Target::Meta, &v)?;
            if self
                .resume_of(restored, &event)
                .is_none_or(|r| event.offset >= r)
            {
                if let Some(store) = self.store.as_mut() {
                    store.delete(Target::Meta, |b| b.extend_from_slice(&k));
                }
                continue;
            }
            let Some(event) = self.revive(event) else {
                continue;
            };
            let id = self
                .held
                .hold(event.clone(), event.timestamp.saturating_add(timeout_ms));
            self.pins.pin(event.topic, event.partition, event.offset);
            self.written_held.insert(id);
            let origin = Origin::of(&event);
            // Only to register what it waits on: the rows are not evaluated.
            self.enumerate_group(
                GroupKind::Smart(id),
                &event,
                None,
                Mode::Normal,
                origin,
                true,
            );
            report.held += 1;
        }
        self.groups.clear();
        self.rows.clear();
        Ok(())
    }

    /// Stages a new event-stream record of source `s` under `key`.
    pub(super) fn persist_stream(&mut self, s: usize, hash: u64, key: &[u8], event: &Event) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        let Table::Stream(t) = &self.sources[s].table else {
            return;
        };
        let at = t.expires_at(event.timestamp).unwrap_or(NEVER);
        let origin = (event.topic, event.partition, event.offset);
        store.put(
            Target::Source(s),
            |b| layout::stream_key(hash, key, origin, b),
            |b| layout::encode_event(event, at, b),
        );
    }

    /// Stages a dimension upsert (`event` Some) or delete of `primary`;
    /// `old` is where the record it replaces was indexed.
    pub(super) fn persist_dimension(
        &mut self,
        s: usize,
        primary: &[u8],
        index: Option<(u64, &[u8], &Event)>,
        old: Option<Location>,
    ) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        let Table::Dimension(t) = &self.sources[s].table else {
            return;
        };
        let target = Target::Source(s);
        if let Some((old_hash, old_key)) = &old {
            let moved = index.is_none_or(|(_, key, _)| key != &old_key[..]);
            if moved {
                store.delete(target, |b| {
                    layout::dimension_key(*old_hash, old_key, primary, b)
                });
            }
        }
        match index {
            Some((hash, key, event)) => {
                let at = t
                    .ttl_ms()
                    .map_or(NEVER, |ttl| event.timestamp.saturating_add(ttl));
                store.put(
                    target,
                    |b| layout::dimension_key(hash, key, primary, b),
                    |b| layout::encode_event(event, at, b),
                );
                if primary != key {
                    store.put(
                        target,
                        |b| layout::primary_key(primary, b),
                        |b| {
                            b.extend_from_slice(&at.to_be_bytes());
                            b.extend_from_slice(key);
                        },
                    );
                } else if old.as_ref().is_some_and(|(_, k)| &k[..] != key) {
                    // Indexed under its own key again: no index entry needed.
                    store.delete(target, |b| layout::primary_key(primary, b));
                }
            }
            None => store.delete(target, |b| layout::primary_key(primary, b)),
        }
    }

    /// Notes a new held smart-emission event; it is written with the next
    /// state write if it is still held then (most are released within their
    /// micro-batch and never reach the disk).
    pub(super) fn persist_held(&mut self, id: HeldId) {
        if self.store.is_some() {
            self.unwritten_held.push(id);
        }
    }

    /// Stages the held events noted since the last write that are still held.
    fn stage_held(&mut self) {
        let Some(store) = self.store.as_mut() else {
            self.unwritten_held.clear();
            return;
        };
        for id in self.unwritten_held.drain(..) {
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
            self.written_held.insert(id);
        }
    }

    /// Notes that held event `id` was released: a stored copy goes with the
    /// checkpoint of the epoch that carries the release's output.
    pub(super) fn persist_release(&mut self, id: HeldId, event: &Event) {
        if self.written_held.remove(&id) {
            self.released
                .push((event.topic, event.partition, event.offset));
        }
    }

    /// Brings join key `key` of source `s` back into memory if it left it.
    pub(super) fn make_resident(
        &mut self,
        s: usize,
        hash: u64,
        key: &[u8],
    ) -> Result<(), StoreError> {
        let resident = match &self.sources[s].table {
            Table::Stream(t) => t.resident(hash, key),
            Table::Dimension(t) => t.resident(hash, key),
            Table::Unstored => true,
        };
        if resident || self.store.is_none() {
            return Ok(());
        }
        // No staged change can concern this key: keys leave memory only right
        // after a write, and a key is brought back before it is changed.
        let target = Target::Source(s);
        let mut found = Vec::new();
        let mut prefix = Vec::with_capacity(key.len() + 6);
        layout::record_prefix(hash, key, &mut prefix);
        let watermark = self.clock.watermark();
        let store = self.store_ref()?;
        store.scan(target, &prefix, |_, v| {
            let (at, event) = store.decode(target, v)?;
            if at >= watermark {
                found.push(event);
            }
            Ok(())
        })?;
        let events: Vec<Arc<Event>> = found.into_iter().filter_map(|e| self.revive(e)).collect();
        match &mut self.sources[s].table {
            Table::Stream(t) => t.load(hash, key, events),
            Table::Dimension(t) => t.load(hash, key, events),
            Table::Unstored => {}
        }
        Ok(())
    }

    /// Before a dimension upsert or delete of `primary` on a table that
    /// spilled: brings the record it replaces into memory.
    pub(super) fn make_primary_resident(
        &mut self,
        s: usize,
        primary: &[u8],
    ) -> Result<(), StoreError> {
        let Table::Dimension(t) = &self.sources[s].table else {
            return Ok(());
        };
        if !t.spilled() || t.knows(primary) || self.store.is_none() {
            return Ok(());
        }
        let mut k = Vec::with_capacity(primary.len() + 1);
        layout::primary_key(primary, &mut k);
        // Without an index entry the join key is the primary key itself.
        let index = match self.store_ref()?.get(Target::Source(s), &k)? {
            Some(v) => v.get(8..).map(<[u8]>::to_vec).unwrap_or_default(),
            None => primary.to_vec(),
        };
        self.make_resident(s, hash_key(&index), &index)
    }

    fn write_state_only(&mut self) -> Result<(), StoreError> {
        match self.store.as_mut() {
            Some(store) => store.write(),
            None => Ok(()),
        }
    }

    /// Writes staged state changes when enough have gathered, and at least
    /// every [`BUDGET_CHECK_EVERY`] records under a budget (which it then enforces).
    pub(super) fn maybe_write_state(&mut self) -> Result<(), EngineError> {
        self.since_write += 1;
        let due = self
            .store
            .as_ref()
            .is_some_and(|s| s.staged() >= WRITE_EVERY)
            || (self.budget.is_some() && self.since_write >= BUDGET_CHECK_EVERY);
        if due {
            self.write_state()?;
        }
        Ok(())
    }

    /// Writes staged state changes (one batch), then moves cold keys out of
    /// memory while hot state is over its budget.
    pub fn write_state(&mut self) -> Result<(), EngineError> {
        self.since_write = 0;
        self.stage_held();
        self.write_state_only()?;
        let Some(budget) = self.budget else {
            return Ok(());
        };
        let total = self.state_memory();
        if total <= budget {
            return Ok(());
        }
        // Keys leave memory only once their changes are in RocksDB, so a later
        // read of an absent key never needs to wait for the writer.
        if let Some(store) = self.store.as_mut() {
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

    /// What a checkpoint of the records processed so far holds: `offsets`
    /// (next offset per topic and partition), the clock, and the held events
    /// released since the last one.
    pub fn checkpoint(
        &mut self,
        offsets: std::collections::HashMap<(String, i32), i64>,
    ) -> Checkpoint {
        Checkpoint {
            offsets,
            watermark: self.clock.snapshot().0,
            stream_time: self.clock.snapshot().1,
            released: std::mem::take(&mut self.released),
        }
    }

    /// Makes `checkpoint` durable (after its epoch's outputs were delivered).
    pub fn commit_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<(), EngineError> {
        if let Some(store) = self.store.as_mut() {
            store.checkpoint(checkpoint)?;
        }
        Ok(())
    }

    /// Whether durable state is attached.
    pub fn is_durable(&self) -> bool {
        self.store.is_some()
    }
}

fn no_store() -> StoreError {
    StoreError::Open {
        path: Default::default(),
        reason: "no state store attached (this is a bug)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_split_into_join_key_and_suffix() {
        let mut k = Vec::new();
        layout::dimension_key(9, b"join", b"primary", &mut k);
        assert_eq!(split_record_key(&k), Some((&b"join"[..], &b"primary"[..])));
        assert_eq!(split_record_key(b"r"), None);
    }
}
