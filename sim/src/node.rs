//! The simulated processes: each runs a real engine (the catalog's, a replica's, a front
//! end's router) and executes its commands the way its runtime does, but on the simulated
//! disk and network: writes go to a [`Disk`], calls and replies become messages. A client
//! places orders through a front end and retries each under its own id until it gets a
//! definite answer.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::time::Duration;

use catalog::book::{Book, Stock};
use catalog::engine::{self as catalog_engine, CatalogEngine};
use common::engine::{Answer, CallError, CallId, CallResult, Peer, Token};
use common::safety::Rules;
use common::wire::{
    CatalogRequest, Leadership, OrderEntry, OrderRequest, OrderResponse, ReplicaId, Reply,
    RequestId, Role, StockName, TradeKind, TradeRejection, TradeRequest,
};
use frontend::router::{self, OrderError, Router, RouterConfig};
use order::engine::{self as replica_engine, Engine, EngineConfig, ReplyBody};

use crate::check::{Checker, Order};
use crate::disk::{Disk, Failed, Files};
use crate::plan::{Proc, CATALOG};
use crate::rng::Rng;

/// A request carried by the network.
#[derive(Debug, Clone)]
pub enum Request {
    /// To a replica.
    Order(OrderRequest),
    /// To the catalog.
    Catalog(CatalogRequest),
    /// To the catalog: open a subscription stream on this connection.
    Subscribe,
    /// From a client to a front end.
    Front(OrderRequest),
}

/// An answer carried back.
#[derive(Debug, Clone)]
pub enum Returned {
    /// To an engine's call.
    Engine(CallResult),
    /// To a client.
    Front(Result<OrderResponse, OrderError>),
    /// The subscription is open: pushes follow on `stream`.
    Subscribed {
        /// The stream's id.
        stream: u64,
        /// The record as it is.
        record: Leadership,
    },
}

/// A message the catalog pushes on a subscription stream.
#[derive(Debug, Clone)]
pub enum Push {
    /// The leadership record changed.
    Record(Leadership),
    /// The catalog is alive.
    Heartbeat,
}

/// What a process asks the world to do.
#[derive(Debug)]
pub enum Action {
    /// Send a call; its answer (or failure) comes back to the process.
    Call {
        /// Whom.
        to: Proc,
        /// The call's id, unique within the process's life.
        call: CallId,
        /// What.
        request: Request,
        /// How long the caller waits (its own clock).
        timeout: Duration,
    },
    /// Answer a call.
    Return {
        /// The caller.
        to: Proc,
        /// The caller's incarnation.
        inc: u32,
        /// The caller's call.
        call: CallId,
        /// The answer.
        answer: Returned,
    },
    /// Push on a subscription stream.
    Push {
        /// The subscriber.
        to: Proc,
        /// Its incarnation.
        inc: u32,
        /// The stream.
        stream: u64,
        /// What.
        push: Push,
    },
    /// The disk has writes and no flush running: start one.
    Flush,
}

/// Who sent a request being answered.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The process.
    pub from: Proc,
    /// Its incarnation.
    pub inc: u32,
    /// Its call.
    pub call: CallId,
}

/// What a process's handler works with.
pub struct Ctx<'a> {
    /// Simulated time.
    pub now: Duration,
    /// The process's own clock.
    pub local: Duration,
    /// What to do next.
    pub actions: &'a mut Vec<Action>,
    /// The invariants.
    pub checker: &'a mut Checker,
    /// The world's randomness (disk crashes).
    pub rng: &'a mut Rng,
    /// Stream ids, unique in the run.
    pub next_stream: &'a mut u64,
    /// Whether faults are still being injected.
    pub faulty: bool,
}

fn proc_of(peer: Peer) -> Proc {
    match peer {
        Peer::Catalog => CATALOG,
        Peer::Replica(id) => id as usize,
    }
}

fn call_result(reply: Reply<OrderResponse>) -> CallResult {
    reply.map(Answer::Order).map_err(CallError::Remote)
}

/// How often the catalog sends heartbeats, and how long a subscriber waits without one.
pub const HEARTBEAT: Duration = Duration::from_millis(200);
const SILENCE: Duration = Duration::from_millis(600);
const RESUBSCRIBE: Duration = Duration::from_millis(50);

/// A subscriber's end of the catalog's stream.
#[derive(Debug, Default)]
pub struct Link {
    stream: Option<u64>,
    last_heard: Duration,
    /// Asking to subscribe: the call.
    subscribing: Option<CallId>,
    retry_at: Duration,
    /// Records pushed on a stream before its opening answer arrived, as the real client
    /// keeps them: a record pushed then is newer than the one in the answer.
    early: BTreeMap<u64, Leadership>,
}

impl Link {
    fn next_timer(&self) -> Duration {
        match (self.stream, self.subscribing) {
            (Some(_), _) => self.last_heard + SILENCE,
            (None, Some(_)) => Duration::MAX,
            (None, None) => self.retry_at,
        }
    }

    /// Whether the stream is up.
    pub fn up(&self) -> bool {
        self.stream.is_some()
    }

    /// Checks for silence and resubscribes; true if the link just went down.
    fn tick(&mut self, ctx: &mut Ctx<'_>, next_call: &mut CallId) -> bool {
        let mut went_down = false;
        if self.stream.is_some() && ctx.local >= self.last_heard + SILENCE {
            self.stream = None;
            self.retry_at = ctx.local;
            went_down = true;
        }
        if self.stream.is_none() && self.subscribing.is_none() && ctx.local >= self.retry_at {
            let call = *next_call;
            *next_call += 1;
            self.subscribing = Some(call);
            ctx.actions.push(Action::Call {
                to: CATALOG,
                call,
                request: Request::Subscribe,
                timeout: Duration::from_secs(1),
            });
        }
        went_down
    }

