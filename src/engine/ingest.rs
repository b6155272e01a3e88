//! The ingest stage: one record in. It is decoded once into a shared
//! [`Event`], its event time checked by the clock, and it is stored in the
//! state of every source that reads its topic (routed to its shard by the
//! xxhash64 of its join key); then the join stage sees the arrival.
//!
//! A record that cannot be used becomes a dead letter here, with its
//! reason: a value that does not decode (`decode`), a tombstone where none
//! can apply (`tombstone`), an unusable event time (`event_time`). A record
//! already expired on arrival is counted as late and dropped.

use std::sync::Arc;

use super::join::key_of;
use super::output::Origin;
use super::sources::Table;
use super::TopicId;
use super::{DeadLetter, Engine, EngineError, Outputs, SourceRecord};
use crate::codec::Event;
use crate::store::StoreError;

/// Records between sweeps of expired state.
const SWEEP_EVERY: u32 = 4096;

impl Engine {
    /// Processes one record. Evaluates the micro-batch when it is full.
    ///
    /// Errors: only failures that are not about the record (durable state,
    /// DuckDB itself); a bad record becomes a dead letter in `out`.
    pub fn push(
        &mut self,
        record: &SourceRecord<'_>,
        out: &mut Outputs,
    ) -> Result<(), EngineError> {
        match self.topics.id(record.topic) {
            Some(t) => self.push_from(t, record, out),
            None => Err(EngineError::UnknownTopic(record.topic.to_string())),
        }
    }

    /// [`Engine::push`] for a record whose topic the caller resolved to `t`
    /// (with [`super::Topics::id`]) at the edge.
    pub fn push_from(
        &mut self,
        t: TopicId,
        record: &SourceRecord<'_>,
        out: &mut Outputs,
    ) -> Result<(), EngineError> {
        self.stats.records += 1;
        let Some(event) = self.admit(t, record, out)? else {
            return Ok(());
        };
        let trigger = Origin::of(&event);
        for i in 0..self.topics.get(t).sources.len() {
            let s = self.topics.get(t).sources[i];
            if s == 0 {
                self.store_driving(&event)?;
                self.drive(&event)?;
            } else if let Some(hash) = self.store_record(s, &event)? {
                self.join_arrival(s, &event, hash, trigger)?;
            }
        }
        self.since_sweep += 1;
        if self.since_sweep >= SWEEP_EVERY {
            self.sweep();
        }
        if self.batch.rows.len() >= self.max_batch_rows * self.plan.sources.len() {
            self.flush(out)?;
        }
        self.maybe_write_state()
    }

    /// Makes `record` a dead letter (counted) for `reason`, of class `kind`
    /// (a [`crate::error::KINDS`] name): for what the edge found wrong with
    /// it before the engine could decode it (an Avro value that does not
    /// decode).
    pub fn dead_letter(
        &mut self,
        record: &SourceRecord<'_>,
        kind: &'static str,
        reason: String,
        out: &mut Outputs,
    ) {
        self.stats.dead_letters += 1;
        out.dead_letters.push(DeadLetter {
            topic: record.topic.to_string(),
            partition: record.partition,
            offset: record.offset,
            key: record.key.map(<[u8]>::to_vec),
            value: record.value.map(<[u8]>::to_vec),
            reason,
            kind,
            decoded_copy: false,
        });
    }

