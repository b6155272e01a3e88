//! The pipeline and global config in KaflowSQL's shapes
//! (`pipelines/kaflowsql/`) validate and run unchanged: `${VAR:-default}`,
//! brokers as a list, `kafka.useAvro` with a schema registry, the emitter
//! and S3 checkpoint keys (warned about), Avro out with an inline schema.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use apache_avro::types::Value as Avro;
use kaflowsql::codec::avro::frame;
use kaflowsql::codec::AvroSchema;
use support::{
    avro_rows, brokers, create_topics, free_port, now_ms, producer, read_topic, repo_root,
    require_broker, unique, Registry,
};

const ORDER: &str = r#"{"type":"record","name":"Order","namespace":"com.example.orders","fields":[
  {"name":"order_id","type":"string"},{"name":"customer_id","type":"string"},{"name":"amount","type":"double"}]}"#;
const CUSTOMER: &str = r#"{"type":"record","name":"Customer","namespace":"com.example.orders","fields":[
  {"name":"customer_id","type":"string"},{"name":"name","type":"string"},{"name":"tier","type":["null","string"],"default":null}]}"#;

#[test]
fn kaflowsql_shaped_files_validate_with_warnings() {
    let root = repo_root();
    let out = Command::new(env!("CARGO_BIN_EXE_kaflowsql"))
        .current_dir(&root)
        .args([
            "validate",
            "--config",
            "pipelines/kaflowsql/kaflowsql.yaml",
            "pipelines/kaflowsql/enriched_orders.yaml",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("kaflowsql.yaml:9:1: warning: emitter is ignored"),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: state.rocksdb.checkpoint is ignored"),
        "{stderr}"
    );
    assert!(!stderr.contains("error"), "{stderr}");
}

#[test]
fn kaflowsql_shaped_files_run_avro_in_and_out() {
    require_broker();
    let registry = Registry::start(&[]);
    let client = registry.client();
    let dir = tempfile::tempdir().unwrap();
    let s = unique("kf").replace('-', "_");
    let (orders, customers, out) = (
        format!("orders_{s}"),
        format!("customers_{s}"),
        format!("enriched_{s}"),
    );
    create_topics(&[(&orders, 1), (&customers, 1), (&out, 1)]);
    let (order, customer) = (
        AvroSchema::parse(ORDER).unwrap(),
        AvroSchema::parse(CUSTOMER).unwrap(),
    );
    let order_id = client.register(&format!("{orders}-value"), &order).unwrap();
    let customer_id = client
        .register(&format!("{customers}-value"), &customer)
        .unwrap();
    let framed = |id: u32, schema: &AvroSchema, value: Avro| {
        let mut v = Vec::new();
        frame(id, &mut v);
        v.extend(apache_avro::to_avro_datum(schema.schema(), value).unwrap());
        v
    };
    let p = producer();
    let now = now_ms();
    for (id, name, tier) in [("c1", "Ada", Some("gold")), ("c2", "Bo", None)] {
        let tier = match tier {
            Some(t) => Avro::Union(1, Box::new(Avro::String(t.into()))),
            None => Avro::Union(0, Box::new(Avro::Null)),
        };
        let value = framed(
            customer_id,
            &customer,
            Avro::Record(vec![
                ("customer_id".into(), Avro::String(id.into())),
                ("name".into(), Avro::String(name.into())),
                ("tier".into(), tier),
            ]),
        );
        p.send(&customers, Some(0), Some(id.as_bytes()), Some(&value), now);
    }
    p.flush();

    let root = repo_root();
    let port = free_port();
    let log = dir.path().join("kaflowsql.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kaflowsql"))
        .current_dir(&root)
        .args([
            "run",
            "--config",
            "pipelines/kaflowsql/kaflowsql.yaml",
            "pipelines/kaflowsql/enriched_orders.yaml",
        ])
        .env("KAFKA_BROKERS", brokers())
        .env("SCHEMA_REGISTRY_URL", &registry.url)
        .env("STATE_PATH", dir.path().join("state"))
        .env("ORDERS_TOPIC", &orders)
        .env("CUSTOMERS_TOPIC", &customers)
        .env("OUTPUT_TOPIC", &out)
        .env("KAFLOWSQL_HTTP_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "info,rdkafka=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    for (i, (id, c, amount)) in [("o1", "c1", 10.5), ("o2", "c2", 3.0)].iter().enumerate() {
        let value = framed(
            order_id,
            &order,
            Avro::Record(vec![
                ("order_id".into(), Avro::String((*id).into())),
                ("customer_id".into(), Avro::String((*c).into())),
                ("amount".into(), Avro::Double(*amount)),
            ]),
        );
        p.send(
            &orders,
            Some(0),
            Some(id.as_bytes()),
            Some(&value),
            now + i as i64,
        );
    }
    p.flush();
    let rows = read_topic(&out, 2, Duration::from_millis(500), Duration::from_secs(60));
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let (got, ids) = avro_rows(&client, &rows);
    let expected: BTreeSet<String> = [
        r#"o1 {"order_id":"o1","customer_id":"c1","customer_name":"Ada","tier":"gold","amount":10.5}"#,
        r#"o2 {"order_id":"o2","customer_id":"c2","customer_name":"Bo","tier":null,"amount":3.0}"#,
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    assert_eq!(got, expected, "{log}");
    let (latest, schema) = client.latest(&format!("{out}-value")).unwrap();
    assert_eq!(ids.into_iter().collect::<Vec<_>>(), vec![latest]);
    assert_eq!(
        kaflowsql::codec::avro::record_name(schema.schema()).as_deref(),
        Some("com.example.orders.EnrichedOrder")
    );
}
