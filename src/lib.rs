//! kaflowsql: stream-join SQL over Kafka topics.
//!
//! A pipeline file ([`config`]) holds a SQL query ([`sql`]) over Kafka topics.
//! The [`engine`] decodes each record once ([`codec`]), keeps join state in
//! 256 shards ([`state`]), builds joined rows ([`join`]), evaluates the
//! SELECT list and WHERE through DuckDB over micro-batches ([`eval`]), and
//! decides what to emit ([`emit`]). [`testing`] runs the same engine offline
//! over recorded records.

pub mod codec;
pub mod config;
pub mod engine;
pub mod error;
pub mod eval;
pub mod kafka;
pub mod offsets;
pub mod registry;
pub mod sql;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod testing;
pub mod topology;
