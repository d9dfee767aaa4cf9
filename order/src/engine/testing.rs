//! A harness for the engine's unit tests: feeds inputs at a clock the test moves, keeps every
//! command, and finds calls and replies in them. No runtime, no sockets, no files.

use std::time::Duration;

use common::safety::Rules;
use common::wire::{
    ApplyOutcome, CatalogRequest, CatalogResponse, Epoch, Leadership, LogPosition, OrderEntry,
    OrderRequest, OrderResponse, ReplicaId, Reply, RequestId, StockLevel, StockName, TradeKind,
    TradeRejection, TradeRequest,
};

use super::{
    Answer, ApplyPart, CallId, Command, Engine, EngineConfig, Input, Outgoing, Peer, Recovered,
    ReplyBody, Token,
};
use crate::log::EpochRecord;
use crate::WriteQuorum;

pub(crate) struct Harness {
    pub engine: Engine,
    pub now: Duration,
    next_token: Token,
    /// Every command given and not yet looked at.
    pub out: Vec<Command>,
    /// What each `Apply` given carried.
    sent: Vec<(CallId, Vec<ApplyPart>)>,
}

pub(crate) fn config(id: ReplicaId, rules: Rules) -> EngineConfig {
    EngineConfig {
        id,
        peers: [1, 2, 3].into_iter().filter(|&p| p != id).collect(),
        write_quorum: WriteQuorum::All,
        replicate_timeout: Duration::from_millis(500),
        commit_timeout: Duration::from_secs(5),
        call_timeout: Duration::from_secs(5),
        dedup_window: 1_000,
        rules,
    }
}

pub(crate) fn entry(number: u64, epoch: Epoch, id: &str) -> OrderEntry {
    OrderEntry {
        number,
        epoch,
        request_id: RequestId::new(id).unwrap(),
        name: StockName::new("GameStart").unwrap(),
        kind: TradeKind::Buy,
        quantity: 1,
    }
}

pub(crate) fn order(id: &str) -> TradeRequest {
    TradeRequest {
        request_id: RequestId::new(id).unwrap(),
        name: StockName::new("GameStart").unwrap(),
        quantity: 1,
        kind: TradeKind::Buy,
    }
}

pub(crate) fn record(epoch: Epoch, leader: ReplicaId, in_sync: &[ReplicaId]) -> Leadership {
    Leadership {
        epoch,
        leader: Some(leader),
        in_sync: in_sync.to_vec(),
    }
}

pub(crate) fn pos(number: u64, epoch: Epoch) -> LogPosition {
    LogPosition { epoch, number }
}

impl Harness {
    pub fn new(id: ReplicaId, entries: Vec<OrderEntry>, epoch: EpochRecord) -> Self {
        Self::with(config(id, Rules::ALL), entries, epoch)
    }

    pub fn with(config: EngineConfig, entries: Vec<OrderEntry>, epoch: EpochRecord) -> Self {
        let mut engine = Engine::new(
            config,
            Recovered {
                entries,
                epoch,
                set_aside: 0,
            },
            Duration::ZERO,
        );
        let mut out = Vec::new();
        engine.handle(Duration::ZERO, Input::Tick, &mut out);
        Harness {
            engine,
            now: Duration::ZERO,
            next_token: 1,
            out,
            sent: Vec::new(),
        }
    }

    pub fn feed(&mut self, input: Input) {
        let before = self.out.len();
        self.engine.handle(self.now, input, &mut self.out);
        for command in &self.out[before..] {
            if let Command::Call {
                call,
                request: Outgoing::Apply { parts, .. },
                ..
            } = command
            {
                self.sent.push((*call, parts.clone()));
            }
        }
    }

    /// Moves the clock and ticks.
    pub fn wait(&mut self, by: Duration) {
        self.now += by;
        self.feed(Input::Tick);
    }

    pub fn request(&mut self, request: OrderRequest) -> Token {
        let token = self.next_token;
        self.next_token += 1;
        self.feed(Input::Request { token, request });
        token
    }

    pub fn answer(&mut self, call: CallId, answer: Answer) {
        self.feed(Input::Answer {
            call,
            answer: Ok(answer),
        });
    }

