//! The front end's metrics (requests and their latency per route, the cache, the order leader,
//! elections and failover durations), kept in a `prometheus-client` registry and served as
//! OpenMetrics text on `GET /metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use common::metrics::{Format, MirroredCounter};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::cache::CacheStats;
use crate::router::Counters;

/// The routes counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /stocks/<name>`
    Lookup,
    /// `POST /orders`
    Trade,
    /// `GET /orders/<number>`
    Order,
    /// `GET /health`
    Health,
    /// `GET /metrics`
    Metrics,
    /// `GET /status` and `GET /status.json`
    Status,
    /// Anything else, bad requests included.
    Other,
}

const ROUTES: [Route; 7] = [
    Route::Lookup,
    Route::Trade,
    Route::Order,
    Route::Health,
    Route::Metrics,
    Route::Status,
    Route::Other,
];

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Lookup => "lookup",
            Route::Trade => "trade",
            Route::Order => "order",
            Route::Health => "health",
            Route::Metrics => "metrics",
            Route::Status => "status",
            Route::Other => "other",
        }
    }
}

/// Upper bounds of the request latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Statuses counted per route; any other is counted as `other`.
const STATUSES: [u16; 12] = [200, 400, 404, 405, 408, 409, 413, 414, 431, 501, 503, 505];
const STATUS_LABELS: [&str; STATUSES.len() + 1] = [
    "200", "400", "404", "405", "408", "409", "413", "414", "431", "501", "503", "505", "other",
];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteStatus {
    route: &'static str,
    status: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

#[derive(Clone)]
struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(BUCKETS)
    }
}

/// One route's series, created on first use so that a route never taken shows nothing, and
/// then held so that counting takes no lookup.
#[derive(Default)]
struct RouteSeries {
    by_status: [OnceLock<Counter>; STATUS_LABELS.len()],
    duration: OnceLock<Histogram>,
}

/// Everything the metrics page shows. Requests are counted without locks but the histogram's.
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    durations: Family<RouteLabel, Histogram, LatencyBuckets>,
    routes: [RouteSeries; ROUTES.len()],
    cache_hits: MirroredCounter,
    cache_misses: MirroredCounter,
    cache_evictions: MirroredCounter,
    cache_entries: Gauge,
    cache_enabled: Gauge,
    leader: Gauge,
    epoch: Gauge,
    elections: MirroredCounter,
    failovers: MirroredCounter,
    retries: MirroredCounter,
    /// From the moment this front end found its leader failing to a new leader recorded by
    /// an election it ran.
    pub failover_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("bazaar");
        let requests = Family::<RouteStatus, Counter>::default();
        registry.register(
            "http_requests",
            "Requests answered, by route and status",
            requests.clone(),
        );
        let durations = Family::new_with_constructor(LatencyBuckets);
        registry.register(
            "http_request_duration_seconds",
            "Time to answer, by route",
            durations.clone(),
        );
        let counter =
            |registry: &mut Registry, name, help| MirroredCounter::registered(registry, name, help);
        let gauge = common::metrics::gauge;
        let cache_hits = counter(
            &mut registry,
            "cache_hits",
            "Lookups answered from the cache",
        );
        let cache_misses = counter(&mut registry, "cache_misses", "Lookups sent to the catalog");
        let cache_evictions = counter(
            &mut registry,
            "cache_evictions",
            "Cache entries pushed out by newer ones",
        );
        let cache_entries = gauge(&mut registry, "cache_entries", "Stocks in the cache");
        let cache_enabled = gauge(
            &mut registry,
            "cache_enabled",
            "1 while the invalidation stream is up and the cache in use",
        );
        let leader = gauge(
            &mut registry,
            "order_leader_id",
            "The order leader (0: none known)",
        );
        let epoch = gauge(
            &mut registry,
            "order_epoch",
            "Epoch of the current order leader",
        );
        let elections = counter(&mut registry, "order_elections", "Leader elections won");
        let failovers = counter(
            &mut registry,
            "order_failovers",
            "Changes of order leader followed",
        );
        let retries = counter(
            &mut registry,
            "order_retries",
            "Internal retries after a failed or refused call",
        );
        let failover_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 12));
        registry.register(
            "order_failover_seconds",
            "From finding the leader failing to a new leader recorded, for elections run here",
            failover_seconds.clone(),
        );
        Metrics {
            registry,
            requests,
            durations,
            routes: Default::default(),
            cache_hits,
            cache_misses,
            cache_evictions,
            cache_entries,
            cache_enabled,
            leader,
            epoch,
            elections,
            failovers,
            retries,
            failover_seconds,
        }
    }
}

