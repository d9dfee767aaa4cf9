//! The catalog started in-process on port 0 and used over real sockets: lookups, trades and
//! their refusals, exactly-once request ids (also across a restart), and invalidations.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;
use support::{elect_stand_in, StandIn};

use std::path::{Path, PathBuf};
use std::time::Duration;

use catalog::CatalogConfig;
use clients::{Applied, CatalogClient};
use common::rpc::ClientConfig;
use common::wire::{
    ApplyItem, ApplyOutcome, ApplyStop, CatalogResponse, RequestId, StockName, StockQuote,
    TradeKind, TradeRejection, TradeRequest,
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

fn level(quote: Option<StockQuote>) -> (u64, u64, u64) {
    let quote = quote.expect("a stock");
    (quote.quantity, quote.volume, quote.version)
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

    let mut leader = StandIn::new(client.clone()).await;
    let stock = name("GameStart");
    let gamestart = || client.lookup(&stock);
    assert_eq!(
        leader
            .trade(&trade("t1", "GameStart", 40, TradeKind::Buy))
            .await,
        Ok(0)
    );
    assert_eq!(level(gamestart().await.unwrap()), (99_960, 40, 1));
    leader
        .trade(&trade("t2", "GameStart", 15, TradeKind::Sell))
        .await
        .unwrap();
    assert_eq!(level(gamestart().await.unwrap()), (99_975, 55, 2));

    // Refused by the catalog, durably, at the place the leader decided.
    assert_eq!(
        leader
            .trade(&trade("t3", "GameStart", 99_976, TradeKind::Buy))
            .await,
        Err(TradeRejection::NotEnoughStock { available: 99_975 })
    );
    // The catalog checks every entry as the leader decided it: one the stock cannot take is
    // not applied, and neither is anything after it.
    let too_big = StandIn::entry(2, &trade("t4", "GameStart", 99_976, TradeKind::Buy));
    let after = StandIn::entry(3, &trade("t5", "GameStart", 1, TradeKind::Buy));
    let answer = client
        .apply(
            1,
            &[ApplyItem::Entry(too_big), ApplyItem::Entry(after)],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        answer,
        Applied::Done {
            outcomes: vec![],
            stop: Some(ApplyStop::Refused {
                rejection: TradeRejection::NotEnoughStock { available: 99_975 },
                remembered: false
            }),
            next: 2
        }
    );
    // A refusal the stock could take is not made; one decided elsewhere in the log neither.
    let takes = trade("t6", "GameStart", 5, TradeKind::Buy);
    let refuse = |before, trade: &TradeRequest| ApplyItem::Refuse {
        before,
        trade: trade.clone(),
    };
    for (before, stop) in [(2, ApplyStop::WouldApply), (5, ApplyStop::Gap)] {
        let answer = client
            .apply(1, &[refuse(before, &takes)], None)
            .await
            .unwrap();
        assert!(
            matches!(&answer, Applied::Done { outcomes, stop: Some(s), .. } if outcomes.is_empty() && *s == stop),
            "{answer:?}"
        );
    }
    let all = leader
        .trade(&trade("t7", "GameStart", 99_975, TradeKind::Buy))
        .await
        .unwrap();
    assert_eq!(all, 2);
    assert_eq!(level(gamestart().await.unwrap()), (0, 99_975 + 55, 3));
    catalog.stop().await;
}

#[tokio::test]
async fn a_request_id_is_applied_once_also_after_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let catalog = start(state.path(), |_| {}).await;
    let request = trade("same-id", "BoarCo", 7, TradeKind::Buy);
    let mut leader = StandIn::new(catalog.client.clone()).await;
    assert_eq!(leader.trade(&request).await, Ok(0));
    let refused = trade("refused", "BoarCo", 1_000_000, TradeKind::Buy);
    let rejection = leader.trade(&refused).await.unwrap_err();
    catalog.stop().await;

    let catalog = start(state.path(), |_| {}).await;
    let client = &catalog.client;
    // The same entry again changes nothing; the same request at another number is not
    // applied: the catalog says where it was.
    let again = client
        .apply(1, &[ApplyItem::Entry(StandIn::entry(0, &request))], None)
        .await
        .unwrap();
    assert_eq!(
        again,
        Applied::Done {
            outcomes: vec![ApplyOutcome::Applied],
            stop: None,
            next: 1
        }
    );
    let elsewhere = client
        .apply(1, &[ApplyItem::Entry(StandIn::entry(1, &request))], None)
        .await
        .unwrap();
    assert!(
        matches!(
            elsewhere,
            Applied::Done {
                stop: Some(ApplyStop::Traded { number: 0 }),
                ..
            }
        ),
        "{elsewhere:?}"
    );
    // A refused request stays refused, whatever the stock holds now; its id for another trade
    // is a reuse.
    let refused_entry = StandIn::entry(1, &refused);
    let answer = client
        .apply(1, &[ApplyItem::Entry(refused_entry)], None)
        .await
        .unwrap();
    assert!(
        matches!(&answer, Applied::Done { stop: Some(ApplyStop::Refused { rejection: r, remembered: true }), .. } if *r == rejection),
        "{answer:?}"
    );
    let mut reused = refused.clone();
    reused.quantity = 2;
    let answer = client
        .apply(
            1,
            &[ApplyItem::Refuse {
                before: 1,
                trade: reused,
            }],
            None,
        )
        .await
        .unwrap();
    assert!(
        matches!(&answer, Applied::Done { outcomes, .. } if outcomes == &[ApplyOutcome::Refused(TradeRejection::RequestIdReused)]),
        "{answer:?}"
    );
    assert_eq!(
        level(client.lookup(&name("BoarCo")).await.unwrap()),
        (99_993, 7, 1)
    );
    catalog.stop().await;
}

