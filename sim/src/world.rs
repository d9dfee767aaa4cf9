//! The simulated world: one event queue ordered by simulated time, the processes, the network
//! between them (delay, reordering, loss, duplication, partitions of any shape) and the
//! faults. Everything happens in one thread, in an order fixed by the seed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::Duration;

use common::engine::{CallError, CallId};
use common::safety::Rules;
use common::wire::{OrderEntry, ReplicaId, Role, StockName};

use crate::check::Checker;
use crate::node::{
    self, Action, Caller, CatalogFiles, CatalogNode, ClientNode, Ctx, FrontendNode, Push,
    ReplicaFiles, ReplicaNode, Request, Returned,
};
use crate::plan::{Fault, Plan, Proc, CATALOG, REPLICAS};
use crate::rng::Rng;
use crate::trace::Trace;

/// Most events one seed may take; more means something spins.
const MAX_EVENTS: u64 = 2_000_000;
/// How often the world looks whether the system has settled, once faults stop.
const SETTLE_CHECK: Duration = Duration::from_millis(50);
/// How long past the planned end a fault waiting for its moment keeps the faults going.
const ARMED_GRACE: Duration = Duration::from_secs(3);

/// A message on the network.
#[derive(Debug, Clone)]
enum Msg {
    Call {
        from: Proc,
        from_inc: u32,
        call: CallId,
        request: Request,
    },
    Return {
        call: CallId,
        answer: Returned,
    },
    Push {
        stream: u64,
        push: Push,
    },
    Closed {
        stream: u64,
    },
}

#[derive(Debug)]
enum Event {
    /// A message arrives at `to`, if it still runs as incarnation `inc`.
    Deliver {
        from: Proc,
        to: Proc,
        inc: u32,
        msg: Msg,
    },
    /// `proc`'s timer, set for this time.
    Timer { proc: Proc, inc: u32 },
    /// A call of `proc` times out.
    CallTimeout { proc: Proc, inc: u32, call: CallId },
    /// `proc`'s disk finished a flush.
    Flushed { proc: Proc, inc: u32 },
    /// The plan's fault number `n`.
    Fault(usize),
    /// A crashed process starts again from its disk.
    Restart { proc: Proc },
    /// Kill `proc` now (an armed fault's moment came), restarting it after `down_for`.
    Kill { proc: Proc, down_for: Duration },
    /// A frozen process resumes.
    Thaw { proc: Proc },
    /// A partition ends.
    Heal { cut: Vec<(Proc, Proc)> },
    /// A full disk takes writes again: the process restarts from its log.
    DiskFree { proc: Proc },
    /// A slow disk is fast again.
    DiskFast { proc: Proc },
    /// Faults stop: everything heals.
    FaultsEnd,
    /// Whether the system has settled.
    Settle,
}

struct Queued {
    at: Duration,
    seq: u64,
    event: Event,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A process's state. The processes are few and long-lived, so their sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Node {
    Catalog(CatalogNode),
    Replica(ReplicaNode),
    Frontend(FrontendNode),
    Client(ClientNode),
    /// Crashed: its files wait for the restart.
    Down(Files),
}

enum Files {
    Catalog(CatalogFiles),
    Replica(ReplicaFiles),
    Frontend,
}

struct Process {
    name: String,
    node: Node,
    inc: u32,
    frozen: bool,
    backlog: VecDeque<Event>,
    /// Its clock's rate, per mille.
    rate: u64,
    /// When its timer is set (simulated time).
    timer_at: Option<Duration>,
    /// Its calls waiting for an answer, and to whom.
    calls: BTreeMap<CallId, Proc>,
    /// Its disk is this many times slower than the plan says.
    slow: u64,
    /// The last delivery on each stream to it, so that streams stay in order.
    stream_at: Duration,
    /// Extra delay, up to this many µs, of every answer and request to it (its answers
    /// arrive out of order).
    jitter: u64,
}

impl Process {
    fn up(&self) -> bool {
        !matches!(self.node, Node::Down(_))
    }

    fn local(&self, now: Duration) -> Duration {
        Duration::from_micros((now.as_micros() as u64).saturating_mul(self.rate) / 1_000)
    }

    /// The simulated time at which its clock shows `local`.
    fn at_local(&self, local: Duration) -> Duration {
        let micros = local.as_micros().min(u64::MAX as u128 / 1_000) as u64;
        Duration::from_micros((micros * 1_000).div_ceil(self.rate.max(1)))
    }

    fn next_timer(&mut self) -> Option<Duration> {
        match &mut self.node {
            Node::Catalog(n) => n.next_timer(),
            Node::Replica(n) => n.next_timer(),
            Node::Frontend(n) => n.next_timer(),
            Node::Client(n) => n.next_timer(),
            Node::Down(_) => None,
        }
    }
}

/// How a run went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Events handled.
    pub events: u64,
    /// Simulated time.
    pub simulated: Duration,
    /// Checks of invariants made.
    pub checks: u64,
    /// Orders acknowledged to clients.
    pub orders: u64,
    /// Faults injected.
    pub faults: usize,
}

