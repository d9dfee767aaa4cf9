//! The invariants, checked as the run goes and once it has settled. As it goes: no two orders
//! are ever acknowledged at one number, an order is acknowledged only once the catalog has
//! applied it, no two entries ever sit at one position (number and epoch), at most one replica
//! leads an epoch, a new leader holds every order acknowledged before it, no log holds a
//! request id twice, a retry is never refused as a reused id. Once settled: every acknowledged order is in the final
//! history at its number with its content, no refused trade is, every request id is there at
//! most once, the replicas hold one history, and the catalog's quantities and volumes equal
//! the initial ones plus the history.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use common::wire::{Epoch, OrderEntry, ReplicaId, RequestId, StockName, TradeKind};

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The invariant's name.
    pub invariant: &'static str,
    /// What was seen.
    pub detail: String,
    /// When (simulated).
    pub at: Duration,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {:.3} s: {}",
            self.invariant,
            self.at.as_secs_f64(),
            self.detail
        )
    }
}

/// An order as the history holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// The request that placed it.
    pub request_id: RequestId,
    /// The stock.
    pub name: StockName,
    /// Buy or sell.
    pub kind: TradeKind,
    /// Shares.
    pub quantity: u64,
}

impl Order {
    /// The order an entry records.
    pub fn of(entry: &OrderEntry) -> Self {
        Order {
            request_id: entry.request_id.clone(),
            name: entry.name.clone(),
            kind: entry.kind,
            quantity: entry.quantity,
        }
    }
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} ({})",
            self.kind, self.quantity, self.name, self.request_id
        )
    }
}

/// What the checker has seen.
#[derive(Debug, Default)]
pub struct Checker {
    /// Every order a leader acknowledged, by number, with the first epoch it was
    /// acknowledged in.
    acknowledged: BTreeMap<u64, (Order, Epoch)>,
    /// Orders clients were told of, by number.
    told: BTreeMap<u64, Order>,
    /// How many orders of each stock clients were told of.
    told_of: HashMap<StockName, usize>,
    /// Trades clients were told were refused.
    refused: BTreeSet<RequestId>,
    /// Refusals the catalog remembered.
    remembered: BTreeSet<RequestId>,
    /// Those it remembered before it lost its disk: a refusal is remembered on the catalog's
    /// disk only, so a later attempt of one of them may trade.
    forgotten: BTreeSet<RequestId>,
    /// Every entry the catalog ever applied (in any of its lives), by number: the request
    /// ids applied there.
    applied: BTreeMap<u64, BTreeSet<RequestId>>,
    /// The first entry any replica appended at each position.
    positions: HashMap<(Epoch, u64), RequestId>,
    /// The leader of each epoch.
    leaders: BTreeMap<Epoch, ReplicaId>,
    /// The life (incarnation) of each replica in which it first led each epoch.
    led_in: BTreeMap<(ReplicaId, Epoch), u32>,
    /// The first violation.
    pub violation: Option<Violation>,
    /// Checks made.
    pub checks: u64,
}

impl Checker {
    fn fail(&mut self, invariant: &'static str, at: Duration, detail: String) {
        if self.violation.is_none() {
            self.violation = Some(Violation {
                invariant,
                detail,
                at,
            });
        }
    }

    /// The leader of `epoch` answered `Placed` with `number`, for a request whose entry there
    /// is `entry`.
    pub fn acknowledged(
        &mut self,
        at: Duration,
        by: ReplicaId,
        epoch: Epoch,
        number: u64,
        entry: &OrderEntry,
    ) {
        self.checks += 1;
        let order = Order::of(entry);
        let applied = self
            .applied
            .get(&number)
            .is_some_and(|ids| ids.contains(&entry.request_id));
        if !applied {
            let detail = format!(
                "replica {by} acknowledged order {number} ({order}) before the catalog applied it"
            );
            self.fail("acknowledged-orders-applied", at, detail);
        }
        match self.acknowledged.get(&number) {
            Some((first, _)) if *first != order => {
                let detail = format!(
                    "order {number} acknowledged as {first} and, by replica {by}, as {order}"
                );
                self.fail("one-order-per-number", at, detail);
            }
            Some(_) => {}
            None => {
                self.acknowledged.insert(number, (order, epoch));
            }
        }
    }

