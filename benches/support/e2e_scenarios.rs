//! The scenarios of the end-to-end benchmark: one per shipped pipeline, each
//! with deterministic data (the same on every run) and the exact number of
//! outputs it must produce, so a run that loses rows fails instead of
//! looking fast.

#![allow(dead_code)]

/// One record to produce: topic (the pipeline's name for it), key, JSON value.
#[derive(Clone, Debug)]
pub struct Rec {
    pub topic: &'static str,
    pub key: String,
    pub value: String,
}

fn rec(topic: &'static str, key: String, value: String) -> Rec {
    Rec { topic, key, value }
}

/// The data of a max-throughput run.
pub struct Data {
    /// Dimension records, produced first.
    pub dims: Vec<Rec>,
    /// Event-stream records, in production order.
    pub streams: Vec<Rec>,
    /// Outputs the pipeline must produce for them.
    pub expected: u64,
}

/// A benchmark scenario.
pub struct Scenario {
    /// Name used on the command line and in reports.
    pub name: &'static str,
    /// The row of the guide's table it corresponds to.
    pub guide_row: &'static str,
    /// What it runs, in a few words.
    pub description: &'static str,
    /// The pipeline under `pipelines/`.
    pub pipeline: &'static str,
    /// Event-stream topics (copied by the passthrough baseline).
    pub streams: &'static [&'static str],
    /// Dimension topics.
    pub dims: &'static [&'static str],
    /// The pipeline's output topic.
    pub output: &'static str,
    /// Partitions of the stream and output topics.
    pub partitions: i32,
    /// Output field that carries the driving event's sequence number, for
    /// latency matching across partitions (`None`: the source offset header,
    /// one partition).
    pub id_field: Option<&'static str>,
    /// Data for `n` event-stream records.
    pub data: fn(u64) -> Data,
    /// For single-stream scenarios, the `i`-th driving event and whether it
    /// has an output (fixed-rate and burst modes).
    pub event: Option<fn(u64) -> (Rec, bool)>,
}

/// Every scenario, in report order.
pub fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "iot",
            guide_row: "IoT high-volume / simple enrichment",
            description: "sensor readings INNER JOIN device metadata (10,000 devices, 75% known), CASE in the SELECT, 1 partition",
            pipeline: "iot.yaml",
            streams: &["sensor_readings"],
            dims: &["device_metadata"],
            output: "enriched_sensor_readings",
            partitions: 1,
            id_field: None,
            data: iot_data,
            event: Some(iot_event),
        },
        Scenario {
            name: "trades",
            guide_row: "high-dimensional join",
            description: "trades LEFT JOIN two dimensions (1,000 symbols, 90% known; 100 traders), 12 partitions keyed by symbol",
            pipeline: "trades.yaml",
            streams: &["trades"],
            dims: &["dim_symbols", "dim_traders"],
            output: "enriched_trades",
            partitions: 12,
            id_field: Some("trade_id"),
            data: trades_data,
            event: Some(trade_event),
        },
        Scenario {
            name: "orders",
            guide_row: "multi-topic join",
            description: "orders INNER JOIN payments, stream-stream (both in state, RocksDB), 90% of orders paid, 1 partition",
            pipeline: "orders.yaml",
            streams: &["orders", "payments"],
            dims: &[],
            output: "paid_orders",
            partitions: 1,
            id_field: None,
            data: orders_data,
            event: None,
        },
        Scenario {
            name: "user-events",
            guide_row: "three-way join, smart emission",
            description: "user events LEFT JOIN profiles (dimension) LEFT JOIN transactions (stream), smart emission requiring the plan, WHERE drops heartbeats, 1 partition",
            pipeline: "user_events.yaml",
            streams: &["transactions", "user_events"],
            dims: &["user_profiles"],
            output: "enriched_user_events",
            partitions: 1,
            id_field: None,
            data: user_events_data,
            event: None,
        },
    ]
}

const DEVICES: u64 = 10_000;

fn iot_event(i: u64) -> (Rec, bool) {
    let d = (i * 7919) % DEVICES;
    let value = format!(
        r#"{{"device_id":"d{d}","temperature":{}.5,"humidity":{}}}"#,
        i % 90,
        i % 100
    );
    (
        rec("sensor_readings", format!("d{d}"), value),
        d < DEVICES * 3 / 4,
    )
}

fn iot_data(n: u64) -> Data {
    let dims = (0..DEVICES * 3 / 4)
        .map(|d| {
            let v = format!(
                r#"{{"device_id":"d{d}","location":"site-{}","model":"TX-{}","max_temp":{}}}"#,
                d % 20,
                d % 9,
                40 + d % 50
            );
            rec("device_metadata", format!("d{d}"), v)
        })
        .collect();
    single_stream(dims, n, iot_event)
}