    /// A push arrived; true if it belongs to the live stream.
    fn heard(&mut self, stream: u64, push: &Push, local: Duration) -> bool {
        if self.stream == Some(stream) {
            self.last_heard = local;
            return true;
        }
        if let (Some(_), Push::Record(record)) = (self.subscribing, push) {
            let newest = self.early.entry(stream).or_insert_with(|| record.clone());
            if record.epoch >= newest.epoch {
                *newest = record.clone();
            }
        }
        false
    }

    fn closed(&mut self, stream: u64, local: Duration) -> bool {
        if self.stream == Some(stream) {
            self.stream = None;
            self.retry_at = local;
            true
        } else {
            false
        }
    }

    /// The answer to a subscribe call, if `call` was one: the record when it opened.
    fn answered(
        &mut self,
        call: CallId,
        answer: &Returned,
        local: Duration,
    ) -> Option<Option<Leadership>> {
        if self.subscribing != Some(call) {
            return None;
        }
        self.subscribing = None;
        let early = std::mem::take(&mut self.early);
        match answer {
            Returned::Subscribed { stream, record } => {
                self.stream = Some(*stream);
                self.last_heard = local;
                let newest = match early.get(stream) {
                    Some(pushed) if pushed.epoch >= record.epoch => pushed.clone(),
                    _ => record.clone(),
                };
                Some(Some(newest))
            }
            _ => {
                self.retry_at = local + RESUBSCRIBE;
                Some(None)
            }
        }
    }
}

/// A write of a replica's files.
#[derive(Debug)]
pub enum ReplicaWrite {
    /// Lines appended to `orders.log`.
    Append(Vec<u8>),
    /// `orders.log` cut at this byte offset.
    Cut(u64),
    /// The `epoch` file replaced.
    Epoch(String),
}

/// A replica's files on its disk.
#[derive(Debug, Default, Clone)]
pub struct ReplicaFiles {
    /// `orders.log`.
    pub log: Vec<u8>,
    /// `epoch`.
    pub epoch: Option<String>,
}

/// A replica: its engine and the log its runtime keeps.
pub struct ReplicaNode {
    /// Its id.
    pub id: ReplicaId,
    config: EngineConfig,
    /// The engine.
    pub engine: Engine,
    /// The log, as the runtime's `OrderLog` holds it.
    pub log: Vec<OrderEntry>,
    offsets: Vec<u64>,
    end: u64,
    ids: HashMap<RequestId, u64>,
    /// What is on its disk.
    pub files: ReplicaFiles,
    /// Writes on their way.
    pub disk: Disk<ReplicaWrite>,
    /// Its subscription to the catalog.
    pub link: Link,
    /// Requests being answered, with the request id of each order placed (one per request of
    /// a batch), so that each `Placed` answer can be checked.
    inbound: HashMap<Token, (Caller, Vec<Option<RequestId>>)>,
    next_token: Token,
    next_call: CallId,
    commands: Vec<replica_engine::Command>,
    leading: bool,
    /// It took the lead since the world last looked.
    pub took_lead: bool,
    /// Which life of the process this is (the world counts restarts).
    pub incarnation: u32,
    in_office: bool,
    /// Trades it sent to the catalog since the world last looked.
    pub traded: u32,
    /// Its storage failed: it waits to restart from its log.
    pub storage_failed: bool,
}

impl ReplicaNode {
    /// A replica starting from `files` (repairing a torn tail as the real one does).
    pub fn start(
        config: EngineConfig,
        mut files: ReplicaFiles,
        local: Duration,
    ) -> Result<Self, String> {
        let (entries, intact) = order::log::read_entries_from(&files.log[..], "orders.log")
            .map_err(|e| e.to_string())?;
        files.log.truncate(intact as usize);
        let epoch = match &files.epoch {
            Some(text) => order::log::parse_epoch(text).map_err(|e| e.to_string())?,
            None => Default::default(),
        };
        let mut offsets = Vec::with_capacity(entries.len());
        let mut end = 0u64;
        let mut ids = HashMap::new();
        for entry in &entries {
            offsets.push(end);
            end += order::log::format_line(entry).len() as u64;
            ids.insert(entry.request_id.clone(), entry.number);
        }
        let engine = Engine::new(
            config.clone(),
            replica_engine::Recovered {
                entries: entries.clone(),
                epoch,
                ..Default::default()
            },
            local,
        );
        Ok(ReplicaNode {
            id: config.id,
            config,
            engine,
            log: entries,
            offsets,
            end,
            ids,
            files,
            disk: Disk::default(),
            link: Link::default(),
            inbound: HashMap::new(),
            next_token: 1,
            next_call: 1 << 40,
            commands: Vec::new(),
            leading: false,
            took_lead: false,
            incarnation: 0,
            in_office: false,
            traded: 0,
            storage_failed: false,
        })
    }

    /// The engine's next deadline and the link's, on the replica's clock.
    pub fn next_timer(&mut self) -> Option<Duration> {
        let link = self.link.next_timer();
        Some(self.engine.next_timer().map_or(link, |t| t.min(link)))
    }

    /// Feeds the engine and executes its commands.
    pub fn feed(&mut self, ctx: &mut Ctx<'_>, input: replica_engine::Input) {
        self.engine.handle(ctx.local, input, &mut self.commands);
        let commands = std::mem::take(&mut self.commands);
        for command in commands {
            self.execute(ctx, command);
        }
        if self.engine.log().next_number() != self.log.len() as u64 {
            let detail = format!(
                "replica {}: the engine's index has {} entries, the log {}",
                self.id,
                self.engine.log().next_number(),
                self.log.len()
            );
            ctx.checker.internal(ctx.now, detail);
        }
        let leading = self.engine.role() == Role::Leader;
        if leading {
            // Leading counts once it acts (its epoch stored): a record may name a replica for
            // an epoch it never acted in, and a catalog rebuilt from the replicas may name
            // another for that epoch (it counts on from the newest epoch they stored).
            if self.engine.in_office() {
                ctx.checker.leads(ctx.now, self.engine.epoch(), self.id);
            }
            if !self.leading {
                ctx.checker
                    .new_leader(ctx.now, self.id, self.engine.epoch(), &self.log);
                self.took_lead = true;
            }
            if self.engine.in_office() && !self.in_office {
                ctx.checker
                    .took_office(ctx.now, self.id, self.incarnation, self.engine.epoch());
            }
        }
        self.leading = leading;
        self.in_office = self.engine.in_office();
    }

