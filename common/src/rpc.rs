//! The multiplexed RPC client: one persistent connection to a peer carries many calls at once,
//! each paired with its answer by request id. Every call has a deadline; a broken connection
//! fails the calls in flight (their outcome is unknown, so callers retry with the same request
//! id) and is re-dialed on the next call, with exponential backoff after failures.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config;
use crate::engine::Backoff;
use crate::frame;
use crate::sync::lock;
use crate::wire::{Envelope, Hello, Reply};
use crate::Error;

/// Timings and limits of a client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Who we are, in the hello.
    pub peer_name: String,
    /// The cluster token to present, when the cluster uses one.
    pub cluster_token: Option<String>,
    /// Largest frame accepted or sent.
    pub max_frame_bytes: usize,
    /// Deadline for dialing plus the hello.
    pub connect_timeout: Duration,
    /// Deadline of a call made with [`RpcClient::call`].
    pub call_timeout: Duration,
    /// Wait before the first re-dial after a failed one; doubles per failure.
    pub backoff_min: Duration,
    /// Longest wait between re-dials.
    pub backoff_max: Duration,
    /// Frames queued for the writer before callers wait.
    pub outbound_queue: usize,
    /// The heartbeat interval of subscriptions, both ways: the client sends one on a
    /// connection that carries a stream, and treats a stream silent for three as broken.
    pub heartbeat: Duration,
    /// The server's idle limit; the client drops a connection idle for half of it and dials
    /// anew at the next call, so that no call races the server's close.
    pub idle_timeout: Duration,
}

impl ClientConfig {
    /// Defaults suited to one machine.
    pub fn new(peer_name: impl Into<String>) -> Self {
        ClientConfig {
            peer_name: peer_name.into(),
            cluster_token: None,
            max_frame_bytes: frame::DEFAULT_MAX_FRAME_BYTES,
            connect_timeout: Duration::from_secs(2),
            call_timeout: Duration::from_millis(config::DEFAULT_CALL_TIMEOUT_MS),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_secs(1),
            outbound_queue: 4096,
            heartbeat: Duration::from_millis(config::DEFAULT_HEARTBEAT_MS),
            idle_timeout: Duration::from_millis(config::DEFAULT_IDLE_TIMEOUT_MS),
        }
    }

    /// How long a subscription may stay silent before it counts as broken.
    pub fn silence_limit(&self) -> Duration {
        self.heartbeat * 3
    }
}

/// A client of one peer, cheap to clone; clones share the connection.
pub struct RpcClient<Req, Resp> {
    inner: Arc<Inner<Resp>>,
    _request: PhantomData<fn(Req)>,
}

impl<Req, Resp> Clone for RpcClient<Req, Resp> {
    fn clone(&self) -> Self {
        RpcClient {
            inner: self.inner.clone(),
            _request: PhantomData,
        }
    }
}

struct Inner<Resp> {
    addr: String,
    config: ClientConfig,
    next_id: AtomicU64,
    current: Mutex<Option<Link<Resp>>>,
    /// Held across the dial's `.await` so that concurrent callers share one attempt instead of
    /// each opening a connection; hence an async lock.
    dial: tokio::sync::Mutex<Dialing>,
}

/// When the next dial may be made, after failures.
struct Dialing {
    backoff: Backoff,
    retry_at: Option<Instant>,
}

/// One open connection: the writer's queue and the table of calls waiting for answers.
struct Link<Resp> {
    outbound: mpsc::Sender<Bytes>,
    waiting: Arc<Mutex<Waiting<Resp>>>,
    closed: CancellationToken,
}

impl<Resp> Clone for Link<Resp> {
    fn clone(&self) -> Self {
        Link {
            outbound: self.outbound.clone(),
            waiting: self.waiting.clone(),
            closed: self.closed.clone(),
        }
    }
}

impl<Resp> Drop for Inner<Resp> {
    fn drop(&mut self) {
        // The reader task holds only the waiting table; this ends it and closes the socket.
        if let Some(link) = lock(&self.current).take() {
            link.closed.cancel();
        }
    }
}

struct Waiting<Resp> {
    /// Set when the connection is gone; nothing may be added after.
    closed: bool,
    calls: HashMap<u64, Waiter<Resp>>,
    /// When a frame last went out or came in.
    last_active: Instant,
}

impl<Resp> Waiting<Resp> {
    /// Whether a stream is open on the connection, which then sends heartbeats.
    fn streaming(&self) -> bool {
        self.calls.values().any(|w| matches!(w, Waiter::Stream(_)))
    }

    /// Whether nothing has crossed the connection for `limit` and nothing waits on it.
    fn idle_for(&self, limit: Duration) -> bool {
        self.calls.is_empty() && self.last_active.elapsed() >= limit
    }
}

enum Waiter<Resp> {
    Once(oneshot::Sender<Result<Resp, Error>>),
    Stream(mpsc::Sender<Result<Resp, Error>>),
}

