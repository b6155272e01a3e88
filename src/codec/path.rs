//! Field paths: a column of a source is a top-level field of its records or
//! a value nested inside one (`o.shipping.city`, `o.items[1]`,
//! `o.items[1].sku`). The planner names each column by its path's canonical
//! text and the decoder reads it back from that text, so every later stage
//! (state, join keys, batches, SQL) sees one column per path.
//!
//! Canonical text: the segments joined by `.`, an array index as `[n]`
//! (1-based, as SQL arrays are in DuckDB and Flink); a field name holding
//! `.`, `[`, `"` or nothing is written in double quotes with `"` doubled, so
//! a top-level field literally named `a.b` is `"a.b"`, never the path `a` →
//! `b`. Plain names are written as they are: a top-level column's text is its
//! field name. The text `*` (unquoted) is the whole record
//! ([`FieldPath::RECORD`]).

/// One step below a top-level field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The named field of an object.
    Field(String),
    /// The element of an array at this 0-based position.
    Index(usize),
}

/// A top-level field and the steps below it (none for the field itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldPath {
    /// The top-level field.
    pub field: String,
    /// The steps into its value.
    pub steps: Vec<Step>,
}

fn needs_quotes(name: &str) -> bool {
    name.is_empty() || name == FieldPath::RECORD || name.contains(['.', '[', '"'])
}

fn push_name(name: &str, out: &mut String) {
    if needs_quotes(name) {
        out.push('"');
        out.push_str(&name.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(name);
    }
}

impl FieldPath {
    /// The text of the column that holds a whole record (`alias.*` over a
    /// source without declared columns); a field named `*` is `"*"`.
    pub const RECORD: &'static str = "*";

    /// The path to a top-level field.
    pub fn top(field: &str) -> Self {
        Self {
            field: field.to_string(),
            steps: Vec::new(),
        }
    }

    /// The canonical text (the column's name).
    pub fn text(&self) -> String {
        let mut out = String::with_capacity(self.field.len() + 8 * self.steps.len());
        push_name(&self.field, &mut out);
        for step in &self.steps {
            match step {
                Step::Field(name) => {
                    out.push('.');
                    push_name(name, &mut out);
                }
                Step::Index(i) => {
                    out.push('[');
                    out.push_str(&(i + 1).to_string());
                    out.push(']');
                }
            }
        }
        out
    }

    /// Reads a canonical text back. Text that is not canonical (an
    /// unclosed quote, an index that is not a number from 1) is taken as one
    /// top-level field name, as it was before paths existed.
    pub fn parse(text: &str) -> Self {
        Self::try_parse(text).unwrap_or_else(|| Self::top(text))
    }

    fn try_parse(text: &str) -> Option<Self> {
        let mut chars = text.char_indices().peekable();
        let mut names: Vec<Step> = Vec::new();
        let mut expect_name = true;
        while let Some(&(_, c)) = chars.peek() {
            if expect_name {
                let name = if c == '"' {
                    chars.next();
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '"')) if chars.peek().map(|p| p.1) == Some('"') => {
                                chars.next();
                                name.push('"');
                            }
                            Some((_, '"')) => break,
                            Some((_, ch)) => name.push(ch),
                            None => return None,
                        }
                    }
                    name
                } else {
                    let mut name = String::new();
                    while let Some(&(_, ch)) = chars.peek() {
                        if ch == '.' || ch == '[' {
                            break;
                        }
                        name.push(ch);
                        chars.next();
                    }
                    name
                };
                names.push(Step::Field(name));
                expect_name = false;
                continue;
            }
            match c {
                '.' => {
                    chars.next();
                    expect_name = true;
                }
                '[' => {
                    chars.next();
                    let mut digits = String::new();
                    loop {
                        match chars.next() {
                            Some((_, ']')) => break,
                            Some((_, d)) if d.is_ascii_digit() => digits.push(d),
                            _ => return None,
                        }
                    }
                    let n: usize = digits.parse().ok()?;
                    names.push(Step::Index(n.checked_sub(1)?));
                }
                _ => return None,
            }
        }
        if expect_name {
            return None;
        }
        let mut steps = names.into_iter();
        let Some(Step::Field(field)) = steps.next() else {
            return None;
        };
        Some(Self {
            field,
            steps: steps.collect(),
        })
    }
}

/// The first of `name`, `name0`, `name1`, ... that `taken` does not hold:
/// how Flink (Calcite) names a column that `*` brings twice.
pub fn free_name(name: &str, taken: impl Fn(&str) -> bool) -> String {
    if !taken(name) {
        return name.to_string();
    }
    (0u64..)
        .map(|n| format!("{name}{n}"))
        .find(|n| !taken(n))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_text_round_trips() {
        let cases = [
            FieldPath::top("order_id"),
            FieldPath::top("a.b"),
            FieldPath::top("say \"hi\""),
            FieldPath {
                field: "shipping".into(),
                steps: vec![Step::Field("city".into())],
            },
            FieldPath {
                field: "items".into(),
                steps: vec![Step::Index(0), Step::Field("sku".into())],
            },
            FieldPath {
                field: "m".into(),
                steps: vec![Step::Field("x.y".into()), Step::Index(2), Step::Index(0)],
            },
        ];
        for p in cases {
            assert_eq!(FieldPath::parse(&p.text()), p, "{}", p.text());
        }
        assert_eq!(FieldPath::top("a.b").text(), "\"a.b\"");
        assert_eq!(
            FieldPath {
                field: "items".into(),
                steps: vec![Step::Index(0), Step::Field("sku".into())],
            }
            .text(),
            "items[1].sku"
        );
    }

    #[test]
    fn a_taken_name_gets_the_first_free_number() {
        let taken = ["id", "id0"];
        assert_eq!(free_name("id", |n| taken.contains(&n)), "id1");
        assert_eq!(free_name("x", |n| taken.contains(&n)), "x");
    }

    #[test]
    fn text_that_is_not_canonical_is_one_field() {
        for text in ["a[0]", "a[x]", "\"open", "a.", "a]b"] {
            assert_eq!(FieldPath::parse(text), FieldPath::top(text), "{text}");
        }
    }
}
