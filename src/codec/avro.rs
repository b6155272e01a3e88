//! Avro in Confluent's wire format: the frame (magic byte 0, the writer
//! schema's registry id as 4 bytes big-endian, then the Avro binary datum),
//! a datum read into the JSON text the decoder takes, and an output row's
//! JSON written as a datum of the output schema.
//!
//! Avro values become what the query sees of a JSON record, as Flink's
//! `avro-confluent` format maps them to SQL types where kaflowsql has the
//! type (docs/pipeline-reference.md, Avro):
//!
//! | Avro | JSON text (column type) |
//! |---|---|
//! | null, boolean, int, long, float, double, string | the same (BIGINT, DOUBLE, VARCHAR, ...) |
//! | `["null", T]` and any union | the branch's value |
//! | record, map, array | object (map members sorted), array (JSON) |
//! | enum | its symbol (VARCHAR) |
//! | bytes, fixed | base64 text (VARCHAR), as Flink's JSON writes BYTES |
//! | date | `YYYY-MM-DD` (VARCHAR; `CAST(d AS DATE)` in SQL) |
//! | time-millis/micros | `HH:MM:SS.fff[fff]` |
//! | timestamp-millis/micros/nanos | RFC 3339 UTC, `2026-11-30T05:54:20.123Z` (usable as event time) |
//! | local-timestamp-* | the same without `Z` |
//! | decimal | the exact number (DOUBLE once read) |
//! | uuid | its text |
//! | duration | `{"months":..,"days":..,"millis":..}` |
//!
//! Float and double values that JSON cannot hold (NaN, infinities) are
//! written as the strings `"NaN"`, `"Infinity"`, `"-Infinity"`.

use std::collections::HashMap;
use std::fmt::Write as _;

use apache_avro::schema::{Name, Namespace, RecordField, Schema};
use apache_avro::types::Value as Avro;
use base64::Engine as _;

/// 1970-01-01, day 0 of Avro's `date`.
fn epoch_day() -> chrono::NaiveDate {
    chrono::DateTime::UNIX_EPOCH.date_naive()
}

/// The first byte of a value in Confluent's wire format.
pub const MAGIC: u8 = 0;

/// Why an Avro value could not be read or written. The text goes into the
/// DLQ's reason header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AvroError {
    /// The value does not start with the magic byte and a schema id.
    #[error("value is not Avro in Confluent's wire format (magic byte 0, 4-byte schema id): {0}")]
    NotFramed(String),
    /// The datum does not decode with its writer schema.
    #[error("value does not decode with its writer schema (registry id {id}): {reason}")]
    BadDatum {
        /// The schema id of the frame.
        id: u32,
        /// What the Avro reader said.
        reason: String,
    },
    /// An output row does not fit the output schema.
    #[error("output row does not fit the Avro schema: {0}")]
    DoesNotFit(String),
    /// A schema that cannot be used (its named types do not resolve).
    #[error("Avro schema cannot be used: {0}")]
    BadSchema(String),
}

/// Splits a framed value into its schema id and its datum.
///
/// Errors: [`AvroError::NotFramed`] for fewer than 5 bytes or a first byte
/// that is not [`MAGIC`].
pub fn unframe(bytes: &[u8]) -> Result<(u32, &[u8]), AvroError> {
    match bytes {
        [MAGIC, a, b, c, d, datum @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), datum)),
        [first, ..] if *first != MAGIC => Err(AvroError::NotFramed(format!(
            "first byte is {first:#04x}, not 0x00"
        ))),
        _ => Err(AvroError::NotFramed(format!(
            "{} bytes, fewer than the 5 of the header",
            bytes.len()
        ))),
    }
}

/// Appends the frame header of schema `id` to `out` (the datum follows).
pub fn frame(id: u32, out: &mut Vec<u8>) {
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
}

/// A parsed schema with its named types resolved, as a reader or writer
/// needs it.
#[derive(Clone, Debug)]
pub struct AvroSchema {
    schema: Schema,
    names: HashMap<Name, Schema>,
}

impl AvroSchema {
    /// Parses the JSON text of a schema.
    ///
    /// Errors: [`AvroError::BadSchema`] with the Avro parser's message.
    pub fn parse(text: &str) -> Result<Self, AvroError> {
        let schema = Schema::parse_str(text).map_err(|e| AvroError::BadSchema(e.to_string()))?;
        Self::new(schema)
    }

