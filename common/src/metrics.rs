//! Metrics every backend serves: a `prometheus-client` registry rendered as OpenMetrics text
//! on its own HTTP port (`--metrics-listen`), closed like every internal port (the cluster
//! token as a bearer token; beyond loopback only with one).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::config::TransportArgs;
use crate::Error;

pub use prometheus_client;

/// The two text formats an exposition is served in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 (ends in `# EOF`), for a scraper whose `Accept` asks for it, as
    /// Prometheus's does.
    OpenMetrics,
    /// The Prometheus text format 0.0.4, for anyone else (curl, older tools).
    Prometheus,
}

impl Format {
    /// The format a request's headers ask for: OpenMetrics when an `Accept` header names
    /// it, else the Prometheus text format.
    pub fn from_headers(headers: &[httparse::Header<'_>]) -> Format {
        let wanted = b"application/openmetrics-text";
        let asked = headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("accept"))
            .any(|h| {
                h.value
                    .windows(wanted.len())
                    .any(|w| w.eq_ignore_ascii_case(wanted))
            });
        if asked {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// Its content type.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Largest request head a scrape may send.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Scrapes served at once; more wait for a permit before they are accepted.
const MAX_SCRAPERS: usize = 16;
/// How long a scraper has to send its request, and to read the answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// The metrics flag of a backend; `#[command(flatten)]` it into the service's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct MetricsArgs {
    /// Address to serve `GET /metrics` on (OpenMetrics text, the cluster token as a bearer
    /// token when one is set). Unset means no metrics port.
    #[arg(long, env = "BAZAAR_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

impl MetricsArgs {
    /// Binds the metrics listener, if one is asked for, by the same rule as the internal
    /// port: beyond loopback only with a cluster token.
    pub async fn bind(&self, transport: &TransportArgs) -> Result<Option<TcpListener>, Error> {
        match &self.metrics_listen {
            Some(addr) => Ok(Some(transport.bind_internal(addr).await?)),
            None => Ok(None),
        }
    }
}

/// Renders a service's exposition at scrape time: reads what it shows from the service's
/// state, then encodes its registry in the format given.
pub type Render = Arc<dyn Fn(Format) -> String + Send + Sync>;

/// Encodes `registry` in `format`.
pub fn encode(registry: &Registry, format: Format) -> String {
    let mut out = String::with_capacity(4096);
    // Writing to a String cannot fail.
    let _ = match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, registry),
        Format::Prometheus => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, registry)
        }
    };
    out
}

/// Buckets for durations from 50 µs to about 13 s, in seconds.
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_05, 2.0, 19)
}

/// A new gauge, registered in `registry` as `name`.
pub fn gauge(registry: &mut Registry, name: &str, help: &str) -> Gauge {
    let gauge = Gauge::default();
    registry.register(name, help, gauge.clone());
    gauge
}

/// A counter whose total is kept elsewhere (an engine's count, a cache's hits): each scrape
/// moves it up to the total it is given, so it never goes back.
#[derive(Debug, Default)]
pub struct MirroredCounter {
    counter: Counter,
    seen: AtomicU64,
}

impl MirroredCounter {
    /// A new counter registered in `registry` as `<name>_total`.
    pub fn registered(registry: &mut Registry, name: &str, help: &str) -> Self {
        let mirrored = MirroredCounter::default();
        registry.register(name, help, mirrored.counter.clone());
        mirrored
    }

    /// Moves the counter up to `total` (a smaller total, after a restart of its source, adds
    /// nothing).
    pub fn set_total(&self, total: u64) {
        let seen = self.seen.fetch_max(total, Ordering::Relaxed);
        self.counter.inc_by(total.saturating_sub(seen));
    }
}

/// Starts [`serve`] on `listener`, if the service was given one: the task to wait for at
/// shutdown.
pub fn spawn(
    listener: Option<TcpListener>,
    render: impl Fn(Format) -> String + Send + Sync + 'static,
    token: Option<String>,
    shutdown: &CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let listener = listener?;
    Some(tokio::spawn(serve(
        listener,
        Arc::new(render),
        token,
        shutdown.clone(),
    )))
}

/// Serves `GET /metrics` on `listener` until `shutdown` fires: one request per connection,
/// answered with `render()`. With a `token`, a scrape must carry `Authorization: Bearer
/// <token>` (401 otherwise). A scraper that is slow, sends garbage or too large a head is
/// answered with an error or dropped; it never holds more than its own connection.
pub async fn serve(
    listener: TcpListener,
    render: Render,
    token: Option<String>,
    shutdown: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics serving");
    }
    let permits = Arc::new(Semaphore::new(MAX_SCRAPERS));
    let token: Option<Arc<str>> = token.map(Arc::from);
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => return,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, peer)) = accepted else {
            continue;
        };
        let (render, token) = (render.clone(), token.clone());
        tokio::spawn(async move {
            let outcome =
                tokio::time::timeout(SCRAPE_TIMEOUT, scrape(stream, &render, token.as_deref()))
                    .await;
            if !matches!(outcome, Ok(Ok(()))) {
                debug!(%peer, "metrics scrape dropped");
            }
            drop(permit);
        });
    }
}

