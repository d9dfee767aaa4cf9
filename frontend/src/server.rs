//! The HTTP/1.1 server: a task per connection, keep-alive, pipelining (every complete request
//! in the buffer answered in order, one write per batch), limits, idle and slow-request
//! timeouts, a cap on connections, graceful shutdown. A bad request closes its own
//! connection and touches nothing else.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use common::server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::api::App;
use crate::http::{self, Connection, Framing, Limits, Parsed, Refusal, Request, Response};
use crate::metrics::Route;

/// Answers are written out once this much is buffered, whatever is still pipelined.
const FLUSH_AT: usize = 64 * 1024;

/// Limits and timings of the HTTP server.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Request size limits.
    pub limits: Limits,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// How long a keep-alive connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// How long a client has to send a whole request once it started one.
    pub request_timeout: Duration,
    /// How long a client may take to read our answers.
    pub write_timeout: Duration,
}

/// HTTP connections served at once by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Milliseconds a keep-alive connection may idle by default.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Milliseconds a client has to send a whole request by default.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            limits: Limits::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: Duration::from_millis(DEFAULT_IDLE_TIMEOUT_MS),
            request_timeout: Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves HTTP on `listener` until `shutdown`, then lets every connection finish the
/// requests it has read and returns.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    config: HttpConfig,
    shutdown: CancellationToken,
) {
    let config = Arc::new(config);
    server::accept_loop(
        &listener,
        config.max_connections,
        &shutdown,
        |socket, peer| {
            let (app, config, shutdown) = (app.clone(), config.clone(), shutdown.clone());
            async move {
                if let Err(e) = Session::new(socket, app, config, shutdown).run().await {
                    debug!(%peer, error = %e, "session ended on error");
                }
            }
        },
    )
    .await;
    info!("front end stopped; sessions finished");
}

/// Whether a session goes on after one of its steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Read more and answer it.
    Continue,
    /// The connection is over.
    Stop,
}

/// One client connection: the socket, the bytes read and not yet answered, the answers not
/// yet written, and the shutdown signal it drains on.
struct Session {
    socket: TcpStream,
    app: Arc<App>,
    config: Arc<HttpConfig>,
    shutdown: CancellationToken,
    /// Bytes read and not yet answered.
    input: BytesMut,
    /// Answers not yet written, sent in one write per batch.
    output: BytesMut,
    /// When the request now in the buffer began; `None` between requests. A new connection
    /// counts as a begun request, so a client that connects and stays silent gets the
    /// request timeout, not the idle one.
    started: Option<Instant>,
    /// Whether the request now in the buffer was told `100 Continue`.
    continued: bool,
}

impl Session {
    /// A session on a freshly accepted `socket`, its first request counted as begun.
    fn new(
        socket: TcpStream,
        app: Arc<App>,
        config: Arc<HttpConfig>,
        shutdown: CancellationToken,
    ) -> Self {
        Session {
            socket,
            app,
            config,
            shutdown,
            input: BytesMut::with_capacity(4096),
            output: BytesMut::with_capacity(4096),
            started: Some(Instant::now()),
            continued: false,
        }
    }

    /// Serves the connection until the client leaves, an answer closes it, it times out,
    /// or shutdown (which lets it answer what it has already read).
    async fn run(mut self) -> std::io::Result<()> {
        self.socket.set_nodelay(true)?;
        loop {
            let after = self.answer_buffered().await?;
            self.flush().await?;
            if after == Flow::Stop || self.shutdown.is_cancelled() {
                // A clean end of our side, so the last answer is not lost to a reset.
                let _ = self.socket.shutdown().await;
                return Ok(());
            }
            if self.read_more().await? == Flow::Stop {
                return Ok(());
            }
        }
    }

