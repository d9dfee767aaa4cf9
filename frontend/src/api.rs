//! The REST API (SPEC §2): routing, validation, and the answers with their exact bodies and
//! statuses. Lookups go through the cache; trades and order lookups go to the order leader,
//! retried across failovers under one request id.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clients::CatalogClient;
use common::engine::Backoff;
use common::sync::lock;
use common::wire::{
    OrderRequest, OrderResponse, RequestId, StockName, StockQuote, TradeKind, TradeRejection,
    TradeRequest,
};
use serde::Serialize;
use serde_json::Value;
use tracing::Instrument;

use crate::cache::StockCache;
use crate::http::{Request, Response};
use crate::leader::{OrderError, OrderLeader};
use crate::metrics::{Metrics, Route};
use crate::status;

/// The first pause before a lookup is asked again; each pause doubles, up to the most.
const LOOKUP_PAUSE_MIN: Duration = Duration::from_millis(2);
/// The longest pause between two attempts of one lookup.
const LOOKUP_PAUSE_MAX: Duration = Duration::from_millis(100);

/// Everything the handlers share.
pub struct App {
    /// The catalog, for lookups.
    pub catalog: CatalogClient,
    /// Lookup answers.
    pub cache: Mutex<StockCache>,
    /// The order service.
    pub orders: Arc<OrderLeader>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Largest quantity one trade may ask for.
    pub max_trade: u64,
    /// How long a lookup is retried while the catalog cannot answer (it restarts).
    pub lookup_deadline: Duration,
    /// Whether the catalog's invalidation stream is up (the catalog is reachable).
    pub catalog_up: AtomicBool,
    /// Why the catalog cannot make trades durable, as its last heartbeat said.
    pub catalog_storage: Mutex<Option<String>>,
    /// Makes request ids unique across front-end restarts.
    pub nonce: String,
    next_request: AtomicU64,
    /// When it started.
    started: std::time::Instant,
    /// The last status snapshot. An async lock, held while a snapshot is gathered (across
    /// its calls), so that concurrent requests for the page wait for one gathering and reuse
    /// it instead of each calling every service.
    status: tokio::sync::Mutex<status::Reused>,
}

impl App {
    /// Handlers over these clients.
    pub fn new(
        catalog: CatalogClient,
        cache: StockCache,
        orders: Arc<OrderLeader>,
        metrics: Arc<Metrics>,
        max_trade: u64,
        lookup_deadline: Duration,
    ) -> Self {
        App {
            catalog,
            cache: Mutex::new(cache),
            orders,
            metrics,
            max_trade,
            lookup_deadline,
            catalog_up: AtomicBool::new(false),
            catalog_storage: Mutex::new(None),
            nonce: format!("{:016x}", rand::random::<u64>()),
            next_request: AtomicU64::new(0),
            started: std::time::Instant::now(),
            status: tokio::sync::Mutex::new(status::Reused::default()),
        }
    }

    /// Answers one request.
    pub async fn handle(&self, request: &Request) -> (Route, Response) {
        let path = request.target.split('?').next().unwrap_or("");
        // HEAD is answered as GET; the server leaves the body out.
        let method = match request.method.as_str() {
            "HEAD" => "GET",
            other => other,
        };
        if let Some(name) = path.strip_prefix("/stocks/") {
            return (
                Route::Lookup,
                match method {
                    "GET" => self.lookup(name).await,
                    _ => not_allowed("GET, HEAD"),
                },
            );
        }
        if path == "/orders" || path == "/orders/" {
            return (
                Route::Trade,
                match method {
                    "POST" => self.trade(request).await,
                    _ => not_allowed("POST"),
                },
            );
        }
        if let Some(number) = path.strip_prefix("/orders/") {
            return (
                Route::Order,
                match method {
                    "GET" => self.order(number).await,
                    _ => not_allowed("GET, HEAD"),
                },
            );
        }
        match path {
            "/health" => (
                Route::Health,
                match method {
                    "GET" => self.health(),
                    _ => not_allowed("GET, HEAD"),
                },
            ),
            "/metrics" => (
                Route::Metrics,
                match method {
                    "GET" => self.metrics_page(request),
                    _ => not_allowed("GET, HEAD"),
                },
            ),
            "/status" => (
                Route::Status,
                match method {
                    "GET" => Response::html(200, Bytes::from_static(status::PAGE.as_bytes())),
                    _ => not_allowed("GET, HEAD"),
                },
            ),
            "/status.json" => (
                Route::Status,
                match method {
                    "GET" => Response::json(200, self.status_snapshot().await),
                    _ => not_allowed("GET, HEAD"),
                },
            ),
            _ => (Route::Other, Response::error(404, "not found")),
        }
    }

