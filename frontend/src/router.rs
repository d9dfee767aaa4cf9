//! The front end's order routing as a state machine without I/O: which leader it follows
//! (the catalog's leadership record, pushed or read), when it checks and elects
//! ([`clients::election::Election`], shared by concurrent requests and run on a health
//! interval), and what each request does with each answer: retried under its own request id,
//! at the same leader after a refusal it can wait out, after a check when the leader does not
//! lead or cannot be reached, until its deadline. Attempts wait for the runtime's next
//! [`Input::Flush`] (it flushes once the sessions ready at the same moment have submitted):
//! everything queued for the leader by then goes in one `Batch`, and a lone attempt alone. The
//! runtime ([`crate::leader`]) executes its calls and timers on tokio; the simulator on a
//! simulated network.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use clients::election::{Ask, Election, Progress};
use clients::LeadershipOutcome;
use common::engine::{Answer, CallError, CallId, CallResult, IdMap, Peer, Time, Token};
use common::safety::Rules;
use common::wire::{
    CatalogRequest, CatalogResponse, Epoch, Leadership, OrderRequest, OrderResponse,
    RemoteErrorKind, ReplicaId, MAX_BATCH,
};
use tracing::{info, warn};

/// Wait between attempts while the leader is busy.
pub const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// After a failed check, requests wait this long before another is tried, instead of each
/// running its own.
pub const CHECK_GAP: Duration = Duration::from_millis(100);

/// Why a request got no answer from the order service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// No leader answered before the deadline.
    #[error("no order replica is available: {0}")]
    Unavailable(String),
    /// The order service refused the request as malformed.
    #[error("{0}")]
    BadRequest(String),
}

/// What happens to the router.
#[derive(Debug, Clone)]
pub enum Input {
    /// A request to the order service, answered by [`Command::Reply`].
    Submit {
        /// Echoed by the reply.
        token: Token,
        /// The request; it carries its own id, so retries are safe.
        request: OrderRequest,
    },
    /// What became of a [`Command::Call`]; every call gets exactly one.
    Answer {
        /// The call.
        call: CallId,
        /// Its answer, or why there is none.
        answer: CallResult,
    },
    /// The catalog's leadership record, pushed on the subscription.
    Record(Leadership),
    /// The first record of a new subscription: the catalog's as it is, to follow even if its
    /// epoch is older than the one held (a catalog rebuilt after the loss of its disk starts
    /// a new count above every replica's).
    Subscribed(Leadership),
    /// Send the attempts queued since the last flush.
    Flush,
    /// The clock moved.
    Tick,
}

/// What the router asks its runtime to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Send a request; its answer comes back as [`Input::Answer`].
    Call {
        /// Echoed by the answer.
        call: CallId,
        /// Who.
        to: Peer,
        /// What.
        request: Outgoing,
        /// How long to wait.
        timeout: Duration,
    },
    /// Answer a submitted request.
    Reply {
        /// The request's token.
        token: Token,
        /// The answer.
        reply: Result<OrderResponse, OrderError>,
    },
}

/// A request to send.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// To a replica (shared: a request is sent again on every attempt).
    Order(Arc<OrderRequest>),
    /// To the catalog.
    Catalog(CatalogRequest),
}

/// The router's settings.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Every configured replica.
    pub replicas: Vec<ReplicaId>,
    /// How long a request is retried before `Unavailable`.
    pub deadline: Duration,
    /// How long one attempt (and each call of a check) may take.
    pub attempt: Duration,
    /// How often the leader is checked when nothing else does.
    pub health_interval: Duration,
    /// The safety rules (all of them, but in the simulator's mutation runs).
    pub rules: Rules,
}

/// Counters the metrics page shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Elections this front end won.
    pub elections: u64,
    /// Changes of leader it followed.
    pub failovers: u64,
    /// Attempts retried.
    pub retries: u64,
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// An attempt waits for the next flush.
    Queued,
    /// An attempt is on its way to a leader.
    Calling,
    /// Waiting before the next attempt.
    Pausing(Time),
    /// Waiting for the check it joined.
    Checking,
}

#[derive(Debug)]
struct Attempt {
    request: Arc<OrderRequest>,
    deadline: Time,
    /// The known leader is not to be trusted: check before the next attempt.
    suspect: bool,
    /// Why the last attempt failed (`None`: none was made yet).
    last_problem: Option<String>,
    stage: Stage,
}

impl Attempt {
    fn problem(&self) -> String {
        self.last_problem
            .clone()
            .unwrap_or_else(|| "no attempt made".to_owned())
    }
}

/// A check running: an election round, and the requests waiting for it.
#[derive(Debug)]
struct Check {
    election: Election,
    waiters: Vec<Token>,
    /// When it began.
    started: Time,
}

