//! Starting a catalog and three order replicas in-process for integration tests, on ports
//! bound at 0 and kept across restarts, and a polling helper with a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use catalog::CatalogConfig;
use clients::{CatalogClient, LeadershipOutcome, ReplicaClient};
use common::rpc::ClientConfig;
use common::wire::{
    Leadership, LeadershipChange, OrderRequest, OrderResponse, ReplicaId, RequestId, StockName,
    TradeKind, TradeRequest,
};
use order::ReplicaConfig;
pub use order::WriteQuorum;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Ports for processes that must know their addresses before they start (binaries, scripts):
/// bound at 0, read, released.
pub fn spare_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

pub fn seed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/catalog.csv")
}

/// Polls `check` until it returns `Some`, failing after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub struct RunningCatalog {
    pub addr: String,
    pub client: CatalogClient,
    dir: PathBuf,
    running: Option<(
        CancellationToken,
        tokio::task::JoinHandle<Result<durability::storage::Ended, catalog::Error>>,
    )>,
    _state: Option<tempfile::TempDir>,
}

impl RunningCatalog {
    /// A catalog with fresh state, on a port bound at 0.
    pub async fn start() -> Self {
        let state = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut catalog = RunningCatalog {
            client: CatalogClient::new(addr.clone(), ClientConfig::new("test")),
            addr,
            dir: state.path().join("catalog"),
            running: None,
            _state: Some(state),
        };
        catalog.launch(listener);
        catalog
    }

    fn launch(&mut self, listener: TcpListener) {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(catalog::run(
            listener,
            CatalogConfig {
                // Short, so that a test may depose a leader that still serves: between two of
                // its renewals (every 200 ms) the lease runs out.
                leader_lease: Duration::from_millis(100),
                ..CatalogConfig::new(self.dir.clone(), seed())
            },
            shutdown.clone(),
        ));
        self.running = Some((shutdown, task));
    }

    /// Stops it; its state and port are kept for [`RunningCatalog::restart`].
    pub async fn stop(&mut self) {
        if let Some((shutdown, task)) = self.running.take() {
            shutdown.cancel();
            task.await.unwrap().unwrap();
        }
    }

    /// Starts it again on the same port and state.
    pub async fn restart(&mut self) {
        let listener = TcpListener::bind(&self.addr).await.unwrap();
        self.launch(listener);
    }
}

struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<durability::storage::Ended, order::Error>>,
}

/// Three replicas in-process, each on a port bound at 0 and kept across restarts.
pub struct Cluster {
    pub catalog: RunningCatalog,
    pub addrs: BTreeMap<ReplicaId, String>,
    pub dirs: BTreeMap<ReplicaId, PathBuf>,
    running: BTreeMap<ReplicaId, Running>,
    quorum: WriteQuorum,
    _state: tempfile::TempDir,
}

pub fn fast_client(name: &str) -> ClientConfig {
    ClientConfig {
        call_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_millis(500),
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        ..ClientConfig::new(name)
    }
}

impl Cluster {
    pub async fn start(quorum: WriteQuorum) -> Self {
        let catalog = RunningCatalog::start().await;
        let state = tempfile::tempdir().unwrap();
        let mut listeners = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        let mut dirs = BTreeMap::new();
        for id in 1..=3 {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.insert(id, listener.local_addr().unwrap().to_string());
            dirs.insert(id, state.path().join(format!("order-{id}")));
            listeners.insert(id, listener);
        }
        let mut cluster = Cluster {
            catalog,
            addrs,
            dirs,
            running: BTreeMap::new(),
            quorum,
            _state: state,
        };
        for (id, listener) in listeners {
            cluster.launch(id, listener);
        }
        cluster
    }

    fn config(&self, id: ReplicaId) -> ReplicaConfig {
        let peers = self
            .addrs
            .iter()
            .filter(|(&p, _)| p != id)
            .map(|(&p, a)| (p, a.clone()))
            .collect();
        ReplicaConfig {
            write_quorum: self.quorum,
            replicate_timeout: Duration::from_millis(300),
            commit_timeout: Duration::from_secs(2),
            client: fast_client(&format!("order-{id}")),
            ..ReplicaConfig::new(id, peers, self.catalog.addr.clone(), self.dirs[&id].clone())
        }
    }

