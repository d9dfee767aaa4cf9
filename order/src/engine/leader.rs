//! The leader's path: orders are traded at the catalog under the leader's epoch, in batches
//! (whatever one request or one input placed goes in one `Trades` call); the catalog numbers
//! each applied trade as the next entry of its history, and the leader appends it at that
//! number, replicates it to every follower (one batch in flight each), and answers once it is
//! committed: on the leader's disk and on every member of the in-sync set. The leader keeps
//! that set true at the catalog (a silent member is removed from the record before the
//! leader goes on without it; a follower that caught up is taken back), and reconciles its log
//! with the catalog's history both ways before it places or commits anything, and every
//! [`RECONCILE_EVERY`] after: it records the trades the catalog applied that its log lacks,
//! and replays to the catalog the orders its history lost. Each round renews its lease.

use std::collections::BTreeMap;
use std::time::Duration;

use common::safety::Rule;
use common::wire::{
    CatalogRequest, CatalogResponse, Epoch, LeadershipChange, LogPosition, OrderEntry,
    OrderResponse, RemoteError, ReplicaId, RequestId, TradeOutcome, TradeRejection, TradeRequest,
    TransactionNumber,
};
use tracing::{debug, error, info, warn};

use common::engine::{Backoff, Deadlines};

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

/// An order the catalog numbered beyond the log's end, waiting for the entries before it
/// (the answers of an earlier call, or the catalog's history when an answer was lost).
#[derive(Debug)]
struct Early {
    entry: OrderEntry,
    waiters: Vec<Token>,
    /// The life of the catalog that gave the number.
    incarnation: u64,
}

/// Reconciliation with the catalog.
#[derive(Debug, Default)]
pub(super) struct Reconciliation {
    /// The log and the catalog's history were equal once in this term: orders are placed
    /// and committed.
    pub(super) reconciled: bool,
    /// A `Reconcile` or `Replay` is on its way.
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
    /// Orders at the catalog (or about to go there), by request id.
    placing: BTreeMap<RequestId, Placement>,
    /// Trades to send to the catalog at the end of the input that placed them, and the
    /// request (or batch) whose task may send them.
    outbox: Vec<TradeRequest>,
    outbox_owner: Option<Token>,
    /// `Trades` calls on their way.
    trading: usize,
    /// Orders numbered beyond the log's end, by number.
    early: BTreeMap<TransactionNumber, Early>,
    /// The newest life of the catalog heard from in this term: numbers given by an older one
    /// are not taken (it may have lost them, and its successor given them again).
    catalog_incarnation: Option<u64>,
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
            outbox: Vec::new(),
            outbox_owner: None,
            trading: 0,
            early: BTreeMap::new(),
            catalog_incarnation: None,
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

    /// Every request waiting on this term: orders waiting for their commit, for their
    /// trade, or for the entries before theirs.
    pub(super) fn waiting(&mut self) -> Vec<Token> {
        let mut tokens = self.waiting_for_commit();
        let placing = std::mem::take(&mut self.placing);
        tokens.extend(placing.into_values().flat_map(|p| p.waiters));
        let early = std::mem::take(&mut self.early);
        tokens.extend(early.into_values().flat_map(|e| e.waiters));
        self.outbox.clear();
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

    /// Leader: trade at the catalog (with whatever else this input places), record at the
    /// number the catalog gives, replicate, answer once committed.
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
        let owner = self.owner(token);
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
        // Numbered already, waiting for the entries before it.
        if let Some(early) = leading
            .early
            .values_mut()
            .find(|e| e.entry.request_id == order.request_id)
        {
            early.waiters.push(token);
            return;
        }
        // One attempt per request id at a time; a duplicate shares the first one's outcome.
        if let Some(placement) = leading.placing.get_mut(&order.request_id) {
            placement.waiters.push(token);
            return;
        }
        leading.outbox.push(order.clone());
        leading.outbox_owner.get_or_insert(owner);
        leading.placing.insert(
            order.request_id.clone(),
            Placement {
                order,
                waiters: vec![token],
            },
        );
    }

