//! End-to-end benchmark through the local broker (Tansu, started by
//! `deploy/local/broker.sh`): the IoT enrichment pipeline (`pipelines/iot.yaml`,
//! sensor readings joined with device metadata) against a passthrough
//! baseline measured in the same run (a minimal rdkafka consumer → producer
//! copying the driving topic, no parsing).
//!
//! Two modes, each bounded in count and time:
//! - max throughput: N readings preloaded, then drained; events/s from the
//!   first to the last output arrival, peak RSS of the kaflowsql process;
//! - fixed rate: readings produced at R/s for S seconds; per-event latency
//!   from production to the output's arrival at a consumer (p50/p95/p99).
//!
//! Shared by `benches/e2e.rs` (the benchmark) and `tests/e2e_smoke.rs` (a
//! tiny run in the test suite, so the harness keeps working). Broker,
//! generator, pipeline and reader share this machine's cores.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const BROKERS: &str = "127.0.0.1:9092";

/// Sizes of one harness run.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Readings preloaded for the max-throughput mode.
    pub events: u64,
    /// Readings per second in the fixed-rate mode.
    pub rate: u64,
    /// Seconds of the fixed-rate mode.
    pub seconds: u64,
    /// Also run the Quix Streams peer (needs quixstreams in .deps/venv).
    pub peer: bool,
}

/// What one harness run measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub events: u64,
    pub baseline_events_per_s: f64,
    pub kaflowsql_events_per_s: f64,
    pub ratio_to_baseline: f64,
    pub outputs: u64,
    pub expected_outputs: u64,
    pub peak_rss_mb: f64,
    /// The Quix Streams peer, max throughput (None when not run).
    pub peer_events_per_s: Option<f64>,
    pub rate: u64,
    pub seconds: u64,
    pub baseline_latency_ms: [f64; 3],
    pub kaflowsql_latency_ms: [f64; 3],
    pub fixed_rate_outputs: u64,
    pub fixed_rate_expected: u64,
}

impl Report {
    /// True when no expected output is missing (a run that lost rows failed).
    pub fn complete(&self) -> bool {
        self.outputs == self.expected_outputs && self.fixed_rate_outputs == self.fixed_rate_expected
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "scenario": "iot",
            "machine": "2 cores shared by broker, generator, pipeline and reader",
            "max_throughput": {
                "events": self.events,
                "baseline_events_per_s": self.baseline_events_per_s,
                "kaflowsql_events_per_s": self.kaflowsql_events_per_s,
                "ratio_to_baseline": self.ratio_to_baseline,
                "outputs": self.outputs,
                "expected_outputs": self.expected_outputs,
                "peak_rss_mb": self.peak_rss_mb,
                "peer_quixstreams_events_per_s": self.peer_events_per_s,
                "ratio_to_peer": self.peer_events_per_s.map(|p| self.kaflowsql_events_per_s / p.max(1.0)),
            },
            "fixed_rate": {
                "rate": self.rate,
                "seconds": self.seconds,
                "outputs": self.fixed_rate_outputs,
                "expected_outputs": self.fixed_rate_expected,
                "baseline_ms": {"p50": self.baseline_latency_ms[0], "p95": self.baseline_latency_ms[1], "p99": self.baseline_latency_ms[2]},
                "kaflowsql_ms": {"p50": self.kaflowsql_latency_ms[0], "p95": self.kaflowsql_latency_ms[1], "p99": self.kaflowsql_latency_ms[2]},
            },
            "complete": self.complete(),
        })
    }

    pub fn to_markdown(&self) -> String {
        let b = &self.baseline_latency_ms;
        let k = &self.kaflowsql_latency_ms;
        format!(
            "| scenario | mode | passthrough baseline | kaflowsql | ratio |\n|---|---|---|---|---|\n\
             | iot | max throughput, {} events | {:.0} events/s | {:.0} events/s ({} of {} outputs, peak RSS {:.0} MB) | {:.2} |\n\
             | iot | fixed {}/s for {} s, p50/p95/p99 | {:.2} / {:.2} / {:.2} ms | {:.2} / {:.2} / {:.2} ms | |\n",
            self.events, self.baseline_events_per_s, self.kaflowsql_events_per_s, self.outputs, self.expected_outputs,
            self.peak_rss_mb, self.ratio_to_baseline, self.rate, self.seconds, b[0], b[1], b[2], k[0], k[1], k[2]
        ) + &match self.peer_events_per_s {
            Some(p) => format!(
                "| iot | max throughput, peer (Quix Streams) | | {p:.0} events/s | kaflowsql / peer = {:.1} |\n",
                self.kaflowsql_events_per_s / p.max(1.0)
            ),
            None => String::new(),
        }
    }
}

