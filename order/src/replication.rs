//! The replication decisions, free of I/O so that they can be tested exhaustively: how a
//! leader's entries fit a follower's log, where a follower's history meets the leader's, and
//! which entries are committed under a write quorum.

use std::collections::BTreeMap;

use common::wire::{LogPosition, OrderEntry, ReplicaId, TransactionNumber};

/// How many replicas must hold an order before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WriteQuorum {
    /// The in-sync set may shrink to the leader alone: trading goes on while one in-sync
    /// replica lives.
    All,
    /// The in-sync set never shrinks below a majority: every acknowledged order is on two
    /// disks; with two replicas down, orders are refused.
    Majority,
}

/// How entries sent after `prev` fit a follower's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// The first `skip` entries are already here (same positions); append the rest.
    Append {
        /// Entries to skip.
        skip: usize,
    },
    /// The log holds other entries from `from` on: set them aside, then append the entries
    /// from index `skip`.
    Replace {
        /// First number to set aside.
        from: TransactionNumber,
        /// Entries before this index are already here.
        skip: usize,
    },
    /// The log lacks `prev`: entries are missing in between.
    Gap,
    /// The log holds another entry at `prev`'s number: the histories differ before it.
    Mismatch,
}

/// Decides how `entries` (which follow `prev` in the leader's log) fit a log whose positions
/// `position` reports.
pub fn fit(
    position: impl Fn(TransactionNumber) -> Option<LogPosition>,
    prev: Option<LogPosition>,
    entries: &[OrderEntry],
) -> Fit {
    if let Some(prev) = prev {
        match position(prev.number) {
            None => return Fit::Gap,
            Some(here) if here != prev => return Fit::Mismatch,
            Some(_) => {}
        }
    }
    for (index, entry) in entries.iter().enumerate() {
        match position(entry.number) {
            // Same number and epoch: the same entry (one leader per epoch numbers in order).
            Some(here) if here == entry.position() => continue,
            Some(_) => {
                return Fit::Replace {
                    from: entry.number,
                    skip: index,
                }
            }
            None => return Fit::Append { skip: index },
        }
    }
    Fit::Append {
        skip: entries.len(),
    }
}

/// Where a follower's log meets the leader's: the newest position both hold, given the last
/// entry of each epoch in each log (oldest first). Entries of one epoch come from one leader
/// in one order, so two logs that both hold entries of an epoch agree on the shorter run.
pub fn meeting_point(follower: &[LogPosition], leader: &[LogPosition]) -> Option<LogPosition> {
    for known in follower.iter().rev() {
        if let Some(ours) = leader.iter().find(|b| b.epoch == known.epoch) {
            return Some(LogPosition {
                epoch: known.epoch,
                number: known.number.min(ours.number),
            });
        }
    }
    None
}

/// What the leader knows of one follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FollowerProgress {
    /// Caught up and answering: waited for, and added to the in-sync set once it holds every
    /// committed order.
    pub up: bool,
    /// The newest entry it has persisted, as far as the leader knows.
    pub persisted: Option<TransactionNumber>,
    /// It stopped answering in time: removed from the in-sync set (when the write quorum
    /// allows) before the leader goes on without it.
    pub silent: bool,
}

impl WriteQuorum {
    /// The smallest in-sync set a leader may shrink to among `replicas`.
    pub fn min_in_sync(self, replicas: usize) -> usize {
        match self {
            WriteQuorum::All => 1,
            WriteQuorum::Majority => replicas / 2 + 1,
        }
    }
}

/// The newest entry that is committed: durable on the leader and on every follower it waits
/// for (each member of the in-sync set, and each follower about to join it), and nothing
/// while the in-sync set is smaller than the write quorum's minimum.
pub fn commit_point(
    leader_durable: Option<TransactionNumber>,
    waited_for: &[Option<TransactionNumber>],
    in_sync: usize,
    min_in_sync: usize,
) -> Option<TransactionNumber> {
    if in_sync < min_in_sync {
        return None;
    }
    waited_for
        .iter()
        .copied()
        .fold(leader_durable, std::cmp::min)
}

