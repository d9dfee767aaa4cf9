//! The replication decisions, free of I/O so that they can be tested exhaustively: how a
//! leader's entries fit a follower's log, where a follower's history meets the leader's, and
//! which entries are committed under a write quorum.

use common::wire::{LogPosition, OrderEntry, TransactionNumber};

/// How many replicas must hold an order before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WriteQuorum {
    /// The leader and every follower it believes up: trading goes on while one replica lives.
    All,
    /// Also a majority of all replicas: no acknowledged order is lost to any crash pattern.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerProgress {
    /// Believed up: its acknowledgement is awaited. A follower that failed to answer in time
    /// is not, until it has caught up again.
    pub up: bool,
    /// The newest entry it has persisted, as far as the leader knows.
    pub persisted: Option<TransactionNumber>,
}

/// The newest entry that is committed: durable on the leader and on every follower believed
/// up, and under `Majority` on a majority of the `replicas` as well.
pub fn commit_point(
    leader_durable: Option<TransactionNumber>,
    followers: &[FollowerProgress],
    quorum: WriteQuorum,
    replicas: usize,
) -> Option<TransactionNumber> {
    let all = followers
        .iter()
        .filter(|f| f.up)
        .map(|f| f.persisted)
        .fold(leader_durable, std::cmp::min);
    match quorum {
        WriteQuorum::All => all,
        WriteQuorum::Majority => {
            let mut persisted: Vec<Option<TransactionNumber>> =
                followers.iter().map(|f| f.persisted).collect();
            persisted.push(leader_durable);
            persisted.sort_unstable_by(|a, b| b.cmp(a));
            let needed = replicas / 2 + 1;
            let majority = persisted.get(needed - 1).copied().flatten();
            all.min(majority)
        }
    }
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
    fn commit_waits_for_up_followers_and_for_a_majority_when_asked() {
        let up = |p| FollowerProgress {
            up: true,
            persisted: p,
        };
        let behind = |p| FollowerProgress {
            up: false,
            persisted: p,
        };
        assert_eq!(
            commit_point(Some(9), &[up(Some(7)), up(Some(8))], WriteQuorum::All, 3),
            Some(7)
        );
        assert_eq!(
            commit_point(Some(9), &[up(Some(7)), behind(None)], WriteQuorum::All, 3),
            Some(7)
        );
        assert_eq!(
            commit_point(Some(9), &[behind(None), behind(None)], WriteQuorum::All, 3),
            Some(9)
        );
        assert_eq!(
            commit_point(
                Some(9),
                &[behind(None), behind(None)],
                WriteQuorum::Majority,
                3
            ),
            None
        );
        assert_eq!(
            commit_point(
                Some(9),
                &[behind(Some(5)), behind(None)],
                WriteQuorum::Majority,
                3
            ),
            Some(5)
        );
        assert_eq!(
            commit_point(
                Some(4),
                &[up(Some(8)), behind(None)],
                WriteQuorum::Majority,
                3
            ),
            Some(4)
        );
        assert_eq!(
            commit_point(None, &[up(Some(8)), up(Some(8))], WriteQuorum::All, 3),
            None
        );
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
