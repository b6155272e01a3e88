//! Decodes a JSON record value into an [`Event`] holding only the columns the
//! query reads, checking each value against its column's type.
//!
//! Types are declared per source, or inferred from the first non-null value:
//! an integer column widens to DOUBLE when a decimal arrives; any other
//! mismatch makes the record a dead letter, never a crash.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::path::{FieldPath, Step};
use super::{ColumnType, Event, Value};

/// Why a record could not become an event. The text goes into the DLQ header.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The value is not valid JSON.
    #[error("value is not valid JSON: {0}")]
    NotJson(String),
    /// The value is JSON but not an object.
    #[error("value is JSON but not an object; records must be JSON objects")]
    NotObject,
    /// A field's value does not fit its column's type.
    #[error("field `{column}` should be {expected} but is {found}")]
    WrongType {
        /// The field.
        column: String,
        /// The column's type.
        expected: ColumnType,
        /// What the value is.
        found: &'static str,
    },
    /// The declared timestamp field is not epoch milliseconds or RFC 3339.
    #[error("timestamp field `{column}` is not epoch milliseconds or an RFC 3339 time: {found}")]
    BadTimestamp {
        /// The field.
        column: String,
        /// What it held.
        found: String,
    },
}

/// The columns the query reads from one topic, their types, and which are keys.
#[derive(Clone, Debug)]
pub struct TopicSchema {
    /// Topic name.
    pub topic: String,
    /// Column names, in the order of [`Event::values`].
    pub columns: Vec<String>,
    types: Vec<Option<ColumnType>>,
    declared: Vec<bool>,
    /// Column holding event time, if the source declares one.
    pub timestamp_column: Option<usize>,
    /// Join-key columns (decoded even when the query reads them nowhere
    /// else; a missing or null one is a NULL key, which matches nothing).
    pub key_columns: Vec<usize>,
    /// A column whose values are not typed (the timestamp column when only
    /// event time is read from it).
    untyped: Option<usize>,
    /// Whether events keep their Kafka key (dimensions need it; streams do not).
    keep_key: bool,
    version: u64,
    /// How each top-level field of a record feeds the columns.
    readers: Vec<FieldReader>,
    /// The column holding the whole record, if the query reads it.
    record: Option<usize>,
}

/// The columns one top-level field feeds: itself, and paths inside it.
#[derive(Clone, Debug)]
struct FieldReader {
    name: String,
    whole: Option<usize>,
    paths: Vec<(usize, Vec<Step>)>,
}

fn readers_of(columns: &[String]) -> Vec<FieldReader> {
    let mut readers: Vec<FieldReader> = Vec::new();
    for (i, c) in columns.iter().enumerate() {
        if c == FieldPath::RECORD {
            continue;
        }
        let path = FieldPath::parse(c);
        let at = match readers.iter().position(|r| r.name == path.field) {
            Some(at) => at,
            None => {
                readers.push(FieldReader {
                    name: path.field.clone(),
                    whole: None,
                    paths: Vec::new(),
                });
                readers.len() - 1
            }
        };
        if path.steps.is_empty() {
            readers[at].whole = Some(i);
        } else {
            readers[at].paths.push((i, path.steps));
        }
    }
    readers
}

