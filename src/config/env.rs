//! `${VAR}` and `${VAR:-default}` in config and pipeline files (the shell's
//! forms, as KaflowSQL's files and Docker Compose use them), expanded before
//! the YAML is read. An expansion never adds a line, so every later error
//! still names the line it is on; an unset variable without a default is an
//! error at its own line and column. Comment lines are left as they are, and
//! `$${` writes a literal `${`. The value is put in the text as it is (as in
//! Compose): a secret belongs in `{ env: NAME }`, which is read as a value,
//! not in `${NAME}`, whose `#` or `:` the YAML would read.

use std::path::Path;

use super::{Diagnostic, Position};

/// `text` with every `${VAR}` and `${VAR:-default}` replaced through `var`.
///
/// Errors: one diagnostic per unset variable without a default, per
/// unclosed `${`, and per value that holds a line break.
pub fn expand(
    file: &Path,
    text: &str,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<Diagnostic>> {
    if !text.contains("${") {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        let mut column = 1;
        while let Some(at) = rest.find("${") {
            if rest[..at].ends_with('$') {
                // `$${` is a literal `${`.
                out.push_str(&rest[..at - 1]);
                out.push_str("${");
                column += rest[..at + 2].chars().count();
                rest = &rest[at + 2..];
                continue;
            }
            out.push_str(&rest[..at]);
            let position = Position {
                line: n + 1,
                column: column + rest[..at].chars().count(),
            };
            let Some(end) = rest[at..].find('}') else {
                problems.push(
                    Diagnostic::new(file, position, "`${` is not closed by `}`")
                        .with_help("write ${NAME} or ${NAME:-default}, or $${ for a literal ${"),
                );
                out.push_str(&rest[at..]);
                rest = "";
                break;
            };
            let inner = &rest[at + 2..at + end];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            // As the shell and Compose: `${VAR:-d}` is `d` when VAR is unset
            // or empty; `${VAR}` is VAR's value, empty included.
            let value = match (valid, var(name), default) {
                (false, _, _) => {
                    problems.push(
                        Diagnostic::new(
                            file,
                            position,
                            format!("`${{{inner}}}` is not a variable reference"),
                        )
                        .with_help(
                            "a name is letters, digits and `_`: ${NAME} or ${NAME:-default}",
                        ),
                    );
                    String::new()
                }
                (true, Some(v), Some(d)) if v.is_empty() => d.to_string(),
                (true, Some(v), _) => v,
                (true, None, Some(d)) => d.to_string(),
                (true, None, None) => {
                    problems.push(
                        Diagnostic::new(
                            file,
                            position,
                            format!("the environment variable `{name}` is not set"),
                        )
                        .with_help(format!("set {name}, or give a default: ${{{name}:-value}}")),
                    );
                    String::new()
                }
            };
            if value.contains('\n') {
                problems.push(
                    Diagnostic::new(
                        file,
                        position,
                        format!("the value of `{name}` holds a line break"),
                    )
                    .with_help("a variable stands for one line of the file"),
                );
            }
            out.push_str(&value);
            column += rest[..at + end + 1].chars().count();
            rest = &rest[at + end + 1..];
        }
        out.push_str(rest);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "KAFKA_BROKERS" => Some("k1:9092,k2:9092".into()),
            "EMPTY" => Some(String::new()),
            "SET_EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn variables_and_defaults_expand_on_their_line() {
        let text = "kafka:\n  brokers: ${KAFKA_BROKERS}\nstate:\n  ttl: ${STATE_TTL:-24h}  # ${IN_COMMENT_AFTER_VALUE:-x}\n# ${NOT_EXPANDED}\nq: $${LITERAL} ${EMPTY:-d}\nr: '${SET_EMPTY}'\n";
        let out = expand(Path::new("k.yaml"), text, &env).unwrap();
        assert_eq!(
            out,
            "kafka:\n  brokers: k1:9092,k2:9092\nstate:\n  ttl: 24h  # x\n# ${NOT_EXPANDED}\nq: ${LITERAL} d\nr: ''\n"
        );
    }

    #[test]
    fn an_unset_variable_is_an_error_at_its_line_and_column() {
        let err = expand(
            Path::new("k.yaml"),
            "a: 1\nb: x ${NOPE} ${bad name}\nc: ${OPEN\n",
            &env,
        )
        .unwrap_err();
        let shown: Vec<String> = err.iter().map(|d| d.to_string()).collect();
        assert!(
            shown[0].starts_with("k.yaml:2:6: error: the environment variable `NOPE` is not set"),
            "{shown:?}"
        );
        assert!(shown[1].starts_with("k.yaml:2:14:"), "{shown:?}");
        assert!(shown[2].starts_with("k.yaml:3:4:"), "{shown:?}");
    }
}
