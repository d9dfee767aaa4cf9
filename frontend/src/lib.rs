//! The front end: the only public entry point. A REST API (SPEC §2) over an HTTP/1.1 server
//! of our own, an LRU cache of lookups kept fresh by the catalog's invalidations, and the
//! order leader's election and failover, invisible to clients.
//!
//! Seams: [`http`] parses and encodes (no I/O), [`cache`] is the versioned LRU (no I/O),
//! [`router`] the order leader's election and failover decisions (no I/O), [`leader`] their
//! runtime, [`api`] the routes, [`server`] the connections, [`metrics`] the counters.

pub mod api;
pub mod cache;
pub mod config;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod router;
pub mod server;
pub mod status;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clients::CatalogClient;
use common::engine::Backoff;
use common::sync::lock;
use common::wire::CatalogResponse;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::FrontendConfig;

/// What can stop a front end from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// A socket operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Invalidations a subscriber may fall behind by before the catalog drops it.
const INVALIDATION_BACKLOG: usize = 4096;

/// Serves the REST API on `listener` until `shutdown`, then finishes the requests in flight.
pub async fn run(
    listener: TcpListener,
    config: FrontendConfig,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let metrics = Arc::new(metrics::Metrics::default());
    let catalog = CatalogClient::new(config.catalog.clone(), config.client.clone());
    let orders = Arc::new(leader::OrderLeader::new(
        &config.order_peers,
        catalog.clone(),
        &config.client,
        leader::Timing {
            deadline: config.failover_deadline,
            attempt: config.attempt_timeout,
            health_interval: config.health_interval,
        },
        metrics.clone(),
    ));
    let app = Arc::new(api::App::new(
        catalog,
        cache::StockCache::new(config.cache_size),
        orders.clone(),
        metrics,
        config.max_trade,
        config.failover_deadline,
    ));
    let invalidations = tokio::spawn(follow_invalidations(app.clone(), shutdown.clone()));
    let health = tokio::spawn(orders.watch(shutdown.clone()));
    info!(addr = %listener.local_addr()?, cache_size = config.cache_size, "front end serving");
    server::serve(listener, app, config.http, shutdown).await;
    let _ = invalidations.await;
    let _ = health.await;
    info!("front end stopped");
    Ok(())
}

/// Keeps the cache subscribed to the catalog's invalidations and the order leader's view to
/// its leadership record; while the stream is down (broken, or silent for three heartbeats)
/// the cache is empty and unused.
async fn follow_invalidations(app: Arc<api::App>, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
    loop {
        let subscribed = tokio::select! {
            () = shutdown.cancelled() => return,
            subscribed = app.catalog.subscribe(true, INVALIDATION_BACKLOG) => subscribed,
        };
        if let Ok((record, mut stream)) = subscribed {
            backoff.reset();
            app.orders.subscribed(&record);
            lock(&app.cache).enable();
            app.catalog_up.store(true, Ordering::Relaxed);
            info!("invalidation stream up; cache in use");
            loop {
                let message = tokio::select! {
                    () = shutdown.cancelled() => return,
                    message = stream.next() => message,
                };
                match message {
                    Some(Ok(CatalogResponse::Invalidate { name, version })) => {
                        lock(&app.cache).invalidate(&name, version);
                    }
                    Some(Ok(CatalogResponse::Leadership(record))) => app.orders.observe(&record),
                    Some(Ok(CatalogResponse::Heartbeat { storage_failure })) => {
                        let mut held = lock(&app.catalog_storage);
                        if storage_failure.is_some() && held.is_none() {
                            warn!(failure = ?storage_failure, "the catalog's disk failed");
                        }
                        *held = storage_failure;
                    }
                    Some(Ok(CatalogResponse::Subscribed(_))) => {}
                    Some(Ok(other)) => {
                        warn!(?other, "unexpected message on the invalidation stream")
                    }
                    Some(Err(_)) | None => break,
                }
            }
            app.catalog_up.store(false, Ordering::Relaxed);
            *lock(&app.catalog_storage) = None;
            lock(&app.cache).disable();
            warn!("invalidation stream broke; cache cleared and unused until it is back");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff.next_wait()) => {}
        }
    }
}