/// One seed's world.
pub struct World {
    plan: Plan,
    rules: Rules,
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    rng: Rng,
    procs: Vec<Process>,
    /// How many partitions cut each directed link.
    cut: BTreeMap<(Proc, Proc), u32>,
    faulty: bool,
    settling: bool,
    /// The checker.
    pub checker: Checker,
    trace: Trace,
    events: u64,
    next_stream: u64,
    initial: BTreeMap<StockName, u64>,
    actions: Vec<Action>,
    done: bool,
    /// Armed: kill the next replica to take the lead, within this, down for that.
    crash_next_leader: Option<(Duration, u64, Duration)>,
    /// Armed: kill the next replica to send a trade, down for this.
    crash_mid_trade: Option<Duration>,
    /// Armed: kill the catalog once it answered a refusal it remembers, down for this.
    crash_after_refusal: Option<Duration>,
    /// When the faults stopped.
    faults_ended: Duration,
    /// A new leader to kill once it has sent this many more trades: within, down for.
    doomed: Option<(Proc, u32, Duration, Duration)>,
    /// The seed file's stocks.
    seed: Vec<catalog::book::Stock>,
}

impl World {
    /// The world of `plan`, with `rules`; `trace` records a readable account of every event.
    pub fn new(seed: u64, plan: Plan, rules: Rules, trace: Trace) -> Result<World, String> {
        let mut rng = Rng::new(seed).fork();
        let mut seed_file = String::from("name,price,quantity\n");
        let mut initial = BTreeMap::new();
        for (name, quantity) in &plan.stocks {
            seed_file.push_str(&format!("{name},1.5,{quantity}\n"));
            let name = StockName::new(name.clone()).map_err(|e| e.to_string())?;
            initial.insert(name, *quantity);
        }
        let seed = catalog::book::Book::parse_seed(&seed_file).map_err(|e| e.to_string())?;
        // The catalog starts on an empty disk, as on a new cluster: it asks the replicas
        // before it serves.
        let catalog_files = CatalogFiles::default();
        let frontends: Vec<Proc> = (0..plan.frontends).map(|n| plan.frontend(n)).collect();
        let names: Vec<StockName> = initial.keys().cloned().collect();
        let mut procs = Vec::new();
        let process = |name: String, node: Node, rate: u64| Process {
            name,
            node,
            inc: 0,
            frozen: false,
            backlog: VecDeque::new(),
            rate,
            timer_at: None,
            calls: BTreeMap::new(),
            slow: 1,
            stream_at: Duration::ZERO,
            jitter: 0,
        };
        procs.push(process(
            "catalog".into(),
            Node::Down(Files::Catalog(catalog_files)),
            plan.clock_rates[CATALOG],
        ));
        for id in 1..=REPLICAS {
            procs.push(process(
                format!("order-{id}"),
                Node::Down(Files::Replica(ReplicaFiles::default())),
                plan.clock_rates[id],
            ));
        }
        for n in 0..plan.frontends {
            procs.push(process(
                format!("frontend-{}", n + 1),
                Node::Down(Files::Frontend),
                plan.clock_rates[plan.frontend(n)],
            ));
        }
        for n in 0..plan.clients {
            let client = ClientNode::new(
                n,
                frontends.clone(),
                plan.orders_per_client,
                plan.faults_until,
                names.clone(),
                rng.fork(),
            );
            procs.push(process(
                format!("client-{}", n + 1),
                Node::Client(client),
                plan.clock_rates[plan.client(n)],
            ));
        }
        let mut world = World {
            rules,
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            rng,
            procs,
            cut: BTreeMap::new(),
            faulty: true,
            settling: false,
            checker: Checker::default(),
            trace,
            events: 0,
            next_stream: 0,
            initial,
            actions: Vec::new(),
            done: false,
            crash_next_leader: None,
            crash_mid_trade: None,
            crash_after_refusal: None,
            faults_ended: Duration::MAX,
            doomed: None,
            seed,
            plan,
        };
        for proc in 0..world.plan.servers() {
            world.start(proc)?;
        }
        for n in 0..world.plan.clients {
            let proc = world.plan.client(n);
            world.reschedule(proc);
        }
        for n in 0..world.plan.faults.len() {
            let at = world.plan.faults[n].0;
            world.schedule(at, Event::Fault(n));
        }
        let end = world.plan.faults_until;
        world.schedule(end, Event::FaultsEnd);
        Ok(world)
    }

