//! What the catalog shows on its metrics port: lookups and trades by outcome, the
//! write-ahead log's fsyncs and group-commit batches, its subscribers, how far its history
//! of trades goes and how much of it is on disk, whether it serves, and the leadership record
//! it holds.

use common::metrics::Format;
use common::wire::{ApplyOutcome, CatalogRequest, CatalogResponse, Leadership, Reply};
use durability::group_commit::CommitMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The label of a request's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The label of a kind of subscriber.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SubscriberLabel {
    kind: &'static str,
}

/// Which count a request goes to, taken before the request is handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// A lookup.
    Lookup,
    /// An `Apply` of this many items (entries and refusals).
    Trades(usize),
    /// Anything else (not counted).
    Other,
}

impl Counted {
    /// The count `request` goes to.
    pub fn of(request: &CatalogRequest) -> Self {
        match request {
            CatalogRequest::Lookup { .. } => Counted::Lookup,
            CatalogRequest::Apply { items, .. } => Counted::Trades(items.len()),
            _ => Counted::Other,
        }
    }
}

/// What the catalog holds now, for the gauges.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// The leadership record on disk.
    pub record: Leadership,
    /// Trades in its history.
    pub history_next: u64,
    /// Trades of its history on its disk.
    pub durable_next: u64,
    /// It serves lookups and trades.
    pub serving: bool,
    /// It rebuilds a lost state.
    pub rebuilding: bool,
    /// Its log cannot be written.
    pub storage_failed: bool,
}

/// The catalog's metrics and the registry that renders them.
#[derive(Debug)]
pub struct CatalogMetrics {
    registry: Registry,
    lookups: [Counter; 2],
    trades: [Counter; 4],
    subscribers: Family<SubscriberLabel, Gauge>,
    epoch: Gauge,
    leader: Gauge,
    in_sync: Gauge,
    history_next: Gauge,
    durable_next: Gauge,
    serving: Gauge,
    rebuilding: Gauge,
    storage_failed: Gauge,
    /// Measured by the write-ahead log's commit thread.
    pub commit: CommitMetrics,
}

const LOOKUP_OUTCOMES: [&str; 2] = ["found", "not_found"];
const TRADE_OUTCOMES: [&str; 4] = ["traded", "rejected", "fenced", "error"];

impl Default for CatalogMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("bazaar_catalog");
        let lookups_family = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "lookups",
            "Lookups answered, by outcome",
            lookups_family.clone(),
        );
        let trades_family = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "trades",
            "Trades answered, by outcome (a retry of an applied trade counts as traded)",
            trades_family.clone(),
        );
        let lookups = LOOKUP_OUTCOMES
            .map(|outcome| lookups_family.get_or_create_owned(&OutcomeLabel { outcome }));
        let trades = TRADE_OUTCOMES
            .map(|outcome| trades_family.get_or_create_owned(&OutcomeLabel { outcome }));
        let subscribers = Family::<SubscriberLabel, Gauge>::default();
        registry.register(
            "subscribers",
            "Open subscription streams: front ends (invalidations) and replicas (leadership)",
            subscribers.clone(),
        );
        let gauge = common::metrics::gauge;
        let epoch = gauge(
            &mut registry,
            "leadership_epoch",
            "Epoch of the leadership record",
        );
        let leader = gauge(
            &mut registry,
            "leadership_leader",
            "Replica the leadership record names (0: none)",
        );
        let in_sync = gauge(
            &mut registry,
            "leadership_in_sync",
            "Replicas in the recorded in-sync set",
        );
        let history_next = gauge(
            &mut registry,
            "history_next",
            "Trades in the catalog's history (the number the next one gets)",
        );
        let durable_next = gauge(
            &mut registry,
            "durable_next",
            "Trades of the history on the catalog's disk (the rest are in the order log)",
        );
        let serving = gauge(
            &mut registry,
            "serving",
            "1 when it serves lookups and trades; 0 while it waits for the order leader to \
             replay what a crash took, or rebuilds a lost state",
        );
        let rebuilding = gauge(
            &mut registry,
            "rebuilding",
            "1 while it rebuilds a lost state from the replicas' order logs",
        );
        let storage_failed = gauge(
            &mut registry,
            "storage_failed",
            "1 when the write-ahead log cannot be written (trades are refused)",
        );
        let commit = CommitMetrics::registered(&mut registry, "wal");
        CatalogMetrics {
            registry,
            lookups,
            trades,
            subscribers,
            epoch,
            leader,
            in_sync,
            history_next,
            durable_next,
            serving,
            rebuilding,
            storage_failed,
            commit,
        }
    }
}

