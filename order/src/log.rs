//! The order log on disk, and the only code that knows its files:
//!
//! - `orders.log`: one order per line, tab-separated, so that replicas can be compared with
//!   `diff`: `number  name  type  quantity  epoch  request_id  crc32`, the checksum (8 hex
//!   digits) covering everything before it. Lines are appended by the group-commit thread
//!   into space written ahead with zeros ([`LogFile`]: an fsync then writes no metadata), so
//!   the file ends in up to 1 MiB of zero bytes after its last line; a torn last line after a
//!   crash fails its checksum (or lacks its newline) and is zeroed.
//! - `epoch`: the highest epoch seen and its leader, replaced atomically.
//! - `diverged.log`: entries set aside because the leader's history replaced them.
//!
//! In memory it keeps, per entry, only its epoch and file offset, plus the most recent
//! entries in a bounded window; older entries are read back from the file. Which entries the
//! log should hold is the engine's business ([`crate::engine`]); this module only keeps the
//! files in step with its commands.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::wire::{
    Epoch, LogPosition, OrderEntry, ReplicaId, RequestId, StockName, TradeKind, TransactionNumber,
};
use durability::files;
use durability::group_commit::Maintenance;
use durability::log_file::LogFile;

use crate::engine::Recovered;
use tracing::{error, warn};

use crate::Error;

const LOG_FILE: &str = "orders.log";
const EPOCH_FILE: &str = "epoch";
const SIDE_FILE: &str = "diverged.log";
/// Entries kept in memory for replication and lookups; older ones are read from the file.
const TAIL_CAPACITY: usize = 65_536;
/// Longest line we accept; anything longer is damage.
const MAX_LINE_BYTES: usize = 1024;

/// Formats an entry as its line, newline included.
pub fn format_line(entry: &OrderEntry) -> String {
    let mut line = Vec::new();
    write_line(entry, &mut line);
    String::from_utf8_lossy(&line).into_owned()
}

/// Writes an entry's line, newline included, at the end of `out` (no allocation of its own:
/// every append of a replica goes through here).
pub fn write_line(entry: &OrderEntry, out: &mut Vec<u8>) {
    let start = out.len();
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "{}\t{}\t{}\t{}\t{}\t{}",
        entry.number, entry.name, entry.kind, entry.quantity, entry.epoch, entry.request_id
    );
    let crc = crc32fast::hash(&out[start..]);
    let _ = writeln!(out, "\t{crc:08x}");
}

/// Parses one line (without its newline); `None` if it is not an intact entry.
pub fn parse_line(line: &str) -> Option<OrderEntry> {
    let (body, crc) = line.rsplit_once('\t')?;
    if crc.len() != 8 || u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(body.as_bytes()) {
        return None;
    }
    let mut fields = body.split('\t');
    let entry = OrderEntry {
        number: fields.next()?.parse().ok()?,
        name: StockName::new(fields.next()?).ok()?,
        kind: fields.next()?.parse::<TradeKind>().ok()?,
        quantity: fields.next()?.parse().ok()?,
        epoch: fields.next()?.parse().ok()?,
        request_id: RequestId::new(fields.next()?).ok()?,
    };
    fields.next().is_none().then_some(entry)
}

