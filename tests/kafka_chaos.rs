//! Chaos on the real broker (issue #14), bounded to about three minutes: a
//! stream-stream join (orders ⋈ payments, four partitions) plus a dimension
//! (customers, LEFT JOIN) in consumer-group mode with durable state, fed
//! valid traffic mixed with bad records of every kind, while the instance is
//! killed with `kill -9` twice and a second group member joins and leaves.
//!
//! Checked at the end: every valid order's joined output is present and
//! right; every bad record is in the dead-letter topic with its reason; every
//! duplicate (output or dead letter) is explained by a replay after a kill
//! or a rebalance; resident memory stays flat. The figures are printed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use support::{brokers, create_topics, now_ms, producer, require_broker, unique, Kaflowsql};

/// Partitions of each event stream (a second member gets some of them).
const PARTITIONS: i32 = 4;
/// One valid order per slot (25 per second), for `SLOTS` slots: 150 s.
const SLOT: Duration = Duration::from_millis(40);
const SLOTS: usize = 3_750;
/// Customers in the dimension; orders also name customers it does not have.
const CUSTOMERS: usize = 200;
/// 2100-01-01T00:00:00Z: far past `state.events.max_ahead` (1h).
const YEAR_2100_MS: i64 = 4_102_444_800_000;

/// When each chaos step happens, counted from the start of the traffic.
const KILL_1: Duration = Duration::from_secs(25);
const JOIN_B: Duration = Duration::from_secs(60);
const LEAVE_B: Duration = Duration::from_secs(95);
const KILL_2: Duration = Duration::from_secs(120);
/// RSS samples of an incarnation younger than this are warm-up.
const WARM_UP: Duration = Duration::from_secs(15);

