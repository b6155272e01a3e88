//! The clock stage, the one owner of event time.
//!
//! Event time is kept per partition, as Kafka Streams keeps stream time per
//! task: the event streams of a pipeline are co-partitioned, so partition
//! `p` of one stream only ever joins partition `p` of the others. Each
//! partition has each stream's largest timestamp seen there, and its
//! *watermark*, the smallest of those (a stream read ahead of another does
//! not expire the other's records). One partition's backlog (a partition
//! assigned back and re-read from its committed offset, a slow producer)
//! never makes another partition's records late, nor its own.
//!
//! - A record whose time is more than `max_ahead` past the wall clock is
//!   refused (dead letter): one bad clock must not move a watermark for good.
//! - A record already expired on arrival (`timestamp + TTL` behind its
//!   partition's watermark) is *late*: it is neither stored nor joined, and
//!   is counted.
//! - A partition's time is forgotten when the partition is revoked.
//! - Watermarks restored from a checkpoint are held to the same bound.
//! - When no event-stream record arrives for `idle_after`, every
//!   partition's time advances with the wall clock (so smart emission's
//!   timeouts fire on an idle input).
//! - The lowest watermark over partitions ([`Clock::low`]) decides what may
//!   leave state for good (sweeps, RocksDB compaction).
//!
//! The wall clock is read once per 1,024 records: the bound is an hour by
//! default, so that is precise enough and keeps the read off the per-record path.

use std::time::{Duration, Instant};

use crate::codec::Event;

/// Kafka's "no timestamp" (the protocol's -1; Kafka refuses other negative
/// record timestamps).
pub const NO_TIMESTAMP: i64 = -1;

/// Unseen: a stream without a record on a partition yet.
const UNSEEN: i64 = i64::MIN;

/// The topic index under which a checkpoint records a partition's watermark
/// (it can be ahead of its streams' smallest time: a stream first seen late
/// does not move it back).
const WATERMARK: u16 = u16::MAX;

/// One partition's event time.
#[derive(Clone, Debug, Default)]
struct PartitionTime {
    /// Largest event time per topic (UNSEEN for dimensions and unseen streams).
    times: Vec<i64>,
    /// The smallest of the seen streams' times; never moves back (until the
    /// partition is forgotten).
    watermark: i64,
}

/// Event time: per-partition stream times and watermarks, in epoch milliseconds.
#[derive(Clone, Debug)]
pub(super) struct Clock {
    /// Per topic: whether it is an event stream.
    streams: Vec<bool>,
    /// By partition number (Kafka partitions are small, dense numbers).
    partitions: Vec<PartitionTime>,
    /// The lowest watermark of a partition that has one.
    low: i64,
    /// How far past the wall clock a record's time may be.
    max_ahead_ms: i64,
    /// The wall clock in epoch ms, as last read.
    now_ms: i64,
    /// Records admitted since the wall clock was read.
    since_read: u32,
    /// When the last event-stream batch arrived, and the lowest watermark then.
    last_input: (Instant, i64),
}

/// What the clock makes of a record's time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Admission {
    /// Usable; `watermark` is its partition's new watermark when the record moved it.
    Admitted { watermark: Option<i64> },
    /// Already expired on arrival: neither stored nor joined.
    Late,
    /// Unusable, with why (a dead letter).
    Refused(String),
}

