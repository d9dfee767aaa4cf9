//! The load: sessions in parallel, each one persistent connection that looks up random stocks
//! and, with probability p when the stock has shares left, trades a random quantity; at the
//! end every order a session placed is fetched back and checked.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::http::{Answer, Session};
use crate::timeline::{Clock, RequestRecord, MAX_REQUESTS};

/// The shipped catalog (`data/catalog.csv`), whose stocks the sessions look up and trade.
const CATALOG: &str = include_str!("../../data/catalog.csv");

/// The stocks of the shipped catalog, looked up and traded at random: the first field of
/// every line of `data/catalog.csv` after its header.
pub fn stocks() -> &'static [&'static str] {
    static STOCKS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    STOCKS.get_or_init(|| {
        CATALOG
            .lines()
            .skip(1)
            .filter_map(|line| line.split(',').next())
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .collect()
    })
}

/// How many unexpected answers are kept verbatim for the report.
const KEPT_PROBLEMS: usize = 20;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// `host:port` of the front end.
    pub addr: String,
    /// Sessions in parallel.
    pub sessions: u32,
    /// Iterations per session.
    pub requests: u32,
    /// Probability of a trade after a lookup that shows shares left.
    pub p: f64,
    /// Seed of the random choices (each session derives its own).
    pub seed: u64,
    /// Largest quantity traded at once.
    pub max_quantity: u32,
    /// How long a request is retried after connection errors before it counts as failed.
    pub retry_for: Duration,
    /// When set, every request is kept on a timeline (at most [`MAX_REQUESTS`] a run),
    /// timed by this clock.
    pub timeline: Option<Clock>,
}

/// The request types measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `GET /stocks/<name>`
    Lookup,
    /// `POST /orders`
    Trade,
    /// `GET /orders/<number>` at the end
    Verify,
}

impl Kind {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Lookup => "lookup",
            Kind::Trade => "trade",
            Kind::Verify => "verify",
        }
    }
}

/// Everything measured, merged over sessions.
pub struct Outcome {
    /// Latency in microseconds per request type.
    pub latency: BTreeMap<Kind, Histogram<u64>>,
    /// Answers per request type and status.
    pub statuses: BTreeMap<(Kind, u16), u64>,
    /// Answers that should not have happened (and requests that got none).
    pub unexpected: u64,
    /// The first few of them, described.
    pub problems: Vec<String>,
    /// Orders placed and fetched back.
    pub verified: u64,
    /// Orders whose fetched record differed from what was placed.
    pub mismatches: u64,
    /// Connection errors that were retried.
    pub reconnects: u64,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// Every request, when a timeline was asked for (in no particular order).
    pub requests: Vec<RequestRecord>,
    /// Requests left off the timeline because it was full.
    pub requests_dropped: u64,
}

impl Outcome {
    fn empty() -> anyhow::Result<Self> {
        let mut latency = BTreeMap::new();
        for kind in [Kind::Lookup, Kind::Trade, Kind::Verify] {
            latency.insert(kind, Histogram::new_with_bounds(1, 3_600_000_000, 3)?);
        }
        Ok(Outcome {
            latency,
            statuses: BTreeMap::new(),
            unexpected: 0,
            problems: Vec::new(),
            verified: 0,
            mismatches: 0,
            reconnects: 0,
            elapsed: Duration::ZERO,
            requests: Vec::new(),
            requests_dropped: 0,
        })
    }

    fn merge(&mut self, other: Outcome) -> anyhow::Result<()> {
        for (kind, histogram) in other.latency {
            if let Some(ours) = self.latency.get_mut(&kind) {
                ours.add(histogram)?;
            }
        }
        for (key, count) in other.statuses {
            *self.statuses.entry(key).or_default() += count;
        }
        self.unexpected += other.unexpected;
        self.verified += other.verified;
        self.mismatches += other.mismatches;
        self.reconnects += other.reconnects;
        let room = MAX_REQUESTS.saturating_sub(self.requests.len());
        self.requests_dropped +=
            other.requests_dropped + other.requests.len().saturating_sub(room) as u64;
        self.requests.extend(other.requests.into_iter().take(room));
        for problem in other.problems {
            if self.problems.len() < KEPT_PROBLEMS {
                self.problems.push(problem);
            }
        }
        Ok(())
    }

    fn problem(&mut self, text: String) {
        self.unexpected += 1;
        if self.problems.len() < KEPT_PROBLEMS {
            self.problems.push(text);
        }
    }

    /// True when nothing unexpected happened and every order checked out.
    pub fn clean(&self) -> bool {
        self.unexpected == 0 && self.mismatches == 0
    }
}

/// One order this session placed.
struct Placed {
    number: u64,
    name: &'static str,
    kind: &'static str,
    quantity: u32,
}

struct Worker<'a> {
    config: &'a LoadConfig,
    session: Session,
    outcome: Outcome,
}