/// Reads every intact entry of a log file, stopping at a torn tail. Returns the entries and
/// the byte length of the intact prefix. Damage followed by intact lines is corruption.
pub fn read_entries(path: &Path) -> Result<(Vec<OrderEntry>, u64), Error> {
    match File::open(path) {
        Ok(file) => read_entries_from(BufReader::new(file), &path.display().to_string()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((Vec::new(), 0)),
        Err(e) => Err(e.into()),
    }
}

/// [`read_entries`] of a log image read from `reader`; `name` names it in errors.
pub fn read_entries_from(
    mut reader: impl BufRead,
    name: &str,
) -> Result<(Vec<OrderEntry>, u64), Error> {
    let mut entries = Vec::new();
    let mut intact = 0u64;
    let mut damaged_at: Option<u64> = None;
    let mut offset = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader
            .by_ref()
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if read == 0 {
            break;
        }
        let complete = line.last() == Some(&b'\n') && line.len() <= MAX_LINE_BYTES;
        // Intact means its checksum holds; an intact line out of sequence, or after damage,
        // is corruption to report, not a torn tail to cut.
        let entry = complete
            .then(|| std::str::from_utf8(&line[..line.len() - 1]).ok())
            .flatten()
            .and_then(parse_line);
        match (entry, damaged_at) {
            (Some(_), Some(at)) => {
                return Err(Error::Corrupt(format!(
                    "{name}: damaged line at byte {at} is followed by intact entries"
                )))
            }
            (Some(entry), None) if entry.number != entries.len() as u64 => {
                return Err(Error::Corrupt(format!(
                    "{name}: entry {} at byte {offset} where {} belongs",
                    entry.number,
                    entries.len()
                )))
            }
            (Some(entry), None) => {
                entries.push(entry);
                intact = offset + read as u64;
            }
            (None, None) => damaged_at = Some(offset),
            (None, Some(_)) => {}
        }
        offset += read as u64;
    }
    Ok((entries, intact))
}

/// Per-entry bookkeeping kept for every entry.
#[derive(Debug, Clone, Copy)]
struct Slot {
    epoch: Epoch,
    offset: u64,
}

/// The highest epoch a replica has seen and whom it names leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EpochRecord {
    /// The epoch.
    pub epoch: Epoch,
    /// Its leader, when known.
    pub leader: Option<ReplicaId>,
}

/// A replica's order log files.
pub struct OrderLog {
    dir: PathBuf,
    reader: File,
    slots: Vec<Slot>,
    /// Where the next line goes.
    end: u64,
    /// The most recent entries, up to `TAIL_CAPACITY`.
    tail: VecDeque<OrderEntry>,
    /// Entries in the side file.
    set_aside: u64,
    _lock: File,
}

/// How many entries the replica whose state directory is `dir` has set aside (0 when none):
/// the side file's lines that parse as entries (a torn last line, left by a crash while it
/// was appended, does not count).
pub fn count_set_aside(dir: &Path) -> Result<u64, Error> {
    let file = match File::open(dir.join(SIDE_FILE)) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut count = 0;
    for line in BufReader::new(file).split(b'\n') {
        let line = line?;
        let entry = std::str::from_utf8(&line).ok().and_then(parse_line);
        count += u64::from(entry.is_some());
    }
    Ok(count)
}

/// The order log of the replica whose state directory is `dir`.
pub fn log_file(dir: &Path) -> PathBuf {
    dir.join(LOG_FILE)
}

/// The side file of the replica whose state directory is `dir`.
pub fn side_file(dir: &Path) -> PathBuf {
    dir.join(SIDE_FILE)
}

impl OrderLog {
    /// Opens the log in `dir` (creating it), cutting a torn last line. Returns the log, the
    /// file handle the group-commit thread appends with, and what was recovered (the entries
    /// and the stored epoch) for the engine.
    pub fn open(dir: &Path) -> Result<(OrderLog, LogFile, Recovered), Error> {
        let lock = files::lock_dir(dir)?.ok_or_else(|| Error::Locked(dir.display().to_string()))?;
        let path = dir.join(LOG_FILE);
        let (entries, intact) = read_entries(&path)?;
        let (append, tail) = LogFile::open(&path, intact)?;
        if tail.discarded > 0 {
            warn!(
                dropped_bytes = tail.discarded,
                offset = intact,
                "order log has a torn last line; dropping it"
            );
        }
        files::sync_dir(dir)?;
        let mut log = OrderLog {
            dir: dir.to_path_buf(),
            reader: File::open(&path)?,
            slots: Vec::with_capacity(entries.len()),
            end: 0,
            tail: VecDeque::new(),
            // Only reported, so an unreadable side file does not keep the replica down.
            set_aside: count_set_aside(dir).unwrap_or_else(|e| {
                warn!(error = %e, "cannot count the entries set aside");
                0
            }),
            _lock: lock,
        };
        let mut line = Vec::new();
        for entry in &entries {
            line.clear();
            log.index(entry.clone(), &mut line);
        }
        let epoch = read_epoch(dir)?;
        let set_aside = log.set_aside;
        Ok((
            log,
            append,
            Recovered {
                entries,
                epoch,
                set_aside,
            },
        ))
    }

