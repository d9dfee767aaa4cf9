//! Group commit for an append-only file: one thread appends whatever is queued, fsyncs once
//! for the whole batch, and reports the batch as durable. Concurrent writers share an fsync
//! instead of paying one each. Maintenance (snapshots, truncation) runs on the same thread
//! between batches, so it never races an append. A writer whose appends need not be durable at
//! once keeps them in a [`Deferred`] buffer and hands them over together: one job, one wake-up
//! of the thread, one fsync. A writer with nothing else to do while its append reaches the disk
//! (a follower replica) writes it itself when nothing is queued ([`Committer::write_now`]),
//! sparing the two hand-overs between threads.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Most appends in one batch.
const MAX_BATCH: usize = 4096;

use crate::log_file::LogFile;

/// Maintenance work run on the commit thread with the file (a snapshot, a truncation).
pub type Maintenance = Box<dyn FnOnce(&mut LogFile) -> io::Result<()> + Send>;

/// Work for the commit thread.
pub enum Job<T> {
    /// Append `bytes`; `item` is reported once they are on disk.
    Append {
        /// Already-encoded bytes.
        bytes: Vec<u8>,
        /// Reported back when durable.
        item: T,
    },
    /// Runs on the file after everything queued before it is durable and before anything
    /// queued after it is written; `item`, if any, is reported once it has run.
    Maintain {
        /// The work.
        work: Maintenance,
        /// Reported back when the work is done.
        item: Option<T>,
    },
}

/// Appends kept by their writer until something asks for them to be durable, then handed to
/// the commit thread as one job reported by the newest item (whoever waits for an older one
/// takes the report of a newer one as covering it).
#[derive(Debug)]
pub struct Deferred<T> {
    bytes: Vec<u8>,
    newest: Option<T>,
    count: usize,
}

impl<T> Default for Deferred<T> {
    fn default() -> Self {
        Deferred {
            bytes: Vec::new(),
            newest: None,
            count: 0,
        }
    }
}

impl<T> Deferred<T> {
    /// Keeps `bytes`, reported as part of `item`'s batch.
    pub fn push(&mut self, bytes: &[u8], item: T) {
        self.bytes.extend_from_slice(bytes);
        self.newest = Some(item);
        self.count += 1;
    }

    /// Appends kept.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Everything kept as one job reported by `item` (the newest kept one when `None`), or
    /// nothing when there is nothing to report.
    pub fn take(&mut self, item: Option<T>) -> Option<Job<T>> {
        let item = item.or_else(|| self.newest.take())?;
        self.newest = None;
        self.count = 0;
        Some(Job::Append {
            bytes: std::mem::take(&mut self.bytes),
            item,
        })
    }
}

/// What the group-commit thread measures: how long each batch's write and fsync took and
/// how many appends shared it. Cheap to clone; an unregistered one measures into nothing
/// anyone reads.
#[derive(Debug, Clone)]
pub struct CommitMetrics {
    /// Seconds from the batch's write to the end of its fsync.
    pub fsync_seconds: Histogram,
    /// Appends per batch.
    pub batch_size: Histogram,
}

impl Default for CommitMetrics {
    fn default() -> Self {
        CommitMetrics {
            fsync_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 19)),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
        }
    }
}

impl CommitMetrics {
    /// New metrics, registered in `registry` as `<name>_fsync_seconds` and
    /// `<name>_batch_size`.
    pub fn registered(registry: &mut Registry, name: &str) -> Self {
        let metrics = CommitMetrics::default();
        registry.register(
            format!("{name}_fsync_seconds"),
            "Time to write and fsync one group-commit batch",
            metrics.fsync_seconds.clone(),
        );
        registry.register(
            format!("{name}_batch_size"),
            "Appends made durable by one fsync",
            metrics.batch_size.clone(),
        );
        metrics
    }
}

/// The file, shared by the commit thread and [`Committer::write_now`].
struct Shared {
    file: Mutex<Disk>,
    /// Jobs sent and not yet done (durable, or run).
    queued: AtomicUsize,
    metrics: CommitMetrics,
}

struct Disk {
    file: LogFile,
    /// A write or fsync failed: nothing more is written.
    failed: bool,
}

