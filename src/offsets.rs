//! Offset bookkeeping: which source offsets may be committed, and when.
//!
//! A record is *pinned* while state holds it for future joins or smart
//! emission holds it ([`OffsetPins`], kept by the engine where those change).
//! Everything else is the [`Ledger`]'s, the one owner of the rules:
//!
//! - the next offset read per partition, and which records a restored state
//!   already reflects (skipped on re-read);
//! - per sealed *epoch* (the outputs of one micro-batch), the offsets it
//!   makes committable and the state checkpoint that goes with it;
//! - when an epoch is delivered: its checkpoint is written first, then its
//!   offsets are committed to Kafka;
//! - when partitions are revoked: nothing about them survives, so a
//!   partition assigned back starts from its committed offset with empty
//!   state (no record is held twice).
//!
//! Invariant (property-tested below): a committed offset never passes a
//! record whose output is not delivered, nor a record still pinned.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::store::Checkpoint;

/// A source partition: interned topic id and partition number.
pub type Partition = (u16, i32);

/// Offsets to commit, by topic name and partition (next offset to read).
pub type CommitOffsets = BTreeMap<(String, i32), i64>;

/// Pin counts per (topic index, partition) and offset.
#[derive(Debug, Default)]
pub struct OffsetPins {
    pins: HashMap<Partition, BTreeMap<i64, u32>>,
}

impl OffsetPins {
    /// Pins `offset` once more.
    pub fn pin(&mut self, topic: u16, partition: i32, offset: i64) {
        *self
            .pins
            .entry((topic, partition))
            .or_default()
            .entry(offset)
            .or_insert(0) += 1;
    }

    /// Releases one pin of `offset` (an unknown offset is ignored).
    pub fn unpin(&mut self, topic: u16, partition: i32, offset: i64) {
        let Some(map) = self.pins.get_mut(&(topic, partition)) else {
            return;
        };
        if let Some(count) = map.get_mut(&offset) {
            *count -= 1;
            if *count == 0 {
                map.remove(&offset);
            }
        }
        if map.is_empty() {
            self.pins.remove(&(topic, partition));
        }
    }

    /// Forgets every pin of a partition (its state was dropped).
    pub fn forget(&mut self, topic: u16, partition: i32) {
        self.pins.remove(&(topic, partition));
    }

    /// The oldest pinned offset of a partition, if any.
    pub fn oldest(&self, topic: u16, partition: i32) -> Option<i64> {
        self.pins
            .get(&(topic, partition))
            .and_then(|m| m.keys().next().copied())
    }

    /// Number of pinned offsets (distinct) over all partitions.
    pub fn len(&self) -> usize {
        self.pins.values().map(BTreeMap::len).sum()
    }

    /// True when nothing is pinned.
    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
    }
}

/// The offset to commit for a partition: the next one to read, held back to
/// the oldest pinned record.
pub fn committable(next_to_read: i64, oldest_pinned: Option<i64>) -> i64 {
    match oldest_pinned {
        Some(p) => p.min(next_to_read),
        None => next_to_read,
    }
}

/// Where a record was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// An event stream (its offsets are committed).
    Stream,
    /// A dimension (read from the beginning by every instance; only checkpointed).
    Dimension,
}

#[derive(Debug)]
struct Epoch {
    id: usize,
    commit: CommitOffsets,
    checkpoint: Option<Checkpoint>,
}

/// The one owner of offset bookkeeping for one pipeline (see the module doc).
#[derive(Debug, Default)]
pub struct Ledger {
    /// Next offset per event-stream partition, for records already pushed.
    next: HashMap<Partition, i64>,
    /// Next offset per dimension partition.
    dimension_next: HashMap<Partition, i64>,
    /// Records before these offsets are already in the restored state.
    resume: HashMap<Partition, i64>,
    /// Sealed epochs not yet delivered, oldest first.
    epochs: VecDeque<Epoch>,
    /// Delivered epochs' checkpoints, merged, waiting to be written.
    ready: Option<Checkpoint>,
    /// Delivered offsets not yet committed (the next commit takes them all).
    uncommitted: CommitOffsets,
}

impl Ledger {
    /// A ledger for a pipeline whose restored state reflects the records
    /// before `resume` (empty without durable state).
    pub fn new(resume: HashMap<Partition, i64>) -> Self {
        Self {
            resume,
            ..Self::default()
        }
    }

    /// Notes that the record at `offset` of `partition` was read. Returns
    /// false when restored state already reflects it (its outputs were
    /// delivered before the restart): the caller skips it.
    pub fn read(&mut self, partition: Partition, offset: i64, input: Input) -> bool {
        let next = match input {
            Input::Stream => &mut self.next,
            Input::Dimension => &mut self.dimension_next,
        };
        next.insert(partition, offset + 1);
        self.resume.get(&partition).is_none_or(|&r| offset >= r)
    }

