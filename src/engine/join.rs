//! The join stage: given an arrival, enumerate every joined row that state
//! can give now, into the micro-batch, grouped by the decision they await.
//!
//! - A driving event starts a group of its rows (immediate emission), or is
//!   held and its rows wait for their `require`d columns (smart emission).
//! - An arrival on an INNER-joined event stream (immediate emission) makes
//!   every row whose last member it is: one group per stored driving event.
//! - An arrival that can complete held events re-enumerates them; a passed
//!   timeout enumerates the held event once more, every join treated as LEFT.
//!
//! Join rules: a LEFT join without a match gives NULLs; an INNER join without
//! a match gives no row. Rows hold shared references to the events they join;
//! nothing is copied. A key whose records left memory is read back from disk
//! during the walk ([`SourceState::fault_in`]), so one pass sees everything.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use smallvec::SmallVec;

use super::held::{HeldId, Probe};
use super::sources::{Disk, SourceState, Table};
use super::{Engine, Origin};
use crate::codec::{canonical_key, hash_key, Event};
use crate::config::Emission;
use crate::sql::{JoinKind, QueryPlan, Role};
use crate::state::is_live;
use crate::store::StoreError;

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

/// What decides a group's rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum GroupKind {
    /// Immediate: emit every kept row.
    Emit,
    /// Smart: emit when the rows are complete.
    Smart(HeldId),
    /// Smart: the held event's timeout.
    Timeout(HeldId),
}

/// The rows one arrival made for one driving event.
#[derive(Debug)]
pub(super) struct Group {
    pub(super) kind: GroupKind,
    pub(super) driving: Origin,
    pub(super) trigger: Origin,
    /// Row indices in the batch.
    pub(super) rows: Range<usize>,
}

impl Group {
    /// The same group with its rows moved to start at row `at` (a class of
    /// the batch evaluated on its own).
    pub(super) fn moved(&self, at: usize) -> Group {
        Group {
            kind: self.kind,
            driving: self.driving,
            trigger: self.trigger,
            rows: at..at + self.rows.len(),
        }
    }
}

/// The micro-batch being built: joined rows (one slot per source of the
/// query, so `rows.len() / sources` rows) and the groups that own them.
#[derive(Debug, Default)]
pub(super) struct Batch {
    pub(super) rows: Vec<Option<Arc<Event>>>,
    pub(super) groups: Vec<Group>,
}

/// Buffers of the join stage, reused from one arrival to the next (no
/// allocation per event), and its lookup timing.
#[derive(Default)]
pub(super) struct JoinScratch {
    row: Vec<Option<Arc<Event>>>,
    key: Vec<u8>,
    pinned_key: Vec<u8>,
    probes: Vec<Probe>,
    pub(super) ids: Vec<HeldId>,
    /// The canonical join key of the current arrival.
    pub(super) key_buf: Vec<u8>,
    pub(super) lookup_timing: Option<metrics::Histogram>,
    enumerations: u64,
}

/// Canonical key of `columns` of `event`; None if a part is NULL.
pub(super) fn key_of(event: &Event, columns: &[usize], buf: &mut Vec<u8>) -> Option<u64> {
    let values = columns.iter().map(|&c| &event.values[c]);
    canonical_key(values, buf).then(|| hash_key(buf))
}

/// Builds joined rows over the current state.
pub(super) struct Joiner<'a> {
    pub(super) plan: &'a QueryPlan,
    /// Run-time sources, indexed like `plan.sources`.
    pub(super) sources: &'a mut [SourceState],
    /// Where keys that left memory are read back from (None: all in memory).
    pub(super) disk: Option<Disk<'a>>,
    pub(super) watermark: i64,
}

struct Walk<'w> {
    pinned: Option<(usize, &'w Arc<Event>)>,
    mode: Mode,
    out: &'w mut Vec<Option<Arc<Event>>>,
    probes: Option<&'w mut Vec<Probe>>,
    stats: &'w mut LookupStats,
    key: Vec<u8>,
    pinned_key: Vec<u8>,
    rows: usize,
}

