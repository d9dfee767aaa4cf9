//! `frontend`: parses flags, binds, and serves the REST API until SIGINT or SIGTERM.

use anyhow::Context;
use clap::Parser;
use frontend::config::FrontendArgs;

/// jemalloc, with its background thread, hands freed pages back to the system within seconds
/// of a burst: with the system allocator, a front end kept ~50 MB after a flood of 4,500
/// connections had ended (see `bench/flood.py` and bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    common::telemetry::init();
    let args = FrontendArgs::parse();
    let config = frontend::FrontendConfig::from_args(&args)?;
    common::runtime::block_on(args.transport.worker_threads, async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let shutdown = common::shutdown::on_signal();
        frontend::run(listener, config, shutdown).await?;
        anyhow::Ok(())
    })?
}