impl TopicSchema {
    /// A schema over `columns`; `declared` gives fixed types by column name.
    pub fn new(
        topic: &str,
        columns: Vec<String>,
        declared: &[(String, ColumnType)],
        timestamp_column: Option<&str>,
        key_columns: &[String],
    ) -> Self {
        let mut columns = columns;
        // A timestamp column the query does not read only gives event time:
        // epoch ms and RFC 3339 text may alternate in it.
        let time_only = timestamp_column.is_some_and(|t| !columns.iter().any(|c| c == t));
        for name in timestamp_column
            .into_iter()
            .chain(key_columns.iter().map(String::as_str))
        {
            if !columns.iter().any(|c| c == name) {
                columns.push(name.to_string());
            }
        }
        // Declared types are of top-level fields; a path inside one is typed
        // by its values.
        let types = columns
            .iter()
            .map(|c| {
                let path = FieldPath::parse(c);
                if !path.steps.is_empty() {
                    return None;
                }
                declared
                    .iter()
                    .find(|(n, _)| *n == path.field)
                    .map(|(_, t)| *t)
            })
            .collect::<Vec<_>>();
        let declared_flags = types.iter().map(Option::is_some).collect();
        let find = |name: &str| columns.iter().position(|c| c == name);
        let timestamp_index = timestamp_column.and_then(find);
        Self {
            topic: topic.to_string(),
            untyped: if time_only { timestamp_index } else { None },
            timestamp_column: timestamp_index,
            key_columns: key_columns.iter().filter_map(|k| find(k)).collect(),
            columns: columns.clone(),
            types,
            declared: declared_flags,
            keep_key: true,
            version: 0,
            readers: readers_of(&columns),
            record: columns.iter().position(|c| c == FieldPath::RECORD),
        }
    }

    /// Whether decoded events keep their Kafka key (default: yes).
    pub fn keep_kafka_key(mut self, keep: bool) -> Self {
        self.keep_key = keep;
        self
    }

    /// Index of a column by name.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// Whether column `column`'s type is declared (else inferred from values).
    pub fn is_declared(&self, column: usize) -> bool {
        self.declared.get(column).copied().unwrap_or(false)
    }

    /// The type of a column, if declared or seen.
    pub fn column_type(&self, column: usize) -> Option<ColumnType> {
        self.types.get(column).copied().flatten()
    }

    /// Changes whenever a column's type becomes known or widens.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Decodes `value` into an event of topic number `topic_index`.
    #[allow(clippy::too_many_arguments)]
    pub fn decode(
        &mut self,
        topic_index: u16,
        partition: i32,
        offset: i64,
        kafka_timestamp: i64,
        key: Option<&[u8]>,
        value: &[u8],
    ) -> Result<Event, DecodeError> {
        let mut values = vec![Value::Null; self.columns.len()];
        // Valid UTF-8 (checked once for the whole value) is read as text, so
        // serde_json does not check each string and raw field again; other
        // bytes are read as before (a string that is not UTF-8 in a field
        // the query reads is refused there).
        match std::str::from_utf8(value) {
            Ok(text) => read_object(
                serde_json::Deserializer::from_str(text),
                &self.readers,
                &mut values,
            )?,
            Err(_) => read_object(
                serde_json::Deserializer::from_slice(value),
                &self.readers,
                &mut values,
            )?,
        }
        if let Some(r) = self.record {
            let text = std::str::from_utf8(value)
                .map_err(|e| DecodeError::NotJson(e.to_string()))?
                .trim();
            values[r] = Value::Json(text.into());
        }
        let timestamp = match self.timestamp_column {
            Some(c) => timestamp_of(&self.columns[c], &values[c])?,
            None => kafka_timestamp,
        };
        self.check_types(&mut values)?;
        Ok(Event {
            topic: topic_index,
            partition,
            offset,
            timestamp,
            key: if self.keep_key {
                key.map(Box::from)
            } else {
                None
            },
            values: values.into_boxed_slice(),
        })
    }

    /// Checks the values of an event read back from state against the column
    /// types, learning types as [`TopicSchema::decode`] does.
    pub fn observe(&mut self, values: &mut [Value]) -> Result<(), DecodeError> {
        if values.len() != self.columns.len() {
            return Err(DecodeError::NotObject);
        }
        self.check_types(values)
    }

