//! A small HTTP/1.1 client over one persistent keep-alive connection: what a session uses.
//! It reconnects when the server closed the connection between requests.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for one answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer accepted.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// One answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body, as text.
    pub body: String,
    /// Whether the server closes the connection after it.
    pub closes: bool,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {}", self.body))
    }
}

/// A keep-alive session with the front end.
pub struct Session {
    addr: String,
    stream: Option<TcpStream>,
    buffer: Vec<u8>,
}

impl Session {
    /// A session with the server at `addr`; connects on first use.
    pub fn new(addr: String) -> Self {
        Session {
            addr,
            stream: None,
            buffer: Vec::with_capacity(4096),
        }
    }

    /// Sends one request and reads its answer. A connection error is returned as such: the
    /// caller decides whether repeating the request is safe.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        if let Some(key) = idempotency_key {
            request.push_str(&format!("Idempotency-Key: {key}\r\n"));
        }
        if let Some(body) = body {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        } else {
            request.push_str("\r\n");
        }
        if self.stream.is_none() {
            let stream = TcpStream::connect(&self.addr)
                .await
                .with_context(|| format!("cannot connect to {}", self.addr))?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
            self.buffer.clear();
        }
        let result = tokio::time::timeout(ANSWER_TIMEOUT, self.exchange(request.as_bytes())).await;
        let answer = match result {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                self.stream = None;
                return Err(e);
            }
            Err(_) => {
                self.stream = None;
                bail!("no answer within {ANSWER_TIMEOUT:?}");
            }
        };
        if answer.closes {
            self.stream = None;
        }
        Ok(answer)
    }

    async fn exchange(&mut self, request: &[u8]) -> anyhow::Result<Answer> {
        let Some(stream) = self.stream.as_mut() else {
            bail!("not connected");
        };
        stream.write_all(request).await?;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = response.parse(&self.buffer)? {
                let mut length = 0usize;
                let mut closes = false;
                for header in response.headers.iter() {
                    if header.name.eq_ignore_ascii_case("content-length") {
                        length = std::str::from_utf8(header.value)?.trim().parse()?;
                    } else if header.name.eq_ignore_ascii_case("connection") {
                        closes = header.value.eq_ignore_ascii_case(b"close");
                    }
                }
                if head + length > MAX_ANSWER_BYTES {
                    bail!("answer larger than {MAX_ANSWER_BYTES} bytes");
                }
                if self.buffer.len() >= head + length {
                    let status = response.code.unwrap_or(0);
                    let body =
                        String::from_utf8_lossy(&self.buffer[head..head + length]).into_owned();
                    self.buffer.drain(..head + length);
                    return Ok(Answer {
                        status,
                        body,
                        closes,
                    });
                }
            }
            let mut chunk = [0u8; 8192];
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                bail!("server closed the connection");
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }
}