/// Answers one scrape.
async fn scrape(
    mut stream: TcpStream,
    render: &Render,
    token: Option<&str>,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let decided = loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..read]);
        match answer(&head, token) {
            Some(answer) => break answer,
            None if head.len() >= MAX_HEAD_BYTES => {
                break Answer::Error(431, "request head too large")
            }
            None => {}
        }
    };
    let (status, reason, content_type, extra, body) = match decided {
        Answer::Metrics(format) => (200, "OK", format.content_type(), "", render(format)),
        Answer::Error(401, message) => (
            401,
            "Unauthorized",
            "text/plain; charset=utf-8",
            "WWW-Authenticate: Bearer\r\n",
            format!("{message}\n"),
        ),
        Answer::Error(status, message) => (
            status,
            reason(status),
            "text/plain; charset=utf-8",
            if status == 405 { "Allow: GET\r\n" } else { "" },
            format!("{message}\n"),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// What a scrape gets.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Metrics(Format),
    Error(u16, &'static str),
}

/// Decides the answer to a request head, or `None` while it is incomplete.
fn answer(head: &[u8], token: Option<&str>) -> Option<Answer> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Partial) => return None,
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => {
            return Some(Answer::Error(431, "too many headers"))
        }
        Err(_) => return Some(Answer::Error(400, "malformed request")),
    }
    let path = request.path.unwrap_or("");
    let path = path.split('?').next().unwrap_or(path);
    if path != "/metrics" {
        return Some(Answer::Error(404, "only /metrics is served here"));
    }
    if request.method != Some("GET") {
        return Some(Answer::Error(405, "only GET is served here"));
    }
    if let Some(token) = token {
        let given = request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("authorization"))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let matches = given.is_some_and(|given| {
            use subtle::ConstantTimeEq;
            bool::from(given.as_bytes().ct_eq(token.as_bytes()))
        });
        if !matches {
            return Some(Answer::Error(
                401,
                "the cluster token is needed as a bearer token (Authorization: Bearer <token>)",
            ));
        }
    }
    Some(Answer::Metrics(Format::from_headers(request.headers)))
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_needs_the_path_the_method_and_the_token() {
        let get = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(answer(get, None), Some(Answer::Metrics(Format::Prometheus)));
        let open = b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n";
        assert_eq!(
            answer(open, None),
            Some(Answer::Metrics(Format::OpenMetrics))
        );
        assert_eq!(answer(b"GET /metrics HTTP/1.1\r\nHo", None), None);
        assert!(matches!(
            answer(b"GET /other HTTP/1.1\r\n\r\n", None),
            Some(Answer::Error(404, _))
        ));
        assert!(matches!(
            answer(b"POST /metrics HTTP/1.1\r\n\r\n", None),
            Some(Answer::Error(405, _))
        ));
        assert!(matches!(
            answer(b"\x00\x01garbage\r\n\r\n", None),
            Some(Answer::Error(400, _))
        ));
        let token = "0123456789abcdef";
        assert!(matches!(
            answer(get, Some(token)),
            Some(Answer::Error(401, _))
        ));
        let wrong = b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer 0123456789abcdeX\r\n\r\n";
        assert!(matches!(
            answer(wrong, Some(token)),
            Some(Answer::Error(401, _))
        ));
        let right = b"GET /metrics?x=1 HTTP/1.1\r\nauthorization: Bearer 0123456789abcdef\r\n\r\n";
        assert_eq!(
            answer(right, Some(token)),
            Some(Answer::Metrics(Format::Prometheus))
        );
    }

    #[test]
    fn an_exposition_ends_with_eof_and_mirrored_counters_never_go_back() {
        let mut registry = Registry::with_prefix("bazaar_test");
        let counter: Counter = Counter::default();
        registry.register("things", "Things", counter.clone());
        let mirrored = MirroredCounter::registered(&mut registry, "mirrored", "Mirrored");
        mirrored.set_total(5);
        mirrored.set_total(3);
        mirrored.set_total(7);
        counter.inc();
        let text = encode(&registry, Format::OpenMetrics);
        assert!(text.ends_with("# EOF\n"), "{text}");
        let plain = encode(&registry, Format::Prometheus);
        assert!(!plain.contains("# EOF"), "{plain}");
        assert!(plain.contains("bazaar_test_things_total 1"), "{plain}");
        assert!(text.contains("bazaar_test_things_total 1"), "{text}");
        assert!(text.contains("bazaar_test_mirrored_total 7"), "{text}");
    }

    #[tokio::test]
    async fn the_server_answers_scrapes_and_refuses_strangers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let render: Render = Arc::new(|format| match format {
            Format::OpenMetrics => "# EOF\n".to_owned(),
            Format::Prometheus => "\n".to_owned(),
        });
        let server = tokio::spawn(serve(
            listener,
            render,
            Some("0123456789abcdef".into()),
            shutdown.clone(),
        ));
        let ask = |request: &'static str| async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut reply = String::new();
            stream.read_to_string(&mut reply).await.unwrap();
            reply
        };
        let ok = ask(concat!(
            "GET /metrics HTTP/1.1\r\nAuthorization: Bearer 0123456789abcdef\r\n",
            "Accept: application/openmetrics-text\r\n\r\n"
        ))
        .await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        let open = Format::OpenMetrics.content_type();
        assert!(ok.contains(open) && ok.ends_with("# EOF\n"), "{ok}");
        let plain =
            ask("GET /metrics HTTP/1.1\r\nAuthorization: Bearer 0123456789abcdef\r\n\r\n").await;
        assert!(plain.contains("text/plain; version=0.0.4"), "{plain}");
        let refused = ask("GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
        shutdown.cancel();
        server.await.unwrap();
    }
}
