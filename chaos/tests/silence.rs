//! Silent peers, on the real binaries: a catalog that stops (SIGSTOP) without closing its
//! connections, and a front end that does the same. The front end must notice the silent
//! catalog within three heartbeats and stop serving cached lookups (the staleness bound in
//! README.md); the catalog must drop a silent subscriber within the same bound, instead of
//! waiting for TCP keepalive.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use chaos::cluster::{frontend_name, CATALOG};
use chaos::http::HttpClient;
use chaos::{poll, Cluster, ClusterOptions, WriteQuorum};

/// Three heartbeats of 200 ms, and slack for a loaded machine and the polling.
const BOUND: Duration = Duration::from_millis(1_000);
const LOOKUP: &str = "/stocks/GameStart";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_catalog_or_subscriber_is_noticed_within_the_heartbeat_bound() {
    let _serial = chaos::serial().await;
    let mut cluster = Cluster::start(ClusterOptions::new("silence", WriteQuorum::All).frontends(2))
        .await
        .unwrap();
    let addr = cluster.frontend_addr(0).unwrap();
    let mut client = HttpClient::new(addr.clone());
    // Cached now (the second lookup is a hit).
    for _ in 0..2 {
        let answer = client.get(LOOKUP, Duration::from_secs(5)).await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
    }

    // The catalog goes silent: its sockets stay open, nothing comes out.
    cluster.freeze(CATALOG).unwrap();
    let frozen = Instant::now();
    let noticed = poll(
        "the front end to notice the silent catalog",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            let answer = cluster.health_answer(0).await?;
            (answer.status == 503 && answer.body.contains("catalog unreachable"))
                .then(|| frozen.elapsed())
        },
    )
    .await
    .unwrap();
    assert!(
        noticed <= BOUND,
        "the silent catalog was noticed after {noticed:?} (bound {BOUND:?})"
    );
    // From now on the cache is not used: a lookup waits for the (frozen) catalog and fails,
    // rather than answer from what may be stale.
    let mut fresh = HttpClient::new(addr.clone());
    let after = fresh.get(LOOKUP, Duration::from_secs(8)).await;
    assert!(
        !matches!(&after, Ok(answer) if answer.status == 200),
        "a cached answer was served after the catalog went silent: {after:?}"
    );
    cluster.thaw(CATALOG).unwrap();
    cluster
        .wait_healthy(0, Duration::from_secs(20))
        .await
        .unwrap();
    cluster
        .wait_healthy(1, Duration::from_secs(20))
        .await
        .unwrap();

    // A subscriber goes silent: the catalog closes its subscription within the bound.
    let log = cluster.root().join(format!("{CATALOG}.stderr"));
    // Front ends introduce themselves as `frontend`; front end 0 keeps sending heartbeats.
    let marker = "peer=frontend";
    let dropped_before = count_drops(&log, marker);
    cluster.freeze(&frontend_name(1)).unwrap();
    let frozen = Instant::now();
    let dropped = poll(
        "the catalog to drop the silent subscriber",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async { (count_drops(&log, marker) > dropped_before).then(|| frozen.elapsed()) },
    )
    .await
    .unwrap();
    assert!(
        dropped <= BOUND,
        "the silent subscriber was dropped after {dropped:?} (bound {BOUND:?})"
    );
    cluster.thaw(&frontend_name(1)).unwrap();
    cluster
        .wait_healthy(1, Duration::from_secs(20))
        .await
        .unwrap();
    eprintln!(
        "silent catalog noticed after {noticed:?}; silent subscriber dropped after {dropped:?}"
    );
}

/// How many times the catalog's log says it closed the subscription of `marker`'s peer.
fn count_drops(log: &std::path::Path, marker: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("subscriber silent") && l.contains(marker))
        .count()
}
