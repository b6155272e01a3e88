//! Tests of the planner: refusals with their positions, roles, keys and outputs.

use super::*;

fn dims(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

const SPEC: &str = "SELECT e.user_id, e.event_type, e.ts, p.plan, p.country, t.amount
FROM user_events e
LEFT JOIN user_profiles p ON e.user_id = p.user_id
LEFT JOIN transactions t ON e.user_id = t.user_id
WHERE e.event_type <> 'heartbeat'";

#[test]
fn plans_the_spec_example() {
    let plan = plan_query(SPEC, &dims(&["user_profiles"])).unwrap();
    let roles: Vec<_> = plan
        .sources
        .iter()
        .map(|s| (s.alias.as_str(), s.role))
        .collect();
    assert_eq!(
        roles,
        vec![
            ("e", Role::Stream),
            ("p", Role::Dimension),
            ("t", Role::Stream)
        ]
    );
    assert_eq!(plan.sources[0].columns, vec!["user_id", "event_type", "ts"]);
    assert_eq!(plan.joins.len(), 2);
    assert_eq!(plan.joins[0].kind, JoinKind::Left);
    assert_eq!(
        plan.joins[0].keys,
        vec![(
            ColumnRef {
                source: 0,
                column: 0
            },
            0
        )]
    );
    let names: Vec<_> = plan.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(
        names,
        ["user_id", "event_type", "ts", "plan", "country", "amount"]
    );
    assert_eq!(
        plan.filter.as_ref().unwrap().to_string(),
        "e.event_type <> 'heartbeat'"
    );
    assert_eq!(plan.stream_key, vec![0]);
}

#[test]
fn compound_keys_and_residual_on_predicates() {
    let plan = plan_query(
        "SELECT o.id, p.amount FROM orders o JOIN payments p ON o.id = p.order_id AND o.region = p.region AND p.amount > 0",
        &[],
    )
    .unwrap();
    assert_eq!(plan.joins[0].keys.len(), 2);
    assert_eq!(plan.filter.unwrap().to_string(), "p.amount > 0");
    assert_eq!(plan.stream_key, vec![0, 1]);
}

#[test]
fn chains_through_dimensions() {
    let plan = plan_query(
        "SELECT e.id, c.name FROM ev e JOIN p ON e.uid = p.uid JOIN countries c ON p.country = c.code",
        &dims(&["p", "countries"]),
    )
    .unwrap();
    assert_eq!(
        plan.joins[1].keys[0].0,
        ColumnRef {
            source: 1,
            column: 1
        }
    );
    assert!(!plan.has_stream_joins());
}

fn refusal(sql: &str, dims_: &[&str]) -> SqlError {
    plan_query(sql, &dims(dims_)).unwrap_err()
}

#[test]
fn refuses_right_and_full_joins_with_position() {
    let e = refusal("SELECT a.x FROM a\nRIGHT JOIN b ON a.x = b.x", &[]);
    assert!(e.message.contains("RIGHT JOIN"), "{e:?}");
    assert_eq!(e.position.line, 2);
    let e = refusal("SELECT a.x FROM a FULL JOIN b ON a.x = b.x", &[]);
    assert!(e.message.contains("FULL JOIN"));
}

#[test]
fn refuses_aggregation_subqueries_and_non_equi_joins() {
    assert!(refusal("SELECT a.x FROM a GROUP BY a.x", &[])
        .message
        .contains("GROUP BY"));
    assert!(refusal("SELECT count(a.x) FROM a", &[])
        .message
        .contains("aggregate"));
    assert!(
        refusal("SELECT a.x FROM a WHERE a.x IN (SELECT y FROM b)", &[])
            .message
            .contains("subquery")
    );
    assert!(refusal("SELECT a.x FROM (SELECT 1 AS x) a", &[])
        .message
        .contains("subquery"));
    let e = refusal("SELECT a.x FROM a JOIN b ON a.x > b.x", &[]);
    assert!(e.message.contains("no equality"), "{e:?}");
}

#[test]
fn refuses_stream_joins_on_different_keys() {
    let e = refusal(
        "SELECT a.x FROM a JOIN b ON a.x = b.x JOIN c ON a.y = c.y",
        &[],
    );
    assert!(e.message.contains("another event stream"), "{e:?}");
    let e = refusal(
        "SELECT a.x FROM a JOIN b ON a.x = b.x JOIN c ON b.x = c.x",
        &[],
    );
    assert!(e.message.contains("not the driving stream"), "{e:?}");
}

#[test]
fn refuses_a_dimension_in_from_and_unqualified_columns() {
    assert!(refusal("SELECT d.x FROM d", &["d"])
        .message
        .contains("drives"));
    let e = refusal("SELECT x FROM a JOIN b ON a.x = b.x", &[]);
    assert!(e.message.contains("not qualified"), "{e:?}");
    // `*` over a source without declared columns is its whole record.
    let plan = plan_query("SELECT * FROM a", &[]).unwrap();
    assert!(plan.outputs[0].record);
    assert_eq!(plan.sources[0].columns, vec!["*"]);
}

#[test]
fn reports_parse_errors_with_position() {
    let e = refusal("SELECT a.x\nFROM a WHERE a.x = = 1", &[]);
    assert!(e.message.contains("does not parse"), "{e:?}");
    assert_eq!(e.position.line, 2);
}

#[test]
fn names_expressions_by_alias_or_text() {
    let plan = plan_query("SELECT a.x * 2 AS double_x, upper(a.y) FROM a", &[]).unwrap();
    assert_eq!(plan.outputs[0].name, "double_x");
    assert_eq!(plan.outputs[1].name, "upper(a.y)");
    let e = refusal("SELECT a.x, a.y AS x FROM a", &[]);
    assert!(e.message.contains("two output columns"));
}

/// Nested fields and array elements are columns named by their path; a
/// path without its source names the source declaring its field; the output
/// is named after the last field, as in Flink.
#[test]
fn nested_paths_are_columns() {
    let mut declared = Declared::new();
    declared.insert("orders".into(), vec!["shipping".into()]);
    let plan = plan_query_with(
        "SELECT o.shipping.city, shipping.zip, o.items[1].sku, o.m['k'], c.name FROM orders o JOIN customers c ON o.customer.id = c.id",
        &dims(&["customers"]),
        &declared,
    )
    .unwrap();
    assert_eq!(
        plan.sources[0].columns,
        vec![
            "customer.id",
            "shipping.city",
            "shipping.zip",
            "items[1].sku",
            "m.k"
        ]
    );
    let names: Vec<_> = plan.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["city", "zip", "o.items[1].sku", "o.m['k']", "name"]
    );
    assert_eq!(
        plan.joins[0].keys[0].0,
        ColumnRef {
            source: 0,
            column: 0
        }
    );
}

