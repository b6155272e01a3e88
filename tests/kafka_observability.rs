//! Observability on the real broker: counters move by the right amounts,
//! the join hit rate matches the data's, `/readyz` waits for the dimensions,
//! and `/debug/pprof/profile` returns a pprof protobuf with samples from
//! kaflowsql's own functions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pprof::protos::Message;
use support::{
    create_topics, http_get, localize, producer, require_broker, unique, Kaflowsql, Prometheus,
};

#[test]
fn metrics_readiness_and_cpu_profile() {
    require_broker();
    let root = support::repo_root();
    let dir = tempfile::tempdir().unwrap();
    let suffix = unique("obs").replace('-', "_");
    let (local, renames) = localize(&root.join("pipelines/trades.yaml"), dir.path(), &suffix);
    // The dimension topic dim_traders does not exist yet: the pipeline waits, not ready.
    create_topics(&[
        (&renames["trades"], 1),
        (&renames["dim_symbols"], 1),
        (&renames["enriched_trades"], 1),
    ]);
    let (k, profiling) = Kaflowsql::spawn_profiled(dir.path(), &[&local]);
    assert_eq!(
        k.get("/debug/pprof/profile?seconds=1").unwrap().0,
        404,
        "profiles are not served next to /metrics"
    );
    // A real Prometheus scrapes it every second: the guide's PromQL runs on that.
    let prometheus = Prometheus::scraping(k.port);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        k.get("/readyz").unwrap().0,
        503,
        "not ready before the dimensions are read"
    );
    assert_eq!(k.get("/healthz").unwrap().0, 200, "alive all the same");
    // A backlog of trades (in blocks of 10, so hit rates are exact) waits for the dimensions.
    let p = producer();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let trades: u64 = 100_000;
    for i in 0..trades {
        let v = format!(
            r#"{{"trade_id":{i},"symbol":"S{}","trader_id":"T{}","qty":1,"price":2.5}}"#,
            i % 10,
            i % 5
        );
        p.send(
            &renames["trades"],
            Some(0),
            Some(format!("S{}", i % 10).as_bytes()),
            Some(v.as_bytes()),
            now + i as i64,
        );
    }
    create_topics(&[(&renames["dim_traders"], 1)]);
    // 10 symbols, 9 of them known; 5 traders, all known.
    for s in 0..9 {
        let v = format!(r#"{{"symbol":"S{s}","name":"Company {s}","sector":"Tech"}}"#);
        p.send(
            &renames["dim_symbols"],
            None,
            Some(format!("S{s}").as_bytes()),
            Some(v.as_bytes()),
            now,
        );
    }
    for t in 0..5 {
        let v = format!(r#"{{"trader_id":"T{t}","desk":"D","region":"EU"}}"#);
        p.send(
            &renames["dim_traders"],
            None,
            Some(format!("T{t}").as_bytes()),
            Some(v.as_bytes()),
            now,
        );
    }
    p.flush();
    // Fresh load (more trades, in blocks of 50: whole tens) through both profiles: a
    // profile samples CPU time, and the backlog alone may be gone by then.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (topic, stopped) = (renames["trades"].clone(), stop.clone());
    let load = std::thread::spawn(move || {
        let p = producer();
        let mut i = trades;
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            for _ in 0..50 {
                let v = format!(
                    r#"{{"trade_id":{i},"symbol":"S{}","trader_id":"T{}","qty":1,"price":2.5}}"#,
                    i % 10,
                    i % 5
                );
                p.send(
                    &topic,
                    Some(0),
                    Some(format!("S{}", i % 10).as_bytes()),
                    Some(v.as_bytes()),
                    now + i as i64,
                );
                i += 1;
            }
            // Up to about 50,000 trades a second: load to sample, a backlog that clears.
            std::thread::sleep(Duration::from_millis(1));
        }
        p.flush();
        i
    });
    // Profile while the backlog is processed.
    k.wait_until(Duration::from_secs(60), |k| {
        k.metric("kaflowsql_events_processed_total") > 2_000.0
    });
    let before = k.metric("kaflowsql_events_processed_total");
    let (status, body) = http_get(
        profiling,
        "/debug/pprof/profile?seconds=2",
        Duration::from_secs(30),
    )
    .unwrap();
    eprintln!(
        "processed before profile {before}, after {}",
        k.metric("kaflowsql_events_processed_total")
    );
    k.wait_until(Duration::from_secs(10), |k| {
        k.get("/readyz").is_some_and(|(s, _)| s == 200)
    });
    assert_eq!(status, 200);
    let profile = pprof::protos::Profile::decode(body.as_slice()).expect("a pprof protobuf");
    eprintln!(
        "profile: {} bytes, {} samples",
        body.len(),
        profile.sample.len()
    );
    assert!(!profile.sample.is_empty(), "samples were taken");
    assert!(
        profile.string_table.iter().any(|s| s.contains("kaflowsql")),
        "kaflowsql's own functions appear in the profile"
    );
    // A profile samples CPU time: on a fast machine a light load may give
    // none (409), so try a few times.
    let mut svg_reply = None;
    for _ in 0..3 {
        let reply = http_get(
            profiling,
            "/debug/pprof/profile?seconds=2&format=svg",
            Duration::from_secs(30),
        )
        .unwrap();
        let idle = reply.0 == 409;
        svg_reply = Some(reply);
        if !idle {
            break;
        }
    }
    let (svg_status, svg) = svg_reply.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let trades = load.join().unwrap();
    assert_eq!(svg_status, 200, "{}", String::from_utf8_lossy(&svg));
    assert!(
        String::from_utf8_lossy(&svg).contains("<svg"),
        "{}",
        String::from_utf8_lossy(&svg)
    );

    let sent = (9 + 5 + trades) as f64;
    k.wait_until(Duration::from_secs(60), |k| {
        k.metric("kaflowsql_events_processed_total") >= sent
    });
    k.wait_until(Duration::from_secs(30), |k| {
        k.metric("kaflowsql_output_records_total") >= trades as f64
    });
    assert_eq!(
        k.metric("kaflowsql_events_processed_total"),
        sent,
        "every record counted once"
    );
    assert_eq!(k.metric("kaflowsql_output_records_total"), trades as f64);
    // Two lookups per trade: the symbol (9 of 10 known) and the trader (all known).
    let hit_rate = k.metric("kaflowsql_join_hit_rate");
    assert!((hit_rate - 0.95).abs() < 0.001, "hit rate {hit_rate}");
    assert_eq!(
        k.metric("kaflowsql_join_lookups_total"),
        2.0 * trades as f64
    );
    assert!(k.metric("kaflowsql_processing_duration_histogram_count") >= trades as f64);
    assert!(k.metric("kaflowsql_memory_usage_bytes") > 1e6);
    assert!(
        k.metric("kaflowsql_join_lookup_duration_count") > 0.0,
        "lookup latency is sampled"
    );

    // The guide's queries, on Prometheus (after one more scrape).
    std::thread::sleep(Duration::from_secs(3));
    let p99 = prometheus.value(
        "histogram_quantile(0.99, sum by (pipeline, le) (rate(kaflowsql_processing_duration_histogram_bucket[5m])))",
    );
    assert!(p99 > 0.0 && p99 <= 10.0, "p99 {p99} s");
    let rate = prometheus.value("rate(kaflowsql_events_processed_total[5m])");
    assert!(rate > 0.0, "rate {rate}");
    let lookups = prometheus.value(
        "histogram_quantile(0.5, sum by (le) (rate(kaflowsql_join_lookup_duration_bucket[5m])))",
    );
    assert!(lookups > 0.0 && lookups < 1.0, "lookup p50 {lookups} s");
    let hit = prometheus.value("kaflowsql_join_hit_rate");
    assert!((hit - 0.95).abs() < 0.001, "hit rate on Prometheus {hit}");
    eprintln!("prometheus: p99 {p99} s, rate {rate:.0}/s, lookup p50 {lookups} s, hit rate {hit}");

    assert!(k.terminate().success());
}

