//! `client`: drives the front end with persistent sessions and checks every order it placed
//! (`client run`), or runs the course's evaluation sweep (`client evaluate`); either can
//! keep a timeline of every request and leader change, which `client timeline` plots with
//! the kills of `simulate_crashes.sh`.

mod evaluate;
mod http;
mod load;
mod report;
mod timeline;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Parser)]
#[command(name = "client", about = "Stock Bazaar load generator and checker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run sessions of lookups and trades, then verify every order placed; exits 1 on any
    /// unexpected error or mismatch.
    Run {
        #[command(flatten)]
        target: Target,
        /// Probability of a trade after a lookup that shows shares left.
        #[arg(long, default_value_t = 0.5)]
        p: f64,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        record: Record,
    },
    /// The course's evaluation: p from 0 to 0.8 in steps of 0.2; CSV and SVG into --out.
    Evaluate {
        #[command(flatten)]
        target: Target,
        /// Directory for `<label>.csv` and `<label>.svg`.
        #[arg(long, default_value = "docs/evaluation")]
        out: PathBuf,
        /// Name of this configuration (e.g. cache-on, cache-off, crashes).
        #[arg(long, default_value = "evaluation")]
        label: String,
        #[command(flatten)]
        record: Record,
    },
    /// Plots latency against time from a timeline (`--timeline`, `--leaders`) and a
    /// `simulate_crashes.sh` log, with every kill and election marked; prints what followed
    /// each kill.
    Timeline {
        /// The requests CSV written with `--timeline`.
        #[arg(long)]
        requests: PathBuf,
        /// The leader changes CSV written with `--leaders`.
        #[arg(long)]
        leaders: Option<PathBuf>,
        /// The output of `simulate_crashes.sh`.
        #[arg(long)]
        kills: Option<PathBuf>,
        /// The SVG to write.
        #[arg(long)]
        out: PathBuf,
        /// The plot's title.
        #[arg(long, default_value = "latency over time, with replicas crashing")]
        title: String,
    },
}

/// What to record beside the latency figures.
#[derive(Args, Clone)]
struct Record {
    /// Write every request (start in Unix ms, p, kind, status, latency) to this CSV; at most
    /// 2,000,000 requests a run are kept.
    #[arg(long)]
    timeline: Option<PathBuf>,
    /// Poll the front end's /metrics during the run and write each change of leader or epoch
    /// (with its time in Unix ms) to this CSV.
    #[arg(long)]
    leaders: Option<PathBuf>,
    /// Milliseconds between two polls for --leaders.
    #[arg(long, default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(10..=10_000))]
    leader_poll_ms: u64,
}

/// A timeline being recorded: the clock every record is timed by and the leader watcher.
struct Recording {
    clock: timeline::Clock,
    watcher: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Vec<timeline::Event>>,
    )>,
}

impl Record {
    /// Starts the clock and, with --leaders, the watcher of the front end at `addr`.
    fn start(&self, addr: String) -> Option<Recording> {
        if self.timeline.is_none() && self.leaders.is_none() {
            return None;
        }
        let clock = timeline::Clock::start();
        let watcher = self.leaders.as_ref().map(|_| {
            let (stop, stopped) = tokio::sync::oneshot::channel();
            let every = Duration::from_millis(self.leader_poll_ms);
            // A week of polls: the runs end long before; the bound only keeps the loop finite.
            let max_polls = 7 * 24 * 3_600_000 / self.leader_poll_ms;
            let task = tokio::spawn(timeline::watch_leader(
                addr, clock, every, max_polls, stopped,
            ));
            (stop, task)
        });
        Some(Recording { clock, watcher })
    }

    /// Stops the watcher and writes the files asked for.
    async fn finish(
        &self,
        recording: Option<Recording>,
        mut requests: Vec<timeline::RequestRecord>,
        dropped: u64,
    ) -> anyhow::Result<()> {
        let Some(recording) = recording else {
            return Ok(());
        };
        if let Some(path) = &self.timeline {
            requests.sort_by_key(|r| r.unix_ms);
            std::fs::write(path, timeline::requests_csv(&requests))
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!(
                "wrote {} ({} requests{})",
                path.display(),
                requests.len(),
                if dropped > 0 {
                    format!(", {dropped} left off: the timeline was full")
                } else {
                    String::new()
                }
            );
        }
        if let (Some(path), Some((stop, task))) = (&self.leaders, recording.watcher) {
            let _ = stop.send(());
            let changes = task.await.context("the leader watcher failed")?;
            std::fs::write(path, timeline::leaders_csv(&changes))
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!(
                "wrote {} ({} leader changes)",
                path.display(),
                changes.len()
            );
        }
        Ok(())
    }
}

