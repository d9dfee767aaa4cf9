//! File habits shared by every service that keeps state: one process per state directory
//! (an advisory lock), and atomic replacement of small files (write, fsync, rename, fsync
//! the directory).

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::Path;

/// Creates `dir` if needed and takes its `LOCK` file. `Ok(None)` when another process holds
/// it. The lock lasts as long as the returned file is open.
pub fn lock_dir(dir: &Path) -> io::Result<Option<File>> {
    fs::create_dir_all(dir)?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))?;
    match lock.try_lock() {
        Ok(()) => Ok(Some(lock)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// Replaces `dir/name` with `bytes` so that a crash leaves either the old or the new file.
pub fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// Makes the directory's entries (creations, renames) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_per_directory_and_atomic_replacement() {
        let dir = std::env::temp_dir().join(format!("files-test-{}", std::process::id()));
        let first = lock_dir(&dir).unwrap();
        assert!(first.is_some());
        assert!(lock_dir(&dir).unwrap().is_none());
        drop(first);
        assert!(lock_dir(&dir).unwrap().is_some());
        replace_file(&dir, "x", b"one").unwrap();
        replace_file(&dir, "x", b"two").unwrap();
        assert_eq!(fs::read(dir.join("x")).unwrap(), b"two");
        assert!(!dir.join("x.tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
