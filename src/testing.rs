//! Offline runs of the engine over recorded records (`kaflowsql test`):
//! read a JSON-lines input, run it in file order, compare the output with an
//! expected file and print a readable diff.
//!
//! Input lines are `{"topic", "key", "value", "timestamp"}` (plus optional
//! `"partition"`, and `"raw"` for a value that is not JSON). Output lines are
//! `{"key": ..., "value": {...}}`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value as Json;

use crate::engine::{DeadLetter, Engine, EngineError, Outputs, SourceRecord};

/// Why an offline run could not happen (not a mismatch: that is a [`Comparison`]).
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    /// A file could not be read or written.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A line of the input or expected file is not what it should be.
    #[error("{file}:{line}: {message}")]
    BadLine {
        /// The file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The engine stopped.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputLine {
    topic: String,
    #[serde(default)]
    key: Option<Json>,
    /// The value as written in the file (its members' order and number
    /// texts kept, as a producer would send them).
    #[serde(default)]
    value: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    raw: Option<String>,
    /// Absent or null: the record has no Kafka timestamp.
    #[serde(default)]
    timestamp: Option<i64>,
    #[serde(default)]
    partition: i32,
}

/// One recorded input record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset (its position among the file's records of that topic and partition).
    pub offset: i64,
    /// Timestamp, epoch ms.
    pub timestamp: i64,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes (None: tombstone).
    pub value: Option<Vec<u8>>,
}

fn json_bytes(v: &Json) -> Vec<u8> {
    match v {
        Json::String(s) => s.as_bytes().to_vec(),
        other => other.to_string().into_bytes(),
    }
}

/// Reads a recorded input file.
pub fn read_input(file: &Path) -> Result<Vec<Recorded>, TestError> {
    let text = std::fs::read_to_string(file).map_err(|source| TestError::Io {
        file: file.to_path_buf(),
        source,
    })?;
    let mut offsets: HashMap<(String, i32), i64> = HashMap::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let rec: InputLine = serde_json::from_str(line).map_err(|e| TestError::BadLine {
            file: file.to_path_buf(),
            line: i + 1,
            message: format!(
                "{e}; each line is {{\"topic\", \"key\", \"value\", \"timestamp\"}} (optional \"partition\", \"raw\")"
            ),
        })?;
        let offset = offsets
            .entry((rec.topic.clone(), rec.partition))
            .or_insert(0);
        let value = match (&rec.raw, &rec.value) {
            (Some(raw), _) => Some(raw.as_bytes().to_vec()),
            (None, Some(v)) if v.get() == "null" => None,
            (None, None) => None,
            (None, Some(v)) => Some(v.get().as_bytes().to_vec()),
        };
        out.push(Recorded {
            topic: rec.topic,
            partition: rec.partition,
            offset: *offset,
            timestamp: rec.timestamp.unwrap_or(crate::engine::NO_TIMESTAMP),
            key: rec.key.as_ref().filter(|k| !k.is_null()).map(json_bytes),
            value,
        });
        *offset += 1;
    }
    Ok(out)
}

/// What an offline run produced.
#[derive(Debug, Default)]
pub struct RunOutput {
    /// Output lines `{"key":...,"value":{...}}`, in emission order.
    pub lines: Vec<String>,
    /// Records refused, with their reasons.
    pub dead_letters: Vec<DeadLetter>,
}

/// The output line of one row.
pub fn output_line(key: Option<&[u8]>, value: &[u8]) -> String {
    let key = match key {
        Some(k) => match std::str::from_utf8(k) {
            Ok(s) => Json::String(s.to_string()).to_string(),
            Err(_) => Json::String(String::from_utf8_lossy(k).into_owned()).to_string(),
        },
        None => "null".to_string(),
    };
    format!(
        "{{\"key\":{key},\"value\":{}}}",
        String::from_utf8_lossy(value)
    )
}

/// Runs `records` through `engine` in order and flushes at the end.
pub fn run(engine: &mut Engine, records: &[Recorded]) -> Result<RunOutput, TestError> {
    let mut outputs = Outputs::default();
    for r in records {
        engine.push(
            &SourceRecord {
                topic: &r.topic,
                partition: r.partition,
                offset: r.offset,
                timestamp: r.timestamp,
                key: r.key.as_deref(),
                value: r.value.as_deref(),
            },
            &mut outputs,
        )?;
    }
    engine.flush(&mut outputs)?;
    // Rows that failed in SQL carry their decoded columns: put the recorded bytes back.
    for dead in outputs.dead_letters.iter_mut().filter(|d| d.decoded_copy) {
        let original = records.iter().find(|r| {
            r.topic == dead.topic && r.partition == dead.partition && r.offset == dead.offset
        });
        if let Some(r) = original {
            dead.key = r.key.clone();
            dead.value = r.value.clone();
            dead.decoded_copy = false;
        }
    }
    Ok(RunOutput {
        lines: outputs
            .rows
            .iter()
            .map(|r| output_line(outputs.key(r), outputs.value(r)))
            .collect(),
        dead_letters: outputs.dead_letters,
    })
}

