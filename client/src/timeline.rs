//! The crash run's timeline: every request's start time, type and latency; the kills and
//! restarts `simulate_crashes.sh` logged; the leader changes the front end reported. Their
//! file formats, matching them to one time axis, and what happened around each kill.

use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

use crate::http::Session;
use crate::load::Kind;

pub mod plot;

/// Most requests one run keeps on its timeline; beyond that they are counted, not kept.
/// A sweep asks at most 3 requests per iteration (lookup, trade, verify), so the default
/// evaluation (5 sessions × 2,000 iterations × 5 values of p) stays well below it; at about
/// 32 bytes a record this bounds the memory at some 64 MB.
pub const MAX_REQUESTS: usize = 2_000_000;

/// Most leader changes kept (one poll every 50 ms for an hour could see at most 72,000).
pub const MAX_LEADER_CHANGES: usize = 100_000;

/// The header of the requests CSV.
pub const REQUESTS_HEADER: &str = "unix_ms,p,kind,status,latency_ms";

/// The header of the leader changes CSV.
pub const LEADERS_HEADER: &str = "unix_ms,leader,epoch";

/// Wall-clock milliseconds of monotonic instants: one reading of the system clock at the
/// start, then the monotonic clock, so that a run's times never go backwards and line up with
/// the kill log's `date +%s%3N`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
    origin_unix_ms: u64,
}

impl Clock {
    /// A clock reading the system time now.
    pub fn start() -> Self {
        let origin_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Clock {
            origin: Instant::now(),
            origin_unix_ms,
        }
    }

    /// Milliseconds since the Unix epoch at `at`.
    pub fn unix_ms(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.origin).as_millis() as u64;
        self.origin_unix_ms.saturating_add(since)
    }
}

/// One request as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestRecord {
    /// When it was first sent, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The trade probability of the round it belongs to.
    pub p: f64,
    /// Lookup, trade or verify.
    pub kind: Kind,
    /// The HTTP status of the answer; 0 when none came before the client gave up.
    pub status: u16,
    /// From the first send to the answer, retries included, in milliseconds.
    pub latency_ms: f64,
}

/// What happened to the cluster at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `simulate_crashes.sh` sent SIGKILL to this replica.
    Kill(u32),
    /// This replica was started again and listens.
    Restart(u32),
    /// The front end reported a new leader (0: none known) or epoch.
    Leader {
        /// The replica now leading, 0 when none is known.
        leader: u32,
        /// The leadership record's epoch.
        epoch: u64,
    },
}

/// An event and its wall-clock time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// What happened.
    pub kind: EventKind,
}

/// The requests CSV.
pub fn requests_csv(records: &[RequestRecord]) -> String {
    let mut out = String::with_capacity(32 * (records.len() + 1));
    out.push_str(REQUESTS_HEADER);
    out.push('\n');
    for r in records {
        let _ = writeln!(
            out,
            "{},{:.1},{},{},{:.3}",
            r.unix_ms,
            r.p,
            r.kind.name(),
            r.status,
            r.latency_ms
        );
    }
    out
}

fn kind_named(name: &str) -> Option<Kind> {
    [Kind::Lookup, Kind::Trade, Kind::Verify]
        .into_iter()
        .find(|k| k.name() == name)
}

/// Reads what [`requests_csv`] wrote; a malformed line is an error naming it.
pub fn parse_requests_csv(text: &str) -> anyhow::Result<Vec<RequestRecord>> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, header)) if header.trim() == REQUESTS_HEADER => {}
        _ => bail!("not a requests timeline: the first line must be {REQUESTS_HEADER}"),
    }
    let mut records = Vec::new();
    for (index, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let parse = || -> Option<RequestRecord> {
            let mut fields = line.split(',').map(str::trim);
            let record = RequestRecord {
                unix_ms: fields.next()?.parse().ok()?,
                p: fields.next()?.parse().ok()?,
                kind: kind_named(fields.next()?)?,
                status: fields.next()?.parse().ok()?,
                latency_ms: fields.next()?.parse().ok()?,
            };
            let finite = record.p.is_finite() && record.latency_ms.is_finite();
            (fields.next().is_none() && finite && record.latency_ms >= 0.0).then_some(record)
        };
        records.push(parse().with_context(|| format!("line {}: bad record {line:?}", index + 1))?);
    }
    Ok(records)
}

