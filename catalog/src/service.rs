//! The catalog's runtime and its `run` entry point, the only part of the catalog that does
//! I/O: it feeds the engine ([`crate::engine`]) requests, the log's flushes and the answers
//! of the replicas it asks (when it rebuilds a lost state), and executes its commands:
//! appends, syncs and leadership records go to the group-commit thread, answers to the
//! waiting requests, published records and invalidations to the subscribers, calls to the
//! replicas. It also keeps the subscription streams (with their heartbeats) and the
//! snapshots.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clients::ReplicaClient;
use common::engine::{Answer, CallError, IdMap};
use common::server::{self, Push, RequestContext, Service};
use common::sync::lock;
use common::wire::{ApplyItem, CatalogRequest, CatalogResponse, RemoteError, ReplicaId, Reply};
use durability::storage::{Ended, Recovery};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::engine::{CatalogEngine, Command, EngineConfig, Input, Origin, Time, Token};
use crate::metrics::{CatalogMetrics, Counted, State};
use crate::store::{LogEvent, LogWriter, Start, Store};
use crate::{CatalogConfig, Error};

/// What the engine's lock guards.
struct Inner {
    engine: CatalogEngine,
    /// The group-commit queue; taken at shutdown so the writer drains and stops.
    log: Option<LogWriter>,
    /// Requests waiting for their answer, by token.
    replies: IdMap<oneshot::Sender<Reply<CatalogResponse>>>,
    /// Each subscription stream, and whether it wants invalidations (front ends) or only
    /// leadership (replicas).
    subscribers: Vec<(Push, bool)>,
    /// Reused for every step.
    commands: Vec<Command>,
    /// The deadline the timer task sleeps until.
    timer_at: Option<Time>,
    /// The next snapshot is due once this record is durable.
    snapshot_at: u64,
}

impl Inner {
    /// Sends `message` to every stream `wanted` selects, dropping those gone or too slow.
    fn broadcast(&mut self, message: &CatalogResponse, wanted: impl Fn(bool) -> bool) {
        self.subscribers
            .retain(|(push, invalidations)| !wanted(*invalidations) || push.send(message));
    }
}

/// What became of a request fed to the engine.
enum Outcome {
    Replied(Reply<CatalogResponse>),
    Waiting(oneshot::Receiver<Reply<CatalogResponse>>),
}

struct Catalog {
    inner: Arc<Mutex<Inner>>,
    metrics: CatalogMetrics,
    origin: Instant,
    /// Wakes the timer task when the engine's next deadline moved earlier.
    timer: Notify,
    next_token: AtomicU64,
    snapshot_every: u64,
    /// The replicas, asked when the state was lost.
    replicas: BTreeMap<ReplicaId, ReplicaClient>,
}

