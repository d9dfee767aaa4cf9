//! Wire types: every message that crosses a connection between two Stock Bazaar services.
//!
//! A frame's body is one [`Envelope`] encoded with MessagePack. Requests carry an id the caller
//! chose; the answer echoes it, and so do the frames a subscription pushes later.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Version of the internal protocol; a hello with another version is refused.
pub const PROTOCOL_VERSION: u32 = 3;

/// Longest stock name, in bytes.
pub const MAX_STOCK_NAME_BYTES: usize = 64;

/// Longest request id, in bytes (an HTTP `Idempotency-Key` becomes one).
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// One frame's body: a request or response and the id that pairs them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Chosen by the caller, echoed by the answer.
    pub id: u64,
    /// The message itself.
    pub body: T,
}

/// The first frame on every connection, sent by the side that dialed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The dialer's [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The shared cluster token, when the cluster is configured with one.
    pub token: Option<String>,
    /// Who is dialing, for the listener's logs (e.g. `frontend`, `order-2`).
    pub peer: String,
}

impl Hello {
    /// A hello at this build's protocol version.
    pub fn new(peer: impl Into<String>, token: Option<String>) -> Self {
        Hello {
            version: PROTOCOL_VERSION,
            token,
            peer: peer.into(),
        }
    }
}

/// The listener's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HelloReply {
    /// The connection is open for requests.
    Welcome {
        /// Name of the service that answered (e.g. `catalog`).
        service: String,
    },
    /// The connection is refused and will be closed.
    Refused {
        /// Why, in words meant for an operator.
        reason: String,
    },
}

/// Why a server could not answer a request with a response of its own protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteError {
    /// What kind of failure, so the caller can decide whether to retry.
    pub kind: RemoteErrorKind,
    /// A description for logs.
    pub message: String,
}

impl RemoteError {
    /// A request the server will never accept as sent.
    pub fn bad_request(message: impl Into<String>) -> Self {
        RemoteError {
            kind: RemoteErrorKind::BadRequest,
            message: message.into(),
        }
    }

    /// A temporary failure: the same request may succeed later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        RemoteError {
            kind: RemoteErrorKind::Unavailable,
            message: message.into(),
        }
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

/// Classes of [`RemoteError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteErrorKind {
    /// The request is wrong; retrying it unchanged will fail again.
    BadRequest,
    /// The server cannot serve now (shutting down, storage failed, not ready); retry later.
    Unavailable,
}

/// What a server sends back for one request.
pub type Reply<T> = Result<T, RemoteError>;

/// Error from building a validated wire value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

/// The name of a stock: case-sensitive, 1 to [`MAX_STOCK_NAME_BYTES`] bytes, no control
/// characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StockName(String);

impl StockName {
    /// Validates and wraps a name.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidValue> {
        let name = name.into();
        if name.is_empty() || name.len() > MAX_STOCK_NAME_BYTES {
            return Err(InvalidValue(format!(
                "stock name must be 1 to {MAX_STOCK_NAME_BYTES} bytes"
            )));
        }
        if name.chars().any(char::is_control) {
            return Err(InvalidValue("stock name has control characters".into()));
        }
        Ok(StockName(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for StockName {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        StockName::new(value)
    }
}

impl From<StockName> for String {
    fn from(value: StockName) -> Self {
        value.0
    }
}

impl fmt::Display for StockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identifies one logical trade request end to end, across retries and failovers, so that every
/// tier can apply it once: 1 to [`MAX_REQUEST_ID_BYTES`] visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequestId(String);

impl RequestId {
    /// Validates and wraps an id.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidValue> {
        let id = id.into();
        if id.is_empty() || id.len() > MAX_REQUEST_ID_BYTES {
            return Err(InvalidValue(format!(
                "request id must be 1 to {MAX_REQUEST_ID_BYTES} bytes"
            )));
        }
        if !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidValue(
                "request id must be visible ASCII characters".into(),
            ));
        }
        Ok(RequestId(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RequestId {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        RequestId::new(value)
    }
}

impl From<RequestId> for String {
    fn from(value: RequestId) -> Self {
        value.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Buy takes stock out of the catalog; sell puts it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TradeKind {
    /// Take `quantity` out of the remaining stock.
    Buy,
    /// Add `quantity` to the remaining stock.
    Sell,
}

impl fmt::Display for TradeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TradeKind::Buy => "buy",
            TradeKind::Sell => "sell",
        })
    }
}

