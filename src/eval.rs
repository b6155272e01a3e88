//! SQL evaluation through DuckDB: the user's SELECT list and filter run over
//! a micro-batch of joined rows, passed in bulk as an Arrow record batch
//! through a table function (`kf_batch(<slot>)`), one prepared statement per
//! batch shape. Nothing else in kaflowsql touches DuckDB.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use duckdb::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use duckdb::arrow::record_batch::RecordBatch;
use duckdb::core::{DataChunkHandle, LogicalTypeHandle, LogicalTypeId};
use duckdb::vtab::{
    record_batch_to_duckdb_data_chunk, to_duckdb_logical_type_for_field, BindInfo, InitInfo,
    TableFunctionInfo, VTab,
};
use duckdb::Connection;

/// Rows DuckDB takes per data chunk (its STANDARD_VECTOR_SIZE).
const VECTOR_SIZE: usize = 2048;

/// The Arrow extension name of JSON text (Arrow's canonical `arrow.json`,
/// which DuckDB also writes with `arrow_lossless_conversion`): a batch column
/// with it is DuckDB's JSON type, and a result column of DuckDB's JSON type
/// carries it, so the output writes its value as JSON, not as a string.
pub const JSON_EXTENSION: &str = "arrow.json";

/// An Arrow field of `data_type`, marked as JSON text when `json`.
pub fn field(name: impl Into<String>, data_type: DataType, json: bool) -> Field {
    let field = Field::new(name, data_type, true);
    if json {
        field.with_metadata(HashMap::from([(
            EXTENSION_NAME_KEY.to_string(),
            JSON_EXTENSION.to_string(),
        )]))
    } else {
        field
    }
}

/// Whether `field` holds JSON text (see [`JSON_EXTENSION`]).
pub fn is_json(field: &Field) -> bool {
    field.extension_type_name() == Some(JSON_EXTENSION)
}

const EXTENSION_NAME_KEY: &str = "ARROW:extension:name";

fn logical_type(field: &Field) -> Result<LogicalTypeHandle, Box<dyn std::error::Error>> {
    if is_json(field) {
        let mut ty = LogicalTypeHandle::from(LogicalTypeId::Varchar);
        ty.set_alias("JSON");
        return Ok(ty);
    }
    to_duckdb_logical_type_for_field(field)
}

/// A failure inside DuckDB. The pipeline cannot go on without SQL.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// DuckDB refused or failed a statement.
    #[error("DuckDB failed on `{sql}`: {source}")]
    Duck {
        /// The statement.
        sql: String,
        /// DuckDB's error.
        source: duckdb::Error,
    },
    /// DuckDB could not be opened or set up.
    #[error("cannot set up DuckDB: {0}")]
    Setup(duckdb::Error),
    /// DuckDB's result could not be read as Arrow.
    #[error("cannot read DuckDB's result: {0}")]
    Result(duckdb::arrow::error::ArrowError),
    /// The batch slot was poisoned by a panic elsewhere: this is a bug.
    #[error("the DuckDB batch slot is poisoned; this is a bug")]
    Poisoned,
}

type Slot = Arc<Mutex<Option<RecordBatch>>>;

/// Batches waiting to be scanned, by slot id (one slot per evaluator).
static SLOTS: LazyLock<Mutex<HashMap<u64, Slot>>> = LazyLock::new(|| Mutex::new(HashMap::new()));
static NEXT_SLOT: AtomicU64 = AtomicU64::new(1);

fn slot_batch(slot: &Slot) -> Result<Option<RecordBatch>, Box<dyn std::error::Error>> {
    Ok(slot
        .lock()
        .map_err(|_| "kaflowsql batch slot poisoned")?
        .clone())
}

/// The `kf_batch(slot)` table function: scans the slot's current batch.
struct BatchScan;

struct ScanBind {
    slot: Slot,
    schema: SchemaRef,
}

struct ScanInit {
    offset: AtomicUsize,
}

impl VTab for BatchScan {
    type BindData = ScanBind;
    type InitData = ScanInit;

    fn bind(bind: &BindInfo) -> Result<Self::BindData, Box<dyn std::error::Error>> {
        let id = bind.get_parameter(0).to_uint64();
        let slot = SLOTS
            .lock()
            .map_err(|_| "kaflowsql slot registry poisoned")?
            .get(&id)
            .cloned()
            .ok_or_else(|| format!("no kaflowsql batch slot {id}"))?;
        let batch = slot_batch(&slot)?.ok_or("kf_batch bound with no batch in its slot")?;
        let schema = batch.schema();
        for field in schema.fields() {
            bind.add_result_column(field.name(), logical_type(field)?);
        }
        Ok(ScanBind { slot, schema })
    }

    fn init(_: &InitInfo) -> Result<Self::InitData, Box<dyn std::error::Error>> {
        Ok(ScanInit {
            offset: AtomicUsize::new(0),
        })
    }

    fn func(
        func: &TableFunctionInfo<Self>,
        output: &mut DataChunkHandle,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let bind = func.get_bind_data();
        let init = func.get_init_data();
        let Some(batch) = slot_batch(&bind.slot)? else {
            output.set_len(0);
            return Ok(());
        };
        if batch.schema() != bind.schema {
            return Err("kf_batch: the batch changed shape after binding; this is a bug".into());
        }
        let rows = batch.num_rows();
        let offset = init.offset.fetch_add(VECTOR_SIZE, Ordering::Relaxed);
        if offset >= rows {
            output.set_len(0);
            return Ok(());
        }
        let len = (rows - offset).min(VECTOR_SIZE);
        record_batch_to_duckdb_data_chunk(&batch.slice(offset, len), output)?;
        Ok(())
    }

    fn parameters() -> Option<Vec<LogicalTypeHandle>> {
        Some(vec![LogicalTypeHandle::from(LogicalTypeId::UBigint)])
    }
}

