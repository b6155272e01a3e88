//! End-to-end benchmark through the local broker (Tansu, started by
//! `deploy/local/broker.sh`): every scenario of `e2e_scenarios.rs` (one per
//! shipped pipeline) against a passthrough baseline measured in the same run
//! (a minimal rdkafka consumer → producer copying the event-stream topics,
//! no parsing), and the IoT scenario against a Quix Streams peer.
//!
//! Modes, each bounded in count and time:
//! - max throughput: N stream records preloaded, then drained; input
//!   events/s from the first to the last output's arrival, peak RSS and join
//!   hit rate of the kaflowsql process, outputs checked against the count the
//!   data must give;
//! - fixed rate (IoT): events produced at R/s for S seconds; per-event
//!   latency from production to the output's arrival (p50/p95/p99);
//! - burst (trades, 12 partitions): a steady 1,000/s with a burst at 10× for
//!   a few seconds; latency p99 and how long after the burst the pipeline is
//!   caught up (the last burst event's output arrives).
//!
//! Shared by `benches/e2e.rs` (the benchmark) and `tests/e2e_smoke.rs` (a
//! tiny run in the test suite, so the harness keeps working). Broker,
//! generator, pipeline and reader share this machine's cores.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

#[path = "e2e_scenarios.rs"]
pub mod scenarios;

#[path = "e2e_report.rs"]
mod report;

pub use report::{regressions, Latency, Report, Throughput};

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use scenarios::{Rec, Scenario};

const BROKERS: &str = "127.0.0.1:9092";

/// Sizes of one harness run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Event-stream records preloaded per scenario for max throughput.
    pub events: u64,
    /// Events per second in the fixed-rate mode.
    pub rate: u64,
    /// Seconds of the fixed-rate mode.
    pub seconds: u64,
    /// Steady rate of the burst mode (the burst is 10× this).
    pub burst_base: u64,
    /// Seconds of the burst.
    pub burst_seconds: u64,
    /// Also run the Quix Streams peer (needs quixstreams in .deps/venv).
    pub peer: bool,
    /// Also run Flink SQL 2.0 on the iot data (`E2E_FLINK=0` skips it).
    pub flink: bool,
    /// Also run kaflowsql on the iot data as Avro through the test schema
    /// registry (`E2E_AVRO=0` skips it).
    pub avro: bool,
    /// Restart the broker (`deploy/local/broker.sh restart`) before every
    /// max-throughput run: Tansu's in-memory storage slows down as it fills,
    /// so each run gets the same empty broker.
    pub fresh_broker: bool,
    /// Alternating rounds of baseline, kaflowsql (and peer) per scenario;
    /// medians are reported (this machine is shared and noisy).
    pub repeats: u32,
    /// Scenarios to run (names; empty: all).
    pub scenarios: Vec<String>,
}

fn root() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn create(topics: &[(String, i32)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .create()
        .unwrap();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(t, n)| NewTopic::new(t, *n, TopicReplication::Fixed(1)))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for r in rt
        .block_on(admin.create_topics(&new, &AdminOptions::new()))
        .unwrap()
    {
        r.unwrap();
    }
}

/// The generator's producer; `linger_ms` 2 for paced runs: every client
/// of a latency run batches for about 2 ms, since on Tansu tiny produce
/// requests (linger 0-1) load the broker into a latency tail, and fetch
/// waits above 2 ms add their own wait.
fn producer(linger_ms: u32) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("linger.ms", linger_ms.to_string())
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

/// One run's topics: the scenario's names with a unique prefix.
struct Topics {
    prefix: String,
}

impl Topics {
    fn name(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    /// Creates the scenario's topics (and `extra` output topics).
    fn create(&self, s: &Scenario, extra: &[&str]) {
        let mut topics: Vec<(String, i32)> = s
            .streams
            .iter()
            .chain(extra)
            .chain([&s.output])
            .map(|t| (self.name(t), s.partitions))
            .collect();
        topics.extend(s.dims.iter().map(|t| (self.name(t), 1)));
        create(&topics);
    }

    fn produce(&self, p: &BaseProducer, records: &[Rec]) {
        for r in records {
            send(p, &self.name(r.topic), &r.key, &r.value, now_ms());
        }
    }
}

/// The iot scenario's records as Avro (Confluent's wire format), their
/// schemas registered in the project's test registry.
struct AvroData {
    registry: support_registry::Registry,
    ids: HashMap<&'static str, (u32, kaflowsql::codec::AvroSchema)>,
}

mod support_registry {
    /// The test registry (`deploy/local/schema-registry.py`) on a free port.
    pub struct Registry {
        child: std::process::Child,
        pub url: String,
    }

