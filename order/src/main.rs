//! `order`: runs one order replica (`order --id N ...`), or audits replicas and the catalog
//! (`order audit --state-dir D ... --catalog ADDR`), or checks this host's replica
//! (`order health`).

use anyhow::Context;
use clap::{Parser, Subcommand};
use common::wire::{OrderRequest, OrderResponse, ReplicaId};
use order::audit::AuditArgs;
use order::config::ReplicaArgs;

/// jemalloc: the trade path allocates and frees small buffers per request, which glibc's
/// allocator served at several times the cost (bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Make sure a leader serves: read the catalog's leadership record and, if its leader
    /// cannot serve, elect the highest-id live in-sync replica (compare-and-set at the
    /// catalog). With `--unclean ID`, elect ID alone whatever the record says.
    Elect {
        /// Every replica.
        #[command(flatten)]
        replicas: common::config::OrderPeersArgs,
        /// The catalog, which keeps the leadership record.
        #[command(flatten)]
        catalog: common::config::CatalogAddrArgs,
        /// The operator's override when no in-sync replica can return: this replica leads
        /// alone; what may be lost is printed.
        #[arg(long)]
        unclean: Option<ReplicaId>,
        /// Cluster token, if the services require one.
        #[command(flatten)]
        token: common::config::TokenArgs,
    },
    /// Compare the replicas' logs and check the catalog against them; exits 1 on any finding.
    Audit(AuditArgs),
    /// Exit 0 when the replica this host's settings describe (`ORDER_ID`, `ORDER_PEERS`,
    /// `ORDER_LISTEN`, loopback for an any-address; `BAZAAR_CLUSTER_TOKEN`, all from the
    /// environment) answers `Status` with a working disk. For health checks.
    Health,
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    common::telemetry::init();
    let cli = Cli::parse();
    match (cli.command, cli.replica) {
        (
            Some(Command::Elect {
                replicas,
                catalog,
                unclean,
                token,
            }),
            _,
        ) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let config = common::rpc::ClientConfig {
                    cluster_token: token.cluster_token,
                    ..common::rpc::ClientConfig::new("elect")
                };
                let replicas = replicas
                    .peers
                    .into_iter()
                    .map(|(id, addr)| (id, clients::ReplicaClient::new(addr, config.clone())))
                    .collect();
                let catalog = clients::CatalogClient::new(catalog.catalog, config);
                let timeout = std::time::Duration::from_secs(2);
                match unclean {
                    Some(leader) => {
                        let (record, risk) =
                            clients::election::elect_unclean(&catalog, &replicas, leader, timeout)
                                .await?;
                        println!("{record}");
                        println!("{risk}");
                    }
                    None => {
                        let ensured =
                            clients::election::ensure_leader(&catalog, &replicas, timeout).await?;
                        let what = if ensured.elected {
                            "elected"
                        } else {
                            "already serving"
                        };
                        println!("{what}: {}", ensured.record);
                    }
                }
                anyhow::Ok(())
            })?;
            Ok(std::process::ExitCode::SUCCESS)
        }
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
        (Some(Command::Health), args) => {
            let (_, listen) = order::ReplicaConfig::from_args(&args)?;
            let addr = common::config::local_dial(&listen);
            let replica =
                clients::ReplicaClient::new(addr.clone(), args.transport.client_config("health"));
            let outcome = common::health::check(async {
                match replica
                    .call_within(&OrderRequest::Status, common::health::TIMEOUT)
                    .await
                {
                    Ok(OrderResponse::Status(status)) if status.storage_failure.is_some() => {
                        Err(format!(
                            "{addr}: replica {} cannot write its log: {}",
                            status.id,
                            status.storage_failure.unwrap_or_default()
                        ))
                    }
                    Ok(OrderResponse::Status(status)) => Ok(format!(
                        "{addr} answers: replica {} {:?} in epoch {}, last entry {:?}",
                        status.id, status.role, status.epoch, status.last
                    )),
                    Ok(other) => Err(format!("{addr} answered {other:?}")),
                    Err(e) => Err(format!("{addr}: {e}")),
                }
            });
            Ok(common::health::report("order", outcome))
        }
        (None, args) => {
            let (config, listen) = order::ReplicaConfig::from_args(&args)?;
            let ended = common::runtime::block_on(args.transport.worker_threads, async move {
                let listener = args
                    .transport
                    .bind_internal(&listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                let metrics = args
                    .metrics
                    .bind(&args.transport)
                    .await
                    .context("cannot listen for metrics")?;
                let shutdown = common::shutdown::on_signal();
                anyhow::Ok(order::run_with_metrics(listener, metrics, config, shutdown).await?)
            })??;
            if ended == durability::storage::Ended::RestartFromLog {
                return Err(durability::storage::restart_in_place())
                    .context("cannot restart in place after a storage failure");
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod flag_tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        // Catches two flags with one name, e.g. a service flag shadowing a transport flag.
        Cli::command().debug_assert();
    }
}
