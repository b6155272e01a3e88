//! Durable state on RocksDB: one database per instance under
//! `state.rocksdb.path`, a column family per pipeline source (its records, by
//! join key) and one per pipeline for its meta data (source offsets, the
//! clock, held smart-emission events, the pipeline fingerprint).
//!
//! The directory carries a marker file; a directory without it, one locked by
//! another process, or one written by another version of a pipeline is
//! refused with a message that says what to do, and nothing is overwritten.

pub mod layout;
mod options;
mod pipeline;
mod writer;

pub use layout::{LayoutError, NEVER};
pub use pipeline::{Checkpoint, PipelineStore, Restored};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};

use rocksdb::{DBWithThreadMode, MultiThreaded};

use crate::config::StateConfig;

/// Which column family a staged change goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The records of source `n` of the query.
    Source(usize),
    /// The pipeline's meta family.
    Meta,
}

/// The database type: column families can be created from any thread.
pub type Db = DBWithThreadMode<MultiThreaded>;

/// The marker file that makes a directory a kaflowsql state directory.
pub const MARKER: &str = "KAFLOWSQL_STATE";
const FORMAT: &str = "kaflowsql state format 1\n";
/// Directory used when `state.rocksdb.path` is not set.
pub const DEFAULT_PATH: &str = "kaflowsql-state";
/// Name of a pipeline's meta column family.
const META: &str = "@meta";

/// Why state cannot be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory holds something other than kaflowsql state.
    #[error("{path}: this directory is not empty and is not a kaflowsql state directory (it has no {MARKER} file); nothing was changed\n  help: set state.rocksdb.path (or KAFLOWSQL_STATE_ROCKSDB_PATH) to an empty directory or to one kaflowsql created", path = .path.display())]
    Foreign {
        /// The directory.
        path: PathBuf,
    },
    /// Another process has the database open.
    #[error("{path}: the state directory is locked by another process (RocksDB LOCK): {reason}\n  help: stop the other kaflowsql using it, or give this instance its own state.rocksdb.path", path = .path.display())]
    Locked {
        /// The directory.
        path: PathBuf,
        /// What RocksDB said.
        reason: String,
    },
    /// The database cannot be opened.
    #[error("{path}: cannot open the state database: {reason}\n  help: if the directory is damaged, move it away; kaflowsql then rebuilds state from Kafka (from the committed offsets)", path = .path.display())]
    Open {
        /// The directory.
        path: PathBuf,
        /// What RocksDB said.
        reason: String,
    },
    /// The stored state was written for another version of the pipeline.
    #[error("{path}: the state of pipeline `{pipeline}` was written by a different version of it (its topics, columns, join keys or emission changed), so it cannot be reused\n  help: run `kaflowsql state reset {pipeline} --config <global.yaml>` to discard it, or set state.rocksdb.path to a new directory", path = .path.display())]
    Version {
        /// The directory.
        path: PathBuf,
        /// The pipeline.
        pipeline: String,
    },
    /// A file-system operation failed.
    #[error("{path}: {source}", path = .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// A read or write failed.
    #[error("state database: cannot {what}: {source}")]
    Rocks {
        /// What was being done.
        what: &'static str,
        /// The failure.
        source: rocksdb::Error,
    },
    /// Writing state failed; the pipeline stops (its last checkpoint stands).
    #[error("state database: a write failed: {0}\n  help: check the disk of state.rocksdb.path (space, permissions); a restart resumes from the last checkpoint")]
    Write(String),
    /// A stored value is not in kaflowsql's layout.
    #[error("state of `{column_family}` is corrupt: {source}\n  help: run `kaflowsql state reset` for this pipeline to rebuild its state from Kafka")]
    Corrupt {
        /// The column family.
        column_family: String,
        /// The failure.
        source: LayoutError,
    },
}

fn rocks(what: &'static str) -> impl FnOnce(rocksdb::Error) -> StoreError {
    move |source| StoreError::Rocks { what, source }
}

/// The state database of this instance.
pub struct StateDb {
    db: Db,
    path: PathBuf,
    tuning: options::Tuning,
    /// Durable watermark per pipeline, read by the TTL compaction filter.
    watermarks: Mutex<HashMap<String, Arc<AtomicI64>>>,
    /// Options of column families created after opening: RocksDB keeps raw
    /// pointers into them (the compaction filter), so they live as long as
    /// the database (families opened with it are kept by the `rocksdb` crate).
    created: Mutex<Vec<rocksdb::Options>>,
}

impl std::fmt::Debug for StateDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDb").field("path", &self.path).finish()
    }
}

