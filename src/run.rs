//! `kaflowsql run`: load and validate everything, start the HTTP server, run
//! each pipeline on its own thread, and drain them all on SIGTERM or Ctrl-C.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use tracing::{error, info};

use kaflowsql::config::{GlobalConfig, Pipeline};
use kaflowsql::error::{Classified, Domain};
use kaflowsql::kafka::source::Ownership;
use kaflowsql::store::StateDb;
use kaflowsql::telemetry::{self, Registry};
use kaflowsql::topology::{run_pipeline, RunOptions};

/// The partition owned in static mode, from `N` or `auto` (host name `name-N`).
fn ownership(partition: Option<&str>) -> anyhow::Result<Ownership> {
    let Some(p) = partition else {
        return Ok(Ownership::Group);
    };
    let text = if p == "auto" {
        let host = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .context("--partition auto needs POD_NAME or HOSTNAME (a StatefulSet pod name such as kaflowsql-3)")?;
        host.rsplit('-').next().unwrap_or_default().to_string()
    } else {
        p.to_string()
    };
    match text.parse::<i32>() {
        Ok(n) if n >= 0 => Ok(Ownership::Static(n)),
        _ => bail!("--partition takes a partition number or `auto`, not `{text}`"),
    }
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        // Colours only on a terminal: files and log collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// `kaflowsql run`: exit 0 after SIGTERM, 2 for invalid files or state
/// directory, else the exit code of the worst pipeline failure (see
/// docs/operations.md, Failures).
pub fn run(
    config: Option<&Path>,
    partition: Option<&str>,
    log_json: bool,
    files: &[PathBuf],
) -> anyhow::Result<ExitCode> {
    init_logs(log_json);
    let (global, pipelines, state) = match load(config, files) {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let ownership = ownership(partition)?;
    let registry = Arc::new(Registry::new());
    registry.set_state(state.clone());
    let listener = TcpListener::bind(&global.http.listen).with_context(|| {
        format!(
            "cannot listen on {} for /metrics; set http.listen or KAFLOWSQL_HTTP_LISTEN to a free address",
            global.http.listen
        )
    })?;
    info!(
        listen = %global.http.listen,
        brokers = %global.kafka.brokers,
        pipelines = pipelines.len(),
        ownership = ?ownership,
        state = %state.path().display(),
        "kaflowsql starting; metrics on http://{}/metrics",
        global.http.listen
    );
    telemetry::serve(listener, registry.clone()).context("cannot start the HTTP server")?;
    let profiling = &global.http.profiling;
    if profiling.enabled {
        let listener = TcpListener::bind(&profiling.listen).with_context(|| {
            format!(
                "cannot listen on {} for /debug/pprof/profile; set http.profiling.listen to a free address",
                profiling.listen
            )
        })?;
        telemetry::serve_profiling(listener).context("cannot start the profiling server")?;
        info!(listen = %profiling.listen, "CPU profiles on http://{}/debug/pprof/profile", profiling.listen);
    }
    let shutdown = Arc::new(AtomicBool::new(false));
    {
        let shutdown = shutdown.clone();
        ctrlc::set_handler(move || {
            if shutdown.swap(true, Ordering::Relaxed) {
                std::process::exit(130);
            }
        })
        .context("cannot install the SIGTERM/Ctrl-C handler")?;
    }
    let options = run_options(&global, &state, ownership, pipelines.len());
    let mut threads = Vec::new();
    for p in pipelines {
        let (global, options) = (global.clone(), options.clone());
        let (registry, shutdown) = (registry.clone(), shutdown.clone());
        let handle = std::thread::Builder::new()
            .name(format!("pipeline-{}", p.name))
            .spawn(move || supervise(&p, &global, &options, &registry, &shutdown))
            .context("cannot start a pipeline thread")?;
        threads.push(handle);
    }
    let outcomes = threads.into_iter().map(|t| {
        t.join()
            .unwrap_or_else(|_| Outcome::Panicked("a pipeline thread panicked".into()))
    });
    Ok(exit_code(outcomes))
}

/// Loads the global config, every pipeline file and the state directory,
/// printing every problem; the exit code 2 when one is invalid.
fn load(
    config: Option<&Path>,
    files: &[PathBuf],
) -> Result<(GlobalConfig, Vec<Pipeline>, Arc<StateDb>), ExitCode> {
    let global = GlobalConfig::load(config).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })?;
    for w in &global.warnings {
        eprintln!("{w}");
    }
    let default_ttl = global
        .state
        .ttl
        .map_or(kaflowsql::config::default_ttl_ms(), |d| d.as_millis_i64());
    let mut pipelines = Vec::new();
    let mut invalid = false;
    for f in files {
        let defaults = kaflowsql::config::PipelineDefaults {
            ttl_ms: default_ttl,
            use_avro: global.kafka.use_avro,
        };
        match Pipeline::load_with_defaults(f, defaults) {
            Ok(p) => pipelines.push(p),
            Err(e) => {
                eprintln!("{e}");
                invalid = true;
            }
        }
    }
    if invalid {
        return Err(ExitCode::from(2));
    }
    // State is opened before anything starts: a locked, foreign or outdated
    // directory stops the process here with what to do.
    let state = StateDb::open(&global.state).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })?;
    Ok((global, pipelines, state))
}

