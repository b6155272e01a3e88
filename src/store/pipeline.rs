//! One pipeline's view of the state database: changes staged by the engine
//! and written as one batch per micro-batch (write-behind, WAL on, no sync),
//! checkpoints that record the source offsets the state reflects (synced
//! before any Kafka commit), and the reads that restore state after a restart
//! or bring an evicted join key back into memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use rocksdb::{Direction, IteratorMode, ReadOptions};

use super::layout::{self, Origin};
use super::writer::{Op, Staged, Writer};
use super::{rocks, Db, FamilyStats, StateDb, StoreError, Target};

/// What a checkpoint makes durable: every source partition's next offset
/// (state reflects exactly the records before it), the clock, and the held
/// events whose outputs have been delivered.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checkpoint {
    /// Next offset per (topic, partition).
    pub offsets: HashMap<(String, i32), i64>,
    /// Watermark.
    pub watermark: i64,
    /// Largest event time per event-stream (topic, partition).
    pub stream_time: Vec<layout::StreamTime>,
    /// Held events released by delivered outputs.
    pub released: Vec<Origin>,
}

impl Checkpoint {
    /// Folds a later checkpoint into this one.
    pub fn absorb(&mut self, later: Checkpoint) {
        self.offsets.extend(later.offsets);
        self.watermark = later.watermark;
        self.stream_time = later.stream_time;
        self.released.extend(later.released);
    }
}

/// What a pipeline's last checkpoint recorded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Restored {
    /// Next offset per (topic, partition).
    pub offsets: HashMap<(String, i32), i64>,
    /// Lowest watermark and largest event time per event-stream (topic,
    /// partition), if a checkpoint was written.
    pub clock: Option<(i64, Vec<layout::StreamTime>)>,
}

/// The state of one pipeline in the database.
pub struct PipelineStore {
    db: Arc<StateDb>,
    meta: String,
    families: Vec<Option<String>>,
    watermark: Arc<AtomicI64>,
    staged: Staged,
    writer: Writer,
}

impl std::fmt::Debug for PipelineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineStore")
            .field("meta", &self.meta)
            .field("staged", &self.staged.ops.len())
            .finish()
    }
}

fn corrupt(family: &str) -> impl FnOnce(layout::LayoutError) -> StoreError + '_ {
    move |source| StoreError::Corrupt {
        column_family: family.to_string(),
        source,
    }
}

impl PipelineStore {
    pub(super) fn new(
        db: Arc<StateDb>,
        pipeline: &str,
        meta: String,
        families: Vec<Option<String>>,
        watermark: Arc<AtomicI64>,
    ) -> Result<Self, StoreError> {
        let mut targets = vec![(Target::Meta, meta.clone())];
        for (s, f) in families.iter().enumerate() {
            if let Some(f) = f {
                targets.push((Target::Source(s), f.clone()));
            }
        }
        let writer = Writer::spawn(db.clone(), pipeline, targets)?;
        Ok(Self {
            db,
            meta,
            families,
            watermark,
            staged: Staged::default(),
            writer,
        })
    }

    /// The database this state lives in.
    pub fn database(&self) -> &Arc<StateDb> {
        &self.db
    }

    fn family(&self, target: Target) -> Option<&str> {
        match target {
            Target::Meta => Some(&self.meta),
            Target::Source(s) => self.families.get(s).and_then(|f| f.as_deref()),
        }
    }

