//! The front end's view of the order service: who leads, electing a new leader when the
//! current one stops answering (an active health check, and any failed or refused call), and
//! retrying a request with the same request id until a deadline so that a failover costs a
//! latency blip, not an error.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::rpc::{ClientConfig, RpcClient};
use common::sync::lock;
use common::wire::{
    Epoch, LogPosition, OrderRequest, OrderResponse, RemoteErrorKind, ReplicaId, Role,
};
use order::election;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// Wait between attempts while the leader is busy.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// After a failed election, requests wait this long before another is tried, instead of
/// each running its own.
const ELECTION_GAP: Duration = Duration::from_millis(100);

/// Why a request got no answer from the order service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// No leader answered before the deadline.
    #[error("no order replica is available: {0}")]
    Unavailable(String),
    /// The order service refused the request as malformed.
    #[error("{0}")]
    BadRequest(String),
}

/// What the front end has acknowledged, guarded with the election count so that an
/// acknowledgement and an election are ordered.
#[derive(Default)]
struct Acknowledged {
    /// The newest order position answered 200: no replica lacking it may lead.
    newest: Option<LogPosition>,
    /// Elections started so far.
    elections: u64,
}

/// The last failed election, shared by the requests that come right after it.
struct Failure {
    at: Instant,
    reason: String,
}

/// The order leader as this front end knows it.
pub struct OrderLeader {
    replicas: BTreeMap<ReplicaId, RpcClient<OrderRequest, OrderResponse>>,
    current: Mutex<Option<(ReplicaId, Epoch)>>,
    /// Held across the election's `.await`, so that concurrent failures share one election.
    electing: tokio::sync::Mutex<Option<Failure>>,
    acknowledged: Mutex<Acknowledged>,
    last_epoch: Mutex<Epoch>,
    deadline: Duration,
    attempt: Duration,
    metrics: Arc<Metrics>,
}

impl OrderLeader {
    /// A view of the replicas at `addrs`. Requests are retried for up to `deadline`; one
    /// attempt (and each call of an election) waits at most `attempt`.
    pub fn new(
        addrs: &BTreeMap<ReplicaId, String>,
        client: &ClientConfig,
        deadline: Duration,
        attempt: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        OrderLeader {
            replicas: addrs
                .iter()
                .map(|(&id, addr)| (id, RpcClient::new(addr.clone(), client.clone())))
                .collect(),
            current: Mutex::new(None),
            electing: tokio::sync::Mutex::new(None),
            acknowledged: Mutex::new(Acknowledged::default()),
            last_epoch: Mutex::new(0),
            deadline,
            attempt,
            metrics,
        }
    }

    /// The current leader and epoch, if known.
    pub fn current(&self) -> Option<(ReplicaId, Epoch)> {
        *lock(&self.current)
    }

    /// The leader, electing one if none is known.
    async fn leader(&self) -> Result<(ReplicaId, Epoch), String> {
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let mut last_failure = self.electing.lock().await;
        if let Some(current) = self.current() {
            return Ok(current);
        }
        if let Some(failure) = last_failure.as_ref() {
            if failure.at.elapsed() < ELECTION_GAP {
                return Err(failure.reason.clone());
            }
        }
        let (acknowledged, previous) = {
            let mut acks = lock(&self.acknowledged);
            acks.elections += 1;
            (acks.newest, *lock(&self.last_epoch))
        };
        self.metrics.elections.fetch_add(1, Ordering::Relaxed);
        match election::elect(&self.replicas, acknowledged, previous, self.attempt).await {
            Ok(elected) => {
                *lock(&self.last_epoch) = elected.epoch;
                if previous != 0 {
                    self.metrics.failovers.fetch_add(1, Ordering::Relaxed);
                }
                info!(
                    leader = elected.leader,
                    epoch = elected.epoch,
                    "order leader elected"
                );
                *last_failure = None;
                *lock(&self.current) = Some((elected.leader, elected.epoch));
                Ok((elected.leader, elected.epoch))
            }
            Err(e) => {
                warn!(error = %e, "no order leader could be elected");
                *last_failure = Some(Failure {
                    at: Instant::now(),
                    reason: e.to_string(),
                });
                Err(e.to_string())
            }
        }
    }

