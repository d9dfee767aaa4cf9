//! The catalog service: owns every stock's price, quantity and traded volume, durably, applies
//! each trade once per request id and only from the recorded leader's epoch, keeps the
//! cluster's leadership record, and pushes invalidations and leadership changes to
//! subscribers.
//!
//! Seams: [`book`] is the state machine of the stocks (no I/O), [`leadership`] the record's
//! rules (no I/O), [`engine`] every decision of the catalog as a state machine (no I/O),
//! [`store`] the files and the group-commit writer, [`service`] the runtime that executes the
//! engine's commands and the server loop, [`client`] the typed client other services use.

pub mod book;
pub mod config;
pub mod engine;
pub mod leadership;
pub mod metrics;
pub mod service;
pub mod store;

pub use config::CatalogConfig;
pub use service::{run, run_with_metrics};

/// What can go wrong in the catalog.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The seed file is missing or malformed.
    #[error("seed catalog: {0}")]
    Seed(String),
    /// The state files are damaged beyond a torn log tail.
    #[error("state is corrupt: {0}")]
    Corrupt(String),
    /// Another catalog process holds the state directory.
    #[error("state directory {0} is in use by another catalog")]
    Locked(String),
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
