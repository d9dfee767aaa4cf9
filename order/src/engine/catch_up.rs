//! The follower: it persists what the leader sends (`Replicate`) when it fits its log, and
//! otherwise catches up with `SyncUp`: it sends the last entry of each epoch it holds, adopts
//! the leader's entries after where the histories meet (setting aside a suffix the leader
//! does not have), and follows once its log equals the leader's as of the answer. A newer
//! epoch in a `Replicate` is believed only once the catalog's record holds it.

use common::engine::Backoff;
use common::wire::{
    CatalogRequest, CatalogResponse, Epoch, LogPosition, OrderEntry, OrderRequest, OrderResponse,
    RemoteError, ReplicaId,
};
use tracing::{debug, info, warn};

use super::{
    beyond_epoch, Answer, CallResult, Engine, Outgoing, Peer, Pending, State, Time, Token,
    MAX_BACKOFF, MAX_KNOWN, MIN_BACKOFF,
};
use crate::replication::{self, Fit};

/// A `Replicate` as a follower handles it.
#[derive(Debug)]
pub(super) struct Replication {
    /// The leader's epoch.
    pub(super) epoch: Epoch,
    /// The leader.
    pub(super) leader: ReplicaId,
    /// The entry before the first sent.
    pub(super) prev: Option<LogPosition>,
    /// The entries.
    pub(super) entries: Vec<OrderEntry>,
    /// How many times the leader had set entries aside in its term.
    pub(super) cuts: u32,
}

/// A follower's catch-up with its leader.
#[derive(Debug)]
pub(super) struct CatchUp {
    in_flight: bool,
    /// When to ask again, after a failure.
    pub(super) retry_at: Option<Time>,
    backoff: Backoff,
    fetched: usize,
    /// The log equals the leader's as of its answer: follow once this entry is on disk.
    finishing: Option<Option<u64>>,
}

impl Default for CatchUp {
    fn default() -> Self {
        CatchUp {
            in_flight: false,
            retry_at: None,
            backoff: Backoff::new(MIN_BACKOFF, MAX_BACKOFF),
            fetched: 0,
            finishing: None,
        }
    }
}

impl Engine {
    fn catching_up(&mut self) -> Option<&mut CatchUp> {
        match &mut self.state {
            State::Syncing(catch_up) => Some(catch_up),
            _ => None,
        }
    }

    /// Follower: persist entries the leader sent, or say where this log stands.
    pub(super) fn replicate(&mut self, token: Token, replication: Replication) {
        let Replication {
            epoch,
            prev,
            ref entries,
            ..
        } = replication;
        let first = prev.map_or(0, |p| p.number.saturating_add(1));
        let consecutive = entries
            .iter()
            .enumerate()
            .all(|(i, e)| Some(e.number) == first.checked_add(i as u64));
        if !consecutive {
            return self.reply(
                token,
                Err(RemoteError::bad_request(
                    "replicated entries must follow prev without gaps",
                )),
            );
        }
        if let Err(e) = beyond_epoch(epoch, prev, entries) {
            return self.reply(token, Err(e));
        }
        if epoch > self.epoch {
            // Believe it only once the catalog's record says so (the push of the record may
            // simply not have arrived yet).
            let timeout = self.config.replicate_timeout;
            self.call(
                Peer::Catalog,
                Outgoing::Catalog(CatalogRequest::ReadLeadership),
                timeout,
                Pending::Confirm { token, replication },
            );
            return;
        }
        self.accept(token, replication);
    }

    /// The catalog's record, read to confirm a `Replicate`'s newer epoch. An epoch or leader
    /// the record does not hold is refused and logged, never stored: even a peer with the
    /// cluster token cannot move this replica to an epoch nobody was elected for.
    pub(super) fn confirmed(&mut self, token: Token, replication: Replication, answer: CallResult) {
        let (epoch, leader) = (replication.epoch, replication.leader);
        let record = match answer {
            Ok(Answer::Catalog(CatalogResponse::Leadership(record))) => record,
            Ok(other) => {
                return self.reply(
                    token,
                    Err(RemoteError::unavailable(format!(
                        "cannot confirm epoch {epoch}: unexpected catalog answer {other:?}"
                    ))),
                )
            }
            Err(e) => {
                return self.reply(
                    token,
                    Err(RemoteError::unavailable(format!(
                        "cannot confirm epoch {epoch} with the catalog: {e}"
                    ))),
                )
            }
        };
        if record.epoch < epoch || (record.epoch == epoch && record.leader != Some(leader)) {
            warn!(
                epoch,
                leader,
                %record,
                "refused a Replicate for an epoch or leader the catalog has not recorded"
            );
            return self.reply(
                token,
                Err(RemoteError::bad_request(format!(
                    "epoch {epoch} with leader {leader} is not in the leadership record \
                     ({record})"
                ))),
            );
        }
        self.observe_record(&record);
        self.accept(token, replication);
    }

