//! The catalog and three order replicas started in-process on port 0 and used over real
//! sockets: numbering, replication, restarts, catch-up, divergence, stale leaders, quorum.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeSet;
use std::time::Duration;

use common::wire::{OrderRequest, OrderResponse, Role, TradeKind, TradeRejection};
use order::WriteQuorum;
use testkit::*;

/// Waits until replica `id` follows `leader` and holds everything the leader has made
/// durable (read anew each time: a new leader may still be writing the orders it adopted).
async fn wait_caught_up(cluster: &Cluster, id: u32, leader: u32) {
    eventually(
        &format!("replica {id} to catch up"),
        Duration::from_secs(20),
        || async {
            let target = cluster.status(leader).await.last;
            let status = cluster.status(id).await;
            (status.role == Role::Follower && status.last == target).then_some(())
        },
    )
    .await;
}

/// `order audit` of the cluster: over the network from the replicas themselves, or from their
/// state directories on this disk.
async fn audit(cluster: &Cluster, over_the_network: bool) -> order::audit::AuditReport {
    let peers = cluster.addrs.clone().into_iter().collect();
    let args = order::audit::AuditArgs {
        state_dirs: if over_the_network {
            Vec::new()
        } else {
            cluster.dirs.values().cloned().collect()
        },
        peers: over_the_network.then_some(peers),
        // Pages far smaller than the log, so that paging is exercised.
        page: 97,
        catalog: Some(cluster.catalog.addr.clone()),
        seed: seed(),
        token: common::config::TokenArgs {
            cluster_token: None,
        },
    };
    order::audit::audit(&args).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_orders_are_numbered_without_gaps_and_every_follower_holds_them() {
    let cluster = Cluster::start(WriteQuorum::All).await;
    cluster.elect(1).await;
    let leader = cluster.client(1);
    let tasks: Vec<_> = (0..8)
        .map(|worker| {
            let leader = leader.clone();
            tokio::spawn(async move {
                let mut numbers = Vec::new();
                for i in 0..40 {
                    let kind = if (worker + i) % 3 == 0 {
                        TradeKind::Sell
                    } else {
                        TradeKind::Buy
                    };
                    let request = order(&format!("c-{worker}-{i}"), "GameStart", 2, kind);
                    numbers.push(placed(leader.call(&request).await.unwrap()));
                }
                numbers
            })
        })
        .collect();
    let mut numbers = Vec::new();
    for task in tasks {
        numbers.extend(task.await.unwrap());
    }
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (0..320).collect::<Vec<u64>>(),
        "numbers unique and gap-free"
    );

    // Acknowledged means persisted on every follower: their files hold every order now.
    let leader_log = cluster.log(1);
    assert_eq!(leader_log.len(), 320);
    assert_eq!(cluster.log(2), leader_log);
    assert_eq!(cluster.log(3), leader_log);

    // Followers serve the same orders.
    for number in [0, 157, 319] {
        let answer = cluster
            .client(3)
            .call(&OrderRequest::GetOrder { number })
            .await
            .unwrap();
        assert_eq!(
            answer,
            OrderResponse::Order(leader_log[number as usize].clone())
        );
    }
    assert_eq!(
        leader
            .call(&OrderRequest::GetOrder { number: 320 })
            .await
            .unwrap(),
        OrderResponse::OrderNotFound
    );

    // The catalog agrees with the log.
    let quote = cluster
        .catalog
        .client
        .lookup(&common::wire::StockName::new("GameStart").unwrap())
        .await
        .unwrap()
        .unwrap();
    let sold: u64 = leader_log
        .iter()
        .filter(|e| e.kind == TradeKind::Sell)
        .map(|e| e.quantity)
        .sum();
    let bought: u64 = leader_log
        .iter()
        .filter(|e| e.kind == TradeKind::Buy)
        .map(|e| e.quantity)
        .sum();
    assert_eq!(quote.quantity, 100_000 - bought + sold);
    assert_eq!(quote.volume, bought + sold);
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_refusals_and_non_leaders() {
    let cluster = Cluster::start(WriteQuorum::All).await;
    cluster.elect(2).await;
    let leader = cluster.client(2);
    let request = order("same", "BoarCo", 5, TradeKind::Buy);
    let first = placed(leader.call(&request).await.unwrap());
    // The same id again, also concurrently: one order, one trade.
    let (a, b) = tokio::join!(leader.call(&request), leader.call(&request));
    assert_eq!((placed(a.unwrap()), placed(b.unwrap())), (first, first));
    let quote = cluster
        .catalog
        .client
        .lookup(&common::wire::StockName::new("BoarCo").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(quote.quantity, 99_995);

    let refusals = [
        (
            order("r1", "NoSuchCo", 1, TradeKind::Buy),
            TradeRejection::StockNotFound,
        ),
        (
            order("r2", "BoarCo", 0, TradeKind::Buy),
            TradeRejection::InvalidQuantity,
        ),
        (
            order("r3", "BoarCo", -3, TradeKind::Sell),
            TradeRejection::InvalidQuantity,
        ),
        (
            order("r4", "BoarCo", 99_996, TradeKind::Buy),
            TradeRejection::NotEnoughStock { available: 99_995 },
        ),
    ];
    for (request, expected) in refusals {
        assert_eq!(
            leader.call(&request).await.unwrap(),
            OrderResponse::Rejected(expected)
        );
    }
    // Refusals use no numbers.
    assert_eq!(
        placed(
            leader
                .call(&order("next", "BoarCo", 1, TradeKind::Sell))
                .await
                .unwrap()
        ),
        first + 1
    );
    match cluster.client(1).call(&request).await.unwrap() {
        OrderResponse::NotLeader {
            epoch: 1,
            leader_id: Some(2),
        } => {}
        other => panic!("expected NotLeader, got {other:?}"),
    }
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_orders_are_served_after_a_restart_and_a_stale_leader_is_refused() {
    let mut cluster = Cluster::start(WriteQuorum::All).await;
    cluster.elect(1).await;
    for i in 0..5 {
        placed(
            cluster
                .client(1)
                .call(&order(&format!("o{i}"), "FishCo", 1, TradeKind::Buy))
                .await
                .unwrap(),
        );
    }
    let before = cluster.log(1);
    for id in 1..=3 {
        cluster.stop(id).await;
    }
    for id in 1..=3 {
        cluster.restart(id).await;
    }
    assert_eq!(cluster.elect(3).await, 2);
    for id in [1, 2] {
        wait_caught_up(&cluster, id, 3).await;
    }
    for id in 1..=3 {
        // The new leader serves its inherited orders once its in-sync replicas confirm them.
        let answer = eventually("order 2", Duration::from_secs(10), || async {
            cluster
                .client(id)
                .call(&OrderRequest::GetOrder { number: 2 })
                .await
                .ok()
        })
        .await;
        assert_eq!(
            answer,
            OrderResponse::Order(before[2].clone()),
            "replica {id}"
        );
    }
    // Numbering goes on after the restart.
    assert_eq!(
        placed(
            cluster
                .client(3)
                .call(&order("after", "FishCo", 1, TradeKind::Sell))
                .await
                .unwrap()
        ),
        5
    );

    // Replica 1 led epoch 1; its messages are now refused.
    let stale = OrderRequest::Replicate {
        cuts: 0,
        epoch: 1,
        leader_id: 1,
        prev: None,
        entries: vec![],
    };
    match cluster.client(2).call(&stale).await.unwrap() {
        OrderResponse::StaleEpoch {
            epoch: 2,
            leader_id: Some(3),
        } => {}
        other => panic!("expected StaleEpoch, got {other:?}"),
    }
    // The epoch survives a restart.
    cluster.stop(2).await;
    cluster.restart(2).await;
    assert!(matches!(
        cluster.client(2).call(&stale).await.unwrap(),
        OrderResponse::StaleEpoch { epoch: 2, .. }
    ));
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_down_for_a_thousand_orders_catches_up_and_ends_identical() {
    let mut cluster = Cluster::start(WriteQuorum::All).await;
    cluster.elect(1).await;
    placed(
        cluster
            .client(1)
            .call(&order("warm", "StarCo", 1, TradeKind::Buy))
            .await
            .unwrap(),
    );
    cluster.stop(3).await;
    let leader = cluster.client(1);
    let tasks: Vec<_> = (0..10)
        .map(|worker| {
            let leader = leader.clone();
            tokio::spawn(async move {
                for i in 0..100 {
                    let request = order(&format!("d-{worker}-{i}"), "StarCo", 1, TradeKind::Sell);
                    placed(leader.call(&request).await.unwrap());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(cluster.log(3).len(), 1);
    let down = audit(&cluster, true).await;
    assert!(!down.clean, "{:?}", down.lines);
    assert!(
        down.lines
            .iter()
            .any(|l| l.starts_with("replica 3 at") && l.contains("cannot read its log")),
        "{:?}",
        down.lines
    );
    assert!(
        down.lines.iter().any(|l| l == "order logs: identical"),
        "the two live replicas hold the same 1,001 orders: {:?}",
        down.lines
    );
    cluster.restart(3).await;
    // Orders keep coming while it catches up; none it acknowledges may be set aside.
    let during: Vec<_> = (0..4)
        .map(|worker| {
            let leader = leader.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    let request = order(&format!("s-{worker}-{i}"), "StarCo", 1, TradeKind::Buy);
                    placed(leader.call(&request).await.unwrap());
                }
            })
        })
        .collect();
    for task in during {
        task.await.unwrap();
    }
    wait_caught_up(&cluster, 3, 1).await;
    assert_eq!(cluster.log(3), cluster.log(1));
    assert_eq!(cluster.log(1).len(), 1_201);
    assert!(
        !order::log::side_file(&cluster.dirs[&3]).exists(),
        "a catching-up follower set aside entries it had acknowledged"
    );
    // Back in the fold: new orders reach it before they are acknowledged.
    placed(
        leader
            .call(&order("after", "StarCo", 1, TradeKind::Buy))
            .await
            .unwrap(),
    );
    assert_eq!(cluster.log(3).len(), 1_202);
    for over_the_network in [true, false] {
        let report = audit(&cluster, over_the_network).await;
        assert!(report.clean, "{:?}", report.lines);
        assert_eq!(
            report
                .lines
                .iter()
                .filter(|l| l.ends_with(": 1202 orders"))
                .count(),
            3,
            "{:?}",
            report.lines
        );
    }
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_unclean_election_skips_the_in_sync_replica_and_the_catalog_gives_its_tail_back() {
    let mut cluster = Cluster::start(WriteQuorum::All).await;
    let first = cluster.elect(1).await;
    for i in 0..3 {
        placed(
            cluster
                .client(1)
                .call(&order(&format!("shared{i}"), "IronLeaf", 1, TradeKind::Buy))
                .await
                .unwrap(),
        );
    }
    // Only replica 1 records these: its followers are down.
    cluster.stop(2).await;
    cluster.stop(3).await;
    for i in 0..2 {
        placed(
            cluster
                .client(1)
                .call(&order(&format!("lonely{i}"), "IronLeaf", 1, TradeKind::Buy))
                .await
                .unwrap(),
        );
    }
    cluster.stop(1).await;

    cluster.restart(2).await;
    cluster.restart(3).await;
    // Replica 1 went on alone, so only it is in sync: the others may not be elected.
    let record = cluster.record().await;
    assert_eq!(record.in_sync, vec![1]);
    let clean = cluster
        .catalog
        .client
        .change_leadership(
            record.epoch,
            common::wire::LeadershipChange::Elect {
                leader: 2,
                in_sync: vec![],
            },
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(
        matches!(clean, clients::LeadershipOutcome::Refused { .. }),
        "{clean:?}"
    );
    // The operator's override: replica 2 leads alone, without what only replica 1 held.
    let unclean = cluster
        .catalog
        .client
        .change_leadership(
            record.epoch,
            common::wire::LeadershipChange::Unclean { leader: 2 },
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let clients::LeadershipOutcome::Changed(record) = unclean else {
        panic!("{unclean:?}");
    };
    cluster.wait_placing(2, record.epoch).await;
    wait_caught_up(&cluster, 3, 2).await;
    for i in 0..3 {
        placed(
            cluster
                .client(2)
                .call(&order(&format!("new{i}"), "IronLeaf", 1, TradeKind::Sell))
                .await
                .unwrap(),
        );
    }

    cluster.restart(1).await;
    wait_caught_up(&cluster, 1, 2).await;
    let log = cluster.log(2);
    assert_eq!(cluster.log(1), log);
    assert_eq!(cluster.log(3), log);
    let ids: BTreeSet<String> = log.iter().map(|e| e.request_id.to_string()).collect();
    // The catalog applied the lonely trades: the new leader recorded them where the catalog's
    // history holds them (the numbers and the epoch they were traded under), so nothing
    // acknowledged is lost and replica 1 keeps its copies.
    assert!(ids.contains("lonely0") && ids.contains("new2"), "{ids:?}");
    let lonely: Vec<_> = log
        .iter()
        .filter(|e| e.request_id.as_str().starts_with("lonely"))
        .map(|e| (e.number, e.epoch))
        .collect();
    assert_eq!(lonely, vec![(3, first), (4, first)]);
    let side =
        std::fs::read_to_string(order::log::side_file(&cluster.dirs[&1])).unwrap_or_default();
    assert!(side.is_empty(), "entries were set aside: {side}");
    // Both audits find one history, conservation, and nothing set aside.
    for over_the_network in [true, false] {
        let report = audit(&cluster, over_the_network).await;
        assert!(report.clean, "{:?}", report.lines);
        assert!(
            !report.lines.iter().any(|l| l.contains("orders set aside")),
            "{:?}",
            report.lines
        );
    }
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn majority_mode_refuses_to_acknowledge_with_two_replicas_down() {
    let mut cluster = Cluster::start(WriteQuorum::Majority).await;
    cluster.elect(1).await;
    placed(
        cluster
            .client(1)
            .call(&order("m0", "SkyRoute", 1, TradeKind::Buy))
            .await
            .unwrap(),
    );
    cluster.stop(3).await;
    // One follower left: a majority still holds every order.
    placed(
        cluster
            .client(1)
            .call(&order("m1", "SkyRoute", 1, TradeKind::Buy))
            .await
            .unwrap(),
    );
    cluster.stop(2).await;
    for i in 2..5 {
        match cluster
            .client(1)
            .call(&order(&format!("m{i}"), "SkyRoute", 1, TradeKind::Buy))
            .await
        {
            Err(common::Error::Remote(e)) => {
                assert_eq!(e.kind, common::wire::RemoteErrorKind::Unavailable, "{e}");
            }
            other => panic!("acknowledged without a majority: {other:?}"),
        }
    }
    // A follower comes back: the order waiting in the log commits, and a retry finds it.
    cluster.restart(2).await;
    let number = eventually("a majority again", Duration::from_secs(20), || async {
        match cluster
            .client(1)
            .call(&order("m2", "SkyRoute", 1, TradeKind::Buy))
            .await
        {
            Ok(OrderResponse::Placed { number, .. }) => Some(number),
            _ => None,
        }
    })
    .await;
    assert_eq!(number, 2);
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_steps_down_instead_of_acknowledging_alone() {
    let cluster = Cluster::start(WriteQuorum::All).await;
    cluster.elect(1).await;
    placed(
        cluster
            .client(1)
            .call(&order("d0", "BlueOtter", 1, TradeKind::Buy))
            .await
            .unwrap(),
    );
    // Replica 3 is elected at the catalog; replica 1 learns it from the record (or from the
    // catalog refusing its trade).
    assert_eq!(cluster.elect(3).await, 2);
    match cluster
        .client(1)
        .call(&order("d1", "BlueOtter", 1, TradeKind::Buy))
        .await
        .unwrap()
    {
        OrderResponse::NotLeader {
            epoch: 2,
            leader_id: Some(3),
        } => {}
        other => panic!("a deposed leader answered {other:?}"),
    }
    // The retry at the new leader records the order once; the catalog traded it once.
    let number = placed(
        cluster
            .client(3)
            .call(&order("d1", "BlueOtter", 1, TradeKind::Buy))
            .await
            .unwrap(),
    );
    assert_eq!(number, 1);
    let quote = cluster
        .catalog
        .client
        .lookup(&common::wire::StockName::new("BlueOtter").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((quote.quantity, quote.volume), (99_998, 2));
    eventually("old leader following", Duration::from_secs(20), || async {
        let status = cluster.status(1).await;
        (status.role == Role::Follower && status.last == cluster.status(3).await.last).then_some(())
    })
    .await;
    assert_eq!(cluster.log(1), cluster.log(3));
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_never_leads_its_old_epoch_again() {
    let mut cluster = Cluster::start(WriteQuorum::All).await;
    cluster.elect(1).await;
    placed(
        cluster
            .client(1)
            .call(&order("e0", "FishCo", 1, TradeKind::Buy))
            .await
            .unwrap(),
    );
    cluster.stop(1).await;
    cluster.restart(1).await;
    // The record still names it for epoch 1, which it may not lead again.
    let status = eventually(
        "the restarted replica to hear the record",
        Duration::from_secs(10),
        || async {
            let status = cluster.status(1).await;
            status.catalog_link.then_some(status)
        },
    )
    .await;
    assert_eq!((status.role, status.epoch), (Role::Idle, 1));
    assert!(matches!(
        cluster
            .client(1)
            .call(&order("e1", "FishCo", 1, TradeKind::Buy))
            .await
            .unwrap(),
        OrderResponse::NotLeader { .. }
    ));
    assert_eq!(cluster.elect(1).await, 2);
    assert_eq!(
        placed(
            cluster
                .client(1)
                .call(&order("e1", "FishCo", 1, TradeKind::Buy))
                .await
                .unwrap()
        ),
        1
    );
    cluster.stop_all().await;
}

/// A trade the catalog applied under `epoch`, as the next entry of its history, whose order
/// no replica holds, as a leader that died right after the catalog applied it (before any
/// follower, or its own disk, had it) leaves behind.
async fn orphan_trade(cluster: &Cluster, epoch: u64, id: &str, stock: &str) {
    let client = &cluster.catalog.client;
    let (next, _) = client
        .levels(epoch)
        .await
        .unwrap()
        .expect("the epoch leads");
    let entry = common::wire::OrderEntry {
        number: next,
        epoch,
        request_id: common::wire::RequestId::new(id).unwrap(),
        name: common::wire::StockName::new(stock).unwrap(),
        kind: TradeKind::Buy,
        quantity: 3,
    };
    let outcome = client
        .apply(epoch, &[common::wire::ApplyItem::Entry(entry)], None)
        .await
        .unwrap();
    assert!(
        matches!(outcome, clients::Applied::Done { stop: None, .. }),
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trade_applied_without_an_order_is_recorded_once_by_the_next_leader() {
    let mut cluster = Cluster::start(WriteQuorum::All).await;
    let first = cluster.elect(1).await;
    placed(
        cluster
            .client(1)
            .call(&order("before", "SkyRoute", 1, TradeKind::Buy))
            .await
            .unwrap(),
    );
    // Replica 1 dies right after the catalog applied its trade.
    cluster.stop(1).await;
    orphan_trade(&cluster, first, "orphan", "SkyRoute").await;
    let second = cluster.elect(3).await;
    // The new leader recorded it before placing anything; a retry finds its number. (Its
    // log file is read once the write reached it.)
    let adopted = eventually(
        "the orphan trade in the log",
        Duration::from_secs(10),
        || async {
            cluster
                .log(3)
                .into_iter()
                .find(|e| e.request_id.as_str() == "orphan")
        },
    )
    .await;
    // At the number the catalog gave it, under the epoch it was traded in.
    assert_eq!(
        (adopted.number, adopted.epoch, adopted.quantity),
        (1, first, 3)
    );
    assert!(second > first);
    let retried = placed(
        cluster
            .client(3)
            .call(&order("orphan", "SkyRoute", 3, TradeKind::Buy))
            .await
            .unwrap(),
    );
    assert_eq!(retried, 1);
    // Conservation: the catalog's stock is what the log implies, the orphan once.
    let initial = std::collections::BTreeMap::from([(
        common::wire::StockName::new("SkyRoute").unwrap(),
        100_000,
    )]);
    let expected = order::audit::expected_stock(&initial, &cluster.log(3)).unwrap();
    let quote = cluster
        .catalog
        .client
        .lookup(&common::wire::StockName::new("SkyRoute").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (quote.quantity, quote.volume),
        expected[&common::wire::StockName::new("SkyRoute").unwrap()]
    );
    // The deposed epoch can trade no more.
    let late = common::wire::OrderEntry {
        number: 2,
        epoch: first,
        request_id: common::wire::RequestId::new("late").unwrap(),
        name: common::wire::StockName::new("SkyRoute").unwrap(),
        kind: TradeKind::Buy,
        quantity: 1,
    };
    let stale = cluster
        .catalog
        .client
        .apply(first, &[common::wire::ApplyItem::Entry(late)], None)
        .await
        .unwrap();
    assert!(
        matches!(stale, clients::Applied::Fenced { .. }),
        "{stale:?}"
    );
    cluster.stop_all().await;
}

/// In its term only the leader's own entries reach the catalog; one that is there all the
/// same (forged with the cluster token, or a bug) makes the leader renew its epoch, and the
/// new term records it like any trade the log lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trade_the_catalog_holds_beyond_the_log_is_recorded_under_a_renewed_epoch() {
    let cluster = Cluster::start(WriteQuorum::All).await;
    let epoch = cluster.elect(2).await;
    placed(
        cluster
            .client(2)
            .call(&order("first", "FishCo", 1, TradeKind::Sell))
            .await
            .unwrap(),
    );
    // Applied under the leader's epoch, but not by the leader.
    orphan_trade(&cluster, epoch, "lost-answer", "FishCo").await;
    let entry = eventually(
        "the leader to record the trade",
        Duration::from_secs(10),
        || async {
            cluster
                .log(2)
                .into_iter()
                .find(|e| e.request_id.as_str() == "lost-answer")
        },
    )
    .await;
    assert_eq!(entry.number, 1);
    // Recorded once: more reconciliation rounds change nothing.
    placed(
        cluster
            .client(2)
            .call(&order("after", "FishCo", 1, TradeKind::Sell))
            .await
            .unwrap(),
    );
    let ids: Vec<String> = cluster
        .log(2)
        .iter()
        .map(|e| e.request_id.to_string())
        .collect();
    assert_eq!(ids, ["first", "lost-answer", "after"]);
    cluster.stop_all().await;
}
