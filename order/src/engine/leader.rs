//! The leader's path: an order is traded through the catalog under the leader's epoch,
//! numbered, appended, replicated to every follower (one batch in flight each), and answered
//! once committed: on the leader's disk and on every member of the in-sync set. The leader
//! keeps that set true at the catalog (a silent member is removed from the record before the
//! leader goes on without it; a follower that caught up is taken back), and reconciles with
//! the catalog: every trade the catalog applied becomes an order exactly once, and each round
//! renews the leader's lease.

use std::collections::BTreeMap;
use std::time::Duration;

use common::safety::Rule;
use common::wire::{
    AppliedTrade, CatalogRequest, CatalogResponse, Epoch, LeadershipChange, LogPosition,
    OrderEntry, OrderResponse, RemoteError, ReplicaId, RequestId, TradeRejection, TradeRequest,
    TransactionNumber,
};
use tracing::{debug, error, info, warn};

use common::engine::{Backoff, Deadlines};

use super::{
    Answer, CallResult, Command, Engine, Outgoing, Peer, Pending, ReplyBody, State, Time, Token,
    MAX_BACKOFF, MAX_BATCH, MIN_BACKOFF, PRUNE_COMMITTING_ABOVE,
};
use crate::replication::{commit_point, desired_in_sync, meeting_point, FollowerProgress};

/// How often a leader reconciles its log with the trades the catalog applied; each round
/// also renews its lease at the catalog (well within the catalog's default 800 ms).
pub const RECONCILE_EVERY: Duration = Duration::from_millis(200);
/// Most applied trades asked for in one reconciliation.
pub const RECONCILE_BATCH: u32 = 512;
/// How often a leader re-checks its in-sync set when nothing woke it.
pub const MEMBERSHIP_EVERY: Duration = Duration::from_millis(100);

/// The leader's link to one follower.
#[derive(Debug, Clone, Copy)]
struct Link {
    /// The next entry to send.
    next: TransactionNumber,
    /// The next message asks where the follower stands, even with nothing to send.
    probe: bool,
    /// A batch is on its way.
    in_flight: bool,
    /// Wait before the next try after a failure.
    backoff: Backoff,
    /// When to try again, after a failure.
    retry_at: Option<Time>,
    /// When it last held every entry the leader held (the term's start at first).
    caught_up_at: Time,
}

/// An order being traded at the catalog, and every request for it that waits.
#[derive(Debug)]
struct Placement {
    order: TradeRequest,
    waiters: Vec<Token>,
}

/// The leader's account of the catalog's trades: every trade up to `through` is a committed
/// order; `known` maps later trades (catalog sequence numbers) to the orders recording them.
#[derive(Debug, Default)]
pub(super) struct Recorded {
    through: u64,
    known: BTreeMap<u64, TransactionNumber>,
}

impl Recorded {
    /// Moves `through` over the known trades whose orders are committed.
    fn advance(&mut self, commit: Option<TransactionNumber>) -> u64 {
        while let Some(&number) = self.known.get(&(self.through + 1)) {
            if Some(number) > commit {
                break;
            }
            self.known.remove(&(self.through + 1));
            self.through += 1;
        }
        self.through
    }
}

/// Reconciliation with the catalog.
#[derive(Debug, Default)]
pub(super) struct Reconciliation {
    /// Every trade the catalog applied before the term began is recorded: orders are placed.
    pub(super) reconciled: bool,
    recorded: Recorded,
    /// Where the first reconciliation goes on from, batch after batch.
    cursor: Option<u64>,
    /// The position the round in flight asked after.
    asked_after: Option<u64>,
    in_flight: bool,
    next_at: Option<Time>,
    warned: bool,
}

/// The leader's state in its term.
#[derive(Debug)]
pub(super) struct Leading {
    /// Its epoch is stored: it replicates, reconciles and keeps its in-sync set.
    pub(super) in_office: bool,
    /// The in-sync set recorded for this epoch (and members being added); every one is
    /// waited for.
    pub(super) in_sync: Vec<ReplicaId>,
    progress: BTreeMap<ReplicaId, FollowerProgress>,
    links: BTreeMap<ReplicaId, Link>,
    /// Never goes back within a term.
    pub(super) commit: Option<TransactionNumber>,
    /// When the commit point last moved (or an order started waiting).
    pub(super) commit_moved: Time,
    /// Its last entry when the term began: every order that may have been acknowledged
    /// before (a leader is always a member of the in-sync set, which holds them).
    pub(super) inherited: Option<TransactionNumber>,
    /// Orders waiting for their commit: since when, and who waits.
    committing: BTreeMap<TransactionNumber, (Time, Vec<Token>)>,
    /// How long each order committed since the runtime last asked waited, from its append
    /// to its commit (at most [`super::MAX_COMMIT_SAMPLES`] between two asks).
    pub(super) commit_waits: Vec<Duration>,
    commit_deadlines: Deadlines,
    placing: BTreeMap<RequestId, Placement>,
    pub(super) reconcile: Reconciliation,
    membership_in_flight: bool,
    membership_at: Option<Time>,
}

impl Leading {
    /// How far each follower is behind a leader whose last entry is `last`, at `now`.
    pub(super) fn lags(
        &self,
        last: Option<TransactionNumber>,
        now: Time,
    ) -> Vec<common::wire::FollowerLag> {
        self.progress
            .iter()
            .map(|(&id, progress)| {
                let entries = match (last, progress.persisted) {
                    (None, _) => 0,
                    (Some(last), None) => last + 1,
                    (Some(last), Some(persisted)) => last.saturating_sub(persisted),
                };
                let since = self.links.get(&id).map_or(now, |link| link.caught_up_at);
                common::wire::FollowerLag {
                    id,
                    up: progress.up,
                    persisted: progress.persisted,
                    entries,
                    millis: if entries == 0 {
                        0
                    } else {
                        now.saturating_sub(since).as_millis() as u64
                    },
                }
            })
            .collect()
    }

