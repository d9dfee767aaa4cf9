//! The shape of a history of trades, as the catalog's history and every replica's order log
//! have it: entries numbered from 0 without gaps, each stamped with the epoch of the leader it
//! was traded under. Epochs never go back along a history, so the last entry of each epoch
//! (its boundary) gives every entry's position, and two histories that hold the same position
//! hold the same entries up to it: one leader trades in an epoch, and the catalog numbers its
//! trades in one order.

use crate::wire::{Epoch, LogPosition, TransactionNumber};

/// The positions of a history: how many entries it holds and the last entry of each epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions {
    next: TransactionNumber,
    /// The last entry of each epoch, oldest first.
    boundaries: Vec<LogPosition>,
}

impl Positions {
    /// An empty history.
    pub fn new() -> Self {
        Positions::default()
    }

    /// A history whose epochs end at `boundaries` (oldest first, numbers and epochs rising);
    /// `None` if they do not.
    pub fn from_boundaries(boundaries: Vec<LogPosition>) -> Option<Self> {
        let rising = boundaries
            .windows(2)
            .all(|w| w[0].number < w[1].number && w[0].epoch < w[1].epoch);
        if !rising {
            return None;
        }
        let next = boundaries.last().map_or(0, |b| b.number.saturating_add(1));
        Some(Positions { next, boundaries })
    }

    /// The number the next entry gets.
    pub fn next_number(&self) -> TransactionNumber {
        self.next
    }

    /// The last entry's position.
    pub fn last(&self) -> Option<LogPosition> {
        self.boundaries.last().copied()
    }

    /// The last entry of each epoch, oldest first.
    pub fn boundaries(&self) -> &[LogPosition] {
        &self.boundaries
    }

    /// The last `at_most` boundaries: what a history says of itself when it looks for where it
    /// meets another.
    pub fn recent_boundaries(&self, at_most: usize) -> Vec<LogPosition> {
        self.boundaries[self.boundaries.len().saturating_sub(at_most)..].to_vec()
    }

    /// The position of entry `number`, if the history holds it.
    pub fn position(&self, number: TransactionNumber) -> Option<LogPosition> {
        if number >= self.next {
            return None;
        }
        let at = self.boundaries.partition_point(|b| b.number < number);
        self.boundaries.get(at).map(|b| LogPosition {
            epoch: b.epoch,
            number,
        })
    }

    /// Whether an entry at `position` may come next: its number is the next one and its epoch
    /// is not older than the last entry's.
    pub fn follows(&self, position: LogPosition) -> bool {
        position.number == self.next && self.last().is_none_or(|last| position.epoch >= last.epoch)
    }

    /// Adds the entry at `position`, which must follow ([`Positions::follows`]); `false` (and
    /// nothing changes) otherwise.
    pub fn append(&mut self, position: LogPosition) -> bool {
        if !self.follows(position) {
            return false;
        }
        self.next += 1;
        match self.boundaries.last_mut() {
            Some(last) if last.epoch == position.epoch => *last = position,
            _ => self.boundaries.push(position),
        }
        true
    }

    /// Forgets every entry from `from` on.
    pub fn cut_from(&mut self, from: TransactionNumber) {
        if from >= self.next {
            return;
        }
        let kept_last = from.checked_sub(1).and_then(|n| self.position(n));
        self.next = from;
        self.boundaries.retain(|b| b.number < from);
        // The epoch that held the last kept entry now ends there.
        if let Some(last) = kept_last {
            if self.boundaries.last() != Some(&last) {
                self.boundaries.push(last);
            }
        }
    }
}

/// Where one history meets another: the newest position both hold, given the last entry of
/// each epoch in each (oldest first; `theirs` may be only the most recent ones). Entries of one
/// epoch are numbered in one order, so two histories that both hold entries of an epoch agree
/// on the shorter run.
pub fn meeting_point(theirs: &[LogPosition], ours: &[LogPosition]) -> Option<LogPosition> {
    for known in theirs.iter().rev() {
        if let Some(mine) = ours.iter().find(|b| b.epoch == known.epoch) {
            return Some(LogPosition {
                epoch: known.epoch,
                number: known.number.min(mine.number),
            });
        }
    }
    None
}