    /// The cluster as this front end sees it now, gathered at most once per
    /// [`status::REUSE_FOR`].
    async fn status_snapshot(&self) -> Bytes {
        let mut reused = self.status.lock().await;
        if let Some(body) = reused.fresh(std::time::Instant::now()) {
            return body;
        }
        let (catalog, replicas) = tokio::join!(
            self.catalog.leadership(status::CALL_TIMEOUT),
            self.orders.replica_statuses(status::CALL_TIMEOUT)
        );
        let now = std::time::Instant::now();
        let trades = self.metrics.answered(Route::Trade, 200);
        let lookups = self.metrics.answered(Route::Lookup, 200);
        let trades_per_second = reused.rate.sample(now, trades);
        let snapshot = status::Snapshot::assemble(status::Inputs {
            catalog: catalog.map_err(|e| e.to_string()),
            held: self.orders.record(),
            replicas,
            cache: lock(&self.cache).stats(),
            changes: self.orders.changes(),
            uptime: self.started.elapsed(),
            trades,
            lookups,
            trades_per_second,
        });
        let body = snapshot.to_json();
        reused.last = Some((now, body.clone()));
        body
    }

    async fn lookup(&self, raw_name: &str) -> Response {
        let Some(name) = percent_decode(raw_name).and_then(|n| StockName::new(n).ok()) else {
            return Response::error(404, "stock not found");
        };
        let ticket = {
            let mut cache = lock(&self.cache);
            if let Some(body) = cache.get(&name) {
                return Response::json(200, body);
            }
            cache.ticket(&name)
        };
        match self.look_up(&name).await {
            Ok(Some(quote)) => {
                let body = data(&StockBody {
                    name: quote.name.as_str(),
                    price: quote.price,
                    quantity: quote.quantity,
                });
                lock(&self.cache).fill(&name, quote.version, body.clone(), ticket);
                Response::json(200, body)
            }
            Ok(None) => Response::error(404, "stock not found"),
            Err(e) => Response::error(503, &format!("catalog unavailable: {e}")),
        }
    }

    /// The catalog's quote of `name`, asked again while the catalog cannot answer (it closed
    /// its connections to restart, or refuses them until it is back) for up to the lookup
    /// deadline: a lookup is read-only, so asking twice is harmless, and a planned restart
    /// of the catalog then costs lookups a few milliseconds, not an error.
    async fn look_up(&self, name: &StockName) -> Result<Option<StockQuote>, common::Error> {
        let deadline = Instant::now() + self.lookup_deadline;
        let mut backoff = Backoff::new(LOOKUP_PAUSE_MIN, LOOKUP_PAUSE_MAX);
        loop {
            let answer = self
                .catalog
                .lookup_within(name, deadline.saturating_duration_since(Instant::now()))
                .await;
            let pause = backoff.next_wait();
            match &answer {
                Err(e) if e.is_retryable() && Instant::now() + pause < deadline => {
                    tokio::time::sleep(pause).await;
                }
                _ => return answer,
            }
        }
    }