    fn execute(&mut self, ctx: &mut Ctx<'_>, command: replica_engine::Command) {
        use replica_engine::Command;
        match command {
            Command::Append { write, entries } => {
                let mut bytes = Vec::new();
                for entry in entries {
                    if let Some(&other) = self.ids.get(&entry.request_id) {
                        ctx.checker.recorded_twice(ctx.now, self.id, &entry, other);
                    }
                    ctx.checker.positioned(ctx.now, self.id, &entry);
                    let line = order::log::format_line(&entry);
                    self.offsets.push(self.end);
                    self.end += line.len() as u64;
                    bytes.extend_from_slice(line.as_bytes());
                    self.ids.insert(entry.request_id.clone(), entry.number);
                    self.log.push(entry);
                }
                if self.disk.push(Some(write), ReplicaWrite::Append(bytes)) {
                    ctx.actions.push(Action::Flush);
                }
            }
            Command::Cut { write, from, .. } => {
                let at = from as usize;
                let offset = self.offsets.get(at).copied().unwrap_or(self.end);
                self.log.truncate(at);
                self.offsets.truncate(at);
                self.end = offset;
                self.ids.retain(|_, &mut number| number < from);
                if self.disk.push(Some(write), ReplicaWrite::Cut(offset)) {
                    ctx.actions.push(Action::Flush);
                }
            }
            Command::StoreEpoch { write, record } => {
                let text = order::log::epoch_text(record);
                if self.disk.push(Some(write), ReplicaWrite::Epoch(text)) {
                    ctx.actions.push(Action::Flush);
                }
            }
            Command::Call {
                call,
                to,
                request,
                timeout,
                ..
            } => {
                let ready = request
                    .into_request(|from, count| Ok::<_, Infallible>(self.entries(from, count)));
                let request = match ready {
                    Ok(replica_engine::Request::Order(request)) => Request::Order(request),
                    Ok(replica_engine::Request::Catalog(request)) => {
                        self.traded += u32::from(matches!(request, CatalogRequest::Apply { .. }));
                        Request::Catalog(request)
                    }
                    Err(never) => match never {},
                };
                ctx.actions.push(Action::Call {
                    to: proc_of(to),
                    call,
                    request,
                    timeout,
                });
            }
            Command::Reply { token, body } => {
                let reply = body.complete(&mut |body| match body {
                    ReplyBody::Entries {
                        from,
                        start,
                        count,
                        leader_last,
                    } => Ok(OrderResponse::Entries {
                        from,
                        entries: self.entries(start, count),
                        leader_last,
                    }),
                    ReplyBody::Order { number } => Ok(match self.log.get(number as usize) {
                        Some(entry) => OrderResponse::Order(entry.clone()),
                        None => OrderResponse::OrderNotFound,
                    }),
                    // No simulated client audits; set-aside suffixes are not kept.
                    ReplyBody::Log { start, count, last } => Ok(OrderResponse::Log {
                        entries: self.entries(start, count),
                        last,
                        set_aside: 0,
                    }),
                    ReplyBody::Ready(reply) => reply,
                    ReplyBody::Batch(_) => Err(common::wire::RemoteError::bad_request("nested")),
                });
                let Some((caller, placing)) = self.inbound.remove(&token) else {
                    return;
                };
                let answers: Vec<&Reply<OrderResponse>> = match &reply {
                    Ok(OrderResponse::Batch(answers)) => answers.iter().collect(),
                    single => vec![single],
                };
                for (request_id, answer) in placing.iter().zip(answers) {
                    let (Some(request_id), Ok(OrderResponse::Placed { number, .. })) =
                        (request_id, answer)
                    else {
                        continue;
                    };
                    match self.log.get(*number as usize) {
                        Some(entry) if entry.request_id == *request_id => ctx.checker.acknowledged(
                            ctx.now,
                            self.id,
                            self.engine.epoch(),
                            *number,
                            entry,
                        ),
                        _ => ctx
                            .checker
                            .misnumbered(ctx.now, self.id, *number, request_id),
                    }
                }
                ctx.actions.push(Action::Return {
                    to: caller.from,
                    inc: caller.inc,
                    call: caller.call,
                    answer: Returned::Engine(call_result(reply)),
                });
            }
        }
    }

    fn entries(&self, from: u64, count: u64) -> Vec<OrderEntry> {
        let start = (from as usize).min(self.log.len());
        let end = (from.saturating_add(count) as usize).min(self.log.len());
        self.log[start..end].to_vec()
    }

    /// A request from a peer.
    pub fn request(&mut self, ctx: &mut Ctx<'_>, caller: Caller, request: Request) {
        let Request::Order(request) = request else {
            ctx.actions.push(Action::Return {
                to: caller.from,
                inc: caller.inc,
                call: caller.call,
                answer: Returned::Engine(Err(CallError::Failed("not a replica request".into()))),
            });
            return;
        };
        let token = self.next_token;
        self.next_token += 1;
        let placed = |request: &OrderRequest| match request {
            OrderRequest::PlaceOrder(order) => Some(order.request_id.clone()),
            _ => None,
        };
        let placing = match &request {
            OrderRequest::Batch(requests) => requests.iter().map(placed).collect(),
            single => vec![placed(single)],
        };
        self.inbound.insert(token, (caller, placing));
        self.feed(ctx, replica_engine::Input::Request { token, request });
    }

