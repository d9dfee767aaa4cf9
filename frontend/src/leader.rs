//! The front end's view of the order service on tokio: the runtime of the router
//! ([`crate::router`], where every decision is). It feeds the router the requests of the HTTP
//! sessions, the answers of its calls, the leadership records the catalog pushes and the
//! clock, and executes its commands: calls to the replicas and the catalog, and replies to
//! the sessions waiting.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catalog::CatalogClient;
use common::engine::{Answer, CallError, CallResult, Peer, Time, Token};
use common::rpc::{ClientConfig, RpcClient};
use common::safety::Rules;
use common::sync::lock;
use common::wire::{Epoch, Leadership, OrderRequest, OrderResponse, ReplicaId};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
pub use crate::router::OrderError;
use crate::router::{Command, Input, Outgoing, Router, RouterConfig};

/// What the router's lock guards.
struct Inner {
    router: Router,
    replies: HashMap<Token, oneshot::Sender<Result<OrderResponse, OrderError>>>,
    commands: Vec<Command>,
    /// The deadline the timer task sleeps until.
    timer_at: Option<Time>,
}

/// The order leader as this front end knows it.
pub struct OrderLeader {
    inner: Mutex<Inner>,
    replicas: BTreeMap<ReplicaId, RpcClient<OrderRequest, OrderResponse>>,
    catalog: CatalogClient,
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
                replies: HashMap::new(),
                commands: Vec::new(),
                timer_at: None,
            }),
            replicas: addrs
                .iter()
                .map(|(&id, addr)| (id, RpcClient::new(addr.clone(), client.clone())))
                .collect(),
            catalog,
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

    /// The newest record seen.
    pub fn record(&self) -> Leadership {
        lock(&self.inner).router.record().clone()
    }

    /// Takes a record from the catalog if it is newer than the one held.
    pub fn observe(self: &Arc<Self>, record: &Leadership) {
        self.step(Input::Record(record.clone()), None);
    }

    /// Sends `request` to the leader until it answers or the deadline passes, checking the
    /// leadership (and electing if need be) on failures and refusals. The request carries its
    /// own id, so retries are safe.
    pub async fn call(
        self: &Arc<Self>,
        request: &OrderRequest,
    ) -> Result<OrderResponse, OrderError> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let input = Input::Submit {
            token,
            request: request.clone(),
        };
        match self.step(input, Some(token)) {
            Some(Ok(reply)) => reply,
            Some(Err(receiver)) => receiver.await.unwrap_or_else(|_| {
                Err(OrderError::Unavailable(
                    "the front end is shutting down".into(),
                ))
            }),
            None => Err(OrderError::Unavailable(
                "the front end is shutting down".into(),
            )),
        }
    }

    /// Feeds `input` to the router and executes its commands. The reply to `own` is returned
    /// rather than sent; `Err` carries the receiver of one that is not ready yet.
    #[allow(clippy::type_complexity)]
    fn step(
        self: &Arc<Self>,
        input: Input,
        own: Option<Token>,
    ) -> Option<
        Result<
            Result<OrderResponse, OrderError>,
            oneshot::Receiver<Result<OrderResponse, OrderError>>,
        >,
    > {
        let mut calls = Vec::new();
        let mut sends = Vec::new();
        let mut mine = None;
        let mut waiting = None;
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
                        if Some(token) == own {
                            mine = Some(reply);
                        } else if let Some(sender) = inner.replies.remove(&token) {
                            sends.push((sender, reply));
                        }
                    }
                }
            }
            if let (Some(token), None) = (own, &mine) {
                let (sender, receiver) = oneshot::channel();
                inner.replies.insert(token, sender);
                waiting = Some(receiver);
            }
            let counters = inner.router.counters();
            self.metrics
                .elections
                .store(counters.elections, Ordering::Relaxed);
            self.metrics
                .failovers
                .store(counters.failovers, Ordering::Relaxed);
            self.metrics
                .retries
                .store(counters.retries, Ordering::Relaxed);
            let next = inner.router.next_timer();
            if next.is_some() && (inner.timer_at.is_none() || next < inner.timer_at) {
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
                leader.step(Input::Answer { call, answer }, None);
            });
        }
        match (mine, waiting) {
            (Some(reply), _) => Some(Ok(reply)),
            (None, Some(receiver)) => Some(Err(receiver)),
            (None, None) => None,
        }
    }

    async fn send(&self, to: Peer, request: Outgoing, timeout: Duration) -> CallResult {
        let answer = match (to, request) {
            (Peer::Replica(id), Outgoing::Order(request)) => match self.replicas.get(&id) {
                Some(replica) => replica
                    .call_within(&request, timeout)
                    .await
                    .map(Answer::Order),
                None => return Err(CallError::Failed(format!("replica {id} is not configured"))),
            },
            (Peer::Catalog, Outgoing::Catalog(request)) => self
                .catalog
                .call_within(&request, timeout)
                .await
                .map(Answer::Catalog),
            _ => {
                return Err(CallError::Failed(
                    "request sent to the wrong service".into(),
                ))
            }
        };
        answer.map_err(CallError::from)
    }

    /// Runs the router's clock (its health checks, pauses and deadlines) until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let next = {
                let mut inner = lock(&self.inner);
                let next = inner.router.next_timer();
                inner.timer_at = next;
                next
            };
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(self.origin + at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.timer.notified() => continue,
                () = sleep => {}
            }
            self.step(Input::Tick, None);
        }
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
