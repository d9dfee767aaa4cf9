//! An append-only file whose space is written ahead of its end. Appending to a file grows it,
//! and growing it makes every fsync write the inode as well as the data: on ext4 a second
//! synchronous write per fsync (measured on the project's VM: p50 178-230 µs for a small
//! append and fdatasync, 129-154 µs into space written before; see `bench/RESULTS.md`). A
//! [`LogFile`] keeps the space after its end written with zeros, [`CHUNK`] at a time, so an
//! append changes only data and `fdatasync` has no metadata to write.
//!
//! Space written ahead also hides a full disk: appends into it succeed after the file system
//! has filled, until the next step of space ahead fails, possibly hours later. So a log checks
//! the free space of its file system as it appends (at most every [`ROOM_EVERY`]) and fails
//! the append, as a write into a full disk would, once less than [`ROOM`] is free: the service
//! then stops acknowledging and reports the full disk while its log still has room.
//!
//! The file's readers stop at the first record that is not intact (a line, or a
//! length-prefixed record, starting with a zero byte is never one), so the zeros read as the
//! end. The space written ahead is a pure function of the length of the records
//! ([`allocated_for`]): two files holding the same records have the same bytes.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Space is written ahead in steps of this many bytes. A step costs one write of zeros (about
/// 1 ms for 1 MiB on the VM measured; 4 MiB took 15 ms, so the steps stay small).
pub const CHUNK: u64 = 1 << 20;

/// A log takes appends only while its file system has this much free: room for the next step
/// of space ahead.
pub const ROOM: u64 = CHUNK;

/// How often an appending log checks the free space of its file system.
pub const ROOM_EVERY: Duration = Duration::from_millis(100);

/// Fails, as a write into a full disk does, when the file system holding `file` has less
/// than [`ROOM`] free.
// The counts are `u64` on 64-bit Linux and narrower elsewhere.
#[allow(clippy::useless_conversion)]
pub fn check_room(file: &File) -> io::Result<()> {
    let stat = nix::sys::statvfs::fstatvfs(file).map_err(io::Error::from)?;
    room(u64::from(stat.blocks_available()).saturating_mul(u64::from(stat.fragment_size())))
}

/// Fails when `free` bytes are less than [`ROOM`].
fn room(free: u64) -> io::Result<()> {
    if free < ROOM {
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!("No space left on device: {free} bytes free, a log needs {ROOM}"),
        ));
    }
    Ok(())
}

/// Zeros written at a time.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// The size of a file whose records take `end` bytes: the next multiple of [`CHUNK`] above
/// `end`, so there is always room ahead.
pub fn allocated_for(end: u64) -> u64 {
    (end / CHUNK + 1) * CHUNK
}

/// What [`LogFile::open`] found after the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    /// Bytes after the records that were not zeros (a torn last record), now zeroed.
    pub discarded: u64,
}

/// An append-only file with its space written ahead (see the module's notes).
#[derive(Debug)]
pub struct LogFile {
    file: File,
    /// Where the next record goes.
    end: u64,
    /// The file's size: zeros from `end` to here.
    allocated: u64,
    /// When the free space was last found to be at least [`ROOM`].
    room_checked: Option<Instant>,
}

impl LogFile {
    /// Opens (creating) `path` to append after its first `end` bytes, which the caller has
    /// read as intact records. Whatever follows them is zeroed and the space ahead written,
    /// durably, before this returns; [`Tail::discarded`] says how many of those bytes were
    /// not zeros already.
    pub fn open(path: &Path, end: u64) -> io::Result<(LogFile, Tail)> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        let size = file.metadata()?.len();
        if end > size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: {end} bytes of records in a file of {size}",
                    path.display()
                ),
            ));
        }
        let discarded = nonzero_bytes(&file, end, size)?;
        let mut log = LogFile {
            file,
            end,
            allocated: size,
            room_checked: None,
        };
        if discarded > 0 || size != allocated_for(end) {
            log.reshape(end)?;
            log.file.sync_all()?;
        }
        Ok((log, Tail { discarded }))
    }

    /// Where the next record goes: the length of the records.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The file, to read from.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Writes `bytes` at the end, first writing more space ahead if they would reach it.
    /// Durable only after [`LogFile::sync`]. Fails without writing when the file system has
    /// less than [`ROOM`] free (checked at most every [`ROOM_EVERY`]).
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self
            .room_checked
            .is_none_or(|at| at.elapsed() >= ROOM_EVERY)
        {
            check_room(&self.file)?;
            self.room_checked = Some(Instant::now());
        }
        let end = self
            .end
            .checked_add(bytes.len() as u64)
            .ok_or_else(|| io::Error::other("log file too long"))?;
        if end >= self.allocated {
            let allocated = allocated_for(end);
            write_zeros(&self.file, self.allocated, allocated)?;
            self.allocated = allocated;
        }
        self.file.write_all_at(bytes, self.end)?;
        self.end = end;
        Ok(())
    }

    /// Makes every append so far durable (`fdatasync`: the data, and the size when space
    /// was written ahead since the last one).
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Cuts every record from byte `at` on, durably: they read as zeros, and the space ahead
    /// is what [`allocated_for`] gives for `at`.
    pub fn truncate(&mut self, at: u64) -> io::Result<()> {
        if at > self.end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cut at {at} beyond the end {}", self.end),
            ));
        }
        self.reshape(at)?;
        self.file.sync_all()
    }

    /// Makes the file `at` bytes of records followed by zeros up to `allocated_for(at)`.
    fn reshape(&mut self, at: u64) -> io::Result<()> {
        let allocated = allocated_for(at);
        // Shrinking first drops whatever lay beyond; what is left after `at` is zeroed. A
        // hole left by growing would be allocated at the first append into it, so it is
        // written instead.
        self.file.set_len(at)?;
        write_zeros(&self.file, at, allocated)?;
        self.end = at;
        self.allocated = allocated;
        Ok(())
    }
}

