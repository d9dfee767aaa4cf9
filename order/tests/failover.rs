//! The order replicas as binaries: the leader killed with SIGKILL in the middle of a load, a
//! new leader elected with a higher epoch, every request retried with its id. Each trade is
//! applied to the catalog once, numbers are unique and gap-free, the old leader rejoins and
//! the audit command finds the replicas identical and the catalog consistent.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clients::ReplicaClient;
use common::wire::{
    LeadershipChange, LogPosition, OrderRequest, OrderResponse, ReplicaId, Role, StockName,
    TradeKind,
};
use testkit::*;

const STOCKS: [&str; 3] = ["GameStart", "MenhirCo", "QuillWorks"];

struct Replicas {
    addrs: BTreeMap<ReplicaId, String>,
    catalog: String,
    root: tempfile::TempDir,
    children: BTreeMap<ReplicaId, Child>,
}

impl Replicas {
    fn dir(&self, id: ReplicaId) -> std::path::PathBuf {
        self.root.path().join(format!("order-{id}"))
    }

    fn spawn(&mut self, id: ReplicaId) {
        let peers: Vec<String> = self.addrs.iter().map(|(i, a)| format!("{i}={a}")).collect();
        std::fs::create_dir_all(self.root.path()).unwrap();
        let log =
            std::fs::File::create(self.root.path().join(format!("order-{id}.stderr"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_order"))
            .args([
                "--id",
                &id.to_string(),
                "--peers",
                &peers.join(","),
                "--catalog",
                &self.catalog,
            ])
            .arg("--state-dir")
            .arg(self.dir(id))
            .args([
                "--replicate-timeout-ms",
                "300",
                "--commit-timeout-ms",
                "3000",
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.insert(id, child);
    }

    fn kill(&mut self, id: ReplicaId) {
        let mut child = self.children.remove(&id).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn client(&self, id: ReplicaId) -> ReplicaClient {
        ReplicaClient::new(self.addrs[&id].clone(), fast_client("failover-test"))
    }

    async fn status(&self, id: ReplicaId) -> Option<common::wire::ReplicaStatus> {
        match self.client(id).call(&OrderRequest::Status).await {
            Ok(OrderResponse::Status(status)) => Some(status),
            _ => None,
        }
    }

    fn catalog_client(&self) -> clients::CatalogClient {
        clients::CatalogClient::new(self.catalog.clone(), fast_client("failover-test"))
    }

    /// Elects `leader` as the very first leader, every replica in sync.
    async fn first_election(&self, leader: ReplicaId) {
        let change = LeadershipChange::Elect {
            leader,
            in_sync: vec![1, 2, 3],
        };
        let outcome = self
            .catalog_client()
            .change_leadership(0, change, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(
            matches!(outcome, clients::LeadershipOutcome::Changed(_)),
            "{outcome:?}"
        );
    }

    /// Sends `request` until it is answered, through whatever errors a new leader's
    /// take-over causes.
    async fn place(&self, leader: ReplicaId, request: &OrderRequest) -> OrderResponse {
        let client = self.client(leader);
        eventually("an answer", Duration::from_secs(30), || async {
            client.call(request).await.ok()
        })
        .await
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn request(worker: usize, i: usize) -> OrderRequest {
    let kind = if (worker + i).is_multiple_of(4) {
        TradeKind::Sell
    } else {
        TradeKind::Buy
    };
    order(
        &format!("f-{worker}-{i}"),
        STOCKS[(worker + i) % STOCKS.len()],
        (i % 3 + 1) as i64,
        kind,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_leader_mid_load_loses_and_duplicates_nothing() {
    let mut catalog = RunningCatalog::start().await;
    let addrs: BTreeMap<ReplicaId, String> = (1..=3)
        .zip(spare_ports(3))
        .map(|(id, port)| (id, format!("127.0.0.1:{port}")))
        .collect();
    let mut replicas = Replicas {
        addrs,
        catalog: catalog.addr.clone(),
        root: tempfile::tempdir().unwrap(),
        children: BTreeMap::new(),
    };
    for id in 1..=3 {
        replicas.spawn(id);
    }
    for id in 1..=3 {
        eventually("replica up", Duration::from_secs(30), || {
            replicas.status(id)
        })
        .await;
    }
    replicas.first_election(1).await;
    replicas
        .place(1, &order("warm", STOCKS[0], 1, TradeKind::Buy))
        .await;

    // Load through the leader until it dies; every acknowledgement is kept.
    let acked: Arc<Mutex<BTreeMap<String, LogPosition>>> = Arc::default();
    let leader = replicas.client(1);
    let workers: Vec<_> = (0..6)
        .map(|worker| {
            let (leader, acked) = (leader.clone(), acked.clone());
            tokio::spawn(async move {
                let mut attempted = Vec::new();
                for i in 0..2_000 {
                    let request = request(worker, i);
                    attempted.push(request.clone());
                    // A transient refusal is retried under the same id (at most 20 times,
                    // as a front end would); once the leader is dead the worker stops.
                    let mut answer = leader.call(&request).await;
                    for _ in 0..20 {
                        match &answer {
                            Err(e) if e.is_retryable() => {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                answer = leader.call(&request).await;
                            }
                            _ => break,
                        }
                    }
                    match answer {
                        Ok(OrderResponse::Placed { number, epoch }) => {
                            let OrderRequest::PlaceOrder(order) = &request else {
                                unreachable!()
                            };
                            acked.lock().unwrap().insert(
                                order.request_id.to_string(),
                                LogPosition { epoch, number },
                            );
                        }
                        _ => break,
                    }
                }
                attempted
            })
        })
        .collect();
    eventually("orders acknowledged", Duration::from_secs(60), || async {
        (acked.lock().unwrap().len() >= 400).then_some(())
    })
    .await;
    replicas.kill(1);
    let mut attempted = Vec::new();
    for worker in workers {
        attempted.extend(worker.await.unwrap());
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        attempted.len() > acked.len(),
        "the kill landed after the load"
    );

    // Elect the highest-id live in-sync survivor at the catalog, once the dead leader's lease
    // has run out (a front end retries the same way).
    let all = (1..=3).map(|id| (id, replicas.client(id))).collect();
    let recorder = replicas.catalog_client();
    let elected = eventually("an election", Duration::from_secs(10), || async {
        match clients::election::ensure_leader(&recorder, &all, Duration::from_secs(2)).await {
            Err(clients::election::ElectionError::LeaderElsewhere(_)) => None,
            other => Some(other.unwrap()),
        }
    })
    .await;
    assert!(elected.elected && elected.record.epoch == 2, "{elected:?}");
    let new_leader = elected.record.leader.unwrap();
    assert_ne!(new_leader, 1);

    // Every request again, same ids: acknowledged ones keep their numbers, the rest land once.
    let mut numbers = BTreeSet::new();
    attempted.push(order("warm", STOCKS[0], 1, TradeKind::Buy));
    for request in &attempted {
        let number = placed(replicas.place(new_leader, request).await);
        let OrderRequest::PlaceOrder(order) = request else {
            unreachable!()
        };
        if let Some(&first) = acked.get(order.request_id.as_str()) {
            assert_eq!(
                number, first.number,
                "{} changed its number",
                order.request_id
            );
        }
        assert!(numbers.insert(number), "number {number} given twice");
    }
    assert_eq!(
        numbers,
        (0..attempted.len() as u64).collect::<BTreeSet<u64>>()
    );

    // The old leader comes back, learns the new epoch, sets aside what only it had.
    replicas.spawn(1);
    eventually("old leader up", Duration::from_secs(30), || {
        replicas.status(1)
    })
    .await;
    let target = replicas.status(new_leader).await.unwrap().last;
    eventually("old leader caught up", Duration::from_secs(30), || async {
        let status = replicas.status(1).await?;
        (status.role == Role::Follower && status.last == target).then_some(())
    })
    .await;
    let reference = order::log::read_entries(&order::log::log_file(&replicas.dir(new_leader)))
        .unwrap()
        .0;
    for id in 1..=3 {
        let log = order::log::read_entries(&order::log::log_file(&replicas.dir(id)))
            .unwrap()
            .0;
        assert_eq!(log, reference, "replica {id} differs");
    }

    // Each trade reached the catalog once: its stock is what the log implies.
    let initial: BTreeMap<StockName, u64> = STOCKS
        .iter()
        .map(|s| (StockName::new(*s).unwrap(), 100_000))
        .collect();
    let expected = order::audit::expected_stock(&initial, &reference).unwrap();
    for (name, (quantity, volume)) in &expected {
        let quote = catalog.client.lookup(name).await.unwrap().unwrap();
        assert_eq!(
            (quote.quantity, quote.volume),
            (*quantity, *volume),
            "{name}"
        );
    }

    // The audit command agrees.
    let dir_args: Vec<String> = (1..=3)
        .flat_map(|id| {
            [
                "--state-dir".to_string(),
                replicas.dir(id).display().to_string(),
            ]
        })
        .collect();
    let audit = tokio::task::spawn_blocking({
        let catalog = catalog.addr.clone();
        move || {
            Command::new(env!("CARGO_BIN_EXE_order"))
                .arg("audit")
                .args(&dir_args)
                .args(["--catalog", &catalog, "--seed"])
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/catalog.csv"))
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit.status.success() && report.contains("audit: clean"),
        "{report}"
    );
    drop(replicas);
    catalog.stop().await;
}
