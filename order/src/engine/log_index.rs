//! What the engine knows of its order log without reading it: how many entries it holds, the
//! last entry of each epoch (so any entry's position), and the recent request ids with the
//! trade each placed (exactly-once). The entries themselves stay with the runtime, which
//! reads them when a command asks for them.

use common::history::Positions;
use common::wire::{
    Epoch, LogPosition, OrderEntry, RequestId, StockName, TradeKind, TradeRequest,
    TransactionNumber,
};
use durability::window::RecentWindow;

/// The trade a request id placed, as the log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The order's number.
    pub number: TransactionNumber,
    /// The stock.
    pub name: StockName,
    /// Buy or sell.
    pub kind: TradeKind,
    /// Shares.
    pub quantity: u64,
}

impl Placed {
    /// Whether `order` asks for the same trade (a retry), not another under a reused id.
    pub fn same_trade(&self, order: &TradeRequest) -> bool {
        i64::try_from(self.quantity)
            .is_ok_and(|quantity| order.same_trade(&self.name, self.kind, quantity))
    }
}

/// The shape of an order log: positions and recent request ids.
#[derive(Debug, Clone)]
pub struct LogIndex {
    positions: Positions,
    ids: RecentWindow<RequestId, Placed>,
}

impl LogIndex {
    /// An empty log that remembers the last `window` request ids.
    pub fn new(window: usize) -> Self {
        LogIndex {
            positions: Positions::new(),
            ids: RecentWindow::new(window),
        }
    }

    /// Number the next entry gets.
    pub fn next_number(&self) -> TransactionNumber {
        self.positions.next_number()
    }

    /// The last entry's position.
    pub fn last(&self) -> Option<LogPosition> {
        self.positions.last()
    }

    /// The position of entry `number`, if the log has it.
    pub fn position(&self, number: TransactionNumber) -> Option<LogPosition> {
        self.positions.position(number)
    }

    /// The log's positions.
    pub fn positions(&self) -> &Positions {
        &self.positions
    }

    /// The epoch of entry `number`, if the log has it.
    pub fn epoch_of(&self, number: TransactionNumber) -> Option<Epoch> {
        self.position(number).map(|p| p.epoch)
    }

    /// The last entry of each epoch, oldest first.
    pub fn boundaries(&self) -> &[LogPosition] {
        self.positions.boundaries()
    }

    /// What `request_id` placed, if it is among the recent ids.
    pub fn placed(&self, request_id: &RequestId) -> Option<&Placed> {
        self.ids.get(request_id)
    }

    /// The trade entry `number` records, if its request id is among the recent ids.
    pub fn placed_at(&self, number: TransactionNumber) -> Option<TradeRequest> {
        let (request_id, placed) = self.ids.entries_from(|p| p.number < number).next()?;
        (placed.number == number).then(|| TradeRequest {
            request_id: request_id.clone(),
            name: placed.name.clone(),
            quantity: i64::try_from(placed.quantity).unwrap_or(i64::MAX),
            kind: placed.kind,
        })
    }

    /// Adds `entry`, which must be the next number, of an epoch no older than the last entry's;
    /// `false` (and nothing changes) otherwise.
    pub fn append(&mut self, entry: &OrderEntry) -> bool {
        if !self.positions.append(entry.position()) {
            return false;
        }
        self.ids.insert(
            entry.request_id.clone(),
            Placed {
                number: entry.number,
                name: entry.name.clone(),
                kind: entry.kind,
                quantity: entry.quantity,
            },
        );
        true
    }

    /// Forgets every entry from `from` on.
    pub fn cut_from(&mut self, from: TransactionNumber) {
        if from >= self.next_number() {
            return;
        }
        self.positions.cut_from(from);
        self.ids.retain(|_, placed| placed.number < from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(number: u64, epoch: u64) -> OrderEntry {
        OrderEntry {
            number,
            epoch,
            request_id: RequestId::new(format!("r{number}-{epoch}")).unwrap(),
            name: StockName::new("GameStart").unwrap(),
            kind: TradeKind::Buy,
            quantity: number + 1,
        }
    }

    fn pos(number: u64, epoch: u64) -> LogPosition {
        LogPosition { epoch, number }
    }

    #[test]
    fn positions_come_from_the_epoch_boundaries_and_survive_a_cut() {
        let mut index = LogIndex::new(3);
        for (n, e) in [(0, 1), (1, 1), (2, 2), (3, 2), (4, 2)] {
            assert!(index.append(&entry(n, e)));
        }
        assert!(!index.append(&entry(9, 2)));
        assert_eq!(index.boundaries(), &[pos(1, 1), pos(4, 2)]);
        assert_eq!(index.position(0), Some(pos(0, 1)));
        assert_eq!(index.position(2), Some(pos(2, 2)));
        assert_eq!(index.position(5), None);
        // A window of three request ids.
        assert_eq!(
            index.placed(&entry(4, 2).request_id).map(|p| p.number),
            Some(4)
        );
        assert_eq!(index.placed(&entry(1, 1).request_id), None);
        assert_eq!(
            index.placed_at(3).map(|t| (t.request_id, t.quantity)),
            Some((entry(3, 2).request_id, 4))
        );
        assert_eq!(index.placed_at(1), None, "forgotten");
        assert_eq!(index.placed_at(5), None);

        index.cut_from(3);
        assert_eq!(index.last(), Some(pos(2, 2)));
        assert_eq!(index.boundaries(), &[pos(1, 1), pos(2, 2)]);
        assert_eq!(index.placed(&entry(4, 2).request_id), None);
        assert!(index.append(&entry(3, 5)));
        assert_eq!(index.boundaries(), &[pos(1, 1), pos(2, 2), pos(3, 5)]);
        index.cut_from(2);
        assert_eq!(index.boundaries(), &[pos(1, 1)]);
        index.cut_from(0);
        assert_eq!(index.last(), None);
        assert_eq!(index.next_number(), 0);
    }

    #[test]
    fn a_retry_is_the_same_trade_and_a_reused_id_is_not() {
        let mut index = LogIndex::new(10);
        let first = entry(0, 1);
        index.append(&first);
        let placed = index.placed(&first.request_id).unwrap();
        let mut order = TradeRequest {
            request_id: first.request_id.clone(),
            name: first.name.clone(),
            quantity: 1,
            kind: TradeKind::Buy,
        };
        assert!(placed.same_trade(&order));
        order.quantity = 2;
        assert!(!placed.same_trade(&order));
        order.quantity = -1;
        assert!(!placed.same_trade(&order));
    }
}
