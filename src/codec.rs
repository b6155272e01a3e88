//! Records in and out: decoding a Kafka record's JSON value once into an
//! immutable [`Event`] (only the columns the query reads, top-level fields or
//! paths into nested objects and arrays), typing its values,
//! and the canonical bytes of join keys.

pub mod avro;
mod decode;
mod encode;
mod key;
mod path;
mod value;

pub use avro::{AvroError, AvroSchema};
pub use decode::{DecodeError, TopicSchema};
pub use encode::{encode_decoded_json, encode_json_rows, key_bytes, splice_records};
pub use key::{canonical_key, hash_key, write_canonical_key};
pub use path::{free_name, FieldPath, Step};
pub use value::{ColumnType, Event, Value};
