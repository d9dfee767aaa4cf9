//! Small disks for disk-full faults: a tmpfs of a given size mounted on a process's state
//! directory, filled up to ENOSPC by a filler file and freed again by removing it. Needs the
//! right to mount ([`available`] says why not, for a test to print and skip).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::{Error, Result};

/// Name of the file that fills a disk.
const FILLER: &str = "filler";

static AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();

/// Whether this process may mount a tmpfs: `Err` says why not. Probed once per process.
pub fn available() -> Result<(), String> {
    AVAILABLE.get_or_init(probe).clone()
}

fn probe() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?;
    let disk = SmallDisk::mount(dir.path(), 64 * 1024).map_err(|e| e.to_string())?;
    drop(disk);
    Ok(())
}

/// A tmpfs mounted on a directory, unmounted when dropped.
#[derive(Debug)]
pub struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` on `dir` (created if missing).
    pub fn mount(dir: &Path, bytes: u64) -> Result<SmallDisk> {
        std::fs::create_dir_all(dir)?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .output()?;
        if !output.status.success() {
            return Err(Error::Invalid(format!(
                "cannot mount a tmpfs on {}: {}",
                dir.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(SmallDisk {
            dir: dir.to_path_buf(),
        })
    }

    /// Fills the disk with a filler file until a write fails for lack of space; returns the
    /// bytes written.
    pub fn fill(&self) -> Result<u64> {
        let mut file = std::fs::File::create(self.dir.join(FILLER))?;
        let chunk = vec![0xA5u8; 64 * 1024];
        let mut written = 0u64;
        // Bounded: a tmpfs of any size this harness mounts is full long before.
        for _ in 0..1_000_000 {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => return Err(e.into()),
            }
        }
        // Whatever is left below one chunk goes too.
        loop {
            match file.write(&chunk[..4096]) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n as u64,
            }
        }
        Ok(written)
    }

    /// Removes the filler: the space is back.
    pub fn free(&self) -> Result<()> {
        match std::fs::remove_file(self.dir.join(FILLER)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: a process that still holds a file there must not keep the mount alive.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
    }
}