    /// Decodes `record` and checks its time: the event to store and join,
    /// or None when it became a dead letter (or was late, or a tombstone).
    fn admit(
        &mut self,
        t: TopicId,
        record: &SourceRecord<'_>,
        out: &mut Outputs,
    ) -> Result<Option<Arc<Event>>, EngineError> {
        let Some(value) = record.value else {
            if let Some(reason) = self.tombstone(t, record.key)? {
                self.dead_letter(record, "tombstone", reason, out);
            }
            return Ok(None);
        };
        let decoded = self.topics.get_mut(t).schema.decode(
            t,
            record.partition,
            record.offset,
            record.timestamp,
            record.key,
            value,
        );
        let event = match decoded {
            Ok(e) => Arc::new(e),
            Err(e) => {
                self.dead_letter(record, "decode", e.to_string(), out);
                return Ok(None);
            }
        };
        let topic = self.topics.get(t);
        // A NULL key matches nothing, as in SQL: the record goes on (a LEFT
        // join NULL-extends it, an INNER join gives no row), counted.
        if topic
            .schema
            .key_columns
            .iter()
            .any(|&k| event.values[k].is_null())
        {
            self.stats.null_keys += 1;
        }
        let declared = topic.schema.timestamp_column.is_some();
        match self
            .clock
            .admit(t, record.timestamp, &event, declared, topic.ttl_ms)
        {
            super::clock::Admission::Refused(reason) => {
                self.dead_letter(record, "event_time", reason, out);
                Ok(None)
            }
            super::clock::Admission::Late => {
                self.stats.late += 1;
                Ok(None)
            }
            super::clock::Admission::Admitted { watermark } => {
                if let Some(wm) = watermark {
                    self.on_watermark(event.partition, wm)?;
                }
                Ok(Some(event))
            }
        }
    }

    /// Stores a driving event where a later arrival must find it (an INNER
    /// join with another stream under immediate emission).
    fn store_driving(&mut self, event: &Arc<Event>) -> Result<(), StoreError> {
        if !matches!(self.sources[0].table, Table::Stream(_)) {
            return Ok(());
        }
        let mut key = std::mem::take(&mut self.join.key_buf);
        let result = match key_of(event, &self.sources[0].index, &mut key) {
            Some(hash) => self.insert_stream(0, hash, &key, event),
            None => Ok(()),
        };
        self.join.key_buf = key;
        result
    }

    /// Stores a record of joined source `s`; returns its join key hash (the
    /// key left in `join.key_buf`), None when a part of its key is NULL: such
    /// a record matches nothing, and a dimension record's previous version
    /// (same Kafka key) stops matching too.
    fn store_record(&mut self, s: usize, event: &Arc<Event>) -> Result<Option<u64>, StoreError> {
        let mut key = std::mem::take(&mut self.join.key_buf);
        let Some(hash) = key_of(event, &self.sources[s].index, &mut key) else {
            self.join.key_buf = key;
            let dimension = matches!(self.sources[s].table, Table::Dimension(_));
            if let (true, Some(primary)) = (dimension, event.key.as_deref()) {
                self.delete_dimension(s, primary)?;
            }
            return Ok(None);
        };
        let result = match &self.sources[s].table {
            Table::Dimension(_) => {
                let primary = event.key.as_deref().unwrap_or(&key).to_vec();
                self.upsert_dimension(s, &primary, hash, &key, event)
            }
            Table::Stream(_) => self.insert_stream(s, hash, &key, event),
            Table::Unstored => Ok(()),
        };
        self.join.key_buf = key;
        result.map(|()| Some(hash))
    }

    /// Adds an event-stream record to source `s` (memory, staged for disk)
    /// and pins its offset while state holds it.
    fn insert_stream(
        &mut self,
        s: usize,
        hash: u64,
        key: &[u8],
        event: &Arc<Event>,
    ) -> Result<(), StoreError> {
        self.fault_in(s, hash, key, self.clock.watermark(event.partition))?;
        if let Table::Stream(table) = &mut self.sources[s].table {
            table.insert(hash, key, event.clone());
            self.pins.pin(event.topic, event.partition, event.offset);
        }
        if let Some(store) = self.durable.store.as_mut() {
            self.sources[s].persist_stream(s, hash, key, event, store);
        }
        Ok(())
    }

