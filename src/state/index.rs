//! The join key a table files its records under, read back from the records
//! themselves: a bucket stores no copy of its key (see `Bucket` in
//! `state.rs`), so comparing a probe with a bucket, and rehashing a bucket
//! when a shard's hash table grows, re-derive the key's canonical bytes from
//! the event's index columns, without allocating.

use std::io::{self, Write};

use xxhash_rust::xxh64::Xxh64;

use crate::codec::{write_canonical_key, Event};

/// The event columns (positions in [`Event::values`]) whose canonical bytes
/// ([`crate::codec::canonical_key`]) are a table's join key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyColumns(Box<[usize]>);

impl KeyColumns {
    /// The key of columns `columns`, in this order.
    pub fn new(columns: &[usize]) -> Self {
        Self(columns.into())
    }

    fn values<'a>(&'a self, event: &'a Event) -> impl Iterator<Item = &'a crate::codec::Value> {
        // A column outside the event reads as no part at all: such a record
        // matches no probe (the engine builds events with every column).
        self.0.iter().filter_map(|&c| event.values.get(c))
    }

    /// Whether `event`'s key is exactly `key` (false when a part is NULL).
    pub fn matches(&self, event: &Event, key: &[u8]) -> bool {
        if let Some(text) = self.single_text(event) {
            return text == key;
        }
        let mut expect = Expect {
            rest: key,
            equal: true,
        };
        write_canonical_key(self.values(event), &mut expect)
            && expect.equal
            && expect.rest.is_empty()
    }

    /// xxhash64 of `event`'s key bytes: [`crate::codec::hash_key`] of them.
    pub fn hash(&self, event: &Event) -> u64 {
        if let Some(text) = self.single_text(event) {
            return crate::codec::hash_key(text);
        }
        let mut h = Hashing(Xxh64::new(0));
        write_canonical_key(self.values(event), &mut h);
        h.0.digest()
    }

    /// The key's bytes as they are in `event`: a key of one text column
    /// (the usual join key) is its text, unchanged.
    fn single_text<'a>(&self, event: &'a Event) -> Option<&'a [u8]> {
        match (&*self.0, &*event.values) {
            ([c], values) => match values.get(*c)? {
                crate::codec::Value::Str(s) => Some(s.as_bytes()),
                crate::codec::Value::Json(s) => Some(s.as_bytes()),
                _ => None,
            },
            _ => None,
        }
    }

    /// Writes `event`'s key bytes into `buf` (cleared first).
    pub fn write(&self, event: &Event, buf: &mut Vec<u8>) {
        buf.clear();
        write_canonical_key(self.values(event), buf);
    }
}

/// A writer that compares what is written with `rest`, consuming it.
struct Expect<'a> {
    rest: &'a [u8],
    equal: bool,
}

impl Write for Expect<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.rest.strip_prefix(buf) {
            Some(rest) if self.equal => self.rest = rest,
            _ => self.equal = false,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A writer that feeds what is written to xxhash64.
struct Hashing(Xxh64);

impl Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{canonical_key, hash_key, Value};

    fn event(values: Vec<Value>) -> Event {
        Event {
            topic: 0,
            partition: 0,
            offset: 0,
            timestamp: 0,
            key: None,
            values: values.into_boxed_slice(),
        }
    }

    #[test]
    fn derives_the_same_bytes_and_hash_as_the_canonical_key() {
        let e = event(vec![
            Value::Str("x".into()),
            Value::Int(42),
            Value::Float(2.5),
            Value::Float(7.0),
        ]);
        for cols in [vec![0], vec![1], vec![2], vec![3], vec![1, 0, 2]] {
            let mut expected = Vec::new();
            assert!(canonical_key(
                cols.iter().map(|&c| &e.values[c]),
                &mut expected
            ));
            let index = KeyColumns::new(&cols);
            assert!(index.matches(&e, &expected), "{cols:?}");
            assert_eq!(index.hash(&e), hash_key(&expected), "{cols:?}");
            let mut buf = vec![9];
            index.write(&e, &mut buf);
            assert_eq!(buf, expected);
        }
    }

    #[test]
    fn a_prefix_a_longer_key_or_a_null_part_does_not_match() {
        let e = event(vec![Value::Str("ab".into()), Value::Null]);
        let index = KeyColumns::new(&[0]);
        assert!(index.matches(&e, b"ab"));
        assert!(!index.matches(&e, b"a"));
        assert!(!index.matches(&e, b"abc"));
        assert!(!index.matches(&e, b""));
        assert!(!KeyColumns::new(&[0, 1]).matches(&e, b"ab\x1f"));
    }
}
