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
use crate::http::{self, Connection, Framing, Limits, Parsed, Response};
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

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            limits: Limits::default(),
            max_connections: 4096,
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
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
                if let Err(e) = session(socket, &app, &config, &shutdown).await {
                    debug!(%peer, error = %e, "session ended on error");
                }
            }
        },
    )
    .await;
    info!("front end stopped; sessions finished");
}

/// One client connection.
async fn session(
    mut socket: TcpStream,
    app: &App,
    config: &HttpConfig,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    socket.set_nodelay(true)?;
    let mut input = BytesMut::with_capacity(4096);
    let mut output = BytesMut::with_capacity(4096);
    // When the request now in the buffer began; `None` between requests. A new connection
    // counts as a begun request, so a client that connects and stays silent gets the
    // request timeout, not the idle one.
    let mut started: Option<Instant> = Some(Instant::now());
    let most_buffered = config.limits.max_head_bytes + config.limits.max_body_bytes;
    // Whether the request now in the buffer was told `100 Continue`.
    let mut continued = false;
    loop {
        let mut close = false;
        // Answer every complete request already buffered, in order.
        loop {
            match http::parse(&input, &config.limits) {
                Ok(Parsed::Complete { request, consumed }) => {
                    input.advance(consumed);
                    continued = false;
                    let begun = std::time::Instant::now();
                    let (route, response) = app.handle(&request).await;
                    app.metrics.record(route, response.status, begun.elapsed());
                    started = (!input.is_empty()).then(Instant::now);
                    let mut framing = Framing::answering(&request);
                    if shutdown.is_cancelled() {
                        framing.connection = Connection::Close;
                    }
                    response.encode(&mut output, framing);
                    if framing.connection == Connection::Close {
                        close = true;
                        break;
                    }
                    if output.len() >= FLUSH_AT {
                        // Many pipelined requests: send what is ready rather than buffer it.
                        write_all(&mut socket, &output, config.write_timeout).await?;
                        output.clear();
                    }
                }
                Ok(Parsed::Partial) => break,
                Ok(Parsed::AwaitingBody) => {
                    if !continued {
                        output.extend_from_slice(http::CONTINUE);
                        continued = true;
                    }
                    break;
                }
                Err(refusal) => {
                    debug!(
                        status = refusal.status,
                        reason = refusal.message,
                        "request refused"
                    );
                    app.metrics
                        .record(Route::Other, refusal.status, Duration::ZERO);
                    Response::error(refusal.status, refusal.message)
                        .encode(&mut output, Framing::CLOSE);
                    close = true;
                    break;
                }
            }
        }
        if !output.is_empty() {
            write_all(&mut socket, &output, config.write_timeout).await?;
            output.clear();
        }
        if close || shutdown.is_cancelled() {
            // A clean end of our side, so the last answer is not lost to a reset.
            let _ = socket.shutdown().await;
            return Ok(());
        }
        if input.len() >= most_buffered {
            // The parser would have refused anything this large; a defensive bound.
            return Ok(());
        }
        let wait = match started {
            Some(at) => (at + config.request_timeout).saturating_duration_since(Instant::now()),
            None => config.idle_timeout,
        };
        let read = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            read = tokio::time::timeout(wait, socket.read_buf(&mut input)) => read,
        };
        match read {
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(_)) => {
                started.get_or_insert_with(Instant::now);
            }
            Ok(Err(e)) => return Err(e),
            Err(_) if started.is_some() => {
                // A request begun and not finished in time.
                let mut out = BytesMut::new();
                Response::error(408, "request not completed in time")
                    .encode(&mut out, Framing::CLOSE);
                app.metrics.record(Route::Other, 408, Duration::ZERO);
                let _ = write_all(&mut socket, &out, config.write_timeout).await;
                return Ok(());
            }
            Err(_) => return Ok(()),
        }
    }
}

async fn write_all(socket: &mut TcpStream, bytes: &[u8], limit: Duration) -> std::io::Result<()> {
    match tokio::time::timeout(limit, socket.write_all(bytes)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "client is not reading its answers",
        )),
    }
}
