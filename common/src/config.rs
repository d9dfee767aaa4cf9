//! The flag and environment conventions: every setting is a clap flag with an environment
//! fallback, and the transport settings every service shares live here once.

use std::time::Duration;

use crate::frame::DEFAULT_MAX_FRAME_BYTES;
use crate::rpc::ClientConfig;
use crate::server::ServerConfig;

/// Transport settings shared by every service; `#[command(flatten)]` them into a service's
/// flags.
#[derive(Debug, Clone, clap::Args)]
pub struct TransportArgs {
    /// Largest internal frame accepted or sent, in bytes.
    #[arg(long, env = "BAZAAR_MAX_FRAME_BYTES", default_value_t = DEFAULT_MAX_FRAME_BYTES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(64..=(1 << 30)))]
    pub max_frame_bytes: usize,

    /// Shared secret every internal connection's hello must carry; unset means none.
    #[arg(long, env = "BAZAAR_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: Option<String>,

    /// Internal connections this process serves at once.
    #[arg(long, env = "BAZAAR_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65_536))]
    pub max_connections: usize,

    /// Milliseconds a new internal connection has to send its hello.
    #[arg(long, env = "BAZAAR_HELLO_TIMEOUT_MS", default_value_t = 5_000)]
    pub hello_timeout_ms: u64,

    /// Threads serving requests; 1 runs everything on one thread, which measured fastest on
    /// a 2-core machine shared with its clients.
    #[arg(long, env = "BAZAAR_WORKER_THREADS", default_value_t = 1,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
    pub worker_threads: usize,

    /// Milliseconds an internal call may take, dialing included.
    #[arg(long, env = "BAZAAR_CALL_TIMEOUT_MS", default_value_t = 5_000)]
    pub call_timeout_ms: u64,

    /// Milliseconds between the catalog's heartbeats on a subscription; a subscriber that
    /// hears nothing for three of them treats the stream as broken.
    #[arg(long, env = "BAZAAR_HEARTBEAT_MS", default_value_t = 200,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub heartbeat_ms: u64,
}

impl TransportArgs {
    /// Server settings for the named service.
    pub fn server_config(&self, service: &str) -> ServerConfig {
        ServerConfig {
            max_frame_bytes: self.max_frame_bytes,
            max_connections: self.max_connections,
            cluster_token: self.cluster_token.clone(),
            hello_timeout: Duration::from_millis(self.hello_timeout_ms),
            ..ServerConfig::new(service)
        }
    }

    /// The heartbeat interval of subscriptions.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// Client settings for a process that introduces itself as `peer_name`.
    pub fn client_config(&self, peer_name: &str) -> ClientConfig {
        ClientConfig {
            max_frame_bytes: self.max_frame_bytes,
            cluster_token: self.cluster_token.clone(),
            call_timeout: Duration::from_millis(self.call_timeout_ms),
            heartbeat: self.heartbeat(),
            ..ClientConfig::new(peer_name)
        }
    }
}
