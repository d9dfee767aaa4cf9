//! The rule of a trade, in one place: what a buy or a sell does to a stock's quantity and
//! traded volume, and when it is refused. The catalog applies it to its book; the order
//! leader applies it to its copy of the stocks, to decide each trade before the catalog has
//! seen it (the catalog then only checks that it comes out the same).

use crate::wire::{TradeKind, TradeRejection};

/// What a trade's outcome depends on: a stock's shares left and shares traded so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Level {
    /// Shares left to buy.
    pub quantity: u64,
    /// Shares traded so far, buys and sells together.
    pub volume: u64,
}

/// The level after trading `quantity` shares, or why the trade is refused: a buy needs at
/// least `quantity` left, a sell adds to them, both add to the volume, and nothing may
/// overflow. A zero quantity is refused.
pub fn traded(level: Level, kind: TradeKind, quantity: u64) -> Result<Level, TradeRejection> {
    if quantity == 0 {
        return Err(TradeRejection::InvalidQuantity);
    }
    let left = match kind {
        TradeKind::Buy if level.quantity < quantity => {
            return Err(TradeRejection::NotEnoughStock {
                available: level.quantity,
            })
        }
        TradeKind::Buy => level.quantity - quantity,
        TradeKind::Sell => level
            .quantity
            .checked_add(quantity)
            .ok_or(TradeRejection::Overflow)?,
    };
    let volume = level
        .volume
        .checked_add(quantity)
        .ok_or(TradeRejection::Overflow)?;
    Ok(Level {
        quantity: left,
        volume,
    })
}

/// Whether a refusal is one another state of the stock could have accepted (so it must be
/// remembered, durably, before it is answered: a later attempt of the same request must not
/// trade), rather than one no state could.
pub fn depends_on_state(rejection: &TradeRejection) -> bool {
    matches!(
        rejection,
        TradeRejection::NotEnoughStock { .. } | TradeRejection::Overflow
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn level(quantity: u64, volume: u64) -> Level {
        Level { quantity, volume }
    }

    #[test]
    fn buys_take_sells_add_and_both_count_as_volume() {
        assert_eq!(traded(level(10, 0), TradeKind::Buy, 4), Ok(level(6, 4)));
        assert_eq!(traded(level(6, 4), TradeKind::Sell, 5), Ok(level(11, 9)));
        assert_eq!(traded(level(3, 0), TradeKind::Buy, 3), Ok(level(0, 3)));
    }

    #[test]
    fn what_the_stock_cannot_take_is_refused() {
        assert_eq!(
            traded(level(3, 0), TradeKind::Buy, 4),
            Err(TradeRejection::NotEnoughStock { available: 3 })
        );
        assert_eq!(
            traded(level(u64::MAX, 0), TradeKind::Sell, 1),
            Err(TradeRejection::Overflow)
        );
        assert_eq!(
            traded(level(5, u64::MAX), TradeKind::Buy, 1),
            Err(TradeRejection::Overflow)
        );
        assert_eq!(
            traded(level(5, 0), TradeKind::Sell, 0),
            Err(TradeRejection::InvalidQuantity)
        );
        assert!(depends_on_state(&TradeRejection::Overflow));
        assert!(!depends_on_state(&TradeRejection::StockNotFound));
    }

    proptest! {
        #[test]
        fn a_trade_conserves_shares_or_changes_nothing(
            quantity in any::<u64>(),
            volume in any::<u64>(),
            amount in any::<u64>(),
            buy in any::<bool>(),
        ) {
            let kind = if buy { TradeKind::Buy } else { TradeKind::Sell };
            if let Ok(after) = traded(level(quantity, volume), kind, amount) {
                let moved = i128::from(after.quantity) - i128::from(quantity);
                prop_assert_eq!(moved, if buy { -i128::from(amount) } else { i128::from(amount) });
                prop_assert_eq!(after.volume - volume, amount);
            }
        }
    }
}
