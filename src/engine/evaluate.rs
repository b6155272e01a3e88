//! The evaluation stage: a micro-batch of joined rows becomes one Arrow
//! record batch (one column per `alias.column` the query reads, plus the row's
//! position), and DuckDB evaluates the SELECT list and the filter over it with
//! one prepared statement per batch shape.
//!
//! DuckDB evaluates only what needs it: an output that is a column
//! ([`crate::sql::direct_column`]) is built straight from the events, as the
//! batch column DuckDB would have passed through unchanged, and the batch
//! holds only the columns the statement reads. A query whose outputs are all
//! such columns, without WHERE or ON conditions beyond the keys, calls no
//! DuckDB at all.
//!
//! A batch that DuckDB fails on because of one row's values (a cast, a JSON
//! function, any run-time error of the `Conversion`, `Invalid Input` or `Out
//! of Range` kind) is split in halves until the failing rows are found: they
//! are reported with DuckDB's message and every other row is evaluated as
//! usual, at the cost of about 2·log2(batch) extra calls per bad row and none
//! when nothing fails. A shape DuckDB cannot bind (a column whose values in
//! these records have a type the query cannot use) or whose WHERE is not
//! BOOLEAN fails all its rows the same way. Any other DuckDB failure is not
//! about data and stops the pipeline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use duckdb::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBuilder, Float64Builder, Int64Builder,
    StringBuilder, UInt32Array,
};
use duckdb::arrow::compute::concat_batches;
use duckdb::arrow::datatypes::{DataType, Field, Schema, UInt32Type};
use duckdb::arrow::error::ArrowError;
use duckdb::arrow::record_batch::RecordBatch;

use super::join::Group;
use super::EngineError;
use crate::codec::{ColumnType, Event, Value};
use crate::eval::{EvalError, Evaluator};
use crate::sql::{batch_column_name, direct_column, ColumnRef, DuckSql, QueryPlan, ROW_COLUMN};

/// One column of the batch: the query column it carries, where its value
/// sits in its source's events, and its type (None: never seen with a value,
/// read as NULL).
#[derive(Clone, Copy, Debug)]
pub(super) struct BatchColumn {
    /// The query column.
    pub(super) column: ColumnRef,
    /// Index into [`Event::values`] of the source's topic.
    pub(super) topic_column: usize,
    /// Its SQL type in this batch.
    pub(super) ty: Option<ColumnType>,
    /// Whether the type was inferred from values (not declared).
    pub(super) inferred: bool,
}

/// The groups of a batch that are evaluated together, with the column types
/// they are evaluated with; `of[g]` is group `g`'s class.
///
/// An inferred DOUBLE column keeps integers as they came; a group whose
/// values in such a column are all integers (or NULL) is evaluated with it
/// as BIGINT, so a record prints `2`, never `2.0`, whatever else shares its
/// micro-batch. A group is never split (its rows are enumerated by one
/// arrival, within one batch), so its output does not depend on where
/// batches are cut. Without such columns there is one class; with them,
/// one DuckDB call per class (not per change along the batch).
pub(super) struct Classes {
    pub(super) types: Vec<Vec<BatchColumn>>,
    pub(super) of: Vec<usize>,
}

pub(super) fn classes(
    columns: &[BatchColumn],
    groups: &[Group],
    rows: &[Option<Arc<Event>>],
    stride: usize,
) -> Classes {
    let narrow: Vec<usize> = (0..columns.len())
        .filter(|&c| columns[c].inferred && columns[c].ty == Some(ColumnType::Double))
        .collect();
    let mut out = Classes {
        types: vec![columns.to_vec()],
        of: vec![0; groups.len()],
    };
    if narrow.is_empty() {
        return out;
    }
    // Each class is a mask of the narrow columns evaluated as BIGINT (the
    // first 64 narrow columns; more stay DOUBLE).
    let mut masks: Vec<u64> = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        let mut mask = 0u64;
        for (bit, &c) in narrow.iter().enumerate().take(64) {
            let col = columns[c];
            let (mut ints, mut others) = (false, false);
            for r in g.rows.clone() {
                match rows[r * stride + col.column.source]
                    .as_ref()
                    .map(|e| &e.values[col.topic_column])
                {
                    Some(Value::Int(_)) => ints = true,
                    Some(Value::Null) | None => {}
                    Some(_) => others = true,
                }
            }
            if ints && !others {
                mask |= 1 << bit;
            }
        }
        out.of[i] = match masks.iter().position(|&m| m == mask) {
            Some(k) => k,
            None => {
                masks.push(mask);
                masks.len() - 1
            }
        };
    }
    out.types = masks
        .iter()
        .map(|&mask| {
            let mut types = columns.to_vec();
            for (bit, &c) in narrow.iter().enumerate().take(64) {
                if mask & (1 << bit) != 0 {
                    types[c].ty = Some(ColumnType::BigInt);
                }
            }
            types
        })
        .collect();
    out
}

