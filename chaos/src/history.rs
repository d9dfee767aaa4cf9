//! The client side of a chaos test: workers that place random trades through the front ends
//! and a [`History`] of every operation with its final outcome and its start and end time.
//!
//! A keyed operation carries an `Idempotency-Key` and is retried with the same key (on the
//! next front end of its list) after a 5xx answer or a transport error, until its deadline:
//! its outcome is known unless the deadline passed. An unkeyed operation is tried once: after
//! a transport error nobody knows whether it traded.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::http::{HttpClient, HttpError};
use crate::{poll, Error, Result};

/// Most workers one load may have.
pub const MAX_WORKERS: usize = 64;
/// Longest a load may run.
pub const MAX_DURATION: Duration = Duration::from_secs(120);
/// Pause before a keyed operation is tried again.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Buy or sell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    /// Takes shares out of the stock.
    Buy,
    /// Adds shares to it.
    Sell,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        })
    }
}

impl std::str::FromStr for Side {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "buy" => Ok(Side::Buy),
            "sell" => Ok(Side::Sell),
            other => Err(format!("not a trade type: {other:?}")),
        }
    }
}

/// What an order asks for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Trade {
    /// The stock.
    pub name: String,
    /// Buy or sell.
    pub side: Side,
    /// Shares.
    pub quantity: u64,
}

impl fmt::Display for Trade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.side, self.quantity, self.name)
    }
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 200 with this transaction number.
    Traded {
        /// `transaction_number`.
        number: u64,
    },
    /// Any other answer (409 not enough stock, 503, …).
    Refused {
        /// The HTTP status.
        status: u16,
        /// `error.message`.
        message: String,
    },
    /// No answer: whether it traded is unknown.
    NoAnswer {
        /// The last transport error.
        error: String,
    },
}

impl Outcome {
    /// The transaction number of a 200.
    pub fn number(&self) -> Option<u64> {
        match self {
            Outcome::Traded { number } => Some(*number),
            _ => None,
        }
    }

    /// Whether a keyed operation may be tried again after this.
    fn retryable(&self) -> bool {
        match self {
            Outcome::Traded { .. } => false,
            Outcome::Refused { status, .. } => *status >= 500,
            Outcome::NoAnswer { .. } => true,
        }
    }

    /// A short class for summaries: `200`, `409`, `503`, `no answer`.
    pub fn class(&self) -> String {
        match self {
            Outcome::Traded { .. } => "200".into(),
            Outcome::Refused { status, .. } => status.to_string(),
            Outcome::NoAnswer { .. } => "no answer".into(),
        }
    }
}

/// One client operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Its index in the history.
    pub id: u64,
    /// The worker that ran it.
    pub worker: usize,
    /// Its `Idempotency-Key`, if it had one.
    pub key: Option<String>,
    /// The order.
    pub trade: Trade,
    /// The final outcome.
    pub outcome: Outcome,
    /// Requests sent (1 unless keyed and retried).
    pub attempts: u32,
    /// Each attempt before the last that failed, as `front end N: what it got`: what a
    /// client that retries saw, which its user did not.
    pub failed_attempts: Vec<String>,
    /// The front end of the last attempt.
    pub frontend: usize,
    /// When it began, since the history's start.
    pub start: Duration,
    /// When its outcome was known.
    pub end: Duration,
}

/// Every operation of a test, shared by its workers.
#[derive(Debug, Clone)]
pub struct History {
    operations: Arc<Mutex<Vec<Operation>>>,
    origin: Instant,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

/// What a load does.
#[derive(Debug, Clone)]
pub struct Load {
    /// Prefix of its idempotency keys.
    pub label: String,
    /// Concurrent workers, each one operation at a time.
    pub workers: usize,
    /// New operations start only this long after the load began.
    pub duration: Duration,
    /// Most operations per worker.
    pub max_per_worker: usize,
    /// With `Idempotency-Key` (retried) or without (tried once).
    pub keyed: bool,
    /// Front ends to use, round-robin per operation (and per retry).
    pub frontends: Vec<usize>,
    /// A keyed operation is retried until this long after its first attempt.
    pub retry_for: Duration,
    /// One HTTP request's deadline.
    pub request_timeout: Duration,
    /// Pause between a worker's operations.
    pub pace: Duration,
    /// Seeds the random trades.
    pub seed: u64,
}

impl Load {
    /// Keyed trades through `frontends`: 4 workers for up to 60 s, retried for 10 s.
    pub fn keyed(label: &str, frontends: &[usize]) -> Self {
        Load {
            label: label.into(),
            workers: 4,
            duration: Duration::from_secs(60),
            max_per_worker: 100_000,
            keyed: true,
            frontends: frontends.to_vec(),
            retry_for: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            pace: Duration::ZERO,
            seed: 1,
        }
    }

