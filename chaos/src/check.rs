//! Checking a whole history once the system is quiet.
//!
//! [`check`] gathers what the system holds (each replica's `orders.log`, every acknowledged
//! order read back through a front end, each stock's quantity and volume in the catalog, and
//! `order audit`'s verdict) into an [`Observed`], and [`analyze`] (pure, unit-tested on fake
//! histories) compares it with what the clients were told:
//!
//! 1. every 200 trade reads back at its number with the same stock, type and quantity;
//! 2. no number was acknowledged to two different trades;
//! 3. the replicas' logs are identical and numbered 0..n-1;
//! 4. every acknowledged order is in the log at its number with its content, and no
//!    request id (so no idempotency key) is recorded twice;
//! 5. conservation: each stock's quantity in the catalog is its initial quantity minus the
//!    log's buys plus its sells, and its volume the log's traded shares;
//! 6. `order audit` exits 0.
//!
//! The [`Report`] lists every violation with its count and a few examples.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use common::rpc::ClientConfig;
use common::wire::StockName;

use crate::cluster::{frontend_name, AuditOutcome, Cluster, CATALOG, REPLICAS};
use crate::history::{read_seed, History, Operation, Outcome, Side, Trade};
use crate::http::HttpClient;

/// Examples kept per finding.
const EXAMPLES: usize = 5;
/// Concurrent connections reading orders back.
const READERS: usize = 4;
/// Attempts to read one order back while the front end answers 503 or not at all.
const READ_ATTEMPTS: u32 = 5;

/// One entry of a replica's order log, as the checker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Its transaction number.
    pub number: u64,
    /// The order.
    pub trade: Trade,
    /// The request id it was placed under.
    pub request_id: String,
    /// The epoch that numbered it.
    pub epoch: u64,
}

/// What `GET /orders/<n>` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// 200 with this order.
    Found(Trade),
    /// 404.
    NotFound,
    /// Anything else.
    Failed(String),
}

/// A stock as the catalog holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stock {
    /// Shares left.
    pub quantity: u64,
    /// Shares traded.
    pub volume: u64,
}

/// Everything the checker compares.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The clients' operations.
    pub operations: Vec<Operation>,
    /// Each replica's log, by process name, or why it could not be read.
    pub logs: Vec<(String, Result<Vec<LogEntry>, String>)>,
    /// Acknowledged numbers read back through a front end.
    pub reads: BTreeMap<u64, Read>,
    /// Initial quantity of each stock.
    pub initial: BTreeMap<String, u64>,
    /// Each stock in the catalog now, or why it could not be read.
    pub catalog: BTreeMap<String, Result<Stock, String>>,
    /// `order audit`'s verdict, or why it did not run.
    pub audit: Option<Result<AuditOutcome, String>>,
    /// Whether the system became quiet (logs identical, front ends healthy) before the
    /// checks, or what was still wrong.
    pub quiet: Result<(), String>,
}

/// One kind of violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How many times it happened.
    pub count: usize,
    /// What it is, as in "311 acknowledged orders missing from the log".
    pub what: String,
    /// A few instances.
    pub examples: Vec<String>,
}

/// Every violation found, plus figures about the history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The violations; empty when the history is clean.
    pub findings: Vec<Finding>,
    /// Figures for context (operations, acknowledgements, log length).
    pub figures: String,
}

impl Report {
    /// Whether nothing was found.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }

    /// The finding whose description contains `what`, if any.
    pub fn finding(&self, what: &str) -> Option<&Finding> {
        self.findings.iter().find(|f| f.what.contains(what))
    }

