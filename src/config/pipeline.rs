//! A pipeline file: raw YAML keys, then the validated [`Pipeline`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{read, yaml_diagnostic, ConfigError, Diagnostics, HumanDuration, Locations};
use crate::codec::ColumnType;
use crate::sql::QueryPlan;

mod validate;
use validate::Validator;

/// TTL of event streams when neither `state.events.default_ttl` nor `window` is set.
pub const fn default_ttl_ms() -> i64 {
    3_600_000
}

/// How far past the wall clock a record's event time may be when
/// `state.events.max_ahead` is not set: an hour absorbs producers' clock skew,
/// and a record from the far future (a bad clock, a parse of the wrong field)
/// goes to the dead letters instead of moving the watermark for good.
pub const fn default_max_ahead_ms() -> i64 {
    3_600_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    /// Unique name; the default consumer group and DLQ prefix.
    name: String,
    /// Default retention of event streams (KaflowSQL's key).
    #[serde(default)]
    window: Option<HumanDuration>,
    /// The SQL.
    query: String,
    /// Where results go.
    output: RawOutput,
    /// When rows are emitted.
    #[serde(default)]
    emission: RawEmission,
    /// TTLs and dimensions.
    #[serde(default)]
    state: RawState,
    /// (new) Per-topic declarations: types and event-time column.
    #[serde(default)]
    sources: BTreeMap<String, RawSource>,
    /// (new) Consumer group id; defaults to `name`.
    #[serde(default)]
    consumer_group: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    topic: String,
    #[serde(default)]
    format: OutputFormat,
    #[serde(default)]
    key: Option<String>,
    /// (new) Dead-letter topic; defaults to `<name>.dlq`.
    #[serde(default)]
    dlq_topic: Option<String>,
    /// KaflowSQL's inline Avro schema of the output value.
    #[serde(default)]
    schema: Option<RawSchema>,
}

/// KaflowSQL's inline `output.schema`: an Avro record, the output value's
/// writer schema. Its fields are checked against the SELECT's columns
/// (names, and types where they are known before data).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchema {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    doc: Option<String>,
    fields: Vec<RawSchemaField>,
}

/// One field of an inline schema: `{name, type}` (type an Avro type:
/// `string`, `long`, `["null", "string"]`, ...), with an optional default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchemaField {
    name: String,
    #[serde(rename = "type")]
    kind: serde_yaml_ng::Value,
    /// `default: null` is a default (of NULL), not an absent one.
    #[serde(default, deserialize_with = "present")]
    default: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    doc: Option<String>,
}

/// A key that is present, whatever its value (`null` included).
fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<serde_yaml_ng::Value>, D::Error> {
    serde_yaml_ng::Value::deserialize(d).map(Some)
}

impl RawSchema {
    /// The schema as Avro's JSON.
    fn to_json(&self) -> Result<serde_json::Value, String> {
        let mut fields = Vec::new();
        for f in &self.fields {
            let mut field = serde_json::Map::new();
            field.insert("name".into(), f.name.clone().into());
            field.insert(
                "type".into(),
                serde_json::to_value(&f.kind).map_err(|e| e.to_string())?,
            );
            if let Some(d) = &f.default {
                field.insert(
                    "default".into(),
                    serde_json::to_value(d).map_err(|e| e.to_string())?,
                );
            }
            if let Some(doc) = &f.doc {
                field.insert("doc".into(), doc.clone().into());
            }
            fields.push(serde_json::Value::Object(field));
        }
        let mut schema = serde_json::Map::new();
        schema.insert("type".into(), "record".into());
        schema.insert("name".into(), self.name.clone().into());
        if let Some(ns) = &self.namespace {
            schema.insert("namespace".into(), ns.clone().into());
        }
        if let Some(doc) = &self.doc {
            schema.insert("doc".into(), doc.clone().into());
        }
        schema.insert("fields".into(), fields.into());
        Ok(serde_json::Value::Object(schema))
    }
}