    /// The answer to one of its calls.
    pub fn answer(&mut self, ctx: &mut Ctx<'_>, call: CallId, answer: Returned) {
        if let Some(opened) = self.link.answered(call, &answer, ctx.local) {
            if let Some(record) = opened {
                self.feed(ctx, replica_engine::Input::CatalogLink(true));
                self.feed(ctx, replica_engine::Input::Record(record));
            }
            return;
        }
        if let Returned::Engine(answer) = answer {
            self.feed(ctx, replica_engine::Input::Answer { call, answer });
        }
    }

    /// A push of the catalog.
    pub fn push(&mut self, ctx: &mut Ctx<'_>, stream: u64, push: Push) {
        if !self.link.heard(stream, &push, ctx.local) {
            return;
        }
        if let Push::Record(record) = push {
            self.feed(ctx, replica_engine::Input::Record(record));
        }
    }

    /// The catalog closed its stream.
    pub fn closed(&mut self, ctx: &mut Ctx<'_>, stream: u64) {
        if self.link.closed(stream, ctx.local) {
            self.feed(ctx, replica_engine::Input::CatalogLink(false));
        }
    }

    /// The clock reached its deadline.
    pub fn tick(&mut self, ctx: &mut Ctx<'_>) {
        if self.link.tick(ctx, &mut self.next_call) {
            self.feed(ctx, replica_engine::Input::CatalogLink(false));
        }
        self.feed(ctx, replica_engine::Input::Tick);
    }

    /// The flush running completed (or failed: the disk is full).
    pub fn flushed(&mut self, ctx: &mut Ctx<'_>) {
        match self.disk.finish(&mut self.files) {
            Err(Failed) => {
                self.storage_failed = true;
                let reason = "No space left on device".to_owned();
                return self.feed(ctx, replica_engine::Input::StorageFailed(reason));
            }
            Ok(Some(last)) => self.feed(ctx, replica_engine::Input::Flushed(last)),
            Ok(None) => {}
        }
        if self.disk.busy() {
            ctx.actions.push(Action::Flush);
        }
    }

    /// SIGKILL: what of the flush running reached the disk stays, the rest is lost.
    pub fn crash(&mut self, rng: &mut Rng) -> ReplicaFiles {
        let mut files = std::mem::take(&mut self.files);
        self.disk.crash(rng, &mut files);
        files
    }

    /// Its settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }
}

impl Files for ReplicaFiles {
    type Write = ReplicaWrite;

    fn apply(&mut self, write: ReplicaWrite) {
        match write {
            ReplicaWrite::Append(bytes) => self.log.extend_from_slice(&bytes),
            ReplicaWrite::Cut(offset) => self.log.truncate(offset as usize),
            ReplicaWrite::Epoch(text) => self.epoch = Some(text),
        }
    }

    fn append_len(write: &ReplicaWrite) -> Option<usize> {
        match write {
            ReplicaWrite::Append(bytes) => Some(bytes.len()),
            _ => None,
        }
    }

    fn torn(&mut self, write: ReplicaWrite, len: usize) {
        if let ReplicaWrite::Append(bytes) = write {
            self.log.extend_from_slice(&bytes[..len]);
        }
    }
}

/// A write of the catalog's files.
#[derive(Debug)]
pub enum CatalogWrite {
    /// A record appended to `wal.log`.
    Append(Vec<u8>),
    /// An fsync of what was written.
    Sync,
    /// The `leadership` file replaced.
    Leadership(Vec<u8>),
    /// The snapshot replaced and the log emptied.
    Snapshot(Vec<u8>),
}

/// The catalog's files on its disk.
#[derive(Debug, Default, Clone)]
pub struct CatalogFiles {
    /// `incarnation`: how many times a catalog started on them.
    pub incarnation: u64,
    /// `snapshot.bin`.
    pub snapshot: Vec<u8>,
    /// `wal.log`.
    pub wal: Vec<u8>,
    /// `leadership`.
    pub leadership: Option<Vec<u8>>,
}

struct Subscriber {
    proc: Proc,
    inc: u32,
    stream: u64,
}

/// The catalog: its engine, its files and its subscribers.
pub struct CatalogNode {
    /// The engine.
    pub engine: CatalogEngine,
    /// What is on its disk.
    pub files: CatalogFiles,
    /// Writes on their way.
    pub disk: Disk<CatalogWrite>,
    subscribers: Vec<Subscriber>,
    inbound: HashMap<Token, Caller>,
    next_token: Token,
    commands: Vec<catalog_engine::Command>,
    snapshot_every: u64,
    snapshot_at: u64,
    heartbeat_at: Duration,
    /// Its storage failed: it waits to restart from its log.
    pub storage_failed: bool,
    /// It answered a refusal it remembers since the world last looked.
    pub refusal_answered: bool,
}

/// The catalog's lease length, as the real default.
pub const LEASE: Duration = Duration::from_millis(800);
/// Recent request ids the catalog and the replicas remember.
pub const WINDOW: usize = 100_000;

