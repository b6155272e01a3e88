//! The SQL DuckDB runs over a micro-batch of joined rows: the user's SELECT
//! list and filter, with every `alias.column` turned into a column of the
//! batch table.

use std::ops::ControlFlow;

use sqlparser::ast::{visit_expressions_mut, Expr, Ident, Value};

use super::plan::collect_columns;
use super::{ColumnRef, QueryPlan};

/// Name of the hidden column that carries a row's position in the batch.
pub const ROW_COLUMN: &str = "__kf_row";
/// Name of the hidden column that carries the filter's verdict.
pub const KEEP_COLUMN: &str = "__kf_keep";

/// The SQL for one batch shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuckSql {
    /// The full `SELECT ... FROM <table>` text.
    pub text: String,
    /// Whether the result has the [`KEEP_COLUMN`].
    pub has_filter: bool,
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
        let mut items: Vec<String> = plan
            .outputs
            .iter()
            .map(|o| format!("{} AS {}", rewrite(plan, &o.expr, present), quoted(&o.name)))
            .collect();
        if let Some(filter) = &plan.filter {
            // The condition as it is: its type must be BOOLEAN (checked when
            // the query is bound and per batch shape); NULL keeps nothing.
            items.push(format!(
                "({}) AS {KEEP_COLUMN}",
                rewrite(plan, filter, present)
            ));
        }
        items.push(ROW_COLUMN.to_string());
        Self {
            text: format!("SELECT {} FROM {from}", items.join(", ")),
            has_filter: plan.filter.is_some(),
        }
    }
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

fn rewrite(plan: &QueryPlan, expr: &Expr, present: &dyn Fn(ColumnRef) -> bool) -> String {
    let mut expr = expr.clone();
    let _ = visit_expressions_mut(&mut expr, |e| {
        if let Some(r) = resolve(plan, e) {
            *e = if present(r) {
                Expr::Identifier(Ident::with_quote('"', batch_column_name(plan, r)))
            } else {
                Expr::Value(Value::Null.into())
            };
        }
        ControlFlow::<()>::Continue(())
    });
    expr.to_string()
}

/// Every column reference the plan's expressions make (for tests and explain).
pub fn referenced_columns(plan: &QueryPlan) -> Vec<ColumnRef> {
    let mut exprs = Vec::new();
    for o in &plan.outputs {
        collect_columns(&o.expr, &mut exprs);
    }
    if let Some(f) = &plan.filter {
        collect_columns(f, &mut exprs);
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
