//! The leader's link to the catalog. The leader decides every trade itself, on its copy of
//! the stocks' levels as they are after every entry of its log ([`Levels`]), and numbers an
//! accepted one as the next entry; it sends the catalog the entries of its log to apply in
//! order, with the trades it refuses at their places among them (`Apply`, one on its way at a
//! time: what is placed meanwhile goes in the next). The catalog checks that each comes out as
//! the leader decided. An order counts as committed only once the catalog has applied it too,
//! so a lookup after its answer shows it; its own fsync is off the trade's path (the order
//! log, on every in-sync replica's disk, makes the trade durable).
//!
//! At the start of a term the catalog is first brought up to the log (the entries its history
//! lacks go to it; one it will not apply was never acknowledged, and is set aside with what
//! follows), then the levels are read, then orders are placed. If the catalog ever answers
//! otherwise than the leader decided (a request refused in an earlier term and asked again, or
//! levels gone wrong), the leader withdraws what it decided from there on under a new epoch of
//! its own (`Renew`), so that no two entries ever share a position.

use std::collections::{HashMap, VecDeque};

use common::engine::Backoff;
use common::safety::Rule;
use common::trade::Level;
use common::wire::{
    ApplyOutcome, ApplyStop, CatalogRequest, CatalogResponse, LeadershipChange, LogEnd,
    OrderResponse, RemoteError, RequestId, StockLevel, StockName, TradeRejection, TradeRequest,
    TransactionNumber,
};
use durability::window::Hasher;
use tracing::{debug, error, info, warn};

use super::{
    Answer, ApplyPart, CallResult, Engine, Outgoing, Peer, Pending, State, Time, Token,
    MAX_BACKOFF, MAX_BATCH, MIN_BACKOFF,
};

/// The stocks' levels after every entry of the log.
pub(super) type Levels = HashMap<StockName, Level, Hasher>;

/// What the leader learnt of a request from the catalog's answers, kept across its terms so
/// that a request asked again is answered as before instead of being decided anew.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Learned {
    /// Refused, durably, with this answer.
    Refused {
        /// The trade refused.
        trade: TradeRequest,
        /// Why.
        rejection: TradeRejection,
    },
    /// Traded as the catalog's (and the log's) entry `number`.
    Traded {
        /// The trade.
        trade: TradeRequest,
        /// Its number.
        number: TransactionNumber,
    },
}

impl Learned {
    /// The trade it is about.
    pub(super) fn trade(&self) -> &TradeRequest {
        match self {
            Learned::Refused { trade, .. } | Learned::Traded { trade, .. } => trade,
        }
    }
}

/// An `Apply` on its way: for each item in order, the entry's number, or `None` for the
/// refusal at the front of the queue.
#[derive(Debug)]
struct Sent {
    items: Vec<Option<TransactionNumber>>,
    /// The entry after the last one sent.
    to: TransactionNumber,
}

/// The leader's link to the catalog in its term.
#[derive(Debug)]
pub(super) struct Feed {
    /// The stocks' levels after every entry of the log; `None` until read (nothing is placed
    /// before).
    pub(super) levels: Option<Levels>,
    /// The pages of levels read so far, while they are read.
    reading: Option<Vec<StockLevel>>,
    /// The catalog's history holds every entry below this, as far as this term knows.
    pub(super) applied: TransactionNumber,
    /// The next entry to send.
    next: TransactionNumber,
    /// Refusals the catalog has not answered yet, in order: each goes right before entry
    /// `before` of the log (the log's next number when it was decided).
    refusals: VecDeque<(TransactionNumber, TradeRequest)>,
    in_flight: Option<Sent>,
    /// When to send again after a failed call.
    retry_at: Option<Time>,
    backoff: Backoff,
    /// The catalog did not apply what this leader decided: it asks for a new epoch and
    /// places nothing meanwhile.
    pub(super) withdrawing: bool,
    /// The `Renew` is on its way; when not, when to ask (again).
    renew_in_flight: bool,
    renew_at: Option<Time>,
    /// The newest life of the catalog heard from in this term: what an earlier one applied
    /// may be gone.
    pub(super) incarnation: Option<u64>,
}