/// Entries and bytes of one column family, per shard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FamilyStats {
    /// Column family name (`pipeline/source` or `pipeline/@meta`).
    pub name: String,
    /// Record entries per shard (256 of them; meta families have none).
    pub shards: Vec<(u64, u64)>,
    /// Other entries (primary index, offsets, held events).
    pub other: u64,
    /// Records already past their TTL, waiting for compaction to remove them.
    pub expired: u64,
}

impl FamilyStats {
    /// Record entries over all shards.
    pub fn entries(&self) -> u64 {
        self.shards.iter().map(|s| s.0).sum()
    }

    /// Record bytes (keys and values) over all shards.
    pub fn bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.1).sum()
    }
}

fn pipeline_of(family: &str) -> Option<&str> {
    family.rsplit_once('/').map(|(p, _)| p)
}

impl StateDb {
    /// Opens (or creates) the state directory of `config`.
    pub fn open(config: &StateConfig) -> Result<Arc<Self>, StoreError> {
        let path = config
            .rocksdb
            .path
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
        let tuning = options::Tuning::from_config(config);
        prepare_directory(&path)?;
        let watermarks: Mutex<HashMap<String, Arc<AtomicI64>>> = Mutex::default();
        let existing = if path.join("CURRENT").exists() {
            Db::list_cf(&tuning.db_options(), &path).map_err(|e| open_error(&path, e))?
        } else {
            vec!["default".to_string()]
        };
        let descriptors = {
            let mut marks = watermarks.lock().map_err(|_| poisoned())?;
            existing
                .iter()
                .map(|name| {
                    let opts = match pipeline_of(name) {
                        Some(p) if !name.ends_with(META) => {
                            let mark = marks
                                .entry(p.to_string())
                                .or_insert_with(|| Arc::new(AtomicI64::new(i64::MIN)))
                                .clone();
                            tuning.records_options(mark)
                        }
                        _ => tuning.meta_options(),
                    };
                    rocksdb::ColumnFamilyDescriptor::new(name, opts)
                })
                .collect::<Vec<_>>()
        };
        let db = Db::open_cf_descriptors(&tuning.db_options(), &path, descriptors)
            .map_err(|e| open_error(&path, e))?;
        Ok(Arc::new(Self {
            db,
            path,
            tuning,
            watermarks,
            created: Mutex::default(),
        }))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes the shared block cache holds now.
    pub fn cache_usage(&self) -> u64 {
        self.tuning.cache.get_usage() as u64
    }

    /// Memory budget for hot state per pipeline, if one is set.
    pub fn memory_budget(&self) -> Option<u64> {
        self.tuning.memory
    }

    fn families(&self) -> Result<Vec<String>, StoreError> {
        Db::list_cf(&self.tuning.db_options(), &self.path).map_err(rocks("list column families"))
    }

    /// Opens the state of one pipeline: `sources` names a column family per
    /// stored source; `fingerprint` identifies the pipeline version.
    pub fn pipeline(
        self: &Arc<Self>,
        name: &str,
        fingerprint: &str,
        sources: &[Option<String>],
    ) -> Result<PipelineStore, StoreError> {
        let mark = self
            .watermarks
            .lock()
            .map_err(|_| poisoned())?
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(AtomicI64::new(i64::MIN)))
            .clone();
        let meta = format!("{name}/{META}");
        let families: Vec<Option<String>> = sources
            .iter()
            .map(|s| s.as_ref().map(|alias| format!("{name}/{alias}")))
            .collect();
        if self.db.cf_handle(&meta).is_none() {
            self.create_family(&meta, self.tuning.meta_options())?;
        }
        for family in families.iter().flatten() {
            if self.db.cf_handle(family).is_none() {
                self.create_family(family, self.tuning.records_options(mark.clone()))?;
            }
        }
        let store = PipelineStore::new(self.clone(), name, meta, families, mark)?;
        match store.fingerprint()? {
            Some(stored) if stored != fingerprint => Err(StoreError::Version {
                path: self.path.clone(),
                pipeline: name.to_string(),
            }),
            Some(_) => Ok(store),
            None => {
                store.set_fingerprint(fingerprint)?;
                Ok(store)
            }
        }
    }

    fn create_family(&self, name: &str, options: rocksdb::Options) -> Result<(), StoreError> {
        self.db
            .create_cf(name, &options)
            .map_err(rocks("create a column family"))?;
        self.created.lock().map_err(|_| poisoned())?.push(options);
        Ok(())
    }

    /// Entries and bytes of every column family (of `pipeline`, if given).
    pub fn inspect(&self, pipeline: Option<&str>) -> Result<Vec<FamilyStats>, StoreError> {
        let mut out = Vec::new();
        for name in self.families()? {
            let Some(p) = pipeline_of(&name) else {
                continue;
            };
            if pipeline.is_some_and(|want| want != p) {
                continue;
            }
            let watermark = self.durable_watermark(p)?;
            out.push(pipeline::family_stats(&self.db, &name, watermark)?);
        }
        Ok(out)
    }

