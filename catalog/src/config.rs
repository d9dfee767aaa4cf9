//! The catalog's settings: flags with environment fallbacks, validated once into
//! [`CatalogConfig`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::config::{parse_peers, TransportArgs, DEFAULT_HEARTBEAT_MS};
use common::metrics::MetricsArgs;
use common::rpc::ClientConfig;
use common::server::ServerConfig;
use common::wire::ReplicaId;

/// Recent request ids remembered by default.
pub const DEFAULT_DEDUP_WINDOW: usize = 100_000;
/// Records between snapshots by default.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 100_000;
/// Milliseconds of a leader's lease by default.
pub const DEFAULT_LEADER_LEASE_MS: u64 = 800;

/// Flags of the `catalog` binary.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "catalog",
    about = "Stock Bazaar catalog: durable stocks, exactly-once trades"
)]
pub struct CatalogArgs {
    /// Address to listen on.
    #[arg(long, env = "CATALOG_LISTEN", default_value = "127.0.0.1:7000")]
    pub listen: String,

    /// Directory for the catalog's runtime state (snapshot, write-ahead log).
    #[arg(long, env = "CATALOG_STATE_DIR", default_value = "state/catalog")]
    pub state_dir: PathBuf,

    /// Initial catalog (name,price,quantity per line), read only on first start.
    #[arg(long, env = "CATALOG_SEED", default_value = "data/catalog.csv")]
    pub seed: PathBuf,

    /// How many recent request ids are remembered (durably) to apply every trade once.
    #[arg(long, env = "CATALOG_DEDUP_WINDOW", default_value_t = DEFAULT_DEDUP_WINDOW,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000_000))]
    pub dedup_window: usize,

    /// Records between snapshots; each snapshot empties the write-ahead log.
    #[arg(long, env = "CATALOG_SNAPSHOT_EVERY", default_value_t = DEFAULT_SNAPSHOT_EVERY,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_every: u64,

    /// Milliseconds an order leader that reported itself serving stays undeposable: while the
    /// catalog hears from it within this lease, elections are refused, so front ends that
    /// cannot reach it do not replace it (nor each other's choices).
    #[arg(long, env = "CATALOG_LEADER_LEASE_MS", default_value_t = DEFAULT_LEADER_LEASE_MS,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub leader_lease_ms: u64,

    /// Every order replica (`1=host:port,2=...`, the replicas' own `--peers`). With them, a
    /// catalog that finds its state directory empty asks every replica whether the cluster is
    /// new; if their logs hold orders, it rebuilds its stocks from the seed plus the longest
    /// log instead of starting over. Without them it starts from the seed file.
    #[arg(long = "peers", visible_alias = "order-peers", env = "ORDER_PEERS",
          value_parser = parse_peers)]
    pub peers: Option<BTreeMap<ReplicaId, String>>,

    /// Internal transport settings.
    #[command(flatten)]
    pub transport: TransportArgs,

    /// The metrics port.
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// Everything a catalog needs to run.
#[derive(Debug, Clone)]
pub struct CatalogConfig {
    /// Where the runtime state lives.
    pub state_dir: PathBuf,
    /// The shipped initial catalog; never written.
    pub seed: PathBuf,
    /// Recent request ids remembered for exactly-once.
    pub dedup_window: usize,
    /// Records between snapshots.
    pub snapshot_every: u64,
    /// Server limits (connections, frame size, cluster token).
    pub server: ServerConfig,
    /// Interval of the heartbeats sent to subscribers.
    pub heartbeat: std::time::Duration,
    /// How long a leader that said it serves cannot be deposed.
    pub leader_lease: std::time::Duration,
    /// The order replicas, asked when the state directory is empty; none for a catalog on
    /// its own.
    pub replicas: BTreeMap<ReplicaId, String>,
    /// How the catalog calls the replicas.
    pub client: ClientConfig,
}

impl CatalogConfig {
    /// Defaults for a state directory and seed file, as tests use them.
    pub fn new(state_dir: impl Into<PathBuf>, seed: impl Into<PathBuf>) -> Self {
        CatalogConfig {
            state_dir: state_dir.into(),
            seed: seed.into(),
            dedup_window: DEFAULT_DEDUP_WINDOW,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            server: ServerConfig::new("catalog"),
            heartbeat: std::time::Duration::from_millis(DEFAULT_HEARTBEAT_MS),
            leader_lease: std::time::Duration::from_millis(DEFAULT_LEADER_LEASE_MS),
            replicas: BTreeMap::new(),
            client: ClientConfig::new("catalog"),
        }
    }
}

impl From<&CatalogArgs> for CatalogConfig {
    fn from(args: &CatalogArgs) -> Self {
        CatalogConfig {
            state_dir: args.state_dir.clone(),
            seed: args.seed.clone(),
            dedup_window: args.dedup_window,
            snapshot_every: args.snapshot_every,
            server: args.transport.server_config("catalog"),
            heartbeat: args.transport.heartbeat(),
            leader_lease: std::time::Duration::from_millis(args.leader_lease_ms),
            replicas: args.peers.clone().unwrap_or_default(),
            client: args.transport.client_config("catalog"),
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
        CatalogArgs::command().debug_assert();
    }
}
