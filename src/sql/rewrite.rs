//! The SQL DuckDB runs over a micro-batch of joined rows: the user's SELECT
//! list and filter, with every `alias.column` turned into a column of the
//! batch table.
//!
//! A LEFT join with ON conditions beyond its key (`LEFT JOIN c ON o.cid =
//! c.id AND c.active`) reads its source's columns through those conditions:
//! where they do not hold, the columns are NULL (the row is NULL-extended),
//! and a column [`on_column`]`(j)` tells the emission stage which candidate
//! rows matched, so that a candidate that failed is dropped when another
//! matched (standard SQL: a NULL-extended row only when nothing matched).

use std::ops::ControlFlow;

use sqlparser::ast::{visit_expressions_mut, Expr, Ident, Value};

use super::plan::collect_columns;
use super::{ColumnRef, OutputColumn, QueryPlan};

/// Name of the hidden column that carries a row's position in the batch.
pub const ROW_COLUMN: &str = "__kf_row";
/// Name of the hidden column that carries the filter's verdict.
pub const KEEP_COLUMN: &str = "__kf_keep";

/// Name of the hidden column that carries whether join `j`'s candidate
/// passed its ON conditions beyond the key.
pub fn on_column(j: usize) -> String {
    format!("__kf_on_{j}")
}

/// The SQL for one batch shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuckSql {
    /// The full `SELECT ... FROM <table>` text.
    pub text: String,
    /// Whether the result has the [`KEEP_COLUMN`].
    pub has_filter: bool,
    /// Joins (indices into `plan.joins`) with ON conditions beyond the key,
    /// in order: each has an [`on_column`] after the filter.
    pub on_joins: Vec<usize>,
    /// The output columns (indices into `plan.outputs`) the result's first
    /// columns are, in order; the others are [`direct_column`]s, read from
    /// the events without DuckDB.
    pub outputs: Vec<usize>,
    /// The batch columns the text reads: the only ones the batch needs.
    pub reads: Vec<ColumnRef>,
}