    pub(super) fn new(
        peers: &[ReplicaId],
        in_sync: Vec<ReplicaId>,
        inherited: Option<TransactionNumber>,
        now: Time,
    ) -> Self {
        let next = inherited.map_or(0, |n| n + 1);
        Leading {
            in_office: false,
            in_sync,
            progress: peers
                .iter()
                .map(|&id| (id, FollowerProgress::default()))
                .collect(),
            links: peers
                .iter()
                .map(|&id| {
                    (
                        id,
                        Link {
                            next,
                            probe: true,
                            in_flight: false,
                            backoff: Backoff::new(MIN_BACKOFF, MAX_BACKOFF),
                            retry_at: None,
                            caught_up_at: now,
                        },
                    )
                })
                .collect(),
            commit: None,
            commit_moved: now,
            inherited,
            committing: BTreeMap::new(),
            commit_waits: Vec::new(),
            commit_deadlines: Deadlines::default(),
            placing: BTreeMap::new(),
            reconcile: Reconciliation::default(),
            membership_in_flight: false,
            membership_at: None,
        }
    }

    pub(super) fn next_timer(&mut self) -> Option<Time> {
        let retries = self.links.values().filter_map(|l| l.retry_at);
        [
            self.commit_deadlines.earliest(),
            self.reconcile.next_at,
            self.membership_at,
        ]
        .into_iter()
        .flatten()
        .chain(retries)
        .min()
    }

    /// Every request waiting on this term: orders waiting for their commit or for their
    /// trade.
    pub(super) fn waiting(&mut self) -> Vec<Token> {
        let mut tokens = self.waiting_for_commit();
        let placing = std::mem::take(&mut self.placing);
        tokens.extend(placing.into_values().flat_map(|p| p.waiters));
        tokens
    }

    /// The orders waiting for their commit.
    pub(super) fn waiting_for_commit(&mut self) -> Vec<Token> {
        self.committing.clear();
        self.commit_deadlines.drain()
    }
}

