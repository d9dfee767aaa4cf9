//! Group commit for an append-only file: one thread appends whatever is queued, fsyncs once
//! for the whole batch, and reports the batch as durable. Concurrent writers share an fsync
//! instead of paying one each. An append may also wait for a later fsync (a deferred append,
//! written at once but made durable by the next append or [`Job::Sync`] that asks for one), for
//! a file whose durability is not on anyone's critical path. Maintenance (snapshots,
//! truncation) runs on the same thread between batches, so it never races an append.

use std::fs::File;
use std::io::{self, Write};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Most appends in one batch; as many deferred appends wait at most for one fsync.
const MAX_BATCH: usize = 4096;

/// Maintenance work run on the commit thread with the file (a snapshot, a truncation).
pub type Maintenance = Box<dyn FnOnce(&mut File) -> io::Result<()> + Send>;

/// Work for the commit thread.
pub enum Job<T> {
    /// Append `bytes`; `item` is reported once they are on disk.
    Append {
        /// Already-encoded bytes.
        bytes: Vec<u8>,
        /// Reported back when durable.
        item: T,
        /// Whether to fsync now; `false` writes them at once and leaves them for the next
        /// fsync that something asks for.
        sync: bool,
    },
    /// Fsync whatever was written; `item` is reported once it is on disk.
    Sync {
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

/// Starts the commit thread for `file` (opened for appending). After each batch
/// `on_durable` gets its items in order; if the file fails, `on_failure` is called once and
/// the thread stops. The thread ends when every sender of the returned channel is gone.
pub fn start<T: Send + 'static>(
    name: &str,
    mut file: File,
    metrics: CommitMetrics,
    mut on_durable: impl FnMut(Vec<T>) + Send + 'static,
    on_failure: impl FnOnce(io::Error) + Send + 'static,
) -> io::Result<(mpsc::Sender<Job<T>>, JoinHandle<()>)> {
    // Unbounded by type; callers bound it by bounding the requests that wait on it.
    let (sender, receiver) = mpsc::channel::<Job<T>>();
    let handle = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            if let Err(e) = run(&mut file, &receiver, &metrics, &mut on_durable) {
                on_failure(e);
            }
        })?;
    Ok((sender, handle))
}

fn run<T>(
    file: &mut File,
    receiver: &mpsc::Receiver<Job<T>>,
    metrics: &CommitMetrics,
    on_durable: &mut impl FnMut(Vec<T>),
) -> io::Result<()> {
    let mut batch = Batch {
        bytes: Vec::new(),
        unsynced: Vec::new(),
        wanted: false,
    };
    loop {
        let Ok(job) = receiver.recv() else {
            // The last senders are gone: what was written is made durable.
            return sync(file, &mut batch.unsynced, metrics, on_durable);
        };
        batch.bytes.clear();
        batch.wanted = false;
        let mut maintain = batch.take(job);
        while maintain.is_none() && batch.unsynced.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(job) => maintain = batch.take(job),
                Err(_) => break,
            }
        }
        if !batch.bytes.is_empty() {
            file.write_all(&batch.bytes)?;
        }
        if batch.wanted || maintain.is_some() || batch.unsynced.len() >= MAX_BATCH {
            // Everything queued before maintenance is durable before it runs.
            sync(file, &mut batch.unsynced, metrics, on_durable)?;
        }
        if let Some((work, item)) = maintain {
            work(file)?;
            if let Some(item) = item {
                on_durable(vec![item]);
            }
        }
    }
}

/// What the commit thread has gathered since its last write.
struct Batch<T> {
    /// Bytes to write.
    bytes: Vec<u8>,
    /// Items written (or about to be) and not yet fsynced, oldest first.
    unsynced: Vec<T>,
    /// Some item asks for an fsync now.
    wanted: bool,
}

impl<T> Batch<T> {
    /// Adds `job`; maintenance is handed back, to run once everything before it is durable.
    fn take(&mut self, job: Job<T>) -> Option<(Maintenance, Option<T>)> {
        match job {
            Job::Append { bytes, item, sync } => {
                self.bytes.extend_from_slice(&bytes);
                self.unsynced.push(item);
                self.wanted |= sync;
                None
            }
            Job::Sync { item } => {
                self.unsynced.push(item);
                self.wanted = true;
                None
            }
            Job::Maintain { work, item } => Some((work, item)),
        }
    }
}

/// Fsyncs what was written and reports every item waiting for it.
fn sync<T>(
    file: &mut File,
    unsynced: &mut Vec<T>,
    metrics: &CommitMetrics,
    on_durable: &mut impl FnMut(Vec<T>),
) -> io::Result<()> {
    if unsynced.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    file.sync_data()?;
    metrics
        .fsync_seconds
        .observe(started.elapsed().as_secs_f64());
    metrics.batch_size.observe(unsynced.len() as f64);
    on_durable(std::mem::take(unsynced));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::{Arc, Mutex};

    #[test]
    fn appends_are_durable_in_order_and_maintenance_runs_between_batches() {
        let mut registry = Registry::default();
        let metrics = CommitMetrics::registered(&mut registry, "test");
        let dir = std::env::temp_dir().join(format!("group-commit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        std::fs::File::create(&path).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (sender, handle) = start(
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
            sender
                .send(Job::Append {
                    bytes: format!("{i}\n").into_bytes(),
                    item: i,
                    sync: i % 2 == 0,
                })
                .unwrap();
        }
        let observed = seen.clone();
        sender
            .send(Job::Maintain {
                work: Box::new(move |file| {
                    // Everything queued before is already reported durable.
                    assert_eq!(observed.lock().unwrap().len(), 100);
                    file.set_len(0)
                }),
                item: Some(100),
            })
            .unwrap();
        sender
            .send(Job::Append {
                bytes: b"after\n".to_vec(),
                item: 101,
                sync: true,
            })
            .unwrap();
        drop(sender);
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
        let mut text = String::new();
        std::fs::File::open(&path)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "after\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_deferred_append_is_written_at_once_and_durable_at_the_next_sync() {
        let dir = tempfile_dir("deferred");
        let path = dir.join("log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .unwrap();
        let (durable, reports) = std::sync::mpsc::channel();
        let (sender, handle) = start(
            "test-deferred",
            file,
            CommitMetrics::default(),
            move |items: Vec<u32>| durable.send(items).unwrap(),
            |e| panic!("{e}"),
        )
        .unwrap();
        let append = |item: u32| Job::Append {
            bytes: format!("{item}\n").into_bytes(),
            item,
            sync: false,
        };
        sender.send(append(1)).unwrap();
        sender.send(append(2)).unwrap();
        // Written for anyone who reads the file (a process killed now loses nothing), not
        // reported durable until something asks for an fsync.
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(&path).unwrap() != "1\n2\n" {
            assert!(Instant::now() < deadline, "never written");
            std::thread::yield_now();
        }
        assert!(reports.try_recv().is_err());
        sender.send(Job::Sync { item: 3 }).unwrap();
        assert_eq!(reports.recv().unwrap(), vec![1, 2, 3]);
        sender.send(append(4)).unwrap();
        drop(sender);
        handle.join().unwrap();
        // The last writes are made durable when the writer stops.
        assert_eq!(reports.recv().unwrap(), vec![4]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("group-commit-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