/// How every pipeline runs, from the global config: the memory budget is
/// shared equally between the `pipelines`.
fn run_options(
    global: &GlobalConfig,
    state: &Arc<StateDb>,
    ownership: Ownership,
    pipelines: usize,
) -> RunOptions {
    let consumer = &global.kafka.consumer;
    let mut options = RunOptions {
        ownership,
        dimension_timeout: consumer
            .dimension_load_timeout
            .map_or(kaflowsql::config::default_dimension_load_timeout(), |d| d.0),
        memory_budget: state.memory_budget().map(|b| b / pipelines.max(1) as u64),
        state: Some(state.clone()),
        max_poll_records: consumer
            .max_poll_records
            .map_or(4096, |n| (n as usize).max(1)),
        ..RunOptions::default()
    };
    // Tests replay recorded input slowly; they set event time not to follow the wall clock.
    if let Some(ms) = std::env::var("KAFLOWSQL_IDLE_WATERMARK_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        options.idle_watermark_after = std::time::Duration::from_millis(ms);
    }
    options
}

/// Runs one pipeline on its thread. A pipeline that fails or panics stops
/// the process (health turns 503, the others drain), so the orchestrator
/// restarts it.
fn supervise(
    p: &Pipeline,
    global: &GlobalConfig,
    options: &RunOptions,
    registry: &Registry,
    shutdown: &Arc<AtomicBool>,
) -> Outcome {
    let metrics = registry.pipeline(&p.name);
    let run = || run_pipeline(p, global, options, metrics.clone(), shutdown.clone());
    let outcome = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(Ok(())) => Outcome::Stopped,
        Ok(Err(e)) => {
            error!(pipeline = %p.name, error = %e, domain = %e.domain(), kind = e.kind(), "Pipeline failed; stopping the process.");
            metrics.error(e.domain(), e.kind());
            registry.set_failed(e.to_string());
            Outcome::Failed(e.to_string(), e.domain())
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_string());
            let why = format!("pipeline `{}` panicked (this is a bug): {what}", p.name);
            error!(pipeline = %p.name, panic = %what, "Pipeline panicked (this is a bug); stopping the process.");
            metrics.error(Domain::Internal, "bug");
            registry.set_failed(why.clone());
            Outcome::Panicked(why)
        }
    };
    if !matches!(outcome, Outcome::Stopped) {
        shutdown.store(true, Ordering::Relaxed);
    }
    outcome
}

/// The process's exit code: that of the worst outcome (a bug over a
/// configuration error over an external failure over a clean stop).
fn exit_code(outcomes: impl Iterator<Item = Outcome>) -> ExitCode {
    let mut code = ExitCode::SUCCESS;
    let mut worst = 0;
    for outcome in outcomes {
        let (rank, exit) = match &outcome {
            Outcome::Stopped => (0, ExitCode::SUCCESS),
            Outcome::Failed(e, domain) => {
                eprintln!("error: {e}");
                let rank = match domain {
                    Domain::Internal => 3,
                    Domain::Config => 2,
                    _ => 1,
                };
                (rank, ExitCode::from(domain.exit_code()))
            }
            Outcome::Panicked(e) => {
                eprintln!("error: {e}");
                (3, ExitCode::from(Domain::Internal.exit_code()))
            }
        };
        if rank > worst {
            worst = rank;
            code = exit;
        }
    }
    code
}

/// How a pipeline thread ended.
enum Outcome {
    /// Drained after a shutdown request.
    Stopped,
    /// Stopped on an error of a domain.
    Failed(String, Domain),
    /// Panicked.
    Panicked(String),
}
