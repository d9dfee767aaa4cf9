//! The catalog's decisions as a state machine without I/O: the book (stocks, exactly-once
//! trades, the history they make), the leadership record's compare-and-set and the leader's
//! lease, the reconciliation of the catalog's history with the leader's order log, the
//! rebuild of a lost state from the replicas, and when each answer may go out. Requests,
//! answers to its calls and flushes come in; commands go out (append a record, sync the log,
//! store the record, reply, publish the record, invalidate a stock, call a replica). The
//! service ([`crate::service`]) executes them on the log, the network and the subscribers;
//! the simulator on a simulated disk and network.
//!
//! The order leader decides and numbers every trade; the catalog applies the entries of its
//! log in order (`Apply`), checking that each comes out as the leader decided, and stops at
//! the first that does not. An applied trade is answered at once: the order log, replicated
//! before the trade's client hears of it, is what makes it durable, and a catalog that
//! restarts after a crash serves no lookup until the leader has brought its history back up
//! to every order it may have acknowledged. Its own log is made durable within [`LINGER`], or
//! at once when a lookup, a refusal or the leadership record waits for it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use common::engine::{Deadlines, IdMap};
use common::history::meeting_point;
use common::safety::{Rule, Rules};
use common::wire::{
    ApplyItem, ApplyOutcome, ApplyStop, CatalogRequest, CatalogResponse, Epoch, Leadership,
    LeadershipChange, LogEnd, LogPosition, OrderEntry, OrderRequest, OrderResponse, RemoteError,
    ReplicaId, ReplicaStatus, Reply, RequestId, StockName, StockQuote, TradeRejection,
    TransactionNumber, MAX_BATCH, MAX_KNOWN, MAX_LEVELS, READ_LOG_MAX,
};
use durability::waiters::DurableWaiters;
use tracing::{debug, info, warn};

use crate::book::{Book, LogRecord, Refusing};

pub use common::engine::{Answer, CallError, CallId, CallResult, Time, Token, WriteId};

/// Longest a request waits for its record to reach the disk before answering `Unavailable`.
pub const DURABILITY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest an applied trade stays off the disk: the order log holds it meanwhile, so the
/// catalog's fsync is off every trade's path, and one fsync covers all the trades of this
/// span.
pub const LINGER: Duration = Duration::from_millis(10);
/// Wait between two rounds of questions to the replicas while rebuilding.
pub const REBUILD_RETRY: Duration = Duration::from_millis(200);
/// How often a rebuild that waits for a replica says so.
const REBUILD_WARN_EVERY: Duration = Duration::from_secs(5);

/// What happens to the catalog.
#[derive(Debug, Clone)]
pub enum Input {
    /// A request (any but `Subscribe`, which the runtime keeps), answered by
    /// [`Command::Reply`].
    Request {
        /// Echoed by the reply.
        token: Token,
        /// The request.
        request: CatalogRequest,
    },
    /// What became of a [`Command::Call`]; every call gets exactly one.
    Answer {
        /// The call.
        call: CallId,
        /// Its answer, or why there is none.
        answer: CallResult,
    },
    /// Every write up to this one is on disk.
    Flushed(WriteId),
    /// The log cannot be written; nothing queued will become durable.
    StorageFailed(String),
    /// The clock moved; whatever is due is done.
    Tick,
}

/// What the catalog asks its runtime to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Write `record` to the write-ahead log; report `write` once fsynced: at once when
    /// `sync`, else with the next [`Command::Sync`] (or another write that syncs).
    Append {
        /// Reported by [`Input::Flushed`].
        write: WriteId,
        /// The record.
        record: LogRecord,
        /// Whether it must be fsynced now.
        sync: bool,
    },
    /// Fsync everything written; report `write` once done.
    Sync {
        /// Reported by [`Input::Flushed`].
        write: WriteId,
    },
    /// Replace the leadership record's file, in order with the log; report `write` after.
    StoreLeadership {
        /// Reported by [`Input::Flushed`].
        write: WriteId,
        /// The record.
        record: Leadership,
    },
    /// Answer a request.
    Reply {
        /// The request's token.
        token: Token,
        /// The answer.
        reply: Reply<CatalogResponse>,
    },
    /// Write a snapshot of the book now, in order with the writes (no report).
    Snapshot,
    /// Tell every subscriber the leadership record changed (it is on disk).
    Publish(Leadership),
    /// Tell the front ends a stock changed, before any trade that changed it is answered.
    Invalidate {
        /// The stock.
        name: StockName,
        /// Its version after the change.
        version: u64,
    },
    /// Ask a replica something (while rebuilding); the answer comes back as
    /// [`Input::Answer`].
    Call {
        /// Echoed by the answer.
        call: CallId,
        /// Which replica.
        to: ReplicaId,
        /// What.
        request: OrderRequest,
        /// How long to wait for the answer.
        timeout: Duration,
    },
}