/// Writes zeros over `from..to`.
fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// How many bytes of `from..to` are not zero.
fn nonzero_bytes(file: &File, from: u64, to: u64) -> io::Result<u64> {
    let mut buffer = vec![0u8; ZEROS.len()];
    let mut count = 0;
    let mut at = from;
    while at < to {
        let n = (to - at).min(buffer.len() as u64) as usize;
        file.read_exact_at(&mut buffer[..n], at)?;
        count += buffer[..n].iter().filter(|&&b| b != 0).count() as u64;
        at += n as u64;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn contents(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap()
    }

    #[test]
    fn appends_go_into_space_written_ahead_and_read_back_before_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (mut log, tail) = LogFile::open(&path, 0).unwrap();
        assert_eq!(tail.discarded, 0);
        assert_eq!(contents(&path).len() as u64, CHUNK);
        log.append(b"one\n").unwrap();
        log.append(b"two\n").unwrap();
        log.sync().unwrap();
        assert_eq!(log.end(), 8);
        let bytes = contents(&path);
        assert_eq!(bytes.len() as u64, CHUNK, "no growth for a small append");
        assert_eq!(&bytes[..8], b"one\ntwo\n");
        assert!(bytes[8..].iter().all(|&b| b == 0));
    }

    #[test]
    fn space_ahead_grows_a_chunk_at_a_time_and_stays_a_function_of_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (mut log, _) = LogFile::open(&path, 0).unwrap();
        let record = vec![b'x'; 100_000];
        for _ in 0..21 {
            log.append(&record).unwrap();
        }
        log.sync().unwrap();
        assert_eq!(log.end(), 2_100_000);
        assert_eq!(contents(&path).len() as u64, allocated_for(2_100_000));
        assert_eq!(allocated_for(2_100_000), 3 * CHUNK);
        // Exactly at a chunk's end there is still room ahead.
        assert_eq!(allocated_for(CHUNK), 2 * CHUNK);
        assert_eq!(allocated_for(0), CHUNK);
    }

    #[test]
    fn a_torn_tail_is_zeroed_and_counted_and_an_old_file_gains_its_space() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        // A file as a plain appender leaves it: records, then a torn record.
        std::fs::write(&path, b"one\ntwo\ntw").unwrap();
        let (mut log, tail) = LogFile::open(&path, 8).unwrap();
        assert_eq!(tail.discarded, 2);
        log.append(b"three\n").unwrap();
        log.sync().unwrap();
        let bytes = contents(&path);
        assert_eq!(bytes.len() as u64, CHUNK);
        assert_eq!(&bytes[..14], b"one\ntwo\nthree\n");
        assert!(bytes[14..].iter().all(|&b| b == 0));
        drop(log);
        // Reopened where the records end: nothing to discard, nothing rewritten.
        let (log, tail) = LogFile::open(&path, 14).unwrap();
        assert_eq!(tail.discarded, 0);
        assert_eq!(log.end(), 14);
        assert!(LogFile::open(&path, CHUNK + 1).is_err());
    }

    #[test]
    fn a_cut_leaves_zeros_and_the_size_of_a_file_that_never_held_the_cut_records() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let (mut cut, _) = LogFile::open(&a, 0).unwrap();
        let (mut plain, _) = LogFile::open(&b, 0).unwrap();
        cut.append(b"kept\n").unwrap();
        cut.append(&vec![b'y'; 1_500_000]).unwrap();
        cut.truncate(5).unwrap();
        cut.append(b"next\n").unwrap();
        cut.sync().unwrap();
        plain.append(b"kept\nnext\n").unwrap();
        plain.sync().unwrap();
        assert_eq!(contents(&a), contents(&b));
        assert!(cut.truncate(11).is_err());
        cut.truncate(0).unwrap();
        assert_eq!(cut.end(), 0);
        assert!(contents(&a).iter().all(|&b| b == 0));
    }

    #[test]
    fn less_free_than_the_room_ahead_fails_as_a_full_disk() {
        let full = room(ROOM - 1).unwrap_err();
        assert_eq!(full.kind(), io::ErrorKind::StorageFull);
        assert!(full.to_string().starts_with("No space left on device"));
        room(ROOM).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = LogFile::open(&dir.path().join("log"), 0).unwrap();
        check_room(log.file()).unwrap();
    }

    proptest! {
        #[test]
        fn the_space_ahead_is_always_beyond_the_end(end in 0u64..(1 << 40)) {
            let allocated = allocated_for(end);
            prop_assert!(allocated > end);
            prop_assert!(allocated - end <= CHUNK);
            prop_assert_eq!(allocated % CHUNK, 0);
        }
    }
}
