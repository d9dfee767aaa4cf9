//! What a service does when its disk fails (full, read-only, EIO): it acknowledges nothing
//! more, reports the failure once and in its health, and once the state directory takes
//! writes again it starts afresh from its log in the same process (same pid, same flags), so
//! nobody has to repair a file or restart it by hand. Restarting rather than retrying is
//! deliberate: after a failed fsync the kernel may have dropped the dirty pages, so what is
//! in memory can no longer be trusted to match the disk; only the log can.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use tracing::{debug, info};

/// How a service's `run` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It was asked to stop.
    Stopped,
    /// Its storage failed and has recovered: start again from the log.
    RestartFromLog,
}

/// How often a service whose disk failed checks whether it takes writes again.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// A service's way out of a storage failure: a stop signal for its server (a child of its
/// shutdown) that also fires once the failed state directory takes writes again, and how
/// the service then ended. Clones share both.
#[derive(Debug, Clone)]
pub struct Recovery {
    stop: CancellationToken,
    restart: Arc<AtomicBool>,
    started: Arc<AtomicBool>,
}

impl Recovery {
    /// Stops with `shutdown`, or for a restart once [`Recovery::after_failure`] sees `dir`
    /// writable.
    pub fn new(shutdown: &CancellationToken) -> Self {
        Recovery {
            stop: shutdown.child_token(),
            restart: Arc::default(),
            started: Arc::default(),
        }
    }

    /// The token to serve (and run background tasks) until.
    pub fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    /// The storage under `dir` failed: from now on probe it, and stop for a restart once it
    /// is writable. Later calls do nothing.
    pub fn after_failure(&self, dir: PathBuf) {
        if self.started.swap(true, Ordering::Relaxed) {
            return;
        }
        let recovery = self.clone();
        tokio::spawn(async move {
            wait_writable(dir, PROBE_INTERVAL).await;
            recovery.restart.store(true, Ordering::Relaxed);
            recovery.stop.cancel();
        });
    }

    /// How the service ended, once its server has returned.
    pub fn ended(&self) -> Ended {
        if self.restart.load(Ordering::Relaxed) {
            Ended::RestartFromLog
        } else {
            Ended::Stopped
        }
    }
}

/// Bytes the probe writes: room for a few log batches, not just one byte.
const PROBE_BYTES: usize = 64 * 1024;

/// Name of the probe file in the state directory.
const PROBE_FILE: &str = ".storage-probe";

/// Whether `dir` takes a write of some size and its fsync now, with room for a log to go on
/// ([`crate::log_file::ROOM`] free besides; the probe file is removed).
pub fn writable(dir: &Path) -> bool {
    let path = dir.join(PROBE_FILE);
    let probe = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&[0u8; PROBE_BYTES])?;
        file.sync_all()?;
        crate::log_file::check_room(&file)
    };
    let ok = probe();
    let _ = std::fs::remove_file(&path);
    if let Err(e) = &ok {
        debug!(dir = %dir.display(), error = %e, "state directory still not writable");
    }
    ok.is_ok()
}

/// Returns once `dir` is writable again, probing every `interval`.
pub async fn wait_writable(dir: PathBuf, interval: Duration) {
    loop {
        let probe_dir = dir.clone();
        let ok = tokio::task::spawn_blocking(move || writable(&probe_dir))
            .await
            .unwrap_or(false);
        if ok {
            info!(dir = %dir.display(), "state directory writable again; restarting from the log");
            return;
        }
        tokio::time::sleep(interval).await;
    }
}

/// Replaces this process with a fresh start of the same program and arguments (same pid, same
/// environment), which recovers from its log. Returns only if that fails.
pub fn restart_in_place() -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return e,
    };
    std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .exec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_that_is_gone_is_not_writable_and_the_probe_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(writable(dir.path()));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(!writable(&dir.path().join("missing")));
    }
}
