//! State of an event stream: every record for its TTL, by join key.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use super::{is_live, new_shards, shard_of, KeyColumns, Shard, ShardStats, Spill};
use crate::codec::Event;

/// Where a record came from: topic index, partition, offset.
pub type Origin = (u16, i32, i64);

/// Records of one event-stream source, by join key, in 256 shards.
#[derive(Debug)]
pub struct StreamTable {
    shards: Vec<Shard>,
    /// The columns of the join key records are filed under.
    index: KeyColumns,
    ttl_ms: Option<i64>,
    /// (expiry time, key hash, origin), earliest first: one entry per record
    /// held, in memory or spilled, so each expiry is counted (and its offset
    /// released) exactly once.
    expiry: BinaryHeap<Reverse<(i64, u64, Origin)>>,
    spill: Spill,
}

impl StreamTable {
    /// An empty table whose records live `ttl_ms` (None: forever), filed
    /// under the key of their `index` columns.
    pub fn new(ttl_ms: Option<i64>, index: KeyColumns) -> Self {
        Self {
            shards: new_shards(),
            index,
            ttl_ms,
            expiry: BinaryHeap::new(),
            spill: Spill::default(),
        }
    }

    /// The TTL in milliseconds.
    pub fn ttl_ms(&self) -> Option<i64> {
        self.ttl_ms
    }

    /// When a record with event time `timestamp` expires (None: never).
    pub fn expires_at(&self, timestamp: i64) -> Option<i64> {
        self.ttl_ms.map(|ttl| timestamp.saturating_add(ttl))
    }

    /// Adds a record under `key` (canonical bytes) with hash `hash`.
    pub fn insert(&mut self, hash: u64, key: &[u8], event: Arc<Event>) {
        self.track(hash, &event);
        let shard = &mut self.shards[shard_of(hash)];
        shard.stats.add(&event);
        shard.push(hash, key, event, &self.index);
    }

    /// Schedules the expiry of a record that is held on disk only.
    pub fn track(&mut self, hash: u64, event: &Event) {
        if let Some(at) = self.expires_at(event.timestamp) {
            self.expiry.push(Reverse((
                at,
                hash,
                (event.topic, event.partition, event.offset),
            )));
        }
    }

    /// Whether memory knows every live record of `key` (always, unless the
    /// table spilled and the key left memory).
    pub fn resident(&self, hash: u64, key: &[u8]) -> bool {
        !self.spill.spilled || self.shards[shard_of(hash)].resident(hash, key, &self.index)
    }

    /// Whether `key` has a bucket in memory (possibly empty).
    pub fn has(&self, hash: u64, key: &[u8]) -> bool {
        self.shards[shard_of(hash)].resident(hash, key, &self.index)
    }

    /// Whether some records are on disk only.
    pub fn spilled(&self) -> bool {
        self.spill.spilled
    }

    /// Puts the records of `key` read back from disk into memory (their
    /// expiry is already tracked).
    pub fn load(&mut self, hash: u64, key: &[u8], events: Vec<Arc<Event>>) {
        let shard = &mut self.shards[shard_of(hash)];
        if events.is_empty() {
            shard.touch(hash, key, &self.index);
        }
        for e in events {
            shard.stats.add(&e);
            shard.push(hash, key, e, &self.index);
        }
    }

    /// Marks the table as holding records on disk only (a restore that did
    /// not load everything into memory).
    pub fn mark_spilled(&mut self) {
        self.spill.spilled = true;
    }

    /// Moves cold keys out of memory until it holds at most `target` bytes;
    /// returns the bytes freed. Their records stay on disk.
    pub fn evict(&mut self, target: u64) -> u64 {
        let resident = self.stats().memory();
        self.spill
            .evict(&mut self.shards, &self.index, resident, target, |_, _| {})
    }

    /// Every record under `key`, live or not (callers filter with [`super::is_live`]).
    pub fn events(&self, hash: u64, key: &[u8]) -> &[Arc<Event>] {
        self.shards[shard_of(hash)]
            .bucket(hash, key, &self.index)
            .map_or(&[], |b| b.events())
    }