impl Feed {
    /// Nothing sent yet; the catalog's history is known to hold nothing of the log.
    pub(super) fn new() -> Self {
        Feed {
            levels: None,
            reading: None,
            applied: 0,
            next: 0,
            refusals: VecDeque::new(),
            in_flight: None,
            retry_at: None,
            backoff: Backoff::new(MIN_BACKOFF, MAX_BACKOFF),
            withdrawing: false,
            renew_in_flight: false,
            renew_at: None,
            incarnation: None,
        }
    }

    /// An answer of life `incarnation` of the catalog, whose history ends at `next`: whether
    /// to take it (an older life's answer is not). A newer life may lack what an earlier one
    /// applied: only what it holds counts as applied from now on, and what it lacks goes to
    /// it again.
    pub(super) fn life(&mut self, incarnation: u64, next: TransactionNumber) -> bool {
        match self.incarnation {
            Some(known) if incarnation < known => false,
            Some(known) if incarnation == known => true,
            _ => {
                self.incarnation = Some(incarnation);
                self.applied = self.applied.min(next);
                if self.in_flight.is_none() {
                    self.next = self.next.min(next);
                }
                true
            }
        }
    }

    /// The catalog's history is the log's up to `next`: the feed starts there.
    pub(super) fn start_at(&mut self, next: TransactionNumber) {
        self.applied = next;
        self.next = next;
    }

    /// The catalog's history (perhaps of a new life of it) ends at `next`, below what was
    /// sent: what it lacks goes to it again.
    pub(super) fn fell_back(&mut self, next: TransactionNumber) {
        if self.in_flight.is_none() && next < self.next {
            self.next = next;
            self.applied = self.applied.min(next);
        }
    }

    /// The earliest thing it has to do.
    pub(super) fn next_timer(&self) -> Option<Time> {
        [self.retry_at, self.renew_at].into_iter().flatten().min()
    }

    /// Queues the refusal of `trade`, decided when the log's next entry was `before`.
    pub(super) fn refuse(&mut self, before: TransactionNumber, trade: TradeRequest) {
        self.refusals.push_back((before, trade));
    }

    /// Forgets every refusal (the term ends; their waiters are told elsewhere).
    pub(super) fn clear(&mut self) {
        self.refusals.clear();
        self.in_flight = None;
    }
}

impl Engine {
    fn feed(&mut self) -> Option<&mut Feed> {
        self.leading().map(|leading| &mut leading.feed)
    }

    /// Where the log ends, for the life of the catalog heard from last: what a catalog that
    /// restarted must hold before it serves lookups again.
    pub(super) fn log_end(&self) -> Option<LogEnd> {
        match &self.state {
            State::Leading(leading) => leading.feed.incarnation.map(|incarnation| LogEnd {
                incarnation,
                last: self.log.last().map(|p| p.number),
            }),
            _ => None,
        }
    }

    /// Sends the catalog what it lacks of the log, and the refusals waiting, if nothing is on
    /// its way; reads the levels once the catalog holds the whole log at the term's start.
    pub(super) fn send_feed(&mut self) {
        let (epoch, term, timeout, now) =
            (self.epoch, self.term, self.config.call_timeout, self.now);
        let end = self.log.next_number();
        let log = self.log_end();
        let Some(leading) = self.leading() else {
            return;
        };
        if !leading.in_office || !leading.reconcile.reconciled {
            return;
        }
        let feed = &mut leading.feed;
        if feed.in_flight.is_some() || feed.withdrawing || feed.retry_at.is_some_and(|at| at > now)
        {
            return;
        }
        feed.retry_at = None;
        if feed.next >= end && feed.refusals.is_empty() {
            if feed.levels.is_none() && feed.reading.is_none() && feed.applied >= end {
                self.read_levels(None);
            }
            return;
        }
        let mut parts = Vec::new();
        let mut items = Vec::new();
        let mut at = feed.next;
        let mut queued = feed.refusals.iter().peekable();
        while items.len() < MAX_BATCH as usize {
            // The refusals decided before entry `at` (or earlier: they go first).
            while let Some((before, trade)) = queued.next_if(|(before, _)| *before <= at) {
                if items.len() >= MAX_BATCH as usize {
                    break;
                }
                parts.push(ApplyPart::Refuse {
                    before: *before,
                    trade: trade.clone(),
                });
                items.push(None);
            }
            if at >= end || items.len() >= MAX_BATCH as usize {
                break;
            }
            let room = MAX_BATCH - items.len() as u64;
            let until = queued
                .peek()
                .map_or(end, |(before, _)| (*before).min(end))
                .min(at + room);
            if until <= at {
                break;
            }
            parts.push(ApplyPart::Entries {
                from: at,
                count: until - at,
            });
            items.extend((at..until).map(Some));
            at = until;
        }
        if items.is_empty() {
            return;
        }
        feed.in_flight = Some(Sent { items, to: at });
        self.call(
            Peer::Catalog,
            Outgoing::Apply { epoch, log, parts },
            timeout,
            Pending::Apply { term },
        );
    }

