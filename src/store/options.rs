//! RocksDB options from the guide's tuning keys: write buffers, block size,
//! a block cache shared by every column family (default: a quarter of
//! `state.memory`, or 64 MiB without a budget), LZ4 compression, a prefix
//! bloom filter over join keys (so a lookup of an absent key rarely touches a
//! file), and the TTL compaction filter on record families.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use rocksdb::compaction_filter::Decision;
use rocksdb::{
    BlockBasedOptions, Cache, DBCompressionType, MemtableFactory, Options, SliceTransform,
};

use super::layout::{self, RECORD};
use crate::config::StateConfig;

const MIB: u64 = 1024 * 1024;
const DEFAULT_CACHE: u64 = 64 * MIB;

/// Options shared by every column family of the database.
pub(super) struct Tuning {
    pub(super) cache: Cache,
    /// Hot state budget (bytes) of the whole instance, if set.
    pub(super) memory: Option<u64>,
    write_buffer_size: Option<u64>,
    max_write_buffer_number: Option<u32>,
    block_size: Option<u64>,
}

/// The prefix of a record key: tag, shard, length and the join key.
fn record_prefix(key: &[u8]) -> &[u8] {
    match key {
        [RECORD, _, a, b, c, d, ..] => {
            let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            key.get(..6 + len).unwrap_or(key)
        }
        _ => key,
    }
}

fn in_domain(key: &[u8]) -> bool {
    matches!(key, [RECORD, _, _, _, _, _, ..])
}

/// Whether `prefix` is one whole join-key prefix, which a prefix read can
/// serve; any other scan of a record family needs a total-order seek (the
/// hash skip-list memtable iterates one join key's bucket otherwise).
pub(super) fn is_join_key_prefix(prefix: &[u8]) -> bool {
    in_domain(prefix) && record_prefix(prefix).len() == prefix.len()
}

impl Tuning {
    pub(super) fn from_config(config: &StateConfig) -> Self {
        let memory = config.memory.map(|b| b.0);
        let cache_bytes = config
            .rocksdb
            .block_cache
            .map(|b| b.0)
            .or(memory.map(|m| m / 4))
            .unwrap_or(DEFAULT_CACHE);
        Self {
            cache: Cache::new_lru_cache(cache_bytes as usize),
            memory: memory.map(|m| m.saturating_sub(cache_bytes).max(m / 4)),
            write_buffer_size: config.rocksdb.write_buffer_size.map(|b| b.0),
            max_write_buffer_number: config.rocksdb.max_write_buffer_number,
            block_size: config.rocksdb.block_size.map(|b| b.0),
        }
    }

    fn base(&self) -> Options {
        let mut o = Options::default();
        o.set_compression_type(DBCompressionType::Lz4);
        if let Some(n) = self.write_buffer_size {
            o.set_write_buffer_size(n as usize);
        }
        if let Some(n) = self.max_write_buffer_number {
            o.set_max_write_buffer_number(n as i32);
        }
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&self.cache);
        if let Some(n) = self.block_size {
            table.set_block_size(n as usize);
        }
        table.set_bloom_filter(10.0, false);
        table.set_whole_key_filtering(false);
        o.set_block_based_table_factory(&table);
        o
    }

    /// Options of the database itself.
    pub(super) fn db_options(&self) -> Options {
        let mut o = self.base();
        o.create_if_missing(true);
        o.create_missing_column_families(true);
        o.set_max_background_jobs(2);
        // Required by the hash memtables of record families.
        o.set_allow_concurrent_memtable_write(false);
        // The WAL is buffered in memory and written by each checkpoint's
        // synced flush: what a checkpoint covers is on disk before offsets
        // are committed, and writes between checkpoints cost no system call.
        o.set_manual_wal_flush(true);
        o
    }

    /// Options of a pipeline's meta column family.
    pub(super) fn meta_options(&self) -> Options {
        self.base()
    }

    /// Options of a record column family: join-key prefix bloom and the TTL
    /// filter, which drops records that expired before `watermark` (the
    /// watermark of the last durable checkpoint, so nothing a restart may
    /// still need is dropped).
    pub(super) fn records_options(&self, watermark: Arc<AtomicI64>) -> Options {
        let mut o = self.base();
        o.set_prefix_extractor(SliceTransform::create(
            "kaflowsql.join_key",
            record_prefix,
            Some(in_domain),
        ));
        // A hash of small skip lists by join key: inserts (the hot path) do not
        // search one big list; prefix reads stay fast; only a full scan
        // (restore) pays for merging the buckets.
        o.set_memtable_factory(MemtableFactory::HashSkipList {
            bucket_count: 1 << 20,
            height: 4,
            branching_factor: 4,
        });
        o.set_compaction_filter(
            "kaflowsql.ttl",
            move |_level: u32, _key: &[u8], value: &[u8]| match layout::expire_at(value) {
                Some(at) if at < watermark.load(Ordering::Relaxed) => Decision::Remove,
                _ => Decision::Keep,
            },
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_the_join_key() {
        let mut a = Vec::new();
        layout::stream_key(3, b"abc", (0, 1, 2), &mut a);
        let mut p = Vec::new();
        layout::record_prefix(3, b"abc", &mut p);
        assert_eq!(record_prefix(&a), &p[..]);
        assert!(in_domain(&a));
        assert!(!in_domain(b"pkey"));
        assert_eq!(
            record_prefix(b"r\x01\xff\xff\xff\xff"),
            b"r\x01\xff\xff\xff\xff"
        );
    }
}
