//! The lookup cache through the real services: read-your-writes, invalidations pushed by the
//! catalog for trades made elsewhere, LRU replacement, and a broken invalidation stream.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::Duration;

use common::wire::TradeKind;
use support::*;
use testkit::{eventually, order, placed, Cluster, WriteQuorum};

fn metric(page: &str, name: &str) -> u64 {
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from {page}"))
}

async fn quantity(addr: std::net::SocketAddr, stock: &str) -> u64 {
    get(addr, &format!("/stocks/{stock}")).await.json()["data"]["quantity"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_follow_writes_and_invalidations_from_elsewhere() {
    let cluster = Cluster::start(WriteQuorum::All).await;
    let frontend = Frontend::start(&cluster, |_| {}).await;
    let addr = frontend.addr;

    assert_eq!(quantity(addr, "GameStart").await, 100_000);
    assert_eq!(quantity(addr, "GameStart").await, 100_000);
    let page = get(addr, "/metrics").await.body;
    assert_eq!(metric(&page, "bazaar_cache_hits_total"), 1);
    assert_eq!(metric(&page, "bazaar_cache_entries"), 1);

    // Our own trade: the very next lookup shows it.
    for i in 1..=5u64 {
        assert_eq!(
            post(addr, "/orders", &trade_body("GameStart", 2, "buy"))
                .await
                .status,
            200
        );
        assert_eq!(quantity(addr, "GameStart").await, 100_000 - 2 * i);
    }

    // A trade that bypasses this front end: the catalog's invalidation refreshes the cache.
    assert_eq!(quantity(addr, "StarCo").await, 100_000);
    let leader = get(addr, "/health").await.json()["data"]["leader"]
        .as_u64()
        .unwrap() as u32;
    placed(
        cluster
            .client(leader)
            .call(&order("elsewhere", "StarCo", 7, TradeKind::Buy))
            .await
            .unwrap(),
    );
    eventually("the invalidation", Duration::from_secs(10), || async {
        (quantity(addr, "StarCo").await == 99_993).then_some(())
    })
    .await;
    frontend.stop().await;
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_recently_used_stock_is_replaced() {
    let cluster = Cluster::start(WriteQuorum::All).await;
    let frontend = Frontend::start(&cluster, |config| config.cache_size = 2).await;
    let addr = frontend.addr;
    for stock in [
        "GameStart",
        "BoarCo",
        "GameStart",
        "FishCo",
        "GameStart",
        "BoarCo",
    ] {
        quantity(addr, stock).await;
    }
    // GameStart (hit), FishCo evicts BoarCo, GameStart (hit), BoarCo evicts FishCo.
    let page = get(addr, "/metrics").await.body;
    assert_eq!(metric(&page, "bazaar_cache_hits_total"), 2);
    assert_eq!(metric(&page, "bazaar_cache_misses_total"), 4);
    assert_eq!(metric(&page, "bazaar_cache_evictions_total"), 2);
    assert_eq!(metric(&page, "bazaar_cache_entries"), 2);

    let off = Frontend::start(&cluster, |config| config.cache_size = 0).await;
    quantity(off.addr, "GameStart").await;
    quantity(off.addr, "GameStart").await;
    let page = get(off.addr, "/metrics").await.body;
    assert_eq!(metric(&page, "bazaar_cache_hits_total"), 0);
    assert_eq!(metric(&page, "bazaar_cache_enabled"), 0);
    off.stop().await;
    frontend.stop().await;
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_invalidation_stream_empties_the_cache_until_it_is_back() {
    let mut cluster = Cluster::start(WriteQuorum::All).await;
    let frontend = Frontend::start(&cluster, |_| {}).await;
    let addr = frontend.addr;
    assert_eq!(quantity(addr, "IronLeaf").await, 100_000);

    cluster.catalog.stop().await;
    eventually(
        "the cache to be dropped",
        Duration::from_secs(10),
        || async {
            let page = get(addr, "/metrics").await.body;
            (metric(&page, "bazaar_cache_enabled") == 0).then_some(())
        },
    )
    .await;
    assert_eq!(
        metric(&get(addr, "/metrics").await.body, "bazaar_cache_entries"),
        0
    );
    assert_eq!(get(addr, "/health").await.status, 503);
    // No stale answer from the cache while the catalog is away: a lookup waits for it for
    // the failover deadline, then says it is unavailable.
    assert_eq!(get(addr, "/stocks/IronLeaf").await.status, 503);

    // A lookup asked while the catalog is away is answered once it is back.
    let waiting = tokio::spawn(async move { get(addr, "/stocks/IronLeaf").await });
    cluster.catalog.restart().await;
    let answer = waiting.await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    eventually("the stream to be back", Duration::from_secs(10), || async {
        (get(addr, "/health").await.status == 200).then_some(())
    })
    .await;
    assert_eq!(quantity(addr, "IronLeaf").await, 100_000);
    assert_eq!(
        metric(&get(addr, "/metrics").await.body, "bazaar_cache_enabled"),
        1
    );
    frontend.stop().await;
    cluster.stop_all().await;
}
