//! One order replica: its state machine (idle, syncing, follower, leader), the request
//! handlers, the leader's replication task per follower, its in-sync and reconciliation
//! tasks, the follower's catch-up task, and the subscription to the catalog's leadership
//! record, which alone makes a replica lead.
//!
//! Locks: `state` is a std mutex for short sections and is never held across `.await`;
//! `apply` serialises the follower-side changes to the log, and is async because a cut of a
//! divergent suffix waits for the disk while holding it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::Duration;

use catalog::{CatalogClient, LeadershipOutcome, TradeOutcome};
use common::group_commit::{self, Job};
use common::rpc::RpcClient;
use common::server::{self, RequestContext, Service};
use common::storage::{Ended, Recovery};
use common::sync::lock;
use common::wire::{
    CatalogResponse, Epoch, Leadership, LeadershipChange, LogPosition, OrderEntry, OrderRequest,
    OrderResponse, PlaceOrder, RemoteError, ReplicaId, ReplicaStatus, Reply, RequestId, Role,
    TradeRejection, TradeRequest, TransactionNumber,
};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::log::{EpochRecord, OrderLog};
use crate::replication::{self, commit_point, desired_in_sync, Fit, FollowerProgress, WriteQuorum};
use crate::{Error, ReplicaConfig};

/// Most entries in one `Replicate` or `SyncUp` answer (well under the frame limit).
const MAX_BATCH: usize = 1_000;
/// Most epoch boundaries a follower sends in `SyncUp`.
const MAX_KNOWN: usize = 64;
/// Shortest and longest wait before retrying a follower or the leader.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait for the local disk before a request is answered `Unavailable`.
const DURABILITY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a leader reconciles its log with the trades the catalog applied; each round
/// also renews its lease at the catalog (well within the catalog's default 800 ms).
const RECONCILE_EVERY: Duration = Duration::from_millis(200);
/// Most applied trades asked for in one reconciliation.
const RECONCILE_BATCH: u32 = 512;
/// How often a leader re-checks its in-sync set when nothing woke it.
const MEMBERSHIP_EVERY: Duration = Duration::from_millis(100);
/// Messages of the catalog's subscription a replica may fall behind by.
const SUBSCRIPTION_BACKLOG: usize = 256;

type PeerClient = RpcClient<OrderRequest, OrderResponse>;

/// Refuses entries that claim an epoch newer than the leader sending them: no leader can
/// hold such an entry, so it is forged or corrupt, and is never stored.
fn beyond_epoch(
    epoch: Epoch,
    prev: Option<LogPosition>,
    entries: &[OrderEntry],
) -> Result<(), RemoteError> {
    let newest = entries
        .iter()
        .map(|e| e.epoch)
        .chain(prev.map(|p| p.epoch))
        .max();
    match newest {
        Some(newest) if newest > epoch => {
            warn!(
                epoch,
                newest, "refused entries from an epoch newer than their leader's"
            );
            Err(RemoteError::bad_request(format!(
                "entries of epoch {newest} cannot come from a leader of epoch {epoch}"
            )))
        }
        _ => Ok(()),
    }
}

fn internal(e: impl std::fmt::Display) -> RemoteError {
    RemoteError::unavailable(e.to_string())
}

/// What the replication tasks and the disk waiters watch, republished when it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Progress {
    /// Newest entry appended (leader: what replication tasks may send).
    last: Option<TransactionNumber>,
    /// Newest entry on the local disk.
    durable: Option<TransactionNumber>,
    /// The log writer failed; nothing will become durable.
    failed: bool,
}

/// Orders waiting for their write quorum, by number; each is woken alone when the commit
/// point passes it, instead of every waiter re-checking on every acknowledgement.
type Committing =
    BTreeMap<TransactionNumber, Vec<tokio::sync::oneshot::Sender<Reply<OrderResponse>>>>;

/// Above this many waiting numbers, abandoned waiters (timed out) are pruned on insert.
const PRUNE_COMMITTING_ABOVE: usize = 10_000;

struct State {
    log: OrderLog,
    epoch: Epoch,
    leader: Option<ReplicaId>,
    role: Role,
    durable: Option<TransactionNumber>,
    failed: bool,
    /// Leader only: what each follower has persisted and whether it is waited for.
    followers: BTreeMap<ReplicaId, FollowerProgress>,
    /// Leader only: never goes back within a term.
    commit: Option<TransactionNumber>,
    /// Leader only: orders waiting for `commit` to reach them.
    committing: Committing,
    /// Leader only: its last entry when the term began: every order that may have been
    /// acknowledged before (a leader is always a member of the in-sync set, which holds them).
    inherited: Option<TransactionNumber>,
    /// Cancels the replication tasks (leader) or the catch-up task (follower) of this term.
    term: CancellationToken,
    /// Leader only: the in-sync set recorded for this epoch; every member is waited for.
    in_sync: Vec<ReplicaId>,
    /// Leader only: orders are placed once the catalog's applied trades are all recorded.
    reconciled: bool,
    /// Leader only: which catalog trades are recorded as orders.
    recorded: Recorded,
    /// Leader only: when the commit point last moved (or the term began).
    commit_moved: std::time::Instant,
}

/// Both sets, ascending.
fn union(a: &[ReplicaId], b: &[ReplicaId]) -> Vec<ReplicaId> {
    let mut all: Vec<ReplicaId> = a.iter().chain(b).copied().collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// The leader's account of the catalog's trades: every trade up to `through` is a committed
/// order; `known` maps later trades (catalog sequence numbers) to the orders recording them.
#[derive(Debug, Default)]
struct Recorded {
    through: u64,
    known: BTreeMap<u64, TransactionNumber>,
}

impl Recorded {
    /// Moves `through` over the known trades whose orders are committed.
    fn advance(&mut self, commit: Option<TransactionNumber>) -> u64 {
        while let Some(&number) = self.known.get(&(self.through + 1)) {
            if Some(number) > commit {
                break;
            }
            self.known.remove(&(self.through + 1));
            self.through += 1;
        }
        self.through
    }
}

/// The outcome of an order attempt, shared with duplicates that arrive meanwhile.
type Outcome = Option<Reply<OrderResponse>>;

struct Replica {
    id: ReplicaId,
    config: ReplicaConfig,
    state: Mutex<State>,
    progress: watch::Sender<Progress>,
    /// The group-commit queue; taken at shutdown so the writer drains and stops.
    jobs: Mutex<Option<mpsc::Sender<Job<TransactionNumber>>>>,
    /// Held across `.await` while the follower side changes the log (see the module docs).
    apply: tokio::sync::Mutex<()>,
    /// Request ids being placed right now, so that a duplicate waits for the first.
    in_flight: Mutex<HashMap<RequestId, watch::Receiver<Outcome>>>,
    catalog: CatalogClient,
    peers: BTreeMap<ReplicaId, PeerClient>,
    /// Wakes a follower's replication task early (it caught up; retry now).
    nudges: BTreeMap<ReplicaId, Arc<tokio::sync::Notify>>,
    /// Wakes the leader's in-sync task: a follower's state changed.
    membership: tokio::sync::Notify,
    /// Whether the catalog's subscription is up (heartbeats arrive).
    catalog_link: AtomicBool,
    /// Why the order log cannot be written, once it cannot.
    storage_failure: Arc<Mutex<Option<String>>>,
    shutdown: CancellationToken,
}

/// Removes a request id from `in_flight` and publishes its outcome, also if the attempt is
/// dropped half-way.
struct Claim<'a> {
    replica: &'a Replica,
    request_id: RequestId,
    outcome: watch::Sender<Outcome>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        lock(&self.replica.in_flight).remove(&self.request_id);
        self.outcome.send_if_modified(|outcome| {
            if outcome.is_none() {
                *outcome = Some(Err(RemoteError::unavailable("order attempt interrupted")));
                true
            } else {
                false
            }
        });
    }
}

