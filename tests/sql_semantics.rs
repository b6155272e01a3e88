//! SQL semantics of joins, offline (the engine over recorded records): the
//! answers standard SQL (and Flink SQL, ksqlDB) give, for the cases issue
//! #16 found kaflowsql answering differently.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use kaflowsql::config::Pipeline;
use kaflowsql::engine::Engine;
use kaflowsql::testing::{run, Recorded};

fn pipeline(query: &str, dimensions: &[&str]) -> Pipeline {
    let text = format!(
        "name: t\nquery: |\n  {query}\noutput:\n  topic: out\nstate:\n  events:\n    default_ttl: 1h\n  dimensions: [{}]\n",
        dimensions.join(", ")
    );
    Pipeline::parse(Path::new("t.yaml"), &text).unwrap()
}

/// Records in order, each topic's offsets counted from 0, one second apart.
fn records(list: &[(&str, &str, &str)]) -> Vec<Recorded> {
    let t0 = 1_700_000_000_000;
    let mut next = std::collections::HashMap::new();
    list.iter()
        .enumerate()
        .map(|(i, (topic, key, value))| {
            let offset = next.entry(*topic).or_insert(0);
            *offset += 1;
            Recorded {
                topic: topic.to_string(),
                partition: 0,
                offset: *offset - 1,
                timestamp: t0 + i as i64 * 1_000,
                key: Some(key.as_bytes().to_vec()),
                value: (!value.is_empty()).then(|| value.as_bytes().to_vec()),
            }
        })
        .collect()
}

/// The output values, in order; no dead letter.
fn values(p: &Pipeline, list: &[(&str, &str, &str)]) -> Vec<serde_json::Value> {
    let mut engine = Engine::new(p).unwrap();
    let out = run(&mut engine, &records(list)).unwrap();
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    out.lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["value"].clone())
        .collect()
}