#[tokio::test]
async fn trades_conserve_stock_across_snapshots_and_restarts() {
    let state = tempfile::tempdir().unwrap();
    // Snapshot every 50 records, so the 400 trades below cross several snapshots.
    let catalog = start(state.path(), |c| c.snapshot_every = 50).await;
    let mut leader = StandIn::new(catalog.client.clone()).await;
    let (mut bought, mut sold) = (0u64, 0u64);
    for worker in 0..8u64 {
        for i in 0..50u64 {
            let q = i % 5 + 1;
            let kind = if (worker + i).is_multiple_of(3) {
                sold += q;
                TradeKind::Sell
            } else {
                bought += q;
                TradeKind::Buy
            };
            let request = trade(&format!("w{worker}-{i}"), "FishCo", q as i64, kind);
            leader.trade(&request).await.unwrap();
        }
    }
    let expect = |quote: Option<StockQuote>| {
        assert_eq!(level(quote), (100_000 - bought + sold, bought + sold, 400));
    };
    expect(catalog.client.lookup(&name("FishCo")).await.unwrap());
    catalog.stop().await;

    let catalog = start(state.path(), |c| c.snapshot_every = 50).await;
    expect(catalog.client.lookup(&name("FishCo")).await.unwrap());
    // Ids from before the restart are still recognised.
    let replay = trade("w3-7", "FishCo", 3, TradeKind::Buy);
    let answer = catalog
        .client
        .apply(1, &[ApplyItem::Entry(StandIn::entry(400, &replay))], None)
        .await
        .unwrap();
    assert!(
        matches!(
            answer,
            Applied::Done {
                stop: Some(ApplyStop::Traded { .. }),
                ..
            }
        ),
        "{answer:?}"
    );
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
    let mut leader = StandIn::new(trader).await;
    let mut seen = Vec::new();
    for i in 1..=5u64 {
        leader
            .trade(&trade(&format!("s{i}"), "StarCo", 1, TradeKind::Buy))
            .await
            .unwrap();
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
    let mut leader = StandIn::new(catalog.client.clone()).await;
    leader
        .trade(&trade("x", "GameStart", 1, TradeKind::Buy))
        .await
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
    let renew = |serving| client.reconcile(1, &[], 10, serving, None);
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
