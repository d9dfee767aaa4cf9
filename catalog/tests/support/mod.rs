//! What the catalog's integration tests share: a stand-in order leader, so that trades are
//! admitted, and a receipt-or-rejection view of a trade's outcome.
#![allow(clippy::unwrap_used, dead_code)]

use std::time::Duration;

use clients::{CatalogClient, LeadershipOutcome, TradeOutcome};
use common::wire::{LeadershipChange, TradeReceipt, TradeRejection};

/// Records replica 1 as the leader of epoch 1 if nobody was ever elected, as the first
/// election would; the tests then trade under epoch 1.
pub async fn elect_stand_in(client: &CatalogClient) {
    let timeout = Duration::from_secs(10);
    let record = client.leadership(timeout).await.unwrap();
    if record.leader.is_some() {
        return;
    }
    let change = LeadershipChange::Elect {
        leader: 1,
        in_sync: vec![1],
    };
    let outcome = client.change_leadership(0, change, timeout).await.unwrap();
    assert!(
        matches!(outcome, LeadershipOutcome::Changed(_)),
        "{outcome:?}"
    );
}

/// A trade's outcome as a receipt or a rejection; a fenced trade fails the test.
pub trait Receipt {
    /// The receipt, or why the trade was refused.
    fn receipt(self) -> Result<TradeReceipt, TradeRejection>;
}

impl Receipt for TradeOutcome {
    fn receipt(self) -> Result<TradeReceipt, TradeRejection> {
        match self {
            TradeOutcome::Traded { receipt, .. } => Ok(receipt),
            TradeOutcome::Rejected(rejection) => Err(rejection),
            TradeOutcome::Fenced { current } => panic!("trade fenced; the record is {current}"),
        }
    }
}
