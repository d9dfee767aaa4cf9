//! The replica's protocol as a state machine without I/O, in the manner of openraft's engine:
//! [`Input`]s in (a request, the answer to a call it made, a write flushed, the leadership
//! record, a tick of the clock), [`Command`]s out (append, cut, store the epoch, call a peer,
//! reply). No tokio, no files and no clock inside: the time comes with every input. The
//! runtime ([`crate::runtime`]) executes the commands on tokio, the order log and the network;
//! the simulator executes them on a simulated network and disk.
//!
//! The parts, each in the file named after it: [`term`] (term changes: the leadership record,
//! elections, stepping down), [`leader`] (placing, committing, replicating, the in-sync set,
//! reconciliation with the catalog), [`feed`] (the leader's link to the catalog: its copy of
//! the stocks, the entries and refusals it has the catalog apply, withdrawal under a new
//! epoch), [`catch_up`] (the follower: `Replicate`, epoch confirmation, `SyncUp`),
//! [`log_index`] (the log's shape), and here the inputs, commands, durability accounting and
//! queries they share.

pub mod catch_up;
pub mod feed;
pub mod leader;
pub mod log_index;
pub mod term;

use std::collections::VecDeque;
use std::time::Duration;

use common::engine::IdMap;
use common::safety::{Rule, Rules};
use common::wire::{
    ApplyItem, CatalogRequest, Epoch, LogEnd, LogPosition, OrderEntry, OrderRequest, OrderResponse,
    RemoteError, ReplicaId, ReplicaStatus, Reply, RequestId, Role, TradeRequest, TransactionNumber,
    READ_LOG_MAX,
};
pub use common::wire::{MAX_BATCH as MAX_REQUESTS, MAX_KNOWN};
use durability::waiters::DurableWaiters;
use durability::window::RecentWindow;

use crate::log::EpochRecord;
use crate::replication::WriteQuorum;

use catch_up::CatchUp;
use feed::Learned;
use leader::Leading;
pub use log_index::{LogIndex, Placed};

pub use common::engine::{Answer, CallError, CallId, CallResult, Peer, Time, Token, WriteId};

/// Most entries in one `Replicate`, `SyncUp` answer or `Apply` (well under the frame limit).
pub const MAX_BATCH: u64 = common::wire::MAX_BATCH as u64;
/// Tokens from here on name the requests of a `Batch`, which the engine answers together.
const ITEM_TOKENS: Token = 1 << 62;
/// Shortest and longest wait before retrying a follower or the leader.
pub const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// See [`MIN_BACKOFF`].
pub const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// Longest a request waits for the local disk before it is answered `Unavailable`.
pub const DURABILITY_TIMEOUT: Duration = Duration::from_secs(30);
/// Above this many waiting orders, those already answered are pruned.
const PRUNE_COMMITTING_ABOVE: usize = 10_000;
/// Requests whose outcome the catalog's answers taught a leader (see [`feed::Learned`]).
const LEARNED_WINDOW: usize = 100_000;

/// What happens to the engine.
#[derive(Debug, Clone)]
pub enum Input {
    /// A request from a peer or a front end, to be answered with [`Command::Reply`].
    Request {
        /// Echoed by the reply.
        token: Token,
        /// The request.
        request: OrderRequest,
    },
    /// What became of a [`Command::Call`]; every call gets exactly one.
    Answer {
        /// The call.
        call: CallId,
        /// Its answer, or why there is none.
        answer: CallResult,
    },
    /// The catalog's leadership record, pushed on the subscription or read.
    Record(common::wire::Leadership),
    /// Whether the subscription to the catalog is up (its heartbeats arrive).
    CatalogLink(bool),
    /// Every write up to this one is on disk.
    Flushed(WriteId),
    /// The log cannot be written; nothing queued will become durable.
    StorageFailed(String),
    /// The clock moved; the engine acts on whatever is due.
    Tick,
}

