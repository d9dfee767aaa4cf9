//! The order service: three replicas keep one history of trades. The leader (named by the
//! catalog's leadership record for an epoch) trades through the catalog with the request's id
//! and its epoch, numbers the order, records it durably and replicates it, and acknowledges
//! it once every in-sync replica holds it; followers persist what the leader sends and catch
//! up with `SyncUp` after a restart or a gap.
//!
//! Seams: [`engine`] is the protocol as a state machine without I/O (term changes, the
//! leader's path, the follower's catch-up, each in its own file), [`replication`] its pure
//! decisions, [`log`] the storage (append, cut, read), [`runtime`] the only code that does
//! I/O (it executes the engine's commands on tokio, the log and the network), [`election`]
//! who may lead (shared with the front end), [`audit`] the consistency check across replicas
//! and the catalog.

pub mod audit;
pub mod config;
pub mod engine;
pub mod log;
pub mod metrics;
pub mod replication;
pub mod runtime;

pub use config::ReplicaConfig;
pub use replication::WriteQuorum;
pub use runtime::{run, run_with_metrics};

/// What can go wrong in an order replica.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state files are damaged beyond a torn last line.
    #[error("order log is corrupt: {0}")]
    Corrupt(String),
    /// Another replica process holds the state directory.
    #[error("state directory {0} is in use by another replica")]
    Locked(String),
    /// A setting is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
