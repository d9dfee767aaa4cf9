//! The catalog's decisions as a state machine without I/O: the book (stocks, exactly-once
//! trades), the leadership record's compare-and-set and the leader's lease, and when each
//! answer may go out (only once what it shows is on disk). Requests and flushes come in;
//! commands go out (append a trade, store the record, reply, publish the record, invalidate a
//! stock). The service ([`crate::service`]) executes them on the log, the network and the
//! subscribers; the simulator on a simulated disk and network.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use common::engine::Deadlines;
use common::safety::Rules;
use common::wire::{
    CatalogRequest, CatalogResponse, Epoch, Leadership, LeadershipChange, RemoteError, Reply,
    RequestId, StockName, StockQuote, TradeRejection, TradeRequest,
};
use durability::waiters::DurableWaiters;
use tracing::{debug, info, warn};

use crate::book::{Book, Decision, LogRecord};

pub use common::engine::{Time, Token, WriteId};

/// Longest a request waits for its record to reach the disk before answering `Unavailable`.
pub const DURABILITY_TIMEOUT: Duration = Duration::from_secs(30);
/// Most applied trades in one `AppliedSince` answer.
pub const MAX_APPLIED_BATCH: usize = 1_000;

/// What happens to the catalog.
#[derive(Debug, Clone)]
pub enum Input {
    /// A request (any but `Subscribe`, which the runtime keeps), answered by
    /// [`Command::Reply`].
    Request {
        /// Echoed by the reply.
        token: Token,
        /// The request.
        request: CatalogRequest,
    },
    /// Every write up to this one is on disk.
    Flushed(WriteId),
    /// The log cannot be written; nothing queued will become durable.
    StorageFailed(String),
    /// The clock moved; requests past their deadline are answered.
    Tick,
}

/// What the catalog asks its runtime to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Append `record` to the write-ahead log; report `write` once fsynced.
    Append {
        /// Reported by [`Input::Flushed`].
        write: WriteId,
        /// The record.
        record: LogRecord,
    },
    /// Replace the leadership record's file, in order with the log; report `write` after.
    StoreLeadership {
        /// Reported by [`Input::Flushed`].
        write: WriteId,
        /// The record.
        record: Leadership,
    },
    /// Answer a request.
    Reply {
        /// The request's token.
        token: Token,
        /// The answer.
        reply: Reply<CatalogResponse>,
    },
    /// Write a snapshot of the book now, in order with the writes (no report).
    Snapshot,
    /// Tell every subscriber the leadership record changed (it is on disk).
    Publish(Leadership),
    /// Tell the front ends a stock changed (the change is on disk), before any trade that
    /// made it is answered.
    Invalidate {
        /// The stock.
        name: StockName,
        /// Its version after the change.
        version: u64,
    },
}

/// A write on its way to disk.
#[derive(Debug, Clone)]
enum Write {
    Trade {
        seq: u64,
        name: StockName,
        version: u64,
    },
    Leadership {
        record: Leadership,
        token: Token,
    },
    Refusal {
        request_id: RequestId,
    },
}

/// What a request waiting for the disk will be answered.
#[derive(Debug, Clone)]
enum Waiting {
    Lookup(StockQuote),
    Traded(CatalogResponse),
}

/// The catalog's state.
#[derive(Debug)]
pub struct CatalogEngine {
    book: Book,
    now: Time,
    /// How long a lease lasts.
    lease_length: Duration,
    /// The leader's lease: the epoch of the last leader that said it serves, and when.
    lease: Option<(Epoch, Time)>,
    /// The leadership record on disk, as subscribers were told.
    published: Leadership,
    /// Every record up to this sequence number is on disk.
    durable_seq: u64,
    failed: Option<String>,
    writes: VecDeque<(WriteId, Write)>,
    next_write: WriteId,
    /// Requests waiting for their record, by sequence number, until their deadline.
    waiting: DurableWaiters<Waiting>,
    /// Leadership changes and refusals waiting for the disk, until their deadline.
    deadlines: Deadlines,
    /// Leadership changes waiting for their file.
    changing: BTreeSet<Token>,
    /// Refusals on their way to disk, by request id, and the requests waiting for each.
    refusing: BTreeMap<RequestId, Vec<(Token, TradeRejection)>>,
    out: Vec<Command>,
}