/// The epoch of the newest entry of `boundaries`, if any.
pub fn last_epoch(boundaries: &[LogPosition]) -> Option<Epoch> {
    boundaries.last().map(|b| b.epoch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pos(number: u64, epoch: u64) -> LogPosition {
        LogPosition { epoch, number }
    }

    #[test]
    fn positions_come_from_the_epoch_boundaries_and_survive_a_cut() {
        let mut history = Positions::new();
        for (n, e) in [(0, 1), (1, 1), (2, 2), (3, 2), (4, 2)] {
            assert!(history.append(pos(n, e)));
        }
        assert!(!history.append(pos(9, 2)), "a gap");
        assert!(!history.append(pos(5, 1)), "an older epoch");
        assert_eq!(history.boundaries(), &[pos(1, 1), pos(4, 2)]);
        assert_eq!(history.position(0), Some(pos(0, 1)));
        assert_eq!(history.position(2), Some(pos(2, 2)));
        assert_eq!(history.position(5), None);
        history.cut_from(3);
        assert_eq!(history.last(), Some(pos(2, 2)));
        assert_eq!(history.boundaries(), &[pos(1, 1), pos(2, 2)]);
        assert!(history.append(pos(3, 5)));
        assert_eq!(history.boundaries(), &[pos(1, 1), pos(2, 2), pos(3, 5)]);
        history.cut_from(2);
        assert_eq!(history.boundaries(), &[pos(1, 1)]);
        assert_eq!(
            Positions::from_boundaries(history.boundaries().to_vec()),
            Some(history.clone())
        );
        history.cut_from(0);
        assert_eq!(history.last(), None);
        assert_eq!(history.next_number(), 0);
        assert_eq!(Positions::from_boundaries(vec![pos(3, 2), pos(1, 3)]), None);
    }

    #[test]
    fn histories_meet_at_their_newest_shared_position() {
        assert_eq!(
            meeting_point(&[pos(100, 1)], &[pos(50, 1), pos(200, 2)]),
            Some(pos(50, 1))
        );
        assert_eq!(
            meeting_point(&[pos(9, 1), pos(12, 3)], &[pos(10, 1), pos(20, 4)]),
            Some(pos(9, 1))
        );
        assert_eq!(meeting_point(&[pos(4, 7)], &[pos(10, 1)]), None);
        assert_eq!(meeting_point(&[], &[pos(10, 1)]), None);
    }

    proptest! {
        /// Two histories that share a prefix and then go their own ways (each later run of
        /// entries in an epoch the other never used) meet exactly at the end of the prefix.
        #[test]
        fn the_meeting_point_is_the_longest_common_prefix(
            shared in proptest::collection::vec(1u64..4, 0..20),
            a in proptest::collection::vec(0u64..3, 0..20),
            b in proptest::collection::vec(0u64..3, 0..20),
        ) {
            let mut epochs: Vec<u64> = shared.iter().scan(0, |e, step| { *e += step; Some(*e) }).collect();
            let top = epochs.last().copied().unwrap_or(0);
            let build = |tail: &[u64], base: u64| {
                let mut all = epochs.clone();
                all.extend(tail.iter().map(|step| base + step));
                all.sort_unstable();
                let mut history = Positions::new();
                for (n, e) in all.iter().enumerate() {
                    history.append(pos(n as u64, *e));
                }
                history
            };
            // Their own entries use epochs the other never uses (odd and even above the top).
            let ours = build(&a.iter().map(|s| 2 * s + 1).collect::<Vec<_>>(), top * 2 + 10);
            let theirs = build(&b.iter().map(|s| 2 * s + 2).collect::<Vec<_>>(), top * 2 + 10);
            epochs.sort_unstable();
            let expected = epochs.len().checked_sub(1).map(|n| pos(n as u64, epochs[n]));
            prop_assert_eq!(meeting_point(theirs.boundaries(), ours.boundaries()), expected);
        }
    }
}
