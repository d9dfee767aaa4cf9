//! The catalog's state machine, free of I/O: the stocks, the window of recent request ids that
//! makes trades exactly-once, and the rules of a trade. The store feeds it recovered records;
//! the service feeds it requests.

use std::collections::HashMap;

use common::safety::{Rule, Rules};
use common::wire::{
    AppliedTrade, Epoch, Leadership, RequestId, StockName, StockQuote, TradeKind, TradeReceipt,
    TradeRejection, TradeRequest,
};
use durability::window::RecentWindow;
use serde::{Deserialize, Serialize};

use crate::Error;

/// One stock as the catalog holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stock {
    /// The stock.
    pub name: StockName,
    /// Price per share; fixed by the seed file.
    pub price: f64,
    /// Shares left.
    pub quantity: u64,
    /// Shares traded so far.
    pub volume: u64,
    /// Bumped by every change.
    pub version: u64,
    /// Sequence number of the last record that changed this stock, so that a lookup can wait
    /// until what it shows is durable.
    pub last_seq: u64,
}

impl Stock {
    /// The stock as answered to a lookup.
    pub fn quote(&self) -> StockQuote {
        StockQuote {
            name: self.name.clone(),
            price: self.price,
            quantity: self.quantity,
            volume: self.volume,
            version: self.version,
        }
    }
}

/// One applied trade: what the write-ahead log stores and replays. It carries the state after
/// the trade, so replaying it is idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeRecord {
    /// Position in the catalog's history, from 1, without gaps.
    pub seq: u64,
    /// The request that caused it.
    pub request_id: RequestId,
    /// The stock traded.
    pub name: StockName,
    /// Buy or sell.
    pub kind: TradeKind,
    /// Shares traded.
    pub quantity: u64,
    /// The stock right after the trade.
    pub after: TradeReceipt,
}

/// A trade refused where another state of the stock could have accepted it (not enough
/// stock, an overflow). It is remembered like an applied trade, durably, so that an attempt of
/// the same request id that arrives late (a retry delayed in the network, a deposed leader's)
/// gets the same refusal instead of trading after its client was told it did not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The request refused.
    pub request_id: RequestId,
    /// The stock.
    pub name: StockName,
    /// Buy or sell.
    pub kind: TradeKind,
    /// Shares asked for.
    pub quantity: i64,
    /// Why.
    pub rejection: TradeRejection,
}

/// One record of the write-ahead log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogRecord {
    /// An applied trade.
    Traded(TradeRecord),
    /// A remembered refusal.
    Refused(Refusal),
}

/// What a trade request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Applied now; the record must be made durable before answering.
    Applied(TradeRecord),
    /// Refused now, in a way another state could not have: the refusal must be made durable
    /// before answering.
    Refused(Refusal),
    /// The request id was applied before: the first outcome, from record `seq`, which may
    /// still be on its way to disk.
    Repeated {
        /// The first application's record.
        seq: u64,
        /// Its outcome.
        receipt: TradeReceipt,
    },
    /// Refused; nothing changed (a refusal remembered before, which may still be on its way
    /// to disk, or one that no state could accept).
    Rejected(TradeRejection),
    /// Sent under another epoch than the recorded leader's; nothing changed.
    Fenced,
}

/// A consistent copy of the whole state, as the snapshot file holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Every record up to this one is reflected.
    pub last_seq: u64,
    /// All stocks, by name.
    pub stocks: Vec<Stock>,
    /// The recent-trade window, oldest first.
    pub recent: Vec<TradeRecord>,
    /// The recent refusals, oldest first.
    #[serde(default)]
    pub refused: Vec<Refusal>,
    /// Every trade up to this sequence number is a committed order (as the leader reported).
    #[serde(default)]
    pub recorded_through: u64,
}

