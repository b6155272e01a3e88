//! One running pipeline, as named steps: restore state, bootstrap the
//! dimensions, subscribe to the event streams, then loop (poll a micro-batch,
//! deliver it, acknowledge deliveries, checkpoint and commit), and drain.
//!
//! One thread per pipeline runs the whole loop: records move in batches of up
//! to `maxPollRecords`, each batch is evaluated once, its outputs are produced
//! in one epoch, and a full producer queue blocks the loop (backpressure).
//! Which offsets may be committed, and when, is the [`Ledger`]'s rule; this
//! module only calls it. Kafka is reached through [`crate::kafka`] alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::config::{GlobalConfig, Pipeline};
use crate::engine::{Engine, EngineError, Outputs};
use crate::error::{Classified, Domain, LogLimit, Retry};
use crate::kafka::sink::Sink;
use crate::kafka::source::Ownership;
use crate::kafka::KafkaError;
use crate::offsets::Ledger;
use crate::registry::RegistryError;
use crate::sql::Role;
use crate::store::StateDb;
use crate::telemetry::PipelineMetrics;

mod formats;
mod runner;
use formats::Formats;
use runner::Runner;

/// Why a pipeline stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Kafka failed in a way the pipeline cannot go on from.
    #[error("pipeline `{pipeline}`: {source}")]
    Kafka {
        /// The pipeline.
        pipeline: String,
        /// The failure.
        source: Box<KafkaError>,
    },
    /// The schema registry refused, or the output schema cannot be registered.
    #[error("pipeline `{pipeline}`: {source}")]
    Registry {
        /// The pipeline.
        pipeline: String,
        /// The failure.
        source: Box<RegistryError>,
    },
    /// The engine failed.
    #[error("pipeline `{pipeline}`: {source}")]
    Engine {
        /// The pipeline.
        pipeline: String,
        /// The failure.
        source: Box<EngineError>,
    },
}

impl RunError {
    fn kafka(pipeline: &Pipeline, source: KafkaError) -> Self {
        RunError::Kafka {
            pipeline: pipeline.name.clone(),
            source: Box::new(source),
        }
    }

    fn registry(pipeline: &Pipeline, source: RegistryError) -> Self {
        RunError::Registry {
            pipeline: pipeline.name.clone(),
            source: Box::new(source),
        }
    }

    fn engine(pipeline: &Pipeline, source: EngineError) -> Self {
        RunError::Engine {
            pipeline: pipeline.name.clone(),
            source: Box::new(source),
        }
    }
}

impl Classified for RunError {
    fn domain(&self) -> Domain {
        match self {
            RunError::Kafka { source, .. } => source.domain(),
            RunError::Registry { source, .. } => source.domain(),
            RunError::Engine { source, .. } => source.domain(),
        }
    }

    fn retry(&self) -> Retry {
        match self {
            RunError::Kafka { source, .. } => source.retry(),
            RunError::Registry { source, .. } => source.retry(),
            RunError::Engine { source, .. } => source.retry(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            RunError::Kafka { source, .. } => source.kind(),
            RunError::Registry { source, .. } => source.kind(),
            RunError::Engine { source, .. } => source.kind(),
        }
    }
}

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Group or static partition ownership.
    pub ownership: Ownership,
    /// Longest wait for the producer to deliver everything at shutdown.
    pub drain_timeout: Duration,
    /// How often delivered offsets are committed.
    pub commit_interval: Duration,
    /// Longest wait for the dimensions to be read to their end at start,
    /// where the broker never tells the end (`kafka.consumer.dimensionLoadTimeout`).
    pub dimension_timeout: Duration,
    /// After this long without event-stream records, event time advances with the wall clock.
    pub idle_watermark_after: Duration,
    /// Durable state (None: state in memory only, rebuilt from Kafka on restart).
    pub state: Option<Arc<StateDb>>,
    /// Bound on each pipeline's hot state in bytes.
    pub memory_budget: Option<u64>,
    /// Records per micro-batch poll (`kafka.consumer.maxPollRecords`).
    pub max_poll_records: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            ownership: Ownership::Group,
            drain_timeout: Duration::from_secs(30),
            commit_interval: Duration::from_millis(200),
            dimension_timeout: crate::config::default_dimension_load_timeout(),
            idle_watermark_after: Duration::from_secs(1),
            state: None,
            memory_budget: None,
            max_poll_records: 4096,
        }
    }
}

/// Runs `pipeline` until `shutdown` is set or a fatal error: restore state,
/// read the dimensions to their end, then poll, evaluate, deliver, commit;
/// drain on the way out.
pub fn run_pipeline(
    pipeline: &Pipeline,
    global: &GlobalConfig,
    options: &RunOptions,
    metrics: Arc<PipelineMetrics>,
    shutdown: Arc<AtomicBool>,
) -> Result<(), RunError> {
    let (engine, restored) = restore(pipeline, options, &metrics)?;
    let Some(sink) = connect("create the producer", &shutdown, &metrics, || {
        Sink::new(&global.producer_properties()).map(|s| s.with_shutdown(shutdown.clone()))
    })
    .map_err(|e| RunError::kafka(pipeline, e))?
    else {
        return Ok(());
    };
    let topics: Vec<String> = engine.topics().names().map(str::to_string).collect();
    let Some(formats) = Formats::new(pipeline, global, &topics, &shutdown, &metrics)
        .map_err(|e| RunError::registry(pipeline, e))?
    else {
        return Ok(());
    };
    let resume = restored
        .iter()
        .filter_map(|((topic, p), &o)| engine.topic_index(topic).map(|t| ((t, *p), o)))
        .collect();
    let mut runner = Runner {
        pipeline,
        options,
        engine,
        sink,
        ledger: Ledger::new(resume),
        metrics,
        shutdown,
        out: Outputs::default(),
        formats,
        assigned_once: false,
        pending_revoked: Vec::new(),
        last_commit: Instant::now(),
        dimension_log: LogLimit::new(Duration::from_secs(10)),
        consume_log: LogLimit::new(Duration::from_secs(10)),
        commit_log: LogLimit::new(Duration::from_secs(10)),
    };
    let Some(dimensions) = runner.bootstrap_dimensions(global, &restored)? else {
        return Ok(());
    };
    let Some(source) = runner.subscribe(global, &restored)? else {
        return Ok(());
    };
    let result = runner.run(&source, dimensions.as_ref());
    runner.drain(&source, result)
}