/// The batch column name of a source column: `alias.column`, quoted.
pub fn batch_column_name(plan: &QueryPlan, r: ColumnRef) -> String {
    let s = &plan.sources[r.source];
    format!("{}.{}", s.alias, s.columns[r.column])
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl DuckSql {
    /// Builds the query reading `from` (a table name or table function call,
    /// inserted as written). `present(r)` tells whether the batch has a typed
    /// column for `r`; columns never seen with a value are read as NULL.
    pub fn build(plan: &QueryPlan, from: &str, present: &dyn Fn(ColumnRef) -> bool) -> Self {
        let all: Vec<usize> = (0..plan.outputs.len()).collect();
        Self::build_outputs(plan, from, present, &all)
    }

    /// [`DuckSql::build`] for the output columns `outputs` only (the filter
    /// and ON conditions always).
    pub fn build_outputs(
        plan: &QueryPlan,
        from: &str,
        present: &dyn Fn(ColumnRef) -> bool,
        outputs: &[usize],
    ) -> Self {
        let reads = columns_read(plan, outputs.iter().map(|&i| &plan.outputs[i]));
        let mut items: Vec<String> = outputs
            .iter()
            .map(|&i| {
                let o = &plan.outputs[i];
                let e = rewrite(plan, &o.expr, present, None);
                format!("{e} AS {}", quoted(&o.name))
            })
            .collect();
        if let Some(filter) = &plan.filter {
            // The condition as it is: its type must be BOOLEAN (checked when
            // the query is bound and per batch shape); NULL keeps nothing.
            let e = rewrite(plan, filter, present, None);
            items.push(format!("({e}) AS {KEEP_COLUMN}"));
        }
        let mut on_joins = Vec::new();
        for (j, join) in plan.joins.iter().enumerate() {
            if let Some(on) = &join.on {
                let e = rewrite(plan, on, present, Some(join.source));
                items.push(format!("({e}) AS {}", on_column(j)));
                on_joins.push(j);
            }
        }
        items.push(ROW_COLUMN.to_string());
        Self {
            text: format!("SELECT {} FROM {from}", items.join(", ")),
            has_filter: plan.filter.is_some(),
            on_joins,
            outputs: outputs.to_vec(),
            reads,
        }
    }
}

/// The batch column output `output` is unchanged, when it is one: a column
/// (under any name) of a source without ON conditions beyond its key (whose
/// columns read NULL where those fail). A column passes through DuckDB
/// unchanged (same Arrow type, same values), so such an output is read from
/// the events without it.
pub fn direct_column(plan: &QueryPlan, output: &OutputColumn) -> Option<ColumnRef> {
    let r = resolve(plan, &output.expr)?;
    match plan.join_of(r.source) {
        Some(j) if j.on.is_some() => None,
        _ => Some(r),
    }
}

/// Whether evaluating the query is a projection: every output a
/// [`direct_column`], no WHERE and no ON condition beyond the join keys (an
/// INNER join's go to the WHERE): then no DuckDB call is needed at all.
pub fn plain_projection(plan: &QueryPlan) -> bool {
    plan.filter.is_none()
        && plan.joins.iter().all(|j| j.on.is_none())
        && plan
            .outputs
            .iter()
            .all(|o| direct_column(plan, o).is_some())
}

/// Resolves a column expression to its batch column, as the planner did.
fn resolve(plan: &QueryPlan, expr: &Expr) -> Option<ColumnRef> {
    let (source, name) = match expr {
        Expr::Identifier(name) if plan.sources.len() == 1 => (0, &name.value),
        Expr::CompoundIdentifier(parts) if parts.len() == 2 => (
            plan.sources
                .iter()
                .position(|s| s.alias == parts[0].value)?,
            &parts[1].value,
        ),
        _ => return None,
    };
    let column = plan.sources[source]
        .columns
        .iter()
        .position(|c| c == name)?;
    Some(ColumnRef { source, column })
}

/// `expr` over the batch columns. The columns of a LEFT join with ON
/// conditions beyond its key read as NULL where those fail, except those of
/// `raw` (the source whose conditions are being written).
fn rewrite(
    plan: &QueryPlan,
    expr: &Expr,
    present: &dyn Fn(ColumnRef) -> bool,
    raw: Option<usize>,
) -> String {
    let mut expr = expr.clone();
    let _ = visit_expressions_mut(&mut expr, |e| {
        if let Some(r) = resolve(plan, e) {
            *e = if !present(r) {
                Expr::Value(Value::Null.into())
            } else {
                // Quoted here (inner `"` doubled), not by sqlparser's
                // Display, so a path with a quoted field (`m."x""y"`) names
                // the batch column exactly.
                let column = Expr::Identifier(Ident::new(quoted(&batch_column_name(plan, r))));
                match plan.joins.iter().find(|j| j.source == r.source) {
                    Some(j) if Some(r.source) != raw && j.on.is_some() => {
                        let on = j.on.as_ref().map_or(String::new(), |on| {
                            rewrite(plan, on, present, Some(r.source))
                        });
                        let text = format!("CASE WHEN ({on}) THEN {column} END");
                        Expr::Identifier(Ident::new(text))
                    }
                    _ => column,
                }
            };
        }
        ControlFlow::<()>::Continue(())
    });
    expr.to_string()
}

/// The column references one expression of `plan` makes.
pub fn columns_of(plan: &QueryPlan, expr: &Expr) -> Vec<ColumnRef> {
    let mut exprs = Vec::new();
    collect_columns(expr, &mut exprs);
    exprs.iter().filter_map(|e| resolve(plan, e)).collect()
}

/// Every column reference the plan's expressions make (for tests and explain).
pub fn referenced_columns(plan: &QueryPlan) -> Vec<ColumnRef> {
    columns_read(plan, &plan.outputs)
}

/// The columns `outputs`, the filter and every ON condition read (a column
/// of a LEFT join with ON conditions reads them too), sorted, once each.
fn columns_read<'a>(
    plan: &QueryPlan,
    outputs: impl IntoIterator<Item = &'a OutputColumn>,
) -> Vec<ColumnRef> {
    let mut exprs = Vec::new();
    for o in outputs {
        collect_columns(&o.expr, &mut exprs);
    }
    if let Some(f) = &plan.filter {
        collect_columns(f, &mut exprs);
    }
    for on in plan.joins.iter().filter_map(|j| j.on.as_ref()) {
        collect_columns(on, &mut exprs);
    }
    let mut refs: Vec<_> = exprs.iter().filter_map(|e| resolve(plan, e)).collect();
    refs.sort();
    refs.dedup();
    refs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::plan_query;

    #[test]
    fn rewrites_columns_to_batch_columns() {
        let plan = plan_query(
            "SELECT e.id, p.plan AS tier, e.n * 2 FROM ev e LEFT JOIN p ON e.id = p.id WHERE e.kind <> 'x'",
            &["p".to_string()],
        )
        .unwrap();
        let sql = DuckSql::build(&plan, "\"batch\"", &|_| true);
        assert_eq!(
            sql.text,
            "SELECT \"e.id\" AS \"id\", \"p.plan\" AS \"tier\", \"e.n\" * 2 AS \"e.n * 2\", (\"e.kind\" <> 'x') AS __kf_keep, __kf_row FROM \"batch\""
        );
        let unknown = DuckSql::build(&plan, "batch", &|r| r.source == 0);
        assert!(
            unknown.text.contains("NULL AS \"tier\""),
            "{}",
            unknown.text
        );
        assert_eq!(referenced_columns(&plan).len(), 4);
    }
}