    /// Checks every value against its column type, inferring and widening.
    /// Types change only when the whole record is accepted.
    fn check_types(&mut self, values: &mut [Value]) -> Result<(), DecodeError> {
        let mut changes: Vec<(usize, ColumnType)> = Vec::new();
        for (i, v) in values.iter_mut().enumerate() {
            if self.untyped == Some(i) {
                continue;
            }
            let Some(found) = v.inferred_type() else {
                continue;
            };
            match self.types[i] {
                None => changes.push((i, found)),
                Some(t) if t == found => {}
                // A declared DOUBLE holds doubles; an inferred one keeps each
                // integer as it is, so a record prints the same JSON whatever
                // else shares its micro-batch (see the evaluation stage).
                Some(ColumnType::Double) if found == ColumnType::BigInt => {
                    if let (true, Value::Int(n)) = (self.declared[i], &*v) {
                        *v = Value::Float(*n as f64);
                    }
                }
                Some(ColumnType::BigInt) if found == ColumnType::Double && !self.declared[i] => {
                    changes.push((i, ColumnType::Double));
                }
                Some(ColumnType::Varchar) if self.declared[i] => {
                    // A declared VARCHAR takes any scalar as its text.
                    let text = match &*v {
                        Value::Bool(b) => b.to_string(),
                        Value::Int(n) => n.to_string(),
                        Value::Float(f) => f.to_string(),
                        _ => {
                            return Err(DecodeError::WrongType {
                                column: self.columns[i].clone(),
                                expected: ColumnType::Varchar,
                                found: v.kind(),
                            })
                        }
                    };
                    *v = Value::Str(text.into());
                }
                Some(expected) => {
                    return Err(DecodeError::WrongType {
                        column: self.columns[i].clone(),
                        expected,
                        found: v.kind(),
                    })
                }
            }
        }
        if !changes.is_empty() {
            for (i, t) in changes {
                self.types[i] = Some(t);
            }
            self.version += 1;
        }
        Ok(())
    }
}

/// Reads the top-level object of `de` into `values` through `readers`.
fn read_object<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
    readers: &[FieldReader],
    values: &mut [Value],
) -> Result<(), DecodeError> {
    match de::Deserializer::deserialize_any(&mut de, ObjectVisitor { readers, values }) {
        Ok(true) => {}
        Ok(false) => return Err(DecodeError::NotObject),
        Err(e) => return Err(DecodeError::NotJson(e.to_string())),
    }
    de.end().map_err(|e| DecodeError::NotJson(e.to_string()))
}

fn timestamp_of(column: &str, value: &Value) -> Result<i64, DecodeError> {
    match value {
        Value::Int(ms) => Ok(*ms),
        Value::Float(ms) if ms.is_finite() => Ok(*ms as i64),
        // RFC 3339 in every form it allows (any offset, `T`/`t`/space,
        // `Z`/`z`, fractions, years before 1970), or epoch milliseconds as text.
        Value::Str(s) => chrono::DateTime::parse_from_rfc3339(s.trim())
            .map(|t| t.timestamp_millis())
            .ok()
            .or_else(|| s.trim().parse::<i64>().ok())
            .ok_or_else(|| DecodeError::BadTimestamp {
                column: column.to_string(),
                found: s.to_string(),
            }),
        other => Err(DecodeError::BadTimestamp {
            column: column.to_string(),
            found: other.kind().to_string(),
        }),
    }
}

/// Visits the top-level value; returns false when it is not an object.
struct ObjectVisitor<'a> {
    readers: &'a [FieldReader],
    values: &'a mut [Value],
}