    async fn trade(&self, request: &Request) -> Response {
        let order = match self.parse_order(request) {
            Ok(order) => order,
            Err(response) => return response,
        };
        let name = order.name.clone();
        // The request id names this trade in every service's log lines (front end, leader,
        // catalog, followers): `grep` it to follow one trade across the cluster.
        let span = tracing::info_span!("trade", request = %order.request_id);
        let placed = async {
            tracing::debug!(stock = %order.name, quantity = order.quantity, kind = %order.kind, "trade received");
            let placed = self.orders.call(OrderRequest::PlaceOrder(order)).await;
            match &placed {
                Ok(OrderResponse::Placed { number, epoch }) => {
                    tracing::debug!(number, epoch, "trade placed")
                }
                Ok(other) => tracing::debug!(answer = ?other, "trade not placed"),
                Err(e) => tracing::debug!(error = %e, "trade not placed"),
            }
            placed
        }
        .instrument(span)
        .await;
        match placed {
            Ok(OrderResponse::Placed { number, .. }) => {
                // Read-your-writes: the next lookup through this front end shows the trade.
                lock(&self.cache).forget(&name);
                Response::json(
                    200,
                    data(&TradeBody {
                        transaction_number: number,
                    }),
                )
            }
            Ok(OrderResponse::Rejected(rejection)) => match rejection {
                TradeRejection::StockNotFound => Response::error(404, "stock not found"),
                TradeRejection::NotEnoughStock { .. } => Response::error(409, "not enough stock"),
                TradeRejection::InvalidQuantity => {
                    Response::error(400, "quantity must be a positive integer")
                }
                TradeRejection::Overflow => Response::error(
                    400,
                    "quantity would overflow the stock's quantity or volume",
                ),
                TradeRejection::RequestIdReused => Response::error(
                    409,
                    "Idempotency-Key was already used for a different order",
                ),
            },
            Ok(other) => Response::error(503, &format!("unexpected answer {other:?}")),
            Err(OrderError::BadRequest(message)) => Response::error(400, &message),
            Err(OrderError::Unavailable(message)) => Response::error(
                503,
                &format!(
                    "{message}; the trade may have been applied: a retry with the same \
                     Idempotency-Key tells its outcome and trades nothing twice"
                ),
            ),
        }
    }

    /// Validates a trade's body and picks its request id.
    fn parse_order(&self, request: &Request) -> Result<TradeRequest, Response> {
        parse_order(
            &request.body,
            request.idempotency_key.as_deref(),
            self.max_trade,
            || {
                let n = self.next_request.fetch_add(1, Ordering::Relaxed);
                format!("fe-{}-{n}", self.nonce)
            },
        )
    }

    async fn order(&self, raw: &str) -> Response {
        let number = match raw.parse::<u64>() {
            Ok(n) if raw.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Response::error(400, "order number must be a non-negative integer"),
        };
        match self.orders.call(OrderRequest::GetOrder { number }).await {
            Ok(OrderResponse::Order(entry)) => Response::json(
                200,
                data(&OrderBody {
                    number: entry.number,
                    name: entry.name.as_str(),
                    kind: entry.kind,
                    quantity: entry.quantity,
                }),
            ),
            Ok(OrderResponse::OrderNotFound) => Response::error(404, "order not found"),
            Ok(other) => Response::error(503, &format!("unexpected answer {other:?}")),
            Err(OrderError::BadRequest(message)) => Response::error(400, &message),
            Err(OrderError::Unavailable(message)) => Response::error(503, &message),
        }
    }

    fn health(&self) -> Response {
        if !self.catalog_up.load(Ordering::Relaxed) {
            return Response::error(503, "catalog unreachable (invalidation stream down)");
        }
        if let Some(failure) = lock(&self.catalog_storage).clone() {
            return Response::error(503, &format!("catalog: storage failed: {failure}"));
        }
        let failures = self.orders.storage_failures();
        if !failures.is_empty() {
            return Response::error(503, &format!("storage failed: {}", failures.join("; ")));
        }
        match self.orders.serving() {
            Ok((leader, epoch)) => Response::json(
                200,
                data(&HealthBody {
                    status: "ok",
                    leader,
                    epoch,
                    in_sync: self.orders.record().in_sync,
                }),
            ),
            Err(problem) => Response::error(503, &format!("no order leader serves: {problem}")),
        }
    }