impl Joiner<'_> {
    /// Appends to `out` every row for `driving` (one slot per source). With
    /// `pinned = Some((s, e))`, source `s` is `e` and nothing else. Every
    /// probe made is pushed to `probes` when given. Returns the row count.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn enumerate(
        &mut self,
        driving: &Arc<Event>,
        pinned: Option<(usize, &Arc<Event>)>,
        mode: Mode,
        out: &mut Vec<Option<Arc<Event>>>,
        probes: Option<&mut Vec<Probe>>,
        stats: &mut LookupStats,
        scratch: &mut JoinScratch,
    ) -> Result<usize, StoreError> {
        let mut row = std::mem::take(&mut scratch.row);
        row.clear();
        row.resize(self.plan.sources.len(), None);
        row[0] = Some(driving.clone());
        let mut walk = Walk {
            pinned,
            mode,
            out,
            probes,
            stats,
            key: std::mem::take(&mut scratch.key),
            pinned_key: std::mem::take(&mut scratch.pinned_key),
            rows: 0,
        };
        let result = self.step(0, &mut row, &mut walk);
        row.clear();
        scratch.row = row;
        scratch.key = walk.key;
        scratch.pinned_key = walk.pinned_key;
        result.map(|()| walk.rows)
    }

    fn step(
        &mut self,
        j: usize,
        row: &mut Vec<Option<Arc<Event>>>,
        walk: &mut Walk<'_>,
    ) -> Result<(), StoreError> {
        let plan = self.plan;
        let Some(join) = plan.joins.get(j) else {
            walk.out.extend(row.iter().cloned());
            walk.rows += 1;
            return Ok(());
        };
        let s = join.source;
        // The probe key, from earlier sources of this row.
        let complete = join
            .keys
            .iter()
            .all(|(probe, _)| row[probe.source].is_some());
        let sources = &*self.sources;
        let probe_values = join.keys.iter().filter_map(|(probe, _)| {
            row[probe.source]
                .as_ref()
                .map(|e| &e.values[sources[probe.source].columns[probe.column]])
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
            let key: SmallVec<[u8; 64]> = SmallVec::from_slice(&walk.key);
            let found: SmallVec<[Arc<Event>; 4]> = match walk.pinned {
                Some((ps, pe)) if ps == s => {
                    let same = key_of(pe, &self.sources[s].index, &mut walk.pinned_key).is_some()
                        && walk.pinned_key[..] == key[..];
                    if same {
                        smallvec::smallvec![pe.clone()]
                    } else {
                        SmallVec::new()
                    }
                }
                _ => {
                    if let Some(disk) = self.disk.as_mut() {
                        self.sources[s].fault_in(s, hash, &key, disk)?;
                    }
                    let (events, ttl) = self.sources[s].candidates(hash, &key);
                    events
                        .iter()
                        .filter(|e| is_live(e.timestamp, ttl, self.watermark))
                        .cloned()
                        .collect()
                }
            };
            for e in found {
                matched = true;
                row[s] = Some(e);
                self.step(j + 1, row, walk)?;
            }
            if matched {
                walk.stats.hits += 1;
            }
        }
        if !matched && (join.kind == JoinKind::Left || walk.mode == Mode::Outer) {
            row[s] = None;
            self.step(j + 1, row, walk)?;
        }
        row[s] = None;
        Ok(())
    }
}

impl Engine {
    /// Enumerates the rows of `driving` into the batch as one group of `kind`;
    /// `register`: record the probes made for the held event (smart).
    pub(super) fn enumerate_group(
        &mut self,
        kind: GroupKind,
        driving: &Arc<Event>,
        pinned: Option<(usize, &Arc<Event>)>,
        mode: Mode,
        trigger: Origin,
        register: bool,
    ) -> Result<(), StoreError> {
        let stride = self.plan.sources.len();
        let start = self.batch.rows.len() / stride;
        let scratch = &mut self.join;
        scratch.enumerations += 1;
        let timed = scratch.lookup_timing.is_some() && scratch.enumerations % 64 == 0;
        let (started, lookups_before) = (timed.then(Instant::now), self.stats.lookups.lookups);
        let mut probes = std::mem::take(&mut scratch.probes);
        probes.clear();
        // A row lives in its driving event's partition (the streams are
        // co-partitioned): that partition's watermark decides what is live.
        let watermark = self.clock.watermark(driving.partition);
        let topics = &mut self.topics;
        let mut revive = |e| topics.revive(e);
        let mut joiner = Joiner {
            plan: &self.plan,
            sources: &mut self.sources,
            disk: self.durable.store.as_ref().map(|store| Disk {
                store,
                revive: &mut revive,
                watermark,
            }),
            watermark,
        };
        let n = joiner.enumerate(
            driving,
            pinned,
            mode,
            &mut self.batch.rows,
            register.then_some(&mut probes),
            &mut self.stats.lookups,
            scratch,
        );
        if let (Some(t), Some(h)) = (started, &scratch.lookup_timing) {
            let lookups = self.stats.lookups.lookups - lookups_before;
            if lookups > 0 {
                h.record_many(t.elapsed().as_secs_f64() / lookups as f64, lookups as usize);
            }
        }
        let n = n?;
        if let GroupKind::Smart(id) = kind {
            self.held.register(id, &probes);
        }
        self.join.probes = probes;
        if n == 0 && kind == GroupKind::Emit {
            return Ok(());
        }
        self.batch.groups.push(Group {
            kind,
            driving: Origin::of(driving),
            trigger,
            rows: start..start + n,
        });
        Ok(())
    }

