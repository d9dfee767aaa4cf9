//! The framed transport: a 4-byte big-endian length, then a MessagePack body, with an explicit
//! maximum frame length, and the hello exchange that opens every connection.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::wire::{Envelope, Hello, HelloReply, PROTOCOL_VERSION};
use crate::Error;

/// Default largest frame accepted or sent: 1 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1 << 20;

/// Most frames written per flush, so one busy writer cannot starve its own flushes.
const MAX_FRAMES_PER_FLUSH: usize = 256;

/// How long a peer may leave written frames unread before its connection is dropped.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A frame of length zero carries no message: it is a heartbeat, which either side of a
/// subscription sends to show it is alive, and which every reader skips.
pub const HEARTBEAT: Bytes = Bytes::new();

/// Turns on TCP keepalive for an internal connection, so that a peer that vanished without
/// a reset (its host died, the link went silent) is noticed within about 8 seconds even on a
/// connection that carries nothing, such as an idle invalidation stream.
pub fn keep_alive(socket: &tokio::net::TcpStream) -> std::io::Result<()> {
    let probes = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(1))
        .with_retries(3);
    socket2::SockRef::from(socket).set_tcp_keepalive(&probes)
}

/// The length-delimited codec of every internal connection.
pub fn codec(max_frame_bytes: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(max_frame_bytes)
        .new_codec()
}

/// Encodes one message body as MessagePack (field names included, so that peers of adjacent
/// versions can still read what they know).
pub fn encode<T: Serialize>(value: &T) -> Result<Bytes, Error> {
    rmp_serde::to_vec_named(value)
        .map(Bytes::from)
        .map_err(|e| Error::Protocol(format!("cannot encode message: {e}")))
}

/// Decodes one MessagePack body; anything that is not a `T` is a protocol error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    rmp_serde::from_slice(bytes).map_err(|e| Error::Protocol(format!("undecodable frame: {e}")))
}

/// Reads the next frame: `Ok(None)` on a clean end of stream between frames, an error on a
/// stream that ends mid-frame or a frame over the maximum.
pub async fn read_frame<R>(
    reader: &mut FramedRead<R, LengthDelimitedCodec>,
) -> Result<Option<Bytes>, Error>
where
    R: AsyncRead + Unpin,
{
    match reader.next().await {
        None => Ok(None),
        Some(Ok(frame)) => Ok(Some(frame.freeze())),
        Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            Err(Error::Protocol(e.to_string()))
        }
        Some(Err(e)) => Err(Error::Io(e)),
    }
}

/// Writes every frame sent on `outbound` until all senders are gone or `stop` fires, batching
/// the frames that are already queued into one flush.
pub async fn write_frames<W>(
    mut writer: FramedWrite<W, LengthDelimitedCodec>,
    mut outbound: mpsc::Receiver<Bytes>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), Error>
where
    W: AsyncWrite + Unpin,
{
    loop {
        let first = tokio::select! {
            biased;
            frame = outbound.recv() => frame,
            () = stop.cancelled() => {
                // Whatever was queued before the stop still goes out.
                outbound.close();
                outbound.recv().await
            }
        };
        let Some(first) = first else { break };
        let batch = async {
            writer.feed(first).await?;
            let mut batched = 1;
            while batched < MAX_FRAMES_PER_FLUSH {
                match outbound.try_recv() {
                    Ok(frame) => {
                        writer.feed(frame).await?;
                        batched += 1;
                    }
                    Err(_) => break,
                }
            }
            SinkExt::<Bytes>::flush(&mut writer).await
        };
        match tokio::time::timeout(WRITE_STALL_TIMEOUT, batch).await {
            Ok(result) => result?,
            Err(_) => return Err(Error::TimedOut(WRITE_STALL_TIMEOUT)),
        }
    }
    SinkExt::<Bytes>::flush(&mut writer).await?;
    Ok(())
}

