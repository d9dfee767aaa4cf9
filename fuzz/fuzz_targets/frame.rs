//! The internal transport: `common::frame::decode::<Envelope<X>>` for every message type a
//! service or client decodes (requests of the catalog and the order replicas, the hello and
//! its reply, and both services' replies), and the length-delimited framing of
//! `common::frame::codec` with a small maximum frame length.
//!
//! Input: byte 0 is the codec's maximum frame length (0..=255), byte 1 the size of the pieces
//! the stream arrives in (1..=16), the rest the stream. The whole input is also decoded as
//! one message body, and so is every frame the codec yields (as the server does).
//!
//! Checks: no panic; a decoded message re-encodes to bytes that decode again and encode to
//! the same bytes; no frame is over the maximum; the stream yields the same frames and the
//! same error whether it arrives whole or in pieces.
#![no_main]

use std::fmt::Debug;

use bytes::BytesMut;
use common::frame;
use common::wire::{
    CatalogRequest, CatalogResponse, Envelope, Hello, HelloReply, OrderRequest, OrderResponse,
    Reply,
};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};
use tokio_util::codec::Decoder;

fn roundtrip<T: Serialize + DeserializeOwned + Debug>(bytes: &[u8]) {
    if let Ok(value) = frame::decode::<Envelope<T>>(bytes) {
        let first = frame::encode(&value).expect("a decoded message encodes");
        let again: Envelope<T> = frame::decode(&first)
            .unwrap_or_else(|e| panic!("{value:?} re-encoded does not decode: {e}"));
        let second = frame::encode(&again).expect("a decoded message encodes");
        assert_eq!(first, second, "{value:?} does not re-encode stably");
    }
}

fn decode_all(bytes: &[u8]) {
    // What the services decode.
    roundtrip::<CatalogRequest>(bytes);
    roundtrip::<OrderRequest>(bytes);
    roundtrip::<Hello>(bytes);
    // What their clients decode.
    roundtrip::<HelloReply>(bytes);
    roundtrip::<Reply<CatalogResponse>>(bytes);
    roundtrip::<Reply<OrderResponse>>(bytes);
}

#[derive(Debug, PartialEq)]
enum End {
    /// The stream ended cleanly, between frames.
    Clean,
    /// The stream ended inside a frame (decode_eof's error).
    Torn,
    /// The codec refused a frame (over the maximum).
    Refused,
}

/// Feeds `stream` to a fresh codec in pieces of `piece` bytes, as a socket would.
fn frames(max: usize, stream: &[u8], piece: usize) -> (Vec<BytesMut>, End) {
    let mut codec = frame::codec(max);
    let mut buffer = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in stream.chunks(piece) {
        buffer.extend_from_slice(chunk);
        loop {
            let before = buffer.len();
            match codec.decode(&mut buffer) {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= max, "frame of {} over {max}", frame.len());
                    assert!(buffer.len() < before, "a frame consumed nothing");
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(_) => return (frames, End::Refused),
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buffer) {
            Ok(Some(frame)) => {
                assert!(frame.len() <= max);
                frames.push(frame);
            }
            Ok(None) => return (frames, End::Clean),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return (frames, End::Refused),
            Err(_) => return (frames, End::Torn),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    decode_all(data);
    if data.len() < 2 {
        return;
    }
    let max = usize::from(data[0]);
    let piece = usize::from(data[1] % 16) + 1;
    let stream = &data[2..];
    let whole = frames(max, stream, stream.len().max(1));
    let pieces = frames(max, stream, piece);
    assert_eq!(whole, pieces, "framing depends on how the stream arrives");
    for frame in &whole.0 {
        decode_all(frame);
    }
});