/// A change of order leader this front end saw (pushed, read, or made by its own election).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderChange {
    /// The new epoch.
    pub epoch: Epoch,
    /// Its leader.
    pub leader: Option<ReplicaId>,
    /// The leader before it, if one was known.
    pub previous: Option<ReplicaId>,
    /// When this front end learnt of it.
    pub at: Time,
    /// For an election this front end ran: how long from the start of the check that ran it
    /// (a leader found failing, or the first check) to the new record.
    pub took: Option<Duration>,
}

/// Changes of leader remembered for the status page.
pub const CHANGES_KEPT: usize = 8;

#[derive(Debug)]
enum Purpose {
    Attempt {
        token: Token,
        leader: ReplicaId,
    },
    /// Attempts sent together, in the batch's order.
    Batch {
        tokens: Vec<Token>,
        leader: ReplicaId,
    },
    Record,
    Status(ReplicaId),
    Elect,
}

/// The order leader as one front end knows it.
#[derive(Debug)]
pub struct Router {
    config: RouterConfig,
    now: Time,
    /// The newest leadership record seen.
    record: Leadership,
    /// Why the last check found no leader able to serve; `None` when it found one.
    problem: Option<String>,
    /// Replicas whose disk failed, as the last check found them.
    storage_failures: Vec<String>,
    check: Option<Check>,
    /// The last failed check, shared by the requests that come right after it.
    last_failure: Option<(Time, String)>,
    next_health: Time,
    attempts: IdMap<Attempt>,
    /// When a paused or checking attempt must be looked at again (some may have moved on).
    timers: BTreeSet<(Time, Token)>,
    /// Attempts waiting for the next flush, and the leader each goes to.
    queued: Vec<(Token, ReplicaId)>,
    calls: IdMap<Purpose>,
    next_call: CallId,
    counters: Counters,
    /// The last changes of leader, oldest first.
    changes: VecDeque<LeaderChange>,
    /// Durations of the elections run here that replaced a leader, not yet taken by the
    /// runtime (at most [`CHANGES_KEPT`]).
    failover_times: Vec<Duration>,
    out: Vec<Command>,
}

impl Router {
    /// A router that knows no record yet; its first check is due at once.
    pub fn new(config: RouterConfig, now: Time) -> Self {
        Router {
            config,
            now,
            record: Leadership::default(),
            problem: Some("no check made yet".into()),
            storage_failures: Vec::new(),
            check: None,
            last_failure: None,
            next_health: now,
            attempts: IdMap::default(),
            timers: BTreeSet::new(),
            queued: Vec::new(),
            calls: IdMap::default(),
            next_call: 1,
            counters: Counters::default(),
            changes: VecDeque::new(),
            failover_times: Vec::new(),
            out: Vec::new(),
        }
    }

    /// The last changes of leader seen, oldest first.
    pub fn changes(&self) -> impl Iterator<Item = &LeaderChange> {
        self.changes.iter()
    }

    /// Hands `each` the duration of every failover elected here since the last call.
    pub fn drain_failover_times(&mut self, each: impl FnMut(Duration)) {
        self.failover_times.drain(..).for_each(each);
    }

    /// Handles one input at time `now`, appending the commands it gives to `out`.
    pub fn handle(&mut self, now: Time, input: Input, out: &mut Vec<Command>) {
        self.now = self.now.max(now);
        match input {
            Input::Submit { token, request } => {
                self.attempts.insert(
                    token,
                    Attempt {
                        request: Arc::new(request),
                        deadline: self.now + self.config.deadline,
                        suspect: false,
                        last_problem: None,
                        stage: Stage::Calling,
                    },
                );
                self.advance(token);
            }
            Input::Answer { call, answer } => self.answer(call, answer),
            Input::Record(record) => self.observe(&record),
            Input::Subscribed(record) => self.follow(&record),
            Input::Flush => self.flush(),
            Input::Tick => self.tick(),
        }
        out.append(&mut self.out);
    }

    /// The earliest time the router has something to do.
    pub fn next_timer(&self) -> Option<Time> {
        let attempts = self.timers.first().map(|&(at, _)| at);
        Some(attempts.map_or(self.next_health, |at| at.min(self.next_health)))
    }

    /// The recorded leader and epoch, if one was ever elected.
    pub fn current(&self) -> Option<(ReplicaId, Epoch)> {
        self.record.leader.map(|leader| (leader, self.record.epoch))
    }

    /// The leader that serves, as the last check found, or why there is none.
    pub fn serving(&self) -> Result<(ReplicaId, Epoch), String> {
        if let Some(problem) = &self.problem {
            return Err(problem.clone());
        }
        self.current()
            .ok_or_else(|| "no order leader is recorded".to_owned())
    }

    /// The newest record seen.
    pub fn record(&self) -> &Leadership {
        &self.record
    }

    /// The replicas whose disk failed, as `order-ID: reason`, as the last check found them.
    pub fn storage_failures(&self) -> &[String] {
        &self.storage_failures
    }

    /// The counters so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Requests not answered yet.
    pub fn pending(&self) -> usize {
        self.attempts.len()
    }

