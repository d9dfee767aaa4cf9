//! The catalog's files, and the only code that knows their format:
//!
//! - `snapshot.bin`: `SBSNAP02`, a CRC-32 and a length, then a MessagePack [`Snapshot`];
//!   replaced atomically (write, fsync, rename, fsync the directory). The one written at a
//!   clean shutdown says so; a catalog that starts from it rewrites it before serving.
//! - `wal.log`: the write-ahead log since that snapshot, written into space written ahead
//!   with zeros ([`LogFile`]; a zero length ends the records); each record is a 4-byte big-endian
//!   length, a CRC-32 of the payload, then a MessagePack [`TradeRecord`] (or a remembered
//!   [`Refusal`], tagged `refused`). Records are written at once and fsynced in batches
//!   (group commit): a refusal before it is answered, an applied trade within a few
//!   milliseconds (the replicated order log holds it meanwhile). A torn or corrupt tail is cut
//!   off at recovery, never read as a record.
//! - `leadership`: `SBLEAD01`, a CRC-32 and a length, then the MessagePack leadership record;
//!   replaced atomically, in order with the log's records, before a change is answered.
//! - `incarnation`: how many times a catalog started on this directory (decimal), raised and
//!   replaced atomically before it serves; a leader never mixes the numbers of two lives.
//! - `LOCK`: held while a catalog runs, so two processes never share a state directory.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use durability::files;
use durability::group_commit::{self, Deferred, Job};
use durability::log_file::LogFile;

use tracing::{error, info, warn};

use common::wire::Leadership;
use serde::{de::DeserializeOwned, Serialize};

use crate::book::{Book, LogRecord, Refusal, Snapshot, TradeRecord};
use crate::engine::WriteId;
use crate::Error;

const SNAPSHOT_MAGIC: &[u8; 8] = b"SBSNAP02";
const SNAPSHOT_FILE: &str = "snapshot.bin";
const LEADERSHIP_MAGIC: &[u8; 8] = b"SBLEAD01";
const LEADERSHIP_FILE: &str = "leadership";
const WAL_FILE: &str = "wal.log";
const INCARNATION_FILE: &str = "incarnation";
/// A record bigger than this cannot be one of ours: its length field is garbage.
const MAX_RECORD_BYTES: usize = 64 * 1024;

/// What the log writer reports to the service.
#[derive(Debug)]
pub enum LogEvent {
    /// Every write up to this one is on disk.
    Flushed(WriteId),
    /// Writing failed; nothing queued after the last durable record will ever be.
    Failed(String),
}

/// A refusal's payload in the log, tagged so that it never decodes as a trade.
#[derive(Serialize, serde::Deserialize)]
struct RefusalPayload {
    refused: Refusal,
}