impl CatalogNode {
    /// The catalog starting from `files` (empty: a new cluster or a lost disk, and the
    /// stocks are `seed`'s until it knows which).
    pub fn start(
        mut files: CatalogFiles,
        seed: &[Stock],
        rules: Rules,
        snapshot_every: u64,
        local: Duration,
    ) -> Result<Self, String> {
        let (book, origin) = if files.snapshot.is_empty() {
            (
                Book::new(seed.to_vec(), WINDOW),
                catalog_engine::Origin::Empty,
            )
        } else {
            let recovered = catalog::store::recover(
                &files.snapshot,
                files.leadership.as_deref(),
                &files.wal,
                WINDOW,
            )
            .map_err(|e| e.to_string())?;
            files.wal.truncate(recovered.intact);
            let origin = if recovered.clean {
                catalog_engine::Origin::Clean
            } else {
                catalog_engine::Origin::Recovered
            };
            (recovered.book, origin)
        };
        let snapshot_at = book.next_number() + snapshot_every;
        // Raised and on disk before it serves, as the real store does.
        files.incarnation += 1;
        let config = catalog_engine::EngineConfig {
            lease_length: LEASE,
            replicas: (1..=crate::plan::REPLICAS as ReplicaId).collect(),
            call_timeout: Duration::from_secs(1),
            incarnation: files.incarnation,
            rules,
        };
        Ok(CatalogNode {
            engine: CatalogEngine::new(book, origin, config, local),
            files,
            disk: Disk::default(),
            subscribers: Vec::new(),
            inbound: HashMap::new(),
            next_token: 1,
            commands: Vec::new(),
            snapshot_every,
            snapshot_at,
            heartbeat_at: local,
            storage_failed: false,
            refusal_answered: false,
        })
    }

    /// Its next deadline, on its clock.
    pub fn next_timer(&mut self) -> Option<Duration> {
        let heartbeat = self.heartbeat_at;
        Some(
            self.engine
                .next_timer()
                .map_or(heartbeat, |t| t.min(heartbeat)),
        )
    }

    fn feed(&mut self, ctx: &mut Ctx<'_>, input: catalog_engine::Input) {
        use catalog_engine::Command;
        let before = self.engine.book().next_number();
        self.engine.handle(ctx.local, input, &mut self.commands);
        // Every trade its history gained (by an `Apply`, or a rebuild from a replica's log).
        let after = self.engine.book().next_number();
        if after > before {
            let (entries, _) = self
                .engine
                .book()
                .entries_after(before.checked_sub(1), (after - before) as usize);
            for entry in entries.iter().filter(|e| e.number >= before) {
                ctx.checker.catalog_applied(entry);
            }
        }
        let commands = std::mem::take(&mut self.commands);
        for command in commands {
            match command {
                Command::Append {
                    write,
                    record,
                    sync,
                } => match catalog::store::encode_record(&record) {
                    Ok(bytes) if sync => {
                        if let catalog::book::LogRecord::Refused(refusal) = &record {
                            ctx.checker.catalog_refused(refusal.request_id.clone());
                        }
                        if self.disk.push(Some(write), CatalogWrite::Append(bytes)) {
                            ctx.actions.push(Action::Flush);
                        }
                    }
                    Ok(bytes) => self
                        .disk
                        .push_deferred(Some(write), CatalogWrite::Append(bytes)),
                    Err(e) => ctx.checker.internal(ctx.now, e.to_string()),
                },
                Command::Sync { write } => {
                    if self.disk.push(Some(write), CatalogWrite::Sync) {
                        ctx.actions.push(Action::Flush);
                    }
                }
                Command::Call {
                    call,
                    to,
                    request,
                    timeout,
                } => ctx.actions.push(Action::Call {
                    to: to as Proc,
                    call,
                    request: Request::Order(request),
                    timeout,
                }),
                Command::StoreLeadership { write, record } => {
                    match catalog::store::encode_leadership(&record) {
                        Ok(bytes) => {
                            if self.disk.push(Some(write), CatalogWrite::Leadership(bytes)) {
                                ctx.actions.push(Action::Flush);
                            }
                        }
                        Err(e) => ctx.checker.internal(ctx.now, e.to_string()),
                    }
                }
                Command::Reply { token, reply } => {
                    if let Ok(common::wire::CatalogResponse::Applied { outcomes, .. }) = &reply {
                        self.refusal_answered |= outcomes.iter().any(|o| {
                            matches!(
                                o,
                                common::wire::ApplyOutcome::Refused(
                                    TradeRejection::NotEnoughStock { .. }
                                        | TradeRejection::Overflow
                                )
                            )
                        });
                    }
                    if let Some(caller) = self.inbound.remove(&token) {
                        ctx.actions.push(Action::Return {
                            to: caller.from,
                            inc: caller.inc,
                            call: caller.call,
                            answer: Returned::Engine(
                                reply.map(Answer::Catalog).map_err(CallError::Remote),
                            ),
                        });
                    }
                }
                Command::Publish(record) => {
                    for sub in &self.subscribers {
                        ctx.actions.push(Action::Push {
                            to: sub.proc,
                            inc: sub.inc,
                            stream: sub.stream,
                            push: Push::Record(record.clone()),
                        });
                    }
                }
                // The front ends' caches are not simulated.
                Command::Invalidate { .. } => {}
                Command::Snapshot => self.snapshot(ctx),
            }
        }
        if self.engine.durable_next() >= self.snapshot_at && !self.storage_failed {
            self.snapshot_at = self.engine.durable_next() + self.snapshot_every;
            self.snapshot(ctx);
        }
    }

    fn snapshot(&mut self, ctx: &mut Ctx<'_>) {
        if self.engine.rebuilding() {
            return;
        }
        match catalog::store::encode_snapshot(&self.engine.book().snapshot(false)) {
            Ok(bytes) => {
                if self.disk.push(None, CatalogWrite::Snapshot(bytes)) {
                    ctx.actions.push(Action::Flush);
                }
            }
            Err(e) => ctx.checker.internal(ctx.now, e.to_string()),
        }
    }

