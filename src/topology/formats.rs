//! The value formats at the Kafka edge of one pipeline. The engine reads and
//! writes JSON; here an Avro source's value (Confluent's wire format) becomes
//! the JSON text of its datum before the engine decodes it, and an Avro
//! output's row becomes a framed datum of the output schema after the engine
//! wrote it. Writer schemas come from the schema registry by id (fetched
//! once); the output schema is registered once at start.
//!
//! Bad bytes, a schema id the registry does not know, a datum that does not
//! match its schema, a row that does not fit the output schema: a dead
//! letter with the reason. A registry that cannot be reached: the record
//! waits, retried with backoff (as a broker outage), never dropped.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::connect;
use crate::codec::avro::{
    avro_type_of, column_types, derived_record, frame, record_name, record_name_of, unframe,
};
use crate::codec::AvroSchema;
use crate::config::{GlobalConfig, OutputFormat, Pipeline, SourceFormat};
use crate::engine::TopicId;
use crate::registry::{RegistryError, SchemaRegistry};
use crate::telemetry::PipelineMetrics;

/// What became of a source value.
pub(super) enum Converted<'a> {
    /// The value to give the engine (the original, or the JSON of an Avro datum).
    Value(Option<&'a [u8]>),
    /// The record is a dead letter: (kind, reason).
    Dead(&'static str, String),
    /// Shutdown was requested while the registry was unreachable: the
    /// record is not read (its offset is not committed).
    Stopped,
}

/// The pipeline's formats: which topics are Avro, the registry, the output
/// schema and its id.
pub(super) struct Formats {
    /// By topic id: the value is Avro.
    avro: Vec<bool>,
    registry: Option<Arc<SchemaRegistry>>,
    output: Option<(u32, AvroSchema)>,
    json: Vec<u8>,
    /// The last output datum.
    datum: Vec<u8>,
}

impl Formats {
    /// The formats of `pipeline` under `global`; with any Avro, connects
    /// the registry client and registers the output schema (retrying while
    /// the registry is unreachable; None when shutdown came first).
    ///
    /// Errors: Avro without `kafka.schemaRegistry`, a refusal (credentials),
    /// an output schema the registry finds incompatible or invalid.
    pub(super) fn new(
        pipeline: &Pipeline,
        global: &GlobalConfig,
        topics: &[String],
        shutdown: &AtomicBool,
        metrics: &PipelineMetrics,
    ) -> Result<Option<Self>, RegistryError> {
        let use_avro = global.kafka.use_avro;
        let avro: Vec<bool> = topics
            .iter()
            .map(|t| pipeline.format_of(t, use_avro) == SourceFormat::Avro)
            .collect();
        let mut formats = Self {
            avro,
            registry: None,
            output: None,
            json: Vec::new(),
            datum: Vec::new(),
        };
        if !pipeline.uses_registry(use_avro) {
            return Ok(Some(formats));
        }
        let Some(config) = &global.registry else {
            return Err(RegistryError::Setup(format!(
                "pipeline `{}` reads or writes Avro, and the global config has no kafka.schemaRegistry: set it to the registry's URL (or KAFLOWSQL_KAFKA_SCHEMA_REGISTRY)",
                pipeline.name
            )));
        };
        let registry = Arc::new(SchemaRegistry::new(config)?);
        if pipeline.output.format == OutputFormat::Avro {
            let schema = match pipeline.output.avro_schema.as_deref() {
                Some(text) => AvroSchema::parse(text).map_err(|e| RegistryError::BadSchema {
                    what: "output.schema".into(),
                    reason: e.to_string(),
                })?,
                None => {
                    let Some(s) = derive_from_registry(pipeline, &registry, shutdown, metrics)?
                    else {
                        return Ok(None);
                    };
                    s
                }
            };
            let record = record_name(schema.schema()).unwrap_or_default();
            let subject = config
                .subject_strategy
                .subject(&pipeline.output.topic, &record);
            let Some(id) = connect(
                &format!("register the output schema under subject {subject}"),
                shutdown,
                metrics,
                || registry.register(&subject, &schema),
            )?
            else {
                return Ok(None);
            };
            tracing::info!(pipeline = %pipeline.name, %subject, id, "Output schema registered.");
            formats.output = Some((id, schema));
        }
        formats.registry = Some(registry);
        Ok(Some(formats))
    }

    /// The value of a record of topic `t` as the engine takes it.
    ///
    /// Errors: only a registry refusal (wrong credentials), which stops the
    /// pipeline; everything about the record itself is [`Converted::Dead`].
    pub(super) fn source_value<'a>(
        &'a mut self,
        t: TopicId,
        value: Option<&'a [u8]>,
        shutdown: &AtomicBool,
        metrics: &PipelineMetrics,
    ) -> Result<Converted<'a>, RegistryError> {
        let (Some(bytes), true) = (
            value,
            self.avro.get(usize::from(t)).copied().unwrap_or(false),
        ) else {
            return Ok(Converted::Value(value));
        };
        let (id, datum) = match unframe(bytes) {
            Ok(x) => x,
            Err(e) => return Ok(Converted::Dead("decode", e.to_string())),
        };
        let Some(registry) = &self.registry else {
            return Ok(Converted::Dead("decode", "no schema registry".into()));
        };
        // Only an outage waits (counted and logged by `connect`); the
        // record's own problems are counted once, as its dead letter.
        let fetched = match registry.schema(id) {
            Err(e) if e.heals() => connect(
                &format!("fetch writer schema {id}"),
                shutdown,
                metrics,
                || registry.schema(id),
            ),
            other => other.map(Some),
        };
        let schema = match fetched {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(Converted::Stopped),
            Err(
                e @ (RegistryError::Refused { .. }
                | RegistryError::Tls { .. }
                | RegistryError::Setup(_)),
            ) => return Err(e),
            Err(e) => return Ok(Converted::Dead("decode", e.to_string())),
        };
        self.json.clear();
        match schema.datum_to_json(id, datum, &mut self.json) {
            Ok(()) => Ok(Converted::Value(Some(&self.json))),
            Err(e) => Ok(Converted::Dead("decode", e.to_string())),
        }
    }

    /// The value to produce for an output row of JSON `row`: the row itself,
    /// or its framed Avro datum.
    ///
    /// Errors: the reason the row does not fit the output schema (the row's
    /// driving record becomes a dead letter).
    pub(super) fn output_value<'a>(&'a mut self, row: &'a [u8]) -> Result<&'a [u8], String> {
        let Some((id, schema)) = &self.output else {
            return Ok(row);
        };
        self.datum.clear();
        frame(*id, &mut self.datum);
        schema
            .json_to_datum(row, &mut self.datum)
            .map_err(|e| e.to_string())?;
        Ok(&self.datum)
    }
}

