//! Logging setup shared by every binary: `tracing` to stderr, filtered by `RUST_LOG`, as text
//! or, with `BAZAAR_LOG_FORMAT=json`, one JSON object per line for log collectors (with the
//! fields of every span the event is in, e.g. the request id of the trade it belongs to).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The environment variable that picks the log format: `text` (default) or `json`.
pub const FORMAT_ENV: &str = "BAZAAR_LOG_FORMAT";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (span fields as `span{field=value}:` prefixes).
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields`, `target`, `span`, `spans`.
    Json,
}

impl LogFormat {
    /// The format named by [`FORMAT_ENV`]'s value (`None`: unset); anything else is refused.
    pub fn from_env_value(value: Option<&str>) -> Result<Self, String> {
        match value.map(str::trim) {
            None | Some("") | Some("text") => Ok(LogFormat::Text),
            Some("json") => Ok(LogFormat::Json),
            Some(other) => Err(format!("{FORMAT_ENV} must be text or json, not {other:?}")),
        }
    }
}

/// Installs the global subscriber: `RUST_LOG` when set, else `info`, in the format
/// [`FORMAT_ENV`] names (text when it names none it knows, after saying so). Safe to call
/// twice.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let chosen = std::env::var(FORMAT_ENV).ok();
    let format = LogFormat::from_env_value(chosen.as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        Ok(LogFormat::Json) => {
            let _ = builder
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .try_init();
        }
        Ok(LogFormat::Text) | Err(_) => {
            let _ = builder
                .with_ansi(std::io::stderr().is_terminal())
                .try_init();
        }
    }
    if let Err(problem) = format {
        tracing::warn!("{problem}; writing text");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_is_text_unless_json_is_named() {
        assert_eq!(LogFormat::from_env_value(None), Ok(LogFormat::Text));
        assert_eq!(LogFormat::from_env_value(Some("text")), Ok(LogFormat::Text));
        assert_eq!(
            LogFormat::from_env_value(Some(" json ")),
            Ok(LogFormat::Json)
        );
        assert!(LogFormat::from_env_value(Some("yaml")).is_err());
    }
}
