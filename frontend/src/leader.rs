//! The front end's view of the order service: it follows the catalog's leadership record
//! (pushed on the subscription stream, re-read at every check), sends requests to the
//! recorded leader, and, when that leader cannot serve, runs the shared election
//! ([`order::election`]): a compare-and-set at the catalog that any number of front ends may
//! attempt at once, of which one wins. A request is retried under its own request id until a
//! deadline, so a failover costs a latency blip, not an error.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catalog::CatalogClient;
use common::rpc::{ClientConfig, RpcClient};
use common::sync::lock;
use common::wire::{Epoch, Leadership, OrderRequest, OrderResponse, RemoteErrorKind, ReplicaId};
use order::election;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// Wait between attempts while the leader is busy.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// After a failed check, requests wait this long before another is tried, instead of each
/// running its own.
const CHECK_GAP: Duration = Duration::from_millis(100);

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

/// The last failed check, shared by the requests that come right after it.
struct Failure {
    at: Instant,
    reason: String,
}

/// The order leader as this front end knows it.
pub struct OrderLeader {
    replicas: BTreeMap<ReplicaId, RpcClient<OrderRequest, OrderResponse>>,
    catalog: CatalogClient,
    /// The newest leadership record seen.
    record: Mutex<Leadership>,
    /// Held across the check's `.await`, so that concurrent failures share one check (and at
    /// most one election).
    checking: tokio::sync::Mutex<Option<Failure>>,
    /// Why the last check found no leader able to serve; `None` when it found one.
    problem: Mutex<Option<String>>,
    /// Replicas whose disk failed, as the last check found them.
    storage_failures: Mutex<Vec<String>>,
    deadline: Duration,
    attempt: Duration,
    metrics: Arc<Metrics>,
}

