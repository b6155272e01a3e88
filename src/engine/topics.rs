//! The topics of one pipeline and the sources of its query, resolved once
//! when the engine is built: every topic gets an interned [`TopicId`] (its
//! index in first-use order), one decoding schema (the union of the columns
//! its sources read), and the list of sources that read it; every source
//! gets its state table (stream, dimension, or none) and the topic columns
//! its join key is made of.
//!
//! From here on records carry the id, never the name: the run loop resolves
//! a record's topic name once ([`Topics::id`]), at the edge.

use std::sync::Arc;

use tracing::warn;

use super::sources::{SourceState, Table};
use super::TopicId;
use crate::codec::{Event, TopicSchema};
use crate::config::{Emission, Pipeline};
use crate::sql::{JoinKind, Role};
use crate::state::{DimensionTable, KeyColumns, StreamTable};

/// One topic: how its records decode, which sources read them, and how long
/// they stay joinable.
#[derive(Debug)]
pub(super) struct TopicState {
    /// Decoding schema: the union of the columns its sources read.
    pub(super) schema: TopicSchema,
    /// The query's sources that read this topic (indices into the plan's sources).
    pub(super) sources: Vec<usize>,
    /// How long its records stay joinable (None: never expire).
    pub(super) ttl_ms: Option<i64>,
}

/// Every topic of the pipeline, by [`TopicId`].
#[derive(Debug)]
pub struct Topics {
    pub(super) list: Vec<TopicState>,
}

impl Topics {
    /// The id of `topic`, None when the pipeline does not read it. A
    /// pipeline reads a handful of topics: a scan beats hashing the name.
    pub fn id(&self, topic: &str) -> Option<TopicId> {
        self.list
            .iter()
            .position(|t| t.schema.topic == topic)
            .map(|i| i as TopicId)
    }

    /// The name of topic `id` ("" for an id the pipeline does not have).
    pub fn name(&self, id: TopicId) -> &str {
        self.list
            .get(id as usize)
            .map_or("", |t| t.schema.topic.as_str())
    }

    /// Every topic name, by id.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.list.iter().map(|t| t.schema.topic.as_str())
    }

    pub(super) fn get(&self, id: TopicId) -> &TopicState {
        &self.list[id as usize]
    }

    pub(super) fn get_mut(&mut self, id: TopicId) -> &mut TopicState {
        &mut self.list[id as usize]
    }

    /// Brings an event read back from disk into the run: its column types are
    /// observed again (types are learned per run). None, with a warning, for
    /// a record that no longer fits them: it is dropped from state.
    pub(super) fn revive(&mut self, mut event: Event) -> Option<Arc<Event>> {
        let schema = &mut self.list.get_mut(event.topic as usize)?.schema;
        match schema.observe(&mut event.values) {
            Ok(()) => Some(Arc::new(event)),
            Err(e) => {
                warn!(error = %e, topic = %schema.topic, "A stored record no longer fits its column types; dropped from state.");
                None
            }
        }
    }

    /// Number of topics.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// True for a pipeline without topics (never built).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

fn add_column(columns: &mut Vec<String>, name: &str) -> usize {
    match columns.iter().position(|c| c == name) {
        Some(i) => i,
        None => {
            columns.push(name.to_string());
            columns.len() - 1
        }
    }
}

