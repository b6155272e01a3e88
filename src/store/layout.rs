//! The byte layout of state in RocksDB: keys that group a join key's records
//! together (so one prefix scan finds them), and a compact value encoding of
//! a decoded [`Event`] that starts with its expiry time (read by the TTL
//! compaction filter without decoding the rest).
//!
//! Record keys: `r | shard (1) | key length (4, BE) | canonical join key | suffix`,
//! where the suffix is the record's origin (topic 2, partition 4, offset 8,
//! big-endian, sign-flipped) for event streams and the primary (Kafka) key for
//! dimensions. A dimension's primary index is `p | primary key` → `expire_at |
//! join key`. The pipeline's meta column family holds `o | topic | 0 | partition`
//! → next offset, `h | origin` → a held smart-emission event, `c` → the
//! pipeline clock and `f` → the pipeline fingerprint.

use crate::codec::{Event, Value};
use crate::state::shard_of;

/// Tag of a state record key.
pub const RECORD: u8 = b'r';
/// Tag of a dimension's primary-key index entry.
pub const PRIMARY: u8 = b'p';
/// Tag of a held smart-emission event (meta column family).
pub const HELD: u8 = b'h';
/// Tag of a source offset (meta column family).
pub const OFFSET: u8 = b'o';
/// Key of the pipeline clock (meta column family): the lowest partition
/// watermark, then each event-stream partition's time. (`c`, the clock of
/// one time per topic before partitions had their own, is no longer read:
/// such a state starts its clock afresh.)
pub const CLOCK: &[u8] = b"w";
/// Key of the pipeline fingerprint (meta column family).
pub const FINGERPRINT: &[u8] = b"f";
/// Expiry time of records that never expire.
pub const NEVER: i64 = i64::MAX;

/// A value that is not in this layout (a corrupt or foreign state directory).
#[derive(Debug, thiserror::Error)]
#[error("state value is truncated or not in kaflowsql's layout ({0})")]
pub struct LayoutError(pub &'static str);

/// Where a record came from: topic index, partition, offset.
pub type Origin = (u16, i32, i64);

fn flip32(v: i32) -> [u8; 4] {
    ((v as u32) ^ 0x8000_0000).to_be_bytes()
}

fn flip64(v: i64) -> [u8; 8] {
    ((v as u64) ^ 0x8000_0000_0000_0000).to_be_bytes()
}

fn unflip32(b: [u8; 4]) -> i32 {
    (u32::from_be_bytes(b) ^ 0x8000_0000) as i32
}

/// Appends the prefix shared by every record of join key `key` (hash `hash`).
pub fn record_prefix(hash: u64, key: &[u8], out: &mut Vec<u8>) {
    out.push(RECORD);
    out.push(shard_of(hash) as u8);
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
}

/// Appends the key of an event-stream record.
pub fn stream_key(hash: u64, key: &[u8], origin: Origin, out: &mut Vec<u8>) {
    record_prefix(hash, key, out);
    origin_bytes(origin, out);
}

/// The origin of an event-stream record key (its last 14 bytes), None for
/// a key too short to be one.
pub fn stream_origin(key: &[u8]) -> Option<Origin> {
    let at = key.len().checked_sub(14)?;
    let suffix = key.get(at..)?;
    let topic = u16::from_be_bytes(suffix.get(0..2)?.try_into().ok()?);
    let partition = unflip32(suffix.get(2..6)?.try_into().ok()?);
    let offset =
        (u64::from_be_bytes(suffix.get(6..14)?.try_into().ok()?) ^ 0x8000_0000_0000_0000) as i64;
    Some((topic, partition, offset))
}

/// Appends the key of a dimension record.
pub fn dimension_key(hash: u64, key: &[u8], primary: &[u8], out: &mut Vec<u8>) {
    record_prefix(hash, key, out);
    out.extend_from_slice(primary);
}

/// Appends the key of a dimension's primary index entry.
pub fn primary_key(primary: &[u8], out: &mut Vec<u8>) {
    out.push(PRIMARY);
    out.extend_from_slice(primary);
}

/// Appends the key of a held event.
pub fn held_key(origin: Origin, out: &mut Vec<u8>) {
    out.push(HELD);
    origin_bytes(origin, out);
}

fn origin_bytes((topic, partition, offset): Origin, out: &mut Vec<u8>) {
    out.extend_from_slice(&topic.to_be_bytes());
    out.extend_from_slice(&flip32(partition));
    out.extend_from_slice(&flip64(offset));
}

/// The key of a source partition's next offset.
pub fn offset_key(topic: &str, partition: i32) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 6);
    k.push(OFFSET);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&flip32(partition));
    k
}