    /// Records `entry` in the in-memory index and writes its line to append at the end of
    /// `out`.
    fn index(&mut self, entry: OrderEntry, out: &mut Vec<u8>) {
        let start = out.len();
        write_line(&entry, out);
        self.slots.push(Slot {
            epoch: entry.epoch,
            offset: self.end,
        });
        self.end += (out.len() - start) as u64;
        if self.tail.len() == TAIL_CAPACITY {
            self.tail.pop_front();
        }
        self.tail.push_back(entry);
    }

    /// Entries set aside in the side file so far.
    pub fn set_aside(&self) -> u64 {
        self.set_aside
    }

    /// Number the next entry gets.
    pub fn next_number(&self) -> TransactionNumber {
        self.slots.len() as u64
    }

    /// The last entry's position.
    pub fn last(&self) -> Option<LogPosition> {
        self.position(self.slots.len().checked_sub(1)? as u64)
    }

    /// The position of entry `number`, if the log has it.
    pub fn position(&self, number: TransactionNumber) -> Option<LogPosition> {
        let slot = self.slots.get(usize::try_from(number).ok()?)?;
        Some(LogPosition {
            epoch: slot.epoch,
            number,
        })
    }

    /// Appends `entry`, which must be the next number, writing its line for the commit thread
    /// at the end of `out`.
    pub fn append(&mut self, entry: OrderEntry, out: &mut Vec<u8>) -> Result<(), Error> {
        if entry.number != self.next_number() {
            return Err(Error::Corrupt(format!(
                "entry {} appended where {} belongs",
                entry.number,
                self.next_number()
            )));
        }
        self.index(entry, out);
        Ok(())
    }

    /// Up to `max` entries from `from` on.
    pub fn entries(&self, from: TransactionNumber, max: usize) -> Result<Vec<OrderEntry>, Error> {
        let end = (self.next_number()).min(from.saturating_add(max as u64));
        let mut out = Vec::with_capacity(end.saturating_sub(from) as usize);
        for number in from..end {
            out.push(self.get(number)?.ok_or_else(|| {
                Error::Corrupt(format!("entry {number} is indexed but unreadable"))
            })?);
        }
        Ok(out)
    }

    /// Entry `number`: from memory when recent, else read back from the file.
    pub fn get(&self, number: TransactionNumber) -> Result<Option<OrderEntry>, Error> {
        let Ok(index) = usize::try_from(number) else {
            return Ok(None);
        };
        let Some(slot) = self.slots.get(index) else {
            return Ok(None);
        };
        let tail_start = self.slots.len() - self.tail.len();
        if index >= tail_start {
            return Ok(self.tail.get(index - tail_start).cloned());
        }
        let end = self
            .slots
            .get(index + 1)
            .map_or(self.end, |next| next.offset);
        let mut line = vec![0u8; (end - slot.offset) as usize];
        self.reader.read_exact_at(&mut line, slot.offset)?;
        let text = std::str::from_utf8(&line)
            .ok()
            .and_then(|t| t.strip_suffix('\n'))
            .and_then(parse_line);
        match text {
            Some(entry) if entry.number == number => Ok(Some(entry)),
            _ => Err(Error::Corrupt(format!("entry {number} is damaged on disk"))),
        }
    }

