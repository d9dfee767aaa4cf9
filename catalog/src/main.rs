//! `catalog`: parses flags, binds, and runs the catalog until SIGINT or SIGTERM.

use anyhow::Context;
use catalog::config::CatalogArgs;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init();
    let args = CatalogArgs::parse();
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let shutdown = common::shutdown::on_signal();
    catalog::run(listener, (&args).into(), shutdown).await?;
    Ok(())
}
