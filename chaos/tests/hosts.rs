//! One process per host, as `deploy/` installs it on VMs: the bundle `deploy/bundle.sh`
//! makes is used unchanged. Each service runs in its own network namespace with its own
//! address, its own `/etc/hosts` (the bundle's `hosts` lines, so peers are found by name),
//! the bundle mounted at `/opt/bazaar` and a state directory of its own mounted at
//! `/var/lib/bazaar`, started with nothing in its environment but the bundle's `cluster.env`
//! and its own env file. Nothing can reach another service on loopback or share its disk, so
//! a setting that assumes one host fails here. Each backend's metrics port is scraped from the
//! client's host (with the bundle's token; refused without). Under the client: the leader killed and
//! restarted, then the audit over the network. Beside it, `deploy/test.sh` on the same
//! binaries.
//!
//! Needs root, `ip` and `iptables` (as the partition tests) and `unshare`; without them it
//! prints `SKIPPED` and passes.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use chaos::bins::{bin_dir, workspace_root};
use chaos::docker::wait_for;
use chaos::netns::{self, NetRuntime, Topology, CLIENT};
use chaos::observe;

const SERVICES: [&str; 5] = ["catalog", "order1", "order2", "order3", "frontend"];

/// The binary a service runs.
fn binary(service: &str) -> &'static str {
    match service {
        "catalog" => "catalog",
        "frontend" => "frontend",
        _ => "order",
    }
}

