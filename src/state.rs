//! Join state: 256 shards per source, chosen by xxhash64 of the join key,
//! holding shared references ([`Arc`]) to decoded events — never copies.
//!
//! Event streams keep every record for its TTL (by event time against the
//! pipeline's watermark); dimensions keep the latest record per Kafka key.
//! Each shard counts its entries, bytes and evictions.

mod dimension;
mod index;
mod stream;

pub use dimension::{primary_of, DimensionTable, Location};
pub use index::KeyColumns;
pub use stream::{Origin, StreamTable};

use std::cell::Cell;
use std::sync::Arc;

use hashbrown::HashTable;
use thin_vec::{thin_vec, ThinVec};

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

/// Memory a held event costs beyond [`Event::size_bytes`]: its share of the
/// shard's hash table (a 16-byte bucket and a control byte per slot, at
/// hashbrown's load), its expiry entry, the `Arc` header (measured by `cargo
/// bench --bench state`: 77-81 B with one record per key, 62 B with four;
/// see docs/performance.md).
pub const ENTRY_OVERHEAD: u64 = 80;

/// The records of one join key in one shard, in 16 bytes: the key is read
/// from the records themselves ([`KeyColumns`]), not stored; the CLOCK bit
/// ("looked up or changed since the eviction hand last passed") and the
/// [`tag`] of the key's hash (the `u32`, which a probe compares before it
/// reads a record and a growing table rehashes by) sit beside the variant's
/// tag. A shard's hash table holds these inline, so at its usual load of one
/// half to seven eighths they cost 18-36 bytes a key.
#[derive(Debug)]
enum Bucket {
    /// One record: most keys of a stream hold one at a time.
    One(Cell<bool>, u32, Arc<Event>),
    /// Two or more records, in arrival order.
    Many(Cell<bool>, u32, ThinVec<Arc<Event>>),
    /// Records under a key stated apart from them: an empty bucket (a table
    /// that spilled keeps them: "nothing on disk either"), or records whose
    /// own columns do not give the key they were filed under.
    Keyed(Cell<bool>, u32, Box<Keyed>),
}

/// The records of a [`Bucket::Keyed`], and their key.
#[derive(Debug)]
struct Keyed {
    key: Box<[u8]>,
    events: Vec<Arc<Event>>,
}

const _: () = assert!(std::mem::size_of::<Bucket>() == 16);

impl Bucket {
    /// A bucket holding nothing under `key` (whose hash has tag `tag`).
    fn empty(tag: u32, key: &[u8]) -> Self {
        Bucket::Keyed(
            Cell::new(true),
            tag,
            Box::new(Keyed {
                key: key.into(),
                events: Vec::new(),
            }),
        )
    }

    fn referenced(&self) -> &Cell<bool> {
        match self {
            Bucket::One(r, _, _) | Bucket::Many(r, _, _) | Bucket::Keyed(r, _, _) => r,
        }
    }

    /// The [`tag`] of its key's hash.
    fn tag(&self) -> u32 {
        match self {
            Bucket::One(_, t, _) | Bucket::Many(_, t, _) | Bucket::Keyed(_, t, _) => *t,
        }
    }

    /// The records, in arrival order.
    fn events(&self) -> &[Arc<Event>] {
        match self {
            Bucket::One(_, _, e) => std::slice::from_ref(e),
            Bucket::Many(_, _, v) => v,
            Bucket::Keyed(_, _, k) => &k.events,
        }
    }

    /// Whether this is the bucket of `key`.
    fn is(&self, key: &[u8], index: &KeyColumns) -> bool {
        match self {
            Bucket::One(_, _, e) => index.matches(e, key),
            Bucket::Many(_, _, v) => v.first().is_some_and(|e| index.matches(e, key)),
            Bucket::Keyed(_, _, k) => *k.key == *key,
        }
    }