impl std::str::FromStr for TradeKind {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "buy" => Ok(TradeKind::Buy),
            "sell" => Ok(TradeKind::Sell),
            other => Err(InvalidValue(format!(
                "trade type must be buy or sell, not {other:?}"
            ))),
        }
    }
}

/// Requests the catalog serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CatalogRequest {
    /// Current price, quantity, volume and version of one stock.
    Lookup {
        /// The stock.
        name: StockName,
    },
    /// Leader only: entries of its log to apply as the catalog's trades at their numbers, in
    /// order, and the trades it refuses at their place among them (see [`ApplyItem`]). The
    /// leader decides and numbers every trade; the catalog checks that each comes out as
    /// the leader decided, applies it (answered before its own fsync: the order log makes
    /// it durable) or remembers the refusal (durably, before answering), and stops at the
    /// first item that does not come out so. Refused unless `epoch` is the recorded one, so
    /// that a deposed leader cannot trade. The same request brings a catalog that lost the
    /// tail of its history back up to the log.
    Apply {
        /// The epoch of the leader that sends them.
        epoch: Epoch,
        /// At most [`MAX_BATCH`] items, in the order of the leader's log.
        items: Vec<ApplyItem>,
        /// Where the leader's log ends, once it has heard from this life of the catalog.
        log: Option<LogEnd>,
    },
    /// Leader only: every stock's level (quantity and volume) as the catalog's history
    /// leaves them, in pages of at most [`MAX_LEVELS`] by name, so that the leader can
    /// decide trades itself.
    Levels {
        /// The caller's epoch; any other than the recorded one is refused.
        epoch: Epoch,
        /// The page starts after this name (`None`: the first page).
        after: Option<StockName>,
    },
    /// Turn this connection's request into a stream: [`CatalogResponse::Invalidate`] for
    /// every change of a stock (when `invalidations`), [`CatalogResponse::Leadership`] for
    /// every change of the leadership record, and a [`CatalogResponse::Heartbeat`] at least
    /// every heartbeat interval, so that a silent catalog is noticed.
    Subscribe {
        /// Whether stock invalidations are wanted (front ends) or only leadership (replicas).
        invalidations: bool,
    },
    /// The leadership record as it is now (durable).
    ReadLeadership,
    /// Changes the leadership record if its epoch is still `expected`: the compare-and-set
    /// through which every election and every change of `in_sync` goes.
    ChangeLeadership {
        /// The epoch the caller saw; another epoch means someone else changed it first.
        expected: Epoch,
        /// What to change.
        change: LeadershipChange,
    },
    /// Leader only: where the catalog's history of trades meets the leader's order log, and
    /// the catalog's trades after that point, so that the two can be made equal (the leader
    /// records the trades its log lacks; it replays to the catalog what the catalog lacks).
    /// Also the leader's heartbeat to the catalog: each call from a leader that serves renews
    /// its lease.
    Reconcile {
        /// The caller's epoch; any other than the recorded one is refused.
        epoch: Epoch,
        /// The last entry of each epoch in the leader's log, oldest first (at most
        /// [`MAX_KNOWN`]).
        known: Vec<LogPosition>,
        /// Most trades in the answer.
        max: u32,
        /// Whether the leader can serve (it is not stalled). Each such call renews its lease:
        /// while the catalog hears from a leader that serves, no election deposes it.
        serving: bool,
        /// Where the leader's log ends (see `Apply`).
        log: Option<LogEnd>,
    },
}

/// Where a leader's log ends, told with its requests: a catalog that restarted after a crash
/// serves lookups again only once its history holds the whole log of a request made to it,
/// this life of it (so after the leader could have learnt that an earlier life's confirmation
/// of an entry is gone); every order the leader acknowledges later is then there too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEnd {
    /// The life of the catalog the leader heard from last (see `Reconciled::incarnation`).
    pub incarnation: u64,
    /// The log's last entry (`None`: it is empty).
    pub last: Option<TransactionNumber>,
}

/// One item of an `Apply`, in the order of the leader's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ApplyItem {
    /// Apply this entry as the catalog's trade at its number, which must be the next one
    /// (or confirm that the history holds it there already).
    Entry(OrderEntry),
    /// A trade the leader found the stock cannot take right before entry `before` of its
    /// log: refuse it there, remembering the refusal as its answer.
    Refuse {
        /// The log's next number when the leader decided (the catalog's must be the same).
        before: TransactionNumber,
        /// The trade.
        trade: TradeRequest,
    },
}