/// Milliseconds since the Unix epoch, now.
pub(super) fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Clock {
    /// A clock for topics of which `streams[t]` are event streams.
    pub(super) fn new(streams: &[bool], max_ahead_ms: i64) -> Self {
        Self {
            streams: streams.to_vec(),
            partitions: Vec::new(),
            low: UNSEEN,
            max_ahead_ms,
            now_ms: wall_clock_ms(),
            since_read: 0,
            last_input: (Instant::now(), UNSEEN),
        }
    }

    /// Decides whether `event` of topic `t` (Kafka timestamp `kafka`;
    /// `declared`: its source declares a timestamp column; records live
    /// `ttl_ms`) can be used, and notes its time. Event streams, and
    /// dimensions with a TTL, need event time; a record without a Kafka
    /// timestamp needs a declared column.
    pub(super) fn admit(
        &mut self,
        t: u16,
        kafka: i64,
        event: &Event,
        declared: bool,
        ttl_ms: Option<i64>,
    ) -> Admission {
        if self.since_read == 0 {
            self.now_ms = wall_clock_ms();
        }
        self.since_read = (self.since_read + 1) % 1024;
        let stream = self.is_stream(t);
        if stream || ttl_ms.is_some() {
            if !declared && kafka < 0 {
                return Admission::Refused(
                    "the record has no Kafka timestamp and its source declares no timestamp column (sources.<topic>.timestamp): its event time is unknown".to_string(),
                );
            }
            if let Some(reason) = self.refuse(event.timestamp, self.now_ms) {
                return Admission::Refused(reason);
            }
        }
        if stream && self.is_late(event.timestamp, ttl_ms, event.partition) {
            return Admission::Late;
        }
        Admission::Admitted {
            watermark: self.observe(t, event.partition, event.timestamp),
        }
    }

    /// Called once per poll of the event streams with the number of records
    /// it brought: after `idle_after` without any, every partition's time
    /// moves with the wall clock from the lowest watermark of the last input.
    /// Returns the partitions whose watermark advanced, with it.
    pub(super) fn idle(&mut self, records: u64, idle_after: Duration) -> Vec<(i32, i64)> {
        let now = Instant::now();
        if records > 0 {
            self.last_input = (now, self.low);
            return Vec::new();
        }
        let (at, low) = self.last_input;
        let idle = now.saturating_duration_since(at);
        if idle < idle_after || low == UNSEEN {
            return Vec::new();
        }
        self.advance_all(low.saturating_add(idle.as_millis() as i64))
    }

    /// The watermark of `partition` (i64::MIN before any event-stream record of it).
    pub(super) fn watermark(&self, partition: i32) -> i64 {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.partitions.get(p))
            .map_or(UNSEEN, |p| p.watermark)
    }

    /// Every partition that has a watermark, with it.
    pub(super) fn watermarks(&self) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .enumerate()
            .filter(|(_, p)| p.watermark > UNSEEN)
            .map(|(i, p)| (i as i32, p.watermark))
            .collect()
    }

    /// The lowest watermark of the partitions that have one: what no
    /// partition can need any more has expired by it.
    pub(super) fn low(&self) -> i64 {
        self.low
    }

    /// Whether topic `t` is an event stream.
    pub(super) fn is_stream(&self, t: u16) -> bool {
        self.streams.get(t as usize).copied().unwrap_or(false)
    }

    /// Why a record of an event stream with time `ts` cannot be used, given
    /// the wall clock `now_ms`; None when it can.
    pub(super) fn refuse(&self, ts: i64, now_ms: i64) -> Option<String> {
        let bound = now_ms.saturating_add(self.max_ahead_ms);
        (ts > bound).then(|| {
            format!(
                "event time {} is {} ahead of the wall clock, more than state.events.max_ahead ({}) allows",
                format_ms(ts),
                about(ts.saturating_sub(now_ms)),
                duration(self.max_ahead_ms)
            )
        })
    }

    /// Whether a record of `partition` with time `ts` and `ttl_ms` was
    /// already expired on arrival.
    pub(super) fn is_late(&self, ts: i64, ttl_ms: Option<i64>, partition: i32) -> bool {
        ttl_ms.is_some_and(|ttl| ts.saturating_add(ttl) < self.watermark(partition))
    }

    fn partition_mut(&mut self, partition: i32) -> Option<&mut PartitionTime> {
        let p = usize::try_from(partition).ok()?;
        if p >= self.partitions.len() {
            let topics = self.streams.len();
            self.partitions.resize_with(p + 1, || PartitionTime {
                times: vec![UNSEEN; topics],
                watermark: UNSEEN,
            });
        }
        self.partitions.get_mut(p)
    }

    /// Notes time `ts` on stream `t`, `partition`; returns the partition's
    /// watermark when it advanced. Dimensions do not move it; streams not
    /// seen on the partition yet do not hold it back.
    pub(super) fn observe(&mut self, t: u16, partition: i32, ts: i64) -> Option<i64> {
        if !self.is_stream(t) {
            return None;
        }
        let p = self.partition_mut(partition)?;
        let slot = p.times.get_mut(t as usize)?;
        // In-order input moves its stream's time; most records move nothing else.
        if ts <= *slot {
            return None;
        }
        *slot = ts;
        // Only streams ever hold a time here (dimensions return above).
        let wm = p
            .times
            .iter()
            .copied()
            .filter(|&m| m > UNSEEN)
            .min()
            .unwrap_or(UNSEEN);
        if wm <= p.watermark {
            return None;
        }
        self.raise(partition, wm)
    }

    /// Moves partition `partition`'s watermark to `to` if that is ahead.
    fn raise(&mut self, partition: i32, to: i64) -> Option<i64> {
        let p = self.partition_mut(partition)?;
        if to <= p.watermark {
            return None;
        }
        let was = p.watermark;
        p.watermark = to;
        // The lowest moves only when the partition that held it moved.
        if was == UNSEEN || was <= self.low {
            self.low = self.lowest();
        }
        Some(to)
    }

    fn lowest(&self) -> i64 {
        self.partitions
            .iter()
            .map(|p| p.watermark)
            .filter(|&w| w > UNSEEN)
            .min()
            .unwrap_or(UNSEEN)
    }

    /// Moves every seen stream's time, on every partition, to at least `to`
    /// (an idle input's wall clock). Returns the partitions whose watermark
    /// advanced, with it.
    pub(super) fn advance_all(&mut self, to: i64) -> Vec<(i32, i64)> {
        let mut moved = Vec::new();
        for i in 0..self.partitions.len() {
            let streams = &self.streams;
            let p = &mut self.partitions[i];
            let mut seen = false;
            for (m, &s) in p.times.iter_mut().zip(streams) {
                if s && *m > UNSEEN {
                    *m = (*m).max(to);
                    seen = true;
                }
            }
            let partition = i as i32;
            if seen {
                if let Some(wm) = self.raise(partition, to) {
                    moved.push((partition, wm));
                }
            }
        }
        moved
    }

    /// Forgets stream `t`'s time on `partition` (the partition was revoked);
    /// once no stream has a time there, the partition's watermark goes too.
    pub(super) fn forget(&mut self, t: u16, partition: i32) {
        let Some(p) = self.partition_mut(partition) else {
            return;
        };
        if let Some(slot) = p.times.get_mut(t as usize) {
            *slot = UNSEEN;
        }
        if p.times.iter().all(|&m| m == UNSEEN) {
            p.watermark = UNSEEN;
            self.low = self.lowest();
        }
    }

    /// What a checkpoint records: the lowest watermark, every seen
    /// (topic, partition, time), and each partition's watermark (under
    /// topic [`WATERMARK`]).
    pub(super) fn snapshot(&self) -> (i64, Vec<(u16, i32, i64)>) {
        let mut times = Vec::new();
        for (p, pt) in self.partitions.iter().enumerate() {
            for (t, &m) in pt.times.iter().enumerate() {
                if m > UNSEEN {
                    times.push((t as u16, p as i32, m));
                }
            }
            if pt.watermark > UNSEEN {
                times.push((WATERMARK, p as i32, pt.watermark));
            }
        }
        (self.low, times)
    }

    /// Restores checkpointed times (each partition's watermark recomputed
    /// from them), unless one is past the bound at `now_ms` (written by a
    /// record from the far future before the bound existed): then the clock
    /// starts afresh and the reason is returned.
    pub(super) fn restore(&mut self, times: &[(u16, i32, i64)], now_ms: i64) -> Result<(), String> {
        let bound = now_ms.saturating_add(self.max_ahead_ms);
        let newest = times.iter().map(|t| t.2).max().unwrap_or(UNSEEN);
        if newest > bound {
            return Err(format!(
                "the checkpointed event time {} is past the wall clock plus state.events.max_ahead; event time starts afresh",
                format_ms(newest)
            ));
        }
        // Every time first: a watermark computed from some of a partition's
        // streams would be ahead of the others (and never move back).
        for &(t, p, m) in times.iter().filter(|t| t.0 != WATERMARK) {
            if !self.is_stream(t) {
                continue;
            }
            if let Some(slot) = self
                .partition_mut(p)
                .and_then(|pt| pt.times.get_mut(t as usize))
            {
                *slot = (*slot).max(m);
            }
        }
        for (i, pt) in self.partitions.iter_mut().enumerate() {
            let smallest = pt.times.iter().copied().filter(|&m| m > UNSEEN).min();
            let stored = times
                .iter()
                .find(|&&(t, p, _)| t == WATERMARK && p == i as i32)
                .map(|&(_, _, wm)| wm);
            pt.watermark = stored.or(smallest).unwrap_or(UNSEEN);
        }
        self.low = self.lowest();
        Ok(())
    }
}

