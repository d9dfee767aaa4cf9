//! HTTP/1.1 framing, free of I/O: parsing one request from the front of a buffer (head with
//! httparse, then exactly Content-Length bytes of body) under explicit limits, and encoding
//! responses. Every refusal carries the status a client should see.

use bytes::{BufMut, Bytes, BytesMut};

/// Size limits of one request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest head (request line and headers), in bytes.
    pub max_head_bytes: usize,
    /// Most headers.
    pub max_headers: usize,
    /// Longest request target, in bytes.
    pub max_uri_bytes: usize,
    /// Largest body, in bytes.
    pub max_body_bytes: usize,
}

/// Largest request head by default, in bytes.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 8 * 1024;
/// Largest request body by default, in bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            max_headers: 32,
            max_uri_bytes: 1024,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, as sent.
    pub method: String,
    /// The request target, as sent.
    pub target: String,
    /// Whether the connection stays open after the answer.
    pub keep_alive: bool,
    /// `HTTP/1.0` rather than `HTTP/1.1`.
    pub http10: bool,
    /// The `Idempotency-Key` header, if any.
    pub idempotency_key: Option<String>,
    /// It said `Expect: 100-continue` (HTTP/1.1).
    pub expects_continue: bool,
    /// The metrics format its `Accept` header asks for (a Prometheus scrape asks for
    /// OpenMetrics).
    pub metrics_format: common::metrics::Format,
    /// Exactly Content-Length bytes.
    pub body: Bytes,
}

/// A request that cannot be served; the connection is answered with `status` and closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status.
    pub status: u16,
    /// Why, for the error body.
    pub message: &'static str,
}

const fn refuse(status: u16, message: &'static str) -> Refusal {
    Refusal { status, message }
}

/// What the front of a buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole request yet; read more.
    Partial,
    /// An acceptable head that said `Expect: 100-continue`, without its whole body yet:
    /// send `100 Continue` (once per request), then read more.
    AwaitingBody,
    /// A whole request, which used the first `consumed` bytes.
    Complete {
        /// The request.
        request: Request,
        /// Bytes to drop from the buffer.
        consumed: usize,
    },
}

/// Whether the request target at the front of `buffer` (complete or not) is already longer
/// than the limit. Checked before the head's own limit, so that a long URI gets 414 even
/// when the head is also too large (or not finished).
fn target_too_long(buffer: &[u8], limits: &Limits) -> bool {
    let line = buffer
        .iter()
        .position(|&b| b == b'\n')
        .map_or(buffer, |end| &buffer[..end]);
    let Some(space) = line.iter().position(|&b| b == b' ') else {
        return false;
    };
    let rest = &line[space + 1..];
    let target = rest
        .iter()
        .position(|&b| b == b' ' || b == b'\r')
        .map_or(rest, |end| &rest[..end]);
    target.len() > limits.max_uri_bytes
}

/// Parses the request at the front of `buffer`.
pub fn parse(buffer: &[u8], limits: &Limits) -> Result<Parsed, Refusal> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut head = httparse::Request::new(&mut headers);
    let head_len = match head.parse(buffer) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if target_too_long(buffer, limits) {
                Err(refuse(414, "URI too long"))
            } else if buffer.len() > limits.max_head_bytes {
                Err(refuse(431, "request head too large"))
            } else {
                Ok(Parsed::Partial)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(refuse(431, "too many headers")),
        Err(httparse::Error::Version) => return Err(refuse(505, "HTTP version not supported")),
        Err(_) => return Err(refuse(400, "malformed request")),
    };
    let (Some(method), Some(target), Some(version)) = (head.method, head.path, head.version) else {
        return Err(refuse(400, "malformed request"));
    };
    if target.len() > limits.max_uri_bytes {
        return Err(refuse(414, "URI too long"));
    }
    if head_len > limits.max_head_bytes {
        return Err(refuse(431, "request head too large"));
    }
    let http10 = version == 0;
    let mut content_length: Option<usize> = None;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut idempotency_key = None;
    let mut expects_continue = false;
    for header in head.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or(refuse(400, "invalid Content-Length"))?;
            if content_length.is_some_and(|seen| seen != value) {
                return Err(refuse(400, "conflicting Content-Length headers"));
            }
            content_length = Some(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(refuse(
                501,
                "Transfer-Encoding is not supported; send Content-Length",
            ));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in String::from_utf8_lossy(header.value).split(',') {
                let token = token.trim();
                close |= token.eq_ignore_ascii_case("close");
                keep_alive_token |= token.eq_ignore_ascii_case("keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") && !http10 {
            // RFC 9110 §10.1.1: 100-continue is the only expectation; HTTP/1.0 ignores it.
            if !header
                .value
                .trim_ascii()
                .eq_ignore_ascii_case(b"100-continue")
            {
                return Err(refuse(
                    417,
                    "the only expectation supported is 100-continue",
                ));
            }
            expects_continue = true;
        } else if name.eq_ignore_ascii_case("idempotency-key") {
            let value = std::str::from_utf8(header.value)
                .map_err(|_| refuse(400, "invalid Idempotency-Key"))?;
            idempotency_key = Some(value.trim().to_owned());
        }
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > limits.max_body_bytes {
        return Err(refuse(413, "request body too large"));
    }
    let total = head_len + body_len;
    if buffer.len() < total {
        return Ok(if expects_continue && buffer.len() == head_len {
            Parsed::AwaitingBody
        } else {
            Parsed::Partial
        });
    }
    let keep_alive = if http10 {
        keep_alive_token && !close
    } else {
        !close
    };
    Ok(Parsed::Complete {
        request: Request {
            method: method.to_owned(),
            target: target.to_owned(),
            keep_alive,
            http10,
            idempotency_key,
            expects_continue,
            metrics_format: common::metrics::Format::from_headers(head.headers),
            body: Bytes::copy_from_slice(&buffer[head_len..total]),
        },
        consumed: total,
    })
}

/// The reason phrase of the statuses we send.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        422 => "Unprocessable Entity",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

thread_local! {
    /// The `Date` value (RFC 9110 §6.6.1, IMF-fixdate) of the current second, formatted once
    /// per second per thread rather than once per response.
    static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// Appends the current `Date` value.
fn put_date(out: &mut BytesMut) {
    let now = std::time::SystemTime::now();
    let second = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            *cached = (second, httpdate::fmt_http_date(now));
        }
        out.put_slice(cached.1.as_bytes());
    });
}