/// What became of one item of an `Apply` that came out as the leader decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyOutcome {
    /// The entry is the catalog's trade at its number (applied now, or before).
    Applied,
    /// The trade is refused, durably: this is its answer.
    Refused(TradeRejection),
}

/// Why an item of an `Apply` did not come out as the leader decided; nothing of it, or of
/// the items after it, was applied or remembered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyStop {
    /// The entry is beyond the catalog's next number: its history lacks the entries before
    /// it (it lost them in a crash, or an earlier request did not arrive).
    Gap,
    /// The history holds another trade at the entry's number.
    Conflict,
    /// The request id was traded before, as the catalog's trade `number`.
    Traded {
        /// Where it was traded.
        number: TransactionNumber,
    },
    /// The catalog refuses the entry. `remembered`: the request was refused before, and this
    /// is its answer; otherwise the stock cannot take it here (the leader's copy of the
    /// stocks is wrong).
    Refused {
        /// Why.
        rejection: TradeRejection,
        /// Whether it is the request's remembered answer.
        remembered: bool,
    },
    /// The stock can take the trade the leader refuses.
    WouldApply,
}

/// A stock's quantity and traded volume, as the catalog holds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLevel {
    /// The stock.
    pub name: StockName,
    /// Shares left.
    pub quantity: u64,
    /// Shares traded so far.
    pub volume: u64,
}

/// Most stocks in one answer to `Levels`.
pub const MAX_LEVELS: usize = 1_000;

/// Most items in one `Apply`, entries in one `Replicate` or `SyncUp` answer, and requests in
/// one `Batch`: far below the frame limit even at the longest names and request ids.
pub const MAX_BATCH: usize = 1_000;

/// Most epoch boundaries a history sends to find where it meets another.
pub const MAX_KNOWN: usize = 64;

/// Most replicas a leadership record may name.
pub const MAX_REPLICAS: usize = 16;

/// The cluster's leadership record, kept durably by the catalog: who leads which epoch and
/// which replicas hold every acknowledged order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Leadership {
    /// A counter the catalog advances at every election; 0 = nobody was ever elected.
    pub epoch: Epoch,
    /// The leader of `epoch`.
    pub leader: Option<ReplicaId>,
    /// The in-sync replicas, ascending: every one holds every acknowledged order. The leader
    /// acknowledges an order only once each of them has persisted it.
    pub in_sync: Vec<ReplicaId>,
}

impl fmt::Display for Leadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.leader {
            Some(leader) => write!(
                f,
                "epoch {} led by {leader}, in sync {:?}",
                self.epoch, self.in_sync
            ),
            None => write!(f, "epoch {} without a leader", self.epoch),
        }
    }
}

/// A change of the leadership record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeadershipChange {
    /// A new epoch led by `leader`, which must be in `in_sync`. The in-sync set stays as it
    /// is, except at the first election, which names it (`in_sync`, every replica).
    Elect {
        /// The new leader.
        leader: ReplicaId,
        /// The in-sync set of the very first election; ignored afterwards.
        in_sync: Vec<ReplicaId>,
    },
    /// The leader changes the in-sync set of its own epoch (it must stay a member).
    SetInSync {
        /// Who asks: the recorded leader.
        leader: ReplicaId,
        /// The new set.
        in_sync: Vec<ReplicaId>,
    },
    /// The recorded leader asks for a new epoch of its own, with the same in-sync set: it
    /// withdraws orders of its log that the catalog would not apply, and numbers again from
    /// there under the new epoch, so that no two entries ever share a position.
    Renew {
        /// Who asks: the recorded leader.
        leader: ReplicaId,
    },
    /// An operator's override: `leader` leads a new epoch alone, in sync or not. Orders only
    /// the others held may be lost.
    Unclean {
        /// The new leader.
        leader: ReplicaId,
    },
}

/// One trade, as a front end asks the order leader to place it and the leader asks the
/// catalog to apply it (under its epoch): the same request, carried unchanged end to end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeRequest {
    /// Repeating an id returns the first outcome and trades nothing again.
    pub request_id: RequestId,
    /// The stock traded.
    pub name: StockName,
    /// How many shares; signed on the wire so that a negative amount is refused by the catalog
    /// with a clear rejection instead of failing to decode.
    pub quantity: i64,
    /// Buy or sell.
    pub kind: TradeKind,
}

impl TradeRequest {
    /// Whether this asks for the trade recorded as `name`, `kind`, `quantity` (a retry), not
    /// another under a reused request id.
    pub fn same_trade(&self, name: &StockName, kind: TradeKind, quantity: i64) -> bool {
        self.name == *name && self.kind == kind && self.quantity == quantity
    }
}

