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
