//! Pipeline files and the global config: raw serde structs are read straight
//! from YAML (keeping line and column), then validated into types the engine
//! can trust. Every problem is reported at once, naming file, line and column.

mod diagnostic;
mod duration;
mod env;
mod global;
mod locate;
mod pipeline;
pub mod registry;
pub mod security;

pub use diagnostic::{Diagnostic, Diagnostics};
pub use duration::{parse_bytes, parse_duration, ByteSize, HumanDuration};
pub use env::expand as expand_env;
pub use global::{
    default_dimension_load_timeout, default_profiling_listen, GlobalConfig, HttpConfig,
    KafkaConfig, ProfilingConfig, RocksDbConfig, StateConfig,
};
pub use locate::{Locations, Position};
pub use pipeline::{
    default_ttl_ms, Emission, OnTimeout, Output, OutputFormat, Pipeline, PipelineDefaults,
    SourceFormat, SourceSpec,
};

use std::path::{Path, PathBuf};

/// Why a file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read the file: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file has problems; each names its line and column.
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// Reads a file, naming it in the error.
pub(crate) fn read(file: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: file.to_path_buf(),
        source,
    })
}

/// Turns a serde_yaml_ng error into a located diagnostic.
pub(crate) fn yaml_diagnostic(file: &Path, err: &serde_yaml_ng::Error) -> Diagnostic {
    let position = err
        .location()
        .map(|l| Position {
            line: l.line(),
            column: l.column(),
        })
        .unwrap_or(Position { line: 1, column: 1 });
    let text = err.to_string();
    let message = match text.find(" at line ") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    };
    Diagnostic::new(file, position, message)
        .with_help("see docs/pipeline-reference.md for every key, its type and an example")
}