/// The leader changes CSV.
pub fn leaders_csv(changes: &[Event]) -> String {
    let mut out = String::from(LEADERS_HEADER);
    out.push('\n');
    for change in changes {
        if let EventKind::Leader { leader, epoch } = change.kind {
            let _ = writeln!(out, "{},{leader},{epoch}", change.unix_ms);
        }
    }
    out
}

/// Reads what [`leaders_csv`] wrote.
pub fn parse_leaders_csv(text: &str) -> anyhow::Result<Vec<Event>> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, header)) if header.trim() == LEADERS_HEADER => {}
        _ => bail!("not a leader log: the first line must be {LEADERS_HEADER}"),
    }
    let mut events = Vec::new();
    for (index, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let parse = || -> Option<Event> {
            let mut fields = line.split(',').map(str::trim);
            let unix_ms = fields.next()?.parse().ok()?;
            let leader = fields.next()?.parse().ok()?;
            let epoch = fields.next()?.parse().ok()?;
            fields.next().is_none().then_some(Event {
                unix_ms,
                kind: EventKind::Leader { leader, epoch },
            })
        };
        events.push(parse().with_context(|| format!("line {}: bad change {line:?}", index + 1))?);
    }
    Ok(events)
}

/// The events of a `simulate_crashes.sh` log: lines such as
/// `01:46:17.123 unix_ms=1712345177123 killed order-3 (pid 22579) with SIGKILL` and
/// `01:46:18.456 unix_ms=1712345178456 order-3 restarted (pid 22665)`. Other lines (a
/// replica that was not running, older logs without `unix_ms=`) are not events; how many
/// there were is returned beside them.
pub fn parse_kill_log(text: &str) -> (Vec<Event>, usize) {
    let mut events = Vec::new();
    let mut other = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match kill_log_event(line) {
            Some(event) => events.push(event),
            None => other += 1,
        }
    }
    (events, other)
}

fn kill_log_event(line: &str) -> Option<Event> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let unix_ms = words
        .iter()
        .find_map(|w| w.strip_prefix("unix_ms="))?
        .parse()
        .ok()?;
    let replica = |word: &str| -> Option<u32> { word.strip_prefix("order-")?.parse().ok() };
    let kind = words.windows(2).find_map(|pair| match pair {
        ["killed", name] => replica(name).map(EventKind::Kill),
        [name, "restarted"] => replica(name).map(EventKind::Restart),
        _ => None,
    })?;
    Some(Event { unix_ms, kind })
}

/// The leader id and epoch in the front end's `/metrics` page (`bazaar_order_leader_id` and
/// `bazaar_order_epoch`), if both are there.
pub fn parse_leader_gauges(page: &str) -> Option<(u32, u64)> {
    let gauge = |name: &str| -> Option<&str> {
        page.lines().find_map(|line| {
            let (metric, value) = line.trim().split_once(' ')?;
            (metric == name).then_some(value.trim())
        })
    };
    Some((
        gauge("bazaar_order_leader_id")?.parse().ok()?,
        gauge("bazaar_order_epoch")?.parse().ok()?,
    ))
}

/// Polls the front end's `/metrics` every `every` until `stop` fires and returns the
/// leadership it saw first and each change after, with their times. A poll that fails is
/// skipped (the front end is the one thing the crash run never kills). Bounded: at most
/// [`MAX_LEADER_CHANGES`] kept, and at most `max_polls` polls.
pub async fn watch_leader(
    addr: String,
    clock: Clock,
    every: Duration,
    max_polls: u64,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Vec<Event> {
    let mut session = Session::new(addr);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut changes: Vec<Event> = Vec::new();
    let mut last = None;
    for _ in 0..max_polls {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticker.tick() => {}
        }
        let asked = Instant::now();
        // A slow answer must not hold the end of the run up: stop wins over it.
        let answer = tokio::select! {
            _ = &mut stop => break,
            answer = session.send("GET", "/metrics", None, None) => answer,
        };
        let Ok(answer) = answer else {
            continue;
        };
        let Some(now) = parse_leader_gauges(&answer.body) else {
            continue;
        };
        if last != Some(now) && changes.len() < MAX_LEADER_CHANGES {
            last = Some(now);
            changes.push(Event {
                unix_ms: clock.unix_ms(asked),
                kind: EventKind::Leader {
                    leader: now.0,
                    epoch: now.1,
                },
            });
        }
    }
    changes
}

