//! Helpers for tests that talk to the real broker (Tansu, started by
//! `deploy/local/broker.sh`): unique topics, producing, consuming, and running
//! the `kaflowsql` binary as a child process with its metrics endpoint.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub fn brokers() -> String {
    std::env::var("KAFLOWSQL_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

/// Fails clearly when no broker answers.
pub fn require_broker() {
    let b = brokers();
    let addr = b.split(',').next().unwrap().to_string();
    if TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).is_err() {
        panic!("no Kafka broker on {addr}: start one with `deploy/local/broker.sh start` (or run deploy/local/test.sh)");
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The wall clock in epoch milliseconds (record timestamps near now stay
/// within the pipelines' bound on event time).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000_000;
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn create_topics(topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1)))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = rt
        .block_on(admin.create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .unwrap();
    for r in results {
        if let Err((t, e)) = r {
            panic!("cannot create topic {t}: {e}");
        }
    }
    // Wait until metadata shows every topic with its partitions.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    for (t, p) in topics {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let md = consumer
                .fetch_metadata(Some(t), Duration::from_secs(5))
                .unwrap();
            if md
                .topics()
                .iter()
                .any(|x| x.name() == *t && x.partitions().len() == *p as usize)
            {
                break;
            }
            assert!(Instant::now() < deadline, "topic {t} did not appear");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub struct TestProducer {
    producer: BaseProducer,
}

pub fn producer() -> TestProducer {
    producer_on(&brokers())
}

/// A producer on the given brokers.
pub fn producer_on(brokers: &str) -> TestProducer {
    TestProducer {
        producer: ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "0")
            .set("enable.idempotence", "true")
            .create()
            .unwrap(),
    }
}

impl TestProducer {
    pub fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        ts: i64,
    ) {
        let mut r: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).timestamp(ts);
        if let Some(k) = key {
            r = r.key(k);
        }
        if let Some(v) = value {
            r = r.payload(v);
        }
        if let Some(p) = partition {
            r = r.partition(p);
        }
        let mut r = r;
        loop {
            match self.producer.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    self.producer.poll(Duration::from_millis(10));
                    r = back;
                }
            }
        }
        self.producer.poll(Duration::ZERO);
    }

    pub fn flush(&self) {
        self.producer.flush(Duration::from_secs(30)).unwrap();
    }
}

/// An output record read back.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Received {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

impl Received {
    /// The `{"key":...,"value":{...}}` line the offline runner prints.
    pub fn line(&self) -> String {
        kaflowsql::testing::output_line(self.key.as_deref(), &self.value)
    }
}

/// Reads every partition of `topic` from the beginning until `count` records
/// arrived and then `settle` passed with nothing new, or `timeout`.
pub fn read_topic(topic: &str, count: usize, settle: Duration, timeout: Duration) -> Vec<Received> {
    read_topic_from(&brokers(), topic, count, settle, timeout)
}

/// [`read_topic`] on the given brokers.
pub fn read_topic_from(
    brokers: &str,
    topic: &str,
    count: usize,
    settle: Duration,
    timeout: Duration,
) -> Vec<Received> {
    read_until(brokers, topic, settle, timeout, |read| read.len() >= count)
        .into_iter()
        .map(|r| Received {
            key: r.key,
            value: r.value.unwrap_or_default(),
            headers: r.headers,
        })
        .collect()
}

/// A record read back, with where it was.
#[derive(Clone, Debug)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
}

impl ReadRecord {
    /// The value of header `name` ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    /// The value as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(self.value.as_deref()?).ok()
    }
}

/// Every record of `topic` from the beginning, until `done` holds and
/// `settle` passed with nothing new, or `timeout`.
pub fn read_until(
    brokers: &str,
    topic: &str,
    settle: Duration,
    timeout: Duration,
    done: impl Fn(&[ReadRecord]) -> bool,
) -> Vec<ReadRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    let mut list = TopicPartitionList::new();
    for t in md.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            list.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&list).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut last = Instant::now();
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                let v = String::from_utf8_lossy(h.value.unwrap_or_default());
                                (h.key.to_string(), v.into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(ReadRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    timestamp: m.timestamp().to_millis(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
                last = Instant::now();
            }
            Some(Err(e)) => panic!("read of {topic} failed: {e}"),
            None => {
                if last.elapsed() >= settle && done(&out) {
                    break;
                }
            }
        }
    }
    out
}

/// The repository root (read when the test runs, not when it was built: a
/// shared build cache may hold a binary built from another checkout).
pub fn repo_root() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
}

