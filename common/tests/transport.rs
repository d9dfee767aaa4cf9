//! The framed transport, hello, server and multiplexed client over real loopback sockets: bad
//! peers lose only their own connection, calls pair with their answers, deadlines and
//! reconnects behave.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::frame;
use common::rpc::{ClientConfig, RpcClient};
use common::server::{serve, RequestContext, ServerConfig, Service};
use common::wire::{Envelope, Hello, HelloReply, RemoteError, Reply};
use common::Error;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, Deserialize)]
enum TestRequest {
    Echo(u64),
    SleepThenEcho {
        millis: u64,
        value: u64,
    },
    Fail,
    /// Answers 0, then pushes 1, 2, 3... every 20 ms until the connection closes.
    Count,
}

struct TestService;

impl Service for TestService {
    type Request = TestRequest;
    type Response = u64;

    async fn call(&self, request: TestRequest, context: RequestContext) -> Reply<u64> {
        match request {
            TestRequest::Echo(value) => Ok(value),
            TestRequest::SleepThenEcho { millis, value } => {
                tokio::time::sleep(Duration::from_millis(millis)).await;
                Ok(value)
            }
            TestRequest::Fail => Err(RemoteError::bad_request("asked to fail")),
            TestRequest::Count => {
                let push = context.push();
                tokio::spawn(async move {
                    for n in 1u64.. {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        if !push.send(&n) {
                            return;
                        }
                    }
                });
                Ok(0)
            }
        }
    }
}

struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn server_config(token: Option<&str>) -> ServerConfig {
    ServerConfig {
        cluster_token: token.map(str::to_owned),
        max_frame_bytes: 64 * 1024,
        hello_timeout: Duration::from_millis(500),
        ..ServerConfig::new("test")
    }
}

async fn start_on(listener: TcpListener, token: Option<&str>) -> Running {
    start_with(listener, server_config(token)).await
}

async fn start_with(listener: TcpListener, config: ServerConfig) -> Running {
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(
        listener,
        Arc::new(TestService),
        config,
        shutdown.clone(),
    ));
    Running {
        addr,
        shutdown,
        task,
    }
}

async fn start(token: Option<&str>) -> Running {
    start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), token).await
}

fn client(addr: SocketAddr, token: Option<&str>) -> RpcClient<TestRequest, u64> {
    let config = ClientConfig {
        cluster_token: token.map(str::to_owned),
        call_timeout: Duration::from_secs(5),
        max_frame_bytes: 64 * 1024,
        ..ClientConfig::new("tester")
    };
    RpcClient::new(addr.to_string(), config)
}

/// Reads until the server closes the socket; fails if it stays open past the deadline.
async fn expect_closed(socket: &mut TcpStream) {
    expect_closed_within(socket, Duration::from_secs(5)).await;
}

async fn expect_closed_within(socket: &mut TcpStream, limit: Duration) {
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "server kept a bad connection open");
}

/// Sends `hello` as the first frame of a raw connection and reads the answer.
async fn send_hello(addr: SocketAddr, hello: Hello) -> (TcpStream, HelloReply) {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let frame = frame::encode(&Envelope { id: 0, body: hello }).unwrap();
    socket
        .write_all(&(frame.len() as u32).to_be_bytes())
        .await
        .unwrap();
    socket.write_all(&frame).await.unwrap();
    let mut len = [0u8; 4];
    socket.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    socket.read_exact(&mut body).await.unwrap();
    let reply: Envelope<HelloReply> = frame::decode(&body).unwrap();
    (socket, reply.body)
}

/// A raw connection past a successful hello.
async fn raw_hello(addr: SocketAddr) -> TcpStream {
    let (socket, reply) = send_hello(addr, Hello::new("raw", None)).await;
    assert!(matches!(reply, HelloReply::Welcome { .. }));
    socket
}

#[tokio::test]
async fn many_calls_in_flight_on_one_connection_pair_with_their_answers() {
    let server = start(None).await;
    let client = client(server.addr, None);
    let calls = (0..300u64).map(|value| {
        let client = client.clone();
        tokio::spawn(async move {
            // Later calls finish first, so answers come back out of order.
            let millis = (300 - value) % 17;
            let got = client
                .call(&TestRequest::SleepThenEcho { millis, value })
                .await
                .unwrap();
            assert_eq!(got, value);
        })
    });
    for call in calls {
        call.await.unwrap();
    }
    match client.call(&TestRequest::Fail).await {
        Err(Error::Remote(e)) => assert!(e.message.contains("asked to fail")),
        other => panic!("expected the peer's error, got {other:?}"),
    }
    server.shutdown.cancel();
    server.task.await.unwrap();
}