    /// Sets dimension record `primary` (memory, staged for disk).
    fn upsert_dimension(
        &mut self,
        s: usize,
        primary: &[u8],
        hash: u64,
        key: &[u8],
        event: &Arc<Event>,
    ) -> Result<(), StoreError> {
        self.fault_in_primary(s, primary)?;
        self.fault_in(s, hash, key, self.clock.low())?;
        let old = match &mut self.sources[s].table {
            Table::Dimension(table) => table.upsert(primary, hash, key, event.clone()),
            _ => return Ok(()),
        };
        if let Some(store) = self.durable.store.as_mut() {
            self.sources[s].persist_dimension(s, primary, Some((hash, key, event)), old, store);
        }
        Ok(())
    }

    /// A tombstone (null value) on topic `t`: deletes the dimension record
    /// of `key`. Returns why it is refused where no delete applies.
    fn tombstone(&mut self, t: TopicId, key: Option<&[u8]>) -> Result<Option<String>, StoreError> {
        let mut refused = None;
        for i in 0..self.topics.get(t).sources.len() {
            let s = self.topics.get(t).sources[i];
            match (&self.sources[s].table, key) {
                (Table::Dimension(_), Some(k)) => self.delete_dimension(s, k)?,
                (Table::Dimension(_), None) => {
                    refused =
                        Some("tombstone (null value) without a key: nothing to delete".to_string())
                }
                _ => refused = Some(
                    "null value (tombstone) on an event stream: event streams carry JSON objects"
                        .to_string(),
                ),
            }
        }
        Ok(refused)
    }

    /// Deletes dimension record `primary` of source `s` (memory, staged for
    /// disk): a tombstone, or an update whose join key became NULL.
    fn delete_dimension(&mut self, s: usize, primary: &[u8]) -> Result<(), StoreError> {
        self.fault_in_primary(s, primary)?;
        let old = match &mut self.sources[s].table {
            Table::Dimension(table) => table.delete(primary),
            _ => None,
        };
        if let (Some(store), Some(_)) = (self.durable.store.as_mut(), &old) {
            self.sources[s].persist_dimension(s, primary, None, old, store);
        }
        Ok(())
    }

