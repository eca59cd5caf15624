//! The one encoding used on the wire and on disk: bincode 2 (standard config) over serde,
//! with a hard size limit so a hostile length prefix cannot make us allocate without bound.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::FRAME_MAX_BYTES;

/// A message that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes are not a valid message (truncated, unknown variant, bad length...).
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message is larger than [`FRAME_MAX_BYTES`].
    #[error("message of {size_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    TooLarge {
        /// The size seen or announced.
        size_bytes: usize,
        /// The limit in force.
        limit_bytes: usize,
    },
    /// Encoding failed (should not happen for our own types).
    #[error("encode failed: {0}")]
    Encode(String),
}

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<FRAME_MAX_BYTES>,
>;

fn config() -> Config {
    bincode::config::standard().with_limit::<FRAME_MAX_BYTES>()
}

/// Serde for a list of byte strings (inline chunk bodies), each as one byte string
/// rather than a sequence of single bytes: the same bytes on the wire, copied in one
/// piece instead of visited byte by byte. Use as `#[serde(with = "crate::codec::byte_list")]`.
pub mod byte_list {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes each body with `serialize_bytes`.
    pub fn serialize<S: Serializer>(list: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(list.iter().map(|b| serde_bytes::Bytes::new(b)))
    }

    /// Reads bodies written by [`serialize`] (or as plain byte sequences).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let list = Vec::<serde_bytes::ByteBuf>::deserialize(d)?;
        Ok(list
            .into_iter()
            .map(serde_bytes::ByteBuf::into_vec)
            .collect())
    }
}

/// Encodes a message; fails if it would exceed [`FRAME_MAX_BYTES`].
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = bincode::serde::encode_to_vec(value, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    if bytes.len() > FRAME_MAX_BYTES {
        return Err(CodecError::TooLarge {
            size_bytes: bytes.len(),
            limit_bytes: FRAME_MAX_BYTES,
        });
    }
    Ok(bytes)
}

/// Decodes a message, refusing trailing bytes, oversized input and any malformed content.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > FRAME_MAX_BYTES {
        return Err(CodecError::TooLarge {
            size_bytes: bytes.len(),
            limit_bytes: FRAME_MAX_BYTES,
        });
    }
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Malformed(format!(
            "{} trailing bytes",
            bytes.len() - used
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChunkId, Envelope, MetaQuery, Request};
    use proptest::prelude::*;

    #[test]
    fn round_trip_request() {
        let req = Envelope::new(Request::Query(MetaQuery::GetAttr { ino: 42 }));
        let bytes = encode(&req).unwrap();
        let back: Envelope<Request> = decode(&bytes).unwrap();
        assert_eq!(back.version, crate::PROTOCOL_VERSION);
        assert!(matches!(
            back.body,
            Request::Query(MetaQuery::GetAttr { ino: 42 })
        ));
    }

    #[test]
    fn byte_strings_keep_the_wire_format_of_byte_sequences() {
        // Logs and peers written before `serde_bytes` must still decode, and vice versa.
        #[derive(Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Plain {
            one: Vec<u8>,
            list: Vec<Vec<u8>>,
        }
        #[derive(Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Fast {
            #[serde(with = "serde_bytes")]
            one: Vec<u8>,
            #[serde(with = "super::byte_list")]
            list: Vec<Vec<u8>>,
        }
        let one: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        let list = vec![vec![], vec![1, 2, 3], one.clone()];
        let plain = encode(&Plain {
            one: one.clone(),
            list: list.clone(),
        })
        .unwrap();
        let fast = encode(&Fast {
            one: one.clone(),
            list: list.clone(),
        })
        .unwrap();
        assert_eq!(plain, fast);
        assert_eq!(decode::<Fast>(&plain).unwrap(), Fast { one, list });
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&Envelope::new(Request::NodeStatus)).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<Envelope<Request>>(&bytes),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn truncated_chunk_put_is_refused() {
        let req = Envelope::new(Request::ChunkPut {
            id: ChunkId([7; 32]),
            data: vec![1; 1000],
        });
        let bytes = encode(&req).unwrap();
        for cut in [0, 1, 5, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode::<Envelope<Request>>(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn huge_length_prefix_is_refused_without_allocating() {
        // Variant 2 (ChunkPut), a 32-byte id, then a Vec length of u64::MAX (varint 0xFF + 8 bytes).
        let mut bytes = vec![1, 2];
        bytes.extend_from_slice(&[0u8; 32]);
        bytes.push(0xFF);
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode::<Envelope<Request>>(&bytes).is_err());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Envelope<Request>>(&bytes);
            let _ = decode::<Envelope<crate::Response>>(&bytes);
        }
    }
}
