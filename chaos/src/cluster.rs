//! A whole Stock Bazaar as real processes: the catalog, three order replicas and one or more
//! front ends, each with its own state directory and stderr file in one temporary directory,
//! on loopback ports or each in its own network namespace. Processes are faulted by name
//! (`catalog`, `order-1`..`order-3`, `frontend-0`..) and restarted with the same address,
//! state and flags.
//!
//! The temporary directory is removed when the cluster is dropped, unless the test is
//! panicking (or [`Cluster::keep_state`] was called): then it is kept and its path printed,
//! with every process's log in it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;

use crate::bins;
use crate::disk::SmallDisk;
use crate::http::HttpClient;
use crate::netns::{NetRuntime, Topology, CLIENT};
use crate::process::{Launch, Process};
use crate::{poll, Error, Result};

/// Name of the catalog process.
pub const CATALOG: &str = "catalog";
/// Replica ids.
pub const REPLICAS: [u32; 3] = [1, 2, 3];
/// One HTTP request to a front end's control routes (`/health`, `/metrics`) takes at most
/// this long.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Name of replica `id`'s process.
pub fn order_name(id: u32) -> String {
    format!("order-{id}")
}

/// Name of front end `index`'s process.
pub fn frontend_name(index: usize) -> String {
    format!("frontend-{index}")
}

/// The two replicas other than `leader`, lowest id first.
pub fn followers(leader: u32) -> (u32, u32) {
    let mut others = REPLICAS.into_iter().filter(|&id| id != leader);
    match (others.next(), others.next()) {
        (Some(a), Some(b)) => (a, b),
        // `leader` is not a replica id: any two.
        _ => (REPLICAS[0], REPLICAS[1]),
    }
}

/// The replicas' `--write-quorum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteQuorum {
    /// `all`: every follower the leader believes up.
    All,
    /// `majority`: also a majority of the three.
    Majority,
}

impl fmt::Display for WriteQuorum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WriteQuorum::All => "all",
            WriteQuorum::Majority => "majority",
        })
    }
}

/// Where the processes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On 127.0.0.1, on spare ports.
    Loopback,
    /// Each in its own network namespace on one bridge (see [`crate::netns`]); needs root.
    Namespaces,
}

/// What one front end gets beyond the common flags.
#[derive(Debug, Clone, Default)]
pub struct FrontendOptions {
    /// Environment added to its process (e.g. libfaketime).
    pub env: Vec<(String, String)>,
    /// Extra flags.
    pub args: Vec<String>,
    /// Not started by [`Cluster::start`]; start it later with [`Cluster::start_process`].
    pub deferred: bool,
}

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Names the temporary directory (and helps find it when kept).
    pub label: String,
    /// The replicas' write quorum.
    pub write_quorum: WriteQuorum,
    /// How many front ends.
    pub frontends: usize,
    /// `--replicate-timeout-ms`.
    pub replicate_timeout: Duration,
    /// `--commit-timeout-ms`.
    pub commit_timeout: Duration,
    /// The front ends' `--cache-size`.
    pub cache_size: usize,
    /// The front ends' `--failover-deadline-ms`, when set.
    pub failover_deadline: Option<Duration>,
    /// The front ends' `--health-interval-ms`, when set.
    pub health_interval: Option<Duration>,
    /// Per front end (by index) extras.
    pub frontend: BTreeMap<usize, FrontendOptions>,
    /// Loopback or network namespaces.
    pub placement: Placement,
    /// How long start-up (every front end's `/health` 200) may take.
    pub startup_timeout: Duration,
    /// `RUST_LOG` of every process.
    pub log_filter: String,
    /// Environment added to every process.
    pub env: Vec<(String, String)>,
    /// Processes whose state directory is a tmpfs of this many bytes (see [`crate::disk`]).
    pub small_disks: BTreeMap<String, u64>,
}