impl Replica {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Recomputes the commit point (leader) and republishes the progress.
    fn publish(&self, st: &mut State) {
        if st.role == Role::Leader {
            let waited_for: Vec<Option<TransactionNumber>> = st
                .followers
                .iter()
                .filter(|(id, f)| f.up || st.in_sync.contains(id))
                .map(|(_, f)| f.persisted)
                .collect();
            let point = commit_point(
                st.durable,
                &waited_for,
                st.in_sync.len(),
                self.min_in_sync(),
            );
            if point > st.commit {
                st.commit = point;
                st.commit_moved = std::time::Instant::now();
            }
        }
        if st.role == Role::Leader && !st.failed {
            if let Some(commit) = st.commit {
                let later = st.committing.split_off(&(commit + 1));
                for (number, waiters) in std::mem::replace(&mut st.committing, later) {
                    let Some(position) = st.log.position(number) else {
                        continue;
                    };
                    for waiter in waiters {
                        let _ = waiter.send(Ok(OrderResponse::Placed {
                            number,
                            epoch: position.epoch,
                        }));
                    }
                }
            }
        } else if !st.committing.is_empty() {
            let answer = if st.failed {
                Err(RemoteError::unavailable("order log failed"))
            } else {
                Ok(Self::not_leader(st))
            };
            for waiter in std::mem::take(&mut st.committing).into_values().flatten() {
                let _ = waiter.send(answer.clone());
            }
        }
        let progress = Progress {
            last: st.log.last().map(|p| p.number),
            durable: st.durable,
            failed: st.failed,
        };
        self.progress.send_if_modified(|current| {
            let changed = *current != progress;
            *current = progress;
            changed
        });
    }

    /// A leader that cannot commit: its in-sync set is below the minimum, or an order has
    /// waited longer than a few replication timeouts without the commit point moving.
    fn stalled(&self, st: &State) -> bool {
        let waiting = st.commit.max(st.inherited) < st.log.last().map(|p| p.number);
        st.in_sync.len() < self.min_in_sync()
            || (waiting && st.commit_moved.elapsed() > self.config.replicate_timeout * 2)
    }

    fn min_in_sync(&self) -> usize {
        self.config.write_quorum.min_in_sync(self.config.replicas())
    }

    fn not_leader(st: &State) -> OrderResponse {
        OrderResponse::NotLeader {
            epoch: st.epoch,
            leader_id: st.leader,
        }
    }

    fn queue(&self, job: Job<TransactionNumber>) -> Result<(), RemoteError> {
        lock(&self.jobs)
            .as_ref()
            .and_then(|jobs| jobs.send(job).ok())
            .ok_or_else(|| RemoteError::unavailable("replica is shutting down"))
    }

    /// Appends `entries` (which must follow the log) and queues them for the disk.
    fn append(&self, st: &mut State, entries: &[OrderEntry]) -> Result<(), RemoteError> {
        if st.failed {
            return Err(RemoteError::unavailable("order log failed"));
        }
        if st.role == Role::Leader && st.commit.max(st.inherited) >= st.log.last().map(|p| p.number)
        {
            // Nothing was waiting: the time to commit is measured from now, not from the last
            // time the commit point moved (which may be long ago after an idle spell).
            st.commit_moved = std::time::Instant::now();
        }
        for entry in entries {
            let bytes = st.log.append(entry.clone()).map_err(internal)?;
            self.queue(Job::Append {
                bytes,
                item: entry.number,
            })?;
        }
        self.publish(st);
        Ok(())
    }

    /// Waits until entry `number` is on the local disk.
    async fn wait_durable(&self, number: TransactionNumber) -> Result<(), RemoteError> {
        let mut progress = self.progress.subscribe();
        let reached = tokio::time::timeout(
            DURABILITY_TIMEOUT,
            progress.wait_for(|p| p.durable >= Some(number) || p.failed),
        )
        .await;
        match reached {
            Ok(Ok(p)) if !p.failed => Ok(()),
            Ok(Ok(_)) => Err(RemoteError::unavailable("order log failed")),
            Ok(Err(_)) => Err(RemoteError::unavailable("replica is shutting down")),
            Err(_) => Err(RemoteError::unavailable("order log is not keeping up")),
        }
    }

    /// Sets aside every entry from `from` on (after what is queued has reached the disk).
    /// Callers hold `apply`.
    async fn cut_from(&self, from: TransactionNumber, reason: String) -> Result<(), RemoteError> {
        let last = self.state().log.last();
        if let Some(last) = last {
            self.wait_durable(last.number).await?;
        }
        let (done, finished) = tokio::sync::oneshot::channel();
        {
            let mut st = self.state();
            let (_, work) = st.log.cut_from(from, reason).map_err(internal)?;
            self.queue(Job::Maintain(Box::new(move |file| {
                let result = work(file);
                let _ = done.send(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                result
            })))?;
            st.durable = from.checked_sub(1).min(st.durable);
            self.publish(&mut st);
        }
        match finished.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(RemoteError::unavailable(format!(
                "cutting the order log: {e}"
            ))),
            Err(_) => Err(RemoteError::unavailable("order log failed while cutting")),
        }
    }

