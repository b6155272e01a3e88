//! The SQL planner: turns a pipeline's `SELECT ... FROM ... JOIN ...` into a
//! [`QueryPlan`]: its sources and their roles, the driving stream, the join
//! tree with equi-join keys, the filters, and the output columns.
//!
//! Only what kaflowsql can run incrementally is accepted; everything else is
//! refused with a [`SqlError`] that points at the SQL text and says what to do.

mod bind;
mod plan;
mod rewrite;

pub(crate) use bind::sql_type_name;
pub use bind::{bind, output_types};
pub use plan::{plan_query, plan_query_with, Declared};
pub use rewrite::{
    batch_column_name, columns_of, direct_column, on_column, plain_projection, referenced_columns,
    DuckSql, KEEP_COLUMN, ROW_COLUMN,
};

use std::fmt;

use sqlparser::ast::Expr;

/// A position inside the SQL text (1-based line and column).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqlPosition {
    /// 1-based line within the query text.
    pub line: usize,
    /// 1-based column within the line.
    pub column: usize,
}

impl Default for SqlPosition {
    fn default() -> Self {
        Self { line: 1, column: 1 }
    }
}

/// A query kaflowsql cannot run, with where and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SqlError {
    /// What is wrong.
    pub message: String,
    /// What to write instead.
    pub help: Option<String>,
    /// Where in the query text.
    pub position: SqlPosition,
}

impl SqlError {
    fn new(position: SqlPosition, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            help: None,
            position,
        }
    }

    fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Whether a source is an event stream or a reference table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Records kept for their TTL and joined by arrival.
    Stream,
    /// Latest value per key, never expires unless an override says so.
    Dimension,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Stream => "stream",
            Role::Dimension => "dimension",
        })
    }
}

/// INNER or LEFT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinKind {
    /// Only rows with a match.
    Inner,
    /// Rows without a match get NULLs.
    Left,
}

impl fmt::Display for JoinKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JoinKind::Inner => "INNER",
            JoinKind::Left => "LEFT",
        })
    }
}

/// A column of one source: `sources[source].columns[column]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ColumnRef {
    /// Index of the source in [`QueryPlan::sources`].
    pub source: usize,
    /// Index of the column in that source's [`Source::columns`].
    pub column: usize,
}

/// One `FROM` or `JOIN` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The name the query uses for it (the alias, or the topic).
    pub alias: String,
    /// The Kafka topic.
    pub topic: String,
    /// Stream or dimension.
    pub role: Role,
    /// Every column the query reads from it, in first-use order.
    pub columns: Vec<String>,
}

/// One `JOIN`: the source it adds and how it matches earlier sources.
#[derive(Clone, Debug, PartialEq)]
pub struct Join {
    /// Index of the joined source in [`QueryPlan::sources`].
    pub source: usize,
    /// INNER or LEFT.
    pub kind: JoinKind,
    /// Equalities `probe = index`: `probe` is a column of an earlier source,
    /// `index` a column (of the joined source) its state is indexed by.
    pub keys: Vec<(ColumnRef, usize)>,
    /// A LEFT join's ON conditions beyond the keys: a candidate that fails
    /// them is no match, so the row is NULL-extended when no candidate
    /// passes (standard SQL). An INNER join's go to the filter.
    pub on: Option<Expr>,
}

/// One output column.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputColumn {
    /// The name in the output record.
    pub name: String,
    /// The expression as the user wrote it.
    pub expr: Expr,
    /// Whether this column is `alias.*` over a source that declares no
    /// columns: its value is the whole record (a JSON object), and the output
    /// writes the record's top-level fields in its place, in their order.
    pub record: bool,
}

/// What a query means to the engine.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryPlan {
    /// Sources; `sources[0]` is the driving stream (the `FROM`).
    pub sources: Vec<Source>,
    /// Joins in query order; each adds one source.
    pub joins: Vec<Join>,
    /// Output columns in SELECT order.
    pub outputs: Vec<OutputColumn>,
    /// `WHERE` and the non-equality parts of every `ON`, as one predicate.
    pub filter: Option<Expr>,
    /// Columns of the driving stream that event streams join on (empty when
    /// no other event stream is joined).
    pub stream_key: Vec<usize>,
}

impl QueryPlan {
    /// The join that adds `source` (None for the driving stream).
    pub fn join_of(&self, source: usize) -> Option<&Join> {
        self.joins.iter().find(|j| j.source == source)
    }

    /// Position of an output column by name.
    pub fn output_index(&self, name: &str) -> Option<usize> {
        self.outputs.iter().position(|o| o.name == name)
    }

    /// Columns of `source` that must be present in every record: the key its
    /// state is indexed by, and for the driving stream the columns it joins
    /// on. (A dimension's column that only feeds a further lookup, as
    /// `p.country` in a chain, may be NULL: that lookup then finds nothing.)
    pub fn key_columns(&self, source: usize) -> Vec<usize> {
        let mut cols = Vec::new();
        if let Some(j) = self.join_of(source) {
            cols.extend(j.keys.iter().map(|(_, c)| *c));
        }
        if source == 0 {
            for j in &self.joins {
                for (probe, _) in &j.keys {
                    if probe.source == 0 {
                        cols.push(probe.column);
                    }
                }
            }
            cols.extend(self.stream_key.iter().copied());
        }
        cols.sort_unstable();
        cols.dedup();
        cols
    }

    /// Whether any event stream other than the driving one is joined.
    pub fn has_stream_joins(&self) -> bool {
        self.sources.iter().skip(1).any(|s| s.role == Role::Stream)
    }
}
