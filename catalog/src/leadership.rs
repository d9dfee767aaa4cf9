//! The rules of the leadership record, free of I/O: every change is a compare-and-set on the
//! epoch, elections only choose a member of the in-sync set, and only the recorded leader
//! changes that set. The service keeps the record durable and tells subscribers.

use common::safety::{Rule, Rules};
use common::wire::{Epoch, Leadership, LeadershipChange, ReplicaId, MAX_REPLICAS};

/// Applies `change` to `current` if `current.epoch` is still `expected`; the new record, or
/// why not (nothing changes then).
pub fn apply(
    current: &Leadership,
    expected: Epoch,
    change: &LeadershipChange,
    rules: Rules,
) -> Result<Leadership, String> {
    if expected != current.epoch {
        return Err(format!(
            "the record is at epoch {}, not {expected}",
            current.epoch
        ));
    }
    let next_epoch = || {
        current
            .epoch
            .checked_add(1)
            .ok_or_else(|| "the epoch cannot grow further".to_owned())
    };
    match change {
        LeadershipChange::Elect { leader, in_sync } => {
            if current.epoch == 0 {
                // The first election: every replica starts empty, so all are in sync.
                let in_sync = members(in_sync)?;
                if !in_sync.contains(leader) {
                    return Err(format!("leader {leader} is not in {in_sync:?}"));
                }
                return Ok(Leadership {
                    epoch: next_epoch()?,
                    leader: Some(*leader),
                    in_sync,
                });
            }
            if !current.in_sync.contains(leader) {
                if rules.holds(Rule::InSyncElection) {
                    return Err(format!(
                        "replica {leader} is not in sync ({:?}): it may lack acknowledged \
                         orders",
                        current.in_sync
                    ));
                }
                // Broken on purpose (simulator only): the leader joins the set it was not in.
                let in_sync = members(&[current.in_sync.as_slice(), &[*leader]].concat())?;
                return Ok(Leadership {
                    epoch: next_epoch()?,
                    leader: Some(*leader),
                    in_sync,
                });
            }
            Ok(Leadership {
                epoch: next_epoch()?,
                leader: Some(*leader),
                in_sync: current.in_sync.clone(),
            })
        }
        LeadershipChange::SetInSync { leader, in_sync } => {
            if current.leader != Some(*leader) {
                return Err(format!(
                    "replica {leader} does not lead epoch {}",
                    current.epoch
                ));
            }
            let in_sync = members(in_sync)?;
            if !in_sync.contains(leader) {
                return Err(format!("the leader must stay in sync, not {in_sync:?}"));
            }
            Ok(Leadership {
                epoch: current.epoch,
                leader: Some(*leader),
                in_sync,
            })
        }
        LeadershipChange::Renew { leader } => {
            if current.leader != Some(*leader) {
                return Err(format!(
                    "replica {leader} does not lead epoch {}",
                    current.epoch
                ));
            }
            Ok(Leadership {
                epoch: next_epoch()?,
                leader: Some(*leader),
                in_sync: current.in_sync.clone(),
            })
        }
        LeadershipChange::Unclean { leader } => {
            members(&[*leader])?;
            Ok(Leadership {
                epoch: next_epoch()?,
                leader: Some(*leader),
                in_sync: vec![*leader],
            })
        }
    }
}

/// A valid in-sync set, ascending: 1 to [`MAX_REPLICAS`] distinct ids, none of them 0.
fn members(ids: &[ReplicaId]) -> Result<Vec<ReplicaId>, String> {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != ids.len() {
        return Err(format!("replica ids repeat in {ids:?}"));
    }
    if sorted.is_empty() || sorted.len() > MAX_REPLICAS {
        return Err(format!(
            "an in-sync set names 1 to {MAX_REPLICAS} replicas, not {}",
            ids.len()
        ));
    }
    if sorted.first() == Some(&0) {
        return Err("replica ids start at 1".into());
    }
    Ok(sorted)
}