    /// The catalog applied `entry` as the trade at its number.
    pub fn catalog_applied(&mut self, entry: &OrderEntry) {
        self.applied
            .entry(entry.number)
            .or_default()
            .insert(entry.request_id.clone());
    }

    /// Replica `by` appended `entry`: no other entry may ever sit at its position (number and
    /// epoch), on any replica, or two logs holding one position would differ before it.
    pub fn positioned(&mut self, at: Duration, by: ReplicaId, entry: &OrderEntry) {
        self.checks += 1;
        let key = (entry.epoch, entry.number);
        match self.positions.get(&key) {
            Some(first) if *first != entry.request_id => {
                let detail = format!(
                    "replica {by} appended {} at #{}@{}, where {first} was appended before",
                    entry.request_id, entry.number, entry.epoch
                );
                self.fail("one-entry-per-position", at, detail);
            }
            Some(_) => {}
            None => {
                self.positions.insert(key, entry.request_id.clone());
            }
        }
    }

    /// A leader answered `Placed` with `number` for `request_id`, but its log holds another
    /// entry there (or none).
    pub fn misnumbered(&mut self, at: Duration, by: ReplicaId, number: u64, request: &RequestId) {
        let detail =
            format!("replica {by} answered {request} with order {number}, which it does not hold");
        self.fail("acknowledged-as-held", at, detail);
    }

    /// A client was told its order is `number`.
    pub fn told(&mut self, at: Duration, number: u64, order: Order) {
        self.checks += 1;
        if let Some(first) = self.told.get(&number) {
            if *first != order {
                let detail = format!("clients were told order {number} is {first} and {order}");
                return self.fail("one-order-per-number", at, detail);
            }
        }
        *self.told_of.entry(order.name.clone()).or_default() += 1;
        self.told.insert(number, order);
    }

    /// How many orders of `stock` clients were told of so far.
    pub fn told_of(&self, stock: &StockName) -> usize {
        self.told_of.get(stock).copied().unwrap_or_default()
    }

    /// The catalog answered a lookup of `stock`, sent once clients had been told of `told`
    /// orders of it, with the stock at `version`: every applied trade raises the version by
    /// one, so it must be at least that (a lookup after a trade's answer shows the trade).
    pub fn looked_up(&mut self, at: Duration, stock: &StockName, told: usize, version: u64) {
        self.checks += 1;
        if version < told as u64 {
            let detail = format!(
                "a lookup of {stock} showed version {version}, after clients were told of {told} \
                 orders of it"
            );
            self.fail("lookups-show-acknowledged-trades", at, detail);
        }
    }

    /// A client was told its trade was refused (nothing traded).
    pub fn refused(&mut self, request_id: RequestId) {
        self.refused.insert(request_id);
    }

    /// The catalog remembered a refusal of `request_id` (on its way to its disk).
    pub fn catalog_refused(&mut self, request_id: RequestId) {
        self.remembered.insert(request_id);
    }

    /// The catalog lost its disk: the refusals it remembered are gone with it.
    pub fn catalog_disk_lost(&mut self) {
        self.forgotten.extend(std::mem::take(&mut self.remembered));
    }

    /// The catalog's history of trades and the order log differ.
    pub fn catalog_history(&mut self, at: Duration, detail: String) {
        self.fail("catalog-history", at, detail);
    }