/// Topic and partition of an offset key.
pub fn parse_offset_key(key: &[u8]) -> Option<(String, i32)> {
    let rest = key.strip_prefix(&[OFFSET])?;
    let zero = rest.iter().position(|&b| b == 0)?;
    let topic = std::str::from_utf8(&rest[..zero]).ok()?.to_string();
    let p: [u8; 4] = rest.get(zero + 1..zero + 5)?.try_into().ok()?;
    Some((topic, unflip32(p)))
}

/// The shard of a record key, if it is one.
pub fn record_shard(key: &[u8]) -> Option<u8> {
    match key {
        [RECORD, shard, ..] => Some(*shard),
        _ => None,
    }
}

/// The expiry time at the start of a stored value.
pub fn expire_at(value: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(value.get(..8)?.try_into().ok()?))
}

const NULL: u8 = 0;
const BOOL: u8 = 1;
const INT: u8 = 2;
const FLOAT: u8 = 3;
const STR: u8 = 4;
const JSON: u8 = 5;
const NO_KEY: u32 = u32::MAX;

/// Appends the stored form of `event`, expiring at `expire_at`.
pub fn encode_event(event: &Event, expire_at: i64, out: &mut Vec<u8>) {
    out.extend_from_slice(&expire_at.to_be_bytes());
    out.extend_from_slice(&event.topic.to_le_bytes());
    out.extend_from_slice(&event.partition.to_le_bytes());
    out.extend_from_slice(&event.offset.to_le_bytes());
    out.extend_from_slice(&event.timestamp.to_le_bytes());
    match &event.key {
        Some(k) => {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k);
        }
        None => out.extend_from_slice(&NO_KEY.to_le_bytes()),
    }
    out.extend_from_slice(&(event.values.len() as u32).to_le_bytes());
    for v in event.values.iter() {
        match v {
            Value::Null => out.push(NULL),
            Value::Bool(b) => out.extend_from_slice(&[BOOL, u8::from(*b)]),
            Value::Int(i) => {
                out.push(INT);
                out.extend_from_slice(&i.to_le_bytes());
            }
            Value::Float(f) => {
                out.push(FLOAT);
                out.extend_from_slice(&f.to_le_bytes());
            }
            Value::Str(s) => push_text(out, STR, s),
            Value::Json(s) => push_text(out, JSON, s),
        }
    }
}

/// Appends a text value: its tag, its length (u32, little-endian), its bytes.
fn push_text(out: &mut Vec<u8>, tag: u8, text: &str) {
    out.push(tag);
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LayoutError> {
        if self.0.len() < n {
            return Err(LayoutError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], LayoutError> {
        self.take(N)?
            .try_into()
            .map_err(|_| LayoutError("truncated"))
    }

    fn text(&mut self) -> Result<&'a str, LayoutError> {
        let n = u32::from_le_bytes(self.array()?) as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| LayoutError("text is not UTF-8"))
    }
}

/// Decodes a stored event; returns its expiry time and the event.
pub fn decode_event(bytes: &[u8]) -> Result<(i64, Event), LayoutError> {
    let mut r = Reader(bytes);
    let expire_at = i64::from_be_bytes(r.array()?);
    let topic = u16::from_le_bytes(r.array()?);
    let partition = i32::from_le_bytes(r.array()?);
    let offset = i64::from_le_bytes(r.array()?);
    let timestamp = i64::from_le_bytes(r.array()?);
    let key = match u32::from_le_bytes(r.array()?) {
        NO_KEY => None,
        n => Some(Box::from(r.take(n as usize)?)),
    };
    let n = u32::from_le_bytes(r.array()?) as usize;
    if n > bytes.len() {
        return Err(LayoutError("column count larger than the value"));
    }
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        let [tag] = r.array()?;
        values.push(match tag {
            NULL => Value::Null,
            BOOL => Value::Bool(r.array::<1>()?[0] != 0),
            INT => Value::Int(i64::from_le_bytes(r.array()?)),
            FLOAT => Value::Float(f64::from_le_bytes(r.array()?)),
            STR => Value::Str(r.text()?.into()),
            JSON => Value::Json(r.text()?.into()),
            _ => return Err(LayoutError("unknown value tag")),
        });
    }
    if !r.0.is_empty() {
        return Err(LayoutError("trailing bytes"));
    }
    Ok((
        expire_at,
        Event {
            topic,
            partition,
            offset,
            timestamp,
            key,
            values: values.into_boxed_slice(),
        },
    ))
}