/// Regressions of more than 10% in throughput or p99 against a previous JSON report.
pub fn regressions(current: &serde_json::Value, previous: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    let get = |v: &serde_json::Value, path: &[&str]| {
        path.iter()
            .try_fold(v, |v, k| v.get(k))
            .and_then(|v| v.as_f64())
    };
    let throughput = ["max_throughput", "kaflowsql_events_per_s"];
    if let (Some(now), Some(before)) = (get(current, &throughput), get(previous, &throughput)) {
        if now < before * 0.9 {
            out.push(format!(
                "throughput fell {:.0}% ({before:.0} -> {now:.0} events/s)",
                (1.0 - now / before) * 100.0
            ));
        }
    }
    let p99 = ["fixed_rate", "kaflowsql_ms", "p99"];
    if let (Some(now), Some(before)) = (get(current, &p99), get(previous, &p99)) {
        if now > before * 1.1 {
            out.push(format!(
                "p99 latency rose {:.0}% ({before:.2} -> {now:.2} ms)",
                (now / before - 1.0) * 100.0
            ));
        }
    }
    out
}
const DEVICES: u64 = 10_000;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn create(topics: &[&str]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .create()
        .unwrap();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(admin.create_topics(&new, &AdminOptions::new()))
        .unwrap();
}

fn producer() -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap()
}

fn send(p: &BaseProducer, topic: &str, key: &str, value: &str, ts: i64) {
    let mut r = BaseRecord::<str, str>::to(topic)
        .key(key)
        .payload(value)
        .timestamp(ts);
    loop {
        match p.send(r) {
            Ok(()) => return,
            Err((_, back)) => {
                p.poll(Duration::from_millis(1));
                r = back;
            }
        }
    }
}

fn reading(i: u64) -> (String, String) {
    let d = (i * 7919) % DEVICES;
    (
        format!("d{d}"),
        format!(
            r#"{{"device_id":"d{d}","temperature":{}.5,"humidity":{}}}"#,
            i % 90,
            i % 100
        ),
    )
}

fn preload(prefix: &str, events: u64) {
    let p = producer();
    for d in 0..DEVICES * 3 / 4 {
        let v = format!(
            r#"{{"device_id":"d{d}","location":"site-{}","model":"TX-{}","max_temp":{}}}"#,
            d % 20,
            d % 9,
            40 + d % 50
        );
        send(
            &p,
            &format!("{prefix}device_metadata"),
            &format!("d{d}"),
            &v,
            now_ms(),
        );
    }
    for i in 0..events {
        let (k, v) = reading(i);
        send(&p, &format!("{prefix}sensor_readings"), &k, &v, now_ms());
    }
    p.flush(Duration::from_secs(120)).unwrap();
}

/// Arrival instants of `count` records on `topic` (waits at most `timeout`),
/// with the source offset header when present.
fn arrivals(topic: &str, count: u64, timeout: Duration) -> Vec<(Instant, Option<i64>)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", format!("e2e-reader-{topic}"))
        .set("fetch.wait.max.ms", "5")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(count as usize);
    while (out.len() as u64) < count && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let offset = m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == "kaflowsql.source.offset")
                    .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
            });
            out.push((Instant::now(), offset));
        }
    }
    out
}

/// The passthrough baseline: copies `from` to `to` without parsing.
fn passthrough(
    from: &str,
    to: &str,
    count: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let (from, to) = (from.to_string(), to.to_string());
    std::thread::spawn(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", BROKERS)
            .set("group.id", format!("e2e-passthrough-{from}"))
            .set("fetch.wait.max.ms", "5")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&from, 0, Offset::Beginning)
            .unwrap();
        c.assign(&tpl).unwrap();
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", BROKERS)
            .set("linger.ms", "1")
            .set("enable.idempotence", "true")
            .create()
            .unwrap();
        let mut n = 0;
        while n < count && !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                let offset = m.offset().to_string();
                let headers =
                    rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                        key: "kaflowsql.source.offset",
                        value: Some(&offset),
                    });
                let mut r = BaseRecord::<[u8], [u8]>::to(&to)
                    .payload(m.payload().unwrap_or_default())
                    .headers(headers);
                if let Some(k) = m.key() {
                    r = r.key(k);
                }
                loop {
                    match p.send(r) {
                        Ok(()) => break,
                        Err((_, back)) => {
                            p.poll(Duration::from_millis(1));
                            r = back;
                        }
                    }
                }
                p.poll(Duration::ZERO);
                n += 1;
            }
        }
        p.flush(Duration::from_secs(60)).unwrap();
    })
}