    /// Resolves the named types of `schema`.
    pub fn new(schema: Schema) -> Result<Self, AvroError> {
        let names = apache_avro::schema::ResolvedSchema::try_from(&schema)
            .map_err(|e| AvroError::BadSchema(e.to_string()))?
            .get_names()
            .iter()
            .map(|(n, s)| (n.clone(), (*s).clone()))
            .collect();
        Ok(Self { schema, names })
    }

    /// The schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The schema's JSON text, as the registry takes it (defaults and docs
    /// kept: the registry's compatibility check reads the defaults).
    pub fn text(&self) -> String {
        serde_json::to_string(&self.schema).unwrap_or_else(|_| self.schema.canonical_form())
    }

    /// The named type a reference stands for.
    fn resolve<'a>(&'a self, schema: &'a Schema) -> &'a Schema {
        match schema {
            Schema::Ref { name } => self.names.get(name).unwrap_or(schema),
            other => other,
        }
    }

    /// Decodes `datum` (written with this schema, registry id `id`) and
    /// appends its JSON text to `out`.
    ///
    /// Errors: [`AvroError::BadDatum`] when the bytes do not decode, or
    /// bytes are left after the datum.
    pub fn datum_to_json(&self, id: u32, datum: &[u8], out: &mut Vec<u8>) -> Result<(), AvroError> {
        let bad = |reason: String| AvroError::BadDatum { id, reason };
        let mut reader = datum;
        let value = apache_avro::from_avro_datum(&self.schema, &mut reader, None)
            .map_err(|e| bad(e.to_string()))?;
        if !reader.is_empty() {
            return Err(bad(format!("{} bytes left after the datum", reader.len())));
        }
        let mut text = String::with_capacity(datum.len() * 2);
        self.write_json(&value, &self.schema, &mut text)
            .map_err(bad)?;
        out.extend_from_slice(text.as_bytes());
        Ok(())
    }