    fn launch(&mut self, id: ReplicaId, listener: TcpListener) {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(order::run(listener, self.config(id), shutdown.clone()));
        self.running.insert(id, Running { shutdown, task });
    }

    /// Stops replica `id` (its requests in flight finish; its log is flushed).
    pub async fn stop(&mut self, id: ReplicaId) {
        let running = self.running.remove(&id).unwrap();
        running.shutdown.cancel();
        running.task.await.unwrap().unwrap();
    }

    /// Starts replica `id` again on its old port and state.
    pub async fn restart(&mut self, id: ReplicaId) {
        let listener = TcpListener::bind(&self.addrs[&id]).await.unwrap();
        self.launch(id, listener);
    }

    pub fn client(&self, id: ReplicaId) -> ReplicaClient {
        ReplicaClient::new(self.addrs[&id].clone(), fast_client("test"))
    }

    /// Elects `leader` at the catalog (compare-and-set on the record; the first election
    /// names every replica in sync), retrying while the current leader's lease holds, and
    /// waits until it places orders. Returns the epoch.
    pub async fn elect(&self, leader: ReplicaId) -> u64 {
        let epoch = eventually(
            &format!("the election of {leader}"),
            Duration::from_secs(10),
            || async {
                let timeout = Duration::from_secs(5);
                let record = self.catalog.client.leadership(timeout).await.unwrap();
                let change = LeadershipChange::Elect {
                    leader,
                    in_sync: self.addrs.keys().copied().collect(),
                };
                match self
                    .catalog
                    .client
                    .change_leadership(record.epoch, change, timeout)
                    .await
                    .unwrap()
                {
                    LeadershipOutcome::Changed(record) => Some(record.epoch),
                    LeadershipOutcome::Refused { reason, .. } if reason.contains("not deposed") => {
                        None
                    }
                    LeadershipOutcome::Refused { current, reason } => {
                        panic!("election of {leader} refused: {reason} ({current})")
                    }
                }
            },
        )
        .await;
        self.wait_placing(leader, epoch).await;
        epoch
    }

    /// Waits until `leader` leads `epoch` and places orders.
    pub async fn wait_placing(&self, leader: ReplicaId, epoch: u64) {
        eventually(
            "the leader to place orders",
            Duration::from_secs(20),
            || async {
                match self.client(leader).call(&OrderRequest::Status).await {
                    Ok(OrderResponse::Status(s)) if s.epoch == epoch && s.placing => Some(()),
                    _ => None,
                }
            },
        )
        .await;
    }

    /// The leadership record.
    pub async fn record(&self) -> Leadership {
        self.catalog
            .client
            .leadership(Duration::from_secs(5))
            .await
            .unwrap()
    }

    pub async fn status(&self, id: ReplicaId) -> common::wire::ReplicaStatus {
        match self.client(id).call(&OrderRequest::Status).await.unwrap() {
            OrderResponse::Status(status) => status,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn log(&self, id: ReplicaId) -> Vec<common::wire::OrderEntry> {
        order::log::read_entries(&order::log::log_file(&self.dirs[&id]))
            .unwrap()
            .0
    }

    pub async fn stop_all(mut self) {
        let ids: Vec<ReplicaId> = self.running.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
        self.catalog.stop().await;
    }
}

pub fn order(id: &str, stock: &str, quantity: i64, kind: TradeKind) -> OrderRequest {
    OrderRequest::PlaceOrder(TradeRequest {
        request_id: RequestId::new(id).unwrap(),
        name: StockName::new(stock).unwrap(),
        quantity,
        kind,
    })
}

pub fn placed(answer: OrderResponse) -> u64 {
    match answer {
        OrderResponse::Placed { number, .. } => number,
        other => panic!("expected a placed order, got {other:?}"),
    }
}
