//! State of a dimension: the latest record per Kafka key (like a Kafka
//! Streams GlobalKTable), indexed by the column(s) the query joins it on.
//! A tombstone (null value) deletes the key.

use std::collections::HashMap;
use std::sync::Arc;

use super::{is_live, new_shards, shard_of, KeyColumns, Shard, ShardStats, Spill};
use crate::codec::Event;

/// Where the current record of a primary key sits.
#[derive(Debug)]
struct Located {
    index_hash: u64,
    index_key: Box<[u8]>,
    event: Arc<Event>,
}

/// Latest record per primary key, looked up by join key, in 256 shards.
#[derive(Debug)]
pub struct DimensionTable {
    shards: Vec<Shard>,
    /// The columns of the join key records are indexed under.
    index: KeyColumns,
    primary: HashMap<Box<[u8]>, Located>,
    ttl_ms: Option<i64>,
    spill: Spill,
}

/// Where a replaced or deleted record was indexed: join-key hash and bytes.
pub type Location = (u64, Box<[u8]>);

/// The primary key of a dimension record: its Kafka key, else its join key.
pub fn primary_of<'a>(event: &'a Event, index_key: &'a [u8]) -> &'a [u8] {
    event.key.as_deref().unwrap_or(index_key)
}

impl DimensionTable {
    /// An empty table indexed by the key of its `index` columns; `ttl_ms`
    /// is None unless an override makes it expire.
    pub fn new(ttl_ms: Option<i64>, index: KeyColumns) -> Self {
        Self {
            shards: new_shards(),
            index,
            primary: HashMap::new(),
            ttl_ms,
            spill: Spill::default(),
        }
    }

    /// The TTL in milliseconds, if an override set one.
    pub fn ttl_ms(&self) -> Option<i64> {
        self.ttl_ms
    }

    /// Number of primary keys held.
    pub fn len(&self) -> usize {
        self.primary.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.primary.is_empty()
    }

    /// Sets the record of `primary` (the Kafka key, or the join key when the
    /// record has none) to `event`, indexed under join key `index_key`.
    /// Returns where the record it replaced was indexed, if there was one.
    pub fn upsert(
        &mut self,
        primary: &[u8],
        index_hash: u64,
        index_key: &[u8],
        event: Arc<Event>,
    ) -> Option<Location> {
        let old = self.delete(primary);
        let shard = &mut self.shards[shard_of(index_hash)];
        shard.stats.add(&event);
        shard.push(index_hash, index_key, event.clone(), &self.index);
        self.primary.insert(
            primary.into(),
            Located {
                index_hash,
                index_key: index_key.into(),
                event,
            },
        );
        old
    }

    /// Removes the record of `primary`; returns where it was indexed.
    pub fn delete(&mut self, primary: &[u8]) -> Option<Location> {
        let old = self.primary.remove(primary)?;
        let keep_empty = self.spill.spilled;
        let shard = &mut self.shards[shard_of(old.index_hash)];
        let stats = &mut shard.stats;
        let index = &self.index;
        if let Some(mut entry) =
            Shard::entry(&mut shard.buckets, old.index_hash, &old.index_key, index)
        {
            let (removed, remove) = entry.get_mut().remove_record(&old.event, index, keep_empty);
            if let Some(removed) = removed {
                stats.remove(&removed);
            }
            if remove {
                entry.remove();
            }
        }
        Some((old.index_hash, old.index_key))
    }

    /// Whether the record of `primary` is in memory.
    pub fn knows(&self, primary: &[u8]) -> bool {
        self.primary.contains_key(primary)
    }

    /// Whether memory knows every record of join key `key` (always, unless
    /// the table spilled and the key left memory).
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

    /// Marks the table as holding records on disk only.
    pub fn mark_spilled(&mut self) {
        self.spill.spilled = true;
    }

