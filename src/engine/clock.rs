//! The clock stage, the one owner of event time: each event stream's largest
//! timestamp seen, the pipeline watermark (the smallest of those, so a stream
//! read ahead of another does not expire the other's records), and the rules
//! that decide whether a record's time is usable at all.
//!
//! - A record whose time is more than `max_ahead` past the wall clock is
//!   refused (dead letter): one bad clock must not move the watermark for good.
//! - A record already expired on arrival (`timestamp + TTL < watermark`) is
//!   *late*: it is neither stored nor joined, and is counted.
//! - A watermark restored from a checkpoint is held to the same bound.
//! - When no event-stream record arrives for `idle_after`, the watermark
//!   advances with the wall clock (so smart emission's timeouts fire on an
//!   idle input).
//!
//! The wall clock is read once per 1,024 records: the bound is an hour by
//! default, so that is precise enough and keeps the read off the per-record path.

use std::time::{Duration, Instant};

use crate::codec::Event;

/// Kafka's "no timestamp" (the protocol's -1; Kafka refuses other negative
/// record timestamps).
pub const NO_TIMESTAMP: i64 = -1;

/// Event time: per-stream times and the watermark, in epoch milliseconds.
#[derive(Clone, Debug)]
pub(super) struct Clock {
    watermark: i64,
    /// Largest event time per topic: Some for event streams, None for dimensions.
    stream_time: Vec<Option<i64>>,
    /// How far past the wall clock a record's time may be.
    max_ahead_ms: i64,
    /// The wall clock in epoch ms, as last read.
    now_ms: i64,
    /// Records admitted since the wall clock was read.
    since_read: u32,
    /// When the last event-stream batch arrived, and the watermark then.
    last_input: (Instant, i64),
}

