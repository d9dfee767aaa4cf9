//! `frontend`: parses flags, binds, and serves the REST API until SIGINT or SIGTERM.

use anyhow::Context;
use clap::Parser;
use frontend::config::FrontendArgs;

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