    /// A request; a subscription is kept here, the rest goes to the engine.
    pub fn request(&mut self, ctx: &mut Ctx<'_>, caller: Caller, request: Request) {
        match request {
            Request::Subscribe if self.engine.rebuilding() => ctx.actions.push(Action::Return {
                to: caller.from,
                inc: caller.inc,
                call: caller.call,
                answer: Returned::Engine(Err(CallError::Remote(
                    common::wire::RemoteError::unavailable("rebuilding"),
                ))),
            }),
            Request::Subscribe => {
                *ctx.next_stream += 1;
                let stream = *ctx.next_stream;
                self.subscribers.retain(|s| s.proc != caller.from);
                self.subscribers.push(Subscriber {
                    proc: caller.from,
                    inc: caller.inc,
                    stream,
                });
                ctx.actions.push(Action::Return {
                    to: caller.from,
                    inc: caller.inc,
                    call: caller.call,
                    answer: Returned::Subscribed {
                        stream,
                        record: self.engine.published().clone(),
                    },
                });
            }
            Request::Catalog(request) => {
                let token = self.next_token;
                self.next_token += 1;
                self.inbound.insert(token, caller);
                // The entries an `Apply` brings, to see which the catalog applied.
                let (epoch, entries) = match &request {
                    CatalogRequest::Apply { epoch, items, .. } => (
                        *epoch,
                        items
                            .iter()
                            .filter_map(|item| match item {
                                common::wire::ApplyItem::Entry(entry) => Some(entry.clone()),
                                common::wire::ApplyItem::Refuse { .. } => None,
                            })
                            .collect(),
                    ),
                    _ => (0, Vec::new()),
                };
                let record = self.engine.book().leadership().clone();
                let before = self.engine.book().next_number();
                self.feed(ctx, catalog_engine::Input::Request { token, request });
                let history = self.engine.book().history();
                let applied: Vec<&OrderEntry> = entries
                    .iter()
                    .filter(|e| {
                        e.number >= before && history.position(e.number) == Some(e.position())
                    })
                    .collect();
                if let Some(first) = applied.first() {
                    if record.leader.is_none() || record.epoch != epoch {
                        ctx.checker
                            .deposed_traded(ctx.now, epoch, &first.request_id, &record);
                    }
                }
            }
            Request::Order(_) | Request::Front(_) => ctx.actions.push(Action::Return {
                to: caller.from,
                inc: caller.inc,
                call: caller.call,
                answer: Returned::Engine(Err(CallError::Failed("not a catalog request".into()))),
            }),
        }
    }

    /// The answer to one of its calls (to a replica, while rebuilding).
    pub fn answer(&mut self, ctx: &mut Ctx<'_>, call: CallId, answer: Returned) {
        if let Returned::Engine(answer) = answer {
            self.feed(ctx, catalog_engine::Input::Answer { call, answer });
        }
    }

    /// A stream could not deliver: the subscriber is dropped.
    pub fn drop_stream(&mut self, stream: u64) {
        self.subscribers.retain(|s| s.stream != stream);
    }

    /// The subscribers' streams, to close when the catalog dies.
    pub fn streams(&self) -> Vec<(Proc, u32, u64)> {
        self.subscribers
            .iter()
            .map(|s| (s.proc, s.inc, s.stream))
            .collect()
    }

    /// The clock reached its deadline: heartbeats, and requests past theirs.
    pub fn tick(&mut self, ctx: &mut Ctx<'_>) {
        if ctx.local >= self.heartbeat_at {
            self.heartbeat_at = ctx.local + HEARTBEAT;
            for sub in &self.subscribers {
                ctx.actions.push(Action::Push {
                    to: sub.proc,
                    inc: sub.inc,
                    stream: sub.stream,
                    push: Push::Heartbeat,
                });
            }
        }
        self.feed(ctx, catalog_engine::Input::Tick);
    }

    /// The flush running completed (or failed: the disk is full).
    pub fn flushed(&mut self, ctx: &mut Ctx<'_>) {
        match self.disk.finish(&mut self.files) {
            Err(Failed) => {
                self.storage_failed = true;
                let reason = "No space left on device".to_owned();
                return self.feed(ctx, catalog_engine::Input::StorageFailed(reason));
            }
            Ok(Some(last)) => self.feed(ctx, catalog_engine::Input::Flushed(last)),
            Ok(None) => {}
        }
        if self.disk.busy() {
            ctx.actions.push(Action::Flush);
        }
    }

    /// SIGKILL.
    pub fn crash(&mut self, rng: &mut Rng) -> CatalogFiles {
        let mut files = std::mem::take(&mut self.files);
        self.disk.crash(rng, &mut files);
        files
    }
}

impl Files for CatalogFiles {
    type Write = CatalogWrite;

    fn apply(&mut self, write: CatalogWrite) {
        match write {
            CatalogWrite::Append(bytes) => self.wal.extend_from_slice(&bytes),
            CatalogWrite::Sync => {}
            CatalogWrite::Leadership(bytes) => self.leadership = Some(bytes),
            CatalogWrite::Snapshot(bytes) => {
                self.snapshot = bytes;
                self.wal.clear();
            }
        }
    }

    fn append_len(write: &CatalogWrite) -> Option<usize> {
        match write {
            CatalogWrite::Append(bytes) => Some(bytes.len()),
            _ => None,
        }
    }

    fn torn(&mut self, write: CatalogWrite, len: usize) {
        if let CatalogWrite::Append(bytes) = write {
            self.wal.extend_from_slice(&bytes[..len]);
        }
    }
}

/// A front end: its router and its subscription.
pub struct FrontendNode {
    /// The router.
    pub router: Router,
    link: Link,
    /// When the attempts the router queued are flushed (its runtime flushes once the
    /// sessions ready at the same moment have submitted).
    flush_at: Option<Duration>,
    inbound: HashMap<Token, Caller>,
    next_token: Token,
    next_call: CallId,
    commands: Vec<router::Command>,
}

impl FrontendNode {
    /// A front end just started.
    pub fn start(config: RouterConfig, local: Duration) -> Self {
        FrontendNode {
            router: Router::new(config, local),
            link: Link::default(),
            flush_at: None,
            inbound: HashMap::new(),
            next_token: 1,
            next_call: 1 << 40,
            commands: Vec::new(),
        }
    }