/// What happens to the connection after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// It stays open for the next request.
    KeepAlive,
    /// It closes; the answer says `Connection: close`.
    Close,
}

/// The HTTP version the client spoke. Answers are always `HTTP/1.1`; the version only
/// decides whether keeping alive must be said out loud.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `HTTP/1.0`: closes unless told `Connection: keep-alive`.
    Http10,
    /// `HTTP/1.1`: keeps alive unless told `Connection: close`.
    Http11,
}

/// Whether an answer carries its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// Headers, then the body.
    Full,
    /// The answer to a HEAD request: the headers of the GET answer, its `Content-Length`
    /// included, and no body.
    HeadOnly,
}

/// How a response is framed on its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// Whether the connection stays open after this answer.
    pub connection: Connection,
    /// The version the client spoke.
    pub version: Version,
    /// Whether the body is sent.
    pub body: Body,
}

impl Framing {
    /// The framing of an answer after which the connection closes whatever was asked:
    /// refusals and timeouts.
    pub const CLOSE: Framing = Framing {
        connection: Connection::Close,
        version: Version::Http11,
        body: Body::Full,
    };

    /// The framing `request` asks for: its keep-alive, its version, no body for HEAD.
    pub fn answering(request: &Request) -> Self {
        Framing {
            connection: if request.keep_alive {
                Connection::KeepAlive
            } else {
                Connection::Close
            },
            version: if request.http10 {
                Version::Http10
            } else {
                Version::Http11
            },
            body: if request.method == "HEAD" {
                Body::HeadOnly
            } else {
                Body::Full
            },
        }
    }
}

/// A response ready to encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// `Allow` value (a 405's methods), if any.
    pub allow: Option<&'static str>,
    /// `Content-Type` value.
    pub content_type: &'static str,
    /// The body.
    pub body: Bytes,
}

impl Response {
    /// A response whose body is of `content_type`, sent as given (for instance Prometheus
    /// text, `text/plain; version=0.0.4`, or OpenMetrics).
    pub fn with_content_type(
        status: u16,
        content_type: &'static str,
        body: impl Into<Bytes>,
    ) -> Self {
        Response {
            status,
            allow: None,
            content_type,
            body: body.into(),
        }
    }

    /// A JSON response.
    pub fn json(status: u16, body: impl Into<Bytes>) -> Self {
        Response::with_content_type(status, "application/json", body)
    }

    /// An HTML page, `text/html; charset=utf-8`.
    pub fn html(status: u16, body: impl Into<Bytes>) -> Self {
        Response::with_content_type(status, "text/html; charset=utf-8", body)
    }

