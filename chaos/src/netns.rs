//! Network namespaces for partition tests: each process gets its own namespace with one
//! veth to a bridge that lives in a hub namespace the test also creates, so no interface or
//! address is ever added to the machine's own namespace. Addresses are `10.213.<n>.<k>`
//! inside those namespaces only. Partitions are iptables DROP rules inside the members'
//! namespaces; [`Topology::uncut`] removes one pair's, [`Topology::heal`] flushes them all.
//!
//! The test process itself stays in the machine's namespace: it reaches the members through
//! a [`NetRuntime`] whose thread has entered the `client` member's namespace, so every socket
//! its tasks open is made there. Everything is torn down on drop, also while panicking, and
//! namespaces left by a test process that died are removed by the next one.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use nix::sched::{setns, CloneFlags};
use tokio::runtime::Handle;

use crate::{Error, Result};

/// Prefix of every namespace this module makes; followed by the owning pid.
const PREFIX: &str = "bzc";
/// The member the test's own sockets live in.
pub const CLIENT: &str = "client";

static NEXT_TOPOLOGY: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

/// How long one `ip` or `iptables` command may take.
const COMMAND_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

fn run(program: &str, args: &[&str]) -> Result<String> {
    let mut command = Command::new(program);
    command.args(args);
    let output = crate::process::output_within(command, COMMAND_LIMIT)
        .map_err(|e| Error::Network(format!("{program} {}: {e}", args.join(" "))))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(Error::Network(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

static AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();

/// Whether this process may create network namespaces and filter traffic in them: `Err`
/// says why not (not root, no `ip`, no `iptables`), for a test to print and skip. Probed
/// once per process.
pub fn available() -> Result<(), String> {
    AVAILABLE.get_or_init(probe).clone()
}

fn probe() -> Result<(), String> {
    let probe = format!("{PREFIX}{}probe", std::process::id());
    ip(&["netns", "add", &probe]).map_err(|e| format!("cannot create a network namespace: {e}"))?;
    let filter = ip(&["netns", "exec", &probe, "iptables", "-w", "-L", "-n"])
        .map_err(|e| format!("cannot run iptables in a namespace (install iptables): {e}"));
    let _ = ip(&["netns", "del", &probe]);
    filter.map(|_| ())
}

/// Removes namespaces left behind by test processes that no longer run.
fn remove_stale() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for line in list.lines().take(10_000) {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if pid.is_empty() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = ip(&["netns", "del", name]);
        // A namespace's own /etc files (`ip netns exec` mounts them), if a test made any.
        let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(name));
    }
}

/// One member: a namespace with one address.
#[derive(Debug, Clone)]
pub struct Member {
    /// The namespace's name.
    pub namespace: String,
    /// Its address on the bridge.
    pub addr: Ipv4Addr,
}

/// Namespaces joined by one bridge, and the partition rules in force.
#[derive(Debug)]
pub struct Topology {
    hub: String,
    members: BTreeMap<String, Member>,
    /// Namespaces created so far, removed on drop (the hub last).
    created: Vec<String>,
    /// Pairs currently cut, as member names.
    cuts: Vec<(String, String)>,
}

impl Topology {
    /// Creates the hub with its bridge and one namespace per member (plus [`CLIENT`]), each
    /// linked to the bridge and addressed.
    pub fn create(members: &[&str]) -> Result<Topology> {
        remove_stale();
        let n = NEXT_TOPOLOGY.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{PREFIX}{}t{n}", std::process::id());
        let subnet = u8::try_from(n % 200).unwrap_or(0);
        let mut topology = Topology {
            hub: format!("{tag}-hub"),
            members: BTreeMap::new(),
            created: Vec::new(),
            cuts: Vec::new(),
        };
        let hub = topology.hub.clone();
        ip(&["netns", "add", &hub])?;
        topology.created.push(hub.clone());
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        let mut names: Vec<&str> = members.to_vec();
        if !names.contains(&CLIENT) {
            names.push(CLIENT);
        }
        for (i, name) in names.iter().enumerate() {
            let host =
                u8::try_from(i + 10).map_err(|_| Error::Network("too many members".into()))?;
            let namespace = format!("{tag}-{name}");
            ip(&["netns", "add", &namespace])?;
            topology.created.push(namespace.clone());
            let port = format!("p{i}");
            ip(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &namespace,
            ])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            let addr = Ipv4Addr::new(10, 213, subnet, host);
            ip(&[
                "-n",
                &namespace,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &namespace, "link", "set", "eth0", "up"])?;
            ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
            topology
                .members
                .insert((*name).to_owned(), Member { namespace, addr });
        }
        Ok(topology)
    }

    /// The member named `name`.
    pub fn member(&self, name: &str) -> Result<&Member> {
        self.members
            .get(name)
            .ok_or_else(|| Error::UnknownProcess(name.to_owned()))
    }

    fn filter(&self, member: &str, args: &[&str]) -> Result<()> {
        let namespace = self.member(member)?.namespace.clone();
        let mut full = vec!["netns", "exec", &namespace, "iptables", "-w"];
        full.extend_from_slice(args);
        ip(&full).map(|_| ())
    }

    /// Drops every packet between `a` and `b`, both ways, in both namespaces.
    pub fn cut(&mut self, a: &str, b: &str) -> Result<()> {
        let (addr_a, addr_b) = (
            self.member(a)?.addr.to_string(),
            self.member(b)?.addr.to_string(),
        );
        for (here, there) in [(a, &addr_b), (b, &addr_a)] {
            self.filter(here, &["-A", "INPUT", "-s", there, "-j", "DROP"])?;
            self.filter(here, &["-A", "OUTPUT", "-d", there, "-j", "DROP"])?;
        }
        self.cuts.push((a.to_owned(), b.to_owned()));
        Ok(())
    }

    /// Cuts every member of each group from every member of the other groups; members in
    /// no group (the catalog, the client) still reach everyone.
    pub fn partition(&mut self, groups: &[&[&str]]) -> Result<()> {
        for (i, group) in groups.iter().enumerate() {
            for other in &groups[i + 1..] {
                for a in group.iter() {
                    for b in other.iter() {
                        self.cut(a, b)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes the cut between `a` and `b` (made by [`Topology::cut`] or
    /// [`Topology::partition`], in either order), leaving every other cut in force.
    pub fn uncut(&mut self, a: &str, b: &str) -> Result<()> {
        let Some(index) = self
            .cuts
            .iter()
            .position(|(x, y)| (x == a && y == b) || (x == b && y == a))
        else {
            return Err(Error::Invalid(format!("{a} and {b} are not cut")));
        };
        let (addr_a, addr_b) = (
            self.member(a)?.addr.to_string(),
            self.member(b)?.addr.to_string(),
        );
        for (here, there) in [(a, &addr_b), (b, &addr_a)] {
            self.filter(here, &["-D", "INPUT", "-s", there, "-j", "DROP"])?;
            self.filter(here, &["-D", "OUTPUT", "-d", there, "-j", "DROP"])?;
        }
        self.cuts.remove(index);
        Ok(())
    }

    /// Removes every cut.
    pub fn heal(&mut self) -> Result<()> {
        let names: Vec<String> = self.members.keys().cloned().collect();
        for name in names {
            self.filter(&name, &["-F"])?;
        }
        self.cuts.clear();
        Ok(())
    }

    /// The pairs cut now.
    pub fn cuts(&self) -> &[(String, String)] {
        &self.cuts
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Members first (their veths go with them), the hub with its bridge last.
        for namespace in self.created.iter().rev() {
            if let Err(e) = ip(&["netns", "del", namespace]) {
                eprintln!("chaos: could not remove network namespace {namespace}: {e}");
            }
        }
    }
}

/// A tokio runtime for the test's own network traffic: the test's runtime on loopback, or a
/// thread inside a namespace.
#[derive(Debug)]
pub struct NetRuntime {
    handle: Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NetRuntime {
    /// The caller's runtime (loopback clusters).
    pub fn current() -> Self {
        NetRuntime {
            handle: Handle::current(),
            stop: None,
            thread: None,
        }
    }

    /// A single-threaded runtime on a thread that entered `namespace` first, so that every
    /// socket its tasks open belongs there.
    pub fn in_namespace(namespace: &str) -> Result<Self> {
        let path = format!("/run/netns/{namespace}");
        let (ready, handle) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("net-{namespace}"))
            .spawn(move || {
                let setup = std::fs::File::open(&path)
                    .map_err(|e| format!("{path}: {e}"))
                    .and_then(|file| {
                        setns(&file, CloneFlags::CLONE_NEWNET)
                            .map_err(|e| format!("setns {path}: {e}"))
                    })
                    .and_then(|()| {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .map_err(|e| format!("runtime: {e}"))
                    });
                match setup {
                    Ok(runtime) => {
                        let _ = ready.send(Ok(runtime.handle().clone()));
                        runtime.block_on(async {
                            let _ = stopped.await;
                        });
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                }
            })?;
        let handle = handle
            .recv()
            .map_err(|e| Error::Network(format!("namespace thread: {e}")))?
            .map_err(Error::Network)?;
        Ok(NetRuntime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The runtime's handle.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `future` on this runtime and waits for it.
    pub async fn run<T, F>(&self, future: F) -> Result<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        match self.handle.spawn(future).await {
            Ok(value) => Ok(value),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(Error::Task(format!("network task: {e}"))),
        }
    }
}

impl Drop for NetRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
