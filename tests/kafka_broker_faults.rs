//! Broker faults, injected with librdkafka's mock cluster (the real broker
//! cannot be stopped without losing its in-memory data): the broker goes down
//! mid-run, kaflowsql keeps running, and when the broker returns every
//! expected output arrives. Then SIGTERM exits 0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use support::{localize, producer_on, read_topic_from, unique, Kaflowsql};

#[test]
fn the_pipeline_waits_out_a_broker_outage_and_loses_nothing() {
    let cluster: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let root = support::repo_root();
    let dir = tempfile::tempdir().unwrap();
    let suffix = unique("fault").replace('-', "_");
    let (local, renames) = localize(&root.join("pipelines/trades.yaml"), dir.path(), &suffix);
    for t in renames.values() {
        cluster.create_topic(t, 1, 1).unwrap();
    }
    cluster
        .create_topic(&format!("enriched_trades_{suffix}.dlq"), 1, 1)
        .unwrap();

    let p = producer_on(&brokers);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    p.send(
        &renames["dim_symbols"],
        None,
        Some(b"AAPL"),
        Some(br#"{"symbol":"AAPL","name":"Apple","sector":"Tech"}"#),
        now,
    );
    p.send(
        &renames["dim_traders"],
        None,
        Some(b"T1"),
        Some(br#"{"trader_id":"T1","desk":"D","region":"EU"}"#),
        now,
    );
    let trade = |i: i64| {
        format!(r#"{{"trade_id":{i},"symbol":"AAPL","trader_id":"T1","qty":{i},"price":2.0}}"#)
    };
    for i in 0..500 {
        p.send(
            &renames["trades"],
            Some(0),
            Some(b"AAPL"),
            Some(trade(i).as_bytes()),
            now + i,
        );
    }
    p.flush();

    let k = Kaflowsql::start_on(&brokers, dir.path(), &[&local], &[]);
    k.wait_until(Duration::from_secs(60), |k| {
        k.metric("kaflowsql_output_records_total") >= 500.0
    });

    cluster.broker_down(1).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        k.get("/healthz").is_some_and(|(s, _)| s == 200),
        "the process survives the outage"
    );
    cluster.broker_up(1).unwrap();

    // A new producer for the second half: the test's own client is not under test.
    let p = producer_on(&brokers);
    for i in 500..1_000 {
        p.send(
            &renames["trades"],
            Some(0),
            Some(b"AAPL"),
            Some(trade(i).as_bytes()),
            now + i,
        );
    }
    p.flush();
    k.wait_until(Duration::from_secs(90), |k| {
        k.metric("kaflowsql_output_records_total") >= 1_000.0
    });
    let out = read_topic_from(
        &brokers,
        &renames["enriched_trades"],
        1_000,
        Duration::from_millis(500),
        Duration::from_secs(30),
    );
    let mut ids: Vec<i64> = out
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.value).unwrap()["trade_id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        1_000,
        "every trade enriched exactly once or more"
    );
    // librdkafka reports consumer lag every 5 s per assigned partition: a line
    // for the trades partition, no more than what was produced.
    let lag_line = |k: &Kaflowsql| {
        k.get("/metrics").and_then(|(_, body)| {
            body.lines()
                .find(|l| {
                    l.starts_with("kaflowsql_consumer_lag{") && l.contains(&renames["trades"])
                })
                .map(str::to_string)
        })
    };
    k.wait_until(Duration::from_secs(30), |k| lag_line(k).is_some());
    let line = lag_line(&k).unwrap();
    let lag: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    println!("consumer lag after the outage: {line}");
    assert!((0.0..=1_000.0).contains(&lag), "{line}");
    assert!(k.terminate().success());
}
