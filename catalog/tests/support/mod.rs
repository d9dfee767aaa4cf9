//! What the catalog's integration tests share: a stand-in order leader, so that trades are
//! admitted, which decides and numbers trades as the real one does.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use clients::{Applied, CatalogClient, LeadershipOutcome};
use common::trade::Level;
use common::wire::{
    ApplyItem, ApplyOutcome, LeadershipChange, LogPosition, OrderEntry, RequestId, StockName,
    TradeRejection, TradeRequest, TransactionNumber,
};

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
        .reconcile(epoch, &[], 1_000, true, None)
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
        .reconcile(epoch, &known, 1, true, None)
        .await
        .unwrap()
        .expect("the stand-in leads");
}

/// A stand-in order leader of epoch 1: it decides each trade on the levels it read, numbers
/// an accepted one as its next entry, and has the catalog apply it (or make its refusal
/// durable), one `Apply` at a time, as the real leader does.
pub struct StandIn {
    /// Its connection to the catalog.
    pub client: CatalogClient,
    /// Its log's next number.
    pub next: TransactionNumber,
    levels: HashMap<StockName, Level>,
    placed: HashMap<RequestId, (TradeRequest, TransactionNumber)>,
}

impl StandIn {
    /// Elected (if nobody was), reconciled, the levels read.
    pub async fn new(client: CatalogClient) -> Self {
        elect_stand_in(&client).await;
        let (next, levels) = client.levels(1).await.unwrap().expect("epoch 1 leads");
        StandIn {
            client,
            next,
            levels: levels
                .into_iter()
                .map(|l| {
                    let level = Level {
                        quantity: l.quantity,
                        volume: l.volume,
                    };
                    (l.name, level)
                })
                .collect(),
            placed: HashMap::new(),
        }
    }

    /// The entry `request` becomes as entry `number` of epoch 1.
    pub fn entry(number: TransactionNumber, request: &TradeRequest) -> OrderEntry {
        OrderEntry {
            number,
            epoch: 1,
            request_id: request.request_id.clone(),
            name: request.name.clone(),
            kind: request.kind,
            quantity: request.quantity as u64,
        }
    }

    /// Places `request`: its number, or why it is refused.
    pub async fn trade(
        &mut self,
        request: &TradeRequest,
    ) -> Result<TransactionNumber, TradeRejection> {
        if let Some((first, number)) = self.placed.get(&request.request_id) {
            return if first == request {
                Ok(*number)
            } else {
                Err(TradeRejection::RequestIdReused)
            };
        }
        let quantity = match u64::try_from(request.quantity) {
            Ok(q) if q > 0 => q,
            _ => return Err(TradeRejection::InvalidQuantity),
        };
        let level = *self
            .levels
            .get(&request.name)
            .ok_or(TradeRejection::StockNotFound)?;
        match common::trade::traded(level, request.kind, quantity) {
            Ok(after) => {
                let number = self.next;
                let item = ApplyItem::Entry(Self::entry(number, request));
                let answer = self.client.apply(1, &[item], None).await.unwrap();
                assert!(
                    matches!(&answer, Applied::Done { outcomes, stop: None, .. } if outcomes == &[ApplyOutcome::Applied]),
                    "{answer:?}"
                );
                self.levels.insert(request.name.clone(), after);
                self.next += 1;
                self.placed
                    .insert(request.request_id.clone(), (request.clone(), number));
                Ok(number)
            }
            Err(rejection) => {
                let item = ApplyItem::Refuse {
                    before: self.next,
                    trade: request.clone(),
                };
                match self.client.apply(1, &[item], None).await.unwrap() {
                    Applied::Done {
                        outcomes,
                        stop: None,
                        ..
                    } => match &outcomes[..] {
                        [ApplyOutcome::Refused(refused)] => Err(refused.clone()),
                        other => panic!("{other:?}"),
                    },
                    other => panic!("{rejection:?} not refused: {other:?}"),
                }
            }
        }
    }
}
