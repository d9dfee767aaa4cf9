//! The protocol the Stock Bazaar services share: the wire types, the framed transport with
//! its hello exchange, the multiplexed RPC client, the generic request server, the flag and
//! logging conventions, and the metrics port. What makes state durable is the `durability`
//! crate's.

pub mod config;
pub mod engine;
pub mod error;
pub mod frame;
pub mod health;
pub mod history;
pub mod metrics;
pub mod rpc;
pub mod runtime;
pub mod safety;
pub mod server;
pub mod shutdown;
pub mod sync;
pub mod telemetry;
pub mod trade;
pub mod wire;

pub use error::Error;