    /// Refuses an older leader, and a newer one the record does not hold yet; follows the
    /// current leader again after a pause; applies what fits.
    fn accept(&mut self, token: Token, replication: Replication) {
        let Replication {
            epoch,
            leader,
            prev,
            entries,
            cuts,
        } = replication;
        if leader == self.id {
            return self.reply(
                token,
                Err(RemoteError::bad_request("a replica cannot follow itself")),
            );
        }
        if epoch < self.epoch || (epoch == self.epoch && self.leader.is_some_and(|l| l != leader)) {
            let stale = OrderResponse::StaleEpoch {
                epoch: self.epoch,
                leader_id: self.leader,
            };
            return self.reply(token, Ok(stale));
        }
        if epoch > self.epoch {
            let why = format!(
                "epoch {epoch} is not recorded here yet (this replica is at {})",
                self.epoch
            );
            return self.reply(token, Err(RemoteError::unavailable(why)));
        }
        if self.leader.is_none() || matches!(self.state, State::Idle) {
            self.adopt(epoch, leader, &[]);
        }
        if cuts < self.leader_cuts {
            // Sent before the leader set entries aside: it may bring some of them back.
            return self.reply(
                token,
                Err(RemoteError::unavailable(
                    "a Replicate from before the leader set entries aside",
                )),
            );
        }
        if cuts > self.leader_cuts {
            // The leader set entries aside since this log last heard from it: what it
            // confirmed before may be among them, so it catches up afresh, setting aside what
            // the leader no longer holds.
            self.leader_cuts = cuts;
            self.confirmed = None;
            let last = self.log.last();
            info!(
                epoch,
                leader, cuts, "the leader set entries aside; catching up with it"
            );
            self.end_term();
            self.catch_ups += 1;
            self.state = State::Syncing(CatchUp::default());
            self.send_sync_up();
            return self.reply(token, Ok(OrderResponse::Behind { last }));
        }
        match self.apply_entries(prev, entries, "replaced by the leader's entries") {
            Ok(Some(Some(through))) => {
                self.confirmed = self.confirmed.max(Some(through.number));
                self.reply_when_durable(token, through)
            }
            Ok(Some(None)) => self.reply(token, Ok(OrderResponse::Replicated { last: None })),
            Ok(None) => {
                let last = self.log.last();
                if matches!(self.state, State::Following) {
                    // A gap or another history: catch up before following again.
                    info!(
                        epoch,
                        leader,
                        ?last,
                        ?prev,
                        "behind the leader; catching up"
                    );
                    self.end_term();
                    self.catch_ups += 1;
                    self.state = State::Syncing(CatchUp::default());
                    self.send_sync_up();
                }
                self.reply(token, Ok(OrderResponse::Behind { last }));
            }
            Err(e) => self.reply(token, Err(e)),
        }
    }

    /// Applies entries that follow `prev` in the leader's log. Returns the leader position
    /// this log now matches through, or `None` when they do not fit (gap or mismatch).
    fn apply_entries(
        &mut self,
        prev: Option<LogPosition>,
        mut entries: Vec<OrderEntry>,
        reason: &str,
    ) -> Result<Option<Option<LogPosition>>, RemoteError> {
        let through = entries.last().map(OrderEntry::position).or(prev);
        let skip = match replication::fit(|n| self.log.position(n), prev, &entries) {
            Fit::Gap | Fit::Mismatch => return Ok(None),
            Fit::Append { skip } => skip,
            Fit::Replace { from, skip } => {
                self.cut_from(from, reason);
                skip
            }
        };
        entries.drain(..skip);
        self.append(entries)?;
        Ok(Some(through))
    }

    /// Asks the leader for the entries after where the histories meet.
    pub(super) fn send_sync_up(&mut self) {
        let Some(leader) = self.leader else {
            return;
        };
        let boundaries = self.log.boundaries();
        let known = boundaries[boundaries.len().saturating_sub(MAX_KNOWN)..].to_vec();
        let request = OrderRequest::SyncUp {
            epoch: self.epoch,
            follower_id: self.id,
            known,
        };
        let (term, timeout) = (self.term, self.config.call_timeout);
        let Some(catch_up) = self.catching_up() else {
            return;
        };
        catch_up.in_flight = true;
        catch_up.retry_at = None;
        self.call(
            Peer::Replica(leader),
            Outgoing::Order(request),
            timeout,
            Pending::SyncUp { term },
        );
    }