/// Whether a trade (or a leader's request) made under `epoch` may act now.
pub fn admits(current: &Leadership, epoch: Epoch) -> bool {
    current.leader.is_some() && current.epoch == epoch
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(epoch: Epoch, leader: ReplicaId, in_sync: &[ReplicaId]) -> Leadership {
        Leadership {
            epoch,
            leader: Some(leader),
            in_sync: in_sync.to_vec(),
        }
    }

    fn elect(leader: ReplicaId) -> LeadershipChange {
        LeadershipChange::Elect {
            leader,
            in_sync: vec![1, 2, 3],
        }
    }

    #[test]
    fn the_first_election_names_the_in_sync_set() {
        let first = apply(&Leadership::default(), 0, &elect(3), Rules::ALL).unwrap();
        assert_eq!(first, record(1, 3, &[1, 2, 3]));
        let none = LeadershipChange::Elect {
            leader: 1,
            in_sync: vec![],
        };
        assert!(apply(&Leadership::default(), 0, &none, Rules::ALL).is_err());
        let outside = LeadershipChange::Elect {
            leader: 4,
            in_sync: vec![1, 2, 3],
        };
        assert!(apply(&Leadership::default(), 0, &outside, Rules::ALL).is_err());
        let repeated = LeadershipChange::Elect {
            leader: 1,
            in_sync: vec![1, 1],
        };
        assert!(apply(&Leadership::default(), 0, &repeated, Rules::ALL).is_err());
    }

    #[test]
    fn an_election_needs_the_current_epoch_and_an_in_sync_leader() {
        let now = record(4, 3, &[2, 3]);
        assert_eq!(
            apply(&now, 4, &elect(2), Rules::ALL).unwrap(),
            record(5, 2, &[2, 3])
        );
        // Someone else changed it first: the compare-and-set fails.
        assert!(apply(&now, 3, &elect(2), Rules::ALL).is_err());
        // Replica 1 was dropped from the set: it may lack acknowledged orders.
        assert!(apply(&now, 4, &elect(1), Rules::ALL).is_err());
        // Later elections keep the set; only the leader changes it.
        let widened = LeadershipChange::Elect {
            leader: 2,
            in_sync: vec![1, 2, 3],
        };
        assert_eq!(
            apply(&now, 4, &widened, Rules::ALL).unwrap(),
            record(5, 2, &[2, 3])
        );
    }

    #[test]
    fn only_the_leader_changes_the_in_sync_set_and_stays_in_it() {
        let now = record(4, 3, &[1, 2, 3]);
        let shrink = |leader, in_sync: &[ReplicaId]| LeadershipChange::SetInSync {
            leader,
            in_sync: in_sync.to_vec(),
        };
        assert_eq!(
            apply(&now, 4, &shrink(3, &[3, 1]), Rules::ALL).unwrap(),
            record(4, 3, &[1, 3])
        );
        assert!(apply(&now, 4, &shrink(2, &[2, 3]), Rules::ALL).is_err());
        assert!(apply(&now, 4, &shrink(3, &[1, 2]), Rules::ALL).is_err());
        assert!(apply(&now, 5, &shrink(3, &[3]), Rules::ALL).is_err());
        assert!(apply(&now, 4, &shrink(3, &[0, 3]), Rules::ALL).is_err());
    }

    #[test]
    fn an_unclean_election_leaves_the_leader_alone_in_sync() {
        let now = record(4, 3, &[3]);
        let unclean = LeadershipChange::Unclean { leader: 1 };
        assert_eq!(
            apply(&now, 4, &unclean, Rules::ALL).unwrap(),
            record(5, 1, &[1])
        );
        assert!(apply(&now, 3, &unclean, Rules::ALL).is_err());
    }

    #[test]
    fn the_epoch_never_wraps() {
        let now = record(u64::MAX, 1, &[1, 2]);
        assert!(apply(&now, u64::MAX, &elect(2), Rules::ALL).is_err());
    }

    #[test]
    fn trades_are_admitted_only_under_the_recorded_epoch() {
        assert!(!admits(&Leadership::default(), 0));
        let now = record(4, 3, &[3]);
        assert!(admits(&now, 4));
        assert!(!admits(&now, 3));
        assert!(!admits(&now, 5));
    }

    fn change() -> impl Strategy<Value = LeadershipChange> {
        let ids = proptest::collection::vec(0u32..6, 0..5);
        prop_oneof![
            (0u32..6, ids.clone())
                .prop_map(|(leader, in_sync)| LeadershipChange::Elect { leader, in_sync }),
            (0u32..6, ids)
                .prop_map(|(leader, in_sync)| LeadershipChange::SetInSync { leader, in_sync }),
            (0u32..6).prop_map(|leader| LeadershipChange::Renew { leader }),
        ]
    }

    proptest! {
        /// Whatever sequence of changes is tried, with stale or current epochs: the epoch only
        /// grows, by one per election; the leader is always in sync; an election's leader was
        /// in sync before it (so it holds every acknowledged order); and between elections the
        /// set changes only at the leader's request.
        #[test]
        fn every_accepted_change_keeps_the_invariants(
            changes in proptest::collection::vec((change(), 0u64..3), 1..40)
        ) {
            let mut current = Leadership::default();
            for (change, lag) in changes {
                let expected = current.epoch.saturating_sub(lag);
                let Ok(next) = apply(&current, expected, &change, Rules::ALL) else { continue };
                prop_assert_eq!(expected, current.epoch);
                let leader = next.leader.unwrap();
                prop_assert!(next.in_sync.contains(&leader));
                prop_assert!(next.in_sync.windows(2).all(|w| w[0] < w[1]));
                match &change {
                    LeadershipChange::Elect { .. } => {
                        prop_assert_eq!(next.epoch, current.epoch + 1);
                        if current.epoch > 0 {
                            prop_assert!(current.in_sync.contains(&leader));
                            prop_assert_eq!(&next.in_sync, &current.in_sync);
                        }
                    }
                    LeadershipChange::SetInSync { leader: asker, .. } => {
                        prop_assert_eq!(next.epoch, current.epoch);
                        prop_assert_eq!(current.leader, Some(*asker));
                    }
                    LeadershipChange::Renew { leader: asker } => {
                        prop_assert_eq!(next.epoch, current.epoch + 1);
                        prop_assert_eq!(current.leader, Some(*asker));
                        prop_assert_eq!(&next.in_sync, &current.in_sync);
                    }
                    LeadershipChange::Unclean { .. } => {}
                }
                current = next;
            }
        }
    }
}
