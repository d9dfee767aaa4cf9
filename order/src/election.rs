//! Electing the order leader: ask every replica for its status, choose the most up-to-date
//! live one (last entry's epoch, then number; highest id on ties) that holds every order the
//! caller has acknowledged, and announce it with an epoch larger than any seen. The front end
//! runs this; so does `order elect` for operators.
//!
//! Two elections must never share an epoch, even when the replica that saw the newest one is
//! unreachable: the epoch is at least the wall clock in milliseconds, and above both the
//! highest epoch any reachable replica reports and the caller's own last one.

use std::collections::BTreeMap;
use std::time::Duration;

use common::rpc::RpcClient;
use common::wire::{Epoch, LogPosition, OrderRequest, OrderResponse, ReplicaId, ReplicaStatus};
use tracing::{info, warn};

/// A client of one replica.
pub type ReplicaClient = RpcClient<OrderRequest, OrderResponse>;

/// Why no leader could be elected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElectionError {
    /// No replica answered.
    #[error("no order replica is reachable")]
    NoneReachable,
    /// Replicas answered, but none holds every acknowledged order.
    #[error("no reachable replica holds order {0}, which was acknowledged")]
    MissingAcknowledged(LogPosition),
    /// The chosen replica refused the announcement.
    #[error("replica {0} refused to lead: {1}")]
    Refused(ReplicaId, String),
}

/// Chooses among the replicas that answered: the most up-to-date that holds `acknowledged`
/// (the newest order position the caller has acknowledged), highest id on ties. A replica
/// whose last entry is at or after that position (epoch first, then number) holds it: its
/// log is a prefix of, or grew from, the log of the leader that numbered it.
pub fn choose_leader(
    live: &[ReplicaStatus],
    acknowledged: Option<LogPosition>,
) -> Result<ReplicaId, ElectionError> {
    if live.is_empty() {
        return Err(ElectionError::NoneReachable);
    }
    live.iter()
        .filter(|s| s.last >= acknowledged)
        .max_by_key(|s| (s.last, s.id))
        .map(|s| s.id)
        .ok_or(ElectionError::MissingAcknowledged(acknowledged.unwrap_or(
            LogPosition {
                epoch: 0,
                number: 0,
            },
        )))
}

/// An election's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elected {
    /// The new term.
    pub epoch: Epoch,
    /// Its leader.
    pub leader: ReplicaId,
    /// Replicas that took the announcement.
    pub informed: Vec<ReplicaId>,
}

/// Runs one election over `replicas`; every call to a replica takes at most `timeout`.
pub async fn elect(
    replicas: &BTreeMap<ReplicaId, ReplicaClient>,
    acknowledged: Option<LogPosition>,
    last_epoch: Epoch,
    timeout: Duration,
) -> Result<Elected, ElectionError> {
    let asks = replicas.iter().map(|(&id, client)| async move {
        match client.call_within(&OrderRequest::Status, timeout).await {
            Ok(OrderResponse::Status(status)) if status.id == id => Some(status),
            Ok(OrderResponse::Status(status)) => {
                warn!(
                    expected = id,
                    answered = status.id,
                    "replica answered with another id"
                );
                None
            }
            _ => None,
        }
    });
    let live: Vec<ReplicaStatus> = futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect();
    let leader = choose_leader(&live, acknowledged)?;
    let epoch = next_epoch(
        live.iter()
            .map(|s| s.epoch)
            .max()
            .unwrap_or(0)
            .max(last_epoch),
    );
    let announce = OrderRequest::SetLeader {
        epoch,
        leader_id: leader,
    };
    // The leader first, so that followers asking it for a sync-up find it leading; then the
    // others at once.
    match replicas[&leader].call_within(&announce, timeout).await {
        Ok(OrderResponse::LeaderSet) => {}
        other => return Err(ElectionError::Refused(leader, format!("{other:?}"))),
    }
    let announce = &announce;
    let followers = live.iter().map(|s| s.id).filter(|&id| id != leader);
    let answers = futures::future::join_all(
        followers.map(|id| async move { (id, replicas[&id].call_within(announce, timeout).await) }),
    )
    .await;
    let mut informed = vec![leader];
    for (id, answer) in answers {
        match answer {
            Ok(OrderResponse::LeaderSet) => informed.push(id),
            other => warn!(replica = id, answer = ?other, "replica missed the election"),
        }
    }
    info!(epoch, leader, ?informed, "leader elected");
    Ok(Elected {
        epoch,
        leader,
        informed,
    })
}

/// An epoch above `highest` and not below the wall clock in milliseconds.
pub fn next_epoch(highest: Epoch) -> Epoch {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    highest.saturating_add(1).max(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::wire::Role;

    fn status(id: ReplicaId, last: Option<(u64, u64)>) -> ReplicaStatus {
        ReplicaStatus {
            id,
            role: Role::Follower,
            epoch: 3,
            leader_id: None,
            last: last.map(|(epoch, number)| LogPosition { epoch, number }),
        }
    }

    #[test]
    fn the_most_up_to_date_replica_wins_and_ties_go_to_the_highest_id() {
        let live = [
            status(1, Some((2, 10))),
            status(2, Some((3, 4))),
            status(3, Some((2, 10))),
        ];
        assert_eq!(choose_leader(&live, None), Ok(2));
        let tie = [status(1, Some((2, 10))), status(3, Some((2, 10)))];
        assert_eq!(choose_leader(&tie, None), Ok(3));
        let empty = [status(1, None), status(2, None)];
        assert_eq!(choose_leader(&empty, None), Ok(2));
        assert_eq!(choose_leader(&[], None), Err(ElectionError::NoneReachable));
    }

    #[test]
    fn epochs_only_grow() {
        let now = next_epoch(0);
        assert!(now > 1_700_000_000_000, "{now}");
        assert_eq!(next_epoch(u64::MAX - 1), u64::MAX);
        let later = now + 1_000_000;
        assert_eq!(next_epoch(later), later + 1);
    }

    #[test]
    fn a_replica_lacking_an_acknowledged_order_is_never_chosen() {
        let at = |epoch, number| Some(LogPosition { epoch, number });
        // Replica 2 numbered orders up to 9 in epoch 4, but order 6 was acknowledged in epoch
        // 5 by replica 1: only replica 1 holds it.
        let live = [status(1, Some((5, 6))), status(2, Some((4, 9)))];
        assert_eq!(choose_leader(&live, at(5, 6)), Ok(1));
        assert_eq!(choose_leader(&live, at(4, 7)), Ok(1));
        let behind = [status(2, Some((4, 9))), status(3, Some((4, 3)))];
        assert_eq!(
            choose_leader(&behind, at(5, 6)),
            Err(ElectionError::MissingAcknowledged(LogPosition {
                epoch: 5,
                number: 6
            }))
        );
        assert_eq!(choose_leader(&behind, at(4, 5)), Ok(2));
    }
}