    fn add(&mut self, count: usize, what: impl Into<String>, examples: Vec<String>) {
        if count > 0 {
            self.findings.push(Finding {
                count,
                what: what.into(),
                examples: examples.into_iter().take(EXAMPLES).collect(),
            });
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_clean() {
            return write!(f, "history clean ({})", self.figures);
        }
        writeln!(
            f,
            "{} kinds of violation ({}):",
            self.findings.len(),
            self.figures
        )?;
        for finding in &self.findings {
            writeln!(f, "  - {} {}", finding.count, finding.what)?;
            for example in &finding.examples {
                writeln!(f, "      e.g. {example}")?;
            }
        }
        Ok(())
    }
}

fn describe(operation: &Operation) -> String {
    format!(
        "op {} ({}) {} -> {:?}",
        operation.id,
        operation.key.as_deref().unwrap_or("no key"),
        operation.trade,
        operation.outcome
    )
}

/// The idempotency key of `request_id` among `keys`: the id itself or a suffix of it after
/// a `-` (the front end may prefix keys).
fn key_of<'a>(request_id: &str, keys: &HashMap<&'a str, usize>) -> Option<(&'a str, usize)> {
    let candidates = std::iter::once(0).chain(
        request_id
            .char_indices()
            .filter(|&(_, c)| c == '-')
            .map(|(i, _)| i + 1),
    );
    for start in candidates.take(64) {
        if let Some((&key, &index)) = request_id
            .get(start..)
            .and_then(|suffix| keys.get_key_value(suffix))
        {
            return Some((key, index));
        }
    }
    None
}

/// The log most replicas hold (the longest among equals): what the content checks use.
fn reference(logs: &[(String, Result<Vec<LogEntry>, String>)]) -> Option<(&str, &[LogEntry])> {
    let readable: Vec<(&str, &[LogEntry])> = logs
        .iter()
        .filter_map(|(name, log)| log.as_ref().ok().map(|l| (name.as_str(), l.as_slice())))
        .collect();
    readable
        .iter()
        .max_by_key(|(_, log)| {
            let agreeing = readable.iter().filter(|(_, other)| other == log).count();
            (agreeing, log.len())
        })
        .copied()
}

