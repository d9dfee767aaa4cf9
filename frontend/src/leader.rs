//! The front end's view of the order service on tokio: the runtime of the router
//! ([`crate::router`], where every decision is). It feeds the router the requests of the HTTP
//! sessions, the answers of its calls, the leadership records the catalog pushes and the
//! clock, and executes its commands: calls to the replicas and the catalog, and replies to
//! the sessions waiting.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clients::CatalogClient;
use common::engine::{Answer, CallResult, IdMap, Peer, Time};
use common::rpc::ClientConfig;
use common::safety::Rules;
use common::sync::lock;
use common::wire::{Epoch, Leadership, OrderRequest, OrderResponse, ReplicaId, ReplicaStatus};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
pub use crate::router::OrderError;
use crate::router::{Command, Input, Outgoing, Router, RouterConfig};
use clients::peers::{PeerRequest, Peers};

/// What the router's lock guards.
struct Inner {
    router: Router,
    replies: IdMap<oneshot::Sender<Result<OrderResponse, OrderError>>>,
    commands: Vec<Command>,
    /// The deadline the timer task sleeps until.
    timer_at: Option<Time>,
    /// A flush of the queued attempts is scheduled.
    flushing: bool,
}

/// The order leader as this front end knows it.
pub struct OrderLeader {
    inner: Mutex<Inner>,
    peers: Peers,
    origin: Instant,
    timer: Notify,
    next_token: AtomicU64,
    metrics: Arc<Metrics>,
}

impl OrderLeader {
    /// A view of the replicas at `addrs` and of the record at `catalog`. Requests are retried
    /// for up to `deadline`; one attempt (and each call of a check) waits at most `attempt`;
    /// the leader is checked every `health_interval` when nothing else does.
    pub fn new(
        addrs: &BTreeMap<ReplicaId, String>,
        catalog: CatalogClient,
        client: &ClientConfig,
        timing: Timing,
        metrics: Arc<Metrics>,
    ) -> Self {
        let origin = Instant::now();
        let config = RouterConfig {
            replicas: addrs.keys().copied().collect(),
            deadline: timing.deadline,
            attempt: timing.attempt,
            health_interval: timing.health_interval,
            rules: Rules::ALL,
        };
        OrderLeader {
            inner: Mutex::new(Inner {
                router: Router::new(config, origin.elapsed()),
                replies: IdMap::default(),
                commands: Vec::new(),
                timer_at: None,
                flushing: false,
            }),
            peers: Peers::new(addrs, catalog, client),
            origin,
            timer: Notify::new(),
            next_token: AtomicU64::new(1),
            metrics,
        }
    }

    /// The recorded leader and epoch, if one was ever elected.
    pub fn current(&self) -> Option<(ReplicaId, Epoch)> {
        lock(&self.inner).router.current()
    }

    /// The leader that serves, as the last check found, or why there is none.
    pub fn serving(&self) -> Result<(ReplicaId, Epoch), String> {
        lock(&self.inner).router.serving()
    }

    /// The replicas whose disk failed, as `order-ID: reason`, as the last check found them.
    pub fn storage_failures(&self) -> Vec<String> {
        lock(&self.inner).router.storage_failures().to_vec()
    }

    /// Elections, failovers and retries so far.
    pub fn counters(&self) -> crate::router::Counters {
        lock(&self.inner).router.counters()
    }

    /// The last changes of leader, oldest first, each with how long ago it was learnt.
    pub fn changes(&self) -> Vec<(crate::router::LeaderChange, std::time::Duration)> {
        let inner = lock(&self.inner);
        let now = self.origin.elapsed();
        inner
            .router
            .changes()
            .map(|change| (change.clone(), now.saturating_sub(change.at)))
            .collect()
    }

