//! Every wire message survives encoding and decoding unchanged, and no byte string makes a
//! decoder panic.
#![allow(clippy::unwrap_used, missing_docs)]

use bytes::BytesMut;
use common::frame::{codec, decode, encode};
use common::wire::*;
use proptest::prelude::*;
use tokio_util::codec::Decoder;

fn stock_name() -> impl Strategy<Value = StockName> {
    "[A-Za-z0-9 ._-]{1,64}".prop_map(|s| StockName::new(s).unwrap())
}

fn request_id() -> impl Strategy<Value = RequestId> {
    "[!-~]{1,128}".prop_map(|s| RequestId::new(s).unwrap())
}

fn kind() -> impl Strategy<Value = TradeKind> {
    prop_oneof![Just(TradeKind::Buy), Just(TradeKind::Sell)]
}

fn catalog_request() -> impl Strategy<Value = CatalogRequest> {
    prop_oneof![
        stock_name().prop_map(|name| CatalogRequest::Lookup { name }),
        (
            any::<u64>(),
            proptest::collection::vec(apply_item(), 0..4),
            proptest::option::of(log_end())
        )
            .prop_map(|(epoch, items, log)| CatalogRequest::Apply { epoch, items, log }),
        (any::<u64>(), proptest::option::of(stock_name()))
            .prop_map(|(epoch, after)| CatalogRequest::Levels { epoch, after }),
        any::<bool>().prop_map(|invalidations| CatalogRequest::Subscribe { invalidations }),
        Just(CatalogRequest::ReadLeadership),
        (any::<u64>(), change())
            .prop_map(|(expected, change)| CatalogRequest::ChangeLeadership { expected, change }),
        (
            any::<u64>(),
            proptest::collection::vec(position(), 0..4),
            any::<u32>(),
            any::<bool>(),
            proptest::option::of(log_end())
        )
            .prop_map(
                |(epoch, known, max, serving, log)| CatalogRequest::Reconcile {
                    epoch,
                    known,
                    max,
                    serving,
                    log,
                }
            ),
    ]
}

fn log_end() -> impl Strategy<Value = LogEnd> {
    (any::<u64>(), proptest::option::of(any::<u64>()))
        .prop_map(|(incarnation, last)| LogEnd { incarnation, last })
}

fn apply_item() -> impl Strategy<Value = ApplyItem> {
    prop_oneof![
        order_entry().prop_map(ApplyItem::Entry),
        (any::<u64>(), trade_request())
            .prop_map(|(before, trade)| ApplyItem::Refuse { before, trade }),
    ]
}

fn trade_request() -> impl Strategy<Value = TradeRequest> {
    (request_id(), stock_name(), any::<i64>(), kind()).prop_map(
        |(request_id, name, quantity, kind)| TradeRequest {
            request_id,
            name,
            quantity,
            kind,
        },
    )
}

fn apply_outcome() -> impl Strategy<Value = ApplyOutcome> {
    prop_oneof![
        Just(ApplyOutcome::Applied),
        rejection().prop_map(ApplyOutcome::Refused),
    ]
}

fn apply_stop() -> impl Strategy<Value = ApplyStop> {
    prop_oneof![
        Just(ApplyStop::Gap),
        Just(ApplyStop::Conflict),
        any::<u64>().prop_map(|number| ApplyStop::Traded { number }),
        (rejection(), any::<bool>()).prop_map(|(rejection, remembered)| ApplyStop::Refused {
            rejection,
            remembered
        }),
        Just(ApplyStop::WouldApply),
    ]
}

fn replica_ids() -> impl Strategy<Value = Vec<ReplicaId>> {
    proptest::collection::vec(any::<u32>(), 0..4)
}

fn change() -> impl Strategy<Value = LeadershipChange> {
    prop_oneof![
        (any::<u32>(), replica_ids())
            .prop_map(|(leader, in_sync)| LeadershipChange::Elect { leader, in_sync }),
        (any::<u32>(), replica_ids())
            .prop_map(|(leader, in_sync)| LeadershipChange::SetInSync { leader, in_sync }),
        any::<u32>().prop_map(|leader| LeadershipChange::Renew { leader }),
        any::<u32>().prop_map(|leader| LeadershipChange::Unclean { leader }),
    ]
}

fn leadership() -> impl Strategy<Value = Leadership> {
    (
        any::<u64>(),
        proptest::option::of(any::<u32>()),
        replica_ids(),
    )
        .prop_map(|(epoch, leader, in_sync)| Leadership {
            epoch,
            leader,
            in_sync,
        })
}

fn rejection() -> impl Strategy<Value = TradeRejection> {
    prop_oneof![
        Just(TradeRejection::StockNotFound),
        any::<u64>().prop_map(|available| TradeRejection::NotEnoughStock { available }),
        Just(TradeRejection::InvalidQuantity),
        Just(TradeRejection::Overflow),
        Just(TradeRejection::RequestIdReused),
    ]
}