/// Reads an expected-output file: one `{"key":...,"value":{...}}` per line.
pub fn read_expected(file: &Path) -> Result<Vec<String>, TestError> {
    let text = std::fs::read_to_string(file).map_err(|source| TestError::Io {
        file: file.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        canonical(line).map_err(|e| TestError::BadLine {
            file: file.to_path_buf(),
            line: i + 1,
            message: format!("{e}; each line is {{\"key\": ..., \"value\": {{...}}}}"),
        })?;
        out.push(line.trim().to_string());
    }
    Ok(out)
}

/// A line in a form that compares equal when the JSON is equal.
fn canonical(line: &str) -> Result<String, serde_json::Error> {
    let v: Json = serde_json::from_str(line)?;
    Ok(v.to_string())
}

/// The verdict of comparing actual and expected lines.
#[derive(Debug, PartialEq, Eq)]
pub struct Comparison {
    /// Lines expected but not produced.
    pub missing: Vec<String>,
    /// Lines produced but not expected.
    pub unexpected: Vec<String>,
    /// In ordered mode: the same lines in another order.
    pub reordered: bool,
}

impl Comparison {
    /// True when actual equals expected.
    pub fn matches(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && !self.reordered
    }

    /// A readable report.
    pub fn report(&self) -> String {
        let mut s = String::new();
        for l in &self.missing {
            let _ = writeln!(s, "- {l}");
        }
        for l in &self.unexpected {
            let _ = writeln!(s, "+ {l}");
        }
        if self.reordered {
            let _ = writeln!(
                s,
                "the same rows came out in another order (use --unordered to compare as multisets)"
            );
        }
        let _ = write!(
            s,
            "{} expected line(s) missing (-), {} unexpected line(s) (+)",
            self.missing.len(),
            self.unexpected.len()
        );
        s
    }
}

/// Compares lines as JSON; `unordered` compares them as multisets.
pub fn compare(actual: &[String], expected: &[String], unordered: bool) -> Comparison {
    let canon = |l: &String| canonical(l).unwrap_or_else(|_| l.clone());
    let a: Vec<String> = actual.iter().map(canon).collect();
    let e: Vec<String> = expected.iter().map(canon).collect();
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for l in &e {
        *counts.entry(l).or_default() += 1;
    }
    for l in &a {
        *counts.entry(l).or_default() -= 1;
    }
    let mut missing = Vec::new();
    let mut unexpected = Vec::new();
    let mut seen: HashMap<&str, i64> = HashMap::new();
    for l in &e {
        let c = counts[l.as_str()];
        let s = seen.entry(l).or_default();
        if c > 0 && *s < c {
            *s += 1;
            missing.push(l.clone());
        }
    }
    for l in &a {
        let c = counts[l.as_str()];
        let s = seen.entry(l).or_default();
        if c < 0 && *s < -c {
            *s += 1;
            unexpected.push(l.clone());
        }
    }
    let reordered = !unordered && missing.is_empty() && unexpected.is_empty() && a != e;
    Comparison {
        missing,
        unexpected,
        reordered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn compares_as_json_and_reports_both_sides() {
        let actual = lines(&[
            r#"{"key":"a","value":{"x":1}}"#,
            r#"{"key":"b","value":{"x":2}}"#,
        ]);
        let expected = lines(&[
            r#"{"key": "a", "value": {"x": 1}}"#,
            r#"{"key":"c","value":{"x":3}}"#,
        ]);
        let c = compare(&actual, &expected, false);
        assert_eq!(c.missing.len(), 1);
        assert_eq!(c.unexpected.len(), 1);
        assert!(c.report().contains("+ {\"key\":\"b\""), "{}", c.report());
    }

    #[test]
    fn order_matters_unless_unordered_and_duplicates_count() {
        let a = lines(&["{\"k\":1}", "{\"k\":2}"]);
        let b = lines(&["{\"k\":2}", "{\"k\":1}"]);
        assert!(!compare(&a, &b, false).matches());
        assert!(compare(&a, &b, true).matches());
        let dup = lines(&["{\"k\":1}", "{\"k\":1}", "{\"k\":2}"]);
        assert_eq!(
            compare(&a, &dup, true).missing,
            vec!["{\"k\":1}".to_string()]
        );
    }

    /// An input record's value is sent as written: member order and number
    /// texts (a big integer, `1.0`) are kept, as a producer would send them.
    #[test]
    fn input_values_are_sent_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("in.jsonl");
        std::fs::write(
            &file,
            "{\"topic\":\"t\",\"key\":\"k\",\"timestamp\":1,\"value\":{\"z\":1.0,\"a\":123456789012345678901234}}\n{\"topic\":\"t\",\"key\":\"k\",\"value\":null}\n",
        )
        .unwrap();
        let records = read_input(&file).unwrap();
        assert_eq!(
            records[0].value.as_deref(),
            Some(&br#"{"z":1.0,"a":123456789012345678901234}"#[..])
        );
        assert_eq!(records[1].value, None, "null is a tombstone");
    }

    #[test]
    fn output_lines_keep_column_order() {
        assert_eq!(
            output_line(Some(b"u1"), br#"{"b":1,"a":2}"#),
            r#"{"key":"u1","value":{"b":1,"a":2}}"#
        );
        assert_eq!(output_line(None, b"{}"), r#"{"key":null,"value":{}}"#);
    }
}