/// What the clock makes of a record's time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Admission {
    /// Usable; `watermark` is the new watermark when the record moved it.
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
            watermark: i64::MIN,
            stream_time: streams.iter().map(|&s| s.then_some(i64::MIN)).collect(),
            max_ahead_ms,
            now_ms: wall_clock_ms(),
            since_read: 0,
            last_input: (Instant::now(), i64::MIN),
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
        if stream && self.is_late(event.timestamp, ttl_ms) {
            return Admission::Late;
        }
        Admission::Admitted {
            watermark: self.observe(t, event.timestamp),
        }
    }

    /// Called once per poll of the event streams with the number of records
    /// it brought: after `idle_after` without any, every stream's time moves
    /// with the wall clock from the watermark of the last input. Returns the
    /// watermark when it advanced.
    pub(super) fn idle(&mut self, records: u64, idle_after: Duration) -> Option<i64> {
        let now = Instant::now();
        if records > 0 {
            self.last_input = (now, self.watermark);
            return None;
        }
        let (at, watermark) = self.last_input;
        let idle = now.saturating_duration_since(at);
        if idle < idle_after || watermark == i64::MIN {
            return None;
        }
        self.advance_all(watermark.saturating_add(idle.as_millis() as i64))
    }

    /// The watermark (i64::MIN before any event-stream record).
    pub(super) fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Whether topic `t` is an event stream.
    pub(super) fn is_stream(&self, t: u16) -> bool {
        matches!(self.stream_time.get(t as usize), Some(Some(_)))
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

    /// Whether a record with time `ts` and `ttl_ms` was already expired on arrival.
    pub(super) fn is_late(&self, ts: i64, ttl_ms: Option<i64>) -> bool {
        ttl_ms.is_some_and(|ttl| ts.saturating_add(ttl) < self.watermark)
    }

    /// Notes time `ts` on topic `t`; returns the watermark when it advanced.
    /// Dimensions do not move it; streams not seen yet do not hold it back.
    pub(super) fn observe(&mut self, t: u16, ts: i64) -> Option<i64> {
        match self.stream_time.get_mut(t as usize) {
            Some(Some(m)) => *m = (*m).max(ts),
            _ => return None,
        }
        let wm = self
            .stream_time
            .iter()
            .flatten()
            .copied()
            .filter(|&m| m > i64::MIN)
            .min()
            .unwrap_or(i64::MIN);
        self.advance(wm)
    }

    /// Moves every stream's time, and so the watermark, to at least `to`
    /// (an idle input's wall clock). Returns the watermark when it advanced.
    pub(super) fn advance_all(&mut self, to: i64) -> Option<i64> {
        for m in self.stream_time.iter_mut().flatten() {
            *m = (*m).max(to);
        }
        self.advance(to)
    }

    fn advance(&mut self, to: i64) -> Option<i64> {
        (to > self.watermark).then(|| {
            self.watermark = to;
            to
        })
    }

    /// What a checkpoint records: the watermark and each stream's time.
    pub(super) fn snapshot(&self) -> (i64, Vec<Option<i64>>) {
        (self.watermark, self.stream_time.clone())
    }

    /// Restores a checkpointed clock, unless it is past the bound at `now_ms`
    /// (written before the bound existed, by a record from the far future):
    /// then the clock starts afresh and the reason is returned.
    pub(super) fn restore(
        &mut self,
        watermark: i64,
        times: &[Option<i64>],
        now_ms: i64,
    ) -> Result<(), String> {
        let bound = now_ms.saturating_add(self.max_ahead_ms);
        let newest = times.iter().flatten().copied().max().unwrap_or(i64::MIN);
        if watermark > bound || newest > bound {
            return Err(format!(
                "the checkpointed event time {} is past the wall clock plus state.events.max_ahead; event time starts afresh",
                format_ms(watermark.max(newest))
            ));
        }
        if times.len() == self.stream_time.len() {
            self.stream_time = times.to_vec();
        }
        self.watermark = watermark;
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

    #[test]
    fn the_watermark_is_the_slowest_stream_and_ignores_dimensions() {
        let mut c = Clock::new(&[true, false, true], HOUR);
        assert_eq!(
            c.observe(0, 100),
            Some(100),
            "an unseen stream does not hold it back"
        );
        assert_eq!(c.observe(1, 10_000), None, "dimensions do not move it");
        assert_eq!(c.observe(2, 50), None, "the slower stream holds it");
        assert_eq!(c.watermark(), 100);
        assert_eq!(c.observe(2, 500), None, "now stream 0 (at 100) holds it");
        assert_eq!(c.observe(0, 300), Some(300));
        assert_eq!(c.advance_all(1_000), Some(1_000));
        assert_eq!(c.snapshot(), (1_000, vec![Some(1_000), None, Some(1_000)]));
    }

    #[test]
    fn late_records_are_those_expired_on_arrival() {
        let mut c = Clock::new(&[true], HOUR);
        c.observe(0, 100_000);
        assert!(c.is_late(0, Some(60_000)), "0 + 60 s < 100 s");
        assert!(
            !c.is_late(40_000, Some(60_000)),
            "40 s + 60 s = the watermark: still live"
        );
        assert!(!c.is_late(0, None), "no TTL, never late");
    }

    #[test]
    fn records_far_ahead_of_the_wall_clock_are_refused() {
        let c = Clock::new(&[true], HOUR);
        let now = 1_700_000_000_000;
        assert!(c.refuse(now + HOUR, now).is_none());
        let why = c.refuse(now + HOUR + 1, now).unwrap();
        assert!(why.contains("ahead of the wall clock"), "{why}");
        assert!(c.refuse(4_102_444_800_000, now).is_some(), "year 2100");
    }

    fn event(ts: i64) -> Event {
        Event {
            topic: 0,
            partition: 0,
            offset: 0,
            timestamp: ts,
            key: None,
            values: Box::new([]),
        }
    }

    #[test]
    fn admission_refuses_unknown_and_far_future_times_and_drops_late_records() {
        let mut c = Clock::new(&[true, false], HOUR);
        let now = wall_clock_ms();
        let ok = c.admit(0, now, &event(now), false, Some(60_000));
        assert_eq!(
            ok,
            Admission::Admitted {
                watermark: Some(now)
            }
        );
        assert!(matches!(
            c.admit(0, NO_TIMESTAMP, &event(now), false, Some(60_000)),
            Admission::Refused(why) if why.contains("no Kafka timestamp")
        ));
        assert_eq!(
            c.admit(0, NO_TIMESTAMP, &event(now), true, Some(60_000)),
            Admission::Admitted { watermark: None },
            "a declared timestamp column stands in for the Kafka timestamp"
        );
        assert!(matches!(
            c.admit(0, now, &event(now + 2 * HOUR), false, None),
            Admission::Refused(why) if why.contains("ahead of the wall clock")
        ));
        assert_eq!(
            c.admit(0, now, &event(now - 61_000), false, Some(60_000)),
            Admission::Late
        );
        assert_eq!(
            c.admit(1, NO_TIMESTAMP, &event(0), false, None),
            Admission::Admitted { watermark: None },
            "a dimension without a TTL needs no time"
        );
    }

    #[test]
    fn an_idle_input_advances_the_watermark_with_the_wall_clock() {
        let mut c = Clock::new(&[true], HOUR);
        assert_eq!(
            c.idle(0, Duration::ZERO),
            None,
            "nothing seen yet: no time to start from"
        );
        c.observe(0, 5_000);
        assert_eq!(c.idle(3, Duration::ZERO), None, "records arrived");
        std::thread::sleep(Duration::from_millis(5));
        let wm = c.idle(0, Duration::ZERO);
        assert!(wm.is_some_and(|w| w >= 5_005), "{wm:?}");
        assert_eq!(
            c.idle(0, Duration::from_secs(3600)),
            None,
            "not idle long enough"
        );
    }

    #[test]
    fn a_restored_clock_past_the_bound_starts_afresh() {
        let now = 1_700_000_000_000;
        let mut c = Clock::new(&[true], HOUR);
        assert!(c
            .restore(4_102_444_800_000, &[Some(4_102_444_800_000)], now)
            .is_err());
        assert_eq!(c.watermark(), i64::MIN);
        c.restore(now - 5, &[Some(now - 5)], now).unwrap();
        assert_eq!(c.watermark(), now - 5);
    }
}
