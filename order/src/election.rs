//! Electing the order leader: ask every replica for its status, choose the most up-to-date
//! live one (last entry's epoch, then number; highest id on ties) that holds every order the
//! caller has acknowledged, and announce it with an epoch larger than any seen. The front end
//! runs this; so does `order elect` for operators.
//!
//! Two elections must never share an epoch, even when the replica that saw the newest one is
//! unreachable: the epoch is at least the wall clock in milliseconds, and above both the
//! highest epoch any reachable replica reports and the caller's own last one.

use std::collections::BTreeMap;

use common::rpc::RpcClient;
use common::wire::{
    Epoch, OrderRequest, OrderResponse, ReplicaId, ReplicaStatus, TransactionNumber,
};
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
    #[error("no reachable replica holds order #{0}, which was acknowledged")]
    MissingAcknowledged(TransactionNumber),
    /// The chosen replica refused the announcement.
    #[error("replica {0} refused to lead: {1}")]
    Refused(ReplicaId, String),
}

/// Chooses among the replicas that answered: the most up-to-date that holds order
/// `acknowledged` (the highest number the caller has acknowledged), highest id on ties.
pub fn choose_leader(
    live: &[ReplicaStatus],
    acknowledged: Option<TransactionNumber>,
) -> Result<ReplicaId, ElectionError> {
    if live.is_empty() {
        return Err(ElectionError::NoneReachable);
    }
    live.iter()
        .filter(|s| s.last.map(|p| p.number) >= acknowledged)
        .max_by_key(|s| (s.last, s.id))
        .map(|s| s.id)
        .ok_or(ElectionError::MissingAcknowledged(
            acknowledged.unwrap_or(0),
        ))
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

/// Runs one election over `replicas` (their clients' own deadlines bound it).
pub async fn elect(
    replicas: &BTreeMap<ReplicaId, ReplicaClient>,
    acknowledged: Option<TransactionNumber>,
    last_epoch: Epoch,
) -> Result<Elected, ElectionError> {
    let asks = replicas.iter().map(|(&id, client)| async move {
        match client.call(&OrderRequest::Status).await {
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
    let mut informed = Vec::new();
    // The leader first, so that followers asking it for a sync-up find it leading.
    let order = std::iter::once(leader).chain(live.iter().map(|s| s.id).filter(|&id| id != leader));
    for id in order {
        let announce = OrderRequest::SetLeader {
            epoch,
            leader_id: leader,
        };
        match replicas[&id].call(&announce).await {
            Ok(OrderResponse::LeaderSet) => informed.push(id),
            other if id == leader => {
                return Err(ElectionError::Refused(leader, format!("{other:?}")));
            }
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
    use common::wire::{LogPosition, Role};

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
        let live = [status(1, Some((5, 6))), status(2, Some((4, 9)))];
        // Replica 1 has the newer epoch but lacks order 9.
        assert_eq!(choose_leader(&live, Some(9)), Ok(2));
        assert_eq!(
            choose_leader(&live, Some(10)),
            Err(ElectionError::MissingAcknowledged(10))
        );
    }
}
