//! Reporting a run: a table of latency per request type (count, mean, p50, p90, p99, max),
//! answers by status, verification results; or the same as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::load::{Kind, Outcome};

/// Latency figures of one request type, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// The request type.
    pub kind: Kind,
    /// Requests answered.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl Latency {
    /// mean, p50, p90, p99 and max, in that order.
    pub fn figures(&self) -> [f64; 5] {
        [
            self.mean_ms,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.max_ms,
        ]
    }
}

/// A run's results, as printed with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Per request type.
    pub latency: Vec<Latency>,
    /// `"<type> <status>"` to count.
    pub statuses: std::collections::BTreeMap<String, u64>,
    /// Answers that should not have happened.
    pub unexpected_errors: u64,
    /// The first few of them.
    pub problems: Vec<String>,
    /// Orders fetched back.
    pub verified_orders: u64,
    /// Orders that came back different.
    pub mismatches: u64,
    /// Connection errors retried.
    pub reconnects: u64,
    /// Wall time.
    pub seconds: f64,
    /// True when nothing unexpected happened.
    pub clean: bool,
}

/// Summarises an outcome.
pub fn summarize(outcome: &Outcome) -> Summary {
    let ms = |micros: f64| micros / 1000.0;
    Summary {
        latency: outcome
            .latency
            .iter()
            .map(|(&kind, h)| Latency {
                kind,
                count: h.len(),
                mean_ms: if h.is_empty() { 0.0 } else { ms(h.mean()) },
                p50_ms: ms(h.value_at_quantile(0.50) as f64),
                p90_ms: ms(h.value_at_quantile(0.90) as f64),
                p99_ms: ms(h.value_at_quantile(0.99) as f64),
                max_ms: ms(h.max() as f64),
            })
            .collect(),
        statuses: outcome
            .statuses
            .iter()
            .map(|((kind, status), count)| (format!("{} {status}", kind.name()), *count))
            .collect(),
        unexpected_errors: outcome.unexpected,
        problems: outcome.problems.clone(),
        verified_orders: outcome.verified,
        mismatches: outcome.mismatches,
        reconnects: outcome.reconnects,
        seconds: outcome.elapsed.as_secs_f64(),
        clean: outcome.clean(),
    }
}

/// The summary as a table for people.
pub fn table(summary: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "request", "count", "mean ms", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for l in &summary.latency {
        let _ = write!(out, "{:<8} {:>8}", l.kind.name(), l.count);
        for figure in l.figures() {
            let _ = write!(out, " {figure:>9.3}");
        }
        out.push('\n');
    }
    let statuses: Vec<String> = summary
        .statuses
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    let _ = writeln!(out, "answers: {}", statuses.join(", "));
    let _ = writeln!(
        out,
        "unexpected errors: {}; orders verified: {}, mismatches: {}; reconnects: {}; {:.1} s",
        summary.unexpected_errors,
        summary.verified_orders,
        summary.mismatches,
        summary.reconnects,
        summary.seconds
    );
    for problem in &summary.problems {
        let _ = writeln!(out, "  problem: {problem}");
    }
    let _ = writeln!(
        out,
        "{}",
        if summary.clean {
            "result: clean"
        } else {
            "result: FAILED"
        }
    );
    out
}
