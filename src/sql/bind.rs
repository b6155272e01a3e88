//! Binding a planned query in DuckDB before anything runs, so that what
//! `validate` accepts cannot fail on its SQL at run time: the SELECT list and
//! the filter are prepared over an empty batch whose columns have the
//! declared types (`sources.<topic>.columns`); an undeclared column binds as
//! an untyped NULL, as it evaluates before any value of it was seen.
//!
//! Refused here, with DuckDB's message: unknown functions, wrong argument
//! types or counts, a WHERE (or extra ON condition) that is not BOOLEAN, and
//! any aggregate function of DuckDB's catalog (not only the common ones the
//! planner names).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use duckdb::arrow::array::{new_null_array, ArrayRef, UInt32Array};
use duckdb::arrow::datatypes::{DataType, Field, Schema};
use duckdb::arrow::record_batch::RecordBatch;
use sqlparser::ast::{Expr, Spanned, Visit, Visitor};

use super::{
    batch_column_name, on_column, ColumnRef, DuckSql, QueryPlan, SqlError, SqlPosition, KEEP_COLUMN,
};
use crate::codec::ColumnType;
use crate::eval::Evaluator;

/// One DuckDB for binding, shared by every thread (opening one costs
/// milliseconds). A static is never dropped: no DuckDB teardown runs in a
/// thread's exit, where DuckDB's own thread-local state may already be gone.
static BINDER: LazyLock<Mutex<Option<Evaluator>>> = LazyLock::new(|| Mutex::new(None));

/// The Arrow type a declared column has in the batch.
fn arrow_type(ty: ColumnType) -> DataType {
    match ty {
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::BigInt => DataType::Int64,
        ColumnType::Double => DataType::Float64,
        ColumnType::Varchar | ColumnType::Json => DataType::Utf8,
    }
}

fn position(expr: &Expr) -> SqlPosition {
    let span = expr.span();
    if span.start.line == 0 {
        SqlPosition::default()
    } else {
        SqlPosition {
            line: span.start.line as usize,
            column: span.start.column as usize,
        }
    }
}

/// DuckDB's aggregate names, read from its catalog once per process.
static AGGREGATES: OnceLock<BTreeSet<String>> = OnceLock::new();

/// Names of DuckDB functions that exist as aggregates and not as scalars.
fn aggregates(ev: &Evaluator) -> BTreeSet<String> {
    // A name that also has a scalar overload may be the scalar one.
    let sql =
        "SELECT DISTINCT function_name FROM duckdb_functions() WHERE function_type = 'aggregate' \
               EXCEPT SELECT function_name FROM duckdb_functions() WHERE function_type = 'scalar'";
    let mut names = BTreeSet::new();
    if let Ok(batches) = ev.query(sql) {
        for b in batches {
            if let Some(col) = b
                .column(0)
                .as_any()
                .downcast_ref::<duckdb::arrow::array::StringArray>()
            {
                names.extend(col.iter().flatten().map(str::to_ascii_lowercase));
            }
        }
    }
    names
}

/// A function's own name, unquoted and lowercase (`"ARG_MAX"` and
/// `main.arg_max` are `arg_max`).
fn function_name(name: &sqlparser::ast::ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(|i| i.value.to_ascii_lowercase())
        .unwrap_or_else(|| name.to_string().to_ascii_lowercase())
}

