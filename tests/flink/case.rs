//! A case of the Flink differential suite: one file of `tests/flink/cases/`,
//! and the seeded records it generates.
//!
//! A case names its tables (topics), the kaflowsql pipeline over them, and
//! how each column's values are drawn; literal records come first (the
//! reproductions of issue #16 are literal), then `count` generated ones.
//! Every record belongs to a *phase*: phase 0 is produced before kaflowsql
//! starts (dimensions: loaded before any event, as kaflowsql does at start),
//! and each later phase only once kaflowsql has processed the one before.

#![allow(dead_code)]

use std::fmt::Write as _;

use indexmap::IndexMap;
use serde::Deserialize;

/// One case file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case checks (printed in the report).
    pub about: String,
    /// The kaflowsql pipeline, without `name:` (the suite names it).
    #[serde(default)]
    pub pipeline: Option<String>,
    /// Or a shipped pipeline file, relative to the repository root.
    #[serde(default)]
    pub pipeline_file: Option<String>,
    /// The pipeline's output topic (renamed per run like the tables).
    #[serde(default = "default_output")]
    pub output_topic: String,
    /// The query Flink runs, when Flink SQL spells it differently from
    /// kaflowsql's (DuckDB's) dialect; the case's `about` says why. Default:
    /// the pipeline's query.
    #[serde(default)]
    pub flink_query: Option<String>,
    /// Generated event times lie in `[base, base + span_ms)`.
    #[serde(default = "default_span_ms")]
    pub span_ms: i64,
    /// Mixed into the suite's seed (a case can be re-drawn alone).
    #[serde(default)]
    pub seed: u64,
    /// The sources, by topic name as the pipeline writes it.
    pub tables: IndexMap<String, Table>,
    /// Fewest rows each side must give (0: none expected).
    #[serde(default = "default_min_rows")]
    pub min_rows: usize,
    /// Dead letters kaflowsql must write.
    #[serde(default)]
    pub dead_letters: u64,
    /// A difference from Flink SQL found by this suite and reported.
    #[serde(default)]
    pub known_difference: Option<KnownDifference>,
    /// Why the case cannot run yet (kaflowsql refuses its pipeline); it runs,
    /// and must then agree, as soon as the pipeline validates.
    #[serde(default)]
    pub pending: Option<String>,
}

fn default_output() -> String {
    "out".to_string()
}

const fn default_span_ms() -> i64 {
    60_000
}

const fn default_min_rows() -> usize {
    1
}

/// A difference from Flink SQL, kept visible: the case must still differ
/// (else the mark is stale), and with `equal_when` it must agree once those
/// relaxations are applied (so nothing else differs).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnownDifference {
    /// The difference's id in the suite's report (docs/sql-and-joins.md).
    pub id: String,
    /// One line: what differs.
    pub what: String,
    /// Relaxations under which the rows must be equal.
    #[serde(default)]
    pub equal_when: Vec<Relax>,
}

/// A relaxation of the comparison, for a documented difference only.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Relax {
    /// An integer equals a fractional number of the same value (2 == 2.0).
    NumberKind,
}

/// One source topic.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    /// A dimension (Flink: `upsert-kafka` keyed by `key`); else an event stream.
    #[serde(default)]
    pub dimension: bool,
    /// The column whose text is the Kafka key (a dimension's primary key).
    #[serde(default)]
    pub key: Option<String>,
    /// Generated records (after the literal ones).
    #[serde(default)]
    pub count: usize,
    /// Phase of the generated records (default: 0 for a dimension, 1 for a stream).
    #[serde(default)]
    pub phase: Option<u32>,
    /// Flink gets an event-time attribute `kf_time` (the record timestamp)
    /// for interval joins.
    #[serde(default)]
    pub rowtime: bool,
    /// Share of generated dimension records that are tombstones of a drawn key.
    #[serde(default)]
    pub tombstones: f64,
    /// The columns, in order, with their Flink SQL types and generators.
    pub columns: IndexMap<String, Column>,
    /// Records written as they are, before the generated ones.
    #[serde(default)]
    pub records: Vec<Literal>,
}

