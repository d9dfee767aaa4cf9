//! The catalog's request handlers and its `run` entry point: lookups that only show durable
//! state, exactly-once trades fenced by the leader's epoch and answered after their group
//! commit, the leadership record's compare-and-set, and the subscription stream
//! (invalidations, leadership changes, heartbeats).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::server::{self, Push, RequestContext, Service};
use common::storage::{Ended, Recovery};
use common::sync::lock;
use common::wire::{
    CatalogRequest, CatalogResponse, Epoch, Leadership, LeadershipChange, RemoteError, Reply,
    StockName, TradeRequest,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::book::{Book, Decision, TradeRecord};
use crate::store::{LogEvent, LogWriter, Store};
use crate::{CatalogConfig, Error};

/// Longest a request waits for its record to reach the disk before answering `Unavailable`.
const DURABILITY_TIMEOUT: Duration = Duration::from_secs(30);

/// Most applied trades in one `AppliedSince` answer.
const MAX_APPLIED_BATCH: usize = 1_000;

/// The subscribers, and the durable leadership record they were last told of; one lock, so
/// that a new subscriber gets the record and then every later change, in order.
#[derive(Default)]
struct Subscribers {
    /// Each stream, and whether it wants invalidations (front ends) or only leadership.
    streams: Vec<(Push, bool)>,
    /// The newest leadership record on disk.
    published: Leadership,
}

impl Subscribers {
    /// Sends `message` to every stream `wanted` selects, dropping those gone or too slow.
    fn broadcast(&mut self, message: &CatalogResponse, wanted: impl Fn(bool) -> bool) {
        self.streams
            .retain(|(push, invalidations)| !wanted(*invalidations) || push.send(message));
    }
}

type SharedSubscribers = Arc<Mutex<Subscribers>>;

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
    subscribers: SharedSubscribers,
    /// The leader's lease: the epoch of the last leader that said it serves, and when.
    lease: Mutex<Option<(Epoch, tokio::time::Instant)>>,
    /// How long a lease lasts.
    lease_length: Duration,
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
                Decision::Fenced => {
                    let current = self.published();
                    debug!(request_id = %request.request_id, epoch = request.epoch, %current, "trade fenced");
                    return Ok(CatalogResponse::Fenced {
                        reason: format!(
                            "epoch {} may not trade; the record is {current}",
                            request.epoch
                        ),
                        current,
                    });
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
        Ok(CatalogResponse::Traded { receipt, seq })
    }

    /// The durable leadership record.
    fn published(&self) -> Leadership {
        lock(&self.subscribers).published.clone()
    }

    fn subscribe(&self, context: &RequestContext, invalidations: bool) -> Reply<CatalogResponse> {
        let mut subscribers = lock(&self.subscribers);
        let push = context.push();
        // A connection carries one subscription: a subscriber that gave up on its stream (it
        // heard nothing for too long) and asks again replaces it, so the list stays bounded
        // by the connections.
        subscribers
            .streams
            .retain(|(other, _)| !other.same_connection(&push) && !other.is_closed());
        subscribers.streams.push((push, invalidations));
        info!(peer = %context.peer, invalidations, "subscriber added");
        Ok(CatalogResponse::Subscribed(subscribers.published.clone()))
    }

    /// The compare-and-set of the leadership record: decided against the newest record (also
    /// one still on its way to disk, so that two changes never both succeed), answered and
    /// published once on disk.
    async fn change_leadership(
        &self,
        expected: Epoch,
        change: LeadershipChange,
    ) -> Reply<CatalogResponse> {
        let (done, written) = tokio::sync::oneshot::channel();
        let record = {
            let mut book = lock(&self.book);
            let decided = self
                .lease_holds(book.leadership(), &change)
                .and_then(|()| crate::leadership::apply(book.leadership(), expected, &change));
            let record = match decided {
                Ok(record) => record,
                Err(reason) => {
                    debug!(expected, ?change, %reason, "leadership change refused");
                    return Ok(CatalogResponse::Fenced {
                        current: self.published(),
                        reason,
                    });
                }
            };
            book.set_leadership(record.clone());
            if record.epoch != expected {
                // A new leader gets one lease to take over before it can be deposed.
                *lock(&self.lease) = Some((record.epoch, tokio::time::Instant::now()));
            }
            let subscribers = self.subscribers.clone();
            let published = record.clone();
            // Queued under the book's lock, so that changes reach the disk (and subscribers)
            // in the order they were decided.
            let queued = lock(&self.log).as_ref().is_some_and(|log| {
                log.record_leadership(&record, move || {
                    let mut subscribers = lock(&subscribers);
                    subscribers.published = published.clone();
                    subscribers.broadcast(&CatalogResponse::Leadership(published), |_| true);
                    let _ = done.send(());
                })
                .is_ok()
            });
            if !queued {
                return Err(RemoteError::unavailable("catalog is shutting down"));
            }
            record
        };
        match tokio::time::timeout(DURABILITY_TIMEOUT, written).await {
            Ok(Ok(())) => {
                info!(%record, ?change, "leadership record changed");
                Ok(CatalogResponse::Leadership(record))
            }
            Ok(Err(_)) => Err(RemoteError::unavailable(
                "catalog storage failed while recording the leadership",
            )),
            Err(_) => Err(RemoteError::unavailable("catalog log is not keeping up")),
        }
    }

    /// Refuses an election while the recorded leader's lease holds: the catalog heard from it,
    /// serving, within the lease. Electors that cannot reach it are the ones cut off; and
    /// front ends with different views cannot take turns replacing each other's leaders.
    /// The operator's unclean override and the leader's own changes are not held back.
    fn lease_holds(&self, current: &Leadership, change: &LeadershipChange) -> Result<(), String> {
        let Some(leader) = current.leader else {
            return Ok(());
        };
        if !matches!(change, LeadershipChange::Elect { .. }) {
            return Ok(());
        }
        match *lock(&self.lease) {
            Some((epoch, heard))
                if epoch == current.epoch && heard.elapsed() < self.lease_length =>
            {
                Err(format!(
                    "the recorded leader {leader} of epoch {epoch} serves (the catalog heard \
                     from it {} ms ago); not deposed",
                    heard.elapsed().as_millis()
                ))
            }
            _ => Ok(()),
        }
    }

    /// The leader's reconciliation: stores how far every trade is a committed order, renews
    /// its lease if it serves, and lists the durable trades after `after`.
    fn applied_since(
        &self,
        epoch: Epoch,
        recorded_through: u64,
        after: Option<u64>,
        max: u32,
        serving: bool,
    ) -> Reply<CatalogResponse> {
        let through = self.durable.borrow().seq;
        let mut book = lock(&self.book);
        let published = self.published();
        if !crate::leadership::admits(book.leadership(), epoch)
            || !crate::leadership::admits(&published, epoch)
        {
            return Ok(CatalogResponse::Fenced {
                reason: format!("epoch {epoch} does not lead; the record is {published}"),
                current: published,
            });
        }
        let after = after.unwrap_or(book.recorded_through());
        if recorded_through > through || after > through {
            warn!(
                epoch,
                recorded_through, after, through, "absurd reconciliation refused"
            );
            return Err(RemoteError::bad_request(format!(
                "positions {recorded_through}/{after} are beyond the last durable trade {through}"
            )));
        }
        book.set_recorded_through(recorded_through)
            .map_err(RemoteError::bad_request)?;
        if serving {
            *lock(&self.lease) = Some((epoch, tokio::time::Instant::now()));
        }
        let max = (max as usize).clamp(1, MAX_APPLIED_BATCH);
        let (trades, complete) = book.applied_after(after, through, max);
        Ok(CatalogResponse::Applied {
            trades,
            last_seq: through,
            complete,
        })
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
            CatalogRequest::Subscribe { invalidations } => self.subscribe(&context, invalidations),
            CatalogRequest::ReadLeadership => Ok(CatalogResponse::Leadership(self.published())),
            CatalogRequest::ChangeLeadership { expected, change } => {
                self.change_leadership(expected, change).await
            }
            CatalogRequest::AppliedSince {
                epoch,
                recorded_through,
                after,
                max,
                serving,
            } => self.applied_since(epoch, recorded_through, after, max, serving),
        }
    }
}