/// Issue #16, reproduction 1: a candidate that fails the ON conditions
/// beyond the key is no match; the order stays, NULL-extended.
#[test]
fn a_left_join_on_condition_null_extends_instead_of_dropping() {
    let p = pipeline(
        "SELECT o.order_id, c.name FROM orders o LEFT JOIN customers c ON o.customer_id = c.customer_id AND c.active = true",
        &["customers"],
    );
    let out = values(
        &p,
        &[
            (
                "customers",
                "c1",
                r#"{"customer_id":"c1","name":"Ada","active":true}"#,
            ),
            (
                "customers",
                "c2",
                r#"{"customer_id":"c2","name":"Bob","active":false}"#,
            ),
            ("orders", "o1", r#"{"order_id":"o1","customer_id":"c1"}"#),
            ("orders", "o2", r#"{"order_id":"o2","customer_id":"c2"}"#),
            ("orders", "o3", r#"{"order_id":"o3","customer_id":"c9"}"#),
        ],
    );
    assert_eq!(
        out,
        [
            serde_json::json!({"order_id":"o1","name":"Ada"}),
            serde_json::json!({"order_id":"o2","name":null}),
            serde_json::json!({"order_id":"o3","name":null}),
        ]
    );
}

/// A WHERE still filters after the join: the same condition there drops
/// the row (the two differ exactly as in SQL).
#[test]
fn the_same_condition_in_where_filters_after_the_join() {
    let p = pipeline(
        "SELECT o.order_id, c.name FROM orders o LEFT JOIN customers c ON o.customer_id = c.customer_id WHERE c.active = true",
        &["customers"],
    );
    let out = values(
        &p,
        &[
            (
                "customers",
                "c1",
                r#"{"customer_id":"c1","name":"Ada","active":true}"#,
            ),
            (
                "customers",
                "c2",
                r#"{"customer_id":"c2","name":"Bob","active":false}"#,
            ),
            ("orders", "o1", r#"{"order_id":"o1","customer_id":"c1"}"#),
            ("orders", "o2", r#"{"order_id":"o2","customer_id":"c2"}"#),
        ],
    );
    assert_eq!(out, [serde_json::json!({"order_id":"o1","name":"Ada"})]);
}

/// Several candidates (a dimension joined on a non-key column): only those
/// that pass the ON conditions are matches; one NULL-extended row when none does.
#[test]
fn of_several_candidates_only_those_passing_the_on_conditions_match() {
    let p = pipeline(
        "SELECT r.reading_id, d.serial FROM readings r LEFT JOIN devices d ON r.owner_id = d.owner_id AND d.enabled",
        &["devices"],
    );
    let out = values(
        &p,
        &[
            (
                "devices",
                "S1",
                r#"{"serial":"S1","owner_id":"u1","enabled":true}"#,
            ),
            (
                "devices",
                "S2",
                r#"{"serial":"S2","owner_id":"u1","enabled":false}"#,
            ),
            (
                "devices",
                "S3",
                r#"{"serial":"S3","owner_id":"u2","enabled":false}"#,
            ),
            (
                "devices",
                "S4",
                r#"{"serial":"S4","owner_id":"u2","enabled":false}"#,
            ),
            ("readings", "r1", r#"{"reading_id":"r1","owner_id":"u1"}"#),
            ("readings", "r2", r#"{"reading_id":"r2","owner_id":"u2"}"#),
        ],
    );
    assert_eq!(
        out,
        [
            serde_json::json!({"reading_id":"r1","serial":"S1"}),
            serde_json::json!({"reading_id":"r2","serial":null}),
        ]
    );
}

/// Issue #16, reproduction 2: a NULL or missing join key matches nothing;
/// the LEFT join keeps the row with NULLs (not a dead letter).
#[test]
fn a_null_or_missing_key_gives_the_left_join_its_null_row() {
    let p = pipeline(
        "SELECT e.event_id, e.user_id, p.plan FROM page_views e LEFT JOIN profiles p ON e.user_id = p.user_id",
        &["profiles"],
    );
    let out = values(
        &p,
        &[
            ("profiles", "u1", r#"{"user_id":"u1","plan":"pro"}"#),
            ("page_views", "v1", r#"{"event_id":"v1","user_id":null}"#),
            ("page_views", "v2", r#"{"event_id":"v2"}"#),
            ("page_views", "v3", r#"{"event_id":"v3","user_id":"u1"}"#),
        ],
    );
    assert_eq!(
        out,
        [
            serde_json::json!({"event_id":"v1","user_id":null,"plan":null}),
            serde_json::json!({"event_id":"v2","user_id":null,"plan":null}),
            serde_json::json!({"event_id":"v3","user_id":"u1","plan":"pro"}),
        ]
    );
}

/// An INNER join with a NULL key gives no row, and no dead letter.
#[test]
fn a_null_key_gives_an_inner_join_no_row() {
    let p = pipeline(
        "SELECT o.order_id, p.amount FROM orders o JOIN payments p ON o.order_id = p.order_id",
        &[],
    );
    let out = values(
        &p,
        &[
            ("orders", "k1", r#"{"order_id":null}"#),
            ("payments", "k2", r#"{"order_id":null,"amount":1}"#),
            ("orders", "k3", r#"{"order_id":"o1"}"#),
            ("payments", "k4", r#"{"order_id":"o1","amount":2}"#),
        ],
    );
    assert_eq!(out, [serde_json::json!({"order_id":"o1","amount":2})]);
}

/// Issue #16, reproduction 6: a dimension record whose join column becomes
/// NULL (or disappears) stops matching; its previous version is gone.
#[test]
fn a_dimension_whose_join_column_goes_null_stops_matching() {
    let p = pipeline(
        "SELECT e.reading_id, e.owner_id, d.serial FROM readings e LEFT JOIN devices d ON e.owner_id = d.owner_id",
        &["devices"],
    );
    for update in [r#"{"serial":"S1","owner_id":null}"#, r#"{"serial":"S1"}"#] {
        let out = values(
            &p,
            &[
                ("devices", "S1", r#"{"serial":"S1","owner_id":"u1"}"#),
                ("devices", "S1", update),
                ("readings", "r1", r#"{"reading_id":"r1","owner_id":"u1"}"#),
            ],
        );
        assert_eq!(
            out,
            [serde_json::json!({"reading_id":"r1","owner_id":"u1","serial":null})],
            "after {update}"
        );
    }
}

/// The planner refuses what the join walk cannot do yet rather than answer
/// wrongly: a lookup keyed on a conditional LEFT join's columns.
#[test]
fn a_lookup_keyed_on_a_conditional_left_join_is_refused() {
    let text = "name: t\nquery: |\n  SELECT o.order_id, r.name FROM orders o LEFT JOIN customers c ON o.customer_id = c.customer_id AND c.active LEFT JOIN regions r ON c.region = r.code\noutput:\n  topic: out\nstate:\n  dimensions: [customers, regions]\n";
    let err = Pipeline::parse(Path::new("t.yaml"), text)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not supported yet"), "{err}");
    assert!(err.contains("move the extra conditions"), "{err}");
}

/// Issue #16, reproduction 5: an unqualified column names the one source
/// that declares it; two declaring it is an error that names both.
#[test]
fn unqualified_columns_resolve_through_declared_columns() {
    let text = |select: &str| {
        format!(
            "name: t
query: |
  SELECT {select} FROM orders o LEFT JOIN customers c ON o.customer_id = c.customer_id
output:
  topic: out
state:
  dimensions: [customers]
sources:
  orders:
    columns: {{ order_id: VARCHAR, customer_id: VARCHAR, amount: DOUBLE }}
  customers:
    columns: {{ customer_id: VARCHAR, name: VARCHAR }}
"
        )
    };
    let p = Pipeline::parse(Path::new("t.yaml"), &text("order_id, amount, name")).unwrap();
    let out = values(
        &p,
        &[
            ("customers", "c1", r#"{"customer_id":"c1","name":"Ada"}"#),
            (
                "orders",
                "o1",
                r#"{"order_id":"o1","customer_id":"c1","amount":2.5}"#,
            ),
        ],
    );
    assert_eq!(
        out,
        [serde_json::json!({"order_id":"o1","amount":2.5,"name":"Ada"})]
    );
    let err = Pipeline::parse(Path::new("t.yaml"), &text("customer_id"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("ambiguous"), "{err}");
    assert!(err.contains("o.customer_id or c.customer_id"), "{err}");
    let err = Pipeline::parse(Path::new("t.yaml"), &text("region"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no source declares it"), "{err}");
    assert!(err.contains("t.yaml:3:"), "file, line and column: {err}");
}

/// Issue #16, reproduction 7: the same input gives byte-identical output
/// whatever the micro-batch size; an integer stays an integer in an
/// inferred number column that also holds decimals.
#[test]
fn output_does_not_depend_on_where_micro_batches_are_cut() {
    let p = pipeline(
        "SELECT o.order_id, o.qty, o.qty * 2 AS twice FROM orders o",
        &[],
    );
    let p = Pipeline {
        output: kaflowsql::config::Output {
            key: Some(1),
            ..p.output.clone()
        },
        ..p
    };
    let input = records(&[
        ("orders", "o1", r#"{"order_id":"o1","qty":2}"#),
        ("orders", "o5", r#"{"order_id":"o5","qty":2.5}"#),
        ("orders", "o6", r#"{"order_id":"o6","qty":3}"#),
    ]);
    let mut outputs = Vec::new();
    for batch in [1, 2, 4096] {
        let mut engine = Engine::new(&p).unwrap().with_batch_rows(batch);
        outputs.push(run(&mut engine, &input).unwrap().lines);
    }
    assert_eq!(outputs[0], outputs[1], "batches of 1 and 2");
    assert_eq!(outputs[0], outputs[2], "batches of 1 and 4096");
    assert_eq!(
        outputs[0],
        [
            r#"{"key":"2","value":{"order_id":"o1","qty":2,"twice":4}}"#,
            r#"{"key":"2.5","value":{"order_id":"o5","qty":2.5,"twice":5.0}}"#,
            r#"{"key":"3","value":{"order_id":"o6","qty":3,"twice":6}}"#,
        ]
    );
}

/// Issue #16, reproduction 3: `o.*` keeps the event and adds the
/// enrichment; `*` names every source's declared columns in their order,
/// and a name brought twice gets a number, as in Flink (Calcite).
#[test]
fn star_expands_to_the_declared_columns_in_their_order() {
    let text = |select: &str| {
        format!(
            "name: t
query: |
  SELECT {select} FROM orders o LEFT JOIN customers c ON o.customer_id = c.customer_id
output:
  topic: out
state:
  dimensions: [customers]
sources:
  orders:
    columns: {{ order_id: VARCHAR, customer_id: VARCHAR, amount: DOUBLE }}
  customers:
    columns: {{ customer_id: VARCHAR, name: VARCHAR }}
"
        )
    };
    let input = [
        ("customers", "c1", r#"{"customer_id":"c1","name":"Ada"}"#),
        (
            "orders",
            "o1",
            r#"{"order_id":"o1","customer_id":"c1","amount":2.5,"note":"x"}"#,
        ),
    ];
    let p = Pipeline::parse(Path::new("t.yaml"), &text("o.*, c.name")).unwrap();
    let names: Vec<&str> = p.plan.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["order_id", "customer_id", "amount", "name"]);
    assert_eq!(
        values(&p, &input),
        [serde_json::json!({"order_id":"o1","customer_id":"c1","amount":2.5,"name":"Ada"})]
    );
    let all = Pipeline::parse(Path::new("t.yaml"), &text("*")).unwrap();
    let names: Vec<&str> = all.plan.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(
        names,
        ["order_id", "customer_id", "amount", "customer_id0", "name"]
    );
}

/// `alias.*` over a source without declared columns: every top-level field
/// of each record, in its order, in place of the `*`; the names the query
/// writes win a clash, a record's clashing field gets a number; a LEFT
/// join without a match brings no field; the key may be a record's field.
#[test]
fn star_over_an_undeclared_source_is_every_field_of_the_record() {
    let p = Pipeline::parse(
        Path::new("t.yaml"),
        "name: t
query: |
  SELECT o.*, c.name, c.* FROM orders o LEFT JOIN customers c ON o.customer_id = c.customer_id
output:
  topic: out
  key: order_id
state:
  dimensions: [customers]
",
    )
    .unwrap();
    let mut engine = Engine::new(&p).unwrap();
    let out = run(
        &mut engine,
        &records(&[
            (
                "customers",
                "c1",
                r#"{"customer_id":"c1","name":"Ada","tier":{"level":2}}"#,
            ),
            (
                "orders",
                "o1",
                r#"{"order_id":"o1","customer_id":"c1","name":"gift","lines":[1,2]}"#,
            ),
            ("orders", "o2", r#"{"customer_id":"c9","order_id":"o2"}"#),
        ]),
    )
    .unwrap();
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    assert_eq!(
        out.lines,
        [
            r#"{"key":"o1","value":{"order_id":"o1","customer_id":"c1","name0":"gift","lines":[1,2],"name":"Ada","customer_id0":"c1","name1":"Ada","tier":{"level":2}}}"#,
            r#"{"key":"o2","value":{"customer_id":"c9","order_id":"o2","name":null}}"#,
        ]
    );
}

/// Issue #16, reproduction 4: nested fields are read by path in SELECT, ON
/// (as a join key) and WHERE; an array element by its position from 1.
#[test]
fn nested_fields_are_columns_in_select_on_and_where() {
    let p = pipeline(
        "SELECT o.order_id, o.shipping.city AS city, o.items[1].sku AS first_sku, o.shipping['zip'] AS zip, c.name FROM orders o LEFT JOIN customers c ON o.customer.id = c.customer_id WHERE o.shipping.city <> 'Nowhere'",
        &["customers"],
    );
    let out = values(
        &p,
        &[
            ("customers", "c1", r#"{"customer_id":"c1","name":"Ada"}"#),
            (
                "orders",
                "o1",
                r#"{"order_id":"o1","customer":{"id":"c1"},"shipping":{"city":"Lyon","zip":"69001"},"items":[{"sku":"A"},{"sku":"B"}]}"#,
            ),
            (
                "orders",
                "o2",
                r#"{"order_id":"o2","customer":{"id":"c9"},"shipping":{"city":"Paris"},"items":[]}"#,
            ),
            (
                "orders",
                "o3",
                r#"{"order_id":"o3","customer":{"id":"c1"},"shipping":{"city":"Nowhere"}}"#,
            ),
            // Not an object where the path expects one: NULL, so the WHERE
            // (NULL <> 'Nowhere') keeps nothing, as in SQL.
            ("orders", "o4", r#"{"order_id":"o4","shipping":"Lyon"}"#),
        ],
    );
    assert_eq!(
        out,
        vec![
            serde_json::json!({"order_id":"o1","city":"Lyon","first_sku":"A","zip":"69001","name":"Ada"}),
            serde_json::json!({"order_id":"o2","city":"Paris","first_sku":null,"zip":null,"name":null}),
        ]
    );
}

/// Issue #16, reproduction 8: nested objects and arrays selected as they
/// are, `CAST(... AS JSON)` and `json_object(...)` keep their nesting in the
/// output (not escaped strings); byte for byte as they came.
#[test]
fn nested_values_print_as_json_not_as_strings() {
    let p = pipeline(
        "SELECT e.id, e.payload, e.tags, e.items[2] AS second, CAST(e.n AS JSON) AS n, json_object('id', e.id) AS obj, e.payload.v AS v FROM events e",
        &[],
    );
    let mut engine = Engine::new(&p).unwrap();
    let out = run(
        &mut engine,
        &records(&[(
            "events",
            "k",
            r#"{"id":"e1","n":3,"payload":{"device":"d1","v":[1,2.5,"x"]},"tags":["a","b"],"items":[{"sku":"A"},{"sku":"B","q":{"r":null}}]}"#,
        )]),
    )
    .unwrap();
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    assert_eq!(
        out.lines,
        vec![
            r#"{"key":null,"value":{"id":"e1","payload":{"device":"d1","v":[1,2.5,"x"]},"tags":["a","b"],"second":{"sku":"B","q":{"r":null}},"n":3,"obj":{"id":"e1"},"v":[1,2.5,"x"]}}"#
        ]
    );
}

/// A quoted field name with a `"` inside, in a subscript, is read (the
/// batch column's name is quoted by kaflowsql, inner quotes doubled).
#[test]
fn a_subscript_with_a_quote_reads_its_field() {
    let p = pipeline("SELECT o.id, o.m['x\"y'] AS dq FROM orders o", &[]);
    assert_eq!(
        values(&p, &[("orders", "k", r#"{"id":"o1","m":{"x\"y":5}}"#)]),
        [serde_json::json!({"id":"o1","dq":5})]
    );
}