impl Worker<'_> {
    /// Puts a request on the timeline, if one is kept and it has room (each session gets an
    /// equal share of [`MAX_REQUESTS`]).
    fn keep(&mut self, started: Instant, kind: Kind, status: u16, micros: u64) {
        let Some(clock) = self.config.timeline else {
            return;
        };
        let share = MAX_REQUESTS / self.config.sessions.max(1) as usize;
        if self.outcome.requests.len() >= share {
            self.outcome.requests_dropped += 1;
            return;
        }
        self.outcome.requests.push(RequestRecord {
            unix_ms: clock.unix_ms(started),
            p: self.config.p,
            kind,
            status,
            latency_ms: micros as f64 / 1000.0,
        });
    }

    /// Sends a request, retrying connection errors (the idempotency key makes a repeated
    /// trade safe) until `retry_for` passes; records the latency the user saw.
    async fn request(
        &mut self,
        kind: Kind,
        method: &str,
        path: &str,
        body: Option<&str>,
        key: Option<&str>,
    ) -> Option<Answer> {
        let started = Instant::now();
        let deadline = started + self.config.retry_for;
        loop {
            match self.session.send(method, path, body, key).await {
                Ok(answer) => {
                    let micros = started.elapsed().as_micros().max(1) as u64;
                    self.keep(started, kind, answer.status, micros);
                    if let Some(histogram) = self.outcome.latency.get_mut(&kind) {
                        let _ = histogram.record(micros);
                    }
                    *self
                        .outcome
                        .statuses
                        .entry((kind, answer.status))
                        .or_default() += 1;
                    return Some(answer);
                }
                Err(e) if Instant::now() < deadline => {
                    self.outcome.reconnects += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    let micros = started.elapsed().as_micros() as u64;
                    self.keep(started, kind, 0, micros);
                    self.outcome
                        .problem(format!("{method} {path}: no answer: {e:#}"));
                    return None;
                }
            }
        }
    }
}

async fn run_session(
    config: &LoadConfig,
    index: u32,
    progress: ProgressBar,
) -> anyhow::Result<Outcome> {
    let mut rng = StdRng::seed_from_u64(config.seed ^ (u64::from(index) << 32 | 0x5eed));
    let mut worker = Worker {
        config,
        session: Session::new(config.addr.clone()),
        outcome: Outcome::empty()?,
    };
    let mut placed = Vec::new();
    for i in 0..config.requests {
        progress.inc(1);
        let stocks = stocks();
        let name = stocks[rng.gen_range(0..stocks.len())];
        let path = format!("/stocks/{name}");
        let Some(answer) = worker.request(Kind::Lookup, "GET", &path, None, None).await else {
            continue;
        };
        if answer.status != 200 {
            worker
                .outcome
                .problem(format!("GET {path}: {} {}", answer.status, answer.body));
            continue;
        }
        let left = answer.json()?["data"]["quantity"].as_u64().unwrap_or(0);
        if left == 0 || !rng.gen_bool(config.p) {
            continue;
        }
        let quantity = rng.gen_range(1..=config.max_quantity);
        let kind = if rng.gen_bool(0.5) { "buy" } else { "sell" };
        let body = format!(r#"{{"name":"{name}","quantity":{quantity},"type":"{kind}"}}"#);
        let key = format!("client-{}-{index}-{i}", config.seed);
        let Some(answer) = worker
            .request(Kind::Trade, "POST", "/orders", Some(&body), Some(&key))
            .await
        else {
            continue;
        };
        match answer.status {
            200 => {
                let number = answer.json()?["data"]["transaction_number"]
                    .as_u64()
                    .ok_or_else(|| anyhow::anyhow!("no transaction number in {}", answer.body))?;
                placed.push(Placed {
                    number,
                    name,
                    kind,
                    quantity,
                });
            }
            // Legitimate refusals: the stock ran out between lookup and trade.
            409 => {}
            _ => worker.outcome.problem(format!(
                "POST /orders {body}: {} {}",
                answer.status, answer.body
            )),
        }
    }
    for order in &placed {
        let path = format!("/orders/{}", order.number);
        let Some(answer) = worker.request(Kind::Verify, "GET", &path, None, None).await else {
            continue;
        };
        worker.outcome.verified += 1;
        let data = answer.json().ok().map(|v| v["data"].clone());
        let matches = answer.status == 200
            && data.as_ref().is_some_and(|d| {
                d["number"] == order.number
                    && d["name"] == order.name
                    && d["type"] == order.kind
                    && d["quantity"] == order.quantity
            });
        if !matches {
            worker.outcome.mismatches += 1;
            worker.outcome.problem(format!(
                "order {} placed as {} {} {} but read back as {} {}",
                order.number, order.kind, order.quantity, order.name, answer.status, answer.body
            ));
        }
    }
    Ok(worker.outcome)
}

/// Runs the load and merges what every session measured.
pub async fn run(config: &LoadConfig, progress: ProgressBar) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let sessions: Vec<_> = (0..config.sessions)
        .map(|index| {
            let (config, progress) = (config.clone(), progress.clone());
            tokio::spawn(async move { run_session(&config, index, progress).await })
        })
        .collect();
    let mut outcome = Outcome::empty()?;
    for session in sessions {
        outcome.merge(session.await??)?;
    }
    progress.finish_and_clear();
    outcome.elapsed = started.elapsed();
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_stocks_are_the_shipped_catalog() {
        let stocks = super::stocks();
        assert!(stocks.len() >= 10, "{stocks:?}");
        assert_eq!(stocks[0], "GameStart");
        assert!(stocks.iter().all(|s| !s.contains(',') && *s != "name"));
    }
}