    /// Sends the trades placed by the input just handled to the catalog, in one call.
    pub(super) fn send_trades(&mut self) {
        let (epoch, term, timeout) = (self.epoch, self.term, self.config.call_timeout);
        let Some(leading) = self.leading() else {
            return;
        };
        if leading.outbox.is_empty() {
            return;
        }
        let trades = std::mem::take(&mut leading.outbox);
        let owner = leading.outbox_owner.take();
        leading.trading += 1;
        let request_ids = trades.iter().map(|t| t.request_id.clone()).collect();
        self.call_for(
            owner,
            Peer::Catalog,
            Outgoing::Catalog(CatalogRequest::Trades { epoch, trades }),
            timeout,
            Pending::Trades { term, request_ids },
        );
    }

    /// The catalog's answer to a `Trades` call: each applied trade is recorded at the number
    /// the catalog gave it.
    pub(super) fn traded(&mut self, term: u64, request_ids: Vec<RequestId>, answer: CallResult) {
        if term != self.term {
            // The term ended; its waiters were told this replica no longer leads. Traded
            // but not recorded here: a retry at the new leader records it once (the catalog
            // remembers the request id), and reconciliation does if nobody retries.
            return;
        }
        let Some(leading) = self.leading() else {
            return;
        };
        leading.trading = leading.trading.saturating_sub(1);
        let placements: Vec<Option<Placement>> = request_ids
            .iter()
            .map(|id| leading.placing.remove(id))
            .collect();
        let answer = match answer {
            Ok(Answer::Catalog(CatalogResponse::Traded { incarnation, .. }))
                if !self.catalog_life(incarnation) =>
            {
                Err(common::engine::CallError::Failed(
                    "answered by a catalog that has restarted since".into(),
                ))
            }
            other => other,
        };
        match answer {
            Ok(Answer::Catalog(CatalogResponse::Traded {
                incarnation,
                outcomes,
            })) if outcomes.len() == placements.len() => {
                for (placement, outcome) in placements.into_iter().zip(outcomes) {
                    let Some(placement) = placement else {
                        continue;
                    };
                    match outcome {
                        TradeOutcome::Traded { number, epoch, .. } => {
                            self.numbered(placement, number, epoch, incarnation)
                        }
                        TradeOutcome::Rejected(rejection) => {
                            for token in placement.waiters {
                                self.reply(token, Ok(OrderResponse::Rejected(rejection.clone())));
                            }
                        }
                    }
                }
                self.append_early();
            }
            Ok(Answer::Catalog(CatalogResponse::Fenced { current, .. })) => {
                warn!(epoch = self.epoch, %current, "the catalog refused trades of this epoch");
                let outcome = if current.epoch > self.epoch {
                    Ok(self.not_leader())
                } else {
                    Err(RemoteError::unavailable(
                        "the catalog is changing the leadership record; retry",
                    ))
                };
                for token in placements.into_iter().flatten().flat_map(|p| p.waiters) {
                    self.reply(token, outcome.clone());
                }
                self.observe_record(&current);
            }
            other => {
                let why = match other {
                    Ok(answer) => format!("unexpected catalog answer {answer:?}"),
                    Err(e) => format!("catalog: {e}"),
                };
                let outcome = Err(RemoteError::unavailable(format!(
                    "{why} (the trade may have been applied; a retry with the same request id \
                     tells)"
                )));
                for token in placements.into_iter().flatten().flat_map(|p| p.waiters) {
                    self.reply(token, outcome.clone());
                }
                // The catalog may have restarted and lost the numbers it gave beyond the log.
                self.discard_early();
                // Whatever it applied is in its history: recorded by the next round, which
                // also finds a catalog that restarted and must be replayed to.
                self.reconcile_soon();
            }
        }
    }

