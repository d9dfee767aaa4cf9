//! The deterministic simulator. It runs the real engines of the catalog, three order
//! replicas and several front ends, with clients, all in one thread from one seed, on a
//! simulated network (delay, reordering, loss, duplication, partitions of any shape) and
//! simulated disks (what was not flushed is lost on a crash; a torn last record), crashing,
//! restarting, freezing and filling the disks of any process at any step. After every step
//! and at the end it checks the invariants ([`check`]); a failing seed replays exactly, with
//! a readable trace of every event and every engine's log.
//!
//! Seams: [`plan`] draws what a seed runs, [`world`] is the event loop, the network and the
//! faults, [`node`] the processes (each a real engine and what its runtime does with its
//! commands), [`disk`] the disks, [`check`] the invariants, [`trace`] the replay's account.

pub mod check;
pub mod disk;
pub mod node;
pub mod plan;
pub mod rng;
pub mod trace;
pub mod world;

use common::safety::Rules;

pub use check::Violation;
pub use world::Stats;

/// How seeds run.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The safety rules (one may be switched off to show the simulator finds the violation).
    pub rules: Rules,
    /// Whether faults are injected (without them a run is a plain workload).
    pub faults: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rules: Rules::ALL,
            faults: true,
        }
    }
}

/// What one seed came to.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// The run's size.
    pub stats: Stats,
    /// The first invariant broken, if one was.
    pub violation: Option<Violation>,
}

/// Runs `seed`, recording nothing.
pub fn run(seed: u64, options: Options) -> Outcome {
    trace::listen_to_engines();
    run_with(seed, options, trace::Trace::off()).0
}

/// Runs `seed` again, recording a readable trace of every event and every engine's log line.
pub fn replay(seed: u64, options: Options) -> (Outcome, Vec<String>) {
    trace::listen_to_engines();
    trace::recording(|| run_with(seed, options, trace::Trace::recording()))
}

fn run_with(seed: u64, options: Options, trace: trace::Trace) -> (Outcome, Vec<String>) {
    let plan = plan::Plan::draw(seed, options.faults);
    match world::World::new(seed, plan, options.rules, trace) {
        Ok(mut world) => {
            let stats = world.run();
            let lines = world.trace().lines().to_vec();
            let violation = world.checker.violation.take();
            (
                Outcome {
                    seed,
                    stats,
                    violation,
                },
                lines,
            )
        }
        Err(e) => (
            Outcome {
                seed,
                stats: Stats::default(),
                violation: Some(Violation {
                    invariant: "engine-consistency",
                    detail: format!("the world cannot start: {e}"),
                    at: std::time::Duration::ZERO,
                }),
            },
            Vec::new(),
        ),
    }
}
