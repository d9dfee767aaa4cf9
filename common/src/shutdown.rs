//! Graceful shutdown: one token that SIGINT or SIGTERM cancels, which every server loop and
//! connection watches.

use tokio_util::sync::CancellationToken;
use tracing::info;

/// A token cancelled by the first SIGINT or SIGTERM. Must be called inside a Tokio runtime.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let interrupt = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut terminate) => {
                    tokio::select! {
                        _ = interrupt => {}
                        _ = terminate.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = interrupt.await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = interrupt.await;
        info!("shutdown requested; finishing requests in flight");
        cancel.cancel();
    });
    token
}