    /// Whether attempts wait for an [`Input::Flush`].
    pub fn flush_wanted(&self) -> bool {
        !self.queued.is_empty()
    }

    /// The first record of a subscription: followed as it is, even back to an older epoch.
    fn follow(&mut self, record: &Leadership) {
        let held = &self.record;
        if record.epoch < held.epoch || (record.epoch == held.epoch && record.leader != held.leader)
        {
            warn!(%held, %record, "the catalog's record went back (it was rebuilt); following it");
            self.record = Leadership::default();
        }
        self.observe(record);
    }

    /// Takes a record from the catalog (pushed or read) if it is newer than the one held.
    fn observe(&mut self, record: &Leadership) {
        let held = &self.record;
        let newer = record.epoch > held.epoch
            || (record.epoch == held.epoch && record.in_sync != held.in_sync);
        if !newer {
            return;
        }
        if record.epoch > held.epoch && held.leader.is_some() {
            self.counters.failovers += 1;
        }
        if record.leader != held.leader || record.epoch != held.epoch {
            info!(%record, "following the order leader");
            if self.changes.len() == CHANGES_KEPT {
                self.changes.pop_front();
            }
            self.changes.push_back(LeaderChange {
                epoch: record.epoch,
                leader: record.leader,
                previous: held.leader,
                at: self.now,
                took: None,
            });
        }
        self.record = record.clone();
    }

    /// Notes how long the election that made `record` took.
    fn timed(&mut self, record: &Leadership, took: Duration) {
        let Some(change) = self.changes.back_mut() else {
            return;
        };
        if change.epoch != record.epoch {
            return;
        }
        change.took = Some(took);
        if change.previous.is_some() && self.failover_times.len() < CHANGES_KEPT {
            self.failover_times.push(took);
        }
        info!(epoch = record.epoch, leader = ?record.leader, took_ms = took.as_millis() as u64, "elected a new order leader");
    }

    fn call(&mut self, to: Peer, request: Outgoing, timeout: Duration, purpose: Purpose) {
        let call = self.next_call;
        self.next_call += 1;
        self.calls.insert(call, purpose);
        self.out.push(Command::Call {
            call,
            to,
            request,
            timeout,
        });
    }

    fn reply(&mut self, token: Token, reply: Result<OrderResponse, OrderError>) {
        self.attempts.remove(&token);
        self.out.push(Command::Reply { token, reply });
    }

    /// The next step of request `token`: an attempt at the known leader, or a check first.
    fn advance(&mut self, token: Token) {
        let now = self.now;
        let known = self.current();
        let Some(attempt) = self.attempts.get_mut(&token) else {
            return;
        };
        if now >= attempt.deadline {
            let problem = attempt.problem();
            return self.reply(token, Err(OrderError::Unavailable(problem)));
        }
        match known.filter(|_| !attempt.suspect) {
            Some((leader, _)) => self.send(token, leader),
            None => match self.join_check(token) {
                Ok(()) => {
                    if let Some(attempt) = self.attempts.get_mut(&token) {
                        attempt.stage = Stage::Checking;
                        self.timers.insert((attempt.deadline, token));
                    }
                }
                Err(problem) => {
                    if let Some(attempt) = self.attempts.get_mut(&token) {
                        attempt.last_problem = Some(problem);
                    }
                    self.pause(token);
                }
            },
        }
    }

    /// Queues an attempt at `leader` for the next flush.
    fn send(&mut self, token: Token, leader: ReplicaId) {
        let configured = self.config.replicas.contains(&leader);
        let Some(attempt) = self.attempts.get_mut(&token) else {
            return;
        };
        attempt.suspect = false;
        if !configured {
            // The record names a replica this front end was not configured with (an
            // operator's override, or front ends with different peer lists).
            attempt.last_problem = Some(format!(
                "the recorded leader {leader} is not among --order-peers"
            ));
            attempt.suspect = true;
            return self.pause(token);
        }
        attempt.stage = Stage::Queued;
        self.queued.push((token, leader));
    }