impl Table {
    /// The phase of the table's generated records.
    pub fn default_phase(&self) -> u32 {
        self.phase.unwrap_or(if self.dimension { 0 } else { 1 })
    }
}

/// A column: its Flink SQL type and how its values are drawn.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    /// Flink SQL type (`STRING`, `BIGINT`, `DOUBLE`, `ROW<city STRING>`, ...);
    /// not needed inside `object`.
    #[serde(rename = "type", default)]
    pub flink_type: Option<String>,
    /// The generator.
    pub gen: Gen,
    /// Share of JSON `null`s.
    #[serde(default)]
    pub null: f64,
    /// Share of records without the field.
    #[serde(default)]
    pub missing: f64,
}

/// How a value is drawn.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gen {
    /// `prefix` + the record's index: unique ids.
    Seq(String),
    /// `start` + the record's index.
    SeqInt(i64),
    /// `prefix` + a number below `size`: keys that repeat.
    Pool(String, u64),
    /// An integer below `size`.
    PoolInt(u64),
    /// An integer in `[low, high]`.
    Int(i64, i64),
    /// A 64-bit integer, often beyond 2^53 (exact in JSON, not in a double).
    BigInt,
    /// A number in `[low, high)` with two decimals, always written with a fraction.
    Double(f64, f64),
    /// true or false.
    Bool,
    /// A lowercase ASCII word.
    Word,
    /// Words in mixed case with spaces, some leading or trailing.
    Text,
    /// Text mixing ASCII with accents, ß, ligatures, emoji, CJK, RTL and combining marks.
    Unicode,
    /// `YYYY-MM-DD` between two years.
    Date(i32, i32),
    /// `YYYY-MM-DD HH:MM:SS` between two years.
    DateTime(i32, i32),
    /// One of the values.
    Choice(Vec<serde_json::Value>),
    /// Always this value.
    Const(serde_json::Value),
    /// A JSON object of these fields.
    Object(IndexMap<String, Column>),
    /// A JSON array of 0..=`max` values of `of`.
    Array {
        /// The elements.
        of: Box<Column>,
        /// Most elements.
        max: usize,
    },
}

/// A record written as given.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Literal {
    /// The JSON value; `null` is a tombstone.
    pub value: serde_json::Value,
    /// The Kafka key (default: the table's key column's text).
    #[serde(default)]
    pub key: Option<String>,
    /// Event time, as milliseconds after the case's base time.
    #[serde(default)]
    pub at_ms: i64,
    /// Default: the table's phase.
    #[serde(default)]
    pub phase: Option<u32>,
}

/// Words of a pipeline file that are not topic names.
const PIPELINE_KEYS: &[&str] = &[
    "name",
    "window",
    "query",
    "output",
    "topic",
    "format",
    "key",
    "dlq_topic",
    "emission",
    "type",
    "require",
    "timeout",
    "on_timeout",
    "state",
    "events",
    "default_ttl",
    "overrides",
    "max_ahead",
    "dimensions",
    "sources",
    "timestamp",
    "columns",
    "consumer_group",
];

/// Reads a case file.
pub fn parse(text: &str) -> Result<Case, String> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let case: Case =
        serde_yaml_ng::with::singleton_map_recursive::deserialize(de).map_err(|e| e.to_string())?;
    if case.pipeline.is_some() == case.pipeline_file.is_some() {
        return Err("give exactly one of `pipeline` and `pipeline_file`".into());
    }
    for (name, t) in &case.tables {
        // Tables are renamed by whole words in the pipeline's text: a table
        // named like a pipeline key would rename the key too.
        if PIPELINE_KEYS.contains(&name.as_str()) || *name == case.output_topic {
            return Err(format!(
                "{name}: a table cannot be named like a pipeline key or the output"
            ));
        }
        for (c, col) in &t.columns {
            if col.flink_type.is_none() {
                return Err(format!("{name}.{c}: `type` (Flink SQL) is required"));
            }
        }
        if t.dimension && t.key.is_none() {
            return Err(format!("{name}: a dimension needs `key`"));
        }
    }
    Ok(case)
}

