//! `--format avro`: each topic's records in Confluent's wire format (magic
//! byte 0, the schema's registry id as 4 bytes big-endian, the Avro binary
//! datum). A topic's schema is a record with one field per member of its
//! first JSON record, in name order (text `string`, integers `long`, decimals `double`,
//! booleans `boolean`; a member that is null there is `["null", "string"]`),
//! registered under `<topic>-value` in the schema registry before the
//! topic's first record is sent.

use std::collections::HashMap;

use anyhow::{bail, Context};
use apache_avro::types::Value as Avro;
use apache_avro::Schema;

/// The registered schema of each topic written so far.
pub struct AvroTopics {
    registry: String,
    agent: ureq::Agent,
    by_topic: HashMap<String, (u32, Schema)>,
}

impl AvroTopics {
    /// Writes through the registry at `registry` (`http://host:port`).
    pub fn new(registry: &str) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(std::time::Duration::from_secs(10)))
            .build()
            .into();
        Self {
            registry: registry.trim_end_matches('/').to_string(),
            agent,
            by_topic: HashMap::new(),
        }
    }

    /// Replaces `out` with the framed Avro of the JSON object `json`, a
    /// record of `topic`.
    pub fn encode(&mut self, topic: &str, json: &str, out: &mut Vec<u8>) -> anyhow::Result<()> {
        let value: serde_json::Value =
            serde_json::from_str(json).with_context(|| format!("a {topic} record is not JSON"))?;
        let serde_json::Value::Object(members) = &value else {
            bail!("a {topic} record is not a JSON object");
        };
        if !self.by_topic.contains_key(topic) {
            let schema = schema_of(topic, members)?;
            let id = self.register(&format!("{topic}-value"), &schema)?;
            eprintln!("fakegen: schema of {topic} registered as id {id}");
            self.by_topic.insert(topic.to_string(), (id, schema));
        }
        let Some((id, schema)) = self.by_topic.get(topic) else {
            bail!("no schema for {topic}");
        };
        let Schema::Record(record) = schema else {
            bail!("the schema of {topic} is not a record");
        };
        let fields = record
            .fields
            .iter()
            .map(|f| {
                let v = members.get(&f.name).unwrap_or(&serde_json::Value::Null);
                Ok((f.name.clone(), avro_of(v, &f.schema)?))
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("a {topic} record does not fit its first record's schema"))?;
        out.clear();
        out.push(0);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend(apache_avro::to_avro_datum(schema, Avro::Record(fields))?);
        Ok(())
    }

    fn register(&self, subject: &str, schema: &Schema) -> anyhow::Result<u32> {
        #[derive(serde::Deserialize)]
        struct Id {
            id: u32,
        }
        let url = format!("{}/subjects/{subject}/versions", self.registry);
        let body = serde_json::json!({ "schema": serde_json::to_string(schema)? }).to_string();
        let mut response = self
            .agent
            .post(&url)
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .send(body)
            .with_context(|| format!("cannot register the schema of {subject} at {url}"))?;
        let text = response.body_mut().read_to_string()?;
        let id: Id = serde_json::from_str(&text)
            .with_context(|| format!("unexpected answer from {url}: {text}"))?;
        Ok(id.id)
    }
}

fn schema_of(
    topic: &str,
    members: &serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<Schema> {
    use serde_json::Value as J;
    let fields: Vec<serde_json::Value> = members
        .iter()
        .map(|(name, v)| {
            let ty = match v {
                J::String(_) => serde_json::json!("string"),
                J::Number(n) if n.is_i64() => serde_json::json!("long"),
                J::Number(_) => serde_json::json!("double"),
                J::Bool(_) => serde_json::json!("boolean"),
                _ => serde_json::json!(["null", "string"]),
            };
            serde_json::json!({ "name": name, "type": ty })
        })
        .collect();
    let name: String = topic
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let schema = serde_json::json!({
        "type": "record", "name": format!("r_{name}"), "namespace": "fakegen", "fields": fields
    });
    Ok(Schema::parse_str(&schema.to_string())?)
}

fn avro_of(v: &serde_json::Value, schema: &Schema) -> anyhow::Result<Avro> {
    use serde_json::Value as J;
    Ok(match (schema, v) {
        (Schema::String, J::String(s)) => Avro::String(s.clone()),
        (Schema::Long, J::Number(n)) => match n.as_i64() {
            Some(i) => Avro::Long(i),
            None => bail!("{n} is not an integer"),
        },
        (Schema::Double, J::Number(n)) => Avro::Double(n.as_f64().unwrap_or(f64::NAN)),
        (Schema::Boolean, J::Bool(b)) => Avro::Boolean(*b),
        (Schema::Union(_), J::Null) => Avro::Union(0, Box::new(Avro::Null)),
        (Schema::Union(_), other) => Avro::Union(1, Box::new(Avro::String(other.to_string()))),
        (s, v) => bail!("{v} does not fit {s:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_records_give_the_schema_and_values_round_trip() {
        let json: serde_json::Value =
            serde_json::from_str(r#"{"id":"a","n":3,"x":1.5,"ok":true,"gone":null}"#).unwrap();
        let serde_json::Value::Object(m) = &json else {
            panic!("an object")
        };
        let schema = schema_of("my-topic", m).unwrap();
        let Schema::Record(r) = &schema else {
            panic!("a record")
        };
        let fields = r
            .fields
            .iter()
            .map(|f| (f.name.clone(), avro_of(&m[&f.name], &f.schema).unwrap()))
            .collect();
        let datum = apache_avro::to_avro_datum(&schema, Avro::Record(fields)).unwrap();
        let back = apache_avro::from_avro_datum(&schema, &mut &datum[..], None).unwrap();
        assert_eq!(
            back,
            Avro::Record(vec![
                ("gone".into(), Avro::Union(0, Box::new(Avro::Null))),
                ("id".into(), Avro::String("a".into())),
                ("n".into(), Avro::Long(3)),
                ("ok".into(), Avro::Boolean(true)),
                ("x".into(), Avro::Double(1.5)),
            ])
        );
    }
}