impl Shared {
    fn disk(&self) -> std::sync::MutexGuard<'_, Disk> {
        self.file.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, disk: &mut Disk, bytes: &[u8], appends: usize) -> io::Result<()> {
        let started = Instant::now();
        let written = disk.file.append(bytes).and_then(|()| disk.file.sync());
        if written.is_err() {
            disk.failed = true;
        }
        written?;
        self.metrics
            .fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.batch_size.observe(appends as f64);
        Ok(())
    }
}

/// The way to the commit thread: jobs queued in order, or an append written at once.
pub struct Committer<T> {
    jobs: mpsc::Sender<Job<T>>,
    shared: Arc<Shared>,
}

impl<T> Committer<T> {
    /// Queues `job` behind everything queued before; fails when the thread has stopped.
    pub fn send(&self, job: Job<T>) -> Result<(), mpsc::SendError<Job<T>>> {
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        self.jobs.send(job).inspect_err(|_| {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
        })
    }

    /// Writes and fsyncs `bytes` on the caller's thread, if nothing queued before is still
    /// undone (`None` otherwise: queue them). `Some(Ok)` means they are on disk, and with them
    /// everything queued before; after `Some(Err)` nothing more is written. The caller waits
    /// for the disk: for one that has nothing else to do meanwhile.
    pub fn write_now(&self, bytes: &[u8]) -> Option<io::Result<()>> {
        if self.shared.queued.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let mut disk = self.shared.disk();
        // Only this writer queues: nothing can have been queued since.
        if self.shared.queued.load(Ordering::SeqCst) > 0 {
            return None;
        }
        if disk.failed {
            return Some(Err(io::Error::other("an earlier write failed")));
        }
        Some(self.shared.write(&mut disk, bytes, 1))
    }
}

/// Starts the commit thread for `file`. After each batch
/// `on_durable` gets its items in order; if the file fails, `on_failure` is called once and
/// the thread stops. The thread ends when the returned [`Committer`] is gone.
pub fn start<T: Send + 'static>(
    name: &str,
    file: LogFile,
    metrics: CommitMetrics,
    mut on_durable: impl FnMut(Vec<T>) + Send + 'static,
    on_failure: impl FnOnce(io::Error) + Send + 'static,
) -> io::Result<(Committer<T>, JoinHandle<()>)> {
    // Unbounded by type; callers bound it by bounding the requests that wait on it.
    let (sender, receiver) = mpsc::channel::<Job<T>>();
    let shared = Arc::new(Shared {
        file: Mutex::new(Disk {
            file,
            failed: false,
        }),
        queued: AtomicUsize::new(0),
        metrics,
    });
    let handle = std::thread::Builder::new().name(name.to_owned()).spawn({
        let shared = shared.clone();
        move || {
            if let Err(e) = run(&shared, &receiver, &mut on_durable) {
                on_failure(e);
            }
        }
    })?;
    Ok((
        Committer {
            jobs: sender,
            shared,
        },
        handle,
    ))
}

