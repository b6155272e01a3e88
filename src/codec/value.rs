//! Decoded values, column types and the shared, immutable [`Event`].

use std::fmt;
use std::str::FromStr;

use compact_str::CompactString;

/// One decoded field value, 24 bytes (the enum's tag sits in a niche of
/// the inline string).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// JSON null, or a field that is absent.
    Null,
    /// JSON true or false.
    Bool(bool),
    /// A JSON number without fraction or exponent that fits an i64.
    Int(i64),
    /// Any other JSON number.
    Float(f64),
    /// A JSON string: up to 24 bytes inline, longer ones on the heap
    /// ([`CompactString`]), so most join keys and short fields are read
    /// without a pointer hop and decoded without an allocation.
    Str(CompactString),
    /// A nested JSON object or array, kept as its JSON text.
    Json(Box<str>),
}

const _: () = assert!(std::mem::size_of::<Value>() == 24);

impl Value {
    /// True for [`Value::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Heap bytes this value holds beyond its inline size.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Value::Str(s) if s.is_heap_allocated() => s.len(),
            Value::Json(s) => s.len(),
            _ => 0,
        }
    }

    /// What kind of JSON value this is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a decimal number",
            Value::Str(_) => "a string",
            Value::Json(_) => "an object or array",
        }
    }

    /// The type a value of this kind is inferred as.
    pub fn inferred_type(&self) -> Option<ColumnType> {
        match self {
            Value::Null => None,
            Value::Bool(_) => Some(ColumnType::Boolean),
            Value::Int(_) => Some(ColumnType::BigInt),
            Value::Float(_) => Some(ColumnType::Double),
            Value::Str(_) => Some(ColumnType::Varchar),
            Value::Json(_) => Some(ColumnType::Json),
        }
    }
}

/// The SQL type of a source column, as DuckDB sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ColumnType {
    /// BOOLEAN
    Boolean,
    /// BIGINT
    BigInt,
    /// DOUBLE
    Double,
    /// VARCHAR
    Varchar,
    /// A nested object or array, passed to DuckDB as its JSON text in a
    /// column of DuckDB's JSON type (so it prints as JSON, not as a string).
    Json,
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ColumnType::Boolean => "BOOLEAN",
            ColumnType::BigInt => "BIGINT",
            ColumnType::Double => "DOUBLE",
            ColumnType::Varchar => "VARCHAR",
            ColumnType::Json => "JSON",
        })
    }
}

impl FromStr for ColumnType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_uppercase().as_str() {
            "BOOLEAN" | "BOOL" => ColumnType::Boolean,
            "BIGINT" | "INT" | "INTEGER" | "LONG" | "INT64" => ColumnType::BigInt,
            "DOUBLE" | "FLOAT" | "REAL" | "FLOAT64" => ColumnType::Double,
            "VARCHAR" | "STRING" | "TEXT" => ColumnType::Varchar,
            "JSON" | "LIST" | "ARRAY" | "MAP" | "STRUCT" | "ROW" => ColumnType::Json,
            // A nested form with its fields or element type (`STRUCT(city
            // VARCHAR)`, `ROW<city STRING>`, `VARCHAR[]`, `ARRAY<BIGINT>`):
            // an object or array, kept as it came (its inner types are not
            // checked).
            nested
                if ["STRUCT", "ROW", "MAP", "LIST", "ARRAY"]
                    .iter()
                    .any(|k| nested.starts_with(k) && nested[k.len()..].trim_start().starts_with(['(', '<']))
                    || nested.ends_with("[]") =>
            {
                ColumnType::Json
            }
            other => {
                return Err(format!(
                    "`{other}` is not a column type; use BOOLEAN, BIGINT, DOUBLE, VARCHAR, JSON, or a nested form: STRUCT(...), LIST, T[], MAP(...)"
                ))
            }
        })
    }
}

/// A decoded record, shared by reference between state and joined rows.
#[derive(Debug)]
pub struct Event {
    /// Index of the topic in the pipeline.
    pub topic: u16,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// Event time, epoch milliseconds.
    pub timestamp: i64,
    /// The Kafka key, if any.
    pub key: Option<Box<[u8]>>,
    /// One value per column of the topic's schema.
    pub values: Box<[Value]>,
}

impl Event {
    /// Approximate bytes this event holds (for state size metrics).
    pub fn size_bytes(&self) -> usize {
        std::mem::size_of::<Event>()
            + self.key.as_ref().map_or(0, |k| k.len())
            + self.values.len() * std::mem::size_of::<Value>()
            + self.values.iter().map(Value::heap_bytes).sum::<usize>()
    }
}