/// GET `path` from 127.0.0.1:`port` (HTTP/1.0: the reply is not chunked);
/// (status, raw body bytes).
pub fn http_get(port: u16, path: &str, timeout: Duration) -> Option<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, raw[split + 4..].to_vec()))
}

/// Two different free ports on 127.0.0.1 (held together while chosen).
pub fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Rewrites a pipeline file so its name and topics are unique to this test.
/// Returns the new file and the topic renames.
pub fn localize(file: &Path, dir: &Path, suffix: &str) -> (PathBuf, BTreeMap<String, String>) {
    let text = std::fs::read_to_string(file).unwrap();
    let p = kaflowsql::config::Pipeline::parse(file, &text).unwrap();
    let mut names: Vec<String> = p.plan.sources.iter().map(|s| s.topic.clone()).collect();
    names.push(p.output.topic.clone());
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    names.dedup();
    let mut renames = BTreeMap::new();
    let mut out = String::new();
    for line in text.lines() {
        let mut l = line.to_string();
        if let Some(rest) = l.strip_prefix("name: ") {
            l = format!("name: {}_{suffix}", rest.trim());
        } else {
            for n in &names {
                l = replace_word(&l, n, &format!("{n}_{suffix}"));
            }
        }
        out.push_str(&l);
        out.push('\n');
    }
    for n in names {
        let new = format!("{n}_{suffix}");
        renames.insert(n, new);
    }
    let path = dir.join(file.file_name().unwrap());
    std::fs::write(&path, out).unwrap();
    (path, renames)
}

fn replace_word(line: &str, word: &str, with: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(i) = rest.find(word) {
        let before = rest[..i].chars().last();
        let after = rest[i + word.len()..].chars().next();
        let boundary = |c: Option<char>| c.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        out.push_str(&rest[..i]);
        if boundary(before) && boundary(after) {
            out.push_str(with);
        } else {
            out.push_str(word);
        }
        rest = &rest[i + word.len()..];
    }
    out.push_str(rest);
    out
}

/// The state directory name of an instance: one per owned partition.
fn state_name(extra: &[&str]) -> String {
    match extra.iter().position(|a| *a == "--partition") {
        Some(i) => format!("state-p{}", extra.get(i + 1).unwrap_or(&"")),
        None => "state".to_string(),
    }
}

/// A running `kaflowsql run`.
pub struct Kaflowsql {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

/// A global config pointing at `brokers`, listening on `port`.
pub fn write_config_for(brokers: &str, dir: &Path, port: u16) -> PathBuf {
    write_config_with(brokers, dir, port, "")
}

/// [`write_config_for`] with more top-level YAML appended.
pub fn write_config_with(brokers: &str, dir: &Path, port: u16, extra: &str) -> PathBuf {
    write_config_full(brokers, dir, port, &[], extra)
}

/// [`write_config_with`] with more librdkafka properties (`kafka.properties`).
pub fn write_config_full(
    brokers: &str,
    dir: &Path,
    port: u16,
    properties: &[(&str, &str)],
    extra: &str,
) -> PathBuf {
    let path = dir.join(format!("kaflowsql-{port}.yaml"));
    let more: String = properties
        .iter()
        .map(|(k, v)| format!("    {k}: \"{v}\"\n"))
        .collect();
    std::fs::write(
        &path,
        format!(
            "kafka:\n  brokers: {brokers}\n  consumer:\n    maxPollRecords: 2000\n  properties:\n    session.timeout.ms: \"6000\"\n    max.poll.interval.ms: \"10000\"\n    heartbeat.interval.ms: \"500\"\n{more}http:\n  listen: 127.0.0.1:{port}\n{extra}"
        ),
    )
    .unwrap();
    path
}

impl Kaflowsql {
    pub fn start(dir: &Path, pipelines: &[&Path], extra: &[&str]) -> Self {
        Self::start_on(&brokers(), dir, pipelines, extra)
    }

    /// [`Kaflowsql::start`] against the given brokers.
    pub fn start_on(brokers: &str, dir: &Path, pipelines: &[&Path], extra: &[&str]) -> Self {
        let k = Self::launch(brokers, dir, &state_name(extra), pipelines, extra);
        k.wait_ready();
        k
    }

    /// [`Kaflowsql::start`] with its own state directory `dir/<state>` (two
    /// instances running at once in one test need two).
    pub fn start_named(dir: &Path, state: &str, pipelines: &[&Path], extra: &[&str]) -> Self {
        let k = Self::launch(&brokers(), dir, state, pipelines, extra);
        k.wait_ready();
        k
    }

