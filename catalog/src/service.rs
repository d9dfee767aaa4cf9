//! The catalog's request handlers and its `run` entry point: lookups that only show durable
//! state, exactly-once trades answered after their group commit, and the invalidation stream.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::server::{self, Push, RequestContext, Service};
use common::sync::lock;
use common::wire::{CatalogRequest, CatalogResponse, RemoteError, Reply, StockName, TradeRequest};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::book::{Book, Decision, TradeRecord};
use crate::store::{LogEvent, LogWriter, Store};
use crate::{CatalogConfig, Error};

/// Longest a request waits for its record to reach the disk before answering `Unavailable`.
const DURABILITY_TIMEOUT: Duration = Duration::from_secs(30);

/// Front ends subscribed to invalidations.
type Subscribers = Arc<Mutex<Vec<Push>>>;

/// How far the log is known to be on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Durable {
    /// Every record up to this sequence number is fsynced.
    seq: u64,
    /// Set when writing failed; nothing after `seq` will ever become durable.
    failed: Option<String>,
}

struct CatalogService {
    book: Arc<Mutex<Book>>,
    /// The group-commit queue; taken at shutdown so the writer drains and stops.
    log: Mutex<Option<LogWriter>>,
    durable: watch::Receiver<Durable>,
    subscribers: Subscribers,
}

impl CatalogService {
    async fn lookup(&self, name: StockName) -> Reply<CatalogResponse> {
        let (quote, seq) = match lock(&self.book).stock(&name) {
            Some(stock) => (stock.quote(), stock.last_seq),
            None => return Ok(CatalogResponse::NotFound),
        };
        // Never show a change that a crash could still take back.
        self.wait_durable(seq).await?;
        Ok(CatalogResponse::Stock(quote))
    }

    async fn trade(&self, request: TradeRequest) -> Reply<CatalogResponse> {
        let (seq, receipt) = {
            let mut book = lock(&self.book);
            match book.trade(&request) {
                Decision::Rejected(rejection) => {
                    debug!(request_id = %request.request_id, %rejection, "trade refused");
                    return Ok(CatalogResponse::Rejected(rejection));
                }
                Decision::Repeated { seq, receipt } => {
                    debug!(request_id = %request.request_id, seq, "repeated trade request");
                    (seq, receipt)
                }
                Decision::Applied(record) => {
                    let answer = (record.seq, record.after.clone());
                    // Queued under the book's lock, so the log's order is the book's order.
                    let queued = lock(&self.log)
                        .as_ref()
                        .is_some_and(|log| log.append(record).is_ok());
                    if !queued {
                        return Err(RemoteError::unavailable("catalog is shutting down"));
                    }
                    answer
                }
            }
        };
        self.wait_durable(seq).await?;
        Ok(CatalogResponse::Traded(receipt))
    }

    fn subscribe(&self, context: &RequestContext) -> Reply<CatalogResponse> {
        lock(&self.subscribers).push(context.push());
        info!(peer = %context.peer, "invalidation subscriber added");
        Ok(CatalogResponse::Subscribed)
    }

    async fn wait_durable(&self, seq: u64) -> Result<(), RemoteError> {
        let reached = |d: &Durable| d.seq >= seq || d.failed.is_some();
        let mut durable = self.durable.clone();
        let state = if reached(&durable.borrow()) {
            durable.borrow().clone()
        } else {
            match tokio::time::timeout(DURABILITY_TIMEOUT, durable.wait_for(reached)).await {
                Ok(Ok(state)) => state.clone(),
                Ok(Err(_)) => return Err(RemoteError::unavailable("catalog log writer stopped")),
                Err(_) => return Err(RemoteError::unavailable("catalog log is not keeping up")),
            }
        };
        if state.seq >= seq {
            Ok(())
        } else {
            Err(RemoteError::unavailable(format!(
                "catalog storage failed: {}",
                state.failed.unwrap_or_default()
            )))
        }
    }
}