/// What the engine asks the runtime to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Append `entries` to the log, after every write before; report `write` once flushed.
    Append {
        /// Reported by [`Input::Flushed`].
        write: WriteId,
        /// Consecutive entries that follow the log.
        entries: Vec<OrderEntry>,
    },
    /// Set aside every entry from `from` on (a side file), then cut them off the log.
    Cut {
        /// Reported by [`Input::Flushed`].
        write: WriteId,
        /// The first entry set aside.
        from: TransactionNumber,
        /// Why, for the side file and the log.
        reason: String,
    },
    /// Store the epoch record, atomically, after every write before.
    StoreEpoch {
        /// Reported by [`Input::Flushed`].
        write: WriteId,
        /// The record.
        record: EpochRecord,
    },
    /// Send a request; its answer (or failure) comes back as [`Input::Answer`].
    Call {
        /// Echoed by the answer.
        call: CallId,
        /// Who.
        to: Peer,
        /// What.
        request: Outgoing,
        /// How long to wait for the answer.
        timeout: Duration,
    },
    /// Answer a request.
    Reply {
        /// The request's token.
        token: Token,
        /// The answer.
        body: ReplyBody,
    },
}

/// A request to send. `Replicate` names its entries by number: the runtime reads them from
/// the log it keeps.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// To a replica, as it is.
    Order(OrderRequest),
    /// `OrderRequest::Replicate` with the `count` entries from `from` on.
    Replicate {
        /// The leader's epoch.
        epoch: Epoch,
        /// The leader.
        leader_id: ReplicaId,
        /// The entry before `from`.
        prev: Option<LogPosition>,
        /// How many times the leader set entries aside in its term.
        cuts: u32,
        /// First entry to send.
        from: TransactionNumber,
        /// How many.
        count: u64,
    },
    /// To the catalog.
    Catalog(CatalogRequest),
    /// `CatalogRequest::Apply` with the entries and refusals `parts` name, in order.
    Apply {
        /// The leader's epoch.
        epoch: Epoch,
        /// Where its log ends.
        log: Option<LogEnd>,
        /// What to send.
        parts: Vec<ApplyPart>,
    },
}

/// Part of an [`Outgoing::Apply`].
#[derive(Debug, Clone, PartialEq)]
pub enum ApplyPart {
    /// The `count` entries of the log from `from` on.
    Entries {
        /// First entry.
        from: TransactionNumber,
        /// How many.
        count: u64,
    },
    /// A refusal, right before entry `before`.
    Refuse {
        /// Where it goes.
        before: TransactionNumber,
        /// The trade.
        trade: TradeRequest,
    },
}

/// What an [`Outgoing`] becomes once the entries it names are read: the request to send.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// To a replica.
    Order(OrderRequest),
    /// To the catalog.
    Catalog(CatalogRequest),
}

impl Outgoing {
    /// The request to send, with `entries(from, count)` reading the entries a `Replicate`
    /// names (each runtime from its own log).
    pub fn into_request<E>(
        self,
        mut entries: impl FnMut(TransactionNumber, u64) -> Result<Vec<OrderEntry>, E>,
    ) -> Result<Request, E> {
        Ok(match self {
            Outgoing::Order(request) => Request::Order(request),
            Outgoing::Catalog(request) => Request::Catalog(request),
            Outgoing::Replicate {
                epoch,
                leader_id,
                prev,
                cuts,
                from,
                count,
            } => Request::Order(OrderRequest::Replicate {
                epoch,
                leader_id,
                prev,
                entries: entries(from, count)?,
                cuts,
            }),
            Outgoing::Apply { epoch, log, parts } => {
                let mut items = Vec::new();
                for part in parts {
                    match part {
                        ApplyPart::Entries { from, count } => {
                            items.extend(entries(from, count)?.into_iter().map(ApplyItem::Entry))
                        }
                        ApplyPart::Refuse { before, trade } => {
                            items.push(ApplyItem::Refuse { before, trade })
                        }
                    }
                }
                Request::Catalog(CatalogRequest::Apply { epoch, items, log })
            }
        })
    }
}

