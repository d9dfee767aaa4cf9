//! A readable account of a run, recorded only when asked (a replay): every message delivered,
//! every fault, and the engines' own log lines, each with its simulated time and process.
//! A normal run records nothing and formats nothing.

use std::cell::{Cell, RefCell};
use std::io;
use std::sync::Once;
use std::time::Duration;

use common::wire::OrderRequest;

use crate::node::{Request, Returned};

thread_local! {
    /// The engines' log lines since the last drain.
    static LOGGED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Whether this thread is replaying a seed (and so keeps the engines' log lines).
    static RECORDING: Cell<bool> = const { Cell::new(false) };
}

/// Makes the engines' `tracing` output reach the replays: once per process, before any seed
/// runs, a global subscriber that keeps the lines of the threads replaying a seed and drops
/// the rest. (A subscriber scoped to one thread is not enough, nor one set while other
/// threads run seeds: a log call's interest, once settled as "never", holds for every
/// thread.)
pub fn listen_to_engines() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::Layer;
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(Sink)
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .with_filter(
                // Dynamic: whether a line is kept depends on the thread, so no log call's
                // interest may be cached.
                tracing_subscriber::filter::dynamic_filter_fn(|metadata, _| {
                    *metadata.level() <= tracing::Level::INFO && RECORDING.with(Cell::get)
                })
                .with_max_level_hint(tracing::Level::INFO),
            );
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer));
    });
}

/// Runs `f` with this thread's engine log lines kept.
pub fn recording<T>(f: impl FnOnce() -> T) -> T {
    RECORDING.with(|r| r.set(true));
    LOGGED.with(|l| l.borrow_mut().clear());
    let result = f();
    RECORDING.with(|r| r.set(false));
    result
}

/// The account of a run.
#[derive(Debug, Default)]
pub struct Trace {
    on: bool,
    lines: Vec<String>,
}

impl Trace {
    /// Records nothing.
    pub fn off() -> Self {
        Trace::default()
    }

    /// Records everything.
    pub fn recording() -> Self {
        Trace {
            on: true,
            lines: Vec::new(),
        }
    }

    /// Whether it records.
    pub fn on(&self) -> bool {
        self.on
    }

    /// Adds a line at simulated time `at`.
    pub fn line(&mut self, at: Duration, text: String) {
        self.lines
            .push(format!("{:>10.6} {text}", at.as_secs_f64()));
    }

    /// Adds the engines' log lines written since the last call, as `process`'s.
    pub fn engine_lines(&mut self, at: Duration, process: &str) {
        if !self.on {
            return;
        }
        let logged = LOGGED.with(|l| std::mem::take(&mut *l.borrow_mut()));
        for line in String::from_utf8_lossy(&logged).lines() {
            self.line(at, format!("{process}: {}", line.trim()));
        }
    }

    /// The lines recorded.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }
}

/// Where the engines' `tracing` output goes during a replay.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sink;

impl io::Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        LOGGED.with(|l| l.borrow_mut().extend_from_slice(bytes));
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Sink {
    type Writer = Sink;
    fn make_writer(&'a self) -> Self::Writer {
        Sink
    }
}

fn brief(text: String) -> String {
    const MAX: usize = 300;
    if text.len() <= MAX {
        return text;
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A request, briefly.
pub fn request(request: &Request) -> String {
    match request {
        Request::Order(OrderRequest::Replicate {
            epoch,
            leader_id,
            prev,
            entries,
            cuts,
        }) => format!(
            "Replicate epoch {epoch} from {leader_id} after {} with {} entries{} (cuts {cuts})",
            prev.map_or("the start".to_owned(), |p| p.to_string()),
            entries.len(),
            match (entries.first(), entries.last()) {
                (Some(first), Some(last)) => format!(" {}..{}", first.position(), last.position()),
                _ => String::new(),
            }
        ),
        Request::Order(other) => brief(format!("{other:?}")),
        Request::Catalog(other) => brief(format!("{other:?}")),
        Request::Subscribe => "Subscribe".into(),
        Request::Front(order) => brief(format!("client {order:?}")),
    }
}

/// An answer, briefly.
pub fn returned(answer: &Returned) -> String {
    brief(format!("{answer:?}"))
}
