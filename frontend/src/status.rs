//! The live cluster page: `GET /status.json` says what this front end sees of the cluster
//! (each service up or down, the leadership record, each replica's role, position and lag,
//! the cache, the last changes of leader, trades per second), and `GET /status` is a page
//! with no external assets that shows it and refreshes itself.
//!
//! A snapshot costs a status call to every replica and a read at the catalog, so one is
//! gathered at a time and reused for [`REUSE_FOR`]: however many clients poll, the cluster
//! sees at most a few calls a second from the page.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::wire::{Leadership, ReplicaId, ReplicaStatus, Role};
use serde::Serialize;

use crate::cache::CacheStats;
use crate::router::LeaderChange;

/// The page (HTML, CSS and script in one file, nothing fetched from elsewhere).
pub const PAGE: &str = include_str!("status.html");

/// How long a gathered snapshot answers every request.
pub const REUSE_FOR: Duration = Duration::from_millis(500);

/// How long each service has to answer the page's calls.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(500);

/// The window trades per second are measured over.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Samples of the trade count kept (one per snapshot, so ten seconds at the reuse period).
const MAX_SAMPLES: usize = 64;

/// What `/status.json` says.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// The leadership record as the catalog holds it now (or as last seen when it is down).
    pub leadership: LeadershipView,
    /// The catalog.
    pub catalog: ServiceView,
    /// Each replica, by id.
    pub replicas: Vec<ReplicaView>,
    /// This front end.
    pub front_end: FrontEndView,
    /// The last changes of leader this front end saw, newest first.
    pub elections: Vec<ElectionView>,
}

/// The leadership record.
#[derive(Debug, Serialize)]
pub struct LeadershipView {
    /// Its epoch.
    pub epoch: u64,
    /// Its leader.
    pub leader: Option<ReplicaId>,
    /// Its in-sync set.
    pub in_sync: Vec<ReplicaId>,
}

/// A service that answers or not.
#[derive(Debug, Serialize)]
pub struct ServiceView {
    /// It answered.
    pub up: bool,
    /// Why not, or what is wrong with it.
    pub problem: Option<String>,
}

/// One replica.
#[derive(Debug, Serialize)]
pub struct ReplicaView {
    /// Its id.
    pub id: ReplicaId,
    /// It answered its status call.
    pub up: bool,
    /// `leader`, `follower`, `syncing`, `idle`, or `down`.
    pub role: &'static str,
    /// The highest epoch it has seen.
    pub epoch: Option<u64>,
    /// Its last durable entry.
    pub last: Option<u64>,
    /// The record names it in the in-sync set.
    pub in_sync: bool,
    /// Entries it lacks, as the leader sees it (0 for the leader).
    pub lag_entries: Option<u64>,
    /// Seconds since it last held everything the leader held, as the leader sees it.
    pub lag_seconds: Option<f64>,
    /// Entries it set aside.
    pub set_aside: Option<u64>,
    /// Why it did not answer, or what is wrong with it.
    pub problem: Option<String>,
}

/// This front end.
#[derive(Debug, Serialize)]
pub struct FrontEndView {
    /// Seconds since it started.
    pub uptime_seconds: f64,
    /// Successful trades per second over the last seconds.
    pub trades_per_second: f64,
    /// Successful trades since it started.
    pub trades: u64,
    /// Lookups since it started.
    pub lookups: u64,
    /// The cache.
    pub cache: CacheView,
}

/// The cache.
#[derive(Debug, Serialize)]
pub struct CacheView {
    /// In use (the invalidation stream is up).
    pub enabled: bool,
    /// Stocks held.
    pub entries: usize,
    /// Most stocks held.
    pub capacity: usize,
    /// Lookups answered from it.
    pub hits: u64,
    /// Lookups sent to the catalog.
    pub misses: u64,
    /// `hits / (hits + misses)`, when there was a lookup.
    pub hit_rate: Option<f64>,
}

/// One change of leader.
#[derive(Debug, Serialize)]
pub struct ElectionView {
    /// The new epoch.
    pub epoch: u64,
    /// Its leader.
    pub leader: Option<ReplicaId>,
    /// The leader before.
    pub previous: Option<ReplicaId>,
    /// Seconds ago this front end learnt of it.
    pub seconds_ago: f64,
    /// Elected by this front end: milliseconds from finding the leader failing (or the
    /// first check) to the new record.
    pub took_ms: Option<u64>,
}