/// The hosts: network namespaces with their `/etc/netns/<ns>/hosts`, and the mount points
/// this test made; removed on drop.
struct Hosts {
    topology: Topology,
    etc: Vec<PathBuf>,
    mount_points: Vec<&'static str>,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for dir in &self.etc {
            let _ = std::fs::remove_dir_all(dir);
        }
        for dir in &self.mount_points {
            // Only if still empty: nothing of anyone else's is removed.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The tests of this file one at a time (both start processes and build bundles).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `script` with `sh` as a host `member` would: in its namespace, with the bundle at
/// `/opt/bazaar`, `state` at `/var/lib/bazaar`, and only the environment the bundle gives
/// `service` (none for the client host).
fn on_host(
    hosts: &Hosts,
    member: &str,
    bundle: &Path,
    state: &Path,
    env_of: Option<&str>,
    script: &str,
) -> Command {
    let namespace = &hosts.topology.member(member).unwrap().namespace;
    let env = match env_of {
        Some(service) => format!(
            "set -a; . /opt/bazaar/env/cluster.env; . /opt/bazaar/env/{service}.env; set +a; "
        ),
        None => "set -a; . /opt/bazaar/env/cluster.env; set +a; ".to_owned(),
    };
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", namespace])
        .args(["unshare", "--mount", "--propagation", "private"])
        .args([
            "env",
            "-i",
            "PATH=/opt/bazaar/bin:/usr/bin:/bin",
            "sh",
            "-c",
        ])
        .arg(format!(
            "set -e; mount --bind {} /opt/bazaar; mount --bind {} /var/lib/bazaar; \
             cd /opt/bazaar; {env}{script}",
            bundle.display(),
            state.display()
        ));
    command
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A running service and how to start it again.
struct Service {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn one_process_per_host_from_the_bundle() {
    if let Err(why) = netns::available() {
        eprintln!("SKIPPED: no network namespaces: {why}");
        return;
    }
    if Command::new("unshare").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no unshare command (util-linux)");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // The mount points every host's services expect (empty; the bundle and the state are
    // mounted over them inside each namespace only).
    let mut mount_points = Vec::new();
    for dir in ["/opt/bazaar", "/var/lib/bazaar"] {
        if !Path::new(dir).exists() {
            std::fs::create_dir_all(dir).unwrap();
            mount_points.push(dir);
        }
    }
    let topology = Topology::create(&SERVICES).unwrap();
    let work = tempfile::tempdir().unwrap();
    let hosts_file = work.path().join("hosts");
    let lines: String = SERVICES
        .iter()
        .map(|s| format!("{s} {}\n", topology.member(s).unwrap().addr))
        .collect();
    std::fs::write(&hosts_file, lines).unwrap();
    let bundle = work.path().join("bundle");
    let bins = bin_dir().unwrap();
    let made = Command::new("bash")
        .arg(workspace_root().join("deploy/bundle.sh"))
        .arg(&hosts_file)
        .arg(&bundle)
        .arg(&bins)
        .output()
        .unwrap();
    assert!(made.status.success(), "bundle.sh: {}", text(&made));

    // Each host resolves the cluster's names from the bundle's hosts lines.
    let names = std::fs::read_to_string(bundle.join("hosts")).unwrap();
    let mut hosts = Hosts {
        topology,
        etc: Vec::new(),
        mount_points,
    };
    for member in SERVICES.iter().chain([&CLIENT]) {
        let namespace = hosts.topology.member(member).unwrap().namespace.clone();
        let etc = PathBuf::from("/etc/netns").join(&namespace);
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("hosts"), format!("127.0.0.1 localhost\n{names}")).unwrap();
        hosts.etc.push(etc);
    }
    let state = |service: &str| {
        let dir = work.path().join("disks").join(service);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    };
    let start = |service: &'static str, hosts: &Hosts| -> Service {
        let log = work.path().join(format!("{service}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = on_host(
            hosts,
            service,
            &bundle,
            &state(service),
            Some(service),
            &format!("exec {}", binary(service)),
        )
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
        Service {
            name: service,
            child: Some(child),
            log,
        }
    };
    let health = |service: &str, hosts: &Hosts| -> Result<String, String> {
        let out = on_host(
            hosts,
            service,
            &bundle,
            &state(service),
            Some(service),
            &format!("{} health", binary(service)),
        )
        .output()
        .unwrap();
        if out.status.success() {
            Ok(text(&out))
        } else {
            Err(text(&out))
        }
    };
    let mut services: Vec<Service> = SERVICES.iter().map(|s| start(s, &hosts)).collect();
    for service in &services {
        wait_for(
            &format!("{} healthy", service.name),
            Duration::from_secs(60),
            || health(service.name, &hosts).ok(),
        )
        .unwrap_or_else(|e| {
            panic!(
                "{e}: {:?}; its log:\n{}",
                health(service.name, &hosts),
                std::fs::read_to_string(&service.log).unwrap_or_default()
            )
        });
    }
    let leader = |hosts: &Hosts| -> Option<u64> {
        let said = health("frontend", hosts).ok()?;
        let at = said.find("\"leader\":")? + "\"leader\":".len();
        said[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let client_run = |hosts: &Hosts, seed: u32| -> Output {
        on_host(
            hosts,
            CLIENT,
            &bundle,
            &state("client"),
            None,
            &format!(
                "client run --host frontend --port 8080 --sessions 4 --requests 100 --seed {seed}"
            ),
        )
        .output()
        .unwrap()
    };

    let first = client_run(&hosts, 1);
    assert!(first.status.success(), "client: {}", text(&first));
    // Each backend's metrics port, from the client's host, as a Prometheus on the network
    // would scrape it: the token from the bundle opens it, nothing else does.
    let token = std::fs::read_to_string(bundle.join("env/cluster.env")).unwrap();
    let token = token
        .trim()
        .strip_prefix("BAZAAR_CLUSTER_TOKEN=")
        .unwrap()
        .to_owned();
    let net = NetRuntime::in_namespace(&hosts.topology.member(CLIENT).unwrap().namespace).unwrap();
    let scrape = |service: &str, token: Option<String>| {
        let addr = format!("{}:9100", hosts.topology.member(service).unwrap().addr);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(net.run(async move { observe::scrape(&addr, token.as_deref()).await }))
            .unwrap()
            .unwrap()
    };
    let (status, catalog_metrics) = scrape("catalog", Some(token.clone()));
    assert_eq!(status, 200, "{catalog_metrics}");
    assert!(
        catalog_metrics.contains("bazaar_catalog_trades_total{outcome=\"traded\"}"),
        "{catalog_metrics}"
    );
    let leaders = ["order1", "order2", "order3"]
        .iter()
        .filter(|service| {
            let (status, text) = scrape(service, Some(token.clone()));
            assert_eq!(status, 200, "{service}: {text}");
            text.contains("bazaar_order_role{role=\"leader\"} 1")
        })
        .count();
    assert_eq!(leaders, 1, "one replica says it leads");
    assert_eq!(
        scrape("order1", None).0,
        401,
        "metrics served without the token"
    );
    // The leader's host loses its process; the client goes on through the new leader.
    let old = leader(&hosts).unwrap();
    let index = SERVICES
        .iter()
        .position(|s| *s == format!("order{old}"))
        .unwrap();
    let mut killed = services[index].child.take().unwrap();
    killed.kill().unwrap();
    killed.wait().unwrap();
    let second = client_run(&hosts, 2);
    assert!(second.status.success(), "client: {}", text(&second));
    let new = leader(&hosts).unwrap();
    assert_ne!(new, old, "the killed replica still leads");
    services[index] = start(SERVICES[index], &hosts);

    // The audit, over the network from the client's host, once the restarted replica caught
    // up: one history, conservation.
    let audit = || {
        on_host(
            &hosts,
            CLIENT,
            &bundle,
            &state("client"),
            Some("frontend"),
            "order audit --peers \"$ORDER_PEERS\" --catalog \"$CATALOG_ADDR\"",
        )
        .output()
        .unwrap()
    };
    let report = wait_for("a clean audit", Duration::from_secs(60), || {
        let out = audit();
        out.status.success().then(|| text(&out))
    })
    .unwrap_or_else(|e| panic!("{e}: {}", text(&audit())));
    assert!(report.contains("order logs: identical"), "{report}");
    assert!(report.contains("agree with the order log"), "{report}");
    eprintln!("{report}");
}

/// The bundle's own checks (`deploy/test.sh`) on the binaries under test: it is made from a
/// hosts file and refuses bad ones, installs into a root, and its units pass
/// `systemd-analyze verify`, which refuses broken ones.
#[test]
fn the_bundle_installs_and_its_units_verify() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bins = bin_dir().unwrap();
    let deploy = Command::new("bash")
        .arg(workspace_root().join("deploy/test.sh"))
        .env("BIN_DIR", &bins)
        .output()
        .unwrap();
    assert!(deploy.status.success(), "deploy/test.sh: {}", text(&deploy));
}