    /// The catalog applied a trade sent under `epoch` while the record was `record`: a
    /// deposed leader traded (SPEC §4.5: the catalog refuses trades from any other epoch).
    pub fn deposed_traded(
        &mut self,
        at: Duration,
        epoch: Epoch,
        request_id: &RequestId,
        record: &common::wire::Leadership,
    ) {
        let detail = format!(
            "the catalog applied {request_id}, sent under epoch {epoch}, while the record is \
             {record}"
        );
        self.fail("deposed-leaders-cannot-trade", at, detail);
    }

    /// A retry was refused as a reuse of its own id, or a valid order as malformed.
    pub fn wrongly_refused(&mut self, at: Duration, detail: String) {
        self.fail("retries-are-not-refused", at, detail);
    }

    /// Replica `id` leads `epoch`.
    pub fn leads(&mut self, at: Duration, epoch: Epoch, id: ReplicaId) {
        self.checks += 1;
        match self.leaders.get(&epoch) {
            Some(&other) if other != id => {
                let detail = format!("replicas {other} and {id} both led epoch {epoch}");
                self.fail("one-leader-per-epoch", at, detail);
            }
            Some(_) => {}
            None => {
                self.leaders.insert(epoch, id);
            }
        }
    }

    /// Replica `id` just took the lead of `epoch`: it must hold every order acknowledged in an
    /// earlier epoch (a replica that takes up a stale epoch's lead for a moment, before it
    /// hears of a newer one, need not hold what later epochs acknowledged).
    pub fn new_leader(&mut self, at: Duration, id: ReplicaId, epoch: Epoch, log: &[OrderEntry]) {
        self.checks += 1;
        for (&number, (order, acked_in)) in &self.acknowledged {
            if *acked_in >= epoch {
                continue;
            }
            let held = log.get(number as usize).map(Order::of);
            if held.as_ref() != Some(order) {
                let detail = format!(
                    "replica {id} leads epoch {epoch} but holds {} at {number}, where {order} \
                     was acknowledged",
                    held.map_or("nothing".to_owned(), |o| o.to_string())
                );
                return self.fail("new-leader-holds-acknowledged", at, detail);
            }
        }
    }

    /// Replica `id`, in its life `incarnation`, acts as the leader of `epoch`. A replica that
    /// restarted never acts for an epoch again: what it sent before it stopped may be on
    /// followers without being on its disk.
    pub fn took_office(&mut self, at: Duration, id: ReplicaId, incarnation: u32, epoch: Epoch) {
        self.checks += 1;
        let first = *self.led_in.entry((id, epoch)).or_insert(incarnation);
        if first != incarnation {
            let detail = format!(
                "replica {id} acted as leader of epoch {epoch} before it restarted, and again"
            );
            self.fail("epoch-led-once", at, detail);
        }
    }

    /// A replica appended `entry` while its log already held the same request id at `other`.
    pub fn recorded_twice(&mut self, at: Duration, id: ReplicaId, entry: &OrderEntry, other: u64) {
        let detail = format!(
            "replica {id} recorded {} at {} and at {other}",
            entry.request_id, entry.number
        );
        self.fail("request-recorded-once", at, detail);
    }

    /// A state the engines must never reach (a deadline left in the past, an index that
    /// disagrees with its log).
    pub fn internal(&mut self, at: Duration, detail: String) {
        self.fail("engine-consistency", at, detail);
    }

    /// The system never settled after the faults stopped, for a reason that breaks
    /// `invariant` (the stocks never add up, the replicas keep different histories, or it
    /// simply never settles).
    pub fn never_settled(&mut self, at: Duration, invariant: &'static str, detail: String) {
        self.fail(invariant, at, detail);
    }

    /// The system did not settle in time.
    pub fn unsettled(&mut self, at: Duration, detail: String) {
        self.fail("settles-after-faults", at, detail);
    }

    /// The settled history (every replica's log) and the catalog's final stocks: every
    /// acknowledged order at its number, no refused trade, each request id once, one history,
    /// conservation.
    pub fn settled(
        &mut self,
        at: Duration,
        logs: &[(ReplicaId, &[OrderEntry])],
        initial: &BTreeMap<StockName, u64>,
        stocks: &BTreeMap<StockName, (u64, u64)>,
    ) {
        self.checks += 1;
        if let Some((invariant, detail)) = self.settled_problem(logs, initial, stocks) {
            self.fail(invariant, at, detail);
        }
    }

