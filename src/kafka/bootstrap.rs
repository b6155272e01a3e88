//! When the dimensions are read "to their end" at start (no output before,
//! as Kafka Streams does with a GlobalKTable): every dimension partition must
//! reach both the end offset listed when the bootstrap started and the high
//! watermark of the latest fetch response for it (some brokers, Tansu 0.6
//! among them, list a too-small end offset; the fetch path's is the real one).
//!
//! There is no idle timer: a partition that shows nothing new for a while is
//! not complete for that. Only where the broker never tells (no fetch answers,
//! an end that is never reached), the wait is bounded by
//! `kafka.consumer.dimensionLoadTimeout`, logged while it lasts, and reported
//! when it ends without the end offsets.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How far one dimension partition has to be read, and how far it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Target {
    /// End offset listed at start.
    listed_end: i64,
    /// Next offset to read (the last record read + 1).
    next: i64,
}

/// How the bootstrap ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Partitions still below their end.
    Waiting,
    /// Every partition reached its end.
    Complete,
    /// The bound passed with partitions below their end (logged by the caller).
    TimedOut,
}

/// The state of the dimension bootstrap, free of any Kafka client (tested
/// with a fake clock and fake high watermarks).
#[derive(Debug)]
pub struct Bootstrap {
    targets: HashMap<(String, i32), Target>,
    started: Instant,
    timeout: Duration,
    outcome: Outcome,
}

impl Bootstrap {
    /// Partitions to read up to their listed end (from their first offset to
    /// read, `from`), bounded by `timeout` from `now`.
    pub fn new(
        partitions: impl IntoIterator<Item = ((String, i32), i64, i64)>,
        timeout: Duration,
        now: Instant,
    ) -> Self {
        let targets: HashMap<(String, i32), Target> = partitions
            .into_iter()
            .filter(|(_, from, end)| end > from)
            .map(|(key, from, listed_end)| {
                (
                    key,
                    Target {
                        listed_end,
                        next: from,
                    },
                )
            })
            .collect();
        let outcome = if targets.is_empty() {
            Outcome::Complete
        } else {
            Outcome::Waiting
        };
        Self {
            targets,
            started: now,
            timeout,
            outcome,
        }
    }

    /// Notes that `offset` of a partition was read.
    pub fn progressed(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(t) = self.targets.get_mut(&(topic.to_string(), partition)) {
            t.next = t.next.max(offset + 1);
        }
    }

    /// Decides, at `now`, which partitions are complete: those whose next
    /// offset reached both their listed end and `fetched_end` (the high
    /// watermark of the latest fetch response; None while none answered).
    pub fn settle(
        &mut self,
        fetched_end: impl Fn(&str, i32) -> Option<i64>,
        now: Instant,
    ) -> Outcome {
        if self.outcome != Outcome::Waiting {
            return self.outcome;
        }
        self.targets.retain(|(topic, partition), t| {
            let reached = t.next >= t.listed_end
                && fetched_end(topic, *partition).is_some_and(|h| t.next >= h);
            !reached
        });
        if self.targets.is_empty() {
            self.outcome = Outcome::Complete;
        } else if now.duration_since(self.started) >= self.timeout {
            self.outcome = Outcome::TimedOut;
        }
        self.outcome
    }

    /// Partitions still below their end: (topic, partition, next, listed end).
    pub fn pending(&self) -> Vec<(String, i32, i64, i64)> {
        let mut v: Vec<_> = self
            .targets
            .iter()
            .map(|((t, p), x)| (t.clone(), *p, x.next, x.listed_end))
            .collect();
        v.sort();
        v
    }

    /// Number of partitions still below their end.
    pub fn remaining(&self) -> usize {
        if self.outcome == Outcome::Waiting {
            self.targets.len()
        } else {
            0
        }
    }

    /// How the bootstrap stands.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(now: Instant) -> Bootstrap {
        Bootstrap::new(
            [
                (("dim".to_string(), 0), 0, 3),
                (("dim".to_string(), 1), 0, 0),
            ],
            Duration::from_secs(300),
            now,
        )
    }

    #[test]
    fn nothing_new_for_a_while_is_not_the_end() {
        let t0 = Instant::now();
        let mut b = start(t0);
        assert_eq!(b.remaining(), 1, "an empty partition has nothing to read");
        b.progressed("dim", 0, 0);
        // Minutes without a record: still waiting (the old 2 s idle timer ended here).
        let later = t0 + Duration::from_secs(120);
        assert_eq!(b.settle(|_, _| Some(3), later), Outcome::Waiting);
        assert_eq!(b.pending(), vec![("dim".to_string(), 0, 1, 3)]);
    }

    #[test]
    fn the_end_is_the_listed_end_and_the_fetched_high_watermark() {
        let t0 = Instant::now();
        let mut b = start(t0);
        b.progressed("dim", 0, 2);
        // The listed end (3) is reached, but the fetch path says 5 (Tansu lists too small).
        assert_eq!(b.settle(|_, _| Some(5), t0), Outcome::Waiting);
        assert_eq!(
            b.settle(|_, _| None, t0),
            Outcome::Waiting,
            "no fetch answered yet"
        );
        b.progressed("dim", 0, 4);
        assert_eq!(b.settle(|_, _| Some(5), t0), Outcome::Complete);
        assert_eq!(b.remaining(), 0);
    }

    #[test]
    fn where_the_broker_never_tells_the_wait_is_bounded() {
        let t0 = Instant::now();
        let mut b = start(t0);
        assert_eq!(
            b.settle(|_, _| None, t0 + Duration::from_secs(299)),
            Outcome::Waiting
        );
        assert_eq!(
            b.settle(|_, _| None, t0 + Duration::from_secs(300)),
            Outcome::TimedOut
        );
        assert_eq!(b.remaining(), 0);
    }

    #[test]
    fn a_restored_checkpoint_at_the_end_needs_nothing() {
        let b = Bootstrap::new(
            [(("dim".to_string(), 0), 7, 7)],
            Duration::from_secs(1),
            Instant::now(),
        );
        assert_eq!(b.outcome(), Outcome::Complete);
    }
}