    /// The hash of its key ([`crate::codec::hash_key`]).
    fn hash(&self, index: &KeyColumns) -> u64 {
        match self {
            Bucket::One(_, _, e) => index.hash(e),
            Bucket::Many(_, _, v) => v.first().map_or(0, |e| index.hash(e)),
            Bucket::Keyed(_, _, k) => crate::codec::hash_key(&k.key),
        }
    }

    /// Writes its key into `buf` (cleared first).
    fn key_into(&self, index: &KeyColumns, buf: &mut Vec<u8>) {
        match self {
            Bucket::One(_, _, e) => index.write(e, buf),
            Bucket::Many(_, _, v) => match v.first() {
                Some(e) => index.write(e, buf),
                None => buf.clear(),
            },
            Bucket::Keyed(_, _, k) => {
                buf.clear();
                buf.extend_from_slice(&k.key);
            }
        }
    }

    /// Appends `event`, filed under `key` (this bucket's key).
    fn push(&mut self, key: &[u8], event: Arc<Event>, index: &KeyColumns) {
        let own = index.matches(&event, key);
        let (referenced, tag) = (Cell::new(true), self.tag());
        match self {
            Bucket::Many(_, _, v) if own => v.push(event),
            Bucket::Keyed(_, _, k) if !k.events.is_empty() || !own => k.events.push(event),
            Bucket::Keyed(..) => *self = Bucket::One(referenced, tag, event),
            Bucket::One(_, _, first) if own => {
                *self = Bucket::Many(referenced, tag, thin_vec![first.clone(), event])
            }
            Bucket::One(..) | Bucket::Many(..) => {
                let mut events = self.events().to_vec();
                events.push(event);
                *self = Bucket::Keyed(
                    referenced,
                    tag,
                    Box::new(Keyed {
                        key: key.into(),
                        events,
                    }),
                );
            }
        }
        self.referenced().set(true);
    }

    /// Keeps the records `keep` says, in order (it sees each once). Returns
    /// true when none is left and the bucket is to be removed (its records
    /// still in it, to go with it); with `keep_empty` an emptied bucket
    /// becomes an empty one of the same key instead.
    fn retain(
        &mut self,
        index: &KeyColumns,
        keep_empty: bool,
        mut keep: impl FnMut(&Arc<Event>) -> bool,
    ) -> bool {
        // The key, in case every record goes and the bucket stays.
        let mut key = Vec::new();
        if keep_empty {
            self.key_into(index, &mut key);
        }
        let left = match self {
            Bucket::One(_, _, e) => usize::from(keep(e)),
            Bucket::Many(r, t, v) => {
                v.retain(|e| keep(e));
                if let (1, Some(only)) = (v.len(), v.last()) {
                    let only = only.clone();
                    *self = Bucket::One(Cell::new(r.get()), *t, only);
                    1
                } else {
                    v.len()
                }
            }
            Bucket::Keyed(_, _, k) => {
                k.events.retain(|e| keep(e));
                k.events.len()
            }
        };
        if left > 0 {
            return false;
        }
        if keep_empty {
            *self = Bucket::empty(self.tag(), &key);
        }
        !keep_empty
    }
}

