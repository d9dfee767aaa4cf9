//! A flood of HTTP connections at a real front end, then quiet: its resident memory must come
//! back close to where it was before, instead of staying at the flood's high-water mark.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use chaos::cluster::frontend_name;
use chaos::{poll, Cluster, ClusterOptions, WriteQuorum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONNECTIONS: usize = 4_000;
const REQUEST: &[u8] = b"GET /health HTTP/1.1\r\nHost: flood\r\n\r\n";

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("no VmRSS");
    kib * 1024
}

/// This process and the front end it starts need a descriptor per connection.
fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let want = (CONNECTIONS as u64 + 512).min(hard);
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want, hard).unwrap();
    }
}

async fn ask(addr: &str) -> Option<TcpStream> {
    let mut socket = TcpStream::connect(addr).await.ok()?;
    socket.write_all(REQUEST).await.ok()?;
    let mut answer = [0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut answer))
        .await
        .ok()?
        .ok()?;
    (read > 0).then_some(socket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_memory_returns_after_a_connection_flood() {
    let _serial = chaos::serial().await;
    raise_descriptor_limit();
    let cluster = Cluster::start(ClusterOptions::new("flood", WriteQuorum::All))
        .await
        .unwrap();
    let pid = cluster.pid(&frontend_name(0)).unwrap();
    let addr = cluster.frontend_addr(0).unwrap();
    let idle = rss_bytes(pid);

    let mut open = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        open.push(
            ask(&addr)
                .await
                .expect("a flood connection was not answered"),
        );
    }
    let flooded = rss_bytes(pid);
    // The test means something only if the flood took memory.
    assert!(
        flooded > idle + (16 << 20),
        "the flood took little memory: {idle} -> {flooded} bytes"
    );
    drop(open);

    // Quiet but alive (a request per poll): back to within an eighth of the flood's growth.
    let target = idle + (flooded - idle) / 8;
    let settled = poll(
        "the front end's memory to come back after the flood",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            ask(&addr).await?;
            let now = rss_bytes(pid);
            (now <= target).then_some(now)
        },
    )
    .await;
    let last = rss_bytes(pid);
    let settled = settled.unwrap_or_else(|e| {
        panic!("{e}: idle {idle}, flooded {flooded}, still {last} bytes (target {target})")
    });
    eprintln!("idle {idle}, flooded {flooded}, settled {settled} bytes");
}