    /// Forgets the orders numbered beyond the log's end: a catalog that lost the tail of its
    /// history may give those numbers to other trades. Their requests are retried (a retry
    /// is numbered again, or found recorded).
    fn discard_early(&mut self) {
        let Some(leading) = self.leading() else {
            return;
        };
        let early = std::mem::take(&mut leading.early);
        for token in early.into_values().flat_map(|e| e.waiters) {
            self.reply(
                token,
                Err(RemoteError::unavailable(
                    "the catalog may have restarted before the order was recorded; retry",
                )),
            );
        }
    }

    /// Whether numbers given by life `incarnation` of the catalog may be taken: it is the
    /// newest one heard from in this term. A newer one makes the numbers of older ones held
    /// beyond the log worthless: it may have given them again.
    fn catalog_life(&mut self, incarnation: u64) -> bool {
        let Some(leading) = self.leading() else {
            return false;
        };
        match leading.catalog_incarnation {
            Some(known) if incarnation < known => return false,
            Some(known) if incarnation == known => return true,
            _ => leading.catalog_incarnation = Some(incarnation),
        }
        let stale: Vec<TransactionNumber> = leading
            .early
            .iter()
            .filter(|(_, e)| e.incarnation < incarnation)
            .map(|(&n, _)| n)
            .collect();
        let mut waiters = Vec::new();
        for number in stale {
            if let Some(early) = leading.early.remove(&number) {
                waiters.extend(early.waiters);
            }
        }
        for token in waiters {
            self.reply(
                token,
                Err(RemoteError::unavailable(
                    "the catalog restarted before the order was recorded; retry",
                )),
            );
        }
        true
    }

    /// The catalog (life `incarnation`) applied `placement` as entry `number` of its history,
    /// traded under `epoch`: recorded there, now or once the entries before it are.
    fn numbered(
        &mut self,
        placement: Placement,
        number: TransactionNumber,
        epoch: Epoch,
        incarnation: u64,
    ) {
        let Placement { order, waiters } = placement;
        if number < self.log.next_number() {
            // A retry of a trade recorded already (by this leader, by reconciliation, or by
            // an earlier leader).
            match self.log.placed(&order.request_id) {
                Some(placed) if placed.number == number => {
                    for token in waiters {
                        self.answer_when_committed(token, number);
                    }
                }
                other => {
                    warn!(number, request_id = %order.request_id, held = ?other.map(|p| p.number), "the catalog numbered a trade where the log holds another; reconciling");
                    for token in waiters {
                        self.reply(
                            token,
                            Err(RemoteError::unavailable(
                                "the order log and the catalog disagree; reconciling, retry",
                            )),
                        );
                    }
                    self.reconcile_soon();
                }
            }
            return;
        }
        let entry = OrderEntry {
            number,
            epoch,
            request_id: order.request_id,
            name: order.name,
            kind: order.kind,
            quantity: order.quantity.unsigned_abs(),
        };
        let Some(leading) = self.leading() else {
            return;
        };
        match leading.early.get_mut(&number) {
            Some(held) if held.entry.request_id == entry.request_id => held.waiters.extend(waiters),
            Some(held) => {
                // One life of the catalog gives each number once: a second trade at a number
                // means the first came from a life whose numbers were not dropped in time.
                warn!(number, held = %held.entry.request_id, now = %entry.request_id, "two trades numbered alike; retrying the later");
                for token in waiters {
                    self.reply(
                        token,
                        Err(RemoteError::unavailable(
                            "the order log and the catalog disagree; reconciling, retry",
                        )),
                    );
                }
                self.reconcile_soon();
            }
            None => {
                leading.early.insert(
                    number,
                    Early {
                        entry,
                        waiters,
                        incarnation,
                    },
                );
            }
        }
    }