    /// Unkeyed trades through `frontends`, each tried once.
    pub fn unkeyed(label: &str, frontends: &[usize]) -> Self {
        Load {
            keyed: false,
            ..Load::keyed(label, frontends)
        }
    }

    /// With `workers` workers.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Starting operations for at most `duration`.
    pub fn duration(mut self, duration: Duration) -> Self {
        self.duration = duration;
        self
    }

    /// Keyed operations retried for `retry_for`.
    pub fn retry_for(mut self, retry_for: Duration) -> Self {
        self.retry_for = retry_for;
        self
    }

    /// Each worker pauses `pace` between operations.
    pub fn pace(mut self, pace: Duration) -> Self {
        self.pace = pace;
        self
    }
}

/// A running load.
#[derive(Debug)]
pub struct LoadHandle {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// When every worker must have ended.
    deadline: Instant,
}

impl LoadHandle {
    /// No new operations from now on (those in flight finish).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Stops and waits for the workers.
    pub async fn finish(self) -> Result<()> {
        self.stop();
        self.join().await
    }

    /// Waits for the workers to end by themselves (their duration passed).
    pub async fn join(self) -> Result<()> {
        let limit = self.deadline.saturating_duration_since(Instant::now());
        for task in self.tasks {
            match tokio::time::timeout_at(self.deadline, task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Ok(Err(e)) => return Err(Error::Task(format!("load worker: {e}"))),
                Err(_) => {
                    return Err(Error::Timeout {
                        what: "the load's workers to end".into(),
                        limit,
                    })
                }
            }
        }
        Ok(())
    }
}

impl History {
    /// An empty history; its clock starts now.
    pub fn new() -> Self {
        History {
            operations: Arc::default(),
            origin: Instant::now(),
        }
    }