/// The time axis: from the first request's start to the last answer, in Unix milliseconds.
pub fn axis(records: &[RequestRecord]) -> Option<(u64, u64)> {
    let start = records.iter().map(|r| r.unix_ms).min()?;
    let end = records
        .iter()
        .map(|r| r.unix_ms.saturating_add(r.latency_ms.ceil() as u64))
        .max()?;
    Some((start, end))
}

/// Seconds since `origin` of a Unix millisecond time.
pub fn seconds_since(origin: u64, unix_ms: u64) -> f64 {
    (unix_ms as f64 - origin as f64) / 1000.0
}

/// The events on the axis `(start, end)` with their time in seconds since `start`, in time
/// order, and how many fell outside it.
pub fn place(events: &[Event], (start, end): (u64, u64)) -> (Vec<(f64, Event)>, usize) {
    let mut placed: Vec<(f64, Event)> = events
        .iter()
        .filter(|e| (start..=end).contains(&e.unix_ms))
        .map(|e| (seconds_since(start, e.unix_ms), *e))
        .collect();
    placed.sort_by(|a, b| a.0.total_cmp(&b.0));
    let outside = events.len() - placed.len();
    (placed, outside)
}

/// The leader changes that are elections: every change after the first sample (which is the
/// leadership the run started with) to a known leader.
pub fn elections(leaders: &[Event]) -> Vec<Event> {
    let mut sorted = leaders.to_vec();
    sorted.sort_by_key(|e| e.unix_ms);
    sorted
        .into_iter()
        .skip(1)
        .filter(|e| matches!(e.kind, EventKind::Leader { leader, .. } if leader != 0))
        .collect()
}

/// What happened after one kill.
#[derive(Debug, Clone, PartialEq)]
pub struct KillEffect {
    /// Seconds since the axis' start.
    pub at_s: f64,
    /// The replica killed.
    pub replica: u32,
    /// Whether it was leading then (per the last leader change before the kill).
    pub was_leader: bool,
    /// The first election after the kill, before the next kill: seconds after the kill, new
    /// leader, epoch.
    pub election: Option<(f64, u32, u64)>,
    /// The slowest trade in flight during the window after the kill: its latency in ms and
    /// when it started, in seconds after the kill (negative: before it).
    pub slowest_trade: Option<(f64, f64)>,
    /// Trades in flight during that window.
    pub trades: usize,
    /// The longest stretch of that window in which no request of any kind started, in ms:
    /// the sessions wait for their answers one at a time, so a stall of the trades stops them.
    pub quiet_ms: f64,
}

/// For every kill on the axis: whether it was the leader, when the election came, and the
/// slowest trade in flight between the kill and `window` after it (or the next kill, if
/// sooner).
pub fn kill_effects(
    records: &[RequestRecord],
    kills: &[Event],
    leaders: &[Event],
    window: Duration,
) -> Vec<KillEffect> {
    let Some(range) = axis(records) else {
        return Vec::new();
    };
    let mut kill_times: Vec<(u64, u32)> = kills
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Kill(replica) => Some((e.unix_ms, replica)),
            _ => None,
        })
        .filter(|(at, _)| (range.0..=range.1).contains(at))
        .collect();
    kill_times.sort_unstable();
    let mut leaders = leaders.to_vec();
    leaders.sort_by_key(|e| e.unix_ms);
    let elected = elections(&leaders);
    let window_ms = window.as_millis() as u64;
    kill_times
        .iter()
        .enumerate()
        .map(|(index, &(at, replica))| {
            let next_kill = kill_times.get(index + 1).map_or(u64::MAX, |k| k.0);
            let until = at.saturating_add(window_ms).min(next_kill);
            let was_leader = leaders.iter().rev().find(|e| e.unix_ms <= at).is_some_and(
                |e| matches!(e.kind, EventKind::Leader { leader, .. } if leader == replica),
            );
            let election = elected
                .iter()
                .find(|e| e.unix_ms >= at && e.unix_ms < next_kill)
                .and_then(|e| match e.kind {
                    EventKind::Leader { leader, epoch } => {
                        Some(((e.unix_ms - at) as f64 / 1000.0, leader, epoch))
                    }
                    _ => None,
                });
            let in_flight: Vec<&RequestRecord> = records
                .iter()
                .filter(|r| r.kind == Kind::Trade)
                .filter(|r| {
                    let end = r.unix_ms as f64 + r.latency_ms;
                    r.unix_ms < until && end >= at as f64
                })
                .collect();
            let slowest_trade = in_flight
                .iter()
                .max_by(|a, b| a.latency_ms.total_cmp(&b.latency_ms))
                .map(|r| (r.latency_ms, (r.unix_ms as f64 - at as f64) / 1000.0));
            let mut starts: Vec<u64> = records
                .iter()
                .map(|r| r.unix_ms)
                .filter(|t| (at..until).contains(t))
                .collect();
            starts.sort_unstable();
            let mut previous = at;
            let mut quiet = 0;
            for t in starts
                .iter()
                .copied()
                .chain(std::iter::once(until.min(range.1)))
            {
                quiet = quiet.max(t.saturating_sub(previous));
                previous = previous.max(t);
            }
            KillEffect {
                at_s: seconds_since(range.0, at),
                replica,
                was_leader,
                election,
                slowest_trade,
                trades: in_flight.len(),
                quiet_ms: quiet as f64,
            }
        })
        .collect()
}