    /// The leader's answer to `SyncUp`.
    pub(super) fn synced(&mut self, answer: CallResult) {
        if let Some(catch_up) = self.catching_up() {
            catch_up.in_flight = false;
        }
        let outcome = match answer {
            Ok(Answer::Order(OrderResponse::Entries {
                from,
                entries,
                leader_last,
            })) => {
                if let Some(catch_up) = self.catching_up() {
                    catch_up.backoff.reset();
                    catch_up.fetched += entries.len();
                }
                self.adopt_batch(from, entries, leader_last)
            }
            Ok(other) => {
                debug!(?other, "leader not ready for sync-up");
                Err(None)
            }
            Err(e) => {
                debug!(error = %e, "sync-up failed");
                Err(None)
            }
        };
        match outcome {
            Ok(true) => self.finish_catch_up(),
            Ok(false) => self.send_sync_up(),
            Err(problem) => {
                if let Some(e) = problem {
                    warn!(error = %e, "sync-up batch not applied; retrying");
                }
                let now = self.now;
                if let Some(catch_up) = self.catching_up() {
                    catch_up.retry_at = Some(now + catch_up.backoff.next_wait());
                }
            }
        }
    }

    /// Applies one sync-up batch; true once the log equals the leader's as of the answer.
    fn adopt_batch(
        &mut self,
        from: Option<LogPosition>,
        entries: Vec<OrderEntry>,
        leader_last: Option<LogPosition>,
    ) -> Result<bool, Option<RemoteError>> {
        let epoch = self.epoch;
        beyond_epoch(epoch, from, &entries).map_err(Some)?;
        let Some(through) = self
            .apply_entries(from, entries, "not in the leader's history")
            .map_err(Some)?
        else {
            return Err(Some(RemoteError::unavailable("sync-up batch does not fit")));
        };
        if through != leader_last {
            return Ok(false);
        }
        // Everything the leader had when it answered is here. Entries beyond it from an older
        // epoch are a suffix the leader never had: set aside. Entries of this epoch came from
        // the leader itself by `Replicate` after it answered, and stay; so do those this
        // replica confirmed to the leader since (a leader records the catalog's trades under
        // the epochs they were traded in, older ones too).
        let beyond = leader_last
            .map_or(0, |p| p.number.saturating_add(1))
            .max(self.confirmed.map_or(0, |n| n.saturating_add(1)));
        if self.log.position(beyond).is_some_and(|p| p.epoch < epoch) {
            self.cut_from(beyond, "beyond the leader's last entry");
        }
        let last = self.log.last().map(|p| p.number);
        if let Some(catch_up) = self.catching_up() {
            catch_up.finishing = Some(last);
        }
        Ok(true)
    }

    /// Follows once the log the leader's answer matched is on disk.
    pub(super) fn finish_catch_up(&mut self) {
        let durable = self.durable;
        let (epoch, leader) = (self.epoch, self.leader);
        let Some(catch_up) = self.catching_up() else {
            return;
        };
        let Some(target) = catch_up.finishing else {
            return;
        };
        if durable < target {
            return;
        }
        let fetched = catch_up.fetched;
        self.state = State::Following;
        info!(epoch, ?leader, fetched, last = ?target, "caught up with the leader");
    }

    /// Asks again once the backoff is over.
    pub(super) fn catch_up_tick(&mut self) {
        let now = self.now;
        let due = self
            .catching_up()
            .is_some_and(|c| !c.in_flight && c.retry_at.is_some_and(|at| at <= now));
        if due {
            self.send_sync_up();
        }
    }
}

#[cfg(test)]
mod tests {
    use common::wire::{CatalogRequest, CatalogResponse, OrderRequest, OrderResponse, Role};

    use crate::engine::testing::{entry, pos, record, Harness};
    use crate::engine::{Answer, Command, Input, Outgoing, Peer};
    use crate::log::EpochRecord;

