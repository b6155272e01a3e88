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
use crate::codec::avro::{frame, record_name, unframe};
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
            let text = pipeline.output.avro_schema.as_deref().ok_or_else(|| {
                RegistryError::Setup("the output has format avro and no schema (a bug)".into())
            })?;
            let schema = AvroSchema::parse(text).map_err(|e| RegistryError::BadSchema {
                what: "output.schema".into(),
                reason: e.to_string(),
            })?;
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