/// The catalog engine's settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How long a lease lasts.
    pub lease_length: Duration,
    /// The replicas, asked when the state is lost; none for a catalog on its own.
    pub replicas: Vec<ReplicaId>,
    /// How long a call to a replica may take.
    pub call_timeout: Duration,
    /// This life of the catalog: raised (durably) at every start, told with every number it
    /// gives, so that a leader never mixes numbers of two lives.
    pub incarnation: u64,
    /// The safety rules (all of them, but in the simulator's mutation runs).
    pub rules: Rules,
}

/// How the catalog's state came to it, which decides what it may serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Its state directory was empty: a new cluster, or a lost disk. With replicas configured
    /// it asks them which before it serves anything; on its own it starts from the seed.
    Empty,
    /// It stopped cleanly: it has every trade it ever answered, and serves at once.
    Clean,
    /// It crashed: its log may have lost trades the order log holds, so it serves no lookup
    /// and no trade until the leader has reconciled with it.
    Recovered,
}

/// A write on its way to disk.
#[derive(Debug, Clone)]
enum Write {
    Trade {
        number: TransactionNumber,
    },
    Leadership {
        record: Leadership,
        token: Option<Token>,
    },
    Refusal {
        request_id: RequestId,
    },
    Sync,
}

/// An `Apply` some of whose refusals are on their way to disk.
#[derive(Debug)]
struct Pending {
    outcomes: Vec<Option<ApplyOutcome>>,
    stop: Option<ApplyStop>,
    missing: usize,
}

/// A lost state being rebuilt from the replicas.
#[derive(Debug, Default)]
struct Rebuild {
    /// Each replica's status, once it answered.
    statuses: BTreeMap<ReplicaId, ReplicaStatus>,
    /// Why the others did not, as far as known.
    silent: BTreeMap<ReplicaId, String>,
    /// Calls on their way, and to whom.
    asking: BTreeMap<CallId, ReplicaId>,
    /// The replica whose log is read, and the record that names it once read.
    source: Option<(ReplicaId, Leadership)>,
    /// An operator's choice of source, with its request waiting.
    forced: Option<(ReplicaId, Token)>,
    /// When to ask again.
    retry_at: Option<Time>,
    /// When it last said what it waits for.
    warned_at: Option<Time>,
}

/// What the catalog is doing.
#[derive(Debug)]
enum Mode {
    /// Serving; `ready` once its history is known to hold every trade the order log holds.
    Serving { ready: bool },
    /// Its state was lost: learning from the replicas whether the cluster is new, or which
    /// log to rebuild from.
    Rebuilding(Box<Rebuild>),
}

/// The catalog's state.
#[derive(Debug)]
pub struct CatalogEngine {
    book: Book,
    config: EngineConfig,
    now: Time,
    /// The leader's lease: the epoch of the last leader that said it serves, and when.
    lease: Option<(Epoch, Time)>,
    /// The leadership record on disk, as subscribers were told.
    published: Leadership,
    /// Every trade numbered below this is on disk.
    durable_next: TransactionNumber,
    failed: Option<String>,
    mode: Mode,
    writes: VecDeque<(WriteId, Write)>,
    next_write: WriteId,
    /// The first write not yet covered by a sync asked for, and when one is due for it.
    unsynced: Option<(WriteId, Time)>,
    /// Lookups waiting for the change they show to reach the disk, by trade number.
    lookups: DurableWaiters<StockQuote>,
    /// `Apply` requests, leadership changes and rebuild overrides waiting for the disk,
    /// until their deadline.
    deadlines: Deadlines,
    /// Leadership changes waiting for their file.
    changing: BTreeSet<Token>,
    /// Refusals on their way to disk, by request id: which request's outcome each decides.
    refusing: BTreeMap<RequestId, Vec<(Token, usize, TradeRejection)>>,
    /// `Apply` requests waiting for refusals.
    pending: IdMap<Pending>,
    calls: IdMap<()>,
    next_call: CallId,
    out: Vec<Command>,
}

impl CatalogEngine {
    /// A catalog over `book`, recovered as `origin` says (every record in it is on disk), at
    /// time `now`.
    pub fn new(mut book: Book, origin: Origin, config: EngineConfig, now: Time) -> Self {
        book.set_rules(config.rules);
        let mode = match origin {
            Origin::Empty if !config.replicas.is_empty() => Mode::Rebuilding(Box::new(Rebuild {
                retry_at: Some(now),
                ..Rebuild::default()
            })),
            Origin::Empty | Origin::Clean => Mode::Serving { ready: true },
            // Broken on purpose (simulator only): serves at once after a crash.
            Origin::Recovered if !config.rules.holds(Rule::ReplayBeforeServe) => {
                Mode::Serving { ready: true }
            }
            Origin::Recovered => Mode::Serving { ready: false },
        };
        let mut engine = CatalogEngine {
            published: book.leadership().clone(),
            durable_next: book.next_number(),
            book,
            config,
            now,
            lease: None,
            failed: None,
            mode,
            writes: VecDeque::new(),
            next_write: 1,
            unsynced: None,
            lookups: DurableWaiters::default(),
            deadlines: Deadlines::default(),
            changing: BTreeSet::new(),
            refusing: BTreeMap::new(),
            pending: IdMap::default(),
            calls: IdMap::default(),
            next_call: 1,
            out: Vec::new(),
        };
        if origin == Origin::Empty && matches!(engine.mode, Mode::Serving { .. }) {
            info!("no replicas configured: starting from the seed file");
            engine.out.push(Command::Snapshot);
        }
        engine
    }