/// Percentile `q` (0 to 1) of the latencies of one kind, in ms (nearest rank).
pub fn percentile(records: &[RequestRecord], kind: Kind, q: f64) -> Option<f64> {
    let mut latencies: Vec<f64> = records
        .iter()
        .filter(|r| r.kind == kind)
        .map(|r| r.latency_ms)
        .collect();
    if latencies.is_empty() {
        return None;
    }
    latencies.sort_by(f64::total_cmp);
    let rank = ((q.clamp(0.0, 1.0) * latencies.len() as f64).ceil() as usize).max(1);
    latencies.get(rank - 1).copied()
}

/// The report printed beside the plot: the axis, the events on it, and each kill's effect.
pub fn report(records: &[RequestRecord], kills: &[Event], leaders: &[Event]) -> String {
    let mut out = String::new();
    let Some(range) = axis(records) else {
        return "no requests on the timeline\n".to_owned();
    };
    let _ = writeln!(
        out,
        "timeline: {} requests over {:.1} s",
        records.len(),
        seconds_since(range.0, range.1)
    );
    for kind in [Kind::Lookup, Kind::Trade] {
        if let (Some(p50), Some(p99), Some(max)) = (
            percentile(records, kind, 0.5),
            percentile(records, kind, 0.99),
            percentile(records, kind, 1.0),
        ) {
            let _ = writeln!(
                out,
                "{:<7} p50 {p50:.3} ms, p99 {p99:.3} ms, max {max:.3} ms",
                kind.name()
            );
        }
    }
    let (placed_kills, kills_outside) = place(kills, range);
    let elected = elections(leaders);
    let (placed_elections, elections_outside) = place(&elected, range);
    let _ = writeln!(
        out,
        "events on the axis: {} kills/restarts ({} outside), {} elections ({} outside)",
        placed_kills.len(),
        kills_outside,
        placed_elections.len(),
        elections_outside
    );
    for (at, event) in placed_kills.iter().chain(&placed_elections) {
        let what = match event.kind {
            EventKind::Kill(r) => format!("kill order-{r}"),
            EventKind::Restart(r) => format!("order-{r} restarted"),
            EventKind::Leader { leader, epoch } => format!("leader {leader}, epoch {epoch}"),
        };
        let _ = writeln!(out, "  {at:>7.3} s  {what}");
    }
    let _ = writeln!(
        out,
        "after each kill (slowest trade in flight within 1 s of it):"
    );
    for effect in kill_effects(records, kills, leaders, Duration::from_secs(1)) {
        let _ = write!(
            out,
            "  {:>7.3} s  order-{}{}: ",
            effect.at_s,
            effect.replica,
            if effect.was_leader { " (leader)" } else { "" }
        );
        match effect.election {
            Some((after, leader, epoch)) => {
                let _ = write!(
                    out,
                    "election {:.0} ms later (leader {leader}, epoch {epoch}); ",
                    after * 1000.0
                );
            }
            None => out.push_str("no election; "),
        }
        match effect.slowest_trade {
            Some((latency, started)) => {
                let _ = write!(
                    out,
                    "{} trades in flight, slowest {latency:.1} ms (started {:+.0} ms from the kill); ",
                    effect.trades,
                    started * 1000.0
                );
            }
            None => out.push_str("no trade in flight; "),
        }
        let _ = writeln!(out, "no request started for {:.0} ms", effect.quiet_ms);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(unix_ms: u64, kind: Kind, latency_ms: f64) -> RequestRecord {
        RequestRecord {
            unix_ms,
            p: 0.4,
            kind,
            status: 200,
            latency_ms,
        }
    }

    fn leader(unix_ms: u64, leader: u32, epoch: u64) -> Event {
        Event {
            unix_ms,
            kind: EventKind::Leader { leader, epoch },
        }
    }

    fn kill(unix_ms: u64, replica: u32) -> Event {
        Event {
            unix_ms,
            kind: EventKind::Kill(replica),
        }
    }

    #[test]
    fn the_requests_csv_reads_back_what_was_written() {
        let records = vec![
            request(1_700_000_000_000, Kind::Lookup, 0.213),
            RequestRecord {
                status: 0,
                p: 0.8,
                ..request(1_700_000_000_001, Kind::Trade, 5000.5)
            },
            request(1_700_000_000_002, Kind::Verify, 0.1),
        ];
        let text = requests_csv(&records);
        assert!(text.starts_with("unix_ms,p,kind,status,latency_ms\n"));
        assert!(
            text.contains("1700000000001,0.8,trade,0,5000.500\n"),
            "{text}"
        );
        assert_eq!(parse_requests_csv(&text).unwrap(), records);
    }

    #[test]
    fn a_bad_requests_csv_is_refused_with_the_line() {
        assert!(parse_requests_csv("").is_err());
        assert!(parse_requests_csv("a,b\n1,2\n").is_err());
        for bad in [
            "1,0.2,lookup,200",
            "1,0.2,sell,200,1.0",
            "x,0.2,lookup,200,1.0",
            "1,0.2,lookup,200,1.0,extra",
            "1,0.2,lookup,200,-1.0",
            "1,0.2,lookup,200,NaN",
            "1,0.2,lookup,70000,1.0",
        ] {
            let text = format!("{REQUESTS_HEADER}\n1,0.2,lookup,200,1.0\n{bad}\n");
            let error = format!("{:#}", parse_requests_csv(&text).unwrap_err());
            assert!(error.contains("line 3"), "{bad}: {error}");
        }
        let blank = format!("{REQUESTS_HEADER}\n\n1,0.2,lookup,200,1.0\n");
        assert_eq!(parse_requests_csv(&blank).unwrap().len(), 1);
    }

    #[test]
    fn the_leaders_csv_reads_back_and_keeps_only_leader_events() {
        let events = vec![leader(10, 3, 1), kill(15, 3), leader(20, 2, 2)];
        let text = leaders_csv(&events);
        assert_eq!(text, "unix_ms,leader,epoch\n10,3,1\n20,2,2\n");
        assert_eq!(
            parse_leaders_csv(&text).unwrap(),
            vec![leader(10, 3, 1), leader(20, 2, 2)]
        );
        assert!(parse_leaders_csv("unix_ms,leader,epoch\n10,3\n").is_err());
        assert!(parse_leaders_csv("unix_ms,leader,epoch\n10,-1,2\n").is_err());
        assert!(parse_leaders_csv("10,3,1\n").is_err());
    }

    #[test]
    fn the_kill_log_gives_kills_and_restarts_with_their_milliseconds() {
        let log = "\
01:46:17.123 unix_ms=1712345177123 killed order-3 (pid 22579) with SIGKILL
01:46:18.456 unix_ms=1712345178456 order-3 restarted (pid 22665)
order-2 is not running
01:46:20 killed order-2 (pid 22573) with SIGKILL
01:46:21.000 unix_ms=17x killed order-1 (pid 1) with SIGKILL
01:46:22.000 unix_ms=1712345182000 killed order-x (pid 1) with SIGKILL

01:46:23.000 unix_ms=1712345183000 something else
";
        let (events, other) = parse_kill_log(log);
        assert_eq!(
            events,
            vec![
                kill(1_712_345_177_123, 3),
                Event {
                    unix_ms: 1_712_345_178_456,
                    kind: EventKind::Restart(3)
                }
            ]
        );
        assert_eq!(other, 5);
    }

    #[test]
    fn the_leader_gauges_are_read_from_the_metrics_page() {
        let page = "\
# HELP bazaar_order_leader_id The order leader (0: none known).
# TYPE bazaar_order_leader_id gauge
bazaar_order_leader_id 3
bazaar_order_leader_id_other 9
# TYPE bazaar_order_epoch gauge
bazaar_order_epoch 17
bazaar_order_elections_total 4
";
        assert_eq!(parse_leader_gauges(page), Some((3, 17)));
        assert_eq!(parse_leader_gauges("bazaar_order_leader_id 3\n"), None);
        assert_eq!(
            parse_leader_gauges("bazaar_order_leader_id x\nbazaar_order_epoch 1\n"),
            None
        );
    }

    #[test]
    fn events_are_placed_on_the_axis_of_the_requests() {
        let records = vec![
            request(2_000, Kind::Lookup, 0.5),
            request(1_000, Kind::Trade, 1.5),
            request(3_000, Kind::Trade, 250.2),
        ];
        let range = axis(&records).unwrap();
        assert_eq!(range, (1_000, 3_251));
        let events = [
            kill(3_251, 1),
            kill(999, 2),
            kill(1_500, 3),
            leader(4_000, 2, 5),
        ];
        let (placed, outside) = place(&events, range);
        assert_eq!(placed, vec![(0.5, kill(1_500, 3)), (2.251, kill(3_251, 1))]);
        assert_eq!(outside, 2);
        assert!(axis(&[]).is_none());
    }

    #[test]
    fn the_first_leader_sample_and_unknown_leaders_are_not_elections() {
        let changes = [leader(30, 0, 2), leader(10, 3, 1), leader(50, 2, 2)];
        assert_eq!(elections(&changes), vec![leader(50, 2, 2)]);
        assert!(elections(&[]).is_empty());
    }

    #[test]
    fn a_kill_is_matched_with_its_election_and_the_trades_it_slowed() {
        let records = vec![
            request(0, Kind::Lookup, 0.2),
            request(900, Kind::Trade, 1.0),     // done before the kill
            request(990, Kind::Trade, 120.0),   // in flight across it
            request(1_050, Kind::Trade, 300.0), // started after it: the slowest
            request(1_050, Kind::Lookup, 900.0), // not a trade
            request(2_500, Kind::Trade, 1.0),   // after the window
            request(3_000, Kind::Trade, 2.0),   // after the second kill
        ];
        let leaders = [leader(0, 3, 1), leader(1_200, 2, 2)];
        let kills = [kill(1_000, 3), kill(2_990, 1), kill(50_000, 2)];
        let effects = kill_effects(&records, &kills, &leaders, Duration::from_secs(1));
        assert_eq!(effects.len(), 2, "the kill off the axis is left out");
        assert_eq!(
            effects[0],
            KillEffect {
                at_s: 1.0,
                replica: 3,
                was_leader: true,
                election: Some((0.2, 2, 2)),
                slowest_trade: Some((300.0, 0.05)),
                trades: 2,
                // Starts at 1050 and 2500 in the window 1000..2000: quiet from 1050 on.
                quiet_ms: 950.0,
            }
        );
        assert_eq!(
            effects[1],
            KillEffect {
                at_s: 2.99,
                replica: 1,
                was_leader: false,
                election: None,
                slowest_trade: Some((2.0, 0.01)),
                trades: 1,
                // The window ends with the axis, at 3002.
                quiet_ms: 10.0,
            }
        );
        let text = report(&records, &kills, &leaders);
        assert!(text.contains("order-3 (leader): election 200 ms later (leader 2, epoch 2); 2 trades in flight, slowest 300.0 ms"), "{text}");
        assert!(text.contains("1 elections (0 outside)"), "{text}");
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let records: Vec<RequestRecord> = (1..=100)
            .map(|i| request(i, Kind::Trade, i as f64))
            .collect();
        assert_eq!(percentile(&records, Kind::Trade, 0.5), Some(50.0));
        assert_eq!(percentile(&records, Kind::Trade, 0.99), Some(99.0));
        assert_eq!(percentile(&records, Kind::Trade, 1.0), Some(100.0));
        assert_eq!(percentile(&records, Kind::Trade, 0.0), Some(1.0));
        assert_eq!(percentile(&records, Kind::Lookup, 0.5), None);
    }

    #[test]
    fn the_clock_counts_from_one_reading_of_the_system_time() {
        let clock = Clock::start();
        let later = clock.origin + Duration::from_millis(1_234);
        assert_eq!(clock.unix_ms(later) - clock.unix_ms(clock.origin), 1_234);
        let earlier = clock.origin.checked_sub(Duration::from_millis(5));
        if let Some(earlier) = earlier {
            assert_eq!(clock.unix_ms(earlier), clock.origin_unix_ms);
        }
    }
}