/// What a snapshot is made of, gathered by the runtime.
pub struct Inputs {
    /// The record read from the catalog now, or why it could not be read.
    pub catalog: Result<Leadership, String>,
    /// The record this front end holds.
    pub held: Leadership,
    /// Each replica's status call.
    pub replicas: Vec<(ReplicaId, Result<ReplicaStatus, String>)>,
    /// The cache's counters.
    pub cache: CacheStats,
    /// Changes of leader, oldest first, with how long ago each was learnt.
    pub changes: Vec<(LeaderChange, Duration)>,
    /// Seconds since the front end started.
    pub uptime: Duration,
    /// Trades and lookups answered so far.
    pub trades: u64,
    /// Lookups answered so far.
    pub lookups: u64,
    /// Trades per second, from [`TradeRate`].
    pub trades_per_second: f64,
}

impl Snapshot {
    /// Puts a snapshot together (no I/O).
    pub fn assemble(inputs: Inputs) -> Self {
        let (record, catalog) = match inputs.catalog {
            Ok(record) => (
                record,
                ServiceView {
                    up: true,
                    problem: None,
                },
            ),
            Err(problem) => (
                inputs.held,
                ServiceView {
                    up: false,
                    problem: Some(problem),
                },
            ),
        };
        let leader_view = inputs.replicas.iter().find_map(|(_, status)| match status {
            Ok(status) if status.role == Role::Leader && Some(status.id) == record.leader => {
                Some(status.clone())
            }
            _ => None,
        });
        let replicas = inputs
            .replicas
            .into_iter()
            .map(|(id, status)| {
                let in_sync = record.in_sync.contains(&id);
                match status {
                    Ok(status) => {
                        let lag = leader_view.as_ref().and_then(|leader| {
                            if leader.id == id {
                                Some((0, 0.0))
                            } else {
                                leader
                                    .followers
                                    .iter()
                                    .find(|f| f.id == id)
                                    .map(|f| (f.entries, f.millis as f64 / 1000.0))
                            }
                        });
                        ReplicaView {
                            id,
                            up: true,
                            role: role_name(status.role),
                            epoch: Some(status.epoch),
                            last: status.last.map(|p| p.number),
                            in_sync,
                            lag_entries: lag.map(|(entries, _)| entries),
                            lag_seconds: lag.map(|(_, seconds)| seconds),
                            set_aside: Some(status.set_aside),
                            problem: status.storage_failure,
                        }
                    }
                    Err(problem) => ReplicaView {
                        id,
                        up: false,
                        role: "down",
                        epoch: None,
                        last: None,
                        in_sync,
                        lag_entries: None,
                        lag_seconds: None,
                        set_aside: None,
                        problem: Some(problem),
                    },
                }
            })
            .collect();
        let cache = inputs.cache;
        let looked_up = cache.hits + cache.misses;
        Snapshot {
            leadership: LeadershipView {
                epoch: record.epoch,
                leader: record.leader,
                in_sync: record.in_sync,
            },
            catalog,
            replicas,
            front_end: FrontEndView {
                uptime_seconds: inputs.uptime.as_secs_f64(),
                trades_per_second: inputs.trades_per_second,
                trades: inputs.trades,
                lookups: inputs.lookups,
                cache: CacheView {
                    enabled: cache.enabled,
                    entries: cache.entries,
                    capacity: cache.capacity,
                    hits: cache.hits,
                    misses: cache.misses,
                    hit_rate: (looked_up > 0).then(|| cache.hits as f64 / looked_up as f64),
                },
            },
            elections: inputs
                .changes
                .into_iter()
                .rev()
                .map(|(change, ago)| ElectionView {
                    epoch: change.epoch,
                    leader: change.leader,
                    previous: change.previous,
                    seconds_ago: ago.as_secs_f64(),
                    took_ms: change.took.map(|took| took.as_millis() as u64),
                })
                .collect(),
        }
    }

    /// The JSON body.
    pub fn to_json(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Syncing => "syncing",
        Role::Idle => "idle",
    }
}

/// Trades per second, from samples of the trade count taken at each snapshot.
#[derive(Debug, Default)]
pub struct TradeRate {
    samples: VecDeque<(Instant, u64)>,
}

impl TradeRate {
    /// Takes the count `total` at `now` and gives the rate since the oldest sample within
    /// the window (0 until there are two samples).
    pub fn sample(&mut self, now: Instant, total: u64) -> f64 {
        while let Some(&(at, _)) = self.samples.front() {
            if now.saturating_duration_since(at) > RATE_WINDOW || self.samples.len() >= MAX_SAMPLES
            {
                self.samples.pop_front();
            } else {
                break;
            }
        }
        self.samples.push_back((now, total));
        let Some(&(first_at, first)) = self.samples.front() else {
            return 0.0;
        };
        let seconds = now.saturating_duration_since(first_at).as_secs_f64();
        if seconds <= 0.0 {
            return 0.0;
        }
        total.saturating_sub(first) as f64 / seconds
    }
}

