//! What one seed runs: the cluster's shape, the clients' work, the network's and the disks'
//! behaviour, and the faults, all drawn from the seed before the run starts.

use std::time::Duration;

use order::WriteQuorum;

use crate::rng::Rng;

/// A process of the simulated cluster, by index: the catalog, the replicas (index = replica
/// id), the front ends, then the clients.
pub type Proc = usize;

/// The catalog's index.
pub const CATALOG: Proc = 0;
/// How many order replicas run (ids 1 to 3, indexes 1 to 3).
pub const REPLICAS: usize = 3;

/// One fault, injected at its time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL, then a restart from the disk after `down_for`.
    Crash {
        /// Whom.
        proc: Proc,
        /// How long it stays down.
        down_for: Duration,
    },
    /// SIGSTOP, then SIGCONT after `frozen_for`.
    Freeze {
        /// Whom.
        proc: Proc,
        /// How long.
        frozen_for: Duration,
    },
    /// Messages on these directed links are dropped, until `lasts` is over.
    Partition {
        /// (from, to) pairs cut.
        cut: Vec<(Proc, Proc)>,
        /// How long.
        lasts: Duration,
    },
    /// The disk refuses writes; the service restarts from its log once it takes them again.
    DiskFull {
        /// Whose.
        proc: Proc,
        /// How long.
        lasts: Duration,
    },
    /// The leader is killed; the next replica to take the lead gets a disk `slow` times slower
    /// and answers out of order, and is killed within `within` of its first few trades (the
    /// window between an election and the new epoch reaching its disk); it restarts after
    /// `down_for`.
    CrashNextLeader {
        /// How soon after it takes the lead.
        within: Duration,
        /// How much slower its disk becomes.
        slow: u64,
        /// How long it stays down.
        down_for: Duration,
    },
    /// The next replica to send a trade to the catalog is killed before the answer can
    /// reach it (the trade is applied, the order never recorded there), and restarts after
    /// `down_for`.
    CrashMidTrade {
        /// How long it stays down.
        down_for: Duration,
    },
    /// The catalog is killed as soon as it has answered a refusal it remembers (not enough
    /// stock), and the leader that asked for it (which remembers it too) a few network hops
    /// later, once it may have told the refusal on; both restart after `down_for`.
    CrashAfterRefusal {
        /// How long it stays down.
        down_for: Duration,
    },
    /// The catalog is killed and its disk lost: it restarts after `down_for` on an empty state
    /// directory, and must rebuild its stocks from the replicas' order logs.
    LoseCatalogDisk {
        /// How long it stays down.
        down_for: Duration,
    },
    /// The disk takes `factor` times longer for a while.
    SlowDisk {
        /// Whose.
        proc: Proc,
        /// How much slower.
        factor: u64,
        /// How long.
        lasts: Duration,
    },
}

/// The network's behaviour while faults run.
#[derive(Debug, Clone)]
pub struct Network {
    /// Shortest one-way delay, µs.
    pub delay_min: u64,
    /// Longest one-way delay, µs.
    pub delay_max: u64,
    /// Messages lost, per mille.
    pub loss: u64,
    /// Messages delivered twice, per mille.
    pub duplication: u64,
}

/// Everything one seed runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Front ends (indexes after the replicas).
    pub frontends: usize,
    /// Clients, each with one session to a front end.
    pub clients: usize,
    /// Orders each client places.
    pub orders_per_client: u64,
    /// The stocks, with their initial quantities.
    pub stocks: Vec<(String, u64)>,
    /// When an order counts as committed.
    pub write_quorum: WriteQuorum,
    /// The network.
    pub network: Network,
    /// Disk latency, µs: shortest and longest.
    pub disk_latency: (u64, u64),
    /// Each process's clock rate, per mille of real time (1000 = exact).
    pub clock_rates: Vec<u64>,
    /// Faults are injected until then; afterwards everything heals and restarts.
    pub faults_until: Duration,
    /// The faults, by time.
    pub faults: Vec<(Duration, Fault)>,
    /// After the faults stop, the system must converge within this.
    pub settle_within: Duration,
    /// Snapshot the catalog after this many records.
    pub snapshot_every: u64,
    /// How much of each kind of fault this seed injects ([`FAULT_KINDS`] weights; swarm
    /// testing: each seed runs its own mix, so that a rare kind is dense in some seeds).
    pub mix: [u64; FAULT_KINDS],
}

/// How many kinds of fault a plan mixes.
pub const FAULT_KINDS: usize = 10;

