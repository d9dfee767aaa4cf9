//! The server side of the internal protocol: accepts connections up to a limit, runs the hello,
//! and hands every decoded request to a [`Service`], many at once per connection. A peer that
//! sends garbage loses its own connection and nothing else.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config;
use crate::frame::{self, HelloPolicy};
use crate::wire::{Envelope, RemoteError, Reply};
use crate::Error;

/// Limits and timings of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Name in hello answers and logs.
    pub service: String,
    /// Largest frame accepted or sent.
    pub max_frame_bytes: usize,
    /// Connections served at once; further dialers wait in the listen backlog.
    pub max_connections: usize,
    /// Requests of one connection being handled at once; the connection is not read further
    /// until one finishes.
    pub max_in_flight_per_connection: usize,
    /// Frames queued for one connection's writer.
    pub outbound_queue: usize,
    /// The cluster token every hello must carry, when set.
    pub cluster_token: Option<String>,
    /// How long a new connection has to send its hello.
    pub hello_timeout: Duration,
    /// How long a connection may stay silent with no request in flight before it is closed.
    pub idle_timeout: Duration,
    /// How long a connection that carries a subscription may stay silent: its subscriber
    /// sends heartbeats, so a longer silence means it is gone or cut off.
    pub silence_limit: Duration,
}

impl ServerConfig {
    /// Defaults suited to one machine, for the named service.
    pub fn new(service: impl Into<String>) -> Self {
        ServerConfig {
            service: service.into(),
            max_frame_bytes: frame::DEFAULT_MAX_FRAME_BYTES,
            max_connections: config::DEFAULT_MAX_CONNECTIONS,
            max_in_flight_per_connection: 1024,
            outbound_queue: 4096,
            cluster_token: None,
            hello_timeout: Duration::from_millis(config::DEFAULT_HELLO_TIMEOUT_MS),
            idle_timeout: Duration::from_millis(config::DEFAULT_IDLE_TIMEOUT_MS),
            silence_limit: Duration::from_millis(3 * config::DEFAULT_HEARTBEAT_MS),
        }
    }
}

/// A handle through which a handler keeps sending frames on its connection after it answered:
/// the catalog's invalidation stream.
#[derive(Debug, Clone)]
pub struct Push {
    id: u64,
    outbound: mpsc::Sender<Bytes>,
    connection: CancellationToken,
    streaming: Arc<AtomicBool>,
}

impl Push {
    /// Queues `message` without waiting. A peer that does not keep up has its connection
    /// closed (it learns that it missed messages from the broken stream) and `false` comes
    /// back; `false` also means the connection is already gone.
    pub fn send<T: Serialize>(&self, message: &T) -> bool {
        let reply: Reply<&T> = Ok(message);
        let Ok(bytes) = frame::encode(&Envelope {
            id: self.id,
            body: reply,
        }) else {
            return false;
        };
        match self.outbound.try_send(bytes) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!(id = self.id, "subscriber too slow; closing its connection");
                self.connection.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Whether both push on the same connection.
    pub fn same_connection(&self, other: &Push) -> bool {
        self.outbound.same_channel(&other.outbound)
    }

    /// True once the connection is closed or closing.
    pub fn is_closed(&self) -> bool {
        self.outbound.is_closed() || self.connection.is_cancelled()
    }
}

/// What a handler knows about the request it serves.
#[derive(Debug)]
pub struct RequestContext {
    /// The peer's name from its hello.
    pub peer: Arc<str>,
    push: Push,
}

impl RequestContext {
    /// A handle for frames sent later with this request's id (after the answer). Taking it
    /// makes the connection a subscription: from then on its peer must send heartbeats
    /// instead of being held to the idle limit.
    pub fn push(&self) -> Push {
        self.push.streaming.store(true, Ordering::Relaxed);
        self.push.clone()
    }
}

/// A service: the handlers of one kind of server. The framing, hello, limits and shutdown are
/// the server's.
pub trait Service: Send + Sync + 'static {
    /// Requests it serves.
    type Request: DeserializeOwned + Send + 'static;
    /// Answers it gives.
    type Response: Serialize + Send + 'static;

    /// Handles one request. Many run at once, also for the same connection.
    fn call(
        &self,
        request: Self::Request,
        context: RequestContext,
    ) -> impl Future<Output = Reply<Self::Response>> + Send;
}

/// Serves `service` on `listener` until `shutdown` fires, then lets every request in flight
/// finish and returns.
pub async fn serve<S: Service>(
    listener: TcpListener,
    service: Arc<S>,
    config: ServerConfig,
    shutdown: CancellationToken,
) {
    let config = Arc::new(config);
    accept_loop(&listener, config.max_connections, &shutdown, |socket, addr| {
        let (service, config, shutdown) = (service.clone(), config.clone(), shutdown.clone());
        async move {
            match serve_connection(socket, service, &config, shutdown).await {
                // A peer that hangs up (a port probe, a client going away) is not news.
                Ok(()) | Err(Error::Unavailable(_)) => {
                    debug!(service = %config.service, peer = %addr, "connection closed");
                }
                Err(e) => {
                    warn!(service = %config.service, peer = %addr, error = %e, "connection closed on error");
                }
            }
        }
    })
    .await;
    info!(service = %config.service, "stopped; connections drained");
}

