//! The Flink SQL differential suite (issue #16): kaflowsql and Flink SQL 2.0
//! run the same queries over the same seeded random records on the real
//! broker, and must write the same multiset of final rows.
//!
//! ## What runs
//!
//! Each file of `tests/flink/cases/` is a case (`tests/flink/case.rs` reads
//! it): tables with column generators and literal records, a kaflowsql
//! pipeline (inline, or a shipped `pipelines/*.yaml`), and, where Flink
//! spells the query differently, its Flink SQL. The suite
//!
//! 1. starts the Flink side, `tests/flink/harness.py` in `.deps/flink-venv`
//!    (one JVM, one PyFlink streaming `TableEnvironment` whose local
//!    mini-cluster runs every case; installed by `deploy/local/deps.sh --flink`);
//! 2. draws every case's records (seed `FLINK_DIFF_SEED`, default 16, mixed
//!    with the case's name), creates its topics (one partition, with
//!    `retention.ms`) and produces phase 0 (the dimensions);
//! 3. starts one `kaflowsql run --partition 0` with every case's pipeline,
//!    waits until it is ready (dimensions loaded), then produces each later
//!    phase once kaflowsql has processed the one before;
//! 4. sends every case to Flink, bounded by the end offsets produced
//!    (`scan.bounded.mode = specific-offsets`: Tansu answers the latest offset
//!    wrongly; `KAFLOWSQL_FLINK_JOBS`, default 3, jobs at once), which writes
//!    its final rows with its own `json` format, and reads kaflowsql's output
//!    topics;
//! 5. compares each case's rows as multisets in the normal form of
//!    `tests/flink/canon.rs` and asserts: equal rows, at least `min_rows`
//!    of them, and no dead letter unless the case expects some.
//!
//! Run it alone (broker up, Flink installed):
//!
//! ```text
//! deploy/local/deps.sh --flink && deploy/local/broker.sh start
//! cargo test --release --test flink_differential -- --nocapture
//! FLINK_DIFF_CASES=r1,iot cargo test --release --test flink_differential -- --nocapture
//! ```
//!
//! `FLINK_DIFF_KAFLOWSQL=path` runs another kaflowsql binary. The report,
//! each case's rows on both sides, and the logs of the harness, of Flink and
//! of kaflowsql are kept in `target/flink-differential/`.
//!
//! ## The semantics mapping (also in docs/sql-and-joins.md)
//!
//! - **Stream ⋈ dimension** (INNER or LEFT): a regular join against an
//!   `upsert-kafka` table keyed by the dimension's Kafka key (latest value per
//!   key, tombstones delete). The dimension is produced in full before any
//!   event (phase 0) and never changes afterwards, so Flink's final rows (its
//!   retractions materialised) are the join with the final dimension: what
//!   kaflowsql, which loads dimensions before it reads any event, emits.
//! - **Stream ⋈ stream**: an event-time interval join whose bound is the
//!   TTL (`b.kf_time BETWEEN a.kf_time - TTL AND a.kf_time + TTL`), over the
//!   record timestamps, with watermarks an hour behind so no record is late.
//!   Generated event times span less than the TTL, where kaflowsql's
//!   join-while-in-state equals the interval join whatever the arrival order.
//! - **LEFT joins**: compared as final rows. kaflowsql's output is
//!   append-only: a LEFT row is decided when the driving event arrives (or
//!   completes, with smart emission). Cases produce what a LEFT join looks up
//!   in an earlier phase than the driving events, so kaflowsql decides with
//!   everything present, as Flink's final rows do.
//! - **Smart emission** with `on_timeout: emit`: a held event is written when
//!   complete or, with NULLs, when the watermark passes its deadline; a final
//!   phase of sentinel records (which no join matches and `WHERE` drops)
//!   moves kaflowsql's watermark past every deadline. Flink: the plain LEFT join.
//! - **Known differences** stay in the suite, marked with an id of
//!   docs/sql-and-joins.md (Where kaflowsql differs from Flink SQL): the
//!   case must still differ (else the mark is stale), and where the
//!   difference is only one of number kind, the rows must be equal once `2`
//!   and `2.0` are equated.
//! - **Pending** cases (kaflowsql refuses the pipeline today) are skipped
//!   while refused; once the pipeline validates they run, and fail until
//!   the mark is removed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

#[path = "flink/canon.rs"]
mod canon;
#[path = "flink/case.rs"]
mod case;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientConfig;