impl Bucket {
    /// Removes the record that is `event` (the same allocation), the last
    /// record taking its place (the order of `Vec::swap_remove`). Returns it,
    /// and whether the bucket is to be removed (as [`Bucket::retain`]).
    fn remove_record(
        &mut self,
        event: &Arc<Event>,
        index: &KeyColumns,
        keep_empty: bool,
    ) -> (Option<Arc<Event>>, bool) {
        let at = |events: &[Arc<Event>]| events.iter().position(|e| Arc::ptr_eq(e, event));
        let removed = match self {
            Bucket::One(_, _, e) if Arc::ptr_eq(e, event) => {
                let e = e.clone();
                return (Some(e), self.retain(index, keep_empty, |_| false));
            }
            Bucket::One(..) => None,
            Bucket::Many(_, _, v) => at(v).map(|pos| v.swap_remove(pos)),
            Bucket::Keyed(_, _, k) => at(&k.events).map(|pos| k.events.swap_remove(pos)),
        };
        let Some(removed) = removed else {
            return (None, false);
        };
        // Settles the rest: one record left is a `One`, none an empty bucket.
        (Some(removed), self.retain(index, keep_empty, |_| true))
    }
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
        index: &KeyColumns,
        resident_bytes: u64,
        target: u64,
        mut on_evict: impl FnMut(&[u8], &[Arc<Event>]),
    ) -> u64 {
        let mut freed = 0u64;
        let mut key = Vec::new();
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
                if b.referenced().replace(false) {
                    return true;
                }
                b.key_into(index, &mut key);
                on_evict(&key, b.events());
                for e in b.events() {
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

/// The 32 bits of a key's xxhash64 a bucket keeps (the high half: the low
/// byte picks the shard, so it is the same for every key of a shard).
fn tag(hash: u64) -> u32 {
    (hash >> 32) as u32
}

/// The hash a shard's table files a key under, from its [`tag`] alone, so
/// that a growing table rehashes its buckets without reading their records:
/// the tag spread over 64 bits (Fibonacci hashing), as hashbrown takes its
/// slot from the low bits and its control byte from the top 7.
fn table_hash(tag: u32) -> u64 {
    u64::from(tag).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl Shard {
    fn bucket(&self, hash: u64, key: &[u8], index: &KeyColumns) -> Option<&Bucket> {
        let t = tag(hash);
        let b = self
            .buckets
            .find(table_hash(t), |b| b.tag() == t && b.is(key, index));
        if let Some(b) = b {
            b.referenced().set(true);
        }
        b
    }

    /// Appends `event` to the bucket of `key`, made if absent.
    fn push(&mut self, hash: u64, key: &[u8], event: Arc<Event>, index: &KeyColumns) {
        let t = tag(hash);
        match self
            .buckets
            .find_entry(table_hash(t), |b| b.tag() == t && b.is(key, index))
        {
            Ok(entry) => entry.into_mut().push(key, event, index),
            Err(absent) => {
                let bucket = if index.matches(&event, key) {
                    Bucket::One(Cell::new(true), t, event)
                } else {
                    let mut b = Bucket::empty(t, key);
                    b.push(key, event, index);
                    b
                };
                absent
                    .into_table()
                    .insert_unique(table_hash(t), bucket, |b| table_hash(b.tag()));
            }
        }
    }

    /// Makes sure `key` has a bucket (an empty one if absent).
    fn touch(&mut self, hash: u64, key: &[u8], index: &KeyColumns) {
        let t = tag(hash);
        if let Err(absent) = self
            .buckets
            .find_entry(table_hash(t), |b| b.tag() == t && b.is(key, index))
        {
            absent
                .into_table()
                .insert_unique(table_hash(t), Bucket::empty(t, key), |b| {
                    table_hash(b.tag())
                });
        }
    }

    /// The bucket of the key whose hash is `hash`, found by the hash alone
    /// (read from its records only when the tags agree).
    fn by_hash<'a>(
        buckets: &'a mut HashTable<Bucket>,
        hash: u64,
        index: &KeyColumns,
    ) -> Option<hashbrown::hash_table::OccupiedEntry<'a, Bucket>> {
        let t = tag(hash);
        buckets
            .find_entry(table_hash(t), |b| b.tag() == t && b.hash(index) == hash)
            .ok()
    }

    /// The bucket of `key` (hash `hash`), to change or remove.
    fn entry<'a>(
        buckets: &'a mut HashTable<Bucket>,
        hash: u64,
        key: &[u8],
        index: &KeyColumns,
    ) -> Option<hashbrown::hash_table::OccupiedEntry<'a, Bucket>> {
        let t = tag(hash);
        buckets
            .find_entry(table_hash(t), |b| b.tag() == t && b.is(key, index))
            .ok()
    }

    fn resident(&self, hash: u64, key: &[u8], index: &KeyColumns) -> bool {
        let t = tag(hash);
        self.buckets
            .find(table_hash(t), |b| b.tag() == t && b.is(key, index))
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

/// A record of topic 0, partition 0 at `offset` (its event time too) whose
/// only column is the text `key`: the tests' record of state.
#[cfg(test)]
pub(crate) fn test_event(offset: i64, key: &str) -> Arc<Event> {
    Arc::new(Event {
        topic: 0,
        partition: 0,
        offset,
        timestamp: offset,
        key: None,
        values: vec![crate::codec::Value::Str(key.into())].into_boxed_slice(),
    })
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

    use super::test_event as event;

    /// Files `events` under `key` in `shard`; returns the key's hash.
    fn push_all(shard: &mut Shard, index: &KeyColumns, key: &str, events: &[Arc<Event>]) -> u64 {
        let h = crate::codec::hash_key(key.as_bytes());
        for e in events {
            shard.push(h, key.as_bytes(), e.clone(), index);
        }
        h
    }

    fn offsets(b: &Bucket) -> Vec<i64> {
        b.events().iter().map(|e| e.offset).collect()
    }

    #[test]
    fn a_bucket_is_one_record_inline_then_a_list_then_one_again() {
        let index = KeyColumns::new(&[0]);
        let mut shard = Shard::default();
        let h = push_all(&mut shard, &index, "a", &[event(1, "a")]);
        let b = shard.bucket(h, b"a", &index).map(offsets);
        assert_eq!(b, Some(vec![1]));
        push_all(&mut shard, &index, "a", &[event(2, "a"), event(3, "a")]);
        let Some(mut entry) = Shard::entry(&mut shard.buckets, h, b"a", &index) else {
            panic!("no bucket for a")
        };
        assert!(matches!(entry.get(), Bucket::Many(..)));
        assert_eq!(offsets(entry.get()), [1, 2, 3]);
        assert!(!entry.get_mut().retain(&index, false, |e| e.offset == 2));
        assert!(
            matches!(entry.get(), Bucket::One(..)),
            "one left: inline again"
        );
        assert_eq!(offsets(entry.get()), [2]);
        assert!(
            entry.get_mut().retain(&index, false, |_| false),
            "emptied: to be removed"
        );
        assert!(!entry.get_mut().retain(&index, true, |_| false));
        let Bucket::Keyed(_, _, k) = entry.get() else {
            panic!("kept empty: the key stated")
        };
        assert_eq!((&*k.key, k.events.len()), (&b"a"[..], 0));
        assert!(entry.get().is(b"a", &index));
        assert_eq!(entry.get().hash(&index), h);
    }

    #[test]
    fn a_record_filed_under_a_key_it_does_not_carry_is_still_found() {
        let index = KeyColumns::new(&[0]);
        let mut shard = Shard::default();
        let h = crate::codec::hash_key(b"k");
        shard.push(h, b"k", event(1, "other"), &index);
        shard.push(h, b"k", event(2, "k"), &index);
        let found = shard.bucket(h, b"k", &index).map(offsets);
        assert_eq!(found, Some(vec![1, 2]));
        assert!(shard
            .bucket(crate::codec::hash_key(b"other"), b"other", &index)
            .is_none());
    }

    #[test]
    fn removing_a_record_keeps_swap_remove_order() {
        let index = KeyColumns::new(&[0]);
        let mut shard = Shard::default();
        let first = event(1, "a");
        let h = push_all(
            &mut shard,
            &index,
            "a",
            &[first.clone(), event(2, "a"), event(3, "a")],
        );
        let Some(mut entry) = Shard::entry(&mut shard.buckets, h, b"a", &index) else {
            panic!("no bucket for a")
        };
        let (removed, remove) = entry.get_mut().remove_record(&first, &index, false);
        assert_eq!((removed.map(|e| e.offset), remove), (Some(1), false));
        assert_eq!(
            offsets(entry.get()),
            [3, 2],
            "the last took the removed one's place"
        );
    }

    #[test]
    fn liveness_follows_ttl() {
        assert!(is_live(1000, Some(500), 1500));
        assert!(!is_live(1000, Some(500), 1501));
        assert!(is_live(0, None, i64::MAX));
    }
}