    /// Puts the records of join key `key` read back from disk into memory.
    pub fn load(&mut self, hash: u64, key: &[u8], events: Vec<Arc<Event>>) {
        let shard = &mut self.shards[shard_of(hash)];
        for e in &events {
            shard.stats.add(e);
            self.primary.insert(
                primary_of(e, key).into(),
                Located {
                    index_hash: hash,
                    index_key: key.into(),
                    event: e.clone(),
                },
            );
        }
        if events.is_empty() {
            shard.touch(hash, key, &self.index);
        }
        for e in events {
            shard.push(hash, key, e, &self.index);
        }
    }

    /// Moves cold join keys out of memory until it holds at most `target`
    /// bytes; returns the bytes freed. Their records stay on disk.
    pub fn evict(&mut self, target: u64) -> u64 {
        let resident = self.stats().memory();
        let primary = &mut self.primary;
        self.spill.evict(
            &mut self.shards,
            &self.index,
            resident,
            target,
            |key, events| {
                for e in events {
                    primary.remove(primary_of(e, key));
                }
            },
        )
    }

    /// Every record under `key`, live or not (callers filter with [`super::is_live`]).
    pub fn events(&self, hash: u64, key: &[u8]) -> &[Arc<Event>] {
        self.shards[shard_of(hash)]
            .bucket(hash, key, &self.index)
            .map_or(&[], |b| b.events())
    }

    /// Live records whose join key is `key`.
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

    /// Removes expired records when an override gave the dimension a TTL.
    pub fn expire(&mut self, watermark: i64) -> u64 {
        let Some(ttl) = self.ttl_ms else { return 0 };
        let expired: Vec<Box<[u8]>> = self
            .primary
            .iter()
            .filter(|(_, l)| !is_live(l.event.timestamp, Some(ttl), watermark))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &expired {
            if let Some(l) = self.primary.get(k) {
                let shard = shard_of(l.index_hash);
                self.delete(k);
                self.shards[shard].stats.evictions += 1;
            }
        }
        expired.len() as u64
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
    use crate::codec::{hash_key, Value};

    fn event(ts: i64, plan: &str) -> Arc<Event> {
        Arc::new(Event {
            topic: 1,
            partition: 0,
            offset: ts,
            timestamp: ts,
            key: None,
            values: vec![Value::Str(plan.into())].into_boxed_slice(),
        })
    }

    #[test]
    fn keeps_the_latest_value_per_key_and_deletes_on_tombstone() {
        let mut t = DimensionTable::new(None, KeyColumns::new(&[0]));
        let h = hash_key(b"u1");
        t.upsert(b"u1", h, b"u1", event(1, "free"));
        t.upsert(b"u1", h, b"u1", event(2, "pro"));
        let found: Vec<_> = t
            .lookup(h, b"u1", i64::MAX)
            .map(|e| e.values[0].clone())
            .collect();
        assert_eq!(found, vec![Value::Str("pro".into())]);
        assert_eq!(t.stats().entries, 1);
        assert!(t.delete(b"u1").is_some());
        assert_eq!(t.lookup(h, b"u1", 0).count(), 0);
        assert_eq!(t.stats().entries, 0);
        assert!(t.delete(b"u1").is_none());
    }

    #[test]
    fn a_primary_key_can_move_to_another_join_key() {
        let mut t = DimensionTable::new(None, KeyColumns::new(&[0]));
        let (ha, hb) = (hash_key(b"DE"), hash_key(b"FR"));
        t.upsert(b"user1", ha, b"DE", event(1, "x"));
        t.upsert(b"user2", ha, b"DE", event(1, "y"));
        assert_eq!(t.lookup(ha, b"DE", 0).count(), 2);
        t.upsert(b"user1", hb, b"FR", event(2, "x"));
        assert_eq!(t.lookup(ha, b"DE", 0).count(), 1);
        assert_eq!(t.lookup(hb, b"FR", 0).count(), 1);
    }

    #[test]
    fn dimensions_expire_only_with_an_override() {
        let mut t = DimensionTable::new(Some(10), KeyColumns::new(&[0]));
        let h = hash_key(b"k");
        t.upsert(b"k", h, b"k", event(0, "v"));
        assert_eq!(t.expire(5), 0);
        assert_eq!(t.expire(11), 1);
        assert_eq!(t.stats().evictions, 1);
        assert!(t.is_empty());
    }
}
