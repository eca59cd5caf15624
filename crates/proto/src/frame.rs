//! The frame of one request or response on a QUIC stream: the message's bulk bytes (a
//! chunk's contents) first and raw, then the encoded rest of the message, then the length
//! of that encoding:
//!
//! ```text
//! [bulk: N bytes][head: bincode of the message without its bulk][head length: u32 LE]
//! ```
//!
//! Why not one bincode encoding: a chunk is up to 4 MiB and every encode or decode copied
//! it once more (with a fresh allocation whose pages the kernel must fault in and zero).
//! Here the sender hands the bulk to QUIC as it is, and the receiver decodes the small head
//! from the end of the received buffer and keeps the buffer itself, truncated, as the
//! bulk: no copy either way. Only messages that carry bulk accept a non-empty one.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{CodecError, decode, encode};
use crate::{Envelope, FRAME_MAX_BYTES, Request, Response};

/// Bytes of the trailing head length.
const HEAD_LEN_BYTES: usize = 4;

/// A message whose largest field travels outside its encoded head.
pub trait Bulk {
    /// Moves the bulk bytes out of the message, leaving an empty field (none: empty).
    fn take_bulk(&mut self) -> Vec<u8>;
    /// Puts received bulk bytes into the message; refuses them if it carries none.
    fn put_bulk(&mut self, bulk: Vec<u8>) -> Result<(), CodecError>;
}

/// One encoded message: send `bulk` then `head` on the stream.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    /// The raw bulk bytes (empty for most messages).
    pub bulk: Vec<u8>,
    /// The encoded message without its bulk, followed by its length.
    pub head: Vec<u8>,
}

impl Frame {
    /// Total bytes on the wire.
    pub fn len_bytes(&self) -> usize {
        self.bulk.len() + self.head.len()
    }

    /// The frame's bytes in wire order, in one buffer (tests, raw sends).
    pub fn into_vec(self) -> Vec<u8> {
        let mut bytes = self.bulk;
        bytes.extend_from_slice(&self.head);
        bytes
    }
}

/// Encodes `msg` as a frame, moving its bulk out without copying it.
pub fn encode_frame<T: Serialize + Bulk>(mut msg: T) -> Result<Frame, CodecError> {
    let bulk = msg.take_bulk();
    with_head(bulk, &msg)
}

/// Encodes a borrowed `msg` as a frame with everything in its head (any bulk field
/// included, which decodes the same, only without the saved copy): for messages that are
/// small or have no bulk, where taking ownership would cost a clone.
pub fn encode_frame_ref<T: Serialize>(msg: &T) -> Result<Frame, CodecError> {
    with_head(Vec::new(), msg)
}

fn with_head<T: Serialize>(bulk: Vec<u8>, msg: &T) -> Result<Frame, CodecError> {
    let mut head = encode(msg)?;
    let head_len = u32::try_from(head.len()).map_err(|_| CodecError::TooLarge {
        size_bytes: head.len(),
        limit_bytes: u32::MAX as usize,
    })?;
    head.extend_from_slice(&head_len.to_le_bytes());
    let frame = Frame { bulk, head };
    if frame.len_bytes() > FRAME_MAX_BYTES {
        return Err(CodecError::TooLarge {
            size_bytes: frame.len_bytes(),
            limit_bytes: FRAME_MAX_BYTES,
        });
    }
    Ok(frame)
}

/// Decodes a frame received whole; its buffer becomes the message's bulk.
pub fn decode_frame<T: DeserializeOwned + Bulk>(mut frame: Vec<u8>) -> Result<T, CodecError> {
    if frame.len() > FRAME_MAX_BYTES {
        return Err(CodecError::TooLarge {
            size_bytes: frame.len(),
            limit_bytes: FRAME_MAX_BYTES,
        });
    }
    let Some(len_at) = frame.len().checked_sub(HEAD_LEN_BYTES) else {
        return Err(CodecError::Malformed(format!(
            "frame of {} bytes has no head length",
            frame.len()
        )));
    };
    let mut len_le = [0u8; HEAD_LEN_BYTES];
    len_le.copy_from_slice(&frame[len_at..]);
    let head_len = u32::from_le_bytes(len_le) as usize;
    let Some(bulk_len) = len_at.checked_sub(head_len) else {
        return Err(CodecError::Malformed(format!(
            "head of {head_len} bytes does not fit a frame of {} bytes",
            frame.len()
        )));
    };
    let mut msg: T = decode(&frame[bulk_len..len_at])?;
    if bulk_len > 0 {
        frame.truncate(bulk_len);
        msg.put_bulk(frame)?;
    }
    Ok(msg)
}