use case::{Case, Record, Relax};
use support::{brokers, now_ms, read_topic, repo_root, require_broker, Kaflowsql};

/// The Python of the Flink venv, or a clear failure.
fn flink_python(root: &Path) -> PathBuf {
    let python = root.join(".deps/flink-venv/bin/python");
    let ok = python.is_file()
        && Command::new(&python)
            .args(["-c", "import pyflink"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        ok,
        "Flink SQL 2.0 is not installed in {}: run `deploy/local/deps.sh --flink` \
         (deploy/local/test.sh does); it also needs Java 17 (`java -version`)",
        python.display()
    );
    python
}

/// The Flink side: `tests/flink/harness.py`, in its own process group so
/// that it and its JVM can be ended together.
struct Harness {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<serde_json::Value>,
}

impl Harness {
    fn start(python: &Path, root: &Path, log: &Path) -> Self {
        let mut child = Command::new(python)
            .arg(root.join("tests/flink/harness.py"))
            .env("KAFLOWSQL_TEST_BROKERS", brokers())
            .env("PYTHONUNBUFFERED", "1")
            // Flink's own log (log4j) goes next to the harness's.
            .env("FLINK_LOG_DIR", log.parent().unwrap_or(root))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Anything else on stdout (a library's print) is not the protocol.
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        let stdin = child.stdin.take();
        Harness {
            child,
            stdin,
            lines: rx,
        }
    }

    fn send(&mut self, v: &serde_json::Value) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{v}").unwrap();
        stdin.flush().unwrap();
    }

    fn recv(&self, timeout: Duration, log: &Path) -> serde_json::Value {
        match self.lines.recv_timeout(timeout) {
            Ok(v) => v,
            Err(e) => panic!(
                "the Flink harness did not answer within {timeout:?} ({e}); its log ({}):\n{}",
                log.display(),
                tail(log, 60)
            ),
        }
    }

    /// Closes stdin (the harness ends its JVM and exits), then ends the
    /// process group in any case; true when nothing of it is left.
    fn finish(mut self) -> bool {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
        // `kill -0` on the group fails once no process of it is left.
        for _ in 0..50 {
            let alive = Command::new("kill")
                .args(["-0", "--", &group])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !alive {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Delivery reports: the next offset of each topic (its end), and failures.
#[derive(Default, Clone)]
struct Deliveries {
    ends: Arc<Mutex<HashMap<String, i64>>>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                let mut ends = self.ends.lock().unwrap();
                let end = ends.entry(m.topic().to_string()).or_insert(0);
                *end = (*end).max(m.offset() + 1);
            }
            Err((e, m)) => self
                .errors
                .lock()
                .unwrap()
                .push(format!("{}: {e}", m.topic())),
        }
    }
}

fn create_topics(names: &[String]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    // Tansu reports no retention.ms for a topic created without it, which
    // some clients cannot take: set it.
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)).set("retention.ms", "3600000"))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for chunk in new.chunks(50) {
        let results = rt
            .block_on(admin.create_topics(
                chunk,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            ))
            .unwrap();
        for r in results {
            if let Err((t, e)) = r {
                panic!("cannot create topic {t}: {e}");
            }
        }
    }
}

/// Metric values of one scrape, by name and label set.
fn scrape(k: &Kaflowsql) -> HashMap<String, f64> {
    let Some((_, body)) = k.get("/metrics") else {
        return HashMap::new();
    };
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn metric(m: &HashMap<String, f64>, name: &str, pipeline: &str) -> f64 {
    m.get(&format!("{name}{{pipeline=\"{pipeline}\"}}"))
        .copied()
        .unwrap_or(0.0)
}

/// One case, ready to run.
struct Prepared {
    name: String,
    case: Case,
    /// The pipeline's name in this run.
    pipeline: String,
    file: PathBuf,
    /// Topic of each table, and the output topic.
    topics: BTreeMap<String, String>,
    output: String,
    dlq: String,
    flink_query: String,
    records: Vec<Record>,
    /// Skipped: pending and refused.
    skipped: Option<String>,
}

/// What one case gave.
#[derive(Default)]
struct Outcome {
    kaflowsql: Vec<String>,
    flink: Vec<String>,
    dead_letters: u64,
    flink_changes: String,
    flink_seconds: f64,
    error: Option<String>,
}

fn load_cases(root: &Path) -> Vec<(String, Case)> {
    let dir = root.join("tests/flink/cases");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let only: Vec<String> = std::env::var("FLINK_DIFF_CASES")
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect())
        .unwrap_or_default();
    files
        .into_iter()
        .filter_map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            if !only.is_empty() && !only.iter().any(|o| name.contains(o.as_str())) {
                return None;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let case = case::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            Some((name, case))
        })
        .collect()
}

