//! Group commit for an append-only file: one thread appends whatever is queued, fsyncs once
//! for the whole batch, and reports the batch as durable. Concurrent writers share an fsync
//! instead of paying one each. Maintenance (snapshots, truncation) runs on the same thread
//! between batches, so it never races an append. A writer whose appends need not be durable at
//! once keeps them in a [`Deferred`] buffer and hands them over together: one job, one wake-up
//! of the thread, one fsync.

use std::fs::File;
use std::io::{self, Write};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Most appends in one batch.
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
        let (first_bytes, first_item) = match job {
            Job::Maintain { work, item } => {
                work(file)?;
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
        let started = Instant::now();
        file.write_all(&bytes)?;
        file.sync_data()?;
        metrics
            .fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.batch_size.observe(items.len() as f64);
        on_durable(items);
    }
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