    fn write_json(&self, value: &Avro, schema: &Schema, out: &mut String) -> Result<(), String> {
        let schema = self.resolve(schema);
        match value {
            Avro::Null => out.push_str("null"),
            Avro::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
            Avro::Int(i) => write_display(out, i),
            Avro::Long(i) => write_display(out, i),
            Avro::Float(f) => write_float(out, f64::from(*f)),
            Avro::Double(f) => write_float(out, *f),
            Avro::String(s) | Avro::Enum(_, s) => write_string(out, s),
            Avro::Bytes(b) | Avro::Fixed(_, b) => {
                write_string(out, &base64::engine::general_purpose::STANDARD.encode(b))
            }
            Avro::Uuid(u) => write_string(out, &u.to_string()),
            Avro::Union(i, inner) => {
                let branch = match schema {
                    Schema::Union(u) => u.variants().get(*i as usize).unwrap_or(schema),
                    other => other,
                };
                self.write_json(inner, branch, out)?;
            }
            Avro::Array(items) => {
                let item_schema = match schema {
                    Schema::Array(a) => &*a.items,
                    other => other,
                };
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    self.write_json(item, item_schema, out)?;
                }
                out.push(']');
            }
            Avro::Map(members) => {
                let value_schema = match schema {
                    Schema::Map(m) => &*m.types,
                    other => other,
                };
                // A map's order is not part of its value: sorted, so the
                // same map is always the same text.
                let mut keys: Vec<&String> = members.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_string(out, k);
                    out.push(':');
                    if let Some(v) = members.get(k) {
                        self.write_json(v, value_schema, out)?;
                    }
                }
                out.push('}');
            }
            Avro::Record(fields) => {
                let declared: &[RecordField] = match schema {
                    Schema::Record(r) => &r.fields,
                    _ => &[],
                };
                out.push('{');
                for (i, (name, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_string(out, name);
                    out.push(':');
                    let field_schema = declared
                        .iter()
                        .find(|f| f.name == *name)
                        .map_or(&Schema::Null, |f| &f.schema);
                    self.write_json(v, field_schema, out)?;
                }
                out.push('}');
            }
            Avro::Date(days) => {
                let date = epoch_day()
                    .checked_add_signed(chrono::TimeDelta::days(i64::from(*days)))
                    .ok_or_else(|| format!("date {days} is out of range"))?;
                write_string(out, &date.format("%Y-%m-%d").to_string());
            }
            Avro::TimeMillis(ms) => write_time(out, i64::from(*ms) * 1_000, 3)?,
            Avro::TimeMicros(us) => write_time(out, *us, 6)?,
            Avro::TimestampMillis(ms) => {
                write_timestamp(out, i128::from(*ms) * 1_000_000, 3, true)?
            }
            Avro::TimestampMicros(us) => write_timestamp(out, i128::from(*us) * 1_000, 6, true)?,
            Avro::TimestampNanos(ns) => write_timestamp(out, i128::from(*ns), 9, true)?,
            Avro::LocalTimestampMillis(ms) => {
                write_timestamp(out, i128::from(*ms) * 1_000_000, 3, false)?
            }
            Avro::LocalTimestampMicros(us) => {
                write_timestamp(out, i128::from(*us) * 1_000, 6, false)?
            }
            Avro::LocalTimestampNanos(ns) => write_timestamp(out, i128::from(*ns), 9, false)?,
            Avro::Decimal(d) => {
                let scale = match schema {
                    Schema::Decimal(d) => d.scale,
                    _ => 0,
                };
                let bytes = Vec::<u8>::try_from(d).map_err(|e| e.to_string())?;
                out.push_str(&decimal_text(&bytes, scale)?);
            }
            Avro::BigDecimal(d) => out.push_str(&d.to_string()),
            Avro::Duration(d) => {
                let _ = write!(
                    out,
                    "{{\"months\":{},\"days\":{},\"millis\":{}}}",
                    u32::from(d.months()),
                    u32::from(d.days()),
                    u32::from(d.millis())
                );
            }
        }
        Ok(())
    }

    /// Writes the JSON object `row` (an output row) as a datum of this
    /// schema (a record) into `out`.
    ///
    /// Each field takes the row's member of its name; a member the row lacks
    /// takes the field's default, or NULL. A value converts to the field's
    /// type where no digit is lost: an integer to int (in range), long,
    /// float or double; a decimal number to float or double; text to
    /// string, enum (a symbol of it), uuid, date (`YYYY-MM-DD`), timestamps
    /// (RFC 3339, or `YYYY-MM-DD HH:MM:SS[.f]` read as UTC); an object or
    /// array to a record, map or array, or to a string as its JSON text.
    ///
    /// Errors: [`AvroError::DoesNotFit`] naming the field and why (a NULL
    /// in a field without `null` in its type, a value of another kind).
    pub fn json_to_datum(&self, row: &[u8], out: &mut Vec<u8>) -> Result<(), AvroError> {
        let json: serde_json::Value =
            serde_json::from_slice(row).map_err(|e| AvroError::DoesNotFit(e.to_string()))?;
        let value = self
            .to_avro(&json, &self.schema, "")
            .map_err(AvroError::DoesNotFit)?;
        let bytes = apache_avro::to_avro_datum(&self.schema, value)
            .map_err(|e| AvroError::DoesNotFit(e.to_string()))?;
        out.extend_from_slice(&bytes);
        Ok(())
    }

    fn to_avro(
        &self,
        json: &serde_json::Value,
        schema: &Schema,
        path: &str,
    ) -> Result<Avro, String> {
        use serde_json::Value as J;
        let schema = self.resolve(schema);
        let wrong = |what: &str| {
            let field = if path.is_empty() { "the row" } else { path };
            Err(format!(
                "field `{field}` is {}, which does not fit Avro type {what}",
                kind_of(json)
            ))
        };
        Ok(match (schema, json) {
            (Schema::Union(u), _) => {
                let mut last = None;
                for (i, branch) in u.variants().iter().enumerate() {
                    match self.to_avro(json, branch, path) {
                        Ok(v) => return Ok(Avro::Union(i as u32, Box::new(v))),
                        Err(e) => last = Some(e),
                    }
                }
                return Err(last.unwrap_or_else(|| format!("field `{path}`: empty union")));
            }
            (Schema::Null, J::Null) => Avro::Null,
            (_, J::Null) => {
                let field = if path.is_empty() { "the row" } else { path };
                return Err(format!(
                    "field `{field}` is NULL but its Avro type has no null (write [\"null\", ...] in output.schema)"
                ));
            }
            (Schema::Boolean, J::Bool(b)) => Avro::Boolean(*b),
            (Schema::Int, J::Number(n)) => match n.as_i64().and_then(|i| i32::try_from(i).ok()) {
                Some(i) => Avro::Int(i),
                None => return wrong("int"),
            },
            (Schema::Long, J::Number(n)) => match n.as_i64() {
                Some(i) => Avro::Long(i),
                None => return wrong("long"),
            },
            (Schema::Float, J::Number(n)) => match n.as_f64() {
                Some(f) => Avro::Float(f as f32),
                None => return wrong("float"),
            },
            (Schema::Double, J::Number(n)) => match n.as_f64() {
                Some(f) => Avro::Double(f),
                None => return wrong("double"),
            },
            (Schema::String, J::String(s)) => Avro::String(s.clone()),
            (Schema::String, J::Object(_) | J::Array(_)) => Avro::String(json.to_string()),
            (Schema::Bytes, J::String(s)) => Avro::Bytes(s.as_bytes().to_vec()),
            (Schema::Uuid, J::String(s)) => match s.parse() {
                Ok(u) => Avro::Uuid(u),
                Err(_) => return wrong("uuid"),
            },
            (Schema::Enum(e), J::String(s)) => match e.symbols.iter().position(|x| x == s) {
                Some(i) => Avro::Enum(i as u32, s.clone()),
                None => {
                    return wrong(&format!(
                        "enum {} (symbols {})",
                        e.name,
                        e.symbols.join(", ")
                    ))
                }
            },
            (Schema::Date, J::String(s)) => {
                match chrono::NaiveDate::parse_from_str(s.get(..10).unwrap_or(s), "%Y-%m-%d") {
                    Ok(d) => Avro::Date((d - epoch_day()).num_days() as i32),
                    Err(_) => return wrong("date"),
                }
            }
            (Schema::TimestampMillis | Schema::LocalTimestampMillis, J::String(s)) => {
                match parse_instant_micros(s) {
                    Some(us) if matches!(schema, Schema::TimestampMillis) => {
                        Avro::TimestampMillis(us.div_euclid(1_000))
                    }
                    Some(us) => Avro::LocalTimestampMillis(us.div_euclid(1_000)),
                    None => return wrong("timestamp-millis"),
                }
            }
            (Schema::TimestampMicros | Schema::LocalTimestampMicros, J::String(s)) => {
                match parse_instant_micros(s) {
                    Some(us) if matches!(schema, Schema::TimestampMicros) => {
                        Avro::TimestampMicros(us)
                    }
                    Some(us) => Avro::LocalTimestampMicros(us),
                    None => return wrong("timestamp-micros"),
                }
            }
            (Schema::TimestampMillis, J::Number(n)) => match n.as_i64() {
                Some(i) => Avro::TimestampMillis(i),
                None => return wrong("timestamp-millis"),
            },
            (Schema::TimestampMicros, J::Number(n)) => match n.as_i64() {
                Some(i) => Avro::TimestampMicros(i),
                None => return wrong("timestamp-micros"),
            },
            (Schema::Decimal(d), J::Number(n)) => match scaled(&n.to_string(), d.scale) {
                Some(unscaled) => {
                    Avro::Decimal(apache_avro::Decimal::from(minimal_be_bytes(unscaled)))
                }
                None => return wrong(&format!("decimal with scale {}", d.scale)),
            },
            (Schema::Array(a), J::Array(items)) => Avro::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| self.to_avro(v, &a.items, &format!("{path}[{}]", i + 1)))
                    .collect::<Result<_, _>>()?,
            ),
            (Schema::Map(m), J::Object(members)) => Avro::Map(
                members
                    .iter()
                    .map(|(k, v)| {
                        Ok((
                            k.clone(),
                            self.to_avro(v, &m.types, &format!("{path}['{k}']"))?,
                        ))
                    })
                    .collect::<Result<_, String>>()?,
            ),
            (Schema::Record(r), J::Object(members)) => Avro::Record(
                r.fields
                    .iter()
                    .map(|f| {
                        let at = if path.is_empty() {
                            f.name.clone()
                        } else {
                            format!("{path}.{}", f.name)
                        };
                        let v = match (members.get(&f.name), &f.default) {
                            (Some(v), _) => self.to_avro(v, &f.schema, &at)?,
                            (None, Some(default)) => self.to_avro(default, &f.schema, &at)?,
                            (None, None) => self.to_avro(&J::Null, &f.schema, &at)?,
                        };
                        Ok((f.name.clone(), v))
                    })
                    .collect::<Result<_, String>>()?,
            ),
            (Schema::Null, _) => return wrong("null"),
            (Schema::Boolean, _) => return wrong("boolean"),
            (Schema::Int, _) => return wrong("int"),
            (Schema::Long, _) => return wrong("long"),
            (Schema::Float | Schema::Double, _) => return wrong("float or double"),
            (Schema::String | Schema::Bytes | Schema::Uuid | Schema::Enum(_), _) => {
                return wrong("string")
            }
            (Schema::Array(_), _) => return wrong("array"),
            (Schema::Map(_) | Schema::Record(_), _) => return wrong("record or map"),
            (other, _) => return wrong(&format!("{other:?}")),
        })
    }
}