/// The output schema derived from the SELECT's types, with the column types
/// of the Avro sources `pipeline.output.avro_types_from` read from the
/// latest writer schema of `<topic>-value` (declared types win). None when
/// shutdown came while the registry was unreachable.
///
/// Errors: a subject the registry does not have, a column whose type is
/// still unknown (a union of several types), as [`RegistryError::Setup`]
/// with what to do.
fn derive_from_registry(
    pipeline: &Pipeline,
    registry: &SchemaRegistry,
    shutdown: &AtomicBool,
    metrics: &PipelineMetrics,
) -> Result<Option<AvroSchema>, RegistryError> {
    let mut declared: std::collections::BTreeMap<String, Vec<(String, crate::codec::ColumnType)>> =
        pipeline
            .sources
            .iter()
            .map(|(t, s)| (t.clone(), s.columns.clone()))
            .collect();
    for topic in &pipeline.output.avro_types_from {
        let subject = format!("{topic}-value");
        let Some((_, writer)) = connect(
            &format!("read the schema of subject {subject}"),
            shutdown,
            metrics,
            || registry.latest(&subject),
        )
        .map_err(|e| match e {
            RegistryError::NotFound { .. } => RegistryError::Setup(format!(
                "the output schema is derived from the types of `{topic}`, and the registry has no subject {subject}: register the topic's schema first, declare the columns under sources.{topic}.columns, or give output.schema"
            )),
            other => other,
        })?
        else {
            return Ok(None);
        };
        let columns = declared.entry(topic.clone()).or_default();
        for (name, ty) in column_types(&writer) {
            if !columns.iter().any(|(n, _)| *n == name) {
                columns.push((name, ty));
            }
        }
    }
    let types = crate::sql::output_types(&pipeline.plan, &declared)
        .map_err(|e| RegistryError::Setup(e.message))?;
    let mut fields = Vec::new();
    for (o, ty) in pipeline.plan.outputs.iter().zip(types) {
        match ty {
            Some(dt) => fields.push((o.name.clone(), avro_type_of(&dt))),
            None => {
                return Err(RegistryError::Setup(format!(
                    "the type of output column `{}` is not known from the registry's schemas (a union of several types?): declare it under sources.<topic>.columns, CAST it, or give output.schema",
                    o.name
                )))
            }
        }
    }
    let schema = derived_record(&record_name_of(&pipeline.name), &fields).map_err(|e| {
        RegistryError::BadSchema {
            what: "the derived output schema".into(),
            reason: e.to_string(),
        }
    })?;
    tracing::info!(pipeline = %pipeline.name, schema = %schema.text(), "Output schema derived from the SELECT and the sources' registry schemas.");
    Ok(Some(schema))
}
