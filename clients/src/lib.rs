//! Typed clients of the cluster's services, for the services themselves, the front end and
//! the tools: [`catalog`] (lookups, trades, the leadership record and its subscription),
//! [`ReplicaClient`] (one order replica), [`peers`] (every peer of a replica or a front end
//! behind one call), and [`election`] (electing the order leader through the catalog's
//! record). Nothing here reads a disk: the front end links these without the replica's log
//! or the catalog's store.

pub mod catalog;
pub mod election;
pub mod peers;

pub use catalog::{Applied, CatalogClient, LeadershipOutcome, Reconciled, Subscription};

/// A client of one order replica.
pub type ReplicaClient =
    common::rpc::RpcClient<common::wire::OrderRequest, common::wire::OrderResponse>;