fn kind_of(json: &serde_json::Value) -> &'static str {
    use serde_json::Value as J;
    match json {
        J::Null => "NULL",
        J::Bool(_) => "a boolean",
        J::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        J::Number(_) => "a decimal number",
        J::String(_) => "text",
        J::Array(_) => "an array",
        J::Object(_) => "an object",
    }
}

fn write_display(out: &mut String, v: &impl std::fmt::Display) {
    let _ = write!(out, "{v}");
}

fn write_float(out: &mut String, f: f64) {
    if f.is_finite() {
        match serde_json::to_string(&f) {
            Ok(text) => out.push_str(&text),
            Err(_) => out.push_str("null"),
        }
    } else if f.is_nan() {
        out.push_str("\"NaN\"");
    } else if f > 0.0 {
        out.push_str("\"Infinity\"");
    } else {
        out.push_str("\"-Infinity\"");
    }
}

fn write_string(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(text) => out.push_str(&text),
        Err(_) => out.push_str("null"),
    }
}

fn write_time(out: &mut String, micros: i64, digits: usize) -> Result<(), String> {
    let secs = micros.div_euclid(1_000_000);
    let nanos = (micros.rem_euclid(1_000_000) * 1_000) as u32;
    let t = chrono::NaiveTime::from_num_seconds_from_midnight_opt(secs as u32, nanos)
        .ok_or_else(|| format!("time of day {micros} µs is out of range"))?;
    let text = t.format("%H:%M:%S%.f").to_string();
    write_string(out, &with_digits(&text, digits));
    Ok(())
}