    /// Live records under `key`, in arrival order.
    pub fn lookup<'a>(
        &'a self,
        hash: u64,
        key: &[u8],
        watermark: i64,
    ) -> impl Iterator<Item = &'a Arc<Event>> + 'a {
        let ttl = self.ttl_ms;
        self.shards[shard_of(hash)]
            .bucket(hash, key, &self.index)
            .into_iter()
            .flat_map(|b| b.events().iter())
            .filter(move |e| is_live(e.timestamp, ttl, watermark))
    }

    /// Removes records whose TTL has passed at `watermark`; `on_evict` sees
    /// the origin of each. Returns how many expired.
    pub fn expire(&mut self, watermark: i64, mut on_evict: impl FnMut(Origin)) -> u64 {
        let mut evicted = 0;
        let ttl = self.ttl_ms;
        let keep_empty = self.spill.spilled;
        while let Some(Reverse((at, hash, origin))) = self.expiry.peek().copied() {
            if at >= watermark {
                break;
            }
            self.expiry.pop();
            evicted += 1;
            on_evict(origin);
            let shard = &mut self.shards[shard_of(hash)];
            shard.stats.evictions += 1;
            let stats = &mut shard.stats;
            // The expiry entry names the key by its hash alone.
            let index = &self.index;
            if let Some(mut entry) = Shard::by_hash(&mut shard.buckets, hash, index) {
                let remove = entry.get_mut().retain(index, keep_empty, |e| {
                    let live = is_live(e.timestamp, ttl, watermark);
                    if !live {
                        stats.remove(e);
                    }
                    live
                });
                if remove {
                    entry.remove();
                }
            }
        }
        evicted
    }

    /// Drops every record whose origin `gone` says (in memory, and the
    /// expiry entries of those on disk only); returns how many left memory.
    pub fn drop_where(&mut self, gone: impl Fn(Origin) -> bool) -> u64 {
        let mut dropped = 0;
        let keep_empty = self.spill.spilled;
        let origin = |e: &Event| (e.topic, e.partition, e.offset);
        let index = &self.index;
        for shard in &mut self.shards {
            let stats = &mut shard.stats;
            shard.buckets.retain(|b| {
                !b.retain(index, keep_empty, |e| {
                    let drop = gone(origin(e));
                    if drop {
                        stats.remove(e);
                        dropped += 1;
                    }
                    !drop
                })
            });
        }
        let expiry = std::mem::take(&mut self.expiry);
        self.expiry = expiry
            .into_iter()
            .filter(|Reverse((_, _, o))| !gone(*o))
            .collect();
        dropped
    }

    /// Counters of every shard.
    pub fn shard_stats(&self) -> impl Iterator<Item = &ShardStats> {
        self.shards.iter().map(|s| &s.stats)
    }

    /// Counters summed over shards.
    pub fn stats(&self) -> ShardStats {
        let mut total = ShardStats::default();
        for s in self.shard_stats() {
            total.merge(s);
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{canonical_key, hash_key, Value};

    use crate::state::test_event as event;

    fn key(id: &str) -> (u64, Vec<u8>) {
        let mut buf = Vec::new();
        canonical_key(&[Value::Str(id.into())], &mut buf);
        (hash_key(&buf), buf)
    }

    #[test]
    fn keeps_all_records_per_key_in_order_and_shares_them() {
        let mut t = StreamTable::new(Some(100), KeyColumns::new(&[0]));
        let (h, k) = key("a");
        let first = event(10, "a");
        t.insert(h, &k, first.clone());
        t.insert(h, &k, event(20, "a"));
        let found: Vec<_> = t.lookup(h, &k, 20).map(|e| e.offset).collect();
        assert_eq!(found, vec![10, 20]);
        assert_eq!(
            Arc::strong_count(&first),
            2,
            "state holds a reference, not a copy"
        );
        assert_eq!(t.stats().entries, 2);
    }

    #[test]
    fn records_of_a_dropped_partition_leave_memory_and_expiry() {
        let mut t = StreamTable::new(Some(100), KeyColumns::new(&[0]));
        let (h, k) = key("a");
        let other = Event {
            topic: 0,
            partition: 1,
            offset: 20,
            timestamp: 20,
            key: None,
            values: vec![Value::Str("a".into())].into_boxed_slice(),
        };
        t.insert(h, &k, event(10, "a"));
        t.insert(h, &k, Arc::new(other));
        assert_eq!(t.drop_where(|(_, p, _)| p == 0), 1);
        let left: Vec<_> = t.lookup(h, &k, 0).map(|e| e.partition).collect();
        assert_eq!(left, vec![1]);
        assert_eq!(t.stats().entries, 1);
        assert_eq!(
            t.expire(1_000, |_| {}),
            1,
            "one expiry left: the dropped record's went with it"
        );
    }

    #[test]
    fn expires_by_event_time_and_counts_evictions() {
        let mut t = StreamTable::new(Some(100), KeyColumns::new(&[0]));
        let (h, k) = key("a");
        t.insert(h, &k, event(10, "a"));
        t.insert(h, &k, event(50, "a"));
        assert_eq!(
            t.lookup(h, &k, 120).count(),
            1,
            "expired records are invisible at once"
        );
        assert_eq!(t.expire(120, |_| {}), 1);
        assert_eq!(t.expire(200, |_| {}), 1);
        let stats = t.stats();
        assert_eq!((stats.entries, stats.bytes, stats.evictions), (0, 0, 2));
        assert_eq!(t.lookup(h, &k, 200).count(), 0);
    }
}