    /// A driving event arrives: its rows form a group (immediate), or it is
    /// held until they are complete (smart).
    pub(super) fn drive(&mut self, event: &Arc<Event>) -> Result<(), StoreError> {
        let origin = Origin::of(event);
        match self.emission {
            Emission::Immediate => {
                self.enumerate_group(GroupKind::Emit, event, None, Mode::Normal, origin, false)
            }
            Emission::Smart { timeout_ms, .. } => {
                let id = self
                    .held
                    .hold(event.clone(), event.timestamp.saturating_add(timeout_ms));
                self.pins.pin(event.topic, event.partition, event.offset);
                self.note_held(id);
                self.enumerate_group(
                    GroupKind::Smart(id),
                    event,
                    None,
                    Mode::Normal,
                    origin,
                    true,
                )
            }
        }
    }

    /// A record of joined source `s` with join key hash `hash` (its key in
    /// `join.key_buf`) arrives, after it was stored.
    pub(super) fn join_arrival(
        &mut self,
        s: usize,
        event: &Arc<Event>,
        hash: u64,
        trigger: Origin,
    ) -> Result<(), StoreError> {
        match self.emission {
            Emission::Immediate => {
                let inner_stream = self.sources[s].role == Role::Stream
                    && self
                        .plan
                        .join_of(s)
                        .is_some_and(|j| j.kind == JoinKind::Inner);
                if !inner_stream {
                    return Ok(());
                }
                // Every combination whose last member is this event.
                let key = std::mem::take(&mut self.join.key_buf);
                let drivers = self.live_drivers(hash, &key, event.partition);
                self.join.key_buf = key;
                for d in drivers? {
                    self.enumerate_group(
                        GroupKind::Emit,
                        &d,
                        Some((s, event)),
                        Mode::Normal,
                        trigger,
                        false,
                    )?;
                }
                Ok(())
            }
            Emission::Smart { .. } => {
                let mut ids = std::mem::take(&mut self.join.ids);
                self.held.waiting_on((s, hash), &mut ids);
                let mut result = Ok(());
                for &id in &ids {
                    let Some(h) = self.held.get(id) else { continue };
                    let driving = h.event.clone();
                    result = self.enumerate_group(
                        GroupKind::Smart(id),
                        &driving,
                        None,
                        Mode::Normal,
                        trigger,
                        true,
                    );
                    if result.is_err() {
                        break;
                    }
                }
                self.join.ids = ids;
                result
            }
        }
    }

    /// The stored driving events under join key `key`, live at the
    /// watermark of `partition`.
    fn live_drivers(
        &mut self,
        hash: u64,
        key: &[u8],
        partition: i32,
    ) -> Result<Vec<Arc<Event>>, StoreError> {
        let watermark = self.clock.watermark(partition);
        self.fault_in(0, hash, key, watermark)?;
        Ok(match &self.sources[0].table {
            Table::Stream(t) => t.lookup(hash, key, watermark).cloned().collect(),
            _ => Vec::new(),
        })
    }

