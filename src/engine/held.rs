//! Smart emission's held events: a driving event waits here until its row
//! has every `require`d column, until an arrival that can complete it
//! re-evaluates it, or until its timeout passes.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use smallvec::SmallVec;

use crate::codec::Event;

/// A (source, key hash) that an enumeration looked up: an arrival there may
/// complete the held events that made it.
pub type Probe = (usize, u64);

/// Identifies a held event.
pub type HeldId = u64;

/// A driving event waiting for its data.
#[derive(Debug)]
pub struct HeldEvent {
    /// The driving event.
    pub event: Arc<Event>,
    /// Event time after which it times out.
    pub deadline: i64,
    /// Its timeout has been queued: no more re-evaluations.
    pub timing_out: bool,
}

/// Every held event, what each waits on, and when each times out.
#[derive(Debug, Default)]
pub struct Held {
    entries: HashMap<HeldId, HeldEvent>,
    /// Probe (source and key hash, mixed) -> held events that looked it up.
    waiting: HashMap<u64, SmallVec<[HeldId; 2]>>,
    /// (partition, deadline, id): each partition times out by its own watermark.
    deadlines: BTreeSet<(i32, i64, HeldId)>,
    next: HeldId,
    released: usize,
}

fn probe_hash((source, hash): Probe) -> u64 {
    hash ^ (source as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl Held {
    /// Holds `event` until `deadline` (event time).
    pub fn hold(&mut self, event: Arc<Event>, deadline: i64) -> HeldId {
        let id = self.next;
        self.next += 1;
        self.deadlines.insert((event.partition, deadline, id));
        self.entries.insert(
            id,
            HeldEvent {
                event,
                deadline,
                timing_out: false,
            },
        );
        id
    }

    /// Number of held events.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The held event `id`, if still held.
    pub fn get(&self, id: HeldId) -> Option<&HeldEvent> {
        self.entries.get(&id)
    }

    /// Pushes to `out` the id of every held event `pick` says.
    pub fn select(&self, pick: impl Fn(&Event) -> bool, out: &mut Vec<HeldId>) {
        out.extend(
            self.entries
                .iter()
                .filter(|(_, h)| pick(&h.event))
                .map(|(&id, _)| id),
        );
    }

    /// Records that `id` looked up each of `probes`, so arrivals there re-evaluate it.
    pub fn register(&mut self, id: HeldId, probes: &[Probe]) {
        for &p in probes {
            let ids = self.waiting.entry(probe_hash(p)).or_default();
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }

    /// Held events (not timing out) that looked up `probe`, in hold order.
    pub fn waiting_on(&mut self, probe: Probe, out: &mut Vec<HeldId>) {
        out.clear();
        let h = probe_hash(probe);
        let Some(ids) = self.waiting.get_mut(&h) else {
            return;
        };
        ids.retain(|id| self.entries.contains_key(id));
        if ids.is_empty() {
            self.waiting.remove(&h);
            return;
        }
        out.extend(
            ids.iter()
                .copied()
                .filter(|id| self.entries.get(id).is_some_and(|e| !e.timing_out)),
        );
        out.sort_unstable();
    }

    /// Held events of `partition` whose deadline is before `watermark`;
    /// marks them timing out.
    pub fn due(&mut self, partition: i32, watermark: i64, out: &mut Vec<HeldId>) {
        out.clear();
        let from = (partition, i64::MIN, 0);
        while let Some(&(p, deadline, id)) = self.deadlines.range(from..).next() {
            if p != partition || deadline >= watermark {
                break;
            }
            self.deadlines.remove(&(p, deadline, id));
            if let Some(e) = self.entries.get_mut(&id) {
                e.timing_out = true;
                out.push(id);
            }
        }
    }

    /// Stops holding `id`.
    pub fn release(&mut self, id: HeldId) -> Option<HeldEvent> {
        let e = self.entries.remove(&id)?;
        self.deadlines.remove(&(e.event.partition, e.deadline, id));
        self.released += 1;
        if self.released > 4096 && self.released > self.waiting.len() {
            let entries = &self.entries;
            self.waiting.retain(|_, ids| {
                ids.retain(|id| entries.contains_key(id));
                !ids.is_empty()
            });
            self.released = 0;
        }
        Some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Value;

    fn event(ts: i64) -> Arc<Event> {
        Arc::new(Event {
            topic: 0,
            partition: 0,
            offset: ts,
            timestamp: ts,
            key: None,
            values: vec![Value::Null].into_boxed_slice(),
        })
    }

    #[test]
    fn arrivals_find_the_events_waiting_on_them() {
        let mut held = Held::default();
        let a = held.hold(event(1), 100);
        let b = held.hold(event(2), 100);
        held.register(a, &[(1, 42)]);
        held.register(b, &[(1, 42), (2, 7)]);
        held.register(a, &[(1, 42)]);
        let mut out = Vec::new();
        held.waiting_on((1, 42), &mut out);
        assert_eq!(out, vec![a, b]);
        held.waiting_on((2, 42), &mut out);
        assert!(out.is_empty(), "the source is part of the probe");
        held.release(a);
        held.waiting_on((1, 42), &mut out);
        assert_eq!(out, vec![b]);
    }

    #[test]
    fn due_events_time_out_once_and_stop_waiting() {
        let mut held = Held::default();
        let a = held.hold(event(1), 10);
        let b = held.hold(event(2), 20);
        held.register(a, &[(1, 1)]);
        let mut out = Vec::new();
        held.due(0, 10, &mut out);
        assert!(
            out.is_empty(),
            "a deadline equal to the watermark is not passed"
        );
        held.due(0, 11, &mut out);
        assert_eq!(out, vec![a]);
        held.waiting_on((1, 1), &mut out);
        assert!(out.is_empty());
        held.due(1, 100, &mut out);
        assert!(
            out.is_empty(),
            "another partition's watermark times out nothing here"
        );
        held.due(0, 100, &mut out);
        assert_eq!(out, vec![b]);
        assert_eq!(held.len(), 2, "timing out events stay until their verdict");
    }
}
