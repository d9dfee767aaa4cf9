//! A scenario's verdict: problems found outside the history (a step that did not happen in
//! time, too many elections, a gap in trading) plus the history's [`Report`], failing the
//! test with all of them at once and keeping the cluster's state for a look.

use std::time::Instant;

use crate::check::Report;
use crate::cluster::{Cluster, WriteQuorum};
use crate::history::History;

/// What one scenario found.
#[derive(Debug)]
pub struct Verdict {
    scenario: String,
    started: Instant,
    /// Problems found besides the history's report.
    pub problems: Vec<String>,
}

impl Verdict {
    /// A verdict for `scenario` in `mode`; its clock starts now.
    pub fn new(scenario: &str, mode: WriteQuorum) -> Self {
        Verdict {
            scenario: format!("{scenario} ({mode})"),
            started: Instant::now(),
            problems: Vec::new(),
        }
    }

    /// The sum of `bazaar_order_elections_total` over front ends `0..frontends`; a front end
    /// without the metric is a problem.
    pub async fn elections(&mut self, cluster: &Cluster, frontends: usize) -> f64 {
        const ELECTIONS: &str = "bazaar_order_elections_total";
        let mut total = 0.0;
        for index in 0..frontends {
            match cluster.metric(index, ELECTIONS).await {
                Some(value) => total += value,
                None => self.problem(format!(
                    "{} has no {ELECTIONS}",
                    crate::cluster::frontend_name(index)
                )),
            }
        }
        total
    }

    /// Notes a problem.
    pub fn problem(&mut self, problem: impl Into<String>) {
        self.problems.push(problem.into());
    }

    /// Notes `problem` when `result` is an error (a step that did not happen in time).
    pub fn expect<T>(&mut self, result: crate::Result<T>, problem: &str) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                self.problems.push(format!("{problem}: {e}"));
                None
            }
        }
    }

    /// Prints a one-line summary and panics with every problem and the report unless both
    /// are clean (the cluster's state is then kept).
    pub fn finish(self, cluster: &mut Cluster, history: &History, report: &Report) {
        eprintln!(
            "{}: {:.1} s; outcomes: {}; {}",
            self.scenario,
            self.started.elapsed().as_secs_f64(),
            history.summary(),
            report.figures
        );
        if self.problems.is_empty() && report.is_clean() {
            return;
        }
        cluster.keep_state();
        let problems: String = self.problems.iter().map(|p| format!("  - {p}\n")).collect();
        panic!("{}:\n{problems}{report}", self.scenario);
    }
}