    /// The watermark of `partition` moved to `wm`: its held smart events
    /// whose timeout passed are enumerated once more for their verdict.
    pub(super) fn on_watermark(&mut self, partition: i32, wm: i64) -> Result<(), StoreError> {
        if !matches!(self.emission, Emission::Smart { .. }) {
            return Ok(());
        }
        let mut due = std::mem::take(&mut self.join.ids);
        self.held.due(partition, wm, &mut due);
        let mut result = Ok(());
        for &id in &due {
            let Some(h) = self.held.get(id) else { continue };
            let event = h.event.clone();
            let origin = Origin::of(&event);
            result = self.enumerate_group(
                GroupKind::Timeout(id),
                &event,
                None,
                Mode::Outer,
                origin,
                false,
            );
            if result.is_err() {
                break;
            }
        }
        self.join.ids = due;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Value;
    use crate::config::Pipeline;
    use crate::engine::topics::{self, Topics};

    /// An event of topic `topic` with `fields` by column name (other columns NULL).
    fn event(topics: &Topics, topic: u16, offset: i64, fields: &[(&str, &str)]) -> Arc<Event> {
        let columns = &topics.get(topic).schema.columns;
        let values: Vec<Value> = columns
            .iter()
            .map(|c| {
                fields
                    .iter()
                    .find(|(n, _)| n == c)
                    .map_or(Value::Null, |(_, v)| Value::Str((*v).into()))
            })
            .collect();
        Arc::new(Event {
            topic,
            partition: 0,
            offset,
            timestamp: 1_000,
            key: None,
            values: values.into_boxed_slice(),
        })
    }

    fn plan_of(query: &str, dimensions: &str) -> Pipeline {
        let text = format!(
            "name: t\nquery: |\n  {query}\noutput:\n  topic: out\nstate:\n  events:\n    default_ttl: 1m\n  dimensions: [{dimensions}]\n"
        );
        match Pipeline::parse(std::path::Path::new("t.yaml"), &text) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    /// Stores `e` in source `s` under the value of its first index column.
    fn store(sources: &mut [SourceState], s: usize, e: Arc<Event>) {
        let mut k = Vec::new();
        let Some(h) = key_of(&e, &sources[s].index, &mut k) else {
            panic!("null key")
        };
        match &mut sources[s].table {
            Table::Stream(t) => t.insert(h, &k, e),
            Table::Dimension(t) => {
                let primary = k.clone();
                t.upsert(&primary, h, &k, e);
            }
            Table::Unstored => {}
        }
    }

    fn rows(
        p: &Pipeline,
        sources: &mut [SourceState],
        driving: &Arc<Event>,
        mode: Mode,
    ) -> Vec<Vec<Option<i64>>> {
        let mut out = Vec::new();
        let mut stats = LookupStats::default();
        let mut scratch = JoinScratch::default();
        let mut joiner = Joiner {
            plan: &p.plan,
            sources,
            disk: None,
            watermark: 0,
        };
        let n = match joiner.enumerate(
            driving,
            None,
            mode,
            &mut out,
            None,
            &mut stats,
            &mut scratch,
        ) {
            Ok(n) => n,
            Err(e) => panic!("{e}"),
        };
        let stride = p.plan.sources.len();
        assert_eq!(out.len(), n * stride);
        out.chunks(stride)
            .map(|r| r.iter().map(|e| e.as_ref().map(|e| e.offset)).collect())
            .collect()
    }

    #[test]
    fn left_join_without_a_match_gives_nulls_and_inner_gives_nothing() {
        let p = plan_of(
            "SELECT o.order_id, c.name FROM orders o LEFT JOIN customers c ON o.customer_id = c.customer_id",
            "customers",
        );
        let (t, mut sources) = topics::resolve(&p);
        let order = event(&t, 0, 1, &[("order_id", "o1"), ("customer_id", "c1")]);
        assert_eq!(
            rows(&p, &mut sources, &order, Mode::Normal),
            [[Some(1), None]]
        );
        store(
            &mut sources,
            1,
            event(&t, 1, 7, &[("name", "Ada"), ("customer_id", "c1")]),
        );
        assert_eq!(
            rows(&p, &mut sources, &order, Mode::Normal),
            [[Some(1), Some(7)]]
        );
        let inner = plan_of(
            "SELECT o.order_id, p.amount FROM orders o JOIN payments p ON o.order_id = p.order_id",
            "",
        );
        let (t, mut sources) = topics::resolve(&inner);
        let order = event(&t, 0, 1, &[("order_id", "o1")]);
        assert!(rows(&inner, &mut sources, &order, Mode::Normal).is_empty());
        assert_eq!(
            rows(&inner, &mut sources, &order, Mode::Outer),
            [[Some(1), None]],
            "outer mode (a smart timeout) treats INNER as LEFT"
        );
        for (offset, amount) in [(5, "10"), (6, "20")] {
            let payment = event(&t, 1, offset, &[("order_id", "o1"), ("amount", amount)]);
            store(&mut sources, 1, payment);
        }
        assert_eq!(
            rows(&inner, &mut sources, &order, Mode::Normal),
            [[Some(1), Some(5)], [Some(1), Some(6)]],
            "one row per matching record, in arrival order"
        );
    }
}
