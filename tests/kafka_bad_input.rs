//! The reliability issue's reproductions, verbatim, on the real broker: a
//! record whose SQL fails on its value (a poison pill) and a non-boolean WHERE
//! go to the dead-letter topic with the reason in headers and their original
//! bytes, the other records are emitted, and `kaflowsql run` keeps running.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::{create_topics, now_ms, producer, read_topic, require_broker, unique, Kaflowsql};

#[test]
fn a_poison_pill_does_not_stop_the_pipeline() {
    require_broker();
    let dir = tempfile::tempdir().unwrap();
    let s = unique("poison").replace('-', "_");
    let (orders, customers, out, dlq) = (
        format!("orders_{s}"),
        format!("customers_{s}"),
        format!("out_{s}"),
        format!("dlq_{s}"),
    );
    create_topics(&[(&orders, 1), (&customers, 1), (&out, 1), (&dlq, 1)]);
    let file = dir.path().join("poison.yaml");
    std::fs::write(
        &file,
        format!(
            "name: poison_{s}
query: |
  SELECT o.order_id, CAST(o.qty AS INTEGER) AS qty, c.name
  FROM {orders} o
  LEFT JOIN {customers} c ON o.customer_id = c.customer_id
output: {{ topic: {out}, key: order_id, dlq_topic: {dlq} }}
state:
  dimensions: [{customers}]
"
        ),
    )
    .unwrap();
    let p = producer();
    let now = now_ms();
    p.send(
        &customers,
        Some(0),
        Some(b"c1"),
        Some(br#"{"customer_id":"c1","name":"Ada"}"#),
        now,
    );
    p.flush();
    let k = Kaflowsql::start(dir.path(), &[&file], &[]);
    for (i, (id, qty)) in [("o1", "3"), ("o2", "three"), ("o3", "5")]
        .iter()
        .enumerate()
    {
        let value = format!(r#"{{"order_id":"{id}","customer_id":"c1","qty":"{qty}"}}"#);
        p.send(
            &orders,
            Some(0),
            Some(id.as_bytes()),
            Some(value.as_bytes()),
            now + i as i64,
        );
    }
    p.flush();
    let rows = read_topic(&out, 2, Duration::from_millis(500), Duration::from_secs(30));
    let lines: Vec<String> = rows.iter().map(|r| r.line()).collect();
    assert_eq!(
        lines,
        vec![
            r#"{"key":"o1","value":{"order_id":"o1","qty":3,"name":"Ada"}}"#,
            r#"{"key":"o3","value":{"order_id":"o3","qty":5,"name":"Ada"}}"#,
        ],
        "{}",
        k.log_text()
    );
    let dead = read_topic(&dlq, 1, Duration::from_millis(300), Duration::from_secs(20));
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].value,
        br#"{"order_id":"o2","customer_id":"c1","qty":"three"}"#.to_vec()
    );
    let reason = &dead[0].headers["kaflowsql.dlq.reason"];
    assert!(
        reason.contains("Could not convert string 'three'"),
        "{reason}"
    );
    assert_eq!(dead[0].headers["kaflowsql.source.offset"], "1");
    assert_eq!(dead[0].headers["kaflowsql.dlq.value"], "original");
    assert_eq!(k.metric("kaflowsql_dlq_records_total"), 1.0);
    // What an operator runs to read the reason.
    let peek = std::process::Command::new(env!("CARGO_BIN_EXE_kaflowsql"))
        .args([
            "peek",
            "--brokers",
            &support::brokers(),
            "--topic",
            &dlq,
            "--count",
            "1",
            "--headers",
        ])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&peek.stdout);
    assert!(peek.status.success(), "{line}");
    let doc: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert!(
        doc["headers"]["kaflowsql.dlq.reason"]
            .as_str()
            .is_some_and(|r| r.contains("Could not convert string 'three'")),
        "{doc}"
    );
    assert!(k.get("/healthz").is_some_and(|(s, _)| s == 200));
    // Still running: a later record is processed.
    p.send(
        &orders,
        Some(0),
        Some(b"o4"),
        Some(br#"{"order_id":"o4","customer_id":"c1","qty":"7"}"#),
        now + 9,
    );
    p.flush();
    let rows = read_topic(&out, 3, Duration::from_millis(300), Duration::from_secs(30));
    assert_eq!(rows.len(), 3, "{}", k.log_text());
    assert!(k.terminate().success());
}

#[test]
fn a_non_boolean_where_does_not_panic_the_pipeline() {
    require_broker();
    let dir = tempfile::tempdir().unwrap();
    let s = unique("flag").replace('-', "_");
    let (events, out, dlq) = (
        format!("events_{s}"),
        format!("out_{s}"),
        format!("dlq_{s}"),
    );
    create_topics(&[(&events, 1), (&out, 1), (&dlq, 1)]);
    let file = dir.path().join("flag.yaml");
    std::fs::write(
        &file,
        format!(
            "name: flag_{s}
query: SELECT e.id, e.flag FROM {events} e WHERE e.flag
output: {{ topic: {out}, dlq_topic: {dlq} }}
"
        ),
    )
    .unwrap();
    let validate = std::process::Command::new(env!("CARGO_BIN_EXE_kaflowsql"))
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    assert!(validate.status.success());
    let k = Kaflowsql::start(dir.path(), &[&file], &[]);
    let p = producer();
    let now = now_ms();
    p.send(
        &events,
        Some(0),
        Some(b"a"),
        Some(br#"{"id":"a","flag":1}"#),
        now,
    );
    p.flush();
    let dead = read_topic(&dlq, 1, Duration::from_millis(300), Duration::from_secs(30));
    assert_eq!(dead.len(), 1, "{}", k.log_text());
    assert!(dead[0].headers["kaflowsql.dlq.reason"].contains("BOOLEAN"));
    assert!(
        k.get("/healthz").is_some_and(|(s, _)| s == 200),
        "{}",
        k.log_text()
    );
    assert!(k.terminate().success());
}