/// An answer, which the runtime may have to complete from the log.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyBody {
    /// Complete as it is.
    Ready(Reply<OrderResponse>),
    /// `OrderResponse::Entries` with the `count` entries from `start` on.
    Entries {
        /// Where the logs meet.
        from: Option<LogPosition>,
        /// First entry to send.
        start: TransactionNumber,
        /// How many.
        count: u64,
        /// The leader's last entry.
        leader_last: Option<LogPosition>,
    },
    /// `OrderResponse::Order` with entry `number` (`OrderNotFound` if the log lacks it).
    Order {
        /// The entry.
        number: TransactionNumber,
    },
    /// `OrderResponse::Log` with the `count` durable entries from `start` on.
    Log {
        /// First entry to send.
        start: TransactionNumber,
        /// How many.
        count: u64,
        /// The last durable entry.
        last: Option<LogPosition>,
    },
    /// `OrderResponse::Batch`: the answers of a batch's requests, in order.
    Batch(Vec<ReplyBody>),
}

impl ReplyBody {
    /// The answer, with `complete` reading what the log must supply (each runtime from its
    /// own log).
    pub fn complete(
        self,
        complete: &mut impl FnMut(ReplyBody) -> Reply<OrderResponse>,
    ) -> Reply<OrderResponse> {
        match self {
            ReplyBody::Ready(answer) => answer,
            ReplyBody::Batch(bodies) => Ok(OrderResponse::Batch(
                bodies
                    .into_iter()
                    .map(|body| body.complete(complete))
                    .collect(),
            )),
            other => complete(other),
        }
    }
}

/// A `Batch` being answered: one slot per request.
#[derive(Debug)]
struct BatchReply {
    bodies: Vec<Option<ReplyBody>>,
    missing: usize,
}

/// The engine's settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This replica.
    pub id: ReplicaId,
    /// The other replicas.
    pub peers: Vec<ReplicaId>,
    /// When an order counts as committed.
    pub write_quorum: WriteQuorum,
    /// How long a follower has to answer a `Replicate`.
    pub replicate_timeout: Duration,
    /// How long an order waits for its quorum before `Unavailable`.
    pub commit_timeout: Duration,
    /// How long other calls (catalog, sync-up) may take.
    pub call_timeout: Duration,
    /// Recent request ids remembered.
    pub dedup_window: usize,
    /// The safety rules (all of them, but in the simulator's mutation runs).
    pub rules: Rules,
}

impl EngineConfig {
    /// The smallest in-sync set a leader may shrink to.
    pub fn min_in_sync(&self) -> usize {
        self.write_quorum.min_in_sync(self.peers.len() + 1)
    }
}

/// What a replica recovered from its disk.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// The log's entries, in order.
    pub entries: Vec<OrderEntry>,
    /// The stored epoch record.
    pub epoch: EpochRecord,
    /// Entries set aside in earlier lives.
    pub set_aside: u64,
}

/// What the engine does in its current term.
#[derive(Debug)]
enum State {
    /// No leader it may follow or lead.
    Idle,
    /// Fetching what it lacks from the leader.
    Syncing(CatchUp),
    /// Caught up, following the leader.
    Following,
    /// Leading.
    Leading(Box<Leading>),
}

/// A write on its way to disk.
#[derive(Debug, Clone, Copy)]
enum Write {
    Append(TransactionNumber),
    Cut(TransactionNumber),
    Epoch(EpochRecord),
}

/// What an outstanding call is for.
#[derive(Debug)]
enum Pending {
    /// Entries and refusals for the catalog to apply.
    Apply { term: u64 },
    /// A page of the stocks' levels.
    Levels { term: u64 },
    /// A new epoch of this leader's own.
    Renew { term: u64 },
    /// A batch to a follower.
    Replicate { term: u64, peer: ReplicaId },
    /// A change of the in-sync set.
    InSync { term: u64 },
    /// A reconciliation round.
    Reconcile { term: u64 },
    /// A follower's sync-up request.
    SyncUp { term: u64 },
    /// A `Replicate` from a newer epoch, waiting for the catalog to confirm it.
    Confirm {
        token: Token,
        replication: catch_up::Replication,
    },
}

