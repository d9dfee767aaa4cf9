//! Failover through the front end: the order leader stopped in the middle of concurrent
//! trades costs no client an error and duplicates nothing; a replica that lacks an order the
//! front end acknowledged is never elected.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::wire::StockName;
use support::*;
use testkit::{eventually, Cluster, WriteQuorum};

async fn elections(addr: std::net::SocketAddr) -> u64 {
    get(addr, "/metrics")
        .await
        .body
        .lines()
        .find_map(|l| l.strip_prefix("bazaar_order_elections_total "))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

async fn leader_of(addr: std::net::SocketAddr) -> u32 {
    get(addr, "/health").await.json()["data"]["leader"]
        .as_u64()
        .unwrap() as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_leader_mid_load_gives_no_client_an_error() {
    let mut cluster = Cluster::start(WriteQuorum::All).await;
    let frontend = Frontend::start(&cluster, |_| {}).await;
    let addr = frontend.addr;
    let leader = leader_of(addr).await;

    let sessions: Vec<_> = (0..6)
        .map(|session| {
            tokio::spawn(async move {
                let mut conn = Conn::open(addr).await;
                let mut numbers = Vec::new();
                for i in 0..60 {
                    let kind = if (session + i) % 3 == 0 {
                        "sell"
                    } else {
                        "buy"
                    };
                    let body = trade_body("MenhirCo", 1 + (i % 3) as i64, kind);
                    conn.send(&request("POST", "/orders", Some(&body), &[]))
                        .await;
                    let reply = conn.read().await.expect("connection dropped");
                    assert_eq!(
                        reply.status, 200,
                        "session {session} trade {i}: {}",
                        reply.body
                    );
                    numbers.push(reply.json()["data"]["transaction_number"].as_u64().unwrap());
                }
                numbers
            })
        })
        .collect();
    // Stop the leader once trading is under way.
    eventually("trades to flow", Duration::from_secs(20), || async {
        let page = get(addr, "/metrics").await.body;
        let done: u64 = page
            .lines()
            .find_map(|l| {
                l.strip_prefix("bazaar_http_requests_total{route=\"trade\",status=\"200\"} ")
            })
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        (done >= 40).then_some(())
    })
    .await;
    cluster.stop(leader).await;
    let mut numbers = BTreeSet::new();
    for session in sessions {
        for number in session.await.unwrap() {
            assert!(
                numbers.insert(number),
                "transaction number {number} given twice"
            );
        }
    }
    assert_eq!(numbers.len(), 360);
    let new_leader = leader_of(addr).await;
    assert_ne!(new_leader, leader);
    let page = get(addr, "/metrics").await.body;
    assert!(page.contains("bazaar_order_failovers_total 1"), "{page}");

    // Every acknowledged number is the new leader's, and the catalog traded each order once.
    let log = cluster.log(new_leader);
    assert_eq!(
        log.len(),
        360,
        "the log has other orders than the acknowledged ones"
    );
    assert_eq!(
        log.iter().map(|e| e.number).collect::<BTreeSet<_>>(),
        numbers
    );
    let initial = BTreeMap::from([(StockName::new("MenhirCo").unwrap(), 100_000)]);
    let expected = order::audit::expected_stock(&initial, &log).unwrap();
    let quote = cluster
        .catalog
        .client
        .lookup(&StockName::new("MenhirCo").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (quote.quantity, quote.volume),
        expected[&StockName::new("MenhirCo").unwrap()]
    );

    // The old leader comes back as a follower and ends identical.
    cluster.restart(leader).await;
    eventually(
        "the old leader to catch up",
        Duration::from_secs(20),
        || async { (cluster.log(leader) == log).then_some(()) },
    )
    .await;
    frontend.stop().await;
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_lacking_an_acknowledged_order_is_not_elected() {
    let mut cluster = Cluster::start(WriteQuorum::All).await;
    let frontend = Frontend::start(&cluster, |config| {
        config.failover_deadline = Duration::from_millis(800);
    })
    .await;
    let addr = frontend.addr;
    let leader = leader_of(addr).await;
    let ids: Vec<u32> = (1..=3).filter(|&id| id != leader).collect();
    let (left_behind, survivor) = (ids[0], ids[1]);

    cluster.stop(left_behind).await;
    let mut last = 0;
    for _ in 0..5 {
        let reply = post(addr, "/orders", &trade_body("QuillWorks", 1, "buy")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        last = reply.json()["data"]["transaction_number"].as_u64().unwrap();
    }
    cluster.stop(leader).await;
    cluster.stop(survivor).await;
    cluster.restart(left_behind).await;

    // Only the replica without the acknowledged orders is up: no leader, no answers.
    let refused = post(addr, "/orders", &trade_body("QuillWorks", 1, "buy")).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(get(addr, "/health").await.status, 503);
    assert_ne!(
        cluster.status(left_behind).await.role,
        common::wire::Role::Leader
    );
    // Many requests failing at once share elections instead of each running its own.
    let before = elections(addr).await;
    let storm: Vec<_> = (0..50)
        .map(|_| tokio::spawn(async move { get(addr, "/orders/0").await.status }))
        .collect();
    for request in storm {
        assert_eq!(request.await.unwrap(), 503);
    }
    let ran = elections(addr).await - before;
    assert!(
        ran < 40,
        "{ran} elections for 50 requests within one deadline"
    );

    // A replica that holds them returns: it leads, and the orders are all there.
    cluster.restart(survivor).await;
    eventually("a leader again", Duration::from_secs(20), || async {
        (get(addr, "/health").await.status == 200).then_some(())
    })
    .await;
    assert_eq!(leader_of(addr).await, survivor);
    let order = get(addr, &format!("/orders/{last}")).await;
    assert_eq!(order.status, 200, "{}", order.body);
    frontend.stop().await;
    cluster.stop_all().await;
}
