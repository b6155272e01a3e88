//! Join state: 256 shards per source, chosen by xxhash64 of the join key,
//! holding shared references ([`Arc`]) to decoded events — never copies.
//!
//! Event streams keep every record for its TTL (by event time against the
//! pipeline's watermark); dimensions keep the latest record per Kafka key.
//! Each shard counts its entries, bytes and evictions.

mod dimension;
mod stream;

pub use dimension::{primary_of, DimensionTable, Location};
pub use stream::{Origin, StreamTable};

use std::cell::Cell;
use std::sync::Arc;

use hashbrown::HashTable;
use smallvec::SmallVec;

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
    /// Memory these entries cost, with [`ENTRY_OVERHEAD`] each.
    pub fn memory(&self) -> u64 {
        self.bytes + self.entries * ENTRY_OVERHEAD
    }
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

/// Memory a held event costs beyond [`Event::size_bytes`]: its slot in a
/// bucket, the `Arc` header and its share of the bucket and hash table
/// (measured by `cargo bench --bench state`; see docs/performance.md).
pub const ENTRY_OVERHEAD: u64 = 64;

/// The events of one key in one shard.
#[derive(Debug)]
struct Bucket {
    hash: u64,
    key: Box<[u8]>,
    /// Most keys of a stream hold one record at a time: it lives inline.
    events: SmallVec<[Arc<Event>; 1]>,
    /// Looked up or changed since the eviction hand last passed (CLOCK).
    referenced: Cell<bool>,
}

/// One shard: buckets by key, and counters.
#[derive(Debug, Default)]
struct Shard {
    buckets: HashTable<Bucket>,
    stats: ShardStats,
}

/// Which buckets may leave memory when a table is over its budget: the
/// second-chance (CLOCK) rule, one shard at a time.
#[derive(Debug, Default)]
struct Spill {
    /// Some bucket left memory: a key absent from memory may be on disk.
    spilled: bool,
    /// The shard the eviction hand is at.
    hand: usize,
}

impl Spill {
    /// Evicts unreferenced buckets, shard by shard from the hand, until
    /// `resident_bytes` of the table is at most `target`. `on_evict` sees each
    /// bucket's key and events before they go. Returns the bytes freed.
    fn evict(
        &mut self,
        shards: &mut [Shard],
        resident_bytes: u64,
        target: u64,
        mut on_evict: impl FnMut(&[u8], &[Arc<Event>]),
    ) -> u64 {
        let mut freed = 0u64;
        // Two passes: the first may only clear reference bits.
        for _ in 0..2 * shards.len() {
            if resident_bytes.saturating_sub(freed) <= target {
                break;
            }
            let count = shards.len();
            let shard = &mut shards[self.hand];
            self.hand = (self.hand + 1) % count;
            let stats = &mut shard.stats;
            shard.buckets.retain(|b| {
                if b.referenced.replace(false) {
                    return true;
                }
                on_evict(&b.key, &b.events);
                for e in &b.events {
                    freed += e.size_bytes() as u64 + ENTRY_OVERHEAD;
                    stats.remove(e);
                }
                self.spilled = true;
                false
            });
        }
        freed
    }
}

impl Shard {
    fn bucket(&self, hash: u64, key: &[u8]) -> Option<&Bucket> {
        let b = self
            .buckets
            .find(hash, |b| b.hash == hash && *b.key == *key);
        if let Some(b) = b {
            b.referenced.set(true);
        }
        b
    }

    fn bucket_mut(&mut self, hash: u64, key: &[u8]) -> &mut Bucket {
        match self
            .buckets
            .find_entry(hash, |b| b.hash == hash && *b.key == *key)
        {
            Ok(entry) => {
                let b = entry.into_mut();
                b.referenced.set(true);
                b
            }
            Err(absent) => absent
                .into_table()
                .insert_unique(
                    hash,
                    Bucket {
                        hash,
                        key: key.into(),
                        events: SmallVec::new(),
                        referenced: Cell::new(true),
                    },
                    |b| b.hash,
                )
                .into_mut(),
        }
    }

    /// Drops the bucket of `key` if it holds nothing, unless `keep`: a table
    /// that spilled keeps empty buckets, which say "nothing on disk either".
    fn remove_if_empty(&mut self, hash: u64, key: &[u8], keep: bool) {
        if keep {
            return;
        }
        if let Ok(entry) = self
            .buckets
            .find_entry(hash, |b| b.hash == hash && *b.key == *key)
        {
            if entry.get().events.is_empty() {
                entry.remove();
            }
        }
    }

    fn resident(&self, hash: u64, key: &[u8]) -> bool {
        self.buckets
            .find(hash, |b| b.hash == hash && *b.key == *key)
            .is_some()
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
