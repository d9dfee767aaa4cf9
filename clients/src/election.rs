//! Electing the order leader through the catalog's leadership record. Anyone may run an
//! election (every front end, `order elect`), and any number at once: an election happens only
//! when the recorded leader cannot serve, chooses the highest-id live member of the recorded
//! in-sync set (each holds every acknowledged order), and is a compare-and-set on the record's
//! epoch at the catalog, so at most one of several concurrent elections wins and the others
//! follow it. The catalog also refuses to depose a leader that renewed its lease (it told the
//! catalog it serves within the lease): an elector that cannot reach such a leader is the one
//! cut off. Epochs are the catalog's counter, never a clock.
//!
//! [`Election`] is one round as a state machine without I/O, which the front end's router
//! drives on its runtime (and the simulator on its own); [`ensure_leader`] drives it with
//! real calls for `order elect`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::{CatalogClient, LeadershipOutcome, ReplicaClient};
use common::safety::{Rule, Rules};
use common::wire::{
    Epoch, Leadership, LeadershipChange, OrderRequest, OrderResponse, ReplicaId, ReplicaStatus,
    Role,
};
use tracing::{info, warn};

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
    rules: Rules,
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
        // Broken on purpose (simulator only): any live replica may be chosen.
        .filter(|s| record.in_sync.contains(&s.id) || !rules.holds(Rule::InSyncElection))
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

/// What an election round found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ensured {
    /// The record to follow.
    pub record: Leadership,
    /// Whether this round's election changed it.
    pub elected: bool,
    /// Replicas whose disk failed, as `order-ID: reason`.
    pub storage_failures: Vec<String>,
}

/// What an election round needs to know, asked of the catalog and the replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    /// The leadership record, from the catalog.
    Record,
    /// A replica's status.
    Status(ReplicaId),
    /// The compare-and-set of an election, at the catalog.
    Change {
        /// The epoch the record was read at.
        expected: Epoch,
        /// The election.
        change: LeadershipChange,
    },
}

/// Where an election round stands after an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Waiting for more answers.
    Waiting,
    /// Ask this next (the election itself).
    Ask(Ask),
    /// Finished.
    Done(Result<Ensured, ElectionError>),
}

/// One election round without I/O: read the record and every replica's status, and elect by
/// compare-and-set if the recorded leader cannot serve. Losing to a concurrent election is not
/// an error: the winner's record comes back.
#[derive(Debug)]
pub struct Election {
    replicas: Vec<ReplicaId>,
    rules: Rules,
    record: Option<Result<Leadership, String>>,
    statuses: BTreeMap<ReplicaId, ReplicaStatus>,
    unanswered: BTreeSet<ReplicaId>,
    /// The record an election was asked against.
    electing: Option<Ensured>,
}

impl Election {
    /// A round among `replicas`, and what it asks first (the record and every status).
    pub fn start(replicas: &[ReplicaId], rules: Rules) -> (Election, Vec<Ask>) {
        let asks = std::iter::once(Ask::Record)
            .chain(replicas.iter().map(|&id| Ask::Status(id)))
            .collect();
        let election = Election {
            replicas: replicas.to_vec(),
            rules,
            record: None,
            statuses: BTreeMap::new(),
            unanswered: replicas.iter().copied().collect(),
            electing: None,
        };
        (election, asks)
    }

    /// The catalog's record, or why it could not be read.
    pub fn record(&mut self, record: Result<Leadership, String>) -> Progress {
        if self.record.is_none() {
            self.record = Some(record);
        }
        self.judge()
    }

    /// Replica `id`'s status, or `None` if it did not answer (or answered for another id).
    pub fn status(&mut self, id: ReplicaId, status: Option<ReplicaStatus>) -> Progress {
        if !self.unanswered.remove(&id) {
            return Progress::Waiting;
        }
        match status {
            Some(status) if status.id == id => {
                self.statuses.insert(id, status);
            }
            Some(status) => warn!(
                expected = id,
                answered = status.id,
                "replica answered with another id"
            ),
            None => {}
        }
        self.judge()
    }

    /// The catalog's answer to the election, or why there is none.
    pub fn changed(&mut self, outcome: Result<LeadershipOutcome, String>) -> Progress {
        let Some(read) = self.electing.take() else {
            return Progress::Waiting;
        };
        let ensured = |record, elected| Ensured {
            record,
            elected,
            storage_failures: read.storage_failures.clone(),
        };
        Progress::Done(match outcome {
            Ok(LeadershipOutcome::Changed(record)) => {
                info!(%record, "order leader elected");
                Ok(ensured(record, true))
            }
            Ok(LeadershipOutcome::Refused { current, reason })
                if current.epoch > read.record.epoch =>
            {
                info!(%current, %reason, "another election won; following it");
                Ok(ensured(current, false))
            }
            Ok(LeadershipOutcome::Refused { reason, .. }) => Err(ElectionError::LeaderElsewhere(
                format!("{reason}, but it does not serve from here"),
            )),
            Err(e) => Err(ElectionError::CatalogUnreachable(e)),
        })
    }