/// Compares what the clients were told with what the system holds.
pub fn analyze(observed: &Observed) -> Report {
    let mut report = Report::default();
    let acknowledged: Vec<(&Operation, u64)> = observed
        .operations
        .iter()
        .filter_map(|o| o.outcome.number().map(|n| (o, n)))
        .collect();

    if let Err(reason) = &observed.quiet {
        report.add(
            1,
            format!("system not quiet before the checks: {reason}"),
            vec![],
        );
    }

    // 3. The logs: readable, numbered without gaps, identical.
    for (name, log) in &observed.logs {
        match log {
            Err(e) => report.add(
                1,
                format!("replica log unreadable: {name}"),
                vec![e.clone()],
            ),
            Ok(entries) => {
                let out_of_place: Vec<String> = entries
                    .iter()
                    .enumerate()
                    .filter(|(i, e)| e.number != *i as u64)
                    .map(|(i, e)| format!("{name}: line {i} holds #{}", e.number))
                    .collect();
                report.add(
                    out_of_place.len(),
                    format!("log entries out of sequence (gap or repeat) in {name}"),
                    out_of_place,
                );
            }
        }
    }
    let reference = reference(&observed.logs);
    let empty: &[LogEntry] = &[];
    let (reference_name, log) = reference.unwrap_or(("no readable log", empty));
    let mut differing = Vec::new();
    for (name, other) in &observed.logs {
        let Ok(other) = other else { continue };
        if other.as_slice() == log {
            continue;
        }
        let first = other
            .iter()
            .zip(log)
            .position(|(a, b)| a != b)
            .unwrap_or(other.len().min(log.len()));
        let differ =
            other.iter().zip(log).filter(|(a, b)| a != b).count() + other.len().abs_diff(log.len());
        differing.push(format!(
            "{name} ({} orders) vs {reference_name} ({} orders): {differ} positions differ, \
             the first at #{first}",
            other.len(),
            log.len()
        ));
    }
    report.add(
        differing.len(),
        "replica logs differing from the others",
        differing,
    );

    // 2. One trade per acknowledged number.
    let mut by_number: BTreeMap<u64, Vec<&Operation>> = BTreeMap::new();
    for &(operation, number) in &acknowledged {
        by_number.entry(number).or_default().push(operation);
    }
    let twice: Vec<String> = by_number
        .iter()
        .filter(|(_, ops)| ops.len() > 1)
        .map(|(number, ops)| {
            let ops: Vec<String> = ops.iter().map(|o| describe(o)).collect();
            format!("#{number}: {}", ops.join("; "))
        })
        .collect();
    report.add(
        twice.len(),
        "numbers acknowledged to two or more trades",
        twice,
    );

    // 4. Every acknowledged order in the log at its number, with its content.
    let mut missing = Vec::new();
    let mut replaced = Vec::new();
    for &(operation, number) in &acknowledged {
        match usize::try_from(number).ok().and_then(|n| log.get(n)) {
            None => missing.push(format!(
                "{}; the log has {} orders",
                describe(operation),
                log.len()
            )),
            Some(entry) => {
                let other_request = operation
                    .key
                    .as_deref()
                    .is_some_and(|key| !entry.request_id.ends_with(key));
                if entry.trade != operation.trade || other_request {
                    replaced.push(format!(
                        "{}; the log has {} (request {}) there",
                        describe(operation),
                        entry.trade,
                        entry.request_id
                    ));
                }
            }
        }
    }
    report.add(
        missing.len(),
        "acknowledged orders missing from the log (beyond its end)",
        missing,
    );
    report.add(
        replaced.len(),
        "acknowledged orders whose number holds another order in the log",
        replaced,
    );

    // 4. Request ids, and so idempotency keys, at most once; refused keyed orders nowhere.
    let mut ids: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for entry in log {
        ids.entry(entry.request_id.as_str())
            .or_default()
            .push(entry.number);
    }
    let repeated: Vec<String> = ids
        .iter()
        .filter(|(_, numbers)| numbers.len() > 1)
        .map(|(id, numbers)| format!("request {id} at {numbers:?}"))
        .collect();
    report.add(
        repeated.len(),
        "request ids recorded more than once in the log (traded twice)",
        repeated,
    );
    let keys: HashMap<&str, usize> = observed
        .operations
        .iter()
        .enumerate()
        .filter_map(|(i, o)| o.key.as_deref().map(|k| (k, i)))
        .collect();
    let mut recorded: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for entry in log {
        if let Some((_, index)) = key_of(&entry.request_id, &keys) {
            recorded.entry(index).or_default().push(entry.number);
        }
    }
    let mut keyed_twice = Vec::new();
    let mut refused_but_recorded = Vec::new();
    for (&index, numbers) in &recorded {
        let operation = &observed.operations[index];
        if numbers.len() > 1 {
            keyed_twice.push(format!("{} at {numbers:?}", describe(operation)));
        }
        if matches!(operation.outcome, Outcome::Refused { status, .. } if (400..500).contains(&status))
        {
            refused_but_recorded.push(format!("{} recorded at {numbers:?}", describe(operation)));
        }
    }
    report.add(
        keyed_twice.len(),
        "idempotency keys recorded more than once in the log",
        keyed_twice,
    );
    report.add(
        refused_but_recorded.len(),
        "keyed orders answered 4xx but recorded in the log",
        refused_but_recorded,
    );

    // 1. Every acknowledged order reads back with its content.
    let mut unreadable = Vec::new();
    let mut not_found = Vec::new();
    let mut other_content = Vec::new();
    for &(operation, number) in &acknowledged {
        match observed.reads.get(&number) {
            None => {}
            Some(Read::Found(trade)) if *trade == operation.trade => {}
            Some(Read::Found(trade)) => other_content.push(format!(
                "{}; GET /orders/{number} says {trade}",
                describe(operation)
            )),
            Some(Read::NotFound) => not_found.push(describe(operation)),
            Some(Read::Failed(e)) => unreadable.push(format!("{}: {e}", describe(operation))),
        }
    }
    report.add(
        not_found.len(),
        "acknowledged orders answered 404 by GET /orders/<n>",
        not_found,
    );
    report.add(
        other_content.len(),
        "acknowledged orders read back with another order's content",
        other_content,
    );
    report.add(
        unreadable.len(),
        "acknowledged orders GET /orders/<n> could not read",
        unreadable,
    );

    // 5. Conservation over the log.
    let mut expected: BTreeMap<&str, (i128, i128)> = observed
        .initial
        .iter()
        .map(|(name, &q)| (name.as_str(), (i128::from(q), 0)))
        .collect();
    let mut unknown = Vec::new();
    for entry in log {
        match expected.get_mut(entry.trade.name.as_str()) {
            Some((quantity, volume)) => {
                let shares = i128::from(entry.trade.quantity);
                match entry.trade.side {
                    Side::Buy => *quantity -= shares,
                    Side::Sell => *quantity += shares,
                }
                *volume += shares;
            }
            None => unknown.push(format!("#{}: {}", entry.number, entry.trade)),
        }
    }
    report.add(
        unknown.len(),
        "log entries for stocks not in the catalog",
        unknown,
    );
    let mut off = Vec::new();
    let mut shares_off: i128 = 0;
    let mut unread = Vec::new();
    for (name, &(quantity, volume)) in &expected {
        match observed.catalog.get(*name) {
            Some(Ok(stock)) => {
                let dq = i128::from(stock.quantity) - quantity;
                let dv = i128::from(stock.volume) - volume;
                if dq != 0 || dv != 0 {
                    shares_off += dq.abs().max(dv.abs());
                    off.push(format!(
                        "{name}: catalog quantity {} volume {}, the log says {quantity} and \
                         {volume} (quantity {dq:+}, volume {dv:+})",
                        stock.quantity, stock.volume
                    ));
                }
            }
            Some(Err(e)) => unread.push(format!("{name}: {e}")),
            None => {}
        }
    }
    report.add(
        off.len(),
        format!(
            "stocks whose catalog quantity or volume is not initial - buys + sells over the \
             log (conservation; {shares_off} shares in all)"
        ),
        off,
    );
    report.add(
        unread.len(),
        "stocks the catalog did not answer for",
        unread,
    );

    // 6. The audit command.
    match &observed.audit {
        Some(Ok(audit)) if !audit.clean => {
            // Its verdicts come last.
            let lines: Vec<&str> = audit
                .output
                .lines()
                .filter(|l| !l.trim().is_empty())
                .collect();
            let last = lines[lines.len().saturating_sub(EXAMPLES)..]
                .iter()
                .map(|l| (*l).to_owned())
                .collect();
            report.add(1, "order audit exited non-zero", last);
        }
        Some(Err(e)) => report.add(1, "order audit could not run", vec![e.clone()]),
        _ => {}
    }

    let unknown_outcome = observed
        .operations
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::NoAnswer { .. }))
        .count();
    report.figures = format!(
        "{} operations, {} acknowledged, {} without an answer; logs of {} orders",
        observed.operations.len(),
        acknowledged.len(),
        unknown_outcome,
        log.len()
    );
    report
}