/// The catalog's state.
#[derive(Debug, Clone)]
pub struct Book {
    stocks: HashMap<StockName, Stock>,
    /// Recent applied trades by request id, for exactly-once.
    recent: RecentWindow<RequestId, TradeRecord>,
    /// Recent refusals by request id, for the same.
    refused: RecentWindow<RequestId, Refusal>,
    last_seq: u64,
    /// Who may trade: only the recorded leader's epoch is admitted.
    leadership: Leadership,
    /// Every trade up to this sequence number is a committed order.
    recorded_through: u64,
    /// The safety rules (all of them, but in the simulator's mutation runs).
    rules: Rules,
}

impl Book {
    /// A book of `stocks` that remembers the last `window` request ids.
    pub fn new(stocks: Vec<Stock>, window: usize) -> Self {
        Book {
            stocks: stocks.into_iter().map(|s| (s.name.clone(), s)).collect(),
            recent: RecentWindow::new(window),
            refused: RecentWindow::new(window),
            last_seq: 0,
            leadership: Leadership::default(),
            recorded_through: 0,
            rules: Rules::ALL,
        }
    }

    /// Applies `rules` from now on (the simulator switches one off to show it matters).
    pub fn set_rules(&mut self, rules: Rules) {
        self.rules = rules;
    }

    /// The safety rules in force.
    pub fn rules(&self) -> Rules {
        self.rules
    }