/// A small deterministic generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A number below `n` (0 for 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// FNV-1a of a name: a case's seed does not depend on the other cases.
pub fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A record to produce.
#[derive(Debug, Clone)]
pub struct Record {
    /// The table (topic as the case names it).
    pub table: String,
    /// Its phase.
    pub phase: u32,
    /// Kafka key.
    pub key: Option<String>,
    /// JSON value; None is a tombstone.
    pub value: Option<String>,
    /// Milliseconds after the base time.
    pub at_ms: i64,
}

const UNICODE: &[&str] = &[
    "é",
    "ß",
    "ǅ",
    "😀",
    "👍🏽",
    "中文",
    "ﬁ",
    "İ",
    "ς",
    "e\u{301}",
    "עברית",
    "ÅNGSTRÖM",
    "\u{a0}",
    "tab\tx",
    "quote\"",
    "back\\slash",
    "नमस्ते",
    "한국어",
    "𝔘𝔫𝔦",
    "línea\nnueva",
];

const WORDS: &[&str] = &[
    "alpha", "beta", "gamma", "delta", "kafka", "flink", "duck", "stream", "join", "table",
    "north", "south", "Lyon", "Paris", "Berlin",
];

/// The text of a Kafka key for a JSON value (strings as they are, other values as JSON text).
pub fn key_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn draw(gen: &Gen, index: usize, rng: &mut Rng) -> serde_json::Value {
    use serde_json::Value as J;
    match gen {
        Gen::Seq(prefix) => J::String(format!("{prefix}{index}")),
        Gen::SeqInt(start) => J::from(start + index as i64),
        Gen::Pool(prefix, size) => J::String(format!("{prefix}{}", rng.below(*size))),
        Gen::PoolInt(size) => J::from(rng.below(*size)),
        Gen::Int(lo, hi) => J::from(lo + rng.below((hi - lo + 1) as u64) as i64),
        Gen::BigInt => {
            let two53 = 1i64 << 53;
            let v = match rng.below(6) {
                0 => two53 + rng.below(1000) as i64,
                1 => -two53 - rng.below(1000) as i64,
                2 => i64::MAX - rng.below(1000) as i64,
                3 => i64::MIN + 1 + rng.below(1000) as i64,
                4 => (rng.next() >> 1) as i64,
                _ => rng.below(1000) as i64 - 500,
            };
            J::from(v)
        }
        Gen::Double(lo, hi) => {
            let x = lo + (hi - lo) * (rng.below(1_000_000) as f64 / 1_000_000.0);
            J::from((x * 100.0).round() / 100.0)
        }
        Gen::Bool => J::Bool(rng.below(2) == 0),
        Gen::Word => J::String(WORDS[rng.below(WORDS.len() as u64) as usize].to_lowercase()),
        Gen::Text => {
            let n = 1 + rng.below(3);
            let mut s = String::new();
            if rng.chance(0.2) {
                s.push(' ');
            }
            for i in 0..n {
                if i > 0 {
                    s.push(' ');
                }
                let w = WORDS[rng.below(WORDS.len() as u64) as usize];
                match rng.below(3) {
                    0 => s.push_str(&w.to_uppercase()),
                    1 => s.push_str(w),
                    _ => s.push_str(&w.to_lowercase()),
                }
            }
            if rng.chance(0.2) {
                s.push_str("  ");
            }
            J::String(s)
        }
        Gen::Unicode => {
            let n = 1 + rng.below(3);
            let mut s = String::new();
            for _ in 0..n {
                if rng.chance(0.5) {
                    s.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
                }
                s.push_str(UNICODE[rng.below(UNICODE.len() as u64) as usize]);
            }
            J::String(s)
        }
        Gen::Date(from, to) => J::String(date(*from, *to, rng).format("%Y-%m-%d").to_string()),
        Gen::DateTime(from, to) => {
            let d = date(*from, *to, rng);
            let s = rng.below(86_400);
            J::String(format!(
                "{} {:02}:{:02}:{:02}",
                d.format("%Y-%m-%d"),
                s / 3600,
                s / 60 % 60,
                s % 60
            ))
        }
        Gen::Choice(values) => values[rng.below(values.len() as u64) as usize].clone(),
        Gen::Const(v) => v.clone(),
        Gen::Object(fields) => {
            let mut text = String::from("{");
            let mut first = true;
            for (name, col) in fields {
                if let Some(v) = column(col, index, rng) {
                    if !first {
                        text.push(',');
                    }
                    first = false;
                    let _ = write!(text, "{}:{}", serde_json::Value::from(name.as_str()), v);
                }
            }
            text.push('}');
            serde_json::from_str(&text).unwrap_or(J::Null)
        }
        Gen::Array { of, max } => {
            let n = rng.below(*max as u64 + 1) as usize;
            J::Array(
                (0..n)
                    .map(|_| column(of, index, rng).unwrap_or(J::Null))
                    .collect(),
            )
        }
    }
}

