//! The `health` subcommand every service binary has: whether the service on this host
//! answers, with the exit code a container's or a supervisor's health check reads (a
//! `FROM scratch` image has no curl).

use std::process::ExitCode;
use std::time::Duration;

/// How long a health check waits for its answer.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Prints what the check found and turns it into the exit code: 0 healthy, 1 not.
pub fn report(service: &str, outcome: Result<String, String>) -> ExitCode {
    match outcome {
        Ok(found) => {
            println!("{service}: healthy: {found}");
            ExitCode::SUCCESS
        }
        Err(problem) => {
            eprintln!("{service}: unhealthy: {problem}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one check on a single-threaded runtime, bounded by [`TIMEOUT`] as a whole.
pub fn check<F>(check: F) -> Result<String, String>
where
    F: std::future::Future<Output = Result<String, String>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    runtime.block_on(async {
        tokio::time::timeout(TIMEOUT, check)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {TIMEOUT:?}")))
    })
}