    /// Removes expired records from every table (their offsets unpinned).
    pub(super) fn sweep(&mut self) {
        self.since_sweep = 0;
        // What no partition can need any more.
        let wm = self.clock.low();
        let pins = &mut self.pins;
        for s in &mut self.sources {
            self.stats.evictions += match &mut s.table {
                Table::Stream(t) => t.expire(wm, |(topic, p, o)| pins.unpin(topic, p, o)),
                Table::Dimension(t) => t.expire(wm),
                Table::Unstored => 0,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Engine, Outputs, SourceRecord};
    use crate::config::{Pipeline, RocksDbConfig, StateConfig};
    use crate::store::{StateDb, Target};

    fn pipeline() -> Pipeline {
        let text = "name: t
query: |
  SELECT e.id, d.name FROM events e LEFT JOIN devices d ON e.device = d.device
output:
  topic: out
state:
  dimensions: [devices]
";
        match Pipeline::parse(std::path::Path::new("t.yaml"), text) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    fn record<'a>(topic: &'a str, offset: i64, key: &'a [u8], value: &'a [u8]) -> SourceRecord<'a> {
        SourceRecord {
            topic,
            partition: 0,
            offset,
            timestamp: super::super::clock::wall_clock_ms(),
            key: Some(key),
            value: Some(value),
        }
    }

    fn engine() -> Engine {
        match Engine::new(&pipeline()) {
            Ok(e) => e,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn bad_records_become_dead_letters_with_their_kind() {
        let mut e = engine();
        let mut out = Outputs::default();
        let pushed = [
            e.push(&record("events", 0, b"k", b"{not json"), &mut out),
            e.push(
                &SourceRecord {
                    value: None,
                    ..record("events", 1, b"k", b"")
                },
                &mut out,
            ),
            e.push(&record("elsewhere", 0, b"k", b"{}"), &mut out),
        ];
        assert!(pushed[0].is_ok() && pushed[1].is_ok());
        assert!(
            pushed[2].is_err(),
            "a topic the pipeline does not read is the caller's bug"
        );
        let kinds: Vec<_> = out.dead_letters.iter().map(|d| d.kind).collect();
        assert_eq!(kinds, ["decode", "tombstone"]);
        assert_eq!(e.stats().dead_letters, 2);
        assert_eq!(
            out.dead_letters[0].value.as_deref(),
            Some(&b"{not json"[..])
        );
    }

    fn lines(e: &mut Engine, records: &[(&str, &str, &str)]) -> Vec<String> {
        let mut out = Outputs::default();
        for (i, (topic, key, value)) in records.iter().enumerate() {
            let pushed = e.push(
                &record(topic, i as i64, key.as_bytes(), value.as_bytes()),
                &mut out,
            );
            assert!(pushed.is_ok(), "{pushed:?}");
        }
        assert!(e.flush(&mut out).is_ok());
        assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
        out.rows
            .iter()
            .map(|r| String::from_utf8_lossy(out.value(r)).into_owned())
            .collect()
    }

    /// SQL: a NULL or missing join key matches nothing; a LEFT join keeps
    /// the row with NULLs, and nothing is a dead letter.
    #[test]
    fn a_null_or_missing_join_key_gives_the_left_join_its_null_row() {
        let mut e = engine();
        let rows = lines(
            &mut e,
            &[
                ("devices", "d1", r#"{"device":"d1","name":"pump"}"#),
                ("events", "e1", r#"{"id":"e1","device":null}"#),
                ("events", "e2", r#"{"id":"e2"}"#),
                ("events", "e3", r#"{"id":"e3","device":"d1"}"#),
            ],
        );
        assert_eq!(
            rows,
            [
                r#"{"id":"e1","name":null}"#,
                r#"{"id":"e2","name":null}"#,
                r#"{"id":"e3","name":"pump"}"#
            ]
        );
        assert_eq!(e.stats().null_keys, 2);
    }

    /// A record whose dimension match is on disk, where the read fails:
    /// the push fails (the pipeline stops before committing), and no row is
    /// written without the match.
    #[test]
    fn a_failed_state_read_stops_the_record_and_writes_no_row() {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let config = StateConfig {
            rocksdb: RocksDbConfig {
                path: Some(dir.path().to_path_buf()),
                ..RocksDbConfig::default()
            },
            memory: None,
            ttl: None,
        };
        let p = pipeline();
        let mut e = engine();
        let attached = StateDb::open(&config)
            .and_then(|db| db.pipeline(&p.name, &e.fingerprint(&p), &e.stored_sources()));
        let store = match attached {
            Ok(s) => s,
            Err(err) => panic!("{err}"),
        };
        // A budget of one byte: every key leaves memory at the next write.
        if let Err(err) = e.attach_store(store, Some(1)) {
            panic!("{err}");
        }
        let mut out = Outputs::default();
        let device = br#"{"device":"d1","name":"pump"}"#;
        let ok = e.push(&record("devices", 0, b"d1", device), &mut out);
        assert!(ok.is_ok() && e.write_state().is_ok());
        // Damage every stored record of the dimension.
        let Some(store) = e.durable.store.as_mut() else {
            panic!("attached")
        };
        let mut keys = Vec::new();
        let scanned = store.scan(
            Target::Source(1),
            &[crate::store::layout::RECORD],
            |k, _| {
                keys.push(k.to_vec());
                Ok(())
            },
        );
        assert!(scanned.is_ok() && !keys.is_empty());
        for k in &keys {
            store.put(
                Target::Source(1),
                |b| b.extend_from_slice(k),
                |b| b.push(0xff),
            );
        }
        assert!(store.write_and_wait().is_ok());
        let event = br#"{"id":"e1","device":"d1"}"#;
        let failed = e.push(&record("events", 0, b"e1", event), &mut out);
        assert!(
            matches!(failed, Err(super::EngineError::Store(_))),
            "{failed:?}"
        );
        let _ = e.flush(&mut out);
        assert!(out.rows.is_empty(), "no row without its match");
    }
}
