//! `simulate`: runs seeds of the deterministic simulator and reports the first violation with
//! a readable trace; replays one seed exactly; switches one safety rule off to show that the
//! simulator catches what it prevents.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use common::safety::{Rule, Rules};
use simulator::{replay, run, Options, Outcome};

/// Runs the catalog, three order replicas and several front ends in one thread under a
/// seeded simulated network and disk, injecting crashes, freezes, partitions, torn writes and
/// full disks, and checks every invariant after every step.
#[derive(Debug, Parser)]
#[command(name = "simulate", version)]
struct Args {
    /// Run this many seeds, from `--first` on; stop at the first violation.
    #[arg(long, conflicts_with = "seed")]
    seeds: Option<u64>,

    /// The first seed of `--seeds` or `--for`.
    #[arg(long, default_value_t = 0)]
    first: u64,

    /// Replay one seed exactly and print its whole trace.
    #[arg(long)]
    seed: Option<u64>,

    /// Run seeds for this many seconds and report seeds and events per second.
    #[arg(long = "for", value_name = "SECONDS", conflicts_with_all = ["seeds", "seed"])]
    duration: Option<f64>,

    /// Switch this safety rule off (see `--list-rules`).
    #[arg(long = "break", value_name = "RULE")]
    broken: Option<String>,

    /// Name the safety rules `--break` takes, and exit.
    #[arg(long)]
    list_rules: bool,

    /// Inject no faults (the workload alone).
    #[arg(long)]
    no_faults: bool,

    /// Lines of the trace shown with a violation found by `--seeds` (the last ones).
    #[arg(long, default_value_t = 80)]
    trace_lines: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.list_rules {
        for rule in Rule::ALL {
            println!("{:<24} {}", rule.name(), rule.describe());
        }
        return ExitCode::SUCCESS;
    }
    let rules = match args.broken.as_deref() {
        None => Rules::ALL,
        Some(name) => match Rule::from_name(name) {
            Some(rule) => Rules::without(rule),
            None => {
                eprintln!("simulate: no rule named {name:?}; `simulate --list-rules` names them");
                return ExitCode::from(2);
            }
        },
    };
    let options = Options {
        rules,
        faults: !args.no_faults,
    };
    if let Some(seed) = args.seed {
        let (outcome, trace) = replay(seed, options);
        for line in &trace {
            println!("{line}");
        }
        report(&outcome);
        return if outcome.violation.is_some() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    let started = Instant::now();
    let (limit, deadline) = match (args.seeds, args.duration) {
        (Some(count), _) => (args.first.saturating_add(count), None),
        (None, Some(seconds)) => (u64::MAX, Some(Duration::from_secs_f64(seconds.max(0.0)))),
        (None, None) => (args.first.saturating_add(1_000), None),
    };
    let (mut seeds, mut events, mut simulated) = (0u64, 0u64, Duration::ZERO);
    let mut seed = args.first;
    while seed < limit && deadline.is_none_or(|d| started.elapsed() < d) {
        let outcome = run(seed, options);
        seeds += 1;
        events += outcome.stats.events;
        simulated += outcome.stats.simulated;
        if outcome.violation.is_some() {
            let (replayed, trace) = replay(seed, options);
            let shown = trace.len().saturating_sub(args.trace_lines);
            if shown > 0 {
                println!("… {shown} earlier lines (`simulate --seed {seed}` prints them all)");
            }
            for line in &trace[shown..] {
                println!("{line}");
            }
            report(&replayed);
            if replayed.violation != outcome.violation {
                println!("the replay differs from the run: the simulation is not deterministic");
            }
            summary(seeds, events, simulated, started.elapsed());
            println!("replay: simulate --seed {seed}{}", broken_flag(&args));
            return ExitCode::FAILURE;
        }
        seed += 1;
    }
    summary(seeds, events, simulated, started.elapsed());
    ExitCode::SUCCESS
}

fn broken_flag(args: &Args) -> String {
    args.broken
        .as_ref()
        .map(|rule| format!(" --break {rule}"))
        .unwrap_or_default()
}

fn report(outcome: &Outcome) {
    match &outcome.violation {
        Some(violation) => println!("seed {}: VIOLATION {violation}", outcome.seed),
        None => println!(
            "seed {}: clean ({} events, {:.2} s simulated, {} orders answered, {} faults, {} checks)",
            outcome.seed,
            outcome.stats.events,
            outcome.stats.simulated.as_secs_f64(),
            outcome.stats.orders,
            outcome.stats.faults,
            outcome.stats.checks
        ),
    }
}

fn summary(seeds: u64, events: u64, simulated: Duration, took: Duration) {
    let secs = took.as_secs_f64().max(1e-9);
    println!(
        "{seeds} seeds, {events} events, {:.0} s simulated in {:.2} s: {:.0} seeds/s, {:.0} events/s",
        simulated.as_secs_f64(),
        secs,
        seeds as f64 / secs,
        events as f64 / secs
    );
}