impl OrderLeader {
    /// A view of the replicas at `addrs` and of the record at `catalog`. Requests are retried
    /// for up to `deadline`; one attempt (and each call of a check) waits at most `attempt`.
    pub fn new(
        addrs: &BTreeMap<ReplicaId, String>,
        catalog: CatalogClient,
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
            catalog,
            record: Mutex::new(Leadership::default()),
            checking: tokio::sync::Mutex::new(None),
            problem: Mutex::new(Some("no check made yet".into())),
            storage_failures: Mutex::new(Vec::new()),
            deadline,
            attempt,
            metrics,
        }
    }

    /// The recorded leader and epoch, if one was ever elected.
    pub fn current(&self) -> Option<(ReplicaId, Epoch)> {
        let record = lock(&self.record);
        record.leader.map(|leader| (leader, record.epoch))
    }

    /// The leader that serves, as the last check found, or why there is none.
    pub fn serving(&self) -> Result<(ReplicaId, Epoch), String> {
        if let Some(problem) = lock(&self.problem).clone() {
            return Err(problem);
        }
        self.current()
            .ok_or_else(|| "no order leader is recorded".to_owned())
    }

    /// The replicas whose disk failed, as `order-ID: reason`, as the last check found them.
    pub fn storage_failures(&self) -> Vec<String> {
        lock(&self.storage_failures).clone()
    }

    /// The newest record seen.
    pub fn record(&self) -> Leadership {
        lock(&self.record).clone()
    }

    /// Takes a record from the catalog (pushed or read) if it is newer than the one held.
    pub fn observe(&self, record: &Leadership) {
        let mut held = lock(&self.record);
        let newer = record.epoch > held.epoch
            || (record.epoch == held.epoch && record.in_sync != held.in_sync);
        if !newer {
            return;
        }
        if record.epoch > held.epoch && held.leader.is_some() {
            self.metrics.failovers.fetch_add(1, Ordering::Relaxed);
        }
        if record.leader != held.leader || record.epoch != held.epoch {
            info!(%record, "following the order leader");
        }
        *held = record.clone();
    }

    /// Reads the record and the replicas' status, and elects when the recorded leader cannot
    /// serve. Concurrent callers share one check; a failed one is not repeated for a moment.
    async fn check(&self) -> Result<(ReplicaId, Epoch), String> {
        let seen = self.record().epoch;
        let mut last_failure = self.checking.lock().await;
        if let (Some(current), true) = (self.current(), self.record().epoch > seen) {
            // A check finished while this one waited and found a newer record.
            return Ok(current);
        }
        if let Some(failure) = last_failure.as_ref() {
            if failure.at.elapsed() < CHECK_GAP {
                return Err(failure.reason.clone());
            }
        }
        match election::ensure_leader(&self.catalog, &self.replicas, self.attempt).await {
            Ok(ensured) => {
                if ensured.elected {
                    self.metrics.elections.fetch_add(1, Ordering::Relaxed);
                }
                self.observe(&ensured.record);
                *lock(&self.storage_failures) = ensured.storage_failures;
                *last_failure = None;
                *lock(&self.problem) = None;
                self.current()
                    .ok_or_else(|| "no order leader is recorded".to_owned())
            }
            Err(e) => {
                warn!(error = %e, "no order leader can serve");
                let reason = e.to_string();
                *lock(&self.problem) = Some(reason.clone());
                *last_failure = Some(Failure {
                    at: Instant::now(),
                    reason: reason.clone(),
                });
                Err(reason)
            }
        }
    }

    /// Sends `request` to the leader until it answers or the deadline passes, checking the
    /// leadership (and electing if need be) on failures and refusals. The request carries its
    /// own id, so retries are safe.
    pub async fn call(&self, request: &OrderRequest) -> Result<OrderResponse, OrderError> {
        let deadline = Instant::now() + self.deadline;
        let mut last_problem = String::from("no attempt made");
        let mut suspect = false;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(OrderError::Unavailable(last_problem));
            }
            let known = if suspect { None } else { self.current() };
            let leader = match known {
                Some((leader, _)) => leader,
                None => match tokio::time::timeout_at(deadline, self.check()).await {
                    Ok(Ok((leader, _))) => leader,
                    Ok(Err(problem)) => {
                        last_problem = problem;
                        self.pause(deadline).await;
                        continue;
                    }
                    Err(_) => return Err(OrderError::Unavailable(last_problem)),
                },
            };
            suspect = false;
            let Some(replica) = self.replicas.get(&leader) else {
                // The record names a replica this front end was not configured with (an
                // operator's override, or front ends with different peer lists).
                last_problem = format!("the recorded leader {leader} is not among --order-peers");
                self.pause(deadline).await;
                suspect = true;
                continue;
            };
            let budget = (deadline - now).min(self.attempt);
            let answer = replica.call_within(request, budget).await;
            match answer {
                Ok(OrderResponse::NotLeader { .. } | OrderResponse::StaleEpoch { .. }) => {
                    last_problem = format!("replica {leader} does not lead");
                    suspect = true;
                    self.pause(deadline).await;
                }
                Ok(answer) => return Ok(answer),
                Err(common::Error::Remote(e)) if e.kind == RemoteErrorKind::BadRequest => {
                    return Err(OrderError::BadRequest(e.message));
                }
                Err(common::Error::Remote(e)) => {
                    // The leader is there but cannot finish now (its quorum, the catalog,
                    // taking over): the same leader is asked again after a pause.
                    last_problem = e.message;
                    self.pause(deadline).await;
                }
                Err(e) => {
                    last_problem = format!("replica {leader}: {e}");
                    suspect = true;
                }
            }
            self.metrics.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn pause(&self, deadline: Instant) {
        tokio::time::sleep_until(deadline.min(Instant::now() + RETRY_PAUSE)).await;
    }

    /// Checks the leadership every `interval`, electing when the recorded leader cannot
    /// serve. Ends with `shutdown`.
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        loop {
            let _ = self.check().await;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}
