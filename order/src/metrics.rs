//! What a replica shows on its metrics port: its role, epoch and log position, the leader's
//! view of each follower's lag (entries and seconds), the in-sync set, commit and placement
//! latency, catch-ups, set-aside entries, and its log's fsyncs and group-commit batches.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use common::metrics::{duration_buckets, Format, MirroredCounter};
use common::wire::{OrderRequest, ReplicaStatus, Role};
use durability::group_commit::CommitMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RoleLabel {
    role: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FollowerLabel {
    follower: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabel {
    request: &'static str,
}

const ROLES: [(Role, &str); 4] = [
    (Role::Leader, "leader"),
    (Role::Follower, "follower"),
    (Role::Syncing, "syncing"),
    (Role::Idle, "idle"),
];

const REQUESTS: [&str; 6] = ["place", "get", "status", "replicate", "sync_up", "read_log"];

/// A replica's metrics and the registry that renders them.
#[derive(Debug)]
pub struct ReplicaMetrics {
    registry: Registry,
    requests: [Counter; REQUESTS.len()],
    role: Family<RoleLabel, Gauge>,
    epoch: Gauge,
    last: Gauge,
    commit: Gauge,
    in_sync: Gauge,
    set_aside: Gauge,
    catalog_link: Gauge,
    catch_ups: MirroredCounter,
    lag_entries: Family<FollowerLabel, Gauge>,
    lag_seconds: Family<FollowerLabel, Gauge<f64, AtomicU64>>,
    /// Leader: from an order's append to its commit.
    pub commit_seconds: Histogram,
    /// Leader: a placement from its arrival to its answer (the catalog's trade included).
    pub place_seconds: Histogram,
    /// Measured by the order log's commit thread.
    pub log_commit: CommitMetrics,
}

impl Default for ReplicaMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("bazaar_order");
        let requests_family = Family::<RequestLabel, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by kind",
            requests_family.clone(),
        );
        let requests =
            REQUESTS.map(|request| requests_family.get_or_create_owned(&RequestLabel { request }));
        let role = Family::<RoleLabel, Gauge>::default();
        registry.register("role", "1 for what the replica is doing now", role.clone());
        let gauge = common::metrics::gauge;
        let epoch = gauge(&mut registry, "epoch", "Highest epoch seen");
        let last = gauge(
            &mut registry,
            "log_last",
            "Number of the last durable entry (-1: empty log)",
        );
        let commit = gauge(
            &mut registry,
            "commit",
            "Leader: newest committed entry of its term (-1: none or not leading)",
        );
        let in_sync = gauge(
            &mut registry,
            "in_sync",
            "Leader: replicas in the in-sync set it waits for (0: not leading)",
        );
        let set_aside = gauge(
            &mut registry,
            "set_aside_entries",
            "Entries set aside in the side file",
        );
        let catalog_link = gauge(
            &mut registry,
            "catalog_link",
            "1 while the catalog's subscription heartbeats arrive",
        );
        let catch_ups = MirroredCounter::registered(
            &mut registry,
            "catch_ups",
            "Catch-ups with a leader begun",
        );
        let lag_entries = Family::<FollowerLabel, Gauge>::default();
        registry.register(
            "follower_lag_entries",
            "Leader: entries a follower has not persisted",
            lag_entries.clone(),
        );
        let lag_seconds = Family::<FollowerLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "follower_lag_seconds",
            "Leader: seconds since a follower last held every entry the leader held",
            lag_seconds.clone(),
        );
        let commit_seconds = Histogram::new(duration_buckets());
        registry.register(
            "commit_seconds",
            "Leader: time from an order's append to its commit",
            commit_seconds.clone(),
        );
        let place_seconds = Histogram::new(duration_buckets());
        registry.register(
            "place_seconds",
            "Leader: time to answer a placement, the catalog's trade included",
            place_seconds.clone(),
        );
        let log_commit = CommitMetrics::registered(&mut registry, "log");
        ReplicaMetrics {
            registry,
            requests,
            role,
            epoch,
            last,
            commit,
            in_sync,
            set_aside,
            catalog_link,
            catch_ups,
            lag_entries,
            lag_seconds,
            commit_seconds,
            place_seconds,
            log_commit,
        }
    }
}

