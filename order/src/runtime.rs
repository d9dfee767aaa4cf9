//! The replica's runtime, the only part of the order service that does I/O. It feeds the
//! engine ([`crate::engine`]) what happens (requests from the server, answers to its calls,
//! flushes of the group-commit thread, the catalog's leadership record, the clock) and
//! executes the commands the engine gives: writes go to the commit thread in order, while the
//! engine's lock is held (sending on a channel, nothing more); calls and replies go out on
//! tokio after it is released.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use clients::CatalogClient;
use common::engine::{Backoff, IdMap};
use common::server::{self, RequestContext, Service};
use common::sync::lock;
use common::wire::{CatalogResponse, OrderRequest, OrderResponse, RemoteError, Reply, Role};
use durability::group_commit::{self, Committer, Job};
use durability::storage::{Ended, Recovery};
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

use crate::engine::{
    CallError, CallId, CallResult, Command, Engine, Input, Peer, ReplyBody, Request, Time, Token,
    WriteId, MAX_BACKOFF, MIN_BACKOFF,
};
use crate::log::OrderLog;
use crate::metrics::ReplicaMetrics;
use crate::{Error, ReplicaConfig};
use clients::peers::{PeerRequest, Peers};

/// Messages of the catalog's subscription a replica may fall behind by.
const SUBSCRIPTION_BACKLOG: usize = 256;

/// What the engine's lock guards: the engine and the files it commands.
struct Inner {
    engine: Engine,
    log: OrderLog,
    /// The way to the disk; taken at shutdown so the writer drains and stops.
    jobs: Option<Writer>,
    /// Requests waiting for their answer, by token.
    replies: IdMap<oneshot::Sender<Reply<OrderResponse>>>,
    /// Reused for every step.
    commands: Vec<Command>,
    /// The deadline the timer task sleeps until.
    timer_at: Option<Time>,
}

/// Work to do once the lock is released.
enum Effect {
    Call {
        call: CallId,
        to: Peer,
        request: Request,
        timeout: std::time::Duration,
    },
    Reply(oneshot::Sender<Reply<OrderResponse>>, Reply<OrderResponse>),
    Input(Input),
}

/// What became of a request fed to the engine.
enum Outcome {
    /// Answered in this step.
    Replied(Reply<OrderResponse>),
    /// Not yet: the answer comes on the receiver.
    Pending(oneshot::Receiver<Reply<OrderResponse>>),
}

struct Node {
    inner: Mutex<Inner>,
    metrics: ReplicaMetrics,
    peers: Peers,
    origin: Instant,
    /// Wakes the timer task when the engine's next deadline moved earlier.
    timer: Notify,
    next_token: AtomicU64,
}

impl Node {
    fn now(&self) -> Time {
        self.origin.elapsed()
    }

    /// Feeds `input` to the engine and executes its commands. For `own` (the request this
    /// step is made for, if any) its reply is returned rather than sent, or a receiver for it.
    fn step(self: &Arc<Self>, input: Input, own: Option<Token>) -> Option<Outcome> {
        let mut effects = Vec::new();
        let mut mine = None;
        let mut receiver = None;
        {
            let mut guard = lock(&self.inner);
            let now = self.now();
            let Inner {
                engine,
                log,
                jobs,
                replies,
                commands,
                timer_at,
            } = &mut *guard;
            engine.handle(now, input, commands);
            engine.drain_commit_waits(|waited| self.metrics.committed(waited));
            // A follower has nothing to do while its entries reach the disk but wait: it
            // writes them itself, without two hand-overs between threads.
            let at_once = matches!(engine.role(), Role::Follower | Role::Syncing);
            let disk = Disk {
                writer: jobs.as_ref(),
                at_once,
            };
            for command in commands.drain(..) {
                execute(command, log, &disk, &mut effects, &mut |t, reply| {
                    if Some(t) == own {
                        mine = Some(reply);
                        None
                    } else {
                        replies.remove(&t).map(|sender| (sender, reply))
                    }
                });
            }
            if let (Some(token), None) = (own, &mine) {
                let (sender, waiting) = oneshot::channel();
                replies.insert(token, sender);
                receiver = Some(waiting);
            }
            if common::engine::wakes_timer(*timer_at, engine.next_timer()) {
                self.timer.notify_one();
            }
        }
        self.run_effects(effects);
        match (mine, receiver) {
            (Some(reply), _) => Some(Outcome::Replied(reply)),
            (None, Some(receiver)) => Some(Outcome::Pending(receiver)),
            (None, None) => None,
        }
    }

