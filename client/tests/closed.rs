//! Closed by default, tried as a hostile peer on the same machine would: `run.sh` starts the
//! system, and every internal port it opened refuses forged trades, replication, leadership
//! changes and orders without the cluster token or with a wrong one; a peer with the token
//! that claims absurd values is refused too. Afterwards nothing has changed: the stocks, the
//! leadership record, every replica's epoch and log, and the audit is clean.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::rpc::{ClientConfig, RpcClient};
use common::wire::{
    ApplyItem, ApplyStop, CatalogRequest, CatalogResponse, LeadershipChange, LogPosition,
    OrderEntry, OrderRequest, OrderResponse, ReplicaStatus, RequestId, StockName, TradeKind,
    TradeRequest,
};
use common::Error;
use support::{show, System};

type Catalog = RpcClient<CatalogRequest, CatalogResponse>;
use clients::ReplicaClient as Replica;

fn config(token: Option<&str>) -> ClientConfig {
    ClientConfig {
        cluster_token: token.map(str::to_owned),
        call_timeout: Duration::from_secs(5),
        ..ClientConfig::new("intruder")
    }
}

fn stock() -> StockName {
    StockName::new("GameStart").unwrap()
}

fn id(text: &str) -> RequestId {
    RequestId::new(text).unwrap()
}

/// What must not change: each stock's quote, the leadership record, each replica's status.
#[derive(Debug, PartialEq)]
struct Seen {
    quote: CatalogResponse,
    record: CatalogResponse,
    replicas: Vec<(u64, Option<LogPosition>, Option<u32>)>,
}

async fn status(replica: &Replica) -> ReplicaStatus {
    match replica.call(&OrderRequest::Status).await.unwrap() {
        OrderResponse::Status(status) => status,
        other => panic!("{other:?}"),
    }
}

async fn seen(catalog: &Catalog, replicas: &[Replica]) -> Seen {
    let quote = catalog
        .call(&CatalogRequest::Lookup { name: stock() })
        .await
        .unwrap();
    let record = catalog.call(&CatalogRequest::ReadLeadership).await.unwrap();
    let mut positions = Vec::new();
    for replica in replicas {
        let s = status(replica).await;
        positions.push((s.epoch, s.last, s.leader_id));
    }
    Seen {
        quote,
        record,
        replicas: positions,
    }
}

fn refused<T: std::fmt::Debug>(what: &str, answer: Result<T, Error>) {
    match answer {
        Err(Error::Refused(reason)) => assert!(
            reason.contains("token"),
            "{what}: refused without naming the token: {reason}"
        ),
        other => panic!("{what}: expected a refused hello, got {other:?}"),
    }
}

/// The catalog applied nothing of an `Apply`: it stopped at its first item.
fn not_applied(what: &str, answer: Result<CatalogResponse, Error>) {
    match answer {
        Ok(CatalogResponse::Applied {
            outcomes,
            stop: Some(stop),
            ..
        }) if outcomes.is_empty() => {
            assert!(
                matches!(stop, ApplyStop::Gap | ApplyStop::Refused { .. }),
                "{what}: stopped for {stop:?}"
            )
        }
        other => panic!("{what}: expected nothing applied, got {other:?}"),
    }
}

fn bad_request<T: std::fmt::Debug>(what: &str, answer: Result<T, Error>) {
    assert!(
        matches!(answer, Err(Error::Remote(_))),
        "{what}: expected a refusal, got {answer:?}"
    );
}

