//! The emission stage: after DuckDB evaluated a micro-batch, decide group by
//! group, in arrival order, which rows are written.
//!
//! - `immediate`: every row the filter keeps (`WHERE NULL` keeps nothing, as in SQL).
//! - `smart`: a held event's complete rows (every `require`d column non-NULL)
//!   are written and the event released; incomplete rows wait for the next
//!   arrival that can complete them. At the timeout the held event is
//!   released and, with `on_timeout: emit`, its rows are written with NULLs.
//! - A group with a row that failed in SQL sends its driving record to the
//!   dead letters instead (a held event is released).
//! - A LEFT join with ON conditions beyond its key: a candidate that fails
//!   them is no match. Its row is dropped when another candidate of the same
//!   row matched; when none did, one row stays, NULL-extended (its columns
//!   read as NULL in the SQL), as standard SQL has it.

use std::collections::HashMap;
use std::sync::Arc;

use duckdb::arrow::array::{Array, UInt32Array};
use duckdb::arrow::compute::take_record_batch;

use super::evaluate::Evaluated;
use super::held::HeldId;
use super::join::{Group, GroupKind};
use super::{DeadLetter, Engine, EngineError, EngineStats, Origin, Outputs};
use crate::codec::Event;
use crate::config::{Emission, OnTimeout};

/// The rows chosen so far, as result-row positions, with their origins.
#[derive(Default)]
struct Picks {
    positions: Vec<u32>,
    origins: Vec<(Origin, Origin)>,
    /// Batch rows that are no match of a LEFT join's ON conditions (see [`unmatched`]).
    unmatched: Vec<bool>,
}

impl Picks {
    fn is_unmatched(&self, row: usize) -> bool {
        self.unmatched.get(row).copied().unwrap_or(false)
    }

    /// Takes batch row `row` of group `g` if the filter keeps it.
    fn take(&mut self, ev: &Evaluated, row: usize, g: &Group, stats: &mut EngineStats) {
        let i = ev.position[row];
        if i == u32::MAX || self.is_unmatched(row) {
            return;
        }
        let kept = match &ev.keep {
            // WHERE NULL keeps nothing, as in SQL.
            Some(k) => k.is_valid(i as usize) && k.value(i as usize),
            None => true,
        };
        if kept {
            self.positions.push(i);
            self.origins.push((g.driving, g.trigger));
        } else {
            stats.filtered += 1;
        }
    }
}

/// Batch rows that are no match: for each LEFT join with ON conditions
/// beyond its key (`ev.on`), among a group's rows that differ only in that
/// join's candidate, those whose candidate failed the conditions when
/// another passed, and all but the first when none passed (it stays,
/// NULL-extended). The later joins do not depend on such a join's columns
/// (the planner refuses that), so those rows are exactly its candidates.
fn unmatched(
    groups: &[Group],
    rows: &[Option<Arc<Event>>],
    stride: usize,
    sources: &[usize],
    ev: &Evaluated,
) -> Vec<bool> {
    let count = groups.last().map_or(0, |g| g.rows.end);
    let mut out = vec![false; count];
    let identity = |e: &Option<Arc<Event>>| e.as_ref().map_or(0, |e| Arc::as_ptr(e) as usize);
    for ((_, passed), &s) in ev.on.iter().zip(sources) {
        for g in groups {
            let mut rest: HashMap<Vec<usize>, (bool, Vec<usize>)> = HashMap::new();
            for r in g.rows.clone() {
                let i = ev.position[r];
                if i == u32::MAX || out[r] {
                    continue;
                }
                let ok = passed.is_valid(i as usize) && passed.value(i as usize);
                let others: Vec<usize> = (0..stride)
                    .filter(|&x| x != s)
                    .map(|x| identity(&rows[r * stride + x]))
                    .collect();
                let entry = rest.entry(others).or_default();
                if ok {
                    entry.0 = true;
                } else {
                    entry.1.push(r);
                }
            }
            for (any, failed) in rest.into_values() {
                for r in failed.into_iter().skip(usize::from(!any)) {
                    out[r] = true;
                }
            }
        }
    }
    out
}

/// Whether batch row `row` has every column of `require` (output column
/// indices) non-NULL.
fn complete(ev: &Evaluated, row: usize, require: &[usize]) -> bool {
    let i = ev.position[row];
    i != u32::MAX
        && require
            .iter()
            .all(|&c| !ev.values.column(c).is_null(i as usize))
}

