//! `kaflowsql state`: look into, compact or reset the state directory of an
//! instance (stopped: a running instance holds the RocksDB lock).

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use kaflowsql::config::GlobalConfig;
use kaflowsql::store::StateDb;

/// What to do with the state directory.
#[derive(Subcommand)]
pub enum StateCommand {
    /// Entries and bytes per pipeline, source and shard.
    Inspect {
        /// Only this pipeline.
        pipeline: Option<String>,
        /// One line per non-empty shard too.
        #[arg(long)]
        shards: bool,
    },
    /// Remove expired records from disk now (RocksDB does it in the background too).
    Compact,
    /// Discard a pipeline's state; it is rebuilt from Kafka on the next start.
    Reset {
        /// The pipeline.
        pipeline: String,
    },
}

pub fn state(config: Option<&Path>, command: &StateCommand) -> anyhow::Result<ExitCode> {
    let global = match GlobalConfig::load(config) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    let db = match StateDb::open(&global.state) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    match command {
        StateCommand::Inspect { pipeline, shards } => {
            let families = db.inspect(pipeline.as_deref())?;
            if families.is_empty() {
                println!("{}: no pipeline state", db.path().display());
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<40} {:>12} {:>14} {:>10} {:>8}",
                "pipeline/source", "entries", "bytes", "expired", "other"
            );
            for f in &families {
                println!(
                    "{:<40} {:>12} {:>14} {:>10} {:>8}",
                    f.name,
                    f.entries(),
                    f.bytes(),
                    f.expired,
                    f.other
                );
                if *shards {
                    for (i, (n, b)) in f.shards.iter().enumerate().filter(|(_, s)| s.0 > 0) {
                        println!("  shard {i:>3} {n:>12} {b:>14}");
                    }
                }
            }
        }
        StateCommand::Compact => {
            db.compact()?;
            println!("{}: compacted", db.path().display());
        }
        StateCommand::Reset { pipeline } => {
            let known = db.pipelines()?;
            if !known.iter().any(|p| p == pipeline) {
                eprintln!(
                    "error: {}: no state for pipeline `{pipeline}` (pipelines with state: {})",
                    db.path().display(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                );
                return Ok(ExitCode::from(2));
            }
            let dropped = db.reset(pipeline)?;
            println!(
                "{}: state of `{pipeline}` removed ({dropped} column families)",
                db.path().display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
