//! Output records: each result row becomes a JSON object with the SELECT's
//! column names in order (NULLs written as `null`), and the Kafka key is the
//! text of the `output.key` column.

use std::sync::Arc;

use duckdb::arrow::array::{Array, AsArray, StringArray};
use duckdb::arrow::datatypes::{DataType, FieldRef};
use duckdb::arrow::error::ArrowError;
use duckdb::arrow::json::writer::{
    make_encoder, Encoder, EncoderFactory, EncoderOptions, NullableEncoder,
};
use duckdb::arrow::record_batch::RecordBatch;
use duckdb::arrow::util::display::array_value_to_string;

use super::Value;

/// Appends every row of `batch` to `buf` as a JSON object followed by a
/// newline; returns the end offset (in `buf`) of each row: the first row is
/// `buf[start..ends[0]]`, row `i` is `buf[ends[i-1]+1..ends[i]]`.
pub fn encode_json_rows(batch: &RecordBatch, buf: &mut Vec<u8>) -> Result<Vec<usize>, ArrowError> {
    // arrow-json's writer, one row at a time, as its struct encoder writes a
    // row (explicit nulls, an object per row, a newline after it), with each
    // column's `"name":` escaped once per batch instead of once per row.
    let options = EncoderOptions::default()
        .with_explicit_nulls(true)
        .with_encoder_factory(Arc::new(JsonText));
    let schema = batch.schema();
    let mut encoders = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, column)| make_encoder(field, column.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()?;
    let names: Vec<Vec<u8>> = schema
        .fields()
        .iter()
        .map(|f| {
            let mut name = Vec::with_capacity(f.name().len() + 3);
            write_json_string(f.name(), &mut name);
            name.push(b':');
            name
        })
        .collect();
    let mut ends = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        buf.push(b'{');
        for (i, (encoder, name)) in encoders.iter_mut().zip(&names).enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            buf.extend_from_slice(name);
            if encoder.is_null(row) {
                buf.extend_from_slice(b"null");
            } else {
                encoder.encode(row, buf);
            }
        }
        buf.push(b'}');
        ends.push(buf.len());
        buf.push(b'\n');
    }
    Ok(ends)
}

/// Writes a column marked as JSON text ([`crate::eval::JSON_EXTENSION`]) as
/// the JSON value it holds, so a nested object stays an object.
#[derive(Debug)]
struct JsonText;

impl EncoderFactory for JsonText {
    fn make_default_encoder<'a>(
        &self,
        field: &'a FieldRef,
        array: &'a dyn Array,
        _options: &'a EncoderOptions,
    ) -> Result<Option<NullableEncoder<'a>>, ArrowError> {
        if !crate::eval::is_json(field) {
            return Ok(None);
        }
        let Some(strings) = array.as_string_opt::<i32>() else {
            return Ok(None);
        };
        let nulls = strings.nulls().cloned();
        Ok(Some(NullableEncoder::new(
            Box::new(RawJson(strings)),
            nulls,
        )))
    }
}

struct RawJson<'a>(&'a StringArray);

impl Encoder for RawJson<'_> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        // DuckDB's JSON values are valid JSON (checked when made).
        out.extend_from_slice(self.0.value(idx).as_bytes());
    }
}

/// Appends `row` (one output object) to `out` with each member named in
/// `records` (an `alias.*` over a source without declared columns: a whole
/// record, or NULL) replaced by that record's top-level fields in their
/// order; a NULL record (a LEFT join without a match) brings no field. The
/// names the query wrote win: a record field whose name is taken (by a
/// written column or an earlier field) gets the first free number, as Flink
/// (Calcite) numbers a name `*` brings twice: `name`, then `name0`.
///
/// Returns the value of member `key_field` of the result, when asked and
/// present and not NULL: a string's text, any other value's JSON.
///
/// Errors: `row` is not a JSON object (never so for rows of
/// [`encode_json_rows`]).
pub fn splice_records(
    row: &[u8],
    records: &[String],
    key_field: Option<&str>,
    out: &mut Vec<u8>,
) -> Result<Option<Vec<u8>>, serde_json::Error> {
    use super::decode::FieldList;
    use std::collections::HashSet;
    let text = std::str::from_utf8(row).map_err(serde::de::Error::custom)?;
    let members = serde_json::from_str::<FieldList<'_>>(text)?.0;
    let mut taken: HashSet<String> = members
        .iter()
        .filter(|(k, _)| !records.iter().any(|r| r == k))
        .map(|(k, _)| k.to_string())
        .collect();
    let mut key = None;
    let mut first = true;
    let mut write = |name: &str, value: &serde_json::value::RawValue, out: &mut Vec<u8>| {
        if !first {
            out.push(b',');
        }
        first = false;
        write_json_string(name, out);
        out.push(b':');
        out.extend_from_slice(value.get().as_bytes());
        if key_field == Some(name) {
            key = key_text(value);
        }
    };
    out.push(b'{');
    for (name, value) in &members {
        if !records.iter().any(|r| r == name) {
            write(name, value, out);
            continue;
        }
        if !value.get().starts_with('{') {
            continue;
        }
        for (field, inner) in serde_json::from_str::<FieldList<'_>>(value.get())?.0 {
            let name = super::free_name(&field, |n| taken.contains(n));
            write(&name, inner, out);
            taken.insert(name);
        }
    }
    out.push(b'}');
    Ok(key)
}