const SYMBOLS: u64 = 1_000;
const TRADERS: u64 = 100;

fn trade_event(i: u64) -> (Rec, bool) {
    let s = (i * 31) % SYMBOLS;
    let value = format!(
        r#"{{"trade_id":{i},"symbol":"S{s}","trader_id":"T{}","qty":{},"price":{}.25}}"#,
        i % TRADERS,
        1 + i % 500,
        10 + i % 300
    );
    (rec("trades", format!("S{s}"), value), true)
}

fn trades_data(n: u64) -> Data {
    let mut dims: Vec<Rec> = (0..SYMBOLS * 9 / 10)
        .map(|s| {
            let v = format!(
                r#"{{"symbol":"S{s}","name":"Company {s}","sector":"Sector {}"}}"#,
                s % 11
            );
            rec("dim_symbols", format!("S{s}"), v)
        })
        .collect();
    dims.extend((0..TRADERS).map(|t| {
        let v = format!(
            r#"{{"trader_id":"T{t}","desk":"Desk {}","region":"R{}"}}"#,
            t % 7,
            t % 3
        );
        rec("dim_traders", format!("T{t}"), v)
    }));
    single_stream(dims, n, trade_event)
}

fn single_stream(dims: Vec<Rec>, n: u64, event: fn(u64) -> (Rec, bool)) -> Data {
    let mut expected = 0;
    let streams = (0..n)
        .map(|i| {
            let (r, out) = event(i);
            expected += u64::from(out);
            r
        })
        .collect();
    Data {
        dims,
        streams,
        expected,
    }
}

/// `n` records: orders and, 50 records behind, the payments of 90% of them.
fn orders_data(n: u64) -> Data {
    let orders = n / 2;
    let paid = |o: u64| o % 10 != 9;
    let payment = |o: u64| {
        let v = format!(
            r#"{{"payment_id":"p{o}","order_id":"o{o}","amount":{}.0,"method":"{}"}}"#,
            20 + o % 200,
            if o % 3 == 0 { "card" } else { "transfer" }
        );
        rec("payments", format!("o{o}"), v)
    };
    let mut streams = Vec::with_capacity(n as usize);
    let mut paid_orders = 0;
    for o in 0..orders {
        let v = format!(
            r#"{{"order_id":"o{o}","customer_id":"c{}","total":{}.0}}"#,
            o % 5_000,
            20 + o % 200
        );
        streams.push(rec("orders", format!("o{o}"), v));
        if o >= 50 && paid(o - 50) {
            streams.push(payment(o - 50));
        }
        paid_orders += u64::from(paid(o));
    }
    for o in orders.saturating_sub(50)..orders {
        if paid(o) {
            streams.push(payment(o));
        }
    }
    Data {
        dims: Vec::new(),
        streams,
        expected: paid_orders,
    }
}

const USERS: u64 = 10_000;

/// Every user has a profile (so smart emission releases each event at once),
/// half of them one transaction (so each event has exactly one output, with
/// or without the amount), and a quarter of the events are heartbeats the
/// WHERE clause drops.
fn user_events_data(n: u64) -> Data {
    let dims = (0..USERS)
        .map(|u| {
            let v = format!(
                r#"{{"user_id":"u{u}","plan":"{}","country":"{}"}}"#,
                ["free", "pro", "team"][(u % 3) as usize],
                ["DE", "FR", "US", "JP"][(u % 4) as usize]
            );
            rec("user_profiles", format!("u{u}"), v)
        })
        .collect();
    let transactions = (USERS / 2).min(n / 4);
    let mut streams: Vec<Rec> = (0..transactions)
        .map(|u| {
            let v = format!(r#"{{"user_id":"u{u}","amount":{}.5}}"#, 5 + u % 100);
            rec("transactions", format!("u{u}"), v)
        })
        .collect();
    let mut expected = 0;
    for i in 0..n - transactions {
        let u = (i * 7919) % USERS;
        let kind = ["view", "click", "purchase", "heartbeat"][(i % 4) as usize];
        let v = format!(
            r#"{{"user_id":"u{u}","event_type":"{kind}","ts":{}}}"#,
            1_700_000_000_000 + i
        );
        streams.push(rec("user_events", format!("u{u}"), v));
        expected += u64::from(kind != "heartbeat");
    }
    Data {
        dims,
        streams,
        expected,
    }
}