/// One order replica's protocol state.
#[derive(Debug)]
pub struct Engine {
    id: ReplicaId,
    config: EngineConfig,
    now: Time,
    log: LogIndex,
    /// Writes queued and not yet flushed, oldest first.
    writes: VecDeque<(WriteId, Write)>,
    next_write: WriteId,
    /// Cuts among `writes`.
    pending_cuts: usize,
    /// The last entry the log file holds (some may since have been cut from the index).
    on_disk: Option<TransactionNumber>,
    /// The newest entry of the index that is on disk.
    durable: Option<TransactionNumber>,
    /// The epoch record on disk.
    stored: EpochRecord,
    /// Why the log cannot be written, once it cannot.
    failed: Option<String>,
    catalog_link: bool,
    epoch: Epoch,
    leader: Option<ReplicaId>,
    /// Bumped at every change of role or term; calls of an older term are ignored.
    term: u64,
    state: State,
    calls: IdMap<Pending>,
    next_call: CallId,
    /// Follower: `Replicate` answers waiting for their entries to reach the disk.
    durable_waiters: DurableWaiters<LogPosition>,
    /// Follower: the newest entry it confirmed to the leader of this term (a `Replicate` that
    /// fit its log); a sync-up answer given before does not set it aside.
    confirmed: Option<TransactionNumber>,
    /// Follower: how many times the leader of its epoch set entries aside, as far as its
    /// messages showed.
    leader_cuts: u32,
    /// Entries set aside, by earlier lives too.
    set_aside: u64,
    /// Catch-ups begun since it started.
    catch_ups: u64,
    /// What the catalog's answers taught this replica of requests, kept across its terms.
    learned: RecentWindow<RequestId, Learned>,
    /// `Batch` requests being answered, by token.
    batches: IdMap<BatchReply>,
    /// The batch and slot of each token of a batch's request.
    items: IdMap<(Token, usize)>,
    next_item: Token,
    out: Vec<Command>,
}

/// Most commit waits the engine keeps for its runtime between two reads.
pub const MAX_COMMIT_SAMPLES: usize = 4096;

impl Engine {
    /// A replica that recovered `recovered` from its disk, at time `now`. One that knew another
    /// leader before it stopped catches up with it at once; one that led waits for a new
    /// election. The catalog's record decides from then on.
    pub fn new(config: EngineConfig, recovered: Recovered, now: Time) -> Self {
        let mut log = LogIndex::new(config.dedup_window);
        for entry in &recovered.entries {
            log.append(entry);
        }
        let durable = log.last().map(|p| p.number);
        let mut engine = Engine {
            id: config.id,
            now,
            log,
            writes: VecDeque::new(),
            next_write: 1,
            pending_cuts: 0,
            on_disk: durable,
            durable,
            stored: recovered.epoch,
            failed: None,
            catalog_link: false,
            epoch: recovered.epoch.epoch,
            leader: recovered.epoch.leader,
            term: 0,
            state: State::Idle,
            calls: IdMap::default(),
            next_call: 1,
            durable_waiters: DurableWaiters::default(),
            confirmed: None,
            leader_cuts: 0,
            set_aside: recovered.set_aside,
            catch_ups: 0,
            learned: RecentWindow::new(LEARNED_WINDOW),
            batches: IdMap::default(),
            items: IdMap::default(),
            next_item: ITEM_TOKENS,
            out: Vec::new(),
            config,
        };
        if let Some(leader) = recovered.epoch.leader {
            if leader != engine.id && engine.knows(leader) {
                engine.adopt(recovered.epoch.epoch, leader, &[]);
            }
        }
        engine
    }