    /// Records a newer epoch and its leader, and takes up the role it gives this replica.
    /// `in_sync` is the recorded set, used when this replica leads.
    fn adopt(
        self: &Arc<Self>,
        st: &mut State,
        epoch: Epoch,
        leader: ReplicaId,
        in_sync: &[ReplicaId],
    ) -> Result<(), RemoteError> {
        st.log
            .store_epoch(EpochRecord {
                epoch,
                leader: Some(leader),
            })
            .map_err(internal)?;
        let was_leader = st.role == Role::Leader;
        st.term.cancel();
        st.term = self.shutdown.child_token();
        st.epoch = epoch;
        st.leader = Some(leader);
        st.followers.clear();
        st.commit = None;
        st.inherited = st.log.last().map(|p| p.number);
        st.in_sync.clear();
        st.reconciled = false;
        st.recorded = Recorded::default();
        st.commit_moved = std::time::Instant::now();
        if leader == self.id {
            st.role = Role::Leader;
            // Members of the in-sync set are waited for until they answer or are removed
            // from the record; the others once they have caught up.
            // Only configured replicas can hold orders; an unknown id in the record is
            // neither waited for nor counted towards the write quorum.
            st.in_sync = in_sync
                .iter()
                .copied()
                .filter(|id| *id == self.id || self.peers.contains_key(id))
                .collect();
            st.followers = self
                .peers
                .keys()
                .map(|&id| (id, FollowerProgress::default()))
                .collect();
            for &peer in self.peers.keys() {
                tokio::spawn(self.clone().replicate_to(peer, epoch, st.term.clone()));
            }
            tokio::spawn(self.clone().keep_in_sync(epoch, st.term.clone()));
            tokio::spawn(self.clone().reconcile(epoch, st.term.clone()));
            info!(epoch, last = ?st.log.last(), ?in_sync, "leading; reconciling with the catalog");
        } else {
            if was_leader {
                warn!(epoch, leader, "stepping down");
            }
            st.role = Role::Syncing;
            tokio::spawn(self.clone().catch_up(epoch, leader, st.term.clone()));
            info!(epoch, leader, "following; catching up first");
        }
        self.publish(st);
        Ok(())
    }

    /// Takes up the role the catalog's leadership record gives this replica. Only the record
    /// makes a replica lead, and only for an epoch newer than any it has stored: a replica
    /// that led an epoch before it restarted waits for a new election, because entries it sent
    /// before it stopped may be on followers without being here.
    async fn on_record(self: &Arc<Self>, record: &Leadership) {
        let Some(leader) = record.leader else {
            return;
        };
        if leader != self.id && !self.peers.contains_key(&leader) {
            warn!(%record, "the leadership record names an unknown replica");
            return;
        }
        // A change of role waits for any change to the log in progress (see the module docs).
        let _apply = self.apply.lock().await;
        let mut st = self.state();
        if record.epoch < st.epoch {
            return;
        }
        let result = if leader == self.id {
            if st.role == Role::Leader && st.epoch == record.epoch {
                // Within its epoch only this leader changes the set, one change at a time;
                // it takes each from the catalog's answer (`keep_in_sync`), since a pushed
                // copy may arrive after a newer answer.
                Ok(())
            } else if record.epoch > st.epoch {
                self.adopt(&mut st, record.epoch, leader, &record.in_sync)
            } else {
                if st.role != Role::Idle {
                    warn!(epoch = record.epoch, "recorded as leader of an epoch this replica may not lead again; waiting for a new election");
                    st.term.cancel();
                    st.role = Role::Idle;
                    self.publish(&mut st);
                }
                Ok(())
            }
        } else if record.epoch > st.epoch
            || st.role == Role::Idle
            || st.leader != Some(leader)
            || st.role == Role::Leader
        {
            self.adopt(&mut st, record.epoch, leader, &[])
        } else {
            Ok(())
        };
        if let Err(e) = result {
            error!(error = %e, %record, "cannot take up the recorded role");
        }
    }

