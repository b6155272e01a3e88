//! Canonical join-key bytes and their xxhash64, which picks the shard.
//!
//! Keys compare by their text form, as Kafka keys do: the string `"42"`, the
//! integer `42` and the number `42.0` are one key.

use std::io::Write;

use xxhash_rust::xxh64::xxh64;

use super::Value;

/// Separates the parts of a compound key.
const PART_SEPARATOR: u8 = 0x1f;

/// Writes the canonical bytes of `values` into `buf` (cleared first).
/// Returns false when a part is NULL: a NULL key matches nothing.
pub fn canonical_key<'a>(values: impl IntoIterator<Item = &'a Value>, buf: &mut Vec<u8>) -> bool {
    buf.clear();
    write_canonical_key(values, buf)
}

/// Writes the canonical bytes of `values` to `out`, in pieces: the same
/// bytes as [`canonical_key`], for a writer that compares or hashes them as
/// they come instead of keeping them. Returns false at the first NULL part.
/// Errors of `out` are ignored: the writers this is meant for never fail.
pub fn write_canonical_key<'a>(
    values: impl IntoIterator<Item = &'a Value>,
    out: &mut impl Write,
) -> bool {
    for (i, value) in values.into_iter().enumerate() {
        if i > 0 {
            let _ = out.write_all(&[PART_SEPARATOR]);
        }
        let _ = match value {
            Value::Null => return false,
            Value::Bool(b) => write!(out, "{b}"),
            Value::Int(n) => write!(out, "{n}"),
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 => {
                write!(out, "{}", *f as i64)
            }
            Value::Float(f) => write!(out, "{f}"),
            Value::Str(s) => out.write_all(s.as_bytes()),
            Value::Json(s) => out.write_all(s.as_bytes()),
        };
    }
    true
}

/// The 64-bit hash of canonical key bytes; `hash % 256` is the shard.
pub fn hash_key(bytes: &[u8]) -> u64 {
    xxh64(bytes, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(values: &[Value]) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        canonical_key(values, &mut buf).then_some(buf)
    }

    #[test]
    fn numbers_and_strings_share_a_key_by_text() {
        assert_eq!(key(&[Value::Int(42)]), key(&[Value::Str("42".into())]));
        assert_eq!(key(&[Value::Float(42.0)]), key(&[Value::Int(42)]));
        assert_ne!(key(&[Value::Float(42.5)]), key(&[Value::Int(42)]));
    }

    #[test]
    fn compound_keys_keep_parts_apart_and_null_matches_nothing() {
        assert_ne!(
            key(&[Value::Str("a".into()), Value::Str("bc".into())]),
            key(&[Value::Str("ab".into()), Value::Str("c".into())])
        );
        assert_eq!(key(&[Value::Str("a".into()), Value::Null]), None);
    }

    #[test]
    fn hash_is_xxhash64_seed_zero() {
        assert_eq!(hash_key(b""), 0xef46_db37_51d8_e999);
    }
}
