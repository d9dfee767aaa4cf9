//! Electing the order leader through the catalog's leadership record. Anyone may run an
//! election (every front end, `order elect`), and any number at once: an election happens only
//! when the recorded leader cannot serve, chooses the highest-id live member of the recorded
//! in-sync set (each holds every acknowledged order), and is a compare-and-set on the record's
//! epoch at the catalog, so at most one of several concurrent elections wins and the others
//! follow it. The catalog also refuses to depose a leader that renewed its lease (it told the
//! catalog it serves within the lease): an elector that cannot reach such a leader is the one
//! cut off. Epochs are the catalog's counter, never a clock.

use std::collections::BTreeMap;
use std::time::Duration;

use catalog::{CatalogClient, LeadershipOutcome};
use common::rpc::RpcClient;
use common::wire::{
    Leadership, LeadershipChange, OrderRequest, OrderResponse, ReplicaId, ReplicaStatus, Role,
};
use tracing::{info, warn};

/// A client of one replica.
pub type ReplicaClient = RpcClient<OrderRequest, OrderResponse>;

/// Why no leader could be made to serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElectionError {
    /// The catalog, which keeps the record, did not answer.
    #[error("the catalog is unreachable: {0}")]
    CatalogUnreachable(String),
    /// No replica that may lead is alive.
    #[error("{0}")]
    NoCandidate(String),
    /// The recorded leader serves as far as the catalog knows (it holds a lease) but this
    /// elector cannot reach it: the elector is the one cut off, and does not depose it.
    #[error("{0}")]
    LeaderElsewhere(String),
}

/// What to do about the record, given what the replicas answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The recorded leader serves (or has yet to hear of its election): nothing to do.
    Healthy,
    /// Elect `leader`; `in_sync` names every replica at the very first election.
    Elect {
        /// The replica to elect.
        leader: ReplicaId,
        /// The in-sync set of a first election.
        in_sync: Vec<ReplicaId>,
    },
    /// No replica may lead now.
    NoCandidate(String),
}

/// Whether the replica answering `status` serves as the leader of `record`.
fn serves(record: &Leadership, status: &ReplicaStatus) -> bool {
    if !status.catalog_link || status.stalled || status.storage_failure.is_some() {
        // It cannot trade, or cannot commit, so it cannot place orders.
        return false;
    }
    // Not told of its election yet (the record's push is on its way), or leading it.
    status.epoch < record.epoch || (status.epoch == record.epoch && status.role == Role::Leader)
}

/// Decides, without I/O, whether to elect and whom. `statuses` holds the replicas that
/// answered; `replicas` names every configured one.
pub fn judge(
    record: &Leadership,
    statuses: &BTreeMap<ReplicaId, ReplicaStatus>,
    replicas: &[ReplicaId],
) -> Verdict {
    let linked = |s: &&ReplicaStatus| s.catalog_link;
    let Some(leader) = record.leader else {
        // Never elected: every replica is empty, so any live one may lead; the most up to date
        // (in case state predates the record), highest id on ties.
        return match statuses
            .values()
            .filter(linked)
            .max_by_key(|s| (s.last, s.id))
        {
            Some(chosen) => Verdict::Elect {
                leader: chosen.id,
                in_sync: replicas.to_vec(),
            },
            None => Verdict::NoCandidate("no order replica is reachable".into()),
        };
    };
    if statuses.get(&leader).is_some_and(|s| serves(record, s)) {
        return Verdict::Healthy;
    }
    let candidate = statuses
        .values()
        .filter(linked)
        .filter(|s| !s.stalled && s.storage_failure.is_none())
        .filter(|s| record.in_sync.contains(&s.id))
        .map(|s| s.id)
        .max();
    match candidate {
        Some(leader) => Verdict::Elect {
            leader,
            in_sync: Vec::new(),
        },
        None => Verdict::NoCandidate(format!(
            "no live in-sync replica can lead epoch {}: replicas {:?} hold every acknowledged \
             order, and none of them answers",
            record.epoch + 1,
            record.in_sync
        )),
    }
}

/// Asks every replica for its status, each within `timeout`.
pub async fn statuses(
    replicas: &BTreeMap<ReplicaId, ReplicaClient>,
    timeout: Duration,
) -> BTreeMap<ReplicaId, ReplicaStatus> {
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
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .map(|s| (s.id, s))
        .collect()
}

/// What [`ensure_leader`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ensured {
    /// The record to follow.
    pub record: Leadership,
    /// Whether this call's election changed it.
    pub elected: bool,
    /// Replicas whose disk failed, as `order-ID: reason`.
    pub storage_failures: Vec<String>,
}

