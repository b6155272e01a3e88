//! Bad input never stops a pipeline (offline, through the same engine as
//! `kaflowsql run`): a row whose SQL fails on its values goes to the dead
//! letters with DuckDB's reason while the rest of its batch is emitted; SQL
//! that cannot run is refused before start; event time is parsed in every
//! RFC 3339 form, bounded against the wall clock, and records expired on
//! arrival are neither stored nor joined.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use kaflowsql::config::{ConfigError, Pipeline};
use kaflowsql::engine::Engine;
use kaflowsql::testing::{run, Recorded, RunOutput};

fn pipeline(text: &str) -> Pipeline {
    Pipeline::parse(Path::new("p.yaml"), text).unwrap_or_else(|e| panic!("{e}"))
}

fn refusal(text: &str) -> String {
    match Pipeline::parse(Path::new("p.yaml"), text) {
        Err(ConfigError::Invalid(d)) => d.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn record(topic: &str, offset: i64, key: &str, value: &str, ts: i64) -> Recorded {
    Recorded {
        topic: topic.to_string(),
        partition: 0,
        offset,
        timestamp: ts,
        key: Some(key.as_bytes().to_vec()),
        value: Some(value.as_bytes().to_vec()),
    }
}

fn run_all(p: &Pipeline, input: &[Recorded], batch_rows: usize) -> RunOutput {
    let mut engine = Engine::new(p).unwrap().with_batch_rows(batch_rows);
    run(&mut engine, input).unwrap()
}

const T0: i64 = 1_700_000_000_000;

const POISON: &str = "name: poison
query: |
  SELECT o.order_id, CAST(o.qty AS INTEGER) AS qty, c.name
  FROM orders o
  LEFT JOIN customers c ON o.customer_id = c.customer_id
output: { topic: out, key: order_id }
state:
  dimensions: [customers]
";

#[test]
fn a_poison_pill_goes_to_the_dead_letters_and_the_batch_goes_on() {
    let p = pipeline(POISON);
    let input = vec![
        record(
            "customers",
            0,
            "c1",
            r#"{"customer_id":"c1","name":"Ada"}"#,
            T0,
        ),
        record(
            "orders",
            0,
            "o1",
            r#"{"order_id":"o1","customer_id":"c1","qty":"3"}"#,
            T0 + 1,
        ),
        record(
            "orders",
            1,
            "o2",
            r#"{"order_id":"o2","customer_id":"c1","qty":"three"}"#,
            T0 + 2,
        ),
        record(
            "orders",
            2,
            "o3",
            r#"{"order_id":"o3","customer_id":"c1","qty":"5"}"#,
            T0 + 3,
        ),
    ];
    for batch_rows in [1, 2, 4096] {
        let out = run_all(&p, &input, batch_rows);
        assert_eq!(
            out.lines,
            vec![
                r#"{"key":"o1","value":{"order_id":"o1","qty":3,"name":"Ada"}}"#,
                r#"{"key":"o3","value":{"order_id":"o3","qty":5,"name":"Ada"}}"#,
            ],
            "batches of {batch_rows}"
        );
        assert_eq!(out.dead_letters.len(), 1, "batches of {batch_rows}");
        let dead = &out.dead_letters[0];
        assert_eq!((dead.topic.as_str(), dead.offset), ("orders", 1));
        assert!(
            dead.reason.contains("Could not convert string 'three'"),
            "{}",
            dead.reason
        );
        assert!(!dead.decoded_copy, "the recorded bytes are put back");
        assert_eq!(dead.value.as_deref(), input[2].value.as_deref());
    }
}

const FLAG: &str = "name: flags
query: SELECT e.id, e.flag FROM events e WHERE e.flag
output: { topic: out }
";

#[test]
fn a_non_boolean_where_is_a_dead_letter_not_a_panic() {
    let p = pipeline(FLAG);
    let out = run_all(
        &p,
        &[record("events", 0, "a", r#"{"id":"a","flag":1}"#, T0)],
        4096,
    );
    assert!(out.lines.is_empty(), "{:?}", out.lines);
    assert_eq!(out.dead_letters.len(), 1, "{:?}", out.dead_letters);
    assert!(
        out.dead_letters[0].reason.contains("BOOLEAN"),
        "{:?}",
        out.dead_letters
    );
    let out = run_all(
        &p,
        &[record("events", 0, "b", r#"{"id":"b","flag":true}"#, T0)],
        4096,
    );
    assert_eq!(
        out.lines,
        vec![r#"{"key":null,"value":{"id":"b","flag":true}}"#]
    );
}

#[test]
fn sql_that_cannot_run_is_refused_before_start_with_its_position() {
    let declared = format!("{FLAG}sources:\n  events:\n    columns: {{ flag: BIGINT }}\n");
    let e = refusal(&declared);
    assert!(e.contains("BIGINT, not BOOLEAN"), "{e}");
    assert!(e.starts_with("p.yaml:2:"), "{e}");
    let e = refusal(&FLAG.replace("e.flag FROM", "arg_max(e.id, e.flag) FROM"));
    assert!(e.contains("aggregate `arg_max`"), "{e}");
    for aggregate in [
        "\"ARG_MAX\"(e.id, e.flag)",
        "main.arg_max(e.id, e.flag)",
        "histogram(e.id)",
    ] {
        let e = refusal(&FLAG.replace("e.flag FROM", &format!("{aggregate} FROM")));
        assert!(e.contains("aggregate"), "{aggregate}: {e}");
        assert!(!e.contains("__kf_row"), "no internal names: {e}");
    }
    let e = refusal(&FLAG.replace("e.flag FROM", "no_such_function(e.flag) FROM"));
    assert!(e.contains("no_such_function"), "{e}");
    assert!(e.starts_with("p.yaml:2:21:"), "points at the call: {e}");
    assert!(e.contains("help:"), "{e}");
    let e = refusal(&FLAG.replace("e.flag FROM", "substr(e.id) FROM"));
    assert!(e.contains("DuckDB cannot run this query"), "{e}");
}

const ORDERS: &str = "name: paid
query: |
  SELECT o.order_id, p.payment_id FROM orders o JOIN payments p ON o.order_id = p.order_id
output: { topic: out, key: order_id }
state:
  events: { default_ttl: 1m }
";

#[test]
fn records_expired_on_arrival_are_neither_stored_nor_joined() {
    let p = pipeline(ORDERS);
    let input = vec![
        record("orders", 0, "o9", r#"{"order_id":"o9"}"#, 100_000),
        record(
            "payments",
            0,
            "x",
            r#"{"payment_id":"px","order_id":"x"}"#,
            100_000,
        ),
        // Late: 0 + 60 s < the watermark (100 s).
        record(
            "payments",
            1,
            "o9",
            r#"{"payment_id":"p9","order_id":"o9"}"#,
            0,
        ),
        record("orders", 1, "x", r#"{"order_id":"x"}"#, 10_000),
        // In time: 50 s + 60 s >= 100 s.
        record(
            "payments",
            2,
            "o9",
            r#"{"payment_id":"p9b","order_id":"o9"}"#,
            50_000,
        ),
    ];
    let mut engine = Engine::new(&p).unwrap();
    let out = run(&mut engine, &input).unwrap();
    assert_eq!(
        out.lines,
        vec![r#"{"key":"o9","value":{"order_id":"o9","payment_id":"p9b"}}"#]
    );
    assert_eq!(
        engine.stats().late,
        2,
        "a late payment and a late driving order"
    );
    assert!(out.dead_letters.is_empty());
}

#[test]
fn event_time_from_the_far_future_or_nowhere_is_a_dead_letter() {
    let p = pipeline(ORDERS);
    let year_2100 = 4_102_444_800_000;
    let mut no_time = record(
        "payments",
        1,
        "o1",
        r#"{"payment_id":"p0","order_id":"o1"}"#,
        0,
    );
    no_time.timestamp = kaflowsql::engine::NO_TIMESTAMP;
    let input = vec![
        record("orders", 0, "o1", r#"{"order_id":"o1"}"#, T0),
        record(
            "payments",
            0,
            "o1",
            r#"{"payment_id":"p1","order_id":"o1"}"#,
            year_2100,
        ),
        no_time,
        record(
            "payments",
            2,
            "o1",
            r#"{"payment_id":"p2","order_id":"o1"}"#,
            T0 + 5,
        ),
    ];
    let mut engine = Engine::new(&p).unwrap();
    let out = run(&mut engine, &input).unwrap();
    assert_eq!(
        out.lines,
        vec![r#"{"key":"o1","value":{"order_id":"o1","payment_id":"p2"}}"#],
        "the far-future record did not move the watermark"
    );
    // The slower stream (orders, at T0) holds the watermark, not the year 2100.
    assert_eq!(engine.watermark(), T0);
    let reasons: Vec<&str> = out.dead_letters.iter().map(|d| d.reason.as_str()).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].contains("ahead of the wall clock"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("no Kafka timestamp"), "{reasons:?}");
}

#[test]
fn declared_timestamps_parse_in_every_rfc3339_form() {
    let p = pipeline(
        "name: ship
query: SELECT s.id FROM shipments s
output: { topic: out }
sources:
  shipments: { timestamp: shipped_at }
state:
  events: { max_ahead: 36500d }
",
    );
    let forms = [
        "2100-01-01T01:00:00+01:00",
        "2099-12-31T23:00:00-01:00",
        "2100-01-01t00:00:00z",
        "1969-07-20T20:17:40.5Z",
        "1900-01-01T00:00:00+00:00",
    ];
    let input: Vec<Recorded> = forms
        .iter()
        .enumerate()
        .map(|(i, f)| {
            record(
                "shipments",
                i as i64,
                "k",
                &format!(r#"{{"id":"s{i}","shipped_at":"{f}"}}"#),
                T0,
            )
        })
        .collect();
    let out = run_all(&p, &input, 4096);
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    // Out of order by up to two centuries: the TTL (1h) makes the later ones late.
    assert_eq!(out.lines.len(), 3, "{:?}", out.lines);
}