#[derive(Args, Clone)]
struct Target {
    /// Front end host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Front end port.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Sessions in parallel, one connection each.
    #[arg(long, default_value_t = 5)]
    sessions: u32,
    /// Iterations per session.
    #[arg(long, default_value_t = 100)]
    requests: u32,
    /// Seed of the random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Largest quantity traded at once.
    #[arg(long, default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_quantity: u32,
    /// Seconds a request is retried after connection errors before it counts as failed.
    #[arg(long, default_value_t = 30)]
    retry_secs: u64,
}

impl Target {
    fn config(&self, p: f64) -> anyhow::Result<load::LoadConfig> {
        anyhow::ensure!((0.0..=1.0).contains(&p), "--p must be between 0 and 1");
        Ok(load::LoadConfig {
            addr: format!("{}:{}", self.host, self.port),
            sessions: self.sessions,
            requests: self.requests,
            p,
            seed: self.seed,
            max_quantity: self.max_quantity,
            retry_for: Duration::from_secs(self.retry_secs),
            timeline: None,
        })
    }
}

fn progress(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} iterations {elapsed}") {
        bar.set_style(style);
    }
    bar
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            target,
            p,
            json,
            record,
        } => {
            let mut config = target.config(p)?;
            let recording = record.start(config.addr.clone());
            config.timeline = recording.as_ref().map(|r| r.clock);
            let bar = progress(u64::from(config.sessions) * u64::from(config.requests));
            let mut outcome = load::run(&config, bar).await?;
            let requests = std::mem::take(&mut outcome.requests);
            record
                .finish(recording, requests, outcome.requests_dropped)
                .await?;
            let summary = report::summarize(&outcome);
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{}", report::table(&summary));
            }
            Ok(if summary.clean {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            })
        }
        Command::Evaluate {
            target,
            out,
            label,
            record,
        } => {
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let mut points = Vec::new();
            let mut clean = true;
            let recording = record.start(format!("{}:{}", target.host, target.port));
            let (mut requests, mut dropped) = (Vec::new(), 0);
            for (round, p) in evaluate::PROBABILITIES.into_iter().enumerate() {
                let mut config = target.config(p)?;
                config.seed = target.seed.wrapping_add(round as u64 * 1_000);
                config.timeline = recording.as_ref().map(|r| r.clock);
                let bar = progress(u64::from(config.sessions) * u64::from(config.requests));
                let mut outcome = load::run(&config, bar).await?;
                let room = timeline::MAX_REQUESTS.saturating_sub(requests.len());
                dropped +=
                    outcome.requests_dropped + outcome.requests.len().saturating_sub(room) as u64;
                requests.extend(outcome.requests.drain(..).take(room));
                let summary = report::summarize(&outcome);
                println!("p = {p:.1}");
                print!("{}", report::table(&summary));
                clean &= summary.clean;
                points.push((p, summary));
            }
            let csv = out.join(format!("{label}.csv"));
            std::fs::write(&csv, evaluate::csv(&points))?;
            let svg = out.join(format!("{label}.svg"));
            evaluate::plot(&points, &format!("latency against p ({label})"), &svg)?;
            println!("wrote {} and {}", csv.display(), svg.display());
            record.finish(recording, requests, dropped).await?;
            Ok(if clean {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            })
        }
        Command::Timeline {
            requests,
            leaders,
            kills,
            out,
            title,
        } => {
            let read = |path: &PathBuf| {
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))
            };
            let records = timeline::parse_requests_csv(&read(&requests)?)
                .with_context(|| format!("in {}", requests.display()))?;
            let leader_changes = match &leaders {
                Some(path) => timeline::parse_leaders_csv(&read(path)?)
                    .with_context(|| format!("in {}", path.display()))?,
                None => Vec::new(),
            };
            let (kill_events, other_lines) = match &kills {
                Some(path) => timeline::parse_kill_log(&read(path)?),
                None => (Vec::new(), 0),
            };
            if other_lines > 0 {
                eprintln!(
                    "note: {other_lines} lines of the kill log are not kills or restarts with unix_ms="
                );
            }
            timeline::plot::plot(&records, &kill_events, &leader_changes, &title, &out)?;
            print!(
                "{}",
                timeline::report(&records, &kill_events, &leader_changes)
            );
            println!("wrote {}", out.display());
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}