    /// Handles one input at time `now`, appending the commands it gives to `out`.
    pub fn handle(&mut self, now: Time, input: Input, out: &mut Vec<Command>) {
        self.now = self.now.max(now);
        match input {
            Input::Request { token, request } => self.request(token, request),
            Input::Answer { call, answer } => self.answer(call, answer),
            Input::Record(record) => self.observe_record(&record),
            Input::CatalogLink(up) => {
                self.catalog_link = up;
                if !up {
                    self.catalog_lost();
                }
            }
            Input::Flushed(write) => self.flushed(write),
            Input::StorageFailed(reason) => self.storage_failed(reason),
            Input::Tick => self.tick(),
        }
        // The orders this input placed are appended and go to the followers, then to the
        // catalog (off the commit's path: it answers sooner than a follower's disk), together.
        self.place_fresh();
        self.send_feed();
        out.append(&mut self.out);
    }

    /// The earliest time at which the engine has something to do ([`Input::Tick`]).
    pub fn next_timer(&mut self) -> Option<Time> {
        let mut next = self.durable_waiters.earliest();
        let mut consider = |at: Option<Time>| {
            if let Some(at) = at {
                next = Some(next.map_or(at, |n: Time| n.min(at)));
            }
        };
        match &mut self.state {
            State::Leading(leading) => consider(leading.next_timer()),
            State::Syncing(catch_up) => consider(catch_up.retry_at),
            State::Idle | State::Following => {}
        }
        next
    }

    /// This replica's id.
    pub fn id(&self) -> ReplicaId {
        self.id
    }

    /// What it is doing.
    pub fn role(&self) -> Role {
        match self.state {
            State::Idle => Role::Idle,
            State::Syncing(_) => Role::Syncing,
            State::Following => Role::Follower,
            State::Leading(_) => Role::Leader,
        }
    }

    /// The highest epoch it has seen.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The log's shape.
    pub fn log(&self) -> &LogIndex {
        &self.log
    }

    /// The newest entry on disk.
    pub fn durable(&self) -> Option<TransactionNumber> {
        self.durable
    }

    /// Leader only: it acts for its epoch (replicates, reconciles), its epoch being stored.
    pub fn in_office(&self) -> bool {
        matches!(&self.state, State::Leading(leading) if leading.in_office)
    }

    /// Leader only: the newest committed entry of this term.
    pub fn commit(&self) -> Option<TransactionNumber> {
        match &self.state {
            State::Leading(leading) => leading.commit,
            _ => None,
        }
    }

    /// Leader only: the in-sync set it waits for.
    pub fn in_sync(&self) -> Option<&[ReplicaId]> {
        match &self.state {
            State::Leading(leading) => Some(&leading.in_sync),
            _ => None,
        }
    }

    /// Leader: hands `each` the time every order committed since the last call waited for
    /// its commit.
    pub fn drain_commit_waits(&mut self, each: impl FnMut(Duration)) {
        if let State::Leading(leading) = &mut self.state {
            leading.commit_waits.drain(..).for_each(each);
        }
    }

    /// Its answer to `Status`.
    pub fn status(&self) -> ReplicaStatus {
        let (placing, stalled) = match &self.state {
            State::Leading(leading) => (
                leading.in_office
                    && leading.reconcile.reconciled
                    && leading.feed.levels.is_some()
                    && !leading.feed.withdrawing,
                self.stalled(leading),
            ),
            _ => (false, false),
        };
        let (commit, in_sync, followers) = match &self.state {
            State::Leading(leading) => (
                leading.commit,
                leading.in_sync.clone(),
                leading.lags(self.log.last().map(|p| p.number), self.now),
            ),
            _ => (None, Vec::new(), Vec::new()),
        };
        ReplicaStatus {
            id: self.id,
            role: self.role(),
            epoch: self.epoch,
            leader_id: self.leader,
            last: self.durable.and_then(|n| self.log.position(n)),
            catalog_link: self.catalog_link,
            placing,
            stalled,
            storage_failure: self.failed.clone(),
            commit,
            in_sync,
            followers,
            set_aside: self.set_aside,
            catch_ups: self.catch_ups,
        }
    }

    fn knows(&self, id: ReplicaId) -> bool {
        self.config.peers.contains(&id)
    }

    fn reply(&mut self, token: Token, reply: Reply<OrderResponse>) {
        self.respond(token, ReplyBody::Ready(reply));
    }

