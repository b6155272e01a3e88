//! Differential tests: streamed joins must equal DuckDB's batch SELECT over
//! the same records loaded as tables (as multisets), for random inputs from
//! several seeds: INNER two-way and three-way stream joins with a TTL longer
//! than the data's span, and LEFT joins against dimensions loaded first.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;

use duckdb::Connection;
use kaflowsql::codec::encode_json_rows;
use kaflowsql::config::Pipeline;
use kaflowsql::engine::Engine;
use kaflowsql::testing::{run, Recorded};

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Table {
    topic: &'static str,
    columns: &'static [&'static str],
}

/// Random records over `tables`: each has a key `k` in 0..keys and int columns.
fn records(seed: u64, tables: &[Table], count: usize, keys: u64) -> Vec<Recorded> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut offsets: HashMap<&str, i64> = HashMap::new();
    (0..count)
        .map(|i| {
            let t = &tables[rng.below(tables.len() as u64) as usize];
            let k = rng.below(keys);
            let mut fields = vec![format!("\"k\":{k}")];
            for c in t.columns {
                // Some NULLs, to exercise NULL handling in expressions.
                if rng.below(10) == 0 {
                    fields.push(format!("\"{c}\":null"));
                } else {
                    fields.push(format!("\"{c}\":{}", rng.below(100)));
                }
            }
            let offset = offsets.entry(t.topic).or_insert(0);
            *offset += 1;
            Recorded {
                topic: t.topic.to_string(),
                partition: 0,
                offset: *offset - 1,
                timestamp: 1_000 + i as i64,
                key: Some(k.to_string().into_bytes()),
                value: Some(format!("{{{}}}", fields.join(",")).into_bytes()),
            }
        })
        .collect()
}

/// Loads records into DuckDB tables named after their topics.
/// With `latest`, keeps only the last record per key (a dimension's view).
fn load(conn: &Connection, tables: &[Table], recs: &[Recorded], latest: &[&str]) {
    for t in tables {
        let cols: Vec<String> = std::iter::once("k BIGINT".to_string())
            .chain(t.columns.iter().map(|c| format!("{c} BIGINT")))
            .collect();
        conn.execute_batch(&format!("CREATE TABLE {} ({})", t.topic, cols.join(", ")))
            .unwrap();
        let mut rows: Vec<&Recorded> = recs.iter().filter(|r| r.topic == t.topic).collect();
        if latest.contains(&t.topic) {
            let mut last: HashMap<&[u8], &Recorded> = HashMap::new();
            for r in rows {
                last.insert(r.key.as_deref().unwrap(), r);
            }
            rows = last.into_values().collect();
        }
        for r in rows {
            let v: serde_json::Value = serde_json::from_slice(r.value.as_ref().unwrap()).unwrap();
            let vals: Vec<String> = std::iter::once("k")
                .chain(t.columns.iter().copied())
                .map(|c| match &v[c] {
                    serde_json::Value::Null => "NULL".to_string(),
                    other => other.to_string(),
                })
                .collect();
            conn.execute_batch(&format!(
                "INSERT INTO {} VALUES ({})",
                t.topic,
                vals.join(", ")
            ))
            .unwrap();
        }
    }
}

fn batch_rows(conn: &Connection, sql: &str) -> Vec<String> {
    let mut stmt = conn.prepare(sql).unwrap();
    let mut out = Vec::new();
    for batch in stmt.query_arrow([]).unwrap() {
        let mut buf = Vec::new();
        let ends = encode_json_rows(&batch, &mut buf).unwrap();
        let mut start = 0;
        for end in ends {
            out.push(String::from_utf8(buf[start..end].to_vec()).unwrap());
            start = end + 1;
        }
    }
    out.sort();
    out
}

fn streamed_rows(pipeline_yaml: &str, recs: &[Recorded], batch: usize) -> Vec<String> {
    let p = Pipeline::parse(Path::new("differential.yaml"), pipeline_yaml).unwrap();
    let mut engine = Engine::new(&p).unwrap().with_batch_rows(batch);
    let out = run(&mut engine, recs).unwrap();
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    let mut rows: Vec<String> = out
        .lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["value"].to_string()
        })
        .collect();
    rows.sort();
    rows
}

/// Normalises JSON text (key order, number spelling) for comparison.
fn normalise(rows: Vec<String>) -> Vec<String> {
    let mut v: Vec<String> = rows
        .into_iter()
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(&r)
                .unwrap()
                .to_string()
        })
        .collect();
    v.sort();
    v
}

fn pipeline(query: &str, dims: &[&str]) -> String {
    let dims = if dims.is_empty() {
        String::new()
    } else {
        format!("  dimensions: [{}]\n", dims.join(", "))
    };
    format!(
        "name: differential\nquery: |\n  {}\noutput:\n  topic: out\nemission:\n  type: immediate\nstate:\n  events:\n    default_ttl: 7d\n{dims}",
        query.replace('\n', "\n  ")
    )
}

fn check(
    query: &str,
    tables: &[Table],
    dims: &[&str],
    seeds: std::ops::Range<u64>,
    count: usize,
    keys: u64,
    dims_first: bool,
) {
    for seed in seeds {
        let mut recs = records(seed, tables, count, keys);
        if dims_first {
            recs.sort_by_key(|r| !dims.contains(&r.topic.as_str()));
            for (i, r) in recs.iter_mut().enumerate() {
                r.timestamp = 1_000 + i as i64;
            }
        }
        let conn = Connection::open_in_memory().unwrap();
        load(&conn, tables, &recs, dims);
        let expected = normalise(batch_rows(&conn, query));
        for batch in [1, 64, 4096] {
            let actual = normalise(streamed_rows(&pipeline(query, dims), &recs, batch));
            assert_eq!(
                actual.len(),
                expected.len(),
                "seed {seed}, batch {batch}: {} streamed rows, {} batch rows for {query}",
                actual.len(),
                expected.len()
            );
            assert_eq!(actual, expected, "seed {seed}, batch {batch}: {query}");
        }
    }
}

const A: Table = Table {
    topic: "a",
    columns: &["x"],
};
const B: Table = Table {
    topic: "b",
    columns: &["y"],
};
const C: Table = Table {
    topic: "c",
    columns: &["z"],
};

#[test]
fn inner_two_way_stream_join_equals_batch_sql() {
    check(
        "SELECT a.k, a.x, b.y, a.x + b.y AS s FROM a JOIN b ON a.k = b.k",
        &[A, B],
        &[],
        0..8,
        300,
        12,
        false,
    );
}

#[test]
fn inner_three_way_stream_join_with_where_equals_batch_sql() {
    check(
        "SELECT a.k, a.x, b.y, c.z FROM a JOIN b ON a.k = b.k JOIN c ON a.k = c.k WHERE a.x + c.z > 50 OR b.y IS NULL",
        &[A, B, C],
        &[],
        0..6,
        240,
        10,
        false,
    );
}

#[test]
fn left_joins_against_dimensions_loaded_first_equal_batch_sql() {
    const D: Table = Table {
        topic: "d",
        columns: &["name", "tier"],
    };
    const E: Table = Table {
        topic: "e",
        columns: &["code"],
    };
    check(
        "SELECT a.k, a.x, d.name, d.tier, e.code FROM a LEFT JOIN d ON a.k = d.k LEFT JOIN e ON d.tier = e.k",
        &[A, D, E],
        &["d", "e"],
        0..6,
        300,
        20,
        true,
    );
}