impl Metrics {
    /// Counts one answered request.
    pub fn record(&self, route: Route, status: u16, took: Duration) {
        let series = &self.routes[route as usize];
        let slot = STATUSES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(STATUSES.len());
        series.by_status[slot]
            .get_or_init(|| {
                self.requests.get_or_create_owned(&RouteStatus {
                    route: route.label(),
                    status: STATUS_LABELS[slot],
                })
            })
            .inc();
        series
            .duration
            .get_or_init(|| {
                self.durations.get_or_create_owned(&RouteLabel {
                    route: route.label(),
                })
            })
            .observe(took.as_secs_f64());
    }

    /// Requests of `route` answered with `status` so far.
    pub fn answered(&self, route: Route, status: u16) -> u64 {
        let slot = STATUSES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(STATUSES.len());
        self.routes[route as usize].by_status[slot]
            .get()
            .map_or(0, Counter::get)
    }

    /// The exposition, with the cache and leader as they are now.
    pub fn render(
        &self,
        cache: CacheStats,
        leader: Option<u32>,
        epoch: u64,
        counters: Counters,
        format: Format,
    ) -> String {
        self.cache_hits.set_total(cache.hits);
        self.cache_misses.set_total(cache.misses);
        self.cache_evictions.set_total(cache.evictions);
        self.cache_entries.set(cache.entries as i64);
        self.cache_enabled.set(i64::from(cache.enabled));
        self.leader.set(leader.map_or(0, i64::from));
        self.epoch.set(epoch as i64);
        self.elections.set_total(counters.elections);
        self.failovers.set_total(counters.failovers);
        self.retries.set_total(counters.retries);
        common::metrics::encode(&self.registry, format)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_cumulative_buckets() {
        let metrics = Metrics::default();
        metrics.record(Route::Lookup, 200, Duration::from_micros(80));
        metrics.record(Route::Lookup, 200, Duration::from_millis(3));
        metrics.record(Route::Lookup, 404, Duration::from_micros(90));
        metrics.record(Route::Other, 418, Duration::from_micros(90));
        metrics.failover_seconds.observe(0.3);
        let page = metrics.render(
            CacheStats {
                hits: 5,
                misses: 1,
                evictions: 0,
                entries: 1,
                enabled: true,
                capacity: 5,
            },
            Some(3),
            7,
            Counters {
                elections: 1,
                failovers: 1,
                retries: 2,
            },
            Format::OpenMetrics,
        );
        for line in [
            "bazaar_http_requests_total{route=\"lookup\",status=\"200\"} 2",
            "bazaar_http_requests_total{route=\"lookup\",status=\"404\"} 1",
            "bazaar_http_requests_total{route=\"other\",status=\"other\"} 1",
            "bazaar_http_request_duration_seconds_bucket{le=\"0.0001\",route=\"lookup\"} 2",
            "bazaar_http_request_duration_seconds_bucket{le=\"+Inf\",route=\"lookup\"} 3",
            "bazaar_cache_hits_total 5",
            "bazaar_order_leader_id 3",
            "bazaar_order_retries_total 2",
            "bazaar_order_failover_seconds_count 1",
        ] {
            assert!(page.contains(line), "{line} missing from\n{page}");
        }
        // A route never taken shows no series.
        assert!(!page.contains("route=\"trade\""), "{page}");
        assert!(page.ends_with("# EOF\n"));
    }
}
