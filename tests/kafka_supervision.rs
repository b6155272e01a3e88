//! Supervised pipelines: a pipeline that fails stops the process with the
//! exit code of its error's domain after the other pipelines drained, and a
//! stop request is honoured even while the producer's queue is full (the
//! broker gone).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use support::{brokers, create_topics, now_ms, producer_on, require_broker, unique, Kaflowsql};

#[test]
fn a_failing_pipeline_stops_the_process_after_the_others_drained() {
    require_broker();
    let dir = tempfile::tempdir().unwrap();
    let s = unique("sup").replace('-', "_");
    let (a, b, c) = (format!("a_{s}"), format!("b_{s}"), format!("c_{s}"));
    // `a` and `b` are joined event streams with different partition counts:
    // a configuration error no retry can fix.
    create_topics(&[(&a, 1), (&b, 2), (&c, 1)]);
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!(
            "name: bad_{s}\nquery: SELECT x.id, y.id AS yid FROM {a} x JOIN {b} y ON x.id = y.id\noutput: {{ topic: out_bad_{s} }}\n"
        ),
    )
    .unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        format!(
            "name: good_{s}\nquery: SELECT e.id FROM {c} e\noutput: {{ topic: out_good_{s} }}\n"
        ),
    )
    .unwrap();
    let k = Kaflowsql::launch_with_properties(&brokers(), dir.path(), &[&good, &bad], &[]);
    let mut saw_unhealthy = false;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        match k.get("/healthz") {
            Some((503, body)) => {
                assert!(body.contains("co-partitioned"), "{body}");
                saw_unhealthy = true;
            }
            Some(_) => {}
            None => break,
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let log = k.log_text();
    let status = k.wait_exit(Duration::from_secs(60));
    assert_eq!(
        status.code(),
        Some(3),
        "a configuration error exits 3:\n{log}"
    );
    assert!(log.contains("Pipeline failed"), "{log}");
    assert!(log.contains("co-partitioned"), "{log}");
    let stopped = log
        .lines()
        .any(|l| l.contains("Pipeline stopped.") && l.contains(&format!("good_{s}")));
    assert!(stopped, "the healthy pipeline drained:\n{log}");
    println!("/healthz answered 503 before the exit: {saw_unhealthy}");
}

#[test]
fn sigterm_is_honoured_while_the_producer_queue_is_full() {
    let cluster: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let s = unique("full").replace('-', "_");
    let (input, out) = (format!("in_{s}"), format!("out_{s}"));
    cluster.create_topic(&input, 1, 1).unwrap();
    cluster.create_topic(&out, 1, 1).unwrap();
    let file = dir.path().join("p.yaml");
    std::fs::write(
        &file,
        format!("name: full_{s}\nquery: SELECT e.id FROM {input} e\noutput: {{ topic: {out} }}\n"),
    )
    .unwrap();
    let p = producer_on(&brokers);
    let now = now_ms();
    for i in 0..20_000 {
        let v = format!(r#"{{"id":{i}}}"#);
        p.send(&input, Some(0), None, Some(v.as_bytes()), now + i);
    }
    p.flush();
    // A producer queue of 10 records: with the broker down it is full at once.
    let k = Kaflowsql::launch_with_properties(
        &brokers,
        dir.path(),
        &[&file],
        &[("queue.buffering.max.messages", "10")],
    );
    k.wait_until(Duration::from_secs(60), |k| {
        k.metric("kaflowsql_output_records_total") >= 100.0
    });
    cluster.broker_down(1).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let stopping = Instant::now();
    let status = k.terminate();
    let took = stopping.elapsed();
    cluster.broker_up(1).unwrap();
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
    assert!(
        took < Duration::from_secs(40),
        "stopped within the 30 s drain timeout (took {took:?})"
    );
}