    fn run_effects(self: &Arc<Self>, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Reply(sender, reply) => {
                    let _ = sender.send(reply);
                }
                Effect::Call {
                    call,
                    to,
                    request,
                    timeout,
                } => {
                    let node = self.clone();
                    tokio::spawn(async move {
                        let answer = node.call(to, request, timeout).await;
                        node.step(Input::Answer { call, answer }, None);
                    });
                }
                Effect::Input(input) => {
                    self.step(input, None);
                }
            }
        }
    }

    async fn call(&self, to: Peer, request: Request, timeout: std::time::Duration) -> CallResult {
        let request = match &request {
            Request::Order(request) => PeerRequest::Order(request),
            Request::Catalog(request) => PeerRequest::Catalog(request),
        };
        self.peers.call(to, request, timeout).await
    }

    /// Answers one request through the engine.
    async fn request(self: &Arc<Self>, request: OrderRequest) -> Reply<OrderResponse> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        match self.step(Input::Request { token, request }, Some(token)) {
            Some(Outcome::Replied(reply)) => reply,
            Some(Outcome::Pending(receiver)) => receiver
                .await
                .unwrap_or_else(|_| Err(RemoteError::unavailable("replica is shutting down"))),
            None => Err(RemoteError::unavailable("replica is shutting down")),
        }
    }

    /// Ticks the engine whenever its next deadline comes.
    async fn keep_time(self: Arc<Self>, shutdown: CancellationToken) {
        let next = || {
            let mut inner = lock(&self.inner);
            let next = inner.engine.next_timer();
            inner.timer_at = next;
            next
        };
        common::engine::keep_time(self.origin, &self.timer, &shutdown, next, || {
            self.step(Input::Tick, None);
        })
        .await;
    }

    /// Follows the catalog's leadership record for as long as the replica runs, and tells the
    /// engine whether the subscription's heartbeats arrive.
    async fn follow_record(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        while !shutdown.is_cancelled() {
            let subscribed = tokio::select! {
                () = shutdown.cancelled() => return,
                subscribed = self.peers.catalog().subscribe(false, SUBSCRIPTION_BACKLOG) => subscribed,
            };
            if let Ok((record, mut stream)) = subscribed {
                backoff.reset();
                self.step(Input::CatalogLink(true), None);
                info!(%record, "following the leadership record");
                self.step(Input::Record(record), None);
                loop {
                    let message = tokio::select! {
                        () = shutdown.cancelled() => return,
                        message = stream.next() => message,
                    };
                    match message {
                        Some(Ok(CatalogResponse::Leadership(record))) => {
                            info!(%record, "leadership record changed");
                            self.step(Input::Record(record), None);
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    }
                }
                self.step(Input::CatalogLink(false), None);
                warn!("lost the catalog's subscription; reconnecting");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff.next_wait()) => {}
            }
        }
    }
}

/// The commit thread's queue, and where a failed write made at once is reported (as the
/// commit thread reports its own).
struct Writer {
    committer: Committer<WriteId>,
    failures: UnboundedSender<Result<WriteId, String>>,
}

/// The way to the disk for one step's writes.
struct Disk<'a> {
    /// `None` once shutting down.
    writer: Option<&'a Writer>,
    /// Appends are written at once when nothing is queued before them.
    at_once: bool,
}