    fn judge(&mut self) -> Progress {
        if !self.unanswered.is_empty() || self.electing.is_some() {
            return Progress::Waiting;
        }
        let record = match &self.record {
            None => return Progress::Waiting,
            Some(Err(e)) => {
                return Progress::Done(Err(ElectionError::CatalogUnreachable(e.clone())))
            }
            Some(Ok(record)) => record.clone(),
        };
        let storage_failures: Vec<String> = self
            .statuses
            .values()
            .filter_map(|s| Some(format!("order-{}: {}", s.id, s.storage_failure.as_ref()?)))
            .collect();
        match judge(&record, &self.statuses, &self.replicas, self.rules) {
            Verdict::Healthy => Progress::Done(Ok(Ensured {
                record,
                elected: false,
                storage_failures,
            })),
            Verdict::NoCandidate(reason) => Progress::Done(Err(ElectionError::NoCandidate(reason))),
            Verdict::Elect { leader, in_sync } => {
                let expected = record.epoch;
                self.electing = Some(Ensured {
                    record,
                    elected: false,
                    storage_failures,
                });
                Progress::Ask(Ask::Change {
                    expected,
                    change: LeadershipChange::Elect { leader, in_sync },
                })
            }
        }
    }
}

/// Asks every replica for its status, each within `timeout`.
pub async fn statuses(
    replicas: &BTreeMap<ReplicaId, ReplicaClient>,
    timeout: Duration,
) -> BTreeMap<ReplicaId, Option<ReplicaStatus>> {
    let asks = replicas.iter().map(|(&id, client)| async move {
        let status = match client.call_within(&OrderRequest::Status, timeout).await {
            Ok(OrderResponse::Status(status)) => Some(status),
            _ => None,
        };
        (id, status)
    });
    futures::future::join_all(asks).await.into_iter().collect()
}

/// Reads the record and, if its leader cannot serve, elects the highest-id live in-sync
/// replica by compare-and-set ([`Election`], driven with real calls). Every call takes at
/// most `timeout`.
pub async fn ensure_leader(
    catalog: &CatalogClient,
    replicas: &BTreeMap<ReplicaId, ReplicaClient>,
    timeout: Duration,
) -> Result<Ensured, ElectionError> {
    let ids: Vec<ReplicaId> = replicas.keys().copied().collect();
    let (mut election, _) = Election::start(&ids, Rules::ALL);
    let (record, statuses) = tokio::join!(catalog.leadership(timeout), statuses(replicas, timeout));
    let mut progress = election.record(record.map_err(|e| e.to_string()));
    for (id, status) in statuses {
        progress = election.status(id, status);
    }
    loop {
        match progress {
            Progress::Done(done) => return done,
            Progress::Waiting => {
                return Err(ElectionError::NoCandidate(
                    "the election round did not finish".into(),
                ))
            }
            Progress::Ask(Ask::Change { expected, change }) => {
                let outcome = catalog
                    .change_leadership(expected, change, timeout)
                    .await
                    .map_err(|e| e.to_string());
                progress = election.changed(outcome);
            }
            Progress::Ask(other) => {
                return Err(ElectionError::NoCandidate(format!(
                    "the election round asked {other:?} again"
                )))
            }
        }
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
    let statuses: BTreeMap<ReplicaId, ReplicaStatus> = statuses(replicas, timeout)
        .await
        .into_iter()
        .filter_map(|(id, status)| Some((id, status.filter(|s| s.id == id)?)))
        .collect();
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
            last: Some(LogPosition { epoch, number: 0 }),
            catalog_link: link,
            placing: role == Role::Leader,
            ..ReplicaStatus::new(id, role, epoch)
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
        assert_eq!(judge(&now, &all, &[1, 2, 3], Rules::ALL), Verdict::Healthy);
        // Elected but not told yet: give it the time to hear.
        let pending = answered(&[status(2, Role::Follower, 3, true)]);
        assert_eq!(
            judge(&now, &pending, &[1, 2, 3], Rules::ALL),
            Verdict::Healthy
        );
    }

    #[test]
    fn only_a_live_linked_in_sync_replica_is_elected_highest_id_first() {
        let now = record(4, 3, &[1, 2, 3]);
        let leader_gone = answered(&[
            status(1, Role::Follower, 4, true),
            status(2, Role::Follower, 4, true),
        ]);
        assert_eq!(
            judge(&now, &leader_gone, &[1, 2, 3], Rules::ALL),
            Verdict::Elect {
                leader: 2,
                in_sync: vec![]
            }
        );
        // Replica 2 was dropped from the set: it may lack acknowledged orders.
        let shrunk = record(4, 3, &[1, 3]);
        assert_eq!(
            judge(&shrunk, &leader_gone, &[1, 2, 3], Rules::ALL),
            Verdict::Elect {
                leader: 1,
                in_sync: vec![]
            }
        );
        let only_2 = answered(&[status(2, Role::Follower, 4, true)]);
        assert!(matches!(
            judge(&shrunk, &only_2, &[1, 2, 3], Rules::ALL),
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
            judge(&now, &cut, &[1, 2, 3], Rules::ALL),
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
            judge(&now, &cut_from_followers, &[1, 2, 3], Rules::ALL),
            Verdict::Elect {
                leader: 2,
                in_sync: vec![]
            }
        );
        assert!(matches!(
            judge(&now, &answered(&[stalled]), &[1, 2, 3], Rules::ALL),
            Verdict::NoCandidate(_)
        ));
        // Restarted: it may not lead its old epoch again, but may lead the next one.
        let restarted = answered(&[status(3, Role::Idle, 4, true)]);
        assert_eq!(
            judge(&now, &restarted, &[1, 2, 3], Rules::ALL),
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
            judge(&Leadership::default(), &live, &[1, 2, 3], Rules::ALL),
            Verdict::Elect {
                leader: 2,
                in_sync: vec![1, 2, 3]
            }
        );
        assert!(matches!(
            judge(
                &Leadership::default(),
                &BTreeMap::new(),
                &[1, 2, 3],
                Rules::ALL
            ),
            Verdict::NoCandidate(_)
        ));
    }
}