/// What DuckDB made of a batch.
pub(super) struct Evaluated {
    /// The output columns, one result row per evaluated batch row.
    pub(super) values: RecordBatch,
    /// The filter's verdict per result row (None: the query has no filter).
    pub(super) keep: Option<BooleanArray>,
    /// Per LEFT join with ON conditions beyond its key (`DuckSql::on_joins`,
    /// in order): the join index, and whether each result row's candidate
    /// passed them.
    pub(super) on: Vec<(usize, BooleanArray)>,
    /// Per batch row: its result row, or `u32::MAX` when it failed.
    pub(super) position: Vec<u32>,
    /// Batch rows whose values DuckDB failed on, with the reason, by row.
    pub(super) failed: Vec<(usize, String)>,
}

impl Evaluated {
    /// The reason batch row `row` failed, if it did.
    pub(super) fn failure(&self, row: usize) -> Option<&str> {
        if self.position.get(row).copied() != Some(u32::MAX) {
            return None;
        }
        self.failed
            .binary_search_by_key(&row, |(r, _)| *r)
            .ok()
            .map(|i| self.failed[i].1.as_str())
    }
}

/// How a DuckDB failure is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// Caused by one row's values: split the batch to find the row.
    Row,
    /// Caused by the value types of this batch shape: every row of it fails.
    Shape,
    /// Not about data: the pipeline stops.
    Internal,
}

/// Classifies a DuckDB error by the kind DuckDB prefixes its message with.
fn classify(error: &EvalError) -> Failure {
    let EvalError::Duck { source, .. } = error else {
        return Failure::Internal;
    };
    let text = source.to_string();
    const ROW: &[&str] = &[
        "Conversion Error",
        "Invalid Input Error",
        "Out of Range Error",
        "Mismatch Type Error",
        "Invalid Error",
    ];
    const SHAPE: &[&str] = &["Binder Error"];
    if ROW.iter().any(|p| text.starts_with(p)) {
        Failure::Row
    } else if SHAPE.iter().any(|p| text.starts_with(p)) {
        Failure::Shape
    } else {
        Failure::Internal
    }
}

/// DuckDB's message, first line only (its later lines quote the rewritten SQL).
fn reason(error: &EvalError) -> String {
    let text = match error {
        EvalError::Duck { source, .. } => source.to_string(),
        other => other.to_string(),
    };
    let first = text.lines().next().unwrap_or_default().trim();
    format!("SQL failed on this record's values: {first}")
}

/// The evaluation stage of one engine: DuckDB and the statements it prepared.
pub(super) struct Evaluation {
    evaluator: Evaluator,
    statements: HashMap<Vec<Option<ColumnType>>, DuckSql>,
    /// Test only: every output through DuckDB, none read from the events.
    #[cfg(test)]
    all_in_duckdb: bool,
    /// Nanoseconds spent in DuckDB so far.
    pub(super) sql_nanos: u64,
}

impl Evaluation {
    /// Opens DuckDB.
    pub(super) fn new() -> Result<Self, EngineError> {
        Ok(Self {
            evaluator: Evaluator::new()?,
            statements: HashMap::new(),
            #[cfg(test)]
            all_in_duckdb: false,
            sql_nanos: 0,
        })
    }

