//! Dead-letter records: the refused record's original key, value and headers,
//! plus headers naming its source topic, partition, offset and the reason.

use rdkafka::message::{Header, OwnedHeaders};

use super::{headers, with_source_headers};
use crate::engine::DeadLetter;

/// The headers of a dead-letter record: the original ones, then kaflowsql's.
pub fn dead_letter_headers(
    pipeline: &str,
    dead: &DeadLetter,
    original: &[(String, Vec<u8>)],
) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(original.len() + 6);
    for (k, v) in original {
        h = h.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    with_source_headers(h, &dead.topic, dead.partition, dead.offset)
        .insert(Header {
            key: headers::DLQ_REASON,
            value: Some(&dead.reason),
        })
        .insert(Header {
            key: headers::DLQ_PIPELINE,
            value: Some(pipeline),
        })
        .insert(Header {
            key: headers::DLQ_VALUE,
            value: Some(if dead.decoded_copy {
                "decoded-columns"
            } else {
                "original"
            }),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    #[test]
    fn keeps_original_headers_and_adds_the_reason() {
        let dead = DeadLetter {
            topic: "t".into(),
            partition: 2,
            offset: 41,
            key: None,
            value: Some(b"{bad".to_vec()),
            reason: "value is not valid JSON".into(),
            kind: "decode",
            decoded_copy: false,
        };
        let h = dead_letter_headers("p", &dead, &[("trace".into(), b"abc".to_vec())]);
        let all: Vec<(String, Vec<u8>)> = h
            .iter()
            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
            .collect();
        assert_eq!(all[0], ("trace".to_string(), b"abc".to_vec()));
        assert!(all.contains(&(headers::SOURCE_OFFSET.to_string(), b"41".to_vec())));
        assert!(all.contains(&(
            headers::DLQ_REASON.to_string(),
            b"value is not valid JSON".to_vec()
        )));
    }
}