impl Engine {
    /// Decides, group by group in arrival order, which evaluated rows of
    /// `rows` are written to `out`.
    pub(super) fn decide(
        &mut self,
        groups: &[Group],
        rows: &[Option<Arc<Event>>],
        result: Option<&Evaluated>,
        out: &mut Outputs,
    ) -> Result<(), EngineError> {
        let stride = self.plan.sources.len();
        let mut picks = Picks::default();
        if let Some(ev) = result.filter(|ev| !ev.on.is_empty()) {
            let sources: Vec<usize> = ev
                .on
                .iter()
                .map(|(j, _)| self.plan.joins[*j].source)
                .collect();
            picks.unmatched = unmatched(groups, rows, stride, &sources, ev);
        }
        let mut dead: Vec<Origin> = Vec::new();
        for g in groups {
            let failure = result.and_then(|ev| {
                g.rows
                    .clone()
                    .find_map(|r| ev.failure(r).map(str::to_string))
            });
            if let Some(why) = &failure {
                let driving = rows.get(g.rows.start * stride).and_then(Option::as_ref);
                if let Some(event) = driving {
                    if !dead.contains(&g.driving) {
                        dead.push(g.driving);
                        out.dead_letters.push(self.dead_row(event, why));
                        self.stats.dead_letters += 1;
                    }
                }
            }
            self.pick(g, result, failure.is_some(), &mut picks);
        }
        let Some(ev) = result else { return Ok(()) };
        if picks.positions.is_empty() {
            return Ok(());
        }
        // Every result row in order (no row filtered, held or failed, the
        // usual case): the evaluated batch as it is, not a copy.
        let every_row = picks.positions.len() == ev.values.num_rows()
            && picks
                .positions
                .iter()
                .enumerate()
                .all(|(i, &p)| p as usize == i);
        let chosen = if every_row {
            ev.values.clone()
        } else {
            take_record_batch(&ev.values, &UInt32Array::from(picks.positions))?
        };
        let written = out.write(&chosen, &self.layout, &picks.origins)?;
        self.stats.emitted += written as u64;
        Ok(())
    }

    /// Applies the emission rule of `g` (whose rows failed in SQL when
    /// `failed`): picks the rows to write, releases a held event.
    fn pick(&mut self, g: &Group, ev: Option<&Evaluated>, failed: bool, picks: &mut Picks) {
        let all = |picks: &mut Picks, stats: &mut EngineStats| {
            if let Some(ev) = ev {
                for row in g.rows.clone() {
                    picks.take(ev, row, g, stats);
                }
            }
        };
        match g.kind {
            GroupKind::Emit => all(picks, &mut self.stats),
            GroupKind::Smart(id) => {
                if self.held.get(id).is_none() {
                    return;
                }
                if failed {
                    self.release(id);
                    return;
                }
                let (Emission::Smart { require, .. }, Some(ev)) = (&self.emission, ev) else {
                    return;
                };
                let done: Vec<usize> = g
                    .rows
                    .clone()
                    .filter(|&r| !picks.is_unmatched(r) && complete(ev, r, require))
                    .collect();
                if done.is_empty() {
                    return;
                }
                for row in done {
                    picks.take(ev, row, g, &mut self.stats);
                }
                self.release(id);
            }
            GroupKind::Timeout(id) => {
                if !self.release(id) || failed {
                    return;
                }
                let emit = matches!(
                    self.emission,
                    Emission::Smart {
                        on_timeout: OnTimeout::Emit,
                        ..
                    }
                );
                if emit {
                    self.stats.timeouts_emitted += 1;
                    all(picks, &mut self.stats);
                } else {
                    self.stats.timeouts_dropped += 1;
                }
            }
        }
    }

    /// Stops holding `id` and unpins its offset; false if it was not held.
    fn release(&mut self, id: HeldId) -> bool {
        match self.held.release(id) {
            Some(h) => {
                self.pins
                    .unpin(h.event.topic, h.event.partition, h.event.offset);
                self.note_release(id, &h.event);
                true
            }
            None => false,
        }
    }

    /// A dead letter (counted) for the driving record `driving` of an
    /// output row (JSON `row`) that could not be written in the output's
    /// format: the row stands in for the record's original bytes until the
    /// caller swaps them.
    pub fn unfit_row(&mut self, driving: Origin, row: &[u8], reason: String) -> DeadLetter {
        self.stats.dead_letters += 1;
        DeadLetter {
            topic: self.topics.name(driving.topic).to_string(),
            partition: driving.partition,
            offset: driving.offset,
            key: None,
            value: Some(row.to_vec()),
            reason,
            kind: "output_encode",
            decoded_copy: true,
        }
    }

    /// A dead letter for `event`, whose row failed in SQL: its decoded
    /// columns stand in for its original bytes until the caller swaps them.
    fn dead_row(&self, event: &Event, reason: &str) -> DeadLetter {
        let schema = &self.topics.get(event.topic).schema;
        let mut value = Vec::new();
        crate::codec::encode_decoded_json(&schema.columns, &event.values, &mut value);
        DeadLetter {
            topic: schema.topic.clone(),
            partition: event.partition,
            offset: event.offset,
            key: event.key.as_deref().map(<[u8]>::to_vec),
            value: Some(value),
            reason: reason.to_string(),
            kind: "sql_row",
            decoded_copy: true,
        }
    }
}