    /// Answers `token`: a request of its own, or one of a batch (which is answered once
    /// each of its requests is).
    fn respond(&mut self, token: Token, body: ReplyBody) {
        let Some((batch, slot)) = self.items.remove(&token) else {
            return self.out.push(Command::Reply { token, body });
        };
        let Some(reply) = self.batches.get_mut(&batch) else {
            return;
        };
        if let Some(empty @ None) = reply.bodies.get_mut(slot) {
            *empty = Some(body);
            reply.missing -= 1;
        }
        if reply.missing == 0 {
            if let Some(reply) = self.batches.remove(&batch) {
                let bodies = reply.bodies.into_iter().flatten().collect();
                self.out.push(Command::Reply {
                    token: batch,
                    body: ReplyBody::Batch(bodies),
                });
            }
        }
    }

    /// Answers each request of a batch in turn; the batch is answered once all are.
    fn batch(&mut self, token: Token, requests: Vec<OrderRequest>) {
        if requests.len() > MAX_REQUESTS
            || requests.iter().any(|r| matches!(r, OrderRequest::Batch(_)))
        {
            let why = format!("a batch holds at most {MAX_REQUESTS} requests, none a batch");
            return self.reply(token, Err(RemoteError::bad_request(why)));
        }
        self.batches.insert(
            token,
            BatchReply {
                bodies: requests.iter().map(|_| None).collect(),
                missing: requests.len(),
            },
        );
        if requests.is_empty() {
            self.batches.remove(&token);
            return self.respond(token, ReplyBody::Batch(Vec::new()));
        }
        for (slot, request) in requests.into_iter().enumerate() {
            let item = self.next_item;
            self.next_item += 1;
            self.items.insert(item, (token, slot));
            self.request(item, request);
        }
    }

    fn call(&mut self, to: Peer, request: Outgoing, timeout: Duration, pending: Pending) -> CallId {
        let call = self.next_call;
        self.next_call += 1;
        self.calls.insert(call, pending);
        self.out.push(Command::Call {
            call,
            to,
            request,
            timeout,
        });
        call
    }

    fn not_leader(&self) -> OrderResponse {
        OrderResponse::NotLeader {
            epoch: self.epoch,
            leader_id: self.leader,
        }
    }

    fn write(&mut self, write: Write) -> WriteId {
        let id = self.next_write;
        self.next_write += 1;
        self.writes.push_back((id, write));
        id
    }

    /// Appends `entries` (which follow the log) and queues them for the disk.
    fn append(&mut self, entries: Vec<OrderEntry>) -> Result<(), RemoteError> {
        if let Some(reason) = &self.failed {
            return Err(RemoteError::unavailable(format!(
                "order log failed: {reason}"
            )));
        }
        let Some(last) = entries.last().map(|e| e.number) else {
            return Ok(());
        };
        // All or nothing: entries that follow the log in number, their epochs never going back.
        let mut check = self.log.positions().clone();
        if let Some(entry) = entries.iter().find(|e| !check.append(e.position())) {
            return Err(RemoteError::unavailable(format!(
                "entry {} of epoch {} does not follow the log (next is {}, last {:?})",
                entry.number,
                entry.epoch,
                self.log.next_number(),
                self.log.last()
            )));
        }
        let was_idle = self.nothing_waiting();
        for entry in &entries {
            self.log.append(entry);
        }
        let write = self.write(Write::Append(last));
        self.out.push(Command::Append { write, entries });
        self.recompute_durable();
        self.after_append(was_idle);
        if !self.config.rules.holds(Rule::DurableBeforeAck) {
            self.answer_durable_waiters();
            self.after_durable();
        }
        Ok(())
    }

    /// Sets aside every entry from `from` on.
    fn cut_from(&mut self, from: TransactionNumber, reason: &str) {
        if from >= self.log.next_number() {
            return;
        }
        self.set_aside += self.log.next_number() - from;
        self.log.cut_from(from);
        self.confirmed = self.confirmed.min(from.checked_sub(1));
        let write = self.write(Write::Cut(from));
        self.pending_cuts += 1;
        self.recompute_durable();
        self.out.push(Command::Cut {
            write,
            from,
            reason: reason.to_owned(),
        });
    }