/// Reads replica `id`'s `orders.log`.
fn read_log(cluster: &Cluster, id: u32) -> Result<Vec<LogEntry>, String> {
    let path = order::log::log_file(&cluster.order_dir(id));
    let (entries, _) = order::log::read_entries(&path).map_err(|e| e.to_string())?;
    entries
        .into_iter()
        .map(|e| {
            Ok(LogEntry {
                number: e.number,
                trade: Trade {
                    name: e.name.to_string(),
                    side: e.kind.to_string().parse()?,
                    quantity: e.quantity,
                },
                request_id: e.request_id.to_string(),
                epoch: e.epoch,
            })
        })
        .collect()
}

fn read_logs(cluster: &Cluster) -> Vec<(String, Result<Vec<LogEntry>, String>)> {
    REPLICAS
        .iter()
        .map(|&id| (crate::cluster::order_name(id), read_log(cluster, id)))
        .collect()
}

/// Waits until the replicas' logs are identical and every running front end is healthy.
async fn wait_quiet(cluster: &mut Cluster, limit: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut why = String::from("not checked");
    for _ in 0..(limit.as_millis() / 100 + 1) {
        let logs = read_logs(cluster);
        let lengths: Vec<String> = logs
            .iter()
            .map(|(name, log)| match log {
                Ok(entries) => format!("{name}: {}", entries.len()),
                Err(e) => format!("{name}: {e}"),
            })
            .collect();
        let identical = logs.iter().all(|(_, log)| log.is_ok())
            && logs.windows(2).all(|pair| pair[0].1 == pair[1].1);
        let mut sick = Vec::new();
        for index in cluster.running_frontends() {
            if cluster.health(index).await.is_none() {
                sick.push(frontend_name(index));
            }
        }
        if identical && sick.is_empty() {
            return Ok(());
        }
        why = format!(
            "after {limit:?}: replica logs {} ({}); unhealthy front ends: {:?}",
            if identical { "identical" } else { "differ" },
            lengths.join(", "),
            sick
        );
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(why)
}

fn parse_order(body: &serde_json::Value) -> Option<Trade> {
    let data = &body["data"];
    Some(Trade {
        name: data["name"].as_str()?.to_owned(),
        side: data["type"].as_str()?.parse().ok()?,
        quantity: data["quantity"].as_u64()?,
    })
}

async fn read_orders(addr: String, numbers: Vec<u64>) -> Vec<(u64, Read)> {
    let mut client = HttpClient::new(addr);
    let mut reads = Vec::with_capacity(numbers.len());
    for number in numbers {
        let mut read = Read::Failed("not tried".into());
        for attempt in 0..READ_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            read = match client
                .get(&format!("/orders/{number}"), Duration::from_secs(10))
                .await
            {
                Ok(answer) if answer.status == 200 => {
                    match answer.json().as_ref().and_then(parse_order) {
                        Some(trade) => Read::Found(trade),
                        None => Read::Failed(format!("unreadable body {}", answer.body)),
                    }
                }
                Ok(answer) if answer.status == 404 => Read::NotFound,
                Ok(answer) => Read::Failed(format!("{}: {}", answer.status, answer.message())),
                Err(e) => Read::Failed(e.to_string()),
            };
            if !matches!(read, Read::Failed(_)) {
                break;
            }
        }
        reads.push((number, read));
    }
    reads
}