/// Event time of one event-stream partition: (topic index, partition, time in epoch ms).
pub type StreamTime = (u16, i32, i64);

/// Encodes the pipeline clock: `watermark` (the lowest partition
/// watermark) and every (topic, partition, time) of the event streams.
pub fn encode_clock(watermark: i64, times: &[StreamTime]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + times.len() * 14);
    out.extend_from_slice(&watermark.to_le_bytes());
    for &(topic, partition, time) in times {
        out.extend_from_slice(&topic.to_le_bytes());
        out.extend_from_slice(&partition.to_le_bytes());
        out.extend_from_slice(&time.to_le_bytes());
    }
    out
}

/// Decodes the pipeline clock.
pub fn decode_clock(bytes: &[u8]) -> Result<(i64, Vec<StreamTime>), LayoutError> {
    let mut r = Reader(bytes);
    let watermark = i64::from_le_bytes(r.array()?);
    if r.0.len() % 14 != 0 {
        return Err(LayoutError("clock"));
    }
    let mut times = Vec::new();
    while !r.0.is_empty() {
        let topic = u16::from_le_bytes(r.array()?);
        let partition = i32::from_le_bytes(r.array()?);
        let time = i64::from_le_bytes(r.array()?);
        times.push((topic, partition, time));
    }
    Ok((watermark, times))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_round_trips_and_refuses_foreign_bytes() {
        let times = [(0, 3, 1_700_000_000_000), (1, 3, -5)];
        let bytes = encode_clock(42, &times);
        assert_eq!(decode_clock(&bytes).ok(), Some((42, times.to_vec())));
        assert!(decode_clock(&bytes[..12]).is_err());
    }

    #[test]
    fn a_stream_record_key_gives_back_its_origin() {
        let mut k = Vec::new();
        stream_key(7, b"join-key", (2, -1, 1 << 40), &mut k);
        assert_eq!(stream_origin(&k), Some((2, -1, 1 << 40)));
        assert_eq!(stream_origin(b"short"), None);
    }

    fn event() -> Event {
        Event {
            topic: 3,
            partition: -1,
            offset: 42,
            timestamp: 1_700_000_000_000,
            key: Some(Box::from(&b"user-1"[..])),
            values: vec![
                Value::Null,
                Value::Bool(true),
                Value::Int(-7),
                Value::Float(2.5),
                Value::Str("héllo".into()),
                Value::Json("{\"a\":[1]}".into()),
            ]
            .into_boxed_slice(),
        }
    }

    #[test]
    fn events_round_trip_with_their_expiry_first() {
        let mut buf = Vec::new();
        encode_event(&event(), 99, &mut buf);
        assert_eq!(expire_at(&buf), Some(99));
        let (at, back) = decode_event(&buf).unwrap();
        assert_eq!(at, 99);
        let e = event();
        assert_eq!(
            (back.topic, back.partition, back.offset, back.timestamp),
            (e.topic, e.partition, e.offset, e.timestamp)
        );
        assert_eq!(back.key, e.key);
        assert_eq!(back.values, e.values);
    }

    #[test]
    fn truncated_or_foreign_values_are_errors() {
        let mut buf = Vec::new();
        encode_event(&event(), NEVER, &mut buf);
        for cut in [0, 7, 20, buf.len() - 1] {
            assert!(decode_event(&buf[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = buf.clone();
        extra.push(0);
        assert!(decode_event(&extra).is_err());
        assert!(decode_event(b"hello world, not ours at all").is_err());
    }

    #[test]
    fn a_join_keys_records_share_one_prefix() {
        let (mut a, mut b, mut p) = (Vec::new(), Vec::new(), Vec::new());
        stream_key(7, b"k1", (0, 0, 1), &mut a);
        stream_key(7, b"k1", (0, 2, -5), &mut b);
        record_prefix(7, b"k1", &mut p);
        assert!(a.starts_with(&p) && b.starts_with(&p));
        let mut other = Vec::new();
        record_prefix(7, b"k", &mut other);
        assert!(
            !a.starts_with(&other),
            "the length keeps `k` from matching `k1`"
        );
        assert_eq!(record_shard(&a), Some(7));
    }

    #[test]
    fn offset_keys_round_trip() {
        let k = offset_key("user_events", 11);
        assert_eq!(parse_offset_key(&k), Some(("user_events".into(), 11)));
        assert_eq!(parse_offset_key(b"x"), None);
    }
}
