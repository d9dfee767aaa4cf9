//! What the services' engines share. Each service keeps its protocol in a state machine
//! without I/O (an engine): inputs in, commands out, the time given with every input. These
//! are the names they have in common: tokens of requests being answered, ids of calls made
//! and of writes queued, whom a call goes to, what it came to, and a queue of deadlines.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use crate::wire::{CatalogResponse, OrderResponse, RemoteError, ReplicaId};

/// A point in time, as a runtime's monotonic clock gives it (from an arbitrary origin).
pub type Time = Duration;
/// A request an engine is answering; chosen by the runtime, echoed by the engine's reply.
pub type Token = u64;
/// A call an engine made; chosen by the engine, echoed by the answer the runtime feeds back.
pub type CallId = u64;
/// A write an engine queued; reported back by the runtime once it is on disk.
pub type WriteId = u64;

/// Hashes the ids engines hand out (tokens, calls): distinct integers, mostly consecutive,
/// that need no protection against chosen collisions, only spreading over the buckets.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x100_0000_01B3);
        }
    }

    fn write_u64(&mut self, id: u64) {
        // Fibonacci hashing: consecutive ids land far apart.
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by engine ids.
pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;
/// A set of engine ids.
pub type IdSet = HashSet<u64, BuildHasherDefault<IdHasher>>;

/// Whom a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// An order replica.
    Replica(ReplicaId),
    /// The catalog.
    Catalog,
}

/// The answer a call got.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// From a replica.
    Order(OrderResponse),
    /// From the catalog.
    Catalog(CatalogResponse),
}

/// Why a call got no answer of its protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// The peer answered with an error of its own.
    Remote(RemoteError),
    /// No answer: unreachable, timed out, or the connection broke. The request may or may not
    /// have been applied.
    Failed(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Remote(e) => write!(f, "{e}"),
            CallError::Failed(why) => f.write_str(why),
        }
    }
}

impl From<crate::Error> for CallError {
    fn from(error: crate::Error) -> Self {
        match error {
            crate::Error::Remote(remote) => CallError::Remote(remote),
            other => CallError::Failed(other.to_string()),
        }
    }
}

/// What a call came to.
pub type CallResult = Result<Answer, CallError>;

/// Whether a step must wake the timer task: the engine's next deadline is now earlier than
/// the one the task sleeps until (or the task sleeps with none).
pub fn wakes_timer(sleeping_until: Option<Time>, next: Option<Time>) -> bool {
    next.is_some() && (sleeping_until.is_none() || next < sleeping_until)
}

/// An exponential backoff: waits that double from `min` up to `max`, back to `min` after a
/// success. Pure (no clock, no sleeping): the caller schedules each wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Waits from `min` to `max`.
    pub const fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The wait before the next try, doubling the one after it (up to `max`).
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        wait
    }

    /// After a success: the next wait is `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// A runtime's timer task: ticks its engine whenever the next deadline comes. `next` reads the
/// engine's next deadline and records it as the one slept until (under the engine's lock, so
/// that [`wakes_timer`] in a step sees it); `wake` is notified by a step that moved it
/// earlier; `tick` feeds the engine a tick. Times count from `origin`. Ends with `shutdown`.
pub async fn keep_time(
    origin: tokio::time::Instant,
    wake: &tokio::sync::Notify,
    shutdown: &tokio_util::sync::CancellationToken,
    mut next: impl FnMut() -> Option<Time>,
    mut tick: impl FnMut(),
) {
    loop {
        let at = next();
        let sleep = async {
            match at {
                Some(at) => tokio::time::sleep_until(origin + at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wake.notified() => continue,
            () = sleep => {}
        }
        tick();
    }
}

/// Requests waiting, each until a deadline. One kind of wait has one length, so deadlines
/// arrive in order and the oldest is first; a request answered early is forgotten lazily.
#[derive(Debug, Default)]
pub struct Deadlines {
    queue: VecDeque<(Time, Token)>,
    live: IdSet,
}

impl Deadlines {
    /// `token` waits until `at` (deadlines must come in order).
    pub fn add(&mut self, token: Token, at: Time) {
        if self.live.insert(token) {
            self.queue.push_back((at, token));
        }
    }

    /// Takes `token` out; true if it was still waiting (and must be answered now).
    pub fn take(&mut self, token: Token) -> bool {
        self.live.remove(&token)
    }

    /// Whether `token` still waits.
    pub fn waits(&self, token: Token) -> bool {
        self.live.contains(&token)
    }

    /// Takes out the waiting tokens whose deadline is past.
    pub fn due(&mut self, now: Time) -> Vec<Token> {
        let mut due = Vec::new();
        while let Some(&(at, token)) = self.queue.front() {
            if self.live.contains(&token) && at > now {
                break;
            }
            self.queue.pop_front();
            if self.live.remove(&token) {
                due.push(token);
            }
        }
        due
    }

    /// The earliest deadline of a token still waiting.
    pub fn earliest(&mut self) -> Option<Time> {
        while let Some(&(at, token)) = self.queue.front() {
            if self.live.contains(&token) {
                return Some(at);
            }
            self.queue.pop_front();
        }
        None
    }

    /// Takes out every waiting token, oldest first.
    pub fn drain(&mut self) -> Vec<Token> {
        let mut live = std::mem::take(&mut self.live);
        self.queue
            .drain(..)
            .filter_map(|(_, token)| live.remove(&token).then_some(token))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_ceiling_and_starts_over_after_a_success() {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(50));
        let waits: Vec<u128> = (0..5).map(|_| backoff.next_wait().as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 50, 50]);
        backoff.reset();
        assert_eq!(backoff.next_wait(), Duration::from_millis(10));
    }

    #[test]
    fn deadlines_come_due_in_order_and_answered_tokens_are_skipped() {
        let mut deadlines = Deadlines::default();
        let ms = Duration::from_millis;
        deadlines.add(1, ms(10));
        deadlines.add(2, ms(20));
        deadlines.add(3, ms(30));
        deadlines.add(2, ms(99));
        assert_eq!(deadlines.earliest(), Some(ms(10)));
        assert!(deadlines.take(1));
        assert!(!deadlines.take(1));
        assert_eq!(deadlines.earliest(), Some(ms(20)));
        assert_eq!(deadlines.due(ms(25)), vec![2]);
        assert!(deadlines.waits(3));
        assert_eq!(deadlines.due(ms(25)), Vec::<Token>::new());
        assert_eq!(deadlines.drain(), vec![3]);
        assert_eq!(deadlines.earliest(), None);
    }
}