fn write_timestamp(out: &mut String, nanos: i128, digits: usize, utc: bool) -> Result<(), String> {
    let secs = nanos.div_euclid(1_000_000_000);
    let sub = nanos.rem_euclid(1_000_000_000) as u32;
    let at = i64::try_from(secs)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, sub))
        .ok_or_else(|| format!("timestamp {nanos} ns is out of range"))?;
    let text = at.naive_utc().format("%Y-%m-%dT%H:%M:%S%.f").to_string();
    let mut text = with_digits(&text, digits);
    if utc {
        text.push('Z');
    }
    write_string(out, &text);
    Ok(())
}

/// `12:00:00.5` with 3 digits is `12:00:00.500`; `12:00:00` gets `.000`.
fn with_digits(text: &str, digits: usize) -> String {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let mut fraction = fraction.to_string();
    fraction.truncate(digits);
    while fraction.len() < digits {
        fraction.push('0');
    }
    format!("{whole}.{fraction}")
}

/// The text of a decimal whose unscaled value is the big-endian two's
/// complement `bytes`, with `scale` digits after the point.
fn decimal_text(bytes: &[u8], scale: usize) -> Result<String, String> {
    if bytes.len() > 16 {
        return Err(format!(
            "decimal of {} bytes is wider than 38 digits",
            bytes.len()
        ));
    }
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut full = [if negative { 0xff } else { 0 }; 16];
    full[16 - bytes.len()..].copy_from_slice(bytes);
    let unscaled = i128::from_be_bytes(full);
    let digits = unscaled.unsigned_abs().to_string();
    let sign = if unscaled < 0 { "-" } else { "" };
    if scale == 0 {
        return Ok(format!("{sign}{digits}"));
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    Ok(format!("{sign}{int}.{frac}"))
}

/// The unscaled value of decimal text `text` at `scale`, when no digit is lost.
fn scaled(text: &str, scale: usize) -> Option<i128> {
    let (negative, text) = match text.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, text),
    };
    if text.contains(['e', 'E']) {
        return None;
    }
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let frac = frac.trim_end_matches('0');
    if frac.len() > scale {
        return None;
    }
    let digits = format!("{int}{frac:0<scale$}");
    let v: i128 = digits.parse().ok()?;
    Some(if negative { -v } else { v })
}

fn minimal_be_bytes(v: i128) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let mut start = 0;
    while start < 15 {
        let (b, next) = (bytes[start], bytes[start + 1]);
        if (b == 0 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    bytes[start..].to_vec()
}

/// Microseconds since the epoch of RFC 3339 text, or of
/// `YYYY-MM-DD[ T]HH:MM:SS[.f]` without an offset read as UTC (DuckDB's
/// TIMESTAMP text).
fn parse_instant_micros(s: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, format) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    None
}

/// An Avro name from an output column or pipeline name: letters, digits and
/// `_`, not starting with a digit (Avro's rule for names).
pub fn is_avro_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The namespace of derived output schemas.
pub const DERIVED_NAMESPACE: &str = "kaflowsql";

