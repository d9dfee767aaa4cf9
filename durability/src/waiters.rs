//! Requests waiting for the disk: each waits until a position (a record's sequence number, a
//! log entry's number) is durable, or until its deadline, whichever comes first. The
//! catalog's engine (trades and lookups of changes not yet on disk) and the replica's
//! (`Replicate` answers) both answer only what is on disk this way.

use std::collections::BTreeMap;

use common::engine::{Deadlines, Time, Token};

/// Who waits for which position, and until when.
#[derive(Debug)]
pub struct DurableWaiters<V> {
    by_position: BTreeMap<u64, Vec<(Token, V)>>,
    deadlines: Deadlines,
}

impl<V> Default for DurableWaiters<V> {
    fn default() -> Self {
        DurableWaiters {
            by_position: BTreeMap::new(),
            deadlines: Deadlines::default(),
        }
    }
}

impl<V> DurableWaiters<V> {
    /// `token` waits, with `value` for its answer, until `position` is durable or `deadline`.
    pub fn wait(&mut self, token: Token, position: u64, value: V, deadline: Time) {
        self.deadlines.add(token, deadline);
        self.by_position
            .entry(position)
            .or_default()
            .push((token, value));
    }

    /// Everything up to `durable` is on disk: the waiters for those positions, lowest first,
    /// but those whose deadline already passed (they were answered then).
    pub fn durable_through(&mut self, durable: u64) -> Vec<(Token, V)> {
        let ready = match durable.checked_add(1) {
            Some(next) => {
                let later = self.by_position.split_off(&next);
                std::mem::replace(&mut self.by_position, later)
            }
            None => std::mem::take(&mut self.by_position),
        };
        ready
            .into_values()
            .flatten()
            .filter(|(token, _)| self.deadlines.take(*token))
            .collect()
    }

    /// The waiters whose deadline passed by `now`, to be told the disk is not keeping up.
    pub fn expired(&mut self, now: Time) -> Vec<Token> {
        self.deadlines.due(now)
    }

    /// Every waiter not answered yet (the disk failed: nothing will become durable); none
    /// waits afterwards.
    pub fn drain(&mut self) -> Vec<Token> {
        self.by_position.clear();
        self.deadlines.drain()
    }

    /// The earliest deadline.
    pub fn earliest(&mut self) -> Option<Time> {
        self.deadlines.earliest()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn waiters_are_released_in_order_once_durable_or_at_their_deadline() {
        // Deadlines come in the order they were set (each is now + one timeout).
        let mut waiters = DurableWaiters::default();
        waiters.wait(4, 3, "three, first", SECOND);
        waiters.wait(1, 5, "five", 2 * SECOND);
        waiters.wait(2, 3, "three", 2 * SECOND);
        waiters.wait(3, 9, "nine", 3 * SECOND);
        assert_eq!(waiters.earliest(), Some(SECOND));
        // Token 4 times out before its record is durable: it is not released later.
        assert_eq!(waiters.expired(SECOND), vec![4]);
        assert_eq!(waiters.durable_through(5), vec![(2, "three"), (1, "five")]);
        assert!(waiters.durable_through(5).is_empty());
        assert_eq!(waiters.drain(), vec![3]);
        assert!(waiters.durable_through(u64::MAX).is_empty());
        assert_eq!(waiters.earliest(), None);
    }
}