    /// Takes every command given so far.
    pub fn take(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.out)
    }

    /// Every write waiting is on disk.
    pub fn flush(&mut self) {
        let last = self
            .out
            .iter()
            .filter_map(|c| match c {
                Command::Append { write, .. }
                | Command::Cut { write, .. }
                | Command::StoreEpoch { write, .. } => Some(*write),
                _ => None,
            })
            .max();
        if let Some(last) = last {
            self.feed(Input::Flushed(last));
        }
    }

    /// The calls given (and keeps the other commands).
    pub fn calls(&mut self) -> Vec<(CallId, Peer, Outgoing)> {
        let mut calls = Vec::new();
        self.out.retain(|c| match c {
            Command::Call {
                call, to, request, ..
            } => {
                calls.push((*call, *to, request.clone()));
                false
            }
            _ => true,
        });
        calls
    }

    /// The one call to `to` matching `pick`, taken out of the commands.
    pub fn call_to(&mut self, to: Peer, pick: impl Fn(&Outgoing) -> bool) -> CallId {
        let matching = |c: &Command| matches!(c, Command::Call { to: peer, request, .. } if *peer == to && pick(request));
        let found: Vec<usize> = (0..self.out.len())
            .filter(|&i| matching(&self.out[i]))
            .collect();
        assert_eq!(found.len(), 1, "calls to {to:?} among {:?}", self.out);
        match self.out.remove(found[0]) {
            Command::Call { call, .. } => call,
            _ => unreachable!("matched a call"),
        }
    }

    /// The ready reply to `token`, if one was given.
    pub fn reply(&mut self, token: Token) -> Option<Reply<OrderResponse>> {
        let at = self
            .out
            .iter()
            .position(|c| matches!(c, Command::Reply { token: t, .. } if *t == token))?;
        match self.out.remove(at) {
            Command::Reply {
                body: ReplyBody::Ready(reply),
                ..
            } => Some(reply),
            other => panic!("not a ready reply: {other:?}"),
        }
    }

    /// The writes given, in order (and keeps the other commands).
    pub fn writes(&self) -> Vec<&Command> {
        self.out
            .iter()
            .filter(|c| {
                matches!(
                    c,
                    Command::Append { .. } | Command::Cut { .. } | Command::StoreEpoch { .. }
                )
            })
            .collect()
    }

    /// Leads `epoch` (stored, reconciled with a catalog whose history equals the log, the
    /// levels read: [`STOCK`] shares of GameStart), every follower probed and answering that
    /// it holds the log.
    pub fn leading(id: ReplicaId, epoch: Epoch, entries: Vec<OrderEntry>) -> Self {
        let mut h = Harness::new(id, entries, EpochRecord::default());
        h.feed(Input::CatalogLink(true));
        h.feed(Input::Record(record(epoch, id, &[1, 2, 3])));
        h.flush();
        let last = h.engine.log().last();
        let calls = h.calls();
        for (call, to, request) in calls {
            match (to, request) {
                (Peer::Catalog, Outgoing::Catalog(CatalogRequest::Reconcile { .. })) => h.answer(
                    call,
                    Answer::Catalog(CatalogResponse::Reconciled {
                        incarnation: 1,
                        meet: last,
                        next: h.engine.log().next_number(),
                        trades: vec![],
                        complete: true,
                    }),
                ),
                (Peer::Replica(_), Outgoing::Replicate { .. }) => {
                    h.answer(call, Answer::Order(OrderResponse::Replicated { last }))
                }
                other => panic!("unexpected call {other:?}"),
            }
        }
        h.read_levels(STOCK);
        h.take();
        assert!(h.engine.status().placing);
        h
    }

    /// Answers the leader's reading of the levels: GameStart with `quantity` shares.
    pub fn read_levels(&mut self, quantity: u64) {
        let next = self.engine.log().next_number();
        let read = self.call_to(Peer::Catalog, |r| {
            matches!(r, Outgoing::Catalog(CatalogRequest::Levels { .. }))
        });
        self.answer(
            read,
            Answer::Catalog(CatalogResponse::Levels {
                incarnation: 1,
                next,
                levels: vec![StockLevel {
                    name: StockName::new("GameStart").unwrap(),
                    quantity,
                    volume: 0,
                }],
                more: false,
            }),
        );
    }

    /// The one `Apply` on its way to the catalog, and what it carries.
    pub fn apply_call(&mut self) -> (CallId, Vec<ApplyPart>) {
        let call = self.call_to(Peer::Catalog, |r| matches!(r, Outgoing::Apply { .. }));
        let parts = self
            .sent
            .iter()
            .find(|(c, _)| *c == call)
            .map(|(_, parts)| parts.clone())
            .unwrap_or_default();
        (call, parts)
    }

    /// Answers the `Apply` on its way as the leader decided: every entry applied, every
    /// refusal made (not enough stock).
    pub fn apply_all(&mut self) {
        let (call, parts) = self.apply_call();
        let mut outcomes = Vec::new();
        for part in &parts {
            match part {
                ApplyPart::Entries { count, .. } => {
                    outcomes.extend((0..*count).map(|_| ApplyOutcome::Applied))
                }
                ApplyPart::Refuse { .. } => {
                    outcomes.push(ApplyOutcome::Refused(TradeRejection::NotEnoughStock {
                        available: 0,
                    }))
                }
            }
        }
        let next = self.engine.log().next_number();
        self.answer(
            call,
            Answer::Catalog(CatalogResponse::Applied {
                incarnation: 1,
                outcomes,
                stop: None,
                next,
            }),
        );
    }

    /// Places `id` (a buy of one share) and has the catalog apply it; returns its token.
    pub fn place_traded(&mut self, id: &str) -> Token {
        let token = self.request(OrderRequest::PlaceOrder(order(id)));
        self.apply_all();
        token
    }
}

/// Shares of GameStart in the catalog a [`Harness::leading`] leader reads.
pub(crate) const STOCK: u64 = 1_000_000;
