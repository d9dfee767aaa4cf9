//! What the catalog's integration tests share: a stand-in order leader, so that trades are
//! admitted, and a receipt-or-rejection view of a trade's outcome.
#![allow(clippy::unwrap_used, dead_code)]

use std::time::Duration;

use clients::{CatalogClient, LeadershipOutcome, TradeOutcome};
use common::wire::{LeadershipChange, LogPosition, TradeReceipt, TradeRejection};

/// Records replica 1 as the leader of epoch 1 if nobody was ever elected, as the first
/// election would, and reconciles as that leader would with a log equal to the catalog's
/// history (a catalog that restarted after a crash serves only then); the tests then trade
/// under epoch 1.
pub async fn elect_stand_in(client: &CatalogClient) {
    let timeout = Duration::from_secs(10);
    let record = client.leadership(timeout).await.unwrap();
    if record.leader.is_none() {
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
    reconcile_stand_in(client, 1).await;
}

/// Reconciles as the leader of `epoch` whose log is the catalog's history as it is.
pub async fn reconcile_stand_in(client: &CatalogClient, epoch: u64) {
    let seen = client
        .reconcile(epoch, &[], 1_000, true)
        .await
        .unwrap()
        .expect("the stand-in leads");
    let known: Vec<LogPosition> = seen
        .trades
        .last()
        .map(|t| t.position())
        .into_iter()
        .collect();
    assert_eq!(
        known.last().map_or(0, |p| p.number + 1),
        seen.next,
        "the tests keep the history within one answer"
    );
    client
        .reconcile(epoch, &known, 1, true)
        .await
        .unwrap()
        .expect("the stand-in leads");
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