async fn read_catalog(
    addr: String,
    token: String,
    names: Vec<String>,
) -> BTreeMap<String, Result<Stock, String>> {
    let config = ClientConfig {
        cluster_token: Some(token),
        ..ClientConfig::new("chaos-check")
    };
    let catalog = clients::CatalogClient::new(addr, config);
    let mut stocks = BTreeMap::new();
    for name in names {
        let stock = match StockName::new(name.clone()) {
            Ok(stock_name) => match catalog.lookup(&stock_name).await {
                Ok(Some(quote)) => Ok(Stock {
                    quantity: quote.quantity,
                    volume: quote.volume,
                }),
                Ok(None) => Err("not found".to_owned()),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        stocks.insert(name, stock);
    }
    stocks
}

/// Waits (up to `quiet_limit`) until the system is quiet, gathers what it holds and checks
/// `history` against it.
pub async fn check_within(
    cluster: &mut Cluster,
    history: &History,
    quiet_limit: Duration,
) -> Report {
    let quiet = wait_quiet(cluster, quiet_limit).await;
    let operations = history.operations();
    let logs = read_logs(cluster);

    let mut reads = BTreeMap::new();
    let mut reader = None;
    for index in cluster.running_frontends() {
        if cluster.health(index).await.is_some() {
            reader = Some(index);
            break;
        }
    }
    let mut numbers: Vec<u64> = operations
        .iter()
        .filter_map(|o| o.outcome.number())
        .collect();
    numbers.sort_unstable();
    numbers.dedup();
    match reader.map(|i| cluster.frontend_addr(i)) {
        Some(Ok(addr)) => {
            let tasks: Vec<_> = (0..READERS)
                .map(|r| {
                    let share: Vec<u64> =
                        numbers.iter().copied().skip(r).step_by(READERS).collect();
                    cluster.net().spawn(read_orders(addr.clone(), share))
                })
                .collect();
            for task in tasks {
                match task.await {
                    Ok(part) => reads.extend(part),
                    Err(e) => {
                        reads.insert(u64::MAX, Read::Failed(format!("reader task: {e}")));
                    }
                }
            }
        }
        _ => {
            for &number in &numbers {
                reads.insert(
                    number,
                    Read::Failed("no healthy front end to read through".into()),
                );
            }
        }
    }

    let initial = read_seed(&crate::bins::seed_file()).unwrap_or_default();
    let catalog = match cluster.addr(CATALOG) {
        Ok(addr) => cluster
            .on_net(read_catalog(
                addr.to_owned(),
                cluster.token().to_owned(),
                initial.keys().cloned().collect(),
            ))
            .await
            .unwrap_or_default(),
        Err(_) => BTreeMap::new(),
    };
    let audit = Some(cluster.audit().await.map_err(|e| e.to_string()));
    let report = analyze(&Observed {
        operations,
        logs,
        reads,
        initial,
        catalog,
        audit,
        quiet,
    });
    if !report.is_clean() {
        cluster.keep_state();
    }
    report
}

/// [`check_within`] with 20 s for the system to become quiet.
pub async fn check(cluster: &mut Cluster, history: &History) -> Report {
    check_within(cluster, history, Duration::from_secs(20)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trade(name: &str, side: Side, quantity: u64) -> Trade {
        Trade {
            name: name.into(),
            side,
            quantity,
        }
    }

    fn op(id: u64, key: Option<&str>, trade: Trade, outcome: Outcome) -> Operation {
        Operation {
            id,
            worker: 0,
            key: key.map(str::to_owned),
            trade,
            outcome,
            attempts: 1,
            failed_attempts: Vec::new(),
            frontend: 0,
            start: Duration::ZERO,
            end: Duration::ZERO,
        }
    }

    fn entry(number: u64, trade: Trade, request_id: &str) -> LogEntry {
        LogEntry {
            number,
            trade,
            request_id: request_id.into(),
            epoch: 1,
        }
    }

    /// A consistent world: three trades acknowledged, logged on every replica, readable,
    /// and the catalog agrees.
    fn clean() -> Observed {
        let trades = [
            trade("GameStart", Side::Buy, 3),
            trade("FishCo", Side::Sell, 2),
            trade("GameStart", Side::Buy, 1),
        ];
        let operations: Vec<Operation> = trades
            .iter()
            .enumerate()
            .map(|(i, t)| {
                op(
                    i as u64,
                    Some(&format!("k-{i}")),
                    t.clone(),
                    Outcome::Traded { number: i as u64 },
                )
            })
            .collect();
        let log: Vec<LogEntry> = trades
            .iter()
            .enumerate()
            .map(|(i, t)| entry(i as u64, t.clone(), &format!("key-k-{i}")))
            .collect();
        Observed {
            operations,
            logs: (1..=3)
                .map(|i| (format!("order-{i}"), Ok(log.clone())))
                .collect(),
            reads: trades
                .iter()
                .enumerate()
                .map(|(i, t)| (i as u64, Read::Found(t.clone())))
                .collect(),
            initial: [("GameStart".to_owned(), 100), ("FishCo".to_owned(), 50)].into(),
            catalog: [
                (
                    "GameStart".to_owned(),
                    Ok(Stock {
                        quantity: 96,
                        volume: 4,
                    }),
                ),
                (
                    "FishCo".to_owned(),
                    Ok(Stock {
                        quantity: 52,
                        volume: 2,
                    }),
                ),
            ]
            .into(),
            audit: Some(Ok(AuditOutcome {
                clean: true,
                output: "audit: clean".into(),
            })),
            quiet: Ok(()),
        }
    }

    #[test]
    fn a_consistent_history_is_clean() {
        let report = analyze(&clean());
        assert!(report.is_clean(), "{report}");
        assert!(report.figures.contains("3 acknowledged"), "{report}");
    }

    #[test]
    fn a_lost_order_is_reported() {
        let mut observed = clean();
        for (_, log) in &mut observed.logs {
            if let Ok(log) = log {
                log.pop();
            }
        }
        observed.reads.insert(2, Read::NotFound);
        let report = analyze(&observed);
        let missing = report.finding("missing from the log").expect("missing");
        assert_eq!(missing.count, 1, "{report}");
        assert_eq!(report.finding("404").map(|f| f.count), Some(1), "{report}");
        // The catalog traded it, the log does not have it.
        let conservation = report.finding("conservation").expect("conservation");
        assert_eq!(conservation.count, 1, "{report}");
        assert!(conservation.what.contains("1 shares"), "{report}");
    }

    #[test]
    fn a_number_acknowledged_twice_is_reported() {
        let mut observed = clean();
        observed.operations.push(op(
            3,
            Some("k-3"),
            trade("FishCo", Side::Buy, 5),
            Outcome::Traded { number: 1 },
        ));
        let report = analyze(&observed);
        assert_eq!(
            report.finding("two or more trades").map(|f| f.count),
            Some(1),
            "{report}"
        );
        assert_eq!(
            report.finding("holds another order").map(|f| f.count),
            Some(1),
            "{report}"
        );
        assert_eq!(
            report.finding("another order's content").map(|f| f.count),
            Some(1),
            "{report}"
        );
    }

    #[test]
    fn a_gap_and_differing_replicas_are_reported() {
        let mut observed = clean();
        if let Ok(log) = &mut observed.logs[0].1 {
            log.remove(1);
        }
        let report = analyze(&observed);
        assert_eq!(
            report
                .finding("out of sequence (gap or repeat) in order-1")
                .map(|f| f.count),
            Some(1),
            "{report}"
        );
        assert_eq!(
            report.finding("replica logs differing").map(|f| f.count),
            Some(1),
            "{report}"
        );
        // The two agreeing replicas are the reference: nothing acknowledged is lost there.
        assert!(report.finding("missing").is_none(), "{report}");
    }

    #[test]
    fn a_key_recorded_twice_and_a_traded_refusal_are_reported() {
        let mut observed = clean();
        let again = entry(3, trade("GameStart", Side::Buy, 1), "key-k-2");
        let refused = entry(4, trade("FishCo", Side::Buy, 9), "key-k-9");
        observed.operations.push(op(
            3,
            Some("k-9"),
            trade("FishCo", Side::Buy, 9),
            Outcome::Refused {
                status: 409,
                message: "not enough stock".into(),
            },
        ));
        for (_, log) in &mut observed.logs {
            if let Ok(log) = log {
                log.push(again.clone());
                log.push(refused.clone());
            }
        }
        let report = analyze(&observed);
        assert_eq!(
            report
                .finding("keys recorded more than once")
                .map(|f| f.count),
            Some(1),
            "{report}"
        );
        assert_eq!(
            report
                .finding("request ids recorded more than once")
                .map(|f| f.count),
            Some(1),
            "{report}"
        );
        assert_eq!(
            report.finding("answered 4xx").map(|f| f.count),
            Some(1),
            "{report}"
        );
    }

    #[test]
    fn an_unquiet_system_and_a_failed_audit_are_reported() {
        let mut observed = clean();
        observed.quiet = Err("replica logs differ".into());
        observed.audit = Some(Ok(AuditOutcome {
            clean: false,
            output: "order-1 differs from order-2 at order #7\n".into(),
        }));
        let report = analyze(&observed);
        assert!(report.finding("not quiet").is_some(), "{report}");
        let audit = report.finding("audit").expect("audit");
        assert_eq!(audit.examples.len(), 1, "{report}");
    }
}