    /// Its next deadline, on its clock.
    pub fn next_timer(&self) -> Option<Duration> {
        let link = self.link.next_timer();
        let next = self.router.next_timer().map_or(link, |t| t.min(link));
        Some(self.flush_at.map_or(next, |at| at.min(next)))
    }

    fn feed(&mut self, ctx: &mut Ctx<'_>, input: router::Input) {
        self.router.handle(ctx.local, input, &mut self.commands);
        if self.router.flush_wanted() && self.flush_at.is_none() {
            // Requests that arrive meanwhile share the flush.
            self.flush_at = Some(ctx.local + Duration::from_micros(ctx.rng.range(0, 300)));
        }
        for command in self.commands.drain(..) {
            match command {
                router::Command::Call {
                    call,
                    to,
                    request,
                    timeout,
                    ..
                } => ctx.actions.push(Action::Call {
                    to: proc_of(to),
                    call,
                    request: match request {
                        router::Outgoing::Order(request) => {
                            Request::Order(std::sync::Arc::unwrap_or_clone(request))
                        }
                        router::Outgoing::Catalog(request) => Request::Catalog(request),
                    },
                    timeout,
                }),
                router::Command::Reply { token, reply } => {
                    if let Some(caller) = self.inbound.remove(&token) {
                        ctx.actions.push(Action::Return {
                            to: caller.from,
                            inc: caller.inc,
                            call: caller.call,
                            answer: Returned::Front(reply),
                        });
                    }
                }
            }
        }
    }

    /// A client's request.
    pub fn request(&mut self, ctx: &mut Ctx<'_>, caller: Caller, request: Request) {
        let Request::Front(request) = request else {
            return;
        };
        let token = self.next_token;
        self.next_token += 1;
        self.inbound.insert(token, caller);
        self.feed(ctx, router::Input::Submit { token, request });
    }

    /// The answer to one of its calls.
    pub fn answer(&mut self, ctx: &mut Ctx<'_>, call: CallId, answer: Returned) {
        if let Some(opened) = self.link.answered(call, &answer, ctx.local) {
            if let Some(record) = opened {
                self.feed(ctx, router::Input::Subscribed(record));
            }
            return;
        }
        if let Returned::Engine(answer) = answer {
            self.feed(ctx, router::Input::Answer { call, answer });
        }
    }

    /// A push of the catalog.
    pub fn push(&mut self, ctx: &mut Ctx<'_>, stream: u64, push: Push) {
        if self.link.heard(stream, &push, ctx.local) {
            if let Push::Record(record) = push {
                self.feed(ctx, router::Input::Record(record));
            }
        }
    }

    /// The catalog closed its stream.
    pub fn closed(&mut self, ctx: &mut Ctx<'_>, stream: u64) {
        self.link.closed(stream, ctx.local);
    }

    /// The clock reached its deadline.
    pub fn tick(&mut self, ctx: &mut Ctx<'_>) {
        self.link.tick(ctx, &mut self.next_call);
        self.feed(ctx, router::Input::Tick);
        if self.flush_at.is_some_and(|at| at <= ctx.local) {
            self.flush_at = None;
            self.feed(ctx, router::Input::Flush);
        }
    }
}

/// One order a client is placing, retried under its id until definitely answered.
#[derive(Debug, Clone)]
struct Placing {
    order: TradeRequest,
    tries: u32,
    /// Asked again after a refusal, to see the same answer (as a client that retries under
    /// its idempotency key to learn an outcome does).
    confirming: bool,
}

/// A client: places its orders one at a time through a front end.
pub struct ClientNode {
    n: usize,
    frontends: Vec<Proc>,
    home: usize,
    remaining: u64,
    next_id: u64,
    stocks: Vec<StockName>,
    placing: Option<Placing>,
    call: Option<CallId>,
    next_call: CallId,
    at: Duration,
    rng: Rng,
    /// Longest pause between two orders, µs: the orders spread over the faults.
    pace: u64,
    /// Lookups on their way to the catalog: the stock, and how many orders of it clients had
    /// been told of when it was sent.
    lookups: HashMap<CallId, (StockName, usize)>,
    /// Definite answers it got.
    pub answered: u64,
}

/// How long a client waits for a front end's answer (longer than the front end's deadline).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(8);

impl ClientNode {
    /// Client `n`, placing `orders` orders through `frontends` (the first its home), spread
    /// over about `over`.
    pub fn new(
        n: usize,
        frontends: Vec<Proc>,
        orders: u64,
        over: Duration,
        stocks: Vec<StockName>,
        rng: Rng,
    ) -> Self {
        let home = n % frontends.len().max(1);
        ClientNode {
            n,
            frontends,
            home,
            remaining: orders,
            next_id: 0,
            stocks,
            placing: None,
            call: None,
            next_call: 1,
            at: Duration::ZERO,
            rng,
            pace: 2 * over.as_micros() as u64 / orders.max(1),
            lookups: HashMap::new(),
            answered: 0,
        }
    }

    /// Whether every order got a definite answer.
    pub fn done(&self) -> bool {
        self.remaining == 0 && self.placing.is_none()
    }

    /// The order in progress, if any, for reports.
    pub fn in_progress(&self) -> Option<String> {
        self.placing
            .as_ref()
            .map(|p| format!("{} after {} tries", p.order.request_id, p.tries))
    }

    /// Its next deadline.
    pub fn next_timer(&self) -> Option<Duration> {
        if self.call.is_some() || self.done() {
            None
        } else {
            Some(self.at)
        }
    }