    /// Time since the history began.
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Operation>> {
        self.operations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends an operation (its `id` is set to its index).
    pub fn record(&self, mut operation: Operation) {
        let mut operations = self.lock();
        operation.id = operations.len() as u64;
        operations.push(operation);
    }

    /// Every operation so far.
    pub fn operations(&self) -> Vec<Operation> {
        self.lock().clone()
    }

    /// Operations answered 200 so far.
    pub fn acknowledged(&self) -> usize {
        self.lock()
            .iter()
            .filter(|o| o.outcome.number().is_some())
            .count()
    }

    /// Operations that began at or after `since` and were answered 200.
    pub fn acknowledged_since(&self, since: Duration) -> usize {
        self.lock()
            .iter()
            .filter(|o| o.start >= since && o.outcome.number().is_some())
            .count()
    }

    /// Operations (ended) for which `filter` holds.
    pub fn count(&self, filter: impl Fn(&Operation) -> bool) -> usize {
        self.lock().iter().filter(|o| filter(o)).count()
    }

    /// Operations that began at or after `since` and have ended, whatever their outcome.
    pub fn completed_since(&self, since: Duration) -> usize {
        self.lock().iter().filter(|o| o.start >= since).count()
    }

    /// Waits until `count` ended operations satisfy `filter` (`what` names them in the
    /// error), polling until `limit`.
    pub async fn wait_count(
        &self,
        what: &str,
        count: usize,
        limit: Duration,
        filter: impl Fn(&Operation) -> bool,
    ) -> Result<()> {
        poll(
            &format!("{count} {what}"),
            limit,
            Duration::from_millis(20),
            || async { (self.count(&filter) >= count).then_some(()) },
        )
        .await
    }

    /// Waits until `count` operations that began at or after `since` were answered 200.
    pub async fn wait_acknowledged(
        &self,
        since: Duration,
        count: usize,
        limit: Duration,
    ) -> Result<()> {
        self.wait_count("trades acknowledged", count, limit, |o| {
            o.start >= since && o.outcome.number().is_some()
        })
        .await
    }

    /// Waits until `count` operations that began at or after `since` have ended.
    pub async fn wait_completed(
        &self,
        since: Duration,
        count: usize,
        limit: Duration,
    ) -> Result<()> {
        self.wait_count("operations completed", count, limit, |o| o.start >= since)
            .await
    }

    /// Waits until `count` operations begun at or after `since` were acknowledged, or
    /// `enough` ended whatever their outcome (for a phase where 503 is a fine answer).
    pub async fn wait_acknowledged_or_completed(
        &self,
        since: Duration,
        count: usize,
        enough: usize,
        limit: Duration,
    ) -> Result<()> {
        poll(
            &format!("{count} trades acknowledged or {enough} answered"),
            limit,
            Duration::from_millis(20),
            || async {
                (self.acknowledged_since(since) >= count || self.completed_since(since) >= enough)
                    .then_some(())
            },
        )
        .await
    }

    /// The longest stretch within `from..to` in which no operation got its 200.
    pub fn longest_gap(&self, from: Duration, to: Duration) -> Duration {
        let mut ends: Vec<Duration> = self
            .lock()
            .iter()
            .filter(|o| o.outcome.number().is_some() && o.end > from && o.end < to)
            .map(|o| o.end)
            .collect();
        ends.sort();
        let mut longest = Duration::ZERO;
        let mut previous = from;
        for end in ends.into_iter().chain(std::iter::once(to)) {
            longest = longest.max(end.saturating_sub(previous));
            previous = end;
        }
        longest
    }

    /// Counts of outcomes, keyed and unkeyed apart.
    pub fn summary(&self) -> Summary {
        let mut summary = Summary::default();
        for operation in self.lock().iter() {
            let kind = if operation.key.is_some() {
                "keyed"
            } else {
                "unkeyed"
            };
            *summary
                .counts
                .entry((kind, operation.outcome.class()))
                .or_default() += 1;
        }
        summary
    }

    /// Starts `load`'s workers against `cluster`'s front ends; the trades are random over
    /// the stocks in the shipped catalog.
    pub fn start(&self, cluster: &Cluster, load: Load) -> Result<LoadHandle> {
        if load.workers == 0 || load.workers > MAX_WORKERS {
            return Err(Error::Invalid(format!(
                "a load has 1 to {MAX_WORKERS} workers, not {}",
                load.workers
            )));
        }
        if load.frontends.is_empty() {
            return Err(Error::Invalid("a load needs a front end".into()));
        }
        let stocks: Vec<String> = read_seed(&crate::bins::seed_file())?.into_keys().collect();
        let addrs = load
            .frontends
            .iter()
            .map(|&i| Ok((i, cluster.frontend_addr(i)?)))
            .collect::<Result<BTreeMap<usize, String>>>()?;
        let duration = load.duration.min(MAX_DURATION);
        let nonce: u32 = rand::thread_rng().gen();
        let context = Arc::new(Worker {
            history: self.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            stocks,
            addrs,
            ends: Instant::now() + duration,
            prefix: format!("{}-{nonce:08x}", load.label),
            load,
        });
        let deadline = context.ends
            + if context.load.keyed {
                context.load.retry_for + context.load.request_timeout
            } else {
                context.load.request_timeout
            }
            + Duration::from_secs(5);
        let tasks = (0..context.load.workers)
            .map(|worker| cluster.net().spawn(context.clone().run(worker)))
            .collect();
        Ok(LoadHandle {
            stop: context.stop.clone(),
            tasks,
            deadline,
        })
    }
}

/// Outcome counts of a history.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// By (`keyed`/`unkeyed`, outcome class).
    pub counts: BTreeMap<(&'static str, String), usize>,
}

impl Summary {
    /// Operations of that kind (`keyed`/`unkeyed`) whose outcome class is not in `allowed`.
    pub fn other_than(&self, kind: &str, allowed: &[&str]) -> usize {
        self.counts
            .iter()
            .filter(|((k, class), _)| *k == kind && !allowed.contains(&class.as_str()))
            .map(|(_, count)| count)
            .sum()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .counts
            .iter()
            .map(|((kind, class), count)| format!("{kind} {class}: {count}"))
            .collect();
        f.write_str(&parts.join(", "))
    }
}

/// Reads the initial catalog (`name,price,quantity` per line, a header line allowed):
/// initial quantity by name.
pub fn read_seed(path: &Path) -> Result<BTreeMap<String, u64>> {
    let text = std::fs::read_to_string(path)?;
    Ok(parse_seed(&text))
}

/// Parses a seed file's text; lines whose quantity is not a number (the header) are skipped.
pub fn parse_seed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(',');
            let name = fields.next()?.trim();
            let _price = fields.next()?;
            let quantity = fields.next()?.trim().parse().ok()?;
            Some((name.to_owned(), quantity))
        })
        .collect()
}

/// What every worker of one load shares.
struct Worker {
    history: History,
    stop: Arc<AtomicBool>,
    stocks: Vec<String>,
    addrs: BTreeMap<usize, String>,
    ends: Instant,
    prefix: String,
    load: Load,
}

