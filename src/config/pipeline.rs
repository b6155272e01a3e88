//! A pipeline file: raw YAML keys, then the validated [`Pipeline`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{
    read, yaml_diagnostic, ConfigError, Diagnostic, Diagnostics, HumanDuration, Locations, Position,
};
use crate::codec::ColumnType;
use crate::sql::{plan_query, QueryPlan, SqlError};

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
}

/// How output values are written.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// A JSON object per row.
    #[default]
    Json,
    /// Avro in the Confluent wire format (not implemented yet: refused at validation).
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
    /// Declared column types; undeclared columns are inferred.
    #[serde(default)]
    columns: BTreeMap<String, String>,
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
    /// Dead-letter topic.
    pub dlq_topic: String,
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

    /// Validates pipeline `text` read from `file`.
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawPipeline = serde_yaml_ng::from_str(text)
            .map_err(|e| ConfigError::Invalid(Diagnostics(vec![yaml_diagnostic(file, &e)])))?;
        let locations = Locations::of(text);
        Validator {
            file,
            text,
            locations: &locations,
            problems: Diagnostics::default(),
        }
        .validate(raw)
    }

    /// The TTL of a topic in milliseconds (None: never expires).
    pub fn ttl_of(&self, topic: &str) -> Option<i64> {
        self.ttl_ms.get(topic).copied().flatten()
    }
}

struct Validator<'a> {
    file: &'a Path,
    text: &'a str,
    locations: &'a Locations,
    problems: Diagnostics,
}

