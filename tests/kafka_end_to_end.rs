//! End to end on the real broker: every example pipeline's fixtures are
//! produced to Kafka topics (one record at a time, in file order), kaflowsql
//! runs the pipeline, and the output topic must equal — as a multiset — what
//! `kaflowsql test` produces offline for the same input. Dead letters land in
//! the DLQ topic with their reason header, and SIGTERM exits 0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use kaflowsql::config::Pipeline;
use kaflowsql::engine::Engine;
use kaflowsql::testing::{compare, read_input, run};
use support::{create_topics, localize, producer, read_topic, require_broker, unique, Kaflowsql};

fn end_to_end(name: &str) {
    require_broker();
    let root = support::repo_root();
    let file = root.join("pipelines").join(format!("{name}.yaml"));
    let fixtures = root.join("pipelines/fixtures").join(name);
    let input = read_input(&fixtures.join("input.jsonl")).unwrap();

    // What the offline runner produces for the same input.
    let pipeline = Pipeline::load(&file).unwrap();
    let mut engine = Engine::new(&pipeline).unwrap();
    let offline = run(&mut engine, &input).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let suffix = unique("e2e").replace('-', "_");
    let (local, renames) = localize(&file, dir.path(), &suffix);
    let local_pipeline = Pipeline::load(&local).unwrap();
    let mut topics: Vec<(&str, i32)> = renames.values().map(|t| (t.as_str(), 1)).collect();
    topics.push((&local_pipeline.output.dlq_topic, 1));
    create_topics(&topics);

    let k = Kaflowsql::start(dir.path(), &[&local], &[]);
    let p = producer();
    for (i, r) in input.iter().enumerate() {
        p.send(
            &renames[&r.topic],
            Some(0),
            r.key.as_deref(),
            r.value.as_deref(),
            r.timestamp,
        );
        p.flush();
        // One record at a time, so Kafka delivers them in file order as the offline run reads them.
        k.wait_until(Duration::from_secs(30), |k| {
            k.metric("kaflowsql_events_processed_total") >= (i + 1) as f64
        });
    }

    let out = read_topic(
        &local_pipeline.output.topic,
        offline.lines.len(),
        Duration::from_millis(500),
        Duration::from_secs(30),
    );
    let actual: Vec<String> = out.iter().map(|r| r.line()).collect();
    let verdict = compare(&actual, &offline.lines, true);
    assert!(
        verdict.matches(),
        "{name}: Kafka output differs from the offline run:\n{}\n{}",
        verdict.report(),
        k.log_text()
    );
    for r in &out {
        assert!(r.headers.contains_key("kaflowsql.source.topic"), "{r:?}");
        assert!(r.headers.contains_key("kaflowsql.source.offset"), "{r:?}");
    }

    let dlq = read_topic(
        &local_pipeline.output.dlq_topic,
        offline.dead_letters.len(),
        Duration::from_millis(300),
        Duration::from_secs(20),
    );
    assert_eq!(
        dlq.len(),
        offline.dead_letters.len(),
        "{name}: dead letters"
    );
    for (got, want) in dlq.iter().zip(&offline.dead_letters) {
        assert_eq!(got.headers.get("kaflowsql.dlq.reason"), Some(&want.reason));
        assert_eq!(
            got.headers.get("kaflowsql.source.offset"),
            Some(&want.offset.to_string())
        );
        assert_eq!(
            got.value,
            want.value.clone().unwrap_or_default(),
            "the original bytes are kept"
        );
    }
    assert_eq!(
        k.metric("kaflowsql_dlq_records_total"),
        offline.dead_letters.len() as f64
    );
    assert_eq!(
        k.metric("kaflowsql_output_records_total"),
        offline.lines.len() as f64
    );

    let status = k.terminate();
    assert!(status.success(), "SIGTERM must exit 0, got {status:?}");
}

#[test]
fn user_events_smart_emission_through_kafka() {
    end_to_end("user_events");
}

#[test]
fn trades_dimension_enrichment_through_kafka() {
    end_to_end("trades");
}

#[test]
fn iot_enrichment_through_kafka() {
    end_to_end("iot");
}

#[test]
fn orders_stream_stream_join_through_kafka() {
    end_to_end("orders");
}