    fn following(entries: Vec<common::wire::OrderEntry>, epoch: u64) -> Harness {
        let mut h = Harness::new(2, entries, EpochRecord::default());
        h.feed(Input::Record(record(epoch, 1, &[1, 2, 3])));
        let sync = h.call_to(Peer::Replica(1), |r| {
            matches!(r, Outgoing::Order(OrderRequest::SyncUp { .. }))
        });
        let last = h.engine.log().last();
        h.answer(
            sync,
            Answer::Order(OrderResponse::Entries {
                from: last,
                entries: vec![],
                leader_last: last,
            }),
        );
        h.flush();
        h.take();
        assert_eq!(h.engine.role(), Role::Follower);
        h
    }

    fn replicate(
        epoch: u64,
        prev: Option<common::wire::LogPosition>,
        entries: Vec<common::wire::OrderEntry>,
    ) -> OrderRequest {
        OrderRequest::Replicate {
            epoch,
            leader_id: 1,
            cuts: 0,
            prev,
            entries,
        }
    }

    #[test]
    fn a_leader_that_set_entries_aside_is_caught_up_with_and_its_older_messages_refused() {
        // Entries 1 and 2 of epoch 2 came from a leader that set them aside at the start of
        // epoch 3 (the catalog would not apply them).
        let mut h = following(
            vec![entry(0, 2, "a"), entry(1, 2, "b"), entry(2, 2, "c")],
            3,
        );
        let mut cut = replicate(3, Some(pos(0, 2)), vec![]);
        if let OrderRequest::Replicate { cuts, .. } = &mut cut {
            *cuts = 1;
        }
        let token = h.request(cut);
        assert_eq!(
            h.reply(token),
            Some(Ok(OrderResponse::Behind {
                last: Some(pos(2, 2))
            }))
        );
        assert_eq!(h.engine.role(), Role::Syncing);
        let sync = h.call_to(Peer::Replica(1), |r| {
            matches!(r, Outgoing::Order(OrderRequest::SyncUp { .. }))
        });
        h.answer(
            sync,
            Answer::Order(OrderResponse::Entries {
                from: Some(pos(0, 2)),
                entries: vec![],
                leader_last: Some(pos(0, 2)),
            }),
        );
        assert!(h
            .writes()
            .iter()
            .any(|c| matches!(c, Command::Cut { from: 1, .. })));
        h.flush();
        assert_eq!(h.engine.role(), Role::Follower);
        assert_eq!(h.engine.log().last(), Some(pos(0, 2)));
        // A message from before the cut (a lower count) is refused: it could bring them back.
        let stale = h.request(replicate(3, Some(pos(0, 2)), vec![entry(1, 2, "b")]));
        assert!(matches!(h.reply(stale), Some(Err(_))));
        assert_eq!(h.engine.log().last(), Some(pos(0, 2)));
    }

    #[test]
    fn a_follower_answers_only_once_the_entries_are_on_its_disk() {
        let mut h = following(vec![], 3);
        let token = h.request(replicate(3, None, vec![entry(0, 3, "a"), entry(1, 3, "b")]));
        assert_eq!(h.reply(token), None);
        h.flush();
        assert_eq!(
            h.reply(token),
            Some(Ok(OrderResponse::Replicated {
                last: Some(pos(1, 3))
            }))
        );
        h.take();
        // The same batch again (a duplicate) is already here.
        let again = h.request(replicate(3, None, vec![entry(0, 3, "a"), entry(1, 3, "b")]));
        assert!(h.writes().is_empty());
        assert!(matches!(
            h.reply(again),
            Some(Ok(OrderResponse::Replicated { .. }))
        ));
    }

    #[test]
    fn an_older_leader_is_refused_and_a_gap_starts_a_catch_up() {
        let mut h = following(vec![entry(0, 3, "a")], 3);
        let old = h.request(replicate(2, None, vec![entry(0, 2, "x")]));
        assert_eq!(
            h.reply(old),
            Some(Ok(OrderResponse::StaleEpoch {
                epoch: 3,
                leader_id: Some(1)
            }))
        );
        let gap = h.request(replicate(3, Some(pos(4, 3)), vec![entry(5, 3, "f")]));
        assert_eq!(
            h.reply(gap),
            Some(Ok(OrderResponse::Behind {
                last: Some(pos(0, 3))
            }))
        );
        assert_eq!(h.engine.role(), Role::Syncing);
        h.call_to(Peer::Replica(1), |r| {
            matches!(r, Outgoing::Order(OrderRequest::SyncUp { known, .. }) if known == &vec![pos(0, 3)])
        });
    }

