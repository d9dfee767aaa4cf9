//! `frontend`: parses flags, binds, and serves the REST API until SIGINT or SIGTERM; or, as
//! `frontend health`, asks the front end on this host for `GET /health`.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use frontend::config::FrontendArgs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// jemalloc, with its background thread, hands freed pages back to the system within seconds
/// of a burst: with the system allocator, a front end kept ~50 MB after a flood of 4,500
/// connections had ended (see `bench/flood.py` and bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "frontend",
    about = "Stock Bazaar front end: the public REST API",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    frontend: FrontendArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Exit 0 when the front end this host's settings describe (`FRONTEND_LISTEN` from the
    /// environment, loopback for an any-address) answers `GET /health` with 200: it reaches
    /// the catalog and knows a leader. For health checks.
    Health,
}

fn main() -> anyhow::Result<ExitCode> {
    common::telemetry::init();
    let cli = Cli::parse();
    let args = cli.frontend;
    if let Some(Command::Health) = cli.command {
        let addr = common::config::local_dial(&args.listen);
        return Ok(common::health::report("frontend", get_health(&addr)));
    }
    let config = frontend::FrontendConfig::from_args(&args)?;
    common::runtime::block_on(args.transport.worker_threads, async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let shutdown = common::shutdown::on_signal();
        frontend::run(listener, config, shutdown).await?;
        anyhow::Ok(())
    })??;
    Ok(ExitCode::SUCCESS)
}

/// `GET /health` on one connection, bounded as a whole in time (`common::health::TIMEOUT`)
/// and in size: the status line and body.
fn get_health(addr: &str) -> Result<String, String> {
    common::health::check(async {
        let fail = |e: std::io::Error| format!("{addr}: {e}");
        let mut stream = TcpStream::connect(addr).await.map_err(fail)?;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: health\r\nConnection: close\r\n\r\n")
            .await
            .map_err(fail)?;
        let mut answer = Vec::new();
        stream
            .take(64 * 1024)
            .read_to_end(&mut answer)
            .await
            .map_err(fail)?;
        let answer = String::from_utf8_lossy(&answer);
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
        match answer.lines().next() {
            Some(status) if status.starts_with("HTTP/1.1 200") => Ok(format!("{addr}: {body}")),
            Some(status) => Err(format!("{addr}: {status}: {body}")),
            None => Err(format!("{addr} closed without an answer")),
        }
    })
}
