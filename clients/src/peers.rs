//! The clients an engine's calls go out on: one to each other replica and one to the
//! catalog, behind one `call` that maps a [`Peer`] and a request to the right client.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::CatalogClient;
use common::engine::{Answer, CallError, CallResult, Peer};
use common::rpc::ClientConfig;
use common::wire::{CatalogRequest, OrderRequest, ReplicaId};

use crate::ReplicaClient;

/// A request to one of the [`Peers`].
#[derive(Debug, Clone, Copy)]
pub enum PeerRequest<'a> {
    /// To a replica.
    Order(&'a OrderRequest),
    /// To the catalog.
    Catalog(&'a CatalogRequest),
}

/// The replicas and the catalog, as an engine calls them.
pub struct Peers {
    replicas: BTreeMap<ReplicaId, ReplicaClient>,
    catalog: CatalogClient,
}

impl Peers {
    /// Clients of the replicas at `replicas` and of `catalog`.
    pub fn new(
        replicas: &BTreeMap<ReplicaId, String>,
        catalog: CatalogClient,
        config: &ClientConfig,
    ) -> Self {
        Peers {
            replicas: replicas
                .iter()
                .map(|(&id, addr)| (id, ReplicaClient::new(addr.clone(), config.clone())))
                .collect(),
            catalog,
        }
    }

    /// The catalog's client.
    pub fn catalog(&self) -> &CatalogClient {
        &self.catalog
    }

    /// The replicas' ids, ascending.
    pub fn replica_ids(&self) -> Vec<ReplicaId> {
        self.replicas.keys().copied().collect()
    }

    /// Sends `request` to `to` and waits at most `timeout` for its answer.
    pub async fn call(&self, to: Peer, request: PeerRequest<'_>, timeout: Duration) -> CallResult {
        let answer = match (to, request) {
            (Peer::Replica(id), PeerRequest::Order(request)) => match self.replicas.get(&id) {
                Some(replica) => replica
                    .call_within(request, timeout)
                    .await
                    .map(Answer::Order),
                None => return Err(CallError::Failed(format!("replica {id} is not configured"))),
            },
            (Peer::Catalog, PeerRequest::Catalog(request)) => self
                .catalog
                .call_within(request, timeout)
                .await
                .map(Answer::Catalog),
            _ => {
                return Err(CallError::Failed(
                    "request sent to the wrong service".into(),
                ))
            }
        };
        answer.map_err(CallError::from)
    }
}
