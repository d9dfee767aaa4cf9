//! HTTP/1.1 conformance of the front end over raw sockets: keep-alive and close semantics,
//! pipelining, every limit, slow and idle clients, garbage, requests split into tiny writes,
//! and the connection cap. A bad request never touches another session.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::Duration;

use support::*;
use testkit::{Cluster, WriteQuorum};

const LOOKUP: &[u8] = b"GET /stocks/GameStart HTTP/1.1\r\nHost: t\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_close_and_pipelining() {
    let cluster = Cluster::start(WriteQuorum::All).await;
    let frontend = Frontend::start(&cluster, |_| {}).await;
    let addr = frontend.addr;

    // Keep-alive by default: three requests on one connection, one after another.
    let mut conn = Conn::open(addr).await;
    for _ in 0..3 {
        conn.send(LOOKUP).await;
        let reply = conn.read().await.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("Connection"), None);
    }

    // Pipelined in one write: answered in order.
    let mut batch = Vec::new();
    batch.extend_from_slice(LOOKUP);
    batch.extend_from_slice(b"GET /stocks/NoSuchCo HTTP/1.1\r\n\r\n");
    batch.extend_from_slice(&request(
        "POST",
        "/orders",
        Some(&trade_body("FishCo", 1, "buy")),
        &[],
    ));
    batch.extend_from_slice(b"GET /health HTTP/1.1\r\n\r\n");
    conn.send(&batch).await;
    let statuses: Vec<u16> = [
        conn.read().await.unwrap(),
        conn.read().await.unwrap(),
        conn.read().await.unwrap(),
        conn.read().await.unwrap(),
    ]
    .iter()
    .map(|r| r.status)
    .collect();
    assert_eq!(statuses, vec![200, 404, 200, 200]);

    // Connection: close is honoured.
    conn.send(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await;
    let reply = conn.read().await.unwrap();
    assert_eq!(reply.header("Connection"), Some("close"));
    conn.expect_closed(Duration::from_secs(5)).await;

    // HTTP/1.0 closes unless asked to keep alive.
    let mut old = Conn::open(addr).await;
    old.send(b"GET /health HTTP/1.0\r\n\r\n").await;
    assert_eq!(old.read().await.unwrap().status, 200);
    old.expect_closed(Duration::from_secs(5)).await;
    let mut kept = Conn::open(addr).await;
    kept.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await;
    assert_eq!(
        kept.read().await.unwrap().header("Connection"),
        Some("keep-alive")
    );
    kept.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await;
    assert_eq!(kept.read().await.unwrap().status, 200);

    // HEAD: the headers of the GET answer, no body; the connection stays in step.
    let mut head = Conn::open(addr).await;
    head.send(b"HEAD /stocks/GameStart HTTP/1.1\r\n\r\nGET /health HTTP/1.1\r\n\r\n")
        .await;
    let (headers_only, next) = (head.read_head().await, head.read().await.unwrap());
    assert_eq!(headers_only.status, 200);
    assert!(headers_only.header("Content-Length").unwrap() != "0");
    assert_eq!(next.status, 200);
    assert!(next.body.contains("\"status\":\"ok\""), "{}", next.body);

    // Many pipelined requests with large answers: all answered, in order.
    let many = b"GET /metrics HTTP/1.1\r\n\r\n".repeat(200);
    let mut metrics = Conn::open(addr).await;
    metrics.send(&many).await;
    for _ in 0..200 {
        assert_eq!(metrics.read().await.unwrap().status, 200);
    }

    // A request dribbled one byte at a time.
    let mut slow = Conn::open(addr).await;
    let body = trade_body("FishCo", 2, "sell");
    for byte in request("POST", "/orders", Some(&body), &[]) {
        slow.send(&[byte]).await;
    }
    assert_eq!(slow.read().await.unwrap().status, 200);

    frontend.stop().await;
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_garbage_get_their_status_and_close_only_their_connection() {
    let cluster = Cluster::start(WriteQuorum::All).await;
    let frontend = Frontend::start(&cluster, |_| {}).await;
    let addr = frontend.addr;

    // A healthy session open throughout.
    let mut bystander = Conn::open(addr).await;
    bystander.send(LOOKUP).await;
    assert_eq!(bystander.read().await.unwrap().status, 200);

    let huge_header = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(10_000));
    let many_headers: String = (0..40).map(|i| format!("X-{i}: v\r\n")).collect();
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (huge_header.into_bytes(), 431),
        (
            format!("GET / HTTP/1.1\r\n{many_headers}\r\n").into_bytes(),
            431,
        ),
        (
            format!("GET /{} HTTP/1.1\r\n\r\n", "x".repeat(2_000)).into_bytes(),
            414,
        ),
        // Longer than the head limit too: the request line's own limit speaks first.
        (
            format!("GET /{} HTTP/1.1\r\n\r\n", "x".repeat(20_000)).into_bytes(),
            414,
        ),
        (
            format!("GET /{} HTTP/1.1\r\nHost: t", "x".repeat(20_000)).into_bytes(),
            414,
        ),
        (
            b"POST /orders HTTP/1.1\r\nContent-Length: 2\r\nExpect: the-moon\r\n\r\n".to_vec(),
            417,
        ),
        (
            b"POST /orders HTTP/1.1\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n"
                .to_vec(),
            413,
        ),
        (
            b"POST /orders HTTP/1.1\r\nContent-Length: 100000\r\n\r\n".to_vec(),
            413,
        ),
        (
            b"POST /orders HTTP/1.1\r\nContent-Length: abc\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"POST /orders HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_vec(),
            400,
        ),
        (
            b"POST /orders HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            501,
        ),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n".to_vec(),
            400,
        ),
        (b"GET / HTTP/3.0\r\n\r\n".to_vec(), 505),
    ];
    for (bytes, status) in cases {
        let mut conn = Conn::open(addr).await;
        conn.send(&bytes).await;
        let reply = conn.read().await.expect("no answer to a bad request");
        assert_eq!(
            reply.status,
            status,
            "{}",
            String::from_utf8_lossy(&bytes[..40.min(bytes.len())])
        );
        assert_eq!(reply.json()["error"]["code"], status);
        assert_eq!(reply.header("Connection"), Some("close"));
        assert_recent_date(&reply);
        conn.expect_closed(Duration::from_secs(5)).await;
    }

    // The bystander never noticed.
    bystander.send(LOOKUP).await;
    assert_eq!(bystander.read().await.unwrap().status, 200);
    frontend.stop().await;
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_timed_out() {
    let cluster = Cluster::start(WriteQuorum::All).await;
    let frontend = Frontend::start(&cluster, |config| {
        config.http.request_timeout = Duration::from_millis(300);
        config.http.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let addr = frontend.addr;

    // Half a head, then silence: 408 and closed.
    let mut slow = Conn::open(addr).await;
    slow.send(b"GET /stocks/GameSt").await;
    let reply = slow.read().await.expect("no 408");
    assert_eq!(reply.status, 408);
    slow.expect_closed(Duration::from_secs(5)).await;

    // Connected and silent: the same.
    let mut silent = Conn::open(addr).await;
    assert_eq!(silent.read().await.expect("no 408").status, 408);
    silent.expect_closed(Duration::from_secs(5)).await;

    // Idle after a request: closed without a word.
    let mut idle = Conn::open(addr).await;
    idle.send(LOOKUP).await;
    assert_eq!(idle.read().await.unwrap().status, 200);
    assert_eq!(idle.read().await, None, "an idle connection was kept");

    frontend.stop().await;
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let cluster = Cluster::start(WriteQuorum::All).await;
    // The readiness probe's own connection is closed by the time `start` returns.
    let frontend = Frontend::start(&cluster, |config| config.http.max_connections = 2).await;
    let addr = frontend.addr;
    let mut first = Conn::open(addr).await;
    first.send(b"GET /health HTTP/1.1\r\n\r\n").await;
    assert_eq!(first.read().await.unwrap().status, 200);
    let mut second = Conn::open(addr).await;
    second.send(b"GET /health HTTP/1.1\r\n\r\n").await;
    assert_eq!(second.read().await.unwrap().status, 200);

    let mut third = Conn::open(addr).await;
    third.send(b"GET /health HTTP/1.1\r\n\r\n").await;
    assert!(
        third.read_within(Duration::from_millis(300)).await.is_err(),
        "a third connection was served beyond the cap of two"
    );
    drop(first);
    let reply = third
        .read()
        .await
        .expect("the waiting connection was never served");
    assert_eq!(reply.status, 200);
    frontend.stop().await;
    cluster.stop_all().await;
}

/// A `Date` header within a few seconds of now, in the RFC 9110 format.
fn assert_recent_date(reply: &Reply) {
    let date = reply.header("Date").expect("no Date header");
    let when = httpdate::parse_http_date(date).unwrap_or_else(|e| panic!("{date:?}: {e}"));
    let now = std::time::SystemTime::now();
    let skew = now.duration_since(when).unwrap_or_else(|e| e.duration());
    assert!(skew < Duration::from_secs(5), "Date {date} is {skew:?} off");
    assert!(date.ends_with(" GMT") && date.len() == 29, "{date:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dates_allow_and_expect_continue_follow_rfc_9110() {
    let cluster = Cluster::start(WriteQuorum::All).await;
    cluster.elect(3).await;
    let frontend = Frontend::start(&cluster, |_| {}).await;
    let addr = frontend.addr;

    // Date on answers of every kind.
    for path in ["/stocks/GameStart", "/stocks/Nope", "/health", "/metrics"] {
        assert_recent_date(&get(addr, path).await);
    }

    // 405 names what the resource allows.
    for (method, path, allow) in [
        ("POST", "/stocks/GameStart", "GET, HEAD"),
        ("DELETE", "/health", "GET, HEAD"),
        ("GET", "/orders", "POST"),
        ("PUT", "/orders/1", "GET, HEAD"),
    ] {
        let reply = call(addr, &request(method, path, None, &[])).await;
        assert_eq!(reply.status, 405, "{method} {path}");
        assert_eq!(reply.header("Allow"), Some(allow), "{method} {path}");
        assert_recent_date(&reply);
    }

    // Expect: 100-continue: the head is accepted before the body is sent.
    let body = trade_body("GameStart", 1, "buy");
    let mut conn = Conn::open(addr).await;
    conn.send(
        format!(
            "POST /orders HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    let interim = conn.read_head().await;
    assert_eq!(interim.status, 100);
    conn.send(body.as_bytes()).await;
    let placed = conn.read().await.unwrap();
    assert_eq!(placed.status, 200, "{}", placed.body);
    // The connection goes on; a request whose body comes with its head gets no 100.
    conn.send(
        format!(
            "POST /orders HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    let direct = conn.read().await.unwrap();
    assert_eq!(direct.status, 200, "{}", direct.body);

    frontend.stop().await;
    cluster.stop_all().await;
}
