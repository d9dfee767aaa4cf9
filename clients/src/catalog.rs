//! The typed catalog client that the order service and the front end use, over the shared
//! multiplexed RPC client.

use std::time::Duration;

use common::rpc::{ClientConfig, RpcClient};
use common::wire::{
    ApplyItem, ApplyOutcome, ApplyStop, CatalogRequest, CatalogResponse, Epoch, Leadership,
    LeadershipChange, LogEnd, LogPosition, OrderEntry, StockLevel, StockName, StockQuote,
    TransactionNumber, MAX_BATCH,
};
use common::Error;
use tokio::sync::mpsc;

/// A client of one catalog; clones share its connection.
#[derive(Clone)]
pub struct CatalogClient {
    rpc: RpcClient<CatalogRequest, CatalogResponse>,
    silence_limit: Duration,
}

fn unexpected(answer: CatalogResponse) -> Error {
    Error::Protocol(format!("unexpected catalog answer {answer:?}"))
}

/// A lookup's answer as a quote, or `None` for a stock the catalog does not have.
fn quote(answer: CatalogResponse) -> Result<Option<StockQuote>, Error> {
    match answer {
        CatalogResponse::Stock(quote) => Ok(Some(quote)),
        CatalogResponse::NotFound => Ok(None),
        other => Err(unexpected(other)),
    }
}

/// The catalog's answer to an `Apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// One outcome per item up to the first that did not come out as the leader decided, and
    /// why that one did not.
    Done {
        /// In the items' order.
        outcomes: Vec<ApplyOutcome>,
        /// Why the item after the last outcome did not come out as decided, if one did not.
        stop: Option<ApplyStop>,
        /// The number the catalog's next trade gets.
        next: TransactionNumber,
    },
    /// Refused because the sender's epoch is not the recorded one; nothing changed.
    Fenced {
        /// The record as the catalog holds it.
        current: Leadership,
    },
}

/// The answer to a compare-and-set of the leadership record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeadershipOutcome {
    /// The change is recorded; this is the new record.
    Changed(Leadership),
    /// Someone changed the record first, or the rules refuse the change: the record as it is.
    Refused {
        /// The record now.
        current: Leadership,
        /// Why.
        reason: String,
    },
}

/// Where the catalog's history meets a leader's log, for the leader's reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// The life of the catalog that answered.
    pub incarnation: u64,
    /// The newest position both hold.
    pub meet: Option<LogPosition>,
    /// The number the catalog's next trade gets.
    pub next: TransactionNumber,
    /// The catalog's trades after `meet`, oldest first.
    pub trades: Vec<OrderEntry>,
    /// False when trades right after `meet` are no longer remembered.
    pub complete: bool,
}

impl CatalogClient {
    /// A client of the catalog at `addr`.
    pub fn new(addr: impl Into<String>, config: ClientConfig) -> Self {
        CatalogClient {
            silence_limit: config.silence_limit(),
            rpc: RpcClient::new(addr, config),
        }
    }

    /// Sends any catalog request and returns the catalog's answer as it is, waiting at most
    /// `timeout`.
    pub async fn call_within(
        &self,
        request: &CatalogRequest,
        timeout: Duration,
    ) -> Result<CatalogResponse, Error> {
        self.rpc.call_within(request, timeout).await
    }

    /// The stock named `name`, or `None` when there is none.
    pub async fn lookup(&self, name: &StockName) -> Result<Option<StockQuote>, Error> {
        quote(
            self.rpc
                .call(&CatalogRequest::Lookup { name: name.clone() })
                .await?,
        )
    }

    /// As [`CatalogClient::lookup`], waiting at most `timeout`.
    pub async fn lookup_within(
        &self,
        name: &StockName,
        timeout: Duration,
    ) -> Result<Option<StockQuote>, Error> {
        let request = CatalogRequest::Lookup { name: name.clone() };
        quote(self.rpc.call_within(&request, timeout).await?)
    }

    /// As the leader of `epoch`: applies `items` in order (at most [`MAX_BATCH`]), telling
    /// where its log ends.
    pub async fn apply(
        &self,
        epoch: Epoch,
        items: &[ApplyItem],
        log: Option<LogEnd>,
    ) -> Result<Applied, Error> {
        if items.len() > MAX_BATCH {
            return Err(Error::Protocol(format!(
                "at most {MAX_BATCH} items per request"
            )));
        }
        let request = CatalogRequest::Apply {
            epoch,
            items: items.to_vec(),
            log,
        };
        match self.rpc.call(&request).await? {
            CatalogResponse::Applied {
                outcomes,
                stop,
                next,
                ..
            } => Ok(Applied::Done {
                outcomes,
                stop,
                next,
            }),
            CatalogResponse::Fenced { current, .. } => Ok(Applied::Fenced { current }),
            other => Err(unexpected(other)),
        }
    }

