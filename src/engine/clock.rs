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
        }
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