    impl Registry {
        pub fn start() -> Self {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = std::process::Command::new("python3")
                .arg(super::root().join("deploy/local/schema-registry.py"))
                .args(["--port", &port.to_string(), "--quiet"])
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Self {
                child,
                url: format!("http://127.0.0.1:{port}"),
            }
        }
    }

    impl Drop for Registry {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl AvroData {
    const READINGS: &str = r#"{"type":"record","name":"Reading","fields":[{"name":"device_id","type":"string"},{"name":"temperature","type":"double"},{"name":"humidity","type":"long"}]}"#;
    const DEVICES: &str = r#"{"type":"record","name":"Device","fields":[{"name":"device_id","type":"string"},{"name":"location","type":"string"},{"name":"model","type":"string"},{"name":"max_temp","type":"long"}]}"#;

    fn start() -> Self {
        let registry = support_registry::Registry::start();
        let client =
            kaflowsql::registry::SchemaRegistry::new(&kaflowsql::registry::RegistryConfig {
                url: registry.url.clone(),
                timeout: Duration::from_secs(5),
                ..Default::default()
            })
            .unwrap();
        let mut ids = HashMap::new();
        for (topic, text) in [
            ("sensor_readings", Self::READINGS),
            ("device_metadata", Self::DEVICES),
        ] {
            let schema = kaflowsql::codec::AvroSchema::parse(text).unwrap();
            let id = client.register(&format!("{topic}-value"), &schema).unwrap();
            ids.insert(topic, (id, schema));
        }
        Self { registry, ids }
    }

    /// The framed Avro of the JSON value of `r`.
    fn encode(&self, r: &Rec) -> Vec<u8> {
        let (id, schema) = &self.ids[r.topic];
        let mut out = Vec::new();
        kaflowsql::codec::avro::frame(*id, &mut out);
        schema.json_to_datum(r.value.as_bytes(), &mut out).unwrap();
        out
    }

    /// Dimensions, then the streams, as Avro.
    fn preload(&self, topics: &Topics, data: &scenarios::Data) {
        let p = producer(5);
        for r in data.dims.iter().chain(&data.streams) {
            let value = self.encode(r);
            let topic = topics.name(r.topic);
            let mut record = BaseRecord::<str, [u8]>::to(&topic)
                .key(r.key.as_str())
                .payload(&value)
                .timestamp(now_ms());
            loop {
                match p.send(record) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        p.poll(Duration::from_millis(1));
                        record = back;
                    }
                }
            }
        }
        p.flush(Duration::from_secs(120)).unwrap();
    }
}

/// Dimensions, then the streams.
fn preload(topics: &Topics, data: &scenarios::Data) {
    let p = producer(5);
    topics.produce(&p, &data.dims);
    topics.produce(&p, &data.streams);
    p.flush(Duration::from_secs(120)).unwrap();
}

fn consumer(group: &str, topics: &[String], partitions: i32) -> BaseConsumer {
    consumer_from(group, topics, partitions, &HashMap::new())
}

/// [`consumer`] reading each partition from `next[partition]` (from the
/// beginning where absent).
fn consumer_from(
    group: &str,
    topics: &[String],
    partitions: i32,
    next: &HashMap<i32, i64>,
) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", group)
        .set("fetch.wait.max.ms", "2")
        .set("fetch.queue.backoff.ms", "5")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in 0..partitions {
            let from = next
                .get(&p)
                .map_or(Offset::Beginning, |&o| Offset::Offset(o));
            tpl.add_partition_offset(t, p, from).unwrap();
        }
    }
    c.assign(&tpl).unwrap();
    c
}

/// How long a reader waits without a record, once records came, before it
/// starts over at its next offsets: Tansu's fetch sometimes stalls at a
/// position (environment notes). A record that does not exist is still
/// missing after that, so a run that lost rows still fails.
const READER_STALL: Duration = Duration::from_secs(10);

/// Arrival instants of `count` records on `topic` (waits at most `timeout`),
/// with the driving event's id: `id_field` of the JSON value, or the source
/// offset header.
fn arrivals(
    topic: &str,
    partitions: i32,
    id_field: Option<&str>,
    count: u64,
    timeout: Duration,
) -> Vec<(Instant, Option<i64>)> {
    arrivals_after(topic, partitions, id_field, count, timeout, None)
}

