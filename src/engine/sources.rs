//! The sources of the query at run time: each source's state table and its
//! durable copy. A table reads its records back from RocksDB itself when a
//! key it needs left memory ([`SourceState::fault_in`]), and stages every
//! change for RocksDB as it makes it; every read returns `Result`, so a
//! storage error stops the record that needed it, never a row built
//! without it.

use std::sync::Arc;

use super::TopicId;
use crate::codec::{hash_key, Event};
use crate::sql::Role;
use crate::state::{DimensionTable, Location, StreamTable};
use crate::store::layout::{self, NEVER};
use crate::store::{PipelineStore, StoreError, Target};

/// The state table behind one source of the query.
#[derive(Debug)]
pub enum Table {
    /// The driving stream when nothing needs to find it later.
    Unstored,
    /// An event stream.
    Stream(StreamTable),
    /// A dimension.
    Dimension(DimensionTable),
}

/// One source of the query at run time.
#[derive(Debug)]
pub struct SourceState {
    /// Its topic.
    pub topic: TopicId,
    /// Stream or dimension.
    pub role: Role,
    /// For each query column of this source, the column in the topic's events.
    pub columns: Vec<usize>,
    /// Topic columns this source's state is indexed by (its join key).
    pub index: Vec<usize>,
    /// Its records.
    pub table: Table,
}

/// Brings a record read back from disk into the run (its column types are
/// observed again: types are learned per run); None drops it.
pub(super) type Revive<'a> = &'a mut dyn FnMut(Event) -> Option<Arc<Event>>;

/// What a table needs to read records back from disk: the store, how a
/// record comes back to life, and the watermark (expired records stay on disk).
pub(super) struct Disk<'a> {
    pub(super) store: &'a PipelineStore,
    pub(super) revive: Revive<'a>,
    pub(super) watermark: i64,
}

impl super::Engine {
    /// Brings join key `key` of source `s` back into memory if it left it
    /// (durable state only); records expired at `watermark` stay on disk.
    pub(super) fn fault_in(
        &mut self,
        s: usize,
        hash: u64,
        key: &[u8],
        watermark: i64,
    ) -> Result<(), StoreError> {
        self.with_disk(watermark, |sources, disk| {
            sources[s].fault_in(s, hash, key, disk)
        })
    }

    /// Brings the record that dimension record `primary` of source `s`
    /// replaces back into memory if it left it (durable state only).
    pub(super) fn fault_in_primary(&mut self, s: usize, primary: &[u8]) -> Result<(), StoreError> {
        let watermark = self.clock.low();
        self.with_disk(watermark, |sources, disk| {
            sources[s].fault_in_primary(s, primary, disk)
        })
    }

    /// Runs `read` over the tables with the disk behind them (nothing
    /// without durable state).
    fn with_disk(
        &mut self,
        watermark: i64,
        read: impl FnOnce(&mut [SourceState], &mut Disk<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let Some(store) = self.durable.store.as_ref() else {
            return Ok(());
        };
        let topics = &mut self.topics;
        let mut revive = |e| topics.revive(e);
        let mut disk = Disk {
            store,
            revive: &mut revive,
            watermark,
        };
        read(&mut self.sources, &mut disk)
    }
}

impl SourceState {
    /// Every record under `key`, live or not, with the TTL that decides
    /// which of them are live.
    pub(super) fn candidates(&self, hash: u64, key: &[u8]) -> (&[Arc<Event>], Option<i64>) {
        match &self.table {
            Table::Unstored => (&[], None),
            Table::Stream(t) => (t.events(hash, key), t.ttl_ms()),
            Table::Dimension(t) => (t.events(hash, key), t.ttl_ms()),
        }
    }

    /// Whether memory knows every record of `key` (false only for a key
    /// that left memory for disk).
    pub(super) fn resident(&self, hash: u64, key: &[u8]) -> bool {
        match &self.table {
            Table::Unstored => true,
            Table::Stream(t) => t.resident(hash, key),
            Table::Dimension(t) => t.resident(hash, key),
        }
    }