fn run<T>(
    shared: &Shared,
    receiver: &mpsc::Receiver<Job<T>>,
    on_durable: &mut impl FnMut(Vec<T>),
) -> io::Result<()> {
    let mut bytes = Vec::new();
    let mut next = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => match receiver.recv() {
                Ok(job) => job,
                Err(_) => return Ok(()),
            },
        };
        let mut disk = shared.disk();
        if disk.failed {
            // A write made at once failed; its writer was told.
            return Ok(());
        }
        let (first_bytes, first_item) = match job {
            Job::Maintain { work, item } => {
                let done = work(&mut disk.file);
                disk.failed = done.is_err();
                done?;
                shared.queued.fetch_sub(1, Ordering::SeqCst);
                drop(disk);
                if let Some(item) = item {
                    on_durable(vec![item]);
                }
                continue;
            }
            Job::Append { bytes, item } => (bytes, item),
        };
        bytes.clear();
        bytes.extend_from_slice(&first_bytes);
        let mut items = vec![first_item];
        while items.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(Job::Append { bytes: more, item }) => {
                    bytes.extend_from_slice(&more);
                    items.push(item);
                }
                Ok(maintain) => {
                    // Runs after this batch is durable.
                    next = Some(maintain);
                    break;
                }
                Err(_) => break,
            }
        }
        shared.write(&mut disk, &bytes, items.len())?;
        shared.queued.fetch_sub(items.len(), Ordering::SeqCst);
        drop(disk);
        on_durable(items);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// The records of a log file: its bytes before the zeros written ahead.
    fn records(path: &std::path::Path) -> Vec<u8> {
        let mut bytes = std::fs::read(path).unwrap();
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        bytes.truncate(end);
        bytes
    }

    #[test]
    fn appends_are_durable_in_order_and_maintenance_runs_between_batches() {
        let mut registry = Registry::default();
        let metrics = CommitMetrics::registered(&mut registry, "test");
        let dir = std::env::temp_dir().join(format!("group-commit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let (file, _) = LogFile::open(&path, 0).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (committer, handle) = start(
            "test-commit",
            file,
            metrics.clone(),
            {
                let seen = seen.clone();
                move |items: Vec<u32>| seen.lock().unwrap().extend(items)
            },
            |e| panic!("{e}"),
        )
        .unwrap();
        for i in 0..100u32 {
            committer
                .send(Job::Append {
                    bytes: format!("{i}\n").into_bytes(),
                    item: i,
                })
                .unwrap();
        }
        let observed = seen.clone();
        committer
            .send(Job::Maintain {
                work: Box::new(move |file| {
                    // Everything queued before is already reported durable.
                    assert_eq!(observed.lock().unwrap().len(), 100);
                    file.truncate(0)
                }),
                item: Some(100),
            })
            .unwrap();
        committer
            .send(Job::Append {
                bytes: b"after\n".to_vec(),
                item: 101,
            })
            .unwrap();
        drop(committer);
        handle.join().unwrap();
        assert_eq!(*seen.lock().unwrap(), (0..=101).collect::<Vec<_>>());
        // Every append was counted in some batch, and each batch's fsync timed.
        let mut exposition = String::new();
        prometheus_client::encoding::text::encode(&mut exposition, &registry).unwrap();
        assert!(
            exposition.contains("test_batch_size_sum 101.0"),
            "{exposition}"
        );
        assert!(
            !exposition.contains("test_fsync_seconds_count 0"),
            "{exposition}"
        );
        assert_eq!(records(&path), b"after\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_append_is_written_at_once_only_behind_nothing_undone() {
        let dir = std::env::temp_dir().join(format!("write-now-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let (file, _) = LogFile::open(&path, 0).unwrap();
        let (done, reported) = mpsc::channel();
        let (gate, held) = mpsc::channel::<()>();
        let (committer, handle) = start(
            "test-write-now",
            file,
            CommitMetrics::default(),
            move |items: Vec<u32>| done.send(items).unwrap(),
            |e| panic!("{e}"),
        )
        .unwrap();
        assert!(matches!(committer.write_now(b"a\n"), Some(Ok(()))));
        // A job the thread has not done yet: what comes after it must queue behind it.
        let held = Mutex::new(held);
        committer
            .send(Job::Maintain {
                work: Box::new(move |_| {
                    held.lock().unwrap().recv().unwrap();
                    Ok(())
                }),
                item: Some(1),
            })
            .unwrap();
        assert!(committer.write_now(b"never\n").is_none());
        committer
            .send(Job::Append {
                bytes: b"b\n".to_vec(),
                item: 2,
            })
            .unwrap();
        gate.send(()).unwrap();
        assert_eq!(reported.recv().unwrap(), vec![1]);
        assert_eq!(reported.recv().unwrap(), vec![2]);
        // Everything done: at once again.
        assert!(matches!(committer.write_now(b"c\n"), Some(Ok(()))));
        drop(committer);
        handle.join().unwrap();
        assert_eq!(records(&path), b"a\nb\nc\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn deferred_appends_go_together_reported_by_the_newest() {
        let mut deferred = Deferred::default();
        assert!(deferred.take(None).is_none());
        deferred.push(b"a\n", 1u32);
        deferred.push(b"b\n", 2);
        assert_eq!(deferred.len(), 2);
        match deferred.take(None) {
            Some(Job::Append { bytes, item }) => assert_eq!((bytes, item), (b"a\nb\n".to_vec(), 2)),
            _ => panic!("one append"),
        }
        assert!(deferred.is_empty());
        // A sync with nothing kept is still reported.
        match deferred.take(Some(3)) {
            Some(Job::Append { bytes, item }) => assert_eq!((bytes.len(), item), (0, 3)),
            _ => panic!("one append"),
        }
    }
}