/// Milliseconds as a duration the pipeline files use (`90d`, `1h`, `250ms`).
fn duration(ms: i64) -> String {
    crate::config::HumanDuration(std::time::Duration::from_millis(ms.max(0) as u64)).to_string()
}

/// Milliseconds, roughly, for messages (`about 26695 days`).
fn about(ms: i64) -> String {
    let units = [
        (86_400_000, "days"),
        (3_600_000, "hours"),
        (60_000, "minutes"),
        (1_000, "seconds"),
    ];
    for (size, unit) in units {
        if ms >= size {
            return format!("about {} {unit}", ms / size);
        }
    }
    format!("{ms} ms")
}

/// Epoch milliseconds as RFC 3339 (UTC), for messages.
pub(super) fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn event(partition: i32, ts: i64) -> Event {
        Event {
            topic: 0,
            partition,
            offset: 0,
            timestamp: ts,
            key: None,
            values: Box::new([]),
        }
    }

    #[test]
    fn a_partition_watermark_is_its_slowest_stream_and_ignores_dimensions() {
        let mut c = Clock::new(&[true, false, true], HOUR);
        assert_eq!(
            c.observe(0, 0, 100),
            Some(100),
            "an unseen stream does not hold it back"
        );
        assert_eq!(c.observe(1, 0, 10_000), None, "dimensions do not move it");
        assert_eq!(c.observe(2, 0, 50), None, "the slower stream holds it");
        assert_eq!(c.watermark(0), 100);
        assert_eq!(c.observe(2, 0, 500), None, "now stream 0 (at 100) holds it");
        assert_eq!(c.observe(0, 0, 300), Some(300));
        assert_eq!(c.advance_all(1_000), vec![(0, 1_000)]);
        assert_eq!(
            c.snapshot(),
            (
                1_000,
                vec![(0, 0, 1_000), (2, 0, 1_000), (WATERMARK, 0, 1_000)]
            )
        );
    }

    #[test]
    fn partitions_keep_their_own_time() {
        let mut c = Clock::new(&[true], HOUR);
        c.observe(0, 0, 100_000);
        c.observe(0, 3, 5_000);
        assert_eq!(
            (c.watermark(0), c.watermark(3), c.watermark(1)),
            (100_000, 5_000, i64::MIN)
        );
        assert_eq!(
            c.low(),
            5_000,
            "the lowest partition decides what leaves state"
        );
        assert!(
            !c.is_late(1_000, Some(60_000), 3),
            "partition 0 being ahead makes nothing late on 3"
        );
        assert!(c.is_late(1_000, Some(60_000), 0));
        c.forget(0, 3);
        assert_eq!(
            (c.watermark(3), c.low()),
            (i64::MIN, 100_000),
            "a revoked partition's time goes"
        );
        assert_eq!(
            c.observe(0, 3, 2_000),
            Some(2_000),
            "and starts afresh when it comes back"
        );
    }

    #[test]
    fn late_records_are_those_expired_on_arrival() {
        let mut c = Clock::new(&[true], HOUR);
        c.observe(0, 0, 100_000);
        assert!(c.is_late(0, Some(60_000), 0), "0 + 60 s < 100 s");
        assert!(
            !c.is_late(40_000, Some(60_000), 0),
            "40 s + 60 s = the watermark: still live"
        );
        assert!(!c.is_late(0, None, 0), "no TTL, never late");
    }

    #[test]
    fn records_far_ahead_of_the_wall_clock_are_refused() {
        let c = Clock::new(&[true], HOUR);
        let now = 1_700_000_000_000;
        assert!(c.refuse(now + HOUR, now).is_none());
        let why = c.refuse(now + HOUR + 1, now).unwrap_or_default();
        assert!(why.contains("ahead of the wall clock"), "{why}");
        assert!(c.refuse(4_102_444_800_000, now).is_some(), "year 2100");
    }

    #[test]
    fn admission_refuses_unknown_and_far_future_times_and_drops_late_records() {
        let mut c = Clock::new(&[true, false], HOUR);
        let now = wall_clock_ms();
        let ok = c.admit(0, now, &event(0, now), false, Some(60_000));
        assert_eq!(
            ok,
            Admission::Admitted {
                watermark: Some(now)
            }
        );
        assert!(matches!(
            c.admit(0, NO_TIMESTAMP, &event(0, now), false, Some(60_000)),
            Admission::Refused(why) if why.contains("no Kafka timestamp")
        ));
        assert_eq!(
            c.admit(0, NO_TIMESTAMP, &event(0, now), true, Some(60_000)),
            Admission::Admitted { watermark: None },
            "a declared timestamp column stands in for the Kafka timestamp"
        );
        assert!(matches!(
            c.admit(0, now, &event(0, now + 2 * HOUR), false, None),
            Admission::Refused(why) if why.contains("ahead of the wall clock")
        ));
        assert_eq!(
            c.admit(0, now, &event(0, now - 61_000), false, Some(60_000)),
            Admission::Late
        );
        assert_eq!(
            c.admit(0, now, &event(1, now - 61_000), false, Some(60_000)),
            Admission::Admitted {
                watermark: Some(now - 61_000)
            },
            "on another partition the same record is on time"
        );
        assert_eq!(
            c.admit(1, NO_TIMESTAMP, &event(0, 0), false, None),
            Admission::Admitted { watermark: None },
            "a dimension without a TTL needs no time"
        );
    }

    #[test]
    fn an_idle_input_advances_every_partition_with_the_wall_clock() {
        let mut c = Clock::new(&[true], HOUR);
        assert!(
            c.idle(0, Duration::ZERO).is_empty(),
            "nothing seen yet: no time to start from"
        );
        c.observe(0, 0, 5_000);
        c.observe(0, 1, 9_000);
        assert!(c.idle(3, Duration::ZERO).is_empty(), "records arrived");
        std::thread::sleep(Duration::from_millis(5));
        let moved = c.idle(0, Duration::ZERO);
        assert!(
            moved.iter().any(|&(p, w)| p == 0 && w >= 5_005),
            "{moved:?}"
        );
        assert!(
            c.idle(0, Duration::from_secs(3600)).is_empty(),
            "not idle long enough"
        );
    }

    #[test]
    fn a_restored_clock_past_the_bound_starts_afresh() {
        let now = 1_700_000_000_000;
        let mut c = Clock::new(&[true], HOUR);
        assert!(c.restore(&[(0, 0, 4_102_444_800_000)], now).is_err());
        assert_eq!(c.low(), i64::MIN);
        assert!(c.restore(&[(0, 0, now - 5), (0, 2, now - 9)], now).is_ok());
        assert_eq!(
            (c.watermark(0), c.watermark(2), c.low()),
            (now - 5, now - 9, now - 9)
        );
        let mut ahead = Clock::new(&[true, true], HOUR);
        ahead.observe(0, 0, 500);
        ahead.observe(1, 0, 100);
        assert_eq!(
            ahead.watermark(0),
            500,
            "a stream seen late does not move it back"
        );
        let mut back = Clock::new(&[true, true], HOUR);
        assert!(back.restore(&ahead.snapshot().1, now).is_ok());
        assert_eq!(back.watermark(0), 500, "and a restart does not either");
        let mut again = Clock::new(&[true, true], HOUR);
        assert!(again.restore(&[(0, 1, 950), (1, 1, 900)], now).is_ok());
        assert_eq!(
            again.watermark(1),
            900,
            "without a stored watermark: the smallest time, not the first one restored"
        );
    }
}