    /// The catalog's answer to an `Apply`.
    pub(super) fn applied_by_catalog(&mut self, answer: CallResult) {
        let now = self.now;
        let Some(feed) = self.feed() else {
            return;
        };
        let Some(sent) = feed.in_flight.take() else {
            return;
        };
        let (outcomes, stop, next) = match answer {
            Ok(Answer::Catalog(CatalogResponse::Applied {
                incarnation,
                outcomes,
                stop,
                next,
            })) if outcomes.len() <= sent.items.len() && feed.life(incarnation, next) => {
                (outcomes, stop, next)
            }
            Ok(Answer::Catalog(CatalogResponse::Fenced { current, .. })) => {
                warn!(epoch = self.epoch, %current, "the catalog refused trades of this epoch");
                self.observe_record(&current);
                return;
            }
            other => {
                debug!(answer = ?other, "apply failed; sending again");
                feed.incarnation = None;
                // Whatever the catalog did of it is found again: it answers each item it has
                // seen as it did the first time.
                feed.retry_at = Some(now + feed.backoff.next_wait());
                return;
            }
        };
        feed.backoff.reset();
        let mut refused = Vec::new();
        for (item, outcome) in sent.items.iter().zip(&outcomes) {
            match (item, outcome) {
                (Some(number), ApplyOutcome::Applied) => {
                    feed.applied = feed.applied.max(number + 1);
                }
                (None, ApplyOutcome::Refused(rejection)) => {
                    if let Some((_, trade)) = feed.refusals.pop_front() {
                        refused.push((trade, rejection.clone()));
                    }
                }
                (item, outcome) => {
                    error!(
                        ?item,
                        ?outcome,
                        "the catalog answered an item with another's outcome"
                    );
                }
            }
        }
        // Where the catalog stands: the items from the first it did not do.
        let unanswered = sent.items.get(outcomes.len()).copied();
        feed.next = match unanswered {
            Some(Some(number)) => number,
            Some(None) => feed.refusals.front().map_or(sent.to, |(before, _)| *before),
            None => sent.to,
        };
        for (trade, rejection) in refused {
            self.answer_refusal(trade, rejection);
        }
        match stop {
            None => {}
            Some(ApplyStop::Gap) => {
                // Its history lacks entries before the item (it lost them in a crash, or an
                // earlier request did not arrive): they go to it again.
                if let Some(feed) = self.feed() {
                    feed.next = feed.next.min(next);
                    feed.applied = feed.applied.min(next);
                }
            }
            Some(stop) => self.not_as_decided(unanswered, stop),
        }
        self.advance_commit();
        self.send_feed();
    }

    /// The catalog refused `trade` as this leader decided: its waiters get the refusal, and
    /// a request asked again gets it too.
    fn answer_refusal(&mut self, trade: TradeRequest, rejection: TradeRejection) {
        let waiters = self
            .leading()
            .and_then(|leading| leading.placing.remove(&trade.request_id))
            .map(|placement| placement.waiters)
            .unwrap_or_default();
        for token in waiters {
            self.reply(token, Ok(OrderResponse::Rejected(rejection.clone())));
        }
        self.learn(Learned::Refused { trade, rejection });
    }

    pub(super) fn learn(&mut self, learned: Learned) {
        let id = learned.trade().request_id.clone();
        self.learned.insert(id, learned);
    }