impl<Req, Resp> RpcClient<Req, Resp>
where
    Req: Serialize,
    Resp: DeserializeOwned + Send + 'static,
{
    /// A client of the peer at `addr`. Nothing is dialed until the first call.
    pub fn new(addr: impl Into<String>, config: ClientConfig) -> Self {
        let backoff = Backoff::new(config.backoff_min, config.backoff_max);
        RpcClient {
            inner: Arc::new(Inner {
                addr: addr.into(),
                config,
                next_id: AtomicU64::new(1),
                current: Mutex::new(None),
                dial: tokio::sync::Mutex::new(Dialing {
                    backoff,
                    retry_at: None,
                }),
            }),
            _request: PhantomData,
        }
    }

    /// The peer's address.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Sends `request` and waits for its answer, at most the configured call timeout.
    pub async fn call(&self, request: &Req) -> Result<Resp, Error> {
        self.call_within(request, self.inner.config.call_timeout)
            .await
    }

    /// Sends `request` and waits for its answer, at most `timeout` (dialing included).
    pub async fn call_within(&self, request: &Req, timeout: Duration) -> Result<Resp, Error> {
        let deadline = Instant::now() + timeout;
        let (sender, receiver) = oneshot::channel();
        let (link, id) = self
            .send(request, Waiter::Once(sender), deadline, timeout)
            .await?;
        match tokio::time::timeout_at(deadline, receiver).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Error::Unavailable("connection lost".into())),
            Err(_) => {
                lock(&link.waiting).calls.remove(&id);
                Err(Error::TimedOut(timeout))
            }
        }
    }

    /// Sends `request` and returns the first frame the peer sends with its id plus a stream of
    /// every later one. The first frame may be a push rather than the request's own answer
    /// (a server may register the stream before answering). The stream ends when the
    /// connection does, or when its reader falls `capacity` messages behind.
    pub async fn subscribe(
        &self,
        request: &Req,
        capacity: usize,
    ) -> Result<(Resp, mpsc::Receiver<Result<Resp, Error>>), Error> {
        let timeout = self.inner.config.call_timeout;
        let deadline = Instant::now() + timeout;
        let (sender, mut receiver) = mpsc::channel(capacity.max(1));
        let (link, id) = self
            .send(request, Waiter::Stream(sender), deadline, timeout)
            .await?;
        match tokio::time::timeout_at(deadline, receiver.recv()).await {
            Ok(Some(Ok(first))) => Ok((first, receiver)),
            Ok(Some(Err(e))) => {
                lock(&link.waiting).calls.remove(&id);
                Err(e)
            }
            Ok(None) => Err(Error::Unavailable("connection lost".into())),
            Err(_) => {
                lock(&link.waiting).calls.remove(&id);
                Err(Error::TimedOut(timeout))
            }
        }
    }

    async fn send(
        &self,
        request: &Req,
        waiter: Waiter<Resp>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(Link<Resp>, u64), Error> {
        let link = match tokio::time::timeout_at(deadline, self.link()).await {
            Ok(link) => link?,
            Err(_) => return Err(Error::TimedOut(timeout)),
        };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = frame::encode(&Envelope { id, body: request })?;
        if bytes.len() > self.inner.config.max_frame_bytes {
            return Err(Error::Protocol(format!(
                "request of {} bytes exceeds the frame limit",
                bytes.len()
            )));
        }
        {
            let mut waiting = lock(&link.waiting);
            if waiting.closed {
                return Err(Error::Unavailable("connection lost".into()));
            }
            waiting.calls.insert(id, waiter);
            waiting.last_active = Instant::now();
        }
        match tokio::time::timeout_at(deadline, link.outbound.send(bytes)).await {
            Ok(Ok(())) => Ok((link, id)),
            Ok(Err(_)) => {
                lock(&link.waiting).calls.remove(&id);
                Err(Error::Unavailable("connection lost".into()))
            }
            Err(_) => {
                lock(&link.waiting).calls.remove(&id);
                Err(Error::TimedOut(timeout))
            }
        }
    }

    /// The open connection, dialing one if there is none and the backoff allows.
    async fn link(&self) -> Result<Link<Resp>, Error> {
        if let Some(link) = self.open_link() {
            return Ok(link);
        }
        let mut dialing = self.inner.dial.lock().await;
        if let Some(link) = self.open_link() {
            return Ok(link);
        }
        if let Some(retry_at) = dialing.retry_at {
            if Instant::now() < retry_at {
                return Err(Error::Unavailable(format!(
                    "{} is down; next dial in {:?}",
                    self.inner.addr,
                    retry_at - Instant::now()
                )));
            }
        }
        let config = &self.inner.config;
        let dialed = tokio::time::timeout(config.connect_timeout, self.dial()).await;
        match dialed {
            Ok(Ok(link)) => {
                dialing.backoff.reset();
                dialing.retry_at = None;
                *lock(&self.inner.current) = Some(link.clone());
                Ok(link)
            }
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e,
                    _ => Error::Unavailable(format!(
                        "dialing {} took over {:?}",
                        self.inner.addr, config.connect_timeout
                    )),
                };
                let delay = dialing.backoff.next_wait();
                dialing.retry_at = Some(Instant::now() + delay);
                debug!(addr = %self.inner.addr, error = %error, ?delay, "dial failed");
                Err(match error {
                    Error::Io(e) => Error::Unavailable(format!("{}: {e}", self.inner.addr)),
                    other => other,
                })
            }
        }
    }

    /// The current connection unless it is closed or has been idle for half the server's
    /// idle limit (then it is closed here, before the server could close it under a call).
    fn open_link(&self) -> Option<Link<Resp>> {
        let current = lock(&self.inner.current);
        let link = current.as_ref()?;
        if link.closed.is_cancelled() {
            return None;
        }
        if lock(&link.waiting).idle_for(self.inner.config.idle_timeout / 2) {
            debug!(addr = %self.inner.addr, "idle connection dropped");
            link.closed.cancel();
            return None;
        }
        Some(link.clone())
    }

    async fn dial(&self) -> Result<Link<Resp>, Error> {
        let config = &self.inner.config;
        let socket = TcpStream::connect(&self.inner.addr).await?;
        socket.set_nodelay(true)?;
        frame::keep_alive(&socket)?;
        let (read_half, write_half) = socket.into_split();
        let mut reader = FramedRead::new(read_half, frame::codec(config.max_frame_bytes));
        let mut writer = FramedWrite::new(write_half, frame::codec(config.max_frame_bytes));
        let hello = Hello::new(config.peer_name.clone(), config.cluster_token.clone());
        frame::client_handshake(&mut reader, &mut writer, &hello).await?;

        let (outbound, outbound_rx) = mpsc::channel(config.outbound_queue);
        let closed = CancellationToken::new();
        let waiting = Arc::new(Mutex::new(Waiting {
            closed: false,
            calls: HashMap::new(),
            last_active: Instant::now(),
        }));
        let addr = self.inner.addr.clone();
        tokio::spawn({
            let closed = closed.clone();
            async move {
                if let Err(e) = frame::write_frames(writer, outbound_rx, closed.clone()).await {
                    debug!(%addr, error = %e, "writer ended");
                }
                closed.cancel();
            }
        });
        tokio::spawn(read_answers(
            reader,
            waiting.clone(),
            closed.clone(),
            self.inner.addr.clone(),
        ));
        tokio::spawn(send_heartbeats(
            outbound.clone(),
            waiting.clone(),
            closed.clone(),
            config.heartbeat,
        ));
        Ok(Link {
            outbound,
            waiting,
            closed,
        })
    }
}