    /// Sends the queued attempts: one call per leader, a `Batch` when several wait (at most
    /// [`MAX_BATCH`] each).
    fn flush(&mut self) {
        let now = self.now;
        let attempt_timeout = self.config.attempt;
        let mut queued = std::mem::take(&mut self.queued);
        queued.retain(|(token, _)| {
            self.attempts
                .get(token)
                .is_some_and(|a| a.stage == Stage::Queued)
        });
        while let Some(&(_, leader)) = queued.first() {
            let (group, rest): (Vec<_>, Vec<_>) =
                queued.into_iter().partition(|&(_, l)| l == leader);
            queued = rest;
            for chunk in group.chunks(MAX_BATCH) {
                // As long as the request with the most time left may wait (at most one
                // attempt): a request near its deadline does not cut the others' attempt short.
                let mut budget = Duration::ZERO;
                let mut requests = Vec::with_capacity(chunk.len());
                let mut tokens = Vec::with_capacity(chunk.len());
                for &(token, _) in chunk {
                    let Some(attempt) = self.attempts.get_mut(&token) else {
                        continue;
                    };
                    if attempt.deadline <= now {
                        let problem = attempt.problem();
                        self.reply(token, Err(OrderError::Unavailable(problem)));
                        continue;
                    }
                    attempt.stage = Stage::Calling;
                    budget = budget.max(attempt.deadline.saturating_sub(now).min(attempt_timeout));
                    requests.push(Arc::clone(&attempt.request));
                    tokens.push(token);
                    self.timers.insert((attempt.deadline, token));
                }
                let to = Peer::Replica(leader);
                match tokens[..] {
                    [] => {}
                    [token] => self.call(
                        to,
                        Outgoing::Order(Arc::clone(&requests[0])),
                        budget,
                        Purpose::Attempt { token, leader },
                    ),
                    _ => {
                        let batch = requests.iter().map(|r| (**r).clone()).collect();
                        self.call(
                            to,
                            Outgoing::Order(Arc::new(OrderRequest::Batch(batch))),
                            budget,
                            Purpose::Batch { tokens, leader },
                        )
                    }
                }
            }
        }
    }

    fn pause(&mut self, token: Token) {
        let now = self.now;
        if let Some(attempt) = self.attempts.get_mut(&token) {
            let at = attempt.deadline.min(now + RETRY_PAUSE);
            attempt.stage = Stage::Pausing(at);
            self.timers.insert((at, token));
        }
    }

    fn attempted(&mut self, token: Token, leader: ReplicaId, answer: CallResult) {
        let Some(attempt) = self.attempts.get_mut(&token) else {
            return;
        };
        match answer {
            Ok(Answer::Order(
                OrderResponse::NotLeader { .. } | OrderResponse::StaleEpoch { .. },
            )) => {
                attempt.last_problem = Some(format!("replica {leader} does not lead"));
                attempt.suspect = true;
                self.counters.retries += 1;
                self.pause(token);
            }
            Ok(Answer::Order(answer)) => self.reply(token, Ok(answer)),
            Ok(Answer::Catalog(other)) => {
                attempt.last_problem = Some(format!("replica {leader} answered {other:?}"));
                attempt.suspect = true;
                self.counters.retries += 1;
                self.pause(token);
            }
            Err(CallError::Remote(e)) if e.kind == RemoteErrorKind::BadRequest => {
                self.reply(token, Err(OrderError::BadRequest(e.message)));
            }
            Err(CallError::Remote(e)) => {
                // The leader is there but cannot finish now (its quorum, the catalog, taking
                // over): the same leader is asked again after a pause.
                attempt.last_problem = Some(e.message);
                self.counters.retries += 1;
                self.pause(token);
            }
            Err(CallError::Failed(e)) => {
                attempt.last_problem = Some(format!("replica {leader}: {e}"));
                attempt.suspect = true;
                self.counters.retries += 1;
                self.advance(token);
            }
        }
    }

    /// Joins the check running, or starts one; `Err` with the reason when a check failed a
    /// moment ago (requests do not each run their own).
    fn join_check(&mut self, token: Token) -> Result<(), String> {
        if let Some(check) = &mut self.check {
            check.waiters.push(token);
            return Ok(());
        }
        if let Some((at, reason)) = &self.last_failure {
            if self.now.saturating_sub(*at) < CHECK_GAP {
                return Err(reason.clone());
            }
        }
        self.start_check(vec![token]);
        Ok(())
    }

    fn start_check(&mut self, waiters: Vec<Token>) {
        let (election, asks) = Election::start(&self.config.replicas, self.config.rules);
        self.check = Some(Check {
            election,
            waiters,
            started: self.now,
        });
        for ask in asks {
            self.ask(ask);
        }
    }

    fn ask(&mut self, ask: Ask) {
        let timeout = self.config.attempt;
        match ask {
            Ask::Record => self.call(
                Peer::Catalog,
                Outgoing::Catalog(CatalogRequest::ReadLeadership),
                timeout,
                Purpose::Record,
            ),
            Ask::Status(id) => self.call(
                Peer::Replica(id),
                Outgoing::Order(Arc::new(OrderRequest::Status)),
                timeout,
                Purpose::Status(id),
            ),
            Ask::Change { expected, change } => self.call(
                Peer::Catalog,
                Outgoing::Catalog(CatalogRequest::ChangeLeadership { expected, change }),
                timeout,
                Purpose::Elect,
            ),
        }
    }

