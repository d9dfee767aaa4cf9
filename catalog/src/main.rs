//! `catalog`: parses flags, binds, and runs the catalog until SIGINT or SIGTERM.

use anyhow::Context;
use catalog::config::CatalogArgs;
use clap::Parser;
use common::storage::{restart_in_place, Ended};

fn main() -> anyhow::Result<()> {
    common::telemetry::init();
    let args = CatalogArgs::parse();
    let ended = common::runtime::block_on(args.transport.worker_threads, async {
        let listener = args
            .transport
            .bind_internal(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let shutdown = common::shutdown::on_signal();
        anyhow::Ok(catalog::run(listener, (&args).into(), shutdown).await?)
    })??;
    if ended == Ended::RestartFromLog {
        return Err(restart_in_place()).context("cannot restart in place after a storage failure");
    }
    Ok(())
}
