//! Output records: each result row becomes a JSON object with the SELECT's
//! column names in order (NULLs written as `null`), and the Kafka key is the
//! text of the `output.key` column.

use duckdb::arrow::array::{Array, AsArray};
use duckdb::arrow::datatypes::DataType;
use duckdb::arrow::error::ArrowError;
use duckdb::arrow::json::writer::LineDelimited;
use duckdb::arrow::json::WriterBuilder;
use duckdb::arrow::record_batch::RecordBatch;
use duckdb::arrow::util::display::array_value_to_string;

/// Encodes every row of `batch` as a JSON object; returns one buffer and the
/// end offset of each row in it (row `i` is `buf[ends[i-1]+1..ends[i]]`).
pub fn encode_json_rows(batch: &RecordBatch) -> Result<(Vec<u8>, Vec<usize>), ArrowError> {
    let mut writer = WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, LineDelimited>(Vec::with_capacity(batch.num_rows() * 96));
    writer.write(batch)?;
    writer.finish()?;
    let buf = writer.into_inner();
    // Each row ends with '\n' (JSON escapes newlines inside strings); keep the
    // offsets and drop the separators from the row ends.
    let mut ends = Vec::with_capacity(batch.num_rows());
    for (i, b) in buf.iter().enumerate() {
        if *b == b'\n' {
            ends.push(i);
        }
    }
    Ok((buf, ends))
}

/// The Kafka key of `row` from `column`: strings as their bytes, other values
/// as their text, NULL as no key.
pub fn key_bytes(column: &dyn Array, row: usize) -> Result<Option<Vec<u8>>, ArrowError> {
    if column.is_null(row) {
        return Ok(None);
    }
    Ok(Some(match column.data_type() {
        DataType::Utf8 => column.as_string::<i32>().value(row).as_bytes().to_vec(),
        DataType::LargeUtf8 => column.as_string::<i64>().value(row).as_bytes().to_vec(),
        DataType::Utf8View => column.as_string_view().value(row).as_bytes().to_vec(),
        _ => array_value_to_string(column, row)?.into_bytes(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use duckdb::arrow::array::{Float64Array, Int64Array, StringArray};
    use duckdb::arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

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
        let (buf, ends) = encode_json_rows(&batch).unwrap();
        assert_eq!(ends.len(), 2);
        assert_eq!(&buf[..ends[0]], br#"{"user_id":"u\n1","amount":1.5,"n":7}"#);
        assert_eq!(
            &buf[ends[0] + 1..ends[1]],
            br#"{"user_id":"u2","amount":null,"n":8}"#
        );
        assert_eq!(key_bytes(batch.column(0), 1).unwrap(), Some(b"u2".to_vec()));
        assert_eq!(key_bytes(batch.column(2), 0).unwrap(), Some(b"7".to_vec()));
        assert_eq!(key_bytes(batch.column(1), 1).unwrap(), None);
    }
}