fn pipeline_text(s: &str) -> String {
    format!(
        "name: chaos_{s}
query: |
  SELECT o.order_id, o.customer_id, c.tier, CAST(o.qty AS INTEGER) AS qty, o.total,
         p.payment_id, p.amount
  FROM orders_{s} o
  JOIN payments_{s} p ON o.order_id = p.order_id
  LEFT JOIN customers_{s} c ON o.customer_id = c.customer_id
output:
  topic: out_{s}
  key: order_id
  dlq_topic: dlq_{s}
emission:
  type: immediate
sources:
  orders_{s}:
    timestamp: ts
    columns: {{ order_id: VARCHAR, customer_id: VARCHAR, qty: VARCHAR, total: DOUBLE }}
  payments_{s}:
    columns: {{ order_id: VARCHAR, payment_id: VARCHAR, amount: DOUBLE }}
state:
  events:
    default_ttl: 30s
  dimensions:
    - customers_{s}
"
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Topic {
    Orders,
    Payments,
}

/// The Kafka timestamp a planned record is sent with.
#[derive(Clone, Copy, Debug)]
enum Stamp {
    /// The wall clock when it is sent.
    Now,
    /// A fixed value (-1: none).
    Fixed(i64),
}

/// A record to send at `slot`; `{TS}` in the value becomes the send time.
#[derive(Clone, Debug)]
struct Planned {
    slot: usize,
    topic: Topic,
    partition: i32,
    key: Option<String>,
    value: Option<String>,
    stamp: Stamp,
}

/// A bad record's value, Kafka timestamp, and companion record on the other
/// stream with the same order id (so that a record wrongly accepted would join).
type Built = (Option<String>, Stamp, Option<String>);

/// A kind of bad record: where it goes, how it is built, and what the dead
/// letter must say (or, for a record SQL accepts but that must give no row,
/// `class` "none": no dead letter, no output).
struct BadKind {
    name: &'static str,
    topic: Topic,
    /// The `kind` label of `kaflowsql_errors_total` it is counted under
    /// ("none": not an error, not a dead letter).
    class: &'static str,
    /// Text the `kaflowsql.dlq.reason` header must contain.
    reason: &'static str,
    /// Builds the record from its id.
    build: fn(&str) -> Built,
}

fn order(id: &str, customer: &str, qty: &str, ts: &str) -> String {
    format!(r#"{{"order_id":"{id}","customer_id":"{customer}","qty":{qty},"total":1.5,"ts":{ts}}}"#)
}

fn payment(id: &str) -> String {
    format!(r#"{{"payment_id":"pay-{id}","order_id":"{id}","amount":1.5}}"#)
}

fn bad_kinds() -> Vec<BadKind> {
    vec![
        BadKind {
            name: "malformed JSON (orders)",
            topic: Topic::Orders,
            class: "decode",
            reason: "value is not valid JSON",
            build: |id| {
                (
                    Some(format!(r#"{{"order_id":"{id}","qty":"#)),
                    Stamp::Now,
                    None,
                )
            },
        },
        BadKind {
            name: "malformed JSON (payments)",
            topic: Topic::Payments,
            class: "decode",
            reason: "value is not valid JSON",
            build: |id| {
                (
                    Some(format!(r#"{{"order_id":"{id}" "amount":1}}"#)),
                    Stamp::Now,
                    None,
                )
            },
        },
        BadKind {
            name: "JSON that is not an object",
            topic: Topic::Orders,
            class: "decode",
            reason: "value is JSON but not an object",
            build: |id| (Some(format!(r#"["{id}",1]"#)), Stamp::Now, None),
        },
        BadKind {
            name: "wrong type: an object as the order id",
            topic: Topic::Orders,
            class: "decode",
            reason: "field `order_id` should be VARCHAR but is an object or array",
            build: |id| {
                let v = format!(
                    r#"{{"order_id":{{"id":"{id}"}},"customer_id":"c1","qty":1,"total":1.5,"ts":{{TS}}}}"#
                );
                (Some(v), Stamp::Now, None)
            },
        },
        BadKind {
            name: "wrong type: a string amount",
            topic: Topic::Payments,
            class: "decode",
            reason: "field `amount` should be DOUBLE but is a string",
            build: |id| {
                let v = format!(r#"{{"payment_id":"pay-{id}","order_id":"{id}","amount":"lots"}}"#);
                (Some(v), Stamp::Now, Some(order(id, "c1", "1", "{TS}")))
            },
        },
        BadKind {
            name: "a CAST that fails (qty 'three')",
            topic: Topic::Orders,
            class: "sql_row",
            reason: "Could not convert string 'three'",
            build: |id| {
                (
                    Some(order(id, "c1", r#""three""#, "{TS}")),
                    Stamp::Now,
                    Some(payment(id)),
                )
            },
        },
        BadKind {
            name: "far-future event time (ts column, year 2100)",
            topic: Topic::Orders,
            class: "event_time",
            reason: "ahead of the wall clock",
            build: |id| {
                let v = order(id, "c1", "1", &YEAR_2100_MS.to_string());
                (Some(v), Stamp::Now, Some(payment(id)))
            },
        },
        BadKind {
            name: "far-future event time (Kafka timestamp, year 2100)",
            topic: Topic::Payments,
            class: "event_time",
            reason: "ahead of the wall clock",
            build: |id| {
                (
                    Some(payment(id)),
                    Stamp::Fixed(YEAR_2100_MS),
                    Some(order(id, "c1", "1", "{TS}")),
                )
            },
        },
        BadKind {
            name: "missing event time (ts column absent)",
            topic: Topic::Orders,
            class: "decode",
            reason: "timestamp field `ts` is not epoch milliseconds or an RFC 3339 time: null",
            build: |id| {
                let v = format!(r#"{{"order_id":"{id}","customer_id":"c1","qty":1,"total":1.5}}"#);
                (Some(v), Stamp::Now, Some(payment(id)))
            },
        },
        BadKind {
            name: "unparsable event time (ts 'yesterday')",
            topic: Topic::Orders,
            class: "decode",
            reason: "timestamp field `ts` is not epoch milliseconds or an RFC 3339 time: yesterday",
            build: |id| {
                (
                    Some(order(id, "c1", "1", r#""yesterday""#)),
                    Stamp::Now,
                    Some(payment(id)),
                )
            },
        },
        BadKind {
            name: "missing event time (no Kafka timestamp)",
            topic: Topic::Payments,
            class: "event_time",
            reason: "the record has no Kafka timestamp",
            // librdkafka sends the timestamp given (-1) and Tansu keeps it:
            // the consumer sees CreateTime(-1), "no timestamp".
            build: |id| {
                (
                    Some(payment(id)),
                    Stamp::Fixed(-1),
                    Some(order(id, "c1", "1", "{TS}")),
                )
            },
        },
        // A NULL or missing join key matches nothing, as in SQL: no dead
        // letter, and in these INNER joins no row (src/engine/ingest.rs).
        BadKind {
            name: "null join key (orders)",
            topic: Topic::Orders,
            class: "none",
            reason: "",
            build: |_| {
                let v = r#"{"order_id":null,"customer_id":"c1","qty":1,"total":1.5,"ts":{TS}}"#;
                (Some(v.to_string()), Stamp::Now, None)
            },
        },
        BadKind {
            name: "missing join key (payments)",
            topic: Topic::Payments,
            class: "none",
            reason: "",
            build: |id| {
                let v = format!(r#"{{"payment_id":"pay-{id}","amount":1.5}}"#);
                (Some(v), Stamp::Now, None)
            },
        },
        BadKind {
            // The LEFT-joined dimension's key is NULL: the order would be
            // NULL-extended; without its payment the INNER join gives no row.
            name: "null LEFT JOIN key (customer_id null)",
            topic: Topic::Orders,
            class: "none",
            reason: "",
            build: |id| {
                let v = format!(
                    r#"{{"order_id":"{id}","customer_id":null,"qty":1,"total":1.5,"ts":{{TS}}}}"#
                );
                (Some(v), Stamp::Now, None)
            },
        },
        BadKind {
            name: "tombstone on an event stream",
            topic: Topic::Orders,
            class: "tombstone",
            reason: "null value (tombstone) on an event stream",
            build: |_| (None, Stamp::Now, None),
        },
    ]
}

/// A valid order's expected output.
fn expected_output(i: usize) -> Value {
    let c = i % (CUSTOMERS + 30);
    let tier = (c < CUSTOMERS).then(|| format!("tier{}", c % 5));
    let money = (i % 300) as f64 + 0.5;
    json!({
        "order_id": format!("o{i}"),
        "customer_id": format!("c{c}"),
        "tier": tier,
        "qty": (i % 7 + 1) as i64,
        "total": money,
        "payment_id": format!("p{i}"),
        "amount": money,
    })
}

/// The traffic: valid orders and payments (a fifth of the payments come
/// before their order, a third carry no Kafka key: event streams join on the
/// column, not the Kafka key) and one bad record every nine slots, cycling
/// through the kinds. Also returns each bad record's Kafka key and kind.
fn plan(kinds: &[BadKind]) -> (Vec<Planned>, Vec<(String, usize)>) {
    let mut out = Vec::new();
    for i in 0..SLOTS {
        let partition = (i % PARTITIONS as usize) as i32;
        let c = i % (CUSTOMERS + 30);
        let money = format!("{}.5", i % 300);
        out.push(Planned {
            slot: i,
            topic: Topic::Orders,
            partition,
            key: Some(format!("o{i}")),
            value: Some(format!(
                r#"{{"order_id":"o{i}","customer_id":"c{c}","qty":{},"total":{money},"ts":{{TS}}}}"#,
                i % 7 + 1
            )),
            stamp: Stamp::Now,
        });
        out.push(Planned {
            slot: if i % 5 == 0 {
                i.saturating_sub(2)
            } else {
                i + 2
            },
            topic: Topic::Payments,
            partition,
            key: (i % 3 != 0).then(|| format!("o{i}")),
            value: Some(format!(
                r#"{{"payment_id":"p{i}","order_id":"o{i}","amount":{money}}}"#
            )),
            stamp: Stamp::Now,
        });
    }
    let mut bad = Vec::new();
    for (n, slot) in (4..SLOTS).step_by(9).enumerate() {
        let k = n % kinds.len();
        let kind = &kinds[k];
        let id = format!("bad{n}");
        let (value, stamp, companion) = (kind.build)(&id);
        let partition = (n % PARTITIONS as usize) as i32;
        out.push(Planned {
            slot,
            topic: kind.topic,
            partition,
            key: Some(id.clone()),
            value,
            stamp,
        });
        if let Some(c) = companion {
            out.push(Planned {
                slot,
                topic: match kind.topic {
                    Topic::Orders => Topic::Payments,
                    Topic::Payments => Topic::Orders,
                },
                partition,
                key: Some(format!("companion-{id}")),
                value: Some(c),
                stamp: Stamp::Now,
            });
        }
        bad.push((id, k));
    }
    out.sort_by_key(|p| p.slot);
    (out, bad)
}

type Rec = support::ReadRecord;

/// Every record of `topic` from the beginning, until `done` holds and
/// `settle` passed with nothing new, or `timeout`.
fn read_all(
    topic: &str,
    settle: Duration,
    timeout: Duration,
    done: impl Fn(&[Rec]) -> bool,
) -> Vec<Rec> {
    support::read_until(&brokers(), topic, settle, timeout, done)
}

/// The group's committed offsets of `topics` (a partition with none: 0).
fn committed(group: &str, topics: &[&str]) -> HashMap<(String, i32), i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for t in topics {
        for p in 0..PARTITIONS {
            list.add_partition(t, p);
        }
    }
    let got = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .unwrap();
    got.elements()
        .iter()
        .map(|e| {
            let o = match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            };
            ((e.topic().to_string(), e.partition()), o)
        })
        .collect()
}

/// The group's members (the last characters of their ids), from
/// DescribeGroups. (Tansu answers it without the members' assignments, so
/// who owns which partition is inferred from the data, see the test.)
fn group_members(client: &BaseConsumer, group: &str) -> Vec<String> {
    let Ok(list) = client.fetch_group_list(Some(group), Duration::from_secs(5)) else {
        return vec!["(DescribeGroups failed)".to_string()];
    };
    let mut out: Vec<String> = list
        .groups()
        .iter()
        .flat_map(|g| g.members())
        .map(|m| m.id()[m.id().len().saturating_sub(8)..].to_string())
        .collect();
    out.sort();
    out
}

/// Resident memory of a process in kB (VmRSS).
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A metric of a scrape, summed over the label sets that contain `label`.
fn metric_with(scrape: &str, name: &str, label: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const WATCHED: [(&str, &str, &str); 9] = [
    ("events", "kaflowsql_events_processed_total", ""),
    ("outputs", "kaflowsql_output_records_total", ""),
    ("dlq", "kaflowsql_dlq_records_total", ""),
    ("late", "kaflowsql_late_records_total", ""),
    ("null_keys", "kaflowsql_null_join_keys_total", ""),
    ("decode", "kaflowsql_errors_total", "kind=\"decode\""),
    (
        "event_time",
        "kaflowsql_errors_total",
        "kind=\"event_time\"",
    ),
    ("sql_row", "kaflowsql_errors_total", "kind=\"sql_row\""),
    ("tombstone", "kaflowsql_errors_total", "kind=\"tombstone\""),
];

/// One run of one instance: RSS samples (seconds since its start, kB) and
/// the last metrics scraped.
struct Incarnation {
    name: String,
    pid: u32,
    started: Instant,
    rss: Vec<(f64, u64)>,
    metrics: BTreeMap<&'static str, f64>,
    log: std::path::PathBuf,
}

impl Incarnation {
    fn of(name: &str, k: &Kaflowsql) -> Self {
        Self {
            name: name.to_string(),
            pid: k.child.id(),
            started: Instant::now(),
            rss: Vec::new(),
            metrics: BTreeMap::new(),
            log: k.log.clone(),
        }
    }

    fn sample(&mut self, k: &Kaflowsql) {
        if let Some(kb) = rss_kb(self.pid) {
            self.rss.push((self.started.elapsed().as_secs_f64(), kb));
        }
        if let Some((200, scrape)) = k.get("/metrics") {
            for (short, name, label) in WATCHED {
                self.metrics
                    .insert(short, metric_with(&scrape, name, label));
            }
        }
    }

    /// RSS samples after warm-up, in MB.
    fn settled_mb(&self) -> Vec<f64> {
        self.rss
            .iter()
            .filter(|(t, _)| *t >= WARM_UP.as_secs_f64())
            .map(|(_, kb)| *kb as f64 / 1024.0)
            .collect()
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// The running instances and every incarnation seen.
struct Cluster<'a> {
    dir: &'a Path,
    file: &'a Path,
    a: Option<Kaflowsql>,
    b: Option<Kaflowsql>,
    runs: Vec<Incarnation>,
    /// Index in `runs` of A's and B's current incarnations.
    run_a: usize,
    run_b: usize,
    /// The group's members each time they changed (seconds since the
    /// traffic started).
    group: String,
    describer: BaseConsumer,
    assignments: Vec<(f64, Vec<String>)>,
    since: Instant,
}

impl Cluster<'_> {
    fn start_a(&mut self) {
        let k = Kaflowsql::start_named(self.dir, "state-a", &[self.file], &[]);
        let n = self.runs.iter().filter(|r| r.name.starts_with('A')).count() + 1;
        self.runs.push(Incarnation::of(&format!("A{n}"), &k));
        self.run_a = self.runs.len() - 1;
        self.a = Some(k);
    }

    fn start_b(&mut self) {
        let k = Kaflowsql::start_named(self.dir, "state-b", &[self.file], &[]);
        self.runs.push(Incarnation::of("B", &k));
        self.run_b = self.runs.len() - 1;
        self.b = Some(k);
    }

    fn sample(&mut self) {
        if let Some(a) = &self.a {
            self.runs[self.run_a].sample(a);
        }
        if let Some(b) = &self.b {
            self.runs[self.run_b].sample(b);
        }
        let now = group_members(&self.describer, &self.group);
        if self.assignments.last().is_none_or(|(_, last)| *last != now) {
            let at = self.since.elapsed().as_secs_f64();
            eprintln!("[{at:>6.1}s] group members: {now:?}");
            self.assignments.push((at, now));
        }
    }

    /// Samples every second until `at`.
    fn until(&mut self, at: Instant) {
        while Instant::now() < at {
            self.sample();
            let left = at.saturating_duration_since(Instant::now());
            std::thread::sleep(left.min(Duration::from_secs(1)));
        }
    }
}

/// A replay point: the group's committed offsets just as an instance was
/// killed or a rebalance began. Whoever reads a partition next starts at or
/// after them (durable state may skip further), so only records at or after
/// them can be processed twice.
struct Replay {
    what: &'static str,
    committed: HashMap<(String, i32), i64>,
}

impl Replay {
    fn covers(&self, topic: &str, partition: i32, offset: i64) -> bool {
        offset
            >= self
                .committed
                .get(&(topic.to_string(), partition))
                .copied()
                .unwrap_or(0)
    }
}

#[test]
fn chaos_kill_9_twice_and_a_member_leaving_loses_nothing_and_explains_every_duplicate() {
    require_broker();
    let test_started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let s = unique("chaos").replace('-', "_");
    let (orders, payments, customers, out, dlq) = (
        format!("orders_{s}"),
        format!("payments_{s}"),
        format!("customers_{s}"),
        format!("out_{s}"),
        format!("dlq_{s}"),
    );
    let pipeline = format!("chaos_{s}");
    create_topics(&[
        (&orders, PARTITIONS),
        (&payments, PARTITIONS),
        (&customers, 1),
        (&out, 1),
        (&dlq, 1),
    ]);
    let file = dir.path().join("chaos.yaml");
    std::fs::write(&file, pipeline_text(&s)).unwrap();

    let p = producer();
    for c in 0..CUSTOMERS {
        let v = format!(r#"{{"customer_id":"c{c}","tier":"tier{}"}}"#, c % 5);
        p.send(
            &customers,
            Some(0),
            Some(format!("c{c}").as_bytes()),
            Some(v.as_bytes()),
            now_ms(),
        );
    }
    p.flush();

    let kinds = bad_kinds();
    let (planned, bad) = plan(&kinds);
    let sent_per_topic = |t: Topic| planned.iter().filter(|p| p.topic == t).count();
    let (sent_orders, sent_payments) = (
        sent_per_topic(Topic::Orders),
        sent_per_topic(Topic::Payments),
    );

    let mut cluster = Cluster {
        dir: dir.path(),
        file: &file,
        a: None,
        b: None,
        runs: Vec::new(),
        run_a: 0,
        run_b: 0,
        group: pipeline.clone(),
        describer: ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .create()
            .unwrap(),
        assignments: Vec::new(),
        since: Instant::now(),
    };
    cluster.start_a();

    // The traffic, paced in its own thread.
    let traffic_started = Instant::now();
    let traffic_epoch = now_ms();
    cluster.since = traffic_started;
    let traffic = {
        let planned = planned.clone();
        let (orders, payments) = (orders.clone(), payments.clone());
        std::thread::spawn(move || {
            let p = producer();
            for r in &planned {
                let at = traffic_started + SLOT * r.slot as u32;
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                let now = now_ms();
                let value = r
                    .value
                    .as_ref()
                    .map(|v| v.replace("{TS}", &now.to_string()));
                let ts = match r.stamp {
                    Stamp::Now => now,
                    Stamp::Fixed(t) => t,
                };
                let topic = match r.topic {
                    Topic::Orders => &orders,
                    Topic::Payments => &payments,
                };
                p.send(
                    topic,
                    Some(r.partition),
                    r.key.as_deref().map(str::as_bytes),
                    value.as_deref().map(str::as_bytes),
                    ts,
                );
            }
            p.flush();
        })
    };

    let group_topics = [orders.as_str(), payments.as_str()];
    let mut replays: Vec<Replay> = Vec::new();
    let mut timeline: Vec<String> = Vec::new();
    let mut note = |what: String| {
        eprintln!("[{:>6.1}s] {what}", traffic_started.elapsed().as_secs_f64());
        timeline.push(format!(
            "{:.1}s {what}",
            traffic_started.elapsed().as_secs_f64()
        ));
    };

    // kill -9 #1, restart on the same state directory.
    cluster.until(traffic_started + KILL_1);
    cluster.sample();
    cluster.a.take().unwrap().kill9();
    replays.push(Replay {
        what: "kill -9 #1",
        committed: committed(&pipeline, &group_topics),
    });
    note("kill -9 A (1)".into());
    cluster.start_a();
    note("A restarted and ready".into());

    // A second member joins: some partitions move to B.
    cluster.until(traffic_started + JOIN_B);
    replays.push(Replay {
        what: "B joins",
        committed: committed(&pipeline, &group_topics),
    });
    cluster.start_b();
    note("B joined and ready".into());
    let b_ready = traffic_started.elapsed();

    // ... and leaves: its partitions come back to A.
    cluster.until(traffic_started + LEAVE_B);
    cluster.sample();
    let b_status = cluster.b.take().unwrap().terminate();
    replays.push(Replay {
        what: "B leaves",
        committed: committed(&pipeline, &group_topics),
    });
    note(format!("B terminated ({b_status})"));
    let b_left = traffic_started.elapsed();

    // kill -9 #2.
    cluster.until(traffic_started + KILL_2);
    cluster.sample();
    cluster.a.take().unwrap().kill9();
    replays.push(Replay {
        what: "kill -9 #2",
        committed: committed(&pipeline, &group_topics),
    });
    note("kill -9 A (2)".into());
    cluster.start_a();
    note("A restarted and ready".into());

    // The traffic ends; wait for every valid order's output.
    while !traffic.is_finished() {
        cluster.until(Instant::now() + Duration::from_secs(1));
    }
    traffic.join().unwrap();
    note("traffic done".into());
    let valid_ids: HashSet<String> = (0..SLOTS).map(|i| format!("o{i}")).collect();
    let drain_deadline = Instant::now() + Duration::from_secs(45);
    loop {
        cluster.sample();
        let got = read_all(
            &out,
            Duration::from_millis(500),
            Duration::from_secs(20),
            |_| true,
        );
        let seen: HashSet<String> = got
            .iter()
            .filter_map(|r| r.json()?.get("order_id")?.as_str().map(str::to_string))
            .collect();
        if valid_ids.is_subset(&seen) || Instant::now() > drain_deadline {
            break;
        }
        cluster.until(Instant::now() + Duration::from_secs(3));
    }
    cluster.sample();
    let last_a = cluster.a.take().unwrap();
    let a_log = last_a.log_text();
    let a_status = last_a.terminate();
    note(format!("A terminated ({a_status})"));

    // Read everything back.
    let inputs_orders = read_all(
        &orders,
        Duration::from_secs(1),
        Duration::from_secs(60),
        |r| r.len() >= sent_orders,
    );
    let inputs_payments = read_all(
        &payments,
        Duration::from_secs(1),
        Duration::from_secs(60),
        |r| r.len() >= sent_payments,
    );
    let outputs = read_all(
        &out,
        Duration::from_secs(2),
        Duration::from_secs(60),
        |_| true,
    );
    let dead = read_all(
        &dlq,
        Duration::from_secs(2),
        Duration::from_secs(60),
        |_| true,
    );
    assert_eq!(
        inputs_orders.len(),
        sent_orders,
        "every order was produced once"
    );
    assert_eq!(
        inputs_payments.len(),
        sent_payments,
        "every payment was produced once"
    );

    // Where each input record is: (topic, partition, offset) by order id and by key.
    let mut by_order: HashMap<String, Vec<(String, i32, i64)>> = HashMap::new();
    let mut by_key: HashMap<String, (String, i32, i64, Option<i64>)> = HashMap::new();
    for (topic, recs) in [(&orders, &inputs_orders), (&payments, &inputs_payments)] {
        for r in recs {
            if let Some(id) = r
                .json()
                .and_then(|v| v.get("order_id")?.as_str().map(str::to_string))
            {
                by_order
                    .entry(id)
                    .or_default()
                    .push((topic.clone(), r.partition, r.offset));
            }
            if let Some(k) = &r.key {
                let k = String::from_utf8_lossy(k).into_owned();
                by_key.insert(k, (topic.clone(), r.partition, r.offset, r.timestamp));
            }
        }
    }
    // Explained copies of something read from `at`: the replays whose
    // committed offsets are at or before one of its records.
    let covering = |at: &[(String, i32, i64)]| {
        replays
            .iter()
            .filter(|rp| at.iter().any(|(t, p, o)| rp.covers(t, *p, *o)))
            .count()
    };

    // 1. Outputs: every valid order once or more, right; nothing else.
    let mut copies: HashMap<String, usize> = HashMap::new();
    let (mut wrong, mut foreign) = (Vec::new(), Vec::new());
    for r in &outputs {
        let v = r.json().unwrap_or(Value::Null);
        let id = v["order_id"].as_str().unwrap_or("").to_string();
        let Some(i) = id
            .strip_prefix('o')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|i| *i < SLOTS)
        else {
            foreign.push(v.to_string());
            continue;
        };
        if v != expected_output(i) || r.key.as_deref() != Some(id.as_bytes()) {
            wrong.push(format!(
                "{v} (key {:?})",
                r.key.as_deref().map(String::from_utf8_lossy)
            ));
        }
        *copies.entry(id).or_insert(0) += 1;
    }
    let missing: Vec<&String> = valid_ids
        .iter()
        .filter(|id| !copies.contains_key(*id))
        .collect();
    let duplicates: usize = copies.values().map(|c| c - 1).sum();
    let mut multiplicity: BTreeMap<usize, usize> = BTreeMap::new();
    for c in copies.values() {
        *multiplicity.entry(*c).or_insert(0) += 1;
    }
    let mut unexplained = Vec::new();
    let mut dup_by_partition: BTreeMap<i32, usize> = BTreeMap::new();
    // (partition, copies) -> orders
    let mut copies_by_partition: BTreeMap<(i32, usize), usize> = BTreeMap::new();
    for (id, &c) in &copies {
        if c < 2 {
            continue;
        }
        let at = by_order.get(id).cloned().unwrap_or_default();
        if let Some((_, p, _)) = at.first() {
            *dup_by_partition.entry(*p).or_insert(0) += c - 1;
            *copies_by_partition.entry((*p, c)).or_insert(0) += 1;
        }
        let covered = covering(&at);
        if c - 1 > covered {
            unexplained.push(format!("{id}: {c} copies, {covered} replays cover {at:?}"));
        }
    }
    unexplained.sort();

    // 2. Dead letters: every bad record, with its reason; nothing else.
    let mut dead_copies: HashMap<(String, String, String), usize> = HashMap::new();
    let mut dead_by_source: HashMap<(String, i32, i64), Vec<&Rec>> = HashMap::new();
    let mut dead_problems = Vec::new();
    let mut tombstone_problems: Vec<String> = Vec::new();
    for r in &dead {
        let src = (
            r.header("kaflowsql.source.topic").to_string(),
            r.header("kaflowsql.source.partition").parse().unwrap_or(-1),
            r.header("kaflowsql.source.offset").parse().unwrap_or(-1),
        );
        *dead_copies
            .entry((src.0.clone(), src.1.to_string(), src.2.to_string()))
            .or_insert(0) += 1;
        if r.header("kaflowsql.dlq.reason").is_empty() {
            dead_problems.push(format!("no reason: {src:?}"));
        }
        if r.header("kaflowsql.dlq.pipeline") != pipeline {
            dead_problems.push(format!(
                "pipeline header {:?}",
                r.header("kaflowsql.dlq.pipeline")
            ));
        }
        dead_by_source.entry(src).or_default().push(r);
    }
    let mut per_kind: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut accounted: HashSet<(String, i32, i64)> = HashSet::new();
    for (id, k) in &bad {
        let kind = &kinds[*k];
        let entry = per_kind.entry(kind.name).or_insert((0, 0));
        entry.0 += 1;
        let Some((topic, partition, offset, stamp)) = by_key.get(id).cloned() else {
            dead_problems.push(format!("{id} ({}) not found in its input topic", kind.name));
            continue;
        };
        if kind.reason.contains("no Kafka timestamp") && stamp.is_some() {
            dead_problems.push(format!("{id}: the broker gave it a timestamp {stamp:?}"));
        }
        let src = (topic.clone(), partition, offset);
        accounted.insert(src.clone());
        if kind.class == "none" {
            match dead_by_source.get(&src) {
                Some(l) => dead_problems.push(format!(
                    "{id} ({}) is in the DLQ: {}",
                    kind.name,
                    l[0].header("kaflowsql.dlq.reason")
                )),
                None => entry.1 += 1,
            }
            continue;
        }
        let Some(letters) = dead_by_source.get(&src) else {
            dead_problems.push(format!("{id} ({}) is not in the DLQ", kind.name));
            continue;
        };
        entry.1 += 1;
        for l in letters {
            let reason = l.header("kaflowsql.dlq.reason");
            if !reason.contains(kind.reason) {
                dead_problems.push(format!("{id} ({}): reason {reason:?}", kind.name));
            }
            // The original bytes, unless the row failed in SQL after its
            // micro-batch was gone (then its decoded columns, with the id).
            match l.header("kaflowsql.dlq.value") {
                "original" => {
                    let original = inputs_of(&topic, &inputs_orders, &inputs_payments, &orders)
                        .iter()
                        .find(|r| r.partition == partition && r.offset == offset)
                        .map(|r| (r.key.clone(), r.value.clone()));
                    if original != Some((l.key.clone(), l.value.clone())) {
                        let text = |b: &Option<Vec<u8>>| {
                            b.as_deref()
                                .map(|b| String::from_utf8_lossy(b).into_owned())
                        };
                        let problem = format!(
                            "{id} ({}): DLQ key {:?} value {:?}, original {:?}",
                            kind.name,
                            text(&l.key),
                            text(&l.value),
                            original.as_ref().map(|(k, v)| (text(k), text(v)))
                        );
                        // A tombstone has no bytes to keep: checked apart.
                        if kind.class == "tombstone" {
                            tombstone_problems.push(problem);
                        } else {
                            dead_problems.push(problem);
                        }
                    }
                }
                "decoded-columns" if kind.class == "sql_row" => {
                    let v = l.json().unwrap_or(Value::Null);
                    if v["order_id"] != json!(id) {
                        dead_problems.push(format!("{id}: decoded copy {v}"));
                    }
                }
                other => dead_problems.push(format!("{id}: kaflowsql.dlq.value {other:?}")),
            }
        }
    }
    let foreign_dead: Vec<String> = dead_by_source
        .iter()
        .filter(|(src, _)| !accounted.contains(*src))
        .map(|(src, l)| format!("{src:?}: {}", l[0].header("kaflowsql.dlq.reason")))
        .collect();
    let mut dead_unexplained = Vec::new();
    let mut dead_duplicates = 0;
    for (src, letters) in &dead_by_source {
        let c = letters.len();
        if c < 2 {
            continue;
        }
        dead_duplicates += c - 1;
        // A row failing in SQL is redone when either joined record is read again.
        let mut at = vec![src.clone()];
        if let Some(id) = letters[0]
            .json()
            .and_then(|v| v.get("order_id")?.as_str().map(str::to_string))
        {
            at.extend(by_order.get(&id).cloned().unwrap_or_default());
        }
        let covered = covering(&at);
        if c - 1 > covered {
            dead_unexplained.push(format!("{src:?}: {c} copies, {covered} replays cover it"));
        }
    }
    // No output for any bad record or its companion.
    let bad_ids: HashSet<&String> = bad.iter().map(|(id, _)| id).collect();
    let bad_outputs = foreign
        .iter()
        .filter(|f| bad_ids.iter().any(|id| f.contains(id.as_str())))
        .count();

    // 3. Memory: per incarnation, after warm-up.
    let mut rss_problems = Vec::new();
    eprintln!("--- RSS (MB) per incarnation, one sample a second, after {WARM_UP:?} warm-up ---");
    for run in &cluster.runs {
        let mb = run.settled_mb();
        let shown: Vec<String> = mb.iter().map(|m| format!("{m:.0}")).collect();
        eprintln!("{} (pid {}): [{}]", run.name, run.pid, shown.join(" "));
        if mb.len() >= 10 {
            let med = median(&mb);
            let tail_max = mb[mb.len() - 5..].iter().copied().fold(0.0, f64::max);
            eprintln!(
                "  median {med:.1} MB, max of the last 5 {tail_max:.1} MB, ratio {:.2}",
                tail_max / med
            );
            if tail_max > 1.5 * med {
                rss_problems.push(format!(
                    "{}: last samples {tail_max:.1} MB > 1.5 x median {med:.1} MB",
                    run.name
                ));
            }
        }
    }
    // Across restarts too: the last instance ends near the longest run's level.
    let longest = cluster
        .runs
        .iter()
        .filter(|r| r.name.starts_with('A'))
        .max_by_key(|r| r.settled_mb().len())
        .map(|r| median(&r.settled_mb()))
        .unwrap_or(f64::NAN);
    let last = cluster
        .runs
        .iter()
        .rev()
        .find(|r| r.name.starts_with('A'))
        .unwrap();
    let last_mb = last
        .rss
        .last()
        .map_or(f64::NAN, |(_, kb)| *kb as f64 / 1024.0);
    eprintln!("last A's final RSS {last_mb:.1} MB, longest A run's median {longest:.1} MB");
    if last_mb.is_nan() || longest.is_nan() || last_mb > 1.5 * longest {
        rss_problems.push(format!("final RSS {last_mb:.1} MB > 1.5 x {longest:.1} MB"));
    }

    // The figures.
    eprintln!("--- timeline ---");
    for t in &timeline {
        eprintln!("{t}");
    }
    eprintln!("--- per incarnation (last scrape) ---");
    let mut metric_kinds: BTreeMap<&str, f64> = BTreeMap::new();
    let mut events_read = 0.0;
    for run in &cluster.runs {
        eprintln!("{}: {:?}", run.name, run.metrics);
        events_read += run.metrics.get("events").copied().unwrap_or(0.0);
        for k in ["decode", "event_time", "sql_row", "tombstone"] {
            *metric_kinds.entry(k).or_insert(0.0) += run.metrics.get(k).copied().unwrap_or(0.0);
        }
    }
    let input_records = (sent_orders + sent_payments + CUSTOMERS) as f64;
    eprintln!(
        "records read by all incarnations (last scrapes, killed ones up to 1 s early): {events_read}, \
         input records {input_records} (event streams {}, dimension {CUSTOMERS} per instance start): \
         about {} read again",
        sent_orders + sent_payments,
        events_read - input_records
    );
    eprintln!("--- replay points: group's committed offsets (orders p0..p3 | payments p0..p3) ---");
    for rp in &replays {
        let row = |t: &str| {
            (0..PARTITIONS)
                .map(|p| {
                    rp.committed
                        .get(&(t.to_string(), p))
                        .copied()
                        .unwrap_or(0)
                        .to_string()
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        eprintln!("{}: {} | {}", rp.what, row(&orders), row(&payments));
    }
    eprintln!("--- outputs ---");
    eprintln!(
        "valid orders {SLOTS}; outputs read {}; distinct {}; missing {}; wrong {}; foreign {} ({} of bad records); \
         duplicates {duplicates} (copies per order: {multiplicity:?}; by partition: {dup_by_partition:?}); \
         unexplained {}",
        outputs.len(),
        copies.len(),
        missing.len(),
        wrong.len(),
        foreign.len(),
        bad_outputs,
        unexplained.len()
    );
    eprintln!("duplicated orders by (partition, copies): {copies_by_partition:?}");
    for u in unexplained.iter().take(5) {
        eprintln!("unexplained: {u}");
    }
    eprintln!("--- dead letters ---");
    eprintln!(
        "bad records {}; DLQ records {}; distinct sources {}; duplicates {dead_duplicates}; unexplained {}; \
         not a bad record {}; problems {}",
        bad.len(),
        dead.len(),
        dead_by_source.len(),
        dead_unexplained.len(),
        foreign_dead.len(),
        dead_problems.len()
    );
    for kind in &kinds {
        let (n, found) = per_kind.get(kind.name).copied().unwrap_or((0, 0));
        let outcome = if kind.class == "none" {
            "not in DLQ"
        } else {
            "in DLQ"
        };
        eprintln!(
            "  {:<50} {:>10} sent {n:>3}, {outcome} {found:>3}",
            kind.name, kind.class
        );
    }
    eprintln!("errors_total by kind, summed over incarnations' last scrapes: {metric_kinds:?}");
    // Who could join what while B was a member, read from the data (Tansu
    // does not tell the assignment): when the outputs of orders sent in that
    // time were produced (their Kafka timestamp), which topic's dead letters
    // were written twice then, and where the missing orders sit against the
    // committed offsets B left behind.
    let (b_from, b_to) = (b_ready.as_secs_f64(), b_left.as_secs_f64());
    let rel = |ms: i64| (ms - traffic_epoch) as f64 / 1000.0;
    let order_index = |r: &Rec| {
        r.json().and_then(|v| {
            v["order_id"]
                .as_str()?
                .strip_prefix('o')?
                .parse::<usize>()
                .ok()
        })
    };
    let mut during: BTreeMap<i32, (usize, usize)> = BTreeMap::new();
    for r in &outputs {
        let Some(i) = order_index(r) else { continue };
        let sent = (SLOT * i as u32).as_secs_f64();
        if sent < b_from || sent >= b_to {
            continue;
        }
        let produced = r.timestamp.map_or(f64::NAN, rel);
        let e = during
            .entry((i % PARTITIONS as usize) as i32)
            .or_insert((0, 0));
        if produced < b_to {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    eprintln!(
        "outputs of orders sent while B was a member ({b_from:.1}s..{b_to:.1}s), by partition: \
         (produced before B left, after): {during:?}"
    );
    let mut by_time: Vec<&Rec> = dead.iter().collect();
    by_time.sort_by_key(|r| r.timestamp);
    let mut first_seen = HashSet::new();
    let mut dlq_window: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for l in by_time {
        let src = (
            l.header("kaflowsql.source.topic").to_string(),
            l.header("kaflowsql.source.partition").to_string(),
            l.header("kaflowsql.source.offset").to_string(),
        );
        let first = first_seen.insert(src.clone());
        let produced = l.timestamp.map_or(f64::NAN, rel);
        if produced >= JOIN_B.as_secs_f64() && produced < b_to {
            let short = if src.0 == orders {
                "orders"
            } else {
                "payments"
            };
            let e = dlq_window.entry(short).or_insert((0, 0));
            if first {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
    }
    eprintln!(
        "dead letters written between B's start ({:.0}s) and its leaving, by source topic: \
         (first copies, repeated copies): {dlq_window:?}",
        JOIN_B.as_secs_f64()
    );
    if let Some(leave) = replays.iter().find(|r| r.what == "B leaves") {
        let (mut before, mut after) = (0, 0);
        for id in &missing {
            let at = by_order.get(id.as_str()).cloned().unwrap_or_default();
            if let Some((t, p, o)) = at.iter().find(|(t, _, _)| *t == orders) {
                if leave.covers(t, *p, *o) {
                    after += 1;
                } else {
                    before += 1;
                }
            }
        }
        eprintln!(
            "missing orders against the committed offsets when B left: {before} before them \
             (not read again), {after} at or after them (read again by A)"
        );
    }
    eprintln!("--- group members (each change) ---");
    for (at, members) in &cluster.assignments {
        eprintln!("{at:>6.1}s {members:?}");
    }
    // Where missing outputs are: by partition, the send times of their orders.
    let mut missing_by: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for id in &missing {
        if let Some(i) = id.strip_prefix('o').and_then(|n| n.parse::<usize>().ok()) {
            let sent = (SLOT * i as u32).as_secs_f64();
            missing_by
                .entry(i % PARTITIONS as usize)
                .or_default()
                .push(sent);
        }
    }
    for (p, times) in &missing_by {
        let lo = times.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = times.iter().copied().fold(0.0, f64::max);
        eprintln!(
            "missing outputs, partition {p}: {} orders sent between {lo:.1}s and {hi:.1}s",
            times.len()
        );
    }
    for d in dead_problems.iter().take(40) {
        eprintln!("DLQ problem: {d}");
    }
    for d in tombstone_problems.iter().take(3) {
        eprintln!("tombstone dead letter: {d}");
    }
    eprintln!("test took {:.1} s", test_started.elapsed().as_secs_f64());

    // The assertions.
    assert!(
        missing.is_empty(),
        "{} valid orders have no output: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert!(
        wrong.is_empty(),
        "{} outputs differ from the expected: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    assert!(
        foreign.is_empty(),
        "outputs of no valid order: {:?}",
        &foreign[..foreign.len().min(10)]
    );
    assert!(
        dead_problems.is_empty(),
        "{} dead-letter problems: {:?}",
        dead_problems.len(),
        &dead_problems[..dead_problems.len().min(20)]
    );
    assert!(
        foreign_dead.is_empty(),
        "dead letters of records that are not bad: {:?}",
        &foreign_dead[..foreign_dead.len().min(20)]
    );
    assert!(
        unexplained.is_empty(),
        "{} of {} duplicated orders have more copies than replays after kills or rebalances cover: {:?}",
        unexplained.len(),
        copies.values().filter(|c| **c > 1).count(),
        &unexplained[..unexplained.len().min(20)]
    );
    assert!(
        dead_unexplained.is_empty(),
        "unexplained duplicate dead letters: {:?}",
        &dead_unexplained[..dead_unexplained.len().min(20)]
    );
    assert!(
        tombstone_problems.is_empty(),
        "{} dead letters of tombstones are not tombstones (docs/operations.md: a dead letter \
         keeps its original key, value and headers): {:?}",
        tombstone_problems.len(),
        &tombstone_problems[..tombstone_problems.len().min(3)]
    );
    let null_keys: f64 = cluster
        .runs
        .iter()
        .map(|r| r.metrics.get("null_keys").copied().unwrap_or(0.0))
        .sum();
    assert!(
        null_keys > 0.0,
        "kaflowsql_null_join_keys_total counted nothing"
    );
    for k in ["decode", "event_time", "sql_row", "tombstone"] {
        assert!(
            metric_kinds[k] > 0.0,
            "kaflowsql_errors_total{{kind=\"{k}\"}} counted nothing"
        );
    }
    assert!(
        rss_problems.is_empty(),
        "resident memory grows: {rss_problems:?}"
    );
    // The chaos happened as planned.
    assert!(b_status.success(), "B exits 0 on SIGTERM");
    assert!(a_status.success(), "A exits 0 on SIGTERM");
    let b_events = cluster
        .runs
        .iter()
        .find(|r| r.name == "B")
        .and_then(|r| r.metrics.get("events").copied())
        .unwrap_or(0.0);
    assert!(
        b_events > CUSTOMERS as f64,
        "B owned partitions and read their records ({b_events} events)"
    );
    let a2_log =
        std::fs::read_to_string(&cluster.runs.iter().find(|r| r.name == "A2").unwrap().log)
            .unwrap();
    assert!(
        a2_log.contains("Partitions revoked."),
        "B's join took partitions from A:\n{a2_log}"
    );
    assert!(
        a_log.contains("State restored."),
        "the restart restores durable state:\n{a_log}"
    );
    assert!(
        test_started.elapsed() < Duration::from_secs(360),
        "bounded: {:?}",
        test_started.elapsed()
    );
}

fn inputs_of<'a>(
    topic: &str,
    orders: &'a [Rec],
    payments: &'a [Rec],
    orders_name: &str,
) -> &'a [Rec] {
    if topic == orders_name {
        orders
    } else {
        payments
    }
}
