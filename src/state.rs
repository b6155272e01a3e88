//! Join state: 256 shards per source, chosen by xxhash64 of the join key,
//! holding shared references ([`Arc`]) to decoded events — never copies.
//!
//! Event streams keep every record for its TTL (by event time against the
//! pipeline's watermark); dimensions keep the latest record per Kafka key.
//! Each shard counts its entries, bytes and evictions.

mod dimension;
mod stream;

pub use dimension::DimensionTable;
pub use stream::StreamTable;

use std::sync::Arc;

use hashbrown::HashTable;

use crate::codec::Event;

/// Number of shards per source table.
pub const SHARDS: usize = 256;

/// The shard a key hash lives in.
pub fn shard_of(hash: u64) -> usize {
    (hash % SHARDS as u64) as usize
}

/// Counters of one shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Events held.
    pub entries: u64,
    /// Approximate bytes held by those events.
    pub bytes: u64,
    /// Events removed because their TTL passed.
    pub evictions: u64,
}

impl ShardStats {
    fn add(&mut self, event: &Event) {
        self.entries += 1;
        self.bytes += event.size_bytes() as u64;
    }

    fn remove(&mut self, event: &Event) {
        self.entries = self.entries.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(event.size_bytes() as u64);
    }

    /// Sums counters.
    pub fn merge(&mut self, other: &ShardStats) {
        self.entries += other.entries;
        self.bytes += other.bytes;
        self.evictions += other.evictions;
    }
}

/// The events of one key in one shard.
#[derive(Debug)]
struct Bucket {
    hash: u64,
    key: Box<[u8]>,
    events: Vec<Arc<Event>>,
}

/// One shard: buckets by key, and counters.
#[derive(Debug, Default)]
struct Shard {
    buckets: HashTable<Bucket>,
    stats: ShardStats,
}

impl Shard {
    fn bucket(&self, hash: u64, key: &[u8]) -> Option<&Bucket> {
        self.buckets
            .find(hash, |b| b.hash == hash && *b.key == *key)
    }

    fn bucket_mut(&mut self, hash: u64, key: &[u8]) -> &mut Bucket {
        match self
            .buckets
            .find_entry(hash, |b| b.hash == hash && *b.key == *key)
        {
            Ok(entry) => entry.into_mut(),
            Err(absent) => absent
                .into_table()
                .insert_unique(
                    hash,
                    Bucket {
                        hash,
                        key: key.into(),
                        events: Vec::with_capacity(1),
                    },
                    |b| b.hash,
                )
                .into_mut(),
        }
    }

    fn remove_if_empty(&mut self, hash: u64, key: &[u8]) {
        if let Ok(entry) = self
            .buckets
            .find_entry(hash, |b| b.hash == hash && *b.key == *key)
        {
            if entry.get().events.is_empty() {
                entry.remove();
            }
        }
    }
}

fn new_shards() -> Vec<Shard> {
    (0..SHARDS).map(|_| Shard::default()).collect()
}

/// Whether an event with `timestamp` is still live at `watermark` under `ttl_ms`.
pub fn is_live(timestamp: i64, ttl_ms: Option<i64>, watermark: i64) -> bool {
    match ttl_ms {
        None => true,
        Some(ttl) => timestamp.saturating_add(ttl) >= watermark,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_is_hash_modulo_256() {
        assert_eq!(shard_of(0), 0);
        assert_eq!(shard_of(257), 1);
        assert_eq!(shard_of(u64::MAX), 255);
    }

    #[test]
    fn liveness_follows_ttl() {
        assert!(is_live(1000, Some(500), 1500));
        assert!(!is_live(1000, Some(500), 1501));
        assert!(is_live(0, None, i64::MAX));
    }
}
