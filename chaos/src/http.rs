//! A small HTTP/1.1 client over one keep-alive connection, with a deadline per request: what
//! each load worker and the checker use to talk to a front end. A connection that failed or
//! that the server closes is dropped and the next request dials again.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest answer accepted (the metrics page is the largest).
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The connection could not be made.
    #[error("connect to {addr}: {message}")]
    Connect {
        /// Where to.
        addr: String,
        /// Why not.
        message: String,
    },
    /// The connection failed or closed before the whole answer arrived (the request may or
    /// may not have been acted on).
    #[error("connection to {addr} failed: {message}")]
    Broken {
        /// Where to.
        addr: String,
        /// How.
        message: String,
    },
    /// No whole answer before the deadline.
    #[error("no answer from {addr} within {limit:?}")]
    Timeout {
        /// Where from.
        addr: String,
        /// The deadline.
        limit: Duration,
    },
    /// The answer was not HTTP this client understands.
    #[error("malformed answer from {addr}: {message}")]
    Malformed {
        /// Where from.
        addr: String,
        /// What was wrong.
        message: String,
    },
}

/// One answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body, as text.
    pub body: String,
}

impl Answer {
    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// `error.message` of a JSON error body, else the body itself.
    pub fn message(&self) -> String {
        self.json()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| self.body.clone())
    }
}

/// A keep-alive connection to one server.
#[derive(Debug)]
pub struct HttpClient {
    addr: String,
    stream: Option<TcpStream>,
    buffer: Vec<u8>,
}

impl HttpClient {
    /// A client of the server at `addr` (`host:port`); it dials on first use.
    pub fn new(addr: impl Into<String>) -> Self {
        HttpClient {
            addr: addr.into(),
            stream: None,
            buffer: Vec::with_capacity(4096),
        }
    }

    /// The server's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str, limit: Duration) -> Result<Answer, HttpError> {
        self.send("GET", path, &[], None, limit).await
    }

    /// Sends one request and reads its answer within `limit`, dialing included. On any
    /// error the connection is dropped.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
        limit: Duration,
    ) -> Result<Answer, HttpError> {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        match body {
            Some(body) => request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )),
            None => request.push_str("\r\n"),
        }
        match tokio::time::timeout(limit, self.exchange(request.as_bytes())).await {
            Ok(Ok((answer, closes))) => {
                if closes {
                    self.stream = None;
                }
                Ok(answer)
            }
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                Err(HttpError::Timeout {
                    addr: self.addr.clone(),
                    limit,
                })
            }
        }
    }

    fn broken(&self, message: impl ToString) -> HttpError {
        HttpError::Broken {
            addr: self.addr.clone(),
            message: message.to_string(),
        }
    }

    fn malformed(&self, message: impl ToString) -> HttpError {
        HttpError::Malformed {
            addr: self.addr.clone(),
            message: message.to_string(),
        }
    }

    async fn exchange(&mut self, request: &[u8]) -> Result<(Answer, bool), HttpError> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(&self.addr)
                .await
                .map_err(|e| HttpError::Connect {
                    addr: self.addr.clone(),
                    message: e.to_string(),
                })?;
            let _ = stream.set_nodelay(true);
            self.stream = Some(stream);
            self.buffer.clear();
        }
        let Some(mut stream) = self.stream.take() else {
            return Err(self.broken("not connected"));
        };
        let result = self.read_answer(&mut stream, request).await;
        self.stream = Some(stream);
        result
    }

    async fn read_answer(
        &mut self,
        stream: &mut TcpStream,
        request: &[u8],
    ) -> Result<(Answer, bool), HttpError> {
        stream
            .write_all(request)
            .await
            .map_err(|e| self.broken(e))?;
        // Bounded: every round reads at least one byte, and the buffer is capped.
        loop {
            if let Some(done) = self.parse()? {
                return Ok(done);
            }
            if self.buffer.len() > MAX_ANSWER_BYTES {
                return Err(self.malformed("answer too large"));
            }
            let mut chunk = [0u8; 16 * 1024];
            let read = stream.read(&mut chunk).await.map_err(|e| self.broken(e))?;
            if read == 0 {
                return Err(self.broken("server closed the connection"));
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }

    /// A whole answer from the buffer, if there is one.
    fn parse(&mut self) -> Result<Option<(Answer, bool)>, HttpError> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(&self.buffer) {
            Ok(httparse::Status::Complete(head)) => head,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(self.malformed(e)),
        };
        let mut length = 0usize;
        let mut closes = false;
        for header in response.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                length = std::str::from_utf8(header.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| self.malformed("bad Content-Length"))?;
            } else if header.name.eq_ignore_ascii_case("connection") {
                closes = header.value.eq_ignore_ascii_case(b"close");
            }
        }
        let status = response.code.unwrap_or(0);
        if head + length > MAX_ANSWER_BYTES {
            return Err(self.malformed("answer too large"));
        }
        if self.buffer.len() < head + length {
            return Ok(None);
        }
        let body = String::from_utf8_lossy(&self.buffer[head..head + length]).into_owned();
        self.buffer.drain(..head + length);
        Ok(Some((Answer { status, body }, closes)))
    }
}
