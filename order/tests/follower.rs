//! A real replica driven by a scripted leader, to force the interleavings that matter: a
//! `Replicate` that arrives while the replica's own sync-up answer is still on its way.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clients::LeadershipOutcome;
use clients::ReplicaClient;
use common::server::{serve, RequestContext, ServerConfig, Service};
use common::wire::{
    LeadershipChange, LogPosition, OrderEntry, OrderRequest, OrderResponse, Reply, RequestId, Role,
    StockName, TradeKind,
};
use order::ReplicaConfig;
use testkit::*;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

const EPOCH: u64 = 5;

fn entry(number: u64) -> OrderEntry {
    OrderEntry {
        number,
        epoch: EPOCH,
        request_id: RequestId::new(format!("scripted-{number}")).unwrap(),
        name: StockName::new("GameStart").unwrap(),
        kind: TradeKind::Buy,
        quantity: 1,
    }
}

/// Plays replica 1 leading `EPOCH`: answers the first sync-up as of entry 0 only, and only
/// once the test releases it.
struct ScriptedLeader {
    asked: Notify,
    release: Notify,
    answered: Mutex<bool>,
}

impl Service for ScriptedLeader {
    type Request = OrderRequest;
    type Response = OrderResponse;

    async fn call(&self, request: OrderRequest, _context: RequestContext) -> Reply<OrderResponse> {
        match request {
            OrderRequest::SyncUp { .. } => {
                let mut answered = self.answered.lock().await;
                if !*answered {
                    self.asked.notify_one();
                    self.release.notified().await;
                    *answered = true;
                    return Ok(OrderResponse::Entries {
                        from: None,
                        entries: vec![entry(0)],
                        leader_last: Some(entry(0).position()),
                    });
                }
                // Later rounds: the leader has entries 0 and 1.
                Ok(OrderResponse::Entries {
                    from: Some(entry(1).position()),
                    entries: vec![],
                    leader_last: Some(entry(1).position()),
                })
            }
            other => panic!("scripted leader got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_replicated_during_a_sync_up_are_kept_not_set_aside() {
    let leader_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let leader_addr = leader_listener.local_addr().unwrap().to_string();
    let script = Arc::new(ScriptedLeader {
        asked: Notify::new(),
        release: Notify::new(),
        answered: Mutex::new(false),
    });
    let stop = CancellationToken::new();
    tokio::spawn(serve(
        leader_listener,
        script.clone(),
        ServerConfig::new("scripted-leader"),
        stop.clone(),
    ));

    // The catalog's record names replica 1 leader of EPOCH: a follower believes a leader's
    // epoch only once the record holds it.
    let catalog = RunningCatalog::start().await;
    // (Each election holds a short lease: the next one is retried until it runs out.)
    eventually("the record at epoch 5", Duration::from_secs(10), || async {
        let record = catalog
            .client
            .leadership(Duration::from_secs(5))
            .await
            .unwrap();
        if record.epoch == EPOCH {
            return Some(());
        }
        let change = LeadershipChange::Elect {
            leader: 1,
            in_sync: vec![1, 3],
        };
        match catalog
            .client
            .change_leadership(record.epoch, change, Duration::from_secs(5))
            .await
            .unwrap()
        {
            LeadershipOutcome::Changed(_) => None,
            LeadershipOutcome::Refused { reason, .. } if reason.contains("not deposed") => None,
            refused => panic!("{refused:?}"),
        }
    })
    .await;

    let state = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config = ReplicaConfig {
        client: fast_client("order-3"),
        ..ReplicaConfig::new(
            3,
            BTreeMap::from([(1, leader_addr)]),
            catalog.addr.clone(),
            state.path(),
        )
    };
    let replica_stop = CancellationToken::new();
    let replica = tokio::spawn(order::run(listener, config, replica_stop.clone()));
    let client = ReplicaClient::new(addr, fast_client("test"));

    // The leader's first (empty) `Replicate` tells the replica of the new epoch: it starts
    // syncing up; hold the leader's answer back.
    let probe = OrderRequest::Replicate {
        cuts: 0,
        epoch: EPOCH,
        leader_id: 1,
        prev: None,
        entries: vec![],
    };
    assert_eq!(
        client.call(&probe).await.unwrap(),
        OrderResponse::Replicated { last: None }
    );
    tokio::time::timeout(Duration::from_secs(10), script.asked.notified())
        .await
        .expect("the replica never asked to sync up");

    // Meanwhile the leader replicates entries 0 and 1; the replica persists and acknowledges.
    let replicate = OrderRequest::Replicate {
        cuts: 0,
        epoch: EPOCH,
        leader_id: 1,
        prev: None,
        entries: vec![entry(0), entry(1)],
    };
    assert_eq!(
        client.call(&replicate).await.unwrap(),
        OrderResponse::Replicated {
            last: Some(LogPosition {
                epoch: EPOCH,
                number: 1
            })
        }
    );

    // Now the stale sync-up answer (as of entry 0) arrives.
    script.release.notify_one();
    let status = eventually("the replica to follow", Duration::from_secs(10), || async {
        match client.call(&OrderRequest::Status).await {
            Ok(OrderResponse::Status(s)) if s.role == Role::Follower => Some(s),
            _ => None,
        }
    })
    .await;
    assert_eq!(
        status.last,
        Some(LogPosition {
            epoch: EPOCH,
            number: 1
        })
    );
    assert!(
        !order::log::side_file(state.path()).exists(),
        "acknowledged entries were set aside"
    );
    assert_eq!(
        order::log::read_entries(&order::log::log_file(state.path()))
            .unwrap()
            .0,
        vec![entry(0), entry(1)]
    );
    replica_stop.cancel();
    replica.await.unwrap().unwrap();
    stop.cancel();
}