/// The dialing side of the hello exchange: sends `hello`, waits for the welcome.
pub async fn client_handshake<R, W>(
    reader: &mut FramedRead<R, LengthDelimitedCodec>,
    writer: &mut FramedWrite<W, LengthDelimitedCodec>,
    hello: &Hello,
) -> Result<String, Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    writer
        .send(encode(&Envelope { id: 0, body: hello })?)
        .await?;
    let Some(frame) = read_frame(reader).await? else {
        return Err(Error::Unavailable("closed during hello".into()));
    };
    match decode::<Envelope<HelloReply>>(&frame)?.body {
        HelloReply::Welcome { service } => Ok(service),
        HelloReply::Refused { reason } => Err(Error::Refused(reason)),
    }
}

/// What a listener requires of a hello.
#[derive(Debug, Clone)]
pub struct HelloPolicy {
    /// Name this service answers with.
    pub service: String,
    /// The cluster token a hello must carry, when one is configured.
    pub token: Option<String>,
    /// How long the dialer has to send its hello.
    pub timeout: Duration,
}

impl HelloPolicy {
    /// Why `hello` is refused, or `None` when it is accepted.
    pub fn check(&self, hello: &Hello) -> Option<String> {
        if hello.version != PROTOCOL_VERSION {
            return Some(format!(
                "protocol version {} is not supported (this {} speaks version {PROTOCOL_VERSION})",
                hello.version, self.service
            ));
        }
        match (&self.token, &hello.token) {
            (None, _) => None,
            (Some(expected), Some(given)) if constant_time_eq(expected, given) => None,
            (Some(_), Some(_)) => Some("cluster token does not match".into()),
            (Some(_), None) => Some("this cluster requires a cluster token".into()),
        }
    }
}

/// The listening side of the hello exchange: reads the hello within the policy's timeout and
/// answers it. A refused hello is answered with the reason and then returned as an error.
pub async fn server_handshake<R, W>(
    reader: &mut FramedRead<R, LengthDelimitedCodec>,
    writer: &mut FramedWrite<W, LengthDelimitedCodec>,
    policy: &HelloPolicy,
) -> Result<Hello, Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let frame = match tokio::time::timeout(policy.timeout, read_frame(reader)).await {
        Err(_) => return Err(Error::TimedOut(policy.timeout)),
        Ok(frame) => frame?,
    };
    let Some(frame) = frame else {
        return Err(Error::Unavailable("closed before hello".into()));
    };
    let hello = decode::<Envelope<Hello>>(&frame)?.body;
    let reply = match policy.check(&hello) {
        None => HelloReply::Welcome {
            service: policy.service.clone(),
        },
        Some(reason) => HelloReply::Refused { reason },
    };
    writer
        .send(encode(&Envelope {
            id: 0,
            body: &reply,
        })?)
        .await?;
    match reply {
        HelloReply::Welcome { .. } => Ok(hello),
        HelloReply::Refused { reason } => Err(Error::Refused(reason)),
    }
}

/// Compares two secrets in time that depends only on their lengths.
fn constant_time_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(token: Option<&str>) -> HelloPolicy {
        HelloPolicy {
            service: "test".into(),
            token: token.map(str::to_owned),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn hello_checks_version_and_token() {
        let ok = Hello::new("t", Some("s3cret".into()));
        assert_eq!(policy(Some("s3cret")).check(&ok), None);
        assert_eq!(policy(None).check(&ok), None);
        assert!(policy(Some("other")).check(&ok).is_some());
        assert!(policy(Some("s3cret"))
            .check(&Hello::new("t", None))
            .is_some());
        let old = Hello {
            version: PROTOCOL_VERSION + 1,
            ..ok
        };
        let reason = policy(None).check(&old).unwrap();
        assert!(reason.contains("version"), "{reason}");
    }

    #[test]
    fn secrets_compare_by_content() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
    }
}