    fn store_epoch(&mut self, record: EpochRecord) {
        let write = self.write(Write::Epoch(record));
        self.out.push(Command::StoreEpoch { write, record });
    }

    /// The newest entry of the index that is on disk: what the file holds, short of any cut
    /// still on its way (the file may hold entries the index has already replaced).
    fn recompute_durable(&mut self) {
        if !self.config.rules.holds(Rule::DurableBeforeAck) {
            // Broken on purpose (simulator only): every appended entry counts as on disk.
            self.durable = self.log.last().map(|p| p.number);
            return;
        }
        let mut durable = self.on_disk.min(self.log.last().map(|p| p.number));
        if self.pending_cuts > 0 {
            for (_, write) in &self.writes {
                if let Write::Cut(from) = write {
                    durable = durable.min(from.checked_sub(1));
                }
            }
        }
        self.durable = durable;
    }

    fn flushed(&mut self, through: WriteId) {
        let mut epoch_stored = false;
        while let Some(&(id, write)) = self.writes.front() {
            if id > through {
                break;
            }
            self.writes.pop_front();
            match write {
                Write::Append(last) => self.on_disk = self.on_disk.max(Some(last)),
                Write::Cut(from) => {
                    self.on_disk = self.on_disk.min(from.checked_sub(1));
                    self.pending_cuts -= 1;
                }
                Write::Epoch(record) => {
                    self.stored = record;
                    epoch_stored = true;
                }
            }
        }
        self.recompute_durable();
        if self.failed.is_some() {
            return;
        }
        if epoch_stored {
            self.take_office();
        }
        self.answer_durable_waiters();
        self.after_durable();
    }

    /// Something reached the disk: commits move, a catch-up may finish.
    fn after_durable(&mut self) {
        match &self.state {
            State::Leading(_) => self.advance_commit(),
            State::Syncing(_) => self.finish_catch_up(),
            State::Idle | State::Following => {}
        }
    }

    fn storage_failed(&mut self, reason: String) {
        if self.failed.is_some() {
            return;
        }
        self.failed = Some(reason.clone());
        self.writes.clear();
        self.pending_cuts = 0;
        let answer = Err(RemoteError::unavailable(format!(
            "order log failed: {reason}"
        )));
        for token in self.durable_waiters.drain() {
            self.reply(token, answer.clone());
        }
        self.fail_waiting(answer);
    }

    /// Answers the `Replicate`s whose entries are now on disk, if they are still the ones
    /// the leader sent (a later cut may have replaced them: then the leader learns where this
    /// log stands instead).
    fn answer_durable_waiters(&mut self) {
        let Some(durable) = self.durable else {
            return;
        };
        for (token, position) in self.durable_waiters.durable_through(durable) {
            let answer = if self.log.position(position.number) == Some(position) {
                OrderResponse::Replicated {
                    last: Some(position),
                }
            } else {
                OrderResponse::Behind {
                    last: self.log.last(),
                }
            };
            self.reply(token, Ok(answer));
        }
    }

    /// Answers `Replicated` once `position` is on disk.
    fn reply_when_durable(&mut self, token: Token, position: LogPosition) {
        if self.durable >= Some(position.number) {
            self.reply(
                token,
                Ok(OrderResponse::Replicated {
                    last: Some(position),
                }),
            );
            return;
        }
        let deadline = self.now + DURABILITY_TIMEOUT;
        self.durable_waiters
            .wait(token, position.number, position, deadline);
    }

    fn tick(&mut self) {
        for token in self.durable_waiters.expired(self.now) {
            self.reply(
                token,
                Err(RemoteError::unavailable("order log is not keeping up")),
            );
        }
        match &self.state {
            State::Leading(_) => self.leader_tick(),
            State::Syncing(_) => self.catch_up_tick(),
            State::Idle | State::Following => {}
        }
    }