/// One DuckDB connection that evaluates batches for one pipeline.
pub struct Evaluator {
    conn: Connection,
    slot_id: u64,
    slot: Slot,
}

impl Evaluator {
    /// Opens an in-memory DuckDB with one thread (the pipeline is the parallelism).
    pub fn new() -> Result<Self, EvalError> {
        let conn = Connection::open_in_memory().map_err(EvalError::Setup)?;
        // `/` on two integers is integer division, as in standard SQL, Flink
        // SQL and ksqlDB (DuckDB's default gives a DOUBLE; the Flink
        // differential suite's case x_int_division).
        conn.execute_batch(
            "SET threads TO 1; SET preserve_insertion_order TO true; SET integer_division TO true;",
        )
        .map_err(EvalError::Setup)?;
        conn.register_table_function::<BatchScan>("kf_batch")
            .map_err(EvalError::Setup)?;
        conn.set_prepared_statement_cache_capacity(64);
        let slot_id = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
        let slot: Slot = Arc::new(Mutex::new(None));
        SLOTS
            .lock()
            .map_err(|_| EvalError::Poisoned)?
            .insert(slot_id, slot.clone());
        Ok(Self {
            conn,
            slot_id,
            slot,
        })
    }

    /// The FROM clause that reads the batch passed to [`Evaluator::evaluate`].
    pub fn from_clause(&self) -> String {
        format!("kf_batch({}::UBIGINT)", self.slot_id)
    }

    /// Runs `sql` (which reads [`Evaluator::from_clause`]) over `input`.
    pub fn evaluate(
        &mut self,
        sql: &str,
        input: RecordBatch,
    ) -> Result<Vec<RecordBatch>, EvalError> {
        *self.slot.lock().map_err(|_| EvalError::Poisoned)? = Some(input);
        let result = self.run(sql);
        *self.slot.lock().map_err(|_| EvalError::Poisoned)? = None;
        result
    }

    fn run(&self, sql: &str) -> Result<Vec<RecordBatch>, EvalError> {
        let duck = |source| EvalError::Duck {
            sql: sql.to_string(),
            source,
        };
        let mut stmt = self.conn.prepare_cached(sql).map_err(duck)?;
        let batches: Vec<RecordBatch> = stmt.query_arrow([]).map_err(duck)?.collect();
        // Result columns of DuckDB's JSON type (a nested input column,
        // `CAST(... AS JSON)`, `json_object(...)`) are marked as such.
        let json: Vec<usize> = (0..stmt.column_count())
            .filter(|&i| stmt.column_logical_type(i).get_alias().as_deref() == Some("JSON"))
            .collect();
        if json.is_empty() {
            return Ok(batches);
        }
        batches
            .into_iter()
            .map(|b| {
                let schema = b.schema();
                let fields: Vec<Field> = schema
                    .fields()
                    .iter()
                    .enumerate()
                    .map(|(i, f)| {
                        if json.contains(&i) {
                            field(f.name().clone(), f.data_type().clone(), true)
                        } else {
                            f.as_ref().clone()
                        }
                    })
                    .collect();
                b.with_schema(Arc::new(Schema::new(fields)))
                    .map_err(EvalError::Result)
            })
            .collect()
    }

    /// Runs a query with no batch (for tests and `explain`).
    pub fn query(&self, sql: &str) -> Result<Vec<RecordBatch>, EvalError> {
        self.run(sql)
    }
}

impl Drop for Evaluator {
    fn drop(&mut self) {
        if let Ok(mut slots) = SLOTS.lock() {
            slots.remove(&self.slot_id);
        }
    }
}

impl crate::error::Classified for EvalError {
    fn domain(&self) -> crate::error::Domain {
        // Data-caused failures never reach here: the evaluation stage sends
        // their rows to the dead letters. What is left is DuckDB itself.
        crate::error::Domain::Internal
    }

    fn kind(&self) -> &'static str {
        "sql"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use duckdb::arrow::array::{Array, Int64Array, StringArray};

    fn batch(ids: &[i64], names: &[Option<&str>]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("e.id", DataType::Int64, true),
            Field::new("p.name", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(StringArray::from(names.to_vec())),
            ],
        )
        .unwrap()
    }

    #[test]
    fn evaluates_expressions_over_a_batch_and_reuses_the_statement() {
        let mut ev = Evaluator::new().unwrap();
        let sql = format!(
            "SELECT \"e.id\" * 2 AS twice, upper(\"p.name\") AS name FROM {} WHERE \"e.id\" > 1",
            ev.from_clause()
        );
        for round in 0..3 {
            let out = ev
                .evaluate(&sql, batch(&[1, 2, 3], &[Some("a"), None, Some("c")]))
                .unwrap();
            let rows: usize = out.iter().map(|b| b.num_rows()).sum();
            assert_eq!(rows, 2, "round {round}");
            let twice = out[0]
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            assert_eq!(twice.values(), &[4, 6]);
            assert!(out[0].column(1).is_null(0));
        }
    }

    #[test]
    fn scans_batches_larger_than_one_vector() {
        let mut ev = Evaluator::new().unwrap();
        let ids: Vec<i64> = (0..5000).collect();
        let names = vec![Some("x"); 5000];
        let out = ev
            .evaluate(
                &format!("SELECT sum(\"e.id\") AS s FROM {}", ev.from_clause()),
                batch(&ids, &names),
            )
            .unwrap();
        let s = out[0].column(0);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_bad_statement_is_an_error_not_a_panic() {
        let mut ev = Evaluator::new().unwrap();
        let err = ev
            .evaluate(
                &format!("SELECT nope FROM {}", ev.from_clause()),
                batch(&[1], &[None]),
            )
            .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