    /// Evaluates the first `count` rows of `rows` (`plan.sources.len()` slots
    /// per row). Returns None for an empty batch.
    pub(super) fn run(
        &mut self,
        plan: &QueryPlan,
        columns: &[BatchColumn],
        rows: &[Option<Arc<Event>>],
        count: usize,
    ) -> Result<Option<Evaluated>, EngineError> {
        if count == 0 {
            return Ok(None);
        }
        let signature: Vec<Option<ColumnType>> = columns.iter().map(|c| c.ty).collect();
        let from = self.evaluator.from_clause();
        #[cfg(test)]
        let all_in_duckdb = self.all_in_duckdb;
        #[cfg(not(test))]
        let all_in_duckdb = false;
        let sql = self
            .statements
            .entry(signature.clone())
            .or_insert_with(|| {
                let present =
                    |r: ColumnRef| columns.iter().any(|c| c.column == r && c.ty.is_some());
                // Outputs that are a typed column are read from the events.
                let evaluated: Vec<usize> = (0..plan.outputs.len())
                    .filter(|&i| {
                        all_in_duckdb || !direct_column(plan, &plan.outputs[i]).is_some_and(present)
                    })
                    .collect();
                let mut sql = DuckSql::build_outputs(plan, &from, &present, &evaluated);
                sql.text = format!("{} /* shape {} */", sql.text, shape_id(&signature));
                sql
            })
            .clone();
        let direct = |r: ColumnRef| {
            columns
                .iter()
                .find(|c| c.column == r)
                .and_then(|c| Some((c.topic_column, c.ty?)))
        };
        if sql.outputs.is_empty() && !sql.has_filter && sql.on_joins.is_empty() {
            // A projection: no DuckDB call, rows in batch order.
            let order = (0..count as u32).collect::<Vec<u32>>();
            return Ok(Some(Evaluated {
                values: outputs_batch(plan, &sql, &direct, None, rows, &order)?,
                keep: None,
                on: Vec::new(),
                position: order,
                failed: Vec::new(),
            }));
        }
        let input = build_input(plan, columns, &sql.reads, rows, count)?;
        let evaluated = sql.outputs.len();
        let mut parts = Vec::new();
        let mut failed = Vec::new();
        self.run_range(&sql, evaluated, &input, 0, count, &mut parts, &mut failed)?;
        failed.sort_by_key(|(r, _)| *r);
        let mut position = vec![u32::MAX; count];
        let Some(first) = parts.first() else {
            // Every row failed.
            let schema = Arc::new(Schema::new(
                plan.outputs
                    .iter()
                    .map(|o| Field::new(&o.name, DataType::Null, true))
                    .collect::<Vec<_>>(),
            ));
            return Ok(Some(Evaluated {
                values: RecordBatch::new_empty(schema),
                keep: None,
                on: Vec::new(),
                position,
                failed,
            }));
        };
        let result = concat_batches(&first.schema(), &parts)?;
        let row_col = result
            .column(result.num_columns() - 1)
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(|| ArrowError::CastError(format!("{ROW_COLUMN} is not UINTEGER")))?
            .clone();
        for (i, r) in row_col.values().iter().enumerate() {
            if let Some(p) = position.get_mut(*r as usize) {
                *p = i as u32;
            }
        }
        let keep = if sql.has_filter {
            Some(condition(result.column(evaluated))?)
        } else {
            None
        };
        let first_on = evaluated + usize::from(sql.has_filter);
        let mut on = Vec::new();
        for (i, &j) in sql.on_joins.iter().enumerate() {
            on.push((j, condition(result.column(first_on + i))?));
        }
        Ok(Some(Evaluated {
            values: outputs_batch(plan, &sql, &direct, Some(&result), rows, row_col.values())?,
            keep,
            on,
            position,
            failed,
        }))
    }