/// A record schema whose fields are `fields` (name, Avro type as JSON),
/// each nullable with default null: the output schema derived from the
/// SELECT when the pipeline gives none.
pub fn derived_record(
    name: &str,
    fields: &[(String, serde_json::Value)],
) -> Result<AvroSchema, AvroError> {
    let fields: Vec<serde_json::Value> = fields
        .iter()
        .map(|(n, t)| {
            let ty = if *t == serde_json::Value::String("null".into()) {
                t.clone()
            } else {
                serde_json::json!(["null", t])
            };
            serde_json::json!({ "name": n, "type": ty, "default": null })
        })
        .collect();
    let schema = serde_json::json!({
        "type": "record",
        "name": name,
        "namespace": DERIVED_NAMESPACE,
        "fields": fields,
    });
    AvroSchema::parse(&schema.to_string())
}

/// The Avro type (as schema JSON) of a result column of DuckDB type `dt`,
/// for a derived output schema: BOOLEAN boolean, TINYINT to INTEGER int,
/// BIGINT long, FLOAT float, DOUBLE double, DECIMAL(p,s) bytes with the
/// decimal logical type, DATE int date, TIMESTAMP long timestamp-micros
/// (DuckDB keeps microseconds), NULL null, text, JSON and anything else
/// string (nested values as their JSON text).
pub fn avro_type_of(dt: &duckdb::arrow::datatypes::DataType) -> serde_json::Value {
    use duckdb::arrow::datatypes::DataType as D;
    use serde_json::json;
    match dt {
        D::Null => json!("null"),
        D::Boolean => json!("boolean"),
        D::Int8 | D::Int16 | D::Int32 | D::UInt8 | D::UInt16 => json!("int"),
        D::Int64 | D::UInt32 | D::UInt64 => json!("long"),
        D::Float16 | D::Float32 => json!("float"),
        D::Float64 => json!("double"),
        D::Decimal128(p, s) | D::Decimal256(p, s) => json!({
            "type": "bytes", "logicalType": "decimal", "precision": p, "scale": (*s).max(0)
        }),
        D::Date32 | D::Date64 => json!({"type": "int", "logicalType": "date"}),
        D::Timestamp(..) => json!({"type": "long", "logicalType": "timestamp-micros"}),
        _ => json!("string"),
    }
}

/// Whether a column of DuckDB type `dt` can be written to a field of Avro
/// type `schema` without losing a digit (NULLs are checked per row).
pub fn fits(dt: &duckdb::arrow::datatypes::DataType, schema: &Schema) -> bool {
    use duckdb::arrow::datatypes::DataType as D;
    match schema {
        Schema::Union(u) => return u.variants().iter().any(|v| fits(dt, v)),
        Schema::Ref { .. } => return true,
        _ => {}
    }
    match dt {
        D::Null => true,
        D::Boolean => matches!(schema, Schema::Boolean),
        D::Int8 | D::Int16 | D::Int32 | D::UInt8 | D::UInt16 => matches!(
            schema,
            Schema::Int | Schema::Long | Schema::Float | Schema::Double | Schema::Decimal(_)
        ),
        D::Int64 | D::UInt32 | D::UInt64 => matches!(
            schema,
            Schema::Long
                | Schema::Float
                | Schema::Double
                | Schema::Decimal(_)
                | Schema::TimestampMillis
                | Schema::TimestampMicros
        ),
        D::Float16 | D::Float32 | D::Float64 => matches!(schema, Schema::Float | Schema::Double),
        D::Decimal128(..) | D::Decimal256(..) => {
            matches!(schema, Schema::Float | Schema::Double | Schema::Decimal(_))
        }
        D::Date32 | D::Date64 => matches!(schema, Schema::Date | Schema::String),
        D::Timestamp(..) => matches!(
            schema,
            Schema::TimestampMillis
                | Schema::TimestampMicros
                | Schema::LocalTimestampMillis
                | Schema::LocalTimestampMicros
                | Schema::String
        ),
        D::Utf8 | D::LargeUtf8 | D::Utf8View => matches!(
            schema,
            Schema::String
                | Schema::Bytes
                | Schema::Enum(_)
                | Schema::Uuid
                | Schema::Date
                | Schema::TimestampMillis
                | Schema::TimestampMicros
                | Schema::LocalTimestampMillis
                | Schema::LocalTimestampMicros
                | Schema::Record(_)
                | Schema::Map(_)
                | Schema::Array(_)
        ),
        _ => matches!(
            schema,
            Schema::String | Schema::Record(_) | Schema::Map(_) | Schema::Array(_)
        ),
    }
}

/// The Avro type of `schema` in a message: `["null","string"]`, `long`.
pub fn type_text(schema: &Schema) -> String {
    serde_json::to_string(schema).unwrap_or_else(|_| format!("{schema:?}"))
}

