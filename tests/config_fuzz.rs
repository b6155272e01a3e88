//! Fuzz-style property tests: the pipeline loader and the SQL planner give a
//! value or an error for any input, never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use kaflowsql::config::{GlobalConfig, Pipeline};
use kaflowsql::sql::plan_query;
use proptest::prelude::*;

const SPEC: &str = include_str!("../pipelines/user_events.yaml");

const SQL_WORDS: &[&str] = &[
    "SELECT", "FROM", "JOIN", "LEFT", "RIGHT", "FULL", "INNER", "ON", "AND", "OR", "WHERE",
    "GROUP", "BY", "a", "b", "c", "a.x", "b.x", "c.y", "=", "<>", ">", "(", ")", ",", "*", "1",
    "'s'", "AS", "NULL", "IS", "NOT", "count(", "CASE", "WHEN", "THEN", "ELSE", "END", "UNION",
    "WITH", "LIMIT", "ORDER", "x", ".",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn any_text_is_a_pipeline_or_an_error(text in "\\PC{0,300}") {
        let _ = Pipeline::parse(Path::new("fuzz.yaml"), &text);
        let _ = GlobalConfig::parse(Path::new("fuzz.yaml"), &text);
    }

    #[test]
    fn a_mutated_pipeline_is_a_pipeline_or_a_located_error(cut in 0usize..2000, len in 0usize..20, insert in "[ :\\-\\[\\]{}a-z0-9\n|'\"]{0,8}") {
        let mut text: String = SPEC.to_string();
        let start = cut.min(text.len());
        let end = (start + len).min(text.len());
        if text.is_char_boundary(start) && text.is_char_boundary(end) {
            text.replace_range(start..end, &insert);
        }
        if let Err(e) = Pipeline::parse(Path::new("fuzz.yaml"), &text) {
            let msg = e.to_string();
            prop_assert!(msg.starts_with("fuzz.yaml:"), "{}", msg);
        }
    }

    #[test]
    fn any_sql_is_a_plan_or_an_error(words in proptest::collection::vec(proptest::sample::select(SQL_WORDS), 0..30)) {
        let sql = words.join(" ");
        if let Err(e) = plan_query(&sql, &["b".to_string()]) {
            prop_assert!(e.position.line >= 1 && e.position.column >= 1);
            prop_assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn arbitrary_sql_text_never_panics(sql in "\\PC{0,200}") {
        let _ = plan_query(&sql, &[]);
    }
}