/// The last snapshot and when it was made.
#[derive(Debug, Default)]
pub struct Reused {
    /// The body and its time.
    pub last: Option<(Instant, Bytes)>,
    /// The trade rate's samples.
    pub rate: TradeRate,
}

impl Reused {
    /// The body, if it is recent enough at `now`.
    pub fn fresh(&self, now: Instant) -> Option<Bytes> {
        match &self.last {
            Some((at, body)) if now.saturating_duration_since(*at) < REUSE_FOR => {
                Some(body.clone())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::wire::{FollowerLag, LogPosition};

    fn status(id: ReplicaId, role: Role, last: u64) -> ReplicaStatus {
        ReplicaStatus {
            leader_id: Some(3),
            last: Some(LogPosition {
                epoch: 4,
                number: last,
            }),
            catalog_link: true,
            placing: role == Role::Leader,
            ..ReplicaStatus::new(id, role, 4)
        }
    }

    #[test]
    fn a_snapshot_shows_the_leader_the_lag_and_who_is_down() {
        let mut leader = status(3, Role::Leader, 20);
        leader.followers = vec![FollowerLag {
            id: 2,
            up: true,
            persisted: Some(18),
            entries: 2,
            millis: 250,
        }];
        let record = Leadership {
            epoch: 4,
            leader: Some(3),
            in_sync: vec![2, 3],
        };
        let snapshot = Snapshot::assemble(Inputs {
            catalog: Ok(record.clone()),
            held: record,
            replicas: vec![
                (1, Err("connection refused".into())),
                (2, Ok(status(2, Role::Follower, 18))),
                (3, Ok(leader)),
            ],
            cache: CacheStats {
                hits: 3,
                misses: 1,
                evictions: 0,
                entries: 2,
                enabled: true,
                capacity: 5,
            },
            changes: vec![(
                LeaderChange {
                    epoch: 4,
                    leader: Some(3),
                    previous: Some(1),
                    at: Duration::ZERO,
                    took: Some(Duration::from_millis(120)),
                },
                Duration::from_secs(2),
            )],
            uptime: Duration::from_secs(9),
            trades: 10,
            lookups: 4,
            trades_per_second: 1.5,
        });
        let json: serde_json::Value = serde_json::from_slice(&snapshot.to_json()).unwrap();
        assert_eq!(json["leadership"]["leader"], 3);
        assert_eq!(json["replicas"][0]["role"], "down");
        assert_eq!(json["replicas"][0]["in_sync"], false);
        assert_eq!(json["replicas"][1]["lag_entries"], 2);
        assert_eq!(json["replicas"][1]["lag_seconds"], 0.25);
        assert_eq!(json["replicas"][2]["lag_entries"], 0);
        assert_eq!(json["front_end"]["cache"]["hit_rate"], 0.75);
        assert_eq!(json["elections"][0]["took_ms"], 120);
        assert_eq!(json["catalog"]["up"], true);
    }

    #[test]
    fn with_the_catalog_down_the_held_record_is_shown() {
        let held = Leadership {
            epoch: 2,
            leader: Some(1),
            in_sync: vec![1],
        };
        let snapshot = Snapshot::assemble(Inputs {
            catalog: Err("timed out".into()),
            held,
            replicas: Vec::new(),
            cache: CacheStats::default(),
            changes: Vec::new(),
            uptime: Duration::ZERO,
            trades: 0,
            lookups: 0,
            trades_per_second: 0.0,
        });
        assert!(!snapshot.catalog.up);
        assert_eq!(snapshot.leadership.leader, Some(1));
        assert_eq!(snapshot.front_end.cache.hit_rate, None);
    }

    #[test]
    fn the_trade_rate_is_measured_over_the_window() {
        let mut rate = TradeRate::default();
        let start = Instant::now();
        assert_eq!(rate.sample(start, 0), 0.0);
        assert_eq!(rate.sample(start + Duration::from_secs(2), 100), 50.0);
        // Samples older than the window are dropped.
        let late = start + Duration::from_secs(30);
        assert_eq!(rate.sample(late, 400), 0.0);
        assert_eq!(rate.sample(late + Duration::from_secs(1), 410), 10.0);
    }
}