/// A stock as the catalog holds it now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StockQuote {
    /// The stock.
    pub name: StockName,
    /// Price per share.
    pub price: f64,
    /// Shares left to buy.
    pub quantity: u64,
    /// Shares traded so far, buys and sells together.
    pub volume: u64,
    /// Bumped by every change of this stock; never goes back, also across restarts.
    pub version: u64,
}

/// The effect of an accepted trade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeReceipt {
    /// Remaining quantity right after this trade.
    pub quantity: u64,
    /// Traded volume right after this trade.
    pub volume: u64,
    /// The stock's version this trade created.
    pub version: u64,
}

/// Why the catalog did not apply a trade. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TradeRejection {
    /// No stock has that name.
    StockNotFound,
    /// A buy asked for more than is left.
    NotEnoughStock {
        /// What is left.
        available: u64,
    },
    /// The quantity is zero or negative.
    InvalidQuantity,
    /// Applying the trade would overflow the quantity or the volume.
    Overflow,
    /// The request id was used before for a different trade.
    RequestIdReused,
}

impl fmt::Display for TradeRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TradeRejection::StockNotFound => f.write_str("stock not found"),
            TradeRejection::NotEnoughStock { available } => {
                write!(f, "not enough stock ({available} left)")
            }
            TradeRejection::InvalidQuantity => f.write_str("quantity must be a positive integer"),
            TradeRejection::Overflow => f.write_str("trade would overflow quantity or volume"),
            TradeRejection::RequestIdReused => {
                f.write_str("request id was already used for a different trade")
            }
        }
    }
}

/// Answers of the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CatalogResponse {
    /// Answer to `Lookup`.
    Stock(StockQuote),
    /// Answer to `Lookup` of an unknown name.
    NotFound,
    /// Answer to `Apply`.
    Applied {
        /// Which life of the catalog answers: a count it raises, durably, every time it
        /// starts (see `Reconciled::incarnation`).
        incarnation: u64,
        /// One per item, in order, up to the first that did not come out as the leader
        /// decided.
        outcomes: Vec<ApplyOutcome>,
        /// Why the item after the last outcome did not, if one did not; the items after it
        /// were not looked at.
        stop: Option<ApplyStop>,
        /// The number the catalog's next trade gets: its history holds every number below.
        next: TransactionNumber,
    },
    /// Answer to `Levels`: one page of stocks, by name.
    Levels {
        /// Which life of the catalog answers.
        incarnation: u64,
        /// The levels are those after every trade numbered below this.
        next: TransactionNumber,
        /// The page, by name.
        levels: Vec<StockLevel>,
        /// Whether more pages follow (ask again after the last name).
        more: bool,
    },
    /// First answer to `Subscribe`, with the leadership record as it is; pushes follow with
    /// the same id.
    Subscribed(Leadership),
    /// The leadership record: the answer to `ReadLeadership` and to a successful
    /// `ChangeLeadership`, and pushed to subscribers after every change.
    Leadership(Leadership),
    /// An `Apply`, `Levels`, `Reconcile` or `ChangeLeadership` made under another epoch than
    /// the recorded one (or a change the record's rules refuse): nothing changed; this is the
    /// record now.
    Fenced {
        /// The record as it is.
        current: Leadership,
        /// Why, for logs.
        reason: String,
    },
    /// Answer to `Reconcile`.
    Reconciled {
        /// Which life of the catalog answers: a count it raises, durably, every time it
        /// starts. A catalog that restarted may have lost numbers it gave (to trades no log
        /// recorded yet) and give them again, under the same epoch; a leader holds a number
        /// only as long as the life that gave it, and never takes one from an older life.
        incarnation: u64,
        /// The newest position the catalog's history and the leader's log both hold (`None`:
        /// they share nothing, or both are empty).
        meet: Option<LogPosition>,
        /// The number the catalog's next trade gets: its history holds every number below.
        next: TransactionNumber,
        /// The catalog's trades right after `meet`, oldest first, at most the asked `max`.
        trades: Vec<OrderEntry>,
        /// False when the catalog no longer remembers the trades right after `meet` (its
        /// window of recent trades has moved past them).
        complete: bool,
    },
    /// Pushed to subscribers every heartbeat interval.
    Heartbeat {
        /// Why the catalog cannot make trades durable now (its disk failed), if it cannot;
        /// it restarts from its log once the disk takes writes again.
        storage_failure: Option<String>,
    },
    /// Pushed to subscribers after every change, before the trade is answered.
    Invalidate {
        /// The stock that changed.
        name: StockName,
        /// Its version after the change.
        version: u64,
    },
}