impl ClusterOptions {
    /// One front end on loopback, the flags of the project's own failover tests.
    pub fn new(label: impl Into<String>, write_quorum: WriteQuorum) -> Self {
        ClusterOptions {
            label: label.into(),
            write_quorum,
            frontends: 1,
            replicate_timeout: Duration::from_millis(300),
            commit_timeout: Duration::from_millis(3000),
            cache_size: 5,
            failover_deadline: None,
            health_interval: None,
            frontend: BTreeMap::new(),
            placement: Placement::Loopback,
            startup_timeout: Duration::from_secs(30),
            log_filter: "info".into(),
            env: Vec::new(),
            small_disks: BTreeMap::new(),
        }
    }

    /// Process `name`'s state directory is a tmpfs of `bytes`, to be filled with
    /// [`Cluster::disk`].
    pub fn small_disk(mut self, name: &str, bytes: u64) -> Self {
        self.small_disks.insert(name.to_owned(), bytes);
        self
    }

    /// With `count` front ends.
    pub fn frontends(mut self, count: usize) -> Self {
        self.frontends = count;
        self
    }

    /// Adds `key=value` to front end `index`'s environment.
    pub fn frontend_env(mut self, index: usize, key: &str, value: &str) -> Self {
        self.frontend
            .entry(index)
            .or_default()
            .env
            .push((key.into(), value.into()));
        self
    }

    /// Front end `index` is not started with the cluster.
    pub fn deferred(mut self, index: usize) -> Self {
        self.frontend.entry(index).or_default().deferred = true;
        self
    }

    /// Runs every process in its own network namespace.
    pub fn in_namespaces(mut self) -> Self {
        self.placement = Placement::Namespaces;
        self
    }
}

/// A front end's `GET /health` when it is 200.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The leader it names.
    pub leader: Option<u32>,
    /// Its epoch.
    pub epoch: Option<u64>,
    /// The replicas in sync, as the record it holds says.
    pub in_sync: Vec<u32>,
}

/// What `order audit` said.
#[derive(Debug, Clone)]
pub struct AuditOutcome {
    /// Whether it exited 0.
    pub clean: bool,
    /// Its stdout and stderr.
    pub output: String,
}

/// The running system.
pub struct Cluster {
    options: ClusterOptions,
    processes: BTreeMap<String, Process>,
    addrs: BTreeMap<String, String>,
    /// Where each backend serves its metrics.
    metrics_addrs: BTreeMap<String, String>,
    token: String,
    net: NetRuntime,
    topology: Option<Topology>,
    disks: BTreeMap<String, SmallDisk>,
    state: Option<tempfile::TempDir>,
    root: PathBuf,
    keep: bool,
}

