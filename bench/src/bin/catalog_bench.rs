//! `catalog_bench`: measures a running catalog from a separate process over loopback:
//! sequential `Lookup` round trips on one connection (p50/p99), and the throughput of the
//! trades an order leader has it apply: `Apply` requests of `--batch` entries each, one on its
//! way at a time, as a leader sends them. Prints each round and the median of the rounds.

use anyhow::{bail, Context};
use clap::Parser;
use clients::{Applied, CatalogClient, LeadershipOutcome};
use common::rpc::ClientConfig;
use common::wire::{ApplyItem, LeadershipChange, OrderEntry, RequestId, StockName, TradeKind};

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
    /// Trades per `Apply` request (one request on its way at a time, as the leader sends).
    #[arg(long, default_value_t = 64)]
    batch: u64,
    /// Rounds; the median of each figure is reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

async fn lookup(client: &CatalogClient, stock: &StockName) -> anyhow::Result<()> {
    if client.lookup(stock).await?.is_none() {
        bail!("stock {stock} not found");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let stock = StockName::new(args.stock.clone())?;
    let client = CatalogClient::new(args.addr.clone(), ClientConfig::new("catalog-bench"));
    lookup(&client, &stock)
        .await
        .with_context(|| format!("catalog at {} not answering", args.addr))?;
    // Trades need the recorded leader's epoch: stand in for a leader, electing one if the
    // catalog is fresh.
    let timeout = std::time::Duration::from_secs(5);
    let mut record = client.leadership(timeout).await?;
    if record.leader.is_none() {
        let elect = LeadershipChange::Elect {
            leader: 1,
            in_sync: vec![1],
        };
        if let LeadershipOutcome::Changed(elected) = client
            .change_leadership(record.epoch, elect, timeout)
            .await?
        {
            record = elected;
        }
    }
    let epoch = record.epoch;
    // The leader numbers its trades: from the catalog's next one on.
    let mut next = match client.levels(epoch).await? {
        Ok((next, _)) => next,
        Err(current) => bail!("epoch {epoch} does not lead: {current}"),
    };
    // Warm up the connection, allocator and page cache.
    bench::sequential(1_000, |_| lookup(&client, &stock)).await?;

    let batch = args.batch.max(1);
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        let lookups = bench::sequential(args.lookups, |_| lookup(&client, &stock)).await?;
        let run = format!("{}-{round}", std::process::id());
        let started = std::time::Instant::now();
        let calls = args.trades.div_ceil(batch);
        let trades = bench::sequential(calls, |call| {
            let (client, stock, run) = (&client, &stock, &run);
            let first = next;
            let count = batch.min(args.trades - call * batch);
            next += count;
            async move {
                // Alternate buy and sell of one share so the stock never runs out.
                let items: Vec<ApplyItem> = (0..count)
                    .map(|i| {
                        let number = first + i;
                        Ok(ApplyItem::Entry(OrderEntry {
                            number,
                            epoch,
                            request_id: RequestId::new(format!("bench-{run}-{number}"))?,
                            name: stock.clone(),
                            kind: if number.is_multiple_of(2) {
                                TradeKind::Buy
                            } else {
                                TradeKind::Sell
                            },
                            quantity: 1,
                        }))
                    })
                    .collect::<anyhow::Result<_>>()?;
                match client.apply(epoch, &items, None).await? {
                    Applied::Done { stop: None, .. } => Ok(()),
                    other => bail!("not applied: {other:?}"),
                }
            }
        })
        .await?;
        let elapsed = started.elapsed();
        let (lookups_p50, lookups_p99) = bench::p50_p99(&lookups);
        let (trades_p50, trades_p99) = bench::p50_p99(&trades);
        let throughput = args.trades as f64 / elapsed.as_secs_f64();
        let figures = [lookups_p50, lookups_p99, throughput, trades_p50, trades_p99];
        println!(
            "round {}: lookup p50 {:>5.0} us  p99 {:>5.0} us | trades {:>8.0}/s in batches of {} (one Apply p50 {:.0} us, p99 {:.0} us)",
            round + 1, figures[0], figures[1], figures[2], batch, figures[3], figures[4],
        );
        rounds.push(figures);
    }
    let column = bench::medians(&rounds);
    println!(
        "median of {} rounds: lookup p50 {:.0} us, p99 {:.0} us; trades {:.0}/s (one Apply p50 {:.0} us, p99 {:.0} us)",
        rounds.len(), column[0], column[1], column[2], column[3], column[4],
    );
    Ok(())
}