/// The first function call in `expr` whose name satisfies `wanted`: its
/// position and name.
fn find_call(expr: &Expr, wanted: impl Fn(&str) -> bool) -> Option<(SqlPosition, String)> {
    struct Find<F> {
        wanted: F,
        found: Option<(SqlPosition, String)>,
    }
    impl<F: Fn(&str) -> bool> Visitor for Find<F> {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            if let Expr::Function(f) = expr {
                let name = function_name(&f.name);
                if (self.wanted)(&name) {
                    self.found = Some((position(expr), name));
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut find = Find {
        wanted,
        found: None,
    };
    let _ = expr.visit(&mut find);
    find.found
}

/// The SQL name of an Arrow type DuckDB returned, for messages.
pub(crate) fn sql_type_name(dt: &DataType) -> String {
    match dt {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INTEGER".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "VARCHAR".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p},{s})"),
        DataType::Date32 => "DATE".into(),
        DataType::Timestamp(..) => "TIMESTAMP".into(),
        other => other.to_string(),
    }
}

/// Runs `f` on the shared binding DuckDB, opened on first use.
fn with_binder<R>(f: impl FnOnce(&mut Evaluator) -> Result<R, SqlError>) -> Result<R, SqlError> {
    let unavailable = |why: String| {
        SqlError::new(
            SqlPosition::default(),
            format!("cannot open DuckDB to check the query: {why}"),
        )
    };
    let mut slot = BINDER
        .lock()
        .map_err(|_| unavailable("its lock was poisoned (this is a bug)".into()))?;
    if slot.is_none() {
        *slot = Some(Evaluator::new().map_err(|e| unavailable(e.to_string()))?);
    }
    match slot.as_mut() {
        Some(ev) => f(ev),
        None => Err(unavailable("it did not open".into())),
    }
}

/// Binds `plan` in DuckDB with `declared` column types per topic.
pub fn bind(
    plan: &QueryPlan,
    declared: &BTreeMap<String, Vec<(String, ColumnType)>>,
) -> Result<(), SqlError> {
    with_binder(|ev| check(ev, plan, declared))
}

/// The DuckDB type of each output column of `plan` with `declared` column
/// types per topic: None for a column whose type depends on the values of
/// an undeclared column (it is known only per record), unless the column is
/// a `CAST`.
///
/// Errors: as [`bind`].
pub fn output_types(
    plan: &QueryPlan,
    declared: &BTreeMap<String, Vec<(String, ColumnType)>>,
) -> Result<Vec<Option<DataType>>, SqlError> {
    with_binder(|ev| types_of(ev, plan, declared))
}

fn types_of(
    ev: &mut Evaluator,
    plan: &QueryPlan,
    declared: &BTreeMap<String, Vec<(String, ColumnType)>>,
) -> Result<Vec<Option<DataType>>, SqlError> {
    let type_of = |r: ColumnRef| -> Option<ColumnType> { declared_type(plan, declared, r) };
    let input = null_batch(plan, &type_of)?;
    let sql = DuckSql::build(plan, &ev.from_clause(), &|r| type_of(r).is_some());
    let batches = ev
        .evaluate(&sql.text, input)
        .map_err(|e| SqlError::new(SqlPosition::default(), e.to_string()))?;
    let schema = match batches.first() {
        Some(b) => b.schema(),
        None => return Ok(vec![None; plan.outputs.len()]),
    };
    Ok(plan
        .outputs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let known = matches!(o.expr, Expr::Cast { .. })
                || super::columns_of(plan, &o.expr)
                    .into_iter()
                    .all(|r| type_of(r).is_some());
            let field = schema.fields().get(i)?;
            known.then(|| {
                if crate::eval::is_json(field) {
                    DataType::LargeUtf8
                } else {
                    field.data_type().clone()
                }
            })
        })
        .collect())
}

fn declared_type(
    plan: &QueryPlan,
    declared: &BTreeMap<String, Vec<(String, ColumnType)>>,
    r: ColumnRef,
) -> Option<ColumnType> {
    let source = &plan.sources[r.source];
    declared
        .get(&source.topic)?
        .iter()
        .find(|(name, _)| *name == source.columns[r.column])
        .map(|(_, t)| *t)
}

fn check(
    ev: &mut Evaluator,
    plan: &QueryPlan,
    declared: &BTreeMap<String, Vec<(String, ColumnType)>>,
) -> Result<(), SqlError> {
    refuse_aggregates(ev, plan)?;
    let type_of = |r: ColumnRef| -> Option<ColumnType> { declared_type(plan, declared, r) };
    let input = null_batch(plan, &type_of)?;
    let sql = DuckSql::build(plan, &ev.from_clause(), &|r| type_of(r).is_some());
    let batches = match ev.evaluate(&sql.text, input) {
        Ok(batches) => batches,
        Err(e) => return duck_refusal(plan, &e),
    };
    check_condition(plan, &batches)
}

/// Refuses an aggregate of DuckDB's catalog anywhere in the SELECT list or WHERE.
fn refuse_aggregates(ev: &mut Evaluator, plan: &QueryPlan) -> Result<(), SqlError> {
    let aggregates = AGGREGATES.get_or_init(|| aggregates(ev));
    let exprs = plan
        .outputs
        .iter()
        .map(|o| &o.expr)
        .chain(plan.filter.as_ref());
    for expr in exprs {
        if let Some((at, name)) = find_call(expr, |n| aggregates.contains(n)) {
            return Err(SqlError::new(
                at,
                format!("the aggregate `{name}` is not supported in a stream join"),
            )
            .help(
                "aggregations are not implemented yet; join and enrich here, aggregate downstream",
            ));
        }
    }
    Ok(())
}