/// Reads the record and, if its leader cannot serve, elects the highest-id live in-sync
/// replica by compare-and-set. Losing to a concurrent election is not an error: the winner's
/// record comes back. Every call takes at most `timeout`.
pub async fn ensure_leader(
    catalog: &CatalogClient,
    replicas: &BTreeMap<ReplicaId, ReplicaClient>,
    timeout: Duration,
) -> Result<Ensured, ElectionError> {
    let (record, statuses) = tokio::join!(catalog.leadership(timeout), statuses(replicas, timeout));
    let record = record.map_err(|e| ElectionError::CatalogUnreachable(e.to_string()))?;
    let ids: Vec<ReplicaId> = replicas.keys().copied().collect();
    let storage_failures: Vec<String> = statuses
        .values()
        .filter_map(|s| Some(format!("order-{}: {}", s.id, s.storage_failure.as_ref()?)))
        .collect();
    let (leader, in_sync) = match judge(&record, &statuses, &ids) {
        Verdict::Healthy => {
            return Ok(Ensured {
                record,
                elected: false,
                storage_failures,
            })
        }
        Verdict::NoCandidate(reason) => return Err(ElectionError::NoCandidate(reason)),
        Verdict::Elect { leader, in_sync } => (leader, in_sync),
    };
    let change = LeadershipChange::Elect { leader, in_sync };
    match catalog
        .change_leadership(record.epoch, change, timeout)
        .await
        .map_err(|e| ElectionError::CatalogUnreachable(e.to_string()))?
    {
        LeadershipOutcome::Changed(record) => {
            info!(%record, "order leader elected");
            Ok(Ensured {
                record,
                elected: true,
                storage_failures,
            })
        }
        LeadershipOutcome::Refused { current, reason } if current.epoch > record.epoch => {
            info!(%current, %reason, "another election won; following it");
            Ok(Ensured {
                record: current,
                elected: false,
                storage_failures,
            })
        }
        LeadershipOutcome::Refused { reason, .. } => Err(ElectionError::LeaderElsewhere(format!(
            "{reason}, but it does not serve from here"
        ))),
    }
}

