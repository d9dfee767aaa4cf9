//! Building the Tokio runtime from a `--worker-threads` flag: 1 means a single-threaded
//! runtime, which on a small machine shared with clients avoids cross-thread wake-ups and
//! measured faster; more spreads connections over that many threads.

use std::future::Future;

/// Runs `main` to completion on a runtime with `worker_threads` threads (1 = current-thread).
pub fn block_on<F: Future>(worker_threads: usize, main: F) -> std::io::Result<F::Output> {
    let runtime = if worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads)
            .enable_all()
            .build()?
    };
    Ok(runtime.block_on(main))
}