#[tokio::test]
async fn a_call_past_its_deadline_times_out_and_the_connection_stays_usable() {
    let server = start(None).await;
    let client = client(server.addr, None);
    let slow = TestRequest::SleepThenEcho {
        millis: 2_000,
        value: 1,
    };
    let outcome = client.call_within(&slow, Duration::from_millis(50)).await;
    assert!(matches!(outcome, Err(Error::TimedOut(_))), "{outcome:?}");
    assert_eq!(client.call(&TestRequest::Echo(7)).await.unwrap(), 7);
}

#[tokio::test]
async fn garbage_closes_only_that_connection() {
    let server = start(None).await;
    let good = client(server.addr, None);
    assert_eq!(good.call(&TestRequest::Echo(1)).await.unwrap(), 1);

    // Random bytes instead of a hello.
    let mut noise = TcpStream::connect(server.addr).await.unwrap();
    noise
        .write_all(&[0x00, 0x00, 0x00, 0x05, 0xc1, 0xff, 0x13, 0x37, 0x99])
        .await
        .unwrap();
    expect_closed(&mut noise).await;

    // A length prefix of 4 GiB after a good hello: refused at once, nothing allocated.
    let mut huge = raw_hello(server.addr).await;
    huge.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
        .await
        .unwrap();
    expect_closed(&mut huge).await;

    // A frame of the right length that is not a request.
    let mut undecodable = raw_hello(server.addr).await;
    undecodable
        .write_all(&[0, 0, 0, 3, 0xc1, 0xc1, 0xc1])
        .await
        .unwrap();
    expect_closed(&mut undecodable).await;

    // A frame cut off by the peer closing mid-frame.
    let mut truncated = raw_hello(server.addr).await;
    truncated.write_all(&[0, 0, 0, 100, 1, 2]).await.unwrap();
    truncated.shutdown().await.unwrap();
    expect_closed(&mut truncated).await;

    // A dialer that never says hello is dropped after the hello timeout.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    expect_closed(&mut silent).await;

    assert_eq!(good.call(&TestRequest::Echo(2)).await.unwrap(), 2);
}