/// How output values are written.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// A JSON object per row.
    #[default]
    Json,
    /// Avro in Confluent's wire format, its schema registered in the
    /// schema registry (`output.schema`, else derived from the SELECT).
    Avro,
}

/// How a source's record values are read (`sources.<topic>.format`).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    /// A JSON object per record.
    Json,
    /// Avro in Confluent's wire format, decoded with the writer schema the
    /// record's schema id names in the schema registry.
    Avro,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum EmissionKind {
    #[default]
    Immediate,
    Smart,
}

/// What smart emission does when a held event times out.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    /// Drop it (counted).
    #[default]
    Drop,
    /// Emit it with NULLs where data is missing (counted).
    Emit,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmission {
    #[serde(rename = "type", default)]
    kind: EmissionKind,
    #[serde(default)]
    require: Vec<String>,
    #[serde(default)]
    timeout: Option<HumanDuration>,
    #[serde(default)]
    on_timeout: Option<OnTimeout>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    #[serde(default)]
    events: RawEvents,
    #[serde(default)]
    dimensions: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    #[serde(default)]
    default_ttl: Option<HumanDuration>,
    /// (new) How far past the wall clock a record's event time may be.
    #[serde(default)]
    max_ahead: Option<HumanDuration>,
    #[serde(default)]
    overrides: BTreeMap<String, HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    /// Column holding event time (epoch ms or RFC 3339); default: the Kafka timestamp.
    #[serde(default)]
    timestamp: Option<String>,
    /// Declared column types, in their order (`alias.*` lists them so);
    /// undeclared columns are inferred.
    #[serde(default)]
    columns: indexmap::IndexMap<String, String>,
    /// `json` or `avro`; default: `avro` when the global config says
    /// `kafka.useAvro: true`, else `json`.
    #[serde(default)]
    format: Option<SourceFormat>,
}

/// Where and how results are written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// Output topic.
    pub topic: String,
    /// Value format.
    pub format: OutputFormat,
    /// Output column whose value becomes the Kafka key.
    pub key: Option<usize>,
    /// Else, the name of a field that an `alias.*` over a source without
    /// declared columns brings (known only per record): the key is its value.
    pub key_field: Option<String>,
    /// Dead-letter topic.
    pub dlq_topic: String,
    /// With `format: avro`, the output value's Avro schema as JSON text:
    /// `output.schema`, else derived from the SELECT's types.
    pub avro_schema: Option<String>,
    /// With `format: avro` and no `output.schema`, the Avro sources whose
    /// column types the derived schema needs from the registry (the latest
    /// schema of `<topic>-value`, read at start); then `avro_schema` is None
    /// until the run derives it.
    pub avro_types_from: Vec<String>,
}

/// What the global config gives every pipeline it runs.
#[derive(Clone, Copy, Debug)]
pub struct PipelineDefaults {
    /// TTL of event streams that set none (`state.ttl`), in milliseconds.
    pub ttl_ms: i64,
    /// Sources are Avro unless they say otherwise (`kafka.useAvro`).
    pub use_avro: bool,
}

impl Default for PipelineDefaults {
    fn default() -> Self {
        Self {
            ttl_ms: default_ttl_ms(),
            use_avro: false,
        }
    }
}

/// When rows are emitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Emission {
    /// At once, with what state holds.
    Immediate,
    /// Held until the required output columns are non-NULL.
    Smart {
        /// Indices of required output columns.
        require: Vec<usize>,
        /// How long to wait, in event-time milliseconds.
        timeout_ms: i64,
        /// What to do then.
        on_timeout: OnTimeout,
    },
}

/// Declarations for one topic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceSpec {
    /// Event-time column.
    pub timestamp: Option<String>,
    /// Declared types.
    pub columns: Vec<(String, ColumnType)>,
    /// `sources.<topic>.format`, when the pipeline says it.
    pub format: Option<SourceFormat>,
}