    #[test]
    fn a_newer_epoch_is_believed_only_once_the_catalog_records_it() {
        let mut h = following(vec![], 3);
        let forged = h.request(replicate(9, None, vec![entry(0, 9, "a")]));
        let confirm = h.call_to(Peer::Catalog, |r| {
            matches!(r, Outgoing::Catalog(CatalogRequest::ReadLeadership))
        });
        h.answer(
            confirm,
            Answer::Catalog(CatalogResponse::Leadership(record(3, 1, &[1, 2, 3]))),
        );
        assert!(
            matches!(h.reply(forged), Some(Err(e)) if e.kind == common::wire::RemoteErrorKind::BadRequest)
        );
        assert_eq!(h.engine.epoch(), 3);
        assert!(
            h.writes().is_empty(),
            "nothing of the forged epoch is stored"
        );

        let real = h.request(replicate(4, None, vec![entry(0, 4, "a")]));
        let confirm = h.call_to(Peer::Catalog, |r| {
            matches!(r, Outgoing::Catalog(CatalogRequest::ReadLeadership))
        });
        h.answer(
            confirm,
            Answer::Catalog(CatalogResponse::Leadership(record(4, 1, &[1, 2, 3]))),
        );
        assert_eq!(h.engine.epoch(), 4);
        h.flush();
        assert!(matches!(
            h.reply(real),
            Some(Ok(OrderResponse::Replicated { .. }))
        ));
    }

    #[test]
    fn entries_of_a_newer_epoch_than_their_leader_are_refused() {
        let mut h = following(vec![], 3);
        let token = h.request(replicate(3, None, vec![entry(0, 7, "a")]));
        assert!(matches!(h.reply(token), Some(Err(_))));
        assert!(h.writes().is_empty());
    }

    #[test]
    fn entries_whose_epochs_go_back_are_refused_whole() {
        let mut h = following(vec![], 3);
        // The second entry's epoch is older than the first's: no leader sends that.
        let token = h.request(replicate(3, None, vec![entry(0, 3, "a"), entry(1, 2, "b")]));
        assert!(matches!(h.reply(token), Some(Err(_))));
        assert!(h.writes().is_empty());
        assert_eq!(h.engine.log().next_number(), 0, "nothing was taken");
    }

    #[test]
    fn a_suffix_the_leader_does_not_hold_is_set_aside_before_its_entries_are_adopted() {
        // This replica holds 0..=2 of epoch 1; the leader of epoch 2 holds 0..=1 of epoch 1
        // and then its own entry 2.
        let mine = vec![entry(0, 1, "a"), entry(1, 1, "b"), entry(2, 1, "lonely")];
        let mut h = Harness::new(2, mine, EpochRecord::default());
        h.feed(Input::Record(record(2, 1, &[1, 2, 3])));
        let sync = h.call_to(Peer::Replica(1), |r| {
            matches!(r, Outgoing::Order(OrderRequest::SyncUp { known, .. }) if known == &vec![pos(2, 1)])
        });
        h.take();
        h.answer(
            sync,
            Answer::Order(OrderResponse::Entries {
                from: Some(pos(1, 1)),
                entries: vec![entry(2, 2, "theirs")],
                leader_last: Some(pos(2, 2)),
            }),
        );
        assert!(matches!(
            h.writes()[..],
            [Command::Cut { from: 2, .. }, Command::Append { entries, .. }]
                if entries == &vec![entry(2, 2, "theirs")]
        ));
        assert_eq!(h.engine.role(), Role::Syncing, "follows once it is on disk");
        h.flush();
        assert_eq!(h.engine.role(), Role::Follower);
        assert_eq!(h.engine.log().last(), Some(pos(2, 2)));
    }

    #[test]
    fn a_replicate_answer_is_not_given_for_entries_a_later_cut_replaced() {
        let mut h = following(vec![], 3);
        let token = h.request(replicate(3, None, vec![entry(0, 3, "a")]));
        // Before they reach the disk, the leader's history replaces entry 0 (a newer term).
        h.feed(Input::Record(record(4, 1, &[1, 2, 3])));
        let sync = h.call_to(Peer::Replica(1), |r| {
            matches!(r, Outgoing::Order(OrderRequest::SyncUp { .. }))
        });
        h.answer(
            sync,
            Answer::Order(OrderResponse::Entries {
                from: None,
                entries: vec![entry(0, 4, "z")],
                leader_last: Some(pos(0, 4)),
            }),
        );
        h.flush();
        assert_eq!(
            h.reply(token),
            Some(Ok(OrderResponse::Behind {
                last: Some(pos(0, 4))
            }))
        );
    }
}