fn kaflowsql_bin() -> PathBuf {
    std::env::var_os("FLINK_DIFF_KAFLOWSQL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kaflowsql")))
}

/// Writes the case's pipeline with this run's names; validates it.
fn prepare(
    root: &Path,
    dir: &Path,
    run: &str,
    index: usize,
    name: String,
    case: Case,
    seed: u64,
) -> Prepared {
    let suffix = format!("c{index:02}_{run}");
    let mut topics = BTreeMap::new();
    for t in case.tables.keys() {
        topics.insert(t.clone(), format!("{t}_{suffix}"));
    }
    let output = format!("{}_{suffix}", case.output_topic);
    let pipeline = format!("fd_{name}_{run}");
    let rename = |text: &str| {
        let mut text = text.to_string();
        // Longest names first, so that no name is replaced inside another.
        let mut names: Vec<(&String, &String)> = topics.iter().collect();
        names.push((&case.output_topic, &output));
        names.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
        for (from, to) in names {
            text = case::replace_word(&text, from, to);
        }
        text
    };
    let body = match (&case.pipeline, &case.pipeline_file) {
        (Some(inline), _) => rename(inline),
        (None, Some(file)) => {
            let text = std::fs::read_to_string(root.join(file)).unwrap();
            let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("name:")).collect();
            rename(&kept.join("\n"))
        }
        (None, None) => unreachable!("checked when parsed"),
    };
    let text = format!("name: {pipeline}\n{body}\n");
    let file = dir.join(format!("{pipeline}.yaml"));
    std::fs::write(&file, &text).unwrap();
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let query = yaml["query"].as_str().unwrap_or_default().to_string();
    let flink_query = case.flink_query.as_deref().map_or(query, &rename);
    let dlq = yaml["output"]["dlq_topic"]
        .as_str()
        .map_or_else(|| format!("{pipeline}.dlq"), str::to_string);
    let records = case::records(&case, case::name_seed(&name) ^ seed ^ case.seed);

    let check = Command::new(kaflowsql_bin())
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    let refused = (!check.status.success()).then(|| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        )
    });
    let skipped = match (&refused, &case.pending) {
        (Some(why), Some(pending)) => {
            Some(format!("pending: {pending} (kaflowsql: {})", why.trim()))
        }
        (Some(why), None) => panic!("{name}: kaflowsql refuses the pipeline:\n{text}\n{why}"),
        (None, _) => None,
    };
    Prepared {
        name,
        case,
        pipeline,
        file,
        topics,
        output,
        dlq,
        flink_query,
        records,
        skipped,
    }
}

/// The Flink request of a case: its tables with their end offsets.
fn flink_request(p: &Prepared, ends: &HashMap<String, i64>) -> serde_json::Value {
    let tables: Vec<serde_json::Value> = p
        .case
        .tables
        .iter()
        .map(|(name, t)| {
            let topic = &p.topics[name];
            serde_json::json!({
                "name": topic,
                "topic": topic,
                "dimension": t.dimension,
                "key": t.key,
                "columns": t.columns.iter().map(|(c, col)| [c.clone(), col.flink_type.clone().unwrap_or_default()]).collect::<Vec<_>>(),
                "rowtime": t.rowtime,
                "end_offset": ends.get(topic).copied().unwrap_or(0),
            })
        })
        .collect();
    serde_json::json!({"case": p.name, "tables": tables, "query": p.flink_query})
}

/// The multiset of a side's rows in normal form (sorted), or the first row
/// that is not JSON.
fn normal(rows: &[String], number_kind: bool) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = rows
        .iter()
        .map(|r| canon::canonical(r, number_kind).map_err(|e| format!("{e}: {r}")))
        .collect::<Result<_, _>>()?;
    out.sort();
    Ok(out)
}