    fn durable_watermark(&self, pipeline: &str) -> Result<i64, StoreError> {
        let Some(cf) = self.db.cf_handle(&format!("{pipeline}/{META}")) else {
            return Ok(i64::MIN);
        };
        let clock = self
            .db
            .get_cf(&cf, layout::CLOCK)
            .map_err(rocks("read the clock"))?;
        Ok(match clock {
            Some(bytes) => layout::decode_clock(&bytes)
                .map(|(w, _)| w)
                .unwrap_or(i64::MIN),
            None => i64::MIN,
        })
    }

    /// Pipelines that have state here.
    pub fn pipelines(&self) -> Result<Vec<String>, StoreError> {
        let mut names: Vec<String> = self
            .families()?
            .iter()
            .filter_map(|f| pipeline_of(f).map(str::to_string))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Drops every column family of `pipeline`; returns how many there were.
    pub fn reset(&self, pipeline: &str) -> Result<usize, StoreError> {
        let mut dropped = 0;
        for name in self.families()? {
            if pipeline_of(&name) == Some(pipeline) {
                self.db
                    .drop_cf(&name)
                    .map_err(rocks("drop a column family"))?;
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    /// Compacts every column family now, so expired records leave the disk.
    pub fn compact(&self) -> Result<(), StoreError> {
        for name in self.families()? {
            let Some(p) = pipeline_of(&name) else {
                continue;
            };
            self.load_watermark(p)?;
            if let Some(cf) = self.db.cf_handle(&name) {
                self.db.compact_range_cf(&cf, None::<&[u8]>, None::<&[u8]>);
            }
        }
        Ok(())
    }

    /// Sets the compaction filter's watermark of `pipeline` from what is stored.
    fn load_watermark(&self, pipeline: &str) -> Result<(), StoreError> {
        let w = self.durable_watermark(pipeline)?;
        if let Some(mark) = self
            .watermarks
            .lock()
            .map_err(|_| poisoned())?
            .get(pipeline)
        {
            mark.store(w, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }
}

fn poisoned() -> StoreError {
    StoreError::Open {
        path: PathBuf::new(),
        reason: "a lock was poisoned by a panic (this is a bug)".into(),
    }
}

fn open_error(path: &Path, e: rocksdb::Error) -> StoreError {
    let reason = e.into_string();
    let lower = reason.to_ascii_lowercase();
    if lower.contains("lock") && (lower.contains("unavailable") || lower.contains("hold")) {
        StoreError::Locked {
            path: path.to_path_buf(),
            reason,
        }
    } else {
        StoreError::Open {
            path: path.to_path_buf(),
            reason,
        }
    }
}

/// Creates `path` if needed; refuses a non-empty directory without the marker.
fn prepare_directory(path: &Path) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let marker = path.join(MARKER);
    let claim = || {
        std::fs::write(&marker, FORMAT).map_err(|source| StoreError::Io {
            path: marker.clone(),
            source,
        })
    };
    if !path.exists() {
        std::fs::create_dir_all(path).map_err(io)?;
        return claim();
    }
    if !path.is_dir() {
        return Err(StoreError::Foreign {
            path: path.to_path_buf(),
        });
    }
    let empty = std::fs::read_dir(path).map_err(io)?.next().is_none();
    if empty {
        return claim();
    }
    match std::fs::read_to_string(&marker) {
        Ok(text) if text == FORMAT => Ok(()),
        Ok(_) => Err(StoreError::Open {
            path: path.to_path_buf(),
            reason: format!(
                "{MARKER} names a state format this version does not read; expected `{}`",
                FORMAT.trim()
            ),
        }),
        Err(_) => Err(StoreError::Foreign {
            path: path.to_path_buf(),
        }),
    }
}

impl crate::error::Classified for StoreError {
    fn domain(&self) -> crate::error::Domain {
        use crate::error::Domain;
        match self {
            // The operator has to move, free or reset the directory.
            StoreError::Foreign { .. }
            | StoreError::Locked { .. }
            | StoreError::Version { .. }
            | StoreError::Open { .. } => Domain::Config,
            StoreError::Io { .. }
            | StoreError::Rocks { .. }
            | StoreError::Write(_)
            | StoreError::Corrupt { .. } => Domain::External,
        }
    }

    fn retry(&self) -> crate::error::Retry {
        // A failed state read or write stops the pipeline: its last checkpoint
        // stands, and a restart resumes from it.
        crate::error::Retry::Never
    }

    fn kind(&self) -> &'static str {
        match self.domain() {
            crate::error::Domain::Config => "state_directory",
            _ => "state_io",
        }
    }
}