#[test]
fn every_internal_port_refuses_forgeries_and_absurd_values_and_nothing_changes() {
    let system = System::start();
    let token = system.token();
    assert_eq!(token.len(), 64, "{token}");
    let mode = std::fs::metadata(system.token_file())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "token file mode {mode:o}");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let port = |i: usize| format!("127.0.0.1:{}", system.ports[i]);
        let catalog = Catalog::new(port(1), config(Some(&token)));
        let replicas: Vec<Replica> = (2..5)
            .map(|i| Replica::new(port(i), config(Some(&token))))
            .collect();
        let before = seen(&catalog, &replicas).await;
        let CatalogResponse::Leadership(record) = &before.record else {
            panic!("{:?}", before.record);
        };
        let (epoch, leader) = (record.epoch, record.leader.expect("a leader"));
        let follower = (1..=3).find(|&r| r != leader).unwrap();
        let follower_last = before.replicas[follower as usize - 1].1;
        let next = follower_last.map_or(0, |p| p.number + 1);
        let forged_entry = |epoch| OrderEntry {
            number: next,
            epoch,
            request_id: id("forged-entry"),
            name: stock(),
            kind: TradeKind::Buy,
            quantity: 777,
        };

        for (label, wrong) in [("no token", None), ("a wrong token", Some("0".repeat(64)))] {
            // A fresh client per request: a refused dial is not retried at once.
            let catalog = || Catalog::new(port(1), config(wrong.as_deref()));
            let trade = CatalogRequest::Apply {
                epoch,
                items: vec![ApplyItem::Refuse {
                    before: next,
                    trade: TradeRequest {
                        request_id: id("forged-trade"),
                        name: stock(),
                        quantity: 777,
                        kind: TradeKind::Buy,
                    },
                }],
                log: None,
            };
            refused(
                &format!("catalog Trade with {label}"),
                catalog().call(&trade).await,
            );
            for change in [
                LeadershipChange::Elect {
                    leader: follower,
                    in_sync: vec![follower],
                },
                LeadershipChange::SetInSync {
                    leader,
                    in_sync: vec![leader],
                },
                LeadershipChange::Unclean { leader: follower },
            ] {
                let request = CatalogRequest::ChangeLeadership {
                    expected: epoch,
                    change,
                };
                refused(
                    &format!("catalog {request:?} with {label}"),
                    catalog().call(&request).await,
                );
            }
            for i in 2..5 {
                let replica = || Replica::new(port(i), config(wrong.as_deref()));
                let replicate = OrderRequest::Replicate {
                    cuts: 0,
                    epoch: epoch + 1,
                    leader_id: leader,
                    prev: follower_last,
                    entries: vec![forged_entry(epoch + 1)],
                };
                refused(
                    &format!("replica port {i} Replicate with {label}"),
                    replica().call(&replicate).await,
                );
                let place = OrderRequest::PlaceOrder(TradeRequest {
                    request_id: id("forged-order"),
                    name: stock(),
                    quantity: 777,
                    kind: TradeKind::Buy,
                });
                refused(
                    &format!("replica port {i} TradeRequest with {label}"),
                    replica().call(&place).await,
                );
            }
        }

        // With the token, values beyond anything possible.
        let target = &replicas[follower as usize - 1];
        bad_request(
            "Replicate for epoch 2^64-1",
            target
                .call(&OrderRequest::Replicate {
                    cuts: 0,
                    epoch: u64::MAX,
                    leader_id: leader,
                    prev: follower_last,
                    entries: vec![],
                })
                .await,
        );
        bad_request(
            "Replicate of an entry from a later epoch than its leader's",
            target
                .call(&OrderRequest::Replicate {
                    cuts: 0,
                    epoch,
                    leader_id: leader,
                    prev: follower_last,
                    entries: vec![forged_entry(u64::MAX)],
                })
                .await,
        );
        bad_request(
            "Replicate from a leader the record does not name",
            target
                .call(&OrderRequest::Replicate {
                    cuts: 0,
                    epoch: epoch + 1,
                    leader_id: leader,
                    prev: follower_last,
                    entries: vec![],
                })
                .await,
        );
        let absurd_trade = CatalogRequest::Apply {
            epoch: u64::MAX,
            items: vec![ApplyItem::Entry(forged_entry(u64::MAX))],
            log: None,
        };
        let answer = catalog.call(&absurd_trade).await.unwrap();
        assert!(
            matches!(answer, CatalogResponse::Fenced { .. }),
            "{answer:?}"
        );
        let absurd_cas = CatalogRequest::ChangeLeadership {
            expected: u64::MAX,
            change: LeadershipChange::Unclean { leader: follower },
        };
        let answer = catalog.call(&absurd_cas).await.unwrap();
        assert!(
            matches!(answer, CatalogResponse::Fenced { .. }),
            "{answer:?}"
        );
        let mut far = forged_entry(epoch);
        far.number = u64::MAX;
        not_applied(
            "Apply of an order numbered 2^64-1",
            catalog
                .call(&CatalogRequest::Apply {
                    epoch,
                    items: vec![ApplyItem::Entry(far)],
                    log: None,
                })
                .await,
        );
        let CatalogResponse::Reconciled { next, .. } = catalog
            .call(&CatalogRequest::Reconcile {
                epoch,
                known: vec![],
                max: 1,
                serving: false,
                log: None,
            })
            .await
            .unwrap()
        else {
            panic!("no reconciliation");
        };
        let mut impossible = forged_entry(epoch);
        impossible.number = next;
        impossible.quantity = u64::MAX;
        not_applied(
            "Apply of a buy of 2^64-1 shares",
            catalog
                .call(&CatalogRequest::Apply {
                    epoch,
                    items: vec![ApplyItem::Entry(impossible)],
                    log: None,
                })
                .await,
        );

        let after = seen(&catalog, &replicas).await;
        assert_eq!(before, after, "a refused request changed something");
    });

    let audit = system.audit();
    assert!(audit.status.success(), "audit:\n{}", show(&audit));
}
