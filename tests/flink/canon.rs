//! The comparison's normal form of a JSON row: the only normalisation the
//! differential suite applies to what each engine writes.
//!
//! - A row is an object whose fields keep their order: the names and the
//!   order of the output columns must agree (`SELECT o.*` expands in order).
//!   An object nested in a value is a set of members (JSON's own rule):
//!   their order is not compared.
//! - Strings compare after JSON unescaping, byte for byte; `null`,
//!   `true`, `false` as they are; objects field by field in order; arrays
//!   element by element.
//! - A number keeps its *kind* from its text: an integer (no `.`, `e` or `E`)
//!   is never equal to a fractional number, so `2` and `2.0` differ (a
//!   consumer's JSON parser tells them apart). Within a kind, values compare
//!   exactly as decimals: `2.50` equals `2.5`, `1e+20` equals `1.0E20`.
//!   Doubles therefore compare exactly (each side writes the shortest text
//!   that reads back as the same double); there is no tolerance.
//! - With the `number_kind` relaxation (a documented difference only), an
//!   integer is compared as the fractional number of the same value.

use std::fmt::Write as _;

/// The normal form of one JSON text, or why it is not JSON.
pub fn canonical(text: &str, number_kind: bool) -> Result<String, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
        number_kind,
    };
    let mut out = String::new();
    p.ws();
    p.value(0, &mut out)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("trailing text at byte {} of {text}", p.i));
    }
    Ok(out)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    number_kind: bool,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, b: u8) -> Result<(), String> {
        if self.peek() == Some(b) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected `{}` at byte {}", b as char, self.i))
        }
    }

    fn value(&mut self, depth: usize, out: &mut String) -> Result<(), String> {
        match self.peek() {
            Some(b'{') => {
                self.i += 1;
                let mut members: Vec<(String, String)> = Vec::new();
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                } else {
                    loop {
                        self.ws();
                        let key = self.string()?;
                        self.ws();
                        self.expect(b':')?;
                        self.ws();
                        let mut v = String::new();
                        self.value(depth + 1, &mut v)?;
                        members.push((key, v));
                        self.ws();
                        match self.peek() {
                            Some(b',') => self.i += 1,
                            Some(b'}') => {
                                self.i += 1;
                                break;
                            }
                            _ => return Err(format!("bad object at byte {}", self.i)),
                        }
                    }
                }
                // A row's columns keep their order; a nested object's members
                // are a set, as JSON has them.
                if depth > 0 {
                    members.sort();
                }
                out.push('{');
                for (n, (k, v)) in members.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::from(k.as_str()).to_string());
                    out.push(':');
                    out.push_str(v);
                }
                out.push('}');
                Ok(())
            }
            Some(b'[') => {
                self.i += 1;
                out.push('[');
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    out.push(']');
                    return Ok(());
                }
                loop {
                    self.ws();
                    self.value(depth + 1, out)?;
                    self.ws();
                    match self.peek() {
                        Some(b',') => {
                            self.i += 1;
                            out.push(',');
                        }
                        Some(b']') => {
                            self.i += 1;
                            out.push(']');
                            return Ok(());
                        }
                        _ => return Err(format!("bad array at byte {}", self.i)),
                    }
                }
            }
            Some(b'"') => {
                let s = self.string()?;
                out.push_str(&serde_json::Value::from(s).to_string());
                Ok(())
            }
            Some(b't') => self.word("true", out),
            Some(b'f') => self.word("false", out),
            Some(b'n') => self.word("null", out),
            Some(b'-' | b'0'..=b'9') => self.number(out),
            _ => Err(format!("unexpected byte at {}", self.i)),
        }
    }

    fn word(&mut self, w: &str, out: &mut String) -> Result<(), String> {
        if self.s[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            out.push_str(w);
            Ok(())
        } else {
            Err(format!("bad literal at byte {}", self.i))
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let start = self.i;
        self.expect(b'"')?;
        while let Some(b) = self.peek() {
            self.i += 1;
            match b {
                b'\\' => self.i += 1,
                b'"' => {
                    let raw =
                        std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?;
                    return serde_json::from_str::<String>(raw).map_err(|e| e.to_string());
                }
                _ => {}
            }
        }
        Err("unterminated string".into())
    }

    /// `int:<digits>` or `num:<digits>e<exponent>` (digits without leading
    /// or trailing zeros; zero is `0`).
    fn number(&mut self, out: &mut String) -> Result<(), String> {
        let start = self.i;
        while let Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?;
        let negative = text.starts_with('-');
        let body = text.trim_start_matches('-');
        let (mantissa, exponent) = match body.find(['e', 'E']) {
            Some(i) => (
                &body[..i],
                body[i + 1..]
                    .parse::<i64>()
                    .map_err(|e| format!("{text}: {e}"))?,
            ),
            None => (body, 0),
        };
        let fractional = body.contains(['.', 'e', 'E']);
        let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int_part.is_empty()
            || !(int_part.bytes().chain(frac_part.bytes())).all(|b| b.is_ascii_digit())
        {
            return Err(format!("bad number {text}"));
        }
        // value = digits * 10^(exponent - frac_len)
        let mut digits = format!("{int_part}{frac_part}");
        let mut exp = exponent - frac_part.len() as i64;
        let trimmed = digits.trim_start_matches('0').to_string();
        digits = trimmed;
        while digits.ends_with('0') {
            digits.pop();
            exp += 1;
        }
        if digits.is_empty() {
            digits = "0".into();
            exp = 0;
        }
        let sign = if negative && digits != "0" { "-" } else { "" };
        if fractional || self.number_kind {
            let _ = write!(out, "num:{sign}{digits}e{exp}");
        } else {
            let _ = write!(out, "int:{sign}{digits}{}", "0".repeat(exp as usize));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::canonical;

    #[test]
    fn numbers_keep_their_kind_and_compare_by_value() {
        let c = |t| canonical(t, false).unwrap();
        assert_eq!(c("2.50"), c("2.5"));
        assert_eq!(c("1e+20"), c("1.0E20"));
        assert_eq!(c("1e20"), c("100000000000000000000.0"));
        assert_ne!(c("2"), c("2.0"));
        assert_eq!(c("-0"), c("0"));
        assert_eq!(c("9007199254740993"), "int:9007199254740993");
        assert_ne!(c("9007199254740993"), c("9007199254740992"));
        assert_eq!(
            canonical("2", true).unwrap(),
            canonical("2.0", true).unwrap()
        );
        assert_eq!(
            c(r#"{"a" : "\u00e9", "b":[1, null]}"#),
            c(r#"{"a":"é","b":[1,null]}"#)
        );
        assert_ne!(c(r#"{"a":1,"b":2}"#), c(r#"{"b":2,"a":1}"#));
        assert_eq!(c(r#"{"x":{"a":1,"b":2}}"#), c(r#"{"x":{"b":2,"a":1}}"#));
    }
}