/// The in-sync set the leader should record: without the members that went silent (unless
/// that would leave fewer than `min_in_sync`), with the followers that are up and have
/// persisted everything up to `committed` (every order that may have been acknowledged).
/// Ascending; always holds the leader.
pub fn desired_in_sync(
    leader: ReplicaId,
    current: &[ReplicaId],
    followers: &BTreeMap<ReplicaId, FollowerProgress>,
    committed: Option<TransactionNumber>,
    min_in_sync: usize,
) -> Vec<ReplicaId> {
    let progress = |id: &ReplicaId| followers.get(id).copied().unwrap_or_default();
    let mut kept: Vec<ReplicaId> = current
        .iter()
        .copied()
        .filter(|id| *id == leader || !progress(id).silent)
        .collect();
    if kept.len() < min_in_sync {
        kept = current.to_vec();
    }
    for (&id, follower) in followers {
        let holds_committed = follower.persisted >= committed;
        if follower.up && !follower.silent && holds_committed && !kept.contains(&id) {
            kept.push(id);
        }
    }
    if !kept.contains(&leader) {
        kept.push(leader);
    }
    kept.sort_unstable();
    kept.dedup();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::wire::{RequestId, StockName, TradeKind};
    use proptest::prelude::*;

    fn pos(number: u64, epoch: u64) -> LogPosition {
        LogPosition { epoch, number }
    }

    fn entry(number: u64, epoch: u64) -> OrderEntry {
        OrderEntry {
            number,
            epoch,
            request_id: RequestId::new(format!("r{number}")).unwrap(),
            name: StockName::new("GameStart").unwrap(),
            kind: TradeKind::Buy,
            quantity: 1,
        }
    }

    fn log_of(epochs: &[u64]) -> impl Fn(u64) -> Option<LogPosition> + '_ {
        move |n| epochs.get(n as usize).map(|&e| pos(n, e))
    }

    #[test]
    fn entries_fit_append_skip_replace_or_gap() {
        let here = [1, 1, 2];
        let log = log_of(&here);
        assert_eq!(
            fit(&log, Some(pos(2, 2)), &[entry(3, 2)]),
            Fit::Append { skip: 0 }
        );
        assert_eq!(
            fit(
                &log,
                None,
                &[entry(0, 1), entry(1, 1), entry(2, 2), entry(3, 3)]
            ),
            Fit::Append { skip: 3 }
        );
        assert_eq!(
            fit(&log, Some(pos(1, 1)), &[entry(2, 3), entry(3, 3)]),
            Fit::Replace { from: 2, skip: 0 }
        );
        assert_eq!(fit(&log, Some(pos(4, 2)), &[entry(5, 2)]), Fit::Gap);
        assert_eq!(fit(&log, Some(pos(2, 3)), &[entry(3, 3)]), Fit::Mismatch);
        assert_eq!(fit(&log, Some(pos(2, 2)), &[]), Fit::Append { skip: 0 });
    }

    #[test]
    fn logs_meet_at_the_newest_shared_position() {
        // Follower: 0..=100 in epoch 1. Leader: 0..=50 in epoch 1, then epoch 2.
        assert_eq!(
            meeting_point(&[pos(100, 1)], &[pos(50, 1), pos(200, 2)]),
            Some(pos(50, 1))
        );
        // Follower has an epoch the leader never saw on top of a shared one.
        assert_eq!(
            meeting_point(&[pos(9, 1), pos(12, 3)], &[pos(10, 1), pos(20, 4)]),
            Some(pos(9, 1))
        );
        assert_eq!(meeting_point(&[pos(4, 7)], &[pos(10, 1)]), None);
        assert_eq!(meeting_point(&[], &[pos(10, 1)]), None);
    }

    #[test]
    fn commit_waits_for_every_waited_for_follower_and_a_large_enough_set() {
        assert_eq!(commit_point(Some(9), &[Some(7), Some(8)], 3, 1), Some(7));
        assert_eq!(commit_point(Some(9), &[Some(7), None], 3, 1), None);
        assert_eq!(commit_point(Some(9), &[], 1, 1), Some(9));
        assert_eq!(commit_point(Some(9), &[], 1, 2), None);
        assert_eq!(commit_point(Some(4), &[Some(8)], 2, 2), Some(4));
        assert_eq!(commit_point(None, &[Some(8), Some(8)], 3, 1), None);
    }

    #[test]
    fn the_in_sync_set_drops_silent_members_and_takes_back_caught_up_ones() {
        let f = |up, persisted, silent| FollowerProgress {
            up,
            persisted,
            silent,
        };
        let followers = |a, b| BTreeMap::from([(1, a), (2, b)]);
        // Replica 2 went silent: dropped, unless the quorum forbids shrinking below two.
        let silent_2 = followers(f(true, Some(5), false), f(false, Some(3), true));
        assert_eq!(
            desired_in_sync(3, &[1, 2, 3], &silent_2, Some(5), 1),
            vec![1, 3]
        );
        assert_eq!(
            desired_in_sync(3, &[1, 2, 3], &silent_2, Some(5), 2),
            vec![1, 3]
        );
        let both_silent = followers(f(false, None, true), f(false, None, true));
        assert_eq!(
            desired_in_sync(3, &[1, 2, 3], &both_silent, Some(5), 1),
            vec![3]
        );
        assert_eq!(
            desired_in_sync(3, &[1, 2, 3], &both_silent, Some(5), 2),
            vec![1, 2, 3]
        );
        // Replica 1 is back and holds every committed order; replica 2 does not yet.
        let back = followers(f(true, Some(5), false), f(true, Some(4), false));
        assert_eq!(desired_in_sync(3, &[3], &back, Some(5), 1), vec![1, 3]);
        assert_eq!(desired_in_sync(3, &[3], &back, None, 1), vec![1, 2, 3]);
    }

    proptest! {
        /// Whatever two histories look like (epochs non-decreasing, both built by the same
        /// sequence of leaders), the meeting point is a position both hold, and no later
        /// position is held by both.
        #[test]
        fn the_meeting_point_is_the_longest_common_prefix(
            shared in proptest::collection::vec(1u64..4, 0..8),
            follower_extra in proptest::collection::vec(0u64..3, 0..6),
            leader_extra in proptest::collection::vec(0u64..3, 0..6),
        ) {
            let mut shared = shared;
            shared.sort_unstable();
            let top = shared.last().copied().unwrap_or(0);
            // Each side continues with its own, distinct, later epochs.
            let extend = |extra: &[u64], base: u64| {
                let mut epochs = shared.clone();
                let mut extra: Vec<u64> = extra.iter().map(|e| base + e * 2).collect();
                extra.sort_unstable();
                epochs.extend(extra);
                epochs
            };
            let follower = extend(&follower_extra, top + 10);
            let leader = extend(&leader_extra, top + 11);
            let boundaries = |epochs: &[u64]| {
                let mut out: Vec<LogPosition> = Vec::new();
                for (n, &e) in epochs.iter().enumerate() {
                    match out.last_mut() {
                        Some(last) if last.epoch == e => last.number = n as u64,
                        _ => out.push(pos(n as u64, e)),
                    }
                }
                out
            };
            let common = follower.iter().zip(&leader).take_while(|(a, b)| a == b).count();
            let expected = common.checked_sub(1).map(|n| pos(n as u64, follower[n]));
            prop_assert_eq!(meeting_point(&boundaries(&follower), &boundaries(&leader)), expected);
        }
    }
}
