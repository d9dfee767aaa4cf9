//! Shared pieces of the benchmark drivers: timing calls one after another or many in flight,
//! latency histograms, medians across rounds.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// A histogram of microseconds, 1 µs to 60 s.
pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

/// The median of `values` (the upper one for an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The per-column medians of rounds of figures.
pub fn medians<const N: usize>(rounds: &[[f64; N]]) -> [f64; N] {
    std::array::from_fn(|column| median(rounds.iter().map(|round| round[column]).collect()))
}

/// p50 and p99 of a latency histogram, in microseconds.
pub fn p50_p99(latencies: &Histogram<u64>) -> (f64, f64) {
    (
        latencies.value_at_quantile(0.50) as f64,
        latencies.value_at_quantile(0.99) as f64,
    )
}

/// Times `count` calls of `call`, one after another.
pub async fn sequential<F, Fut>(count: u64, mut call: F) -> anyhow::Result<Histogram<u64>>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut latencies = histogram()?;
    for i in 0..count {
        let started = Instant::now();
        call(i).await?;
        latencies.record(started.elapsed().as_micros().max(1) as u64)?;
    }
    Ok(latencies)
}

/// Makes `count` calls with `in_flight` of them outstanding at any time; returns the wall
/// time and the per-call latencies.
pub async fn in_flight<F, Fut>(
    count: u64,
    in_flight: u64,
    call: F,
) -> anyhow::Result<(Duration, Histogram<u64>)>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let workers: Vec<_> = (0..in_flight)
        .map(|worker| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = histogram()?;
                let mut i = worker;
                while i < count {
                    let sent = Instant::now();
                    call(i).await?;
                    latencies.record(sent.elapsed().as_micros().max(1) as u64)?;
                    i += in_flight;
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut all = histogram()?;
    for worker in workers {
        all.add(worker.await??)?;
    }
    Ok((started.elapsed(), all))
}