/// A validated pipeline.
#[derive(Clone, Debug)]
pub struct Pipeline {
    /// The file it came from.
    pub file: PathBuf,
    /// Its name.
    pub name: String,
    /// Consumer group id.
    pub consumer_group: String,
    /// The SQL text.
    pub query: String,
    /// The planned query.
    pub plan: QueryPlan,
    /// Output settings.
    pub output: Output,
    /// Emission mode.
    pub emission: Emission,
    /// TTL in milliseconds per topic read (None: never expires).
    pub ttl_ms: BTreeMap<String, Option<i64>>,
    /// Declarations per topic.
    pub sources: BTreeMap<String, SourceSpec>,
    /// How far past the wall clock an event-stream record's time may be, in
    /// milliseconds (`state.events.max_ahead`); later records are dead letters.
    pub max_ahead_ms: i64,
}

impl Pipeline {
    /// Loads and validates a pipeline file.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = read(file)?;
        Self::parse(file, &text)
    }

    /// Loads a pipeline file whose event streams default to a TTL of
    /// `default_ttl_ms` when it sets none (the global config's `state.ttl`).
    pub fn load_with_default_ttl(file: &Path, default_ttl_ms: i64) -> Result<Self, ConfigError> {
        Self::load_with_defaults(
            file,
            PipelineDefaults {
                ttl_ms: default_ttl_ms,
                use_avro: false,
            },
        )
    }

    /// Loads a pipeline file with what the global config gives it.
    pub fn load_with_defaults(
        file: &Path,
        defaults: PipelineDefaults,
    ) -> Result<Self, ConfigError> {
        let text = read(file)?;
        Self::parse_with_defaults(file, &text, defaults)
    }

    /// Validates pipeline `text` read from `file`, after `${VAR}` and
    /// `${VAR:-default}` are expanded from the environment.
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::parse_with_default_ttl(file, text, default_ttl_ms())
    }

    /// [`Pipeline::parse`] with event streams defaulting to `default_ttl_ms`.
    pub fn parse_with_default_ttl(
        file: &Path,
        text: &str,
        default_ttl_ms: i64,
    ) -> Result<Self, ConfigError> {
        Self::parse_with_defaults(
            file,
            text,
            PipelineDefaults {
                ttl_ms: default_ttl_ms,
                use_avro: false,
            },
        )
    }

    /// [`Pipeline::parse`] with what the global config gives it.
    pub fn parse_with_defaults(
        file: &Path,
        text: &str,
        defaults: PipelineDefaults,
    ) -> Result<Self, ConfigError> {
        let text = &super::env::expand(file, text, &|k| std::env::var(k).ok())
            .map_err(|d| ConfigError::Invalid(Diagnostics(d)))?;
        let raw: RawPipeline = serde_yaml_ng::from_str(text)
            .map_err(|e| ConfigError::Invalid(Diagnostics(vec![yaml_diagnostic(file, &e)])))?;
        let locations = Locations::of(text);
        Validator {
            file,
            text,
            locations: &locations,
            problems: Diagnostics::default(),
            default_ttl_ms: defaults.ttl_ms,
            use_avro: defaults.use_avro,
        }
        .validate(raw)
    }

    /// How the values of `topic` are read: its `sources.<topic>.format`,
    /// else Avro when `use_avro` (the global `kafka.useAvro`), else JSON.
    pub fn format_of(&self, topic: &str, use_avro: bool) -> SourceFormat {
        match self.sources.get(topic).and_then(|s| s.format) {
            Some(f) => f,
            None if use_avro => SourceFormat::Avro,
            None => SourceFormat::Json,
        }
    }

    /// Whether anything of this pipeline goes through the schema registry.
    pub fn uses_registry(&self, use_avro: bool) -> bool {
        self.output.format == OutputFormat::Avro
            || self
                .plan
                .sources
                .iter()
                .any(|s| self.format_of(&s.topic, use_avro) == SourceFormat::Avro)
    }

    /// The TTL of a topic in milliseconds (None: never expires).
    pub fn ttl_of(&self, topic: &str) -> Option<i64> {
        self.ttl_ms.get(topic).copied().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Diagnostic;

    const SPEC: &str = r#"name: enriched_user_events          # unique; also the default consumer group id
window: 1h
query: |
  SELECT e.user_id, e.event_type, e.ts, p.plan, p.country, t.amount
  FROM user_events e
  LEFT JOIN user_profiles p ON e.user_id = p.user_id
  LEFT JOIN transactions t ON e.user_id = t.user_id
  WHERE e.event_type <> 'heartbeat'
output:
  topic: enriched_user_events
  format: json
  key: user_id
emission:
  type: smart
  require: [plan, user_id]
  timeout: 30s
  on_timeout: drop
state:
  events:
    default_ttl: 5m
    overrides:
      transactions: 2m
  dimensions:
    - user_profiles
"#;

    fn problems(text: &str) -> Vec<Diagnostic> {
        match Pipeline::parse(Path::new("p.yaml"), text) {
            Err(ConfigError::Invalid(d)) => d.0,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn loads_the_spec_example_unchanged() {
        let p = Pipeline::parse(Path::new("p.yaml"), SPEC).unwrap();
        assert_eq!(p.name, "enriched_user_events");
        assert_eq!(p.consumer_group, "enriched_user_events");
        assert_eq!(p.output.key, Some(0));
        assert_eq!(p.output.dlq_topic, "enriched_user_events.dlq");
        assert_eq!(
            p.emission,
            Emission::Smart {
                require: vec![3, 0],
                timeout_ms: 30_000,
                on_timeout: OnTimeout::Drop
            }
        );
        assert_eq!(p.ttl_of("user_events"), Some(300_000));
        assert_eq!(p.ttl_of("transactions"), Some(120_000));
        assert_eq!(p.ttl_of("user_profiles"), None);
    }

    #[test]
    fn unknown_keys_name_line_column_and_what_is_allowed() {
        let text = SPEC.replace("  format: json", "  formt: json");
        let d = &problems(&text)[0];
        assert_eq!(d.position.line, 11);
        assert!(d.message.contains("unknown field `formt`"), "{d}");
        assert!(d.message.contains("`format`"), "{d}");
    }

    #[test]
    fn wrong_types_and_bad_durations_are_located() {
        let d = &problems(&SPEC.replace("timeout: 30s", "timeout: 30"))[0];
        assert_eq!(d.position.line, 16);
        assert!(d.message.contains("no unit"), "{d}");
    }

    #[test]
    fn checks_names_against_the_query_all_at_once() {
        let text = SPEC
            .replace("key: user_id", "key: uid")
            .replace("require: [plan, user_id]", "require: [plan, tier]")
            .replace("transactions: 2m", "payments: 2m");
        let all = problems(&text);
        assert_eq!(all.len(), 3, "{all:?}");
        assert_eq!((all[0].position.line, all[0].position.column), (12, 8));
        assert!(all[0].message.contains("output.key `uid`"));
        assert!(all[0]
            .help
            .as_ref()
            .unwrap()
            .contains("user_id, event_type"));
        assert_eq!((all[1].position.line, all[1].position.column), (15, 19));
        assert_eq!(all[2].position.line, 22);
        assert!(all[2].message.contains("`payments`"));
    }

    #[test]
    fn sql_errors_point_into_the_file() {
        let text = SPEC.replace("LEFT JOIN transactions", "FULL JOIN transactions");
        let d = &problems(&text)[0];
        assert!(d.message.contains("FULL JOIN"), "{d}");
        assert_eq!(d.position.line, 7, "{d}");
        assert_eq!(
            d.to_string().lines().next().unwrap(),
            format!(
                "p.yaml:7:{}: error: query: FULL JOIN is not supported yet",
                d.position.column
            )
        );
    }

    #[test]
    fn smart_needs_require_and_immediate_refuses_it() {
        let text = SPEC.replace("  require: [plan, user_id]\n", "");
        assert!(problems(&text)[0].message.contains("require is empty"));
        let text = SPEC.replace("type: smart", "type: immediate");
        assert!(problems(&text)[0].message.contains("`immediate`"));
    }

    /// KaflowSQL's pipeline shape: an inline Avro `output.schema` is read
    /// and its fields checked against the SELECT, `${VAR:-default}` expands;
    /// Avro output itself is refused until it is built (issue #17).
    #[test]
    fn kaflowsql_output_schema_is_checked_against_the_select() {
        let text = "name: p\nquery: |\n  SELECT e.user_id, e.amount FROM ${SRC_TOPIC:-events} e\noutput:\n  topic: out\n  format: json\n  schema:\n    name: Enriched\n    fields:\n      - { name: user_id, type: string }\n      - { name: amount, type: [\"null\", \"double\"], default: null }\n      - { name: plan, type: string }\n";
        let d = problems(text);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d[0].message.contains("`plan`, which is not a column"),
            "{}",
            d[0]
        );
        assert_eq!(d[0].position.line, 12);
        let ok = text.replace("      - { name: plan, type: string }\n", "");
        let p = Pipeline::parse(Path::new("p.yaml"), &ok).unwrap();
        assert_eq!(p.plan.sources[0].topic, "events");
        let avro = ok.replace("format: json", "format: avro");
        let p = Pipeline::parse(Path::new("p.yaml"), &avro).unwrap();
        let schema = p.output.avro_schema.unwrap();
        assert!(schema.contains(r#""default":null"#), "{schema}");
    }

    /// `output.format: avro`: the inline schema's types are checked against
    /// the SELECT's where those are known before data (declared columns,
    /// CASTs), and a missing column is named.
    #[test]
    fn avro_output_schemas_are_checked_against_the_select_types() {
        let text = "name: p\nquery: |\n  SELECT e.user_id, CAST(e.n AS BIGINT) AS n, e.amount FROM events e\noutput:\n  topic: out\n  format: avro\n  schema:\n    name: Enriched\n    fields:\n      - { name: user_id, type: string }\n      - { name: n, type: string }\nsources:\n  events:\n    columns: { user_id: VARCHAR }\n";
        let d = problems(text);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d.iter().any(|d| d.position.line == 11
                && d.message.contains(
                    "gives `n` the Avro type \"string\", but the SELECT makes it BIGINT"
                )),
            "{d:?}"
        );
        assert!(
            d.iter().any(|d| d
                .message
                .contains("no field for the SELECT's column `amount`")),
            "{d:?}"
        );
        let bad = text.replace("type: string }\nsources", "type: [bogus] }\nsources");
        assert!(
            problems(&bad)[0]
                .message
                .contains("not a valid Avro record schema"),
            "{:?}",
            problems(&bad)
        );
    }

    /// Without `output.schema`, the schema is derived from the SELECT's
    /// types, every field nullable; a type known only per record is refused
    /// with what to declare.
    #[test]
    fn avro_output_schemas_are_derived_from_declared_types() {
        let text = "name: my-pipe\nquery: |\n  SELECT e.user_id, e.n * 2 AS twice, e.amount / 2 AS half, CAST(e.ts AS TIMESTAMP) AS at FROM events e\noutput: { topic: out, format: avro }\nsources:\n  events:\n    columns: { user_id: VARCHAR, n: BIGINT, amount: DOUBLE }\n";
        let p = Pipeline::parse(Path::new("p.yaml"), text).unwrap();
        assert_eq!(
            p.output.avro_schema.as_deref(),
            Some(
                r#"{"type":"record","namespace":"kaflowsql","name":"my_pipe","fields":[{"name":"user_id","type":["null","string"],"default":null},{"name":"twice","type":["null","long"],"default":null},{"name":"half","type":["null","double"],"default":null},{"name":"at","type":["null",{"type":"long","logicalType":"timestamp-micros"}],"default":null}]}"#
            )
        );
        let undeclared = text.replace(", amount: DOUBLE", "");
        let d = problems(&undeclared);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d[0].message
                .contains("type of `half` is known only per record"),
            "{}",
            d[0]
        );
        assert!(
            d[0].help
                .as_deref()
                .unwrap_or("")
                .contains("declare sources.events.columns.amount"),
            "{}",
            d[0]
        );
    }
}