/// The record name of a schema derived for pipeline `pipeline`: its name
/// with every character that is not a letter or digit as `_` (a leading
/// digit gets a `_` before it).
pub fn record_name_of(pipeline: &str) -> String {
    let name: String = pipeline
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{name}")
    } else {
        name
    }
}

/// The column type each top-level field of a writer schema (a record) is
/// read as: int and long BIGINT; float, double and decimal DOUBLE; boolean
/// BOOLEAN; record, array and map JSON; every other type (string, enum,
/// uuid, bytes, fixed, dates, times, timestamps) VARCHAR, as the decoder
/// sees the JSON text of a datum ([`AvroSchema::datum_to_json`]). `["null",
/// T]` is T's; a union of several types has none (left out).
pub fn column_types(schema: &AvroSchema) -> Vec<(String, super::ColumnType)> {
    use super::ColumnType as C;
    fn of(schema: &AvroSchema, s: &Schema) -> Option<C> {
        Some(match schema.resolve(s) {
            Schema::Union(u) => {
                let branches: Vec<&Schema> = u
                    .variants()
                    .iter()
                    .filter(|v| !matches!(v, Schema::Null))
                    .collect();
                match branches.as_slice() {
                    [one] => return of(schema, one),
                    _ => return None,
                }
            }
            Schema::Int | Schema::Long => C::BigInt,
            Schema::Float | Schema::Double | Schema::Decimal(_) | Schema::BigDecimal => C::Double,
            Schema::Boolean => C::Boolean,
            Schema::Record(_) | Schema::Array(_) | Schema::Map(_) | Schema::Duration => C::Json,
            Schema::Null => return None,
            _ => C::Varchar,
        })
    }
    match schema.schema() {
        Schema::Record(r) => r
            .fields
            .iter()
            .filter_map(|f| Some((f.name.clone(), of(schema, &f.schema)?)))
            .collect(),
        _ => Vec::new(),
    }
}