/// An operator's override when no in-sync replica can come back: `leader` leads a new epoch
/// alone. Returns the new record and what may be lost, in words.
pub async fn elect_unclean(
    catalog: &CatalogClient,
    replicas: &BTreeMap<ReplicaId, ReplicaClient>,
    leader: ReplicaId,
    timeout: Duration,
) -> Result<(Leadership, String), ElectionError> {
    if !replicas.contains_key(&leader) {
        return Err(ElectionError::NoCandidate(format!(
            "replica {leader} is not among the configured replicas {:?}",
            replicas.keys().collect::<Vec<_>>()
        )));
    }
    let record = catalog
        .leadership(timeout)
        .await
        .map_err(|e| ElectionError::CatalogUnreachable(e.to_string()))?;
    let statuses = statuses(replicas, timeout).await;
    let chosen = statuses.get(&leader).and_then(|s| s.last);
    let mut risk = format!(
        "replica {leader} (last entry {}) leads alone; ",
        chosen.map_or("none".into(), |p| p.to_string())
    );
    let others: Vec<String> = record
        .in_sync
        .iter()
        .filter(|&&id| id != leader)
        .map(|id| match statuses.get(id) {
            Some(s) => format!(
                "{id} (last {})",
                s.last.map_or("none".into(), |p| p.to_string())
            ),
            None => format!("{id} (unreachable)"),
        })
        .collect();
    if record.in_sync.contains(&leader) {
        risk.push_str("it was in sync: no acknowledged order is lost");
    } else {
        risk.push_str(&format!(
            "it was NOT in sync: orders acknowledged after its last entry and held only by {} \
             are set aside when those replicas return",
            if others.is_empty() {
                "replicas no longer recorded".to_owned()
            } else {
                others.join(", ")
            }
        ));
    }
    match catalog
        .change_leadership(record.epoch, LeadershipChange::Unclean { leader }, timeout)
        .await
        .map_err(|e| ElectionError::CatalogUnreachable(e.to_string()))?
    {
        LeadershipOutcome::Changed(record) => {
            warn!(%record, %risk, "unclean election");
            Ok((record, risk))
        }
        LeadershipOutcome::Refused { current, reason } => Err(ElectionError::NoCandidate(format!(
            "the record changed meanwhile ({current}): {reason}; try again"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::wire::{Epoch, LogPosition};

    fn status(id: ReplicaId, role: Role, epoch: Epoch, link: bool) -> ReplicaStatus {
        ReplicaStatus {
            id,
            role,
            epoch,
            leader_id: None,
            last: Some(LogPosition { epoch, number: 0 }),
            catalog_link: link,
            placing: role == Role::Leader,
            stalled: false,
            storage_failure: None,
        }
    }

    fn record(epoch: Epoch, leader: ReplicaId, in_sync: &[ReplicaId]) -> Leadership {
        Leadership {
            epoch,
            leader: Some(leader),
            in_sync: in_sync.to_vec(),
        }
    }

    fn answered(statuses: &[ReplicaStatus]) -> BTreeMap<ReplicaId, ReplicaStatus> {
        statuses.iter().map(|s| (s.id, s.clone())).collect()
    }

    #[test]
    fn a_serving_leader_is_left_alone() {
        let now = record(4, 2, &[1, 2, 3]);
        let all = answered(&[
            status(1, Role::Follower, 4, true),
            status(2, Role::Leader, 4, true),
            status(3, Role::Follower, 4, true),
        ]);
        assert_eq!(judge(&now, &all, &[1, 2, 3]), Verdict::Healthy);
        // Elected but not told yet: give it the time to hear.
        let pending = answered(&[status(2, Role::Follower, 3, true)]);
        assert_eq!(judge(&now, &pending, &[1, 2, 3]), Verdict::Healthy);
    }

    #[test]
    fn only_a_live_linked_in_sync_replica_is_elected_highest_id_first() {
        let now = record(4, 3, &[1, 2, 3]);
        let leader_gone = answered(&[
            status(1, Role::Follower, 4, true),
            status(2, Role::Follower, 4, true),
        ]);
        assert_eq!(
            judge(&now, &leader_gone, &[1, 2, 3]),
            Verdict::Elect {
                leader: 2,
                in_sync: vec![]
            }
        );
        // Replica 2 was dropped from the set: it may lack acknowledged orders.
        let shrunk = record(4, 3, &[1, 3]);
        assert_eq!(
            judge(&shrunk, &leader_gone, &[1, 2, 3]),
            Verdict::Elect {
                leader: 1,
                in_sync: vec![]
            }
        );
        let only_2 = answered(&[status(2, Role::Follower, 4, true)]);
        assert!(matches!(
            judge(&shrunk, &only_2, &[1, 2, 3]),
            Verdict::NoCandidate(_)
        ));
    }

    #[test]
    fn a_leader_cut_from_the_catalog_or_restarted_is_replaced() {
        let now = record(4, 3, &[2, 3]);
        let cut = answered(&[
            status(2, Role::Follower, 4, true),
            status(3, Role::Leader, 4, false),
        ]);
        assert_eq!(
            judge(&now, &cut, &[1, 2, 3]),
            Verdict::Elect {
                leader: 2,
                in_sync: vec![]
            }
        );
        // A leader that cannot commit (cut from its followers) is replaced by one that can.
        let mut stalled = status(3, Role::Leader, 4, true);
        stalled.stalled = true;
        let cut_from_followers = answered(&[status(2, Role::Follower, 4, true), stalled.clone()]);
        assert_eq!(
            judge(&now, &cut_from_followers, &[1, 2, 3]),
            Verdict::Elect {
                leader: 2,
                in_sync: vec![]
            }
        );
        assert!(matches!(
            judge(&now, &answered(&[stalled]), &[1, 2, 3]),
            Verdict::NoCandidate(_)
        ));
        // Restarted: it may not lead its old epoch again, but may lead the next one.
        let restarted = answered(&[status(3, Role::Idle, 4, true)]);
        assert_eq!(
            judge(&now, &restarted, &[1, 2, 3]),
            Verdict::Elect {
                leader: 3,
                in_sync: vec![]
            }
        );
    }

    #[test]
    fn the_first_election_names_every_replica_in_sync() {
        let live = answered(&[
            status(1, Role::Idle, 0, true),
            status(2, Role::Idle, 0, true),
        ]);
        assert_eq!(
            judge(&Leadership::default(), &live, &[1, 2, 3]),
            Verdict::Elect {
                leader: 2,
                in_sync: vec![1, 2, 3]
            }
        );
        assert!(matches!(
            judge(&Leadership::default(), &BTreeMap::new(), &[1, 2, 3]),
            Verdict::NoCandidate(_)
        ));
    }
}
