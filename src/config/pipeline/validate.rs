//! Validation of a pipeline file: every problem found at once, each with
//! its file, line and column (of the key or value, or inside the SQL) and
//! what to do. The checks run in the order of the file's sections: name,
//! query, output, TTLs, emission, source declarations, then the SQL bound in
//! DuckDB with the declared types.

use std::collections::BTreeMap;
use std::path::Path;

use super::{
    default_max_ahead_ms, Emission, EmissionKind, Output, OutputFormat, Pipeline, RawPipeline,
    SourceFormat, SourceSpec,
};
use crate::codec::{AvroSchema, ColumnType};
use crate::config::{ConfigError, Diagnostic, Diagnostics, Locations, Position};
use crate::sql::{plan_query_with, QueryPlan, Role, SqlError};

pub(super) struct Validator<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
    pub(super) locations: &'a Locations,
    pub(super) problems: Diagnostics,
    /// The TTL of event streams when the file sets none (the global
    /// config's `state.ttl`, else [`default_ttl_ms`]).
    pub(super) default_ttl_ms: i64,
    /// Sources without `format` are Avro (`kafka.useAvro`).
    pub(super) use_avro: bool,
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

    /// Validates `raw`: the pipeline, or every problem found.
    pub(super) fn validate(mut self, raw: RawPipeline) -> Result<Pipeline, ConfigError> {
        if !is_topic_name(&raw.name) {
            self.at_value(
                "name",
                format!("name `{}` is not a valid pipeline name", raw.name),
                "use letters, digits, `.`, `_` and `-` (it names the consumer group and the DLQ topic)",
            );
        }
        // Declared columns resolve unqualified column names (one source each).
        let declared: crate::sql::Declared = raw
            .sources
            .iter()
            .map(|(topic, spec)| (topic.clone(), spec.columns.keys().cloned().collect()))
            .collect();
        let plan = match plan_query_with(&raw.query, &raw.state.dimensions, &declared) {
            Ok(plan) => Some(plan),
            Err(e) => {
                self.sql_problem(e);
                None
            }
        };
        let shape = Shape::of(plan.as_ref());
        let mut output = self.output(&raw, &shape);
        let ttl_ms = self.ttls(&raw, &shape);
        let emission = self.emission(&raw, &shape, &ttl_ms);
        let sources = self.source_specs(&raw, &shape);
        // The SQL binds in DuckDB with the declared types: what validates
        // cannot fail on its SQL at run time.
        if let (Some(p), true) = (&plan, self.problems.is_empty()) {
            let declared = sources
                .iter()
                .map(|(topic, spec): (&String, &SourceSpec)| (topic.clone(), spec.columns.clone()))
                .collect();
            if let Err(e) = crate::sql::bind(p, &declared) {
                self.sql_problem(e);
            } else if output.format == OutputFormat::Avro {
                let inline = output.avro_schema.take();
                (output.avro_schema, output.avro_types_from) =
                    self.avro_output(&raw, p, &declared, &sources, inline);
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
            output,
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

    /// `output`: topic name, format, the key column, the DLQ topic.
    fn output(&mut self, raw: &RawPipeline, shape: &Shape<'_>) -> Output {
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
        if let Some(schema) = &raw.output.schema {
            // Each field of the inline schema must be a column of the
            // SELECT (the schema is the output value's shape).
            if schema.kind.as_deref().is_some_and(|k| k != "record") {
                self.at_value(
                    "output.schema.type",
                    "output.schema.type must be `record`".to_string(),
                    "the output value is an Avro record: type: record (or leave type out)",
                );
            }
            let records = shape
                .plan
                .as_ref()
                .is_some_and(|p| p.outputs.iter().any(|o| o.record));
            for (i, f) in schema.fields.iter().enumerate() {
                if schema.fields[..i].iter().any(|g| g.name == f.name) {
                    self.at_value(
                        &format!("output.schema.fields[{i}].name"),
                        format!("output.schema names the field `{}` twice", f.name),
                        "an Avro record's field names are unique: remove one",
                    );
                }
            }
            // With `alias.*` over a source without declared columns, a field
            // may be one such a record brings (known per record).
            if shape.plan.is_some() && !records {
                for (i, f) in schema.fields.iter().enumerate() {
                    if shape.output(&f.name).is_none() {
                        self.at_value(
                            &format!("output.schema.fields[{i}].name"),
                            format!("output.schema names the field `{}`, which is not a column of the SELECT", f.name),
                            format!("name one of the output columns: {}", shape.outputs.join(", ")),
                        );
                    }
                }
            }
        }
        let avro_schema = raw.output.schema.as_ref().and_then(|schema| {
            let parsed = schema
                .to_json()
                .and_then(|json| {
                    AvroSchema::parse(&json.to_string())
                        .map(|_| json.to_string())
                        .map_err(|e| e.to_string())
                });
            match parsed {
                Ok(text) => Some(text),
                Err(e) => {
                    self.at_key(
                        "output.schema",
                        format!("output.schema is not a valid Avro record schema: {e}"),
                        "each field is {name, type}; types are Avro's: string, long, double, boolean, [\"null\", \"string\"], {type: long, logicalType: timestamp-millis}, ...",
                    );
                    None
                }
            }
        });
        // A source without declared columns brings its fields per record.
        let records = shape
            .plan
            .as_ref()
            .is_some_and(|p| p.outputs.iter().any(|o| o.record));
        let key = raw.output.key.as_ref().and_then(|k| {
            let i = shape.output(k);
            if i.is_none() && shape.plan.is_some() && !records {
                self.at_value(
                    "output.key",
                    format!("output.key `{k}` is not a column of the SELECT"),
                    format!(
                        "name one of the output columns: {}",
                        shape.outputs.join(", ")
                    ),
                );
            }
            i
        });
        Output {
            topic: raw.output.topic.clone(),
            format: raw.output.format,
            key_field: match key {
                None if records => raw.output.key.clone(),
                _ => None,
            },
            key,
            dlq_topic: raw
                .output
                .dlq_topic
                .clone()
                .unwrap_or_else(|| format!("{}.dlq", raw.name)),
            avro_schema,
            avro_types_from: Vec::new(),
        }
    }

    /// `state`: the TTL of every topic the query reads (None: a dimension,
    /// never expires); overrides and dimensions must name those topics.
    fn ttls(&mut self, raw: &RawPipeline, shape: &Shape<'_>) -> BTreeMap<String, Option<i64>> {
        let default_ttl = default_ttl_of(raw, self.default_ttl_ms);
        for topic in raw.state.events.overrides.keys() {
            if !shape.reads(topic) {
                self.at_key(
                    &format!("state.events.overrides.{topic}"),
                    format!(
                        "state.events.overrides names `{topic}`, which the query does not read"
                    ),
                    format!(
                        "name one of the query's topics: {}",
                        shape.topics.join(", ")
                    ),
                );
            }
        }
        for (i, d) in raw.state.dimensions.iter().enumerate() {
            if !shape.reads(d) {
                self.at_value(
                    &format!("state.dimensions[{i}]"),
                    format!("state.dimensions lists `{d}`, which the query does not read"),
                    format!(
                        "name one of the query's topics: {}",
                        shape.topics.join(", ")
                    ),
                );
            }
        }
        let mut ttl_ms = BTreeMap::new();
        for s in shape.plan.iter().flat_map(|p| &p.sources) {
            let ttl = match raw.state.events.overrides.get(&s.topic) {
                Some(d) => Some(d.as_millis_i64()),
                None if s.role == Role::Dimension => None,
                None => Some(default_ttl),
            };
            ttl_ms.insert(s.topic.clone(), ttl);
        }
        ttl_ms
    }

    /// `emission`: immediate, or smart with `require`d output columns and a
    /// timeout (default: the driving stream's TTL).
    fn emission(
        &mut self,
        raw: &RawPipeline,
        shape: &Shape<'_>,
        ttl_ms: &BTreeMap<String, Option<i64>>,
    ) -> Emission {
        let e = &raw.emission;
        if e.kind == EmissionKind::Immediate {
            if !e.require.is_empty() {
                self.at_key(
                    "emission.require",
                    "emission.require is set, but emission.type is `immediate`".to_string(),
                    "set `type: smart` to hold rows until these columns are present, or remove `require`",
                );
            }
            if e.timeout.is_some() || e.on_timeout.is_some() {
                self.at_key(
                    "emission.timeout",
                    "emission.timeout and on_timeout apply only to `type: smart`".to_string(),
                    "set `type: smart`, or remove them",
                );
            }
            return Emission::Immediate;
        }
        if e.require.is_empty() {
            self.at_key(
                "emission.type",
                "emission.type is `smart` but emission.require is empty".to_string(),
                "list the output columns that must be non-NULL, for example `require: [plan]`, or use `type: immediate`",
            );
        }
        let mut require = Vec::new();
        for (i, r) in e.require.iter().enumerate() {
            match shape.output(r) {
                Some(idx) => require.push(idx),
                None if shape.plan.is_some() => self.at_value(
                    &format!("emission.require[{i}]"),
                    format!("emission.require names `{r}`, which is not a column of the SELECT"),
                    format!("name output columns: {}", shape.outputs.join(", ")),
                ),
                None => {}
            }
        }
        let driving_ttl = shape
            .plan
            .and_then(|p| ttl_ms.get(&p.sources[0].topic).copied().flatten())
            .unwrap_or_else(|| default_ttl_of(raw, self.default_ttl_ms));
        Emission::Smart {
            require,
            timeout_ms: e.timeout.map(|d| d.as_millis_i64()).unwrap_or(driving_ttl),
            on_timeout: e.on_timeout.unwrap_or_default(),
        }
    }

    /// `sources`: declared timestamp columns and column types, by topic.
    /// The Avro schema of an `output.format: avro` pipeline: `inline`
    /// (`output.schema`) checked against the SELECT's types where they are
    /// known before data, else one derived from those types (every column
    /// nullable). A column whose type is known only per record cannot be
    /// derived: refused with what to declare.
    fn avro_output(
        &mut self,
        raw: &RawPipeline,
        plan: &QueryPlan,
        declared: &BTreeMap<String, Vec<(String, ColumnType)>>,
        specs: &BTreeMap<String, SourceSpec>,
        inline: Option<String>,
    ) -> (Option<String>, Vec<String>) {
        let types = match crate::sql::output_types(plan, declared) {
            Ok(t) => t,
            Err(e) => {
                self.sql_problem(e);
                return (None, Vec::new());
            }
        };
        let records = plan.outputs.iter().any(|o| o.record);
        if let Some(text) = inline {
            let Ok(schema) = AvroSchema::parse(&text) else {
                return (None, Vec::new());
            };
            if let apache_avro::schema::Schema::Record(r) = schema.schema() {
                for (i, f) in r.fields.iter().enumerate() {
                    let Some(at) = plan.outputs.iter().position(|o| o.name == f.name) else {
                        continue;
                    };
                    if let Some(Some(dt)) = types.get(at) {
                        if !crate::codec::avro::fits(dt, &f.schema) {
                            self.at_value(
                                &format!("output.schema.fields[{i}].type"),
                                format!(
                                    "output.schema gives `{}` the Avro type {}, but the SELECT makes it {}",
                                    f.name,
                                    crate::codec::avro::type_text(&f.schema),
                                    crate::sql::sql_type_name(dt)
                                ),
                                "change the field's type, or CAST the column in the SELECT",
                            );
                        }
                    }
                }
                if !records {
                    for o in &plan.outputs {
                        if !r.fields.iter().any(|f| f.name == o.name) {
                            self.at_key(
                                "output.schema.fields",
                                format!("output.schema has no field for the SELECT's column `{}`", o.name),
                                format!("add {{ name: {}, type: ... }} (the output value is the whole row)", o.name),
                            );
                        }
                    }
                }
            }
            return (Some(text), Vec::new());
        }
        if records {
            self.at_value(
                "output.format",
                "output.format avro needs output.schema when the SELECT has `alias.*` over a source without declared columns (its fields are known only per record)".to_string(),
                "give output.schema, or declare the source's columns under sources.<topic>.columns",
            );
            return (None, Vec::new());
        }
        let use_avro = self.use_avro;
        let avro_source = |topic: &str| match specs.get(topic).and_then(|s| s.format) {
            Some(f) => f == SourceFormat::Avro,
            None => use_avro,
        };
        let mut from_registry: Vec<String> = Vec::new();
        let mut fields = Vec::new();
        for (o, ty) in plan.outputs.iter().zip(&types) {
            if !crate::codec::avro::is_avro_name(&o.name) {
                self.at_value(
                    "output.format",
                    format!("output column `{}` is not a valid Avro field name", o.name),
                    "name it with AS (letters, digits and _, not starting with a digit), or give output.schema",
                );
                continue;
            }
            match ty {
                Some(dt) => fields.push((o.name.clone(), crate::codec::avro::avro_type_of(dt))),
                None => {
                    let refs: Vec<_> = crate::sql::columns_of(plan, &o.expr)
                        .into_iter()
                        .filter(|r| {
                            let s = &plan.sources[r.source];
                            !declared.get(&s.topic).is_some_and(|cols| {
                                cols.iter().any(|(n, _)| *n == s.columns[r.column])
                            })
                        })
                        .collect();
                    // An Avro source's types are its writer schema's: read
                    // from the registry at start.
                    if refs
                        .iter()
                        .all(|r| avro_source(&plan.sources[r.source].topic))
                    {
                        for r in &refs {
                            let topic = &plan.sources[r.source].topic;
                            if !from_registry.contains(topic) {
                                from_registry.push(topic.clone());
                            }
                        }
                        fields.push((o.name.clone(), serde_json::Value::Null));
                        continue;
                    }
                    let undeclared: Vec<String> = refs
                        .into_iter()
                        .map(|r| {
                            let s = &plan.sources[r.source];
                            format!("sources.{}.columns.{}", s.topic, s.columns[r.column])
                        })
                        .collect();
                    self.at_value(
                        "output.format",
                        format!(
                            "output.format avro derives the schema from the SELECT's types, but the type of `{}` is known only per record",
                            o.name
                        ),
                        format!(
                            "declare {}, CAST the column, give output.schema, or read the source as Avro (its types then come from the schema registry)",
                            undeclared.join(" and ")
                        ),
                    );
                }
            }
        }
        if !from_registry.is_empty() {
            return (None, from_registry);
        }
        match crate::codec::avro::derived_record(
            &crate::codec::avro::record_name_of(&raw.name),
            &fields,
        ) {
            Ok(s) => (Some(s.text()), Vec::new()),
            Err(e) => {
                self.at_value("output.format", e.to_string(), "give output.schema");
                (None, Vec::new())
            }
        }
    }

    fn source_specs(
        &mut self,
        raw: &RawPipeline,
        shape: &Shape<'_>,
    ) -> BTreeMap<String, SourceSpec> {
        let mut sources = BTreeMap::new();
        for (topic, spec) in &raw.sources {
            if !shape.reads(topic) {
                self.at_key(
                    &format!("sources.{topic}"),
                    format!("sources declares `{topic}`, which the query does not read"),
                    format!(
                        "name one of the query's topics: {}",
                        shape.topics.join(", ")
                    ),
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
                    format: spec.format,
                },
            );
        }
        sources
    }
}

/// The TTL of event streams: `state.events.default_ttl`, else `window`, else an hour.
fn default_ttl_of(raw: &RawPipeline, otherwise: i64) -> i64 {
    raw.state
        .events
        .default_ttl
        .or(raw.window)
        .map(|d| d.as_millis_i64())
        .unwrap_or(otherwise)
}

/// What the other sections are checked against: the query's topics and
/// output columns (when the query planned; otherwise nothing is refused
/// for not matching it).
struct Shape<'p> {
    plan: Option<&'p QueryPlan>,
    topics: Vec<String>,
    outputs: Vec<String>,
}

impl<'p> Shape<'p> {
    fn of(plan: Option<&'p QueryPlan>) -> Self {
        Self {
            plan,
            topics: plan
                .map(|p| p.sources.iter().map(|s| s.topic.clone()).collect())
                .unwrap_or_default(),
            outputs: plan
                .map(|p| p.outputs.iter().map(|o| o.name.clone()).collect())
                .unwrap_or_default(),
        }
    }

    /// Whether the query reads `topic` (true when it did not plan).
    fn reads(&self, topic: &str) -> bool {
        self.plan.is_none() || self.topics.iter().any(|t| t == topic)
    }

    /// The index of output column `name`.
    fn output(&self, name: &str) -> Option<usize> {
        self.outputs.iter().position(|n| n == name)
    }
}
