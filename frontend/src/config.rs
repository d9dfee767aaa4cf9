//! The front end's settings: flags with environment fallbacks, validated once into
//! [`FrontendConfig`].

use std::collections::BTreeMap;
use std::time::Duration;

use common::config::{CatalogAddrArgs, OrderPeersArgs, TransportArgs};
use common::rpc::ClientConfig;
use common::wire::ReplicaId;

use crate::http::{Limits, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HEAD_BYTES};
use crate::server::{
    HttpConfig, DEFAULT_IDLE_TIMEOUT_MS, DEFAULT_MAX_CONNECTIONS, DEFAULT_REQUEST_TIMEOUT_MS,
};

/// Stocks in the lookup cache by default.
pub const DEFAULT_CACHE_SIZE: usize = 5;
/// Largest quantity of one trade by default.
pub const DEFAULT_MAX_TRADE: u64 = 1_000_000;
/// Milliseconds a request is retried across failovers by default.
pub const DEFAULT_FAILOVER_DEADLINE_MS: u64 = 5_000;
/// Milliseconds one attempt at the leader may take by default.
pub const DEFAULT_ATTEMPT_TIMEOUT_MS: u64 = 1_000;
/// Milliseconds between health checks of the leader by default.
pub const DEFAULT_HEALTH_INTERVAL_MS: u64 = 500;

/// Flags of the `frontend` binary.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "frontend",
    about = "Stock Bazaar front end: the public REST API"
)]
pub struct FrontendArgs {
    /// Address to listen on for HTTP.
    #[arg(long, env = "FRONTEND_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// The catalog.
    #[command(flatten)]
    pub catalog: CatalogAddrArgs,

    /// Every order replica.
    #[command(flatten)]
    pub replicas: OrderPeersArgs,

    /// Stocks kept in the lookup cache; 0 turns the cache off.
    #[arg(long, env = "CACHE_SIZE", default_value_t = DEFAULT_CACHE_SIZE)]
    pub cache_size: usize,

    /// Largest quantity one trade may ask for.
    #[arg(long, env = "MAX_TRADE", default_value_t = DEFAULT_MAX_TRADE,
          value_parser = clap::value_parser!(u64).range(1..=(i64::MAX as u64)))]
    pub max_trade: u64,

    /// Milliseconds a trade or order lookup is retried across failovers before 503.
    #[arg(long, env = "FAILOVER_DEADLINE_MS", default_value_t = DEFAULT_FAILOVER_DEADLINE_MS)]
    pub failover_deadline_ms: u64,

    /// Milliseconds one attempt at the order leader (and each call of an election) may take
    /// before the leader is suspected and the request retried elsewhere.
    #[arg(long, env = "ATTEMPT_TIMEOUT_MS", default_value_t = DEFAULT_ATTEMPT_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub attempt_timeout_ms: u64,

    /// Milliseconds between health checks of the order leader.
    #[arg(long, env = "HEALTH_INTERVAL_MS", default_value_t = DEFAULT_HEALTH_INTERVAL_MS,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub health_interval_ms: u64,

    /// HTTP connections served at once.
    #[arg(long, env = "FRONTEND_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_http_connections: usize,

    /// Milliseconds a keep-alive connection may idle before it is closed.
    #[arg(long, env = "FRONTEND_IDLE_TIMEOUT_MS", default_value_t = DEFAULT_IDLE_TIMEOUT_MS)]
    pub idle_timeout_ms: u64,

    /// Milliseconds a client has to send a whole request once begun (else 408).
    #[arg(long, env = "FRONTEND_REQUEST_TIMEOUT_MS", default_value_t = DEFAULT_REQUEST_TIMEOUT_MS)]
    pub request_timeout_ms: u64,

    /// Largest request head, in bytes (431 beyond).
    #[arg(long, env = "FRONTEND_MAX_HEAD_BYTES", default_value_t = DEFAULT_MAX_HEAD_BYTES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(256..=1 << 20))]
    pub max_head_bytes: usize,

    /// Largest request body, in bytes (413 beyond).
    #[arg(long, env = "FRONTEND_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=1 << 20))]
    pub max_body_bytes: usize,

    /// Internal transport settings (to the catalog and the replicas).
    #[command(flatten)]
    pub transport: TransportArgs,
}

/// Everything a front end needs to run.
#[derive(Debug, Clone)]
pub struct FrontendConfig {
    /// The catalog's address.
    pub catalog: String,
    /// The order replicas' addresses.
    pub order_peers: BTreeMap<ReplicaId, String>,
    /// Lookup cache size (0: off).
    pub cache_size: usize,
    /// Per-trade quantity cap.
    pub max_trade: u64,
    /// How long requests are retried across failovers.
    pub failover_deadline: Duration,
    /// How long one attempt at the leader may take.
    pub attempt_timeout: Duration,
    /// How often the leader is checked.
    pub health_interval: Duration,
    /// The HTTP server's limits.
    pub http: HttpConfig,
    /// Internal clients' settings.
    pub client: ClientConfig,
}

impl FrontendConfig {
    /// Defaults for a catalog and replicas, as tests use them.
    pub fn new(catalog: impl Into<String>, order_peers: BTreeMap<ReplicaId, String>) -> Self {
        FrontendConfig {
            catalog: catalog.into(),
            order_peers,
            cache_size: DEFAULT_CACHE_SIZE,
            max_trade: DEFAULT_MAX_TRADE,
            failover_deadline: Duration::from_millis(DEFAULT_FAILOVER_DEADLINE_MS),
            attempt_timeout: Duration::from_millis(DEFAULT_ATTEMPT_TIMEOUT_MS),
            health_interval: Duration::from_millis(DEFAULT_HEALTH_INTERVAL_MS),
            http: HttpConfig::default(),
            client: ClientConfig::new("frontend"),
        }
    }

    /// Validates the flags.
    pub fn from_args(args: &FrontendArgs) -> Result<Self, crate::Error> {
        Ok(FrontendConfig {
            catalog: args.catalog.catalog.clone(),
            order_peers: args.replicas.peers.clone(),
            cache_size: args.cache_size,
            max_trade: args.max_trade,
            failover_deadline: Duration::from_millis(args.failover_deadline_ms),
            attempt_timeout: Duration::from_millis(args.attempt_timeout_ms),
            health_interval: Duration::from_millis(args.health_interval_ms),
            http: HttpConfig {
                limits: Limits {
                    max_head_bytes: args.max_head_bytes,
                    max_body_bytes: args.max_body_bytes,
                    ..Limits::default()
                },
                max_connections: args.max_http_connections,
                idle_timeout: Duration::from_millis(args.idle_timeout_ms),
                request_timeout: Duration::from_millis(args.request_timeout_ms),
                ..HttpConfig::default()
            },
            client: args.transport.client_config("frontend"),
        })
    }
}

#[cfg(test)]
mod flag_tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        // Catches two flags with one name, e.g. a service flag shadowing a transport flag.
        FrontendArgs::command().debug_assert();
    }
}
