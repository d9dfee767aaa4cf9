//! Chaos tests of Stock Bazaar on real processes.
//!
//! A [`Cluster`] runs the real `catalog`, three `order` replicas and one or more `frontend`
//! binaries as separate processes, on loopback or each in its own network namespace
//! ([`netns`]), and injects process faults (SIGKILL, SIGSTOP/SIGCONT, restarts) and network
//! partitions. A [`History`] drives trades through the front ends and records every
//! operation with its outcome; [`check()`] then waits until the system is quiet and checks the
//! whole history against what the replicas and the catalog hold, returning a [`Report`] that
//! names every violation with its count.
//!
//! The binaries come from `BAZAAR_BIN_DIR` when it is set (e.g. an older build to prove a
//! test bites), else from the running test's own target directory, built once with cargo
//! ([`bins`]).

pub mod bins;
pub mod check;
pub mod cluster;
pub mod disk;
pub mod docker;
pub mod history;
pub mod http;
pub mod lookups;
pub mod netns;
pub mod observe;
pub mod process;
pub mod verdict;

pub use check::{check, Report};
pub use cluster::{Cluster, ClusterOptions, Placement, WriteQuorum};
pub use history::{History, Load, LoadHandle, Operation, Outcome, Side, Trade};
pub use verdict::Verdict;

use std::future::Future;
use std::time::Duration;

/// What can go wrong while setting up or driving a cluster (not a finding about the system
/// under test: those go into a [`Report`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The binaries could not be found or built.
    #[error("binaries: {0}")]
    Binaries(String),
    /// A process could not be started or signalled.
    #[error("process {name}: {message}")]
    Process {
        /// The process's name in the cluster (`catalog`, `order-2`, `frontend-0`).
        name: String,
        /// What failed.
        message: String,
    },
    /// No process of that name in the cluster.
    #[error("no process named {0}")]
    UnknownProcess(String),
    /// Building the image or driving the container engine failed.
    #[error("containers: {0}")]
    Setup(String),
    /// Setting up or changing the network namespaces failed.
    #[error("network namespaces: {0}")]
    Network(String),
    /// The harness was asked for something impossible (a load without workers, …).
    #[error("invalid request to the harness: {0}")]
    Invalid(String),
    /// A task of the harness (a load worker, a network task) failed.
    #[error("harness task failed: {0}")]
    Task(String),
    /// Something did not happen before its deadline.
    #[error("timed out after {limit:?} waiting for {what}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        limit: Duration,
    },
    /// A file operation failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Result of the harness's own operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Serialises the heavy tests of one test binary: each starts five or more processes and a
/// load, and on two cores several at once would turn timeouts into noise. Hold the guard
/// for the whole test (an async lock: it is held across every `.await` of the test, and
/// tests run on separate runtimes); a test that panicked releases it.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// Polls `probe` every `every` until it returns `Some`, for at most `limit` (and at most
/// `limit / every + 1` probes).
pub async fn poll<T, F, Fut>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut probe: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let most = limit.as_millis() / every.as_millis().max(1) + 1;
    for _ in 0..=most {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(every).await;
    }
    Err(Error::Timeout {
        what: what.to_owned(),
        limit,
    })
}

/// Runs a scenario `async fn NAME(mode: WriteQuorum)` once per write quorum, as the tests
/// `NAME::all` and `NAME::majority`.
#[macro_export]
macro_rules! both_modes {
    ($scenario:ident) => {
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn all() {
                super::$scenario($crate::WriteQuorum::All).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn majority() {
                super::$scenario($crate::WriteQuorum::Majority).await
            }
        }
    };
}