/// The record name of a schema, for messages.
pub fn record_name(schema: &Schema) -> Option<String> {
    match schema {
        Schema::Record(r) => Some(r.name.fullname(None::<String> as Namespace)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(text: &str) -> AvroSchema {
        match AvroSchema::parse(text) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    fn json_of(s: &AvroSchema, value: Avro) -> String {
        let datum = match apache_avro::to_avro_datum(s.schema(), value) {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let mut out = Vec::new();
        if let Err(e) = s.datum_to_json(1, &datum, &mut out) {
            panic!("{e}");
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn frames_round_trip_and_bad_frames_are_named() {
        let mut out = Vec::new();
        frame(258, &mut out);
        out.push(42);
        assert_eq!(unframe(&out), Ok((258, &[42u8][..])));
        assert!(
            matches!(unframe(b"{\"a\":1}"), Err(AvroError::NotFramed(m)) if m.contains("0x7b"))
        );
        assert!(
            matches!(unframe(&[0, 0, 1]), Err(AvroError::NotFramed(m)) if m.contains("3 bytes"))
        );
    }

    #[test]
    fn records_become_json_in_field_order_with_logical_types_as_text() {
        let s = schema(
            r#"{"type":"record","name":"Order","fields":[
              {"name":"id","type":"long"},
              {"name":"note","type":["null","string"]},
              {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
              {"name":"day","type":{"type":"int","logicalType":"date"}},
              {"name":"price","type":{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}},
              {"name":"kind","type":{"type":"enum","name":"Kind","symbols":["A","B"]}},
              {"name":"tags","type":{"type":"array","items":"string"}},
              {"name":"ship","type":{"type":"record","name":"Ship","fields":[{"name":"city","type":"string"}]}},
              {"name":"back","type":["null","Ship"]}
            ]}"#,
        );
        let ship = Avro::Record(vec![("city".into(), Avro::String("Oslo".into()))]);
        let value = Avro::Record(vec![
            ("id".into(), Avro::Long(7)),
            ("note".into(), Avro::Union(0, Box::new(Avro::Null))),
            ("at".into(), Avro::TimestampMillis(1_764_482_060_123)),
            ("day".into(), Avro::Date(20_422)),
            (
                "price".into(),
                Avro::Decimal(apache_avro::Decimal::from(minimal_be_bytes(-12_345))),
            ),
            ("kind".into(), Avro::Enum(1, "B".into())),
            ("tags".into(), Avro::Array(vec![Avro::String("x".into())])),
            ("ship".into(), ship.clone()),
            ("back".into(), Avro::Union(1, Box::new(ship))),
        ]);
        assert_eq!(
            json_of(&s, value),
            r#"{"id":7,"note":null,"at":"2025-11-30T05:54:20.123Z","day":"2025-11-30","price":-123.45,"kind":"B","tags":["x"],"ship":{"city":"Oslo"},"back":{"city":"Oslo"}}"#
        );
    }

    #[test]
    fn trailing_bytes_and_short_datums_are_bad() {
        let s = schema(r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"}]}"#);
        let mut out = Vec::new();
        assert!(matches!(
            s.datum_to_json(9, &[2, 2], &mut out),
            Err(AvroError::BadDatum { id: 9, .. })
        ));
        assert!(s.datum_to_json(9, &[], &mut out).is_err());
    }

    #[test]
    fn rows_are_written_by_the_schema_with_nulls_and_conversions() {
        let s = schema(
            r#"{"type":"record","name":"Out","fields":[
              {"name":"user_id","type":"string"},
              {"name":"amount","type":["null","double"],"default":null},
              {"name":"n","type":"int"},
              {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
              {"name":"price","type":{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}},
              {"name":"payload","type":"string"}
            ]}"#,
        );
        let mut out = Vec::new();
        let row = br#"{"user_id":"u1","amount":2,"n":3,"at":"2025-11-30 05:54:20.123","price":1.5,"payload":{"a":[1]}}"#;
        if let Err(e) = s.json_to_datum(row, &mut out) {
            panic!("{e}");
        }
        let mut back = Vec::new();
        if let Err(e) = s.datum_to_json(1, &out, &mut back) {
            panic!("{e}");
        }
        assert_eq!(
            String::from_utf8_lossy(&back),
            r#"{"user_id":"u1","amount":2.0,"n":3,"at":"2025-11-30T05:54:20.123Z","price":1.50,"payload":"{\"a\":[1]}"}"#
        );
        let missing = s.json_to_datum(
            br#"{"user_id":null,"n":1,"at":1,"price":1,"payload":"x"}"#,
            &mut out,
        );
        assert!(
            matches!(missing, Err(AvroError::DoesNotFit(m)) if m.contains("`user_id` is NULL")),
        );
        let wide = s.json_to_datum(
            br#"{"user_id":"u","n":3000000000,"at":1,"price":1,"payload":"x"}"#,
            &mut out,
        );
        assert!(matches!(wide, Err(AvroError::DoesNotFit(m)) if m.contains("`n` is an integer")));
        let lossy = s.json_to_datum(
            br#"{"user_id":"u","n":1,"at":1,"price":1.005,"payload":"x"}"#,
            &mut out,
        );
        assert!(matches!(lossy, Err(AvroError::DoesNotFit(m)) if m.contains("`price`")));
    }

    #[test]
    fn writer_schemas_give_column_types() {
        use crate::codec::ColumnType as C;
        let s = schema(
            r#"{"type":"record","name":"R","fields":[
              {"name":"a","type":"int"},{"name":"b","type":["null","double"]},
              {"name":"c","type":{"type":"long","logicalType":"timestamp-millis"}},
              {"name":"d","type":{"type":"array","items":"string"}},
              {"name":"e","type":["string","long"]},{"name":"f","type":"boolean"}]}"#,
        );
        assert_eq!(
            column_types(&s),
            vec![
                ("a".to_string(), C::BigInt),
                ("b".to_string(), C::Double),
                ("c".to_string(), C::Varchar),
                ("d".to_string(), C::Json),
                ("f".to_string(), C::Boolean),
            ]
        );
        assert_eq!(record_name_of("1-my.pipe"), "_1_my_pipe");
    }

    #[test]
    fn decimals_keep_every_digit() {
        for (v, scale, text) in [
            (0, 2, "0.00"),
            (5, 3, "0.005"),
            (-5, 1, "-0.5"),
            (120, 0, "120"),
        ] {
            assert_eq!(
                decimal_text(&minimal_be_bytes(v), scale).as_deref(),
                Ok(text)
            );
            assert_eq!(scaled(text, scale), Some(v));
        }
        assert_eq!(scaled("1.234", 2), None);
    }

    #[test]
    fn derived_schemas_are_nullable_records() {
        let s = match derived_record(
            "out",
            &[
                ("a".into(), serde_json::json!("long")),
                ("z".into(), serde_json::json!("null")),
            ],
        ) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            s.text(),
            r#"{"type":"record","namespace":"kaflowsql","name":"out","fields":[{"name":"a","type":["null","long"],"default":null},{"name":"z","type":"null","default":null}]}"#
        );
        assert!(is_avro_name("user_id") && !is_avro_name("1a") && !is_avro_name("a-b"));
    }
}
