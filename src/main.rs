//! The `kaflowsql` command: `run`, `validate`, `explain`, `test`, `peek`, `state`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use kaflowsql::config::{Emission, Pipeline};
use kaflowsql::engine::Engine;
use kaflowsql::sql::{DuckSql, Role};
use kaflowsql::testing;

mod run;
mod state_cmd;

/// mimalloc: the engine allocates small objects (events, strings) at a high
/// rate; mimalloc measured faster than glibc malloc here (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "kaflowsql",
    version,
    about = "Stream-join SQL over Kafka topics"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run pipelines against Kafka until SIGTERM or Ctrl-C.
    Run {
        /// Global config file (brokers, tuning, HTTP address).
        #[arg(long, env = "KAFLOWSQL_CONFIG")]
        config: Option<PathBuf>,
        /// Own partition N of every event stream (one instance per partition);
        /// `auto` takes N from a StatefulSet host name such as `kaflowsql-3`.
        /// Without it, instances share partitions through the consumer group.
        #[arg(long, env = "KAFLOWSQL_PARTITION")]
        partition: Option<String>,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        log_json: bool,
        /// Pipeline files.
        #[arg(required = true)]
        pipelines: Vec<PathBuf>,
    },
    /// Inspect, compact or reset the state directory (of a stopped instance).
    State {
        /// Global config file (state.rocksdb.path).
        #[arg(long, env = "KAFLOWSQL_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: state_cmd::StateCommand,
    },
    /// Print the first records of a topic as {"key":...,"value":...} lines.
    Peek {
        /// Kafka bootstrap servers (default: the config's, else localhost:9092).
        #[arg(long, env = "KAFLOWSQL_KAFKA_BROKERS")]
        brokers: Option<String>,
        /// Global config whose `kafka` settings (security, properties) the
        /// consumer uses, to read from a secured cluster.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Topic.
        #[arg(long)]
        topic: String,
        /// How many records.
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// Also print each record's headers (a dead letter's reason is
        /// `kaflowsql.dlq.reason`), as a `"headers"` object.
        #[arg(long)]
        headers: bool,
    },
    /// Check pipeline files; print every problem with file, line and column.
    Validate {
        /// Pipeline files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also check this global config (what `run --config` reads: keys,
        /// guarded properties, security files and secrets, warnings); its
        /// `state.ttl` is the pipelines' default TTL, as in `run`.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Show how a pipeline runs: sources, roles, join keys, TTLs, emission, SQL.
    Explain {
        /// Pipeline file.
        file: PathBuf,
    },
    /// Run a pipeline offline over recorded records and compare with expected output.
    Test {
        /// Pipeline file.
        pipeline: PathBuf,
        /// Recorded input: one {"topic","key","value","timestamp"} per line.
        #[arg(long)]
        input: PathBuf,
        /// Expected output: one {"key":...,"value":{...}} per line.
        #[arg(long)]
        expect: Option<PathBuf>,
        /// Write the actual output here.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Compare as multisets instead of in order.
        #[arg(long)]
        unordered: bool,
        /// Rows per DuckDB micro-batch (results do not depend on it).
        #[arg(long, default_value_t = kaflowsql::engine::DEFAULT_BATCH_ROWS)]
        batch_rows: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            config,
            partition,
            log_json,
            pipelines,
        } => run::run(
            config.as_deref(),
            partition.as_deref(),
            log_json,
            &pipelines,
        ),
        Command::Validate { files, config } => validate(&files, config.as_deref()),
        Command::State { config, command } => state_cmd::state(config.as_deref(), &command),
        Command::Peek {
            brokers,
            config,
            topic,
            count,
            headers,
        } => peek(brokers, config.as_deref(), &topic, count, headers),
        Command::Explain { file } => explain(&file),
        Command::Test {
            pipeline,
            input,
            expect,
            output,
            unordered,
            batch_rows,
        } => test(
            &pipeline,
            &input,
            expect.as_deref(),
            output.as_deref(),
            unordered,
            batch_rows,
        ),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn peek(
    brokers: Option<String>,
    config: Option<&std::path::Path>,
    topic: &str,
    count: usize,
    headers: bool,
) -> anyhow::Result<ExitCode> {
    let global = kaflowsql::config::GlobalConfig::load(config)?;
    let mut properties = global.consumer_properties();
    if let Some(b) = brokers {
        properties.insert("bootstrap.servers".into(), b);
    }
    let records = kaflowsql::kafka::peek::peek(
        &properties,
        topic,
        count,
        std::time::Duration::from_secs(10),
    )?;
    for r in &records {
        let mut line = testing::output_line(r.key.as_deref(), &r.value);
        if headers {
            let map: serde_json::Map<String, serde_json::Value> = r
                .headers
                .iter()
                .map(|(k, v)| {
                    let text = String::from_utf8_lossy(v).into_owned();
                    (k.clone(), serde_json::Value::String(text))
                })
                .collect();
            line.pop();
            line.push_str(&format!(
                ",\"headers\":{}}}",
                serde_json::Value::Object(map)
            ));
        }
        println!("{line}");
    }
    Ok(if records.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn validate(files: &[PathBuf], config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    let mut default_ttl = kaflowsql::config::default_ttl_ms();
    // With --config: (kafka.useAvro, whether a schema registry is set).
    let mut avro: Option<(bool, bool)> = None;
    if let Some(c) = config {
        match kaflowsql::config::GlobalConfig::load(Some(c)) {
            Ok(global) => {
                avro = Some((global.kafka.use_avro, global.registry.is_some()));
                for w in &global.warnings {
                    eprintln!("{w}");
                }
                if let Some(ttl) = global.state.ttl {
                    default_ttl = ttl.as_millis_i64();
                }
                println!("ok: {} (global config)", c.display());
            }
            Err(e) => {
                failed = true;
                eprintln!("{e}");
            }
        }
    }
    for f in files {
        let defaults = kaflowsql::config::PipelineDefaults {
            ttl_ms: default_ttl,
            use_avro: avro.is_some_and(|(use_avro, _)| use_avro),
        };
        match Pipeline::load_with_defaults(f, defaults) {
            Ok(p) => match (avro, config) {
                (Some((use_avro, false)), Some(c)) if p.uses_registry(use_avro) => {
                    failed = true;
                    eprintln!(
                        "{}: error: pipeline `{}` reads or writes Avro, and {} has no kafka.schemaRegistry\n  help: set kafka.schemaRegistry to the registry's URL (docs/pipeline-reference.md, Avro)",
                        f.display(),
                        p.name,
                        c.display()
                    );
                }
                _ => println!("ok: {} (pipeline `{}`)", f.display(), p.name),
            },
            Err(e) => {
                failed = true;
                eprintln!("{e}");
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn explain(file: &Path) -> anyhow::Result<ExitCode> {
    let p = match Pipeline::load(file) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let plan = &p.plan;
    println!("pipeline: {}", p.name);
    println!("consumer group: {}", p.consumer_group);
    println!("sources:");
    for (i, s) in plan.sources.iter().enumerate() {
        let ttl = match p.ttl_of(&s.topic) {
            Some(ms) => {
                kaflowsql::config::HumanDuration(std::time::Duration::from_millis(ms as u64))
                    .to_string()
            }
            None => "never expires".to_string(),
        };
        let role = if i == 0 {
            "driving stream".to_string()
        } else {
            s.role.to_string()
        };
        println!(
            "  {} (topic `{}`): {role}, ttl {ttl}, columns [{}]",
            s.alias,
            s.topic,
            s.columns.join(", ")
        );
    }
    explain_joins(plan);
    match &p.emission {
        Emission::Immediate => println!("emission: immediate"),
        Emission::Smart {
            require,
            timeout_ms,
            on_timeout,
        } => {
            let names: Vec<&str> = require
                .iter()
                .map(|&i| plan.outputs[i].name.as_str())
                .collect();
            println!(
                "emission: smart, require [{}], timeout {timeout_ms}ms, on_timeout {on_timeout:?}",
                names.join(", ")
            );
        }
    }
    let key = p
        .output
        .key
        .map(|k| plan.outputs[k].name.as_str())
        .unwrap_or("(none)");
    println!(
        "output: topic `{}`, key {key}, dead letters to `{}`",
        p.output.topic, p.output.dlq_topic
    );
    println!("DuckDB runs, per micro-batch:");
    println!("  {}", DuckSql::build(plan, "batch", &|_| true).text);
    Ok(ExitCode::SUCCESS)
}

/// Prints each join of `plan`: kind, source, keys and how state is found.
fn explain_joins(plan: &kaflowsql::sql::QueryPlan) {
    println!("joins:");
    for j in &plan.joins {
        let s = &plan.sources[j.source];
        let keys: Vec<String> = j
            .keys
            .iter()
            .map(|(probe, col)| {
                let ps = &plan.sources[probe.source];
                format!(
                    "{}.{} = {}.{}",
                    ps.alias, ps.columns[probe.column], s.alias, s.columns[*col]
                )
            })
            .collect();
        let role = if s.role == Role::Dimension {
            "lookup in dimension"
        } else {
            "stream-stream join"
        };
        println!(
            "  {} JOIN {} ON {} ({role}; shard = xxhash64(key) % 256)",
            j.kind,
            s.alias,
            keys.join(" AND ")
        );
    }
}

fn test(
    pipeline: &Path,
    input: &Path,
    expect: Option<&Path>,
    output: Option<&Path>,
    unordered: bool,
    batch_rows: usize,
) -> anyhow::Result<ExitCode> {
    let p = match Pipeline::load(pipeline) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let records = testing::read_input(input)?;
    let mut engine = Engine::new(&p)?.with_batch_rows(batch_rows);
    let run = testing::run(&mut engine, &records)?;
    for d in &run.dead_letters {
        eprintln!(
            "dead letter: {}[{}]@{}: {}",
            d.topic, d.partition, d.offset, d.reason
        );
    }
    if let Some(out) = output {
        let mut text = run.lines.join("\n");
        text.push('\n');
        std::fs::write(out, text).with_context(|| format!("cannot write {}", out.display()))?;
    }
    let stats = engine.stats();
    eprintln!(
        "{} records in, {} rows out, {} dead letter(s), {} late (expired on arrival: not stored, not joined), {} held",
        stats.records,
        run.lines.len(),
        stats.dead_letters,
        stats.late,
        engine.held()
    );
    let Some(expect) = expect else {
        if output.is_none() {
            for l in &run.lines {
                println!("{l}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
    let expected = testing::read_expected(expect)?;
    let verdict = testing::compare(&run.lines, &expected, unordered);
    if verdict.matches() {
        println!("ok: {} rows match {}", run.lines.len(), expect.display());
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "mismatch against {}:\n{}",
            expect.display(),
            verdict.report()
        );
        Ok(ExitCode::FAILURE)
    }
}
