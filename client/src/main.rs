//! `client`: drives the front end with persistent sessions and checks every order it placed
//! (`client run`), or runs the course's evaluation sweep (`client evaluate`).

mod evaluate;
mod http;
mod load;
mod report;

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
    },
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
        Command::Run { target, p, json } => {
            let config = target.config(p)?;
            let bar = progress(u64::from(config.sessions) * u64::from(config.requests));
            let outcome = load::run(&config, bar).await?;
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
        Command::Evaluate { target, out, label } => {
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let mut points = Vec::new();
            let mut clean = true;
            for (round, p) in evaluate::PROBABILITIES.into_iter().enumerate() {
                let mut config = target.config(p)?;
                config.seed = target.seed.wrapping_add(round as u64 * 1_000);
                let bar = progress(u64::from(config.sessions) * u64::from(config.requests));
                let summary = report::summarize(&load::run(&config, bar).await?);
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
            Ok(if clean {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            })
        }
    }
}