    fn schedule(&mut self, at: Duration, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at: at.max(self.now),
            seq: self.seq,
            event,
        }));
    }

    /// Runs until the system settled after the faults (then the final checks), a violation,
    /// or the bound on events.
    pub fn run(&mut self) -> Stats {
        while let Some(Reverse(next)) = self.queue.pop() {
            if self.done || self.checker.violation.is_some() {
                break;
            }
            self.now = next.at;
            self.events += 1;
            if self.events > MAX_EVENTS {
                let detail = format!("more than {MAX_EVENTS} events");
                self.checker.unsettled(self.now, detail);
                break;
            }
            self.handle(next.event);
        }
        if !self.done && self.checker.violation.is_none() {
            self.checker
                .unsettled(self.now, "the event queue ran dry".into());
        }
        Stats {
            events: self.events,
            simulated: self.now,
            checks: self.checker.checks,
            orders: self.answered(),
            faults: self.plan.faults.len(),
        }
    }

    fn answered(&self) -> u64 {
        self.procs
            .iter()
            .map(|p| match &p.node {
                Node::Client(c) => c.answered,
                _ => 0,
            })
            .sum()
    }

    /// The trace recorded, if any.
    pub fn trace(&mut self) -> &mut Trace {
        &mut self.trace
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, inc, msg } => {
                if self.is_cut(from, to) {
                    if let Msg::Push { stream, .. } = &msg {
                        // A stream that loses a message is broken for good.
                        self.broken_stream(*stream);
                    }
                    return self.note(to, || format!("dropped (partition) {msg:?}"));
                }
                let process = &mut self.procs[to];
                if !process.up() || process.inc != inc {
                    return;
                }
                if process.frozen {
                    process
                        .backlog
                        .push_back(Event::Deliver { from, to, inc, msg });
                    return;
                }
                self.deliver(from, to, msg);
            }
            Event::Timer { proc, inc } => {
                let process = &mut self.procs[proc];
                if process.inc != inc || process.timer_at != Some(self.now) || !process.up() {
                    return;
                }
                process.timer_at = None;
                if process.frozen {
                    return;
                }
                if self.trace.on() {
                    let line = format!("{} tick", self.procs[proc].name);
                    self.trace.line(self.now, line);
                }
                self.with(proc, |node, ctx| match node {
                    Node::Catalog(n) => n.tick(ctx),
                    Node::Replica(n) => n.tick(ctx),
                    Node::Frontend(n) => n.tick(ctx),
                    Node::Client(n) => n.tick(ctx),
                    Node::Down(_) => {}
                });
                self.spin_check(proc);
            }
            Event::CallTimeout { proc, inc, call } => {
                let process = &mut self.procs[proc];
                if process.inc != inc || !process.up() {
                    return;
                }
                if process.frozen {
                    process
                        .backlog
                        .push_back(Event::CallTimeout { proc, inc, call });
                    return;
                }
                if process.calls.remove(&call).is_some() {
                    let answer = Returned::Engine(Err(CallError::Failed("timed out".into())));
                    self.answer(proc, call, answer);
                }
            }
            Event::Flushed { proc, inc } => {
                let process = &mut self.procs[proc];
                if process.inc != inc || !process.up() {
                    return;
                }
                if process.frozen {
                    process.backlog.push_back(Event::Flushed { proc, inc });
                    return;
                }
                self.with(proc, |node, ctx| match node {
                    Node::Catalog(n) => n.flushed(ctx),
                    Node::Replica(n) => n.flushed(ctx),
                    _ => {}
                });
            }
            Event::Fault(n) => {
                if self.faulty {
                    let fault = self.plan.faults[n].1.clone();
                    self.fault(fault);
                }
            }
            Event::Kill { proc, down_for } => {
                if self.procs[proc].up() {
                    self.procs[proc].slow = 1;
                    self.procs[proc].jitter = 0;
                    self.crash(proc);
                    self.schedule(self.now + down_for, Event::Restart { proc });
                }
            }
            Event::Restart { proc } => {
                if !self.procs[proc].up() {
                    if let Err(e) = self.start(proc) {
                        self.checker.internal(self.now, e);
                    }
                }
            }
            Event::Thaw { proc } => self.thaw(proc),
            Event::Heal { cut } => {
                for link in cut {
                    if let Some(count) = self.cut.get_mut(&link) {
                        *count = count.saturating_sub(1);
                        if *count == 0 {
                            self.cut.remove(&link);
                        }
                    }
                }
                self.note(CATALOG, || "partition healed".into());
            }
            Event::DiskFree { proc } => self.disk_free(proc),
            Event::DiskFast { proc } => self.procs[proc].slow = 1,
            Event::FaultsEnd => self.faults_end(),
            Event::Settle => self.settle(),
        }
    }

    /// Runs `f` on `proc`'s node with a context, then carries out what it asked.
    fn with(&mut self, proc: Proc, f: impl FnOnce(&mut Node, &mut Ctx<'_>)) {
        let mut actions = std::mem::take(&mut self.actions);
        {
            let process = &mut self.procs[proc];
            let local = process.local(self.now);
            let mut ctx = Ctx {
                now: self.now,
                local,
                actions: &mut actions,
                checker: &mut self.checker,
                rng: &mut self.rng,
                next_stream: &mut self.next_stream,
                faulty: self.faulty,
            };
            f(&mut process.node, &mut ctx);
            if self.trace.on() {
                self.trace.engine_lines(self.now, &process.name);
            }
        }
        for action in actions.drain(..) {
            self.act(proc, action);
        }
        self.actions = actions;
        self.armed_faults(proc);
        self.reschedule(proc);
    }

    /// Faults waiting for a moment: a new leader, a trade sent, a refusal answered.
    fn armed_faults(&mut self, proc: Proc) {
        if let Node::Catalog(catalog) = &mut self.procs[proc].node {
            let refused = std::mem::take(&mut catalog.refusal_answered);
            let leader = catalog.engine.book().leadership().leader;
            if refused && self.faulty {
                if let Some(down_for) = self.crash_after_refusal.take() {
                    self.schedule(self.now, Event::Kill { proc, down_for });
                    // The leader that asked for it (and remembers it) goes down soon after,
                    // once it may have told the refusal on.
                    if let Some(leader) = leader {
                        let hops = 4 * self.plan.network.delay_max;
                        let at =
                            self.now + Duration::from_micros(self.rng.range(hops / 2, hops + 1));
                        self.schedule(
                            at,
                            Event::Kill {
                                proc: leader as Proc,
                                down_for,
                            },
                        );
                    }
                }
            }
            return;
        }
        let Node::Replica(replica) = &mut self.procs[proc].node else {
            return;
        };
        let (took_lead, traded) = (replica.took_lead, replica.traded);
        replica.took_lead = false;
        replica.traded = 0;
        if !self.faulty {
            return;
        }
        if took_lead {
            if let Some((within, slow, down_for)) = self.crash_next_leader.take() {
                // Its disk slows (its epoch lingers on the way there), what it asks for comes
                // back out of order, and it dies once it has traded a few times.
                let process = &mut self.procs[proc];
                process.slow = process.slow.max(slow);
                process.jitter = 20_000;
                let trades = self.rng.range(1, 4) as u32;
                self.doomed = Some((proc, trades, within, down_for));
            }
        }
        if traded > 0 {
            if let Some((doomed, left, within, down_for)) = self.doomed {
                if doomed == proc {
                    if left <= traded {
                        self.doomed = None;
                        let within = within.as_micros() as u64;
                        let at = self.now + Duration::from_micros(self.rng.range(0, within + 1));
                        self.schedule(at, Event::Kill { proc, down_for });
                    } else {
                        self.doomed = Some((doomed, left - traded, within, down_for));
                    }
                }
            }
            if let Some(down_for) = self.crash_mid_trade.take() {
                // Before any answer of the catalog can come back.
                self.schedule(self.now, Event::Kill { proc, down_for });
            }
        }
    }

    fn spin_check(&mut self, proc: Proc) {
        let process = &mut self.procs[proc];
        let local = process.local(self.now);
        if let Some(next) = process.next_timer() {
            if next <= local {
                let detail = format!(
                    "{} left a deadline due after a tick ({next:?}, now {local:?})",
                    process.name
                );
                self.checker.internal(self.now, detail);
            }
        }
    }

    fn reschedule(&mut self, proc: Proc) {
        let process = &mut self.procs[proc];
        if !process.up() {
            return;
        }
        let Some(local) = process.next_timer() else {
            return;
        };
        let at = process.at_local(local).max(self.now);
        if process.timer_at.is_none_or(|set| at < set) {
            process.timer_at = Some(at);
            let inc = process.inc;
            self.schedule(at, Event::Timer { proc, inc });
        }
    }

    fn deliver(&mut self, from: Proc, to: Proc, msg: Msg) {
        if self.trace.on() {
            let line = format!(
                "{} ← {}: {}",
                self.procs[to].name,
                self.procs[from].name,
                show(&msg)
            );
            self.trace.line(self.now, line);
        }
        match msg {
            Msg::Call {
                from,
                from_inc,
                call,
                request,
            } => {
                let caller = Caller {
                    from,
                    inc: from_inc,
                    call,
                };
                self.with(to, |node, ctx| match node {
                    Node::Catalog(n) => n.request(ctx, caller, request),
                    Node::Replica(n) => n.request(ctx, caller, request),
                    Node::Frontend(n) => n.request(ctx, caller, request),
                    Node::Client(_) | Node::Down(_) => {}
                });
            }
            Msg::Return { call, answer } => {
                if self.procs[to].calls.remove(&call).is_some() {
                    self.answer(to, call, answer);
                }
            }
            Msg::Push { stream, push } => self.with(to, |node, ctx| match node {
                Node::Replica(n) => n.push(ctx, stream, push),
                Node::Frontend(n) => n.push(ctx, stream, push),
                _ => {}
            }),
            Msg::Closed { stream } => self.with(to, |node, ctx| match node {
                Node::Replica(n) => n.closed(ctx, stream),
                Node::Frontend(n) => n.closed(ctx, stream),
                _ => {}
            }),
        }
    }

    fn answer(&mut self, proc: Proc, call: CallId, answer: Returned) {
        self.with(proc, |node, ctx| match node {
            Node::Replica(n) => n.answer(ctx, call, answer),
            Node::Frontend(n) => n.answer(ctx, call, answer),
            Node::Client(n) => n.answer(ctx, call, answer),
            Node::Catalog(n) => n.answer(ctx, call, answer),
            Node::Down(_) => {}
        });
    }

    fn is_cut(&self, from: Proc, to: Proc) -> bool {
        !self.cut.is_empty() && self.cut.contains_key(&(from, to))
    }

    fn delay(&mut self) -> Duration {
        let network = &self.plan.network;
        let (low, high) = (network.delay_min, network.delay_max);
        Duration::from_micros(self.rng.range(low, high + 1))
    }

    fn act(&mut self, proc: Proc, action: Action) {
        match action {
            Action::Call {
                to,
                call,
                request,
                timeout,
            } => {
                let process = &mut self.procs[proc];
                let inc = process.inc;
                process.calls.insert(call, to);
                let local = process.local(self.now);
                let expires = process.at_local(local + timeout);
                self.schedule(expires, Event::CallTimeout { proc, inc, call });
                if !self.procs[to].up() {
                    // Connection refused, quickly, unless the way there is cut.
                    if !self.is_cut(proc, to) {
                        let at = self.now + self.delay();
                        let answer =
                            Returned::Engine(Err(CallError::Failed("connection refused".into())));
                        self.schedule(
                            at,
                            Event::Deliver {
                                from: to,
                                to: proc,
                                inc,
                                msg: Msg::Return { call, answer },
                            },
                        );
                    }
                    return;
                }
                let to_inc = self.procs[to].inc;
                let msg = Msg::Call {
                    from: proc,
                    from_inc: inc,
                    call,
                    request,
                };
                self.send(proc, to, to_inc, msg);
            }
            Action::Return {
                to,
                inc,
                call,
                answer,
            } => self.send(proc, to, inc, Msg::Return { call, answer }),
            Action::Push {
                to,
                inc,
                stream,
                push,
            } => {
                if self.is_cut(proc, to) || !self.procs[to].up() || self.procs[to].inc != inc {
                    self.broken_stream(stream);
                    return;
                }
                // A stream keeps its order.
                let at = (self.now + self.delay()).max(self.procs[to].stream_at);
                self.procs[to].stream_at = at;
                self.schedule(
                    at,
                    Event::Deliver {
                        from: proc,
                        to,
                        inc,
                        msg: Msg::Push { stream, push },
                    },
                );
            }
            Action::Flush => self.start_flush(proc),
        }
    }

    /// Sends an RPC message, which the network may delay, lose or duplicate.
    fn send(&mut self, from: Proc, to: Proc, inc: u32, msg: Msg) {
        if self.is_cut(from, to) {
            return;
        }
        let network = &self.plan.network;
        let (loss, duplication) = (network.loss, network.duplication);
        if self.faulty && loss > 0 && self.rng.chance(loss) {
            return self.note(to, || format!("lost {}", show(&msg)));
        }
        if self.faulty && duplication > 0 && self.rng.chance(duplication) {
            let at = self.now + self.delay();
            self.schedule(
                at,
                Event::Deliver {
                    from,
                    to,
                    inc,
                    msg: msg.clone(),
                },
            );
        }
        let jitter = self.procs[to].jitter;
        let at = self.now + self.delay() + Duration::from_micros(self.rng.range(0, jitter + 1));
        self.schedule(at, Event::Deliver { from, to, inc, msg });
    }

    fn broken_stream(&mut self, stream: u64) {
        if let Node::Catalog(catalog) = &mut self.procs[CATALOG].node {
            catalog.drop_stream(stream);
        }
    }

    fn start_flush(&mut self, proc: Proc) {
        let process = &mut self.procs[proc];
        let started = match &mut process.node {
            Node::Catalog(n) => n.disk.start(),
            Node::Replica(n) => n.disk.start(),
            _ => false,
        };
        if !started {
            return;
        }
        let (low, high) = self.plan.disk_latency;
        let slow = self.procs[proc].slow;
        // A slow disk takes up to two seconds for a flush.
        let latency = Duration::from_micros((self.rng.range(low, high + 1) * slow).min(2_000_000));
        let inc = self.procs[proc].inc;
        self.schedule(self.now + latency, Event::Flushed { proc, inc });
    }

    /// Starts `proc` from its files (the first start, or a restart).
    fn start(&mut self, proc: Proc) -> Result<(), String> {
        let local = self.procs[proc].local(self.now);
        let rules = self.rules;
        let quorum = self.plan.write_quorum;
        let snapshot_every = self.plan.snapshot_every;
        let process = &mut self.procs[proc];
        let files = match std::mem::replace(&mut process.node, Node::Down(Files::Frontend)) {
            Node::Down(files) => files,
            other => {
                process.node = other;
                return Ok(());
            }
        };
        process.inc += 1;
        process.frozen = false;
        process.backlog.clear();
        process.timer_at = None;
        process.calls.clear();
        process.node = match files {
            Files::Catalog(files) => Node::Catalog(CatalogNode::start(
                files,
                &self.seed,
                rules,
                snapshot_every,
                local,
            )?),
            Files::Replica(files) => {
                let config = node::replica_config(proc as ReplicaId, quorum, rules);
                let mut replica = ReplicaNode::start(config, files, local)
                    .map_err(|e| format!("{}: cannot start: {e}", process.name))?;
                replica.incarnation = process.inc;
                Node::Replica(replica)
            }
            Files::Frontend => {
                Node::Frontend(FrontendNode::start(node::router_config(rules), local))
            }
        };
        let name = process.name.clone();
        self.note(proc, || format!("{name} started"));
        // The first step: a replica catching up with the leader it knew, subscriptions.
        self.with(proc, |node, ctx| match node {
            Node::Replica(n) => n.tick(ctx),
            Node::Frontend(n) => n.tick(ctx),
            Node::Catalog(n) => n.tick(ctx),
            _ => {}
        });
        Ok(())
    }

    /// SIGKILL of `proc`: its memory is gone, its disk keeps what was flushed (and perhaps
    /// part of what was being flushed); its peers' calls and streams to it break.
    fn crash(&mut self, proc: Proc) {
        let streams = match &self.procs[proc].node {
            Node::Catalog(n) => n.streams(),
            _ => Vec::new(),
        };
        let process = &mut self.procs[proc];
        if matches!(process.node, Node::Client(_) | Node::Down(_)) {
            return;
        }
        let node = std::mem::replace(&mut process.node, Node::Down(Files::Frontend));
        process.node = Node::Down(match node {
            Node::Catalog(mut n) => Files::Catalog(n.crash(&mut self.rng)),
            Node::Replica(mut n) => Files::Replica(n.crash(&mut self.rng)),
            Node::Frontend(_) | Node::Client(_) => Files::Frontend,
            Node::Down(files) => files,
        });
        process.frozen = false;
        process.backlog.clear();
        process.timer_at = None;
        process.calls.clear();
        let name = process.name.clone();
        self.note(proc, || format!("{name} killed"));
        // Connections to it are reset: its callers learn at once (unless the way is cut).
        let mut failed = Vec::new();
        for (caller, process) in self.procs.iter().enumerate() {
            for (&call, &to) in &process.calls {
                if to == proc {
                    failed.push((caller, process.inc, call));
                }
            }
        }
        for (caller, inc, call) in failed {
            if !self.is_cut(proc, caller) {
                let at = self.now + self.delay();
                let answer = Returned::Engine(Err(CallError::Failed("connection reset".into())));
                self.schedule(
                    at,
                    Event::Deliver {
                        from: proc,
                        to: caller,
                        inc,
                        msg: Msg::Return { call, answer },
                    },
                );
            }
        }
        for (to, inc, stream) in streams {
            if !self.is_cut(proc, to) {
                let at = self.now + self.delay();
                self.schedule(
                    at,
                    Event::Deliver {
                        from: proc,
                        to,
                        inc,
                        msg: Msg::Closed { stream },
                    },
                );
            }
        }
    }

    fn thaw(&mut self, proc: Proc) {
        let process = &mut self.procs[proc];
        if !process.frozen {
            return;
        }
        process.frozen = false;
        let backlog = std::mem::take(&mut process.backlog);
        let name = process.name.clone();
        self.note(proc, || format!("{name} resumed"));
        for event in backlog {
            self.handle(event);
        }
        // Its timers fire late, all at once.
        let process = &mut self.procs[proc];
        process.timer_at = None;
        self.reschedule(proc);
    }

    fn fault(&mut self, fault: Fault) {
        let now = self.now;
        self.note(CATALOG, || format!("fault: {fault:?}"));
        match fault {
            Fault::Crash { proc, down_for } => {
                if self.procs[proc].up() {
                    self.crash(proc);
                    self.schedule(now + down_for, Event::Restart { proc });
                }
            }
            Fault::CrashNextLeader {
                within,
                slow,
                down_for,
            } => {
                // The leader dies first, so that there is a next one.
                let leader = (1..=REPLICAS).find(|&id| {
                    matches!(&self.procs[id].node, Node::Replica(r) if r.engine.role() == Role::Leader)
                });
                if let Some(leader) = leader {
                    // Down until the faults stop, so that another replica is elected.
                    self.crash(leader);
                }
                self.crash_next_leader = Some((within, slow, down_for));
            }
            Fault::CrashMidTrade { down_for } => self.crash_mid_trade = Some(down_for),
            Fault::CrashAfterRefusal { down_for } => self.crash_after_refusal = Some(down_for),
            Fault::LoseCatalogDisk { down_for } => {
                if self.procs[CATALOG].up() {
                    self.crash(CATALOG);
                    self.procs[CATALOG].node = Node::Down(Files::Catalog(CatalogFiles::default()));
                    self.checker.catalog_disk_lost();
                    self.schedule(now + down_for, Event::Restart { proc: CATALOG });
                }
            }
            Fault::Freeze { proc, frozen_for } => {
                let process = &mut self.procs[proc];
                if process.up() && !process.frozen {
                    process.frozen = true;
                    self.schedule(now + frozen_for, Event::Thaw { proc });
                }
            }
            Fault::Partition { cut, lasts } => {
                for link in &cut {
                    *self.cut.entry(*link).or_default() += 1;
                }
                self.schedule(now + lasts, Event::Heal { cut });
            }
            Fault::DiskFull { proc, lasts } => {
                let full = match &mut self.procs[proc].node {
                    Node::Catalog(n) => Some(&mut n.disk.full),
                    Node::Replica(n) => Some(&mut n.disk.full),
                    _ => None,
                };
                if let Some(full) = full {
                    if !*full {
                        *full = true;
                        self.schedule(now + lasts, Event::DiskFree { proc });
                    }
                }
            }
            Fault::SlowDisk {
                proc,
                factor,
                lasts,
            } => {
                let process = &mut self.procs[proc];
                process.slow = process.slow.max(factor);
                self.schedule(now + lasts, Event::DiskFast { proc });
            }
        }
    }

    /// The disk takes writes again: a service whose storage failed restarts from its log in
    /// place (as `durability::storage::Recovery` does); one that never noticed carries on.
    fn disk_free(&mut self, proc: Proc) {
        let failed = match &mut self.procs[proc].node {
            Node::Catalog(n) => {
                n.disk.full = false;
                n.storage_failed
            }
            Node::Replica(n) => {
                n.disk.full = false;
                n.storage_failed
            }
            _ => false,
        };
        if failed {
            self.crash(proc);
            if let Err(e) = self.start(proc) {
                self.checker.internal(self.now, e);
            }
        }
    }

    fn faults_end(&mut self) {
        let armed = self.crash_next_leader.is_some()
            || self.crash_mid_trade.is_some()
            || self.crash_after_refusal.is_some()
            || self.doomed.is_some();
        if armed && self.now < self.plan.faults_until + ARMED_GRACE {
            // A fault waiting for its moment (an election, a trade) keeps the faults going a
            // little longer.
            return self.schedule(self.now + SETTLE_CHECK, Event::FaultsEnd);
        }
        self.crash_next_leader = None;
        self.crash_mid_trade = None;
        self.crash_after_refusal = None;
        self.doomed = None;
        self.faults_ended = self.now;
        self.faulty = false;
        self.settling = true;
        self.cut.clear();
        self.note(CATALOG, || {
            "faults stop: every partition heals, every process runs".into()
        });
        for proc in 0..self.procs.len() {
            self.procs[proc].slow = 1;
            if self.procs[proc].frozen {
                self.thaw(proc);
            }
            let full = match &mut self.procs[proc].node {
                Node::Catalog(n) => n.disk.full,
                Node::Replica(n) => n.disk.full,
                _ => false,
            };
            if full {
                self.disk_free(proc);
            }
            if !self.procs[proc].up() {
                if let Err(e) = self.start(proc) {
                    self.checker.internal(self.now, e);
                }
            }
        }
        self.schedule(self.now + SETTLE_CHECK, Event::Settle);
    }

    /// Once faults stop: whether every client has its answers and the replicas agree; then
    /// the final checks. Not settled within the plan's bound is a violation.
    fn settle(&mut self) {
        match self.unsettled() {
            None => {
                self.final_checks();
                self.done = true;
            }
            Some(why) => {
                if self.now > self.faults_ended + self.plan.settle_within {
                    // Stuck because the catalog's history and the log differ says more than
                    // being stuck.
                    if let Some(detail) = self.history_mismatch(false) {
                        return self.checker.catalog_history(self.now, detail);
                    }
                    let detail = format!(
                        "not settled {} s after the faults stopped: {}",
                        self.plan.settle_within.as_secs(),
                        why.detail
                    );
                    self.checker.never_settled(self.now, why.invariant, detail);
                } else {
                    self.schedule(self.now + SETTLE_CHECK, Event::Settle);
                }
            }
        }
    }

    /// Why the system has not settled yet, if it has not.
    fn unsettled(&mut self) -> Option<Unsettled> {
        self.why_unsettled().or_else(|| {
            self.unconserved().map(|detail| Unsettled {
                invariant: "conservation",
                detail,
            })
        })
    }

    /// Why the catalog's stocks are not the initial ones plus the settled history, if not.
    fn unconserved(&self) -> Option<String> {
        let Node::Catalog(catalog) = &self.procs[CATALOG].node else {
            return Some("the catalog is down".into());
        };
        let Node::Replica(replica) = &self.procs[1].node else {
            return Some("replica 1 is down".into());
        };
        let stocks = node::stocks(&catalog.engine);
        // Reconciliation may still be recording a trade applied without an order.
        crate::check::conservation(&replica.log, &self.initial, &stocks)
    }

    fn why_unsettled(&mut self) -> Option<Unsettled> {
        for process in &self.procs {
            if let Node::Client(client) = &process.node {
                if !client.done() {
                    return Some(Unsettled::waiting(format!(
                        "{} waits for an answer ({})",
                        process.name,
                        client.in_progress().unwrap_or_default()
                    )));
                }
            }
        }
        let record = match &self.procs[CATALOG].node {
            Node::Catalog(n) => n.engine.published().clone(),
            _ => return Some(Unsettled::waiting("the catalog is down".into())),
        };
        let mut reference: Option<&[common::wire::OrderEntry]> = None;
        for id in 1..=REPLICAS {
            let Node::Replica(replica) = &self.procs[id].node else {
                return Some(Unsettled::waiting(format!("replica {id} is down")));
            };
            if replica.disk.busy()
                || replica.engine.durable() != replica.engine.log().last().map(|p| p.number)
            {
                return Some(Unsettled::waiting(format!(
                    "replica {id} has writes on their way"
                )));
            }
            let role = replica.engine.role();
            let expected = if record.leader == Some(id as ReplicaId) {
                Role::Leader
            } else {
                Role::Follower
            };
            if role != expected || replica.engine.epoch() != record.epoch {
                return Some(Unsettled::waiting(format!(
                    "replica {id} is {role:?} at epoch {}; the record is {record}",
                    replica.engine.epoch()
                )));
            }
            if role == Role::Leader && !replica.engine.status().placing {
                return Some(Unsettled::waiting(format!(
                    "replica {id} leads but does not place orders yet"
                )));
            }
            match reference {
                None => reference = Some(&replica.log),
                Some(log) if log != replica.log.as_slice() => {
                    let at = log
                        .iter()
                        .zip(&replica.log)
                        .position(|(a, b)| a != b)
                        .unwrap_or(log.len().min(replica.log.len()));
                    return Some(Unsettled {
                        invariant: "one-history",
                        detail: format!(
                            "replica {id}'s log differs from replica 1's from entry {at}: {:?} \
                             and {:?}",
                            replica.log.get(at).map(crate::check::Order::of),
                            log.get(at).map(crate::check::Order::of)
                        ),
                    });
                }
                Some(_) => {}
            }
        }
        let Node::Catalog(catalog) = &self.procs[CATALOG].node else {
            return Some(Unsettled::waiting("the catalog is down".into()));
        };
        if catalog.disk.busy() {
            return Some(Unsettled::waiting(
                "the catalog has writes on their way".into(),
            ));
        }
        None
    }

    /// Where the catalog's history of trades and the order log (the leader's, or replica 1's)
    /// differ: at a number both hold, or when `whole` anywhere, lengths and epochs included.
    /// The catalog keeps only its recent trades; those are compared.
    fn history_mismatch(&self, whole: bool) -> Option<String> {
        let Node::Catalog(catalog) = &self.procs[CATALOG].node else {
            return None;
        };
        let book = catalog.engine.book();
        let log = (1..=REPLICAS)
            .filter_map(|id| match &self.procs[id].node {
                Node::Replica(r) => Some(r),
                _ => None,
            })
            .max_by_key(|r| r.engine.role() == Role::Leader)
            .map(|r| (r.id, &r.log))?;
        let (id, log) = log;
        if whole {
            if book.next_number() != log.len() as u64 {
                return Some(format!(
                    "the catalog's history holds {} trades, replica {id}'s log {}",
                    book.next_number(),
                    log.len()
                ));
            }
            let positions: Vec<_> = log.iter().map(OrderEntry::position).collect();
            let mut ours = common::history::Positions::new();
            for p in positions {
                ours.append(p);
            }
            if ours.boundaries() != book.history().boundaries() {
                return Some(format!(
                    "the catalog's epochs {:?} are not replica {id}'s {:?}",
                    book.history().boundaries(),
                    ours.boundaries()
                ));
            }
        }
        let (held, _) = book.entries_after(None, usize::MAX);
        for entry in held {
            if let Some(logged) = log.get(entry.number as usize) {
                if *logged != entry {
                    return Some(format!(
                        "the catalog's trade {} is {} ({}), replica {id}'s order {} is {} ({})",
                        entry.number,
                        crate::check::Order::of(&entry),
                        entry.epoch,
                        logged.number,
                        crate::check::Order::of(logged),
                        logged.epoch
                    ));
                }
            }
        }
        None
    }

    fn final_checks(&mut self) {
        if let Some(detail) = self.history_mismatch(true) {
            return self.checker.catalog_history(self.now, detail);
        }
        let Node::Catalog(catalog) = &self.procs[CATALOG].node else {
            return;
        };
        let stocks = node::stocks(&catalog.engine);
        let mut logs = Vec::new();
        for id in 1..=REPLICAS {
            if let Node::Replica(replica) = &self.procs[id].node {
                logs.push((id as ReplicaId, replica.log.as_slice()));
            }
        }
        self.checker
            .settled(self.now, &logs, &self.initial, &stocks);
        // Everything must also come back from the disks: kill every process at once and
        // start each from its files.
        let mut recovered = Vec::new();
        for id in 1..=REPLICAS {
            if let Node::Replica(replica) = &self.procs[id].node {
                let files = replica.files.clone();
                match ReplicaNode::start(replica.config().clone(), files, Duration::ZERO) {
                    Ok(again) => recovered.push((id as ReplicaId, again.log)),
                    Err(e) => {
                        return self
                            .checker
                            .internal(self.now, format!("replica {id} cannot restart: {e}"))
                    }
                }
            }
        }
        let catalog_again = match CatalogNode::start(
            catalog.files.clone(),
            &self.seed,
            self.rules,
            1,
            Duration::ZERO,
        ) {
            Ok(again) => node::stocks(&again.engine),
            Err(e) => {
                return self
                    .checker
                    .internal(self.now, format!("the catalog cannot restart: {e}"))
            }
        };
        let logs: Vec<(ReplicaId, &[common::wire::OrderEntry])> = recovered
            .iter()
            .map(|(id, log)| (*id, log.as_slice()))
            .collect();
        self.checker
            .settled(self.now, &logs, &self.initial, &catalog_again);
    }

    fn note(&mut self, proc: Proc, line: impl FnOnce() -> String) {
        if self.trace.on() {
            let _ = proc;
            let line = line();
            self.trace.line(self.now, line);
        }
    }
}

/// Why the system has not settled.
struct Unsettled {
    /// The invariant broken if it stays so: the stocks do not add up, the replicas hold
    /// different histories, or simply nothing settles.
    invariant: &'static str,
    detail: String,
}

impl Unsettled {
    /// Still on its way (it breaks liveness only if it never comes).
    fn waiting(detail: String) -> Self {
        Unsettled {
            invariant: "settles-after-faults",
            detail,
        }
    }
}

/// A message, briefly.
fn show(msg: &Msg) -> String {
    match msg {
        Msg::Call { call, request, .. } => {
            format!("call {call}: {}", crate::trace::request(request))
        }
        Msg::Return { call, answer } => {
            format!("answer {call}: {}", crate::trace::returned(answer))
        }
        Msg::Push { stream, push } => format!("push on stream {stream}: {push:?}"),
        Msg::Closed { stream } => format!("stream {stream} closed"),
    }
}
