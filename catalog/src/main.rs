//! `catalog`: parses flags, binds, and runs the catalog until SIGINT or SIGTERM; or, as
//! `catalog health`, asks the catalog on this host whether it answers.

use std::process::ExitCode;

use anyhow::Context;
use catalog::config::CatalogArgs;
use clap::{Parser, Subcommand};
use durability::storage::{restart_in_place, Ended};

/// jemalloc: the trade path allocates and frees small buffers per request, which glibc's
/// allocator served at several times the cost (bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "catalog",
    about = "Stock Bazaar catalog: durable stocks, exactly-once trades",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    catalog: CatalogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Exit 0 when the catalog this host's settings describe answers a read of the leadership
    /// record: its address and token come from the environment the service runs with
    /// (`CATALOG_LISTEN`, loopback for an any-address; `BAZAAR_CLUSTER_TOKEN`). For health
    /// checks.
    Health,
}

fn main() -> anyhow::Result<ExitCode> {
    common::telemetry::init();
    let cli = Cli::parse();
    let args = cli.catalog;
    if let Some(Command::Health) = cli.command {
        let addr = common::config::local_dial(&args.listen);
        let client =
            clients::CatalogClient::new(addr.clone(), args.transport.client_config("health"));
        let outcome = common::health::check(async {
            match client.leadership(common::health::TIMEOUT).await {
                Ok(record) => Ok(format!("{addr} answers; leadership {record}")),
                Err(e) => Err(format!("{addr}: {e}")),
            }
        });
        return Ok(common::health::report("catalog", outcome));
    }
    let ended = common::runtime::block_on(args.transport.worker_threads, async {
        let listener = args
            .transport
            .bind_internal(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let metrics = args
            .metrics
            .bind(&args.transport)
            .await
            .context("cannot listen for metrics")?;
        let shutdown = common::shutdown::on_signal();
        anyhow::Ok(catalog::run_with_metrics(listener, metrics, (&args).into(), shutdown).await?)
    })??;
    if ended == Ended::RestartFromLog {
        return Err(restart_in_place()).context("cannot restart in place after a storage failure");
    }
    Ok(ExitCode::SUCCESS)
}