    /// Follows the catalog's leadership record for as long as the replica runs, and keeps
    /// `catalog_link` true while the subscription's heartbeats arrive.
    async fn follow_record(self: Arc<Self>) {
        let mut backoff = MIN_BACKOFF;
        while !self.shutdown.is_cancelled() {
            let subscribed = tokio::select! {
                () = self.shutdown.cancelled() => return,
                subscribed = self.catalog.subscribe(false, SUBSCRIPTION_BACKLOG) => subscribed,
            };
            if let Ok((record, mut stream)) = subscribed {
                backoff = MIN_BACKOFF;
                self.catalog_link.store(true, Ordering::Relaxed);
                info!(%record, "following the leadership record");
                self.on_record(&record).await;
                loop {
                    let message = tokio::select! {
                        () = self.shutdown.cancelled() => return,
                        message = stream.next() => message,
                    };
                    match message {
                        Some(Ok(CatalogResponse::Leadership(record))) => {
                            info!(%record, "leadership record changed");
                            self.on_record(&record).await;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    }
                }
                self.catalog_link.store(false, Ordering::Relaxed);
                warn!("lost the catalog's subscription; reconnecting");
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Leader: keeps the recorded in-sync set true: drops members that went silent before
    /// going on without them, takes back followers that caught up.
    async fn keep_in_sync(self: Arc<Self>, epoch: Epoch, term: CancellationToken) {
        loop {
            tokio::select! {
                () = term.cancelled() => return,
                () = self.membership.notified() => {}
                () = tokio::time::sleep(MEMBERSHIP_EVERY) => {}
            }
            let (current, desired) = {
                let st = self.state();
                if st.role != Role::Leader || st.epoch != epoch {
                    return;
                }
                let desired = desired_in_sync(
                    self.id,
                    &st.in_sync,
                    &st.followers,
                    st.commit.max(st.inherited),
                    self.min_in_sync(),
                );
                (st.in_sync.clone(), desired)
            };
            if desired == current {
                continue;
            }
            {
                // Replicas being added are waited for from now on, before the catalog records
                // them: the moment it does, they must hold every acknowledged order. Removed
                // ones are still waited for until the catalog's answer.
                let mut st = self.state();
                if st.role != Role::Leader || st.epoch != epoch {
                    return;
                }
                let before = st.in_sync.clone();
                st.in_sync = union(&before, &desired);
                if st.in_sync != before {
                    self.publish(&mut st);
                }
            }
            let change = LeadershipChange::SetInSync {
                leader: self.id,
                in_sync: desired.clone(),
            };
            let outcome = tokio::select! {
                () = term.cancelled() => return,
                outcome = self.catalog.change_leadership(epoch, change, self.config.replicate_timeout * 2) => outcome,
            };
            match outcome {
                Ok(LeadershipOutcome::Changed(record)) => {
                    info!(from = ?current, to = ?record.in_sync, "in-sync set changed");
                    let mut st = self.state();
                    if st.role == Role::Leader && st.epoch == epoch && record.epoch == epoch {
                        st.in_sync = record.in_sync;
                        self.publish(&mut st);
                    }
                }
                Ok(LeadershipOutcome::Refused { current, reason }) => {
                    warn!(%current, %reason, "in-sync change refused");
                    self.on_record(&current).await;
                }
                Err(e) => {
                    // The change may or may not have been recorded: every replica either
                    // record names is still waited for, until a later change settles it.
                    debug!(error = %e, "in-sync change failed; retrying");
                    tokio::select! {
                        () = term.cancelled() => return,
                        () = tokio::time::sleep(MIN_BACKOFF * 5) => {}
                    }
                }
            }
        }
    }

    /// Leader: makes sure every trade the catalog applied is recorded as an order exactly
    /// once: at the start of the term (trades a deposed leader applied but never recorded)
    /// and then periodically (trades whose answer was lost on the way back), and tells the
    /// catalog how far every trade is a committed order.
    async fn reconcile(self: Arc<Self>, epoch: Epoch, term: CancellationToken) {
        let mut cursor: Option<u64> = None;
        let mut warned = false;
        loop {
            let (through, after, reconciled, serving) = {
                let mut st = self.state();
                if st.role != Role::Leader || st.epoch != epoch {
                    return;
                }
                // Only orders committed in this term count: inherited ones may not be on every
                // in-sync replica yet.
                let commit = st.commit;
                let through = st.recorded.advance(commit);
                let after = if st.reconciled { Some(through) } else { cursor };
                (through, after, st.reconciled, !self.stalled(&st))
            };
            let answer = tokio::select! {
                () = term.cancelled() => return,
                answer = self.catalog.applied_since(epoch, if reconciled { through } else { 0 }, after, RECONCILE_BATCH, serving) => answer,
            };
            match answer {
                Ok(Ok(applied)) => {
                    if !applied.complete && !warned {
                        warned = true;
                        error!(after = ?after, "the catalog no longer remembers every trade since the last recorded one; trades in between cannot be checked");
                    }
                    let more = applied.trades.len() == RECONCILE_BATCH as usize
                        && applied
                            .trades
                            .last()
                            .is_some_and(|t| t.seq < applied.last_seq);
                    let next_cursor = applied.trades.last().map(|t| t.seq).or(after);
                    match self.absorb(epoch, reconciled, &applied) {
                        Ok(adopted) if adopted > 0 => {
                            warn!(
                                adopted,
                                "recorded trades the catalog applied without an order"
                            )
                        }
                        Ok(_) => {}
                        Err(e) => warn!(error = %e, "reconciliation not applied"),
                    }
                    if !reconciled {
                        if more {
                            cursor = next_cursor;
                            continue;
                        }
                        let mut st = self.state();
                        if st.role == Role::Leader && st.epoch == epoch {
                            st.reconciled = true;
                            info!(
                                epoch,
                                through = st.recorded.through,
                                "reconciled with the catalog; placing orders"
                            );
                        }
                    }
                }
                Ok(Err(record)) => {
                    self.on_record(&record).await;
                }
                Err(e) => debug!(error = %e, "reconciliation failed; retrying"),
            }
            tokio::select! {
                () = term.cancelled() => return,
                () = tokio::time::sleep(if reconciled { RECONCILE_EVERY } else { MIN_BACKOFF }) => {}
            }
        }
    }

    /// Records the applied trades that are neither in the log nor being placed right now;
    /// returns how many were adopted.
    fn absorb(
        &self,
        epoch: Epoch,
        reconciled: bool,
        applied: &catalog::AppliedTrades,
    ) -> Result<usize, RemoteError> {
        // The claims first, then the state: a trade being placed is left to its request.
        let in_flight = lock(&self.in_flight);
        let mut st = self.state();
        if st.role != Role::Leader || st.epoch != epoch {
            return Ok(0);
        }
        if !reconciled && st.recorded.known.is_empty() && st.recorded.through == 0 {
            // Everything before the first trade listed (or before the catalog's last one)
            // was recorded by earlier leaders.
            st.recorded.through = applied
                .trades
                .first()
                .map_or(applied.last_seq, |t| t.seq.saturating_sub(1));
        }
        let mut adopted = 0;
        for trade in &applied.trades {
            if trade.seq <= st.recorded.through || st.recorded.known.contains_key(&trade.seq) {
                continue;
            }
            if let Some(number) = st.log.number_of(&trade.request_id) {
                st.recorded.known.insert(trade.seq, number);
                continue;
            }
            if in_flight.contains_key(&trade.request_id) {
                continue;
            }
            let entry = OrderEntry {
                number: st.log.next_number(),
                epoch,
                request_id: trade.request_id.clone(),
                name: trade.name.clone(),
                kind: trade.kind,
                quantity: trade.quantity,
            };
            info!(seq = trade.seq, number = entry.number, request_id = %trade.request_id, "recording a trade the catalog applied without an order");
            self.append(&mut st, std::slice::from_ref(&entry))?;
            st.recorded.known.insert(trade.seq, entry.number);
            adopted += 1;
        }
        Ok(adopted)
    }

    /// Leader: trade through the catalog, number, record, replicate, answer once committed.
    async fn place(&self, order: PlaceOrder) -> Reply<OrderResponse> {
        if order.quantity <= 0 {
            return Ok(OrderResponse::Rejected(TradeRejection::InvalidQuantity));
        }
        let (epoch, recorded) = {
            let st = self.state();
            if st.role != Role::Leader {
                return Ok(Self::not_leader(&st));
            }
            if !st.reconciled {
                return Err(RemoteError::unavailable(
                    "the new leader is reconciling with the catalog; retry",
                ));
            }
            let recorded = match Self::recorded(&st, &order) {
                Ok(recorded) => recorded,
                Err(answer) => return answer,
            };
            if self.config.write_quorum == WriteQuorum::Majority
                && st.in_sync.len() < self.min_in_sync()
            {
                let up = st.followers.values().filter(|f| f.up).count() + 1;
                return Err(RemoteError::unavailable(format!(
                    "write quorum majority needs {} in-sync replicas; {} in sync, {up} up",
                    self.min_in_sync(),
                    st.in_sync.len()
                )));
            }
            (st.epoch, recorded)
        };
        if let Some(number) = recorded {
            return self.answer_when_committed(number, epoch).await;
        }
        // One attempt per request id at a time; a duplicate shares the first one's outcome.
        let claim = {
            let mut in_flight = lock(&self.in_flight);
            if let Some(outcome) = in_flight.get(&order.request_id) {
                Err(outcome.clone())
            } else {
                let (sender, receiver) = watch::channel(None);
                in_flight.insert(order.request_id.clone(), receiver);
                Ok(Claim {
                    replica: self,
                    request_id: order.request_id.clone(),
                    outcome: sender,
                })
            }
        };
        match claim {
            Ok(claim) => {
                let outcome = self.place_claimed(order, epoch).await;
                claim.outcome.send_replace(Some(outcome.clone()));
                outcome
            }
            Err(mut first) => match first.wait_for(Option::is_some).await {
                Ok(outcome) => outcome
                    .clone()
                    .unwrap_or_else(|| Err(RemoteError::unavailable("order attempt interrupted"))),
                Err(_) => Err(RemoteError::unavailable("order attempt interrupted")),
            },
        }
    }

    /// The number of the order `order`'s request id already placed, if any. An id placed for
    /// another trade is refused, as the catalog would.
    /// `Err` carries the answer to give instead of placing.
    fn recorded(
        st: &State,
        order: &PlaceOrder,
    ) -> Result<Option<TransactionNumber>, Reply<OrderResponse>> {
        let Some(number) = st.log.number_of(&order.request_id) else {
            return Ok(None);
        };
        match st.log.get(number) {
            Ok(Some(e))
                if e.name == order.name
                    && e.kind == order.kind
                    && i64::try_from(e.quantity) == Ok(order.quantity) =>
            {
                Ok(Some(number))
            }
            Ok(_) => Err(Ok(OrderResponse::Rejected(TradeRejection::RequestIdReused))),
            Err(e) => Err(Err(internal(e))),
        }
    }

    async fn place_claimed(&self, order: PlaceOrder, epoch: Epoch) -> Reply<OrderResponse> {
        // An earlier attempt may have finished between the first check and the claim.
        let recorded = match Self::recorded(&self.state(), &order) {
            Ok(recorded) => recorded,
            Err(answer) => return answer,
        };
        if let Some(number) = recorded {
            return self.answer_when_committed(number, epoch).await;
        }
        let trade = TradeRequest {
            epoch,
            request_id: order.request_id.clone(),
            name: order.name.clone(),
            quantity: order.quantity,
            kind: order.kind,
        };
        let seq = match self.catalog.trade(&trade).await {
            Ok(TradeOutcome::Traded { seq, .. }) => seq,
            Ok(TradeOutcome::Rejected(rejection)) => return Ok(OrderResponse::Rejected(rejection)),
            Ok(TradeOutcome::Fenced { current }) => {
                warn!(epoch, %current, "the catalog refused a trade of this epoch");
                let answer = Self::not_leader(&self.state());
                if current.epoch > epoch {
                    return Ok(answer);
                }
                return Err(RemoteError::unavailable(
                    "the catalog is changing the leadership record; retry",
                ));
            }
            Err(e) => {
                return Err(RemoteError::unavailable(format!(
                    "catalog: {e} (the trade may have been applied; a retry with the same \
                     request id tells)"
                )))
            }
        };
        let number = {
            let mut st = self.state();
            if st.role != Role::Leader || st.epoch != epoch {
                // Traded but not recorded here. A retry at the new leader records it once:
                // the catalog remembers the request id and does not trade again.
                return Ok(Self::not_leader(&st));
            }
            let number = st.log.next_number();
            let entry = OrderEntry {
                number,
                epoch,
                request_id: order.request_id,
                name: order.name,
                kind: order.kind,
                quantity: order.quantity.unsigned_abs(),
            };
            self.append(&mut st, std::slice::from_ref(&entry))?;
            if seq > st.recorded.through {
                st.recorded.known.insert(seq, number);
            }
            number
        };
        self.answer_when_committed(number, epoch).await
    }

    async fn answer_when_committed(
        &self,
        number: TransactionNumber,
        epoch: Epoch,
    ) -> Reply<OrderResponse> {
        let answer = {
            let mut st = self.state();
            if st.role != Role::Leader || st.epoch != epoch {
                return Ok(Self::not_leader(&st));
            }
            if st.commit >= Some(number) {
                if let Some(position) = st.log.position(number) {
                    return Ok(OrderResponse::Placed {
                        number,
                        epoch: position.epoch,
                    });
                }
            }
            if st.committing.len() > PRUNE_COMMITTING_ABOVE {
                st.committing.retain(|_, waiters| {
                    waiters.retain(|w| !w.is_closed());
                    !waiters.is_empty()
                });
            }
            let (sender, receiver) = tokio::sync::oneshot::channel();
            st.committing.entry(number).or_default().push(sender);
            receiver
        };
        match tokio::time::timeout(self.config.commit_timeout, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(RemoteError::unavailable("replica is shutting down")),
            Err(_) => Err(RemoteError::unavailable(format!(
                "order {number} did not reach its write quorum within {:?}",
                self.config.commit_timeout
            ))),
        }
    }

    fn get_order(&self, number: TransactionNumber) -> Reply<OrderResponse> {
        let st = self.state();
        let visible = match st.role {
            Role::Leader => {
                if Some(number) > st.commit && number < st.log.next_number() {
                    // Recorded but not yet on every in-sync replica: not final until then.
                    return Err(RemoteError::unavailable(format!(
                        "order {number} is not committed yet"
                    )));
                }
                st.commit
            }
            Role::Follower => st.durable,
            Role::Syncing | Role::Idle => {
                return Err(RemoteError::unavailable(
                    "replica is not caught up with a leader",
                ))
            }
        };
        if Some(number) > visible {
            return Ok(OrderResponse::OrderNotFound);
        }
        match st.log.get(number).map_err(internal)? {
            Some(entry) => Ok(OrderResponse::Order(entry)),
            None => Ok(OrderResponse::OrderNotFound),
        }
    }

    fn status(&self) -> ReplicaStatus {
        let st = self.state();
        ReplicaStatus {
            id: self.id,
            role: st.role,
            epoch: st.epoch,
            leader_id: st.leader,
            last: st.durable.and_then(|n| st.log.position(n)),
            catalog_link: self.catalog_link.load(Ordering::Relaxed),
            placing: st.role == Role::Leader && st.reconciled,
            stalled: st.role == Role::Leader && self.stalled(&st),
            storage_failure: lock(&self.storage_failure).clone(),
        }
    }

    /// Follower: persist entries the leader sent, or say where this log stands.
    async fn replicate(
        self: &Arc<Self>,
        epoch: Epoch,
        leader: ReplicaId,
        prev: Option<LogPosition>,
        entries: Vec<OrderEntry>,
    ) -> Reply<OrderResponse> {
        let first = prev.map_or(0, |p| p.number.saturating_add(1));
        let consecutive = entries
            .iter()
            .enumerate()
            .all(|(i, e)| Some(e.number) == first.checked_add(i as u64));
        if !consecutive {
            return Err(RemoteError::bad_request(
                "replicated entries must follow prev without gaps",
            ));
        }
        beyond_epoch(epoch, prev, &entries)?;
        if epoch > self.state().epoch {
            self.confirm_epoch(epoch, leader).await?;
        }
        let through = {
            let _apply = self.apply.lock().await;
            if let Some(refusal) = self.check_leader(epoch, leader)? {
                return Ok(refusal);
            }
            match self
                .apply_entries(prev, &entries, "replaced by the leader's entries")
                .await?
            {
                Some(through) => through,
                None => {
                    let mut st = self.state();
                    let last = st.log.last();
                    if st.role == Role::Follower {
                        // A gap or another history: catch up before following again.
                        st.role = Role::Syncing;
                        st.term.cancel();
                        st.term = self.shutdown.child_token();
                        tokio::spawn(self.clone().catch_up(epoch, leader, st.term.clone()));
                        self.publish(&mut st);
                        info!(
                            epoch,
                            leader,
                            ?last,
                            ?prev,
                            "behind the leader; catching up"
                        );
                    }
                    return Ok(OrderResponse::Behind { last });
                }
            }
        };
        if let Some(through) = through {
            self.wait_durable(through.number).await?;
        }
        Ok(OrderResponse::Replicated { last: through })
    }

    /// A `Replicate` names an epoch newer than this replica knows: believe it only once the
    /// catalog's record says so (the push of the record may simply not have arrived yet), and
    /// take up the record's role. An epoch or leader the record does not hold is refused and
    /// logged, never stored: even a peer with the cluster token cannot move this replica to an
    /// epoch nobody was elected for.
    async fn confirm_epoch(
        self: &Arc<Self>,
        epoch: Epoch,
        leader: ReplicaId,
    ) -> Result<(), RemoteError> {
        let record = self
            .catalog
            .leadership(self.config.replicate_timeout)
            .await
            .map_err(|e| {
                RemoteError::unavailable(format!(
                    "cannot confirm epoch {epoch} with the catalog: {e}"
                ))
            })?;
        if record.epoch < epoch || (record.epoch == epoch && record.leader != Some(leader)) {
            warn!(
                epoch,
                leader,
                %record,
                "refused a Replicate for an epoch or leader the catalog has not recorded"
            );
            return Err(RemoteError::bad_request(format!(
                "epoch {epoch} with leader {leader} is not in the leadership record ({record})"
            )));
        }
        self.on_record(&record).await;
        Ok(())
    }

    /// Refuses an older leader, and a newer one the record does not hold yet (see
    /// [`Self::confirm_epoch`]); follows the current leader again after a pause.
    /// Callers hold `apply`.
    fn check_leader(
        self: &Arc<Self>,
        epoch: Epoch,
        leader: ReplicaId,
    ) -> Result<Option<OrderResponse>, RemoteError> {
        if leader == self.id {
            return Err(RemoteError::bad_request("a replica cannot follow itself"));
        }
        let mut st = self.state();
        if epoch < st.epoch || (epoch == st.epoch && st.leader.is_some_and(|l| l != leader)) {
            return Ok(Some(OrderResponse::StaleEpoch {
                epoch: st.epoch,
                leader_id: st.leader,
            }));
        }
        if epoch > st.epoch {
            return Err(RemoteError::unavailable(format!(
                "epoch {epoch} is not recorded here yet (this replica is at {})",
                st.epoch
            )));
        }
        if st.leader.is_none() || st.role == Role::Idle {
            self.adopt(&mut st, epoch, leader, &[])?;
        }
        Ok(None)
    }

    /// Applies entries that follow `prev` in the leader's log. Returns the leader position
    /// this log now matches through, or `None` when they do not fit (gap or mismatch).
    /// Callers hold `apply`.
    async fn apply_entries(
        &self,
        prev: Option<LogPosition>,
        entries: &[OrderEntry],
        reason: &str,
    ) -> Result<Option<Option<LogPosition>>, RemoteError> {
        let fit = {
            let st = self.state();
            replication::fit(|n| st.log.position(n), prev, entries)
        };
        let skip = match fit {
            Fit::Gap | Fit::Mismatch => return Ok(None),
            Fit::Append { skip } => skip,
            Fit::Replace { from, skip } => {
                self.cut_from(from, reason.to_owned()).await?;
                skip
            }
        };
        let mut st = self.state();
        self.append(&mut st, &entries[skip..])?;
        Ok(Some(entries.last().map(OrderEntry::position).or(prev)))
    }

    /// Leader: the entries after where the follower's history meets ours.
    fn sync_up(
        &self,
        epoch: Epoch,
        follower: ReplicaId,
        known: &[LogPosition],
    ) -> Reply<OrderResponse> {
        let mut st = self.state();
        if st.role != Role::Leader || epoch > st.epoch {
            return Ok(Self::not_leader(&st));
        }
        let from = replication::meeting_point(known, st.log.boundaries());
        let start = from.map_or(0, |p| p.number + 1);
        let entries = st.log.entries(start, MAX_BATCH).map_err(internal)?;
        let leader_last = st.log.last();
        debug!(follower, ?from, count = entries.len(), "sync-up batch");
        let completes = entries.last().map(OrderEntry::position).or(from) == leader_last;
        if completes {
            // It will hold everything we have: wait for it again from the next order on. What
            // it persisted before stays true (those entries matched our log); what it persists
            // now is learnt from the probe its replication task sends next.
            if let Some(progress) = st.followers.get_mut(&follower) {
                if !progress.up {
                    info!(follower, "follower caught up; waiting for it again");
                }
                progress.up = true;
                progress.silent = false;
                self.publish(&mut st);
            }
            if let Some(nudge) = self.nudges.get(&follower) {
                nudge.notify_one();
            }
        }
        Ok(OrderResponse::Entries {
            from,
            entries,
            leader_last,
        })
    }

    /// Follower: fetch from the leader everything this log lacks, then follow.
    async fn catch_up(self: Arc<Self>, epoch: Epoch, leader: ReplicaId, term: CancellationToken) {
        let Some(rpc) = self.peers.get(&leader).cloned() else {
            error!(leader, "leader is not among the configured peers");
            return;
        };
        let mut backoff = MIN_BACKOFF;
        let mut fetched = 0usize;
        while !term.is_cancelled() {
            let known = {
                let st = self.state();
                let boundaries = st.log.boundaries();
                boundaries[boundaries.len().saturating_sub(MAX_KNOWN)..].to_vec()
            };
            let request = OrderRequest::SyncUp {
                epoch,
                follower_id: self.id,
                known,
            };
            let answer = tokio::select! {
                () = term.cancelled() => return,
                answer = rpc.call(&request) => answer,
            };
            match answer {
                Ok(OrderResponse::Entries {
                    from,
                    entries,
                    leader_last,
                }) => {
                    backoff = MIN_BACKOFF;
                    fetched += entries.len();
                    match self
                        .adopt_batch(epoch, from, &entries, leader_last, &term)
                        .await
                    {
                        Ok(true) => {
                            info!(epoch, leader, fetched, last = ?leader_last, "caught up with the leader");
                            return;
                        }
                        Ok(false) => continue,
                        Err(e) => warn!(error = %e, "sync-up batch not applied; retrying"),
                    }
                }
                Ok(other) => debug!(?other, "leader not ready for sync-up"),
                Err(e) => debug!(error = %e, "sync-up failed"),
            }
            tokio::select! {
                () = term.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Applies one sync-up batch; true once the log equals the leader's as of the answer.
    async fn adopt_batch(
        &self,
        epoch: Epoch,
        from: Option<LogPosition>,
        entries: &[OrderEntry],
        leader_last: Option<LogPosition>,
        term: &CancellationToken,
    ) -> Result<bool, RemoteError> {
        beyond_epoch(epoch, from, entries)?;
        let _apply = self.apply.lock().await;
        if term.is_cancelled() {
            return Ok(false);
        }
        let Some(through) = self
            .apply_entries(from, entries, "not in the leader's history")
            .await?
        else {
            return Err(RemoteError::unavailable("sync-up batch does not fit"));
        };
        if through != leader_last {
            return Ok(false);
        }
        // Everything the leader had when it answered is here. Entries beyond it from an
        // older epoch are a suffix the leader never had: set aside. Entries of this epoch
        // came from the leader itself by `Replicate` after it answered, and stay.
        let beyond = leader_last.map_or(0, |p| p.number.saturating_add(1));
        let stale_suffix = self
            .state()
            .log
            .position(beyond)
            .is_some_and(|p| p.epoch < epoch);
        if stale_suffix {
            self.cut_from(beyond, "beyond the leader's last entry".to_owned())
                .await?;
        }
        let last = self.state().log.last();
        if let Some(last) = last {
            self.wait_durable(last.number).await?;
        }
        let mut st = self.state();
        if term.is_cancelled() || st.role != Role::Syncing {
            return Ok(false);
        }
        st.role = Role::Follower;
        self.publish(&mut st);
        Ok(true)
    }

    /// Leader: keep one follower supplied with entries, in order, one batch in flight.
    async fn replicate_to(self: Arc<Self>, peer: ReplicaId, epoch: Epoch, term: CancellationToken) {
        let (Some(rpc), Some(nudge)) = (
            self.peers.get(&peer).cloned(),
            self.nudges.get(&peer).cloned(),
        ) else {
            return;
        };
        let mut progress = self.progress.subscribe();
        let mut next = self.state().log.next_number();
        // The first message probes where the follower stands, even with nothing to send.
        let mut probe = true;
        let mut backoff = MIN_BACKOFF;
        loop {
            if !probe {
                let ready = tokio::select! {
                    () = term.cancelled() => return,
                    // It caught up by sync-up: probe at once, so that what it persisted is
                    // learnt without waiting for the next order.
                    () = nudge.notified() => Ok(()),
                    ready = progress.wait_for(|p| p.last.is_some_and(|last| last >= next)) => ready.map(|_| ()),
                };
                if ready.is_err() {
                    return;
                }
            }
            let request = {
                let st = self.state();
                next = next.min(st.log.next_number());
                let prev = next.checked_sub(1).and_then(|n| st.log.position(n));
                match st.log.entries(next, MAX_BATCH) {
                    Ok(entries) => OrderRequest::Replicate {
                        epoch,
                        leader_id: self.id,
                        prev,
                        entries,
                    },
                    Err(e) => {
                        error!(error = %e, peer, "cannot read entries to replicate");
                        return;
                    }
                }
            };
            let answer = tokio::select! {
                () = term.cancelled() => return,
                answer = rpc.call_within(&request, self.config.replicate_timeout) => answer,
            };
            match answer {
                Ok(OrderResponse::Replicated { last }) => {
                    next = last.map_or(0, |p| p.number.saturating_add(1));
                    self.record_follower(peer, epoch, Report::Persisted(last.map(|p| p.number)));
                    probe = false;
                    backoff = MIN_BACKOFF;
                    continue;
                }
                Ok(OrderResponse::StaleEpoch {
                    epoch: theirs,
                    leader_id,
                }) => {
                    warn!(
                        peer,
                        ours = epoch,
                        theirs,
                        ?leader_id,
                        "a follower knows a newer epoch; stepping down"
                    );
                    self.step_down(epoch, theirs, leader_id).await;
                    return;
                }
                Ok(OrderResponse::Behind { last }) => {
                    // It is catching up and may set entries aside: forget what it had
                    // persisted, and offer the entries after its last one next time.
                    if let Some(last) = last {
                        next = next.min(last.number.saturating_add(1));
                    }
                    self.record_follower(peer, epoch, Report::Behind);
                }
                Ok(other) => {
                    warn!(peer, ?other, "unexpected answer to replicate");
                    self.record_follower(peer, epoch, Report::Unreachable);
                }
                Err(e) => {
                    debug!(peer, error = %e, "replicate failed");
                    self.record_follower(peer, epoch, Report::Unreachable);
                }
            }
            probe = true;
            tokio::select! {
                () = term.cancelled() => return,
                () = nudge.notified() => backoff = MIN_BACKOFF,
                () = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(MAX_BACKOFF),
            }
        }
    }

    /// A newer epoch exists: stop leading `epoch`. Orders waiting for their quorum are told
    /// this replica no longer leads, so that they are retried at the new leader.
    async fn step_down(self: &Arc<Self>, epoch: Epoch, newer: Epoch, leader: Option<ReplicaId>) {
        let _apply = self.apply.lock().await;
        let mut st = self.state();
        if st.epoch != epoch || st.role != Role::Leader || newer <= epoch {
            return;
        }
        match leader {
            Some(leader) if leader != self.id && self.peers.contains_key(&leader) => {
                if let Err(e) = self.adopt(&mut st, newer, leader, &[]) {
                    error!(error = %e, "cannot record the newer epoch");
                }
            }
            _ => {
                // The newer epoch is taken as this replica's, so it never leads the old one
                // again.
                if let Err(e) = st.log.store_epoch(EpochRecord {
                    epoch: newer,
                    leader: None,
                }) {
                    error!(error = %e, "cannot record the newer epoch");
                }
                st.term.cancel();
                st.epoch = newer;
                st.leader = None;
                st.role = Role::Idle;
                st.followers.clear();
                st.commit = None;
                self.publish(&mut st);
            }
        }
    }

    fn record_follower(&self, peer: ReplicaId, epoch: Epoch, report: Report) {
        let mut st = self.state();
        if st.role != Role::Leader || st.epoch != epoch {
            return;
        }
        let Some(follower) = st.followers.get_mut(&peer) else {
            return;
        };
        let before = *follower;
        match report {
            Report::Persisted(persisted) => {
                follower.up = true;
                follower.silent = false;
                follower.persisted = persisted;
            }
            // It is catching up and may set entries aside: what it had persisted is forgotten.
            Report::Behind => {
                follower.up = false;
                follower.silent = false;
                follower.persisted = None;
            }
            // What it persisted before it stopped answering is still on its disk, but it is
            // not waited for once the record no longer names it.
            Report::Unreachable => {
                follower.up = false;
                follower.silent = true;
            }
        }
        let after = *follower;
        if before.silent != after.silent || before.up != after.up {
            if after.silent {
                warn!(peer, "follower silent; dropping it from the in-sync set");
            } else if after.up {
                info!(peer, "follower up");
            }
            self.membership.notify_one();
        } else if after.up && !st.in_sync.contains(&peer) {
            self.membership.notify_one();
        }
        self.publish(&mut st);
    }
}

/// What a follower's answer to `Replicate` tells the leader.
enum Report {
    /// It holds everything up to this entry.
    Persisted(Option<TransactionNumber>),
    /// It does not follow our log (a gap or another history) and is syncing up.
    Behind,
    /// No answer in time, or not one we can use.
    Unreachable,
}

/// The replica as a [`Service`].
struct ReplicaService(Arc<Replica>);

impl Service for ReplicaService {
    type Request = OrderRequest;
    type Response = OrderResponse;

    async fn call(&self, request: OrderRequest, _context: RequestContext) -> Reply<OrderResponse> {
        let replica = &self.0;
        match request {
            OrderRequest::PlaceOrder(order) => replica.place(order).await,
            OrderRequest::GetOrder { number } => replica.get_order(number),
            OrderRequest::Status => Ok(OrderResponse::Status(replica.status())),
            OrderRequest::Replicate {
                epoch,
                leader_id,
                prev,
                entries,
            } => replica.replicate(epoch, leader_id, prev, entries).await,
            OrderRequest::SyncUp {
                epoch,
                follower_id,
                known,
            } => replica.sync_up(epoch, follower_id, &known),
        }
    }
}

/// Opens the order log in `config.state_dir`, serves order requests on `listener` until
/// `shutdown` fires, then finishes the requests in flight and flushes the log.
///
/// If the order log's disk fails, it acknowledges nothing more and reports why in its status;
/// once the state directory takes writes again it stops the same way and returns
/// [`Ended::RestartFromLog`] (the binary then restarts in place).
pub async fn run(
    listener: TcpListener,
    config: ReplicaConfig,
    shutdown: CancellationToken,
) -> Result<Ended, Error> {
    let recovery = Recovery::new(&shutdown);
    let shutdown = recovery.stop().clone();
    let (dir, window) = (config.state_dir.clone(), config.dedup_window);
    let (log, file, stored) = tokio::task::spawn_blocking(move || OrderLog::open(&dir, window))
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))??;
    let (events, mut durable_events) =
        tokio::sync::mpsc::unbounded_channel::<Option<TransactionNumber>>();
    let failures = events.clone();
    let storage_failure = Arc::new(Mutex::new(None));
    let failure_reason = storage_failure.clone();
    let (jobs, writer) = group_commit::start(
        &format!("order-{}-log", config.id),
        file,
        move |batch: Vec<TransactionNumber>| {
            let _ = events.send(batch.last().copied());
        },
        move |e| {
            error!(error = %e, "order log failed: acknowledging nothing; restarting from the log once the state directory takes writes again");
            *lock(&failure_reason) = Some(format!("order log write failed: {e}"));
            let _ = failures.send(None);
        },
    )?;
    let durable = log.last().map(|p| p.number);
    let initial = Progress {
        last: durable,
        durable,
        failed: false,
    };
    let peers = config
        .peers
        .iter()
        .map(|(&id, addr)| (id, RpcClient::new(addr.clone(), config.client.clone())))
        .collect();
    let nudges = config
        .peers
        .keys()
        .map(|&id| (id, Arc::default()))
        .collect();
    let replica = Arc::new(Replica {
        id: config.id,
        catalog: CatalogClient::new(config.catalog.clone(), config.client.clone()),
        peers,
        nudges,
        state: Mutex::new(State {
            log,
            epoch: stored.epoch,
            leader: stored.leader,
            role: Role::Idle,
            durable,
            failed: false,
            followers: BTreeMap::new(),
            commit: None,
            committing: BTreeMap::new(),
            inherited: None,
            term: shutdown.child_token(),
            in_sync: Vec::new(),
            reconciled: false,
            recorded: Recorded::default(),
            commit_moved: std::time::Instant::now(),
        }),
        progress: watch::channel(initial).0,
        jobs: Mutex::new(Some(jobs)),
        apply: tokio::sync::Mutex::new(()),
        in_flight: Mutex::new(HashMap::new()),
        membership: tokio::sync::Notify::new(),
        catalog_link: AtomicBool::new(false),
        storage_failure,
        shutdown: shutdown.clone(),
        config,
    });
    // One wake-up per group commit; waiters are woken from inside the runtime.
    let relay = tokio::spawn({
        let replica = replica.clone();
        let recovery = recovery.clone();
        async move {
            while let Some(event) = durable_events.recv().await {
                let mut st = replica.state();
                match event {
                    Some(number) => st.durable = st.durable.max(Some(number)),
                    None => {
                        st.failed = true;
                        recovery.after_failure(replica.config.state_dir.clone());
                    }
                }
                replica.publish(&mut st);
            }
        }
    });
    {
        // A replica that knew another leader before it stopped catches up with it at once;
        // one that led waits for a new election. The catalog's record decides from then on.
        let mut st = replica.state();
        match stored.leader {
            Some(leader) if leader != replica.id && replica.peers.contains_key(&leader) => {
                replica
                    .adopt(&mut st, stored.epoch, leader, &[])
                    .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;
            }
            _ => {}
        }
    }
    let follower = tokio::spawn(replica.clone().follow_record());
    info!(
        addr = %listener.local_addr()?,
        id = replica.id,
        epoch = stored.epoch,
        last = ?replica.state().log.last(),
        "order serving"
    );
    server::serve(
        listener,
        Arc::new(ReplicaService(replica.clone())),
        replica.config.server.clone(),
        shutdown,
    )
    .await;

    replica.state().term.cancel();
    let _ = follower.await;
    lock(&replica.jobs).take();
    let joined = tokio::task::spawn_blocking(move || writer.join()).await;
    if !matches!(joined, Ok(Ok(()))) {
        warn!("order log writer did not stop cleanly");
    }
    let _ = relay.await;
    let ended = recovery.ended();
    match ended {
        Ended::RestartFromLog => info!("order replica stopped to restart from its log"),
        Ended::Stopped => info!("order replica stopped"),
    }
    Ok(ended)
}