impl Plan {
    /// The plan of `seed`; `faults` false gives the same cluster without any fault.
    pub fn draw(seed: u64, faults: bool) -> Plan {
        let mut rng = Rng::new(seed);
        let frontends = rng.range(1, 4) as usize;
        let clients = rng.range(2, 7) as usize;
        let orders_per_client = rng.range(3, 9);
        let stocks = (0..rng.range(1, 4))
            .map(|i| (format!("Stock{i}"), rng.range(5, 40)))
            .collect();
        let write_quorum = if rng.chance(250) {
            WriteQuorum::Majority
        } else {
            WriteQuorum::All
        };
        let delay_min = rng.range(50, 500);
        let network = Network {
            delay_min,
            delay_max: delay_min + rng.range(100, 5_000),
            loss: if faults && rng.chance(300) {
                rng.range(1, 30)
            } else {
                0
            },
            duplication: if faults && rng.chance(300) {
                rng.range(1, 30)
            } else {
                0
            },
        };
        let disk_min = rng.range(50, 1_000);
        let disk_latency = (disk_min, disk_min + rng.range(50, 3_000));
        let servers = 1 + REPLICAS + frontends;
        let processes = servers + clients;
        let clock_rates = (0..processes)
            .map(|p| {
                if faults && p < servers && rng.chance(100) {
                    // A skewed clock: runs up to twice as fast or half as fast.
                    rng.range(500, 2_001)
                } else {
                    1_000
                }
            })
            .collect();
        let faults_until = Duration::from_millis(rng.range(1_000, 4_000));
        // Swarm testing: each kind is in this seed's mix or not, with a weight of its own.
        let mut mix = [0u64; FAULT_KINDS];
        for weight in &mut mix {
            if rng.chance(500) {
                *weight = rng.range(1, 10);
            }
        }
        if mix.iter().all(|&w| w == 0) {
            mix[rng.range(0, FAULT_KINDS as u64) as usize] = 1;
        }
        let mut plan = Plan {
            frontends,
            clients,
            orders_per_client,
            stocks,
            write_quorum,
            network,
            disk_latency,
            clock_rates,
            faults_until,
            faults: Vec::new(),
            settle_within: Duration::from_secs(30),
            snapshot_every: rng.range(3, 20),
            mix,
        };
        if faults {
            let count = rng.range(1, 8);
            for _ in 0..count {
                let at = Duration::from_millis(rng.range(50, faults_until.as_millis() as u64));
                let fault = plan.fault(&mut rng, servers);
                plan.faults.push((at, fault));
            }
            plan.faults.sort_by_key(|(at, _)| *at);
        }
        plan
    }

    fn fault(&self, rng: &mut Rng, servers: usize) -> Fault {
        let proc = rng.range(0, servers as u64) as usize;
        let lasting = |rng: &mut Rng| Duration::from_millis(rng.range(20, 2_500));
        let total: u64 = self.mix.iter().sum();
        let mut pick = rng.range(0, total.max(1));
        let mut kind = 0;
        for (at, &weight) in self.mix.iter().enumerate() {
            if pick < weight {
                kind = at;
                break;
            }
            pick -= weight;
        }
        match kind {
            0 => Fault::Crash {
                proc,
                down_for: lasting(rng),
            },
            1 => Fault::CrashNextLeader {
                within: Duration::from_micros(rng.range(0, 30_000)),
                slow: if rng.chance(500) {
                    rng.range(10, 1_000)
                } else {
                    1
                },
                // Back before its lease runs out (so it may lead the same epoch again), or not.
                down_for: if rng.chance(500) {
                    Duration::from_millis(rng.range(5, 300))
                } else {
                    lasting(rng)
                },
            },
            2 => Fault::CrashMidTrade {
                down_for: lasting(rng),
            },
            3 => Fault::Freeze {
                proc,
                frozen_for: lasting(rng),
            },
            4 => Fault::Partition {
                cut: partition(rng, servers),
                lasts: lasting(rng),
            },
            5 => Fault::DiskFull {
                proc: rng.range(0, 1 + REPLICAS as u64) as usize,
                lasts: lasting(rng),
            },
            6 => Fault::SlowDisk {
                proc: rng.range(0, 1 + REPLICAS as u64) as usize,
                factor: rng.range(10, 500),
                lasts: lasting(rng),
            },
            7 => Fault::CrashAfterRefusal {
                down_for: Duration::from_millis(rng.range(5, 1_000)),
            },
            8 => Fault::LoseCatalogDisk {
                down_for: lasting(rng),
            },
            _ => Fault::Crash {
                proc: CATALOG,
                down_for: Duration::from_millis(rng.range(5, 1_000)),
            },
        }
    }

    /// Index of front end `n` (from 0).
    pub fn frontend(&self, n: usize) -> Proc {
        1 + REPLICAS + n
    }

    /// Index of client `n` (from 0).
    pub fn client(&self, n: usize) -> Proc {
        1 + REPLICAS + self.frontends + n
    }

    /// How many processes run, clients included.
    pub fn processes(&self) -> usize {
        1 + REPLICAS + self.frontends + self.clients
    }

    /// The processes that serve (all but the clients).
    pub fn servers(&self) -> usize {
        1 + REPLICAS + self.frontends
    }
}

/// A partition of any shape among the first `servers` processes: one isolated, two groups,
/// one link cut both ways, or one direction only.
fn partition(rng: &mut Rng, servers: usize) -> Vec<(Proc, Proc)> {
    let n = servers as u64;
    let mut cut = Vec::new();
    match rng.range(0, 4) {
        0 => {
            let alone = rng.range(0, n) as usize;
            for other in (0..servers).filter(|&o| o != alone) {
                cut.push((alone, other));
                cut.push((other, alone));
            }
        }
        1 => {
            let side: Vec<bool> = (0..servers).map(|_| rng.chance(500)).collect();
            for a in 0..servers {
                for b in 0..servers {
                    if side[a] != side[b] {
                        cut.push((a, b));
                    }
                }
            }
        }
        2 => {
            let a = rng.range(0, n) as usize;
            let b = (a + rng.range(1, n) as usize) % servers;
            cut.push((a, b));
            cut.push((b, a));
        }
        _ => {
            let a = rng.range(0, n) as usize;
            let b = (a + rng.range(1, n) as usize) % servers;
            cut.push((a, b));
        }
    }
    cut
}