    /// Removes every entry from `from` on from the index and returns them with the work that
    /// sets them aside in the side file and cuts them off the log. Run the work on the commit
    /// thread once everything appended before is durable.
    pub fn cut_from(
        &mut self,
        from: TransactionNumber,
        reason: String,
    ) -> Result<(Vec<OrderEntry>, Maintenance), Error> {
        let removed = self.entries(from, usize::MAX)?;
        let Some(first) = self.slots.get(from as usize).copied() else {
            return Ok((removed, Box::new(|_| Ok(()))));
        };
        self.slots.truncate(from as usize);
        self.end = first.offset;
        let tail_start = self.slots.len() + removed.len() - self.tail.len();
        let keep = (from as usize).saturating_sub(tail_start);
        self.tail.truncate(keep);
        self.set_aside += removed.len() as u64;
        let side = self.dir.join(SIDE_FILE);
        let mut text = format!(
            "# set aside {} entries from #{from}: {reason}\n",
            removed.len()
        )
        .into_bytes();
        for entry in &removed {
            write_line(entry, &mut text);
        }
        error!(
            from,
            count = removed.len(),
            side_file = %side.display(),
            %reason,
            "order log diverged from the leader; suffix set aside"
        );
        let cut_at = first.offset;
        let dir = self.dir.clone();
        let work: Maintenance = Box::new(move |log| {
            let mut file = OpenOptions::new().create(true).append(true).open(&side)?;
            file.write_all(&text)?;
            file.sync_all()?;
            files::sync_dir(&dir)?;
            log.truncate(cut_at)
        });
        Ok((removed, work))
    }

    /// The work that stores the highest epoch seen, atomically and durably; run it on the
    /// commit thread, in order with the appends.
    pub fn store_epoch(&self, record: EpochRecord) -> Maintenance {
        let dir = self.dir.clone();
        Box::new(move |_| files::replace_file(&dir, EPOCH_FILE, epoch_text(record).as_bytes()))
    }
}

/// The `epoch` file's text for `record`.
pub fn epoch_text(record: EpochRecord) -> String {
    match record.leader {
        Some(leader) => format!("{} {leader}\n", record.epoch),
        None => format!("{} -\n", record.epoch),
    }
}