    /// What to commit once the epoch being sealed is delivered: per event
    /// stream partition, the next offset to read held back to its oldest
    /// pinned record. `name` turns a topic id into its name.
    pub fn commit_offsets<'n>(
        &self,
        name: impl Fn(u16) -> &'n str,
        oldest_pinned: impl Fn(Partition) -> Option<i64>,
    ) -> CommitOffsets {
        self.next
            .iter()
            .map(|(&(t, p), &next)| {
                let at = committable(next, oldest_pinned((t, p)));
                ((name(t).to_string(), p), at)
            })
            .collect()
    }

    /// What a checkpoint of the state records: the next offset of every
    /// partition read, streams and dimensions.
    pub fn checkpoint_offsets<'n>(
        &self,
        name: impl Fn(u16) -> &'n str,
    ) -> HashMap<(String, i32), i64> {
        self.next
            .iter()
            .chain(&self.dimension_next)
            .map(|(&(t, p), &o)| ((name(t).to_string(), p), o))
            .collect()
    }

    /// Records sealed epoch `id`: `commit` becomes committable, and
    /// `checkpoint` writable, once it and every earlier epoch are delivered.
    pub fn seal(&mut self, id: usize, commit: CommitOffsets, checkpoint: Option<Checkpoint>) {
        self.epochs.push_back(Epoch {
            id,
            commit,
            checkpoint,
        });
    }

    /// Every epoch up to `id` is delivered. Returns the offsets they made
    /// committable (the newest epoch's: each epoch's offsets cover all
    /// partitions read so far).
    pub fn delivered(&mut self, id: usize) -> CommitOffsets {
        let mut newest = CommitOffsets::new();
        while self.epochs.front().is_some_and(|e| e.id <= id) {
            let Some(epoch) = self.epochs.pop_front() else {
                break;
            };
            if let Some(c) = epoch.checkpoint {
                match self.ready.as_mut() {
                    Some(m) => m.absorb(c),
                    None => self.ready = Some(c),
                }
            }
            newest.extend(epoch.commit);
        }
        self.uncommitted
            .extend(newest.iter().map(|(k, v)| (k.clone(), *v)));
        newest
    }

    /// The checkpoint to write before the next commit (delivered epochs', merged).
    pub fn take_checkpoint(&mut self) -> Option<Checkpoint> {
        self.ready.take()
    }

    /// Whether delivered offsets wait for a commit.
    pub fn has_uncommitted(&self) -> bool {
        !self.uncommitted.is_empty()
    }

    /// The delivered offsets not yet committed; call after the checkpoint
    /// from [`Ledger::take_checkpoint`] is durable.
    pub fn take_uncommitted(&mut self) -> CommitOffsets {
        std::mem::take(&mut self.uncommitted)
    }

    /// Partitions `revoked` (by id, with their names) are no longer this
    /// instance's: their read positions, restored offsets and every pending
    /// checkpoint's offsets for them are forgotten, so a later assignment
    /// reads them from the committed offset into empty state.
    pub fn revoke(&mut self, revoked: &[(Partition, &str)]) {
        for &(p, name) in revoked {
            self.next.remove(&p);
            self.resume.remove(&p);
            let key = (name.to_string(), p.1);
            for c in self
                .epochs
                .iter_mut()
                .filter_map(|e| e.checkpoint.as_mut())
                .chain(self.ready.as_mut())
            {
                c.offsets.remove(&key);
            }
        }
    }

    /// Partition `p` was revoked and assigned back in one rebalance, its
    /// state kept: its records re-read from the committed offset up to
    /// where this instance had read are skipped (their state is held, their
    /// outputs produced).
    pub fn keep(&mut self, p: Partition) {
        if let Some(&next) = self.next.get(&p) {
            let resume = self.resume.entry(p).or_insert(next);
            *resume = (*resume).max(next);
        }
    }

    /// Event-stream partitions restored from state (their resume offsets).
    pub fn restored(&self) -> impl Iterator<Item = Partition> + '_ {
        self.resume.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_oldest_pin_holds_the_commit_back() {
        let mut pins = OffsetPins::default();
        pins.pin(0, 1, 10);
        pins.pin(0, 1, 12);
        pins.pin(0, 1, 10);
        assert_eq!(pins.oldest(0, 1), Some(10));
        assert_eq!(committable(20, pins.oldest(0, 1)), 10);
        pins.unpin(0, 1, 10);
        assert_eq!(pins.oldest(0, 1), Some(10), "pinned twice, released once");
        pins.unpin(0, 1, 10);
        assert_eq!(pins.oldest(0, 1), Some(12));
        pins.unpin(0, 1, 12);
        assert!(pins.is_empty());
        assert_eq!(committable(20, pins.oldest(0, 1)), 20);
        pins.unpin(3, 3, 3);
        assert_eq!(pins.len(), 0);
        pins.pin(2, 0, 1);
        pins.forget(2, 0);
        assert_eq!(pins.oldest(2, 0), None);
    }

    #[test]
    fn restored_records_are_skipped_until_their_partition_is_revoked() {
        let mut l = Ledger::new(HashMap::from([((0, 0), 10)]));
        assert!(!l.read((0, 0), 9, Input::Stream), "in restored state");
        assert!(l.read((0, 0), 10, Input::Stream));
        assert!(l.read((0, 1), 0, Input::Stream), "not restored");
        l.seal(1, CommitOffsets::new(), Some(checkpoint(&[("t", 0, 11)])));
        l.revoke(&[((0, 0), "t")]);
        assert!(
            l.read((0, 0), 3, Input::Stream),
            "revoked: nothing is skipped any more"
        );
        l.delivered(1);
        let c = l.take_checkpoint().map(|c| c.offsets);
        assert_eq!(
            c,
            Some(HashMap::new()),
            "a pending checkpoint forgets the partition"
        );
    }

    #[test]
    fn a_partition_kept_through_a_rebalance_skips_what_it_read_before() {
        let mut l = Ledger::new(HashMap::new());
        for o in 0..5 {
            assert!(l.read((0, 2), o, Input::Stream));
        }
        l.keep((0, 2));
        assert!(
            !l.read((0, 2), 3, Input::Stream),
            "re-read from the commit: in state already"
        );
        assert!(!l.read((0, 2), 4, Input::Stream));
        assert!(l.read((0, 2), 5, Input::Stream), "new");
        l.keep((0, 9));
        assert!(
            l.read((0, 9), 0, Input::Stream),
            "never read: nothing to skip"
        );
    }

    fn checkpoint(offsets: &[(&str, i32, i64)]) -> Checkpoint {
        Checkpoint {
            offsets: offsets
                .iter()
                .map(|&(t, p, o)| ((t.to_string(), p), o))
                .collect(),
            ..Checkpoint::default()
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Read the next record of partition `p`; pin it if `pin`.
        Read { p: i32, pin: bool },
        /// Unpin the `n`-th pinned record (modulo their count).
        Unpin(usize),
        /// Evaluate and seal an epoch (outputs of every record read since).
        Seal,
        /// The broker acknowledges epochs up to the `n`-th undelivered one.
        Deliver(usize),
        /// Write the checkpoint, then commit.
        Commit,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3i32, any::<bool>()).prop_map(|(p, pin)| Op::Read { p, pin }),
            2 => any::<usize>().prop_map(Op::Unpin),
            2 => Just(Op::Seal),
            2 => any::<usize>().prop_map(Op::Deliver),
            1 => Just(Op::Commit),
        ]
    }

    proptest! {
        /// Never commit past an undelivered output or a record still pinned.
        #[test]
        fn commits_never_pass_an_undelivered_output_or_a_pinned_record(
            ops in proptest::collection::vec(op(), 1..200)
        ) {
            let mut ledger = Ledger::new(HashMap::new());
            let mut pins = OffsetPins::default();
            let mut pinned: Vec<(i32, i64)> = Vec::new();
            let mut next_offset = [0i64; 3];
            // Records whose outputs are not delivered: (partition, offset, epoch or None).
            let mut undelivered: Vec<(i32, i64, Option<usize>)> = Vec::new();
            let mut epoch = 0usize;
            let mut sealed: VecDeque<usize> = VecDeque::new();
            for op in ops {
                match op {
                    Op::Read { p, pin } => {
                        let o = next_offset[p as usize];
                        next_offset[p as usize] += 1;
                        prop_assert!(ledger.read((0, p), o, Input::Stream));
                        if pin {
                            pins.pin(0, p, o);
                            pinned.push((p, o));
                        }
                        undelivered.push((p, o, None));
                    }
                    Op::Unpin(n) if !pinned.is_empty() => {
                        let (p, o) = pinned.remove(n % pinned.len());
                        pins.unpin(0, p, o);
                    }
                    Op::Unpin(_) => {}
                    Op::Seal => {
                        epoch += 1;
                        let commit = ledger.commit_offsets(|_| "t", |(t, p)| pins.oldest(t, p));
                        ledger.seal(epoch, commit, None);
                        for u in undelivered.iter_mut().filter(|u| u.2.is_none()) {
                            u.2 = Some(epoch);
                        }
                        sealed.push_back(epoch);
                    }
                    Op::Deliver(n) if !sealed.is_empty() => {
                        let upto = sealed[n % sealed.len()];
                        while sealed.front().is_some_and(|&e| e <= upto) {
                            sealed.pop_front();
                        }
                        ledger.delivered(upto);
                        undelivered.retain(|u| u.2.is_none_or(|e| e > upto));
                    }
                    Op::Deliver(_) => {}
                    Op::Commit => {
                        for ((_, p), at) in ledger.take_uncommitted() {
                            for &(up, uo, _) in &undelivered {
                                prop_assert!(up != p || uo >= at,
                                    "committed {at} on partition {p} past undelivered offset {uo}");
                            }
                            for &(pp, po) in &pinned {
                                prop_assert!(pp != p || po >= at,
                                    "committed {at} on partition {p} past pinned offset {po}");
                            }
                        }
                    }
                }
            }
        }
    }
}