/// Pushes an invalidation for every record of a durable batch to every subscriber that wants
/// them, dropping the ones that are gone or too slow.
fn notify(subscribers: &Mutex<Subscribers>, batch: &[TradeRecord]) {
    let mut subscribers = lock(subscribers);
    if subscribers.streams.is_empty() {
        return;
    }
    for record in batch {
        let message = CatalogResponse::Invalidate {
            name: record.name.clone(),
            version: record.after.version,
        };
        subscribers.broadcast(&message, |invalidations| invalidations);
        debug!(stock = %record.name, version = record.after.version, "invalidation pushed");
    }
}

/// Sends a heartbeat to every subscriber each `interval`, so that a subscriber that hears
/// nothing for a few intervals knows the stream is dead (a silent partition, a frozen
/// catalog) without waiting for TCP.
async fn heartbeats(
    subscribers: SharedSubscribers,
    durable: watch::Receiver<Durable>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let heartbeat = CatalogResponse::Heartbeat {
            storage_failure: durable.borrow().failed.clone(),
        };
        lock(&subscribers).broadcast(&heartbeat, |_| true);
    }
}

/// Recovers the state in `config.state_dir` (seeding it on first start), serves catalog
/// requests on `listener` until `shutdown` fires, then finishes the requests in flight,
/// flushes the log, writes a snapshot and returns. If the log's disk fails, trades are
/// refused and heartbeats say why; once the directory takes writes again, it stops the same
/// way and returns [`Ended::RestartFromLog`] (the binary then restarts in place).
pub async fn run(
    listener: TcpListener,
    config: CatalogConfig,
    shutdown: CancellationToken,
) -> Result<Ended, Error> {
    let recovery = Recovery::new(&shutdown);
    let stop = recovery.stop().clone();
    let (state_dir, seed, window) = (
        config.state_dir.clone(),
        config.seed.clone(),
        config.dedup_window,
    );
    let (store, book) = tokio::task::spawn_blocking(move || Store::open(&state_dir, &seed, window))
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))??;
    let last_seq = book.last_seq();
    let (durable_sender, durable) = watch::channel(Durable {
        seq: last_seq,
        failed: None,
    });
    let subscribers: SharedSubscribers = Arc::new(Mutex::new(Subscribers {
        streams: Vec::new(),
        published: book.leadership().clone(),
    }));
    let (events, mut event_stream) = tokio::sync::mpsc::unbounded_channel();
    let book = Arc::new(Mutex::new(book));
    let (log, writer) = store.start(events)?;
    let service = Arc::new(CatalogService {
        book,
        log: Mutex::new(Some(log)),
        durable,
        subscribers,
        lease: Mutex::new(None),
        lease_length: config.leader_lease,
    });
    // The commit thread wakes this one task per group commit; the trades waiting on the
    // commit are then woken from inside the runtime, which is far cheaper than a cross-thread
    // wake-up per trade. It ends when the commit thread does.
    let relay = tokio::spawn({
        let service = service.clone();
        let (probe_dir, recovery) = (config.state_dir.clone(), recovery.clone());
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
                        recovery.after_failure(probe_dir.clone());
                    }
                }
            }
        }
    });
    let heartbeat = tokio::spawn(heartbeats(
        service.subscribers.clone(),
        service.durable.clone(),
        config.heartbeat,
        stop.clone(),
    ));
    info!(addr = %listener.local_addr()?, state = %config.state_dir.display(), "catalog serving");
    server::serve(listener, service.clone(), config.server.clone(), stop).await;

    if let Some(log) = lock(&service.log).take() {
        // A final snapshot, so the next start replays nothing.
        let _ = log.snapshot(service.book.clone());
    }
    let joined = tokio::task::spawn_blocking(move || writer.join()).await;
    if !matches!(joined, Ok(Ok(()))) {
        warn!("log writer did not stop cleanly");
    }
    let _ = relay.await;
    let _ = heartbeat.await;
    let ended = recovery.ended();
    match ended {
        Ended::RestartFromLog => info!("catalog stopped to restart from its log"),
        Ended::Stopped => info!("catalog stopped"),
    }
    Ok(ended)
}