/// The topics and the run-time sources of `pipeline`.
pub(super) fn resolve(pipeline: &Pipeline) -> (Topics, Vec<SourceState>) {
    let plan = &pipeline.plan;
    // The driving stream is stored only where a later arrival must find it:
    // an INNER join with another stream under immediate emission.
    let stores_driving = matches!(pipeline.emission, Emission::Immediate)
        && plan
            .joins
            .iter()
            .any(|j| j.kind == JoinKind::Inner && plan.sources[j.source].role == Role::Stream);
    let mut names: Vec<String> = Vec::new();
    let mut columns: Vec<Vec<String>> = Vec::new();
    let mut keys: Vec<Vec<String>> = Vec::new();
    let mut sources = Vec::new();
    for (s, src) in plan.sources.iter().enumerate() {
        let t = match names.iter().position(|n| n == &src.topic) {
            Some(t) => t,
            None => {
                names.push(src.topic.clone());
                columns.push(Vec::new());
                keys.push(Vec::new());
                names.len() - 1
            }
        };
        let own: Vec<usize> = src
            .columns
            .iter()
            .map(|c| add_column(&mut columns[t], c))
            .collect();
        for k in plan.key_columns(s) {
            if !keys[t].contains(&src.columns[k]) {
                keys[t].push(src.columns[k].clone());
            }
        }
        let index: Vec<usize> = if s == 0 {
            plan.stream_key.iter().map(|&c| own[c]).collect()
        } else {
            plan.join_of(s)
                .map(|j| j.keys.iter().map(|(_, c)| own[*c]).collect())
                .unwrap_or_default()
        };
        let ttl = pipeline.ttl_of(&src.topic);
        let table = match (s, src.role) {
            (0, _) if !stores_driving => Table::Unstored,
            (_, Role::Dimension) => {
                Table::Dimension(DimensionTable::new(ttl, KeyColumns::new(&index)))
            }
            (_, Role::Stream) => Table::Stream(StreamTable::new(ttl, KeyColumns::new(&index))),
        };
        sources.push(SourceState {
            topic: t as TopicId,
            role: src.role,
            columns: own,
            index,
            table,
        });
    }
    let list = topic_states(pipeline, &names, &columns, &keys, &sources);
    (Topics { list }, sources)
}

/// One [`TopicState`] per topic: its decoding schema (the union of
/// `columns` its sources read, with the `keys` they join on), its readers
/// and its TTL.
fn topic_states(
    pipeline: &Pipeline,
    names: &[String],
    columns: &[Vec<String>],
    keys: &[Vec<String>],
    sources: &[SourceState],
) -> Vec<TopicState> {
    names
        .iter()
        .enumerate()
        .map(|(t, name)| {
            let spec = pipeline.sources.get(name).cloned().unwrap_or_default();
            let readers: Vec<usize> = (0..sources.len())
                .filter(|&s| sources[s].topic as usize == t)
                .collect();
            let is_dimension = readers.iter().any(|&s| sources[s].role == Role::Dimension);
            // The schema may add key or timestamp columns after the query's
            // columns: source column indices stay valid because they come first.
            let schema = TopicSchema::new(
                name,
                columns[t].clone(),
                &spec.columns,
                spec.timestamp.as_deref(),
                &keys[t],
            )
            .keep_kafka_key(is_dimension);
            TopicState {
                schema,
                sources: readers,
                ttl_ms: pipeline.ttl_of(name),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(text: &str) -> Pipeline {
        match Pipeline::parse(std::path::Path::new("t.yaml"), text) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn topics_are_interned_in_first_use_order_with_their_readers() {
        let p = pipeline(
            "name: t
query: |
  SELECT o.order_id, p.amount, c.name
  FROM orders o
  JOIN payments p ON o.order_id = p.order_id
  LEFT JOIN customers c ON o.customer_id = c.customer_id
output:
  topic: out
state:
  events:
    default_ttl: 1m
  dimensions: [customers]
",
        );
        let (topics, sources) = resolve(&p);
        assert_eq!(
            topics.names().collect::<Vec<_>>(),
            ["orders", "payments", "customers"]
        );
        assert_eq!(topics.id("payments"), Some(1));
        assert_eq!(topics.id("nope"), None);
        assert_eq!(topics.name(2), "customers");
        assert_eq!(topics.name(9), "");
        // An INNER stream join stores the driving stream; the dimension keeps its records.
        assert!(matches!(sources[0].table, Table::Stream(_)));
        assert!(matches!(sources[1].table, Table::Stream(_)));
        assert!(matches!(sources[2].table, Table::Dimension(_)));
        assert_eq!(topics.get(0).ttl_ms, Some(60_000));
        assert_eq!(topics.get(2).ttl_ms, None);
        // The driving source is indexed by the column the INNER join probes it with.
        let orders = &topics.get(0).schema.columns;
        assert_eq!(orders[sources[0].index[0]], "order_id");
    }

    #[test]
    fn an_enrichment_does_not_store_its_driving_stream() {
        let p = pipeline(
            "name: t
query: |
  SELECT e.id, d.name FROM events e LEFT JOIN devices d ON e.device = d.id
output:
  topic: out
state:
  dimensions: [devices]
",
        );
        let (topics, sources) = resolve(&p);
        assert_eq!(topics.len(), 2);
        assert!(matches!(sources[0].table, Table::Unstored));
        assert_eq!(topics.get(1).sources, vec![1]);
    }
}