impl CatalogMetrics {
    /// Counts one answered request.
    pub fn answered(&self, request: Counted, reply: &Reply<CatalogResponse>) {
        match request {
            Counted::Lookup => {
                let found = matches!(reply, Ok(CatalogResponse::Stock(_)));
                self.lookups[usize::from(!found)].inc();
            }
            Counted::Trades(count) => match reply {
                Ok(CatalogResponse::Applied { outcomes, .. }) => {
                    for outcome in outcomes {
                        let slot = match outcome {
                            ApplyOutcome::Applied => 0,
                            ApplyOutcome::Refused(_) => 1,
                        };
                        self.trades[slot].inc();
                    }
                    // The items from the one that did not come out as the leader decided on.
                    self.trades[3].inc_by(count.saturating_sub(outcomes.len()) as u64);
                }
                Ok(CatalogResponse::Fenced { .. }) => {
                    self.trades[2].inc_by(count as u64);
                }
                _ => {
                    self.trades[3].inc_by(count as u64);
                }
            },
            Counted::Other => {}
        }
    }

    /// The exposition, with the state gauges set from what the catalog holds now.
    pub fn render(&self, state: &State, subscribers: (usize, usize), format: Format) -> String {
        let record = &state.record;
        self.epoch.set(record.epoch as i64);
        self.leader.set(record.leader.map_or(0, i64::from));
        self.in_sync.set(record.in_sync.len() as i64);
        self.history_next.set(state.history_next as i64);
        self.durable_next.set(state.durable_next as i64);
        self.serving.set(i64::from(state.serving));
        self.rebuilding.set(i64::from(state.rebuilding));
        self.storage_failed.set(i64::from(state.storage_failed));
        let (front_ends, replicas) = subscribers;
        let kind = |kind| SubscriberLabel { kind };
        self.subscribers
            .get_or_create(&kind("front_end"))
            .set(front_ends as i64);
        self.subscribers
            .get_or_create(&kind("replica"))
            .set(replicas as i64);
        common::metrics::encode(&self.registry, format)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::wire::{RemoteError, StockName};

    #[test]
    fn outcomes_and_state_show_in_the_exposition() {
        let metrics = CatalogMetrics::default();
        let lookup = CatalogRequest::Lookup {
            name: StockName::new("GameStart").unwrap(),
        };
        metrics.answered(Counted::of(&lookup), &Ok(CatalogResponse::NotFound));
        metrics.answered(Counted::of(&lookup), &Err(RemoteError::unavailable("x")));
        let record = Leadership {
            epoch: 4,
            leader: Some(3),
            in_sync: vec![2, 3],
        };
        let trades = CatalogRequest::Apply {
            epoch: 4,
            items: vec![],
            log: None,
        };
        metrics.answered(
            Counted::Trades(3),
            &Ok(CatalogResponse::Fenced {
                current: record.clone(),
                reason: String::new(),
            }),
        );
        metrics.answered(Counted::of(&trades), &Err(RemoteError::unavailable("x")));
        let state = State {
            record,
            history_next: 20,
            durable_next: 17,
            serving: true,
            rebuilding: false,
            storage_failed: false,
        };
        let text = metrics.render(&state, (1, 3), Format::OpenMetrics);
        for line in [
            "bazaar_catalog_lookups_total{outcome=\"not_found\"} 2",
            "bazaar_catalog_lookups_total{outcome=\"found\"} 0",
            "bazaar_catalog_leadership_epoch 4",
            "bazaar_catalog_leadership_leader 3",
            "bazaar_catalog_leadership_in_sync 2",
            "bazaar_catalog_history_next 20",
            "bazaar_catalog_durable_next 17",
            "bazaar_catalog_serving 1",
            "bazaar_catalog_trades_total{outcome=\"fenced\"} 3",
            "bazaar_catalog_subscribers{kind=\"replica\"} 3",
            "bazaar_catalog_wal_fsync_seconds_count 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