    /// Evaluates rows `start..start + len` of `input`, splitting the range
    /// while DuckDB fails on a row's values.
    #[allow(clippy::too_many_arguments)]
    fn run_range(
        &mut self,
        sql: &DuckSql,
        outputs: usize,
        input: &RecordBatch,
        start: usize,
        len: usize,
        parts: &mut Vec<RecordBatch>,
        failed: &mut Vec<(usize, String)>,
    ) -> Result<(), EngineError> {
        let started = Instant::now();
        let result = self.evaluator.evaluate(&sql.text, input.slice(start, len));
        self.sql_nanos += started.elapsed().as_nanos() as u64;
        let error = match result {
            Ok(batches) => {
                let conditions = usize::from(sql.has_filter) + sql.on_joins.len();
                let boolean = |b: &RecordBatch| {
                    (outputs..outputs + conditions).all(|c| is_condition(b.column(c)))
                };
                if batches.iter().all(boolean) {
                    parts.extend(batches);
                    return Ok(());
                }
                let found = batches
                    .first()
                    .and_then(|b| {
                        (outputs..outputs + conditions)
                            .map(|c| b.column(c))
                            .find(|c| !is_condition(c.as_ref()))
                    })
                    .map(|c| crate::sql::sql_type_name(c.data_type()))
                    .unwrap_or_default();
                failed.extend((start..start + len).map(|r| {
                    (r, format!("SQL failed on this record's values: a WHERE or ON condition is {found}, not BOOLEAN, for these values; compare the column explicitly (for example `e.flag = 1`) or declare its type under sources"))
                }));
                return Ok(());
            }
            Err(e) => e,
        };
        match classify(&error) {
            Failure::Internal => Err(error.into()),
            Failure::Shape => {
                let why = reason(&error);
                failed.extend((start..start + len).map(|r| (r, why.clone())));
                Ok(())
            }
            Failure::Row if len == 1 => {
                failed.push((start, reason(&error)));
                Ok(())
            }
            Failure::Row => {
                let half = len / 2;
                self.run_range(sql, outputs, input, start, half, parts, failed)?;
                self.run_range(sql, outputs, input, start + half, len - half, parts, failed)
            }
        }
    }
}

/// A condition column as booleans (all NULL for a condition over columns
/// never seen with a value, which DuckDB types as INTEGER).
fn condition(column: &ArrayRef) -> Result<BooleanArray, ArrowError> {
    Ok(match column.data_type() {
        DataType::Boolean => column
            .as_boolean_opt()
            .ok_or_else(|| ArrowError::CastError("a condition is not BOOLEAN".into()))?
            .clone(),
        _ => BooleanArray::new_null(column.len()),
    })
}

/// Whether a filter result is a condition: BOOLEAN, or all NULL (DuckDB
/// types an untyped NULL, a condition over columns never seen with a value,
/// as INTEGER). WHERE NULL keeps nothing, as in SQL.
pub(crate) fn is_condition(column: &dyn Array) -> bool {
    match column.data_type() {
        DataType::Boolean | DataType::Null => true,
        DataType::Int32 => column.null_count() == column.len(),
        _ => false,
    }
}

/// The output columns of result rows `order` (their batch rows): those
/// DuckDB evaluated (`sql.outputs`, the first columns of `result`) as it
/// gave them, the others read from the events as [`build_input`] builds a
/// batch column (`direct` gives a column's position in its events and its
/// type), each named as its output.
fn outputs_batch(
    plan: &QueryPlan,
    sql: &DuckSql,
    direct: &dyn Fn(ColumnRef) -> Option<(usize, ColumnType)>,
    result: Option<&RecordBatch>,
    rows: &[Option<Arc<Event>>],
    order: &[u32],
) -> Result<RecordBatch, ArrowError> {
    let stride = plan.sources.len();
    let mut fields = Vec::with_capacity(plan.outputs.len());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(plan.outputs.len());
    for (i, output) in plan.outputs.iter().enumerate() {
        let evaluated = sql.outputs.iter().position(|&o| o == i);
        let read = direct_column(plan, output).and_then(|r| Some((r, direct(r)?)));
        match (evaluated, result, read) {
            (Some(j), Some(result), _) => {
                fields.push(result.schema().field(j).clone());
                arrays.push(result.column(j).clone());
            }
            (None, _, Some((r, (topic_column, ty)))) => {
                let values = order.iter().map(|&row| {
                    rows[row as usize * stride + r.source]
                        .as_ref()
                        .map(|e| &e.values[topic_column])
                });
                let (dt, array) = build_array(ty, values, order.len());
                fields.push(crate::eval::field(&output.name, dt, ty == ColumnType::Json));
                arrays.push(array);
            }
            _ => {
                return Err(ArrowError::SchemaError(format!(
                    "output column `{}` is neither evaluated nor a typed column; this is a bug",
                    output.name
                )))
            }
        }
    }
    let options =
        duckdb::arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(order.len()));
    RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), arrays, &options)
}