    /// Answers every complete request already buffered, in order, into `output`, which is
    /// written early only once it holds `FLUSH_AT` bytes. `Stop` when an answer closes the
    /// connection.
    async fn answer_buffered(&mut self) -> std::io::Result<Flow> {
        loop {
            match http::parse(&self.input, &self.config.limits) {
                Ok(Parsed::Complete { request, consumed }) => {
                    self.input.advance(consumed);
                    self.continued = false;
                    if self.answer(&request).await == Flow::Stop {
                        return Ok(Flow::Stop);
                    }
                    if self.output.len() >= FLUSH_AT {
                        // Many pipelined requests: send what is ready rather than buffer it.
                        self.flush().await?;
                    }
                }
                Ok(Parsed::Partial) => return Ok(Flow::Continue),
                Ok(Parsed::AwaitingBody) => {
                    if !self.continued {
                        self.output.extend_from_slice(http::CONTINUE);
                        self.continued = true;
                    }
                    return Ok(Flow::Continue);
                }
                Err(refusal) => {
                    self.refuse(refusal);
                    return Ok(Flow::Stop);
                }
            }
        }
    }

    /// Handles one request and buffers its answer. `Stop` when the answer closes the
    /// connection: the client asked for it, or the server is shutting down.
    async fn answer(&mut self, request: &Request) -> Flow {
        let begun = std::time::Instant::now();
        let (route, response) = self.app.handle(request).await;
        self.app
            .metrics
            .record(route, response.status, begun.elapsed());
        self.started = (!self.input.is_empty()).then(Instant::now);
        let mut framing = Framing::answering(request);
        if self.shutdown.is_cancelled() {
            framing.connection = Connection::Close;
        }
        response.encode(&mut self.output, framing);
        match framing.connection {
            Connection::KeepAlive => Flow::Continue,
            Connection::Close => Flow::Stop,
        }
    }

    /// Buffers the answer to a request that cannot be served; the connection closes after.
    fn refuse(&mut self, refusal: Refusal) {
        debug!(
            status = refusal.status,
            reason = refusal.message,
            "request refused"
        );
        self.app
            .metrics
            .record(Route::Other, refusal.status, Duration::ZERO);
        Response::error(refusal.status, refusal.message).encode(&mut self.output, Framing::CLOSE);
    }

    /// Reads more into `input`, waiting no longer than the request timeout (a request is
    /// begun) or the idle timeout (none is). `Stop` when the connection is over: the client
    /// closed it, it was too slow or silent too long, too much is buffered, or shutdown.
    async fn read_more(&mut self) -> std::io::Result<Flow> {
        let limits = &self.config.limits;
        if self.input.len() >= limits.max_head_bytes + limits.max_body_bytes {
            // The parser would have refused anything this large; a defensive bound.
            return Ok(Flow::Stop);
        }
        let wait = match self.started {
            Some(at) => {
                (at + self.config.request_timeout).saturating_duration_since(Instant::now())
            }
            None => self.config.idle_timeout,
        };
        let read = tokio::select! {
            () = self.shutdown.cancelled() => return Ok(Flow::Stop),
            read = tokio::time::timeout(wait, self.socket.read_buf(&mut self.input)) => read,
        };
        match read {
            Ok(Ok(0)) => Ok(Flow::Stop),
            Ok(Ok(_)) => {
                self.started.get_or_insert_with(Instant::now);
                Ok(Flow::Continue)
            }
            Ok(Err(e)) => Err(e),
            Err(_) if self.started.is_some() => {
                self.time_out().await;
                Ok(Flow::Stop)
            }
            Err(_) => Ok(Flow::Stop),
        }
    }

    /// Answers 408 to a request begun and not finished in time, as the connection's last
    /// words. `output` is empty here: it is flushed before every read.
    async fn time_out(&mut self) {
        Response::error(408, "request not completed in time")
            .encode(&mut self.output, Framing::CLOSE);
        self.app.metrics.record(Route::Other, 408, Duration::ZERO);
        let _ = self.flush().await;
    }

    /// Writes out the buffered answers, if any.
    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.output.is_empty() {
            write_all(&mut self.socket, &self.output, self.config.write_timeout).await?;
            self.output.clear();
        }
        Ok(())
    }
}

/// Writes `bytes`, failing if the client does not take them within `limit`.
async fn write_all(socket: &mut TcpStream, bytes: &[u8], limit: Duration) -> std::io::Result<()> {
    match tokio::time::timeout(limit, socket.write_all(bytes)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "client is not reading its answers",
        )),
    }
}