/// A dimension written in many batches is read to its real end before any
/// output, whatever end offset the broker lists (Tansu 0.6 lists the last
/// batch's base offset + 1): every trade of a preloaded backlog finds its
/// symbol, including symbols from the last batches.
#[test]
fn dimensions_are_read_to_their_end_before_any_output() {
    require_broker();
    let root = support::repo_root();
    let dir = tempfile::tempdir().unwrap();
    let suffix = unique("dimend").replace('-', "_");
    let (local, renames) = localize(&root.join("pipelines/trades.yaml"), dir.path(), &suffix);
    create_topics(&[
        (&renames["trades"], 1),
        (&renames["dim_symbols"], 1),
        (&renames["dim_traders"], 1),
        (&renames["enriched_trades"], 1),
    ]);
    let p = producer();
    let symbols = 20_000;
    for s in 0..symbols {
        let v = format!(r#"{{"symbol":"S{s}","name":"Company {s}","sector":"Tech"}}"#);
        p.send(
            &renames["dim_symbols"],
            None,
            Some(format!("S{s}").as_bytes()),
            Some(v.as_bytes()),
            1_000,
        );
        // Separate produce requests: many batches in the partition.
        if s % 500 == 499 {
            p.flush();
        }
    }
    let v = r#"{"trader_id":"T0","desk":"D","region":"EU"}"#;
    p.send(
        &renames["dim_traders"],
        None,
        Some(b"T0"),
        Some(v.as_bytes()),
        1_000,
    );
    // Trades on the last symbols written, preloaded before kaflowsql starts.
    let trades = 1_000;
    for i in 0..trades {
        let symbol = format!("S{}", symbols - 1 - i);
        let v = format!(
            r#"{{"trade_id":{i},"symbol":"{symbol}","trader_id":"T0","qty":1,"price":2.5}}"#
        );
        p.send(
            &renames["trades"],
            Some(0),
            Some(symbol.as_bytes()),
            Some(v.as_bytes()),
            2_000 + i as i64,
        );
    }
    p.flush();
    // Static partitions: no group join delay for the dimensions to hide behind.
    let k = Kaflowsql::start(dir.path(), &[&local], &["--partition", "0"]);
    // Ready means every dimension record was read (before the event streams).
    let log = k.log_text();
    let loaded = log
        .lines()
        .find(|l| l.contains("Dimensions loaded."))
        .unwrap_or_default();
    assert!(
        loaded.contains(&format!("records={}", symbols + 1)),
        "{loaded}"
    );
    let out = support::read_topic(
        &renames["enriched_trades"],
        trades,
        Duration::from_secs(1),
        Duration::from_secs(90),
    );
    assert_eq!(out.len(), trades, "one output per trade");
    let unenriched: Vec<String> = out
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).to_string())
        .filter(|v| !v.contains("\"company\":\"Company "))
        .collect();
    assert!(
        unenriched.is_empty(),
        "{} of {trades} trades left without their symbol, e.g. {:?}",
        unenriched.len(),
        unenriched.first()
    );
    assert!(k.terminate().success());
}
