//! `order`: runs one order replica (`order --id N ...`), or audits replicas and the catalog
//! (`order audit --state-dir D ... --catalog ADDR`).

use anyhow::Context;
use clap::{Parser, Subcommand};
use order::audit::AuditArgs;
use order::config::ReplicaArgs;

#[derive(Parser)]
#[command(
    name = "order",
    about = "Stock Bazaar order replica",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    replica: ReplicaArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Compare the replicas' logs and check the catalog against them; exits 1 on any finding.
    Audit(AuditArgs),
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    common::telemetry::init();
    let cli = Cli::parse();
    match (cli.command, cli.replica) {
        (Some(Command::Audit(args)), _) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = runtime.block_on(order::audit::audit(&args))?;
            for line in &report.lines {
                println!("{line}");
            }
            println!(
                "{}",
                if report.clean {
                    "audit: clean"
                } else {
                    "audit: FAILED"
                }
            );
            Ok(if report.clean {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            })
        }
        (None, args) => {
            let (config, listen) = order::ReplicaConfig::from_args(&args)?;
            common::runtime::block_on(args.transport.worker_threads, async move {
                let listener = tokio::net::TcpListener::bind(&listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                let shutdown = common::shutdown::on_signal();
                order::run(listener, config, shutdown).await?;
                anyhow::Ok(())
            })??;
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}