    /// Handles one input at time `now`, appending the commands it gives to `out`.
    pub fn handle(&mut self, now: Time, input: Input, out: &mut Vec<Command>) {
        self.now = self.now.max(now);
        match input {
            Input::Request { token, request } => self.request(token, request),
            Input::Answer { call, answer } => self.answer(call, answer),
            Input::Flushed(write) => self.flushed(write),
            Input::StorageFailed(reason) => self.storage_failed(reason),
            Input::Tick => self.tick(),
        }
        out.append(&mut self.out);
    }

    /// The earliest time the engine has something to do.
    pub fn next_timer(&mut self) -> Option<Time> {
        let rebuild = match &self.mode {
            Mode::Rebuilding(rebuild) => rebuild.retry_at,
            Mode::Serving { .. } => None,
        };
        [
            self.deadlines.earliest(),
            self.lookups.earliest(),
            self.unsynced.map(|(_, at)| at),
            rebuild,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The book (every change in it is in the log, perhaps not yet on disk).
    pub fn book(&self) -> &Book {
        &self.book
    }

    /// The leadership record on disk: what subscribers are told first.
    pub fn published(&self) -> &Leadership {
        &self.published
    }

    /// Why the log cannot be written, once it cannot.
    pub fn storage_failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Every trade numbered below this is on disk.
    pub fn durable_next(&self) -> TransactionNumber {
        self.durable_next
    }

    /// Whether it serves lookups and trades: its history holds every trade of the order log.
    pub fn ready(&self) -> bool {
        matches!(self.mode, Mode::Serving { ready: true })
    }

    /// Whether it is rebuilding a lost state from the replicas (it serves nothing meanwhile,
    /// not even the leadership record).
    pub fn rebuilding(&self) -> bool {
        matches!(self.mode, Mode::Rebuilding(_))
    }

    fn reply(&mut self, token: Token, reply: Reply<CatalogResponse>) {
        self.out.push(Command::Reply { token, reply });
    }

    fn write(&mut self, write: Write) -> WriteId {
        let id = self.next_write;
        self.next_write += 1;
        self.writes.push_back((id, write));
        id
    }

    /// Logs `record`: a trade lazily (on disk within [`LINGER`]), a refusal at once.
    fn append(&mut self, record: LogRecord) -> WriteId {
        let (write, sync) = match &record {
            LogRecord::Traded(trade) => (
                self.write(Write::Trade {
                    number: trade.number,
                }),
                false,
            ),
            LogRecord::Refused(refusal) => (
                self.write(Write::Refusal {
                    request_id: refusal.request_id.clone(),
                }),
                true,
            ),
        };
        if sync {
            self.unsynced = None;
        } else if self.unsynced.is_none() {
            self.unsynced = Some((write, self.now + LINGER));
        }
        self.out.push(Command::Append {
            write,
            record,
            sync,
        });
        write
    }

    /// Asks for everything written to be fsynced now, unless a sync asked for already covers
    /// it.
    fn sync_now(&mut self) {
        if self.unsynced.take().is_some() {
            let write = self.write(Write::Sync);
            self.out.push(Command::Sync { write });
        }
    }

    fn unavailable(&self) -> Option<RemoteError> {
        if let Some(reason) = &self.failed {
            // The service restarts from its log once the disk takes writes again.
            return Some(RemoteError::unavailable(format!(
                "catalog storage failed: {reason}"
            )));
        }
        match &self.mode {
            Mode::Serving { ready: true } => None,
            Mode::Serving { ready: false } => Some(RemoteError::unavailable(
                "the catalog restarted after a crash and waits for the order leader to bring back \
                 what its log lost",
            )),
            Mode::Rebuilding(_) => Some(RemoteError::unavailable(
                "the catalog lost its state and is rebuilding it from the replicas' order logs",
            )),
        }
    }

    fn request(&mut self, token: Token, request: CatalogRequest) {
        if self.rebuilding() {
            if let CatalogRequest::ChangeLeadership {
                change: LeadershipChange::Unclean { leader },
                ..
            } = request
            {
                return self.force_rebuild(token, leader);
            }
            let why = self
                .unavailable()
                .unwrap_or_else(|| RemoteError::unavailable("rebuilding"));
            return self.reply(token, Err(why));
        }
        match request {
            CatalogRequest::Lookup { name } => self.lookup(token, name),
            CatalogRequest::Apply { epoch, items, log } => self.apply(token, epoch, items, log),
            CatalogRequest::Levels { epoch, after } => {
                let reply = self.levels(epoch, after.as_ref());
                self.reply(token, reply);
            }
            CatalogRequest::ReadLeadership => {
                let record = self.published.clone();
                self.reply(token, Ok(CatalogResponse::Leadership(record)));
            }
            CatalogRequest::ChangeLeadership { expected, change } => {
                self.change_leadership(token, expected, change)
            }
            CatalogRequest::Reconcile {
                epoch,
                known,
                max,
                serving,
                log,
            } => {
                let reply = self.reconcile(epoch, &known, max, serving, log);
                self.reply(token, reply);
            }
            CatalogRequest::Subscribe { .. } => self.reply(
                token,
                Err(RemoteError::bad_request(
                    "a subscription is kept by the connection",
                )),
            ),
        }
    }

    fn lookup(&mut self, token: Token, name: StockName) {
        // A failed disk still shows what is on it; a catalog that may lack trades of the
        // order log shows nothing.
        if !matches!(self.mode, Mode::Serving { ready: true }) {
            if let Some(why) = self.unavailable() {
                return self.reply(token, Err(why));
            }
        }
        let Some(stock) = self.book.stock(&name) else {
            return self.reply(token, Ok(CatalogResponse::NotFound));
        };
        let quote = stock.quote();
        match stock.last_change {
            // Never show a change that a crash could still take back.
            Some(number) if number >= self.durable_next => {
                if let Some(reason) = &self.failed {
                    let why = format!("catalog storage failed: {reason}");
                    return self.reply(token, Err(RemoteError::unavailable(why)));
                }
                self.lookups
                    .wait(token, number, quote, self.now + DURABILITY_TIMEOUT);
                self.sync_now();
            }
            _ => self.reply(token, Ok(CatalogResponse::Stock(quote))),
        }
    }

    /// The leader's `Apply`: its log's entries applied at their numbers, its refusals
    /// remembered, in order, up to the first item that does not come out as it decided.
    fn apply(&mut self, token: Token, epoch: Epoch, items: Vec<ApplyItem>, log: Option<LogEnd>) {
        if let Some(reason) = &self.failed {
            let why = format!("catalog storage failed: {reason}");
            return self.reply(token, Err(RemoteError::unavailable(why)));
        }
        if items.len() > MAX_BATCH {
            let why = format!("at most {MAX_BATCH} items per request");
            return self.reply(token, Err(RemoteError::bad_request(why)));
        }
        if self.book.rules().holds(Rule::Fencing)
            && !crate::leadership::admits(self.book.leadership(), epoch)
        {
            let current = self.published.clone();
            debug!(epoch, %current, "trades fenced");
            let reason = format!("epoch {epoch} may not trade; the record is {current}");
            return self.reply(token, Ok(CatalogResponse::Fenced { current, reason }));
        }
        let mut outcomes = Vec::with_capacity(items.len());
        let mut stop = None;
        let mut missing = 0;
        let before = self.book.next_number();
        for (index, item) in items.into_iter().enumerate() {
            let outcome = match item {
                ApplyItem::Entry(entry) => match self.book.apply_entry(&entry) {
                    Ok(Some(record)) => {
                        // Front ends drop the stock before any trade that changed it is
                        // answered.
                        self.out.push(Command::Invalidate {
                            name: record.name.clone(),
                            version: record.after.version,
                        });
                        self.append(LogRecord::Traded(record));
                        Some(ApplyOutcome::Applied)
                    }
                    Ok(None) => Some(ApplyOutcome::Applied),
                    Err(why) => {
                        debug!(number = entry.number, request_id = %entry.request_id, ?why, "entry not applied");
                        stop = Some(why);
                        break;
                    }
                },
                ApplyItem::Refuse { before, trade } => match self.book.refuse(before, &trade) {
                    Refusing::Answered(rejection) => {
                        match self.refusing.get_mut(&trade.request_id) {
                            // Refused before; the refusal is still on its way to disk.
                            Some(waiting) => {
                                waiting.push((token, index, rejection));
                                None
                            }
                            None => Some(ApplyOutcome::Refused(rejection)),
                        }
                    }
                    Refusing::Remember(refusal) => {
                        debug!(request_id = %refusal.request_id, rejection = %refusal.rejection, "trade refused; remembered");
                        let rejection = refusal.rejection.clone();
                        let request_id = refusal.request_id.clone();
                        if self.book.rules().holds(Rule::RefusalDurableBeforeAnswer) {
                            self.refusing
                                .insert(request_id, vec![(token, index, rejection)]);
                            self.append(LogRecord::Refused(refusal));
                            None
                        } else {
                            // Broken on purpose (simulator only): answered before it is on
                            // disk.
                            self.append(LogRecord::Refused(refusal));
                            Some(ApplyOutcome::Refused(rejection))
                        }
                    }
                    Refusing::Stop(why) => {
                        debug!(request_id = %trade.request_id, ?why, "refusal not made");
                        stop = Some(why);
                        break;
                    }
                },
            };
            missing += usize::from(outcome.is_none());
            outcomes.push(outcome);
        }
        // What it applied is the leader's log up to its next number.
        let next = self.book.next_number();
        if next > before && matches!(self.mode, Mode::Serving { ready: false }) {
            info!(
                brought_back = next - before,
                next, "brought back orders the catalog's log had lost"
            );
        }
        self.serve_if_holding(log, |last| last < next);
        if missing == 0 {
            let outcomes = outcomes.into_iter().flatten().collect();
            return self.reply(token, Ok(self.applied(outcomes, stop)));
        }
        self.deadlines.add(token, self.now + DURABILITY_TIMEOUT);
        self.pending.insert(
            token,
            Pending {
                outcomes,
                stop,
                missing,
            },
        );
    }

    /// A refusal some request waited for is on disk.
    fn refused(&mut self, token: Token, index: usize, rejection: TradeRejection) {
        let Some(pending) = self.pending.get_mut(&token) else {
            return;
        };
        if let Some(slot @ None) = pending.outcomes.get_mut(index) {
            *slot = Some(ApplyOutcome::Refused(rejection));
            pending.missing -= 1;
        }
        if pending.missing > 0 {
            return;
        }
        if let Some(pending) = self.pending.remove(&token) {
            if self.deadlines.take(token) {
                let outcomes = pending.outcomes.into_iter().flatten().collect();
                let answer = self.applied(outcomes, pending.stop);
                self.reply(token, Ok(answer));
            }
        }
    }

    /// The answer to an `Apply`.
    fn applied(&self, outcomes: Vec<ApplyOutcome>, stop: Option<ApplyStop>) -> CatalogResponse {
        CatalogResponse::Applied {
            incarnation: self.config.incarnation,
            outcomes,
            stop,
            next: self.book.next_number(),
        }
    }

    /// One page of the stocks' levels, for the leader.
    fn levels(&self, epoch: Epoch, after: Option<&StockName>) -> Reply<CatalogResponse> {
        if let Err(fenced) = self.leads(epoch) {
            return Ok(fenced);
        }
        let (levels, more) = self.book.levels(after, MAX_LEVELS);
        Ok(CatalogResponse::Levels {
            incarnation: self.config.incarnation,
            next: self.book.next_number(),
            levels,
            more,
        })
    }

    /// A catalog that restarted after a crash serves again once its history holds the whole
    /// log of a request the leader made to this life of it (`holds` says whether it holds
    /// the entry given).
    fn serve_if_holding(&mut self, log: Option<LogEnd>, holds: impl Fn(TransactionNumber) -> bool) {
        let Some(log) = log else {
            return;
        };
        let holds = log.incarnation == self.config.incarnation && log.last.is_none_or(holds);
        if holds && matches!(self.mode, Mode::Serving { ready: false }) {
            info!(
                next = self.book.next_number(),
                "the catalog's history holds the leader's whole log; serving again"
            );
            self.mode = Mode::Serving { ready: true };
        }
    }

    /// The compare-and-set of the leadership record: decided against the newest record (also
    /// one still on its way to disk, so that two changes never both succeed), answered and
    /// published once on disk.
    fn change_leadership(&mut self, token: Token, expected: Epoch, change: LeadershipChange) {
        let decided = self.lease_holds(&change).and_then(|()| {
            crate::leadership::apply(self.book.leadership(), expected, &change, self.book.rules())
        });
        let record = match decided {
            Ok(record) => record,
            Err(reason) => {
                debug!(expected, ?change, %reason, "leadership change refused");
                let current = self.published.clone();
                return self.reply(token, Ok(CatalogResponse::Fenced { current, reason }));
            }
        };
        if let Some(reason) = self.failed.clone() {
            let why = format!("catalog storage failed: {reason}");
            return self.reply(token, Err(RemoteError::unavailable(why)));
        }
        if record.epoch != expected {
            // A new leader gets one lease to take over before it can be deposed.
            self.lease = Some((record.epoch, self.now));
        }
        info!(%record, ?change, "leadership record changing");
        self.store_leadership(record, Some(token));
    }

    fn store_leadership(&mut self, record: Leadership, token: Option<Token>) {
        self.book.set_leadership(record.clone());
        let write = self.write(Write::Leadership {
            record: record.clone(),
            token,
        });
        if let Some(token) = token {
            self.changing.insert(token);
            self.deadlines.add(token, self.now + DURABILITY_TIMEOUT);
        }
        // Stored in order with the log: everything written before is on disk with it.
        self.unsynced = None;
        self.out.push(Command::StoreLeadership { write, record });
    }

    /// Refuses an election while the recorded leader's lease holds: the catalog heard from it,
    /// serving, within the lease. Electors that cannot reach it are the ones cut off; and
    /// front ends with different views cannot take turns replacing each other's leaders.
    /// The operator's unclean override and the leader's own changes are not held back.
    fn lease_holds(&self, change: &LeadershipChange) -> Result<(), String> {
        let current = self.book.leadership();
        let Some(leader) = current.leader else {
            return Ok(());
        };
        if !matches!(change, LeadershipChange::Elect { .. }) {
            return Ok(());
        }
        match self.lease {
            Some((epoch, heard))
                if epoch == current.epoch
                    && self.now.saturating_sub(heard) < self.config.lease_length =>
            {
                Err(format!(
                    "the recorded leader {leader} of epoch {epoch} serves (the catalog heard \
                     from it {} ms ago); not deposed",
                    self.now.saturating_sub(heard).as_millis()
                ))
            }
            _ => Ok(()),
        }
    }

    /// Whether `epoch` leads, by the record as it is and as it is on disk.
    fn leads(&self, epoch: Epoch) -> Result<(), CatalogResponse> {
        if crate::leadership::admits(self.book.leadership(), epoch)
            && crate::leadership::admits(&self.published, epoch)
        {
            return Ok(());
        }
        let current = self.published.clone();
        Err(CatalogResponse::Fenced {
            reason: format!("epoch {epoch} does not lead; the record is {current}"),
            current,
        })
    }

    /// The leader's reconciliation: renews its lease if it serves, finds where the catalog's
    /// history meets the leader's log, and lists the catalog's trades after that point. Once
    /// both end at the same position, a catalog that was catching up serves again.
    fn reconcile(
        &mut self,
        epoch: Epoch,
        known: &[LogPosition],
        max: u32,
        serving: bool,
        log: Option<LogEnd>,
    ) -> Reply<CatalogResponse> {
        if let Err(fenced) = self.leads(epoch) {
            return Ok(fenced);
        }
        if known.len() > MAX_KNOWN {
            let why = format!("at most {MAX_KNOWN} positions");
            return Err(RemoteError::bad_request(why));
        }
        if serving {
            self.lease = Some((epoch, self.now));
        }
        let history = self.book.history();
        let meet = meeting_point(known, history.boundaries());
        let next = history.next_number();
        let max = (max as usize).clamp(1, MAX_BATCH);
        let (trades, complete) = self.book.entries_after(meet.map(|p| p.number), max);
        // Its history is the log's up to where they meet.
        self.serve_if_holding(log, |last| meet.is_some_and(|m| m.number >= last));
        Ok(CatalogResponse::Reconciled {
            incarnation: self.config.incarnation,
            meet,
            next,
            trades,
            complete,
        })
    }

    fn flushed(&mut self, through: WriteId) {
        let mut changed = Vec::new();
        let mut refused = Vec::new();
        while let Some((id, _)) = self.writes.front() {
            if *id > through {
                break;
            }
            let Some((_, write)) = self.writes.pop_front() else {
                break;
            };
            match write {
                Write::Trade { number } => {
                    self.durable_next = self.durable_next.max(number + 1);
                }
                Write::Refusal { request_id } => {
                    refused.extend(self.refusing.remove(&request_id).unwrap_or_default());
                }
                Write::Leadership { record, token } => {
                    self.published = record.clone();
                    self.out.push(Command::Publish(record.clone()));
                    if let Some(token) = token {
                        if self.changing.remove(&token) && self.deadlines.take(token) {
                            info!(%record, "leadership record changed");
                            changed.push((token, record));
                        }
                    }
                }
                Write::Sync => {}
            }
        }
        if let Some((first, _)) = self.unsynced {
            if first <= through {
                self.unsynced = None;
            }
        }
        if let Some(durable) = self.durable_next.checked_sub(1) {
            for (token, quote) in self.lookups.durable_through(durable) {
                self.reply(token, Ok(CatalogResponse::Stock(quote)));
            }
        }
        for (token, index, rejection) in refused {
            self.refused(token, index, rejection);
        }
        for (token, record) in changed {
            self.reply(token, Ok(CatalogResponse::Leadership(record)));
        }
    }

    fn storage_failed(&mut self, reason: String) {
        if self.failed.is_some() {
            return;
        }
        warn!(%reason, "write-ahead log failed; trades are refused from now on");
        self.failed = Some(reason.clone());
        self.writes.clear();
        self.unsynced = None;
        let why = RemoteError::unavailable(format!("catalog storage failed: {reason}"));
        let mut waiting = self.lookups.drain();
        waiting.extend(
            self.changing
                .iter()
                .chain(self.pending.keys())
                .copied()
                .collect::<Vec<_>>()
                .into_iter()
                .filter(|&token| self.deadlines.take(token)),
        );
        self.changing.clear();
        self.pending.clear();
        self.refusing.clear();
        if let Mode::Rebuilding(rebuild) = &mut self.mode {
            if let Some((_, token)) = rebuild.forced.take() {
                waiting.push(token);
            }
        }
        for token in waiting {
            self.reply(token, Err(why.clone()));
        }
    }

    fn tick(&mut self) {
        let mut due = self.lookups.expired(self.now);
        for token in self.deadlines.due(self.now) {
            self.changing.remove(&token);
            self.pending.remove(&token);
            if let Mode::Rebuilding(rebuild) = &mut self.mode {
                // The operator's choice did not answer in time: another may be made.
                if rebuild.forced.is_some_and(|(_, t)| t == token) && rebuild.source.is_none() {
                    rebuild.forced = None;
                }
            }
            due.push(token);
        }
        for token in due {
            self.reply(
                token,
                Err(RemoteError::unavailable("catalog log is not keeping up")),
            );
        }
        if self.unsynced.is_some_and(|(_, at)| at <= self.now) {
            self.sync_now();
        }
        self.rebuild_tick();
    }

    fn answer(&mut self, call: CallId, answer: CallResult) {
        if self.calls.remove(&call).is_none() {
            return;
        }
        let Mode::Rebuilding(rebuild) = &mut self.mode else {
            return;
        };
        let Some(replica) = rebuild.asking.remove(&call) else {
            return;
        };
        match answer {
            Ok(Answer::Order(OrderResponse::Status(status))) => {
                rebuild.silent.remove(&replica);
                rebuild.statuses.insert(replica, status);
                self.rebuild_step();
            }
            Ok(Answer::Order(OrderResponse::Log { entries, last, .. })) => {
                self.read_page(replica, entries, last)
            }
            Ok(other) => {
                rebuild
                    .silent
                    .insert(replica, format!("answered {other:?}"));
            }
            Err(e) => {
                rebuild.silent.insert(replica, e.to_string());
                if rebuild
                    .source
                    .as_ref()
                    .is_some_and(|(source, _)| *source == replica)
                {
                    rebuild.retry_at = Some(self.now + REBUILD_RETRY);
                }
            }
        }
    }

    fn call(&mut self, to: ReplicaId, request: OrderRequest) -> CallId {
        let call = self.next_call;
        self.next_call += 1;
        self.calls.insert(call, ());
        self.out.push(Command::Call {
            call,
            to,
            request,
            timeout: self.config.call_timeout,
        });
        call
    }

    /// While rebuilding: asks every replica that has not answered for its status, or reads on.
    fn rebuild_tick(&mut self) {
        let now = self.now;
        let replicas = self.config.replicas.clone();
        let Mode::Rebuilding(rebuild) = &mut self.mode else {
            return;
        };
        if rebuild.retry_at.is_none_or(|at| at > now) {
            return;
        }
        rebuild.retry_at = Some(now + REBUILD_RETRY);
        if rebuild
            .warned_at
            .is_none_or(|at| now.saturating_sub(at) >= REBUILD_WARN_EVERY)
        {
            rebuild.warned_at = Some(now);
            if !rebuild.silent.is_empty() {
                warn!(
                    waiting_for = ?rebuild.silent,
                    "the catalog's state directory was empty; it rebuilds its state from the \
                     replicas' order logs once every replica answers (only then is the one that \
                     holds every acknowledged order known); `order elect --unclean ID` rebuilds \
                     from replica ID's log instead"
                );
            }
        }
        if let Some((source, _)) = rebuild.source {
            if !rebuild.asking.values().any(|&r| r == source) {
                let from = self.book.next_number();
                let call = self.call(
                    source,
                    OrderRequest::ReadLog {
                        from,
                        max: READ_LOG_MAX,
                    },
                );
                if let Mode::Rebuilding(rebuild) = &mut self.mode {
                    rebuild.asking.insert(call, source);
                }
            }
            return;
        }
        let ask: Vec<ReplicaId> = replicas
            .into_iter()
            .filter(|id| {
                !rebuild.statuses.contains_key(id) && !rebuild.asking.values().any(|r| r == id)
            })
            .collect();
        for replica in ask {
            let call = self.call(replica, OrderRequest::Status);
            if let Mode::Rebuilding(rebuild) = &mut self.mode {
                rebuild.asking.insert(call, replica);
            }
        }
    }

    /// An operator chose the replica to rebuild from (`order elect --unclean`): it leads
    /// alone, whatever the others hold.
    fn force_rebuild(&mut self, token: Token, leader: ReplicaId) {
        let Mode::Rebuilding(rebuild) = &mut self.mode else {
            return;
        };
        if !self.config.replicas.contains(&leader) {
            let why = format!("replica {leader} is not configured");
            return self.reply(token, Err(RemoteError::bad_request(why)));
        }
        if rebuild.source.is_some() || rebuild.forced.is_some() {
            let why = "the catalog is already rebuilding from a replica's log";
            return self.reply(token, Err(RemoteError::unavailable(why)));
        }
        warn!(
            leader,
            "rebuilding from the replica an operator chose; orders only the others held may be lost"
        );
        rebuild.forced = Some((leader, token));
        self.deadlines.add(token, self.now + DURABILITY_TIMEOUT);
        self.rebuild_step();
    }

    /// Decides, once it may, whether the cluster is new or which log to rebuild from.
    fn rebuild_step(&mut self) {
        let replicas = self.config.replicas.clone();
        let now = self.now;
        let Mode::Rebuilding(rebuild) = &mut self.mode else {
            return;
        };
        if rebuild.source.is_some() {
            return;
        }
        let newest_epoch = rebuild
            .statuses
            .values()
            .map(|s| s.epoch)
            .max()
            .unwrap_or(0);
        let chosen = if let Some((forced, _)) = rebuild.forced {
            let Some(status) = rebuild.statuses.get(&forced) else {
                // Its status first: how far its log goes.
                rebuild.retry_at = Some(now);
                return;
            };
            Some((forced, vec![forced], status.last))
        } else {
            if replicas.iter().any(|id| !rebuild.statuses.contains_key(id)) {
                return;
            }
            let fresh = rebuild
                .statuses
                .values()
                .all(|s| s.epoch == 0 && s.last.is_none() && s.set_aside == 0);
            if fresh {
                info!("every replica is empty: a new cluster, starting from the seed file");
                self.mode = Mode::Serving { ready: true };
                self.out.push(Command::Snapshot);
                return;
            }
            // The replica whose log reaches furthest holds every acknowledged order (every one
            // is on every member of the in-sync set, and any longer log would hold it too);
            // those whose log ends at the same position hold the same log.
            let Some((id, last)) = rebuild
                .statuses
                .iter()
                .max_by_key(|(id, s)| (s.last, **id))
                .map(|(id, s)| (*id, s.last))
            else {
                return;
            };
            let in_sync = rebuild
                .statuses
                .iter()
                .filter(|(_, s)| s.last == last)
                .map(|(id, _)| *id)
                .collect();
            Some((id, in_sync, last))
        };
        let Some((leader, in_sync, last)) = chosen else {
            return;
        };
        let record = Leadership {
            epoch: newest_epoch.saturating_add(1),
            leader: Some(leader),
            in_sync,
        };
        info!(
            source = leader,
            last = ?last,
            %record,
            "rebuilding the catalog from the order log of the replica that holds every acknowledged order"
        );
        rebuild.source = Some((leader, record));
        rebuild.retry_at = Some(now);
        self.rebuild_tick();
    }

    /// A page of the source replica's log: replayed onto the seed; the rebuild ends at its
    /// last entry.
    fn read_page(&mut self, from: ReplicaId, entries: Vec<OrderEntry>, last: Option<LogPosition>) {
        let Mode::Rebuilding(rebuild) = &mut self.mode else {
            return;
        };
        let Some((source, record)) = rebuild.source.clone() else {
            return;
        };
        if from != source {
            return;
        }
        let mut stopped = false;
        for entry in &entries {
            if entry.number < self.book.next_number() {
                continue;
            }
            if let Err(why) = self.book.apply_entry(entry) {
                // An order the stocks cannot take here was never applied, so never
                // acknowledged (the leader acknowledges only what the catalog applied): the
                // rebuild ends before it, and the new leader withdraws it and what follows.
                warn!(number = entry.number, ?why, source, "the source's log goes on with an order the stocks cannot take; the rebuild ends before it");
                stopped = true;
                break;
            }
        }
        let done = stopped
            || last.is_none_or(|last| self.book.next_number() > last.number)
            || entries.is_empty();
        if !done {
            if let Mode::Rebuilding(rebuild) = &mut self.mode {
                rebuild.retry_at = Some(self.now);
            }
            return self.rebuild_tick();
        }
        // Its lookups wait, as after a crash, until the new leader has brought it up to the
        // whole log (the source may have acknowledged entries not yet on its disk).
        let ready = !self.config.rules.holds(Rule::ReplayBeforeServe);
        let forced = match std::mem::replace(&mut self.mode, Mode::Serving { ready }) {
            Mode::Rebuilding(rebuild) => rebuild.forced.map(|(_, token)| token),
            Mode::Serving { .. } => None,
        };
        self.durable_next = self.book.next_number();
        info!(
            source,
            next = self.book.next_number(),
            %record,
            "catalog rebuilt from the order log; serving lookups once the new leader has brought it up to the whole log"
        );
        self.out.push(Command::Snapshot);
        self.lease = Some((record.epoch, self.now));
        self.store_leadership(record, forced);
    }
}

#[cfg(test)]
mod tests;
