//! The one error type of `common`: what can go wrong talking to a peer, shaped so that a caller
//! can act on it (retry elsewhere, give up, report the peer's own complaint).

use std::time::Duration;

use crate::wire::RemoteError;

/// What can go wrong on a connection or an RPC call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer could not be reached, or the connection broke before it answered. The request
    /// may or may not have been applied; retry it with the same request id.
    #[error("peer unavailable: {0}")]
    Unavailable(String),
    /// No answer arrived before the call's deadline. Like `Unavailable`, the outcome is unknown.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// The peer refused the connection's hello (version or cluster token mismatch).
    #[error("refused by peer: {0}")]
    Refused(String),
    /// The peer received the request and answered with an error of its own.
    #[error("peer error: {0}")]
    Remote(RemoteError),
    /// The peer sent something that is not our protocol; the connection was closed.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A local I/O failure.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// True when the request may not have reached the peer or its answer was lost, so that a
    /// retry with the same request id is the right move.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable(_) | Error::TimedOut(_) | Error::Io(_)
        ) || matches!(self, Error::Remote(e) if e.kind == crate::wire::RemoteErrorKind::Unavailable)
    }
}