/// Identifies an order replica (`order --id N`).
pub type ReplicaId = u32;

/// A leadership term. Every election uses a larger one; replicas refuse an older leader.
pub type Epoch = u64;

/// The number of an order: from 0, one more per successful trade, never reused.
pub type TransactionNumber = u64;

/// A position in the order log: an entry's number and the epoch of the leader that made it.
/// Two logs holding the same position hold the same entries up to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LogPosition {
    /// Epoch of the entry; compared first, so that positions order by recency.
    pub epoch: Epoch,
    /// Number of the entry.
    pub number: TransactionNumber,
}

impl fmt::Display for LogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}@{}", self.number, self.epoch)
    }
}

/// One order as every replica's log records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEntry {
    /// Its transaction number.
    pub number: TransactionNumber,
    /// Epoch of the leader that numbered it.
    pub epoch: Epoch,
    /// The request that placed it; a retry with this id gets this entry's number.
    pub request_id: RequestId,
    /// The stock traded.
    pub name: StockName,
    /// Buy or sell.
    pub kind: TradeKind,
    /// Shares traded.
    pub quantity: u64,
}

impl OrderEntry {
    /// The entry's position in the log.
    pub fn position(&self) -> LogPosition {
        LogPosition {
            epoch: self.epoch,
            number: self.number,
        }
    }
}

/// Requests the order replicas serve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OrderRequest {
    /// Trade and record an order (leader only).
    PlaceOrder(TradeRequest),
    /// One recorded order, by number.
    GetOrder {
        /// The order's number.
        number: TransactionNumber,
    },
    /// Liveness, role and log position.
    Status,
    /// Leader to follower: append `entries`, which follow `prev` in the leader's log.
    Replicate {
        /// The leader's epoch.
        epoch: Epoch,
        /// Who sends it.
        leader_id: ReplicaId,
        /// The entry right before `entries[0]`; `None` when they start the log.
        prev: Option<LogPosition>,
        /// Consecutive entries.
        entries: Vec<OrderEntry>,
        /// How many times the leader has set entries of its log aside in this epoch (at its
        /// start, entries it inherited that the catalog would not apply). A follower that
        /// sees the count grow catches up with `SyncUp`, setting aside what the leader no
        /// longer holds; an older message (a lower count) is refused.
        cuts: u32,
    },
    /// Follower to leader: the entries after the newest of `known` that the leader also
    /// holds.
    SyncUp {
        /// The follower's epoch.
        epoch: Epoch,
        /// Who asks.
        follower_id: ReplicaId,
        /// The last entry of each epoch in the follower's log, oldest first.
        known: Vec<LogPosition>,
    },
    /// The entries this replica holds on disk from `from` on, at most `max` (and at most
    /// [`READ_LOG_MAX`]) of them: how an audit reads every replica's log over the network.
    ReadLog {
        /// The first entry wanted.
        from: TransactionNumber,
        /// Most entries in the answer.
        max: u32,
    },
    /// Several requests at once (at most [`MAX_BATCH`], none of them a batch), answered by
    /// one [`OrderResponse::Batch`] once each is answered: how a front end sends whatever its
    /// clients asked for while its last message was on its way.
    Batch(Vec<OrderRequest>),
}

/// Most entries one `ReadLog` answer carries: as many as a `SyncUp` batch, so that a page of
/// the longest entries (128-byte request ids, 64-byte names) stays far below the default
/// frame limit and costs the replica no more than a follower's catch-up step does.
pub const READ_LOG_MAX: u32 = 1_000;

/// What a replica is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// It numbers and records orders.
    Leader,
    /// It is caught up with the leader and follows it.
    Follower,
    /// It is fetching what it missed from the leader and serves nothing yet.
    Syncing,
    /// It knows of no leader it may follow or lead: none is recorded, or the record names it
    /// for an epoch it cannot lead again after a restart (it waits for a new election).
    Idle,
}