/// Accepts connections on `listener` until `shutdown` fires, each handled by its own task,
/// at most `max_connections` at once; then waits for those tasks to finish. The permit is
/// taken before accepting, so that a full server leaves new clients in the listen backlog
/// instead of accepting sockets it cannot serve.
pub async fn accept_loop<F, Fut>(
    listener: &TcpListener,
    max_connections: usize,
    shutdown: &CancellationToken,
    mut handle: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max_connections));
    let tasks = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (socket, addr) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let connection = handle(socket, addr);
        tasks.spawn(async move {
            connection.await;
            drop(permit);
        });
    }
    tasks.close();
    tasks.wait().await;
}

async fn serve_connection<S: Service>(
    socket: TcpStream,
    service: Arc<S>,
    config: &ServerConfig,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    socket.set_nodelay(true)?;
    frame::keep_alive(&socket)?;
    let (read_half, write_half) = socket.into_split();
    let mut reader = FramedRead::new(read_half, frame::codec(config.max_frame_bytes));
    let mut writer = FramedWrite::new(write_half, frame::codec(config.max_frame_bytes));
    let policy = HelloPolicy {
        service: config.service.clone(),
        token: config.cluster_token.clone(),
        timeout: config.hello_timeout,
    };
    let hello = frame::server_handshake(&mut reader, &mut writer, &policy).await?;
    let peer: Arc<str> = Arc::from(hello.peer.as_str());
    debug!(service = %config.service, %peer, "hello accepted");

    let connection = shutdown.child_token();
    let writer_stop = CancellationToken::new();
    let (outbound, outbound_rx) = mpsc::channel(config.outbound_queue);
    let writer_task = tokio::spawn(frame::write_frames(
        writer,
        outbound_rx,
        writer_stop.clone(),
    ));
    let max_in_flight = config.max_in_flight_per_connection;
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    let handlers = TaskTracker::new();
    let streaming = Arc::new(AtomicBool::new(false));

    let result = loop {
        let permit = tokio::select! {
            () = connection.cancelled() => break Ok(()),
            permit = in_flight.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break Ok(()),
            },
        };
        let subscription = streaming.load(Ordering::Relaxed);
        let limit = if subscription {
            config.silence_limit
        } else {
            config.idle_timeout
        };
        let frame = tokio::select! {
            () = connection.cancelled() => break Ok(()),
            frame = tokio::time::timeout(limit, frame::read_frame(&mut reader)) => frame,
        };
        let bytes = match frame {
            Ok(Ok(Some(bytes))) if bytes.is_empty() => continue, // a heartbeat
            Ok(Ok(Some(bytes))) => bytes,
            Ok(Ok(None)) => break Ok(()),
            Ok(Err(e)) => break Err(e),
            Err(_) if subscription => {
                info!(service = %config.service, %peer, ?limit, "subscriber silent; closing its connection");
                break Ok(());
            }
            // This loop holds one permit itself; any other is a request being handled.
            Err(_) if in_flight.available_permits() + 1 < max_in_flight => continue,
            Err(_) => {
                debug!(service = %config.service, %peer, ?limit, "idle connection closed");
                break Ok(());
            }
        };
        let envelope: Envelope<S::Request> = match frame::decode(&bytes) {
            Ok(envelope) => envelope,
            Err(e) => break Err(e),
        };
        let context = RequestContext {
            peer: peer.clone(),
            push: Push {
                id: envelope.id,
                outbound: outbound.clone(),
                connection: connection.clone(),
                streaming: streaming.clone(),
            },
        };
        let service = service.clone();
        let outbound = outbound.clone();
        handlers.spawn(async move {
            let reply = service.call(envelope.body, context).await;
            let id = envelope.id;
            match frame::encode(&Envelope { id, body: reply }) {
                Ok(bytes) => {
                    // A closed writer means the peer is gone; nobody is left to answer.
                    let _ = outbound.send(bytes).await;
                }
                Err(e) => {
                    let failure: Reply<()> = Err(RemoteError::unavailable(e.to_string()));
                    if let Ok(bytes) = frame::encode(&Envelope { id, body: failure }) {
                        let _ = outbound.send(bytes).await;
                    }
                }
            }
            drop(permit);
        });
    };

    // Requests already read are answered before the connection closes.
    handlers.close();
    handlers.wait().await;
    writer_stop.cancel();
    drop(outbound);
    match writer_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "writer ended on error"),
        Err(e) => warn!(error = %e, "writer task failed"),
    }
    result
}