/// Next offset per (topic, partition) that restored state reflects.
type Resume = HashMap<(String, i32), i64>;

/// Builds the engine and restores its durable state; returns the offsets
/// the restored state reflects (empty without durable state).
fn restore(
    pipeline: &Pipeline,
    options: &RunOptions,
    metrics: &PipelineMetrics,
) -> Result<(Engine, Resume), RunError> {
    let fail = |e: EngineError| RunError::engine(pipeline, e);
    let mut engine = Engine::new(pipeline)
        .map_err(fail)?
        .with_lookup_timing(metrics.lookup_histogram());
    let Some(db) = &options.state else {
        return Ok((engine, HashMap::new()));
    };
    let started = Instant::now();
    let store = db
        .pipeline(
            &pipeline.name,
            &engine.fingerprint(pipeline),
            &engine.stored_sources(),
        )
        .map_err(|e| fail(e.into()))?;
    let (restored, report) = engine
        .attach_store(store, options.memory_budget)
        .map_err(fail)?;
    info!(
        pipeline = %pipeline.name,
        path = %db.path().display(),
        loaded = report.loaded,
        on_disk = report.on_disk,
        replayed = report.replayed,
        held = report.held,
        partitions = restored.offsets.len(),
        elapsed = ?started.elapsed(),
        "State restored."
    );
    Ok((engine, restored.offsets))
}

/// The distinct topics of `pipeline`'s sources of `role`.
fn topics_of(pipeline: &Pipeline, role: Role) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for s in pipeline.plan.sources.iter().filter(|s| s.role == role) {
        if !v.contains(&s.topic) {
            v.push(s.topic.clone());
        }
    }
    v
}

/// Runs `attempt` until it succeeds, retrying with backoff (0.5 s doubling
/// to 30 s) while its error says it may heal; an error that cannot heal (a
/// client configuration refused, topics not co-partitioned) returns at once.
/// None: shutdown was requested while waiting.
fn connect<T, E: Classified + std::fmt::Display>(
    what: &str,
    shutdown: &AtomicBool,
    metrics: &PipelineMetrics,
    mut attempt: impl FnMut() -> Result<T, E>,
) -> Result<Option<T>, E> {
    let mut backoff = Duration::from_millis(500);
    let mut limit = LogLimit::new(Duration::from_secs(10));
    loop {
        match attempt() {
            Ok(v) => return Ok(Some(v)),
            Err(e) => {
                metrics.error(e.domain(), e.kind());
                if e.retry() == Retry::Never {
                    return Err(e);
                }
                if let Some(suppressed) = limit.allow() {
                    warn!(error = %e, domain = %e.domain(), suppressed, "Cannot {what} yet; retrying in {:?}.", backoff);
                }
                let until = Instant::now() + backoff;
                while Instant::now() < until {
                    if shutdown.load(Ordering::Relaxed) {
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn metrics() -> Arc<PipelineMetrics> {
        crate::telemetry::Registry::new().pipeline("t")
    }

    #[test]
    fn connect_retries_what_may_heal_and_returns_what_cannot_at_once() {
        let shutdown = AtomicBool::new(false);
        let m = metrics();
        let calls = Cell::new(0);
        let healed = connect("test", &shutdown, &m, || {
            calls.set(calls.get() + 1);
            if calls.get() < 2 {
                Err(KafkaError::MissingTopic {
                    topic: "t".into(),
                    brokers: "b".into(),
                })
            } else {
                Ok(7)
            }
        });
        assert_eq!(healed.ok().flatten(), Some(7));
        assert_eq!(calls.get(), 2, "a missing topic may appear: retried");
        calls.set(0);
        let refused: Result<Option<()>, _> = connect("test", &shutdown, &m, || {
            calls.set(calls.get() + 1);
            Err(KafkaError::NotCoPartitioned { detail: "x".into() })
        });
        assert!(refused.is_err());
        assert_eq!(
            calls.get(),
            1,
            "repartitioning is the user's job: not retried"
        );
        shutdown.store(true, Ordering::Relaxed);
        let stopped: Result<Option<()>, _> = connect("test", &shutdown, &m, || {
            Err(KafkaError::MissingTopic {
                topic: "t".into(),
                brokers: "b".into(),
            })
        });
        assert!(matches!(stopped, Ok(None)), "shutdown while waiting");
    }

    #[test]
    fn topics_are_listed_once_by_role() {
        let p = match Pipeline::parse(
            std::path::Path::new("t.yaml"),
            "name: t
query: |
  SELECT a.id FROM s a JOIN t b ON a.id = b.id LEFT JOIN d x ON a.k = x.k
output:
  topic: out
state:
  events:
    default_ttl: 1m
  dimensions: [d]
",
        ) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(topics_of(&p, Role::Stream), ["s", "t"]);
        assert_eq!(topics_of(&p, Role::Dimension), ["d"]);
    }
}
