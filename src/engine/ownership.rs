//! What state this instance owns: restored from RocksDB when the pipeline
//! starts, dropped when partitions are revoked.
//!
//! Restore rule: an event-stream record at or after its partition's
//! checkpointed offset is dropped (the source replays it), while dimension
//! records are kept (replaying an upsert is idempotent); held smart events
//! come back with what they wait on.
//!
//! Revoke rule (group mode): the records and held events of a partition
//! this instance no longer owns leave memory and disk, with the partition's
//! checkpointed offset, in one write. A partition assigned back is read
//! again from its committed offset into empty state, so no record is held
//! (and joined) twice; what is re-read is the at-least-once replay.

use tracing::warn;

use super::durable::no_store;
use super::join::{GroupKind, Mode};
use super::sources::Table;
use super::TopicId;
use super::{Engine, EngineError, Origin};
use crate::codec::{hash_key, Event};
use crate::config::Emission;
use crate::store::layout;
use crate::store::{PipelineStore, Restored, StoreError, Target};

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
        for t in &self.topics.list {
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
        self.durable.store = Some(store);
        self.durable.budget = budget;
        let restored = self.store_ref()?.restored()?;
        if let Some((_, times)) = &restored.clock {
            if let Err(why) = self.clock.restore(times, super::clock::wall_clock_ms()) {
                warn!(reason = %why, "Restored event time refused.");
            }
        }
        let mut report = RestoreReport::default();
        for s in 0..self.sources.len() {
            self.restore_source(s, &restored, &mut report)?;
        }
        if matches!(self.emission, Emission::Smart { .. }) {
            self.restore_held(&restored, &mut report)?;
            // Held events whose timeout had passed, their verdict not
            // delivered before the stop: decided with the next micro-batch,
            // not at the partition's next record (it may never come).
            for (p, wm) in self.clock.watermarks() {
                self.on_watermark(p, wm)?;
            }
        }
        self.write_state()?;
        Ok((restored, report))
    }

    fn store_ref(&self) -> Result<&PipelineStore, StoreError> {
        self.durable.store.as_ref().ok_or_else(no_store)
    }

    fn resume_of(&self, restored: &Restored, event: &Event) -> Option<i64> {
        let topic = self.topics.name(event.topic).to_string();
        restored.offsets.get(&(topic, event.partition)).copied()
    }

    fn over_budget(&self, adding: u64) -> bool {
        self.durable
            .budget
            .is_some_and(|b| self.state_memory().saturating_add(adding) > b)
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
        let store = self.durable.store.take().ok_or_else(no_store)?;
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
            let watermark = if is_stream {
                self.clock.watermark(event.partition)
            } else {
                self.clock.low()
            };
            if expire_at < watermark {
                return Ok(());
            }
            let size = event.size_bytes() as u64 + crate::state::ENTRY_OVERHEAD;
            let fits = !self.over_budget(size);
            let hash = hash_key(key);
            let Some(event) = self.topics.revive(event) else {
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
        self.durable.store = Some(store);
        scanned?;
        if let Some(store) = self.durable.store.as_mut() {
            for k in stale {
                store.delete(target, |b| b.extend_from_slice(&k));
            }
        }
        // Before anything reads this source back from disk.
        if let Some(store) = self.durable.store.as_mut() {
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
                if let Some(store) = self.durable.store.as_mut() {
                    store.delete(Target::Meta, |b| b.extend_from_slice(&k));
                }
                continue;
            }
            let Some(event) = self.topics.revive(event) else {
                continue;
            };
            let id = self
                .held
                .hold(event.clone(), event.timestamp.saturating_add(timeout_ms));
            self.pins.pin(event.topic, event.partition, event.offset);
            self.durable.written_held.insert(id);
            let origin = Origin::of(&event);
            // Only to register what it waits on: the rows are not evaluated.
            self.enumerate_group(
                GroupKind::Smart(id),
                &event,
                None,
                Mode::Normal,
                origin,
                true,
            )?;
            report.held += 1;
        }
        self.batch.groups.clear();
        self.batch.rows.clear();
        Ok(())
    }

    /// Drops the state of event-stream partitions this instance no longer
    /// owns (`partitions`, with their names): records and held events leave
    /// memory, their pins go, and their stored copies and checkpointed
    /// offsets are deleted in one write. Returns the records dropped from memory.
    pub fn revoke(&mut self, partitions: &[((TopicId, i32), &str)]) -> Result<u64, EngineError> {
        if partitions.is_empty() {
            return Ok(0);
        }
        let gone = |topic: TopicId, partition: i32| {
            partitions
                .iter()
                .any(|((t, p), _)| *t == topic && *p == partition)
        };
        let mut dropped = 0;
        for s in 0..self.sources.len() {
            if let Table::Stream(t) = &mut self.sources[s].table {
                dropped += t.drop_where(|(topic, p, _)| gone(topic, p));
            } else {
                continue;
            }
            if let Some(store) = self.durable.store.as_mut() {
                drop_stored(store, Target::Source(s), &gone)?;
            }
        }
        let mut ids = Vec::new();
        self.held.select(|e| gone(e.topic, e.partition), &mut ids);
        for id in ids {
            if let Some(h) = self.held.release(id) {
                let e = &h.event;
                if self.durable.written_held.remove(&id) {
                    if let Some(store) = self.durable.store.as_mut() {
                        let origin = (e.topic, e.partition, e.offset);
                        store.delete(Target::Meta, |b| layout::held_key(origin, b));
                    }
                }
            }
        }
        for &((t, p), name) in partitions {
            self.pins.forget(t, p);
            self.clock.forget(t, p);
            if let Some(store) = self.durable.store.as_mut() {
                store.forget_offset(name, p);
            }
        }
        if let Some(store) = self.durable.store.as_mut() {
            store.write_and_wait()?;
        }
        Ok(dropped)
    }
}

/// Stages the deletion of every stored record of `target` whose origin
/// `gone` says. A full scan of the source: rebalances
/// are rare, and the join key (the key's prefix) says nothing of the partition.
fn drop_stored(
    store: &mut PipelineStore,
    target: Target,
    gone: &impl Fn(TopicId, i32) -> bool,
) -> Result<(), StoreError> {
    let mut keys = Vec::new();
    store.scan(target, &[layout::RECORD], |k, _| {
        if let Some((topic, p, _)) = layout::stream_origin(k) {
            if gone(topic, p) {
                keys.push(k.to_vec());
            }
        }
        Ok(())
    })?;
    for k in &keys {
        store.delete(target, |b| b.extend_from_slice(k));
    }
    Ok(())
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