/// One row of NULLs with the declared types (undeclared columns left out:
/// the SQL reads them as untyped NULLs), so the statement binds and runs
/// without any value.
fn null_batch(
    plan: &QueryPlan,
    type_of: &impl Fn(ColumnRef) -> Option<ColumnType>,
) -> Result<RecordBatch, SqlError> {
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for (s, source) in plan.sources.iter().enumerate() {
        for c in 0..source.columns.len() {
            let r = ColumnRef {
                source: s,
                column: c,
            };
            if let Some(ty) = type_of(r) {
                let dt = arrow_type(ty);
                arrays.push(new_null_array(&dt, 1));
                let json = ty == ColumnType::Json;
                fields.push(crate::eval::field(batch_column_name(plan, r), dt, json));
            }
        }
    }
    fields.push(Field::new(super::ROW_COLUMN, DataType::UInt32, false));
    arrays.push(Arc::new(UInt32Array::from(vec![0u32])));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(|e| {
        SqlError::new(
            SqlPosition::default(),
            format!("cannot check the query: {e}"),
        )
    })
}

/// What DuckDB's refusal to run the query means for the user: Ok for an
/// overload only the values' types can pick, else the error, at the
/// function DuckDB names when it names one.
fn duck_refusal(plan: &QueryPlan, e: &crate::eval::EvalError) -> Result<(), SqlError> {
    let text = match e {
        crate::eval::EvalError::Duck { source, .. } => source.to_string(),
        other => other.to_string(),
    };
    // An overloaded function over untyped NULLs (undeclared columns)
    // cannot pick its overload yet: the values' types decide it at
    // run time, so this says nothing about the query.
    if text.contains("Could not choose a best candidate function") {
        return Ok(());
    }
    let first = text.lines().next().unwrap_or_default().to_string();
    // An aggregate DuckDB knows under another name or form: the
    // binder says so by asking for a GROUP BY of the batch's row column.
    if first.contains("must appear in the GROUP BY clause") {
        return Err(SqlError::new(
            SqlPosition::default(),
            "the query aggregates rows (an aggregate function), which is not supported in a stream join",
        )
        .help("aggregations are not implemented yet; join and enrich here, aggregate downstream"));
    }
    let named = first
        .split("with name ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(|n| n.trim_matches(['"', '!', '\'']).to_ascii_lowercase());
    let at = named
        .and_then(|n| {
            plan.outputs
                .iter()
                .map(|o| &o.expr)
                .chain(plan.filter.as_ref())
                .find_map(|e| find_call(e, |f| f == n).map(|(at, _)| at))
        })
        .unwrap_or_default();
    Err(SqlError::new(
        at,
        format!("DuckDB cannot run this query: {first}"),
    )
    .help("check function names, argument counts and types (declare column types under `sources.<topic>.columns`)"))
}

/// Refuses a WHERE (with an INNER join's ON conditions beyond its keys), or
/// a LEFT join's ON conditions beyond its keys, that is not BOOLEAN.
fn check_condition(plan: &QueryPlan, batches: &[RecordBatch]) -> Result<(), SqlError> {
    let Some(batch) = batches.first() else {
        return Ok(());
    };
    let mut conditions = vec![(KEEP_COLUMN.to_string(), plan.filter.as_ref(), "WHERE")];
    for (j, join) in plan.joins.iter().enumerate() {
        conditions.push((on_column(j), join.on.as_ref(), "ON"));
    }
    for (column, expr, clause) in conditions {
        let Some(values) = batch.column_by_name(&column) else {
            continue;
        };
        if !crate::engine::is_condition(values.as_ref()) {
            let at = expr.map(position).unwrap_or_default();
            return Err(SqlError::new(
                at,
                format!(
                    "the {clause} condition is {}, not BOOLEAN",
                    sql_type_name(values.data_type())
                ),
            )
            .help("write a comparison, for example `e.flag = 1` or `e.flag <> 0`"));
        }
    }
    Ok(())
}