impl Cluster {
    /// Starts the catalog, the replicas and every front end not deferred, and waits until
    /// each of those front ends answers `GET /health` with 200.
    pub async fn start(options: ClusterOptions) -> Result<Cluster> {
        let dir = tokio::task::spawn_blocking(bins::bin_dir)
            .await
            .map_err(|e| Error::Binaries(e.to_string()))??;
        let state = tempfile::Builder::new()
            .prefix(&format!("chaos-{}-", options.label))
            .tempdir()?;
        let root = state.path().to_path_buf();
        let token: String = {
            let mut rng = rand::thread_rng();
            (0..32)
                .map(|_| char::from(b"0123456789abcdef"[rng.gen_range(0..16)]))
                .collect()
        };

        let mut names = vec![CATALOG.to_owned()];
        names.extend(REPLICAS.iter().map(|&id| order_name(id)));
        names.extend((0..options.frontends).map(frontend_name));

        let backends = 1 + REPLICAS.len();
        let (addrs, metrics_addrs, topology, net) = match options.placement {
            Placement::Loopback => {
                let ports = testkit::spare_ports(names.len() + backends);
                let addrs = names
                    .iter()
                    .zip(&ports)
                    .map(|(name, port)| (name.clone(), format!("127.0.0.1:{port}")))
                    .collect();
                let metrics_addrs = names
                    .iter()
                    .zip(&ports[names.len()..])
                    .map(|(name, port)| (name.clone(), format!("127.0.0.1:{port}")))
                    .collect();
                (addrs, metrics_addrs, None, NetRuntime::current())
            }
            Placement::Namespaces => {
                let members: Vec<&str> = names.iter().map(String::as_str).collect();
                // A few dozen short `ip` commands; fine to block on at start-up.
                let topology = Topology::create(&members)?;
                let mut addrs = BTreeMap::new();
                let mut metrics_addrs = BTreeMap::new();
                for (i, name) in names.iter().enumerate() {
                    let host = &topology.member(name)?.addr;
                    addrs.insert(name.clone(), format!("{host}:{}", 7000 + i));
                    if i < backends {
                        metrics_addrs.insert(name.clone(), format!("{host}:{}", 9100 + i));
                    }
                }
                let client = topology.member(CLIENT)?.namespace.clone();
                let net = NetRuntime::in_namespace(&client)?;
                (addrs, metrics_addrs, Some(topology), net)
            }
        };

        let mut cluster = Cluster {
            options,
            processes: BTreeMap::new(),
            addrs,
            metrics_addrs,
            token,
            net,
            topology,
            disks: BTreeMap::new(),
            state: Some(state),
            root,
            keep: false,
        };
        for (name, &bytes) in &cluster.options.small_disks {
            let disk = SmallDisk::mount(&cluster.root.join(name), bytes)?;
            cluster.disks.insert(name.clone(), disk);
        }
        for name in names {
            let launch = cluster.launch(&name, &dir)?;
            cluster
                .processes
                .insert(name.clone(), Process::new(name, launch));
        }
        cluster.start_process(CATALOG)?;
        for id in REPLICAS {
            cluster.start_process(&order_name(id))?;
        }
        let started: Vec<usize> = (0..cluster.options.frontends)
            .filter(|i| !cluster.options.frontend.get(i).is_some_and(|f| f.deferred))
            .collect();
        for &i in &started {
            cluster.start_process(&frontend_name(i))?;
        }
        let limit = cluster.options.startup_timeout;
        for i in started {
            if let Err(e) = cluster.wait_healthy(i, limit).await {
                // Keep the logs: they say why it did not start.
                cluster.keep_state();
                return Err(e);
            }
        }
        Ok(cluster)
    }