    /// The clock reached its deadline: start or retry an order.
    pub fn tick(&mut self, ctx: &mut Ctx<'_>) {
        if self.call.is_some() || ctx.local < self.at {
            return;
        }
        if self.placing.is_none() {
            if self.remaining == 0 {
                return;
            }
            self.remaining -= 1;
            self.next_id += 1;
            let Some(name) = self.rng.pick(&self.stocks).cloned() else {
                return;
            };
            let kind = if self.rng.chance(600) {
                TradeKind::Buy
            } else {
                TradeKind::Sell
            };
            let id = format!("c{}-{}", self.n, self.next_id);
            let Ok(request_id) = RequestId::new(id) else {
                return;
            };
            self.placing = Some(Placing {
                order: TradeRequest {
                    request_id,
                    name,
                    quantity: self.rng.range(1, 6) as i64,
                    kind,
                },
                tries: 0,
                confirming: false,
            });
        }
        let Some(placing) = &mut self.placing else {
            return;
        };
        placing.tries += 1;
        let stock = placing.order.name.clone();
        let call = self.next_call;
        self.next_call += 1;
        self.call = Some(call);
        let to = self.frontends[self.home % self.frontends.len()];
        ctx.actions.push(Action::Call {
            to,
            call,
            request: Request::Front(OrderRequest::PlaceOrder(placing.order.clone())),
            timeout: CLIENT_TIMEOUT,
        });
        // It looks the stock up as it trades: what it shows must hold every order clients
        // were told of.
        self.look_up(ctx, stock);
    }

    /// Looks `stock` up at the catalog: what it shows must hold every order of it clients
    /// were told of before.
    fn look_up(&mut self, ctx: &mut Ctx<'_>, stock: StockName) {
        let call = self.next_call;
        self.next_call += 1;
        let told = ctx.checker.told_of(&stock);
        self.lookups.insert(call, (stock.clone(), told));
        ctx.actions.push(Action::Call {
            to: CATALOG,
            call,
            request: Request::Catalog(common::wire::CatalogRequest::Lookup { name: stock }),
            timeout: CLIENT_TIMEOUT,
        });
    }

    /// The front end's answer (or the call's failure).
    pub fn answer(&mut self, ctx: &mut Ctx<'_>, call: CallId, answer: Returned) {
        if let Some((stock, told)) = self.lookups.remove(&call) {
            if let Returned::Engine(Ok(Answer::Catalog(common::wire::CatalogResponse::Stock(
                quote,
            )))) = answer
            {
                ctx.checker.looked_up(ctx.now, &stock, told, quote.version);
            }
            return;
        }
        if self.call != Some(call) {
            return;
        }
        self.call = None;
        let Some(placing) = self.placing.clone() else {
            return;
        };
        let order = &placing.order;
        let definite = match answer {
            Returned::Front(Ok(OrderResponse::Placed { number, .. })) => {
                let told = Order {
                    request_id: order.request_id.clone(),
                    name: order.name.clone(),
                    kind: order.kind,
                    quantity: order.quantity.unsigned_abs(),
                };
                ctx.checker.told(ctx.now, number, told);
                self.look_up(ctx, order.name.clone());
                true
            }
            Returned::Front(Ok(OrderResponse::Rejected(TradeRejection::RequestIdReused))) => {
                let detail = format!(
                    "the retry of {} (try {}) was refused as a reused id",
                    order.request_id, placing.tries
                );
                ctx.checker.wrongly_refused(ctx.now, detail);
                true
            }
            Returned::Front(Ok(OrderResponse::Rejected(_))) => {
                ctx.checker.refused(order.request_id.clone());
                if !placing.confirming && self.rng.chance(500) {
                    // Asks again later under the same id: it must be refused again.
                    self.placing = Some(Placing {
                        confirming: true,
                        tries: 0,
                        ..placing.clone()
                    });
                    self.at = ctx.local + Duration::from_micros(self.rng.range(50_000, 800_000));
                    return;
                }
                true
            }
            Returned::Front(Err(OrderError::BadRequest(why))) => {
                let detail = format!("{} was refused as malformed: {why}", order.request_id);
                ctx.checker.wrongly_refused(ctx.now, detail);
                true
            }
            // 503, an unexpected answer, a front end gone or silent: retry the same id,
            // perhaps elsewhere.
            _ => false,
        };
        if definite {
            self.placing = None;
            self.answered += 1;
            self.at = ctx.local + Duration::from_micros(self.rng.range(0, self.pace + 1));
        } else if ctx.faulty && self.rng.chance(250) {
            // It gives up on this order (it may or may not have traded) and goes on.
            self.placing = None;
            self.at = ctx.local + Duration::from_micros(self.rng.range(0, self.pace + 1));
        } else {
            self.look_up(ctx, order.name.clone());
            if self.rng.chance(300) {
                self.home += 1;
            }
            self.at = ctx.local + Duration::from_micros(self.rng.range(20_000, 150_000));
        }
    }
}

/// The engines' settings in the simulator: the real defaults.
pub fn replica_config(
    id: ReplicaId,
    write_quorum: order::WriteQuorum,
    rules: Rules,
) -> EngineConfig {
    EngineConfig {
        id,
        peers: (1..=crate::plan::REPLICAS as ReplicaId)
            .filter(|&p| p != id)
            .collect(),
        write_quorum,
        replicate_timeout: Duration::from_millis(500),
        commit_timeout: Duration::from_secs(5),
        call_timeout: Duration::from_secs(5),
        dedup_window: WINDOW,
        rules,
    }
}

/// The front end's router settings in the simulator: the real defaults.
pub fn router_config(rules: Rules) -> RouterConfig {
    RouterConfig {
        replicas: (1..=crate::plan::REPLICAS as ReplicaId).collect(),
        deadline: Duration::from_secs(5),
        attempt: Duration::from_secs(1),
        health_interval: Duration::from_millis(500),
        rules,
    }
}

/// The stocks the catalog holds, by name: (quantity, volume).
pub fn stocks(engine: &CatalogEngine) -> BTreeMap<StockName, (u64, u64)> {
    engine
        .book()
        .stocks()
        .into_iter()
        .map(|s| (s.name.clone(), (s.quantity, s.volume)))
        .collect()
}