impl Disk<'_> {
    fn queue(&self, job: Job<WriteId>) {
        // Without a queue the replica is shutting down: the write is dropped, and whoever
        // waits for it is answered when the engine goes.
        if let Some(writer) = self.writer {
            let _ = writer.committer.send(job);
        }
    }

    fn append(&self, bytes: Vec<u8>, write: WriteId, effects: &mut Vec<Effect>) {
        let Some(writer) = self.writer else {
            return;
        };
        match self.at_once.then(|| writer.committer.write_now(&bytes)) {
            Some(Some(Ok(()))) => effects.push(Effect::Input(Input::Flushed(write))),
            Some(Some(Err(e))) => {
                error!(error = %e, "order log failed: acknowledging nothing; restarting from the log once the state directory takes writes again");
                let _ = writer
                    .failures
                    .send(Err(format!("order log write failed: {e}")));
            }
            _ => self.queue(Job::Append { bytes, item: write }),
        }
    }
}

/// Executes one command under the engine's lock: writes go to the disk, requests and replies
/// are completed from the log. `reply` routes an answer: it returns the waiting sender when
/// one must be told after the lock is released.
fn execute(
    command: Command,
    log: &mut OrderLog,
    disk: &Disk<'_>,
    effects: &mut Vec<Effect>,
    reply: &mut impl FnMut(
        Token,
        Reply<OrderResponse>,
    ) -> Option<(oneshot::Sender<Reply<OrderResponse>>, Reply<OrderResponse>)>,
) {
    let queue = |job: Job<WriteId>| disk.queue(job);
    match command {
        Command::Append { write, entries } => {
            // A line is some 80 bytes: one allocation for the batch, as a rule.
            let mut bytes = Vec::with_capacity(entries.len() * 96);
            for entry in entries {
                if let Err(e) = log.append(entry, &mut bytes) {
                    error!(error = %e, "the order log refused an append");
                    effects.push(Effect::Input(Input::StorageFailed(e.to_string())));
                    return;
                }
            }
            disk.append(bytes, write, effects);
        }
        Command::Cut {
            write,
            from,
            reason,
        } => match log.cut_from(from, reason) {
            Ok((_, work)) => queue(Job::Maintain {
                work,
                item: Some(write),
            }),
            Err(e) => effects.push(Effect::Input(Input::StorageFailed(e.to_string()))),
        },
        Command::StoreEpoch { write, record } => queue(Job::Maintain {
            work: log.store_epoch(record),
            item: Some(write),
        }),
        Command::Call {
            call,
            to,
            request,
            timeout,
        } => {
            let request = request
                .into_request(|from, count| log.entries(from, count as usize))
                .map_err(|e| e.to_string());
            match request {
                Ok(request) => effects.push(Effect::Call {
                    call,
                    to,
                    request,
                    timeout,
                }),
                Err(e) => {
                    error!(error = %e, "cannot read entries to replicate");
                    effects.push(Effect::Input(Input::Answer {
                        call,
                        answer: Err(CallError::Failed(e)),
                    }));
                }
            }
        }
        Command::Reply { token, body } => {
            let answer = body.complete(&mut |body| match body {
                ReplyBody::Entries {
                    from,
                    start,
                    count,
                    leader_last,
                } => log
                    .entries(start, count as usize)
                    .map(|entries| OrderResponse::Entries {
                        from,
                        entries,
                        leader_last,
                    })
                    .map_err(|e| RemoteError::unavailable(e.to_string())),
                ReplyBody::Log { start, count, last } => log
                    .entries(start, count as usize)
                    .map(|entries| OrderResponse::Log {
                        entries,
                        last,
                        set_aside: log.set_aside(),
                    })
                    .map_err(|e| RemoteError::unavailable(e.to_string())),
                ReplyBody::Order { number } => match log.get(number) {
                    Ok(Some(entry)) => Ok(OrderResponse::Order(entry)),
                    Ok(None) => Ok(OrderResponse::OrderNotFound),
                    Err(e) => Err(RemoteError::unavailable(e.to_string())),
                },
                ReplyBody::Ready(answer) => answer,
                ReplyBody::Batch(_) => Err(RemoteError::unavailable("a batch within a batch")),
            });
            if let Some((sender, answer)) = reply(token, answer) {
                effects.push(Effect::Reply(sender, answer));
            }
        }
    }
}

