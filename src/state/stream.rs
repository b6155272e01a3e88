//! State of an event stream: every record for its TTL, by join key.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use super::{is_live, new_shards, shard_of, Shard, ShardStats};
use crate::codec::Event;

/// Records of one event-stream source, by join key, in 256 shards.
#[derive(Debug)]
pub struct StreamTable {
    shards: Vec<Shard>,
    ttl_ms: Option<i64>,
    /// (expiry time, key hash), earliest first, for sweeping.
    expiry: BinaryHeap<Reverse<(i64, u64)>>,
}

impl StreamTable {
    /// An empty table whose records live `ttl_ms` (None: forever).
    pub fn new(ttl_ms: Option<i64>) -> Self {
        Self {
            shards: new_shards(),
            ttl_ms,
            expiry: BinaryHeap::new(),
        }
    }

    /// The TTL in milliseconds.
    pub fn ttl_ms(&self) -> Option<i64> {
        self.ttl_ms
    }

    /// Adds a record under `key` (canonical bytes) with hash `hash`.
    pub fn insert(&mut self, hash: u64, key: &[u8], event: Arc<Event>) {
        let shard = &mut self.shards[shard_of(hash)];
        shard.stats.add(&event);
        if let Some(ttl) = self.ttl_ms {
            self.expiry
                .push(Reverse((event.timestamp.saturating_add(ttl), hash)));
        }
        shard.bucket_mut(hash, key).events.push(event);
    }

    /// Every record under `key`, live or not (callers filter with [`super::is_live`]).
    pub fn events(&self, hash: u64, key: &[u8]) -> &[Arc<Event>] {
        self.shards[shard_of(hash)]
            .bucket(hash, key)
            .map_or(&[], |b| b.events.as_slice())
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
            .bucket(hash, key)
            .into_iter()
            .flat_map(|b| b.events.iter())
            .filter(move |e| is_live(e.timestamp, ttl, watermark))
    }

    /// Removes records whose TTL has passed at `watermark`; returns how many.
    pub fn expire(&mut self, watermark: i64, mut on_evict: impl FnMut(&Arc<Event>)) -> u64 {
        let mut evicted = 0;
        let ttl = self.ttl_ms;
        while let Some(Reverse((at, hash))) = self.expiry.peek().copied() {
            if at >= watermark {
                break;
            }
            self.expiry.pop();
            let shard = &mut self.shards[shard_of(hash)];
            let mut emptied = None;
            if let Some(bucket) = shard.buckets.find_mut(hash, |b| b.hash == hash) {
                let stats = &mut shard.stats;
                bucket.events.retain(|e| {
                    let live = is_live(e.timestamp, ttl, watermark);
                    if !live {
                        stats.remove(e);
                        stats.evictions += 1;
                        evicted += 1;
                        on_evict(e);
                    }
                    live
                });
                if bucket.events.is_empty() {
                    emptied = Some(bucket.key.clone());
                }
            }
            if let Some(key) = emptied {
                shard.remove_if_empty(hash, &key);
            }
        }
        evicted
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

    fn event(ts: i64, id: &str) -> Arc<Event> {
        Arc::new(Event {
            topic: 0,
            partition: 0,
            offset: ts,
            timestamp: ts,
            key: None,
            values: vec![Value::Str(id.into())].into_boxed_slice(),
        })
    }

    fn key(id: &str) -> (u64, Vec<u8>) {
        let mut buf = Vec::new();
        canonical_key(&[Value::Str(id.into())], &mut buf);
        (hash_key(&buf), buf)
    }

    #[test]
    fn keeps_all_records_per_key_in_order_and_shares_them() {
        let mut t = StreamTable::new(Some(100));
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
    fn expires_by_event_time_and_counts_evictions() {
        let mut t = StreamTable::new(Some(100));
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