/// Answer to `Status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The replica.
    pub id: ReplicaId,
    /// What it is doing.
    pub role: Role,
    /// The highest epoch it has seen.
    pub epoch: Epoch,
    /// Who it believes leads.
    pub leader_id: Option<ReplicaId>,
    /// Its last durable entry.
    pub last: Option<LogPosition>,
    /// Whether its link to the catalog is up (heartbeats arrive): a leader without it cannot
    /// trade, so electors replace it.
    pub catalog_link: bool,
    /// Leader only: it places orders (it has recorded every trade the catalog applied).
    pub placing: bool,
    /// Leader only: it cannot commit (its in-sync set is below the write quorum, or orders
    /// have waited for their in-sync replicas for too long), so electors replace it.
    pub stalled: bool,
    /// Why its order log cannot be written (its disk failed), if so: it acknowledges nothing
    /// and may not lead until it has restarted from its log.
    pub storage_failure: Option<String>,
    /// Leader only: the newest committed entry of its term.
    pub commit: Option<TransactionNumber>,
    /// Leader only: the in-sync set it waits for.
    pub in_sync: Vec<ReplicaId>,
    /// Leader only: how far each follower is behind it.
    pub followers: Vec<FollowerLag>,
    /// Entries it has set aside (a suffix the leader of the time did not hold).
    pub set_aside: u64,
    /// Catch-ups with a leader it has begun since it started.
    pub catch_ups: u64,
}

impl ReplicaStatus {
    /// A replica in `role` at `epoch` that knows nothing else yet: no leader, an empty log,
    /// no catalog link, not placing, nothing set aside (set the rest as needed).
    pub fn new(id: ReplicaId, role: Role, epoch: Epoch) -> Self {
        ReplicaStatus {
            id,
            role,
            epoch,
            leader_id: None,
            last: None,
            catalog_link: false,
            placing: false,
            stalled: false,
            storage_failure: None,
            commit: None,
            in_sync: Vec::new(),
            followers: Vec::new(),
            set_aside: 0,
            catch_ups: 0,
        }
    }
}

/// How far a follower is behind its leader, as the leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowerLag {
    /// The follower.
    pub id: ReplicaId,
    /// It answers and is caught up enough to be waited for.
    pub up: bool,
    /// The newest entry it has persisted, as far as the leader knows.
    pub persisted: Option<TransactionNumber>,
    /// Entries the leader holds that it has not persisted.
    pub entries: u64,
    /// Milliseconds since it last held every entry the leader held (0 when it does now).
    pub millis: u64,
}

/// Answers of the order replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OrderResponse {
    /// The order is recorded with this number (now, or by an earlier try of the same id).
    Placed {
        /// Its transaction number.
        number: TransactionNumber,
        /// The epoch that numbered it, so that a front end can tell which replicas hold it.
        epoch: Epoch,
    },
    /// The catalog refused the trade; no number was used.
    Rejected(TradeRejection),
    /// Answer to `GetOrder`.
    Order(OrderEntry),
    /// No order has that number.
    OrderNotFound,
    /// Answer to `Status`.
    Status(ReplicaStatus),
    /// `Replicate` accepted: everything up to `last` is durable here.
    Replicated {
        /// The follower's last durable entry.
        last: Option<LogPosition>,
    },
    /// `Replicate` does not follow this replica's log (a gap or a different history); it is
    /// syncing up with the leader.
    Behind {
        /// This replica's last entry.
        last: Option<LogPosition>,
    },
    /// Answer to `SyncUp`: the entries to adopt, starting right after `from`.
    Entries {
        /// The newest position both logs share (`None`: start of the log).
        from: Option<LogPosition>,
        /// Consecutive entries after `from`, at most a batch.
        entries: Vec<OrderEntry>,
        /// The leader's last entry, so the follower knows when it has everything.
        leader_last: Option<LogPosition>,
    },
    /// Answer to `ReadLog`: consecutive entries from the one asked for (none past the end).
    Log {
        /// The entries.
        entries: Vec<OrderEntry>,
        /// This replica's last durable entry.
        last: Option<LogPosition>,
        /// Orders it has set aside (a suffix the leader did not hold; see `diverged.log`).
        set_aside: u64,
    },
    /// This replica does not lead; retry at the one named.
    NotLeader {
        /// Its epoch.
        epoch: Epoch,
        /// Who it believes leads.
        leader_id: Option<ReplicaId>,
    },
    /// The sender's epoch is older than this replica's; it must not act as leader.
    StaleEpoch {
        /// This replica's epoch.
        epoch: Epoch,
        /// Who it believes leads.
        leader_id: Option<ReplicaId>,
    },
    /// Answer to `Batch`: one answer per request, in order.
    Batch(Vec<Reply<OrderResponse>>),
}