impl Catalog {
    /// Feeds `input` to the engine and executes its commands; the reply to `own` is returned
    /// rather than sent.
    fn step(self: &Arc<Self>, input: Input, own: Option<Token>) -> Option<Outcome> {
        let mut sends = Vec::new();
        let mut calls = Vec::new();
        let mut invalidated: Vec<(common::wire::StockName, u64)> = Vec::new();
        let mut mine = None;
        let mut waiting = None;
        {
            let mut guard = lock(&self.inner);
            let inner = &mut *guard;
            let now = self.origin.elapsed();
            inner.engine.handle(now, input, &mut inner.commands);
            let mut commands = std::mem::take(&mut inner.commands);
            for command in commands.drain(..) {
                match command {
                    Command::Append {
                        write,
                        record,
                        sync,
                    } => {
                        // Without a queue the catalog is shutting down; what is not on disk
                        // is replayed from the order log at the next start.
                        if let Some(log) = &mut inner.log {
                            let _ = log.append(&record, write, sync);
                        }
                    }
                    Command::Sync { write } => {
                        if let Some(log) = &mut inner.log {
                            let _ = log.sync(write);
                        }
                    }
                    Command::Call {
                        call,
                        to,
                        request,
                        timeout,
                    } => calls.push((call, to, request, timeout)),
                    Command::StoreLeadership { write, record } => {
                        if let Some(log) = &mut inner.log {
                            let _ = log.record_leadership(&record, write);
                        }
                    }
                    Command::Reply { token, reply } => {
                        if Some(token) == own {
                            mine = Some(reply);
                        } else if let Some(sender) = inner.replies.remove(&token) {
                            sends.push((sender, reply));
                        }
                    }
                    Command::Snapshot => self.snapshot(inner),
                    Command::Publish(record) => {
                        inner.broadcast(&CatalogResponse::Leadership(record), |_| true);
                    }
                    Command::Invalidate { name, version } => {
                        // A batch of trades changes a stock many times: its newest version
                        // says it all.
                        match invalidated.iter_mut().find(|(n, _)| *n == name) {
                            Some((_, newest)) => *newest = (*newest).max(version),
                            None => invalidated.push((name, version)),
                        }
                    }
                }
            }
            // Pushed before any reply of this step leaves.
            for (name, version) in invalidated {
                debug!(stock = %name, version, "invalidation pushed");
                let message = CatalogResponse::Invalidate { name, version };
                inner.broadcast(&message, |invalidations| invalidations);
            }
            inner.commands = commands;
            if let (Some(token), None) = (own, &mine) {
                let (sender, receiver) = oneshot::channel();
                inner.replies.insert(token, sender);
                waiting = Some(receiver);
            }
            if inner.engine.durable_next() >= inner.snapshot_at {
                inner.snapshot_at = inner.engine.durable_next() + self.snapshot_every;
                self.snapshot(inner);
            }
            if common::engine::wakes_timer(inner.timer_at, inner.engine.next_timer()) {
                self.timer.notify_one();
            }
        }
        for (sender, reply) in sends {
            let _ = sender.send(reply);
        }
        for (call, to, request, timeout) in calls {
            let catalog = self.clone();
            tokio::spawn(async move {
                let answer = match catalog.replicas.get(&to) {
                    Some(replica) => replica
                        .call_within(&request, timeout)
                        .await
                        .map(Answer::Order)
                        .map_err(CallError::from),
                    None => Err(CallError::Failed(format!("replica {to} is not configured"))),
                };
                catalog.step(Input::Answer { call, answer }, None);
            });
        }
        match (mine, waiting) {
            (Some(reply), _) => Some(Outcome::Replied(reply)),
            (None, Some(receiver)) => Some(Outcome::Waiting(receiver)),
            (None, None) => None,
        }
    }

    /// The metrics exposition, read from the engine and the subscriber list as they are now.
    fn render_metrics(&self, format: common::metrics::Format) -> String {
        let (state, subscribers) = {
            let inner = lock(&self.inner);
            let open = || {
                inner
                    .subscribers
                    .iter()
                    .filter(|(push, _)| !push.is_closed())
            };
            let front_ends = open().filter(|(_, invalidations)| *invalidations).count();
            let engine = &inner.engine;
            let state = State {
                record: engine.published().clone(),
                history_next: engine.book().next_number(),
                durable_next: engine.durable_next(),
                serving: engine.ready(),
                rebuilding: engine.rebuilding(),
                storage_failed: engine.storage_failure().is_some(),
            };
            (state, (front_ends, open().count() - front_ends))
        };
        self.metrics.render(&state, subscribers, format)
    }

    /// Queues a snapshot of the book, taken on the commit thread.
    fn snapshot(&self, inner: &mut Inner) {
        if let Some(log) = &mut inner.log {
            let shared = self.inner.clone();
            let _ = log.snapshot(move || lock(&shared).engine.book().snapshot(false));
        }
    }

    async fn request(self: &Arc<Self>, request: CatalogRequest) -> Reply<CatalogResponse> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        match self.step(Input::Request { token, request }, Some(token)) {
            Some(Outcome::Replied(reply)) => reply,
            Some(Outcome::Waiting(receiver)) => receiver
                .await
                .unwrap_or_else(|_| Err(RemoteError::unavailable("catalog is shutting down"))),
            None => Err(RemoteError::unavailable("catalog is shutting down")),
        }
    }

    fn subscribe(&self, context: &RequestContext, invalidations: bool) -> Reply<CatalogResponse> {
        let mut inner = lock(&self.inner);
        if inner.engine.rebuilding() {
            // No record to follow yet; subscribers ask again until the rebuild is done.
            return Err(RemoteError::unavailable(
                "the catalog is rebuilding a lost state from the replicas",
            ));
        }
        let push = context.push();
        // A connection carries one subscription: a subscriber that gave up on its stream (it
        // heard nothing for too long) and asks again replaces it, so the list stays bounded
        // by the connections.
        inner
            .subscribers
            .retain(|(other, _)| !other.same_connection(&push) && !other.is_closed());
        inner.subscribers.push((push, invalidations));
        info!(peer = %context.peer, invalidations, "subscriber added");
        Ok(CatalogResponse::Subscribed(
            inner.engine.published().clone(),
        ))
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

    /// Sends a heartbeat to every subscriber each `interval`, so that a subscriber that hears
    /// nothing for a few intervals knows the stream is dead (a silent partition, a frozen
    /// catalog) without waiting for TCP.
    async fn heartbeats(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let mut inner = lock(&self.inner);
            let heartbeat = CatalogResponse::Heartbeat {
                storage_failure: inner.engine.storage_failure().map(str::to_owned),
            };
            inner.broadcast(&heartbeat, |_| true);
        }
    }
}