impl CatalogEngine {
    /// A catalog over `book` (as recovered: every record in it is on disk), at time `now`.
    pub fn new(mut book: Book, lease_length: Duration, rules: Rules, now: Time) -> Self {
        book.set_rules(rules);
        CatalogEngine {
            published: book.leadership().clone(),
            durable_seq: book.last_seq(),
            book,
            now,
            lease_length,
            lease: None,
            failed: None,
            writes: VecDeque::new(),
            next_write: 1,
            waiting: DurableWaiters::default(),
            deadlines: Deadlines::default(),
            changing: BTreeSet::new(),
            refusing: BTreeMap::new(),
            out: Vec::new(),
        }
    }

    /// Handles one input at time `now`, appending the commands it gives to `out`.
    pub fn handle(&mut self, now: Time, input: Input, out: &mut Vec<Command>) {
        self.now = self.now.max(now);
        match input {
            Input::Request { token, request } => self.request(token, request),
            Input::Flushed(write) => self.flushed(write),
            Input::StorageFailed(reason) => self.storage_failed(reason),
            Input::Tick => self.tick(),
        }
        out.append(&mut self.out);
    }

    /// The earliest time a waiting request must be answered.
    pub fn next_timer(&mut self) -> Option<Time> {
        match (self.deadlines.earliest(), self.waiting.earliest()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The book (every change in it is in the log, perhaps not yet on disk).
    pub fn book(&self) -> &Book {
        &self.book
    }

    /// The leadership record on disk: what subscribers are told first.
    pub fn published(&self) -> &Leadership {
        &self.published
    }

    /// Why the log cannot be written, once it cannot.
    pub fn storage_failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Every record up to this sequence number is on disk.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    fn reply(&mut self, token: Token, reply: Reply<CatalogResponse>) {
        self.out.push(Command::Reply { token, reply });
    }

    fn write(&mut self, write: Write) -> WriteId {
        let id = self.next_write;
        self.next_write += 1;
        self.writes.push_back((id, write));
        id
    }

    fn wait(&mut self, token: Token, seq: u64, answer: Waiting) {
        if seq <= self.durable_seq {
            let reply = match answer {
                Waiting::Lookup(quote) => CatalogResponse::Stock(quote),
                Waiting::Traded(answer) => answer,
            };
            return self.reply(token, Ok(reply));
        }
        if let Some(reason) = &self.failed {
            let why = format!("catalog storage failed: {reason}");
            return self.reply(token, Err(RemoteError::unavailable(why)));
        }
        let deadline = self.now + DURABILITY_TIMEOUT;
        self.waiting.wait(token, seq, answer, deadline);
    }

    fn request(&mut self, token: Token, request: CatalogRequest) {
        match request {
            CatalogRequest::Lookup { name } => match self.book.stock(&name) {
                // Never show a change that a crash could still take back.
                Some(stock) => {
                    let (quote, seq) = (stock.quote(), stock.last_seq);
                    self.wait(token, seq, Waiting::Lookup(quote));
                }
                None => self.reply(token, Ok(CatalogResponse::NotFound)),
            },
            CatalogRequest::Trade { epoch, trade } => self.trade(token, epoch, trade),
            CatalogRequest::ReadLeadership => {
                let record = self.published.clone();
                self.reply(token, Ok(CatalogResponse::Leadership(record)));
            }
            CatalogRequest::ChangeLeadership { expected, change } => {
                self.change_leadership(token, expected, change)
            }
            CatalogRequest::AppliedSince {
                epoch,
                recorded_through,
                after,
                max,
                serving,
            } => {
                let reply = self.applied_since(epoch, recorded_through, after, max, serving);
                self.reply(token, reply);
            }
            CatalogRequest::Subscribe { .. } => self.reply(
                token,
                Err(RemoteError::bad_request(
                    "a subscription is kept by the connection",
                )),
            ),
        }
    }

    fn trade(&mut self, token: Token, epoch: Epoch, request: TradeRequest) {
        if let Some(reason) = &self.failed {
            // The service restarts from its log once the disk takes writes again.
            let why = format!("catalog storage failed: {reason}");
            return self.reply(token, Err(RemoteError::unavailable(why)));
        }
        match self.book.trade(epoch, &request) {
            Decision::Rejected(rejection) => {
                debug!(request_id = %request.request_id, %rejection, "trade refused");
                if let Some(waiting) = self.refusing.get_mut(&request.request_id) {
                    // Refused before; the refusal is still on its way to disk.
                    waiting.push((token, rejection));
                    self.deadlines.add(token, self.now + DURABILITY_TIMEOUT);
                    return;
                }
                self.reply(token, Ok(CatalogResponse::Rejected(rejection)));
            }
            Decision::Refused(refusal) => {
                debug!(request_id = %refusal.request_id, rejection = %refusal.rejection, "trade refused; remembered");
                let write = self.write(Write::Refusal {
                    request_id: refusal.request_id.clone(),
                });
                self.refusing.insert(
                    refusal.request_id.clone(),
                    vec![(token, refusal.rejection.clone())],
                );
                self.deadlines.add(token, self.now + DURABILITY_TIMEOUT);
                self.out.push(Command::Append {
                    write,
                    record: LogRecord::Refused(refusal),
                });
            }
            Decision::Fenced => {
                let current = self.published.clone();
                debug!(request_id = %request.request_id, epoch, %current, "trade fenced");
                let reason = format!("epoch {epoch} may not trade; the record is {current}");
                self.reply(token, Ok(CatalogResponse::Fenced { current, reason }));
            }
            Decision::Repeated { seq, receipt } => {
                debug!(request_id = %request.request_id, seq, "repeated trade request");
                let answer = CatalogResponse::Traded { receipt, seq };
                self.wait(token, seq, Waiting::Traded(answer));
            }
            Decision::Applied(record) => {
                let seq = record.seq;
                let answer = CatalogResponse::Traded {
                    receipt: record.after.clone(),
                    seq,
                };
                let write = self.write(Write::Trade {
                    seq,
                    name: record.name.clone(),
                    version: record.after.version,
                });
                self.out.push(Command::Append {
                    write,
                    record: LogRecord::Traded(record),
                });
                self.wait(token, seq, Waiting::Traded(answer));
            }
        }
    }

    /// The compare-and-set of the leadership record: decided against the newest record (also
    /// one still on its way to disk, so that two changes never both succeed), answered and
    /// published once on disk.
    fn change_leadership(&mut self, token: Token, expected: Epoch, change: LeadershipChange) {
        let decided = self.lease_holds(&change).and_then(|()| {
            crate::leadership::apply(self.book.leadership(), expected, &change, self.book.rules())
        });
        let record = match decided {
            Ok(record) => record,
            Err(reason) => {
                debug!(expected, ?change, %reason, "leadership change refused");
                let current = self.published.clone();
                return self.reply(token, Ok(CatalogResponse::Fenced { current, reason }));
            }
        };
        if let Some(reason) = self.failed.clone() {
            let why = format!("catalog storage failed: {reason}");
            return self.reply(token, Err(RemoteError::unavailable(why)));
        }
        self.book.set_leadership(record.clone());
        if matches!(change, LeadershipChange::Unclean { .. }) {
            // The new leader may lack orders its predecessors recorded: it reconciles with
            // every trade still remembered. On disk before the record names it.
            self.book.forget_recorded();
            self.out.push(Command::Snapshot);
        }
        if record.epoch != expected {
            // A new leader gets one lease to take over before it can be deposed.
            self.lease = Some((record.epoch, self.now));
        }
        info!(%record, ?change, "leadership record changing");
        let write = self.write(Write::Leadership {
            record: record.clone(),
            token,
        });
        self.changing.insert(token);
        self.deadlines.add(token, self.now + DURABILITY_TIMEOUT);
        self.out.push(Command::StoreLeadership { write, record });
    }

    /// Refuses an election while the recorded leader's lease holds: the catalog heard from it,
    /// serving, within the lease. Electors that cannot reach it are the ones cut off; and
    /// front ends with different views cannot take turns replacing each other's leaders.
    /// The operator's unclean override and the leader's own changes are not held back.
    fn lease_holds(&self, change: &LeadershipChange) -> Result<(), String> {
        let current = self.book.leadership();
        let Some(leader) = current.leader else {
            return Ok(());
        };
        if !matches!(change, LeadershipChange::Elect { .. }) {
            return Ok(());
        }
        match self.lease {
            Some((epoch, heard))
                if epoch == current.epoch && self.now.saturating_sub(heard) < self.lease_length =>
            {
                Err(format!(
                    "the recorded leader {leader} of epoch {epoch} serves (the catalog heard \
                     from it {} ms ago); not deposed",
                    self.now.saturating_sub(heard).as_millis()
                ))
            }
            _ => Ok(()),
        }
    }

    /// The leader's reconciliation: stores how far every trade is a committed order, renews
    /// its lease if it serves, and lists the durable trades after `after`.
    fn applied_since(
        &mut self,
        epoch: Epoch,
        recorded_through: u64,
        after: Option<u64>,
        max: u32,
        serving: bool,
    ) -> Reply<CatalogResponse> {
        let through = self.durable_seq;
        if !crate::leadership::admits(self.book.leadership(), epoch)
            || !crate::leadership::admits(&self.published, epoch)
        {
            let current = self.published.clone();
            return Ok(CatalogResponse::Fenced {
                reason: format!("epoch {epoch} does not lead; the record is {current}"),
                current,
            });
        }
        let after = after.unwrap_or(self.book.recorded_through());
        if recorded_through > through || after > through {
            warn!(
                epoch,
                recorded_through, after, through, "absurd reconciliation refused"
            );
            return Err(RemoteError::bad_request(format!(
                "positions {recorded_through}/{after} are beyond the last durable trade {through}"
            )));
        }
        self.book
            .set_recorded_through(recorded_through)
            .map_err(RemoteError::bad_request)?;
        if serving {
            self.lease = Some((epoch, self.now));
        }
        let max = (max as usize).clamp(1, MAX_APPLIED_BATCH);
        let (trades, complete) = self.book.applied_after(after, through, max);
        Ok(CatalogResponse::Applied {
            trades,
            last_seq: through,
            complete,
        })
    }

    fn flushed(&mut self, through: WriteId) {
        let mut changed = Vec::new();
        let mut refused = Vec::new();
        while let Some((id, _)) = self.writes.front() {
            if *id > through {
                break;
            }
            let Some((_, write)) = self.writes.pop_front() else {
                break;
            };
            match write {
                Write::Trade { seq, name, version } => {
                    self.durable_seq = self.durable_seq.max(seq);
                    // Invalidations go out before any trade of the batch is answered.
                    self.out.push(Command::Invalidate { name, version });
                }
                Write::Refusal { request_id } => {
                    for (token, rejection) in self.refusing.remove(&request_id).unwrap_or_default()
                    {
                        if self.deadlines.take(token) {
                            refused.push((token, rejection));
                        }
                    }
                }
                Write::Leadership { record, token } => {
                    self.published = record.clone();
                    self.out.push(Command::Publish(record.clone()));
                    if self.changing.remove(&token) && self.deadlines.take(token) {
                        info!(%record, "leadership record changed");
                        changed.push((token, record));
                    }
                }
            }
        }
        for (token, answer) in self.waiting.durable_through(self.durable_seq) {
            let reply = match answer {
                Waiting::Lookup(quote) => CatalogResponse::Stock(quote),
                Waiting::Traded(answer) => answer,
            };
            self.reply(token, Ok(reply));
        }
        for (token, record) in changed {
            self.reply(token, Ok(CatalogResponse::Leadership(record)));
        }
        for (token, rejection) in refused {
            self.reply(token, Ok(CatalogResponse::Rejected(rejection)));
        }
    }

    fn storage_failed(&mut self, reason: String) {
        if self.failed.is_some() {
            return;
        }
        warn!(%reason, "write-ahead log failed; trades are refused from now on");
        self.failed = Some(reason.clone());
        self.writes.clear();
        let why = RemoteError::unavailable(format!("catalog storage failed: {reason}"));
        let others: Vec<Token> = self
            .changing
            .iter()
            .copied()
            .chain(self.refusing.values().flatten().map(|(token, _)| *token))
            .collect();
        self.changing.clear();
        self.refusing.clear();
        let mut waiting = self.waiting.drain();
        waiting.extend(
            others
                .into_iter()
                .filter(|&token| self.deadlines.take(token)),
        );
        for token in waiting {
            self.reply(token, Err(why.clone()));
        }
    }

    fn tick(&mut self) {
        let mut due = self.waiting.expired(self.now);
        for token in self.deadlines.due(self.now) {
            self.changing.remove(&token);
            due.push(token);
        }
        for token in due {
            self.reply(
                token,
                Err(RemoteError::unavailable("catalog log is not keeping up")),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::safety::Rule;
    use common::wire::{TradeKind, TradeReceipt};

    struct Harness {
        engine: CatalogEngine,
        now: Time,
        next: Token,
        out: Vec<Command>,
    }

    fn harness(rules: Rules) -> Harness {
        let stocks = Book::parse_seed("GameStart,15.99,10\n").unwrap();
        let mut book = Book::new(stocks, 100);
        book.set_leadership(Leadership {
            epoch: 1,
            leader: Some(3),
            in_sync: vec![1, 2, 3],
        });
        Harness {
            engine: CatalogEngine::new(book, Duration::from_millis(800), rules, Time::ZERO),
            now: Time::ZERO,
            next: 1,
            out: Vec::new(),
        }
    }

    impl Harness {
        fn request(&mut self, request: CatalogRequest) -> Token {
            let token = self.next;
            self.next += 1;
            self.engine
                .handle(self.now, Input::Request { token, request }, &mut self.out);
            token
        }

        fn flush(&mut self) {
            let last = self
                .out
                .iter()
                .filter_map(|c| match c {
                    Command::Append { write, .. } | Command::StoreLeadership { write, .. } => {
                        Some(*write)
                    }
                    _ => None,
                })
                .max();
            if let Some(last) = last {
                self.engine
                    .handle(self.now, Input::Flushed(last), &mut self.out);
            }
        }

        fn reply(&mut self, token: Token) -> Option<Reply<CatalogResponse>> {
            let at = self
                .out
                .iter()
                .position(|c| matches!(c, Command::Reply { token: t, .. } if *t == token))?;
            match self.out.remove(at) {
                Command::Reply { reply, .. } => Some(reply),
                _ => unreachable!("matched a reply"),
            }
        }
    }

    fn trade(epoch: Epoch, id: &str, quantity: i64, kind: TradeKind) -> CatalogRequest {
        CatalogRequest::Trade {
            epoch,
            trade: TradeRequest {
                request_id: RequestId::new(id).unwrap(),
                name: StockName::new("GameStart").unwrap(),
                quantity,
                kind,
            },
        }
    }

    fn elect(expected: Epoch, leader: u32) -> CatalogRequest {
        CatalogRequest::ChangeLeadership {
            expected,
            change: LeadershipChange::Elect {
                leader,
                in_sync: vec![],
            },
        }
    }

    #[test]
    fn a_trade_is_answered_once_on_disk_and_its_invalidation_goes_first() {
        let mut h = harness(Rules::ALL);
        let token = h.request(trade(1, "a", 4, TradeKind::Buy));
        assert_eq!(h.reply(token), None);
        let lookup = h.request(CatalogRequest::Lookup {
            name: StockName::new("GameStart").unwrap(),
        });
        assert_eq!(
            h.reply(lookup),
            None,
            "a lookup never shows what is not on disk"
        );
        h.flush();
        let invalidated = h
            .out
            .iter()
            .position(|c| matches!(c, Command::Invalidate { version: 1, .. }));
        let answered = h
            .out
            .iter()
            .position(|c| matches!(c, Command::Reply { token: t, .. } if *t == token));
        assert!(
            invalidated.is_some() && invalidated < answered,
            "{:?}",
            h.out
        );
        assert_eq!(
            h.reply(token),
            Some(Ok(CatalogResponse::Traded {
                receipt: TradeReceipt {
                    quantity: 6,
                    volume: 4,
                    version: 1
                },
                seq: 1
            }))
        );
        assert!(matches!(h.reply(lookup), Some(Ok(CatalogResponse::Stock(q))) if q.quantity == 6));
    }

    #[test]
    fn a_trade_of_another_epoch_is_fenced_and_changes_nothing() {
        let mut h = harness(Rules::ALL);
        let token = h.request(trade(0, "a", 1, TradeKind::Buy));
        assert!(matches!(
            h.reply(token),
            Some(Ok(CatalogResponse::Fenced { .. }))
        ));
        assert_eq!(h.engine.book().last_seq(), 0);
        let mut broken = harness(Rules::without(Rule::Fencing));
        broken.request(trade(0, "a", 1, TradeKind::Buy));
        assert_eq!(broken.engine.book().last_seq(), 1);
    }

    #[test]
    fn a_refusal_is_answered_once_on_disk_and_repeated_to_a_late_attempt() {
        let mut h = harness(Rules::ALL);
        let first = h.request(trade(1, "big", 50, TradeKind::Buy));
        assert_eq!(h.reply(first), None);
        let again = h.request(trade(1, "big", 50, TradeKind::Buy));
        assert_eq!(h.reply(again), None, "the refusal is not on disk yet");
        assert!(h.out.iter().any(|c| matches!(
            c,
            Command::Append {
                record: LogRecord::Refused(_),
                ..
            }
        )));
        h.flush();
        let refused = Ok(CatalogResponse::Rejected(TradeRejection::NotEnoughStock {
            available: 10,
        }));
        assert_eq!(h.reply(first), Some(refused.clone()));
        assert_eq!(h.reply(again), Some(refused.clone()));
        // Stock comes back; a late attempt of the refused id still gets its refusal.
        h.request(trade(1, "sell", 100, TradeKind::Sell));
        h.flush();
        let late = h.request(trade(1, "big", 50, TradeKind::Buy));
        assert_eq!(h.reply(late), Some(refused));
    }

    #[test]
    fn an_election_waits_for_the_lease_and_two_elections_never_both_win() {
        let mut h = harness(Rules::ALL);
        let renew = h.request(CatalogRequest::AppliedSince {
            epoch: 1,
            recorded_through: 0,
            after: None,
            max: 10,
            serving: true,
        });
        assert!(matches!(
            h.reply(renew),
            Some(Ok(CatalogResponse::Applied { .. }))
        ));
        let early = h.request(elect(1, 2));
        assert!(matches!(
            h.reply(early),
            Some(Ok(CatalogResponse::Fenced { reason, .. })) if reason.contains("not deposed")
        ));
        h.now += Duration::from_millis(801);
        let first = h.request(elect(1, 2));
        let second = h.request(elect(1, 1));
        assert!(matches!(
            h.reply(second),
            Some(Ok(CatalogResponse::Fenced { .. }))
        ));
        assert_eq!(h.reply(first), None, "answered once the record is on disk");
        h.flush();
        let won = Leadership {
            epoch: 2,
            leader: Some(2),
            in_sync: vec![1, 2, 3],
        };
        assert!(h.out.contains(&Command::Publish(won.clone())));
        assert_eq!(
            h.reply(first),
            Some(Ok(CatalogResponse::Leadership(won.clone())))
        );
        assert_eq!(h.engine.published(), &won);
    }

    #[test]
    fn an_unclean_election_snapshots_that_every_trade_must_be_looked_at_again() {
        let mut h = harness(Rules::ALL);
        h.request(trade(1, "a", 1, TradeKind::Buy));
        h.flush();
        let report = h.request(CatalogRequest::AppliedSince {
            epoch: 1,
            recorded_through: 1,
            after: None,
            max: 10,
            serving: false,
        });
        assert!(h.reply(report).is_some());
        assert_eq!(h.engine.book().recorded_through(), 1);
        h.out.clear();
        h.request(CatalogRequest::ChangeLeadership {
            expected: 1,
            change: LeadershipChange::Unclean { leader: 1 },
        });
        assert_eq!(h.engine.book().recorded_through(), 0);
        let snapshot = h.out.iter().position(|c| *c == Command::Snapshot);
        let record = h
            .out
            .iter()
            .position(|c| matches!(c, Command::StoreLeadership { .. }));
        assert!(snapshot.is_some() && snapshot < record, "{:?}", h.out);
    }

    #[test]
    fn a_failed_disk_answers_every_waiting_request_and_refuses_trades() {
        let mut h = harness(Rules::ALL);
        let waiting = h.request(trade(1, "a", 1, TradeKind::Buy));
        h.engine.handle(
            h.now,
            Input::StorageFailed("No space left on device".into()),
            &mut h.out,
        );
        assert!(matches!(h.reply(waiting), Some(Err(e)) if e.message.contains("No space")));
        let refused = h.request(trade(1, "b", 1, TradeKind::Buy));
        assert!(matches!(h.reply(refused), Some(Err(_))));
        assert_eq!(h.engine.storage_failure(), Some("No space left on device"));
    }
}