    fn handle(&self, target: Target) -> Result<Arc<rocksdb::BoundColumnFamily<'_>>, StoreError> {
        let name = self.family(target).unwrap_or_default();
        self.db.db.cf_handle(name).ok_or_else(|| StoreError::Open {
            path: self.db.path.clone(),
            reason: format!(
                "column family `{name}` disappeared (was the state reset while running?)"
            ),
        })
    }

    /// Stages a put; `key` and `value` append their bytes.
    pub fn put(
        &mut self,
        target: Target,
        key: impl FnOnce(&mut Vec<u8>),
        value: impl FnOnce(&mut Vec<u8>),
    ) {
        let arena = &mut self.staged.arena;
        let k = arena.len();
        key(arena);
        let v = arena.len();
        value(arena);
        let end = arena.len();
        self.staged.ops.push(Op {
            target,
            key: k..v,
            value: Some(v..end),
        });
    }

    /// Stages a delete.
    pub fn delete(&mut self, target: Target, key: impl FnOnce(&mut Vec<u8>)) {
        let arena = &mut self.staged.arena;
        let k = arena.len();
        key(arena);
        let end = arena.len();
        self.staged.ops.push(Op {
            target,
            key: k..end,
            value: None,
        });
    }

    /// Stages the deletion of a partition's checkpointed offset (its state
    /// was dropped: a restart must not skip its records).
    pub fn forget_offset(&mut self, topic: &str, partition: i32) {
        let key = layout::offset_key(topic, partition);
        self.delete(Target::Meta, |b| b.extend_from_slice(&key));
    }

    /// Changes staged and not yet written.
    pub fn staged(&self) -> usize {
        self.staged.ops.len()
    }

    /// Hands every staged change to the writer thread (one batch, WAL on,
    /// no sync); returns at once unless the writer is behind.
    pub fn write(&mut self) -> Result<(), StoreError> {
        if self.staged.ops.is_empty() {
            return Ok(());
        }
        let staged = std::mem::take(&mut self.staged);
        self.staged = self.writer.submit(staged)?;
        Ok(())
    }

    /// Writes staged changes and waits until everything handed to the
    /// writer is in RocksDB.
    pub fn write_and_wait(&mut self) -> Result<(), StoreError> {
        self.write()?;
        self.writer.barrier()
    }

    /// Makes `checkpoint` durable after every staged change: one batch, then
    /// a synced WAL. Offsets may be committed to Kafka after this returns.
    pub fn checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        for ((topic, partition), next) in &checkpoint.offsets {
            let key = layout::offset_key(topic, *partition);
            self.put(
                Target::Meta,
                |b| b.extend_from_slice(&key),
                |b| b.extend_from_slice(&next.to_le_bytes()),
            );
        }
        let clock = layout::encode_clock(checkpoint.watermark, &checkpoint.stream_time);
        self.put(
            Target::Meta,
            |b| b.extend_from_slice(layout::CLOCK),
            |b| b.extend_from_slice(&clock),
        );
        for &origin in &checkpoint.released {
            self.delete(Target::Meta, |b| layout::held_key(origin, b));
        }
        self.write_and_wait()?;
        self.db.db.flush_wal(true).map_err(rocks("sync the WAL"))?;
        self.watermark
            .fetch_max(checkpoint.watermark, Ordering::Relaxed);
        Ok(())
    }

    /// The last checkpoint.
    pub fn restored(&self) -> Result<Restored, StoreError> {
        let cf = self.handle(Target::Meta)?;
        let mut out = Restored::default();
        let prefix = [layout::OFFSET];
        for item in self
            .db
            .db
            .iterator_cf(&cf, IteratorMode::From(&prefix, Direction::Forward))
        {
            let (k, v) = item.map_err(rocks("read offsets"))?;
            let Some(tp) = layout::parse_offset_key(&k) else {
                break;
            };
            let next: [u8; 8] = v[..]
                .try_into()
                .map_err(|_| corrupt(&self.meta)(layout::LayoutError("offset")))?;
            out.offsets.insert(tp, i64::from_le_bytes(next));
        }
        if let Some(bytes) = self
            .db
            .db
            .get_cf(&cf, layout::CLOCK)
            .map_err(rocks("read the clock"))?
        {
            let clock = layout::decode_clock(&bytes).map_err(corrupt(&self.meta))?;
            self.watermark.fetch_max(clock.0, Ordering::Relaxed);
            out.clock = Some(clock);
        }
        Ok(out)
    }

    pub(super) fn fingerprint(&self) -> Result<Option<String>, StoreError> {
        let cf = self.handle(Target::Meta)?;
        Ok(self
            .db
            .db
            .get_cf(&cf, layout::FINGERPRINT)
            .map_err(rocks("read the fingerprint"))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub(super) fn set_fingerprint(&self, fingerprint: &str) -> Result<(), StoreError> {
        let cf = self.handle(Target::Meta)?;
        self.db
            .db
            .put_cf(&cf, layout::FINGERPRINT, fingerprint.as_bytes())
            .map_err(rocks("write the fingerprint"))
    }

    /// Calls `f` with every key and value of `target` whose key starts with `prefix`.
    pub fn scan(
        &self,
        target: Target,
        prefix: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let cf = self.handle(target)?;
        let mut opts = ReadOptions::default();
        let by_join_key = target != Target::Meta && super::options::is_join_key_prefix(prefix);
        opts.set_total_order_seek(!by_join_key);
        opts.set_prefix_same_as_start(by_join_key);
        let mode = IteratorMode::From(prefix, Direction::Forward);
        for item in self.db.db.iterator_cf_opt(&cf, opts, mode) {
            let (k, v) = item.map_err(rocks("read state"))?;
            if !k.starts_with(prefix) {
                break;
            }
            f(&k, &v)?;
        }
        Ok(())
    }

    /// Decodes a stored event of `target`.
    pub fn decode(
        &self,
        target: Target,
        value: &[u8],
    ) -> Result<(i64, crate::codec::Event), StoreError> {
        layout::decode_event(value).map_err(corrupt(self.family(target).unwrap_or_default()))
    }

    /// Reads one key of `target`.
    pub fn get(&self, target: Target, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let cf = self.handle(target)?;
        self.db.db.get_cf(&cf, key).map_err(rocks("read state"))
    }
}

/// Counts the entries of one column family.
pub(super) fn family_stats(db: &Db, name: &str, watermark: i64) -> Result<FamilyStats, StoreError> {
    let mut stats = FamilyStats {
        name: name.to_string(),
        shards: vec![(0, 0); crate::state::SHARDS],
        ..FamilyStats::default()
    };
    let Some(cf) = db.cf_handle(name) else {
        return Ok(stats);
    };
    let mut opts = ReadOptions::default();
    opts.set_total_order_seek(true);
    for item in db.iterator_cf_opt(&cf, opts, IteratorMode::Start) {
        let (k, v) = item.map_err(rocks("read state"))?;
        match layout::record_shard(&k) {
            Some(shard) => {
                let s = &mut stats.shards[shard as usize];
                s.0 += 1;
                s.1 += (k.len() + v.len()) as u64;
                if layout::expire_at(&v).is_some_and(|at| at < watermark) {
                    stats.expired += 1;
                }
            }
            None => stats.other += 1,
        }
    }
    if name.ends_with(super::META) {
        stats.shards.clear();
    }
    Ok(stats)
}
