//! The front end's counters and latency histograms, rendered in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::cache::CacheStats;

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
    /// Anything else, bad requests included.
    Other,
}

const ROUTES: [Route; 6] = [
    Route::Lookup,
    Route::Trade,
    Route::Order,
    Route::Health,
    Route::Metrics,
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
            Route::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Statuses counted per route.
const STATUSES: [u16; 12] = [200, 400, 404, 405, 408, 409, 413, 414, 431, 501, 503, 505];

#[derive(Default)]
struct RouteMetrics {
    by_status: [AtomicU64; STATUSES.len() + 1],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// Everything the metrics page shows, updated without locks.
#[derive(Default)]
pub struct Metrics {
    routes: [RouteMetrics; ROUTES.len()],
    /// Leader elections run.
    pub elections: AtomicU64,
    /// Elections that replaced a leader.
    pub failovers: AtomicU64,
    /// Internal retries of a request after a failed or refused call.
    pub retries: AtomicU64,
}

impl Metrics {
    /// Counts one answered request.
    pub fn record(&self, route: Route, status: u16, took: Duration) {
        let metrics = &self.routes[route.index()];
        let slot = STATUSES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(STATUSES.len());
        metrics.by_status[slot].fetch_add(1, Ordering::Relaxed);
        let seconds = took.as_secs_f64();
        if let Some(bucket) = BUCKETS.iter().position(|&b| seconds <= b) {
            metrics.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        metrics.count.fetch_add(1, Ordering::Relaxed);
        metrics
            .sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// The Prometheus text page.
    pub fn render(&self, cache: CacheStats, leader: Option<u32>, epoch: u64) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP bazaar_http_requests_total Requests answered, by route and status.\n");
        out.push_str("# TYPE bazaar_http_requests_total counter\n");
        for route in ROUTES {
            let metrics = &self.routes[route.index()];
            for (slot, counter) in metrics.by_status.iter().enumerate() {
                let count = counter.load(Ordering::Relaxed);
                if count == 0 {
                    continue;
                }
                let status = STATUSES
                    .get(slot)
                    .map_or_else(|| "other".to_string(), u16::to_string);
                let _ = writeln!(
                    out,
                    "bazaar_http_requests_total{{route=\"{}\",status=\"{status}\"}} {count}",
                    route.label()
                );
            }
        }
        out.push_str("# HELP bazaar_http_request_duration_seconds Time to answer, by route.\n");
        out.push_str("# TYPE bazaar_http_request_duration_seconds histogram\n");
        for route in ROUTES {
            let metrics = &self.routes[route.index()];
            let label = route.label();
            let mut cumulative = 0;
            for (bound, bucket) in BUCKETS.iter().zip(&metrics.buckets) {
                cumulative += bucket.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "bazaar_http_request_duration_seconds_bucket{{route=\"{label}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let count = metrics.count.load(Ordering::Relaxed);
            let sum = metrics.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "bazaar_http_request_duration_seconds_bucket{{route=\"{label}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "bazaar_http_request_duration_seconds_sum{{route=\"{label}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "bazaar_http_request_duration_seconds_count{{route=\"{label}\"}} {count}"
            );
        }
        let gauges: [(&str, &str, &str, String); 10] = [
            (
                "bazaar_cache_hits_total",
                "counter",
                "Lookups answered from the cache.",
                cache.hits.to_string(),
            ),
            (
                "bazaar_cache_misses_total",
                "counter",
                "Lookups sent to the catalog.",
                cache.misses.to_string(),
            ),
            (
                "bazaar_cache_evictions_total",
                "counter",
                "Cache entries pushed out by newer ones.",
                cache.evictions.to_string(),
            ),
            (
                "bazaar_cache_entries",
                "gauge",
                "Stocks in the cache.",
                cache.entries.to_string(),
            ),
            (
                "bazaar_cache_enabled",
                "gauge",
                "1 while the invalidation stream is up and the cache in use.",
                u8::from(cache.enabled).to_string(),
            ),
            (
                "bazaar_order_leader_id",
                "gauge",
                "The order leader (0: none known).",
                leader.unwrap_or(0).to_string(),
            ),
            (
                "bazaar_order_epoch",
                "gauge",
                "Epoch of the current order leader.",
                epoch.to_string(),
            ),
            (
                "bazaar_order_elections_total",
                "counter",
                "Leader elections run.",
                self.elections.load(Ordering::Relaxed).to_string(),
            ),
            (
                "bazaar_order_failovers_total",
                "counter",
                "Elections that replaced a leader.",
                self.failovers.load(Ordering::Relaxed).to_string(),
            ),
            (
                "bazaar_order_retries_total",
                "counter",
                "Internal retries after a failed or refused call.",
                self.retries.load(Ordering::Relaxed).to_string(),
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
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
        metrics.retries.fetch_add(2, Ordering::Relaxed);
        let page = metrics.render(
            CacheStats {
                hits: 5,
                misses: 1,
                evictions: 0,
                entries: 1,
                enabled: true,
            },
            Some(3),
            7,
        );
        assert!(
            page.contains("bazaar_http_requests_total{route=\"lookup\",status=\"200\"} 2"),
            "{page}"
        );
        assert!(page.contains("bazaar_http_requests_total{route=\"lookup\",status=\"404\"} 1"));
        assert!(page.contains(
            "bazaar_http_request_duration_seconds_bucket{route=\"lookup\",le=\"0.0001\"} 2"
        ));
        assert!(page.contains(
            "bazaar_http_request_duration_seconds_bucket{route=\"lookup\",le=\"+Inf\"} 3"
        ));
        assert!(page.contains("bazaar_cache_hits_total 5"));
        assert!(page.contains("bazaar_order_leader_id 3"));
        assert!(page.contains("bazaar_order_retries_total 2"));
    }
}