/// The Arrow batch DuckDB scans: one column per typed query column its
/// statement reads (`reads`), then the row position.
fn build_input(
    plan: &QueryPlan,
    columns: &[BatchColumn],
    reads: &[ColumnRef],
    rows: &[Option<Arc<Event>>],
    count: usize,
) -> Result<RecordBatch, ArrowError> {
    let stride = plan.sources.len();
    let mut fields = Vec::with_capacity(reads.len() + 1);
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(reads.len() + 1);
    for c in columns.iter().filter(|c| reads.contains(&c.column)) {
        let Some(ty) = c.ty else { continue };
        let values = (0..count).map(|i| {
            rows[i * stride + c.column.source]
                .as_ref()
                .map(|e| &e.values[c.topic_column])
        });
        let (dt, array) = build_array(ty, values, count);
        let name = batch_column_name(plan, c.column);
        fields.push(crate::eval::field(name, dt, ty == ColumnType::Json));
        arrays.push(array);
    }
    fields.push(Field::new(ROW_COLUMN, DataType::UInt32, false));
    arrays.push(Arc::new(UInt32Array::from_iter_values(0..count as u32)));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
}

fn shape_id(signature: &[Option<ColumnType>]) -> String {
    signature
        .iter()
        .map(|t| match t {
            None => 'n',
            Some(ColumnType::Boolean) => 'b',
            Some(ColumnType::BigInt) => 'i',
            Some(ColumnType::Double) => 'd',
            Some(ColumnType::Varchar) => 's',
            Some(ColumnType::Json) => 'j',
        })
        .collect()
}