fn catalog_response() -> impl Strategy<Value = CatalogResponse> {
    prop_oneof![
        (
            stock_name(),
            0.0..1e9f64,
            any::<u64>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(
                |(name, price, quantity, volume, version)| CatalogResponse::Stock(StockQuote {
                    name,
                    price,
                    quantity,
                    volume,
                    version,
                })
            ),
        Just(CatalogResponse::NotFound),
        (
            any::<u64>(),
            proptest::collection::vec(apply_outcome(), 0..4),
            proptest::option::of(apply_stop()),
            any::<u64>()
        )
            .prop_map(
                |(incarnation, outcomes, stop, next)| CatalogResponse::Applied {
                    incarnation,
                    outcomes,
                    stop,
                    next
                }
            ),
        (
            any::<u64>(),
            proptest::collection::vec(
                (stock_name(), any::<u64>(), any::<u64>()).prop_map(|(name, quantity, volume)| {
                    StockLevel {
                        name,
                        quantity,
                        volume,
                    }
                }),
                0..4
            ),
            any::<bool>()
        )
            .prop_map(|(next, levels, more)| CatalogResponse::Levels {
                incarnation: next / 3,
                next,
                levels,
                more
            }),
        leadership().prop_map(CatalogResponse::Subscribed),
        leadership().prop_map(CatalogResponse::Leadership),
        (leadership(), ".{0,40}")
            .prop_map(|(current, reason)| CatalogResponse::Fenced { current, reason }),
        (
            proptest::option::of(position()),
            any::<u64>(),
            proptest::collection::vec(order_entry(), 0..4),
            any::<bool>()
        )
            .prop_map(
                |(meet, next, trades, complete)| CatalogResponse::Reconciled {
                    incarnation: next / 2,
                    meet,
                    next,
                    trades,
                    complete,
                }
            ),
        Just(CatalogResponse::Heartbeat {
            storage_failure: None
        }),
        Just(CatalogResponse::Heartbeat {
            storage_failure: Some("No space left on device".into())
        }),
        (stock_name(), any::<u64>())
            .prop_map(|(name, version)| CatalogResponse::Invalidate { name, version }),
    ]
}

fn reply() -> impl Strategy<Value = Reply<CatalogResponse>> {
    prop_oneof![
        catalog_response().prop_map(Ok),
        (".{0,40}", any::<bool>()).prop_map(|(message, bad)| Err(if bad {
            RemoteError::bad_request(message)
        } else {
            RemoteError::unavailable(message)
        })),
    ]
}

fn position() -> impl Strategy<Value = LogPosition> {
    (any::<u64>(), any::<u64>()).prop_map(|(epoch, number)| LogPosition { epoch, number })
}

fn order_entry() -> impl Strategy<Value = OrderEntry> {
    (
        any::<u64>(),
        any::<u64>(),
        request_id(),
        stock_name(),
        kind(),
        any::<u64>(),
    )
        .prop_map(
            |(number, epoch, request_id, name, kind, quantity)| OrderEntry {
                number,
                epoch,
                request_id,
                name,
                kind,
                quantity,
            },
        )
}

fn order_request() -> impl Strategy<Value = OrderRequest> {
    prop_oneof![
        (request_id(), stock_name(), any::<i64>(), kind()).prop_map(
            |(request_id, name, quantity, kind)| OrderRequest::PlaceOrder(TradeRequest {
                request_id,
                name,
                quantity,
                kind,
            })
        ),
        any::<u64>().prop_map(|number| OrderRequest::GetOrder { number }),
        Just(OrderRequest::Status),
        (
            any::<u64>(),
            any::<u32>(),
            proptest::option::of(position()),
            proptest::collection::vec(order_entry(), 0..4),
            any::<u32>()
        )
            .prop_map(
                |(epoch, leader_id, prev, entries, cuts)| OrderRequest::Replicate {
                    epoch,
                    leader_id,
                    prev,
                    entries,
                    cuts,
                }
            ),
        (
            any::<u64>(),
            any::<u32>(),
            proptest::collection::vec(position(), 0..4)
        )
            .prop_map(|(epoch, follower_id, known)| OrderRequest::SyncUp {
                epoch,
                follower_id,
                known,
            }),
        (any::<u64>(), any::<u32>()).prop_map(|(from, max)| OrderRequest::ReadLog { from, max }),
        proptest::collection::vec(trade_request(), 0..4).prop_map(|trades| OrderRequest::Batch(
            trades
                .into_iter()
                .map(OrderRequest::PlaceOrder)
                .chain([OrderRequest::Status])
                .collect()
        )),
    ]
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::Leader),
        Just(Role::Follower),
        Just(Role::Syncing),
        Just(Role::Idle)
    ]
}