/// [`arrivals`], signalling `ready` once the consumer has fetched (empty)
/// for a second: connecting and the first fetches take about half a second,
/// which would otherwise count as latency of the first events.
fn arrivals_after(
    topic: &str,
    partitions: i32,
    id_field: Option<&str>,
    count: u64,
    timeout: Duration,
    ready: Option<std::sync::mpsc::Sender<()>>,
) -> Vec<(Instant, Option<i64>)> {
    let group = format!("e2e-reader-{topic}");
    let mut c = consumer(&group, &[topic.to_string()], partitions);
    if let Some(ready) = ready {
        let warm = Instant::now() + Duration::from_secs(1);
        while Instant::now() < warm {
            assert!(
                c.poll(Duration::from_millis(50)).is_none(),
                "the topic is empty before the run"
            );
        }
        let _ = ready.send(());
    }
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(count as usize);
    let (mut next, mut last, mut restarts) = (HashMap::new(), Instant::now(), 0);
    while (out.len() as u64) < count && Instant::now() < deadline {
        if !out.is_empty() && last.elapsed() > READER_STALL {
            c = consumer_from(&group, &[topic.to_string()], partitions, &next);
            (last, restarts) = (Instant::now(), restarts + 1);
        }
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let at = Instant::now();
            last = at;
            next.insert(m.partition(), m.offset() + 1);
            let id = match id_field {
                Some(f) => m
                    .payload()
                    .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
                    .and_then(|v| v.get(f)?.as_i64()),
                None => m.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == "kaflowsql.source.offset")
                        .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
                }),
            };
            out.push((at, id));
        }
    }
    if restarts > 0 {
        println!(
            "  (reader of {topic}: started over at its next offsets {restarts} times after {} s without a record)",
            READER_STALL.as_secs()
        );
    }
    out
}

/// The passthrough baseline: copies every record of `from` (all partitions)
/// to the same partition of `to` without parsing, with the source offset as
/// a header, until `count` records or `stop`.
fn passthrough(
    from: Vec<String>,
    to: String,
    partitions: i32,
    count: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let c = consumer(&format!("e2e-passthrough-{to}"), &from, partitions);
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", BROKERS)
            .set("linger.ms", "2")
            .set("enable.idempotence", "true")
            .create()
            .unwrap();
        let mut n = 0;
        while n < count && !stop.load(Ordering::Relaxed) {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                let offset = m.offset().to_string();
                let headers =
                    rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                        key: "kaflowsql.source.offset",
                        value: Some(&offset),
                    });
                let mut r = BaseRecord::<[u8], [u8]>::to(&to)
                    .payload(m.payload().unwrap_or_default())
                    .partition(m.partition())
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

/// The baseline's topics (with a `copy` output) under `prefix`, preloaded
/// with `data`, and the passthrough copying `count` records (stopped by the flag).
fn baseline(
    prefix: String,
    s: &Scenario,
    data: &scenarios::Data,
    count: u64,
) -> (Topics, Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let base = Topics { prefix };
    base.create(s, &["copy"]);
    preload(&base, data);
    let stop = Arc::new(AtomicBool::new(false));
    let copier = passthrough(
        s.streams.iter().map(|t| base.name(t)).collect(),
        base.name("copy"),
        s.partitions,
        count,
        stop.clone(),
    );
    (base, stop, copier)
}