/// A subscript that is not a position from 1 or a quoted field name is
/// refused where it is written; a first part that is neither a source nor
/// a declared column says how to write a nested field.
#[test]
fn unreadable_paths_are_refused_with_their_position() {
    let err = plan_query("SELECT o.items[0] FROM orders o", &[]).unwrap_err();
    assert_eq!(err.position, SqlPosition { line: 1, column: 8 });
    assert!(err.message.contains("[0]"), "{}", err.message);
    let err = plan_query("SELECT o.items[o.n] FROM orders o", &[]).unwrap_err();
    assert!(err.help.unwrap_or_default().contains("a.items[1]"));
    // With one source the alias may be left out, as for any column.
    let one = plan_query("SELECT shipping.city FROM orders o", &[]).unwrap();
    assert_eq!(one.sources[0].columns, vec!["shipping.city"]);
    // The topic's name where its alias is meant is refused, not a path.
    let err = plan_query("SELECT orders.shipping.city FROM orders o", &[]).unwrap_err();
    assert!(err.message.contains("named `o`"), "{}", err.message);
    assert_eq!(err.help.as_deref(), Some("write o.shipping.city"));
    let err = plan_query(
        "SELECT shipping.city FROM orders o JOIN c ON o.id = c.id",
        &[],
    )
    .unwrap_err();
    assert!(err.message.contains("`shipping`"), "{}", err.message);
    assert!(
        err.help.unwrap_or_default().contains("o.shipping.city"),
        "help names the way to write it"
    );
}