    /// [`Kaflowsql::start_named`] with more global config (top-level YAML).
    pub fn start_with_config(dir: &Path, state: &str, pipelines: &[&Path], config: &str) -> Self {
        let k = Self::launch_with(&brokers(), dir, state, pipelines, &[], config);
        k.wait_ready();
        k
    }

    /// [`Kaflowsql::start`] with `kafka.schemaRegistry: <registry>`.
    pub fn start_with_registry(dir: &Path, pipelines: &[&Path], registry: &str) -> Self {
        let port = free_port();
        let config = write_config_for(&brokers(), dir, port);
        let text = std::fs::read_to_string(&config).unwrap().replacen(
            "kafka:\n",
            &format!("kafka:\n  schemaRegistry: {registry}\n"),
            1,
        );
        std::fs::write(&config, text).unwrap();
        let k = Self::spawn_run(port, &config, dir, "state", pipelines, &[]);
        k.wait_ready();
        k
    }

    fn wait_ready(&self) {
        let k = self;
        k.wait_until(Duration::from_secs(60), |k| {
            k.get("/readyz").map(|(s, _)| s == 200).unwrap_or(false)
        });
    }

    /// [`Kaflowsql::spawn`] with CPU profiling enabled on a listener of its
    /// own; returns the profiling port too.
    pub fn spawn_profiled(dir: &Path, pipelines: &[&Path]) -> (Self, u16) {
        let profiling = free_port();
        // Continues the `http:` map the config ends with.
        let config =
            format!("  profiling:\n    enabled: true\n    listen: 127.0.0.1:{profiling}\n");
        let k = Self::launch_with(&brokers(), dir, "state", pipelines, &[], &config);
        k.wait_until(Duration::from_secs(30), |k| k.get("/healthz").is_some());
        (k, profiling)
    }

    /// Starts without waiting for readiness (the HTTP server answers at once).
    pub fn spawn(dir: &Path, pipelines: &[&Path]) -> Self {
        let k = Self::launch(&brokers(), dir, "state", pipelines, &[]);
        k.wait_until(Duration::from_secs(30), |k| k.get("/healthz").is_some());
        k
    }

    /// `kaflowsql run` with a fresh config (free HTTP port), a log file in
    /// `dir` and state in `dir/<state>` (kept across restarts in one test).
    /// Event time does not follow the wall clock (tests replay recorded input slowly).
    pub fn launch(
        brokers: &str,
        dir: &Path,
        state: &str,
        pipelines: &[&Path],
        extra: &[&str],
    ) -> Self {
        Self::launch_with(brokers, dir, state, pipelines, extra, "")
    }

    fn launch_with(
        brokers: &str,
        dir: &Path,
        state: &str,
        pipelines: &[&Path],
        extra: &[&str],
        config: &str,
    ) -> Self {
        Self::launch_on(free_port(), brokers, dir, state, pipelines, extra, config)
    }

    fn launch_on(
        port: u16,
        brokers: &str,
        dir: &Path,
        state: &str,
        pipelines: &[&Path],
        extra: &[&str],
        config: &str,
    ) -> Self {
        let config = write_config_with(brokers, dir, port, config);
        Self::spawn_run(port, &config, dir, state, pipelines, extra)
    }