/// Replaces whole words (identifiers) of `text` found in `names`.
fn rename_words(text: &str, names: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        out.push_str(names.get(word.as_str()).unwrap_or(word));
        word.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// A running kaflowsql on the scenario's pipeline with the run's topics.
struct Kaflowsql {
    child: Child,
    port: u16,
}

impl Kaflowsql {
    fn start(
        bin: &Path,
        dir: &Path,
        s: &Scenario,
        topics: &Topics,
        registry: Option<&str>,
    ) -> Self {
        let text = std::fs::read_to_string(root().join("pipelines").join(s.pipeline)).unwrap();
        let mut names: HashMap<String, String> = s
            .streams
            .iter()
            .chain(s.dims)
            .chain([&s.output])
            .map(|t| (t.to_string(), topics.name(t)))
            .collect();
        // The pipeline's name is its own word (`name: ...`); a prefix keeps
        // consumer groups and state apart between runs.
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("name: "))
            .unwrap()
            .trim()
            .to_string();
        names.insert(name.clone(), format!("{}{name}", topics.prefix));
        let pipeline = dir.join(format!("{}{}", topics.prefix, s.pipeline));
        std::fs::write(&pipeline, rename_words(&text, &names)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join(format!("{}kaflowsql.yaml", topics.prefix));
        std::fs::write(
            &config,
            format!("kafka:\n  brokers: {BROKERS}\n{avro}  consumer:\n    fetchMaxWait: 2\n    maxPollRecords: 4096\n  producer:\n    lingerMs: 2\n  properties:\n    session.timeout.ms: \"6000\"\n    heartbeat.interval.ms: \"500\"\nhttp:\n  listen: 127.0.0.1:{port}\nstate:\n  rocksdb:\n    path: {state}\n", avro = registry.map(|url| format!("  schemaRegistry: {url}\n  useAvro: true\n")).unwrap_or_default(), state = dir.join(format!("{}state", topics.prefix)).display()),
        )
        .unwrap();
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&config)
            .arg(&pipeline)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        Self { child, port }
    }

    /// User + system CPU seconds the process used so far.
    fn cpu_seconds(&self) -> f64 {
        group_cpu_seconds(self.child.id())
    }

    fn peak_rss_mb(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
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

    /// GET `path`: the whole reply (empty when it cannot connect).
    fn get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = write!(s, "GET {path} HTTP/1.0\r\n\r\n");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text
    }

    /// Waits (at most 60 s) until `/readyz` answers 200: partitions
    /// assigned, dimensions read (Tansu makes a group join take seconds).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.get("/readyz").starts_with("HTTP/1.0 200") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A metric of its scrape (summed over label sets).
    fn metric(&self, name: &str) -> f64 {
        self.get("/metrics")
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`: 100 on
/// Linux for x86-64 and arm64).
const TICKS_PER_S: f64 = 100.0;

/// User + system CPU seconds of every process in process group `pgid` (a
/// peer's interpreter and the JVM it starts), from /proc.
fn group_cpu_seconds(pgid: u32) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return f64::NAN;
    };
    let mut ticks = 0u64;
    for e in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // Fields after the command's closing parenthesis: state ppid pgrp ...
        // utime is field 14 and stime 15 of the whole line.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) {
            ticks += f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
                + f.get(12).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    ticks as f64 / TICKS_PER_S
}

/// User + system CPU seconds of this process so far (its threads: the
/// passthrough copier and the reader of outputs).
fn own_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .map_or(f64::NAN, |t| t / TICKS_PER_S)
}

/// Records per second from the first to the last arrival.
fn rate(arr: &[(Instant, Option<i64>)]) -> f64 {
    match (arr.first(), arr.last()) {
        (Some(a), Some(b)) if b.0 > a.0 => (arr.len() - 1) as f64 / (b.0 - a.0).as_secs_f64(),
        _ => 0.0,
    }
}

/// Runs the selected scenarios and modes against the kaflowsql binary.
pub fn run(settings: &Settings, kaflowsql: &Path) -> Report {
    let run = format!("e2e{}_", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let selected: Vec<Scenario> = scenarios::all()
        .into_iter()
        .filter(|s| settings.scenarios.is_empty() || settings.scenarios.iter().any(|n| n == s.name))
        .collect();
    println!(
        "e2e: {} scenarios, {} stream records each; broker, generator, pipeline and reader share {} cores",
        selected.len(),
        settings.events,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut report = Report::default();
    for s in &selected {
        let t = max_throughput(settings, kaflowsql, dir.path(), &run, s);
        report.throughput.push(t);
    }
    if let Some(s) = selected.iter().find(|s| s.name == "iot") {
        report.fixed_rate = Some(paced(
            settings,
            kaflowsql,
            dir.path(),
            &run,
            s,
            &[(settings.rate, settings.seconds)],
        ));
    }
    if let Some(s) = selected.iter().find(|s| s.name == "trades") {
        let (base, burst) = (settings.burst_base, settings.burst_base * 10);
        report.burst = Some(paced(
            settings,
            kaflowsql,
            dir.path(),
            &run,
            s,
            &[(base, 2), (burst, settings.burst_seconds), (base, 3)],
        ));
    }
    report
}

fn max_throughput(
    settings: &Settings,
    kaflowsql: &Path,
    dir: &Path,
    run: &str,
    s: &Scenario,
) -> Throughput {
    let data = (s.data)(settings.events);
    let events = data.streams.len() as u64;
    let mut t = Throughput {
        scenario: s.name.to_string(),
        guide_row: s.guide_row.to_string(),
        description: s.description.to_string(),
        events,
        expected_outputs: data.expected,
        ..Throughput::default()
    };
    println!(
        "\n{}: {} ({events} stream records, {} alternating rounds)",
        s.name,
        s.description,
        settings.repeats.max(1)
    );
    let (mut base_rates, mut kf_rates, mut peer_rates) = (Vec::new(), Vec::new(), Vec::new());
    let mut avro_rates = Vec::new();
    // CPU seconds per round: kaflowsql's process; this process during the
    // passthrough (copier + reader) and during kaflowsql (reader only).
    let (mut kf_cpu, mut base_cpu, mut reader_cpu) = (Vec::new(), Vec::new(), Vec::new());
    let (mut flink_rates, mut flink_cpu, mut peer_cpu) = (Vec::new(), Vec::new(), Vec::new());
    let avro = (settings.avro && s.name == "iot").then(AvroData::start);
    t.outputs = data.expected;
    for round in 0..settings.repeats.max(1) {
        let tag = format!("{run}{}_{round}", s.name.replace('-', "_"));
        // Passthrough baseline: every stream record copied.
        fresh_broker(settings);
        let (base, stop, copier) = baseline(format!("{tag}base_"), s, &data, events);
        let own = own_cpu_seconds();
        let arr = arrivals(
            &base.name("copy"),
            s.partitions,
            None,
            events,
            Duration::from_secs(300),
        );
        stop.store(true, Ordering::Relaxed);
        copier.join().unwrap();
        base_cpu.push(own_cpu_seconds() - own);
        base_rates.push(rate(&arr));
        println!(
            "  round {round}: passthrough baseline: {} of {events} records, {:.0} events/s",
            arr.len(),
            rate(&arr)
        );

        // kaflowsql on the same data.
        fresh_broker(settings);
        let kf = Topics {
            prefix: format!("{tag}kf_"),
        };
        kf.create(s, &[]);
        preload(&kf, &data);
        let k = Kaflowsql::start(kaflowsql, dir, s, &kf, None);
        let own = own_cpu_seconds();
        let arr = arrivals(
            &kf.name(s.output),
            s.partitions,
            None,
            data.expected,
            Duration::from_secs(300),
        );
        reader_cpu.push(own_cpu_seconds() - own);
        kf_cpu.push(k.cpu_seconds());
        t.peak_rss_mb = t.peak_rss_mb.max(k.peak_rss_mb());
        t.join_hit_rate = k.metric("kaflowsql_join_hit_rate");
        t.mean_batch_rows = k.metric("kaflowsql_events_processed_total")
            / k.metric("kaflowsql_micro_batches_total").max(1.0);
        k.stop();
        // Input events per second: the output rate scaled by inputs per output.
        let r = rate(&arr) * events as f64 / data.expected.max(1) as f64;
        kf_rates.push(r);
        t.outputs = t.outputs.min(arr.len() as u64);
        println!(
            "  round {round}: kaflowsql: {} of {} outputs, {r:.0} input events/s, peak RSS {:.0} MB, join hit rate {:.3}, {:.0} records per micro-batch{}",
            arr.len(),
            t.expected_outputs,
            t.peak_rss_mb,
            t.join_hit_rate,
            t.mean_batch_rows,
            if arr.len() as u64 == t.expected_outputs { "" } else { "  FAILED: outputs missing" }
        );
        if let (Some(avro), "iot") = (&avro, s.name) {
            // kaflowsql on the same data as Avro through the registry.
            fresh_broker(settings);
            let av = Topics {
                prefix: format!("{tag}av_"),
            };
            av.create(s, &[]);
            avro.preload(&av, &data);
            let k = Kaflowsql::start(kaflowsql, dir, s, &av, Some(&avro.registry.url));
            let arr = arrivals(
                &av.name(s.output),
                s.partitions,
                None,
                data.expected,
                Duration::from_secs(300),
            );
            k.stop();
            let r = rate(&arr) * events as f64 / data.expected.max(1) as f64;
            avro_rates.push(r);
            t.avro_outputs = Some(t.avro_outputs.unwrap_or(u64::MAX).min(arr.len() as u64));
            println!(
                "  round {round}: kaflowsql, Avro in: {} of {} outputs, {r:.0} input events/s{}",
                arr.len(),
                t.expected_outputs,
                if arr.len() as u64 == t.expected_outputs {
                    ""
                } else {
                    "  FAILED: outputs missing"
                }
            );
        }
        if settings.peer && s.name == "iot" {
            fresh_broker(settings);
            if let Some((r, cpu)) = peer(&tag, s, &data, &mut t) {
                peer_rates.push(r);
                peer_cpu.push(cpu);
            }
        }
        if settings.flink {
            fresh_broker(settings);
            if let Some((r, cpu)) = flink_peer(&tag, s, &data, &mut t) {
                flink_rates.push(r);
                flink_cpu.push(cpu);
            }
        }
    }
    t.baseline_events_per_s = median(&base_rates);
    t.kaflowsql_events_per_s = median(&kf_rates);
    t.baseline_runs = base_rates;
    t.kaflowsql_runs = kf_rates;
    if !peer_rates.is_empty() && t.peer_outputs == Some(t.expected_outputs) {
        t.peer_events_per_s = Some(median(&peer_rates));
    }
    t.peer_runs = peer_rates;
    if !flink_rates.is_empty() && t.flink_outputs == Some(t.expected_outputs) {
        t.flink_events_per_s = Some(median(&flink_rates));
    }
    t.flink_runs = flink_rates;
    let per_event = |cpu: &[f64]| (!cpu.is_empty()).then(|| median(cpu) * 1e6 / events as f64);
    t.kaflowsql_cpu_us = per_event(&kf_cpu);
    // The passthrough's own share: this process's CPU while it copied, less
    // what the same reader cost while it read kaflowsql's outputs (scaled to
    // the copy's record count).
    let reader = median(&reader_cpu) * events as f64 / data.expected.max(1) as f64;
    t.baseline_cpu_us = per_event(&base_cpu).map(|c| c - reader * 1e6 / events as f64);
    t.peer_cpu_us = per_event(&peer_cpu);
    t.flink_cpu_us = per_event(&flink_cpu);
    if !avro_rates.is_empty() && t.avro_outputs == Some(t.expected_outputs) {
        t.avro_events_per_s = Some(median(&avro_rates));
    }
    t.avro_runs = avro_rates;
    println!(
        "  median: passthrough {:.0}, kaflowsql {:.0} events/s, ratio {:.2}{}",
        t.baseline_events_per_s,
        t.kaflowsql_events_per_s,
        t.ratio_to_baseline(),
        t.peer_events_per_s
            .map(|p| format!(
                ", peer {p:.0} events/s, kaflowsql / peer {:.1}",
                t.kaflowsql_events_per_s / p.max(1.0)
            ))
            .unwrap_or_default()
    );
    t
}

/// Restarts the broker when the settings ask for it, and waits until it
/// answers metadata requests.
fn fresh_broker(settings: &Settings) {
    if !settings.fresh_broker {
        return;
    }
    let status = Command::new(root().join("deploy/local/broker.sh"))
        .arg("restart")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "the broker did not restart");
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.fetch_metadata(None, Duration::from_secs(1)).is_err() {
        assert!(Instant::now() < deadline, "the broker does not answer");
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The Quix Streams peer on the IoT data (`benches/support/quix_peer.py`).
fn peer(run: &str, s: &Scenario, data: &scenarios::Data, t: &mut Throughput) -> Option<(f64, f64)> {
    let python = root().join(".deps/venv/bin/python");
    let importable = Command::new(&python)
        .args(["-c", "import quixstreams"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !importable {
        println!("  peer skipped: quixstreams is not installed in .deps/venv (run deploy/local/deps.sh --bench)");
        return None;
    }
    let pq = Topics {
        prefix: format!("{run}peer_"),
    };
    let state = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(&python);
    cmd.arg(root().join("benches/support/quix_peer.py"))
        .args([BROKERS, &pq.prefix, &format!("{}group", pq.prefix)])
        .arg(state.path());
    let (got, r, cpu) = run_peer(cmd, false, &pq, s, data, Duration::from_secs(300));
    t.peer_outputs = Some(t.peer_outputs.map_or(got, |n| n.min(got)));
    report_peer("peer (Quix Streams)", got, r, cpu, data);
    (got == data.expected).then_some((r, cpu))
}

/// Flink SQL 2.0 (`benches/support/flink_peer.py`, in `.deps/flink-venv`)
/// on the scenario's data: input events per second and CPU seconds of its process
/// group (Python and the JVM), or None when it is not installed or lost rows.
fn flink_peer(
    run: &str,
    s: &Scenario,
    data: &scenarios::Data,
    t: &mut Throughput,
) -> Option<(f64, f64)> {
    let python = root().join(".deps/flink-venv/bin/python");
    if !python.exists() {
        println!("  Flink skipped: no .deps/flink-venv (run deploy/local/deps.sh --flink)");
        return None;
    }
    let fq = Topics {
        prefix: format!("{run}flink_"),
    };
    let parallelism = std::env::var("E2E_FLINK_PARALLELISM").unwrap_or_else(|_| "1".into());
    let mut cmd = Command::new(&python);
    cmd.arg(root().join("benches/support/flink_peer.py")).args([
        s.name,
        BROKERS,
        &fq.prefix,
        &format!("{}group", fq.prefix),
        &parallelism,
    ]);
    let (got, r, cpu) = run_peer(cmd, true, &fq, s, data, Duration::from_secs(600));
    t.flink_outputs = Some(t.flink_outputs.map_or(got, |n| n.min(got)));
    report_peer(
        &format!("Flink SQL (parallelism {parallelism})"),
        got,
        r,
        cpu,
        data,
    );
    (got == data.expected).then_some((r, cpu))
}

/// Runs a peer (`cmd`, in a process group of its own) on the scenario's data
/// preloaded under `topics` (with `with_end_offsets`, the topics' end
/// offsets are appended to its arguments, see [`end_offsets`]), until its `enriched` topic holds every expected
/// output or `timeout`; then kills the whole group (an interpreter and the
/// JVM or workers it started). Returns the outputs counted, input events
/// per second and the group's CPU seconds.
fn run_peer(
    mut cmd: Command,
    with_end_offsets: bool,
    topics: &Topics,
    s: &Scenario,
    data: &scenarios::Data,
    timeout: Duration,
) -> (u64, f64, f64) {
    topics.create(s, &["enriched"]);
    preload(topics, data);
    if with_end_offsets {
        cmd.arg(end_offsets(topics, s, data));
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let arr = arrivals(
        &topics.name("enriched"),
        s.partitions,
        None,
        data.expected,
        timeout,
    );
    let cpu = group_cpu_seconds(child.id());
    // `--` before a negative pid, which util-linux's kill needs.
    let _ = Command::new("kill")
        .args(["-KILL", "--"])
        .arg(format!("-{}", child.id()))
        .status();
    let _ = child.wait();
    let events = data.streams.len() as f64;
    let r = rate(&arr) * events / data.expected.max(1) as f64;
    (arr.len() as u64, r, cpu)
}

/// The preloaded input topics' end offsets, read back (Tansu's ListOffsets
/// answer for the latest offset is wrong, see the environment notes), in
/// the form of Flink's `scan.bounded.specific-offsets`, one topic each:
/// `trades=partition:0,offset:16667;partition:1,offset:...|dim_symbols=...`
/// (topic names without the run's prefix; an offset is one past the last
/// record).
fn end_offsets(topics: &Topics, s: &Scenario, data: &scenarios::Data) -> String {
    let mut want: HashMap<&str, u64> = HashMap::new();
    for r in data.dims.iter().chain(&data.streams) {
        *want.entry(r.topic).or_default() += 1;
    }
    let mut parts = Vec::new();
    for (&topic, &count) in &want {
        let n = if s.dims.contains(&topic) {
            1
        } else {
            s.partitions
        };
        let name = topics.name(topic);
        let c = consumer(&format!("e2e-ends-{name}"), std::slice::from_ref(&name), n);
        let mut next = vec![0i64; n as usize];
        let (mut seen, deadline) = (0u64, Instant::now() + Duration::from_secs(120));
        while seen < count && Instant::now() < deadline {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                next[m.partition() as usize] = m.offset() + 1;
                seen += 1;
            }
        }
        assert_eq!(seen, count, "{name}: not every preloaded record read back");
        let offsets: Vec<String> = next
            .iter()
            .enumerate()
            .map(|(p, o)| format!("partition:{p},offset:{o}"))
            .collect();
        parts.push(format!("{topic}={}", offsets.join(";")));
    }
    parts.join("|")
}

/// One peer's line; a run that lost rows is a failed run, not a slow one.
fn report_peer(label: &str, got: u64, r: f64, cpu: f64, data: &scenarios::Data) {
    println!(
        "  {label}: {got} of {} outputs, {r:.0} input events/s, {cpu:.1} CPU s{}",
        data.expected,
        if got == data.expected {
            ""
        } else {
            "  FAILED: outputs missing"
        }
    );
}

/// Paced runs of a single-stream scenario: `phases` of (events/s, seconds),
/// through the baseline then kaflowsql. Latency per event from production to
/// arrival; with more than one phase, the second is the burst, and recovery
/// is how long after its end its last event's output arrived.
fn paced(
    settings: &Settings,
    kaflowsql: &Path,
    dir: &Path,
    run: &str,
    s: &Scenario,
    phases: &[(u64, u64)],
) -> Latency {
    let event = s.event.expect("a single-stream scenario");
    let total: u64 = phases.iter().map(|(r, secs)| r * secs).sum();
    let expected = (0..total).filter(|&i| event(i).1).count() as u64;
    let burst = phases.len() > 1;
    let label = if burst { "burst" } else { "fixed" };
    let mut l = Latency {
        scenario: s.name.to_string(),
        rate: phases[0].0,
        seconds: if burst { phases[1].1 } else { phases[0].1 },
        burst_rate: if burst { phases[1].0 } else { 0 },
        expected_outputs: expected,
        ..Latency::default()
    };
    let data = (s.data)(0);

    fresh_broker(settings);
    let (base, stop, copier) = baseline(format!("{run}{}_{label}base_", s.name), s, &data, total);
    std::thread::sleep(Duration::from_secs(2));
    let (lat, recovery, _) = produce_paced(&base, s, &base.name("copy"), total, phases);
    stop.store(true, Ordering::Relaxed);
    copier.join().unwrap();
    l.baseline_ms = quantiles(&lat);
    l.baseline_recovery_s = recovery;

    fresh_broker(settings);
    let kf = Topics {
        prefix: format!("{run}{}_{label}kf_", s.name),
    };
    kf.create(s, &[]);
    preload(&kf, &data);
    let k = Kaflowsql::start(kaflowsql, dir, s, &kf, None);
    k.wait_ready();
    let (lat, recovery, outputs) = produce_paced(&kf, s, &kf.name(s.output), expected, phases);
    k.stop();
    l.kaflowsql_ms = quantiles(&lat);
    l.kaflowsql_recovery_s = recovery;
    l.outputs = outputs;
    let b = &l.baseline_ms;
    let q = &l.kaflowsql_ms;
    println!(
        "\n{} {label}: phases {phases:?} (events/s, s): p50/p95/p99 passthrough {:.1}/{:.1}/{:.1} ms, kaflowsql {:.1}/{:.1}/{:.1} ms, {} of {expected} outputs{}",
        s.name,
        b[0],
        b[1],
        b[2],
        q[0],
        q[1],
        q[2],
        l.outputs,
        if burst {
            format!(
                "; caught up {:.2} s after the burst (passthrough {:.2} s)",
                l.kaflowsql_recovery_s, l.baseline_recovery_s
            )
        } else {
            String::new()
        }
    );
    l
}

/// Produces the phases' events; returns sorted latencies (ms), the recovery
/// time after the second phase (s) and the number of outputs read.
fn produce_paced(
    topics: &Topics,
    s: &Scenario,
    output: &str,
    expected: u64,
    phases: &[(u64, u64)],
) -> (Vec<f64>, f64, u64) {
    let event = s.event.expect("a single-stream scenario");
    let total: u64 = phases.iter().map(|(r, secs)| r * secs).sum();
    let seconds: u64 = phases.iter().map(|(_, secs)| secs).sum();
    // Outputs name their event by the source offset header (one partition)
    // or by an id in the value.
    let (topic, partitions, id_field) = (output.to_string(), s.partitions, s.id_field);
    let (ready, warmed) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        arrivals_after(
            &topic,
            partitions,
            id_field,
            expected,
            Duration::from_secs(seconds + 60),
            Some(ready),
        )
    });
    let _ = warmed.recv_timeout(Duration::from_secs(30));
    let p = producer(2);
    let start = Instant::now();
    let mut produced_at: Vec<Instant> = Vec::with_capacity(total as usize);
    let mut due = Duration::ZERO;
    let mut burst_events = 0..0;
    let mut burst_end = start;
    for (phase, &(rate, secs)) in phases.iter().enumerate() {
        let first = produced_at.len() as u64;
        for j in 0..rate * secs {
            // Sleep (never spin: two cores are shared) until the event is due;
            // events due within the same half millisecond go out together.
            let at = start + due + Duration::from_secs_f64(j as f64 / rate as f64);
            let now = Instant::now();
            if at > now + Duration::from_micros(500) {
                p.poll(Duration::ZERO);
                std::thread::sleep(at - now);
            }
            let (r, _) = event(produced_at.len() as u64);
            send(&p, &topics.name(r.topic), &r.key, &r.value, now_ms());
            p.poll(Duration::ZERO);
            produced_at.push(Instant::now());
        }
        due += Duration::from_secs(secs);
        if phase == 1 {
            burst_events = first..produced_at.len() as u64;
            burst_end = Instant::now();
        }
    }
    p.flush(Duration::from_secs(60)).unwrap();
    let arr = reader.join().unwrap();
    let mut lat: Vec<f64> = Vec::with_capacity(arr.len());
    let mut recovered = burst_end;
    for (t, id) in &arr {
        let Some(i) = id.and_then(|i| u64::try_from(i).ok()) else {
            continue;
        };
        if let Some(p) = produced_at.get(i as usize) {
            lat.push((*t - *p).as_secs_f64() * 1e3);
        }
        if burst_events.contains(&i) {
            recovered = recovered.max(*t);
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    (lat, (recovered - burst_end).as_secs_f64(), arr.len() as u64)
}

fn quantiles(lat: &[f64]) -> [f64; 3] {
    let q = |f: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * f) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    [q(0.5), q(0.95), q(0.99)]
}
