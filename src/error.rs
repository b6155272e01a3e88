//! What kind of failure an error is, and what the run loop does about it.
//!
//! Every error that can stop, delay or divert a pipeline is classified by
//! *domain* (who has to act) and carries a *retry hint*, after Arroyo's
//! `UserError`/`ExternalError`/`InternalError` with `NoRetry`/`WithBackoff`
//! (`arroyo-rpc/src/errors.rs`). The run loop's policy reads these, never a
//! list of variants:
//!
//! | domain | example | what happens | exit code |
//! |---|---|---|---|
//! | [`Domain::Config`] | SASL misconfigured, not co-partitioned, a locked state directory | stop at once with what to fix | 3 |
//! | [`Domain::Data`] | a record that does not decode, a row whose SQL fails on its values | dead letter, the pipeline goes on | — |
//! | [`Domain::External`] | broker unreachable, delivery timed out, a disk write failed | retry with backoff when the hint says so, else stop | 1 |
//! | [`Domain::Internal`] | a panic, DuckDB failing on a statement it bound before | stop: this is a bug | 70 |
//!
//! Each classified error is counted in `kaflowsql_errors_total{pipeline,domain,kind}`.

use std::fmt;
use std::time::{Duration, Instant};

/// Who has to act on an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Domain {
    /// The user's configuration, pipeline or environment: fix it and restart.
    Config,
    /// One record's content: it goes to the dead-letter topic.
    Data,
    /// A system kaflowsql depends on (Kafka, the disk): it may heal.
    External,
    /// kaflowsql itself: a bug.
    Internal,
}

impl Domain {
    /// The `domain` label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Domain::Config => "config",
            Domain::Data => "data",
            Domain::External => "external",
            Domain::Internal => "internal",
        }
    }

    /// The process exit code when a pipeline stops on an error of this domain
    /// (docs/operations.md, Exit codes).
    pub const fn exit_code(self) -> u8 {
        match self {
            Domain::Config => 3,
            Domain::Data | Domain::External => 1,
            Domain::Internal => 70,
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether trying again can succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// It cannot heal by waiting.
    Never,
    /// Try again after a growing delay.
    WithBackoff,
}

/// An error that knows its domain, retry hint and a stable kind (the
/// `kind` label: lowercase words joined by `_`).
pub trait Classified {
    /// Who has to act.
    fn domain(&self) -> Domain;
    /// Whether to try again.
    fn retry(&self) -> Retry {
        match self.domain() {
            Domain::External => Retry::WithBackoff,
            _ => Retry::Never,
        }
    }
    /// What failed, as a label value.
    fn kind(&self) -> &'static str;
}

/// Every (domain, kind) pair kaflowsql classifies errors into, so their
/// counters exist (at 0) from the start.
pub const KINDS: &[(Domain, &str)] = &[
    (Domain::Config, "kafka_client_config"),
    (Domain::Config, "not_co_partitioned"),
    (Domain::Config, "no_such_partition"),
    (Domain::Config, "state_directory"),
    (Domain::Config, "schema_registry_config"),
    (Domain::Data, "decode"),
    (Domain::Data, "event_time"),
    (Domain::Data, "sql_row"),
    (Domain::Data, "tombstone"),
    (Domain::Data, "output_encode"),
    (Domain::External, "kafka_client"),
    (Domain::External, "missing_topic"),
    (Domain::External, "consume"),
    (Domain::External, "commit"),
    (Domain::External, "dimension_read"),
    (Domain::External, "delivery"),
    (Domain::External, "state_io"),
    (Domain::External, "schema_registry"),
    (Domain::Internal, "sql"),
    (Domain::Internal, "arrow"),
    (Domain::Internal, "bug"),
];

/// Logs a repeated failure at most once per interval, with how many times
/// it happened in between (an outage must not print a line every 50 ms).
#[derive(Debug)]
pub struct LogLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    /// At most one line per `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// Whether to log now; `Some(n)` with the number of occurrences not
    /// logged since the last line.
    pub fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_lines_are_limited_and_counted() {
        let mut l = LogLimit::new(Duration::from_secs(3600));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        l.last = Some(Instant::now() - Duration::from_secs(7200));
        assert_eq!(l.allow(), Some(2));
    }

    #[test]
    fn kinds_are_label_values_and_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for (_, k) in KINDS {
            assert!(k.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{k}");
            assert!(seen.insert(*k), "{k} twice");
        }
        assert_eq!(Domain::Config.exit_code(), 3);
        assert_eq!(Domain::Internal.exit_code(), 70);
    }
}
