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
    Epoch, OrderRequest, OrderResponse, RemoteErrorKind, ReplicaId, Role, TransactionNumber,
};
use order::election::{self, ElectionError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// Wait between attempts while no leader can be elected or the leader is busy.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

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

/// The order leader as this front end knows it.
pub struct OrderLeader {
    replicas: BTreeMap<ReplicaId, RpcClient<OrderRequest, OrderResponse>>,
    current: Mutex<Option<(ReplicaId, Epoch)>>,
    /// Held across the election's `.await`, so that concurrent failures share one election.
    electing: tokio::sync::Mutex<()>,
    /// The highest transaction number this front end has acknowledged: no replica lacking it
    /// may lead.
    acknowledged: Mutex<Option<TransactionNumber>>,
    last_epoch: Mutex<Epoch>,
    deadline: Duration,
    metrics: Arc<Metrics>,
}

impl OrderLeader {
    /// A view of the replicas at `addrs`; requests are retried for up to `deadline`.
    pub fn new(
        addrs: &BTreeMap<ReplicaId, String>,
        client: &ClientConfig,
        deadline: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        OrderLeader {
            replicas: addrs
                .iter()
                .map(|(&id, addr)| (id, RpcClient::new(addr.clone(), client.clone())))
                .collect(),
            current: Mutex::new(None),
            electing: tokio::sync::Mutex::new(()),
            acknowledged: Mutex::new(None),
            last_epoch: Mutex::new(0),
            deadline,
            metrics,
        }
    }

    /// The current leader and epoch, if known.
    pub fn current(&self) -> Option<(ReplicaId, Epoch)> {
        *lock(&self.current)
    }

    /// The leader, electing one if none is known.
    async fn leader(&self) -> Result<(ReplicaId, Epoch), ElectionError> {
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let _electing = self.electing.lock().await;
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let acknowledged = *lock(&self.acknowledged);
        let last_epoch = *lock(&self.last_epoch);
        self.metrics.elections.fetch_add(1, Ordering::Relaxed);
        let elected = election::elect(&self.replicas, acknowledged, last_epoch).await?;
        *lock(&self.last_epoch) = elected.epoch;
        if last_epoch != 0 {
            self.metrics.failovers.fetch_add(1, Ordering::Relaxed);
        }
        info!(
            leader = elected.leader,
            epoch = elected.epoch,
            "order leader elected"
        );
        *lock(&self.current) = Some((elected.leader, elected.epoch));
        Ok((elected.leader, elected.epoch))
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
            let (leader, epoch) = match self.leader().await {
                Ok(leader) => leader,
                Err(e) => {
                    last_problem = e.to_string();
                    self.pause(deadline).await;
                    continue;
                }
            };
            let answer = self.replicas[&leader]
                .call_within(request, deadline - now)
                .await;
            match answer {
                Ok(OrderResponse::NotLeader { .. } | OrderResponse::StaleEpoch { .. }) => {
                    last_problem = format!("replica {leader} no longer leads");
                    self.suspect(leader, epoch, &last_problem);
                }
                Ok(answer) => {
                    if let OrderResponse::Placed { number } = answer {
                        let mut acknowledged = lock(&self.acknowledged);
                        *acknowledged = (*acknowledged).max(Some(number));
                    }
                    return Ok(answer);
                }
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

    /// One round of the health check: the leader must answer as the leader of its epoch;
    /// a replica that missed the election (it was down) is told who leads.
    async fn check(&self, leader: ReplicaId, epoch: Epoch, interval: Duration) {
        let limit = interval.max(Duration::from_millis(100));
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

    async fn pause(&self, deadline: Instant) {
        tokio::time::sleep_until(deadline.min(Instant::now() + RETRY_PAUSE)).await;
    }

    /// Asks the leader how it is every `interval`, re-electing when it does not answer as the
    /// leader of its epoch; elects at once when none is known. Ends with `shutdown`.
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        loop {
            match self.current() {
                None => {
                    if let Err(e) = self.leader().await {
                        warn!(error = %e, "no order leader");
                    }
                }
                Some((leader, epoch)) => self.check(leader, epoch, interval).await,
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}