    fn launch(&self, name: &str, dir: &Path) -> Result<Launch> {
        let options = &self.options;
        let addr = |n: &str| self.addrs.get(n).cloned().unwrap_or_default();
        let peers = REPLICAS
            .iter()
            .map(|&id| format!("{id}={}", addr(&order_name(id))))
            .collect::<Vec<_>>()
            .join(",");
        let catalog = addr(CATALOG);
        let mut env: Vec<(OsString, OsString)> = vec![
            ("RUST_LOG".into(), options.log_filter.clone().into()),
            // Every flag has an environment fallback; a binary without the flag ignores it.
            ("BAZAAR_CLUSTER_TOKEN".into(), self.token.clone().into()),
        ];
        env.extend(
            options
                .env
                .iter()
                .map(|(k, v)| (k.clone().into(), v.clone().into())),
        );
        let mut args: Vec<String>;
        let program;
        if name == CATALOG {
            program = dir.join("catalog");
            args = vec!["--listen".into(), catalog];
            args.push("--state-dir".into());
            args.push(self.root.join(CATALOG).display().to_string());
            args.push("--seed".into());
            args.push(bins::seed_file().display().to_string());
            // Through the environment, so that older binaries (BAZAAR_BIN_DIR) without the
            // flag start too.
            env.push(("ORDER_PEERS".into(), peers.into()));
            args.push("--metrics-listen".into());
            args.push(self.metrics_addrs.get(name).cloned().unwrap_or_default());
        } else if let Some(id) = REPLICAS.iter().find(|&&id| order_name(id) == name) {
            program = dir.join("order");
            args = vec![
                "--id".into(),
                id.to_string(),
                "--peers".into(),
                peers,
                "--listen".into(),
                addr(name),
                "--catalog".into(),
                catalog,
                "--state-dir".into(),
                self.root.join(name).display().to_string(),
                "--write-quorum".into(),
                options.write_quorum.to_string(),
                "--replicate-timeout-ms".into(),
                options.replicate_timeout.as_millis().to_string(),
                "--commit-timeout-ms".into(),
                options.commit_timeout.as_millis().to_string(),
                "--metrics-listen".into(),
                self.metrics_addrs.get(name).cloned().unwrap_or_default(),
            ];
        } else if let Some(index) = (0..options.frontends).find(|&i| frontend_name(i) == name) {
            program = dir.join("frontend");
            args = vec![
                "--listen".into(),
                addr(name),
                "--catalog".into(),
                catalog,
                "--order-peers".into(),
                peers,
                "--cache-size".into(),
                options.cache_size.to_string(),
            ];
            if let Some(deadline) = options.failover_deadline {
                args.push("--failover-deadline-ms".into());
                args.push(deadline.as_millis().to_string());
            }
            if let Some(interval) = options.health_interval {
                args.push("--health-interval-ms".into());
                args.push(interval.as_millis().to_string());
            }
            if let Some(extra) = options.frontend.get(&index) {
                args.extend(extra.args.iter().cloned());
                env.extend(
                    extra
                        .env
                        .iter()
                        .map(|(k, v)| (k.clone().into(), v.clone().into())),
                );
            }
        } else {
            return Err(Error::UnknownProcess(name.to_owned()));
        }
        let netns = match &self.topology {
            Some(topology) => Some(topology.member(name)?.namespace.clone()),
            None => None,
        };
        Ok(Launch {
            program,
            args: args.into_iter().map(OsString::from).collect(),
            env,
            netns,
            stderr: self.root.join(format!("{name}.stderr")),
        })
    }

    fn process(&mut self, name: &str) -> Result<&mut Process> {
        self.processes
            .get_mut(name)
            .ok_or_else(|| Error::UnknownProcess(name.to_owned()))
    }

    /// Starts `name` (deferred, or killed earlier).
    pub fn start_process(&mut self, name: &str) -> Result<()> {
        self.process(name)?.start()
    }

    /// SIGKILL.
    pub fn kill(&mut self, name: &str) -> Result<()> {
        self.process(name)?.kill()
    }

    /// SIGTERM, waiting up to `limit` for `name` to exit (see [`Process::terminate`]).
    pub async fn terminate(&mut self, name: &str, limit: Duration) -> Result<Duration> {
        self.process(name)?.terminate(limit).await
    }

    /// SIGSTOP.
    pub fn freeze(&mut self, name: &str) -> Result<()> {
        self.process(name)?.freeze()
    }

    /// SIGCONT.
    pub fn thaw(&mut self, name: &str) -> Result<()> {
        self.process(name)?.thaw()
    }

    /// Kills `name` if it runs and starts it again with the same address, state and flags.
    /// Does not wait for it to serve.
    pub fn restart(&mut self, name: &str) -> Result<()> {
        self.process(name)?.restart()
    }

    /// Whether `name` runs (frozen counts as running).
    pub fn is_running(&mut self, name: &str) -> bool {
        self.process(name).is_ok_and(|p| p.is_running())
    }

    /// Whether `name` is frozen.
    pub fn is_frozen(&self, name: &str) -> bool {
        self.processes.get(name).is_some_and(Process::is_frozen)
    }

    /// The small disk under `name`'s state directory (see [`ClusterOptions::small_disk`]).
    pub fn disk(&self, name: &str) -> Result<&SmallDisk> {
        self.disks
            .get(name)
            .ok_or_else(|| Error::Invalid(format!("{name} has no small disk")))
    }

