//! The catalog's state machine, free of I/O: the stocks, the window of recent request ids that
//! makes trades exactly-once, and the rules of a trade. The store feeds it recovered records;
//! the service feeds it requests.

use std::collections::HashMap;

use common::history::Positions;
use common::safety::Rules;
use common::trade::Level;
use common::wire::{
    ApplyStop, Epoch, Leadership, LogPosition, OrderEntry, RequestId, StockLevel, StockName,
    StockQuote, TradeKind, TradeReceipt, TradeRejection, TradeRequest, TransactionNumber,
};
use durability::window::{Hasher, RecentWindow};
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
    /// Number of the last trade that changed this stock, so that a lookup can wait until what
    /// it shows is durable.
    pub last_change: Option<TransactionNumber>,
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

/// One applied trade: an entry of the catalog's history, as the write-ahead log stores and
/// replays it. It carries the state after the trade, so replaying it is idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeRecord {
    /// Position in the catalog's history, from 0, without gaps: the transaction number of the
    /// order that records it.
    pub number: TransactionNumber,
    /// The epoch it was traded under.
    pub epoch: Epoch,
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

impl TradeRecord {
    /// Its position in the history.
    pub fn position(&self) -> LogPosition {
        LogPosition {
            epoch: self.epoch,
            number: self.number,
        }
    }

    /// The order entry that records it.
    pub fn entry(&self) -> OrderEntry {
        OrderEntry {
            number: self.number,
            epoch: self.epoch,
            request_id: self.request_id.clone(),
            name: self.name.clone(),
            kind: self.kind,
            quantity: self.quantity,
        }
    }
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

/// What a trade the leader refuses comes to at the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusing {
    /// Refused now, in a way another state of the stock could not have been: remembered, and
    /// to be made durable before it is answered.
    Remember(Refusal),
    /// Refused with this answer, already known (remembered before, perhaps still on its way
    /// to disk) or one no state of the stock could accept; nothing to remember.
    Answered(TradeRejection),
    /// Not as the leader decided; nothing changed.
    Stop(ApplyStop),
}

/// A consistent copy of the whole state, as the snapshot file holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The last entry of each epoch of the history it reflects, oldest first.
    pub boundaries: Vec<LogPosition>,
    /// All stocks, by name.
    pub stocks: Vec<Stock>,
    /// The recent-trade window, oldest first.
    pub recent: Vec<TradeRecord>,
    /// The recent refusals, oldest first.
    pub refused: Vec<Refusal>,
    /// Written at a clean shutdown, with every trade ever answered on disk: a catalog that
    /// starts from it has lost nothing, and serves at once.
    pub clean: bool,
}

/// The catalog's state.
#[derive(Debug, Clone)]
pub struct Book {
    stocks: HashMap<StockName, Stock, Hasher>,
    /// The positions of the history of trades.
    history: Positions,
    /// Recent applied trades by request id, for exactly-once and for the leader's
    /// reconciliation.
    recent: RecentWindow<RequestId, TradeRecord>,
    /// Recent refusals by request id, for the same.
    refused: RecentWindow<RequestId, Refusal>,
    /// Who may trade: only the recorded leader's epoch is admitted.
    leadership: Leadership,
    /// The safety rules (all of them, but in the simulator's mutation runs).
    rules: Rules,
}