impl<'de> Visitor<'de> for ObjectVisitor<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while let Some(FieldName(key)) = map.next_key::<FieldName<'de>>()? {
            match self.readers.iter().find(|r| r.name == *key) {
                Some(reader) => {
                    let raw: &RawValue = map.next_value()?;
                    if let Some(i) = reader.whole {
                        self.values[i] = value_of(raw).map_err(de::Error::custom)?;
                    }
                    for (i, steps) in &reader.paths {
                        self.values[*i] = match follow(raw, steps).map_err(de::Error::custom)? {
                            Some(inner) => value_of(inner).map_err(de::Error::custom)?,
                            None => Value::Null,
                        };
                    }
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(true)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
}

/// An object key, borrowed from the input unless it has escapes.
struct FieldName<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for FieldName<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = FieldName<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(FieldName(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(FieldName(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// The value at `steps` inside `raw`; None where a step finds no field, no
/// element, or a value that is not an object (for a field) or an array (for
/// an index): the path reads NULL there, as DuckDB's and Flink's JSON paths do.
fn follow<'a>(
    raw: &'a RawValue,
    steps: &[Step],
) -> Result<Option<&'a RawValue>, serde_json::Error> {
    let mut at = raw;
    for step in steps {
        let text = at.get();
        let next = match step {
            Step::Field(name) if text.starts_with('{') => {
                let fields: Vec<(Cow<'a, str>, &'a RawValue)> =
                    serde_json::from_str::<FieldList<'a>>(text)?.0;
                fields
                    .into_iter()
                    .rev()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v)
            }
            Step::Index(i) if text.starts_with('[') => {
                let items: Vec<&'a RawValue> = serde_json::from_str(text)?;
                items.get(*i).copied()
            }
            _ => None,
        };
        match next {
            Some(n) => at = n,
            None => return Ok(None),
        }
    }
    Ok(Some(at))
}

/// An object's fields in order, values unparsed (the last of a repeated name
/// wins, as at the top level).
pub(super) struct FieldList<'a>(pub(super) Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> de::Deserialize<'de> for FieldList<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FieldList<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(FieldName(key)) = map.next_key::<FieldName<'de>>()? {
                    out.push((key, map.next_value::<&'de RawValue>()?));
                }
                Ok(FieldList(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn value_of(raw: &RawValue) -> Result<Value, serde_json::Error> {
    let text = raw.get();
    Ok(match text.as_bytes().first() {
        Some(b'{') | Some(b'[') => Value::Json(text.into()),
        Some(b'"') if text.len() >= 2 && !text.contains('\\') => {
            Value::Str(text[1..text.len() - 1].into())
        }
        Some(b'"') => {
            let s: String = serde_json::from_str(text)?;
            Value::Str(s.into())
        }
        Some(b't') => Value::Bool(true),
        Some(b'f') => Value::Bool(false),
        Some(b'n') => Value::Null,
        _ => match text.parse::<i64>() {
            Ok(n) => Value::Int(n),
            Err(_) => Value::Float(serde_json::from_str::<f64>(text)?),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> TopicSchema {
        TopicSchema::new(
            "t",
            vec!["id".into(), "amount".into(), "meta".into()],
            &[],
            None,
            &["id".to_string()],
        )
    }

    /// Strings either side of the 24 bytes a `Value::Str` holds inline,
    /// escaped or not, non-ASCII or not, read back as written; only a
    /// string on the heap counts heap bytes; each survives the stored layout.
    #[test]
    fn strings_either_side_of_the_inline_limit_read_back_whole() {
        let mut s = schema();
        let texts = [
            "a".repeat(24),
            "b".repeat(25),
            "é".repeat(12),
            "ü".repeat(13),
            format!("{}\\n\\\"x", "c".repeat(30)),
        ];
        for text in texts {
            let value = format!("{{\"id\":\"{text}\",\"amount\":1}}");
            let e = s.decode(0, 0, 0, 0, None, value.as_bytes()).unwrap();
            let expect: String = serde_json::from_str(&format!("\"{text}\"")).unwrap();
            assert_eq!(e.values[0], Value::Str(expect.as_str().into()), "{text}");
            let heap = e.values[0].heap_bytes();
            assert_eq!(
                heap,
                if expect.len() > 24 { expect.len() } else { 0 },
                "{text}"
            );
            let mut stored = Vec::new();
            crate::store::layout::encode_event(&e, 7, &mut stored);
            let (_, back) = crate::store::layout::decode_event(&stored).unwrap();
            assert_eq!(back.values, e.values, "{text}");
        }
    }

    /// Bytes that are not UTF-8 are read as before the whole-value check:
    /// in a field the query skips they do not matter, in one it reads they
    /// make the record a dead letter.
    #[test]
    fn bytes_that_are_not_utf8_are_read_as_before() {
        let mut s = schema();
        let skipped = b"{\"id\":\"a\",\"other\":\"\xff\",\"amount\":2}";
        let e = s.decode(0, 0, 0, 0, None, skipped).unwrap();
        assert_eq!(e.values[0], Value::Str("a".into()));
        assert_eq!(e.values[1], Value::Int(2));
        let read = b"{\"id\":\"\xff\"}";
        assert!(matches!(
            s.decode(0, 0, 0, 0, None, read),
            Err(DecodeError::NotJson(_))
        ));
    }

    /// Paths into nested objects and arrays are columns of their own, next
    /// to the whole field; a step that finds nothing (or a value of another
    /// kind) reads NULL, and a top-level field named with a dot is a field.
    #[test]
    fn paths_read_nested_fields_and_elements() {
        let mut s = TopicSchema::new(
            "t",
            vec![
                "shipping.city".into(),
                "items[1].sku".into(),
                "items[3]".into(),
                "shipping".into(),
                "\"a.b\"".into(),
                "tags[2]".into(),
                "customer.id".into(),
            ],
            &[],
            None,
            &["customer.id".to_string()],
        );
        let e = s
            .decode(
                0,
                0,
                0,
                1,
                None,
                br#"{"items":[{"sku":"A\u00e9"},{"sku":"B"}],"a.b":1,"shipping":{"city":"Lyon","city":"Paris"},"tags":"x","customer":{"id":42}}"#,
            )
            .unwrap();
        assert_eq!(
            e.values.as_ref(),
            &[
                Value::Str("Paris".into()),
                Value::Str("A\u{e9}".into()),
                Value::Null,
                Value::Json(r#"{"city":"Lyon","city":"Paris"}"#.into()),
                Value::Int(1),
                Value::Null,
                Value::Int(42),
            ]
        );
        assert_eq!(s.key_columns, vec![6]);
        // A path through malformed JSON is the record's error, not a panic.
        assert!(s
            .decode(0, 0, 1, 1, None, br#"{"shipping":{"city":}}"#)
            .is_err());
    }

    #[test]
    fn decodes_only_the_needed_columns() {
        let mut s = schema();
        let e = s
            .decode(
                0,
                1,
                7,
                1000,
                Some(b"k"),
                br#"{"id":"u1","skip":{"a":[1,2]},"amount":12,"meta":{"x":1}}"#,
            )
            .unwrap();
        assert_eq!(
            e.values.as_ref(),
            &[
                Value::Str("u1".into()),
                Value::Int(12),
                Value::Json(r#"{"x":1}"#.into())
            ]
        );
        assert_eq!((e.partition, e.offset, e.timestamp), (1, 7, 1000));
        assert_eq!(s.column_type(1), Some(ColumnType::BigInt));
    }

    #[test]
    fn widens_integers_to_double_and_refuses_other_mismatches() {
        let mut s = schema();
        s.decode(0, 0, 0, 0, None, br#"{"id":"a","amount":1}"#)
            .unwrap();
        let v = s.version();
        s.decode(0, 0, 1, 0, None, br#"{"id":"a","amount":1.5}"#)
            .unwrap();
        assert_eq!(s.column_type(1), Some(ColumnType::Double));
        assert!(s.version() > v);
        let e = s
            .decode(0, 0, 2, 0, None, br#"{"id":"a","amount":2}"#)
            .unwrap();
        assert_eq!(
            e.values[1],
            Value::Int(2),
            "an inferred DOUBLE keeps an integer as it is"
        );
        let err = s
            .decode(0, 0, 3, 0, None, br#"{"id":"a","amount":"lots"}"#)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "field `amount` should be DOUBLE but is a string"
        );
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        let mut s = schema();
        assert!(matches!(
            s.decode(0, 0, 0, 0, None, b"{nope"),
            Err(DecodeError::NotJson(_))
        ));
        assert_eq!(
            s.decode(0, 0, 0, 0, None, b"[1,2]").unwrap_err(),
            DecodeError::NotObject
        );
        assert!(
            schema()
                .decode(0, 0, 0, 0, None, br#"{"amount":1}"#)
                .is_ok(),
            "a missing join key is a NULL key, not an error (it matches nothing)"
        );
        assert!(matches!(
            s.decode(0, 0, 0, 0, None, br#"{"id":"a"} x"#),
            Err(DecodeError::NotJson(_))
        ));
        // A rejected record does not fix a column's type.
        assert_eq!(s.column_type(1), None);
    }

    #[test]
    fn unescapes_strings_and_field_names() {
        let mut s = schema();
        let e = s
            .decode(0, 0, 0, 0, None, br#"{"i\u0064":"a\"b\n","amount":1}"#)
            .unwrap();
        assert_eq!(e.values[0], Value::Str("a\"b\n".into()));
        let e = s.decode(0, 0, 0, 0, None, br#"{"id":"plain"}"#).unwrap();
        assert_eq!(e.values[0], Value::Str("plain".into()));
    }

    #[test]
    fn reads_declared_timestamps() {
        let mut s = TopicSchema::new("t", vec![], &[], Some("ts"), &[]);
        let e = s
            .decode(0, 0, 0, 5, None, br#"{"ts":1700000000000}"#)
            .unwrap();
        assert_eq!(e.timestamp, 1_700_000_000_000);
        let mut s = TopicSchema::new("t", vec![], &[], Some("ts"), &[]);
        let e = s
            .decode(0, 0, 0, 5, None, br#"{"ts":"2023-11-14T22:13:20Z"}"#)
            .unwrap();
        assert_eq!(e.timestamp, 1_700_000_000_000);
        assert!(s
            .decode(0, 0, 0, 5, None, br#"{"ts":"yesterday"}"#)
            .is_err());
    }

    #[test]
    fn a_timestamp_column_only_read_for_event_time_takes_both_forms() {
        let mut s = TopicSchema::new("t", vec!["id".into()], &[], Some("ts"), &[]);
        let a = s.decode(
            0,
            0,
            0,
            5,
            None,
            br#"{"id":"a","ts":"2023-11-14T22:13:20Z"}"#,
        );
        let b = s.decode(0, 0, 1, 5, None, br#"{"id":"b","ts":1700000000001}"#);
        assert_eq!(a.unwrap().timestamp, 1_700_000_000_000);
        assert_eq!(b.unwrap().timestamp, 1_700_000_000_001);
    }

    #[test]
    fn every_rfc3339_form_parses() {
        let cases = [
            ("2100-01-01T01:00:00+01:00", 4_102_444_800_000),
            ("2099-12-31T23:00:00-01:00", 4_102_444_800_000),
            ("2100-01-01t00:00:00z", 4_102_444_800_000),
            ("2100-01-01 00:00:00Z", 4_102_444_800_000),
            ("2023-11-14T22:13:20.123456Z", 1_700_000_000_123),
            ("1969-12-31T23:59:59.5Z", -500),
            ("1900-01-01T00:00:00+00:00", -2_208_988_800_000),
            ("1700000000000", 1_700_000_000_000),
        ];
        for (text, ms) in cases {
            let mut s = TopicSchema::new("t", vec![], &[], Some("ts"), &[]);
            let json = format!(r#"{{"ts":"{text}"}}"#);
            let e = s
                .decode(0, 0, 0, 5, None, json.as_bytes())
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(e.timestamp, ms, "{text}");
        }
    }
}
