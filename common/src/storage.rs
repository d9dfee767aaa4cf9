//! What a service does when its disk fails (full, read-only, EIO): it acknowledges nothing
//! more, reports the failure once and in its health, and once the state directory takes
//! writes again it starts afresh from its log in the same process (same pid, same flags), so
//! nobody has to repair a file or restart it by hand. Restarting rather than retrying is
//! deliberate: after a failed fsync the kernel may have dropped the dirty pages, so what is
//! in memory can no longer be trusted to match the disk; only the log can.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{debug, info};

/// How a service's `run` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It was asked to stop.
    Stopped,
    /// Its storage failed and has recovered: start again from the log.
    RestartFromLog,
}

/// Bytes the probe writes: room for a few log batches, not just one byte.
const PROBE_BYTES: usize = 64 * 1024;

/// Name of the probe file in the state directory.
const PROBE_FILE: &str = ".storage-probe";

/// Whether `dir` takes a write of some size and its fsync now (the probe file is removed).
pub fn writable(dir: &Path) -> bool {
    let path = dir.join(PROBE_FILE);
    let probe = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&[0u8; PROBE_BYTES])?;
        file.sync_all()
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