/// The replica as a [`Service`].
struct ReplicaService(Arc<Node>);

impl Service for ReplicaService {
    type Request = OrderRequest;
    type Response = OrderResponse;

    async fn call(&self, request: OrderRequest, _context: RequestContext) -> Reply<OrderResponse> {
        self.0.metrics.request(&request);
        if let OrderRequest::Batch(requests) = &request {
            let debug = tracing::enabled!(tracing::Level::DEBUG);
            let placing: Vec<Option<&common::wire::TradeRequest>> = requests
                .iter()
                .map(|r| match r {
                    OrderRequest::PlaceOrder(order) => Some(order),
                    _ => None,
                })
                .collect();
            if debug {
                for order in placing.iter().flatten() {
                    // Named by its request id, as at the front end and the catalog.
                    tracing::debug_span!("place", request = %order.request_id).in_scope(|| {
                        tracing::debug!(stock = %order.name, quantity = order.quantity, "placing")
                    });
                }
            }
            let ids: Vec<Option<common::wire::RequestId>> = placing
                .iter()
                .map(|o| o.map(|o| o.request_id.clone()))
                .collect();
            let started = Instant::now();
            let reply = self.0.request(request).await;
            if let Ok(OrderResponse::Batch(answers)) = &reply {
                let took = started.elapsed().as_secs_f64();
                for (id, answer) in ids.iter().zip(answers) {
                    let Some(id) = id else { continue };
                    if let Ok(OrderResponse::Placed { number, epoch }) = answer {
                        self.0.metrics.place_seconds.observe(took);
                        if debug {
                            tracing::debug_span!("place", request = %id)
                                .in_scope(|| tracing::debug!(number, epoch, "placed"));
                        }
                    } else if debug {
                        tracing::debug_span!("place", request = %id)
                            .in_scope(|| tracing::debug!(?answer, "not placed"));
                    }
                }
            }
            return reply;
        }
        if let OrderRequest::PlaceOrder(order) = &request {
            // Named by its request id, as at the front end and the catalog.
            let span = tracing::info_span!("place", request = %order.request_id);
            span.in_scope(
                || tracing::debug!(stock = %order.name, quantity = order.quantity, "placing"),
            );
            let started = Instant::now();
            let reply = self.0.request(request).instrument(span.clone()).await;
            span.in_scope(|| match &reply {
                Ok(OrderResponse::Placed { number, epoch }) => {
                    tracing::debug!(number, epoch, "placed")
                }
                other => tracing::debug!(answer = ?other, "not placed"),
            });
            if matches!(reply, Ok(OrderResponse::Placed { .. })) {
                self.0
                    .metrics
                    .place_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
            return reply;
        }
        match &request {
            OrderRequest::Replicate {
                epoch,
                leader_id,
                entries,
                ..
            } if tracing::enabled!(tracing::Level::DEBUG) => {
                for entry in entries {
                    tracing::debug_span!("replicated", request = %entry.request_id).in_scope(
                        || {
                            tracing::debug!(
                                number = entry.number,
                                epoch,
                                leader = leader_id,
                                "from the leader"
                            )
                        },
                    );
                }
            }
            _ => {}
        }
        self.0.request(request).await
    }
}

/// Opens the order log in `config.state_dir`, serves order requests on `listener` until
/// `shutdown` fires, then finishes the requests in flight and flushes the log.
///
/// If the order log's disk fails, it acknowledges nothing more and reports why in its status;
/// once the state directory takes writes again it stops the same way and returns
/// [`Ended::RestartFromLog`] (the binary then restarts in place).
pub async fn run(
    listener: TcpListener,
    config: ReplicaConfig,
    shutdown: CancellationToken,
) -> Result<Ended, Error> {
    run_with_metrics(listener, None, config, shutdown).await
}

/// [`run`], serving its metrics on `metrics` too (see [`common::metrics::serve`]).
pub async fn run_with_metrics(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    config: ReplicaConfig,
    shutdown: CancellationToken,
) -> Result<Ended, Error> {
    let recovery = Recovery::new(&shutdown);
    let shutdown = recovery.stop().clone();
    let dir = config.state_dir.clone();
    let (log, file, recovered) = tokio::task::spawn_blocking(move || OrderLog::open(&dir))
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))??;
    let (events, mut flushes) = tokio::sync::mpsc::unbounded_channel::<Result<WriteId, String>>();
    let failures = events.clone();
    let inline_failures = events.clone();
    let counters = ReplicaMetrics::default();
    let (jobs, writer) = group_commit::start(
        &format!("order-{}-log", config.id),
        file,
        counters.log_commit.clone(),
        move |batch: Vec<WriteId>| {
            if let Some(&last) = batch.iter().max() {
                let _ = events.send(Ok(last));
            }
        },
        move |e| {
            error!(error = %e, "order log failed: acknowledging nothing; restarting from the log once the state directory takes writes again");
            let _ = failures.send(Err(format!("order log write failed: {e}")));
        },
    )?;
    let origin = Instant::now();
    info!(
        addr = %listener.local_addr()?,
        id = config.id,
        epoch = recovered.epoch.epoch,
        last = ?recovered.entries.last().map(|e| e.position()),
        "order serving"
    );
    let engine = Engine::new(config.engine(), recovered, origin.elapsed());
    let node = Arc::new(Node {
        inner: Mutex::new(Inner {
            engine,
            log,
            jobs: Some(Writer {
                committer: jobs,
                failures: inline_failures,
            }),
            replies: IdMap::default(),
            commands: Vec::new(),
            timer_at: None,
        }),
        metrics: counters,
        peers: Peers::new(
            &config.peers,
            CatalogClient::new(config.catalog.clone(), config.client.clone()),
            &config.client,
        ),
        origin,
        timer: Notify::new(),
        next_token: AtomicU64::new(1),
    });
    // The commands of the engine's first step (a catch-up with the stored leader).
    node.step(Input::Tick, None);
    // One wake-up per group commit; waiters are woken from inside the runtime.
    let relay = tokio::spawn({
        let node = node.clone();
        let recovery = recovery.clone();
        let dir = config.state_dir.clone();
        async move {
            while let Some(event) = flushes.recv().await {
                match event {
                    Ok(write) => node.step(Input::Flushed(write), None),
                    Err(reason) => {
                        recovery.after_failure(dir.clone());
                        node.step(Input::StorageFailed(reason), None)
                    }
                };
            }
        }
    });
    let timer = tokio::spawn(node.clone().keep_time(shutdown.clone()));
    let follower = tokio::spawn(node.clone().follow_record(shutdown.clone()));
    let exposition = common::metrics::spawn(
        metrics,
        {
            let node = node.clone();
            move |format| {
                let status = lock(&node.inner).engine.status();
                node.metrics.render(&status, format)
            }
        },
        config.server.cluster_token.clone(),
        &shutdown,
    );
    server::serve(
        listener,
        Arc::new(ReplicaService(node.clone())),
        config.server.clone(),
        shutdown,
    )
    .await;

    let _ = follower.await;
    let _ = timer.await;
    if let Some(exposition) = exposition {
        let _ = exposition.await;
    }
    lock(&node.inner).jobs.take();
    let joined = tokio::task::spawn_blocking(move || writer.join()).await;
    if !matches!(joined, Ok(Ok(()))) {
        warn!("order log writer did not stop cleanly");
    }
    let _ = relay.await;
    let ended = recovery.ended();
    match ended {
        Ended::RestartFromLog => info!("order replica stopped to restart from its log"),
        Ended::Stopped => info!("order replica stopped"),
    }
    Ok(ended)
}
