//! The leader's path: it decides each order itself on its copy of the stocks ([`super::feed`]),
//! numbers an accepted one as the next entry of its log, replicates it to every follower (one
//! batch in flight each) while the catalog applies it, and answers once it is committed: on
//! the leader's disk, on every member of the in-sync set, and applied by the catalog. A
//! refusal is answered once the catalog has made it durable. The leader keeps the in-sync set
//! true at the catalog (a silent member is removed from the record before the leader goes on
//! without it; a follower that caught up is taken back), and reconciles its log with the
//! catalog's history before it places or commits anything, and every [`RECONCILE_EVERY`]
//! after: it records the trades the catalog applied that its log lacks, sets aside what the
//! catalog's history contradicts, and brings the catalog up to the rest. Each round renews
//! its lease.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::safety::Rule;
use common::wire::{
    CatalogRequest, CatalogResponse, Epoch, LeadershipChange, LogPosition, OrderEntry,
    OrderResponse, RemoteError, ReplicaId, RequestId, TradeRejection, TradeRequest,
    TransactionNumber,
};
use tracing::{debug, error, info, warn};

use common::engine::{Backoff, Deadlines};
use durability::window::Hasher;

use super::feed::{Feed, Learned};
use super::{
    Answer, CallResult, Engine, Outgoing, Peer, Pending, ReplyBody, State, Time, Token,
    MAX_BACKOFF, MAX_BATCH, MAX_KNOWN, MIN_BACKOFF, PRUNE_COMMITTING_ABOVE,
};
use crate::replication::{commit_point, desired_in_sync, meeting_point, FollowerProgress};

/// How often a leader reconciles its log with the catalog's history; each round also renews
/// its lease at the catalog (well within the catalog's default 800 ms).
pub const RECONCILE_EVERY: Duration = Duration::from_millis(200);
/// Most of the catalog's trades asked for in one reconciliation.
pub const RECONCILE_BATCH: u32 = 1_000;
/// `Replicate` batches on their way to one follower at a time. One: a follower writes and
/// fsyncs a batch on its thread before it reads the next, so a second one on its way gains
/// nothing; and with several threads, the tasks that send and handle each call may let the
/// second overtake the first, which sends the follower to catch up (tried at two: followers
/// caught up every few batches, and trades got no faster).
pub const REPLICATE_WINDOW: u32 = 1;
/// How often a leader re-checks its in-sync set when nothing woke it.
pub const MEMBERSHIP_EVERY: Duration = Duration::from_millis(100);

/// The leader's link to one follower.
#[derive(Debug, Clone, Copy)]
struct Link {
    /// The next entry to send.
    next: TransactionNumber,
    /// The next message asks where the follower stands, even with nothing to send.
    probe: bool,
    /// Batches on their way (at most [`REPLICATE_WINDOW`]).
    in_flight: u32,
    /// Wait before the next try after a failure.
    backoff: Backoff,
    /// When to try again, after a failure.
    retry_at: Option<Time>,
    /// When it last held every entry the leader held (the term's start at first).
    caught_up_at: Time,
}

/// A trade this leader refuses, waiting for the catalog to make the refusal durable, and
/// every request for it that waits.
#[derive(Debug)]
pub(super) struct Placement {
    pub(super) waiters: Vec<Token>,
}

/// The orders one input placed, appended together at its end.
#[derive(Debug, Default)]
struct Fresh {
    /// The entries, in order, each with the requests waiting for it.
    entries: Vec<(OrderEntry, Vec<Token>)>,
    /// Where each request id is among them.
    index: HashMap<RequestId, usize, Hasher>,
}