    fn request(&mut self, token: Token, request: OrderRequest) {
        match request {
            OrderRequest::PlaceOrder(order) => self.place(token, order),
            OrderRequest::GetOrder { number } => self.get_order(token, number),
            OrderRequest::Status => {
                let status = self.status();
                self.reply(token, Ok(OrderResponse::Status(status)));
            }
            OrderRequest::Replicate {
                epoch,
                leader_id,
                prev,
                entries,
                cuts,
            } => self.replicate(
                token,
                catch_up::Replication {
                    epoch,
                    leader: leader_id,
                    prev,
                    entries,
                    cuts,
                },
            ),
            OrderRequest::SyncUp {
                epoch,
                follower_id,
                known,
            } => self.sync_up(token, epoch, follower_id, &known),
            OrderRequest::ReadLog { from, max } => {
                let end = self.durable.map_or(0, |n| n + 1);
                let count = end
                    .saturating_sub(from)
                    .min(u64::from(max.min(READ_LOG_MAX)));
                let last = self.durable.and_then(|n| self.log.position(n));
                self.respond(
                    token,
                    ReplyBody::Log {
                        start: from,
                        count,
                        last,
                    },
                );
            }
            OrderRequest::Batch(requests) => self.batch(token, requests),
        }
    }

    fn answer(&mut self, call: CallId, answer: CallResult) {
        let Some(pending) = self.calls.remove(&call) else {
            return;
        };
        match pending {
            Pending::Apply { term } if term == self.term => self.applied_by_catalog(answer),
            Pending::Levels { term } if term == self.term => self.levels_read(answer),
            Pending::Renew { term } if term == self.term => self.renewed(answer),
            Pending::Replicate { term, peer } if term == self.term => self.replicated(peer, answer),
            Pending::InSync { term } if term == self.term => self.in_sync_changed(answer),
            Pending::Reconcile { term } if term == self.term => self.reconciled(answer),
            Pending::SyncUp { term } if term == self.term => self.synced(answer),
            Pending::Confirm { token, replication } => self.confirmed(token, replication, answer),
            Pending::Replicate { .. }
            | Pending::Apply { .. }
            | Pending::Levels { .. }
            | Pending::Renew { .. }
            | Pending::InSync { .. }
            | Pending::Reconcile { .. }
            | Pending::SyncUp { .. } => {}
        }
    }

    /// One recorded order, if this replica may show it: a leader shows committed orders, a
    /// follower what is on its disk.
    fn get_order(&mut self, token: Token, number: TransactionNumber) {
        let visible = match &self.state {
            State::Leading(leading) => {
                if Some(number) > leading.commit && number < self.log.next_number() {
                    // Recorded but not yet on every in-sync replica: not final until then.
                    let answer = Err(RemoteError::unavailable(format!(
                        "order {number} is not committed yet"
                    )));
                    return self.reply(token, answer);
                }
                leading.commit
            }
            State::Following => self.durable,
            State::Syncing(_) | State::Idle => {
                let answer = Err(RemoteError::unavailable(
                    "replica is not caught up with a leader",
                ));
                return self.reply(token, answer);
            }
        };
        if Some(number) > visible {
            return self.reply(token, Ok(OrderResponse::OrderNotFound));
        }
        self.respond(token, ReplyBody::Order { number });
    }
}

/// Refuses entries that claim an epoch newer than the leader sending them: no leader can
/// hold such an entry, so it is forged or corrupt, and is never stored.
fn beyond_epoch(
    epoch: Epoch,
    prev: Option<LogPosition>,
    entries: &[OrderEntry],
) -> Result<(), RemoteError> {
    let newest = entries
        .iter()
        .map(|e| e.epoch)
        .chain(prev.map(|p| p.epoch))
        .max();
    match newest {
        Some(newest) if newest > epoch => {
            tracing::warn!(
                epoch,
                newest,
                "refused entries from an epoch newer than their leader's"
            );
            Err(RemoteError::bad_request(format!(
                "entries of epoch {newest} cannot come from a leader of epoch {epoch}"
            )))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod testing;