    /// As the leader of `epoch`: every stock's level and the number of the catalog's next
    /// trade they are the levels before, or the record when `epoch` does not lead.
    pub async fn levels(
        &self,
        epoch: Epoch,
    ) -> Result<Result<(TransactionNumber, Vec<StockLevel>), Leadership>, Error> {
        let mut all: Vec<StockLevel> = Vec::new();
        loop {
            let request = CatalogRequest::Levels {
                epoch,
                after: all.last().map(|l| l.name.clone()),
            };
            match self.rpc.call(&request).await? {
                CatalogResponse::Levels {
                    next, levels, more, ..
                } => {
                    all.extend(levels);
                    if !more {
                        return Ok(Ok((next, all)));
                    }
                }
                CatalogResponse::Fenced { current, .. } => return Ok(Err(current)),
                other => return Err(unexpected(other)),
            }
        }
    }

    /// The durable leadership record, waiting at most `timeout`.
    pub async fn leadership(&self, timeout: Duration) -> Result<Leadership, Error> {
        match self
            .rpc
            .call_within(&CatalogRequest::ReadLeadership, timeout)
            .await?
        {
            CatalogResponse::Leadership(record) => Ok(record),
            other => Err(unexpected(other)),
        }
    }

    /// Changes the leadership record if its epoch is still `expected`, waiting at most
    /// `timeout`.
    pub async fn change_leadership(
        &self,
        expected: Epoch,
        change: LeadershipChange,
        timeout: Duration,
    ) -> Result<LeadershipOutcome, Error> {
        let request = CatalogRequest::ChangeLeadership { expected, change };
        match self.rpc.call_within(&request, timeout).await? {
            CatalogResponse::Leadership(record) => Ok(LeadershipOutcome::Changed(record)),
            CatalogResponse::Fenced { current, reason } => {
                Ok(LeadershipOutcome::Refused { current, reason })
            }
            other => Err(unexpected(other)),
        }
    }

    /// Leader of `epoch`: says whether it can serve (renewing its lease) and learns where its
    /// log (the last entry of each epoch in it: `known`) meets the catalog's history, with up
    /// to `max` of the catalog's trades after that point, telling where its log ends.
    /// `Ok(Err(record))` when `epoch` no longer leads.
    pub async fn reconcile(
        &self,
        epoch: Epoch,
        known: &[LogPosition],
        max: u32,
        serving: bool,
        log: Option<LogEnd>,
    ) -> Result<Result<Reconciled, Leadership>, Error> {
        let request = CatalogRequest::Reconcile {
            epoch,
            known: known.to_vec(),
            max,
            serving,
            log,
        };
        match self.rpc.call(&request).await? {
            CatalogResponse::Reconciled {
                incarnation,
                meet,
                next,
                trades,
                complete,
            } => Ok(Ok(Reconciled {
                incarnation,
                meet,
                next,
                trades,
                complete,
            })),
            CatalogResponse::Fenced { current, .. } => Ok(Err(current)),
            other => Err(unexpected(other)),
        }
    }

    /// Opens the subscription stream: the leadership record as it is now, then every change
    /// of it, heartbeats and, when `invalidations`, every stock invalidation. It ends when the
    /// connection breaks, the reader falls `capacity` behind, or the catalog stays silent
    /// longer than three heartbeats; the caller must then treat what it learnt as stale.
    pub async fn subscribe(
        &self,
        invalidations: bool,
        capacity: usize,
    ) -> Result<(Leadership, Subscription), Error> {
        let (first, rest) = self
            .rpc
            .subscribe(&CatalogRequest::Subscribe { invalidations }, capacity)
            .await?;
        let mut stream = Subscription {
            first: Some(first),
            rest,
            silence_limit: self.silence_limit,
        };
        // The answer may come after pushes queued as the stream was registered; a record
        // pushed then is newer than the one in the answer.
        let mut pushed: Option<Leadership> = None;
        loop {
            match stream.next().await {
                Some(Ok(CatalogResponse::Subscribed(record))) => {
                    let newest = match pushed {
                        Some(pushed) if pushed.epoch >= record.epoch => pushed,
                        _ => record,
                    };
                    return Ok((newest, stream));
                }
                Some(Ok(CatalogResponse::Leadership(record))) => pushed = Some(record),
                Some(Ok(
                    CatalogResponse::Heartbeat { .. } | CatalogResponse::Invalidate { .. },
                )) => {}
                Some(Ok(other)) => return Err(unexpected(other)),
                Some(Err(e)) => return Err(e),
                None => return Err(Error::Unavailable("subscription ended".into())),
            }
        }
    }
}

/// The catalog's subscription stream for one subscriber.
pub struct Subscription {
    first: Option<CatalogResponse>,
    rest: mpsc::Receiver<Result<CatalogResponse, Error>>,
    silence_limit: Duration,
}

impl Subscription {
    /// The next message, `Some(Err)` when the catalog stayed silent past the limit, or `None`
    /// once the stream has ended.
    pub async fn next(&mut self) -> Option<Result<CatalogResponse, Error>> {
        if let Some(first) = self.first.take() {
            return Some(Ok(first));
        }
        match tokio::time::timeout(self.silence_limit, self.rest.recv()).await {
            Ok(message) => message,
            Err(_) => Some(Err(Error::TimedOut(self.silence_limit))),
        }
    }
}
