//! `order_bench`: measures a running order leader (with its followers and the catalog) from a
//! separate process over loopback: sequential `TradeRequest` round trips on one connection
//! (p50/p99), and throughput with many orders in flight on one connection. Prints each round
//! and the median of the rounds.

use anyhow::{bail, Context};
use clap::Parser;
use clients::ReplicaClient;
use common::rpc::ClientConfig;
use common::wire::{
    LeadershipChange, OrderRequest, OrderResponse, RequestId, StockName, TradeKind, TradeRequest,
};

#[derive(Parser)]
#[command(about = "Measure a running order leader")]
struct Args {
    /// The leader's address.
    #[arg(long, default_value = "127.0.0.1:7001")]
    addr: String,
    /// Stock to trade.
    #[arg(long, default_value = "GameStart")]
    stock: String,
    /// Sequential orders per round.
    #[arg(long, default_value_t = 5_000)]
    sequential: u64,
    /// Orders per round with many in flight.
    #[arg(long, default_value_t = 50_000)]
    orders: u64,
    /// Orders in flight at once, all on one connection.
    #[arg(long, default_value_t = 64)]
    in_flight: u64,
    /// Rounds; the median of each figure is reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Before measuring, elect the replica at `--addr` at this catalog if nobody leads yet
    /// (every replica of `--replicas` in sync); `--leader-id` names it.
    #[arg(long)]
    elect_at: Option<String>,
    /// Id of the replica at `--addr`, with `--elect-at`.
    #[arg(long, default_value_t = 1)]
    leader_id: u32,
    /// Every replica's id, with `--elect-at`.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    replicas: Vec<u32>,
}

async fn place(
    client: &ReplicaClient,
    stock: &StockName,
    id: String,
    i: u64,
) -> anyhow::Result<()> {
    // Alternate buy and sell of one share so the stock never runs out.
    let request = OrderRequest::PlaceOrder(TradeRequest {
        request_id: RequestId::new(id)?,
        name: stock.clone(),
        quantity: 1,
        kind: if i.is_multiple_of(2) {
            TradeKind::Buy
        } else {
            TradeKind::Sell
        },
    });
    match client.call(&request).await? {
        OrderResponse::Placed { .. } => Ok(()),
        other => bail!("order not placed: {other:?}"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let stock = StockName::new(args.stock.clone())?;
    let client = ReplicaClient::new(args.addr.clone(), ClientConfig::new("order-bench"));
    let run = std::process::id();
    if let Some(catalog) = args.elect_at.clone() {
        let catalog = clients::CatalogClient::new(catalog, ClientConfig::new("order-bench"));
        let timeout = std::time::Duration::from_secs(5);
        let record = catalog.leadership(timeout).await?;
        if record.leader.is_none() {
            let elect = LeadershipChange::Elect {
                leader: args.leader_id,
                in_sync: args.replicas.clone(),
            };
            catalog
                .change_leadership(record.epoch, elect, timeout)
                .await?;
        }
    }
    // The new leader reconciles with the catalog before it places orders.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while let Err(e) = place(&client, &stock, format!("warm-{run}"), 0).await {
        if std::time::Instant::now() > deadline {
            return Err(e).with_context(|| format!("leader at {} not placing orders", args.addr));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        let sequential = bench::sequential(args.sequential, |i| {
            place(&client, &stock, format!("seq-{run}-{round}-{i}"), i)
        })
        .await?;
        let (elapsed, parallel) = bench::in_flight(args.orders, args.in_flight, {
            let (client, stock) = (client.clone(), stock.clone());
            move |i| {
                let (client, stock) = (client.clone(), stock.clone());
                async move { place(&client, &stock, format!("par-{run}-{round}-{i}"), i).await }
            }
        })
        .await?;
        let (sequential_p50, sequential_p99) = bench::p50_p99(&sequential);
        let (parallel_p50, parallel_p99) = bench::p50_p99(&parallel);
        let throughput = args.orders as f64 / elapsed.as_secs_f64();
        let figures = [
            sequential_p50,
            sequential_p99,
            throughput,
            parallel_p50,
            parallel_p99,
        ];
        println!(
            "round {}: sequential p50 {:>5.0} us  p99 {:>5.0} us | {:>7.0} orders/s with {} in flight (p50 {:.0} us, p99 {:.0} us)",
            round + 1, figures[0], figures[1], figures[2], args.in_flight, figures[3], figures[4],
        );
        rounds.push(figures);
    }
    let column = bench::medians(&rounds);
    println!(
        "median of {} rounds: sequential p50 {:.0} us, p99 {:.0} us; {:.0} orders/s (p50 {:.0} us, p99 {:.0} us)",
        rounds.len(), column[0], column[1], column[2], column[3], column[4],
    );
    Ok(())
}
