//! Simulated disks: writes queue in order and are flushed in batches (one flush at a time,
//! like the group-commit thread); a flush completes after the disk's latency. What was not
//! flushed is lost on a crash, except that the batch being flushed may have reached the disk
//! in part: a prefix of its writes, and perhaps a torn piece of the next append.

use std::collections::VecDeque;

use common::engine::WriteId;

use crate::rng::Rng;

/// A queue of writes to one disk.
#[derive(Debug)]
pub struct Disk<W> {
    queue: VecDeque<(Option<WriteId>, W)>,
    /// How many writes at the front are being flushed.
    flushing: usize,
    /// The disk refuses writes (full): the next flush fails.
    pub full: bool,
    /// A flush failed: like the real commit thread, the disk takes nothing more until the
    /// process restarts.
    failed: bool,
}

impl<W> Default for Disk<W> {
    fn default() -> Self {
        Disk {
            queue: VecDeque::new(),
            flushing: 0,
            full: false,
            failed: false,
        }
    }
}

/// A process's files, as the writes to its disk change them.
pub trait Files {
    /// One write.
    type Write;
    /// The write reached the disk.
    fn apply(&mut self, write: Self::Write);
    /// An append's length in bytes; `None` for a write that is atomic (a file replaced).
    fn append_len(write: &Self::Write) -> Option<usize>;
    /// Only the first `len` bytes of an append reached the disk.
    fn torn(&mut self, write: Self::Write, len: usize);
}

/// A flush failed: the disk was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed;

impl<W> Disk<W> {
    /// Queues a write; `id` is reported once it is on disk. True when a flush must start.
    pub fn push(&mut self, id: Option<WriteId>, write: W) -> bool {
        if self.failed {
            return false;
        }
        self.queue.push_back((id, write));
        self.flushing == 0
    }

    /// Queues a write that waits for the next flush something else starts (a deferred
    /// append: on a crash before it, it is lost with the rest).
    pub fn push_deferred(&mut self, id: Option<WriteId>, write: W) {
        if !self.failed {
            self.queue.push_back((id, write));
        }
    }

    /// Starts flushing everything queued; false if a flush runs already or nothing waits.
    pub fn start(&mut self) -> bool {
        if self.flushing > 0 || self.queue.is_empty() {
            return false;
        }
        self.flushing = self.queue.len();
        true
    }

    /// The flush running completed: its writes reach `files`, and the newest id among them
    /// is returned; if the disk is full, none does and the disk takes nothing more.
    pub fn finish<F: Files<Write = W>>(
        &mut self,
        files: &mut F,
    ) -> Result<Option<WriteId>, Failed> {
        if self.full {
            self.failed = true;
            self.queue.clear();
            self.flushing = 0;
            return Err(Failed);
        }
        let mut last = None;
        for (id, write) in self.queue.drain(..self.flushing) {
            last = id.or(last);
            files.apply(write);
        }
        self.flushing = 0;
        Ok(last)
    }

    /// Whether a flush failed (the disk was full).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Whether writes wait or are being flushed.
    pub fn busy(&self) -> bool {
        !self.queue.is_empty()
    }

    /// A crash: everything queued is lost but for what of the batch being flushed reached
    /// `files`: most often nothing, else any prefix of its writes and perhaps a torn piece of
    /// the next append.
    pub fn crash<F: Files<Write = W>>(&mut self, rng: &mut Rng, files: &mut F) {
        let flushing: Vec<W> = self.queue.drain(..self.flushing).map(|(_, w)| w).collect();
        self.queue.clear();
        self.flushing = 0;
        if self.failed {
            return;
        }
        let reached = if rng.chance(500) {
            0
        } else {
            rng.range(0, flushing.len() as u64 + 1) as usize
        };
        let mut rest = flushing.into_iter();
        for write in rest.by_ref().take(reached) {
            files.apply(write);
        }
        if let Some(next) = rest.next() {
            if let Some(bytes) = F::append_len(&next) {
                if bytes > 1 && rng.chance(500) {
                    let len = rng.range(1, bytes as u64) as usize;
                    files.torn(next, len);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Bytes(Vec<u8>);

    impl Files for Bytes {
        type Write = Vec<u8>;
        fn apply(&mut self, write: Vec<u8>) {
            self.0.extend(write);
        }
        fn append_len(write: &Vec<u8>) -> Option<usize> {
            Some(write.len())
        }
        fn torn(&mut self, write: Vec<u8>, len: usize) {
            self.0.extend(&write[..len]);
        }
    }

    #[test]
    fn writes_flush_in_batches_and_a_crash_keeps_at_most_a_prefix() {
        let mut disk: Disk<Vec<u8>> = Disk::default();
        let mut files = Bytes::default();
        assert!(disk.push(Some(1), b"aa".to_vec()));
        assert!(disk.start());
        assert!(!disk.push(Some(2), b"bb".to_vec()));
        assert!(!disk.start());
        assert_eq!(disk.finish(&mut files), Ok(Some(1)));
        assert_eq!(files.0, b"aa");
        assert!(disk.start());
        disk.push(Some(3), b"cc".to_vec());
        let mut rng = Rng::new(1);
        disk.crash(&mut rng, &mut files);
        assert!(files.0.len() <= 4 && files.0.starts_with(b"aa"));
        assert!(!disk.busy());
    }

    #[test]
    fn a_full_disk_fails_its_flush_and_takes_nothing_more() {
        let mut disk: Disk<Vec<u8>> = Disk::default();
        let mut files = Bytes::default();
        disk.push(Some(1), b"aa".to_vec());
        disk.start();
        disk.full = true;
        assert_eq!(disk.finish(&mut files), Err(Failed));
        assert!(!disk.push(Some(2), b"bb".to_vec()));
        disk.crash(&mut Rng::new(2), &mut files);
        assert!(files.0.is_empty());
    }
}
