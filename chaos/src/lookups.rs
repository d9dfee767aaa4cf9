//! Lookups beside a trading load: workers that ask the front ends for stocks, one request at a
//! time, and keep every answer that was not a quote. A worker whose front end does not answer
//! at all (its connection broke, it is restarting) asks the next front end of its list, as a
//! client of several front ends does; a front end that answers with an error is an error the
//! client saw.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::history::read_seed;
use crate::http::HttpClient;
use crate::{Error, Result};

/// Longest lookups may run.
const MAX_DURATION: Duration = Duration::from_secs(120);
/// Most lookup workers.
const MAX_WORKERS: usize = 16;
/// One lookup's deadline, the front end's own retries included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after no front end of the list answered, before the round begins again.
const NO_ANSWER_PAUSE: Duration = Duration::from_millis(20);

/// What the lookups saw.
#[derive(Debug, Clone, Default)]
pub struct LookupReport {
    /// Lookups answered with a quote.
    pub answered: u64,
    /// Lookups that went to the next front end because theirs did not answer.
    pub moved: u64,
    /// Every answer that was not a quote, and every lookup no front end answered, as
    /// `at <time since start>: <front end>: <what>`.
    pub errors: Vec<String>,
}

/// Running lookups.
#[derive(Debug)]
pub struct Lookups {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<LookupReport>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    deadline: Instant,
}

impl Lookups {
    /// `workers` workers looking up the shipped stocks through `frontends` (each worker
    /// starting at a different one) until stopped or `duration` has passed.
    pub fn start(
        cluster: &Cluster,
        frontends: &[usize],
        workers: usize,
        duration: Duration,
    ) -> Result<Self> {
        if workers == 0 || workers > MAX_WORKERS || frontends.is_empty() {
            return Err(Error::Invalid(format!(
                "lookups need 1 to {MAX_WORKERS} workers and a front end"
            )));
        }
        let stocks: Vec<String> = read_seed(&crate::bins::seed_file())?.into_keys().collect();
        let addrs = frontends
            .iter()
            .map(|&i| Ok((i, cluster.frontend_addr(i)?)))
            .collect::<Result<BTreeMap<usize, String>>>()?;
        let duration = duration.min(MAX_DURATION);
        let began = Instant::now();
        let ends = began + duration;
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(LookupReport::default()));
        let tasks = (0..workers)
            .map(|worker| {
                let (stop, report, stocks) = (stop.clone(), report.clone(), stocks.clone());
                let mut clients: Vec<(usize, HttpClient)> = addrs
                    .iter()
                    .map(|(&i, addr)| (i, HttpClient::new(addr.clone())))
                    .collect();
                let first = worker % clients.len();
                clients.rotate_left(first);
                tokio::spawn(async move {
                    let mut n = worker;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < ends {
                        let path = format!("/stocks/{}", stocks[n % stocks.len()]);
                        n += 1;
                        let seen = ask(&mut clients, &path).await;
                        {
                            let mut report = report.lock().unwrap_or_else(PoisonError::into_inner);
                            report.moved += seen.moved;
                            match &seen.error {
                                None => report.answered += 1,
                                Some(error) => report
                                    .errors
                                    .push(format!("at {:?}: {error}", began.elapsed())),
                            }
                        }
                        if seen.no_answer {
                            tokio::time::sleep(NO_ANSWER_PAUSE).await;
                        }
                    }
                })
            })
            .collect();
        Ok(Lookups {
            stop,
            report,
            tasks,
            deadline: ends + REQUEST_TIMEOUT * (u32::try_from(addrs.len()).unwrap_or(1) + 1),
        })
    }

    /// Stops the workers, waits for them and says what they saw.
    pub async fn finish(self) -> Result<LookupReport> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            match tokio::time::timeout_at(self.deadline, task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(Error::Task(format!("lookup worker: {e}"))),
                Err(_) => {
                    return Err(Error::Timeout {
                        what: "the lookup workers to end".into(),
                        limit: self.deadline.saturating_duration_since(Instant::now()),
                    })
                }
            }
        }
        let report = self.report.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(report.clone())
    }
}

/// What one lookup met.
struct Seen {
    moved: u64,
    error: Option<String>,
    no_answer: bool,
}

/// One lookup: the front ends in turn, from the first, until one answers; the one that
/// answered comes first next time.
async fn ask(clients: &mut [(usize, HttpClient)], path: &str) -> Seen {
    let mut moved = 0;
    let mut last = String::new();
    for turn in 0..clients.len() {
        let (frontend, client) = &mut clients[0];
        match client.get(path, REQUEST_TIMEOUT).await {
            Ok(answer) if answer.status == 200 => {
                return Seen {
                    moved,
                    error: None,
                    no_answer: false,
                }
            }
            Ok(answer) => {
                return Seen {
                    moved,
                    error: Some(format!(
                        "front end {frontend}: {} {}",
                        answer.status,
                        answer.message()
                    )),
                    no_answer: false,
                }
            }
            Err(e) => {
                last = format!("front end {frontend}: {e}");
                if turn + 1 < clients.len() {
                    moved += 1;
                }
                clients.rotate_left(1);
            }
        }
    }
    Seen {
        moved,
        error: Some(format!("no front end answered; last {last}")),
        no_answer: true,
    }
}