    /// Asks every replica for its status at once, each within `timeout`: the id and the
    /// status or why there is none, in replica order.
    pub async fn replica_statuses(
        &self,
        timeout: Duration,
    ) -> Vec<(ReplicaId, Result<ReplicaStatus, String>)> {
        let ids = self.peers.replica_ids();
        let asks = ids.iter().map(|&id| async move {
            let status = self.send(
                Peer::Replica(id),
                Outgoing::Order(Arc::new(OrderRequest::Status)),
                timeout,
            );
            let status = match status.await {
                Ok(Answer::Order(OrderResponse::Status(status))) => Ok(status),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e.to_string()),
            };
            (id, status)
        });
        futures::future::join_all(asks).await
    }

    /// The newest record seen.
    pub fn record(&self) -> Leadership {
        lock(&self.inner).router.record().clone()
    }

    /// Follows the record a new subscription starts with, as the catalog holds it (even an
    /// older epoch: a catalog rebuilt after losing its disk counts anew).
    pub fn subscribed(self: &Arc<Self>, record: &Leadership) {
        self.step(Input::Subscribed(record.clone()));
    }

    /// Takes a record from the catalog if it is newer than the one held.
    pub fn observe(self: &Arc<Self>, record: &Leadership) {
        self.step(Input::Record(record.clone()));
    }

    /// Sends `request` to the leader until it answers or the deadline passes, checking the
    /// leadership (and electing if need be) on failures and refusals. The request carries its
    /// own id, so retries are safe. Requests submitted while the runtime is busy with others
    /// go to the leader together, in one batch.
    pub async fn call(
        self: &Arc<Self>,
        request: OrderRequest,
    ) -> Result<OrderResponse, OrderError> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        lock(&self.inner).replies.insert(token, sender);
        self.step(Input::Submit { token, request });
        receiver.await.unwrap_or_else(|_| {
            Err(OrderError::Unavailable(
                "the front end is shutting down".into(),
            ))
        })
    }

    /// Feeds `input` to the router and executes its commands: replies go to the sessions
    /// waiting, calls are made on tasks of their own, and attempts the router queued are
    /// flushed once the tasks ready now have run (so that the sessions that submit at the
    /// same moment share one message).
    fn step(self: &Arc<Self>, input: Input) {
        let mut calls = Vec::new();
        let mut sends = Vec::new();
        let mut flush = false;
        {
            let mut guard = lock(&self.inner);
            let inner = &mut *guard;
            inner
                .router
                .handle(self.origin.elapsed(), input, &mut inner.commands);
            for command in inner.commands.drain(..) {
                match command {
                    Command::Call {
                        call,
                        to,
                        request,
                        timeout,
                    } => calls.push((call, to, request, timeout)),
                    Command::Reply { token, reply } => {
                        if let Some(sender) = inner.replies.remove(&token) {
                            sends.push((sender, reply));
                        }
                    }
                }
            }
            if inner.router.flush_wanted() && !inner.flushing {
                inner.flushing = true;
                flush = true;
            }
            inner.router.drain_failover_times(|took| {
                self.metrics.failover_seconds.observe(took.as_secs_f64())
            });
            if common::engine::wakes_timer(inner.timer_at, inner.router.next_timer()) {
                self.timer.notify_one();
            }
        }
        for (sender, reply) in sends {
            let _ = sender.send(reply);
        }
        for (call, to, request, timeout) in calls {
            let leader = self.clone();
            tokio::spawn(async move {
                let answer = leader.send(to, request, timeout).await;
                leader.step(Input::Answer { call, answer });
            });
        }
        if flush {
            let leader = self.clone();
            tokio::spawn(async move {
                // Behind every task ready now: the sessions read in the same turn submit
                // before the flush.
                tokio::task::yield_now().await;
                lock(&leader.inner).flushing = false;
                leader.step(Input::Flush);
            });
        }
    }

    async fn send(&self, to: Peer, request: Outgoing, timeout: Duration) -> CallResult {
        let request = match &request {
            Outgoing::Order(request) => PeerRequest::Order(request),
            Outgoing::Catalog(request) => PeerRequest::Catalog(request),
        };
        self.peers.call(to, request, timeout).await
    }

    /// Runs the router's clock (its health checks, pauses and deadlines) until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let next = || {
            let mut inner = lock(&self.inner);
            let next = inner.router.next_timer();
            inner.timer_at = next;
            next
        };
        common::engine::keep_time(self.origin, &self.timer, &shutdown, next, || {
            self.step(Input::Tick);
        })
        .await;
    }
}

/// The router's timings.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a request is retried before `Unavailable`.
    pub deadline: Duration,
    /// How long one attempt (and each call of a check) may take.
    pub attempt: Duration,
    /// How often the leader is checked when nothing else does.
    pub health_interval: Duration,
}
