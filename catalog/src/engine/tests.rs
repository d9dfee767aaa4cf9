//! The catalog engine's decisions, driven without a runtime.

use super::*;
use common::wire::{Role, TradeKind, TradeRequest};

struct Harness {
    engine: CatalogEngine,
    now: Time,
    next: Token,
    out: Vec<Command>,
}

fn config(rules: Rules, replicas: &[ReplicaId]) -> EngineConfig {
    EngineConfig {
        lease_length: Duration::from_millis(800),
        replicas: replicas.to_vec(),
        call_timeout: Duration::from_secs(1),
        incarnation: 7,
        rules,
    }
}

fn seeded() -> Book {
    let stocks = Book::parse_seed("GameStart,15.99,10\n").unwrap();
    let mut book = Book::new(stocks, 100);
    book.set_leadership(Leadership {
        epoch: 1,
        leader: Some(3),
        in_sync: vec![1, 2, 3],
    });
    book
}

fn harness(rules: Rules) -> Harness {
    with(seeded(), Origin::Clean, config(rules, &[]))
}

fn with(book: Book, origin: Origin, config: EngineConfig) -> Harness {
    let engine = CatalogEngine::new(book, origin, config, Time::ZERO);
    let mut h = Harness {
        engine,
        now: Time::ZERO,
        next: 1,
        out: Vec::new(),
    };
    h.engine.handle(h.now, Input::Tick, &mut h.out);
    h
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
                Command::Append { write, .. }
                | Command::StoreLeadership { write, .. }
                | Command::Sync { write } => Some(*write),
                _ => None,
            })
            .max();
        if let Some(last) = last {
            self.engine
                .handle(self.now, Input::Flushed(last), &mut self.out);
        }
    }

    fn wait(&mut self, by: Duration) {
        self.now += by;
        self.engine.handle(self.now, Input::Tick, &mut self.out);
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

    fn calls(&mut self) -> Vec<(CallId, ReplicaId, OrderRequest)> {
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

    fn answer(&mut self, call: CallId, answer: OrderResponse) {
        self.engine.handle(
            self.now,
            Input::Answer {
                call,
                answer: Ok(Answer::Order(answer)),
            },
            &mut self.out,
        );
    }
}

fn request(id: &str, quantity: i64, kind: TradeKind) -> TradeRequest {
    TradeRequest {
        request_id: RequestId::new(id).unwrap(),
        name: StockName::new("GameStart").unwrap(),
        quantity,
        kind,
    }
}

/// An `Apply` of epoch `epoch` of the entries listed, numbered from `from`.
fn entries(epoch: Epoch, from: u64, list: &[(&str, u64, TradeKind)]) -> CatalogRequest {
    apply(
        epoch,
        list.iter()
            .enumerate()
            .map(|(i, &(id, quantity, kind))| {
                ApplyItem::Entry(entry(from + i as u64, epoch, id, quantity, kind))
            })
            .collect(),
        None,
    )
}

fn apply(epoch: Epoch, items: Vec<ApplyItem>, last: Option<u64>) -> CatalogRequest {
    CatalogRequest::Apply {
        epoch,
        items,
        log: last.map(|last| LogEnd {
            incarnation: 7,
            last: Some(last),
        }),
    }
}

fn refuse(before: u64, id: &str, quantity: i64) -> ApplyItem {
    ApplyItem::Refuse {
        before,
        trade: request(id, quantity, TradeKind::Buy),
    }
}

fn applied(outcomes: Vec<ApplyOutcome>, stop: Option<ApplyStop>, next: u64) -> CatalogResponse {
    CatalogResponse::Applied {
        incarnation: 7,
        outcomes,
        stop,
        next,
    }
}

fn lookup() -> CatalogRequest {
    CatalogRequest::Lookup {
        name: StockName::new("GameStart").unwrap(),
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

fn reconcile(epoch: Epoch, known: &[LogPosition]) -> CatalogRequest {
    CatalogRequest::Reconcile {
        epoch,
        known: known.to_vec(),
        max: 100,
        serving: true,
        log: Some(LogEnd {
            incarnation: 7,
            last: known.last().map(|p| p.number),
        }),
    }
}

fn pos(number: u64, epoch: u64) -> LogPosition {
    LogPosition { epoch, number }
}

fn entry(number: u64, epoch: u64, id: &str, quantity: u64, kind: TradeKind) -> OrderEntry {
    OrderEntry {
        number,
        epoch,
        request_id: RequestId::new(id).unwrap(),
        name: StockName::new("GameStart").unwrap(),
        kind,
        quantity,
    }
}

#[test]
fn entries_are_applied_and_answered_at_once_with_their_invalidations_first() {
    let mut h = harness(Rules::ALL);
    let token = h.request(entries(
        1,
        0,
        &[("a", 4, TradeKind::Buy), ("b", 1, TradeKind::Sell)],
    ));
    let invalidated = h
        .out
        .iter()
        .position(|c| matches!(c, Command::Invalidate { version: 2, .. }));
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
        Some(Ok(applied(
            vec![ApplyOutcome::Applied, ApplyOutcome::Applied],
            None,
            2
        )))
    );
    // Written, not yet synced: the order log holds them meanwhile.
    assert!(h
        .out
        .iter()
        .all(|c| !matches!(c, Command::Append { sync: true, .. } | Command::Sync { .. })));
    assert_eq!(h.engine.durable_next(), 0);
    // Sent again, an entry is confirmed and applies nothing again.
    let again = h.request(entries(1, 0, &[("a", 4, TradeKind::Buy)]));
    assert_eq!(
        h.reply(again),
        Some(Ok(applied(vec![ApplyOutcome::Applied], None, 2)))
    );
    assert_eq!(h.engine.book().next_number(), 2);
    assert_eq!(
        h.engine
            .book()
            .stock(&request("a", 1, TradeKind::Buy).name)
            .unwrap()
            .quantity,
        7
    );
}

#[test]
fn the_first_item_not_as_the_leader_decided_stops_the_apply() {
    let mut h = harness(Rules::ALL);
    // Entry 1 wants more than is left; entry 2 after it is not looked at.
    let token = h.request(entries(
        1,
        0,
        &[
            ("a", 4, TradeKind::Buy),
            ("big", 50, TradeKind::Buy),
            ("c", 1, TradeKind::Buy),
        ],
    ));
    assert_eq!(
        h.reply(token),
        Some(Ok(applied(
            vec![ApplyOutcome::Applied],
            Some(ApplyStop::Refused {
                rejection: TradeRejection::NotEnoughStock { available: 6 },
                remembered: false
            }),
            1
        )))
    );
    assert_eq!(h.engine.book().next_number(), 1);
    // An entry beyond the history's end: it lacks the ones before.
    let gap = h.request(entries(1, 5, &[("d", 1, TradeKind::Buy)]));
    assert_eq!(
        h.reply(gap),
        Some(Ok(applied(vec![], Some(ApplyStop::Gap), 1)))
    );
}

#[test]
fn a_lookup_shows_only_what_is_on_disk_and_asks_for_it_to_get_there() {
    let mut h = harness(Rules::ALL);
    let token = h.request(entries(1, 0, &[("a", 4, TradeKind::Buy)]));
    assert!(h.reply(token).is_some());
    let early = h.request(lookup());
    assert_eq!(h.reply(early), None, "the trade is not on disk yet");
    assert!(h.out.iter().any(|c| matches!(c, Command::Sync { .. })));
    h.flush();
    assert!(
        matches!(h.reply(early), Some(Ok(CatalogResponse::Stock(q))) if q.quantity == 6 && q.version == 1)
    );
    assert_eq!(h.engine.durable_next(), 1);
}

#[test]
fn applied_trades_reach_the_disk_within_the_linger() {
    let mut h = harness(Rules::ALL);
    h.request(entries(1, 0, &[("a", 1, TradeKind::Buy)]));
    h.wait(LINGER / 2);
    h.request(entries(1, 1, &[("b", 1, TradeKind::Buy)]));
    assert!(!h.out.iter().any(|c| matches!(c, Command::Sync { .. })));
    assert_eq!(h.engine.next_timer(), Some(LINGER));
    h.wait(LINGER / 2);
    let syncs = h
        .out
        .iter()
        .filter(|c| matches!(c, Command::Sync { .. }))
        .count();
    assert_eq!(syncs, 1, "one sync covers both: {:?}", h.out);
    h.flush();
    assert_eq!(h.engine.durable_next(), 2);
    assert_eq!(h.engine.next_timer(), None);
}

#[test]
fn trades_of_another_epoch_are_fenced_and_change_nothing() {
    let mut h = harness(Rules::ALL);
    let token = h.request(entries(0, 0, &[("a", 1, TradeKind::Buy)]));
    assert!(matches!(
        h.reply(token),
        Some(Ok(CatalogResponse::Fenced { .. }))
    ));
    assert_eq!(h.engine.book().next_number(), 0);
    let mut broken = harness(Rules::without(Rule::Fencing));
    broken.request(entries(0, 0, &[("a", 1, TradeKind::Buy)]));
    assert_eq!(broken.engine.book().next_number(), 1);
}

#[test]
fn a_refusal_is_answered_once_on_disk_and_repeated_to_a_late_attempt() {
    let mut h = harness(Rules::ALL);
    let first = h.request(apply(
        1,
        vec![
            ApplyItem::Entry(entry(0, 1, "ok", 1, TradeKind::Buy)),
            refuse(1, "big", 50),
        ],
        None,
    ));
    assert_eq!(h.reply(first), None, "the refusal is not on disk yet");
    let again = h.request(apply(1, vec![refuse(1, "big", 50)], None));
    assert_eq!(h.reply(again), None);
    assert!(h.out.iter().any(|c| matches!(
        c,
        Command::Append {
            record: LogRecord::Refused(_),
            sync: true,
            ..
        }
    )));
    h.flush();
    let refused = ApplyOutcome::Refused(TradeRejection::NotEnoughStock { available: 9 });
    assert_eq!(
        h.reply(first),
        Some(Ok(applied(
            vec![ApplyOutcome::Applied, refused.clone()],
            None,
            1
        )))
    );
    assert_eq!(
        h.reply(again),
        Some(Ok(applied(vec![refused.clone()], None, 1)))
    );
    // Stock comes back; a late attempt of the refused id still gets its refusal, and as an
    // entry it is not applied.
    h.request(entries(1, 1, &[("sell", 100, TradeKind::Sell)]));
    let late = h.request(apply(1, vec![refuse(2, "big", 50)], None));
    assert_eq!(h.reply(late), Some(Ok(applied(vec![refused], None, 2))));
    let as_entry = h.request(entries(1, 2, &[("big", 50, TradeKind::Buy)]));
    assert!(matches!(
        h.reply(as_entry),
        Some(Ok(CatalogResponse::Applied {
            stop: Some(ApplyStop::Refused {
                remembered: true,
                ..
            }),
            ..
        }))
    ));
    // With the rule off, a refusal is answered before it is on disk.
    let mut broken = harness(Rules::without(Rule::RefusalDurableBeforeAnswer));
    let early = broken.request(apply(1, vec![refuse(0, "big", 50)], None));
    assert!(broken.reply(early).is_some());
}

#[test]
fn the_recorded_leader_renews_its_epoch_within_its_lease_and_nobody_else_does() {
    let mut h = harness(Rules::ALL);
    let renew = h.request(reconcile(1, &[]));
    assert!(h.reply(renew).is_some());
    let other = h.request(CatalogRequest::ChangeLeadership {
        expected: 1,
        change: LeadershipChange::Renew { leader: 2 },
    });
    assert!(matches!(
        h.reply(other),
        Some(Ok(CatalogResponse::Fenced { .. }))
    ));
    let own = h.request(CatalogRequest::ChangeLeadership {
        expected: 1,
        change: LeadershipChange::Renew { leader: 3 },
    });
    h.flush();
    assert_eq!(
        h.reply(own),
        Some(Ok(CatalogResponse::Leadership(Leadership {
            epoch: 2,
            leader: Some(3),
            in_sync: vec![1, 2, 3],
        })))
    );
}

#[test]
fn an_election_waits_for_the_lease_and_two_elections_never_both_win() {
    let mut h = harness(Rules::ALL);
    let renew = h.request(reconcile(1, &[]));
    assert!(matches!(
        h.reply(renew),
        Some(Ok(CatalogResponse::Reconciled { .. }))
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
fn a_failed_disk_answers_every_waiting_request_and_refuses_trades() {
    let mut h = harness(Rules::ALL);
    h.request(entries(1, 0, &[("a", 1, TradeKind::Buy)]));
    let waiting = h.request(lookup());
    h.engine.handle(
        h.now,
        Input::StorageFailed("No space left on device".into()),
        &mut h.out,
    );
    assert!(matches!(h.reply(waiting), Some(Err(e)) if e.message.contains("No space")));
    let refused = h.request(entries(1, 1, &[("b", 1, TradeKind::Buy)]));
    assert!(matches!(h.reply(refused), Some(Err(_))));
    assert_eq!(h.engine.storage_failure(), Some("No space left on device"));
}

#[test]
fn reconciliation_finds_where_the_histories_meet_and_lists_the_trades_after() {
    let mut h = harness(Rules::ALL);
    let token = h.request(entries(
        1,
        0,
        &[
            ("a", 1, TradeKind::Buy),
            ("b", 1, TradeKind::Buy),
            ("c", 1, TradeKind::Buy),
        ],
    ));
    h.reply(token);
    let round = h.request(reconcile(1, &[pos(0, 1)]));
    match h.reply(round) {
        Some(Ok(CatalogResponse::Reconciled {
            meet,
            next,
            trades,
            complete,
            ..
        })) => {
            assert_eq!((meet, next, complete), (Some(pos(0, 1)), 3, true));
            let ids: Vec<&str> = trades.iter().map(|t| t.request_id.as_str()).collect();
            assert_eq!(ids, ["b", "c"]);
            assert_eq!(trades[0], entry(1, 1, "b", 1, TradeKind::Buy));
        }
        other => panic!("{other:?}"),
    }
    // A log of another epoch shares nothing.
    let round = h.request(reconcile(1, &[pos(5, 7)]));
    assert!(matches!(
        h.reply(round),
        Some(Ok(CatalogResponse::Reconciled { meet: None, trades, .. })) if trades.len() == 3
    ));
    // Only the leader of the recorded epoch reconciles.
    let stale = h.request(reconcile(0, &[]));
    assert!(matches!(
        h.reply(stale),
        Some(Ok(CatalogResponse::Fenced { .. }))
    ));
}

#[test]
fn after_a_crash_the_catalog_serves_once_it_holds_the_leaders_log_as_told_to_this_life() {
    let mut h = with(seeded(), Origin::Recovered, config(Rules::ALL, &[]));
    let look = h.request(lookup());
    assert!(matches!(h.reply(look), Some(Err(e)) if e.message.contains("bring")));
    // The leader's log holds two orders the catalog's lost tail had.
    let round = h.request(reconcile(1, &[pos(1, 1)]));
    assert!(matches!(
        h.reply(round),
        Some(Ok(CatalogResponse::Reconciled {
            meet: None,
            next: 0,
            ..
        }))
    ));
    assert!(!h.engine.ready(), "the log is ahead: not yet");
    let first = h.request(apply(
        1,
        vec![ApplyItem::Entry(entry(0, 1, "a", 4, TradeKind::Buy))],
        Some(1),
    ));
    assert!(h.reply(first).is_some());
    assert!(!h.engine.ready(), "the leader's log goes on to order 1");
    // A request that knows only an earlier life of the catalog proves nothing.
    let earlier = h.request(CatalogRequest::Apply {
        epoch: 1,
        items: vec![],
        log: Some(LogEnd {
            incarnation: 6,
            last: Some(0),
        }),
    });
    assert!(h.reply(earlier).is_some());
    assert!(!h.engine.ready());
    let second = h.request(apply(
        1,
        vec![ApplyItem::Entry(entry(1, 1, "b", 1, TradeKind::Sell))],
        Some(1),
    ));
    assert_eq!(
        h.reply(second),
        Some(Ok(applied(vec![ApplyOutcome::Applied], None, 2)))
    );
    assert!(h.engine.ready());
    // With the rule off, it serves at once.
    let broken = with(
        seeded(),
        Origin::Recovered,
        config(Rules::without(Rule::ReplayBeforeServe), &[]),
    );
    assert!(broken.engine.ready());
}

/// The catalog of a cluster whose replicas report `statuses` (id, epoch, last) after its disk
/// was lost; answers every status call.
fn rebuilding(statuses: &[(ReplicaId, Epoch, Option<LogPosition>)]) -> Harness {
    let stocks = Book::parse_seed("GameStart,15.99,10\n").unwrap();
    let ids: Vec<ReplicaId> = statuses.iter().map(|s| s.0).collect();
    let mut h = with(
        Book::new(stocks, 100),
        Origin::Empty,
        config(Rules::ALL, &ids),
    );
    assert!(h.engine.rebuilding());
    for (call, to, request) in h.calls() {
        assert_eq!(request, OrderRequest::Status);
        let &(id, epoch, last) = statuses.iter().find(|s| s.0 == to).unwrap();
        let mut status = ReplicaStatus::new(id, Role::Follower, epoch);
        status.last = last;
        h.answer(call, OrderResponse::Status(status));
    }
    h
}

#[test]
fn a_catalog_with_an_empty_disk_and_empty_replicas_starts_from_the_seed() {
    let h = rebuilding(&[(1, 0, None), (2, 0, None), (3, 0, None)]);
    assert!(!h.engine.rebuilding());
    assert!(h.engine.ready());
    assert!(h.out.contains(&Command::Snapshot));
    assert_eq!(h.engine.published(), &Leadership::default());
}

#[test]
fn a_lost_disk_is_rebuilt_from_the_longest_log_under_a_newer_epoch() {
    let mut h = rebuilding(&[
        (1, 4, Some(pos(1, 3))),
        (2, 5, Some(pos(2, 3))),
        (3, 5, Some(pos(2, 3))),
    ]);
    assert!(h.engine.rebuilding());
    let look = h.request(lookup());
    assert!(matches!(h.reply(look), Some(Err(e)) if e.message.contains("rebuilding")));
    let calls = h.calls();
    assert_eq!(calls.len(), 1);
    let (call, to, read) = calls[0].clone();
    assert_eq!(to, 3, "the highest id among the longest logs");
    assert!(matches!(read, OrderRequest::ReadLog { from: 0, .. }));
    h.answer(
        call,
        OrderResponse::Log {
            entries: vec![
                entry(0, 1, "a", 4, TradeKind::Buy),
                entry(1, 3, "b", 1, TradeKind::Sell),
                entry(2, 3, "c", 2, TradeKind::Buy),
            ],
            last: Some(pos(2, 3)),
            set_aside: 0,
        },
    );
    assert!(!h.engine.rebuilding());
    let record = Leadership {
        epoch: 6,
        leader: Some(3),
        in_sync: vec![2, 3],
    };
    assert!(h.out.contains(&Command::Snapshot));
    assert!(h
        .out
        .iter()
        .any(|c| matches!(c, Command::StoreLeadership { record: r, .. } if *r == record)));
    h.flush();
    assert_eq!(h.engine.published(), &record);
    // Lookups wait for the new leader to bring it up to its whole log (here: nothing more).
    let look = h.request(lookup());
    assert!(matches!(h.reply(look), Some(Err(_))));
    let told = h.request(CatalogRequest::Reconcile {
        epoch: 6,
        known: vec![pos(2, 3)],
        max: 100,
        serving: true,
        log: Some(LogEnd {
            incarnation: 7,
            last: Some(2),
        }),
    });
    assert!(h.reply(told).is_some());
    let look = h.request(lookup());
    assert!(
        matches!(h.reply(look), Some(Ok(CatalogResponse::Stock(q))) if q.quantity == 5 && q.volume == 7 && q.version == 3)
    );
}

#[test]
fn a_rebuild_waits_for_every_replica_unless_an_operator_chooses_one() {
    let stocks = Book::parse_seed("GameStart,15.99,10\n").unwrap();
    let mut h = with(
        Book::new(stocks, 100),
        Origin::Empty,
        config(Rules::ALL, &[1, 2]),
    );
    for (call, to, _) in h.calls() {
        if to == 1 {
            let mut status = ReplicaStatus::new(1, Role::Follower, 2);
            status.last = Some(pos(0, 2));
            h.answer(call, OrderResponse::Status(status));
        } else {
            h.engine.handle(
                h.now,
                Input::Answer {
                    call,
                    answer: Err(CallError::Failed("connection refused".into())),
                },
                &mut h.out,
            );
        }
    }
    h.wait(REBUILD_RETRY);
    let calls = h.calls();
    assert_eq!(
        calls.iter().map(|c| (c.1, c.2.clone())).collect::<Vec<_>>(),
        vec![(2, OrderRequest::Status)],
        "asks the silent replica again, and nothing else"
    );
    assert!(h.engine.rebuilding());
    let forced = h.request(CatalogRequest::ChangeLeadership {
        expected: 0,
        change: LeadershipChange::Unclean { leader: 1 },
    });
    let calls = h.calls();
    let (call, to, _) = calls[0].clone();
    assert_eq!(to, 1);
    h.answer(
        call,
        OrderResponse::Log {
            entries: vec![entry(0, 2, "a", 1, TradeKind::Buy)],
            last: Some(pos(0, 2)),
            set_aside: 0,
        },
    );
    h.flush();
    assert_eq!(
        h.reply(forced),
        Some(Ok(CatalogResponse::Leadership(Leadership {
            epoch: 3,
            leader: Some(1),
            in_sync: vec![1],
        })))
    );
}