    fn metrics_page(&self, request: &Request) -> Response {
        let format = request.metrics_format;
        let cache = lock(&self.cache).stats();
        let (leader, epoch) = self
            .orders
            .current()
            .map_or((None, 0), |(l, e)| (Some(l), e));
        let counters = self.orders.counters();
        Response::with_content_type(
            200,
            format.content_type(),
            self.metrics.render(cache, leader, epoch, counters, format),
        )
    }
}

/// Validates the body of `POST /orders` (`{"name", "quantity", "type"}`) and names the request:
/// `key-<Idempotency-Key>` when one is given, else `generated_id()`. A refusal is the response
/// to send. Pure, so that it is fuzzed as it runs (`fuzz/`).
pub fn parse_order(
    body: &[u8],
    idempotency_key: Option<&str>,
    max_trade: u64,
    generated_id: impl FnOnce() -> String,
) -> Result<TradeRequest, Response> {
    let bad = |message: &str| Response::error(400, message);
    let value: Value = serde_json::from_slice(body).map_err(|_| bad("malformed JSON"))?;
    let fields = value
        .as_object()
        .ok_or_else(|| bad("body must be a JSON object"))?;
    let name = fields
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("name must be a string"))?;
    let quantity = match fields.get("quantity") {
        Some(Value::Number(n)) if n.is_u64() => n.as_u64().unwrap_or(0),
        Some(Value::Number(n)) if n.is_i64() => 0,
        _ => return Err(bad("quantity must be a positive integer")),
    };
    if quantity == 0 {
        return Err(bad("quantity must be a positive integer"));
    }
    if quantity > max_trade {
        return Err(bad(&format!(
            "quantity is above the per-trade cap of {max_trade}"
        )));
    }
    let kind = match fields.get("type").and_then(Value::as_str) {
        Some("buy") => TradeKind::Buy,
        Some("sell") => TradeKind::Sell,
        _ => return Err(bad("type must be \"buy\" or \"sell\"")),
    };
    let name = StockName::new(name).map_err(|_| Response::error(404, "stock not found"))?;
    let request_id = match idempotency_key {
        Some(key) => RequestId::new(format!("key-{key}"))
            .map_err(|e| bad(&format!("invalid Idempotency-Key: {e}")))?,
        None => RequestId::new(generated_id()).map_err(|e| Response::error(500, &e.to_string()))?,
    };
    Ok(TradeRequest {
        request_id,
        name,
        quantity: i64::try_from(quantity).map_err(|_| bad("quantity too large"))?,
        kind,
    })
}

/// `{"data": ...}` with the fields in the documented order.
fn data<T: Serialize>(body: &T) -> Bytes {
    #[derive(Serialize)]
    struct Data<'a, T> {
        data: &'a T,
    }
    // Serializing plain structs of numbers and strings cannot fail.
    Bytes::from(serde_json::to_vec(&Data { data: body }).unwrap_or_default())
}

#[derive(Serialize)]
struct StockBody<'a> {
    name: &'a str,
    price: f64,
    quantity: u64,
}

#[derive(Serialize)]
struct TradeBody {
    transaction_number: u64,
}

#[derive(Serialize)]
struct OrderBody<'a> {
    number: u64,
    name: &'a str,
    #[serde(rename = "type")]
    kind: TradeKind,
    quantity: u64,
}

#[derive(Serialize)]
struct HealthBody {
    status: &'static str,
    leader: u32,
    epoch: u64,
    in_sync: Vec<u32>,
}

/// 405 with the methods the resource takes (RFC 9110 §15.5.6).
fn not_allowed(allow: &'static str) -> Response {
    Response {
        allow: Some(allow),
        ..Response::error(405, "method not allowed")
    }
}

/// Decodes `%XX` escapes in a path segment; `None` if malformed or not UTF-8.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("Game%20Start").as_deref(),
            Some("Game Start")
        );
        assert_eq!(percent_decode("GameStart").as_deref(), Some("GameStart"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
