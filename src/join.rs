//! Join rules: given a driving event (and, for a stream arrival, the event
//! pinned on its side), enumerate every joined row that state can give now.
//!
//! Rows hold shared references to the events they join; nothing is copied.
//! A LEFT join without a match gives NULLs; an INNER join without a match
//! gives no row (unless rows are built in *outer* mode, for smart emission's
//! `on_timeout: emit`).

use std::sync::Arc;

use crate::codec::{canonical_key, hash_key, Event};
use crate::sql::{JoinKind, QueryPlan, Role};
use crate::state::{is_live, DimensionTable, StreamTable};

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
    /// Index of its topic.
    pub topic: u16,
    /// Stream or dimension.
    pub role: Role,
    /// For each query column of this source, the column in the topic's events.
    pub columns: Vec<usize>,
    /// Topic columns this source's state is indexed by (its join key).
    pub index: Vec<usize>,
    /// Its records.
    pub table: Table,
}

impl SourceState {
    /// Events of this source under index key `key`, with the TTL that decides
    /// which of them are live.
    fn candidates(&self, hash: u64, key: &[u8]) -> (&[Arc<Event>], Option<i64>) {
        match &self.table {
            Table::Unstored => (&[], None),
            Table::Stream(t) => (t.events(hash, key), t.ttl_ms()),
            Table::Dimension(t) => (t.events(hash, key), t.ttl_ms()),
        }
    }

    /// Whether memory knows every record of `key` (false only for a key
    /// that left memory for disk).
    fn resident(&self, hash: u64, key: &[u8]) -> bool {
        match &self.table {
            Table::Unstored => true,
            Table::Stream(t) => t.resident(hash, key),
            Table::Dimension(t) => t.resident(hash, key),
        }
    }
}

/// A (source, key hash, key) whose records are on disk, not in memory.
pub type Miss = (usize, u64, Vec<u8>);

/// How rows are built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// INNER joins without a match give no row.
    Normal,
    /// Every join is treated as LEFT (for smart emission's timeout).
    Outer,
}

/// Lookup counters for the join hit rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LookupStats {
    /// State lookups made.
    pub lookups: u64,
    /// Lookups that found at least one record.
    pub hits: u64,
}

/// A (source, key hash) that an enumeration looked up, for smart emission.
pub type Probe = (usize, u64);

/// Builds joined rows over the current state.
pub struct Joiner<'a> {
    /// The plan.
    pub plan: &'a QueryPlan,
    /// Run-time sources, indexed like `plan.sources`.
    pub sources: &'a [SourceState],
    /// Current watermark.
    pub watermark: i64,
}

/// Canonical key of `columns` of `event`; None if a part is NULL.
pub fn key_of(event: &Event, columns: &[usize], buf: &mut Vec<u8>) -> Option<u64> {
    let values = columns.iter().map(|&c| &event.values[c]);
    canonical_key(values, buf).then(|| hash_key(buf))
}

/// Buffers reused from one enumeration to the next (no allocation per event).
#[derive(Debug, Default)]
pub struct Scratch {
    row: Vec<Option<Arc<Event>>>,
    key: Vec<u8>,
    pinned_key: Vec<u8>,
}

struct Walk<'w> {
    driving_pinned: Option<(usize, &'w Arc<Event>)>,
    mode: Mode,
    out: &'w mut Vec<Option<Arc<Event>>>,
    probes: Option<&'w mut Vec<Probe>>,
    stats: &'w mut LookupStats,
    misses: &'w mut Vec<Miss>,
    key: Vec<u8>,
    pinned_key: Vec<u8>,
    rows: usize,
}

impl Joiner<'_> {
    /// Appends to `out` every row for `driving` (stride = number of sources).
    /// With `pinned = Some((s, e))`, source `s` is `e` and nothing else.
    /// Every probe made is pushed to `probes` when given; keys whose records
    /// left memory are pushed to `misses` (the rows then miss them: the
    /// caller loads them and enumerates again). Returns the row count.
    #[allow(clippy::too_many_arguments)]
    pub fn enumerate(
        &self,
        driving: &Arc<Event>,
        pinned: Option<(usize, &Arc<Event>)>,
        mode: Mode,
        out: &mut Vec<Option<Arc<Event>>>,
        probes: Option<&mut Vec<Probe>>,
        stats: &mut LookupStats,
        scratch: &mut Scratch,
        misses: &mut Vec<Miss>,
    ) -> usize {
        let mut row = std::mem::take(&mut scratch.row);
        row.clear();
        row.resize(self.plan.sources.len(), None);
        row[0] = Some(driving.clone());
        let mut walk = Walk {
            driving_pinned: pinned,
            mode,
            out,
            probes,
            stats,
            misses,
            key: std::mem::take(&mut scratch.key),
            pinned_key: std::mem::take(&mut scratch.pinned_key),
            rows: 0,
        };
        self.step(0, &mut row, &mut walk);
        row.clear();
        scratch.row = row;
        scratch.key = walk.key;
        scratch.pinned_key = walk.pinned_key;
        walk.rows
    }

    fn step(&self, j: usize, row: &mut Vec<Option<Arc<Event>>>, walk: &mut Walk<'_>) {
        let Some(join) = self.plan.joins.get(j) else {
            walk.out.extend(row.iter().cloned());
            walk.rows += 1;
            return;
        };
        let s = join.source;
        let source = &self.sources[s];
        // The probe key, from earlier sources of this row.
        let complete = join
            .keys
            .iter()
            .all(|(probe, _)| row[probe.source].is_some());
        let probe_values = join.keys.iter().filter_map(|(probe, _)| {
            row[probe.source]
                .as_ref()
                .map(|e| &e.values[self.sources[probe.source].columns[probe.column]])
        });
        let hash = if complete && canonical_key(probe_values, &mut walk.key) {
            Some(hash_key(&walk.key))
        } else {
            None
        };
        let mut matched = false;
        if let Some(hash) = hash {
            if let Some(probes) = walk.probes.as_deref_mut() {
                probes.push((s, hash));
            }
            walk.stats.lookups += 1;
            // A copy on the stack, so deeper joins reuse `walk.key` without allocating.
            let key: smallvec::SmallVec<[u8; 64]> = smallvec::SmallVec::from_slice(&walk.key);
            match walk.driving_pinned {
                Some((ps, pe)) if ps == s => {
                    if key_of(pe, &source.index, &mut walk.pinned_key).is_some()
                        && walk.pinned_key[..] == key[..]
                    {
                        matched = true;
                        row[s] = Some(pe.clone());
                        self.step(j + 1, row, walk);
                    }
                }
                _ => {
                    if !source.resident(hash, &key) {
                        walk.misses.push((s, hash, key.to_vec()));
                    }
                    let (events, ttl) = source.candidates(hash, &key);
                    for e in events
                        .iter()
                        .filter(|e| is_live(e.timestamp, ttl, self.watermark))
                    {
                        matched = true;
                        row[s] = Some(e.clone());
                        self.step(j + 1, row, walk);
                    }
                }
            }
            if matched {
                walk.stats.hits += 1;
            }
        }
        if !matched && (join.kind == JoinKind::Left || walk.mode == Mode::Outer) {
            row[s] = None;
            self.step(j + 1, row, walk);
        }
        row[s] = None;
    }
}