fn is_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl Validator<'_> {
    fn at_key(&mut self, path: &str, message: String, help: impl Into<String>) {
        let pos = self.locations.key(path);
        self.problems
            .push(Diagnostic::new(self.file, pos, message).with_help(help));
    }

    fn at_value(&mut self, path: &str, message: String, help: impl Into<String>) {
        let pos = self.locations.value(path);
        self.problems
            .push(Diagnostic::new(self.file, pos, message).with_help(help));
    }

    /// Maps a position inside the SQL text to the file.
    fn sql_position(&self, line: usize, column: usize) -> Position {
        let value = self.locations.value("query");
        let lines: Vec<&str> = self.text.lines().collect();
        let at_value = lines
            .get(value.line.saturating_sub(1))
            .map(|l| {
                l.chars()
                    .skip(value.column.saturating_sub(1))
                    .collect::<String>()
            })
            .unwrap_or_default();
        if at_value.starts_with('|') || at_value.starts_with('>') {
            // Block scalar: content starts on the next non-blank line.
            let first = (value.line..lines.len())
                .find(|&i| !lines[i].trim().is_empty())
                .unwrap_or(value.line);
            let indent = lines
                .get(first)
                .map(|l| l.len() - l.trim_start().len())
                .unwrap_or(0);
            Position {
                line: first + line,
                column: indent + column,
            }
        } else {
            let quote = usize::from(at_value.starts_with('"') || at_value.starts_with('\''));
            if line <= 1 {
                Position {
                    line: value.line,
                    column: value.column + quote + column - 1,
                }
            } else {
                Position {
                    line: value.line + line - 1,
                    column,
                }
            }
        }
    }

    fn sql_problem(&mut self, e: SqlError) {
        let pos = self.sql_position(e.position.line, e.position.column);
        let mut d = Diagnostic::new(self.file, pos, format!("query: {}", e.message));
        if let Some(h) = e.help {
            d = d.with_help(h);
        }
        self.problems.push(d);
    }

    fn validate(mut self, raw: RawPipeline) -> Result<Pipeline, ConfigError> {
        if !is_topic_name(&raw.name) {
            self.at_value(
                "name",
                format!("name `{}` is not a valid pipeline name", raw.name),
                "use letters, digits, `.`, `_` and `-` (it names the consumer group and the DLQ topic)",
            );
        }
        let plan = match plan_query(&raw.query, &raw.state.dimensions) {
            Ok(plan) => Some(plan),
            Err(e) => {
                self.sql_problem(e);
                None
            }
        };
        let topics: Vec<String> = plan
            .as_ref()
            .map(|p| p.sources.iter().map(|s| s.topic.clone()).collect())
            .unwrap_or_default();
        let read_by_query = |t: &str| plan.is_none() || topics.iter().any(|x| x == t);
        let topic_list = topics.join(", ");

        // Output.
        if !is_topic_name(&raw.output.topic) {
            self.at_value(
                "output.topic",
                format!(
                    "output.topic `{}` is not a valid Kafka topic name",
                    raw.output.topic
                ),
                "use letters, digits, `.`, `_` and `-`",
            );
        }
        if raw.output.format == OutputFormat::Avro {
            self.at_value(
                "output.format",
                "output.format `avro` is not supported yet".to_string(),
                "use `json` (Avro output with a schema registry is planned)",
            );
        }
        let output_names: Vec<String> = plan
            .as_ref()
            .map(|p| p.outputs.iter().map(|o| o.name.clone()).collect())
            .unwrap_or_default();
        let output_index = |name: &str| output_names.iter().position(|n| n == name);
        let key = match &raw.output.key {
            Some(k) => match output_index(k) {
                Some(i) => Some(i),
                None => {
                    if plan.is_some() {
                        self.at_value(
                            "output.key",
                            format!("output.key `{k}` is not a column of the SELECT"),
                            format!(
                                "name one of the output columns: {}",
                                output_names.join(", ")
                            ),
                        );
                    }
                    None
                }
            },
            None => None,
        };
        let dlq_topic = raw
            .output
            .dlq_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", raw.name));

        // TTLs.
        let default_ttl = raw
            .state
            .events
            .default_ttl
            .or(raw.window)
            .map(|d| d.as_millis_i64())
            .unwrap_or(default_ttl_ms());
        for topic in raw.state.events.overrides.keys() {
            if !read_by_query(topic) {
                self.at_key(
                    &format!("state.events.overrides.{topic}"),
                    format!(
                        "state.events.overrides names `{topic}`, which the query does not read"
                    ),
                    format!("name one of the query's topics: {topic_list}"),
                );
            }
        }
        for (i, d) in raw.state.dimensions.iter().enumerate() {
            if !read_by_query(d) {
                self.at_value(
                    &format!("state.dimensions[{i}]"),
                    format!("state.dimensions lists `{d}`, which the query does not read"),
                    format!("name one of the query's topics: {topic_list}"),
                );
            }
        }
        let mut ttl_ms = BTreeMap::new();
        if let Some(p) = &plan {
            for s in &p.sources {
                let ttl = match raw.state.events.overrides.get(&s.topic) {
                    Some(d) => Some(d.as_millis_i64()),
                    None if s.role == crate::sql::Role::Dimension => None,
                    None => Some(default_ttl),
                };
                ttl_ms.insert(s.topic.clone(), ttl);
            }
        }

        // Emission.
        let driving_ttl = plan
            .as_ref()
            .and_then(|p| ttl_ms.get(&p.sources[0].topic).copied().flatten())
            .unwrap_or(default_ttl);
        let emission = match raw.emission.kind {
            EmissionKind::Immediate => {
                if !raw.emission.require.is_empty() {
                    self.at_key(
                        "emission.require",
                        "emission.require is set, but emission.type is `immediate`".to_string(),
                        "set `type: smart` to hold rows until these columns are present, or remove `require`",
                    );
                }
                if raw.emission.timeout.is_some() || raw.emission.on_timeout.is_some() {
                    self.at_key(
                        "emission.timeout",
                        "emission.timeout and on_timeout apply only to `type: smart`".to_string(),
                        "set `type: smart`, or remove them",
                    );
                }
                Emission::Immediate
            }
            EmissionKind::Smart => {
                if raw.emission.require.is_empty() {
                    self.at_key(
                        "emission.type",
                        "emission.type is `smart` but emission.require is empty".to_string(),
                        "list the output columns that must be non-NULL, for example `require: [plan]`, or use `type: immediate`",
                    );
                }
                let mut require = Vec::new();
                for (i, r) in raw.emission.require.iter().enumerate() {
                    match output_index(r) {
                        Some(idx) => require.push(idx),
                        None if plan.is_some() => self.at_value(
                            &format!("emission.require[{i}]"),
                            format!(
                                "emission.require names `{r}`, which is not a column of the SELECT"
                            ),
                            format!("name output columns: {}", output_names.join(", ")),
                        ),
                        None => {}
                    }
                }
                Emission::Smart {
                    require,
                    timeout_ms: raw
                        .emission
                        .timeout
                        .map(|d| d.as_millis_i64())
                        .unwrap_or(driving_ttl),
                    on_timeout: raw.emission.on_timeout.unwrap_or_default(),
                }
            }
        };

        // Source declarations.
        let mut sources = BTreeMap::new();
        for (topic, spec) in &raw.sources {
            if !read_by_query(topic) {
                self.at_key(
                    &format!("sources.{topic}"),
                    format!("sources declares `{topic}`, which the query does not read"),
                    format!("name one of the query's topics: {topic_list}"),
                );
            }
            let mut columns = Vec::new();
            for (name, ty) in &spec.columns {
                match ty.parse::<ColumnType>() {
                    Ok(t) => columns.push((name.clone(), t)),
                    Err(e) => self.at_value(
                        &format!("sources.{topic}.columns.{name}"),
                        format!("sources.{topic}.columns.{name}: {e}"),
                        "types are BOOLEAN, BIGINT, DOUBLE, VARCHAR or JSON",
                    ),
                }
            }
            sources.insert(
                topic.clone(),
                SourceSpec {
                    timestamp: spec.timestamp.clone(),
                    columns,
                },
            );
        }

        // The SQL binds in DuckDB with the declared types: what validates
        // cannot fail on its SQL at run time.
        if let (Some(p), true) = (&plan, self.problems.is_empty()) {
            let declared = sources
                .iter()
                .map(|(topic, spec): (&String, &SourceSpec)| (topic.clone(), spec.columns.clone()))
                .collect();
            if let Err(e) = crate::sql::bind(p, &declared) {
                self.sql_problem(e);
            }
        }
        let (Some(plan), true) = (plan, self.problems.is_empty()) else {
            self.problems.sort();
            return Err(ConfigError::Invalid(self.problems));
        };
        Ok(Pipeline {
            file: self.file.to_path_buf(),
            consumer_group: raw.consumer_group.unwrap_or_else(|| raw.name.clone()),
            name: raw.name,
            query: raw.query,
            plan,
            output: Output {
                topic: raw.output.topic,
                format: raw.output.format,
                key,
                dlq_topic,
            },
            emission,
            ttl_ms,
            sources,
            max_ahead_ms: raw
                .state
                .events
                .max_ahead
                .map(|d| d.as_millis_i64())
                .unwrap_or(default_max_ahead_ms()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
