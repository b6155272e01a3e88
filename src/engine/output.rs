//! What the engine hands back: output rows (their key and JSON value bytes
//! in one buffer per batch) and dead letters, each with where it came from.

use std::ops::Range;

use duckdb::arrow::error::ArrowError;
use duckdb::arrow::record_batch::RecordBatch;

use super::TopicId;
use crate::codec::{encode_json_rows, key_bytes, splice_records, Event};

/// Where a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// Its topic.
    pub topic: TopicId,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

impl Origin {
    /// Where `event` came from.
    pub(super) fn of(event: &Event) -> Self {
        Self {
            topic: event.topic,
            partition: event.partition,
            offset: event.offset,
        }
    }
}

/// One output record; its key and value bytes live in [`Outputs`]' buffer
/// (read them with [`Outputs::key`] and [`Outputs::value`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputRow {
    /// Kafka key (text of the `output.key` column), as a range of the buffer.
    key: Option<Range<usize>>,
    /// JSON object, as a range of the buffer.
    value: Range<usize>,
    /// The driving event of the row.
    pub driving: Origin,
    /// The arrival that produced the row.
    pub trigger: Origin,
}

/// A record that could not be processed, with why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Original key.
    pub key: Option<Vec<u8>>,
    /// Original value.
    pub value: Option<Vec<u8>>,
    /// Why it was refused.
    pub reason: String,
    /// The class of the reason, as the `kind` label of
    /// `kaflowsql_errors_total{domain="data"}` (see [`crate::error::KINDS`]).
    pub kind: &'static str,
    /// True when `value` is not the record's original bytes but the JSON of
    /// its decoded columns (a row that failed in SQL after its record's
    /// micro-batch was gone); the caller puts the original back when it still
    /// holds the record.
    pub decoded_copy: bool,
}

/// What the engine produced since the caller last drained it.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Rows to write, in order.
    pub rows: Vec<OutputRow>,
    /// Records to send to the dead-letter topic.
    pub dead_letters: Vec<DeadLetter>,
    /// Key and value bytes of every row (one allocation per batch, not per row).
    data: Vec<u8>,
}

impl Outputs {
    /// The Kafka key of `row`.
    pub fn key(&self, row: &OutputRow) -> Option<&[u8]> {
        row.key.as_ref().map(|r| &self.data[r.clone()])
    }

    /// The JSON value of `row`.
    pub fn value(&self, row: &OutputRow) -> &[u8] {
        &self.data[row.value.clone()]
    }

    /// Forgets every row (after they were written).
    pub fn clear_rows(&mut self) {
        self.rows.clear();
        self.data.clear();
    }

    /// Appends one output row per row of `chosen`: its JSON object, and its
    /// Kafka key as `layout` says; `origins[i]` is the (driving, trigger) of
    /// row `i`. Returns the count.
    pub(super) fn write(
        &mut self,
        chosen: &RecordBatch,
        layout: &RowLayout,
        origins: &[(Origin, Origin)],
    ) -> Result<usize, ArrowError> {
        if !layout.records.is_empty() {
            return self.write_spliced(chosen, layout, origins);
        }
        let key_column = layout.key;
        let base = self.data.len();
        let ends = encode_json_rows(chosen, &mut self.data)?;
        let mut start = base;
        for (i, &end) in ends.iter().enumerate() {
            let key = match key_column {
                Some(c) => {
                    let at = self.data.len();
                    key_bytes(chosen.column(c).as_ref(), i, &mut self.data)?
                        .then_some(at..self.data.len())
                }
                None => None,
            };
            let (driving, trigger) = origins[i];
            self.rows.push(OutputRow {
                key,
                value: start..end,
                driving,
                trigger,
            });
            start = end + 1;
        }
        Ok(ends.len())
    }
}

impl Outputs {
    /// [`Outputs::write`] for a query with whole-record columns: each row
    /// is encoded, then its records' fields are written in their place
    /// ([`splice_records`]).
    fn write_spliced(
        &mut self,
        chosen: &RecordBatch,
        layout: &RowLayout,
        origins: &[(Origin, Origin)],
    ) -> Result<usize, ArrowError> {
        let mut encoded = Vec::new();
        let ends = encode_json_rows(chosen, &mut encoded)?;
        let mut start = 0;
        for (i, &end) in ends.iter().enumerate() {
            let at = self.data.len();
            let field_key = splice_records(
                &encoded[start..end],
                &layout.records,
                layout.key_field.as_deref(),
                &mut self.data,
            )
            .map_err(|e| ArrowError::JsonError(e.to_string()))?;
            let value = at..self.data.len();
            let key = match (layout.key, field_key) {
                (Some(c), _) => {
                    let k = self.data.len();
                    key_bytes(chosen.column(c).as_ref(), i, &mut self.data)?
                        .then_some(k..self.data.len())
                }
                (None, Some(bytes)) => {
                    let k = self.data.len();
                    self.data.extend_from_slice(&bytes);
                    Some(k..self.data.len())
                }
                (None, None) => None,
            };
            let (driving, trigger) = origins[i];
            self.rows.push(OutputRow {
                key,
                value,
                driving,
                trigger,
            });
            start = end + 1;
        }
        Ok(ends.len())
    }
}

/// How a result row becomes an output record: its key, and the columns
/// that hold whole records (`alias.*` over a source without declared
/// columns), whose fields are written in their place.
#[derive(Clone, Debug, Default)]
pub(crate) struct RowLayout {
    /// Output column whose text is the Kafka key.
    pub(crate) key: Option<usize>,
    /// Else, a field that a whole record brings, read from each row.
    pub(crate) key_field: Option<String>,
    /// Names of the whole-record output columns.
    pub(crate) records: Vec<String>,
}

impl RowLayout {
    /// The layout of `pipeline`'s output.
    pub(crate) fn of(pipeline: &crate::config::Pipeline) -> Self {
        Self {
            key: pipeline.output.key,
            key_field: pipeline.output.key_field.clone(),
            records: pipeline
                .plan
                .outputs
                .iter()
                .filter(|o| o.record)
                .map(|o| o.name.clone())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use duckdb::arrow::array::{ArrayRef, Int64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn rows_share_one_buffer_and_carry_their_key_and_origins() {
        let ids: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), None]));
        let qty: ArrayRef = Arc::new(Int64Array::from(vec![1, 2]));
        let batch = match RecordBatch::try_from_iter([("id", ids), ("qty", qty)]) {
            Ok(b) => b,
            Err(e) => panic!("{e}"),
        };
        let o = |offset| Origin {
            topic: 0,
            partition: 3,
            offset,
        };
        let mut out = Outputs::default();
        let n = match out.write(
            &batch,
            &RowLayout {
                key: Some(0),
                ..RowLayout::default()
            },
            &[(o(1), o(1)), (o(2), o(5))],
        ) {
            Ok(n) => n,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(n, 2);
        assert_eq!(out.value(&out.rows[0]), br#"{"id":"a","qty":1}"#);
        assert_eq!(out.key(&out.rows[0]), Some(&b"a"[..]));
        assert_eq!(
            out.key(&out.rows[1]),
            None,
            "a NULL key column gives no key"
        );
        assert_eq!(out.rows[1].trigger.offset, 5);
        out.clear_rows();
        assert!(out.rows.is_empty());
    }
}