/// The catalog as a [`Service`].
struct CatalogService(Arc<Catalog>);

impl Service for CatalogService {
    type Request = CatalogRequest;
    type Response = CatalogResponse;

    async fn call(
        &self,
        request: CatalogRequest,
        context: RequestContext,
    ) -> Reply<CatalogResponse> {
        match request {
            CatalogRequest::Subscribe { invalidations } => {
                self.0.subscribe(&context, invalidations)
            }
            CatalogRequest::Apply { epoch, items, log } => {
                let count = items.len();
                let debug = tracing::enabled!(tracing::Level::DEBUG);
                let ids: Vec<common::wire::RequestId> = if debug {
                    items
                        .iter()
                        .map(|item| match item {
                            ApplyItem::Entry(entry) => entry.request_id.clone(),
                            ApplyItem::Refuse { trade, .. } => trade.request_id.clone(),
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                if debug {
                    for item in &items {
                        // Named by its request id, as at the front end and the leader.
                        match item {
                            ApplyItem::Entry(entry) => tracing::debug_span!("trade", request = %entry.request_id).in_scope(
                                || debug!(stock = %entry.name, quantity = entry.quantity, number = entry.number, epoch, "applying"),
                            ),
                            ApplyItem::Refuse { trade, .. } => tracing::debug_span!("trade", request = %trade.request_id).in_scope(
                                || debug!(stock = %trade.name, quantity = trade.quantity, epoch, "refusing"),
                            ),
                        }
                    }
                }
                let reply = self
                    .0
                    .request(CatalogRequest::Apply { epoch, items, log })
                    .await;
                if debug {
                    match &reply {
                        Ok(CatalogResponse::Applied { outcomes, stop, .. }) => {
                            for (id, outcome) in ids.iter().zip(outcomes) {
                                tracing::debug_span!("trade", request = %id)
                                    .in_scope(|| debug!(?outcome, "traded"));
                            }
                            if let (Some(id), Some(stop)) = (ids.get(outcomes.len()), stop) {
                                tracing::debug_span!("trade", request = %id)
                                    .in_scope(|| debug!(?stop, "not as the leader decided"));
                            }
                        }
                        other => debug!(answer = ?other, "not traded"),
                    }
                }
                self.0.metrics.answered(Counted::Trades(count), &reply);
                reply
            }
            request => {
                let counted = Counted::of(&request);
                let reply = self.0.request(request).await;
                self.0.metrics.answered(counted, &reply);
                reply
            }
        }
    }
}

/// Recovers the state in `config.state_dir` (seeding it on first start), serves catalog
/// requests on `listener` until `shutdown` fires, then finishes the requests in flight,
/// flushes the log, writes a snapshot and returns. If the log's disk fails, trades are
/// refused and heartbeats say why; once the directory takes writes again, it stops the same
/// way and returns [`Ended::RestartFromLog`] (the binary then restarts in place).
pub async fn run(
    listener: TcpListener,
    config: CatalogConfig,
    shutdown: CancellationToken,
) -> Result<Ended, Error> {
    run_with_metrics(listener, None, config, shutdown).await
}

/// [`run`], serving its metrics on `metrics` too (see [`common::metrics::serve`]).
pub async fn run_with_metrics(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    config: CatalogConfig,
    shutdown: CancellationToken,
) -> Result<Ended, Error> {
    let recovery = Recovery::new(&shutdown);
    let stop = recovery.stop().clone();
    let (state_dir, seed, window) = (
        config.state_dir.clone(),
        config.seed.clone(),
        config.dedup_window,
    );
    let (store, book, start, incarnation) =
        tokio::task::spawn_blocking(move || Store::open(&state_dir, &seed, window))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??;
    let (events, mut event_stream) = tokio::sync::mpsc::unbounded_channel();
    let counters = CatalogMetrics::default();
    let (log, writer) = store.start(events, counters.commit.clone())?;
    let origin = Instant::now();
    let snapshot_at = book.next_number() + config.snapshot_every;
    let engine = CatalogEngine::new(
        book,
        match start {
            Start::Fresh => Origin::Empty,
            Start::Clean => Origin::Clean,
            Start::Recovered => Origin::Recovered,
        },
        EngineConfig {
            lease_length: config.leader_lease,
            replicas: config.replicas.keys().copied().collect(),
            call_timeout: config.client.call_timeout,
            incarnation,
            rules: common::safety::Rules::ALL,
        },
        origin.elapsed(),
    );
    let catalog = Arc::new(Catalog {
        inner: Arc::new(Mutex::new(Inner {
            engine,
            log: Some(log),
            replies: IdMap::default(),
            subscribers: Vec::new(),
            commands: Vec::new(),
            timer_at: None,
            snapshot_at,
        })),
        metrics: counters,
        origin,
        timer: Notify::new(),
        next_token: AtomicU64::new(1),
        snapshot_every: config.snapshot_every.max(1),
        replicas: config
            .replicas
            .iter()
            .map(|(&id, addr)| (id, ReplicaClient::new(addr.clone(), config.client.clone())))
            .collect(),
    });
    // The engine's first commands: the seed's snapshot, or the first questions to the
    // replicas of a rebuild.
    catalog.step(Input::Tick, None);
    // The commit thread wakes this one task per group commit; the trades waiting on the
    // commit are then woken from inside the runtime, which is far cheaper than a cross-thread
    // wake-up per trade. It ends when the commit thread does.
    let relay = tokio::spawn({
        let catalog = catalog.clone();
        let (probe_dir, recovery) = (config.state_dir.clone(), recovery.clone());
        async move {
            while let Some(event) = event_stream.recv().await {
                match event {
                    LogEvent::Flushed(write) => {
                        catalog.step(Input::Flushed(write), None);
                    }
                    LogEvent::Failed(reason) => {
                        catalog.step(Input::StorageFailed(reason), None);
                        recovery.after_failure(probe_dir.clone());
                    }
                }
            }
        }
    });
    let timer = tokio::spawn(catalog.clone().keep_time(stop.clone()));
    let heartbeat = tokio::spawn(catalog.clone().heartbeats(config.heartbeat, stop.clone()));
    let exposition = common::metrics::spawn(
        metrics,
        {
            let catalog = catalog.clone();
            move |format| catalog.render_metrics(format)
        },
        config.server.cluster_token.clone(),
        &stop,
    );
    info!(addr = %listener.local_addr()?, state = %config.state_dir.display(), "catalog serving");
    server::serve(
        listener,
        Arc::new(CatalogService(catalog.clone())),
        config.server.clone(),
        stop,
    )
    .await;

    let (log, serving, ready) = {
        let mut inner = lock(&catalog.inner);
        let engine = &inner.engine;
        let (serving, ready) = (!engine.rebuilding(), engine.ready());
        (inner.log.take(), serving, ready)
    };
    if let (Some(mut log), true) = (log, serving) {
        // A final snapshot, so the next start replays nothing. With everything on disk and
        // the history complete, it is a clean stop: the next start serves at once. A catalog
        // still waiting for the leader's replay stays so.
        let shared = catalog.inner.clone();
        let _ = log.snapshot(move || lock(&shared).engine.book().snapshot(ready));
    }
    let joined = tokio::task::spawn_blocking(move || writer.join()).await;
    if !matches!(joined, Ok(Ok(()))) {
        warn!("log writer did not stop cleanly");
    }
    let _ = relay.await;
    let _ = timer.await;
    let _ = heartbeat.await;
    if let Some(exposition) = exposition {
        let _ = exposition.await;
    }
    let ended = recovery.ended();
    match ended {
        Ended::RestartFromLog => info!("catalog stopped to restart from its log"),
        Ended::Stopped => info!("catalog stopped"),
    }
    Ok(ended)
}
