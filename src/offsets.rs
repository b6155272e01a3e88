//! Which source offsets are still needed: a record is *pinned* while state
//! holds it for future joins, while smart emission holds it, or while an
//! output it caused is in flight. A partition's offset may be committed only
//! up to its oldest pinned record, so a restart re-reads everything that can
//! still change the output (at-least-once).

use std::collections::{BTreeMap, HashMap};

/// Pin counts per (topic index, partition) and offset.
#[derive(Debug, Default)]
pub struct OffsetPins {
    pins: HashMap<(u16, i32), BTreeMap<i64, u32>>,
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

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn partitions_are_independent() {
        let mut pins = OffsetPins::default();
        pins.pin(0, 0, 5);
        pins.pin(1, 0, 1);
        assert_eq!(pins.oldest(0, 0), Some(5));
        assert_eq!(pins.oldest(1, 0), Some(1));
        assert_eq!(pins.oldest(0, 1), None);
    }
}