impl ReplicaMetrics {
    /// Counts one request, by kind.
    pub fn request(&self, request: &OrderRequest) {
        let slot = match request {
            OrderRequest::PlaceOrder(_) => 0,
            OrderRequest::GetOrder { .. } => 1,
            OrderRequest::Status => 2,
            OrderRequest::Replicate { .. } => 3,
            OrderRequest::SyncUp { .. } => 4,
            OrderRequest::ReadLog { .. } => 5,
            // Each request of a batch counts as itself.
            OrderRequest::Batch(requests) => {
                return requests.iter().for_each(|r| self.request(r));
            }
        };
        self.requests[slot].inc();
    }

    /// Records a commit wait.
    pub fn committed(&self, waited: Duration) {
        self.commit_seconds.observe(waited.as_secs_f64());
    }

    /// The exposition, with the state gauges set from `status`.
    pub fn render(&self, status: &ReplicaStatus, format: Format) -> String {
        for (role, label) in ROLES {
            self.role
                .get_or_create(&RoleLabel { role: label })
                .set(i64::from(status.role == role));
        }
        let number = |n: Option<u64>| n.map_or(-1, |n| n as i64);
        self.epoch.set(status.epoch as i64);
        self.last.set(number(status.last.map(|p| p.number)));
        self.commit.set(number(status.commit));
        self.in_sync.set(status.in_sync.len() as i64);
        self.set_aside.set(status.set_aside as i64);
        self.catalog_link.set(i64::from(status.catalog_link));
        self.catch_ups.set_total(status.catch_ups);
        // Only the followers of a leader have a lag; a replica that stopped leading shows none.
        self.lag_entries.clear();
        self.lag_seconds.clear();
        for lag in &status.followers {
            let follower = FollowerLabel { follower: lag.id };
            self.lag_entries
                .get_or_create(&follower)
                .set(lag.entries as i64);
            self.lag_seconds
                .get_or_create(&follower)
                .set(lag.millis as f64 / 1000.0);
        }
        common::metrics::encode(&self.registry, format)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::wire::{FollowerLag, LogPosition};

    #[test]
    fn a_leaders_state_and_its_followers_lag_show_in_the_exposition() {
        let metrics = ReplicaMetrics::default();
        metrics.committed(Duration::from_millis(2));
        let mut status = ReplicaStatus {
            id: 3,
            role: Role::Leader,
            epoch: 5,
            leader_id: Some(3),
            last: Some(LogPosition {
                epoch: 5,
                number: 41,
            }),
            catalog_link: true,
            placing: true,
            stalled: false,
            storage_failure: None,
            commit: Some(40),
            in_sync: vec![2, 3],
            followers: vec![FollowerLag {
                id: 1,
                up: false,
                persisted: Some(30),
                entries: 11,
                millis: 1500,
            }],
            set_aside: 2,
            catch_ups: 1,
        };
        let text = metrics.render(&status, Format::OpenMetrics);
        for line in [
            "bazaar_order_role{role=\"leader\"} 1",
            "bazaar_order_role{role=\"follower\"} 0",
            "bazaar_order_epoch 5",
            "bazaar_order_log_last 41",
            "bazaar_order_commit 40",
            "bazaar_order_in_sync 2",
            "bazaar_order_set_aside_entries 2",
            "bazaar_order_catch_ups_total 1",
            "bazaar_order_follower_lag_entries{follower=\"1\"} 11",
            "bazaar_order_follower_lag_seconds{follower=\"1\"} 1.5",
            "bazaar_order_commit_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // Deposed: no lag shown any more; catch-ups only ever grow.
        status.role = Role::Follower;
        status.followers.clear();
        status.catch_ups = 2;
        let text = metrics.render(&status, Format::OpenMetrics);
        assert!(!text.contains("follower_lag_entries{"), "{text}");
        assert!(text.contains("bazaar_order_catch_ups_total 2"), "{text}");
    }
}