    /// Appends the orders numbered right after the log's end, and answers those the log
    /// holds already. A gap no call on its way can fill is filled from the catalog's history.
    fn append_early(&mut self) {
        let Some(leading) = self.leading() else {
            return;
        };
        let mut early = std::mem::take(&mut leading.early);
        let next = self.log.next_number();
        let mut settled = Vec::new();
        let mut entries = Vec::new();
        let mut appended = Vec::new();
        // Recorded meanwhile (by reconciliation): those waiting learn their number.
        let later = early.split_off(&next);
        for (number, held) in std::mem::replace(&mut early, later) {
            settled.push((number, held));
        }
        let mut at = next;
        while let Some(held) = early.remove(&at) {
            entries.push(held.entry);
            appended.push((at, held.waiters));
            at += 1;
        }
        let gap = !early.is_empty();
        let trading = match self.leading() {
            Some(leading) => {
                leading.early = early;
                leading.trading
            }
            None => return,
        };
        if !entries.is_empty() {
            if let Err(e) = self.append(entries) {
                let waiting = appended.into_iter().flat_map(|(_, w)| w);
                let settled = settled.into_iter().flat_map(|(_, held)| held.waiters);
                for token in waiting.chain(settled) {
                    self.reply(token, Err(e.clone()));
                }
                return;
            }
        }
        for (number, held) in settled {
            let same = self
                .log
                .placed(&held.entry.request_id)
                .is_some_and(|p| p.number == number);
            for token in held.waiters {
                if same {
                    self.answer_when_committed(token, number);
                } else {
                    self.reply(
                        token,
                        Err(RemoteError::unavailable(
                            "the order log and the catalog disagree; reconciling, retry",
                        )),
                    );
                }
            }
        }
        for (number, waiters) in appended {
            for token in waiters {
                self.answer_when_committed(token, number);
            }
        }
        if gap && trading == 0 {
            // An answer was lost on the way: the catalog's history has what is missing.
            self.reconcile_soon();
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

    /// Asks for the next reconciliation round now.
    fn reconcile_soon(&mut self) {
        let now = self.now;
        if let Some(leading) = self.leading() {
            if !leading.reconcile.in_flight {
                leading.reconcile.next_at = Some(now);
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
        };
        self.call(
            Peer::Catalog,
            Outgoing::Catalog(request),
            timeout,
            Pending::Reconcile { term },
        );
    }

    /// The catalog's answer to a reconciliation round: the log and the catalog's history are
    /// made equal. Whatever the log holds beyond where they meet is replayed to a catalog
    /// that lacks it, or (when the catalog's history goes on differently) set aside; the
    /// catalog's trades beyond it are recorded.
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
                if self.catalog_life(incarnation) {
                    self.meet_catalog(meet, next, trades, complete);
                } else if let Some(leading) = self.leading() {
                    // From a catalog that has restarted since: ask the one there is now.
                    leading.reconcile.next_at = Some(now);
                }
            }
            Ok(Answer::Catalog(CatalogResponse::Fenced { current, .. })) => {
                self.observe_record(&current);
            }
            Ok(other) => debug!(?other, "unexpected answer to a reconciliation"),
            Err(e) => debug!(error = %e, "reconciliation failed; retrying"),
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
        // round was asked for, by trades the catalog numbered: those agree too).
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
        if agree < ours {
            if next == agree {
                // The catalog lost what the log holds from here on (the tail of its log, or
                // its disk): it is replayed to it, in order. Numbers it gave beyond the log
                // are lost with it.
                self.discard_early();
                let count = (ours - agree).min(MAX_BATCH);
                let (term, timeout) = (self.term, self.config.call_timeout);
                if let Some(leading) = self.leading() {
                    leading.reconcile.in_flight = true;
                    leading.reconcile.next_at = None;
                }
                info!(
                    from = agree,
                    count, "replaying orders to the catalog, whose history lacks them"
                );
                self.call(
                    Peer::Catalog,
                    Outgoing::Replay {
                        epoch,
                        from: agree,
                        count,
                    },
                    timeout,
                    Pending::Replay { term },
                );
                return;
            }
            if !trades.iter().any(|t| t.number == agree) {
                // The answer does not show the catalog's trade there: ask again.
                if let Some(leading) = self.leading() {
                    leading.reconcile.next_at = Some(now + MIN_BACKOFF);
                }
                return;
            }
            // Both go on differently from `agree`. Nothing from there on can have been
            // acknowledged (a leader commits only what the catalog's history holds), so the
            // log's version is set aside and the catalog's recorded.
            let Some(leading) = self.leading() else {
                return;
            };
            if leading.reconcile.reconciled || leading.commit >= Some(agree) {
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
            leading.inherited = leading.inherited.min(agree.checked_sub(1));
            // What followers said they hold from there on is of the entries set aside.
            let kept = agree.checked_sub(1);
            for progress in leading.progress.values_mut() {
                progress.persisted = progress.persisted.min(kept);
            }
            for link in leading.links.values_mut() {
                link.next = link.next.min(agree);
            }
            self.cut_from(agree, "not in the catalog's history");
        }
        // The log is now a prefix of the catalog's history: what follows it is recorded.
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
            // Nothing numbered beyond the gap can be recorded either.
            self.discard_early();
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
        self.append_early();
        let in_step = self.log.next_number() == next || !adopt;
        let Some(leading) = self.leading() else {
            return;
        };
        if !in_step {
            // More to record: the next round at once.
            leading.reconcile.next_at = Some(now);
            return;
        }
        if !leading.reconcile.reconciled {
            leading.reconcile.reconciled = true;
            leading.commit_moved = now;
            info!(
                epoch,
                next, "the log equals the catalog's history; placing orders"
            );
            self.advance_commit();
        }
    }

    /// The catalog's answer to a replay: the next round finds where they stand now.
    pub(super) fn replayed(&mut self, answer: CallResult) {
        let now = self.now;
        let Some(leading) = self.leading() else {
            return;
        };
        leading.reconcile.in_flight = false;
        match answer {
            Ok(Answer::Catalog(CatalogResponse::Replayed { next })) => {
                debug!(next, "replayed to the catalog");
                leading.reconcile.next_at = Some(now);
            }
            Ok(Answer::Catalog(CatalogResponse::Fenced { current, .. })) => {
                leading.reconcile.next_at = Some(now + MIN_BACKOFF);
                self.observe_record(&current);
            }
            other => {
                warn!(answer = ?other, "replay to the catalog failed; retrying");
                leading.reconcile.next_at = Some(now + MIN_BACKOFF * 5);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use common::safety::{Rule, Rules};
    use common::wire::{
        CatalogRequest, CatalogResponse, LeadershipChange, LogPosition, OrderEntry, OrderRequest,
        OrderResponse, TradeOutcome, TradeRejection,
    };

    use crate::engine::testing::{config, entry, order, pos, record, Harness};
    use crate::engine::{Answer, CallError, CallId, Command, Input, Outgoing, Peer};
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
    fn concurrent_requests_for_one_id_share_one_trade() {
        let mut h = Harness::leading(1, 2, vec![]);
        let a = h.request(OrderRequest::PlaceOrder(order("o1")));
        let b = h.request(OrderRequest::PlaceOrder(order("o1")));
        let trade = h.call_to(Peer::Catalog, |r| {
            matches!(r, Outgoing::Catalog(CatalogRequest::Trades { trades, .. }) if trades.len() == 1)
        });
        h.answer(
            trade,
            Answer::Catalog(CatalogResponse::Traded {
                incarnation: 1,
                outcomes: vec![TradeOutcome::Rejected(TradeRejection::NotEnoughStock {
                    available: 0,
                })],
            }),
        );
        let refused = Ok(OrderResponse::Rejected(TradeRejection::NotEnoughStock {
            available: 0,
        }));
        assert_eq!(h.reply(a), Some(refused.clone()));
        assert_eq!(h.reply(b), Some(refused));
        assert_eq!(h.engine.log().next_number(), 0);
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
        let mut h = Harness::leading(1, 2, vec![]);
        h.wait(super::RECONCILE_EVERY);
        let round = h.call_to(Peer::Catalog, |r| {
            matches!(r, Outgoing::Catalog(CatalogRequest::Reconcile { .. }))
        });
        // Traded under epoch 1 by a leader that died before recording it.
        h.answer(round, reconciled(None, 1, vec![entry(0, 1, "orphan")]));
        assert!(matches!(
            h.writes()[..],
            [Command::Append { entries, .. }] if entries == &vec![entry(0, 1, "orphan")]
        ));
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
        assert!(h.engine.status().placing);
        assert_eq!(h.engine.log().next_number(), 3);
        assert_eq!(
            h.engine.log().last(),
            Some(pos(2, 2)),
            "recorded at its number and epoch"
        );
    }

    #[test]
    fn orders_the_catalog_lost_are_replayed_to_it_before_placing() {
        let (mut h, round) =
            taking_office(vec![entry(0, 1, "a"), entry(1, 1, "b"), entry(2, 1, "c")]);
        // The catalog's history ends after the first: its log lost the other two.
        h.answer(round, reconciled(Some(pos(0, 1)), 1, vec![]));
        let replay = h.call_to(Peer::Catalog, |r| {
            matches!(
                r,
                Outgoing::Replay {
                    epoch: 3,
                    from: 1,
                    count: 2
                }
            )
        });
        assert!(!h.engine.status().placing);
        h.answer(
            replay,
            Answer::Catalog(CatalogResponse::Replayed { next: 3 }),
        );
        h.wait(Duration::ZERO);
        let round = h.call_to(Peer::Catalog, |r| {
            matches!(r, Outgoing::Catalog(CatalogRequest::Reconcile { .. }))
        });
        h.answer(round, reconciled(Some(pos(2, 1)), 3, vec![]));
        assert!(h.engine.status().placing);
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
        assert!(h.engine.status().placing);
        assert_eq!(h.engine.log().next_number(), 0);
    }

    fn traded(number: u64) -> TradeOutcome {
        TradeOutcome::Traded {
            number,
            epoch: 2,
            receipt: common::wire::TradeReceipt {
                quantity: 1,
                volume: 1,
                version: 1,
            },
        }
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

    /// A leader with one order at the catalog (call returned) and a batch of two behind it.
    fn two_calls(h: &mut Harness) -> (super::Token, CallId, super::Token, CallId) {
        let first = h.request(OrderRequest::PlaceOrder(order("o1")));
        let first_call = h.call_to(Peer::Catalog, |r| {
            matches!(r, Outgoing::Catalog(CatalogRequest::Trades { .. }))
        });
        let batch = h.request(OrderRequest::Batch(vec![
            OrderRequest::PlaceOrder(order("o2")),
            OrderRequest::PlaceOrder(order("o3")),
            OrderRequest::GetOrder { number: 9 },
        ]));
        let second_call = h.call_to(Peer::Catalog, |r| {
            matches!(r, Outgoing::Catalog(CatalogRequest::Trades { trades, .. }) if trades.len() == 2)
        });
        (first, first_call, batch, second_call)
    }

    #[test]
    fn orders_numbered_out_of_order_are_appended_in_order_and_a_batch_is_answered_whole() {
        let mut h = Harness::leading(1, 2, vec![]);
        let (first, first_call, batch, second_call) = two_calls(&mut h);
        // The second call's answer comes first: held until entry 0 is there.
        h.answer(
            second_call,
            Answer::Catalog(CatalogResponse::Traded {
                incarnation: 1,
                outcomes: vec![traded(1), traded(2)],
            }),
        );
        assert!(h.writes().is_empty());
        h.answer(
            first_call,
            Answer::Catalog(CatalogResponse::Traded {
                incarnation: 1,
                outcomes: vec![traded(0)],
            }),
        );
        assert_eq!(appended(&h), vec![0, 1, 2]);
        h.flush();
        replicated(&mut h, 2, Some(pos(2, 2)));
        replicated(&mut h, 3, Some(pos(2, 2)));
        assert_eq!(
            h.reply(first),
            Some(Ok(OrderResponse::Placed {
                number: 0,
                epoch: 2
            }))
        );
        let at = h
            .out
            .iter()
            .position(|c| matches!(c, Command::Reply { token, .. } if *token == batch))
            .expect("the batch is answered");
        let Command::Reply {
            body: super::ReplyBody::Batch(bodies),
            ..
        } = h.out.remove(at)
        else {
            panic!("not a batch reply");
        };
        assert_eq!(
            bodies,
            vec![
                super::ReplyBody::Ready(Ok(OrderResponse::Placed {
                    number: 1,
                    epoch: 2
                })),
                super::ReplyBody::Ready(Ok(OrderResponse::Placed {
                    number: 2,
                    epoch: 2
                })),
                super::ReplyBody::Ready(Ok(OrderResponse::OrderNotFound)),
            ]
        );
    }

    #[test]
    fn a_lost_answer_drops_what_was_numbered_beyond_the_log_and_the_retries_find_it_recorded() {
        let mut h = Harness::leading(1, 2, vec![]);
        let (first, first_call, batch, second_call) = two_calls(&mut h);
        h.answer(
            second_call,
            Answer::Catalog(CatalogResponse::Traded {
                incarnation: 1,
                outcomes: vec![traded(1), traded(2)],
            }),
        );
        // The first call's answer is lost: the catalog may have restarted and given those
        // numbers away, so orders 1 and 2 are not appended on its earlier word.
        h.feed(Input::Answer {
            call: first_call,
            answer: Err(CallError::Failed("connection reset".into())),
        });
        assert!(
            matches!(h.reply(first), Some(Err(e)) if e.message.contains("may have been applied"))
        );
        assert!(h.writes().is_empty());
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
        assert!(
            matches!(&bodies[0], super::ReplyBody::Ready(Err(e)) if e.message.contains("retry"))
        );
        // The next round records what the catalog's history holds.
        h.wait(Duration::ZERO);
        let round = h.call_to(Peer::Catalog, |r| {
            matches!(r, Outgoing::Catalog(CatalogRequest::Reconcile { .. }))
        });
        h.answer(
            round,
            reconciled(
                None,
                3,
                vec![entry(0, 2, "o1"), entry(1, 2, "o2"), entry(2, 2, "o3")],
            ),
        );
        assert_eq!(appended(&h), vec![0, 1, 2]);
        h.flush();
        replicated(&mut h, 2, Some(pos(2, 2)));
        replicated(&mut h, 3, Some(pos(2, 2)));
        // The retry of the lost one finds it.
        let retry = h.request(OrderRequest::PlaceOrder(order("o1")));
        assert_eq!(
            h.reply(retry),
            Some(Ok(OrderResponse::Placed {
                number: 0,
                epoch: 2
            }))
        );
    }

    #[test]
    fn numbers_of_a_catalog_that_restarted_since_are_never_taken() {
        let mut h = Harness::leading(1, 2, vec![]);
        let (_, first_call, batch, second_call) = two_calls(&mut h);
        let traded_by = |incarnation, numbers: &[u64]| {
            Answer::Catalog(CatalogResponse::Traded {
                incarnation,
                outcomes: numbers.iter().map(|&n| traded(n)).collect(),
            })
        };
        // Life 1 numbers o2, o3 as 1 and 2, then dies with them (and with 0) unflushed.
        h.answer(second_call, traded_by(1, &[1, 2]));
        // Life 2 answers the first call: it numbers o1 as 0 again. Orders 1 and 2 of life 1
        // are worthless now (life 2 may give those numbers to other trades): their requests
        // are retried, not appended.
        h.answer(first_call, traded_by(2, &[0]));
        assert_eq!(appended(&h), vec![0]);
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
        assert!(
            matches!(&bodies[0], super::ReplyBody::Ready(Err(e)) if e.message.contains("restarted"))
        );
        // An answer of life 1 that arrives late is not taken either.
        let late = h.request(OrderRequest::PlaceOrder(order("o9")));
        let late_call = h.call_to(Peer::Catalog, |r| {
            matches!(r, Outgoing::Catalog(CatalogRequest::Trades { .. }))
        });
        h.answer(late_call, traded_by(1, &[1]));
        assert!(matches!(h.reply(late), Some(Err(e)) if e.message.contains("restarted")));
        assert_eq!(appended(&h), vec![0]);
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