    /// Parses the seed file: `name,price,quantity` per line, an optional header line, `#`
    /// comments and blank lines ignored.
    pub fn parse_seed(text: &str) -> Result<Vec<Stock>, Error> {
        let mut stocks: Vec<Stock> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if index == 0 && fields.first() == Some(&"name") {
                continue;
            }
            let bad = |why: String| Error::Seed(format!("line {line_no}: {why}"));
            let [name, price, quantity] = fields[..] else {
                return Err(bad(format!(
                    "expected name,price,quantity, found {} fields",
                    fields.len()
                )));
            };
            let name = StockName::new(name).map_err(|e| bad(e.to_string()))?;
            let price: f64 = price
                .parse()
                .map_err(|_| bad(format!("price {price:?} is not a number")))?;
            if !price.is_finite() || price < 0.0 {
                return Err(bad(format!(
                    "price {price} must be finite and not negative"
                )));
            }
            let quantity: u64 = quantity.parse().map_err(|_| {
                bad(format!(
                    "quantity {quantity:?} is not a non-negative integer"
                ))
            })?;
            if stocks.iter().any(|s| s.name == name) {
                return Err(bad(format!("{name} appears twice")));
            }
            stocks.push(Stock {
                name,
                price,
                quantity,
                volume: 0,
                version: 0,
                last_seq: 0,
            });
        }
        if stocks.is_empty() {
            return Err(Error::Seed("no stocks".into()));
        }
        Ok(stocks)
    }

    /// The newest record reflected.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// A stock by name.
    pub fn stock(&self, name: &StockName) -> Option<&Stock> {
        self.stocks.get(name)
    }

    /// Every stock, sorted by name.
    pub fn stocks(&self) -> Vec<&Stock> {
        let mut all: Vec<&Stock> = self.stocks.values().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The leadership record as this book holds it (perhaps not yet durable).
    pub fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    /// Replaces the leadership record (its rules are [`crate::leadership`]'s).
    pub fn set_leadership(&mut self, leadership: Leadership) {
        self.leadership = leadership;
    }

    /// The newest sequence number below which every trade is a committed order.
    pub fn recorded_through(&self) -> u64 {
        self.recorded_through
    }

    /// Takes the leader's word that every trade up to `seq` is a committed order; never goes
    /// back, never past the last trade.
    pub fn set_recorded_through(&mut self, seq: u64) -> Result<(), String> {
        if seq > self.last_seq {
            return Err(format!(
                "recorded through {seq}, but the last trade is {}",
                self.last_seq
            ));
        }
        self.recorded_through = self.recorded_through.max(seq);
        Ok(())
    }

    /// Forgets how far trades are recorded as orders: after an unclean election the new
    /// leader may lack orders an earlier one recorded, so it must look at every trade still
    /// remembered.
    pub fn forget_recorded(&mut self) {
        self.recorded_through = 0;
    }

    /// Up to `max` trades after sequence number `after` and up to `through`, oldest first, and
    /// whether none in between was forgotten (the window keeps the newest only).
    pub fn applied_after(&self, after: u64, through: u64, max: usize) -> (Vec<AppliedTrade>, bool) {
        let mut listed = self.recent.values_from(|r| r.seq <= after).peekable();
        let oldest = listed.peek().map_or(through.saturating_add(1), |r| r.seq);
        let complete = oldest <= after.saturating_add(1) || through <= after;
        let trades = listed
            .take_while(|r| r.seq <= through)
            .take(max)
            .map(|r| AppliedTrade {
                seq: r.seq,
                request_id: r.request_id.clone(),
                name: r.name.clone(),
                kind: r.kind,
                quantity: r.quantity,
            })
            .collect();
        (trades, complete)
    }

    /// Decides and, when accepted, applies one trade.
    pub fn trade(&mut self, epoch: Epoch, request: &TradeRequest) -> Decision {
        if self.rules.holds(Rule::Fencing) && !crate::leadership::admits(&self.leadership, epoch) {
            return Decision::Fenced;
        }
        if let Some(first) = self.recent.get(&request.request_id) {
            let same = i64::try_from(first.quantity)
                .is_ok_and(|quantity| request.same_trade(&first.name, first.kind, quantity));
            return if same {
                Decision::Repeated {
                    seq: first.seq,
                    receipt: first.after.clone(),
                }
            } else {
                Decision::Rejected(TradeRejection::RequestIdReused)
            };
        }
        if let Some(first) = self.refused.get(&request.request_id) {
            return if request.same_trade(&first.name, first.kind, first.quantity) {
                Decision::Rejected(first.rejection.clone())
            } else {
                Decision::Rejected(TradeRejection::RequestIdReused)
            };
        }
        let quantity = match u64::try_from(request.quantity) {
            Ok(q) if q > 0 => q,
            _ => return Decision::Rejected(TradeRejection::InvalidQuantity),
        };
        let Some(stock) = self.stocks.get(&request.name) else {
            return Decision::Rejected(TradeRejection::StockNotFound);
        };
        let refused = |rejection| {
            Decision::Refused(Refusal {
                request_id: request.request_id.clone(),
                name: request.name.clone(),
                kind: request.kind,
                quantity: request.quantity,
                rejection,
            })
        };
        let left = match request.kind {
            TradeKind::Buy if stock.quantity < quantity => {
                let decision = refused(TradeRejection::NotEnoughStock {
                    available: stock.quantity,
                });
                self.remember_decision(&decision);
                return decision;
            }
            TradeKind::Buy => stock.quantity - quantity,
            TradeKind::Sell => match stock.quantity.checked_add(quantity) {
                Some(left) => left,
                None => {
                    let decision = refused(TradeRejection::Overflow);
                    self.remember_decision(&decision);
                    return decision;
                }
            },
        };
        let (Some(volume), Some(version)) = (
            stock.volume.checked_add(quantity),
            stock.version.checked_add(1),
        ) else {
            let decision = refused(TradeRejection::Overflow);
            self.remember_decision(&decision);
            return decision;
        };
        let record = TradeRecord {
            seq: self.last_seq + 1,
            request_id: request.request_id.clone(),
            name: request.name.clone(),
            kind: request.kind,
            quantity,
            after: TradeReceipt {
                quantity: left,
                volume,
                version,
            },
        };
        self.apply(&record);
        Decision::Applied(record)
    }

    /// Applies a record read back from the log. Records at or below [`Book::last_seq`] are
    /// already reflected (the snapshot covers them) and are skipped; a gap or a record that
    /// names an unknown stock means the files are damaged.
    pub fn replay(&mut self, record: &TradeRecord) -> Result<(), Error> {
        if record.seq <= self.last_seq {
            return Ok(());
        }
        if record.seq != self.last_seq + 1 {
            return Err(Error::Corrupt(format!(
                "log jumps from record {} to {}",
                self.last_seq, record.seq
            )));
        }
        if !self.stocks.contains_key(&record.name) {
            return Err(Error::Corrupt(format!(
                "record {} trades unknown stock {}",
                record.seq, record.name
            )));
        }
        self.apply(record);
        Ok(())
    }

    fn apply(&mut self, record: &TradeRecord) {
        if let Some(stock) = self.stocks.get_mut(&record.name) {
            stock.quantity = record.after.quantity;
            stock.volume = record.after.volume;
            stock.version = record.after.version;
            stock.last_seq = record.seq;
        }
        self.last_seq = record.seq;
        self.remember(record.clone());
    }

    fn remember(&mut self, record: TradeRecord) {
        self.recent.insert(record.request_id.clone(), record);
    }

    fn remember_decision(&mut self, decision: &Decision) {
        if let Decision::Refused(refusal) = decision {
            self.remember_refusal(refusal.clone());
        }
    }

    /// Remembers a refusal read back from the log (or just made).
    pub fn remember_refusal(&mut self, refusal: Refusal) {
        self.refused.insert(refusal.request_id.clone(), refusal);
    }

    /// Applies any record read back from the log (see [`Book::replay`]).
    pub fn replay_record(&mut self, record: &LogRecord) -> Result<(), Error> {
        match record {
            LogRecord::Traded(record) => self.replay(record),
            LogRecord::Refused(refusal) => {
                self.remember_refusal(refusal.clone());
                Ok(())
            }
        }
    }

    /// A consistent copy of the state for the snapshot file.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            last_seq: self.last_seq,
            stocks: self.stocks().into_iter().cloned().collect(),
            recent: self.recent.values().cloned().collect(),
            refused: self.refused.values().cloned().collect(),
            recorded_through: self.recorded_through,
        }
    }

    /// Rebuilds the state from a snapshot, keeping at most `window` recent ids.
    pub fn from_snapshot(snapshot: Snapshot, window: usize) -> Self {
        let mut book = Book::new(snapshot.stocks, window);
        for record in snapshot.recent {
            book.remember(record);
        }
        for refusal in snapshot.refused {
            book.remember_refusal(refusal);
        }
        book.last_seq = snapshot.last_seq;
        book.recorded_through = snapshot.recorded_through.min(snapshot.last_seq);
        book
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> Book {
        let stocks =
            Book::parse_seed("name,price,quantity\nGameStart,15.99,100\nBoarCo,2.5,0\n").unwrap();
        let mut book = Book::new(stocks, 3);
        book.set_leadership(Leadership {
            epoch: 1,
            leader: Some(1),
            in_sync: vec![1],
        });
        book
    }

    fn request(id: &str, name: &str, quantity: i64, kind: TradeKind) -> TradeRequest {
        TradeRequest {
            request_id: RequestId::new(id).unwrap(),
            name: StockName::new(name).unwrap(),
            quantity,
            kind,
        }
    }

    fn applied(decision: Decision) -> TradeRecord {
        match decision {
            Decision::Applied(record) => record,
            other => panic!("expected an applied trade, got {other:?}"),
        }
    }

    #[test]
    fn buy_and_sell_move_quantity_volume_and_version() {
        let mut book = book();
        let buy = applied(book.trade(1, &request("a", "GameStart", 30, TradeKind::Buy)));
        assert_eq!(buy.seq, 1);
        assert_eq!(
            (buy.after.quantity, buy.after.volume, buy.after.version),
            (70, 30, 1)
        );
        let sell = applied(book.trade(1, &request("b", "GameStart", 5, TradeKind::Sell)));
        assert_eq!(
            (sell.after.quantity, sell.after.volume, sell.after.version),
            (75, 35, 2)
        );
        let exact = applied(book.trade(1, &request("c", "GameStart", 75, TradeKind::Buy)));
        assert_eq!(exact.after.quantity, 0);
    }

    #[test]
    fn refusals_change_no_stock_and_those_another_state_could_accept_are_remembered() {
        let mut book = book();
        let before = book.snapshot();
        let cases = [
            (
                request("a", "GameStart", 101, TradeKind::Buy),
                TradeRejection::NotEnoughStock { available: 100 },
            ),
            (
                request("b", "Nope", 1, TradeKind::Buy),
                TradeRejection::StockNotFound,
            ),
            (
                request("c", "GameStart", 0, TradeKind::Buy),
                TradeRejection::InvalidQuantity,
            ),
            (
                request("d", "GameStart", -4, TradeKind::Sell),
                TradeRejection::InvalidQuantity,
            ),
            (
                request("e", "gamestart", 1, TradeKind::Buy),
                TradeRejection::StockNotFound,
            ),
            (
                request("f", "GameStart", i64::MAX, TradeKind::Buy),
                TradeRejection::NotEnoughStock { available: 100 },
            ),
        ];
        for (req, expected) in cases {
            let remembered = matches!(expected, TradeRejection::NotEnoughStock { .. });
            match book.trade(1, &req) {
                Decision::Refused(refusal) if remembered => {
                    assert_eq!(refusal.rejection, expected);
                    assert_eq!(refusal.request_id, req.request_id);
                }
                Decision::Rejected(rejection) if !remembered => assert_eq!(rejection, expected),
                other => panic!("{req:?} came to {other:?}"),
            }
        }
        let after = book.snapshot();
        assert_eq!(
            (after.stocks, after.last_seq, after.recent),
            (before.stocks, before.last_seq, before.recent)
        );
        assert_eq!(after.refused.len(), 2);
    }

    #[test]
    fn a_refused_request_id_gets_its_refusal_again_once_the_stock_is_back() {
        let mut book = book();
        let first = request("late", "GameStart", 150, TradeKind::Buy);
        let refused = TradeRejection::NotEnoughStock { available: 100 };
        assert!(matches!(book.trade(1, &first), Decision::Refused(r) if r.rejection == refused));
        applied(book.trade(1, &request("more", "GameStart", 60, TradeKind::Sell)));
        // A late attempt of the same request (a retry delayed in the network, a deposed
        // leader's) must not trade now that its client was told it did not.
        assert_eq!(book.trade(1, &first), Decision::Rejected(refused.clone()));
        assert_eq!(
            book.trade(1, &request("late", "GameStart", 1, TradeKind::Buy)),
            Decision::Rejected(TradeRejection::RequestIdReused)
        );
        let mut again = Book::from_snapshot(book.snapshot(), 3);
        again.set_leadership(book.leadership().clone());
        assert_eq!(again.trade(1, &first), Decision::Rejected(refused));
        assert_eq!(again.stock(&first.name).unwrap().quantity, 160);
    }

    #[test]
    fn overflow_is_refused() {
        let mut book = book();
        let huge = i64::MAX;
        applied(book.trade(1, &request("a", "BoarCo", huge, TradeKind::Sell)));
        applied(book.trade(1, &request("b", "BoarCo", huge, TradeKind::Sell)));
        // Quantity is now 2^64 - 2; one more large sell overflows it.
        assert!(matches!(
            book.trade(1, &request("c", "BoarCo", 2, TradeKind::Sell)),
            Decision::Refused(r) if r.rejection == TradeRejection::Overflow
        ));
    }

    #[test]
    fn a_repeated_request_id_returns_the_first_outcome() {
        let mut book = book();
        let first = applied(book.trade(1, &request("same", "GameStart", 10, TradeKind::Buy)));
        let again = book.trade(1, &request("same", "GameStart", 10, TradeKind::Buy));
        assert_eq!(
            again,
            Decision::Repeated {
                seq: first.seq,
                receipt: first.after.clone()
            }
        );
        assert_eq!(book.stock(&first.name).unwrap().quantity, 90);
        assert_eq!(
            book.trade(1, &request("same", "GameStart", 11, TradeKind::Buy)),
            Decision::Rejected(TradeRejection::RequestIdReused)
        );
    }

    #[test]
    fn only_the_recorded_epoch_trades() {
        let mut book = book();
        let stale = request("a", "GameStart", 1, TradeKind::Buy);
        assert_eq!(book.trade(0, &stale), Decision::Fenced);
        let applied = applied(book.trade(1, &request("a", "GameStart", 1, TradeKind::Buy)));
        // A retry from a deposed leader is refused too, though the id was applied.
        book.set_leadership(Leadership {
            epoch: 2,
            leader: Some(2),
            in_sync: vec![2],
        });
        assert_eq!(
            book.trade(1, &request("a", "GameStart", 1, TradeKind::Buy)),
            Decision::Fenced
        );
        assert_eq!(book.stock(&applied.name).unwrap().quantity, 99);
        let mut unled = Book::new(Book::parse_seed("A,1,1\n").unwrap(), 3);
        unled.set_leadership(Leadership::default());
        let first = request("b", "A", 1, TradeKind::Buy);
        assert_eq!(unled.trade(0, &first), Decision::Fenced);
    }

    #[test]
    fn applied_trades_are_listed_after_a_position_within_the_window() {
        let mut book = book();
        for id in ["a", "b", "c", "d"] {
            applied(book.trade(1, &request(id, "GameStart", 1, TradeKind::Buy)));
        }
        let ids = |(trades, complete): (Vec<AppliedTrade>, bool)| {
            let ids: Vec<String> = trades.iter().map(|t| t.request_id.to_string()).collect();
            (ids, complete)
        };
        assert_eq!(
            ids(book.applied_after(2, 4, 10)),
            (vec!["c".into(), "d".into()], true)
        );
        assert_eq!(ids(book.applied_after(2, 3, 10)), (vec!["c".into()], true));
        assert_eq!(ids(book.applied_after(2, 4, 1)), (vec!["c".into()], true));
        assert_eq!(ids(book.applied_after(4, 4, 10)), (vec![], true));
        // Window of 3: trade 1 ("a") is forgotten.
        assert_eq!(
            ids(book.applied_after(0, 4, 10)),
            (vec!["b".into(), "c".into(), "d".into()], false)
        );
        assert!(book.set_recorded_through(5).is_err());
        book.set_recorded_through(3).unwrap();
        book.set_recorded_through(2).unwrap();
        assert_eq!(book.recorded_through(), 3);
    }

    #[test]
    fn the_window_forgets_the_oldest_ids() {
        let mut book = book();
        for id in ["a", "b", "c", "d"] {
            applied(book.trade(1, &request(id, "GameStart", 1, TradeKind::Buy)));
        }
        // Window of 3: "a" is forgotten and would apply again; "b" is remembered.
        assert!(matches!(
            book.trade(1, &request("b", "GameStart", 1, TradeKind::Buy)),
            Decision::Repeated { .. }
        ));
        assert!(matches!(
            book.trade(1, &request("a", "GameStart", 1, TradeKind::Buy)),
            Decision::Applied(_)
        ));
    }

    #[test]
    fn snapshot_plus_replay_rebuilds_the_same_state() {
        let mut live = book();
        let mut records = Vec::new();
        for (i, kind) in [TradeKind::Buy, TradeKind::Sell, TradeKind::Buy]
            .into_iter()
            .enumerate()
        {
            records.push(applied(
                live.trade(1, &request(&format!("r{i}"), "GameStart", 7, kind)),
            ));
        }
        let mut recovered = Book::from_snapshot(book().snapshot(), 3);
        for record in records.iter().chain(records.iter()) {
            recovered.replay(record).unwrap();
        }
        assert_eq!(recovered.snapshot(), live.snapshot());
        let mut gap = book();
        assert!(gap.replay(&records[1]).is_err());
    }

    #[test]
    fn seed_errors_name_the_line() {
        for bad in [
            "GameStart,1.0\n",
            "GameStart,x,1\n",
            "GameStart,1,-1\n",
            "A,1,1\nA,2,2\n",
            "",
            "G,NaN,1\n",
        ] {
            let err = Book::parse_seed(bad).unwrap_err().to_string();
            assert!(
                err.contains("line") || err.contains("no stocks"),
                "{bad:?}: {err}"
            );
        }
    }
}