impl Worker {
    async fn run(self: Arc<Self>, worker: usize) {
        let load = &self.load;
        let mut rng = StdRng::seed_from_u64(load.seed.wrapping_mul(1_000_003) + worker as u64);
        let mut clients: BTreeMap<usize, HttpClient> = self
            .addrs
            .iter()
            .map(|(&i, addr)| (i, HttpClient::new(addr.clone())))
            .collect();
        let frontends = &load.frontends;
        for i in 0..load.max_per_worker {
            if self.stop.load(Ordering::Relaxed) || Instant::now() >= self.ends {
                break;
            }
            let trade = Trade {
                name: self.stocks[rng.gen_range(0..self.stocks.len())].clone(),
                side: if rng.gen_bool(0.5) {
                    Side::Buy
                } else {
                    Side::Sell
                },
                quantity: rng.gen_range(1..=5),
            };
            let key = load.keyed.then(|| format!("{}-{worker}-{i}", self.prefix));
            let body = serde_json::json!({
                "name": trade.name,
                "quantity": trade.quantity,
                "type": trade.side.to_string(),
            })
            .to_string();
            let start = self.history.now();
            let began = Instant::now();
            let mut slot = (worker + i) % frontends.len();
            let mut attempts = 0u32;
            let mut failed_attempts = Vec::new();
            // Bounded by the retry deadline, and in count.
            let most = load.retry_for.as_millis() / RETRY_PAUSE.as_millis() + 2;
            let (outcome, frontend) = loop {
                attempts += 1;
                let frontend = frontends[slot];
                let Some(client) = clients.get_mut(&frontend) else {
                    break (
                        Outcome::NoAnswer {
                            error: format!("no address for front end {frontend}"),
                        },
                        frontend,
                    );
                };
                let headers: Vec<(&str, &str)> = key
                    .as_deref()
                    .map(|k| ("Idempotency-Key", k))
                    .into_iter()
                    .collect();
                let answer = client
                    .send(
                        "POST",
                        "/orders",
                        &headers,
                        Some(&body),
                        load.request_timeout,
                    )
                    .await;
                let outcome = classify(answer);
                let again = key.is_some()
                    && outcome.retryable()
                    && began.elapsed() < load.retry_for
                    && u128::from(attempts) < most;
                if !again {
                    break (outcome, frontend);
                }
                failed_attempts.push(format!("front end {frontend}: {outcome:?}"));
                slot = (slot + 1) % frontends.len();
                tokio::time::sleep(RETRY_PAUSE).await;
            };
            self.history.record(Operation {
                id: 0,
                worker,
                key,
                trade,
                outcome,
                attempts,
                failed_attempts,
                frontend,
                start,
                end: self.history.now(),
            });
            if !load.pace.is_zero() {
                tokio::time::sleep(load.pace).await;
            }
        }
    }
}

fn classify(answer: Result<crate::http::Answer, HttpError>) -> Outcome {
    match answer {
        Ok(answer) if answer.status == 200 => {
            match answer
                .json()
                .and_then(|v| v["data"]["transaction_number"].as_u64())
            {
                Some(number) => Outcome::Traded { number },
                None => Outcome::Refused {
                    status: 200,
                    message: format!("200 without a transaction number: {}", answer.body),
                },
            }
        }
        Ok(answer) => Outcome::Refused {
            status: answer.status,
            message: answer.message(),
        },
        Err(e) => Outcome::NoAnswer {
            error: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traded(number: u64, end_ms: u64) -> Operation {
        Operation {
            id: 0,
            worker: 0,
            key: None,
            trade: Trade {
                name: "GameStart".into(),
                side: Side::Buy,
                quantity: 1,
            },
            outcome: Outcome::Traded { number },
            attempts: 1,
            failed_attempts: Vec::new(),
            frontend: 0,
            start: Duration::from_millis(end_ms.saturating_sub(5)),
            end: Duration::from_millis(end_ms),
        }
    }

    #[test]
    fn the_longest_gap_counts_the_edges_of_the_window() {
        let history = History::new();
        for (n, end) in [(0, 1_000), (1, 1_500), (2, 4_500), (3, 5_000)] {
            history.record(traded(n, end));
        }
        let ms = Duration::from_millis;
        assert_eq!(history.longest_gap(ms(0), ms(6_000)), ms(3_000));
        assert_eq!(history.longest_gap(ms(4_600), ms(9_000)), ms(4_000));
        assert_eq!(history.longest_gap(ms(100), ms(900)), ms(800));
    }

    #[test]
    fn the_seed_file_parses_with_its_header() {
        let seed = parse_seed("name,price,quantity\nGameStart,15.99,100\nFishCo,1,7\n");
        assert_eq!(seed.len(), 2);
        assert_eq!(seed["GameStart"], 100);
        assert_eq!(seed["FishCo"], 7);
    }
}