    /// The JSON error shape: `{"error":{"code":status,"message":...}}`.
    pub fn error(status: u16, message: &str) -> Self {
        #[derive(serde::Serialize)]
        struct Error<'a> {
            code: u16,
            message: &'a str,
        }
        #[derive(serde::Serialize)]
        struct ErrorBody<'a> {
            error: Error<'a>,
        }
        let body = ErrorBody {
            error: Error {
                code: status,
                message,
            },
        };
        // Serializing a number and a string cannot fail.
        Response::json(status, serde_json::to_vec(&body).unwrap_or_default())
    }

    /// Appends the encoded response to `out`, framed as `framing` says: a closing answer
    /// says `Connection: close`; an HTTP/1.0 client kept alive is told `Connection:
    /// keep-alive`; a head-only answer leaves the body out but keeps its length.
    pub fn encode(&self, out: &mut BytesMut, framing: Framing) {
        out.reserve(self.body.len() + 128);
        out.put_slice(b"HTTP/1.1 ");
        out.put_slice(self.status.to_string().as_bytes());
        out.put_u8(b' ');
        out.put_slice(reason(self.status).as_bytes());
        out.put_slice(b"\r\nContent-Type: ");
        out.put_slice(self.content_type.as_bytes());
        out.put_slice(b"\r\nContent-Length: ");
        out.put_slice(self.body.len().to_string().as_bytes());
        out.put_slice(b"\r\nDate: ");
        put_date(out);
        if let Some(allow) = self.allow {
            out.put_slice(b"\r\nAllow: ");
            out.put_slice(allow.as_bytes());
        }
        match (framing.connection, framing.version) {
            (Connection::Close, _) => out.put_slice(b"\r\nConnection: close"),
            (Connection::KeepAlive, Version::Http10) => {
                out.put_slice(b"\r\nConnection: keep-alive");
            }
            (Connection::KeepAlive, Version::Http11) => {}
        }
        out.put_slice(b"\r\n\r\n");
        if framing.body == Body::Full {
            out.put_slice(&self.body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn complete(input: &str) -> (Request, usize) {
        match parse(input.as_bytes(), &Limits::default()) {
            Ok(Parsed::Complete { request, consumed }) => (request, consumed),
            other => panic!("{input:?}: {other:?}"),
        }
    }

    fn refused(input: &[u8], limits: &Limits) -> u16 {
        match parse(input, limits) {
            Err(refusal) => refusal.status,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn parses_heads_bodies_and_keep_alive() {
        let head = "GET /stocks/GameStart HTTP/1.1\r\nHost: x\r\n\r\n";
        let (get, used) = complete(&format!("{head}GET /next"));
        assert_eq!(
            (get.method.as_str(), get.target.as_str()),
            ("GET", "/stocks/GameStart")
        );
        assert!(get.keep_alive && !get.http10);
        assert_eq!(used, head.len());
        let (post, _) = complete(
            "POST /orders HTTP/1.1\r\nContent-Length: 4\r\nIdempotency-Key: k1\r\nConnection: close\r\n\r\nbody",
        );
        assert_eq!(&post.body[..], b"body");
        assert_eq!(post.idempotency_key.as_deref(), Some("k1"));
        assert!(!post.keep_alive);
        let (old, _) = complete("GET / HTTP/1.0\r\n\r\n");
        assert!(!old.keep_alive && old.http10);
        let (old_kept, _) = complete("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(old_kept.keep_alive);
        let (same_twice, _) =
            complete("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx");
        assert_eq!(&same_twice.body[..], b"x");
    }

    #[test]
    fn partial_input_asks_for_more() {
        let limits = Limits::default();
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHo", &limits), Ok(Parsed::Partial));
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", &limits),
            Ok(Parsed::Partial)
        );
        assert_eq!(parse(b"", &limits), Ok(Parsed::Partial));
    }

    #[test]
    fn limits_and_bad_framing_get_their_statuses() {
        let limits = Limits::default();
        let big_head = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
        assert_eq!(refused(big_head.as_bytes(), &limits), 431);
        let unfinished = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(9000));
        assert_eq!(refused(unfinished.as_bytes(), &limits), 431);
        let many: String = (0..40).map(|i| format!("H{i}: v\r\n")).collect();
        assert_eq!(
            refused(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes(), &limits),
            431
        );
        let long_uri = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(2000));
        assert_eq!(refused(long_uri.as_bytes(), &limits), 414);
        assert_eq!(
            refused(b"POST / HTTP/1.1\r\nContent-Length: 99999\r\n\r\n", &limits),
            413
        );
        assert_eq!(
            refused(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", &limits),
            400
        );
        assert_eq!(
            refused(b"POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", &limits),
            400
        );
        assert_eq!(
            refused(
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy",
                &limits
            ),
            400
        );
        assert_eq!(
            refused(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                &limits
            ),
            501
        );
        assert_eq!(refused(b"\x00\x01garbage\r\n\r\n", &limits), 400);
        assert_eq!(refused(b"GET / HTTP/2.0\r\n\r\n", &limits), 505);
    }

    #[test]
    fn responses_encode_with_length_and_connection() {
        let mut out = BytesMut::new();
        Response::error(404, "stock not found").encode(&mut out, Framing::CLOSE);
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("Content-Type: application/json\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        let body = r#"{"error":{"code":404,"message":"stock not found"}}"#;
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(text.ends_with(&format!("Connection: close\r\n\r\n{body}")));
        let date = text
            .lines()
            .find_map(|l| l.strip_prefix("Date: "))
            .expect("no Date");
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
        let mut with_allow = BytesMut::new();
        let not_allowed = Response {
            allow: Some("GET, HEAD"),
            ..Response::error(405, "method not allowed")
        };
        not_allowed.encode(
            &mut with_allow,
            Framing {
                connection: Connection::KeepAlive,
                version: Version::Http11,
                body: Body::Full,
            },
        );
        assert!(String::from_utf8_lossy(&with_allow).contains("\r\nAllow: GET, HEAD\r\n"));
    }

    fn encoded(response: &Response, framing: Framing) -> String {
        let mut out = BytesMut::new();
        response.encode(&mut out, framing);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn framing_follows_the_request() {
        let (get, _) = complete("GET / HTTP/1.1\r\n\r\n");
        let kept = Framing::answering(&get);
        assert_eq!(
            kept,
            Framing {
                connection: Connection::KeepAlive,
                version: Version::Http11,
                body: Body::Full,
            }
        );
        let answer = Response::json(200, "{}");
        let text = encoded(&answer, kept);
        assert!(!text.contains("Connection:"), "{text}");
        assert!(text.ends_with("\r\n\r\n{}"), "{text}");

        let (old, _) = complete("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let text = encoded(&answer, Framing::answering(&old));
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(
            text.ends_with("\r\nConnection: keep-alive\r\n\r\n{}"),
            "{text}"
        );
        let (old_closed, _) = complete("GET / HTTP/1.0\r\n\r\n");
        let text = encoded(&answer, Framing::answering(&old_closed));
        assert!(text.ends_with("\r\nConnection: close\r\n\r\n{}"), "{text}");

        let (head, _) = complete("HEAD / HTTP/1.1\r\n\r\n");
        assert_eq!(Framing::answering(&head).body, Body::HeadOnly);
        let text = encoded(&answer, Framing::answering(&head));
        assert!(text.contains("\r\nContent-Length: 2\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }

    #[test]
    fn html_pages_say_so() {
        let page = Response::html(200, "<h1>cluster</h1>");
        assert_eq!(page.content_type, "text/html; charset=utf-8");
        let text = encoded(&page, Framing::CLOSE);
        assert!(
            text.contains("\r\nContent-Type: text/html; charset=utf-8\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nContent-Length: 16\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n<h1>cluster</h1>"), "{text}");
    }

    #[test]
    fn any_content_type_is_sent_as_given() {
        let prometheus = "text/plain; version=0.0.4";
        let text = encoded(
            &Response::with_content_type(200, prometheus, "up 1\n"),
            Framing::CLOSE,
        );
        assert!(
            text.contains("\r\nContent-Type: text/plain; version=0.0.4\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\nup 1\n"), "{text}");
        let openmetrics = "application/openmetrics-text; version=1.0.0; charset=utf-8";
        let metrics = Response::with_content_type(200, openmetrics, "# EOF\n");
        assert_eq!((metrics.status, metrics.content_type), (200, openmetrics));
        assert_eq!(metrics.allow, None);
        assert_eq!(&metrics.body[..], b"# EOF\n");
    }

    #[test]
    fn a_long_target_is_414_before_the_head_limit_and_expectations_are_checked() {
        let limits = Limits::default();
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(20_000));
        assert_eq!(refused(long.as_bytes(), &limits), 414);
        // Still arriving, already too long.
        assert_eq!(refused(&long.as_bytes()[..3_000], &limits), 414);
        assert_eq!(
            refused(
                b"POST / HTTP/1.1\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\n",
                &limits
            ),
            417
        );
        let head = b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(parse(head, &limits), Ok(Parsed::AwaitingBody));
        let mut some_body = head.to_vec();
        some_body.push(b'x');
        assert_eq!(parse(&some_body, &limits), Ok(Parsed::Partial));
        // HTTP/1.0 ignores expectations.
        let old = b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(parse(old, &limits), Ok(Parsed::Partial));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes, &Limits::default());
        }

        #[test]
        fn a_request_split_anywhere_parses_the_same(split in 0usize..60) {
            let whole = b"POST /orders HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
            let split = split.min(whole.len());
            let first = parse(&whole[..split], &Limits::default()).unwrap();
            if split < whole.len() {
                prop_assert_eq!(first, Parsed::Partial);
            }
            let (request, used) = complete(std::str::from_utf8(whole).unwrap());
            prop_assert_eq!(used, whole.len());
            prop_assert_eq!(&request.body[..], b"hello");
        }
    }
}
