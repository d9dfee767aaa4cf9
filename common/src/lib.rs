//! Everything the Stock Bazaar services share: the wire types, the framed transport with its
//! hello exchange, the multiplexed RPC client, the generic request server, and the flag and
//! logging conventions.

pub mod config;
pub mod engine;
pub mod error;
pub mod files;
pub mod frame;
pub mod group_commit;
pub mod health;
pub mod metrics;
pub mod rpc;
pub mod runtime;
pub mod safety;
pub mod server;
pub mod shutdown;
pub mod storage;
pub mod sync;
pub mod telemetry;
pub mod window;
pub mod wire;

pub use error::Error;