    fn answer(&mut self, call: CallId, answer: CallResult) {
        let Some(purpose) = self.calls.remove(&call) else {
            return;
        };
        let progress = match (purpose, &mut self.check) {
            (Purpose::Attempt { token, leader }, _) => {
                return self.attempted(token, leader, answer)
            }
            (Purpose::Batch { tokens, leader }, _) => {
                let answers = match answer {
                    Ok(Answer::Order(OrderResponse::Batch(answers)))
                        if answers.len() == tokens.len() =>
                    {
                        answers
                            .into_iter()
                            .map(|a| a.map(Answer::Order).map_err(CallError::Remote))
                            .collect()
                    }
                    Ok(other) => {
                        let why = CallError::Failed(format!("unexpected answer {other:?}"));
                        vec![Err(why); tokens.len()]
                    }
                    Err(e) => vec![Err(e); tokens.len()],
                };
                for (token, answer) in tokens.into_iter().zip(answers) {
                    self.attempted(token, leader, answer);
                }
                return;
            }
            (Purpose::Record, Some(check)) => check.election.record(match answer {
                Ok(Answer::Catalog(CatalogResponse::Leadership(record))) => Ok(record),
                Ok(other) => Err(format!("unexpected catalog answer {other:?}")),
                Err(e) => Err(e.to_string()),
            }),
            (Purpose::Status(id), Some(check)) => check.election.status(
                id,
                match answer {
                    Ok(Answer::Order(OrderResponse::Status(status))) => Some(status),
                    _ => None,
                },
            ),
            (Purpose::Elect, Some(check)) => check.election.changed(match answer {
                Ok(Answer::Catalog(CatalogResponse::Leadership(record))) => {
                    Ok(LeadershipOutcome::Changed(record))
                }
                Ok(Answer::Catalog(CatalogResponse::Fenced { current, reason })) => {
                    Ok(LeadershipOutcome::Refused { current, reason })
                }
                Ok(other) => Err(format!("unexpected catalog answer {other:?}")),
                Err(e) => Err(e.to_string()),
            }),
            (_, None) => return,
        };
        match progress {
            Progress::Waiting => {}
            Progress::Ask(ask) => self.ask(ask),
            Progress::Done(done) => self.finish_check(done.map_err(|e| e.to_string())),
        }
    }

    fn finish_check(&mut self, done: Result<clients::election::Ensured, String>) {
        let Some(check) = self.check.take() else {
            return;
        };
        let outcome = match done {
            Ok(ensured) => {
                if ensured.elected {
                    self.counters.elections += 1;
                }
                self.observe(&ensured.record);
                if ensured.elected {
                    self.timed(&ensured.record, self.now.saturating_sub(check.started));
                }
                self.storage_failures = ensured.storage_failures;
                self.last_failure = None;
                self.problem = None;
                self.current()
                    .map(|(leader, _)| leader)
                    .ok_or_else(|| "no order leader is recorded".to_owned())
            }
            Err(reason) => {
                warn!(error = %reason, "no order leader can serve");
                self.problem = Some(reason.clone());
                self.last_failure = Some((self.now, reason.clone()));
                Err(reason)
            }
        };
        for token in check.waiters {
            match &outcome {
                Ok(leader) => self.send(token, *leader),
                Err(problem) => {
                    if let Some(attempt) = self.attempts.get_mut(&token) {
                        attempt.last_problem = Some(problem.clone());
                    }
                    self.pause(token);
                }
            }
        }
    }

