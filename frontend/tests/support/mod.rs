//! A front end started in-process over a testkit cluster, and a raw HTTP/1.1 client that
//! shows exactly what went over the socket.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use frontend::FrontendConfig;
use testkit::{eventually, fast_client, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct Frontend {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), frontend::Error>>,
}

impl Frontend {
    pub async fn start(cluster: &Cluster, configure: impl FnOnce(&mut FrontendConfig)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = FrontendConfig::new(cluster.catalog.addr.clone(), cluster.addrs.clone());
        config.client = fast_client("frontend");
        config.health_interval = Duration::from_millis(100);
        configure(&mut config);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(frontend::run(listener, config, shutdown.clone()));
        let frontend = Frontend {
            addr,
            shutdown,
            task,
        };
        eventually(
            "the front end to be healthy",
            Duration::from_secs(20),
            || async { (get(addr, "/health").await.status == 200).then_some(()) },
        )
        .await;
        frontend
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// One client connection, read response by response.
pub struct Conn {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Self {
        Conn {
            stream: TcpStream::connect(addr).await.unwrap(),
            buffer: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next response; `None` if the server closed the connection first.
    pub async fn read(&mut self) -> Option<Reply> {
        self.read_within(Duration::from_secs(10))
            .await
            .expect("no response within 10 s")
    }

    /// The next response, or `Err` if none arrived within `limit`.
    pub async fn read_within(&mut self, limit: Duration) -> Result<Option<Reply>, ()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(head)) = response.parse(&self.buffer) {
                let headers: Vec<(String, String)> = response
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let length: usize = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.parse().unwrap())
                    .expect("no Content-Length");
                if self.buffer.len() >= head + length {
                    let reply = Reply {
                        status: response.code.unwrap(),
                        headers,
                        body: String::from_utf8_lossy(&self.buffer[head..head + length])
                            .into_owned(),
                    };
                    self.buffer.drain(..head + length);
                    return Ok(Some(reply));
                }
            }
            let mut chunk = [0u8; 4096];
            let Ok(read) = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await
            else {
                return Err(());
            };
            match read {
                Ok(0) | Err(_) => return Ok(None),
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The head of the next answer, which has no body (the answer to HEAD).
    pub async fn read_head(&mut self) -> Reply {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(head)) = response.parse(&self.buffer) {
                let reply = Reply {
                    status: response.code.unwrap(),
                    headers: response
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_owned(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                    body: String::new(),
                };
                self.buffer.drain(..head);
                return reply;
            }
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
                .await
                .expect("no answer within 10 s")
                .unwrap();
            assert!(read > 0, "closed before an answer");
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }

    /// Asserts that the server closes the connection (within `limit`).
    pub async fn expect_closed(&mut self, limit: Duration) {
        let mut chunk = [0u8; 1024];
        let closed = tokio::time::timeout(limit, async {
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the server kept the connection open");
    }
}

pub fn request(method: &str, path: &str, body: Option<&str>, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    for (name, value) in extra {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        text.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    text.push_str("\r\n");
    text.push_str(body.unwrap_or(""));
    text.into_bytes()
}

pub async fn call(addr: SocketAddr, bytes: &[u8]) -> Reply {
    let mut conn = Conn::open(addr).await;
    conn.send(bytes).await;
    conn.read()
        .await
        .expect("connection closed without a response")
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    call(addr, &request("GET", path, None, &[])).await
}

pub async fn post(addr: SocketAddr, path: &str, body: &str) -> Reply {
    call(addr, &request("POST", path, Some(body), &[])).await
}

pub fn trade_body(name: &str, quantity: i64, kind: &str) -> String {
    format!(r#"{{"name":"{name}","quantity":{quantity},"type":"{kind}"}}"#)
}