/// Encodes one log record: length, checksum, payload (an applied trade is a MessagePack
/// [`TradeRecord`], as since the first version; a refusal a map with one `refused` field).
pub fn encode_record(record: &LogRecord) -> Result<Vec<u8>, Error> {
    let payload = match record {
        LogRecord::Traded(trade) => rmp_serde::to_vec_named(trade),
        LogRecord::Refused(refusal) => rmp_serde::to_vec_named(&RefusalPayload {
            refused: refusal.clone(),
        }),
    }
    .map_err(|e| Error::Corrupt(format!("cannot encode record: {e}")))?;
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Reads one record's payload: a trade, or a refusal tagged `refused`.
pub fn decode_payload(payload: &[u8]) -> Option<LogRecord> {
    if let Ok(record) = rmp_serde::from_slice::<TradeRecord>(payload) {
        return Some(LogRecord::Traded(record));
    }
    rmp_serde::from_slice::<RefusalPayload>(payload)
        .ok()
        .map(|p| LogRecord::Refused(p.refused))
}

/// Reads the records of a log image. Returns them with the length of the intact prefix; the
/// bytes after it (a torn or corrupt tail) are not records.
pub fn decode_records(bytes: &[u8]) -> (Vec<LogRecord>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= 8 {
        let len =
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let crc = u32::from_be_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        if len == 0 || len > MAX_RECORD_BYTES || bytes.len() - at - 8 < len {
            break;
        }
        let payload = &bytes[at + 8..at + 8 + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        match decode_payload(payload) {
            Some(record) => records.push(record),
            None => break,
        }
        at += 8 + len;
    }
    (records, at)
}

/// A whole file's image: magic, CRC-32 and length of the payload, then the MessagePack
/// payload.
fn seal<T: Serialize>(magic: &[u8; 8], value: &T) -> Result<Vec<u8>, Error> {
    let payload = rmp_serde::to_vec_named(value)
        .map_err(|e| Error::Corrupt(format!("cannot encode: {e}")))?;
    let mut out = Vec::with_capacity(payload.len() + 20);
    out.extend_from_slice(magic);
    out.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Reads an image [`seal`] wrote; any damage is an error.
fn unseal<T: DeserializeOwned>(magic: &[u8; 8], file: &str, bytes: &[u8]) -> Result<T, Error> {
    let corrupt = |why: &str| Error::Corrupt(format!("{file}: {why}"));
    if bytes.len() >= 8 && bytes[..6] == magic[..6] && &bytes[..8] != magic {
        let found = String::from_utf8_lossy(&bytes[..8]).into_owned();
        let wanted = String::from_utf8_lossy(magic).into_owned();
        return Err(corrupt(&format!(
            "written by another version ({found}); this one reads {wanted}"
        )));
    }
    if bytes.len() < 20 || &bytes[..8] != magic {
        return Err(corrupt("not a file of this kind"));
    }
    let crc = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[12..20]);
    let payload = &bytes[20..];
    if u64::from_be_bytes(len) != payload.len() as u64 || crc32fast::hash(payload) != crc {
        return Err(corrupt("length or checksum mismatch"));
    }
    rmp_serde::from_slice(payload).map_err(|e| corrupt(&e.to_string()))
}

/// The snapshot file's image.
pub fn encode_snapshot(snapshot: &Snapshot) -> Result<Vec<u8>, Error> {
    seal(SNAPSHOT_MAGIC, snapshot)
}

/// Reads the snapshot file's image.
pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, Error> {
    unseal(SNAPSHOT_MAGIC, SNAPSHOT_FILE, bytes)
}

/// What the catalog recovered from its files.
#[derive(Debug)]
pub struct Recovered {
    /// The state.
    pub book: Book,
    /// Length of the log's intact prefix (a torn or corrupt tail after it is not records).
    pub intact: usize,
    /// Records replayed from the log.
    pub replayed: usize,
    /// The state is everything the catalog ever answered: it stopped cleanly and nothing was
    /// logged since. Otherwise the tail of its log may be lost, and the order log may hold
    /// trades it lacks.
    pub clean: bool,
}

/// Whether a log image holds nothing: no records, only the zeros written ahead of its end.
fn all_zeros(image: &[u8]) -> bool {
    image.iter().all(|&b| b == 0)
}

/// Rebuilds the book from the files' images: the snapshot, the leadership record (if the
/// file exists) and the write-ahead log.
pub fn recover(
    snapshot: &[u8],
    leadership: Option<&[u8]>,
    wal: &[u8],
    window: usize,
) -> Result<Recovered, Error> {
    let snapshot = decode_snapshot(snapshot)?;
    let clean = snapshot.clean;
    let mut book = Book::from_snapshot(snapshot, window)?;
    if let Some(leadership) = leadership {
        book.set_leadership(decode_leadership(leadership)?);
    }
    let (records, intact) = decode_records(wal);
    for record in &records {
        book.replay_record(record)?;
    }
    Ok(Recovered {
        book,
        intact,
        replayed: records.len(),
        clean: clean && all_zeros(wal),
    })
}

/// How a catalog's state directory was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Empty: the state is the seed file's, and nothing is on disk yet (the service decides
    /// whether to seed or to rebuild from the replicas, then writes a snapshot).
    Fresh,
    /// Stopped cleanly: everything it ever answered is here.
    Clean,
    /// After a crash: the tail of its log may be lost.
    Recovered,
}

/// The leadership record's file image.
pub fn encode_leadership(record: &Leadership) -> Result<Vec<u8>, Error> {
    seal(LEADERSHIP_MAGIC, record)
}

/// Reads the leadership record's file image.
pub fn decode_leadership(bytes: &[u8]) -> Result<Leadership, Error> {
    unseal(LEADERSHIP_MAGIC, LEADERSHIP_FILE, bytes)
}

/// Raises the count of starts kept in `dir` and returns it, once on disk.
fn raise_incarnation(dir: &Path) -> Result<u64, Error> {
    let path = dir.join(INCARNATION_FILE);
    let previous = match fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().map_err(|_| {
            Error::Corrupt(format!(
                "{INCARNATION_FILE}: {:?} is not a count",
                text.trim()
            ))
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e.into()),
    };
    let incarnation = previous
        .checked_add(1)
        .ok_or_else(|| Error::Corrupt(format!("{INCARNATION_FILE}: cannot grow further")))?;
    files::replace_file(dir, INCARNATION_FILE, format!("{incarnation}\n").as_bytes())?;
    Ok(incarnation)
}

/// The opened state directory: recovered state and the log to append to.
pub struct Store {
    dir: PathBuf,
    wal: LogFile,
    /// Held for the life of the process; dropping it releases the directory.
    _lock: File,
}

impl Store {
    /// Opens the state in `dir` (on first start, the seed file's stocks, not yet written),
    /// replays the log, and cuts a torn tail off it. A clean state is marked as used before it
    /// is returned, so that a crash from now on is not mistaken for a clean stop. Returns this
    /// start's incarnation too (raised and on disk already).
    pub fn open(
        dir: &Path,
        seed: &Path,
        window: usize,
    ) -> Result<(Store, Book, Start, u64), Error> {
        let lock = files::lock_dir(dir)?.ok_or_else(|| Error::Locked(dir.display().to_string()))?;
        let incarnation = raise_incarnation(dir)?;

        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let wal_path = dir.join(WAL_FILE);
        let image = match fs::read(&wal_path) {
            Ok(image) => image,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        if !snapshot_path.exists() {
            if !all_zeros(&image) {
                return Err(Error::Corrupt(format!(
                    "{} has a log but no snapshot",
                    dir.display()
                )));
            }
            let text = fs::read_to_string(seed)
                .map_err(|e| Error::Seed(format!("{}: {e}", seed.display())))?;
            let book = Book::new(Book::parse_seed(&text)?, window);
            info!(dir = %dir.display(), seed = %seed.display(), stocks = book.stocks().len(), "empty state directory");
            let (wal, _) = LogFile::open(&wal_path, 0)?;
            let store = Store {
                dir: dir.to_path_buf(),
                wal,
                _lock: lock,
            };
            return Ok((store, book, Start::Fresh, incarnation));
        }
        let snapshot = fs::read(&snapshot_path)?;
        let leadership_path = dir.join(LEADERSHIP_FILE);
        let leadership = if leadership_path.exists() {
            Some(fs::read(&leadership_path)?)
        } else {
            None
        };
        let Recovered {
            book,
            intact,
            replayed,
            clean,
        } = recover(&snapshot, leadership.as_deref(), &image, window)?;
        let (wal, tail) = LogFile::open(&wal_path, intact as u64)?;
        if tail.discarded > 0 {
            warn!(
                dropped_bytes = tail.discarded,
                offset = intact,
                "write-ahead log has a torn or corrupt tail; dropping it"
            );
        }
        if clean {
            // From now on the catalog answers trades before its log is on disk: a crash must
            // not find this snapshot still claiming a clean stop.
            let image = encode_snapshot(&book.snapshot(false))?;
            files::replace_file(dir, SNAPSHOT_FILE, &image)?;
        }
        files::sync_dir(dir)?;
        info!(
            dir = %dir.display(),
            replayed,
            next = book.next_number(),
            clean,
            leadership = %book.leadership(),
            "catalog state recovered"
        );
        let start = if clean {
            Start::Clean
        } else {
            Start::Recovered
        };
        Ok((
            Store {
                dir: dir.to_path_buf(),
                wal,
                _lock: lock,
            },
            book,
            start,
            incarnation,
        ))
    }

    /// Starts the group-commit thread. After each batch it reports [`LogEvent::Flushed`] on
    /// `events`, one event per batch however many trades wait on it; on a failed write it
    /// reports [`LogEvent::Failed`] and stops.
    pub fn start(
        self,
        events: tokio::sync::mpsc::UnboundedSender<LogEvent>,
        metrics: durability::group_commit::CommitMetrics,
    ) -> io::Result<(LogWriter, JoinHandle<()>)> {
        let failures = events.clone();
        let (jobs, handle) = group_commit::start(
            "catalog-wal",
            self.wal,
            metrics,
            move |batch: Vec<WriteId>| {
                // Nobody listening means the service is gone; the log is still written.
                if let Some(&last) = batch.iter().max() {
                    let _ = events.send(LogEvent::Flushed(last));
                }
            },
            move |e| {
                error!(error = %e, "write-ahead log failed; trades are refused from now on");
                let _ = failures.send(LogEvent::Failed(e.to_string()));
            },
        )?;
        Ok((
            LogWriter {
                jobs,
                deferred: Deferred::default(),
                dir: Arc::from(self.dir.as_path()),
                _lock: Arc::new(self._lock),
            },
            handle,
        ))
    }
}

/// The queue of the group-commit thread, and the appends kept for the next fsync.
pub struct LogWriter {
    jobs: group_commit::Committer<WriteId>,
    /// Applied trades, written with the next fsync something asks for: they need not be
    /// durable at once (the order log holds them), and one hand-over wakes the thread once.
    deferred: Deferred<WriteId>,
    dir: Arc<Path>,
    /// The state directory's lock, held as long as anything can still write.
    _lock: Arc<File>,
}

/// Most appends kept before they are handed over anyway.
const MAX_DEFERRED: usize = 4_096;

impl LogWriter {
    /// Queues `record`; `write` is reported once it is fsynced: now when `sync`, else with the
    /// next fsync something asks for. Fails when the writer has stopped.
    pub fn append(&mut self, record: &LogRecord, write: WriteId, sync: bool) -> Result<(), Error> {
        let bytes = encode_record(record)?;
        self.deferred.push(&bytes, write);
        if sync || self.deferred.len() >= MAX_DEFERRED {
            return self.hand_over(None);
        }
        Ok(())
    }

    /// Writes and fsyncs everything kept; `write` is reported once it is done.
    pub fn sync(&mut self, write: WriteId) -> Result<(), Error> {
        self.hand_over(Some(write))
    }

    fn hand_over(&mut self, item: Option<WriteId>) -> Result<(), Error> {
        match self.deferred.take(item) {
            Some(job) => self.send(job),
            None => Ok(()),
        }
    }

    fn send(&self, job: Job<WriteId>) -> Result<(), Error> {
        self.jobs
            .send(job)
            .map_err(|_| Error::Io(io::Error::other("log writer stopped")))
    }

    /// Queues a durable replacement of the leadership record, after every record queued
    /// before it; `write` is reported once it is on disk (never, if writing fails: the
    /// writer then stops and reports the failure).
    pub fn record_leadership(&mut self, record: &Leadership, write: WriteId) -> Result<(), Error> {
        let bytes = encode_leadership(record)?;
        let dir = self.dir.clone();
        self.hand_over(None)?;
        self.send(Job::Maintain {
            work: Box::new(move |_wal| files::replace_file(&dir, LEADERSHIP_FILE, &bytes)),
            item: Some(write),
        })
    }

    /// Queues a snapshot (taken by `take` on the commit thread) followed by emptying the log.
    /// Records queued before it may be older than the snapshot; replay skips them.
    pub fn snapshot(
        &mut self,
        take: impl FnOnce() -> Snapshot + Send + 'static,
    ) -> Result<(), Error> {
        let dir = self.dir.clone();
        self.hand_over(None)?;
        self.jobs
            .send(Job::Maintain {
                work: Box::new(move |wal| {
                    let started = Instant::now();
                    let snapshot = take();
                    let bytes = encode_snapshot(&snapshot).map_err(io::Error::other)?;
                    files::replace_file(&dir, SNAPSHOT_FILE, &bytes)?;
                    wal.truncate(0)?;
                    info!(
                        next = snapshot.boundaries.last().map_or(0, |b| b.number + 1),
                        clean = snapshot.clean,
                        took_ms = started.elapsed().as_millis() as u64,
                        "snapshot written; log emptied"
                    );
                    Ok(())
                }),
                item: None,
            })
            .map_err(|_| Error::Io(io::Error::other("log writer stopped")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::wire::{RequestId, StockName, TradeKind, TradeReceipt};
    use proptest::prelude::*;

    fn record(seq: u64) -> TradeRecord {
        TradeRecord {
            number: seq - 1,
            epoch: 1,
            request_id: RequestId::new(format!("req-{seq}")).unwrap(),
            name: StockName::new("GameStart").unwrap(),
            kind: TradeKind::Buy,
            quantity: 1,
            after: TradeReceipt {
                quantity: 100 - seq,
                volume: seq,
                version: seq,
            },
        }
    }

    #[test]
    fn a_snapshot_of_another_version_is_refused_by_name() {
        let mut image = seal(b"SBSNAP01", &0u8).unwrap();
        let err = decode_snapshot(&image).unwrap_err().to_string();
        assert!(err.contains("another version (SBSNAP01)"), "{err}");
        image[..8].copy_from_slice(b"SBLEAD01");
        let err = decode_snapshot(&image).unwrap_err().to_string();
        assert!(err.contains("not a file of this kind"), "{err}");
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_cut() {
        let mut image = Vec::new();
        for seq in 1..=3 {
            image.extend(encode_record(&LogRecord::Traded(record(seq))).unwrap());
        }
        let whole = image.len();
        let (records, intact) = decode_records(&image);
        assert_eq!(
            records,
            vec![
                LogRecord::Traded(record(1)),
                LogRecord::Traded(record(2)),
                LogRecord::Traded(record(3))
            ]
        );
        assert_eq!(intact, whole);

        // Every truncation point inside the last record drops exactly that record.
        let last_start = whole - encode_record(&LogRecord::Traded(record(3))).unwrap().len();
        for cut in last_start..whole {
            let (records, intact) = decode_records(&image[..cut]);
            assert_eq!(records.len(), 2, "cut at {cut}");
            assert_eq!(intact, last_start);
        }

        // A flipped bit in the last record's payload fails its checksum.
        let mut flipped = image.clone();
        flipped[whole - 2] ^= 0x40;
        assert_eq!(decode_records(&flipped).0.len(), 2);
    }

    #[test]
    fn refusals_round_trip_beside_trades_and_are_replayed() {
        let refusal = Refusal {
            request_id: RequestId::new("refused").unwrap(),
            name: StockName::new("GameStart").unwrap(),
            kind: TradeKind::Buy,
            quantity: 500,
            rejection: common::wire::TradeRejection::NotEnoughStock { available: 3 },
        };
        let records = vec![
            LogRecord::Traded(record(1)),
            LogRecord::Refused(refusal.clone()),
            LogRecord::Traded(record(2)),
        ];
        let image: Vec<u8> = records
            .iter()
            .flat_map(|r| encode_record(r).unwrap())
            .collect();
        assert_eq!(decode_records(&image), (records, image.len()));
        let seed = Book::new(Book::parse_seed("GameStart,1,100\n").unwrap(), 10);
        let snapshot = encode_snapshot(&seed.snapshot(true)).unwrap();
        let Recovered {
            mut book,
            intact,
            replayed,
            clean,
        } = recover(&snapshot, None, &image, 10).unwrap();
        assert_eq!((intact, replayed, book.next_number()), (image.len(), 3, 2));
        assert!(
            !clean,
            "a log after the clean snapshot means it was used since"
        );
        assert!(recover(&snapshot, None, &[], 10).unwrap().clean);
        let again = common::wire::TradeRequest {
            request_id: refusal.request_id.clone(),
            name: refusal.name.clone(),
            quantity: refusal.quantity,
            kind: refusal.kind,
        };
        assert_eq!(
            book.refuse(2, &again),
            crate::book::Refusing::Answered(refusal.rejection)
        );
    }

    #[test]
    fn snapshots_round_trip_and_damage_is_refused() {
        let book = Book::new(Book::parse_seed("A,1.5,10\nB,2,20\n").unwrap(), 10);
        let bytes = encode_snapshot(&book.snapshot(false)).unwrap();
        assert_eq!(decode_snapshot(&bytes).unwrap(), book.snapshot(false));
        let mut damaged = bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(decode_snapshot(&damaged).is_err());
        assert!(decode_snapshot(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn the_leadership_record_round_trips_and_damage_is_refused() {
        let record = Leadership {
            epoch: 7,
            leader: Some(2),
            in_sync: vec![1, 2],
        };
        let bytes = encode_leadership(&record).unwrap();
        assert_eq!(decode_leadership(&bytes).unwrap(), record);
        let mut damaged = bytes.clone();
        damaged[21] ^= 1;
        assert!(decode_leadership(&damaged).is_err());
        // A snapshot is not a leadership record.
        let book = Book::new(Book::parse_seed("A,1,1\n").unwrap(), 1);
        assert!(decode_leadership(&encode_snapshot(&book.snapshot(false)).unwrap()).is_err());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_and_never_yield_records_past_the_intact_prefix(
            bytes in proptest::collection::vec(any::<u8>(), 0..512)
        ) {
            let (records, intact) = decode_records(&bytes);
            prop_assert!(intact <= bytes.len());
            prop_assert_eq!(records.is_empty(), intact == 0);
            let _ = decode_snapshot(&bytes);
            let _ = decode_leadership(&bytes);
        }
    }
}