fn read_epoch(dir: &Path) -> Result<EpochRecord, Error> {
    match fs::read_to_string(dir.join(EPOCH_FILE)) {
        Ok(text) => parse_epoch(&text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(EpochRecord::default()),
        Err(e) => Err(e.into()),
    }
}

/// Reads the `epoch` file's text.
pub fn parse_epoch(text: &str) -> Result<EpochRecord, Error> {
    let mut fields = text.split_whitespace();
    let epoch = fields.next().and_then(|e| e.parse().ok());
    let leader = fields.next();
    match (epoch, leader) {
        (Some(epoch), Some("-")) => Ok(EpochRecord {
            epoch,
            leader: None,
        }),
        (Some(epoch), Some(leader)) => Ok(EpochRecord {
            epoch,
            leader: Some(
                leader
                    .parse()
                    .map_err(|_| Error::Corrupt(format!("epoch file: bad leader {leader:?}")))?,
            ),
        }),
        _ => Err(Error::Corrupt(format!("epoch file: {text:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(number: u64, epoch: u64) -> OrderEntry {
        OrderEntry {
            number,
            epoch,
            request_id: RequestId::new(format!("r{number}-{epoch}")).unwrap(),
            name: StockName::new("Game Start").unwrap(),
            kind: if number.is_multiple_of(2) {
                TradeKind::Buy
            } else {
                TradeKind::Sell
            },
            quantity: number + 1,
        }
    }

    #[test]
    fn lines_round_trip_and_damage_is_detected() {
        let e = entry(7, 3);
        let line = format_line(&e);
        assert!(line.starts_with("7\tGame Start\tsell\t8\t3\tr7-3\t"));
        assert_eq!(parse_line(line.trim_end_matches('\n')), Some(e));
        let flipped = line.replace("sell", "buy");
        assert_eq!(parse_line(flipped.trim_end_matches('\n')), None);
        assert_eq!(parse_line(&line[..line.len() - 4]), None);
    }

    fn write_log(dir: &Path, text: &str) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join(LOG_FILE), text).unwrap();
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_damage_in_the_middle_refused() {
        let dir = tempfile::tempdir().unwrap();
        let good: String = (0..3).map(|n| format_line(&entry(n, 1))).collect();
        let torn = format_line(&entry(3, 1));
        write_log(dir.path(), &format!("{good}{}", &torn[..torn.len() - 5]));
        let (log, _, _) = OrderLog::open(dir.path()).unwrap();
        assert_eq!(
            log.last(),
            Some(LogPosition {
                epoch: 1,
                number: 2
            })
        );
        let bytes = fs::read(dir.path().join(LOG_FILE)).unwrap();
        assert_eq!(&bytes[..good.len()], good.as_bytes());
        assert!(
            bytes[good.len()..].iter().all(|&b| b == 0),
            "the torn line is zeroed"
        );
        drop(log);
        // Reopened, the zeros read as the end, not as another torn line.
        let (log, _, recovered) = OrderLog::open(dir.path()).unwrap();
        assert_eq!(recovered.entries.len(), 3);
        assert_eq!(log.next_number(), 3);
        drop(log);

        let broken = dir.path().join("broken");
        let mut bad = good.clone();
        bad.insert_str(format_line(&entry(0, 1)).len(), "garbage\n");
        write_log(&broken, &bad);
        assert!(matches!(OrderLog::open(&broken), Err(Error::Corrupt(_))));
    }

    #[test]
    fn a_damaged_line_in_the_middle_is_reported_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut text: String = (0..5).map(|n| format_line(&entry(n, 1))).collect();
        let second = format_line(&entry(0, 1)).len() + 3;
        text.replace_range(second..second + 1, "X");
        write_log(dir.path(), &text);
        assert!(matches!(OrderLog::open(dir.path()), Err(Error::Corrupt(_))));
        assert_eq!(fs::read_to_string(dir.path().join(LOG_FILE)).unwrap(), text);
    }

    #[test]
    fn append_read_cut_and_store_the_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, mut file, recovered) = OrderLog::open(dir.path()).unwrap();
        assert_eq!(recovered.epoch, EpochRecord::default());
        assert!(recovered.entries.is_empty());
        for (n, e) in [(0, 1), (1, 1), (2, 2), (3, 2), (4, 2)] {
            let mut line = Vec::new();
            log.append(entry(n, e), &mut line).unwrap();
            file.append(&line).unwrap();
        }
        assert!(log.append(entry(9, 2), &mut Vec::new()).is_err());
        assert_eq!(log.get(3).unwrap(), Some(entry(3, 2)));
        assert_eq!(log.entries(1, 2).unwrap(), vec![entry(1, 1), entry(2, 2)]);

        let (removed, work) = log.cut_from(3, "test".into()).unwrap();
        assert_eq!(removed, vec![entry(3, 2), entry(4, 2)]);
        work(&mut file).unwrap();
        assert_eq!(
            log.last(),
            Some(LogPosition {
                epoch: 2,
                number: 2
            })
        );
        let mut line = Vec::new();
        log.append(entry(3, 5), &mut line).unwrap();
        file.append(&line).unwrap();
        let side = fs::read_to_string(dir.path().join(SIDE_FILE)).unwrap();
        assert!(side.contains(&format_line(&entry(4, 2))), "{side}");
        let record = EpochRecord {
            epoch: 9,
            leader: Some(2),
        };
        log.store_epoch(record)(&mut file).unwrap();
        drop(log);
        let (reopened, _, recovered) = OrderLog::open(dir.path()).unwrap();
        assert_eq!(reopened.entries(0, 10).unwrap().len(), 4);
        assert_eq!(reopened.get(3).unwrap(), Some(entry(3, 5)));
        assert_eq!(recovered.entries.len(), 4);
        assert_eq!(recovered.epoch, record);
        assert_eq!(parse_epoch(&epoch_text(record)).unwrap(), record);
        let no_leader = EpochRecord {
            epoch: 3,
            leader: None,
        };
        assert_eq!(parse_epoch(&epoch_text(no_leader)).unwrap(), no_leader);
        assert!(parse_epoch("x y").is_err());
    }

    #[test]
    fn a_second_process_cannot_open_the_same_log() {
        let dir = tempfile::tempdir().unwrap();
        let _first = OrderLog::open(dir.path()).unwrap();
        assert!(matches!(OrderLog::open(dir.path()), Err(Error::Locked(_))));
    }

    proptest! {
        #[test]
        fn random_lines_never_panic(line in ".{0,200}") {
            let _ = parse_line(&line);
        }
    }
}