fn order_response() -> impl Strategy<Value = OrderResponse> {
    let leader = proptest::option::of(any::<u32>());
    prop_oneof![
        (any::<u64>(), any::<u64>())
            .prop_map(|(number, epoch)| OrderResponse::Placed { number, epoch }),
        rejection().prop_map(OrderResponse::Rejected),
        order_entry().prop_map(OrderResponse::Order),
        Just(OrderResponse::OrderNotFound),
        (
            any::<u32>(),
            role(),
            any::<u64>(),
            leader.clone(),
            proptest::option::of(position()),
            any::<(bool, bool, bool)>()
        )
            .prop_map(
                |(id, role, epoch, leader_id, last, (catalog_link, placing, stalled))| {
                    OrderResponse::Status(ReplicaStatus {
                        id,
                        role,
                        epoch,
                        leader_id,
                        last,
                        catalog_link,
                        placing,
                        stalled,
                        storage_failure: None,
                        commit: last.map(|p| p.number),
                        in_sync: vec![id],
                        followers: vec![FollowerLag {
                            id: id.wrapping_add(1),
                            up: placing,
                            persisted: last.map(|p| p.number),
                            entries: epoch,
                            millis: epoch / 2,
                        }],
                        set_aside: epoch,
                        catch_ups: 1,
                    })
                }
            ),
        proptest::option::of(position()).prop_map(|last| OrderResponse::Replicated { last }),
        proptest::option::of(position()).prop_map(|last| OrderResponse::Behind { last }),
        (
            proptest::option::of(position()),
            proptest::collection::vec(order_entry(), 0..4),
            proptest::option::of(position())
        )
            .prop_map(|(from, entries, leader_last)| OrderResponse::Entries {
                from,
                entries,
                leader_last,
            }),
        (
            proptest::collection::vec(order_entry(), 0..4),
            proptest::option::of(position()),
            any::<u64>()
        )
            .prop_map(|(entries, last, set_aside)| OrderResponse::Log {
                entries,
                last,
                set_aside,
            }),
        (any::<u64>(), leader.clone())
            .prop_map(|(epoch, leader_id)| OrderResponse::NotLeader { epoch, leader_id }),
        (any::<u64>(), leader)
            .prop_map(|(epoch, leader_id)| OrderResponse::StaleEpoch { epoch, leader_id }),
        proptest::collection::vec((any::<u64>(), any::<u64>()), 0..4).prop_map(|placed| {
            OrderResponse::Batch(
                placed
                    .into_iter()
                    .map(|(number, epoch)| Ok(OrderResponse::Placed { number, epoch }))
                    .chain([Err(RemoteError::unavailable("quorum"))])
                    .collect(),
            )
        }),
    ]
}

fn round_trips<T>(value: T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = encode(&value).unwrap();
    assert_eq!(decode::<T>(&bytes).unwrap(), value);
}

proptest! {
    #[test]
    fn catalog_requests_round_trip(id in any::<u64>(), body in catalog_request()) {
        round_trips(Envelope { id, body });
    }

    #[test]
    fn catalog_replies_round_trip(id in any::<u64>(), body in reply()) {
        round_trips(Envelope { id, body });
    }

    #[test]
    fn order_requests_round_trip(id in any::<u64>(), body in order_request()) {
        round_trips(Envelope { id, body });
    }

    #[test]
    fn order_replies_round_trip(id in any::<u64>(), body in order_response()) {
        round_trips(Envelope { id, body: Reply::Ok(body) });
    }

    #[test]
    fn hellos_round_trip(version in any::<u32>(), token in proptest::option::of(".{0,64}"),
                         peer in ".{0,32}", reason in ".{0,64}") {
        round_trips(Envelope { id: 0, body: Hello { version, token, peer } });
        round_trips(Envelope { id: 0, body: HelloReply::Refused { reason } });
        round_trips(Envelope { id: 0, body: HelloReply::Welcome { service: "catalog".into() } });
    }

    #[test]
    fn random_bytes_never_panic_a_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode::<Envelope<CatalogRequest>>(&bytes);
        let _ = decode::<Envelope<Reply<CatalogResponse>>>(&bytes);
        let _ = decode::<Envelope<Hello>>(&bytes);
        let _ = decode::<Envelope<OrderRequest>>(&bytes);
        let _ = decode::<Envelope<Reply<OrderResponse>>>(&bytes);
        let mut codec = codec(1024);
        let mut buffer = BytesMut::from(&bytes[..]);
        // Frames over the limit are errors; shorter input is "need more"; nothing panics.
        while let Ok(Some(frame)) = codec.decode(&mut buffer) {
            let _ = decode::<Envelope<CatalogRequest>>(&frame);
        }
    }
}

#[test]
fn invalid_names_and_ids_do_not_decode() {
    let long = "x".repeat(MAX_STOCK_NAME_BYTES + 1);
    assert!(decode::<StockName>(&encode(&long).unwrap()).is_err());
    assert!(decode::<StockName>(&encode(&"").unwrap()).is_err());
    assert!(decode::<RequestId>(&encode(&"has space").unwrap()).is_err());
    assert!(StockName::new("GameStart").is_ok());
}

#[test]
fn a_four_gib_length_prefix_is_an_error_not_an_allocation() {
    let mut codec = codec(1 << 20);
    let mut buffer = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xff, 0][..]);
    let error = codec.decode(&mut buffer).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
}