/// Both sets, ascending.
fn union(a: &[ReplicaId], b: &[ReplicaId]) -> Vec<ReplicaId> {
    let mut all: Vec<ReplicaId> = a.iter().chain(b).copied().collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// What a follower's answer to `Replicate` tells the leader.
enum Report {
    /// It holds everything up to this entry.
    Persisted(Option<TransactionNumber>),
    /// It does not follow our log (a gap or another history) and is syncing up.
    Behind,
    /// No answer in time, or not one we can use.
    Unreachable,
}

impl Engine {
    fn leading(&mut self) -> Option<&mut Leading> {
        match &mut self.state {
            State::Leading(leading) => Some(leading),
            _ => None,
        }
    }

    /// A leader that cannot commit: its disk failed, its in-sync set is below the minimum, or
    /// an order has waited longer than a few replication timeouts without the commit point
    /// moving.
    pub(super) fn stalled(&self, leading: &Leading) -> bool {
        let waiting = leading.commit.max(leading.inherited) < self.log.last().map(|p| p.number);
        // A leader whose disk failed commits nothing until it restarts from its log; it must
        // not renew its lease meanwhile, or nobody could replace it.
        self.failed.is_some()
            || leading.in_sync.len() < self.config.min_in_sync()
            || (waiting
                && self.now.saturating_sub(leading.commit_moved)
                    > self.config.replicate_timeout * 2)
    }

    /// Starts the term's work once in office: a probe to every follower, the first
    /// reconciliation, and the in-sync set's upkeep.
    pub(super) fn start_leading(&mut self) {
        let now = self.now;
        let peers: Vec<ReplicaId> = match self.leading() {
            Some(leading) => {
                leading.membership_at = Some(now);
                leading.links.keys().copied().collect()
            }
            None => return,
        };
        for peer in peers {
            self.send_replicate(peer);
        }
        self.send_reconcile();
    }

    /// Leader: trade through the catalog, number, record, replicate, answer once committed.
    pub(super) fn place(&mut self, token: Token, order: TradeRequest) {
        if order.quantity <= 0 {
            return self.reply(
                token,
                Ok(OrderResponse::Rejected(TradeRejection::InvalidQuantity)),
            );
        }
        let min_in_sync = self.config.min_in_sync();
        let majority = self.config.write_quorum == crate::WriteQuorum::Majority;
        let not_leader = self.not_leader();
        let (epoch, term, call_timeout) = (self.epoch, self.term, self.config.call_timeout);
        let recorded = self
            .log
            .placed(&order.request_id)
            .map(|placed| (placed.number, placed.same_trade(&order)));
        let Some(leading) = self.leading() else {
            return self.reply(token, Ok(not_leader));
        };
        if !leading.in_office || !leading.reconcile.reconciled {
            return self.reply(
                token,
                Err(RemoteError::unavailable(
                    "the new leader is reconciling with the catalog; retry",
                )),
            );
        }
        match recorded {
            Some((number, true)) => return self.answer_when_committed(token, number),
            Some((_, false)) => {
                return self.reply(
                    token,
                    Ok(OrderResponse::Rejected(TradeRejection::RequestIdReused)),
                )
            }
            None => {}
        }
        if majority && leading.in_sync.len() < min_in_sync {
            let up = leading.progress.values().filter(|f| f.up).count() + 1;
            let why = format!(
                "write quorum majority needs {min_in_sync} in-sync replicas; {} in sync, {up} up",
                leading.in_sync.len()
            );
            return self.reply(token, Err(RemoteError::unavailable(why)));
        }
        // One attempt per request id at a time; a duplicate shares the first one's outcome.
        if let Some(placement) = leading.placing.get_mut(&order.request_id) {
            placement.waiters.push(token);
            return;
        }
        let trade = order.clone();
        let request_id = order.request_id.clone();
        leading.placing.insert(
            request_id.clone(),
            Placement {
                order,
                waiters: vec![token],
            },
        );
        self.call_for(
            Some(token),
            Peer::Catalog,
            Outgoing::Catalog(CatalogRequest::Trade { epoch, trade }),
            call_timeout,
            Pending::Trade { term, request_id },
        );
    }

    /// The catalog's answer to a placement's trade.
    pub(super) fn traded(&mut self, term: u64, request_id: RequestId, answer: CallResult) {
        if term != self.term {
            // The term ended; its waiters were told this replica no longer leads. Traded
            // but not recorded here: a retry at the new leader records it once (the catalog
            // remembers the request id), and reconciliation does if nobody retries.
            return;
        }
        let Some(placement) = self
            .leading()
            .and_then(|leading| leading.placing.remove(&request_id))
        else {
            return;
        };
        let Placement { order, waiters } = placement;
        let outcome = match answer {
            Ok(Answer::Catalog(CatalogResponse::Traded { seq, .. })) => {
                return self.record_traded(order, seq, waiters);
            }
            Ok(Answer::Catalog(CatalogResponse::Rejected(rejection))) => {
                Ok(OrderResponse::Rejected(rejection))
            }
            Ok(Answer::Catalog(CatalogResponse::Fenced { current, .. })) => {
                warn!(epoch = self.epoch, %current, "the catalog refused a trade of this epoch");
                let outcome = if current.epoch > self.epoch {
                    Ok(self.not_leader())
                } else {
                    Err(RemoteError::unavailable(
                        "the catalog is changing the leadership record; retry",
                    ))
                };
                for &token in &waiters {
                    self.reply(token, outcome.clone());
                }
                self.observe_record(&current);
                return;
            }
            Ok(other) => Err(RemoteError::unavailable(format!(
                "unexpected catalog answer {other:?}"
            ))),
            Err(e) => Err(RemoteError::unavailable(format!(
                "catalog: {e} (the trade may have been applied; a retry with the same request \
                 id tells)"
            ))),
        };
        for token in waiters {
            self.reply(token, outcome.clone());
        }
    }

    /// The catalog applied `order` as trade `seq`: number it, append it, and answer its
    /// waiters once it is committed.
    fn record_traded(&mut self, order: TradeRequest, seq: u64, waiters: Vec<Token>) {
        let number = self.log.next_number();
        let entry = OrderEntry {
            number,
            epoch: self.epoch,
            request_id: order.request_id,
            name: order.name,
            kind: order.kind,
            quantity: order.quantity.unsigned_abs(),
        };
        if let Err(e) = self.append(vec![entry]) {
            for token in waiters {
                self.reply(token, Err(e.clone()));
            }
            return;
        }
        if let Some(leading) = self.leading() {
            if seq > leading.reconcile.recorded.through {
                leading.reconcile.recorded.known.insert(seq, number);
            }
        }
        for token in waiters {
            self.answer_when_committed(token, number);
        }
    }

    /// Answers `Placed` once entry `number` is committed, or `Unavailable` after the commit
    /// timeout (the order stays in the log; a retry with the same id finds it).
    pub(super) fn answer_when_committed(&mut self, token: Token, number: TransactionNumber) {
        let position = self.log.position(number);
        let now = self.now;
        let deadline = now + self.config.commit_timeout;
        let not_leader = self.not_leader();
        let Some(leading) = self.leading() else {
            return self.reply(token, Ok(not_leader));
        };
        if leading.commit >= Some(number) {
            if let Some(position) = position {
                return self.reply(
                    token,
                    Ok(OrderResponse::Placed {
                        number,
                        epoch: position.epoch,
                    }),
                );
            }
        }
        if leading.committing.len() > PRUNE_COMMITTING_ABOVE {
            let deadlines = &leading.commit_deadlines;
            leading.committing.retain(|_, (_, tokens)| {
                tokens.retain(|&t| deadlines.waits(t));
                !tokens.is_empty()
            });
        }
        leading.commit_deadlines.add(token, deadline);
        leading
            .committing
            .entry(number)
            .or_insert_with(|| (now, Vec::new()))
            .1
            .push(token);
    }

    /// Recomputes the commit point and answers the orders it passed.
    pub(super) fn advance_commit(&mut self) {
        if self.failed.is_some() {
            return;
        }
        let durable = self.durable;
        let min_in_sync = self.config.min_in_sync();
        let shrink_first = self.config.rules.holds(Rule::ShrinkBeforeGoingOn);
        let now = self.now;
        let Some(leading) = self.leading() else {
            return;
        };
        let waited_for: Vec<Option<TransactionNumber>> = leading
            .progress
            .iter()
            .filter(|(id, f)| f.up || leading.in_sync.contains(id))
            // Broken on purpose (simulator only): a silent member stops being waited for
            // before the record drops it.
            .filter(|(_, f)| shrink_first || !f.silent)
            .map(|(_, f)| f.persisted)
            .collect();
        let point = commit_point(durable, &waited_for, leading.in_sync.len(), min_in_sync);
        if point <= leading.commit {
            return;
        }
        leading.commit = point;
        leading.commit_moved = now;
        let Some(commit) = point else {
            return;
        };
        let later = leading.committing.split_off(&(commit + 1));
        let ready = std::mem::replace(&mut leading.committing, later);
        let mut answers = Vec::new();
        for (number, (since, tokens)) in ready {
            if leading.commit_waits.len() < super::MAX_COMMIT_SAMPLES {
                leading.commit_waits.push(now.saturating_sub(since));
            }
            for token in tokens {
                if leading.commit_deadlines.take(token) {
                    answers.push((token, number));
                }
            }
        }
        for (token, number) in answers {
            let epoch = self.log.epoch_of(number).unwrap_or(self.epoch);
            self.reply(token, Ok(OrderResponse::Placed { number, epoch }));
        }
    }

    /// Whether an order waits for its commit (the stall clock runs only then).
    pub(super) fn nothing_waiting(&self) -> bool {
        match &self.state {
            State::Leading(leading) => {
                leading.commit.max(leading.inherited) >= self.log.last().map(|p| p.number)
            }
            _ => false,
        }
    }

    /// After an append: followers waiting for entries get them.
    pub(super) fn after_append(&mut self, was_idle: bool) {
        let now = self.now;
        let ready: Vec<ReplicaId> = match self.leading() {
            Some(leading) if leading.in_office => {
                if was_idle {
                    // Nothing was waiting: the time to commit is measured from now, not from
                    // the last time the commit point moved (long ago after an idle spell).
                    leading.commit_moved = now;
                }
                leading
                    .links
                    .iter()
                    .filter(|(_, l)| !l.in_flight && !l.probe && l.retry_at.is_none())
                    .map(|(&id, _)| id)
                    .collect()
            }
            _ => return,
        };
        for peer in ready {
            self.send_replicate(peer);
        }
    }

    /// Sends `peer` the entries it lacks (or a probe).
    fn send_replicate(&mut self, peer: ReplicaId) {
        let next_number = self.log.next_number();
        let (epoch, id, term, timeout) = (
            self.epoch,
            self.id,
            self.term,
            self.config.replicate_timeout,
        );
        let Some(link) = self.leading().and_then(|l| l.links.get_mut(&peer)) else {
            return;
        };
        link.next = link.next.min(next_number);
        link.in_flight = true;
        link.retry_at = None;
        let from = link.next;
        let count = (next_number - from).min(MAX_BATCH);
        let prev = from.checked_sub(1).and_then(|n| self.log.position(n));
        self.call(
            Peer::Replica(peer),
            Outgoing::Replicate {
                epoch,
                leader_id: id,
                prev,
                from,
                count,
            },
            timeout,
            Pending::Replicate { term, peer },
        );
    }

    /// A follower's answer to `Replicate`.
    pub(super) fn replicated(&mut self, peer: ReplicaId, answer: CallResult) {
        let next_number = self.log.next_number();
        let ours = |p: LogPosition| self.log.position(p.number) == Some(p);
        let (report, next) = match answer {
            Ok(Answer::Order(OrderResponse::Replicated { last })) => match last {
                Some(p) if !ours(p) => {
                    // It holds another entry at that number: its history differs; the next
                    // batch, after our entry there, shows it so and it syncs up.
                    (Report::Behind, Some(p.number.saturating_add(1)))
                }
                _ => (
                    Report::Persisted(last.map(|p| p.number)),
                    Some(last.map_or(0, |p| p.number.saturating_add(1))),
                ),
            },
            Ok(Answer::Order(OrderResponse::StaleEpoch {
                epoch: theirs,
                leader_id,
            })) => {
                warn!(
                    peer,
                    ours = self.epoch,
                    theirs,
                    ?leader_id,
                    "a follower knows a newer epoch; stepping down"
                );
                return self.step_down(self.epoch, theirs, leader_id);
            }
            Ok(Answer::Order(OrderResponse::Behind { last })) => {
                // It is catching up and may set entries aside: forget what it had persisted,
                // and offer the entries after its last one next time.
                (Report::Behind, last.map(|p| p.number.saturating_add(1)))
            }
            Ok(other) => {
                warn!(peer, ?other, "unexpected answer to replicate");
                (Report::Unreachable, None)
            }
            Err(e) => {
                debug!(peer, error = %e, "replicate failed");
                (Report::Unreachable, None)
            }
        };
        let now = self.now;
        let persisted = matches!(report, Report::Persisted(_));
        let Some(link) = self.leading().and_then(|l| l.links.get_mut(&peer)) else {
            return;
        };
        link.in_flight = false;
        if persisted {
            link.next = next.unwrap_or(0);
            link.probe = false;
            link.backoff.reset();
        } else {
            if let Some(next) = next {
                link.next = link.next.min(next);
            }
            link.probe = true;
            link.retry_at = Some(now + link.backoff.next_wait());
        }
        let more = persisted && link.next < next_number;
        self.report(peer, report);
        if more {
            self.send_replicate(peer);
        }
    }

    fn report(&mut self, peer: ReplicaId, report: Report) {
        let now = self.now;
        let last = self.log.last().map(|p| p.number);
        let Some(leading) = self.leading() else {
            return;
        };
        if let (Report::Persisted(persisted), Some(link)) = (&report, leading.links.get_mut(&peer))
        {
            if *persisted >= last {
                link.caught_up_at = now;
            }
        }
        let Some(follower) = leading.progress.get_mut(&peer) else {
            return;
        };
        let before = *follower;
        match report {
            Report::Persisted(persisted) => {
                follower.up = true;
                follower.silent = false;
                follower.persisted = persisted;
            }
            // It is catching up and may set entries aside: what it had persisted is forgotten.
            Report::Behind => {
                follower.up = false;
                follower.silent = false;
                follower.persisted = None;
            }
            // What it persisted before it stopped answering is still on its disk, but it is
            // not waited for once the record no longer names it.
            Report::Unreachable => {
                follower.up = false;
                follower.silent = true;
            }
        }
        let after = *follower;
        if before.silent != after.silent || before.up != after.up {
            if after.silent {
                warn!(peer, "follower silent; dropping it from the in-sync set");
            } else if after.up {
                info!(peer, "follower up");
            }
            leading.membership_at = Some(now);
        } else if after.up && !leading.in_sync.contains(&peer) {
            leading.membership_at = Some(now);
        }
        if leading.membership_in_flight {
            // The answer in flight sets the next check.
            leading.membership_at = None;
        }
        self.advance_commit();
    }

    /// Leader: the entries after where the follower's history meets ours.
    pub(super) fn sync_up(
        &mut self,
        token: Token,
        epoch: Epoch,
        follower: ReplicaId,
        known: &[LogPosition],
    ) {
        let not_leader = self.not_leader();
        let from = meeting_point(known, self.log.boundaries());
        let next = self.log.next_number();
        let leader_last = self.log.last();
        let now = self.now;
        if epoch > self.epoch {
            return self.reply(token, Ok(not_leader));
        }
        let Some(leading) = self.leading() else {
            return self.reply(token, Ok(not_leader));
        };
        if !leading.in_office {
            return self.reply(
                token,
                Err(RemoteError::unavailable("the leader is taking office")),
            );
        }
        let start = from.map_or(0, |p| p.number + 1).min(next);
        let count = (next - start).min(MAX_BATCH);
        debug!(follower, ?from, count, "sync-up batch");
        if start + count == next {
            // It will hold everything we have: wait for it again from the next order on. What
            // it persisted before stays true (those entries matched our log); what it persists
            // now is learnt from the probe sent next.
            if let Some(progress) = leading.progress.get_mut(&follower) {
                if !progress.up {
                    info!(follower, "follower caught up; waiting for it again");
                }
                progress.up = true;
                progress.silent = false;
            }
            if let Some(link) = leading.links.get_mut(&follower) {
                link.backoff.reset();
                if !link.in_flight {
                    link.retry_at = Some(now);
                }
            }
            self.advance_commit();
        }
        self.out.push(Command::Reply {
            token,
            body: ReplyBody::Entries {
                from,
                start,
                count,
                leader_last,
            },
        });
    }

    /// Whatever is due: timed-out orders, followers to retry, the in-sync set, the next
    /// reconciliation.
    pub(super) fn leader_tick(&mut self) {
        let now = self.now;
        let timeout = self.config.commit_timeout;
        let (due, retry, membership, reconcile) = match self.leading() {
            Some(leading) => {
                let due = leading.commit_deadlines.due(now);
                let retry: Vec<ReplicaId> = leading
                    .links
                    .iter()
                    .filter(|(_, l)| !l.in_flight && l.retry_at.is_some_and(|at| at <= now))
                    .map(|(&id, _)| id)
                    .collect();
                let membership = leading.membership_at.is_some_and(|at| at <= now);
                let reconcile = leading.reconcile.next_at.is_some_and(|at| at <= now);
                (due, retry, membership, reconcile)
            }
            None => return,
        };
        for token in due {
            self.reply(
                token,
                Err(RemoteError::unavailable(format!(
                    "the order did not reach its write quorum within {timeout:?}"
                ))),
            );
        }
        for peer in retry {
            self.send_replicate(peer);
        }
        if membership {
            self.keep_in_sync();
        }
        if reconcile {
            self.send_reconcile();
        }
    }

    /// Keeps the recorded in-sync set true: drops members that went silent before going on
    /// without them, takes back followers that caught up.
    fn keep_in_sync(&mut self) {
        let (id, epoch, term, now) = (self.id, self.epoch, self.term, self.now);
        let min_in_sync = self.config.min_in_sync();
        let timeout = self.config.replicate_timeout * 2;
        let Some(leading) = self.leading() else {
            return;
        };
        if !leading.in_office || leading.membership_in_flight {
            // The answer in flight (or taking office) sets the next check.
            leading.membership_at = None;
            return;
        }
        let desired = desired_in_sync(
            id,
            &leading.in_sync,
            &leading.progress,
            leading.commit.max(leading.inherited),
            min_in_sync,
        );
        if desired == leading.in_sync {
            leading.membership_at = Some(now + MEMBERSHIP_EVERY);
            return;
        }
        // Replicas being added are waited for from now on, before the catalog records them:
        // the moment it does, they must hold every acknowledged order. Removed ones are still
        // waited for until the catalog's answer.
        leading.in_sync = union(&leading.in_sync, &desired);
        leading.membership_in_flight = true;
        leading.membership_at = None;
        let change = LeadershipChange::SetInSync {
            leader: id,
            in_sync: desired,
        };
        self.call(
            Peer::Catalog,
            Outgoing::Catalog(CatalogRequest::ChangeLeadership {
                expected: epoch,
                change,
            }),
            timeout,
            Pending::InSync { term },
        );
    }

    /// The catalog's answer to a change of the in-sync set.
    pub(super) fn in_sync_changed(&mut self, answer: CallResult) {
        let (epoch, now) = (self.epoch, self.now);
        let peers = self.config.peers.clone();
        let id = self.id;
        let Some(leading) = self.leading() else {
            return;
        };
        leading.membership_in_flight = false;
        match answer {
            Ok(Answer::Catalog(CatalogResponse::Leadership(record))) => {
                leading.membership_at = Some(now + MEMBERSHIP_EVERY);
                if record.epoch == epoch {
                    info!(to = ?record.in_sync, "in-sync set changed");
                    leading.in_sync = record
                        .in_sync
                        .into_iter()
                        .filter(|r| *r == id || peers.contains(r))
                        .collect();
                    self.advance_commit();
                }
            }
            Ok(Answer::Catalog(CatalogResponse::Fenced { current, reason })) => {
                warn!(%current, %reason, "in-sync change refused");
                leading.membership_at = Some(now + MEMBERSHIP_EVERY);
                self.observe_record(&current);
            }
            other => {
                // The change may or may not have been recorded: every replica either record
                // names is still waited for, until a later change settles it.
                debug!(answer = ?other.err(), "in-sync change failed; retrying");
                leading.membership_at = Some(now + MIN_BACKOFF * 5);
            }
        }
    }

    /// One reconciliation round: tells the catalog how far every trade is a committed order
    /// (renewing the lease if this leader serves) and asks for the trades after that.
    fn send_reconcile(&mut self) {
        let (epoch, term, timeout) = (self.epoch, self.term, self.config.call_timeout);
        let serving = match &self.state {
            State::Leading(leading) => !self.stalled(leading),
            _ => return,
        };
        let Some(leading) = self.leading() else {
            return;
        };
        if !leading.in_office || leading.reconcile.in_flight {
            // The answer in flight (or taking office) sets the next round.
            leading.reconcile.next_at = None;
            return;
        }
        // Only orders committed in this term count: inherited ones may not be on every
        // in-sync replica yet.
        let commit = leading.commit;
        let reconcile = &mut leading.reconcile;
        let through = reconcile.recorded.advance(commit);
        let after = if reconcile.reconciled {
            Some(through)
        } else {
            reconcile.cursor
        };
        reconcile.asked_after = after;
        reconcile.in_flight = true;
        reconcile.next_at = None;
        let request = CatalogRequest::AppliedSince {
            epoch,
            recorded_through: if reconcile.reconciled { through } else { 0 },
            after,
            max: RECONCILE_BATCH,
            serving,
        };
        self.call(
            Peer::Catalog,
            Outgoing::Catalog(request),
            timeout,
            Pending::Reconcile { term },
        );
    }

    /// The catalog's answer to a reconciliation round.
    pub(super) fn reconciled(&mut self, answer: CallResult) {
        let now = self.now;
        let Some(leading) = self.leading() else {
            return;
        };
        let reconcile = &mut leading.reconcile;
        reconcile.in_flight = false;
        let was_reconciled = reconcile.reconciled;
        let pause = if was_reconciled {
            RECONCILE_EVERY
        } else {
            MIN_BACKOFF
        };
        reconcile.next_at = Some(now + pause);
        match answer {
            Ok(Answer::Catalog(CatalogResponse::Applied {
                trades,
                last_seq,
                complete,
            })) => {
                if !complete && !reconcile.warned {
                    reconcile.warned = true;
                    error!(after = ?reconcile.asked_after, "the catalog no longer remembers every trade since the last recorded one; trades in between cannot be checked");
                }
                let more = trades.len() == RECONCILE_BATCH as usize
                    && trades.last().is_some_and(|t| t.seq < last_seq);
                let next_cursor = trades.last().map(|t| t.seq).or(reconcile.asked_after);
                let adopted = match self.absorb(&trades, last_seq, was_reconciled) {
                    Ok(adopted) => adopted,
                    Err(e) => {
                        // Not reconciled: the next round tries again.
                        warn!(error = %e, "reconciliation not applied");
                        return;
                    }
                };
                if adopted > 0 {
                    warn!(
                        adopted,
                        "recorded trades the catalog applied without an order"
                    );
                }
                if was_reconciled {
                    return;
                }
                let epoch = self.epoch;
                let Some(leading) = self.leading() else {
                    return;
                };
                if more {
                    leading.reconcile.cursor = next_cursor;
                    leading.reconcile.next_at = Some(now);
                    return;
                }
                leading.reconcile.reconciled = true;
                info!(
                    epoch,
                    through = leading.reconcile.recorded.through,
                    "reconciled with the catalog; placing orders"
                );
            }
            Ok(Answer::Catalog(CatalogResponse::Fenced { current, .. })) => {
                self.observe_record(&current);
            }
            Ok(other) => debug!(?other, "unexpected answer to a reconciliation"),
            Err(e) => debug!(error = %e, "reconciliation failed; retrying"),
        }
    }

    /// Records the applied trades that are neither in the log nor being placed right now;
    /// returns how many were adopted.
    fn absorb(
        &mut self,
        trades: &[AppliedTrade],
        last_seq: u64,
        reconciled: bool,
    ) -> Result<usize, RemoteError> {
        let adopt = self.config.rules.holds(Rule::OrphanAdoption);
        let epoch = self.epoch;
        let mut number = self.log.next_number();
        let mut entries = Vec::new();
        let mut adopted = Vec::new();
        let log = &self.log;
        let State::Leading(leading) = &mut self.state else {
            return Ok(0);
        };
        let recorded = &mut leading.reconcile.recorded;
        if !reconciled && recorded.known.is_empty() && recorded.through == 0 {
            // Everything before the first trade listed (or before the catalog's last one)
            // was recorded by earlier leaders.
            recorded.through = trades.first().map_or(last_seq, |t| t.seq.saturating_sub(1));
        }
        for trade in trades {
            if trade.seq <= recorded.through || recorded.known.contains_key(&trade.seq) {
                continue;
            }
            if let Some(placed) = log.placed(&trade.request_id) {
                recorded.known.insert(trade.seq, placed.number);
                continue;
            }
            if leading.placing.contains_key(&trade.request_id) {
                // Being placed right now: left to its request.
                continue;
            }
            if entries
                .iter()
                .any(|e: &OrderEntry| e.request_id == trade.request_id)
            {
                continue;
            }
            if !adopt {
                // Broken on purpose (simulator only): the orphan is left unrecorded.
                continue;
            }
            info!(seq = trade.seq, number, request_id = %trade.request_id, "recording a trade the catalog applied without an order");
            adopted.push((trade.seq, number));
            entries.push(OrderEntry {
                number,
                epoch,
                request_id: trade.request_id.clone(),
                name: trade.name.clone(),
                kind: trade.kind,
                quantity: trade.quantity,
            });
            number += 1;
        }
        if entries.is_empty() {
            return Ok(0);
        }
        self.append(entries)?;
        let count = adopted.len();
        if let Some(leading) = self.leading() {
            leading.reconcile.recorded.known.extend(adopted);
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use common::safety::{Rule, Rules};
    use common::wire::{
        AppliedTrade, CatalogRequest, CatalogResponse, LeadershipChange, OrderRequest,
        OrderResponse, TradeRejection,
    };

    use crate::engine::testing::{config, entry, order, pos, record, Harness};
    use crate::engine::{Answer, CallError, Command, Input, Outgoing, Peer};
    use crate::log::EpochRecord;

    fn replicated(h: &mut Harness, peer: u32, last: Option<common::wire::LogPosition>) {
        let call = h.call_to(Peer::Replica(peer), |r| {
            matches!(r, Outgoing::Replicate { .. })
        });
        h.answer(call, Answer::Order(OrderResponse::Replicated { last }));
    }

    #[test]
    fn an_order_is_answered_once_the_leader_and_every_in_sync_member_hold_it() {
        let mut h = Harness::leading(1, 2, vec![]);
        let token = h.place_traded("o1", 1);
        assert!(matches!(
            h.writes()[..],
            [Command::Append { entries, .. }] if entries == &vec![entry(0, 2, "o1")]
        ));
        replicated(&mut h, 2, Some(pos(0, 2)));
        h.flush();
        assert_eq!(h.reply(token), None, "replica 3 does not hold it yet");
        replicated(&mut h, 3, Some(pos(0, 2)));
        assert_eq!(
            h.reply(token),
            Some(Ok(OrderResponse::Placed {
                number: 0,
                epoch: 2
            }))
        );
        assert_eq!(h.engine.commit(), Some(0));
    }

    #[test]
    fn nothing_counts_that_is_not_on_the_leaders_disk() {
        let mut h = Harness::leading(1, 2, vec![]);
        let token = h.place_traded("o1", 1);
        replicated(&mut h, 2, Some(pos(0, 2)));
        replicated(&mut h, 3, Some(pos(0, 2)));
        assert_eq!(h.reply(token), None);
        h.flush();
        assert!(matches!(
            h.reply(token),
            Some(Ok(OrderResponse::Placed { .. }))
        ));
    }

    #[test]
    fn a_follower_claiming_another_entry_at_a_number_does_not_count() {
        let mut h = Harness::leading(1, 2, vec![]);
        let token = h.place_traded("o1", 1);
        h.flush();
        replicated(&mut h, 2, Some(pos(0, 2)));
        // Replica 3 holds entry 0 of another epoch: not ours.
        replicated(&mut h, 3, Some(pos(0, 1)));
        assert_eq!(h.reply(token), None);
        assert_eq!(h.engine.commit(), None);
    }

    fn silence_replica_3(h: &mut Harness) {
        let call = h.call_to(Peer::Replica(3), |r| {
            matches!(r, Outgoing::Replicate { .. })
        });
        h.feed(Input::Answer {
            call,
            answer: Err(CallError::Failed("timed out".into())),
        });
    }

    #[test]
    fn a_silent_member_leaves_the_record_before_the_leader_commits_without_it() {
        let mut h = Harness::leading(1, 2, vec![]);
        let token = h.place_traded("o1", 1);
        h.flush();
        replicated(&mut h, 2, Some(pos(0, 2)));
        silence_replica_3(&mut h);
        assert_eq!(h.reply(token), None);
        h.wait(Duration::ZERO);
        let change = h.call_to(Peer::Catalog, |r| {
            matches!(
                r,
                Outgoing::Catalog(CatalogRequest::ChangeLeadership {
                    expected: 2,
                    change: LeadershipChange::SetInSync { leader: 1, in_sync },
                }) if in_sync == &vec![1, 2]
            )
        });
        // Until the catalog records it, replica 3 is still waited for.
        assert_eq!(h.reply(token), None);
        h.answer(
            change,
            Answer::Catalog(CatalogResponse::Leadership(record(2, 1, &[1, 2]))),
        );
        assert_eq!(
            h.reply(token),
            Some(Ok(OrderResponse::Placed {
                number: 0,
                epoch: 2
            }))
        );
        assert_eq!(h.engine.in_sync(), Some(&[1, 2][..]));
    }

    #[test]
    fn with_the_rule_off_the_leader_goes_on_without_a_silent_member_at_once() {
        let rules = Rules::without(Rule::ShrinkBeforeGoingOn);
        let mut h = Harness::with(config(1, rules), vec![], EpochRecord::default());
        h.feed(Input::Record(record(2, 1, &[1, 2, 3])));
        h.flush();
        for (call, to, _) in h.calls() {
            let answer = match to {
                Peer::Catalog => Answer::Catalog(CatalogResponse::Applied {
                    trades: vec![],
                    last_seq: 0,
                    complete: true,
                }),
                Peer::Replica(_) => Answer::Order(OrderResponse::Replicated { last: None }),
            };
            h.answer(call, answer);
        }
        h.take();
        let token = h.place_traded("o1", 1);
        h.flush();
        replicated(&mut h, 2, Some(pos(0, 2)));
        silence_replica_3(&mut h);
        assert!(matches!(
            h.reply(token),
            Some(Ok(OrderResponse::Placed { .. }))
        ));
    }

    #[test]
    fn a_retry_gets_the_first_number_and_a_reused_id_is_refused() {
        let mut h = Harness::leading(1, 2, vec![]);
        let first = h.place_traded("o1", 1);
        h.flush();
        replicated(&mut h, 2, Some(pos(0, 2)));
        replicated(&mut h, 3, Some(pos(0, 2)));
        assert!(h.reply(first).is_some());
        let retry = h.request(OrderRequest::PlaceOrder(order("o1")));
        assert_eq!(
            h.reply(retry),
            Some(Ok(OrderResponse::Placed {
                number: 0,
                epoch: 2
            }))
        );
        assert!(h.calls().is_empty(), "a retry trades nothing again");
        let mut other = order("o1");
        other.quantity = 2;
        let reused = h.request(OrderRequest::PlaceOrder(other));
        assert_eq!(
            h.reply(reused),
            Some(Ok(OrderResponse::Rejected(TradeRejection::RequestIdReused)))
        );
    }

    #[test]
    fn concurrent_requests_for_one_id_share_one_trade() {
        let mut h = Harness::leading(1, 2, vec![]);
        let a = h.request(OrderRequest::PlaceOrder(order("o1")));
        let b = h.request(OrderRequest::PlaceOrder(order("o1")));
        let trade = h.call_to(Peer::Catalog, |r| {
            matches!(r, Outgoing::Catalog(CatalogRequest::Trade { .. }))
        });
        h.answer(
            trade,
            Answer::Catalog(CatalogResponse::Rejected(TradeRejection::NotEnoughStock {
                available: 0,
            })),
        );
        let refused = Ok(OrderResponse::Rejected(TradeRejection::NotEnoughStock {
            available: 0,
        }));
        assert_eq!(h.reply(a), Some(refused.clone()));
        assert_eq!(h.reply(b), Some(refused));
        assert_eq!(h.engine.log().next_number(), 0);
    }

    #[test]
    fn a_trade_applied_without_an_order_is_recorded_by_reconciliation() {
        let mut h = Harness::leading(1, 2, vec![]);
        h.wait(super::RECONCILE_EVERY);
        let round = h.call_to(Peer::Catalog, |r| {
            matches!(r, Outgoing::Catalog(CatalogRequest::AppliedSince { .. }))
        });
        let orphan = AppliedTrade {
            seq: 1,
            request_id: common::wire::RequestId::new("orphan").unwrap(),
            name: common::wire::StockName::new("GameStart").unwrap(),
            kind: common::wire::TradeKind::Buy,
            quantity: 1,
        };
        h.answer(
            round,
            Answer::Catalog(CatalogResponse::Applied {
                trades: vec![orphan],
                last_seq: 1,
                complete: true,
            }),
        );
        assert!(matches!(
            h.writes()[..],
            [Command::Append { entries, .. }] if entries == &vec![entry(0, 2, "orphan")]
        ));
    }

    #[test]
    fn an_order_waits_for_its_quorum_no_longer_than_the_commit_timeout() {
        let mut h = Harness::leading(1, 2, vec![]);
        let token = h.place_traded("o1", 1);
        h.flush();
        h.wait(Duration::from_secs(5));
        assert!(matches!(h.reply(token), Some(Err(e)) if e.message.contains("write quorum")));
        // Waiting that long without a commit, the leader reports itself stalled.
        assert!(h.engine.status().stalled);
    }

    #[test]
    fn a_leader_whose_disk_failed_stops_renewing_its_lease() {
        let mut h = Harness::leading(1, 2, vec![]);
        h.feed(Input::StorageFailed("No space left on device".into()));
        assert!(h.engine.status().stalled);
        h.wait(super::RECONCILE_EVERY);
        h.call_to(Peer::Catalog, |r| {
            matches!(
                r,
                Outgoing::Catalog(CatalogRequest::AppliedSince { serving: false, .. })
            )
        });
    }

    #[test]
    fn an_audit_reads_only_what_is_on_disk_a_bounded_page_at_a_time() {
        let mut h = Harness::leading(1, 2, vec![]);
        let read = |h: &mut Harness, from, max| {
            let token = h.request(OrderRequest::ReadLog { from, max });
            let at = h
                .out
                .iter()
                .position(|c| matches!(c, Command::Reply { token: t, .. } if *t == token))
                .expect("a reply");
            match h.out.remove(at) {
                Command::Reply {
                    body: super::ReplyBody::Log { start, count, .. },
                    ..
                } => (start, count),
                other => panic!("not a log page: {other:?}"),
            }
        };
        h.place_traded("o1", 1);
        assert_eq!(read(&mut h, 0, 10), (0, 0), "nothing is durable yet");
        h.flush();
        assert_eq!(read(&mut h, 0, 10), (0, 1));
        assert_eq!(read(&mut h, 0, 0), (0, 0));
        assert_eq!(read(&mut h, 1, 10), (1, 0));
        assert_eq!(read(&mut h, u64::MAX, u32::MAX), (u64::MAX, 0));
        // However much is asked for, a page holds at most READ_LOG_MAX entries.
        for i in 0..1_200 {
            h.place_traded(&format!("more{i}"), 2 + i);
        }
        h.flush();
        let max = u64::from(common::wire::READ_LOG_MAX);
        assert_eq!(read(&mut h, 0, u32::MAX), (0, max));
        assert_eq!(read(&mut h, max, u32::MAX), (max, 1_201 - max));
    }

    #[test]
    fn only_committed_orders_are_shown_by_the_leader() {
        let mut h = Harness::leading(1, 2, vec![]);
        h.place_traded("o1", 1);
        let early = h.request(OrderRequest::GetOrder { number: 0 });
        assert!(matches!(h.reply(early), Some(Err(_))));
        let missing = h.request(OrderRequest::GetOrder { number: 7 });
        assert_eq!(h.reply(missing), Some(Ok(OrderResponse::OrderNotFound)));
    }
}
