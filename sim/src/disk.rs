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

/// How a crash leaves the batch that was being flushed.
#[derive(Debug)]
pub struct Torn<W> {
    /// Writes that reached the disk whole.
    pub whole: Vec<W>,
    /// The next write, of which only the first `bytes` reached the disk (an append), if any.
    pub partial: Option<(W, usize)>,
}

impl<W> Disk<W> {
    /// Queues a write; `id` is reported once it is on disk. True when a flush must start.
    pub fn push(&mut self, id: Option<WriteId>, write: W) -> bool {
        if self.failed {
            return false;
        }
        self.queue.push_back((id, write));
        self.flushing == 0
    }

    /// Starts flushing everything queued; false if a flush runs already or nothing waits.
    pub fn start(&mut self) -> bool {
        if self.flushing > 0 || self.queue.is_empty() {
            return false;
        }
        self.flushing = self.queue.len();
        true
    }

    /// The flush completed: its writes, in order (none, and the disk fails, if it is full).
    pub fn complete(&mut self) -> Vec<(Option<WriteId>, W)> {
        if self.full {
            self.failed = true;
            self.queue.clear();
            self.flushing = 0;
            return Vec::new();
        }
        let done = self.queue.drain(..self.flushing).collect();
        self.flushing = 0;
        done
    }

    /// Whether a flush failed (the disk was full).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Whether writes wait or are being flushed.
    pub fn busy(&self) -> bool {
        !self.queue.is_empty()
    }

    /// A crash: everything queued is lost but for what of the batch being flushed reached the
    /// disk. `len` gives an append's length in bytes (`None`: the write is atomic).
    pub fn crash(&mut self, rng: &mut Rng, len: impl Fn(&W) -> Option<usize>) -> Torn<W> {
        let flushing: Vec<W> = self.queue.drain(..self.flushing).map(|(_, w)| w).collect();
        self.queue.clear();
        self.flushing = 0;
        // Most often nothing of an unfinished flush is there; otherwise any prefix.
        let reached = if rng.chance(500) {
            0
        } else {
            rng.range(0, flushing.len() as u64 + 1) as usize
        };
        let mut rest = flushing.into_iter();
        let whole: Vec<W> = rest.by_ref().take(reached).collect();
        let partial = rest.next().and_then(|next| {
            let bytes = len(&next)?;
            if bytes > 1 && rng.chance(500) {
                Some((next, rng.range(1, bytes as u64) as usize))
            } else {
                None
            }
        });
        Torn { whole, partial }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_flush_in_batches_and_a_crash_keeps_at_most_a_prefix() {
        let mut disk: Disk<Vec<u8>> = Disk::default();
        assert!(disk.push(Some(1), b"aa".to_vec()));
        assert!(disk.start());
        assert!(!disk.push(Some(2), b"bb".to_vec()));
        assert!(!disk.start());
        let done = disk.complete();
        assert_eq!(done.len(), 1);
        assert!(disk.start());
        disk.push(Some(3), b"cc".to_vec());
        let mut rng = Rng::new(1);
        let torn = disk.crash(&mut rng, |w| Some(w.len()));
        assert!(torn.whole.len() <= 1);
        assert!(!disk.busy());
    }
}