    /// The pid of `name`, while it runs.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.processes.get(name).and_then(Process::pid)
    }

    /// The options it was started with.
    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    /// The address `name` listens on.
    pub fn addr(&self, name: &str) -> Result<&str> {
        self.addrs
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| Error::UnknownProcess(name.to_owned()))
    }

    /// Where process `name`'s log (its stderr) goes.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.stderr"))
    }

    /// Where backend `name` (the catalog or a replica) serves its metrics.
    pub fn metrics_addr(&self, name: &str) -> Result<&str> {
        self.metrics_addrs
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| Error::UnknownProcess(name.to_owned()))
    }

    /// Front end `index`'s HTTP address.
    pub fn frontend_addr(&self, index: usize) -> Result<String> {
        self.addr(&frontend_name(index)).map(str::to_owned)
    }

    /// Indexes of the front ends running now.
    pub fn running_frontends(&mut self) -> Vec<usize> {
        (0..self.options.frontends)
            .filter(|&i| self.is_running(&frontend_name(i)))
            .collect()
    }

    /// Replica `id`'s state directory (holding `orders.log`).
    pub fn order_dir(&self, id: u32) -> PathBuf {
        self.root.join(order_name(id))
    }

    /// The directory holding every state directory and log.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The cluster token every process got.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Keeps the temporary directory after the cluster is dropped.
    pub fn keep_state(&mut self) {
        self.keep = true;
    }

    /// The namespaces, for partitions; `None` on loopback.
    pub fn topology(&mut self) -> Option<&mut Topology> {
        self.topology.as_mut()
    }

    /// Runs `future` where the cluster's addresses are reachable (inside the client
    /// namespace, or here on loopback).
    pub async fn on_net<T, F>(&self, future: F) -> Result<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.net.run(future).await
    }

    /// The runtime [`Cluster::on_net`] uses, to spawn long-running tasks on.
    pub fn net(&self) -> &tokio::runtime::Handle {
        self.net.handle()
    }

    /// Front end `index`'s `GET /health`, whatever its status.
    pub async fn health_answer(&self, index: usize) -> Option<crate::http::Answer> {
        let addr = self.frontend_addr(index).ok()?;
        self.on_net(async move { HttpClient::new(addr).get("/health", PROBE_TIMEOUT).await })
            .await
            .ok()?
            .ok()
    }

    /// Front end `index`'s `GET /health` if it is 200.
    pub async fn health(&self, index: usize) -> Option<Health> {
        let addr = self.frontend_addr(index).ok()?;
        let answer = self
            .on_net(async move { HttpClient::new(addr).get("/health", PROBE_TIMEOUT).await })
            .await
            .ok()?
            .ok()?;
        if answer.status != 200 {
            return None;
        }
        let json = answer.json();
        let data = json.as_ref().map(|v| &v["data"]);
        Some(Health {
            leader: data
                .and_then(|d| d["leader"].as_u64())
                .and_then(|l| u32::try_from(l).ok()),
            epoch: data.and_then(|d| d["epoch"].as_u64()),
            in_sync: data
                .and_then(|d| d["in_sync"].as_array())
                .map(|ids| {
                    ids.iter()
                        .filter_map(|id| id.as_u64().and_then(|id| u32::try_from(id).ok()))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// Whether front end `index` answers HTTP at all (any status).
    pub async fn answers(&self, index: usize) -> bool {
        let Ok(addr) = self.frontend_addr(index) else {
            return false;
        };
        matches!(
            self.on_net(async move { HttpClient::new(addr).get("/health", PROBE_TIMEOUT).await })
                .await,
            Ok(Ok(_))
        )
    }

    /// Waits until front end `index` answers `GET /health` with 200.
    pub async fn wait_healthy(&self, index: usize, limit: Duration) -> Result<Health> {
        poll(
            &format!("{} to be healthy", frontend_name(index)),
            limit,
            Duration::from_millis(50),
            || self.health(index),
        )
        .await
    }

    /// Waits until front end `index` answers `GET /health` with 200 and names all three
    /// replicas in sync.
    pub async fn wait_all_in_sync(&self, index: usize, limit: Duration) -> Result<Health> {
        poll(
            &format!("{} to report every replica in sync", frontend_name(index)),
            limit,
            Duration::from_millis(20),
            || async {
                self.health(index)
                    .await
                    .filter(|health| health.in_sync.len() == 3)
            },
        )
        .await
    }

    /// Waits until front end `index` answers HTTP at all (it started; it may still be 503).
    pub async fn wait_answering(&self, index: usize, limit: Duration) -> Result<()> {
        poll(
            &format!("{} to answer", frontend_name(index)),
            limit,
            Duration::from_millis(50),
            || async { self.answers(index).await.then_some(()) },
        )
        .await
    }

    /// The leader front end `index` names, waiting up to 10 s for it to be healthy.
    pub async fn leader(&self, index: usize) -> Result<u32> {
        poll(
            &format!("{} to name a leader", frontend_name(index)),
            Duration::from_secs(10),
            Duration::from_millis(50),
            || async { self.health(index).await.and_then(|h| h.leader) },
        )
        .await
    }

    /// Front end `index`'s `GET /metrics` page.
    pub async fn metrics(&self, index: usize) -> Option<String> {
        let addr = self.frontend_addr(index).ok()?;
        let answer = self
            .on_net(async move { HttpClient::new(addr).get("/metrics", PROBE_TIMEOUT).await })
            .await
            .ok()?
            .ok()?;
        (answer.status == 200).then_some(answer.body)
    }

    /// The value of the unlabelled sample `metric` on front end `index`'s metrics page.
    pub async fn metric(&self, index: usize, metric: &str) -> Option<f64> {
        let page = self.metrics(index).await?;
        metric_value(&page, metric)
    }

    /// Runs `order audit` over the three state directories against the catalog.
    pub async fn audit(&self) -> Result<AuditOutcome> {
        let order = bins::binary("order")?;
        let mut command = match &self.topology {
            Some(topology) => {
                let mut command = tokio::process::Command::new("ip");
                command
                    .args(["netns", "exec", &topology.member(CLIENT)?.namespace])
                    .arg(order);
                command
            }
            None => tokio::process::Command::new(order),
        };
        command.arg("audit");
        for id in REPLICAS {
            command.arg("--state-dir").arg(self.order_dir(id));
        }
        command
            .arg("--catalog")
            .arg(self.addr(CATALOG)?)
            .arg("--seed")
            .arg(bins::seed_file())
            .env("BAZAAR_CLUSTER_TOKEN", &self.token)
            .kill_on_drop(true);
        let limit = Duration::from_secs(30);
        let output = tokio::time::timeout(limit, command.output())
            .await
            .map_err(|_| Error::Timeout {
                what: "order audit".into(),
                limit,
            })??;
        Ok(AuditOutcome {
            clean: output.status.success(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        })
    }
}

/// The value of an unlabelled sample in a Prometheus text page.
pub fn metric_value(page: &str, metric: &str) -> Option<f64> {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.split_once(char::is_whitespace)?;
            (name == metric).then(|| value.trim().parse().ok())?
        })
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Processes (SIGCONT, then SIGKILL: see `Process`'s drop) before the namespaces they
        // live in.
        self.processes.clear();
        self.disks.clear();
        self.topology = None;
        if let Some(state) = self.state.take() {
            if self.keep || std::thread::panicking() {
                let path = state.keep();
                eprintln!(
                    "chaos: kept the cluster's state and logs in {}",
                    path.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_values_are_read_from_unlabelled_samples() {
        let page = "# HELP bazaar_order_elections_total Leader elections run.\n\
                    # TYPE bazaar_order_elections_total counter\n\
                    bazaar_order_elections_total 7\n\
                    bazaar_requests_total{route=\"trade\"} 3\n";
        assert_eq!(
            metric_value(page, "bazaar_order_elections_total"),
            Some(7.0)
        );
        assert_eq!(metric_value(page, "bazaar_requests_total"), None);
        assert_eq!(metric_value(page, "missing"), None);
    }
}