/// Rows of `a` missing from `b` (multiset difference), as raw texts.
fn only_in(a: &[String], b: &[String], number_kind: bool) -> Vec<String> {
    let mut counts: HashMap<String, i64> = HashMap::new();
    for r in b {
        *counts
            .entry(canon::canonical(r, number_kind).unwrap_or_default())
            .or_default() += 1;
    }
    let mut out = Vec::new();
    for r in a {
        let c = counts
            .entry(canon::canonical(r, number_kind).unwrap_or_default())
            .or_default();
        if *c > 0 {
            *c -= 1;
        } else {
            out.push(r.clone());
        }
    }
    out.sort();
    out
}

fn diff_text(o: &Outcome, number_kind: bool) -> String {
    let mut s = String::new();
    for (label, rows) in [
        (
            "only kaflowsql",
            only_in(&o.kaflowsql, &o.flink, number_kind),
        ),
        ("only Flink", only_in(&o.flink, &o.kaflowsql, number_kind)),
    ] {
        if !rows.is_empty() {
            s.push_str(&format!("      {label} ({}):\n", rows.len()));
            for r in rows.iter().take(6) {
                s.push_str(&format!("        {r}\n"));
            }
        }
    }
    s
}

#[test]
fn kaflowsql_agrees_with_flink_sql() {
    let started = Instant::now();
    let root = repo_root();
    let python = flink_python(&root);
    require_broker();
    let logs = root.join("target/flink-differential");
    std::fs::create_dir_all(&logs).unwrap();
    let harness_log = logs.join("flink-harness.log");
    let mut harness = Harness::start(&python, &root, &harness_log);

    let seed: u64 = std::env::var("FLINK_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    let run = format!("{}", now_ms() % 100_000_000);
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<Prepared> = load_cases(&root)
        .into_iter()
        .enumerate()
        .map(|(i, (name, case))| prepare(&root, dir.path(), &run, i, name, case, seed))
        .collect();
    assert!(!cases.is_empty(), "no case matches FLINK_DIFF_CASES");
    let active: Vec<&Prepared> = cases.iter().filter(|p| p.skipped.is_none()).collect();

    let mut topics: Vec<String> = Vec::new();
    for p in &active {
        topics.extend(p.topics.values().cloned());
        topics.push(p.output.clone());
        topics.push(p.dlq.clone());
    }
    create_topics(&topics);

    let deliveries = Deliveries::default();
    let producer: BaseProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create_with_context(deliveries.clone())
        .unwrap();
    let base = now_ms() - 30 * 60_000;
    let phases = active
        .iter()
        .flat_map(|p| p.records.iter().map(|r| r.phase))
        .max()
        .unwrap_or(0);
    let mut expected: HashMap<String, u64> = HashMap::new();
    let produce = |phase: u32, expected: &mut HashMap<String, u64>| {
        for p in &active {
            for r in p.records.iter().filter(|r| r.phase == phase) {
                let topic = &p.topics[&r.table];
                let mut rec: BaseRecord<'_, str, str, ()> =
                    BaseRecord::to(topic).partition(0).timestamp(base + r.at_ms);
                if let Some(k) = &r.key {
                    rec = rec.key(k.as_str());
                }
                if let Some(v) = &r.value {
                    rec = rec.payload(v.as_str());
                }
                loop {
                    match producer.send(rec) {
                        Ok(()) => break,
                        Err((_, back)) => {
                            producer.poll(Duration::from_millis(10));
                            rec = back;
                        }
                    }
                }
                *expected.entry(p.pipeline.clone()).or_default() += 1;
            }
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(30)).unwrap();
        let errors = deliveries.errors.lock().unwrap();
        assert!(errors.is_empty(), "produce failed: {errors:?}");
    };

    // Phase 0 (the dimensions), then kaflowsql, which loads them first.
    produce(0, &mut expected);
    let files: Vec<&Path> = active.iter().map(|p| p.file.as_path()).collect();
    let k = launch(&logs, dir.path(), &files);
    let ready = harness.recv(Duration::from_secs(120), &harness_log);
    assert_eq!(ready["ready"], true, "harness: {ready}");
    let wait_processed = |expected: &HashMap<String, u64>, phase: u32| {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let m = scrape(&k);
            let behind: Vec<String> = active
                .iter()
                .filter_map(|p| {
                    let want = expected.get(&p.pipeline).copied().unwrap_or(0) as f64;
                    let got = metric(&m, "kaflowsql_events_processed_total", &p.pipeline);
                    (got < want).then(|| format!("{} ({got} of {want})", p.name))
                })
                .collect();
            if behind.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kaflowsql did not process phase {phase} of {behind:?}; log:\n{}",
                tail(&k.log, 40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_processed(&expected, 0);
    for phase in 1..=phases {
        produce(phase, &mut expected);
        wait_processed(&expected, phase);
    }
    let produced_at = started.elapsed();

    // Flink reads what was produced, up to the end offsets.
    let ends = deliveries.ends.lock().unwrap().clone();
    for p in &active {
        harness.send(&flink_request(p, &ends));
    }
    harness.send(&serde_json::json!({"end": true}));

    // kaflowsql: outputs settle, then each output topic is read in full.
    let mut last = HashMap::new();
    let mut stable_since = Instant::now();
    let settle_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = scrape(&k);
        let now: HashMap<&str, (f64, f64)> = active
            .iter()
            .map(|p| {
                (
                    p.pipeline.as_str(),
                    (
                        metric(&m, "kaflowsql_output_records_total", &p.pipeline),
                        metric(&m, "kaflowsql_dlq_records_total", &p.pipeline),
                    ),
                )
            })
            .collect();
        if now != last {
            last = now;
            stable_since = Instant::now();
        } else if stable_since.elapsed() > Duration::from_millis(1500) {
            break;
        }
        assert!(
            Instant::now() < settle_deadline,
            "kaflowsql's outputs did not settle"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut outcomes: HashMap<String, Outcome> = HashMap::new();
    for p in &active {
        let (count, dlq) = last[p.pipeline.as_str()];
        let out = read_topic(
            &p.output,
            count as usize,
            Duration::ZERO,
            Duration::from_secs(20),
        );
        let o = outcomes.entry(p.name.clone()).or_default();
        o.kaflowsql = out
            .iter()
            .map(|r| String::from_utf8_lossy(&r.value).into_owned())
            .collect();
        o.dead_letters = dlq as u64;
        assert_eq!(
            o.kaflowsql.len(),
            count as usize,
            "{}: output topic",
            p.name
        );
    }
    let kaflowsql_done_at = started.elapsed();

    // Flink's answers, as its jobs finish.
    let mut answered = 0;
    while answered < active.len() {
        let v = harness.recv(Duration::from_secs(300), &harness_log);
        if v.get("done").is_some() {
            break;
        }
        let Some(name) = v["case"].as_str() else {
            continue;
        };
        answered += 1;
        let o = outcomes.entry(name.to_string()).or_default();
        if let Some(e) = v["error"].as_str() {
            o.error = Some(e.to_string());
            continue;
        }
        o.flink = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect();
        o.flink_changes = v["changes"].to_string();
        o.flink_seconds = v["seconds"].as_f64().unwrap_or_default();
    }
    for p in &active {
        let o = outcomes.entry(p.name.clone()).or_default();
        if o.error.is_none() && o.flink_changes.is_empty() {
            o.error = Some("no answer from the Flink harness".into());
        }
    }
    let status = k.terminate();
    let clean = harness.finish();

    // The report, then the verdicts.
    let mut failures = Vec::new();
    let mut report = format!(
        "Flink differential suite: {} cases, seed {seed}; produced and processed by kaflowsql in {:.1} s, \
         its outputs read at {:.1} s, Flink done at {:.1} s\n",
        cases.len(),
        produced_at.as_secs_f64(),
        kaflowsql_done_at.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    report.push_str(&format!(
        "  {:<38} {:>7} {:>9} {:>6}  verdict\n",
        "case", "records", "kaflowsql", "Flink"
    ));
    for p in &cases {
        if let Some(why) = &p.skipped {
            report.push_str(&format!(
                "  {:<38} {:>7} {:>9} {:>6}  {why}\n",
                p.name, "-", "-", "-"
            ));
            continue;
        }
        let o = &outcomes[&p.name];
        let verdict;
        let mut detail = String::new();
        if let Some(e) = &o.error {
            verdict = "FLINK ERROR".into();
            detail = e.lines().take(12).collect::<Vec<_>>().join("\n      ");
            failures.push(format!("{}: Flink failed: {e}", p.name));
        } else {
            let strict = (normal(&o.kaflowsql, false), normal(&o.flink, false));
            let relaxed = (normal(&o.kaflowsql, true), normal(&o.flink, true));
            let (equal, equal_relaxed) = match (strict, relaxed) {
                ((Ok(a), Ok(b)), (Ok(c), Ok(d))) => (a == b, c == d),
                (s, _) => {
                    failures.push(format!("{}: rows are not JSON: {s:?}", p.name));
                    (false, false)
                }
            };
            let number_kind = p
                .case
                .known_difference
                .as_ref()
                .is_some_and(|d| d.equal_when.contains(&Relax::NumberKind));
            match &p.case.known_difference {
                None if equal => verdict = "equal".into(),
                None => {
                    verdict = "DIFFERENT".into();
                    detail = diff_text(o, false);
                    failures.push(format!("{}: rows differ from Flink's:\n{detail}", p.name));
                }
                Some(d) if equal => {
                    verdict = format!("STALE known difference {}", d.id);
                    failures.push(format!(
                        "{}: known difference {} ({}) is gone: the rows are equal now; remove the mark",
                        p.name, d.id, d.what
                    ));
                }
                Some(d) => {
                    verdict = format!("known difference {}: {}", d.id, d.what);
                    detail = diff_text(o, false);
                    if number_kind && !equal_relaxed {
                        failures.push(format!(
                            "{}: beyond known difference {}, rows differ:\n{}",
                            p.name,
                            d.id,
                            diff_text(o, true)
                        ));
                    }
                }
            }
            if p.case.pending.is_some() && equal {
                failures.push(format!(
                    "{}: marked pending, but kaflowsql runs it now and agrees: remove `pending`",
                    p.name
                ));
            }
            if p.case.known_difference.is_none() {
                let fewest = o.kaflowsql.len().min(o.flink.len());
                if fewest < p.case.min_rows {
                    failures.push(format!(
                        "{}: {fewest} rows, fewer than the {} the case expects",
                        p.name, p.case.min_rows
                    ));
                }
            }
            if o.dead_letters != p.case.dead_letters {
                failures.push(format!(
                    "{}: {} dead letters, the case expects {}",
                    p.name, o.dead_letters, p.case.dead_letters
                ));
            }
        }
        report.push_str(&format!(
            "  {:<38} {:>7} {:>9} {:>6}  {verdict}{}\n",
            p.name,
            p.records.len(),
            o.kaflowsql.len(),
            o.flink.len(),
            if p.case.pending.is_some() {
                " (marked pending, runs now)"
            } else {
                ""
            }
        ));
        if !detail.is_empty() {
            report.push_str(&detail);
            if !detail.ends_with('\n') {
                report.push('\n');
            }
        }
    }
    // Each side's rows, for a look at what was compared.
    for p in &active {
        let o = &outcomes[&p.name];
        for (side, rows) in [("kaflowsql", &o.kaflowsql), ("flink", &o.flink)] {
            let mut rows = rows.clone();
            rows.sort();
            std::fs::write(
                logs.join(format!("{}.{side}.jsonl", p.name)),
                rows.join("\n"),
            )
            .unwrap();
        }
    }
    println!("{report}");
    std::fs::write(logs.join("report.txt"), &report).unwrap();
    assert!(status.success(), "kaflowsql exited with {status:?}");
    assert!(clean, "the Flink harness left processes behind");
    assert!(
        failures.is_empty(),
        "{} case(s) disagree with Flink SQL:\n{}\n(report in target/flink-differential/report.txt; \
         kaflowsql's log in target/flink-differential/kaflowsql.log)",
        failures.len(),
        failures.join("\n")
    );
}

/// `kaflowsql run --partition 0` with every pipeline, ready (dimensions
/// loaded); its log is kept in `logs`.
fn launch(logs: &Path, dir: &Path, pipelines: &[&Path]) -> Kaflowsql {
    let port = support::free_port();
    let config = support::write_config_for(&brokers(), dir, port);
    let log = logs.join("kaflowsql.log");
    let mut cmd = Command::new(kaflowsql_bin());
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .args(["--partition", "0"]);
    for p in pipelines {
        cmd.arg(p);
    }
    let child = cmd
        // Event time moves only with the records (smart emission times out by data).
        .env("KAFLOWSQL_IDLE_WATERMARK_MS", "600000")
        .env("KAFLOWSQL_STATE_ROCKSDB_PATH", dir.join("state"))
        .env("RUST_LOG", "info,rdkafka=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let k = Kaflowsql { child, port, log };
    k.wait_until(Duration::from_secs(120), |k| {
        k.get("/readyz").map(|(s, _)| s == 200).unwrap_or(false)
    });
    k
}
