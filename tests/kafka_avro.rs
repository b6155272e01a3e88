//! Avro through a schema registry, in and out, on the real broker and the
//! project's test registry (`deploy/local/schema-registry.py`): records of
//! two writer schema versions are joined with a JSON dimension and written
//! as Avro under a registered schema; undecodable values go to the DLQ.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use apache_avro::types::Value as Avro;
use kaflowsql::codec::avro::{frame, unframe};
use kaflowsql::codec::AvroSchema;
use support::{
    avro_rows, create_topics, now_ms, producer, read_topic, require_broker, unique, Kaflowsql,
    Registry,
};

const V1: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
  {"name":"order_id","type":"long"},
  {"name":"customer_id","type":"string"},
  {"name":"amount","type":"double"},
  {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#;

/// V1 plus two optional fields (BACKWARD compatible: defaults given).
const V2: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
  {"name":"order_id","type":"long"},
  {"name":"customer_id","type":"string"},
  {"name":"amount","type":"double"},
  {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"coupon","type":["null","string"],"default":null},
  {"name":"shipping","type":["null",{"type":"record","name":"Ship","fields":[{"name":"city","type":"string"}]}],"default":null}]}"#;

fn framed(id: u32, schema: &AvroSchema, value: Avro) -> Vec<u8> {
    let mut out = Vec::new();
    frame(id, &mut out);
    out.extend(apache_avro::to_avro_datum(schema.schema(), value).unwrap());
    out
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

#[test]
fn avro_of_two_schema_versions_joins_a_json_dimension_and_is_written_as_avro() {
    require_broker();
    let registry = Registry::start(&[]);
    let client = registry.client();
    let dir = tempfile::tempdir().unwrap();
    let s = unique("avro").replace('-', "_");
    let (orders, customers, out, dlq) = (
        format!("orders_{s}"),
        format!("customers_{s}"),
        format!("out_{s}"),
        format!("dlq_{s}"),
    );
    create_topics(&[(&orders, 1), (&customers, 1), (&out, 1), (&dlq, 1)]);
    let (v1, v2) = (
        AvroSchema::parse(V1).unwrap(),
        AvroSchema::parse(V2).unwrap(),
    );
    let subject = format!("{orders}-value");
    let id1 = client.register(&subject, &v1).unwrap();
    let id2 = client.register(&subject, &v2).unwrap();
    assert_ne!(id1, id2);

    let file = dir.path().join("avro.yaml");
    std::fs::write(
        &file,
        format!(
            r#"name: avro_{s}
query: |
  SELECT o.order_id, o.customer_id, c.tier, o.amount, o.coupon, o.shipping.city AS city, o.at
  FROM {orders} o
  LEFT JOIN {customers} c ON o.customer_id = c.customer_id
output:
  topic: {out}
  format: avro
  key: order_id
  dlq_topic: {dlq}
  schema:
    name: EnrichedOrder
    namespace: shop
    fields:
      - {{ name: order_id, type: long }}
      - {{ name: customer_id, type: string }}
      - {{ name: tier, type: ["null", "string"], default: null }}
      - {{ name: amount, type: double }}
      - {{ name: coupon, type: ["null", "string"], default: null }}
      - {{ name: city, type: ["null", "string"], default: null }}
      - {{ name: at, type: {{ type: long, logicalType: timestamp-millis }} }}
sources:
  {orders}:
    format: avro
    timestamp: at
state:
  dimensions: [{customers}]
"#
        ),
    )
    .unwrap();

    let p = producer();
    let now = now_ms();
    for (id, tier) in [("c1", "gold"), ("c2", "silver")] {
        let value = format!(r#"{{"customer_id":"{id}","tier":"{tier}"}}"#);
        p.send(
            &customers,
            Some(0),
            Some(id.as_bytes()),
            Some(value.as_bytes()),
            now,
        );
    }
    p.flush();
    let k = Kaflowsql::start_with_registry(dir.path(), &[&file], &registry.url);

    let ship = |city: &str| {
        Avro::Union(
            1,
            Box::new(Avro::Record(vec![(
                "city".into(),
                Avro::String(city.into()),
            )])),
        )
    };
    let records: Vec<Vec<u8>> = vec![
        framed(
            id1,
            &v1,
            Avro::Record(vec![
                ("order_id".into(), Avro::Long(1)),
                ("customer_id".into(), Avro::String("c1".into())),
                ("amount".into(), Avro::Double(10.5)),
                ("at".into(), Avro::TimestampMillis(now)),
            ]),
        ),
        framed(
            id2,
            &v2,
            Avro::Record(vec![
                ("order_id".into(), Avro::Long(2)),
                ("customer_id".into(), Avro::String("c2".into())),
                ("amount".into(), Avro::Double(20.0)),
                ("at".into(), Avro::TimestampMillis(now + 1)),
                (
                    "coupon".into(),
                    Avro::Union(1, Box::new(Avro::String("SAVE".into()))),
                ),
                ("shipping".into(), ship("Oslo")),
            ]),
        ),
        // Not Avro at all.
        br#"{"order_id":9}"#.to_vec(),
        // A schema id the registry does not know.
        {
            let mut v = Vec::new();
            frame(999_999, &mut v);
            v.extend([2, 2]);
            v
        },
        // Bytes cut short of the datum.
        {
            let mut v = framed(
                id1,
                &v1,
                Avro::Record(vec![
                    ("order_id".into(), Avro::Long(7)),
                    ("customer_id".into(), Avro::String("c1".into())),
                    ("amount".into(), Avro::Double(1.0)),
                    ("at".into(), Avro::TimestampMillis(now)),
                ]),
            );
            v.truncate(v.len() - 4);
            v
        },
        framed(
            id2,
            &v2,
            Avro::Record(vec![
                ("order_id".into(), Avro::Long(3)),
                ("customer_id".into(), Avro::String("c9".into())),
                ("amount".into(), Avro::Double(5.25)),
                ("at".into(), Avro::TimestampMillis(now + 2)),
                ("coupon".into(), Avro::Union(0, Box::new(Avro::Null))),
                ("shipping".into(), Avro::Union(0, Box::new(Avro::Null))),
            ]),
        ),
    ];
    for (i, value) in records.iter().enumerate() {
        p.send(&orders, Some(0), Some(b"k"), Some(value), now + i as i64);
    }
    p.flush();

    let rows = read_topic(&out, 3, Duration::from_millis(500), Duration::from_secs(30));
    let (decoded, ids) = avro_rows(&client, &rows);
    let expected: BTreeSet<String> = [
        format!(r#"1 {{"order_id":1,"customer_id":"c1","tier":"gold","amount":10.5,"coupon":null,"city":null,"at":"{}"}}"#, iso(now)),
        format!(r#"2 {{"order_id":2,"customer_id":"c2","tier":"silver","amount":20.0,"coupon":"SAVE","city":"Oslo","at":"{}"}}"#, iso(now + 1)),
        format!(r#"3 {{"order_id":3,"customer_id":"c9","tier":null,"amount":5.25,"coupon":null,"city":null,"at":"{}"}}"#, iso(now + 2)),
    ]
    .into_iter()
    .collect();
    assert_eq!(decoded, expected, "{}", k.log_text());
    // One schema, registered under TopicNameStrategy's subject.
    assert_eq!(ids.len(), 1);
    let (latest, _) = client.latest(&format!("{out}-value")).unwrap();
    assert_eq!(ids.into_iter().next(), Some(latest));

    let dead = read_topic(&dlq, 3, Duration::from_millis(300), Duration::from_secs(20));
    let reasons: Vec<&str> = dead
        .iter()
        .map(|d| d.headers["kaflowsql.dlq.reason"].as_str())
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons[0].contains("not Avro in Confluent's wire format"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("schema id 999999") && reasons[1].contains("40403"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].contains("does not decode with its writer schema"),
        "{reasons:?}"
    );
    assert_eq!(
        dead[0].value, records[2],
        "dead letters keep the original bytes"
    );
    assert_eq!(k.metric("kaflowsql_dlq_records_total"), 3.0);
}

/// An output row that does not fit the output schema (a NULL where the
/// schema has no null) becomes a dead letter of its driving record; the
/// other rows go on.
#[test]
fn a_row_that_does_not_fit_the_avro_schema_is_a_dead_letter() {
    require_broker();
    let registry = Registry::start(&[]);
    let client = registry.client();
    let dir = tempfile::tempdir().unwrap();
    let s = unique("avrofit").replace('-', "_");
    let (events, out, dlq) = (format!("ev_{s}"), format!("out_{s}"), format!("dlq_{s}"));
    create_topics(&[(&events, 1), (&out, 1), (&dlq, 1)]);
    let file = dir.path().join("fit.yaml");
    std::fs::write(
        &file,
        format!(
            r#"name: fit_{s}
query: SELECT e.id, e.name FROM {events} e
output:
  topic: {out}
  format: avro
  dlq_topic: {dlq}
  schema:
    name: Out
    fields:
      - {{ name: id, type: long }}
      - {{ name: name, type: string }}
"#
        ),
    )
    .unwrap();
    let k = Kaflowsql::start_with_registry(dir.path(), &[&file], &registry.url);
    let p = producer();
    let now = now_ms();
    for (i, v) in [
        r#"{"id":1,"name":"a"}"#,
        r#"{"id":2}"#,
        r#"{"id":3,"name":"c"}"#,
    ]
    .iter()
    .enumerate()
    {
        p.send(&events, Some(0), None, Some(v.as_bytes()), now + i as i64);
    }
    p.flush();
    let rows = read_topic(&out, 2, Duration::from_millis(500), Duration::from_secs(30));
    let mut ids = Vec::new();
    for r in &rows {
        let (id, datum) = unframe(&r.value).unwrap();
        let mut json = Vec::new();
        client
            .schema(id)
            .unwrap()
            .datum_to_json(id, datum, &mut json)
            .unwrap();
        ids.push(String::from_utf8(json).unwrap());
    }
    assert_eq!(
        ids,
        vec![r#"{"id":1,"name":"a"}"#, r#"{"id":3,"name":"c"}"#],
        "{}",
        k.log_text()
    );
    let dead = read_topic(&dlq, 1, Duration::from_millis(300), Duration::from_secs(20));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].value, br#"{"id":2}"#.to_vec());
    let reason = &dead[0].headers["kaflowsql.dlq.reason"];
    assert!(reason.contains("`name` is NULL"), "{reason}");
}

/// A registry that cannot be reached holds the record whose schema is not
/// known yet: nothing is dropped or dead-lettered, the outage is counted, and
/// the record goes on when the registry answers again.
#[test]
fn a_registry_outage_holds_records_until_it_answers() {
    require_broker();
    let registry = Registry::start(&[]);
    let port = registry.port();
    let client = registry.client();
    let dir = tempfile::tempdir().unwrap();
    let s = unique("avroout").replace('-', "_");
    let (orders, out, dlq) = (
        format!("orders_{s}"),
        format!("out_{s}"),
        format!("dlq_{s}"),
    );
    create_topics(&[(&orders, 1), (&out, 1), (&dlq, 1)]);
    let (v1, v2) = (
        AvroSchema::parse(V1).unwrap(),
        AvroSchema::parse(V2).unwrap(),
    );
    let subject = format!("{orders}-value");
    let id1 = client.register(&subject, &v1).unwrap();
    let id2 = client.register(&subject, &v2).unwrap();
    let file = dir.path().join("outage.yaml");
    std::fs::write(
        &file,
        format!(
            "name: outage_{s}\nquery: SELECT o.order_id, o.coupon FROM {orders} o\noutput: {{ topic: {out}, dlq_topic: {dlq} }}\nsources:\n  {orders}: {{ format: avro }}\n"
        ),
    )
    .unwrap();
    let k = Kaflowsql::start_with_registry(dir.path(), &[&file], &registry.url);
    let now = now_ms();
    let order = |id: i64| {
        vec![
            ("order_id".to_string(), Avro::Long(id)),
            ("customer_id".to_string(), Avro::String("c1".into())),
            ("amount".to_string(), Avro::Double(1.0)),
            ("at".to_string(), Avro::TimestampMillis(now)),
        ]
    };
    let p = producer();
    p.send(
        &orders,
        Some(0),
        None,
        Some(&framed(id1, &v1, Avro::Record(order(1)))),
        now,
    );
    p.flush();
    let first = read_topic(&out, 1, Duration::from_millis(200), Duration::from_secs(30));
    assert_eq!(first.len(), 1, "{}", k.log_text());
    // The registry goes away; a record of a schema not fetched yet arrives.
    drop(registry);
    let mut second = order(2);
    second.push((
        "coupon".into(),
        Avro::Union(1, Box::new(Avro::String("X".into()))),
    ));
    second.push(("shipping".into(), Avro::Union(0, Box::new(Avro::Null))));
    p.send(
        &orders,
        Some(0),
        None,
        Some(&framed(id2, &v2, Avro::Record(second))),
        now + 1,
    );
    p.flush();
    k.wait_until(Duration::from_secs(30), |k| {
        k.metric_with("kaflowsql_errors_total", r#"kind="schema_registry""#) >= 1.0
    });
    assert_eq!(
        read_topic(&out, 2, Duration::from_millis(500), Duration::from_secs(2)).len(),
        1
    );
    // Back, with the same schemas under the same ids (an in-memory registry
    // started again, registered in the same order).
    let again = Registry::start_on(port, &[]);
    let c = again.client();
    assert_eq!(c.register(&subject, &v1).unwrap(), id1);
    assert_eq!(c.register(&subject, &v2).unwrap(), id2);
    let rows = read_topic(&out, 2, Duration::from_millis(300), Duration::from_secs(60));
    let lines: Vec<String> = rows.iter().map(|r| r.line()).collect();
    assert_eq!(
        lines,
        vec![
            r#"{"key":null,"value":{"order_id":1,"coupon":null}}"#,
            r#"{"key":null,"value":{"order_id":2,"coupon":"X"}}"#,
        ],
        "{}",
        k.log_text()
    );
    assert!(read_topic(&dlq, 1, Duration::from_millis(200), Duration::from_secs(2)).is_empty());
}

/// Avro in, Avro out, nothing declared: the output schema is derived at
/// start from the SELECT over the source's types in the registry (the
/// latest schema of `<topic>-value`).
#[test]
fn avro_in_and_out_derives_the_output_schema_from_the_registry() {
    require_broker();
    let registry = Registry::start(&[]);
    let client = registry.client();
    let dir = tempfile::tempdir().unwrap();
    let s = unique("avroderive").replace('-', "_");
    let (orders, out) = (format!("orders_{s}"), format!("out_{s}"));
    create_topics(&[(&orders, 1), (&out, 1)]);
    let v2 = AvroSchema::parse(V2).unwrap();
    let id = client.register(&format!("{orders}-value"), &v2).unwrap();
    let file = dir.path().join("derive.yaml");
    std::fs::write(
        &file,
        format!(
            "name: derive-{s}\nquery: SELECT o.order_id, o.amount * 2 AS doubled, o.coupon FROM {orders} o\noutput: {{ topic: {out}, format: avro, key: order_id }}\nsources:\n  {orders}: {{ format: avro }}\n"
        ),
    )
    .unwrap();
    let validate = std::process::Command::new(env!("CARGO_BIN_EXE_kaflowsql"))
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        validate.status.success(),
        "{}",
        String::from_utf8_lossy(&validate.stderr)
    );
    let k = Kaflowsql::start_with_registry(dir.path(), &[&file], &registry.url);
    let now = now_ms();
    let p = producer();
    let value = framed(
        id,
        &v2,
        Avro::Record(vec![
            ("order_id".into(), Avro::Long(5)),
            ("customer_id".into(), Avro::String("c1".into())),
            ("amount".into(), Avro::Double(2.25)),
            ("at".into(), Avro::TimestampMillis(now)),
            (
                "coupon".into(),
                Avro::Union(1, Box::new(Avro::String("Z".into()))),
            ),
            ("shipping".into(), Avro::Union(0, Box::new(Avro::Null))),
        ]),
    );
    p.send(&orders, Some(0), None, Some(&value), now);
    p.flush();
    let rows = read_topic(&out, 1, Duration::from_millis(300), Duration::from_secs(30));
    let (lines, ids) = avro_rows(&client, &rows);
    assert_eq!(
        lines.into_iter().collect::<Vec<_>>(),
        vec![r#"5 {"order_id":5,"doubled":4.5,"coupon":"Z"}"#.to_string()],
        "{}",
        k.log_text()
    );
    let (latest, schema) = client.latest(&format!("{out}-value")).unwrap();
    assert_eq!(ids.into_iter().collect::<Vec<_>>(), vec![latest]);
    assert_eq!(
        schema.text(),
        format!(
            r#"{{"type":"record","namespace":"kaflowsql","name":"derive_{s}","fields":[{{"name":"order_id","type":["null","long"],"default":null}},{{"name":"doubled","type":["null","double"],"default":null}},{{"name":"coupon","type":["null","string"],"default":null}}]}}"#
        )
    );
}
