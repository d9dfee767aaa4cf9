//! The flag and environment conventions: every setting is a clap flag with an environment
//! fallback, and the transport settings every service shares live here once.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::warn;

use crate::frame::DEFAULT_MAX_FRAME_BYTES;
use crate::rpc::ClientConfig;
use crate::server::ServerConfig;
use crate::wire::ReplicaId;
use crate::Error;

/// Internal connections a service serves at once by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Milliseconds a new internal connection has to send its hello by default.
pub const DEFAULT_HELLO_TIMEOUT_MS: u64 = 5_000;
/// Milliseconds an idle internal connection is kept by default.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 30_000;
/// Milliseconds an internal call may take by default.
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = 5_000;
/// Milliseconds between subscription heartbeats by default (three missed: broken).
pub const DEFAULT_HEARTBEAT_MS: u64 = 200;

/// The catalog's address when every service runs on one machine.
pub const DEFAULT_CATALOG_ADDR: &str = "127.0.0.1:7000";
/// Every replica's address when every service runs on one machine.
pub const DEFAULT_ORDER_PEERS: &str = "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003";

/// Where the catalog is: the flag of every process that calls it.
#[derive(Debug, Clone, clap::Args)]
pub struct CatalogAddrArgs {
    /// The catalog's address.
    #[arg(long = "catalog", env = "CATALOG_ADDR", default_value = DEFAULT_CATALOG_ADDR)]
    pub catalog: String,
}

/// Where every order replica is: the flag of every process that calls them (`--peers`;
/// `--order-peers` is the same flag).
#[derive(Debug, Clone, clap::Args)]
pub struct OrderPeersArgs {
    /// Every replica's address: `1=host:port,2=host:port,3=host:port`.
    #[arg(long = "peers", visible_alias = "order-peers", env = "ORDER_PEERS",
          default_value = DEFAULT_ORDER_PEERS, value_parser = parse_peers)]
    pub peers: BTreeMap<ReplicaId, String>,
}

/// The cluster token: the flag of every process that speaks to an internal port.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// Shared secret every internal connection's hello must carry (16 to 1024 visible ASCII
    /// characters). Unset means none, which is allowed only on loopback addresses.
    #[arg(long, env = "BAZAAR_CLUSTER_TOKEN", hide_env_values = true,
          value_parser = parse_token)]
    pub cluster_token: Option<String>,
}

/// Parses `1=host:port,2=host:port`: at least one replica, each id once.
pub fn parse_peers(text: &str) -> Result<BTreeMap<ReplicaId, String>, String> {
    let mut peers = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("peer {part:?} is not id=host:port"))?;
        let id: ReplicaId = id
            .trim()
            .parse()
            .map_err(|_| format!("peer id {id:?} is not a number"))?;
        if peers.insert(id, addr.trim().to_owned()).is_some() {
            return Err(format!("peer {id} listed twice"));
        }
    }
    if peers.is_empty() {
        return Err("no replica is named".into());
    }
    Ok(peers)
}

/// The address a process on the same host dials to reach a service listening on `listen`:
/// loopback in place of an any-address (`0.0.0.0`, `[::]`), anything else as given.
pub fn local_dial(listen: &str) -> String {
    match listen.parse::<SocketAddr>() {
        Ok(addr) if addr.ip().is_unspecified() => {
            let loopback: IpAddr = if addr.is_ipv4() {
                Ipv4Addr::LOCALHOST.into()
            } else {
                Ipv6Addr::LOCALHOST.into()
            };
            SocketAddr::new(loopback, addr.port()).to_string()
        }
        _ => listen.to_owned(),
    }
}

/// Transport settings shared by every service; `#[command(flatten)]` them into a service's
/// flags.
#[derive(Debug, Clone, clap::Args)]
pub struct TransportArgs {
    /// Largest internal frame accepted or sent, in bytes.
    #[arg(long, env = "BAZAAR_MAX_FRAME_BYTES", default_value_t = DEFAULT_MAX_FRAME_BYTES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(64..=(1 << 30)))]
    pub max_frame_bytes: usize,

    /// The cluster token.
    #[command(flatten)]
    pub token: TokenArgs,

    /// Internal connections this process serves at once.
    #[arg(long, env = "BAZAAR_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65_536))]
    pub max_connections: usize,

    /// Milliseconds a new internal connection has to send its hello.
    #[arg(long, env = "BAZAAR_HELLO_TIMEOUT_MS", default_value_t = DEFAULT_HELLO_TIMEOUT_MS)]
    pub hello_timeout_ms: u64,

    /// Milliseconds an internal connection may stay silent, with no request in flight,
    /// before the server closes it. Subscriptions are held to heartbeats instead. Clients
    /// drop their own idle connections after half of it, so that a call never races the
    /// server's close.
    #[arg(long, env = "BAZAAR_PEER_IDLE_TIMEOUT_MS", default_value_t = DEFAULT_IDLE_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub peer_idle_timeout_ms: u64,

    /// Threads serving requests; 1 runs everything on one thread, which measured fastest on
    /// a 2-core machine shared with its clients.
    #[arg(long, env = "BAZAAR_WORKER_THREADS", default_value_t = 1,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
    pub worker_threads: usize,