    fn tick(&mut self) {
        let now = self.now;
        let mut due = Vec::new();
        while let Some(&(at, token)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            // Only if the attempt still waits for this moment.
            let stage = self.attempts.get(&token).map(|a| (a.stage, a.deadline));
            match stage {
                Some((Stage::Pausing(p), _)) if p <= now => due.push((token, Stage::Pausing(p))),
                Some((stage @ (Stage::Checking | Stage::Calling), deadline)) if deadline <= now => {
                    due.push((token, stage))
                }
                _ => {}
            }
        }
        for (token, stage) in due {
            match stage {
                // At its deadline, whatever it waits for (a check, or a call made for others
                // too that may wait longer): a late answer finds it gone.
                Stage::Checking | Stage::Calling => {
                    if let Some(check) = &mut self.check {
                        check.waiters.retain(|&t| t != token);
                    }
                    let problem = self.attempts.get(&token).map(Attempt::problem);
                    self.reply(
                        token,
                        Err(OrderError::Unavailable(problem.unwrap_or_default())),
                    );
                }
                Stage::Pausing(_) | Stage::Queued => self.advance(token),
            }
        }
        if now >= self.next_health {
            self.next_health = now + self.config.health_interval;
            let recently_failed = self
                .last_failure
                .as_ref()
                .is_some_and(|(at, _)| now.saturating_sub(*at) < CHECK_GAP);
            if self.check.is_none() && !recently_failed {
                self.start_check(Vec::new());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::safety::Rule;
    use common::wire::{LeadershipChange, RemoteError, ReplicaStatus, Role};

    struct Harness {
        router: Router,
        now: Time,
        out: Vec<Command>,
    }

    fn harness(rules: Rules) -> Harness {
        let config = RouterConfig {
            replicas: vec![1, 2, 3],
            deadline: Duration::from_secs(5),
            attempt: Duration::from_secs(1),
            health_interval: Duration::from_millis(500),
            rules,
        };
        let mut h = Harness {
            router: Router::new(config, Time::ZERO),
            now: Time::ZERO,
            out: Vec::new(),
        };
        // The first health check is due at once; settle it with a serving leader 3.
        h.feed(Input::Tick);
        h.answer_check(&record(4, 3, &[1, 2, 3]), &[(3, Role::Leader, true)]);
        h
    }

    fn record(epoch: Epoch, leader: ReplicaId, in_sync: &[ReplicaId]) -> Leadership {
        Leadership {
            epoch,
            leader: Some(leader),
            in_sync: in_sync.to_vec(),
        }
    }

    fn status(id: ReplicaId, role: Role, epoch: Epoch, serving: bool) -> ReplicaStatus {
        ReplicaStatus {
            catalog_link: serving,
            placing: role == Role::Leader,
            ..ReplicaStatus::new(id, role, epoch)
        }
    }

    fn place() -> OrderRequest {
        OrderRequest::PlaceOrder(common::wire::TradeRequest {
            request_id: common::wire::RequestId::new("r1").unwrap(),
            name: common::wire::StockName::new("GameStart").unwrap(),
            quantity: 1,
            kind: common::wire::TradeKind::Buy,
        })
    }

    impl Harness {
        fn feed(&mut self, input: Input) {
            self.router.handle(self.now, input, &mut self.out);
        }

        fn wait(&mut self, by: Duration) {
            self.now += by;
            self.feed(Input::Tick);
        }

        /// The calls given (after a flush of what is queued), keeping the other commands.
        fn calls(&mut self) -> Vec<(CallId, Peer, Outgoing)> {
            if self.router.flush_wanted() {
                self.feed(Input::Flush);
            }
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

        fn answer(&mut self, call: CallId, answer: CallResult) {
            self.feed(Input::Answer { call, answer });
        }

        /// Answers a check's calls: the record, and the replicas in `up` (others silent).
        fn answer_check(&mut self, now: &Leadership, up: &[(ReplicaId, Role, bool)]) {
            for (call, to, request) in self.calls() {
                let answer = match (to, request) {
                    (Peer::Catalog, Outgoing::Catalog(CatalogRequest::ReadLeadership)) => {
                        Ok(Answer::Catalog(CatalogResponse::Leadership(now.clone())))
                    }
                    (Peer::Replica(id), Outgoing::Order(r)) if *r == OrderRequest::Status => {
                        match up.iter().find(|(r, _, _)| *r == id) {
                            Some(&(id, role, serving)) => Ok(Answer::Order(OrderResponse::Status(
                                status(id, role, now.epoch, serving),
                            ))),
                            None => Err(CallError::Failed("timed out".into())),
                        }
                    }
                    other => panic!("not a check's call: {other:?}"),
                };
                self.answer(call, answer);
            }
        }

        fn reply(&mut self) -> Option<Result<OrderResponse, OrderError>> {
            let at = self
                .out
                .iter()
                .position(|c| matches!(c, Command::Reply { .. }))?;
            match self.out.remove(at) {
                Command::Reply { reply, .. } => Some(reply),
                _ => unreachable!("matched a reply"),
            }
        }
    }

    fn attempt_to(calls: &[(CallId, Peer, Outgoing)]) -> (CallId, ReplicaId) {
        let attempts: Vec<_> = calls
            .iter()
            .filter_map(|(call, to, request)| match (to, request) {
                (Peer::Replica(id), Outgoing::Order(r))
                    if matches!(**r, OrderRequest::PlaceOrder(_)) =>
                {
                    Some((*call, *id))
                }
                _ => None,
            })
            .collect();
        assert_eq!(attempts.len(), 1, "{calls:?}");
        attempts[0]
    }

    #[test]
    fn a_request_goes_to_the_known_leader_and_a_busy_leader_is_asked_again() {
        let mut h = harness(Rules::ALL);
        assert_eq!(h.router.serving(), Ok((3, 4)));
        h.feed(Input::Submit {
            token: 1,
            request: place(),
        });
        let (call, leader) = attempt_to(&h.calls());
        assert_eq!(leader, 3);
        h.answer(
            call,
            Err(CallError::Remote(RemoteError::unavailable("reconciling"))),
        );
        assert!(h.calls().is_empty(), "it waits before asking again");
        h.wait(RETRY_PAUSE);
        let (call, leader) = attempt_to(&h.calls());
        assert_eq!(leader, 3);
        let placed = OrderResponse::Placed {
            number: 7,
            epoch: 4,
        };
        h.answer(call, Ok(Answer::Order(placed.clone())));
        assert_eq!(h.reply(), Some(Ok(placed)));
        assert_eq!(h.router.counters().retries, 1);
    }

    #[test]
    fn an_unreachable_leader_is_replaced_by_the_highest_live_in_sync_replica() {
        let mut h = harness(Rules::ALL);
        h.feed(Input::Submit {
            token: 1,
            request: place(),
        });
        let (call, _) = attempt_to(&h.calls());
        h.answer(call, Err(CallError::Failed("connection reset".into())));
        // A check: the record and every status; replica 3 is gone, 1 and 2 follow; 2 is not
        // in sync any more.
        h.answer_check(
            &record(4, 3, &[1, 3]),
            &[(1, Role::Follower, true), (2, Role::Follower, true)],
        );
        let calls = h.calls();
        let [(
            elect,
            Peer::Catalog,
            Outgoing::Catalog(CatalogRequest::ChangeLeadership {
                expected: 4,
                change,
            }),
        )] = &calls[..]
        else {
            panic!("{calls:?}");
        };
        assert_eq!(
            change,
            &LeadershipChange::Elect {
                leader: 1,
                in_sync: vec![]
            }
        );
        h.answer(
            *elect,
            Ok(Answer::Catalog(CatalogResponse::Leadership(record(
                5,
                1,
                &[1, 3],
            )))),
        );
        let (_, leader) = attempt_to(&h.calls());
        assert_eq!(leader, 1);
        assert_eq!(h.router.counters().elections, 1);
        assert_eq!(h.router.current(), Some((1, 5)));
    }

    #[test]
    fn with_the_rule_off_an_election_may_choose_a_replica_not_in_sync() {
        let mut h = harness(Rules::without(Rule::InSyncElection));
        h.feed(Input::Submit {
            token: 1,
            request: place(),
        });
        let (call, _) = attempt_to(&h.calls());
        h.answer(call, Err(CallError::Failed("connection reset".into())));
        h.answer_check(
            &record(4, 3, &[1, 3]),
            &[(1, Role::Follower, true), (2, Role::Follower, true)],
        );
        let calls = h.calls();
        assert!(matches!(
            &calls[..],
            [(
                _,
                Peer::Catalog,
                Outgoing::Catalog(CatalogRequest::ChangeLeadership {
                    change: LeadershipChange::Elect { leader: 2, .. },
                    ..
                })
            )]
        ));
    }

    #[test]
    fn concurrent_requests_share_one_check_and_a_failed_one_is_not_repeated_at_once() {
        let mut h = harness(Rules::ALL);
        for token in [1, 2] {
            h.feed(Input::Submit {
                token,
                request: place(),
            });
        }
        for (call, _, _) in h.calls() {
            h.answer(
                call,
                Ok(Answer::Order(OrderResponse::NotLeader {
                    epoch: 4,
                    leader_id: None,
                })),
            );
        }
        h.wait(RETRY_PAUSE);
        let calls = h.calls();
        let reads = calls
            .iter()
            .filter(|(_, _, r)| matches!(r, Outgoing::Catalog(CatalogRequest::ReadLeadership)))
            .count();
        assert_eq!(reads, 1, "{calls:?}");
        // Nobody serves: the check fails, and for a moment requests do not start another.
        for (call, _, _) in calls {
            h.answer(call, Err(CallError::Failed("timed out".into())));
        }
        assert!(h.router.serving().is_err());
        h.wait(RETRY_PAUSE);
        assert!(h.calls().is_empty());
        h.wait(CHECK_GAP);
        assert!(!h.calls().is_empty());
    }

    #[test]
    fn a_request_gets_a_clear_unavailable_at_its_deadline() {
        let mut h = harness(Rules::ALL);
        h.feed(Input::Submit {
            token: 1,
            request: place(),
        });
        let (call, _) = attempt_to(&h.calls());
        h.answer(
            call,
            Err(CallError::Remote(RemoteError::unavailable(
                "order 0 did not reach its write quorum",
            ))),
        );
        for _ in 0..300 {
            h.wait(RETRY_PAUSE);
            for (call, _, request) in h.calls() {
                if matches!(&request, Outgoing::Order(r) if matches!(**r, OrderRequest::PlaceOrder(_)))
                {
                    h.answer(
                        call,
                        Err(CallError::Remote(RemoteError::unavailable(
                            "order 0 did not reach its write quorum",
                        ))),
                    );
                }
            }
            if let Some(reply) = h.reply() {
                assert!(
                    matches!(&reply, Err(OrderError::Unavailable(why)) if why.contains("write quorum")),
                    "{reply:?}"
                );
                assert!(h.now >= Duration::from_secs(5));
                return;
            }
        }
        panic!("no answer after the deadline");
    }

    #[test]
    fn a_malformed_request_is_answered_at_once() {
        let mut h = harness(Rules::ALL);
        h.feed(Input::Submit {
            token: 1,
            request: place(),
        });
        let (call, _) = attempt_to(&h.calls());
        h.answer(
            call,
            Err(CallError::Remote(RemoteError::bad_request("no such thing"))),
        );
        assert_eq!(
            h.reply(),
            Some(Err(OrderError::BadRequest("no such thing".into())))
        );
    }

    fn place_as(id: &str) -> OrderRequest {
        OrderRequest::PlaceOrder(common::wire::TradeRequest {
            request_id: common::wire::RequestId::new(id).unwrap(),
            name: common::wire::StockName::new("GameStart").unwrap(),
            quantity: 1,
            kind: common::wire::TradeKind::Buy,
        })
    }

    #[test]
    fn requests_queued_before_a_flush_go_in_one_batch_and_each_gets_its_own_answer() {
        let mut h = harness(Rules::ALL);
        for token in 1..=3 {
            h.feed(Input::Submit {
                token,
                request: place_as(&format!("r{token}")),
            });
        }
        assert!(h.out.is_empty(), "nothing goes before the flush");
        let calls = h.calls();
        let [(call, Peer::Replica(3), Outgoing::Order(batch))] = &calls[..] else {
            panic!("one call to the leader: {calls:?}");
        };
        assert_eq!(
            **batch,
            OrderRequest::Batch(vec![place_as("r1"), place_as("r2"), place_as("r3")])
        );
        h.answer(
            *call,
            Ok(Answer::Order(OrderResponse::Batch(vec![
                Ok(OrderResponse::Placed {
                    number: 0,
                    epoch: 4,
                }),
                Err(RemoteError::unavailable("quorum")),
                Ok(OrderResponse::NotLeader {
                    epoch: 5,
                    leader_id: Some(2),
                }),
            ]))),
        );
        assert_eq!(
            h.reply(),
            Some(Ok(OrderResponse::Placed {
                number: 0,
                epoch: 4
            }))
        );
        assert_eq!(h.reply(), None, "the others are retried");
        // After the pause, the one refused for now goes to the same leader again; the other
        // waits for a check.
        h.wait(RETRY_PAUSE);
        let calls = h.calls();
        assert!(
            calls.iter().any(|(_, to, r)| *to == Peer::Replica(3)
                && matches!(&**r_order(r), OrderRequest::PlaceOrder(p) if p.request_id.as_str() == "r2")),
            "{calls:?}"
        );
        // A lone request goes alone, not in a batch.
        let mut h = harness(Rules::ALL);
        h.feed(Input::Submit {
            token: 9,
            request: place(),
        });
        let calls = h.calls();
        assert!(matches!(&calls[..], [(_, _, Outgoing::Order(r))] if **r == place()));
    }

    fn r_order(outgoing: &Outgoing) -> &Arc<OrderRequest> {
        match outgoing {
            Outgoing::Order(request) => request,
            Outgoing::Catalog(_) => panic!("not an order request"),
        }
    }

    #[test]
    fn a_batch_that_gets_no_answer_is_retried_request_by_request() {
        let mut h = harness(Rules::ALL);
        for token in 1..=2 {
            h.feed(Input::Submit {
                token,
                request: place_as(&format!("r{token}")),
            });
        }
        let calls = h.calls();
        let (call, _, _) = calls[0].clone();
        h.answer(call, Err(CallError::Failed("connection reset".into())));
        // The leader is suspect: both wait for one check, then go together again.
        h.answer_check(&record(5, 2, &[1, 2]), &[(2, Role::Leader, true)]);
        let calls = h.calls();
        assert!(
            matches!(&calls[..], [(_, Peer::Replica(2), Outgoing::Order(r))] if matches!(&**r, OrderRequest::Batch(b) if b.len() == 2)),
            "{calls:?}"
        );
    }

    #[test]
    fn a_request_near_its_deadline_does_not_cut_short_the_attempt_of_the_batch() {
        let mut h = harness(Rules::ALL);
        h.feed(Input::Submit {
            token: 1,
            request: place_as("old"),
        });
        let calls = h.calls();
        // Its attempt fails slowly, until 4.9 s of its 5 s are gone.
        h.now += Duration::from_millis(4_900);
        h.answer(
            calls[0].0,
            Err(CallError::Remote(RemoteError::unavailable("busy"))),
        );
        h.wait(RETRY_PAUSE);
        h.feed(Input::Submit {
            token: 2,
            request: place_as("new"),
        });
        h.feed(Input::Flush);
        let timeouts: Vec<Duration> = h
            .out
            .iter()
            .filter_map(|c| match c {
                Command::Call {
                    timeout,
                    request: Outgoing::Order(r),
                    ..
                } if matches!(**r, OrderRequest::Batch(_)) => Some(*timeout),
                _ => None,
            })
            .collect();
        // The batch waits a whole attempt for the new request; the old one is answered at
        // its deadline.
        assert_eq!(timeouts, vec![Duration::from_secs(1)]);
        h.out.clear();
        h.wait(Duration::from_millis(80));
        assert!(matches!(h.reply(), Some(Err(OrderError::Unavailable(_)))));
        assert_eq!(h.router.pending(), 1);
    }
}