/// Reconciliation with the catalog.
#[derive(Debug, Default)]
pub(super) struct Reconciliation {
    /// The catalog's history was a prefix of the log once in this term: the catalog is
    /// brought up to the rest, orders are committed (and placed, once the levels are read).
    pub(super) reconciled: bool,
    /// A `Reconcile` is on its way.
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
    /// Trades refused here whose refusal the catalog has not yet made durable, by request id.
    pub(super) placing: BTreeMap<RequestId, Placement>,
    /// The orders the input being handled placed.
    fresh: Fresh,
    /// The link to the catalog: the levels, what it has applied, what goes to it next.
    pub(super) feed: Feed,
    /// How many times it set entries of its log aside in this term (told with every
    /// `Replicate`, so that followers set them aside too).
    cuts: u32,
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
                            in_flight: 0,
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
            fresh: Fresh::default(),
            feed: Feed::new(),
            cuts: 0,
            reconcile: Reconciliation::default(),
            membership_in_flight: false,
            membership_at: None,
        }
    }

    pub(super) fn next_timer(&mut self) -> Option<Time> {
        // A link with a batch on its way waits for that answer, not for its retry time.
        let retries = self
            .links
            .values()
            .filter(|l| l.in_flight == 0)
            .filter_map(|l| l.retry_at);
        [
            self.commit_deadlines.earliest(),
            self.reconcile.next_at,
            self.membership_at,
            self.feed.next_timer(),
        ]
        .into_iter()
        .flatten()
        .chain(retries)
        .min()
    }

    /// Every request waiting on this term: orders waiting for their commit, or for their
    /// refusal to be durable.
    pub(super) fn waiting(&mut self) -> Vec<Token> {
        let mut tokens = self.waiting_for_commit();
        let placing = std::mem::take(&mut self.placing);
        tokens.extend(placing.into_values().flat_map(|p| p.waiters));
        let fresh = std::mem::take(&mut self.fresh);
        tokens.extend(fresh.entries.into_iter().flat_map(|(_, waiters)| waiters));
        self.feed.clear();
        tokens
    }

    /// The orders waiting for their commit.
    pub(super) fn waiting_for_commit(&mut self) -> Vec<Token> {
        self.committing.clear();
        self.commit_deadlines.drain()
    }

    /// The requests waiting for entry `number` to commit, which no longer wait.
    pub(super) fn take_committing(&mut self, number: TransactionNumber) -> Vec<Token> {
        let tokens = self
            .committing
            .remove(&number)
            .map(|(_, tokens)| tokens)
            .unwrap_or_default();
        tokens
            .into_iter()
            .filter(|&token| self.commit_deadlines.take(token))
            .collect()
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
    pub(super) fn leading(&mut self) -> Option<&mut Leading> {
        match &mut self.state {
            State::Leading(leading) => Some(leading),
            _ => None,
        }
    }

    /// A leader that cannot commit: its disk failed, its in-sync set is below the minimum, or
    /// an order has waited longer than a few replication timeouts without the commit point
    /// moving.
    pub(super) fn stalled(&self, leading: &Leading) -> bool {
        // Nothing commits before the log is reconciled with the catalog; that wait is not a
        // stall (a leader that cannot reach the catalog says so in its link).
        let waiting = leading.reconcile.reconciled
            && leading.commit.max(leading.inherited) < self.log.last().map(|p| p.number);
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

    /// Leader: decides the order on its copy of the stocks. Accepted, it becomes the log's
    /// next entry (appended with whatever else this input places) and is answered once
    /// committed; refused, it is answered once the catalog has made the refusal durable.
    pub(super) fn place(&mut self, token: Token, order: TradeRequest) {
        let quantity = match u64::try_from(order.quantity) {
            Ok(quantity) if quantity > 0 => quantity,
            _ => {
                return self.reply(
                    token,
                    Ok(OrderResponse::Rejected(TradeRejection::InvalidQuantity)),
                )
            }
        };
        let min_in_sync = self.config.min_in_sync();
        let majority = self.config.write_quorum == crate::WriteQuorum::Majority;
        let (epoch, not_leader) = (self.epoch, self.not_leader());
        let recorded = self
            .log
            .placed(&order.request_id)
            .map(|placed| (placed.number, placed.same_trade(&order)));
        let learned = self.learned(&order.request_id).cloned();
        // The entry the log holds where the catalog said a learnt request was traded.
        let held_at = match &learned {
            Some(Learned::Traded { number, .. }) => self.log.placed_at(*number),
            _ => None,
        };
        let next = self.log.next_number();
        let Some(leading) = self.leading() else {
            return self.reply(token, Ok(not_leader));
        };
        if !leading.in_office || !leading.reconcile.reconciled || leading.feed.levels.is_none() {
            return self.reply(
                token,
                Err(RemoteError::unavailable(
                    "the new leader is reconciling with the catalog; retry",
                )),
            );
        }
        if leading.feed.withdrawing {
            return self.reply(
                token,
                Err(RemoteError::unavailable(
                    "the leader withdraws orders the catalog would not apply; retry",
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
        // Placed already in this input: the same order.
        if let Some(&at) = leading.fresh.index.get(&order.request_id) {
            let (entry, waiters) = &mut leading.fresh.entries[at];
            let same = i64::try_from(entry.quantity)
                .is_ok_and(|q| order.same_trade(&entry.name, entry.kind, q));
            if same {
                waiters.push(token);
                return;
            }
            return self.reply(
                token,
                Ok(OrderResponse::Rejected(TradeRejection::RequestIdReused)),
            );
        }
        // Being refused: it shares that outcome.
        if let Some(placement) = leading.placing.get_mut(&order.request_id) {
            placement.waiters.push(token);
            return;
        }
        match learned {
            Some(learned) if learned.trade() != &order => {
                return self.reply(
                    token,
                    Ok(OrderResponse::Rejected(TradeRejection::RequestIdReused)),
                )
            }
            Some(Learned::Refused { rejection, .. }) => {
                return self.reply(token, Ok(OrderResponse::Rejected(rejection)))
            }
            Some(Learned::Traded { number, .. })
                if number < next
                    && held_at
                        .as_ref()
                        .is_none_or(|t| t.request_id == order.request_id) =>
            {
                return self.answer_when_committed(token, number)
            }
            Some(Learned::Traded { .. }) => {
                return self.reply(
                    token,
                    Err(RemoteError::unavailable(
                        "the order log and the catalog disagree; retry",
                    )),
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
        let number = next + leading.fresh.entries.len() as u64;
        let Some(levels) = leading.feed.levels.as_mut() else {
            return;
        };
        let Some(level) = levels.get_mut(&order.name) else {
            return self.reply(
                token,
                Ok(OrderResponse::Rejected(TradeRejection::StockNotFound)),
            );
        };
        match common::trade::traded(*level, order.kind, quantity) {
            Ok(after) => {
                *level = after;
                let entry = OrderEntry {
                    number,
                    epoch,
                    request_id: order.request_id.clone(),
                    name: order.name,
                    kind: order.kind,
                    quantity,
                };
                let fresh = &mut leading.fresh;
                fresh.index.insert(order.request_id, fresh.entries.len());
                fresh.entries.push((entry, vec![token]));
            }
            Err(rejection) if common::trade::depends_on_state(&rejection) => {
                // Made durable by the catalog, at this point of the log, before it is told.
                leading.feed.refuse(number, order.clone());
                leading.placing.insert(
                    order.request_id,
                    Placement {
                        waiters: vec![token],
                    },
                );
            }
            Err(rejection) => self.reply(token, Ok(OrderResponse::Rejected(rejection))),
        }
    }

    /// Appends the orders the input just handled placed, and has each answered once
    /// committed.
    pub(super) fn place_fresh(&mut self) {
        let Some(leading) = self.leading() else {
            return;
        };
        let fresh = std::mem::take(&mut leading.fresh);
        if fresh.entries.is_empty() {
            return;
        }
        let (entries, waiters): (Vec<OrderEntry>, Vec<Vec<Token>>) =
            fresh.entries.into_iter().unzip();
        let numbers: Vec<TransactionNumber> = entries.iter().map(|e| e.number).collect();
        if let Err(e) = self.append(entries) {
            // The levels counted them: they are read again once the log takes writes.
            if let Some(leading) = self.leading() {
                leading.feed.levels = None;
            }
            for token in waiters.into_iter().flatten() {
                self.reply(token, Err(e.clone()));
            }
            return;
        }
        for (number, tokens) in numbers.into_iter().zip(waiters) {
            for token in tokens {
                self.answer_when_committed(token, number);
            }
        }
    }

    /// Sets aside every entry from `from` on (none of them committed in this term), and
    /// forgets what followers held of them.
    pub(super) fn set_aside_from(&mut self, from: TransactionNumber, reason: &str) {
        let Some(leading) = self.leading() else {
            return;
        };
        leading.inherited = leading.inherited.min(from.checked_sub(1));
        leading.cuts += 1;
        let kept = from.checked_sub(1);
        for progress in leading.progress.values_mut() {
            progress.persisted = progress.persisted.min(kept);
        }
        for link in leading.links.values_mut() {
            link.next = link.next.min(from);
        }
        self.cut_from(from, reason);
        // Followers that hold what was set aside learn where the log ends now (those with a
        // batch on its way learn it from the next one).
        let idle: Vec<ReplicaId> = match self.leading() {
            Some(leading) if leading.in_office => leading
                .links
                .iter()
                .filter(|(_, l)| l.in_flight == 0 && l.retry_at.is_none())
                .map(|(&id, _)| id)
                .collect(),
            _ => Vec::new(),
        };
        for peer in idle {
            self.send_replicate(peer);
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
        // Nothing counts as committed before the log is reconciled with the catalog's history:
        // an inherited entry the catalog's history contradicts is set aside, not committed.
        if !matches!(&self.state, State::Leading(l) if l.reconcile.reconciled) {
            return;
        }
        let durable = self.durable;
        let min_in_sync = self.config.min_in_sync();
        let shrink_first = self.config.rules.holds(Rule::ShrinkBeforeGoingOn);
        let applied_first = self.config.rules.holds(Rule::AppliedBeforeCommit);
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
        let mut point = commit_point(durable, &waited_for, leading.in_sync.len(), min_in_sync);
        if applied_first {
            // Only what a life of the catalog that still answers has applied: nothing
            // acknowledged can still be refused there, and a lookup after the answer shows it.
            point = match leading.feed.incarnation {
                Some(_) => point.min(leading.feed.applied.checked_sub(1)),
                None => leading.commit,
            };
        }
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
                    .filter(|(_, l)| {
                        l.in_flight < REPLICATE_WINDOW && !l.probe && l.retry_at.is_none()
                    })
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
        link.in_flight += 1;
        link.retry_at = None;
        let from = link.next;
        let count = (next_number - from).min(MAX_BATCH);
        // The next batch starts after this one: it may go before this one is answered.
        link.next = from + count;
        let prev = from.checked_sub(1).and_then(|n| self.log.position(n));
        let cuts = self.leading().map_or(0, |leading| leading.cuts);
        self.call(
            Peer::Replica(peer),
            Outgoing::Replicate {
                epoch,
                leader_id: id,
                prev,
                cuts,
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
        let Some(leading) = self.leading() else {
            return;
        };
        let held = leading
            .progress
            .get(&peer)
            .and_then(|p| p.persisted)
            .map_or(0, |n| n + 1);
        let Some(link) = leading.links.get_mut(&peer) else {
            return;
        };
        link.in_flight = link.in_flight.saturating_sub(1);
        if persisted {
            // Batches sent after the one answered may be on their way still.
            link.next = link.next.max(next.unwrap_or(0));
            link.probe = false;
            link.backoff.reset();
        } else {
            // From where it stands (or from what it was known to hold), once it answers again.
            link.next = link.next.min(next.unwrap_or(held));
            link.probe = true;
            link.retry_at = Some(now + link.backoff.next_wait());
        }
        let more = persisted && link.next < next_number && link.in_flight < REPLICATE_WINDOW;
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
                if link.in_flight == 0 {
                    link.retry_at = Some(now);
                }
            }
            self.advance_commit();
        }
        self.respond(
            token,
            ReplyBody::Entries {
                from,
                start,
                count,
                leader_last,
            },
        );
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
                    .filter(|(_, l)| l.in_flight == 0 && l.retry_at.is_some_and(|at| at <= now))
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
        self.feed_tick();
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

    /// One reconciliation round: where the log meets the catalog's history, and the
    /// catalog's trades after that point (renewing the lease if this leader serves).
    fn send_reconcile(&mut self) {
        let (epoch, term, timeout) = (self.epoch, self.term, self.config.call_timeout);
        let known = self.log.positions().recent_boundaries(MAX_KNOWN);
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
        leading.reconcile.in_flight = true;
        leading.reconcile.next_at = None;
        let request = CatalogRequest::Reconcile {
            epoch,
            known,
            max: RECONCILE_BATCH,
            serving,
            log: self.log_end(),
        };
        self.call(
            Peer::Catalog,
            Outgoing::Catalog(request),
            timeout,
            Pending::Reconcile { term },
        );
    }

    /// The catalog's answer to a reconciliation round: the log and the catalog's history are
    /// made equal where they differ (the catalog's trades the log lacks are recorded, what
    /// the log holds that the catalog's history contradicts is set aside), and the catalog is
    /// brought up to the rest of the log.
    pub(super) fn reconciled(&mut self, answer: CallResult) {
        let now = self.now;
        let Some(leading) = self.leading() else {
            return;
        };
        let reconcile = &mut leading.reconcile;
        reconcile.in_flight = false;
        let pause = if reconcile.reconciled {
            RECONCILE_EVERY
        } else {
            MIN_BACKOFF
        };
        reconcile.next_at = Some(now + pause);
        match answer {
            Ok(Answer::Catalog(CatalogResponse::Reconciled {
                incarnation,
                meet,
                next,
                trades,
                complete,
            })) => {
                let current = self
                    .leading()
                    .is_some_and(|leading| leading.feed.life(incarnation, next));
                if current {
                    self.meet_catalog(meet, next, trades, complete);
                    // A catalog that answers again lets what it holds commit.
                    self.advance_commit();
                } else if let Some(leading) = self.leading() {
                    // From a life of the catalog that has restarted since: ask the one there is.
                    leading.reconcile.next_at = Some(now);
                }
            }
            Ok(Answer::Catalog(CatalogResponse::Fenced { current, .. })) => {
                self.observe_record(&current);
            }
            Ok(other) => debug!(?other, "unexpected answer to a reconciliation"),
            Err(e) => {
                debug!(error = %e, "reconciliation failed; retrying");
                self.catalog_lost();
            }
        }
    }

    fn meet_catalog(
        &mut self,
        meet: Option<LogPosition>,
        next: TransactionNumber,
        trades: Vec<OrderEntry>,
        complete: bool,
    ) {
        let now = self.now;
        let epoch = self.epoch;
        let ours = self.log.next_number();
        // Every entry below `agree` is the same in both (the log may have grown since the
        // round was asked for, by entries the catalog applied since: those agree too).
        let mut agree = meet.map_or(0, |p| p.number + 1);
        let mut listed = trades.iter().peekable();
        while agree < ours {
            match listed.peek() {
                Some(t) if t.number < agree => {
                    listed.next();
                }
                Some(t) if t.number == agree && self.log.position(agree) == Some(t.position()) => {
                    listed.next();
                    agree += 1;
                }
                _ => break,
            }
        }
        let reconciled = match &self.state {
            State::Leading(leading) => leading.reconcile.reconciled,
            _ => return,
        };
        if reconciled {
            // In its term the catalog only ever holds this log, up to some entry: it may lag
            // behind (the answer may list only part of what it applied since the round was
            // asked for), but never hold another entry.
            let differs = agree < next.min(ours) && trades.iter().any(|t| t.number == agree);
            if next > ours || differs {
                error!(
                    agree,
                    next, ours, "the catalog's history is no longer a prefix of the order log"
                );
                return self.withdraw();
            }
            // A catalog that lost the tail of its history (it restarted) gets it again.
            if let Some(leading) = self.leading() {
                leading.feed.fell_back(next);
            }
            return self.send_feed();
        }
        if agree < ours && next != agree {
            if !trades.iter().any(|t| t.number == agree) {
                // The answer does not show the catalog's trade there: ask again.
                if let Some(leading) = self.leading() {
                    leading.reconcile.next_at = Some(now + MIN_BACKOFF);
                }
                return;
            }
            // Both go on differently from `agree`. Nothing from there on can have been
            // acknowledged (a leader commits only what the catalog applied), so the log's
            // version is set aside and the catalog's recorded.
            let Some(leading) = self.leading() else {
                return;
            };
            if leading.commit >= Some(agree) {
                error!(
                    agree,
                    next,
                    ours,
                    "the order log and the catalog's history differ after orders this leader \
                     committed; not reconciling"
                );
                return;
            }
            warn!(
                agree,
                ours,
                next,
                "the log goes on differently from the catalog's history; setting its entries aside"
            );
            self.set_aside_from(agree, "not in the catalog's history");
        }
        // The log is now a prefix of the catalog's history, or the other way round: the
        // catalog's trades after it are recorded.
        let ours = self.log.next_number();
        let mut entries: Vec<OrderEntry> =
            trades.into_iter().filter(|t| t.number >= ours).collect();
        if next > ours && entries.first().is_none_or(|t| t.number != ours) {
            debug_assert!(!complete || entries.is_empty());
            if let Some(leading) = self.leading() {
                if !leading.reconcile.warned {
                    leading.reconcile.warned = true;
                    error!(ours, next, "the catalog no longer remembers the trades right after the log's end; they cannot be recorded (an operator must choose another leader)");
                }
            }
            return;
        }
        let adopt = self.config.rules.holds(Rule::OrphanAdoption);
        if !adopt {
            // Broken on purpose (simulator only): the catalog's trades are left unrecorded.
            entries.clear();
        }
        let adopted = entries.len();
        if adopted > 0 {
            if let Err(e) = self.append(entries) {
                warn!(error = %e, "reconciliation not applied");
                return;
            }
            info!(
                adopted,
                next = self.log.next_number(),
                "recorded trades the catalog applied without an order"
            );
        }
        let ours = self.log.next_number();
        let prefix = next <= ours || !adopt;
        let Some(leading) = self.leading() else {
            return;
        };
        if !prefix {
            // More to record: the next round at once.
            leading.reconcile.next_at = Some(now);
            return;
        }
        leading.reconcile.reconciled = true;
        leading.commit_moved = now;
        // The catalog holds the log up to `next`; the feed brings it the rest.
        leading.feed.start_at(next.min(ours));
        info!(
            epoch,
            next,
            last = ours,
            "the catalog's history is a prefix of the log; bringing the catalog up to it"
        );
        self.advance_commit();
        self.send_feed();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use common::safety::{Rule, Rules};
    use common::wire::{
        ApplyOutcome, ApplyStop, CatalogRequest, CatalogResponse, LeadershipChange, LogPosition,
        OrderEntry, OrderRequest, OrderResponse, TradeKind, TradeRejection,
    };

    use crate::engine::testing::{config, entry, order, pos, record, Harness, STOCK};
    use crate::engine::{Answer, ApplyPart, CallError, CallId, Command, Input, Outgoing, Peer};
    use crate::log::EpochRecord;

    /// Answers every `Replicate` on its way to `peer` (a window of them may be): it holds
    /// everything through `last`.
    fn replicated(h: &mut Harness, peer: u32, last: Option<common::wire::LogPosition>) {
        let mut calls = Vec::new();
        h.out.retain(|c| match c {
            Command::Call {
                call,
                to,
                request: Outgoing::Replicate { .. },
                ..
            } if *to == Peer::Replica(peer) => {
                calls.push(*call);
                false
            }
            _ => true,
        });
        assert!(!calls.is_empty(), "no Replicate to {peer}");
        for call in calls {
            h.answer(call, Answer::Order(OrderResponse::Replicated { last }));
        }
    }

    #[test]
    fn an_order_is_answered_once_the_leader_and_every_in_sync_member_hold_it() {
        let mut h = Harness::leading(1, 2, vec![]);
        let token = h.place_traded("o1");
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
        let token = h.place_traded("o1");
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
        let token = h.place_traded("o1");
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
        let token = h.place_traded("o1");
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
                Peer::Catalog => Answer::Catalog(CatalogResponse::Reconciled {
                    incarnation: 1,
                    meet: None,
                    next: 0,
                    trades: vec![],
                    complete: true,
                }),
                Peer::Replica(_) => Answer::Order(OrderResponse::Replicated { last: None }),
            };
            h.answer(call, answer);
        }
        h.read_levels(STOCK);
        h.take();
        let token = h.place_traded("o1");
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
        let first = h.place_traded("o1");
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
    fn concurrent_requests_for_one_id_share_one_order_or_one_refusal() {
        let mut h = Harness::leading(1, 2, vec![]);
        // Two requests for one order in one batch: one entry, both answered from it.
        let batch = h.request(OrderRequest::Batch(vec![
            OrderRequest::PlaceOrder(order("o1")),
            OrderRequest::PlaceOrder(order("o1")),
        ]));
        assert_eq!(appended(&h), vec![0]);
        let (call, parts) = h.apply_call();
        assert_eq!(parts, vec![ApplyPart::Entries { from: 0, count: 1 }]);
        h.answer(call, applied(vec![ApplyOutcome::Applied], None, 1));
        h.flush();
        both_replicate(&mut h, 0, 2);
        let Some(Command::Reply {
            body: super::ReplyBody::Batch(bodies),
            ..
        }) = h
            .out
            .iter()
            .find(|c| matches!(c, Command::Reply { token, .. } if *token == batch))
            .cloned()
        else {
            panic!("the batch is answered: {:?}", h.out);
        };
        assert!(bodies.iter().all(|b| matches!(
            b,
            super::ReplyBody::Ready(Ok(OrderResponse::Placed { number: 0, .. }))
        )));
        h.take();
        // A buy the stock cannot take, asked twice: one refusal at the catalog, both told.
        let mut huge = order("big");
        huge.quantity = STOCK as i64 + 1;
        let a = h.request(OrderRequest::PlaceOrder(huge.clone()));
        let b = h.request(OrderRequest::PlaceOrder(huge));
        assert!(h.writes().is_empty(), "a refusal is not an entry");
        assert_eq!(
            h.reply(a),
            None,
            "answered once the catalog made it durable"
        );
        let (call, parts) = h.apply_call();
        assert!(
            matches!(&parts[..], [ApplyPart::Refuse { before: 1, .. }]),
            "{parts:?}"
        );
        let refused = TradeRejection::NotEnoughStock {
            available: STOCK - 1,
        };
        h.answer(
            call,
            applied(vec![ApplyOutcome::Refused(refused.clone())], None, 1),
        );
        for token in [a, b] {
            assert_eq!(
                h.reply(token),
                Some(Ok(OrderResponse::Rejected(refused.clone())))
            );
        }
        assert_eq!(h.engine.log().next_number(), 1);
    }

    fn reconciled(meet: Option<LogPosition>, next: u64, trades: Vec<OrderEntry>) -> Answer {
        Answer::Catalog(CatalogResponse::Reconciled {
            incarnation: 1,
            meet,
            next,
            trades,
            complete: true,
        })
    }

    #[test]
    fn a_trade_applied_without_an_order_is_recorded_by_reconciliation() {
        let (mut h, round) = taking_office(vec![]);
        h.take();
        // Applied under epoch 1 by a leader that died before it reached any follower.
        h.answer(round, reconciled(None, 1, vec![entry(0, 1, "orphan")]));
        assert!(matches!(
            h.writes()[..],
            [Command::Append { entries, .. }] if entries == &vec![entry(0, 1, "orphan")]
        ));
    }

    #[test]
    fn in_its_term_a_catalog_ahead_of_the_log_makes_the_leader_withdraw() {
        let mut h = Harness::leading(1, 2, vec![]);
        h.wait(super::RECONCILE_EVERY);
        let round = h.call_to(Peer::Catalog, |r| {
            matches!(r, Outgoing::Catalog(CatalogRequest::Reconcile { .. }))
        });
        h.answer(round, reconciled(None, 1, vec![entry(0, 2, "unknown")]));
        assert!(h.writes().is_empty(), "nothing recorded mid-term");
        h.call_to(Peer::Catalog, |r| {
            matches!(
                r,
                Outgoing::Catalog(CatalogRequest::ChangeLeadership {
                    change: LeadershipChange::Renew { .. },
                    ..
                })
            )
        });
    }

    /// A leader of epoch 3 that inherited `entries`, with its first reconciliation's call.
    fn taking_office(entries: Vec<OrderEntry>) -> (Harness, CallId) {
        let mut h = Harness::new(1, entries, EpochRecord::default());
        h.feed(Input::CatalogLink(true));
        h.feed(Input::Record(record(3, 1, &[1, 2, 3])));
        h.flush();
        let round = h.call_to(Peer::Catalog, |r| {
            matches!(r, Outgoing::Catalog(CatalogRequest::Reconcile { epoch: 3, known, .. }) if known.len() <= super::MAX_KNOWN)
        });
        (h, round)
    }

    #[test]
    fn a_new_leader_places_nothing_and_commits_nothing_before_its_log_equals_the_catalogs() {
        let (mut h, round) = taking_office(vec![entry(0, 1, "a"), entry(1, 2, "b")]);
        let early = h.request(OrderRequest::PlaceOrder(order("o1")));
        assert!(matches!(h.reply(early), Some(Err(e)) if e.message.contains("reconciling")));
        // Every follower holds both entries; still nothing is committed.
        for peer in [2, 3] {
            replicated(&mut h, peer, Some(pos(1, 2)));
        }
        assert_eq!(h.engine.commit(), None);
        // The catalog applied a third trade (epoch 2) that no log holds.
        h.answer(
            round,
            reconciled(Some(pos(1, 2)), 3, vec![entry(2, 2, "orphan")]),
        );
        assert!(!h.engine.status().placing, "not before the levels are read");
        h.read_levels(STOCK);
        assert!(h.engine.status().placing);
        assert_eq!(h.engine.log().next_number(), 3);
        assert_eq!(
            h.engine.log().last(),
            Some(pos(2, 2)),
            "recorded at its number and epoch"
        );
    }

    #[test]
    fn orders_the_catalog_lost_are_brought_to_it_before_placing() {
        let (mut h, round) =
            taking_office(vec![entry(0, 1, "a"), entry(1, 1, "b"), entry(2, 1, "c")]);
        // The catalog's history ends after the first: its log lost the other two.
        h.answer(round, reconciled(Some(pos(0, 1)), 1, vec![]));
        let (call, parts) = h.apply_call();
        assert_eq!(parts, vec![ApplyPart::Entries { from: 1, count: 2 }]);
        assert!(!h.engine.status().placing);
        h.answer(
            call,
            applied(vec![ApplyOutcome::Applied, ApplyOutcome::Applied], None, 3),
        );
        h.read_levels(STOCK);
        assert!(h.engine.status().placing);
    }

    #[test]
    fn an_inherited_entry_the_catalog_will_not_apply_is_set_aside_with_what_follows() {
        let (mut h, round) =
            taking_office(vec![entry(0, 1, "a"), entry(1, 1, "b"), entry(2, 1, "c")]);
        h.answer(round, reconciled(Some(pos(0, 1)), 1, vec![]));
        let (call, _) = h.apply_call();
        h.answer(call, refused_after(vec![], false, 1));
        assert!(cuts_from(&h, 1));
        assert_eq!(h.engine.status().set_aside, 2);
        h.flush();
        h.read_levels(STOCK);
        assert!(h.engine.status().placing);
        h.request(OrderRequest::PlaceOrder(order("o1")));
        assert_eq!(h.engine.log().last(), Some(pos(1, 3)));
    }

    #[test]
    fn a_log_that_goes_on_differently_from_the_catalog_is_set_aside_before_anything_commits() {
        // Entry 1 of epoch 1 was never acknowledged: the catalog lost it and numbered another
        // trade there under epoch 2.
        let (mut h, round) = taking_office(vec![entry(0, 1, "a"), entry(1, 1, "lost")]);
        h.answer(
            round,
            reconciled(Some(pos(0, 1)), 2, vec![entry(1, 2, "other")]),
        );
        let writes: Vec<&Command> = h.writes();
        assert!(
            matches!(writes[..], [Command::StoreEpoch { .. }, Command::Cut { from: 1, .. }, Command::Append { entries, .. }] if entries == &vec![entry(1, 2, "other")]),
            "{writes:?}"
        );
        h.read_levels(STOCK);
        assert!(h.engine.status().placing);
        assert_eq!(h.engine.status().set_aside, 1);
    }

    #[test]
    fn with_the_rule_off_the_catalogs_trades_are_left_unrecorded() {
        let rules = Rules::without(Rule::OrphanAdoption);
        let mut h = Harness::with(config(1, rules), vec![], EpochRecord::default());
        h.feed(Input::Record(record(2, 1, &[1, 2, 3])));
        h.flush();
        let round = h.call_to(Peer::Catalog, |r| {
            matches!(r, Outgoing::Catalog(CatalogRequest::Reconcile { .. }))
        });
        h.answer(round, reconciled(None, 1, vec![entry(0, 1, "orphan")]));
        h.read_levels(STOCK);
        assert!(h.engine.status().placing);
        assert_eq!(h.engine.log().next_number(), 0);
    }

    fn appended(h: &Harness) -> Vec<u64> {
        h.writes()
            .iter()
            .flat_map(|c| match c {
                Command::Append { entries, .. } => entries.iter().map(|e| e.number).collect(),
                _ => vec![],
            })
            .collect()
    }

    fn applied(outcomes: Vec<ApplyOutcome>, stop: Option<ApplyStop>, next: u64) -> Answer {
        Answer::Catalog(CatalogResponse::Applied {
            incarnation: 1,
            outcomes,
            stop,
            next,
        })
    }

    /// The catalog applied `outcomes`, then refused the next entry for want of stock; its
    /// history's next number is `next`.
    fn refused_after(outcomes: Vec<ApplyOutcome>, remembered: bool, next: u64) -> Answer {
        let rejection = TradeRejection::NotEnoughStock { available: 0 };
        applied(
            outcomes,
            Some(ApplyStop::Refused {
                rejection,
                remembered,
            }),
            next,
        )
    }

    /// Whether the engine has asked to cut its log from entry `from` on.
    fn cuts_from(h: &Harness, from: u64) -> bool {
        h.writes()
            .iter()
            .any(|c| matches!(c, Command::Cut { from: f, .. } if *f == from))
    }

    /// Has both followers persist everything up to `last`.
    fn both_replicate(h: &mut Harness, last: u64, epoch: u64) {
        for peer in [2, 3] {
            replicated(h, peer, Some(pos(last, epoch)));
        }
    }

    #[test]
    fn an_order_is_committed_only_once_the_catalog_applied_it_too() {
        let mut h = Harness::leading(1, 2, vec![]);
        let token = h.request(OrderRequest::PlaceOrder(order("o1")));
        // Decided here, appended and sent to the followers and the catalog at once.
        assert_eq!(appended(&h), vec![0]);
        let (call, parts) = h.apply_call();
        assert_eq!(parts, vec![ApplyPart::Entries { from: 0, count: 1 }]);
        h.flush();
        both_replicate(&mut h, 0, 2);
        assert_eq!(h.reply(token), None, "the catalog has not applied it yet");
        assert_eq!(h.engine.commit(), None);
        h.answer(call, applied(vec![ApplyOutcome::Applied], None, 1));
        assert_eq!(
            h.reply(token),
            Some(Ok(OrderResponse::Placed {
                number: 0,
                epoch: 2
            }))
        );
    }

    #[test]
    fn with_the_rule_off_an_order_commits_before_the_catalog_applied_it() {
        let rules = Rules::without(Rule::AppliedBeforeCommit);
        let mut h = Harness::with(config(1, rules), vec![], EpochRecord::default());
        h.feed(Input::Record(record(2, 1, &[1, 2, 3])));
        h.flush();
        for (call, to, _) in h.calls() {
            let answer = match to {
                Peer::Catalog => reconciled(None, 0, vec![]),
                Peer::Replica(_) => Answer::Order(OrderResponse::Replicated { last: None }),
            };
            h.answer(call, answer);
        }
        h.read_levels(STOCK);
        let token = h.request(OrderRequest::PlaceOrder(order("o1")));
        h.flush();
        both_replicate(&mut h, 0, 2);
        assert!(matches!(
            h.reply(token),
            Some(Ok(OrderResponse::Placed { .. }))
        ));
    }

    #[test]
    fn orders_are_decided_on_the_levels_and_what_comes_meanwhile_goes_in_the_next_apply() {
        let mut h = Harness::leading(1, 2, vec![]);
        let first = h.request(OrderRequest::PlaceOrder(order("o1")));
        let (call, _) = h.apply_call();
        // While that is on its way: a batch of two buys, a sell and a buy too big for what
        // is left after them.
        let mut sell = order("o3");
        sell.kind = TradeKind::Sell;
        let mut big = order("big");
        big.quantity = STOCK as i64;
        let batch = h.request(OrderRequest::Batch(vec![
            OrderRequest::PlaceOrder(order("o2")),
            OrderRequest::PlaceOrder(sell),
            OrderRequest::PlaceOrder(big),
            OrderRequest::PlaceOrder(order("o4")),
        ]));
        assert_eq!(appended(&h), vec![0, 1, 2, 3], "one append per input");
        assert!(
            !h.out.iter().any(|c| matches!(
                c,
                Command::Call {
                    request: Outgoing::Apply { .. },
                    ..
                }
            )),
            "one Apply on its way at a time"
        );
        h.answer(call, applied(vec![ApplyOutcome::Applied], None, 1));
        let (next, parts) = h.apply_call();
        // The refusal goes where it was decided: after o3 (entry 2), before o4 (entry 3).
        assert!(
            matches!(&parts[..], [
                ApplyPart::Entries { from: 1, count: 2 },
                ApplyPart::Refuse { before: 3, trade },
                ApplyPart::Entries { from: 3, count: 1 },
            ] if trade.request_id.as_str() == "big"),
            "{parts:?}"
        );
        let refused = TradeRejection::NotEnoughStock {
            available: STOCK - 2,
        };
        h.answer(
            next,
            applied(
                vec![
                    ApplyOutcome::Applied,
                    ApplyOutcome::Applied,
                    ApplyOutcome::Refused(refused.clone()),
                    ApplyOutcome::Applied,
                ],
                None,
                4,
            ),
        );
        h.flush();
        both_replicate(&mut h, 3, 2);
        assert!(matches!(
            h.reply(first),
            Some(Ok(OrderResponse::Placed { number: 0, .. }))
        ));
        let Some(Command::Reply {
            body: super::ReplyBody::Batch(bodies),
            ..
        }) = h
            .out
            .iter()
            .find(|c| matches!(c, Command::Reply { token, .. } if *token == batch))
            .cloned()
        else {
            panic!("the batch is answered whole: {:?}", h.out);
        };
        let numbers: Vec<_> = bodies
            .iter()
            .map(|b| match b {
                super::ReplyBody::Ready(Ok(OrderResponse::Placed { number, .. })) => Ok(*number),
                super::ReplyBody::Ready(Ok(OrderResponse::Rejected(r))) => Err(r.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(numbers, vec![Ok(1), Ok(2), Err(refused.clone()), Ok(3)]);
        // Asked again, the refusal is answered as before, without the catalog.
        let mut big = order("big");
        big.quantity = STOCK as i64;
        let again = h.request(OrderRequest::PlaceOrder(big));
        assert_eq!(h.reply(again), Some(Ok(OrderResponse::Rejected(refused))));
    }

    #[test]
    fn a_lost_apply_is_sent_again_and_a_catalog_that_lost_entries_gets_them_again() {
        let mut h = Harness::leading(1, 2, vec![]);
        let token = h.request(OrderRequest::PlaceOrder(order("o1")));
        let (call, _) = h.apply_call();
        h.request(OrderRequest::PlaceOrder(order("o2")));
        h.feed(Input::Answer {
            call,
            answer: Err(CallError::Failed("connection reset".into())),
        });
        assert_eq!(
            h.reply(token),
            None,
            "still waiting: the entry is in the log"
        );
        h.wait(super::MIN_BACKOFF);
        let (call, parts) = h.apply_call();
        assert_eq!(parts, vec![ApplyPart::Entries { from: 0, count: 2 }]);
        // A catalog that restarted and lost entry 0 says where its history ends.
        h.answer(call, applied(vec![], Some(ApplyStop::Gap), 0));
        let (call, parts) = h.apply_call();
        assert_eq!(parts, vec![ApplyPart::Entries { from: 0, count: 2 }]);
        h.answer(
            call,
            applied(vec![ApplyOutcome::Applied, ApplyOutcome::Applied], None, 2),
        );
        h.flush();
        both_replicate(&mut h, 1, 2);
        assert!(matches!(
            h.reply(token),
            Some(Ok(OrderResponse::Placed { number: 0, .. }))
        ));
    }

    /// A leader of epoch 2 whose entry 1 (o2) the catalog refuses as a request refused
    /// before, with entry 0 applied.
    fn refused_by_the_catalog(rules: Rules) -> (Harness, super::Token, super::Token) {
        let mut h = Harness::with(config(1, rules), vec![], EpochRecord::default());
        h.feed(Input::Record(record(2, 1, &[1, 2, 3])));
        h.flush();
        for (call, to, _) in h.calls() {
            let answer = match to {
                Peer::Catalog => reconciled(None, 0, vec![]),
                Peer::Replica(_) => Answer::Order(OrderResponse::Replicated { last: None }),
            };
            h.answer(call, answer);
        }
        h.read_levels(STOCK);
        h.take();
        let batch = h.request(OrderRequest::Batch(vec![
            OrderRequest::PlaceOrder(order("o1")),
            OrderRequest::PlaceOrder(order("o2")),
        ]));
        let late = h.request(OrderRequest::PlaceOrder(order("o3")));
        let (call, _) = h.apply_call();
        h.answer(call, refused_after(vec![ApplyOutcome::Applied], true, 1));
        (h, batch, late)
    }

    #[test]
    fn an_order_the_catalog_will_not_apply_is_withdrawn_under_a_new_epoch() {
        let (mut h, batch, _) = refused_by_the_catalog(Rules::ALL);
        // The leader asks for an epoch of its own and places nothing meanwhile.
        h.call_to(Peer::Catalog, |r| {
            matches!(
                r,
                Outgoing::Catalog(CatalogRequest::ChangeLeadership {
                    expected: 2,
                    change: LeadershipChange::Renew { leader: 1 },
                })
            )
        });
        let meanwhile = h.request(OrderRequest::PlaceOrder(order("o9")));
        assert!(matches!(h.reply(meanwhile), Some(Err(e)) if e.message.contains("withdraws")));
        assert!(
            !h.writes().iter().any(|c| matches!(c, Command::Cut { .. })),
            "nothing is cut in epoch 2"
        );
        h.flush();
        both_replicate(&mut h, 2, 2);
        // Entry 0 commits; o2 learns its remembered refusal.
        let Some(Command::Reply {
            body: super::ReplyBody::Batch(bodies),
            ..
        }) = h
            .out
            .iter()
            .find(|c| matches!(c, Command::Reply { token, .. } if *token == batch))
            .cloned()
        else {
            panic!("the batch is answered: {:?}", h.out);
        };
        assert!(matches!(
            &bodies[..],
            [
                super::ReplyBody::Ready(Ok(OrderResponse::Placed { number: 0, .. })),
                super::ReplyBody::Ready(Ok(OrderResponse::Rejected(_)))
            ]
        ));
        // Epoch 3: the catalog's history ends after entry 0; it will not apply entry 1, which
        // is set aside with what follows, and the log goes on under epoch 3.
        h.feed(Input::Record(record(3, 1, &[1, 2, 3])));
        h.flush();
        let round = h.call_to(Peer::Catalog, |r| {
            matches!(
                r,
                Outgoing::Catalog(CatalogRequest::Reconcile { epoch: 3, .. })
            )
        });
        h.answer(round, reconciled(Some(pos(0, 2)), 1, vec![]));
        let (call, parts) = h.apply_call();
        assert_eq!(parts, vec![ApplyPart::Entries { from: 1, count: 2 }]);
        h.answer(call, refused_after(vec![], true, 1));
        assert!(cuts_from(&h, 1));
        h.flush();
        h.read_levels(STOCK);
        assert!(h.engine.status().placing);
        // The retry of o2 is refused from what the leader learnt; o3 is placed anew, under
        // epoch 3.
        let retry = h.request(OrderRequest::PlaceOrder(order("o2")));
        assert!(matches!(
            h.reply(retry),
            Some(Ok(OrderResponse::Rejected(_)))
        ));
        h.request(OrderRequest::PlaceOrder(order("o3")));
        assert_eq!(h.engine.log().last(), Some(pos(1, 3)));
    }

    #[test]
    fn with_the_rule_off_the_leader_numbers_again_in_the_same_epoch() {
        let (mut h, _, _) = refused_by_the_catalog(Rules::without(Rule::WithdrawUnderNewEpoch));
        assert!(cuts_from(&h, 1));
        h.flush();
        h.read_levels(STOCK);
        h.request(OrderRequest::PlaceOrder(order("o9")));
        assert_eq!(
            h.engine.log().last(),
            Some(pos(1, 2)),
            "position #1@2 again"
        );
    }

    #[test]
    fn a_leader_that_sets_its_log_aside_forgets_what_followers_held_of_it() {
        let (mut h, round) = taking_office(vec![entry(0, 1, "a"), entry(1, 1, "lost")]);
        // Both followers hold the inherited entry 1 of epoch 1...
        for peer in [2, 3] {
            replicated(&mut h, peer, Some(pos(1, 1)));
        }
        // ...which the catalog's history contradicts.
        h.answer(
            round,
            reconciled(Some(pos(0, 1)), 2, vec![entry(1, 2, "other")]),
        );
        h.flush();
        assert_eq!(
            h.engine.commit(),
            Some(0),
            "entry 1 is committed only once the followers hold the catalog's"
        );
        let calls = h.calls();
        assert!(
            calls
                .iter()
                .filter(|(_, _, r)| matches!(r, Outgoing::Replicate { from: 1, .. }))
                .count()
                >= 1,
            "{calls:?}"
        );
    }

    #[test]
    fn an_order_waits_for_its_quorum_no_longer_than_the_commit_timeout() {
        let mut h = Harness::leading(1, 2, vec![]);
        let token = h.place_traded("o1");
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
                Outgoing::Catalog(CatalogRequest::Reconcile { serving: false, .. })
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
        h.place_traded("o1");
        assert_eq!(read(&mut h, 0, 10), (0, 0), "nothing is durable yet");
        h.flush();
        assert_eq!(read(&mut h, 0, 10), (0, 1));
        assert_eq!(read(&mut h, 0, 0), (0, 0));
        assert_eq!(read(&mut h, 1, 10), (1, 0));
        assert_eq!(read(&mut h, u64::MAX, u32::MAX), (u64::MAX, 0));
        // However much is asked for, a page holds at most READ_LOG_MAX entries.
        for i in 0..1_200 {
            h.place_traded(&format!("more{i}"));
        }
        h.flush();
        let max = u64::from(common::wire::READ_LOG_MAX);
        assert_eq!(read(&mut h, 0, u32::MAX), (0, max));
        assert_eq!(read(&mut h, max, u32::MAX), (max, 1_201 - max));
    }

    #[test]
    fn only_committed_orders_are_shown_by_the_leader() {
        let mut h = Harness::leading(1, 2, vec![]);
        h.place_traded("o1");
        let early = h.request(OrderRequest::GetOrder { number: 0 });
        assert!(matches!(h.reply(early), Some(Err(_))));
        let missing = h.request(OrderRequest::GetOrder { number: 7 });
        assert_eq!(h.reply(missing), Some(Ok(OrderResponse::OrderNotFound)));
    }
}