    /// `kaflowsql run --config <config>` listening on `port`, its log in
    /// `dir` and its state in `dir/<state>`.
    fn spawn_run(
        port: u16,
        config: &Path,
        dir: &Path,
        state: &str,
        pipelines: &[&Path],
        extra: &[&str],
    ) -> Self {
        let log = dir.join(format!("kaflowsql-{port}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kaflowsql"));
        cmd.arg("run").arg("--config").arg(config).args(extra);
        for p in pipelines {
            cmd.arg(p);
        }
        let child = cmd
            .env("KAFLOWSQL_IDLE_WATERMARK_MS", "600000")
            .env("KAFLOWSQL_STATE_ROCKSDB_PATH", dir.join(state))
            .env("RUST_LOG", "info,rdkafka=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child, port, log }
    }

    /// `kaflowsql run` on `brokers` with more librdkafka properties, not
    /// waiting for readiness.
    pub fn launch_with_properties(
        brokers: &str,
        dir: &Path,
        pipelines: &[&Path],
        properties: &[(&str, &str)],
    ) -> Self {
        let port = free_port();
        let config = write_config_full(brokers, dir, port, properties, "");
        let k = Self::spawn_run(port, &config, dir, "state", pipelines, &[]);
        k.wait_until(Duration::from_secs(30), |k| k.get("/healthz").is_some());
        k
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "kaflowsql did not exit; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET a path; (status, raw body bytes).
    pub fn get_bytes(&self, path: &str, timeout: Duration) -> Option<(u16, Vec<u8>)> {
        http_get(self.port, path, timeout)
    }

    /// GET a path; (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let (status, body) = http_get(self.port, path, Duration::from_secs(5))?;
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// The value of a metric of the scrape (summed over label sets).
    pub fn metric(&self, name: &str) -> f64 {
        self.metric_with(name, "")
    }

    /// The sum of metric `name` over the series whose labels contain
    /// `labels` (`kind="schema_registry"`).
    pub fn metric_with(&self, name: &str, labels: &str) -> f64 {
        let Some((_, body)) = self.get("/metrics") else {
            return f64::NAN;
        };
        body.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter(|l| l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn wait_until(&self, timeout: Duration, mut f: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !f(self) {
            if Instant::now() > deadline {
                panic!(
                    "timed out; kaflowsql log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "kaflowsql did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL (kill -9).
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Kaflowsql {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Prometheus server (Debian's `prometheus`, installed by deps.sh)
/// scraping one kaflowsql every second, to run the guide's PromQL on what
/// kaflowsql exports.
pub struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts scraping 127.0.0.1:`target` and waits until it serves queries.
    pub fn scraping(target: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: kaflowsql\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus is installed (deploy/local/deps.sh)");
        let p = Self {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(p.port, "/-/ready", Duration::from_secs(1)).is_none_or(|(s, _)| s != 200) {
            assert!(Instant::now() < deadline, "prometheus did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    /// The `data.result` of an instant query.
    pub fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let encoded: String = expr
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = http_get(
            self.port,
            &format!("/api/v1/query?query={encoded}"),
            Duration::from_secs(10),
        )
        .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 200, "{expr}: {doc}");
        doc["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The single value of an instant query's result (panics unless exactly one).
    pub fn value(&self, expr: &str) -> f64 {
        let result = self.query(expr);
        assert_eq!(result.len(), 1, "{expr}: {result:?}");
        result[0]["value"][1].as_str().unwrap().parse().unwrap()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The project's test schema registry (`deploy/local/schema-registry.py`)
/// on a free port of 127.0.0.1, stopped when dropped.
pub struct Registry {
    child: std::process::Child,
    /// Its base URL.
    pub url: String,
}

impl Registry {
    /// Starts one with `args` (`--basic-auth u:p`, TLS files) and waits
    /// until it answers.
    pub fn start(args: &[&str]) -> Self {
        Self::start_on(free_port(), args)
    }

    /// [`Registry::start`] on `port` (a registry started again where one
    /// was stopped).
    pub fn start_on(port: u16, args: &[&str]) -> Self {
        let child = std::process::Command::new("python3")
            .arg(repo_root().join("deploy/local/schema-registry.py"))
            .args(["--port", &port.to_string(), "--quiet"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 runs the test registry");
        // The port may be in TIME_WAIT from an earlier one: the server binds
        // with SO_REUSEADDR (Python's HTTPServer does).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the test registry did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// A client of it.
    pub fn client(&self) -> kaflowsql::registry::SchemaRegistry {
        kaflowsql::registry::SchemaRegistry::new(&kaflowsql::registry::RegistryConfig {
            url: self.url.clone(),
            timeout: Duration::from_secs(5),
            ..Default::default()
        })
        .expect("a client of the test registry")
    }
}

/// `key json` of each Avro output record, its datum read with the writer
/// schema its frame names (fetched from the registry); with the schema ids seen.
pub fn avro_rows(
    client: &kaflowsql::registry::SchemaRegistry,
    rows: &[Received],
) -> (
    std::collections::BTreeSet<String>,
    std::collections::BTreeSet<u32>,
) {
    let (mut lines, mut ids) = (
        std::collections::BTreeSet::new(),
        std::collections::BTreeSet::new(),
    );
    for r in rows {
        let (id, datum) = kaflowsql::codec::avro::unframe(&r.value).unwrap();
        ids.insert(id);
        let mut json = Vec::new();
        client
            .schema(id)
            .unwrap()
            .datum_to_json(id, datum, &mut json)
            .unwrap();
        let key = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
        lines.insert(format!("{key} {}", String::from_utf8(json).unwrap()));
    }
    (lines, ids)
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