/// Sends a heartbeat every `interval` while a stream is open on the connection, so that the
/// server can tell a live subscriber from one that is gone or cut off.
async fn send_heartbeats<Resp>(
    outbound: mpsc::Sender<Bytes>,
    waiting: Arc<Mutex<Waiting<Resp>>>,
    closed: CancellationToken,
    interval: Duration,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = closed.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if lock(&waiting).streaming() {
            // A full queue is traffic enough; the heartbeat is only for a quiet connection.
            let _ = outbound.try_send(frame::HEARTBEAT);
        }
    }
}

/// Routes every answer to its waiting call until the connection ends, then fails the calls
/// still waiting.
async fn read_answers<Resp: DeserializeOwned>(
    mut reader: FramedRead<tokio::net::tcp::OwnedReadHalf, LengthDelimitedCodec>,
    waiting: Arc<Mutex<Waiting<Resp>>>,
    closed: CancellationToken,
    addr: String,
) {
    let ending = loop {
        let frame = tokio::select! {
            () = closed.cancelled() => break "closed".to_string(),
            frame = frame::read_frame(&mut reader) => frame,
        };
        let bytes = match frame {
            Ok(Some(bytes)) if bytes.is_empty() => continue, // a heartbeat
            Ok(Some(bytes)) => bytes,
            Ok(None) => break "peer closed the connection".to_string(),
            Err(e) => break e.to_string(),
        };
        let envelope: Envelope<Reply<Resp>> = match frame::decode(&bytes) {
            Ok(envelope) => envelope,
            Err(e) => {
                warn!(%addr, error = %e, "peer sent an undecodable answer; closing");
                break e.to_string();
            }
        };
        let answer = envelope.body.map_err(Error::Remote);
        let mut waiting = lock(&waiting);
        waiting.last_active = Instant::now();
        match waiting.calls.remove(&envelope.id) {
            Some(Waiter::Once(sender)) => {
                let _ = sender.send(answer);
            }
            Some(Waiter::Stream(sender)) => {
                // A stream whose reader falls behind is ended rather than buffered without
                // bound; its owner sees the end and knows it missed messages.
                let delivered = sender.try_send(answer).is_ok();
                if delivered {
                    waiting.calls.insert(envelope.id, Waiter::Stream(sender));
                }
            }
            // The call timed out and gave up; its late answer is dropped.
            None => {}
        }
    };
    closed.cancel();
    let calls = {
        let mut waiting = lock(&waiting);
        waiting.closed = true;
        std::mem::take(&mut waiting.calls)
    };
    debug!(%addr, reason = %ending, failed_calls = calls.len(), "connection ended");
    for (_, waiter) in calls {
        if let Waiter::Once(sender) = waiter {
            let _ = sender.send(Err(Error::Unavailable(format!(
                "connection lost: {ending}"
            ))));
        }
    }
}
