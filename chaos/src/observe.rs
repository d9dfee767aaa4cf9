//! What the observability tests look through: a scrape of a metrics port (the cluster token
//! as a bearer token), the official OpenMetrics parser (the Python client's, run on each
//! exposition), and a headless Chromium that renders the front end's cluster page as a
//! person's browser would (scripts run, `/status.json` fetched).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::http::HttpClient;
use crate::process::{fed_output_within, output_within};
use crate::{Error, Result};

/// Set on CI: without Chromium or the Python client the observability tests fail instead of
/// skipping.
pub const REQUIRE_ENV: &str = "BAZAAR_REQUIRE_BROWSER";

/// How long one browser run may take.
const BROWSER_LIMIT: Duration = Duration::from_secs(45);

/// Scrapes `GET /metrics` at `addr`, with `token` as a bearer token when given: the status
/// and the body.
pub async fn scrape(addr: &str, token: Option<&str>) -> Result<(u16, String)> {
    let mut client = HttpClient::new(addr);
    let bearer = token.map(|t| format!("Bearer {t}"));
    // As Prometheus asks: OpenMetrics, the format the strict parser reads.
    let mut headers = vec![("Accept", "application/openmetrics-text; version=1.0.0")];
    if let Some(bearer) = bearer.as_deref() {
        headers.push(("Authorization", bearer));
    }
    let answer = client
        .send("GET", "/metrics", &headers, None, Duration::from_secs(5))
        .await
        .map_err(|e| Error::Task(format!("scrape of {addr}: {e}")))?;
    Ok((answer.status, answer.body))
}

/// One metric family as the parser read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    /// Its name (without `_total` for counters, as OpenMetrics names families).
    pub name: String,
    /// `counter`, `gauge`, `histogram`, ...
    pub kind: String,
    /// How many samples it has.
    pub samples: usize,
}

/// The checker script, next to this crate.
fn checker() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_openmetrics.py")
}

/// Why the OpenMetrics parser cannot run here, if it cannot.
pub fn parser_unavailable() -> Option<String> {
    let mut command = Command::new("python3");
    command.args(["-c", "import prometheus_client.openmetrics.parser"]);
    match output_within(command, Duration::from_secs(20)) {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "the Python client prometheus_client is not installed (pip install prometheus_client): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("python3: {e}")),
    }
}

/// Parses `exposition` with the official parser: its families, or the parser's complaint.
pub fn parse(exposition: &str) -> Result<std::result::Result<Vec<Family>, String>> {
    let mut command = Command::new("python3");
    command.arg(checker());
    let out = fed_output_within(
        command,
        Some(exposition.as_bytes().to_vec()),
        Duration::from_secs(30),
    )?;
    if !out.status.success() {
        return Ok(Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    let families = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut parts = line.split(' ');
            Some(Family {
                name: parts.next()?.to_owned(),
                kind: parts.next()?.to_owned(),
                samples: parts.next()?.parse().ok()?,
            })
        })
        .collect();
    Ok(Ok(families))
}

/// Headless Chromium.
#[derive(Debug, Clone)]
pub struct Browser {
    program: PathBuf,
    /// A profile of its own, so that runs never share state or a lock.
    profile: PathBuf,
}

impl Browser {
    /// Debian's `chromium` (or `chromium-browser`), if installed, with a profile under
    /// `scratch`.
    pub fn find(scratch: &Path) -> Option<Browser> {
        ["chromium", "chromium-browser", "google-chrome"]
            .iter()
            .find_map(|name| {
                let mut command = Command::new(name);
                command.arg("--version");
                match output_within(command, Duration::from_secs(20)) {
                    Ok(out) if out.status.success() => Some(PathBuf::from(name)),
                    _ => None,
                }
            })
            .map(|program| Browser {
                program,
                profile: scratch.join("chromium-profile"),
            })
    }

    fn command(&self, window: (u32, u32)) -> Command {
        let mut command = Command::new(&self.program);
        command.args([
            "--headless",
            // Root in a container has no user namespace sandbox to give it.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            // Long enough for the page's first fetch of /status.json and its render.
            "--virtual-time-budget=3000",
        ]);
        command.arg(format!("--user-data-dir={}", self.profile.display()));
        command.arg(format!("--window-size={},{}", window.0, window.1));
        command
    }

    /// The page's DOM after its scripts ran.
    pub fn dump_dom(&self, url: &str) -> Result<String> {
        let mut command = self.command((1280, 900));
        command.arg("--dump-dom").arg(url);
        let out = output_within(command, BROWSER_LIMIT)?;
        if !out.status.success() {
            return Err(Error::Task(format!(
                "chromium --dump-dom {url} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A PNG screenshot of the page at `path`.
    pub fn screenshot(&self, url: &str, path: &Path) -> Result<()> {
        let mut command = self.command((1280, 820));
        command
            .arg(format!("--screenshot={}", path.display()))
            .arg(url);
        let out = output_within(command, BROWSER_LIMIT)?;
        if !out.status.success() || !path.exists() {
            return Err(Error::Task(format!(
                "chromium --screenshot {url} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }
}

/// The text of the element with `id` in a dumped DOM (`<tag id="ID" ...>TEXT<`), if any.
pub fn element_text<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let marker = format!("id=\"{id}\"");
    let at = dom.find(&marker)?;
    let rest = &dom[at..];
    let start = rest.find('>')? + 1;
    let end = rest[start..].find('<')?;
    Some(&rest[start..start + end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_elements_text_is_found_by_id() {
        let dom = r#"<div class="value" id="leader">order-3</div><span id="epoch">7</span>"#;
        assert_eq!(element_text(dom, "leader"), Some("order-3"));
        assert_eq!(element_text(dom, "epoch"), Some("7"));
        assert_eq!(element_text(dom, "missing"), None);
    }
}
