//! `catalog_bench`: measures a running catalog from a separate process over loopback:
//! sequential `Lookup` round trips on one connection (p50/p99), and durable `Trade`
//! throughput with many requests in flight on one connection. Prints each round and the
//! median of the rounds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use catalog::CatalogClient;
use clap::Parser;
use common::rpc::ClientConfig;
use common::wire::{RequestId, StockName, TradeKind, TradeRequest};
use hdrhistogram::Histogram;

#[derive(Parser)]
#[command(about = "Measure a running catalog")]
struct Args {
    /// The catalog's address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: String,
    /// Stock to look up and trade.
    #[arg(long, default_value = "GameStart")]
    stock: String,
    /// Sequential lookups per round.
    #[arg(long, default_value_t = 20_000)]
    lookups: u64,
    /// Trades per round.
    #[arg(long, default_value_t = 100_000)]
    trades: u64,
    /// Trades in flight at once, all on one connection.
    #[arg(long, default_value_t = 64)]
    in_flight: u64,
    /// Rounds; the median of each figure is reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

struct Round {
    lookup_p50_us: f64,
    lookup_p99_us: f64,
    trades_per_sec: f64,
    trade_p50_us: f64,
    trade_p99_us: f64,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn lookups(
    client: &CatalogClient,
    stock: &StockName,
    count: u64,
) -> anyhow::Result<Histogram<u64>> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for _ in 0..count {
        let started = Instant::now();
        if client.lookup(stock).await?.is_none() {
            bail!("stock {stock} not found");
        }
        histogram.record(started.elapsed().as_micros().max(1) as u64)?;
    }
    Ok(histogram)
}

async fn trades(
    client: &CatalogClient,
    stock: &StockName,
    round: usize,
    count: u64,
    in_flight: u64,
) -> anyhow::Result<(Duration, Histogram<u64>)> {
    let run = format!("{}-{round}", std::process::id());
    let started = Instant::now();
    let workers: Vec<_> = (0..in_flight)
        .map(|worker| {
            let (client, stock, run) = (client.clone(), stock.clone(), run.clone());
            tokio::spawn(async move {
                let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                let mut i = worker;
                while i < count {
                    // Alternate buy and sell of one share so the stock never runs out.
                    let kind = if i % 2 == 0 {
                        TradeKind::Buy
                    } else {
                        TradeKind::Sell
                    };
                    let request = TradeRequest {
                        request_id: RequestId::new(format!("bench-{run}-{i}"))?,
                        name: stock.clone(),
                        quantity: 1,
                        kind,
                    };
                    let sent = Instant::now();
                    if let Err(rejection) = client.trade(&request).await? {
                        bail!("trade refused: {rejection}");
                    }
                    histogram.record(sent.elapsed().as_micros().max(1) as u64)?;
                    i += in_flight;
                }
                anyhow::Ok(histogram)
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for worker in workers {
        all.add(worker.await??)?;
    }
    Ok((started.elapsed(), all))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let stock = StockName::new(args.stock.clone())?;
    let client = CatalogClient::new(args.addr.clone(), ClientConfig::new("catalog-bench"));
    client
        .lookup(&stock)
        .await
        .with_context(|| format!("catalog at {} not answering", args.addr))?;
    let client = Arc::new(client);
    // Warm up the connection, allocator and page cache.
    lookups(&client, &stock, 1_000).await?;

    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        let lookup = lookups(&client, &stock, args.lookups).await?;
        let (elapsed, trade) = trades(&client, &stock, round, args.trades, args.in_flight).await?;
        let figures = Round {
            lookup_p50_us: lookup.value_at_quantile(0.50) as f64,
            lookup_p99_us: lookup.value_at_quantile(0.99) as f64,
            trades_per_sec: args.trades as f64 / elapsed.as_secs_f64(),
            trade_p50_us: trade.value_at_quantile(0.50) as f64,
            trade_p99_us: trade.value_at_quantile(0.99) as f64,
        };
        println!(
            "round {}: lookup p50 {:>5.0} us  p99 {:>5.0} us | trades {:>8.0}/s with {} in flight (p50 {:.0} us, p99 {:.0} us)",
            round + 1,
            figures.lookup_p50_us,
            figures.lookup_p99_us,
            figures.trades_per_sec,
            args.in_flight,
            figures.trade_p50_us,
            figures.trade_p99_us,
        );
        rounds.push(figures);
    }
    println!(
        "median of {} rounds: lookup p50 {:.0} us, p99 {:.0} us; trades {:.0}/s (p50 {:.0} us, p99 {:.0} us)",
        rounds.len(),
        median(rounds.iter().map(|r| r.lookup_p50_us).collect()),
        median(rounds.iter().map(|r| r.lookup_p99_us).collect()),
        median(rounds.iter().map(|r| r.trades_per_sec).collect()),
        median(rounds.iter().map(|r| r.trade_p50_us).collect()),
        median(rounds.iter().map(|r| r.trade_p99_us).collect()),
    );
    Ok(())
}