fn build_array<'a>(
    ty: ColumnType,
    values: impl Iterator<Item = Option<&'a Value>>,
    count: usize,
) -> (DataType, ArrayRef) {
    match ty {
        ColumnType::Boolean => {
            let mut b = BooleanBuilder::with_capacity(count);
            for v in values {
                b.append_option(match v {
                    Some(Value::Bool(x)) => Some(*x),
                    _ => None,
                });
            }
            (DataType::Boolean, Arc::new(b.finish()))
        }
        ColumnType::BigInt => {
            let mut b = Int64Builder::with_capacity(count);
            for v in values {
                b.append_option(match v {
                    Some(Value::Int(x)) => Some(*x),
                    _ => None,
                });
            }
            (DataType::Int64, Arc::new(b.finish()))
        }
        ColumnType::Double => {
            let mut b = Float64Builder::with_capacity(count);
            for v in values {
                b.append_option(match v {
                    Some(Value::Float(x)) => Some(*x),
                    Some(Value::Int(x)) => Some(*x as f64),
                    _ => None,
                });
            }
            (DataType::Float64, Arc::new(b.finish()))
        }
        ColumnType::Varchar | ColumnType::Json => {
            let mut b = StringBuilder::with_capacity(count, count * 16);
            for v in values {
                match v {
                    Some(Value::Str(s)) => b.append_value(s),
                    Some(Value::Json(s)) => b.append_value(s),
                    _ => b.append_null(),
                }
            }
            (DataType::Utf8, Arc::new(b.finish()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::plan_query;

    fn event(offset: i64, values: Vec<Value>) -> Arc<Event> {
        Arc::new(Event {
            topic: 0,
            partition: 0,
            offset,
            timestamp: 0,
            key: None,
            values: values.into_boxed_slice(),
        })
    }

    /// Groups alternating integers and decimals in an inferred DOUBLE
    /// column make two classes (two DuckDB calls), not one per change.
    #[test]
    fn groups_are_evaluated_in_one_class_per_column_types() {
        use super::super::join::{Group, GroupKind};
        use super::super::Origin;
        let column = BatchColumn {
            column: ColumnRef {
                source: 0,
                column: 0,
            },
            topic_column: 0,
            ty: Some(ColumnType::Double),
            inferred: true,
        };
        let values = [
            Value::Int(2),
            Value::Float(2.5),
            Value::Int(3),
            Value::Null,
            Value::Float(1.5),
        ];
        let rows: Vec<Option<Arc<Event>>> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Some(event(i as i64, vec![v.clone()])))
            .collect();
        let origin = Origin {
            topic: 0,
            partition: 0,
            offset: 0,
        };
        let groups: Vec<Group> = (0..values.len())
            .map(|i| Group {
                kind: GroupKind::Emit,
                driving: origin,
                trigger: origin,
                rows: i..i + 1,
            })
            .collect();
        let c = classes(&[column], &groups, &rows, 1);
        assert_eq!(
            c.types.len(),
            2,
            "BIGINT and DOUBLE (all-NULL stays DOUBLE)"
        );
        assert_eq!(c.of, [0, 1, 0, 1, 1]);
        let declared = BatchColumn {
            inferred: false,
            ..column
        };
        assert_eq!(classes(&[declared], &groups, &rows, 1).types.len(), 1);
    }

    /// Outputs read from the events give the bytes DuckDB's path gives:
    /// every column type, NULLs, a LEFT join's missing side, text that needs
    /// escaping, JSON written raw, an alias; a plain projection calls no
    /// DuckDB, a query with an expression or a filter calls it only for
    /// those (its rows in DuckDB's result order).
    #[test]
    fn outputs_read_from_the_events_write_the_bytes_duckdb_gives() {
        let queries = [
            ("SELECT o.a, o.b AS bee, o.c, o.d, o.e, m.x FROM orders o LEFT JOIN meta m ON o.k = m.k", true),
            ("SELECT o.d, o.b * 2 AS twice, m.x, o.e FROM orders o LEFT JOIN meta m ON o.k = m.k WHERE o.a", false),
            ("SELECT o.d, m.x FROM orders o LEFT JOIN meta m ON o.k = m.k AND o.b > 0", false),
        ];
        for (sql, projection) in queries {
            let plan = plan_query(sql, &[]).unwrap();
            assert_eq!(crate::sql::plain_projection(&plan), projection, "{sql}");
            let json = evaluate_both_ways(&plan);
            assert_eq!(json[0], json[1], "{sql}");
            if projection {
                assert!(
                    json[0].contains(
                        r#""bee":-2,"c":7.0,"d":"q\"u\u0001é\n0","e":{"z":[0,null]},"x":"x0""#
                    ),
                    "{}",
                    json[0]
                );
            }
        }
    }

    /// The JSON rows of a batch of 7 rows evaluated with outputs read from
    /// the events, then with every output through DuckDB.
    fn evaluate_both_ways(plan: &QueryPlan) -> Vec<String> {
        let types = |name: &str| match name {
            "a" => ColumnType::Boolean,
            "b" => ColumnType::BigInt,
            "c" => ColumnType::Double,
            "e" => ColumnType::Json,
            _ => ColumnType::Varchar,
        };
        let mut columns = Vec::new();
        for (source, src) in plan.sources.iter().enumerate() {
            for (column, name) in src.columns.iter().enumerate() {
                columns.push(BatchColumn {
                    column: ColumnRef { source, column },
                    topic_column: column,
                    ty: Some(types(name)),
                    inferred: false,
                });
            }
        }
        let value = |source: usize, name: &str, i: usize| match (name, i % 3) {
            (_, 2) if source == 0 && name != "k" => Value::Null,
            ("a", _) => Value::Bool(i % 2 == 0),
            ("b", _) => Value::Int(i as i64 - 2),
            ("c", 0) => Value::Int(7),
            ("c", _) => Value::Float(-0.1 * i as f64),
            ("d", _) => Value::Str(format!("q\"u\u{1}é\n{i}").into()),
            ("e", _) => Value::Json(format!("{{\"z\":[{i},null]}}").into()),
            ("k", _) => Value::Str(format!("k{i}").into()),
            _ => Value::Str(format!("x{i}").into()),
        };
        let mut rows = Vec::new();
        for i in 0..7 {
            for (source, src) in plan.sources.iter().enumerate() {
                let values = src.columns.iter().map(|n| value(source, n, i)).collect();
                rows.push((source == 0 || i % 2 == 0).then(|| event(i as i64, values)));
            }
        }
        let mut json = Vec::new();
        for all_in_duckdb in [false, true] {
            let mut stage = Evaluation::new().unwrap();
            stage.all_in_duckdb = all_in_duckdb;
            let ev = stage.run(plan, &columns, &rows, 7).unwrap().unwrap();
            assert!(ev.failed.is_empty());
            let mut buf = Vec::new();
            crate::codec::encode_json_rows(&ev.values, &mut buf).unwrap();
            let mut text = String::from_utf8(buf).unwrap();
            // Which batch row each result row is, and the verdicts.
            text.push_str(&format!("{:?} {:?} {:?}", ev.position, ev.keep, ev.on));
            json.push(text);
            if crate::sql::plain_projection(plan) {
                assert_eq!(
                    stage.sql_nanos > 0,
                    all_in_duckdb,
                    "DuckDB called only when asked"
                );
            }
        }
        json
    }

    #[test]
    fn a_query_with_a_filter_or_an_expression_is_no_projection() {
        for sql in [
            "SELECT o.a FROM orders o WHERE o.b > 1",
            "SELECT o.a + 1 AS a FROM orders o",
            "SELECT o.a, m.x FROM orders o LEFT JOIN meta m ON o.k = m.k AND m.y = 1",
            "SELECT o.a, m.x FROM orders o JOIN meta m ON o.k = m.k AND m.y = 1",
        ] {
            let plan = plan_query(sql, &[]).unwrap();
            assert!(!crate::sql::plain_projection(&plan), "{sql}");
        }
    }

    fn run(sql: &str, ty: ColumnType, values: &[Value]) -> Evaluated {
        let plan = plan_query(sql, &[]).unwrap();
        let columns = [BatchColumn {
            column: ColumnRef {
                source: 0,
                column: 0,
            },
            topic_column: 0,
            ty: Some(ty),
            inferred: false,
        }];
        let rows: Vec<Option<Arc<Event>>> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Some(event(i as i64, vec![v.clone()])))
            .collect();
        let mut stage = Evaluation::new().unwrap();
        stage
            .run(&plan, &columns, &rows, rows.len())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_row_that_fails_is_found_and_the_others_are_evaluated() {
        let values: Vec<Value> = ["3", "three", "5", "7", "x", "9", "11"]
            .iter()
            .map(|s| Value::Str((*s).into()))
            .collect();
        let ev = run(
            "SELECT CAST(o.qty AS INTEGER) AS qty FROM orders o",
            ColumnType::Varchar,
            &values,
        );
        let failed: Vec<usize> = ev.failed.iter().map(|(r, _)| *r).collect();
        assert_eq!(failed, vec![1, 4]);
        assert!(
            ev.failure(1).unwrap().contains("Conversion Error"),
            "{:?}",
            ev.failed
        );
        assert_eq!(ev.values.num_rows(), 5);
        let qty = ev
            .values
            .column(0)
            .as_primitive::<duckdb::arrow::datatypes::Int32Type>();
        let by_row: Vec<Option<i32>> = (0..7)
            .map(|r| match ev.position[r] {
                u32::MAX => None,
                i => Some(qty.value(i as usize)),
            })
            .collect();
        assert_eq!(
            by_row,
            vec![Some(3), None, Some(5), Some(7), None, Some(9), Some(11)]
        );
    }

    #[test]
    fn a_non_boolean_filter_fails_its_rows_instead_of_panicking() {
        let ev = run(
            "SELECT e.flag FROM events e WHERE e.flag",
            ColumnType::BigInt,
            &[Value::Int(1), Value::Int(0)],
        );
        assert_eq!(ev.failed.len(), 2, "{:?}", ev.failed);
        assert!(ev.failed[0].1.contains("BOOLEAN"), "{:?}", ev.failed);
        assert_eq!(ev.values.num_rows(), 0);
    }

    #[test]
    fn a_boolean_filter_keeps_its_verdict() {
        let ev = run(
            "SELECT e.flag FROM events e WHERE e.flag",
            ColumnType::Boolean,
            &[Value::Bool(true), Value::Bool(false), Value::Null],
        );
        assert!(ev.failed.is_empty());
        let keep = ev.keep.unwrap();
        assert_eq!(
            (0..3)
                .map(|i| keep.is_valid(i) && keep.value(i))
                .collect::<Vec<_>>(),
            vec![true, false, false]
        );
    }
}