    /// Forgets `leader` of `epoch` (unless another was elected meanwhile), so that the next
    /// request elects anew.
    fn suspect(&self, leader: ReplicaId, epoch: Epoch, why: &str) {
        let mut current = lock(&self.current);
        if *current == Some((leader, epoch)) {
            warn!(
                leader,
                epoch,
                reason = why,
                "order leader suspected; re-electing"
            );
            *current = None;
        }
    }

    /// Sends `request` to the leader until it answers or the deadline passes, re-electing
    /// on failures and refusals. The request carries its own id, so retries are safe.
    pub async fn call(&self, request: &OrderRequest) -> Result<OrderResponse, OrderError> {
        let deadline = Instant::now() + self.deadline;
        let mut last_problem = String::from("no attempt made");
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(OrderError::Unavailable(last_problem));
            }
            let (leader, epoch) = match tokio::time::timeout_at(deadline, self.leader()).await {
                Ok(Ok(leader)) => leader,
                Ok(Err(problem)) => {
                    last_problem = problem;
                    self.pause(deadline).await;
                    continue;
                }
                Err(_) => return Err(OrderError::Unavailable(last_problem)),
            };
            let elections = lock(&self.acknowledged).elections;
            let budget = (deadline - now).min(self.attempt);
            let answer = self.replicas[&leader].call_within(request, budget).await;
            match answer {
                Ok(OrderResponse::NotLeader { .. } | OrderResponse::StaleEpoch { .. }) => {
                    last_problem = format!("replica {leader} no longer leads");
                    self.suspect(leader, epoch, &last_problem);
                }
                Ok(OrderResponse::Placed { number, epoch }) => {
                    let mut acks = lock(&self.acknowledged);
                    if acks.elections == elections {
                        let position = Some(LogPosition { epoch, number });
                        acks.newest = acks.newest.max(position);
                        return Ok(OrderResponse::Placed { number, epoch });
                    }
                    // An election started while this was in flight and may have chosen a
                    // replica without it: ask the leader now, under the same request id.
                    last_problem = "answered by a leader replaced meanwhile".into();
                }
                Ok(answer) => return Ok(answer),
                Err(common::Error::Remote(e)) if e.kind == RemoteErrorKind::BadRequest => {
                    return Err(OrderError::BadRequest(e.message));
                }
                Err(common::Error::Remote(e)) => {
                    // The leader is there but cannot finish now (its quorum, the catalog):
                    // the same leader is asked again after a pause.
                    last_problem = e.message;
                    self.pause(deadline).await;
                }
                Err(e) => {
                    last_problem = format!("replica {leader}: {e}");
                    self.suspect(leader, epoch, &last_problem);
                }
            }
            self.metrics.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn pause(&self, deadline: Instant) {
        tokio::time::sleep_until(deadline.min(Instant::now() + RETRY_PAUSE)).await;
    }

    /// One round of the health check: the leader must answer as the leader of its epoch;
    /// a replica that missed the election (it was down) is told who leads.
    async fn check(&self, leader: ReplicaId, epoch: Epoch) {
        let limit = self.attempt;
        let statuses =
            futures::future::join_all(self.replicas.iter().map(|(&id, client)| async move {
                (id, client.call_within(&OrderRequest::Status, limit).await)
            }))
            .await;
        for (id, status) in statuses {
            match (id == leader, status) {
                (true, Ok(OrderResponse::Status(s)))
                    if s.role == Role::Leader && s.epoch == epoch => {}
                (true, Ok(other)) => self.suspect(leader, epoch, &format!("status {other:?}")),
                (true, Err(e)) => self.suspect(leader, epoch, &e.to_string()),
                (false, Ok(OrderResponse::Status(s)))
                    if s.epoch < epoch || (s.epoch == epoch && s.leader_id != Some(leader)) =>
                {
                    let announce = OrderRequest::SetLeader {
                        epoch,
                        leader_id: leader,
                    };
                    match self.replicas[&id].call_within(&announce, limit).await {
                        Ok(OrderResponse::LeaderSet) => {
                            info!(
                                replica = id,
                                leader, epoch, "told a returning replica who leads"
                            );
                        }
                        other => {
                            warn!(replica = id, answer = ?other, "replica refused the current leader")
                        }
                    }
                }
                (false, _) => {}
            }
        }
    }

    /// Checks the leader every `interval`, re-electing when it does not answer as the leader
    /// of its epoch; elects at once when none is known. Ends with `shutdown`.
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        loop {
            match self.current() {
                None => {
                    let _ = self.leader().await;
                }
                Some((leader, epoch)) => self.check(leader, epoch).await,
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}
