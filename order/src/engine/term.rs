//! Term changes. Only the catalog's leadership record makes a replica lead, and only for an
//! epoch newer than any it has stored: a replica that led an epoch before it restarted waits
//! for a new election, because entries it sent before it stopped may be on followers without
//! being here. A newer epoch, from the record or from a follower that knows it, ends the
//! current term; a new leader stores its epoch before it takes office.

use common::safety::Rule;
use common::wire::{Epoch, Leadership, OrderResponse, RemoteError, ReplicaId};
use tracing::{error, info, warn};

use super::catch_up::CatchUp;
use super::leader::Leading;
use super::{Engine, State};
use crate::log::EpochRecord;

impl Engine {
    /// Takes up the role the catalog's leadership record gives this replica.
    pub(super) fn observe_record(&mut self, record: &Leadership) {
        let Some(leader) = record.leader else {
            return;
        };
        if leader != self.id && !self.knows(leader) {
            warn!(%record, "the leadership record names an unknown replica");
            return;
        }
        if record.epoch < self.epoch {
            return;
        }
        if leader == self.id {
            if record.epoch > self.epoch {
                self.adopt(record.epoch, leader, &record.in_sync);
            } else if matches!(self.state, State::Leading(_)) {
                // Within its epoch only this leader changes the set, one change at a time;
                // it takes each from the catalog's answer, since a pushed copy may arrive
                // after a newer answer.
            } else if !matches!(self.state, State::Idle) {
                warn!(
                    epoch = record.epoch,
                    "recorded as leader of an epoch this replica may not lead again; waiting \
                     for a new election"
                );
                self.go_idle();
            }
        } else if record.epoch > self.epoch
            || matches!(self.state, State::Idle | State::Leading(_))
            || self.leader != Some(leader)
        {
            self.adopt(record.epoch, leader, &[]);
        }
    }

    /// Records a newer (or the same) epoch and its leader, and takes up the role it gives this
    /// replica. `in_sync` is the recorded set, used when this replica leads.
    pub(super) fn adopt(&mut self, epoch: Epoch, leader: ReplicaId, in_sync: &[ReplicaId]) {
        self.store_epoch(EpochRecord {
            epoch,
            leader: Some(leader),
        });
        let old = self.end_term();
        let was_leader = old.is_some();
        if epoch != self.epoch {
            self.leader_cuts = 0;
        }
        self.epoch = epoch;
        self.leader = Some(leader);
        if let Some(old) = old {
            self.retire(old);
        }
        if leader == self.id {
            // Only configured replicas can hold orders; an unknown id in the record is
            // neither waited for nor counted towards the write quorum.
            let in_sync: Vec<ReplicaId> = in_sync
                .iter()
                .copied()
                .filter(|&id| id == self.id || self.knows(id))
                .collect();
            info!(epoch, last = ?self.log.last(), ?in_sync, "leading; storing the epoch, then reconciling with the catalog");
            self.state = State::Leading(Box::new(Leading::new(
                &self.config.peers,
                in_sync,
                self.log.last().map(|p| p.number),
                self.now,
            )));
            if !self.config.rules.holds(Rule::EpochBeforeOffice) {
                // Broken on purpose (simulator only): acts before its epoch is stored.
                self.take_office();
            }
        } else {
            if was_leader {
                warn!(epoch, leader, "stepping down");
            }
            info!(epoch, leader, "following; catching up first");
            self.catch_ups += 1;
            self.state = State::Syncing(CatchUp::default());
            self.send_sync_up();
        }
    }

    /// A newer epoch exists (a follower said so): stop leading `epoch`. Orders waiting for
    /// their quorum are told this replica no longer leads, so that they are retried at the
    /// new leader.
    pub(super) fn step_down(&mut self, epoch: Epoch, newer: Epoch, leader: Option<ReplicaId>) {
        if self.epoch != epoch || !matches!(self.state, State::Leading(_)) || newer <= epoch {
            return;
        }
        match leader {
            Some(leader) if leader != self.id && self.knows(leader) => {
                self.adopt(newer, leader, &[]);
            }
            _ => {
                // The newer epoch is taken as this replica's, so it never leads the old one
                // again.
                self.store_epoch(EpochRecord {
                    epoch: newer,
                    leader: None,
                });
                let old = self.end_term();
                self.epoch = newer;
                self.leader = None;
                self.state = State::Idle;
                if let Some(old) = old {
                    self.retire(old);
                }
            }
        }
    }

    /// Stops whatever the term does and waits for a new election.
    pub(super) fn go_idle(&mut self) {
        let old = self.end_term();
        self.state = State::Idle;
        if let Some(old) = old {
            self.retire(old);
        }
    }

    /// Ends the current term: its calls are ignored from now on. Returns the leader's state
    /// if it led, for [`Engine::retire`].
    pub(super) fn end_term(&mut self) -> Option<Box<Leading>> {
        self.term += 1;
        self.confirmed = None;
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Leading(leading) => Some(leading),
            State::Idle | State::Syncing(_) | State::Following => None,
        }
    }

    /// Tells everyone waiting on a leader's term that this replica no longer leads it.
    pub(super) fn retire(&mut self, mut old: Box<Leading>) {
        let answer = Ok(self.not_leader());
        for token in old.waiting() {
            self.reply(token, answer.clone());
        }
    }

    /// A new leader's epoch is stored: from now on it replicates, reconciles and keeps its
    /// in-sync set.
    pub(super) fn take_office(&mut self) {
        let stored = self.stored;
        let broken = !self.config.rules.holds(Rule::EpochBeforeOffice);
        let State::Leading(leading) = &mut self.state else {
            return;
        };
        if leading.in_office {
            return;
        }
        if !broken && (stored.epoch != self.epoch || stored.leader != Some(self.id)) {
            return;
        }
        leading.in_office = true;
        leading.commit_moved = self.now;
        self.start_leading();
    }

    /// Answers every request waiting on this term with `answer` (the log failed).
    pub(super) fn fail_waiting(&mut self, answer: Result<OrderResponse, RemoteError>) {
        let State::Leading(leading) = &mut self.state else {
            return;
        };
        let tokens = leading.waiting_for_commit();
        for token in tokens {
            self.reply(token, answer.clone());
        }
        if self.failed.is_some() {
            error!("order log failed: acknowledging nothing more");
        }
    }
}