#[tokio::test]
async fn a_wrong_cluster_token_or_version_is_refused_with_a_reason() {
    let server = start(Some("right")).await;
    match client(server.addr, Some("wrong"))
        .call(&TestRequest::Echo(1))
        .await
    {
        Err(Error::Refused(reason)) => assert!(reason.contains("token"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    match client(server.addr, None).call(&TestRequest::Echo(1)).await {
        Err(Error::Refused(reason)) => assert!(reason.contains("token"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        client(server.addr, Some("right"))
            .call(&TestRequest::Echo(3))
            .await
            .unwrap(),
        3
    );

    let future = Hello {
        version: 999,
        token: Some("right".into()),
        peer: "future".into(),
    };
    let (mut socket, reply) = send_hello(server.addr, future).await;
    match reply {
        HelloReply::Refused { reason } => assert!(reason.contains("version 999"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    expect_closed(&mut socket).await;
}

#[tokio::test]
async fn the_client_reports_a_dead_peer_and_reconnects_when_it_returns() {
    let server = start(None).await;
    let addr = server.addr;
    let client = client(addr, None);
    assert_eq!(client.call(&TestRequest::Echo(1)).await.unwrap(), 1);

    server.shutdown.cancel();
    server.task.await.unwrap();
    let outcome = client.call(&TestRequest::Echo(2)).await;
    assert!(
        matches!(outcome, Err(Error::Unavailable(_))),
        "expected unavailable, got {outcome:?}"
    );

    let again = start_on(TcpListener::bind(addr).await.unwrap(), None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match client.call(&TestRequest::Echo(3)).await {
            Ok(value) => {
                assert_eq!(value, 3);
                break;
            }
            Err(Error::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("client did not reconnect: {e}"),
        }
    }
    again.shutdown.cancel();
    again.task.await.unwrap();
}

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish() {
    let server = start(None).await;
    let client = client(server.addr, None);
    assert_eq!(client.call(&TestRequest::Echo(0)).await.unwrap(), 0);
    let slow = TestRequest::SleepThenEcho {
        millis: 300,
        value: 9,
    };
    // `join!` polls the slow call first, so it is queued on the connection before the echo;
    // once the echo is answered the server has read the slow request and is handling it.
    let (slow, ()) = tokio::join!(client.call(&slow), async {
        assert_eq!(client.call(&TestRequest::Echo(1)).await.unwrap(), 1);
        server.shutdown.cancel();
    });
    assert_eq!(slow.unwrap(), 9);
    server.task.await.unwrap();
}

async fn send_frame<T: Serialize>(socket: &mut TcpStream, message: &T) {
    let frame = frame::encode(message).unwrap();
    socket
        .write_all(&(frame.len() as u32).to_be_bytes())
        .await
        .unwrap();
    socket.write_all(&frame).await.unwrap();
}

const IDLE: Duration = Duration::from_millis(300);
const SILENCE: Duration = Duration::from_millis(300);

async fn start_bounded() -> Running {
    let config = ServerConfig {
        idle_timeout: IDLE,
        silence_limit: SILENCE,
        ..server_config(None)
    };
    start_with(TcpListener::bind("127.0.0.1:0").await.unwrap(), config).await
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_idle_limit_but_not_while_a_call_runs() {
    let server = start_bounded().await;
    let started = tokio::time::Instant::now();
    let mut silent = raw_hello(server.addr).await;
    expect_closed_within(&mut silent, Duration::from_secs(2)).await;
    assert!(started.elapsed() >= IDLE, "closed before the idle limit");

    // A call that takes longer than the idle limit keeps its connection.
    let slow = client(server.addr, None);
    let answer = slow
        .call(&TestRequest::SleepThenEcho {
            millis: 3 * IDLE.as_millis() as u64,
            value: 7,
        })
        .await
        .unwrap();
    assert_eq!(answer, 7);
}

#[tokio::test]
async fn a_client_drops_its_idle_connection_before_the_server_would() {
    let server = start_bounded().await;
    let config = ClientConfig {
        idle_timeout: IDLE,
        ..ClientConfig::new("tester")
    };
    let client = RpcClient::<TestRequest, u64>::new(server.addr.to_string(), config);
    // Calls spaced around the idle limit: each either reuses a fresh connection or dials a
    // new one; none may meet a connection the server is closing.
    for (i, pause) in [IDLE / 2, IDLE, IDLE + IDLE / 10, IDLE * 2]
        .into_iter()
        .enumerate()
    {
        assert_eq!(
            client.call(&TestRequest::Echo(i as u64)).await.unwrap(),
            i as u64
        );
        tokio::time::sleep(pause).await;
    }
    assert_eq!(client.call(&TestRequest::Echo(9)).await.unwrap(), 9);
}

#[tokio::test]
async fn a_silent_subscriber_is_dropped_and_one_that_heartbeats_is_kept() {
    let server = start_bounded().await;

    // A raw subscriber that never sends a heartbeat.
    let mut silent = raw_hello(server.addr).await;
    send_frame(
        &mut silent,
        &Envelope {
            id: 1,
            body: TestRequest::Count,
        },
    )
    .await;
    let started = tokio::time::Instant::now();
    expect_closed_within(&mut silent, Duration::from_secs(2)).await;
    assert!(
        started.elapsed() >= SILENCE,
        "closed before the silence limit"
    );

    // The client sends heartbeats while its stream is open: the stream outlives many
    // silence limits, with no gap in the pushes.
    let config = ClientConfig {
        heartbeat: SILENCE / 3,
        ..ClientConfig::new("tester")
    };
    let client = RpcClient::<TestRequest, u64>::new(server.addr.to_string(), config);
    let (first, mut stream) = client.subscribe(&TestRequest::Count, 64).await.unwrap();
    assert_eq!(first, 0);
    let until = tokio::time::Instant::now() + SILENCE * 5;
    let mut expected = 1;
    while tokio::time::Instant::now() < until {
        let pushed = tokio::time::timeout(Duration::from_secs(2), stream.recv())
            .await
            .expect("the stream went quiet")
            .expect("the server closed a subscriber that sent heartbeats")
            .unwrap();
        assert_eq!(pushed, expected);
        expected += 1;
    }
}