impl Service for CatalogService {
    type Request = CatalogRequest;
    type Response = CatalogResponse;

    async fn call(
        &self,
        request: CatalogRequest,
        context: RequestContext,
    ) -> Reply<CatalogResponse> {
        match request {
            CatalogRequest::Lookup { name } => self.lookup(name).await,
            CatalogRequest::Trade(trade) => self.trade(trade).await,
            CatalogRequest::Subscribe => self.subscribe(&context),
        }
    }
}

/// Pushes an invalidation for every record of a durable batch to every subscriber, dropping
/// the ones that are gone or too slow.
fn notify(subscribers: &Mutex<Vec<Push>>, batch: &[TradeRecord]) {
    let mut subscribers = lock(subscribers);
    if subscribers.is_empty() {
        return;
    }
    for record in batch {
        let message = CatalogResponse::Invalidate {
            name: record.name.clone(),
            version: record.after.version,
        };
        subscribers.retain(|push| push.send(&message));
        debug!(stock = %record.name, version = record.after.version, "invalidation pushed");
    }
}

/// Recovers the state in `config.state_dir` (seeding it on first start), serves catalog
/// requests on `listener` until `shutdown` fires, then finishes the requests in flight,
/// flushes the log, writes a snapshot and returns.
pub async fn run(
    listener: TcpListener,
    config: CatalogConfig,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let (state_dir, seed, window) = (
        config.state_dir.clone(),
        config.seed.clone(),
        config.dedup_window,
    );
    let (store, book) = tokio::task::spawn_blocking(move || Store::open(&state_dir, &seed, window))
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))??;
    let last_seq = book.last_seq();
    let book = Arc::new(Mutex::new(book));
    let (durable_sender, durable) = watch::channel(Durable {
        seq: last_seq,
        failed: None,
    });
    let subscribers: Subscribers = Arc::default();
    let (events, mut event_stream) = tokio::sync::mpsc::unbounded_channel();
    let (log, writer) = store.start(events)?;
    let service = Arc::new(CatalogService {
        book,
        log: Mutex::new(Some(log)),
        durable,
        subscribers,
    });
    // The commit thread wakes this one task per group commit; the trades waiting on the
    // commit are then woken from inside the runtime, which is far cheaper than a cross-thread
    // wake-up per trade. It ends when the commit thread does.
    let relay = tokio::spawn({
        let service = service.clone();
        let mut since_snapshot = 0u64;
        let snapshot_every = config.snapshot_every;
        async move {
            while let Some(event) = event_stream.recv().await {
                match event {
                    LogEvent::Durable(batch) => {
                        // Invalidations go out before any trade of the batch is answered.
                        notify(&service.subscribers, &batch);
                        if let Some(last) = batch.last() {
                            durable_sender.send_modify(|d| d.seq = d.seq.max(last.seq));
                        }
                        since_snapshot += batch.len() as u64;
                        if since_snapshot >= snapshot_every {
                            since_snapshot = 0;
                            if let Some(log) = lock(&service.log).as_ref() {
                                let _ = log.snapshot(service.book.clone());
                            }
                        }
                    }
                    LogEvent::Failed(reason) => {
                        durable_sender.send_modify(|d| d.failed = Some(reason));
                    }
                }
            }
        }
    });
    info!(addr = %listener.local_addr()?, state = %config.state_dir.display(), "catalog serving");
    server::serve(listener, service.clone(), config.server.clone(), shutdown).await;

    if let Some(log) = lock(&service.log).take() {
        // A final snapshot, so the next start replays nothing.
        let _ = log.snapshot(service.book.clone());
    }
    let joined = tokio::task::spawn_blocking(move || writer.join()).await;
    if !matches!(joined, Ok(Ok(()))) {
        warn!("log writer did not stop cleanly");
    }
    let _ = relay.await;
    info!("catalog stopped");
    Ok(())
}