#[cfg(test)]
mod tests {
    use common::safety::{Rule, Rules};
    use common::wire::{CatalogRequest, OrderRequest, OrderResponse, Role};

    use crate::engine::testing::{config, entry, record, Harness};
    use crate::engine::{Command, Input, Outgoing, Peer};
    use crate::log::EpochRecord;

    #[test]
    fn a_replica_leads_only_once_the_record_names_it_and_its_epoch_is_stored() {
        let mut h = Harness::new(1, vec![], EpochRecord::default());
        assert_eq!(h.engine.role(), Role::Idle);
        h.feed(Input::Record(record(3, 1, &[1, 2, 3])));
        assert_eq!(h.engine.role(), Role::Leader);
        // The epoch goes to disk first; nothing is sent before it is there.
        assert!(matches!(
            h.writes()[..],
            [Command::StoreEpoch {
                record: EpochRecord {
                    epoch: 3,
                    leader: Some(1)
                },
                ..
            }]
        ));
        assert!(h.calls().is_empty());
        assert!(!h.engine.status().placing);
        h.flush();
        let calls = h.calls();
        let probed: Vec<Peer> = calls
            .iter()
            .filter(|(_, _, r)| matches!(r, Outgoing::Replicate { epoch: 3, .. }))
            .map(|(_, to, _)| *to)
            .collect();
        assert_eq!(probed, vec![Peer::Replica(2), Peer::Replica(3)]);
        assert!(calls.iter().any(|(_, to, r)| *to == Peer::Catalog
            && matches!(
                r,
                Outgoing::Catalog(CatalogRequest::Reconcile { epoch: 3, .. })
            )));
    }

    #[test]
    fn with_the_rule_off_a_new_leader_acts_before_its_epoch_is_stored() {
        let rules = Rules::without(Rule::EpochBeforeOffice);
        let mut h = Harness::with(config(1, rules), vec![], EpochRecord::default());
        h.feed(Input::Record(record(3, 1, &[1, 2, 3])));
        assert!(!h.calls().is_empty());
    }

    #[test]
    fn a_replica_that_led_an_epoch_before_it_restarted_waits_for_a_new_one() {
        let stored = EpochRecord {
            epoch: 5,
            leader: Some(1),
        };
        let mut h = Harness::new(1, vec![entry(0, 5, "a")], stored);
        h.feed(Input::Record(record(5, 1, &[1, 2, 3])));
        assert_eq!(h.engine.role(), Role::Idle);
        assert!(h.take().is_empty());
        h.feed(Input::Record(record(6, 1, &[1, 2, 3])));
        assert_eq!(h.engine.role(), Role::Leader);
    }

    #[test]
    fn a_replica_that_followed_before_it_restarted_catches_up_with_that_leader() {
        let stored = EpochRecord {
            epoch: 4,
            leader: Some(2),
        };
        let mut h = Harness::new(1, vec![entry(0, 4, "a")], stored);
        assert_eq!(h.engine.role(), Role::Syncing);
        h.call_to(Peer::Replica(2), |r| {
            matches!(r, Outgoing::Order(OrderRequest::SyncUp { epoch: 4, .. }))
        });
        // An older record changes nothing; a newer one names the leader to follow.
        h.feed(Input::Record(record(3, 3, &[1, 3])));
        assert!(h.calls().is_empty());
        h.feed(Input::Record(record(7, 3, &[1, 2, 3])));
        assert_eq!(h.engine.epoch(), 7);
        h.call_to(Peer::Replica(3), |r| {
            matches!(r, Outgoing::Order(OrderRequest::SyncUp { epoch: 7, .. }))
        });
    }

    #[test]
    fn a_follower_that_knows_a_newer_epoch_steps_the_leader_down_and_waiting_orders_learn_it() {
        let mut h = Harness::leading(1, 2, vec![]);
        let token = h.place_traded("o1");
        let replicate = h.call_to(Peer::Replica(2), |r| {
            matches!(r, Outgoing::Replicate { count: 1, .. })
        });
        h.take();
        h.answer(
            replicate,
            crate::engine::Answer::Order(OrderResponse::StaleEpoch {
                epoch: 4,
                leader_id: Some(3),
            }),
        );
        assert_eq!(h.engine.role(), Role::Syncing);
        assert_eq!(h.engine.epoch(), 4);
        assert_eq!(
            h.reply(token),
            Some(Ok(OrderResponse::NotLeader {
                epoch: 4,
                leader_id: Some(3)
            }))
        );
        assert!(matches!(
            h.writes()[..],
            [Command::StoreEpoch {
                record: EpochRecord {
                    epoch: 4,
                    leader: Some(3)
                },
                ..
            }]
        ));
    }
}