fn no_bulk(what: &str, bulk: &[u8]) -> Result<(), CodecError> {
    if bulk.is_empty() {
        Ok(())
    } else {
        Err(CodecError::Malformed(format!(
            "{what} carries no bulk, but {} bytes came with it",
            bulk.len()
        )))
    }
}

impl Bulk for Request {
    fn take_bulk(&mut self) -> Vec<u8> {
        match self {
            Request::ChunkPut { data, .. } => std::mem::take(data),
            _ => Vec::new(),
        }
    }

    fn put_bulk(&mut self, bulk: Vec<u8>) -> Result<(), CodecError> {
        match self {
            Request::ChunkPut { data, .. } if data.is_empty() => {
                *data = bulk;
                Ok(())
            }
            Request::ChunkPut { .. } => Err(CodecError::Malformed(
                "chunk put with both inline data and bulk".into(),
            )),
            _ => no_bulk("this request", &bulk),
        }
    }
}

impl Bulk for Response {
    fn take_bulk(&mut self) -> Vec<u8> {
        match self {
            Response::Chunk(data) => std::mem::take(data),
            _ => Vec::new(),
        }
    }

    fn put_bulk(&mut self, bulk: Vec<u8>) -> Result<(), CodecError> {
        match self {
            Response::Chunk(data) if data.is_empty() => {
                *data = bulk;
                Ok(())
            }
            Response::Chunk(_) => Err(CodecError::Malformed(
                "chunk with both inline data and bulk".into(),
            )),
            _ => no_bulk("this response", &bulk),
        }
    }
}

impl<T: Bulk> Bulk for Envelope<T> {
    fn take_bulk(&mut self) -> Vec<u8> {
        self.body.take_bulk()
    }

    fn put_bulk(&mut self, bulk: Vec<u8>) -> Result<(), CodecError> {
        self.body.put_bulk(bulk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChunkId, MetaQuery};
    use proptest::prelude::*;

    fn joined(frame: &Frame) -> Vec<u8> {
        frame.clone().into_vec()
    }

    #[test]
    fn a_chunk_travels_as_bulk_and_comes_back_whole() {
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let frame = encode_frame(Envelope::new(Request::ChunkPut {
            id: ChunkId([3; 32]),
            data: data.clone(),
        }))
        .expect("encode");
        assert_eq!(frame.bulk, data);
        assert!(frame.head.len() < 64, "the head holds no data");
        let back: Envelope<Request> = decode_frame(joined(&frame)).expect("decode");
        match back.body {
            Request::ChunkPut { id, data: got } => {
                assert_eq!(id, ChunkId([3; 32]));
                assert_eq!(got, data);
            }
            other => panic!("unexpected {other:?}"),
        }
        let frame = encode_frame(Response::Chunk(data.clone())).expect("encode");
        match decode_frame::<Response>(joined(&frame)).expect("decode") {
            Response::Chunk(got) => assert_eq!(got, data),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn messages_without_bulk_round_trip_and_refuse_one() {
        let frame = encode_frame(Envelope::new(Request::Query(MetaQuery::GetAttr { ino: 9 })))
            .expect("encode");
        assert!(frame.bulk.is_empty());
        let back: Envelope<Request> = decode_frame(joined(&frame)).expect("decode");
        assert!(matches!(
            back.body,
            Request::Query(MetaQuery::GetAttr { ino: 9 })
        ));
        let smuggled = [b"extra".as_slice(), frame.head.as_slice()].concat();
        assert!(matches!(
            decode_frame::<Envelope<Request>>(smuggled),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn a_chunk_encoded_by_reference_decodes_the_same() {
        let req = Envelope::new(Request::ChunkPut {
            id: ChunkId([5; 32]),
            data: vec![7; 5000],
        });
        let frame = encode_frame_ref(&req).expect("encode");
        assert!(frame.bulk.is_empty());
        match decode_frame::<Envelope<Request>>(joined(&frame))
            .expect("decode")
            .body
        {
            Request::ChunkPut { data, .. } => assert_eq!(data, vec![7; 5000]),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn short_or_lying_frames_are_refused() {
        for bad in [
            vec![],
            vec![1, 2, 3],
            vec![0, 0, 0, 9],
            u32::MAX.to_le_bytes().to_vec(),
        ] {
            assert!(decode_frame::<Envelope<Request>>(bad).is_err());
        }
    }

    proptest! {
        #[test]
        fn random_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame::<Envelope<Request>>(bytes.clone());
            let _ = decode_frame::<Response>(bytes);
        }
    }
}