    fn settled_problem(
        &self,
        logs: &[(ReplicaId, &[OrderEntry])],
        initial: &BTreeMap<StockName, u64>,
        stocks: &BTreeMap<StockName, (u64, u64)>,
    ) -> Option<(&'static str, String)> {
        let &(first_id, history) = logs.first()?;
        for &(id, log) in &logs[1..] {
            if log != history {
                let at_diff = log
                    .iter()
                    .zip(history)
                    .position(|(a, b)| a != b)
                    .unwrap_or(log.len().min(history.len()));
                let detail = format!(
                    "replicas {first_id} and {id} differ from entry {at_diff} ({} and {} entries)",
                    history.len(),
                    log.len()
                );
                return Some(("one-history", detail));
            }
        }
        for (number, entry) in history.iter().enumerate() {
            if entry.number != number as u64 {
                let detail = format!("entry {} sits at {number}", entry.number);
                return Some(("numbers-gap-free", detail));
            }
        }
        let acknowledged = self.acknowledged.iter().map(|(n, (o, _))| (n, o));
        let told = self.told.iter();
        for (sources, name) in [
            (acknowledged.collect::<Vec<_>>(), "acknowledged"),
            (told.collect(), "told"),
        ] {
            for (&number, order) in sources {
                let held = history.get(number as usize).map(Order::of);
                if held.as_ref() != Some(order) {
                    let detail = format!(
                        "order {number} was {name} as {order}; the history holds {}",
                        held.map_or("nothing".to_owned(), |o| o.to_string())
                    );
                    return Some(("acknowledged-orders-kept", detail));
                }
            }
        }
        let mut seen: HashMap<&RequestId, u64> = HashMap::new();
        for entry in history {
            if let Some(first) = seen.insert(&entry.request_id, entry.number) {
                let detail = format!(
                    "{} is recorded at {first} and {}",
                    entry.request_id, entry.number
                );
                return Some(("request-recorded-once", detail));
            }
            if self.refused.contains(&entry.request_id)
                && !self.forgotten.contains(&entry.request_id)
            {
                let detail = format!(
                    "{} was refused to its client, yet recorded at {}",
                    entry.request_id, entry.number
                );
                return Some(("refused-trades-not-recorded", detail));
            }
        }
        conservation(history, initial, stocks).map(|detail| ("conservation", detail))
    }
}

/// Why the catalog's stocks are not the initial ones plus the history, if they are not.
pub fn conservation(
    history: &[OrderEntry],
    initial: &BTreeMap<StockName, u64>,
    stocks: &BTreeMap<StockName, (u64, u64)>,
) -> Option<String> {
    let mut expected: BTreeMap<&StockName, (i128, i128)> = initial
        .iter()
        .map(|(name, &quantity)| (name, (quantity as i128, 0)))
        .collect();
    for entry in history {
        let Some((quantity, volume)) = expected.get_mut(&entry.name) else {
            return Some(format!(
                "order {} trades unknown {}",
                entry.number, entry.name
            ));
        };
        match entry.kind {
            TradeKind::Buy => *quantity -= entry.quantity as i128,
            TradeKind::Sell => *quantity += entry.quantity as i128,
        }
        *volume += entry.quantity as i128;
    }
    for (name, (quantity, volume)) in expected {
        let (held, traded) = stocks.get(name).copied().unwrap_or_default();
        if (held as i128, traded as i128) != (quantity, volume) {
            return Some(format!(
                "{name}: the catalog holds {held} (volume {traded}); initial {} and the history \
                 give {quantity} (volume {volume})",
                initial.get(name).copied().unwrap_or_default()
            ));
        }
    }
    None
}