    /// Milliseconds an internal call may take, dialing included.
    #[arg(long, env = "BAZAAR_CALL_TIMEOUT_MS", default_value_t = DEFAULT_CALL_TIMEOUT_MS)]
    pub call_timeout_ms: u64,

    /// Milliseconds between heartbeats on a subscription, both ways: the catalog to its
    /// subscribers and each subscriber to the catalog. A side that hears nothing for three of
    /// them treats the stream as broken.
    #[arg(long, env = "BAZAAR_HEARTBEAT_MS", default_value_t = DEFAULT_HEARTBEAT_MS,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub heartbeat_ms: u64,
}

impl TransportArgs {
    /// Server settings for the named service.
    pub fn server_config(&self, service: &str) -> ServerConfig {
        ServerConfig {
            max_frame_bytes: self.max_frame_bytes,
            max_connections: self.max_connections,
            cluster_token: self.token.cluster_token.clone(),
            hello_timeout: Duration::from_millis(self.hello_timeout_ms),
            idle_timeout: self.idle_timeout(),
            silence_limit: self.heartbeat() * 3,
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
            cluster_token: self.token.cluster_token.clone(),
            call_timeout: Duration::from_millis(self.call_timeout_ms),
            heartbeat: self.heartbeat(),
            idle_timeout: self.idle_timeout(),
            ..ClientConfig::new(peer_name)
        }
    }

    /// How long a connection may stay idle before its server closes it.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.peer_idle_timeout_ms)
    }

    /// Binds the internal listener at `addr`. Refuses an address other processes can reach
    /// from another host (anything but loopback) unless a cluster token is set, so that no
    /// internal port is ever open to the network without one.
    pub async fn bind_internal(&self, addr: &str) -> Result<TcpListener, Error> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        if self.token.cluster_token.is_none() && !local.ip().is_loopback() {
            return Err(Error::Refused(format!(
                "refusing to listen on {local} without a cluster token: any host that reaches \
                 it could trade and rewrite the order log. Set the same random secret on every \
                 service with BAZAAR_CLUSTER_TOKEN (or --cluster-token), e.g. the output of \
                 `openssl rand -hex 32`; run.sh does this for you"
            )));
        }
        if self.token.cluster_token.is_none() {
            warn!(%local, "no cluster token: any local process may call this service");
        }
        Ok(listener)
    }
}

/// Shortest cluster token accepted.
pub const MIN_TOKEN_LEN: usize = 16;
/// Longest cluster token accepted.
pub const MAX_TOKEN_LEN: usize = 1024;

/// Accepts a cluster token of [`MIN_TOKEN_LEN`] to [`MAX_TOKEN_LEN`] visible ASCII characters.
pub fn parse_token(text: &str) -> Result<String, String> {
    if !(MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&text.len()) {
        return Err(format!(
            "a cluster token has {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN} characters (this one has {}); \
             make one with `openssl rand -hex 32`",
            text.len()
        ));
    }
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "a cluster token is visible ASCII only (no spaces or control characters)".into(),
        );
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn a_service_on_every_address_is_dialed_on_loopback() {
        assert_eq!(local_dial("0.0.0.0:7000"), "127.0.0.1:7000");
        assert_eq!(local_dial("[::]:8080"), "[::1]:8080");
        assert_eq!(local_dial("10.0.0.5:7001"), "10.0.0.5:7001");
        assert_eq!(local_dial("catalog:7000"), "catalog:7000");
    }

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        transport: TransportArgs,
    }

    fn flags(args: &[&str]) -> Result<TransportArgs, clap::Error> {
        Flags::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
            .map(|f| f.transport)
    }

    #[test]
    fn peers_parse_and_errors_are_clear() {
        let peers = parse_peers("1=127.0.0.1:7001, 2=h:2").unwrap();
        assert_eq!(peers[&1], "127.0.0.1:7001");
        assert_eq!(peers[&2], "h:2");
        assert!(parse_peers("1=a,1=b").unwrap_err().contains("twice"));
        assert!(parse_peers("x=a").is_err());
        assert!(parse_peers("1:a").is_err());
        assert!(parse_peers("").is_err());
        assert_eq!(parse_peers(DEFAULT_ORDER_PEERS).unwrap().len(), 3);
    }

    #[test]
    fn tokens_too_short_long_or_invisible_are_refused() {
        assert!(flags(&["--cluster-token", "short"]).is_err());
        assert!(flags(&["--cluster-token", &"x".repeat(MAX_TOKEN_LEN + 1)]).is_err());
        assert!(flags(&["--cluster-token", "0123456789abcdef 0123"]).is_err());
        let ok = flags(&["--cluster-token", "0123456789abcdef"]).unwrap();
        assert_eq!(ok.token.cluster_token.as_deref(), Some("0123456789abcdef"));
    }

    #[tokio::test]
    async fn beyond_loopback_only_with_a_token() {
        let open = flags(&[]).unwrap();
        assert!(open.bind_internal("127.0.0.1:0").await.is_ok());
        let refused = open.bind_internal("0.0.0.0:0").await.unwrap_err();
        assert!(
            refused.to_string().contains("BAZAAR_CLUSTER_TOKEN"),
            "{refused}"
        );
        let closed = flags(&["--cluster-token", "0123456789abcdef"]).unwrap();
        assert!(closed.bind_internal("0.0.0.0:0").await.is_ok());
    }
}
