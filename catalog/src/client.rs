//! The typed catalog client that the order service and the front end use, over the shared
//! multiplexed RPC client.

use common::rpc::{ClientConfig, RpcClient};
use common::wire::{
    CatalogRequest, CatalogResponse, StockName, StockQuote, TradeReceipt, TradeRejection,
    TradeRequest,
};
use common::Error;
use tokio::sync::mpsc;

/// A client of one catalog; clones share its connection.
#[derive(Clone)]
pub struct CatalogClient {
    rpc: RpcClient<CatalogRequest, CatalogResponse>,
}

fn unexpected(answer: CatalogResponse) -> Error {
    Error::Protocol(format!("unexpected catalog answer {answer:?}"))
}

impl CatalogClient {
    /// A client of the catalog at `addr`.
    pub fn new(addr: impl Into<String>, config: ClientConfig) -> Self {
        CatalogClient {
            rpc: RpcClient::new(addr, config),
        }
    }

    /// The stock named `name`, or `None` when there is none.
    pub async fn lookup(&self, name: &StockName) -> Result<Option<StockQuote>, Error> {
        match self
            .rpc
            .call(&CatalogRequest::Lookup { name: name.clone() })
            .await?
        {
            CatalogResponse::Stock(quote) => Ok(Some(quote)),
            CatalogResponse::NotFound => Ok(None),
            other => Err(unexpected(other)),
        }
    }

    /// Applies `trade` (once per request id): the receipt, or why it was refused.
    pub async fn trade(
        &self,
        trade: &TradeRequest,
    ) -> Result<Result<TradeReceipt, TradeRejection>, Error> {
        match self.rpc.call(&CatalogRequest::Trade(trade.clone())).await? {
            CatalogResponse::Traded(receipt) => Ok(Ok(receipt)),
            CatalogResponse::Rejected(rejection) => Ok(Err(rejection)),
            other => Err(unexpected(other)),
        }
    }

    /// Opens the invalidation stream. Its items are `Subscribed` (once, possibly after the
    /// first invalidations) and `Invalidate`; it ends when the connection breaks or the reader
    /// falls `capacity` behind, and the caller must then treat its cache as stale.
    pub async fn subscribe(&self, capacity: usize) -> Result<Invalidations, Error> {
        let (first, rest) = self
            .rpc
            .subscribe(&CatalogRequest::Subscribe, capacity)
            .await?;
        Ok(Invalidations {
            first: Some(first),
            rest,
        })
    }
}

/// The catalog's invalidation stream for one subscriber.
pub struct Invalidations {
    first: Option<CatalogResponse>,
    rest: mpsc::Receiver<Result<CatalogResponse, Error>>,
}

impl Invalidations {
    /// The next message, or `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Result<CatalogResponse, Error>> {
        match self.first.take() {
            Some(first) => Some(Ok(first)),
            None => self.rest.recv().await,
        }
    }
}