impl Book {
    /// A book of `stocks` that remembers the last `window` request ids.
    pub fn new(stocks: Vec<Stock>, window: usize) -> Self {
        Book {
            stocks: stocks.into_iter().map(|s| (s.name.clone(), s)).collect(),
            history: Positions::new(),
            recent: RecentWindow::new(window),
            refused: RecentWindow::new(window),
            leadership: Leadership::default(),
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
                last_change: None,
            });
        }
        if stocks.is_empty() {
            return Err(Error::Seed("no stocks".into()));
        }
        Ok(stocks)
    }

    /// The number the next applied trade gets: the history holds every number below.
    pub fn next_number(&self) -> TransactionNumber {
        self.history.next_number()
    }

    /// The positions of the history of trades.
    pub fn history(&self) -> &Positions {
        &self.history
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

    /// Up to `max` entries of the history after `after` (from the start when `None`), oldest
    /// first, and whether the first of them is the one right after `after` (the window keeps
    /// the newest only; nothing after it counts as complete).
    pub fn entries_after(
        &self,
        after: Option<TransactionNumber>,
        max: usize,
    ) -> (Vec<OrderEntry>, bool) {
        let first = after.map_or(0, |n| n.saturating_add(1));
        let mut listed = self
            .recent
            .values_from(|r| r.number < first)
            .filter(|r| r.number >= first)
            .peekable();
        let complete =
            first >= self.next_number() || listed.peek().map(|r| r.number) == Some(first);
        let entries = listed.take(max).map(TradeRecord::entry).collect();
        (entries, complete)
    }

    /// Applies an entry of the leader's log as the trade at its number, which must be the
    /// next one, or confirms that the history holds it there already (`Ok(None)`). Returns the
    /// record to log; on a stop nothing changed.
    pub fn apply_entry(&mut self, entry: &OrderEntry) -> Result<Option<TradeRecord>, ApplyStop> {
        let next = self.next_number();
        if entry.number < next {
            if let Some(number) = self.recent.get(&entry.request_id).map(|r| r.number) {
                if number != entry.number {
                    return Err(ApplyStop::Traded { number });
                }
            }
            // The trade the history holds there, while the window remembers it.
            let held = self
                .recent
                .values_from(|r| r.number < entry.number)
                .next()
                .filter(|r| r.number == entry.number);
            let same = match held {
                Some(held) => held.request_id == entry.request_id,
                None => self.history.position(entry.number) == Some(entry.position()),
            };
            return if same {
                Ok(None)
            } else {
                Err(ApplyStop::Conflict)
            };
        }
        if entry.number > next {
            return Err(ApplyStop::Gap);
        }
        if !self.history.follows(entry.position()) {
            // Its epoch is older than the history's last: not the leader's log.
            return Err(ApplyStop::Conflict);
        }
        if let Some(first) = self.recent.get(&entry.request_id) {
            return Err(ApplyStop::Traded {
                number: first.number,
            });
        }
        if let Some(first) = self.refused.get(&entry.request_id) {
            let quantity = i64::try_from(entry.quantity).unwrap_or(i64::MAX);
            let rejection = if first.name == entry.name
                && first.kind == entry.kind
                && first.quantity == quantity
            {
                first.rejection.clone()
            } else {
                TradeRejection::RequestIdReused
            };
            return Err(ApplyStop::Refused {
                rejection,
                remembered: true,
            });
        }
        let after = self
            .effect(&entry.name, entry.kind, entry.quantity)
            .map_err(|rejection| ApplyStop::Refused {
                rejection,
                remembered: false,
            })?;
        let record = TradeRecord {
            number: entry.number,
            epoch: entry.epoch,
            request_id: entry.request_id.clone(),
            name: entry.name.clone(),
            kind: entry.kind,
            quantity: entry.quantity,
            after,
        };
        self.apply(&record);
        Ok(Some(record))
    }

    /// A trade the leader refuses right before entry `before` of its log: the refusal to
    /// answer (and remember), or why the catalog does not refuse it there.
    pub fn refuse(&mut self, before: TransactionNumber, request: &TradeRequest) -> Refusing {
        if let Some(first) = self.recent.get(&request.request_id) {
            let same = i64::try_from(first.quantity)
                .is_ok_and(|quantity| request.same_trade(&first.name, first.kind, quantity));
            return if same {
                Refusing::Stop(ApplyStop::Traded {
                    number: first.number,
                })
            } else {
                Refusing::Answered(TradeRejection::RequestIdReused)
            };
        }
        if let Some(first) = self.refused.get(&request.request_id) {
            return Refusing::Answered(
                if request.same_trade(&first.name, first.kind, first.quantity) {
                    first.rejection.clone()
                } else {
                    TradeRejection::RequestIdReused
                },
            );
        }
        let quantity = match u64::try_from(request.quantity) {
            Ok(q) if q > 0 => q,
            _ => return Refusing::Answered(TradeRejection::InvalidQuantity),
        };
        let next = self.next_number();
        if before > next {
            return Refusing::Stop(ApplyStop::Gap);
        }
        if before < next {
            // Decided on a state the history has moved past.
            return Refusing::Stop(ApplyStop::Conflict);
        }
        match self.effect(&request.name, request.kind, quantity) {
            Ok(_) => Refusing::Stop(ApplyStop::WouldApply),
            Err(rejection) if common::trade::depends_on_state(&rejection) => {
                let refusal = Refusal {
                    request_id: request.request_id.clone(),
                    name: request.name.clone(),
                    kind: request.kind,
                    quantity: request.quantity,
                    rejection,
                };
                self.remember_refusal(refusal.clone());
                Refusing::Remember(refusal)
            }
            Err(rejection) => Refusing::Answered(rejection),
        }
    }

    /// Every stock's level after the history, by name, from the first name after `after`,
    /// at most `max`; and whether more follow.
    pub fn levels(&self, after: Option<&StockName>, max: usize) -> (Vec<StockLevel>, bool) {
        let stocks = self.stocks();
        let from = after.map_or(0, |after| stocks.partition_point(|s| s.name <= *after));
        let page: Vec<StockLevel> = stocks[from..]
            .iter()
            .take(max)
            .map(|s| StockLevel {
                name: s.name.clone(),
                quantity: s.quantity,
                volume: s.volume,
            })
            .collect();
        let more = from + page.len() < stocks.len();
        (page, more)
    }

    /// The stock `name` after trading `quantity` of it, or why it cannot be traded.
    fn effect(
        &self,
        name: &StockName,
        kind: TradeKind,
        quantity: u64,
    ) -> Result<TradeReceipt, TradeRejection> {
        let stock = self.stocks.get(name).ok_or(TradeRejection::StockNotFound)?;
        let level = common::trade::traded(
            Level {
                quantity: stock.quantity,
                volume: stock.volume,
            },
            kind,
            quantity,
        )?;
        // A version that cannot grow would take 2^64 trades of one stock.
        let version = stock
            .version
            .checked_add(1)
            .ok_or(TradeRejection::Overflow)?;
        Ok(TradeReceipt {
            quantity: level.quantity,
            volume: level.volume,
            version,
        })
    }

    /// Applies a record read back from the log. Records below [`Book::next_number`] are
    /// already reflected (the snapshot covers them) and are skipped; a gap or a record that
    /// names an unknown stock means the files are damaged.
    pub fn replay(&mut self, record: &TradeRecord) -> Result<(), Error> {
        if record.number < self.next_number() {
            return Ok(());
        }
        if !self.history.follows(record.position()) {
            return Err(Error::Corrupt(format!(
                "log jumps from {:?} to record {} of epoch {}",
                self.history.last(),
                record.number,
                record.epoch
            )));
        }
        if !self.stocks.contains_key(&record.name) {
            return Err(Error::Corrupt(format!(
                "record {} trades unknown stock {}",
                record.number, record.name
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
            stock.last_change = Some(record.number);
        }
        self.history.append(record.position());
        self.recent
            .insert(record.request_id.clone(), record.clone());
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

    /// A consistent copy of the state for the snapshot file; `clean` only at a clean
    /// shutdown, with everything on disk.
    pub fn snapshot(&self, clean: bool) -> Snapshot {
        Snapshot {
            boundaries: self.history.boundaries().to_vec(),
            stocks: self.stocks().into_iter().cloned().collect(),
            recent: self.recent.values().cloned().collect(),
            refused: self.refused.values().cloned().collect(),
            clean,
        }
    }

    /// Rebuilds the state from a snapshot, keeping at most `window` recent ids.
    pub fn from_snapshot(snapshot: Snapshot, window: usize) -> Result<Self, Error> {
        let mut book = Book::new(snapshot.stocks, window);
        for record in snapshot.recent {
            book.recent.insert(record.request_id.clone(), record);
        }
        for refusal in snapshot.refused {
            book.remember_refusal(refusal);
        }
        book.history = Positions::from_boundaries(snapshot.boundaries)
            .ok_or_else(|| Error::Corrupt("snapshot: epochs of its history go back".into()))?;
        Ok(book)
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

    fn entry(number: u64, id: &str, name: &str, quantity: u64, kind: TradeKind) -> OrderEntry {
        OrderEntry {
            number,
            epoch: 1,
            request_id: RequestId::new(id).unwrap(),
            name: StockName::new(name).unwrap(),
            kind,
            quantity,
        }
    }

    /// Applies the next entry, which must apply.
    fn apply(book: &mut Book, id: &str, name: &str, quantity: u64, kind: TradeKind) -> TradeRecord {
        let number = book.next_number();
        book.apply_entry(&entry(number, id, name, quantity, kind))
            .unwrap()
            .expect("applied now")
    }

    #[test]
    fn buy_and_sell_move_quantity_volume_and_version() {
        let mut book = book();
        let buy = apply(&mut book, "a", "GameStart", 30, TradeKind::Buy);
        assert_eq!((buy.number, buy.epoch), (0, 1));
        assert_eq!(
            (buy.after.quantity, buy.after.volume, buy.after.version),
            (70, 30, 1)
        );
        let sell = apply(&mut book, "b", "GameStart", 5, TradeKind::Sell);
        assert_eq!(
            (sell.after.quantity, sell.after.volume, sell.after.version),
            (75, 35, 2)
        );
        let exact = apply(&mut book, "c", "GameStart", 75, TradeKind::Buy);
        assert_eq!(exact.after.quantity, 0);
    }

    #[test]
    fn refusals_change_no_stock_and_those_another_state_could_accept_are_remembered() {
        let mut book = book();
        let before = book.snapshot(false);
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
            match book.refuse(0, &req) {
                Refusing::Remember(refusal) if remembered => {
                    assert_eq!(refusal.rejection, expected);
                    assert_eq!(refusal.request_id, req.request_id);
                }
                Refusing::Answered(rejection) if !remembered => assert_eq!(rejection, expected),
                other => panic!("{req:?} came to {other:?}"),
            }
        }
        // An entry the stock cannot take is not applied; it says why.
        assert_eq!(
            book.apply_entry(&entry(0, "g", "GameStart", 101, TradeKind::Buy)),
            Err(ApplyStop::Refused {
                rejection: TradeRejection::NotEnoughStock { available: 100 },
                remembered: false
            })
        );
        let after = book.snapshot(false);
        assert_eq!(
            (after.stocks, after.boundaries, after.recent),
            (before.stocks, before.boundaries, before.recent)
        );
        assert_eq!(after.refused.len(), 2);
    }

    #[test]
    fn a_refusal_the_stock_could_take_or_decided_elsewhere_in_the_history_is_not_made() {
        let mut book = book();
        let fits = request("a", "GameStart", 10, TradeKind::Buy);
        assert_eq!(book.refuse(0, &fits), Refusing::Stop(ApplyStop::WouldApply));
        let big = request("b", "GameStart", 500, TradeKind::Buy);
        assert_eq!(book.refuse(1, &big), Refusing::Stop(ApplyStop::Gap));
        apply(&mut book, "c", "GameStart", 1, TradeKind::Buy);
        assert_eq!(book.refuse(0, &big), Refusing::Stop(ApplyStop::Conflict));
        assert!(book.snapshot(false).refused.is_empty());
    }

    #[test]
    fn a_refused_request_id_gets_its_refusal_again_once_the_stock_is_back() {
        let mut book = book();
        let first = request("late", "GameStart", 150, TradeKind::Buy);
        let refused = TradeRejection::NotEnoughStock { available: 100 };
        assert!(matches!(book.refuse(0, &first), Refusing::Remember(r) if r.rejection == refused));
        apply(&mut book, "more", "GameStart", 60, TradeKind::Sell);
        // A late attempt of the same request (a retry delayed in the network, a leader that
        // did not know) must not trade now that its client was told it did not.
        assert_eq!(book.refuse(1, &first), Refusing::Answered(refused.clone()));
        let as_entry = entry(1, "late", "GameStart", 150, TradeKind::Buy);
        assert_eq!(
            book.apply_entry(&as_entry),
            Err(ApplyStop::Refused {
                rejection: refused.clone(),
                remembered: true
            })
        );
        assert_eq!(
            book.refuse(1, &request("late", "GameStart", 1, TradeKind::Buy)),
            Refusing::Answered(TradeRejection::RequestIdReused)
        );
        let mut again = Book::from_snapshot(book.snapshot(false), 3).unwrap();
        again.set_leadership(book.leadership().clone());
        assert_eq!(again.refuse(1, &first), Refusing::Answered(refused));
        assert_eq!(again.stock(&first.name).unwrap().quantity, 160);
    }

    #[test]
    fn overflow_is_refused() {
        let mut book = book();
        let huge = i64::MAX as u64;
        apply(&mut book, "a", "BoarCo", huge, TradeKind::Sell);
        apply(&mut book, "b", "BoarCo", huge, TradeKind::Sell);
        // Quantity is now 2^64 - 2; one more large sell overflows it.
        assert!(matches!(
            book.refuse(2, &request("c", "BoarCo", 2, TradeKind::Sell)),
            Refusing::Remember(r) if r.rejection == TradeRejection::Overflow
        ));
    }

    #[test]
    fn an_entry_sent_again_changes_nothing_and_a_request_traded_elsewhere_says_where() {
        let mut book = book();
        let first = apply(&mut book, "same", "GameStart", 10, TradeKind::Buy);
        assert_eq!(book.apply_entry(&first.entry()), Ok(None));
        assert_eq!(book.stock(&first.name).unwrap().quantity, 90);
        let elsewhere = entry(1, "same", "GameStart", 10, TradeKind::Buy);
        assert_eq!(
            book.apply_entry(&elsewhere),
            Err(ApplyStop::Traded { number: 0 })
        );
        assert_eq!(
            book.refuse(1, &request("same", "GameStart", 10, TradeKind::Buy)),
            Refusing::Stop(ApplyStop::Traded { number: 0 })
        );
        assert_eq!(
            book.refuse(1, &request("same", "GameStart", 11, TradeKind::Buy)),
            Refusing::Answered(TradeRejection::RequestIdReused)
        );
        // Another entry where the history holds this one.
        assert_eq!(
            book.apply_entry(&entry(0, "other", "GameStart", 1, TradeKind::Buy)),
            Err(ApplyStop::Conflict)
        );
    }

    #[test]
    fn entries_apply_in_order_only_and_nothing_else_does() {
        let mut live = book();
        apply(&mut live, "a", "GameStart", 30, TradeKind::Buy);
        // Beyond the next number, or an epoch going back: not applied.
        assert_eq!(
            live.apply_entry(&entry(2, "x", "GameStart", 1, TradeKind::Buy)),
            Err(ApplyStop::Gap)
        );
        let mut older = entry(1, "x", "GameStart", 1, TradeKind::Buy);
        older.epoch = 0;
        assert_eq!(live.apply_entry(&older), Err(ApplyStop::Conflict));
        assert_eq!(live.next_number(), 1);
        assert_eq!(live.stock(&older.name).unwrap().quantity, 70);
    }

    #[test]
    fn entries_are_listed_after_a_position_within_the_window() {
        let mut book = book();
        for id in ["a", "b", "c", "d"] {
            apply(&mut book, id, "GameStart", 1, TradeKind::Buy);
        }
        let ids = |(entries, complete): (Vec<OrderEntry>, bool)| {
            let ids: Vec<String> = entries.iter().map(|e| e.request_id.to_string()).collect();
            (ids, complete)
        };
        assert_eq!(
            ids(book.entries_after(Some(1), 10)),
            (vec!["c".into(), "d".into()], true)
        );
        assert_eq!(
            ids(book.entries_after(Some(1), 1)),
            (vec!["c".into()], true)
        );
        assert_eq!(ids(book.entries_after(Some(3), 10)), (vec![], true));
        assert_eq!(ids(book.entries_after(Some(9), 10)), (vec![], true));
        // Window of 3: trade 0 ("a") is forgotten.
        assert_eq!(
            ids(book.entries_after(None, 10)),
            (vec!["b".into(), "c".into(), "d".into()], false)
        );
        assert_eq!(
            book.history().last(),
            Some(LogPosition {
                epoch: 1,
                number: 3
            })
        );
    }

    #[test]
    fn the_window_forgets_the_oldest_ids() {
        let mut book = book();
        for id in ["a", "b", "c", "d"] {
            apply(&mut book, id, "GameStart", 1, TradeKind::Buy);
        }
        // Window of 3: "a" is forgotten and would apply again; "b" is remembered.
        assert_eq!(
            book.apply_entry(&entry(4, "b", "GameStart", 1, TradeKind::Buy)),
            Err(ApplyStop::Traded { number: 1 })
        );
        assert!(matches!(
            book.apply_entry(&entry(4, "a", "GameStart", 1, TradeKind::Buy)),
            Ok(Some(_))
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
            records.push(apply(&mut live, &format!("r{i}"), "GameStart", 7, kind));
        }
        let mut recovered = Book::from_snapshot(book().snapshot(false), 3).unwrap();
        for record in records.iter().chain(records.iter()) {
            recovered.replay(record).unwrap();
        }
        assert_eq!(recovered.snapshot(false), live.snapshot(false));
        let mut gap = book();
        assert!(gap.replay(&records[1]).is_err());
    }

    #[test]
    fn levels_come_in_pages_by_name() {
        let stocks = Book::parse_seed("C,1,3\nA,1,1\nB,1,2\n").unwrap();
        let book = Book::new(stocks, 3);
        let (page, more) = book.levels(None, 2);
        let names: Vec<&str> = page.iter().map(|l| l.name.as_str()).collect();
        assert_eq!((names, more), (vec!["A", "B"], true));
        let (page, more) = book.levels(Some(&StockName::new("B").unwrap()), 2);
        assert_eq!((page.len(), page[0].quantity, more), (1, 3, false));
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