fn key_text(value: &serde_json::value::RawValue) -> Option<Vec<u8>> {
    let text = value.get();
    match text.as_bytes().first() {
        Some(b'n') => None,
        Some(b'"') => serde_json::from_str::<String>(text)
            .ok()
            .map(String::into_bytes),
        _ => Some(text.as_bytes().to_vec()),
    }
}

/// Appends the Kafka key of `row` from `column` to `buf`: strings as their
/// bytes, other values as their text. Returns false (nothing appended) for NULL.
pub fn key_bytes(column: &dyn Array, row: usize, buf: &mut Vec<u8>) -> Result<bool, ArrowError> {
    if column.is_null(row) {
        return Ok(false);
    }
    match column.data_type() {
        DataType::Utf8 => buf.extend_from_slice(column.as_string::<i32>().value(row).as_bytes()),
        DataType::LargeUtf8 => {
            buf.extend_from_slice(column.as_string::<i64>().value(row).as_bytes())
        }
        DataType::Utf8View => buf.extend_from_slice(column.as_string_view().value(row).as_bytes()),
        _ => buf.extend_from_slice(array_value_to_string(column, row)?.as_bytes()),
    }
    Ok(true)
}

/// Appends the JSON object of an event's decoded `values` under `columns`
/// (the columns the query reads, not the whole record): what a dead letter
/// carries when the record's original bytes are no longer at hand.
pub fn encode_decoded_json(columns: &[String], values: &[Value], buf: &mut Vec<u8>) {
    buf.push(b'{');
    for (i, (name, value)) in columns.iter().zip(values).enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        write_json_string(name, buf);
        buf.push(b':');
        match value {
            Value::Null => buf.extend_from_slice(b"null"),
            Value::Bool(b) => buf.extend_from_slice(if *b { b"true" } else { b"false" }),
            Value::Int(n) => buf.extend_from_slice(n.to_string().as_bytes()),
            Value::Float(f) if f.is_finite() => buf.extend_from_slice(f.to_string().as_bytes()),
            Value::Float(_) => buf.extend_from_slice(b"null"),
            Value::Str(s) => write_json_string(s, buf),
            Value::Json(raw) => buf.extend_from_slice(raw.as_bytes()),
        }
    }
    buf.push(b'}');
}

fn write_json_string(s: &str, buf: &mut Vec<u8>) {
    // Serializing a str cannot fail.
    let _ = serde_json::to_writer(&mut *buf, s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use duckdb::arrow::array::{Float64Array, Int64Array, StringArray};
    use duckdb::arrow::datatypes::{Field, Schema};

    #[test]
    fn rows_are_json_objects_in_column_order_with_nulls() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Utf8, true),
            Field::new("amount", DataType::Float64, true),
            Field::new("n", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("u\n1"), Some("u2")])),
                Arc::new(Float64Array::from(vec![Some(1.5), None])),
                Arc::new(Int64Array::from(vec![7, 8])),
            ],
        )
        .unwrap();
        let mut buf = b"prefix".to_vec();
        let ends = encode_json_rows(&batch, &mut buf).unwrap();
        assert_eq!(ends.len(), 2);
        assert_eq!(
            &buf[6..ends[0]],
            br#"{"user_id":"u\n1","amount":1.5,"n":7}"#
        );
        assert_eq!(
            &buf[ends[0] + 1..ends[1]],
            br#"{"user_id":"u2","amount":null,"n":8}"#
        );
        let mut k = Vec::new();
        assert!(key_bytes(batch.column(0), 1, &mut k).unwrap());
        assert!(key_bytes(batch.column(2), 0, &mut k).unwrap());
        assert!(!key_bytes(batch.column(1), 1, &mut k).unwrap());
        assert_eq!(k, b"u27");
    }

    /// A record column is replaced by its fields in order; a written name
    /// wins a clash, a record's clashing field gets a number; a NULL record
    /// brings nothing; the key can be one of the spliced fields.
    #[test]
    fn record_columns_are_spliced_in_place() {
        let mut out = Vec::new();
        let key = splice_records(
            br#"{"o.*":{"id":"o1","name":"x","n":{"a":[1]}},"name":"Ada","c.*":null,"p.*":{"name":"y","id":2}}"#,
            &["o.*".to_string(), "c.*".to_string(), "p.*".to_string()],
            Some("id"),
            &mut out,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"id":"o1","name0":"x","n":{"a":[1]},"name":"Ada","name1":"y","id0":2}"#
        );
        assert_eq!(key, Some(b"o1".to_vec()));
    }

    #[test]
    fn decoded_columns_are_a_json_object() {
        let mut buf = Vec::new();
        encode_decoded_json(
            &["id".into(), "qty".into(), "meta".into(), "x".into()],
            &[
                Value::Str("o\"2".into()),
                Value::Float(2.5),
                Value::Json("{\"a\":[1]}".into()),
                Value::Null,
            ],
            &mut buf,
        );
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            r#"{"id":"o\"2","qty":2.5,"meta":{"a":[1]},"x":null}"#
        );
    }
}
