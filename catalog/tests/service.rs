//! The catalog started in-process on port 0 and used over real sockets: lookups, trades and
//! their refusals, exactly-once request ids (also across a restart), and invalidations.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;
use support::{elect_stand_in, Receipt};

use std::path::{Path, PathBuf};
use std::time::Duration;

use catalog::CatalogConfig;
use clients::CatalogClient;
use common::rpc::ClientConfig;
use common::wire::{
    CatalogResponse, RequestId, StockName, TradeKind, TradeReceipt, TradeRejection, TradeRequest,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn seed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/catalog.csv")
}

struct Running {
    addr: String,
    client: CatalogClient,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<durability::storage::Ended, catalog::Error>>,
}

impl Running {
    fn client_addr(&self) -> String {
        self.addr.clone()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

async fn start(state: &Path, configure: impl FnOnce(&mut CatalogConfig)) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = CatalogConfig::new(state, seed());
    configure(&mut config);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(catalog::run(listener, config, shutdown.clone()));
    let client = CatalogClient::new(addr.to_string(), ClientConfig::new("test"));
    elect_stand_in(&client).await;
    Running {
        addr: addr.to_string(),
        client,
        shutdown,
        task,
    }
}

fn name(s: &str) -> StockName {
    StockName::new(s).unwrap()
}

fn trade(id: &str, stock: &str, quantity: i64, kind: TradeKind) -> TradeRequest {
    TradeRequest {
        request_id: RequestId::new(id).unwrap(),
        name: name(stock),
        quantity,
        kind,
    }
}

#[tokio::test]
async fn lookups_trades_and_refusals() {
    let state = tempfile::tempdir().unwrap();
    let catalog = start(state.path(), |_| {}).await;
    let client = &catalog.client;

    let quote = client.lookup(&name("GameStart")).await.unwrap().unwrap();
    assert_eq!(
        (quote.price, quote.quantity, quote.volume, quote.version),
        (15.99, 100_000, 0, 0)
    );
    assert_eq!(client.lookup(&name("NoSuchCo")).await.unwrap(), None);
    assert_eq!(client.lookup(&name("gamestart")).await.unwrap(), None);

    let bought = client
        .trade(1, &trade("t1", "GameStart", 40, TradeKind::Buy))
        .await
        .unwrap()
        .receipt();
    assert_eq!(
        bought,
        Ok(TradeReceipt {
            quantity: 99_960,
            volume: 40,
            version: 1
        })
    );
    let sold = client
        .trade(1, &trade("t2", "GameStart", 15, TradeKind::Sell))
        .await
        .unwrap()
        .receipt()
        .unwrap();
    assert_eq!((sold.quantity, sold.volume, sold.version), (99_975, 55, 2));

    let refusals = [
        (
            trade("t3", "GameStart", 99_976, TradeKind::Buy),
            TradeRejection::NotEnoughStock { available: 99_975 },
        ),
        (
            trade("t4", "NoSuchCo", 1, TradeKind::Buy),
            TradeRejection::StockNotFound,
        ),
        (
            trade("t5", "GameStart", 0, TradeKind::Buy),
            TradeRejection::InvalidQuantity,
        ),
        (
            trade("t6", "GameStart", -5, TradeKind::Sell),
            TradeRejection::InvalidQuantity,
        ),
    ];
    for (request, expected) in refusals {
        assert_eq!(
            client.trade(1, &request).await.unwrap().receipt(),
            Err(expected)
        );
    }
    let all = client
        .trade(1, &trade("t7", "GameStart", 99_975, TradeKind::Buy))
        .await
        .unwrap()
        .receipt()
        .unwrap();
    assert_eq!(all.quantity, 0);

    let quote = client.lookup(&name("GameStart")).await.unwrap().unwrap();
    assert_eq!(
        (quote.quantity, quote.volume, quote.version),
        (0, 99_975 + 55, 3)
    );
    catalog.stop().await;
}

#[tokio::test]
async fn a_request_id_is_applied_once_also_after_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let catalog = start(state.path(), |_| {}).await;
    let request = trade("same-id", "BoarCo", 7, TradeKind::Buy);
    let first = catalog
        .client
        .trade(1, &request)
        .await
        .unwrap()
        .receipt()
        .unwrap();
    let again = catalog
        .client
        .trade(1, &request)
        .await
        .unwrap()
        .receipt()
        .unwrap();
    assert_eq!(first, again);
    let reused = trade("same-id", "BoarCo", 8, TradeKind::Buy);
    assert_eq!(
        catalog.client.trade(1, &reused).await.unwrap().receipt(),
        Err(TradeRejection::RequestIdReused)
    );
    catalog.stop().await;