    /// Brings join key `key` of source `s` back into memory if it left it.
    ///
    /// No staged change can concern such a key: keys leave memory only right
    /// after a write, and a key is brought back before it is changed.
    pub(super) fn fault_in(
        &mut self,
        s: usize,
        hash: u64,
        key: &[u8],
        disk: &mut Disk<'_>,
    ) -> Result<(), StoreError> {
        if self.resident(hash, key) {
            return Ok(());
        }
        let target = Target::Source(s);
        let mut found = Vec::new();
        let mut prefix = Vec::with_capacity(key.len() + 6);
        layout::record_prefix(hash, key, &mut prefix);
        let store = disk.store;
        store.scan(target, &prefix, |_, v| {
            let (at, event) = store.decode(target, v)?;
            if at >= disk.watermark {
                found.push(event);
            }
            Ok(())
        })?;
        let events: Vec<Arc<Event>> = found.into_iter().filter_map(|e| (disk.revive)(e)).collect();
        match &mut self.table {
            Table::Stream(t) => t.load(hash, key, events),
            Table::Dimension(t) => t.load(hash, key, events),
            Table::Unstored => {}
        }
        Ok(())
    }

    /// Before a dimension upsert or delete of `primary` on a table that
    /// spilled: brings the record it replaces into memory.
    pub(super) fn fault_in_primary(
        &mut self,
        s: usize,
        primary: &[u8],
        disk: &mut Disk<'_>,
    ) -> Result<(), StoreError> {
        let Table::Dimension(t) = &self.table else {
            return Ok(());
        };
        if !t.spilled() || t.knows(primary) {
            return Ok(());
        }
        let mut k = Vec::with_capacity(primary.len() + 1);
        layout::primary_key(primary, &mut k);
        // Without an index entry the join key is the primary key itself.
        let index = match disk.store.get(Target::Source(s), &k)? {
            Some(v) => v.get(8..).map(<[u8]>::to_vec).unwrap_or_default(),
            None => primary.to_vec(),
        };
        self.fault_in(s, hash_key(&index), &index, disk)
    }

    /// Stages a new event-stream record of source `s` under `key`.
    pub(super) fn persist_stream(
        &self,
        s: usize,
        hash: u64,
        key: &[u8],
        event: &Event,
        store: &mut PipelineStore,
    ) {
        let Table::Stream(t) = &self.table else {
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

    /// Stages a dimension upsert (`index` Some: the record's join key hash,
    /// join key and event) or delete of `primary`; `old` is where the record
    /// it replaces was indexed.
    pub(super) fn persist_dimension(
        &self,
        s: usize,
        primary: &[u8],
        index: Option<(u64, &[u8], &Event)>,
        old: Option<Location>,
        store: &mut PipelineStore,
    ) {
        let Table::Dimension(t) = &self.table else {
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
        let Some((hash, key, event)) = index else {
            store.delete(target, |b| layout::primary_key(primary, b));
            return;
        };
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

    /// Memory held by this source's state (entries and their overhead).
    pub(super) fn memory(&self) -> u64 {
        match &self.table {
            Table::Unstored => 0,
            Table::Stream(t) => t.stats().memory(),
            Table::Dimension(t) => t.stats().memory(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{canonical_key, Value};

    use crate::state::test_event as event;

    fn stream() -> SourceState {
        SourceState {
            topic: 0,
            role: Role::Stream,
            columns: vec![0],
            index: vec![0],
            table: Table::Stream(StreamTable::new(
                Some(1_000),
                crate::state::KeyColumns::new(&[0]),
            )),
        }
    }

    #[test]
    fn candidates_are_every_record_of_the_key_with_the_ttl() {
        let mut s = stream();
        let mut k = Vec::new();
        canonical_key(&[Value::Str("a".into())], &mut k);
        let h = hash_key(&k);
        if let Table::Stream(t) = &mut s.table {
            t.insert(h, &k, event(1, "a"));
            t.insert(h, &k, event(2, "a"));
        }
        let (events, ttl) = s.candidates(h, &k);
        assert_eq!(events.iter().map(|e| e.offset).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(ttl, Some(1_000));
        assert!(s.resident(h, &k), "nothing spilled: every key is resident");
        assert!(s.memory() > 0);
        let none = SourceState {
            table: Table::Unstored,
            ..stream()
        };
        assert!(none.candidates(h, &k).0.is_empty());
        assert_eq!(none.memory(), 0);
    }
}