    /// The catalog did not do item `item` as this leader decided (`stop` says why).
    fn not_as_decided(&mut self, item: Option<Option<TransactionNumber>>, stop: ApplyStop) {
        // The request the item is about, and who waits for it.
        let (request, waiters): (Option<TradeRequest>, Vec<Token>) = match item {
            Some(Some(number)) => {
                let request = self.log_trade(number);
                let waiters = self
                    .leading()
                    .map(|leading| leading.take_committing(number))
                    .unwrap_or_default();
                (request, waiters)
            }
            Some(None) => {
                let front = self
                    .feed()
                    .and_then(|feed| feed.refusals.pop_front())
                    .map(|(_, trade)| trade);
                let waiters = front
                    .as_ref()
                    .and_then(|trade| {
                        self.leading()
                            .and_then(|leading| leading.placing.remove(&trade.request_id))
                    })
                    .map(|placement| placement.waiters)
                    .unwrap_or_default();
                (front, waiters)
            }
            None => (None, Vec::new()),
        };
        let retry = Err(RemoteError::unavailable(
            "the leader withdraws orders the catalog would not apply; retry",
        ));
        let answer = match (&stop, &request) {
            (
                ApplyStop::Refused {
                    rejection,
                    remembered: true,
                },
                Some(trade),
            ) => {
                // Refused before, durably: that is the request's answer.
                self.learn(Learned::Refused {
                    trade: trade.clone(),
                    rejection: rejection.clone(),
                });
                Ok(OrderResponse::Rejected(rejection.clone()))
            }
            (ApplyStop::Traded { number }, Some(trade)) => {
                self.learn(Learned::Traded {
                    trade: trade.clone(),
                    number: *number,
                });
                retry
            }
            _ => {
                error!(?stop, request = ?request.as_ref().map(|t| &t.request_id), "the catalog does not take what this leader decided: its levels are not the catalog's");
                retry
            }
        };
        for token in waiters {
            self.reply(token, answer.clone());
        }
        let Some(Some(from)) = item else {
            return self.withdraw();
        };
        let placed_this_term = match &self.state {
            State::Leading(leading) => leading.feed.levels.is_some(),
            _ => false,
        };
        if !placed_this_term || !self.config.rules.holds(Rule::WithdrawUnderNewEpoch) {
            // Nothing of this epoch is in the log yet (the term's start brings the catalog up
            // to the entries it inherited): what the catalog will not apply was never
            // acknowledged, and is set aside with what follows. Broken on purpose (simulator
            // only) when the epoch's own entries are set aside and numbered again.
            warn!(
                from,
                ?stop,
                "the catalog will not apply this entry of the log; setting it aside with what follows"
            );
            self.set_aside_from(from, "the catalog would not apply it");
            if let Some(feed) = self.feed() {
                feed.levels = None;
                feed.reading = None;
                feed.refusals.clear();
                feed.next = feed.next.min(from);
            }
            return;
        }
        self.withdraw();
    }

    /// The request an entry of the log records, if the index still knows it.
    fn log_trade(&self, number: TransactionNumber) -> Option<TradeRequest> {
        self.log.placed_at(number)
    }

    /// Places nothing more in this epoch and asks the catalog for a new one of its own: what
    /// was decided from the catalog's answer on is withdrawn there.
    pub(super) fn withdraw(&mut self) {
        let now = self.now;
        let Some(feed) = self.feed() else {
            return;
        };
        if feed.withdrawing {
            // Already asked for (or waiting to ask again after a failure).
            return;
        }
        warn!(
            "the catalog did not apply what this leader decided; withdrawing it under a new epoch"
        );
        feed.withdrawing = true;
        feed.renew_at = Some(now);
        self.renew();
    }

    /// Sends the `Renew`, when due and not on its way.
    pub(super) fn renew(&mut self) {
        let (epoch, id, term, now, timeout) = (
            self.epoch,
            self.id,
            self.term,
            self.now,
            self.config.call_timeout,
        );
        let Some(feed) = self.feed() else {
            return;
        };
        if !feed.withdrawing || feed.renew_in_flight || feed.renew_at.is_none_or(|at| at > now) {
            return;
        }
        feed.renew_in_flight = true;
        feed.renew_at = None;
        self.call(
            Peer::Catalog,
            Outgoing::Catalog(CatalogRequest::ChangeLeadership {
                expected: epoch,
                change: LeadershipChange::Renew { leader: id },
            }),
            timeout,
            Pending::Renew { term },
        );
    }