    let catalog = start(state.path(), |_| {}).await;
    assert_eq!(
        catalog
            .client
            .trade(1, &request)
            .await
            .unwrap()
            .receipt()
            .unwrap(),
        first
    );
    let quote = catalog
        .client
        .lookup(&name("BoarCo"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (quote.quantity, quote.volume, quote.version),
        (99_993, 7, 1)
    );
    catalog.stop().await;
}

#[tokio::test]
async fn concurrent_trades_conserve_stock_across_snapshots_and_restarts() {
    let state = tempfile::tempdir().unwrap();
    // Snapshot every 50 records, so the 400 trades below cross several snapshots.
    let catalog = start(state.path(), |c| c.snapshot_every = 50).await;
    let tasks = (0..8u64).map(|worker| {
        let client = catalog.client.clone();
        tokio::spawn(async move {
            for i in 0..50u64 {
                let kind = if (worker + i).is_multiple_of(3) {
                    TradeKind::Sell
                } else {
                    TradeKind::Buy
                };
                let request = trade(
                    &format!("w{worker}-{i}"),
                    "FishCo",
                    (i % 5 + 1) as i64,
                    kind,
                );
                client.trade(1, &request).await.unwrap().receipt().unwrap();
            }
        })
    });
    for task in tasks {
        task.await.unwrap();
    }
    let (mut bought, mut sold) = (0u64, 0u64);
    for worker in 0..8u64 {
        for i in 0..50u64 {
            let q = i % 5 + 1;
            if (worker + i).is_multiple_of(3) {
                sold += q
            } else {
                bought += q
            }
        }
    }
    let expect = |quote: Option<common::wire::StockQuote>| {
        let quote = quote.expect("FishCo missing");
        assert_eq!(quote.quantity, 100_000 - bought + sold);
        assert_eq!(quote.volume, bought + sold);
        assert_eq!(quote.version, 400);
    };
    expect(catalog.client.lookup(&name("FishCo")).await.unwrap());
    catalog.stop().await;

    let catalog = start(state.path(), |c| c.snapshot_every = 50).await;
    expect(catalog.client.lookup(&name("FishCo")).await.unwrap());
    // Ids from before the restart are still recognised.
    let replay = trade("w3-7", "FishCo", 3, TradeKind::Buy);
    assert!(catalog
        .client
        .trade(1, &replay)
        .await
        .unwrap()
        .receipt()
        .is_ok());
    expect(catalog.client.lookup(&name("FishCo")).await.unwrap());
    catalog.stop().await;
}

#[tokio::test]
async fn subscribers_see_every_change_before_its_trade_is_answered() {
    let state = tempfile::tempdir().unwrap();
    let catalog = start(state.path(), |_| {}).await;
    let (record, mut stream) = catalog.client.subscribe(true, 64).await.unwrap();
    assert_eq!(record.epoch, 1);
    // A separate connection for trades, as a front end would have.
    let trader = CatalogClient::new(catalog.client_addr(), ClientConfig::new("trader"));
    let mut seen = Vec::new();
    for i in 1..=5u64 {
        let receipt = trader
            .trade(1, &trade(&format!("s{i}"), "StarCo", 1, TradeKind::Buy))
            .await
            .unwrap()
            .receipt()
            .unwrap();
        assert_eq!(receipt.version, i);
        // The invalidation was queued before the answer; it arrives within a short deadline.
        loop {
            let message = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .expect("invalidation did not arrive")
                .expect("stream ended")
                .unwrap();
            match message {
                CatalogResponse::Heartbeat { .. } => continue,
                CatalogResponse::Invalidate { name: n, version } => {
                    assert_eq!(n, name("StarCo"));
                    seen.push(version);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(seen, vec![1, 2, 3, 4, 5]);

    // The stream ends when the catalog goes away, so a subscriber knows to drop its cache.
    catalog.stop().await;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "stream outlived the catalog");
}

#[tokio::test]
async fn a_second_catalog_on_the_same_state_is_refused() {
    let state = tempfile::tempdir().unwrap();
    let catalog = start(state.path(), |_| {}).await;
    catalog.client.lookup(&name("GameStart")).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second = catalog::run(
        listener,
        CatalogConfig::new(state.path(), seed()),
        CancellationToken::new(),
    )
    .await;
    assert!(
        matches!(second, Err(catalog::Error::Locked(_))),
        "{second:?}"
    );
    catalog.stop().await;
}

#[tokio::test]
async fn the_shipped_seed_file_is_never_written() {
    let before = std::fs::read(seed()).unwrap();
    let state = tempfile::tempdir().unwrap();
    let catalog = start(state.path(), |_| {}).await;
    catalog
        .client
        .trade(1, &trade("x", "GameStart", 1, TradeKind::Buy))
        .await
        .unwrap()
        .receipt()
        .unwrap();
    catalog.stop().await;
    assert_eq!(std::fs::read(seed()).unwrap(), before);
}

#[tokio::test]
async fn a_leader_that_serves_is_not_deposed_until_its_lease_runs_out() {
    let state = tempfile::tempdir().unwrap();
    let catalog = start(state.path(), |config| {
        config.leader_lease = Duration::from_millis(300);
    })
    .await;
    let client = &catalog.client;
    let timeout = Duration::from_secs(5);
    let elect = |leader| common::wire::LeadershipChange::Elect {
        leader,
        in_sync: vec![],
    };
    // Widen the stand-in's set, then let replica 1 renew its lease as a serving leader.
    let set = common::wire::LeadershipChange::SetInSync {
        leader: 1,
        in_sync: vec![1, 2],
    };
    assert!(matches!(
        client.change_leadership(1, set, timeout).await.unwrap(),
        clients::LeadershipOutcome::Changed(_)
    ));
    let renew = |serving| client.reconcile(1, &[], 10, serving);
    assert!(renew(true).await.unwrap().is_ok());
    match client
        .change_leadership(1, elect(2), timeout)
        .await
        .unwrap()
    {
        clients::LeadershipOutcome::Refused { current, reason } => {
            assert_eq!(current.epoch, 1);
            assert!(reason.contains("not deposed"), "{reason}");
        }
        other => panic!("a serving leader was deposed: {other:?}"),
    }
    // A leader that says it cannot serve does not renew: once the lease runs out, an
    // election goes through.
    assert!(renew(false).await.unwrap().is_ok());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let record = loop {
        match client
            .change_leadership(1, elect(2), timeout)
            .await
            .unwrap()
        {
            clients::LeadershipOutcome::Changed(record) => break record,
            clients::LeadershipOutcome::Refused { .. } => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the lease never ran out"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!((record.epoch, record.leader), (2, Some(2)));
    // The deposed epoch can neither trade nor renew.
    assert!(renew(true).await.unwrap().is_err());
    catalog.stop().await;
}