fn start_kaflowsql(bin: &Path, dir: &Path, prefix: &str, port: u16) -> Child {
    let text = std::fs::read_to_string(
        std::path::PathBuf::from(
            std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
        )
        .join("pipelines/iot.yaml"),
    )
    .unwrap();
    let text = text
        .replace(
            "name: enriched_sensor_readings",
            &format!("name: {prefix}iot"),
        )
        .replace(
            "topic: enriched_sensor_readings",
            &format!("topic: {prefix}enriched"),
        )
        .replace("sensor_readings", &format!("{prefix}sensor_readings"))
        .replace("device_metadata", &format!("{prefix}device_metadata"));
    let pipeline = dir.join("iot.yaml");
    std::fs::write(&pipeline, text).unwrap();
    let config = dir.join("kaflowsql.yaml");
    std::fs::write(
        &config,
        format!("kafka:\n  brokers: {BROKERS}\n  consumer:\n    fetchMaxWait: 5\n    maxPollRecords: 4096\n  producer:\n    lingerMs: 1\n  properties:\n    session.timeout.ms: \"6000\"\n    heartbeat.interval.ms: \"500\"\nhttp:\n  listen: 127.0.0.1:{port}\nstate:\n  rocksdb:\n    path: {state}\n", state = dir.join("state").display()),
    )
    .unwrap();
    Command::new(bin)
        .args(["run", "--config"])
        .arg(&config)
        .arg(&pipeline)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn rate(arr: &[(Instant, Option<i64>)]) -> f64 {
    match (arr.first(), arr.last()) {
        (Some(a), Some(b)) if b.0 > a.0 => (arr.len() - 1) as f64 / (b.0 - a.0).as_secs_f64(),
        _ => 0.0,
    }
}

fn stop_child(mut child: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

/// Runs both modes against the kaflowsql binary at `kaflowsql`.
pub fn run(settings: Settings, kaflowsql: &Path) -> Report {
    let (events, fixed_rate, seconds) = (settings.events, settings.rate, settings.seconds);
    let mut report = Report {
        events,
        rate: fixed_rate,
        seconds,
        ..Report::default()
    };
    let run = format!("e2e{}_", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    println!("e2e: iot enrichment, {events} preloaded readings, {} devices (75% known); 2 cores shared by broker, generator, pipeline and reader", DEVICES);

    // Max throughput: passthrough baseline.
    let base = format!("{run}base_");
    create(&[
        &format!("{base}sensor_readings"),
        &format!("{base}device_metadata"),
        &format!("{base}copy"),
    ]);
    preload(&base, events);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let copier = passthrough(
        &format!("{base}sensor_readings"),
        &format!("{base}copy"),
        events,
        stop.clone(),
    );
    let arr = arrivals(&format!("{base}copy"), events, Duration::from_secs(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    copier.join().unwrap();
    let base_rate = rate(&arr);
    report.baseline_events_per_s = base_rate;
    println!(
        "max throughput: passthrough baseline: {} records, {:.0} events/s",
        arr.len(),
        base_rate
    );

    // Max throughput: kaflowsql.
    let kf = format!("{run}kf_");
    create(&[
        &format!("{kf}sensor_readings"),
        &format!("{kf}device_metadata"),
        &format!("{kf}enriched"),
    ]);
    preload(&kf, events);
    let expected = (0..events)
        .filter(|&i| ((i * 7919) % DEVICES) < DEVICES * 3 / 4)
        .count() as u64;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = start_kaflowsql(kaflowsql, dir.path(), &kf, port);
    let pid = child.id();
    let arr = arrivals(&format!("{kf}enriched"), expected, Duration::from_secs(300));
    let rss = peak_rss_mb(pid);
    stop_child(child);
    // Outputs are 75% of the readings (unknown devices are dropped by the INNER JOIN):
    // the input rate is the output rate scaled by readings per output.
    let kf_rate = rate(&arr) * events as f64 / expected.max(1) as f64;
    report.kaflowsql_events_per_s = kf_rate;
    report.ratio_to_baseline = kf_rate / base_rate.max(1.0);
    report.outputs = arr.len() as u64;
    report.expected_outputs = expected;
    report.peak_rss_mb = rss;
    println!(
        "max throughput: kaflowsql: {} of {expected} expected outputs, {:.0} input events/s ({:.2} of the baseline), peak RSS {rss:.0} MB{}",
        arr.len(),
        kf_rate,
        kf_rate / base_rate.max(1.0),
        if arr.len() as u64 == expected { "" } else { "  FAILED: outputs missing" }
    );

    // Max throughput: the Quix Streams peer, same data.
    let python = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    )
    .join(".deps/venv/bin/python");
    if settings.peer && python.exists() {
        let pq = format!("{run}peer_");
        create(&[
            &format!("{pq}sensor_readings"),
            &format!("{pq}device_metadata"),
            &format!("{pq}enriched"),
        ]);
        preload(&pq, events);
        let expected = (0..events)
            .filter(|&i| ((i * 7919) % DEVICES) < DEVICES * 3 / 4)
            .count() as u64;
        let script = std::path::PathBuf::from(
            std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
        )
        .join("benches/support/quix_peer.py");
        let state = dir.path().join("quix-state");
        let child = Command::new(&python)
            .arg(&script)
            .args([BROKERS, &pq, &format!("{pq}group")])
            .arg(&state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let arr = arrivals(&format!("{pq}enriched"), expected, Duration::from_secs(300));
        stop_child(child);
        if arr.len() as u64 == expected {
            let peer_rate = rate(&arr) * events as f64 / expected.max(1) as f64;
            println!(
                "max throughput: peer (Quix Streams): {expected} of {expected} outputs, {peer_rate:.0} input events/s; kaflowsql / peer = {:.1}",
                kf_rate / peer_rate.max(1.0)
            );
            report.peer_events_per_s = Some(peer_rate);
        } else {
            // A run that lost rows is a failed run, not a slow one: no figure.
            println!(
                "max throughput: peer (Quix Streams) FAILED: {} of {expected} expected outputs within 300 s",
                arr.len()
            );
        }
    } else if settings.peer {
        println!(
            "peer skipped: {} not found (run deploy/local/deps.sh)",
            python.display()
        );
    }

    // Fixed rate: latency from production to arrival, baseline then kaflowsql.
    let fb = format!("{run}frbase_");
    create(&[
        &format!("{fb}sensor_readings"),
        &format!("{fb}device_metadata"),
        &format!("{fb}copy"),
    ]);
    let total = fixed_rate * seconds;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let copier = passthrough(
        &format!("{fb}sensor_readings"),
        &format!("{fb}copy"),
        total,
        stop.clone(),
    );
    std::thread::sleep(Duration::from_secs(2));
    let lat = fixed_rate_run(
        &format!("{fb}sensor_readings"),
        &format!("{fb}copy"),
        total,
        total,
        fixed_rate,
        seconds,
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    copier.join().unwrap();
    report.baseline_latency_ms = quantiles(&lat);
    print_latency("passthrough baseline", &lat, total, fixed_rate, seconds);

    let fr = format!("{run}fr_");
    create(&[
        &format!("{fr}sensor_readings"),
        &format!("{fr}device_metadata"),
        &format!("{fr}enriched"),
    ]);
    preload(&fr, 0);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = start_kaflowsql(kaflowsql, dir.path(), &fr, port);
    std::thread::sleep(Duration::from_secs(5)); // group join on Tansu
    let expected = (0..total)
        .filter(|&i| ((i * 7919) % DEVICES) < DEVICES * 3 / 4)
        .count() as u64;
    let lat = fixed_rate_run(
        &format!("{fr}sensor_readings"),
        &format!("{fr}enriched"),
        total,
        expected,
        fixed_rate,
        seconds,
    );
    stop_child(child);
    report.kaflowsql_latency_ms = quantiles(&lat);
    report.fixed_rate_outputs = lat.len() as u64;
    report.fixed_rate_expected = expected;
    print_latency("kaflowsql", &lat, expected, fixed_rate, seconds);
    report
}

fn quantiles(lat: &[f64]) -> [f64; 3] {
    let q = |f: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * f) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    [q(0.5), q(0.95), q(0.99)]
}

/// Produces `total` readings at `rate`/s to `input`; returns per-output latency
/// in ms from production to arrival on `output` (matched by source offset).
fn fixed_rate_run(
    input: &str,
    output: &str,
    total: u64,
    expected: u64,
    rate: u64,
    seconds: u64,
) -> Vec<f64> {
    let topic = output.to_string();
    let reader =
        std::thread::spawn(move || arrivals(&topic, expected, Duration::from_secs(seconds + 60)));
    let p = producer();
    let start = Instant::now();
    let mut produced_at: HashMap<i64, Instant> = HashMap::with_capacity(total as usize);
    for i in 0..total {
        // Sleep (never spin: two cores are shared) until the event is due; events
        // due within the same half millisecond go out together.
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        let now = Instant::now();
        if due > now + Duration::from_micros(500) {
            p.poll(Duration::ZERO);
            std::thread::sleep(due - now);
        }
        let (k, v) = reading(i);
        send(&p, input, &k, &v, now_ms());
        p.poll(Duration::ZERO);
        produced_at.insert(i as i64, Instant::now());
    }
    p.flush(Duration::from_secs(60)).unwrap();
    let arr = reader.join().unwrap();
    let mut lat: Vec<f64> = arr
        .iter()
        .filter_map(|(t, off)| Some((*t - *produced_at.get(&(*off)?)?).as_secs_f64() * 1e3))
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    lat
}

fn print_latency(name: &str, lat: &[f64], expected: u64, rate: u64, seconds: u64) {
    let q = |f: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * f) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "fixed rate {rate}/s for {seconds}s: {name}: {} of {expected} outputs; latency production → arrival p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms",
        lat.len(),
        q(0.5),
        q(0.95),
        q(0.99)
    );
}
