//! A replica's settings: flags with environment fallbacks, validated once into
//! [`ReplicaConfig`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use common::config::{CatalogAddrArgs, OrderPeersArgs, TransportArgs};
use common::metrics::MetricsArgs;
use common::rpc::ClientConfig;
use common::server::ServerConfig;
use common::wire::ReplicaId;

use crate::{Error, WriteQuorum};

/// Milliseconds a follower has to persist a batch by default.
pub const DEFAULT_REPLICATE_TIMEOUT_MS: u64 = 500;
/// Milliseconds an order may wait for its quorum by default.
pub const DEFAULT_COMMIT_TIMEOUT_MS: u64 = 5_000;
/// Recent request ids remembered by default.
pub const DEFAULT_DEDUP_WINDOW: usize = 1_000_000;

/// Flags of `order` when it runs a replica.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplicaArgs {
    /// This replica's id; it must appear in `--peers`.
    #[arg(long, env = "ORDER_ID", required = true)]
    pub id: Option<ReplicaId>,

    /// Every replica's address, this one's included.
    #[command(flatten)]
    pub replicas: OrderPeersArgs,

    /// Address to listen on; defaults to this replica's entry in `--peers`.
    #[arg(long, env = "ORDER_LISTEN")]
    pub listen: Option<String>,

    /// The catalog.
    #[command(flatten)]
    pub catalog: CatalogAddrArgs,

    /// Directory for this replica's order log; defaults to `state/order-<id>`.
    #[arg(long, env = "ORDER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// `all`: acknowledge once every live follower has the order; `majority`: also require a
    /// majority of the replicas.
    #[arg(long, env = "WRITE_QUORUM", value_enum, default_value = "all")]
    pub write_quorum: WriteQuorum,

    /// Milliseconds a follower has to persist replicated orders before it is marked behind.
    #[arg(long, env = "ORDER_REPLICATE_TIMEOUT_MS", default_value_t = DEFAULT_REPLICATE_TIMEOUT_MS)]
    pub replicate_timeout_ms: u64,

    /// Milliseconds an order may wait for its write quorum before the leader gives up on
    /// answering (the order stays in the log; a retry with the same id finds it).
    #[arg(long, env = "ORDER_COMMIT_TIMEOUT_MS", default_value_t = DEFAULT_COMMIT_TIMEOUT_MS)]
    pub commit_timeout_ms: u64,

    /// Recent request ids remembered for exactly-once.
    #[arg(long, env = "ORDER_DEDUP_WINDOW", default_value_t = DEFAULT_DEDUP_WINDOW)]
    pub dedup_window: usize,

    /// Internal transport settings.
    #[command(flatten)]
    pub transport: TransportArgs,

    /// The metrics port.
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// Everything a replica needs to run.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// This replica.
    pub id: ReplicaId,
    /// The other replicas' addresses.
    pub peers: BTreeMap<ReplicaId, String>,
    /// The catalog's address.
    pub catalog: String,
    /// Where the order log lives.
    pub state_dir: PathBuf,
    /// When an order counts as committed.
    pub write_quorum: WriteQuorum,
    /// How long a follower has to answer a `Replicate`.
    pub replicate_timeout: Duration,
    /// How long an order waits for its quorum before `Unavailable`.
    pub commit_timeout: Duration,
    /// Recent request ids remembered.
    pub dedup_window: usize,
    /// Server limits.
    pub server: ServerConfig,
    /// Settings of the clients to the catalog and the other replicas.
    pub client: ClientConfig,
}

impl ReplicaConfig {
    /// Defaults for replica `id` among `peers` (the others), as tests use them.
    pub fn new(
        id: ReplicaId,
        peers: BTreeMap<ReplicaId, String>,
        catalog: impl Into<String>,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        ReplicaConfig {
            id,
            peers,
            catalog: catalog.into(),
            state_dir: state_dir.into(),
            write_quorum: WriteQuorum::All,
            replicate_timeout: Duration::from_millis(DEFAULT_REPLICATE_TIMEOUT_MS),
            commit_timeout: Duration::from_millis(DEFAULT_COMMIT_TIMEOUT_MS),
            dedup_window: DEFAULT_DEDUP_WINDOW,
            server: ServerConfig::new(format!("order-{id}")),
            client: ClientConfig::new(format!("order-{id}")),
        }
    }

    /// Validates the flags. Returns the config and the address to listen on.
    pub fn from_args(args: &ReplicaArgs) -> Result<(ReplicaConfig, String), Error> {
        let id = args
            .id
            .ok_or_else(|| Error::Config("--id is required".into()))?;
        let mut peers = args.replicas.peers.clone();
        let own = peers.remove(&id);
        let listen = match (&args.listen, own) {
            (Some(listen), _) => listen.clone(),
            (None, Some(own)) => own,
            (None, None) => {
                return Err(Error::Config(format!(
                    "replica {} is not in --peers and --listen is not given",
                    id
                )))
            }
        };
        let config = ReplicaConfig {
            id,
            peers,
            catalog: args.catalog.catalog.clone(),
            state_dir: args
                .state_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("state/order-{}", id))),
            write_quorum: args.write_quorum,
            replicate_timeout: Duration::from_millis(args.replicate_timeout_ms),
            commit_timeout: Duration::from_millis(args.commit_timeout_ms),
            dedup_window: args.dedup_window.max(1),
            server: args.transport.server_config(&format!("order-{}", id)),
            client: args.transport.client_config(&format!("order-{}", id)),
        };
        Ok((config, listen))
    }

    /// The engine's settings.
    pub fn engine(&self) -> crate::engine::EngineConfig {
        crate::engine::EngineConfig {
            id: self.id,
            peers: self.peers.keys().copied().collect(),
            write_quorum: self.write_quorum,
            replicate_timeout: self.replicate_timeout,
            commit_timeout: self.commit_timeout,
            call_timeout: self.client.call_timeout,
            dedup_window: self.dedup_window,
            rules: common::safety::Rules::ALL,
        }
    }

    /// How many replicas the cluster has, this one included.
    pub fn replicas(&self) -> usize {
        self.peers.len() + 1
    }
}