fn date(from: i32, to: i32, rng: &mut Rng) -> chrono::NaiveDate {
    let start = chrono::NaiveDate::from_ymd_opt(from, 1, 1).unwrap_or_default();
    let end = chrono::NaiveDate::from_ymd_opt(to, 12, 31).unwrap_or_default();
    let days = (end - start).num_days().max(0) as u64;
    start + chrono::Duration::days(rng.below(days + 1) as i64)
}

/// A column's value for one record: None when the field is missing.
fn column(col: &Column, index: usize, rng: &mut Rng) -> Option<serde_json::Value> {
    if rng.chance(col.missing) {
        return None;
    }
    if rng.chance(col.null) {
        return Some(serde_json::Value::Null);
    }
    Some(draw(&col.gen, index, rng))
}

/// Every record of a case, in production order: literal records, then the
/// generated ones, table by table.
pub fn records(case: &Case, seed: u64) -> Vec<Record> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    for (name, t) in &case.tables {
        let key_of = |value: &serde_json::Value| {
            let k = t.key.as_ref()?;
            key_text(value.get(k)?)
        };
        for l in &t.records {
            let value = (!l.value.is_null()).then(|| l.value.to_string());
            out.push(Record {
                table: name.clone(),
                phase: l.phase.unwrap_or_else(|| t.default_phase()),
                key: l.key.clone().or_else(|| key_of(&l.value)),
                value,
                at_ms: l.at_ms,
            });
        }
        for i in 0..t.count {
            let at_ms = rng.below(case.span_ms.max(1) as u64) as i64;
            if t.dimension && rng.chance(t.tombstones) {
                let key_col = t.key.as_ref().and_then(|k| t.columns.get(k));
                if let Some(key) = key_col.and_then(|c| key_text(&draw(&c.gen, i, &mut rng))) {
                    out.push(Record {
                        table: name.clone(),
                        phase: t.default_phase(),
                        key: Some(key),
                        value: None,
                        at_ms,
                    });
                    continue;
                }
            }
            let mut text = String::from("{");
            let mut object = serde_json::Map::new();
            for (c, col) in &t.columns {
                if let Some(v) = column(col, i, &mut rng) {
                    if text.len() > 1 {
                        text.push(',');
                    }
                    let _ = write!(text, "{}:{}", serde_json::Value::from(c.as_str()), v);
                    object.insert(c.clone(), v);
                }
            }
            text.push('}');
            out.push(Record {
                table: name.clone(),
                phase: t.default_phase(),
                key: key_of(&serde_json::Value::Object(object)),
                value: Some(text),
                at_ms,
            });
        }
    }
    out
}

/// Replaces whole words (letters, digits, `_`) `from` by `to` in `text`.
pub fn replace_word(text: &str, from: &str, to: &str) -> String {
    let boundary = |c: Option<char>| c.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(from) {
        let before = rest[..i].chars().last().or_else(|| out.chars().last());
        let after = rest[i + from.len()..].chars().next();
        out.push_str(&rest[..i]);
        if boundary(before) && boundary(after) {
            out.push_str(to);
        } else {
            out.push_str(from);
        }
        rest = &rest[i + from.len()..];
    }
    out.push_str(rest);
    out
}