    /// The catalog's answer to a `Renew`: the new epoch starts a new term.
    pub(super) fn renewed(&mut self, answer: CallResult) {
        let now = self.now;
        let Some(feed) = self.feed() else {
            return;
        };
        feed.renew_in_flight = false;
        match answer {
            Ok(Answer::Catalog(
                CatalogResponse::Leadership(record)
                | CatalogResponse::Fenced {
                    current: record, ..
                },
            )) => {
                info!(%record, "epoch renewed");
                self.observe_record(&record);
            }
            other => {
                debug!(answer = ?other, "renewal failed; asking again");
                feed.renew_at = Some(now + MIN_BACKOFF * 5);
            }
        }
    }

    /// Asks for one page of the levels, after `after`.
    fn read_levels(&mut self, after: Option<StockName>) {
        let (epoch, term, timeout) = (self.epoch, self.term, self.config.call_timeout);
        let Some(feed) = self.feed() else {
            return;
        };
        if feed.reading.is_none() {
            feed.reading = Some(Vec::new());
        }
        self.call(
            Peer::Catalog,
            Outgoing::Catalog(CatalogRequest::Levels { epoch, after }),
            timeout,
            Pending::Levels { term },
        );
    }

    /// A page of the levels: once all are read, and the catalog still holds the log as it
    /// is, orders are placed.
    pub(super) fn levels_read(&mut self, answer: CallResult) {
        let end = self.log.next_number();
        let now = self.now;
        let epoch = self.epoch;
        let Some(feed) = self.feed() else {
            return;
        };
        let Some(mut pages) = feed.reading.take() else {
            return;
        };
        match answer {
            Ok(Answer::Catalog(CatalogResponse::Levels {
                incarnation,
                next,
                levels,
                more,
            })) => {
                if !feed.life(incarnation, next)
                    || (!pages.is_empty() && feed.incarnation != Some(incarnation))
                {
                    // From another life of the catalog than the pages before: again.
                    feed.retry_at = Some(now + feed.backoff.next_wait());
                    return;
                }
                if next < end {
                    // The catalog lost the tail of its history meanwhile (it restarted): it is
                    // brought up to the log first.
                    feed.fell_back(next);
                    return self.send_feed();
                }
                if next > end {
                    // It holds trades the log does not: the next reconciliation finds them.
                    warn!(
                        next,
                        end, "the catalog's history goes beyond the log; reconciling again"
                    );
                    feed.retry_at = Some(now + feed.backoff.next_wait());
                    return;
                }
                pages.extend(levels);
                if more {
                    let after = pages.last().map(|level| level.name.clone());
                    feed.reading = Some(pages);
                    return self.read_levels(after);
                }
                let stocks = pages.len();
                feed.levels = Some(
                    pages
                        .into_iter()
                        .map(|level| {
                            let StockLevel {
                                name,
                                quantity,
                                volume,
                            } = level;
                            (name, Level { quantity, volume })
                        })
                        .collect(),
                );
                info!(
                    epoch,
                    next, stocks, "the catalog holds the whole log; placing orders"
                );
            }
            Ok(Answer::Catalog(CatalogResponse::Fenced { current, .. })) => {
                self.observe_record(&current);
            }
            other => {
                debug!(answer = ?other, "reading the levels failed; again");
                feed.incarnation = None;
                feed.retry_at = Some(now + feed.backoff.next_wait());
            }
        }
    }

    /// The catalog stopped answering (its subscription broke, or a call failed): what it
    /// applied may be gone with it (it may have lost its disk and be rebuilding from another
    /// replica's log), so nothing more commits until a life of it answers again and says what
    /// it holds.
    pub(super) fn catalog_lost(&mut self) {
        if let Some(feed) = self.feed() {
            feed.incarnation = None;
        }
    }

    /// Whatever the feed has due: a send after a failure, a renewal.
    pub(super) fn feed_tick(&mut self) {
        let now = self.now;
        let due = self.feed().is_some_and(|feed| {
            let due = feed.retry_at.is_some_and(|at| at <= now);
            if due {
                feed.retry_at = None;
            }
            due
        });
        if due {
            self.send_feed();
        }
        self.renew();
    }

    /// The request ids the catalog's answers taught this replica, if `id` is one.
    pub(super) fn learned(&self, id: &RequestId) -> Option<&Learned> {
        self.learned.get(id)
    }
}
