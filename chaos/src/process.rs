//! One service process of a cluster: started from its binary with fixed flags, stderr
//! appended to a file, and faulted with signals (SIGKILL, SIGSTOP, SIGCONT). A restart runs
//! the same command again, so the process keeps its address and state directory.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{Error, Result};

/// How often a terminated process is checked for having exited.
const EXIT_POLL: Duration = Duration::from_millis(5);

/// Runs `command` to completion with its output captured, killed if it takes longer than
/// `limit`.
pub fn output_within(command: Command, limit: Duration) -> Result<Output> {
    fed_output_within(command, None, limit)
}

/// [`output_within`], with `input` written to the command's stdin (then closed).
pub fn fed_output_within(
    mut command: Command,
    input: Option<Vec<u8>>,
    limit: Duration,
) -> Result<Output> {
    let what = format!("{command:?}");
    let mut child = command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Process {
            name: what.clone(),
            message: format!("cannot start: {e}"),
        })?;
    // Drained while it runs, so that a full pipe never blocks it.
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    // Fed from a thread too, so that a command that writes before it reads never blocks.
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Timeout { what, limit });
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// How a process is started: the same every time.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The binary.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Environment added to the test's own.
    pub env: Vec<(OsString, OsString)>,
    /// Network namespace to run it in (through `ip netns exec`, which execs the binary, so
    /// the pid is the binary's own).
    pub netns: Option<String>,
    /// Where its stderr goes (appended across restarts).
    pub stderr: PathBuf,
}

/// One process and its state.
#[derive(Debug)]
pub struct Process {
    name: String,
    launch: Launch,
    child: Option<Child>,
    frozen: bool,
    starts: u32,
}

impl Process {
    /// A process named `name`, not started yet.
    pub fn new(name: impl Into<String>, launch: Launch) -> Self {
        Process {
            name: name.into(),
            launch,
            child: None,
            frozen: false,
            starts: 0,
        }
    }

    /// Its name in the cluster.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file its stderr is appended to.
    pub fn stderr_path(&self) -> &PathBuf {
        &self.launch.stderr
    }

    fn error(&self, message: impl Into<String>) -> Error {
        Error::Process {
            name: self.name.clone(),
            message: message.into(),
        }
    }

    /// Starts it (again); an error if it is running.
    pub fn start(&mut self) -> Result<()> {
        if self.is_running() {
            return Err(self.error("already running"));
        }
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.launch.stderr)
            .map_err(|e| self.error(format!("stderr file: {e}")))?;
        let mut command = match &self.launch.netns {
            Some(ns) => {
                let mut command = Command::new("ip");
                command
                    .args(["netns", "exec", ns])
                    .arg(&self.launch.program);
                command
            }
            None => Command::new(&self.launch.program),
        };
        command.args(&self.launch.args);
        for (key, value) in &self.launch.env {
            command.env(key, value);
        }
        writeln!(
            log,
            "=== chaos: start #{} of {}: {:?} ===",
            self.starts, self.name, command
        )?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| self.error(format!("spawn {:?}: {e}", self.launch.program)))?;
        self.child = Some(child);
        self.frozen = false;
        Ok(())
    }

    /// Whether it is running (a frozen process is running).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_)) | Err(_)) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// Whether it is stopped with SIGSTOP.
    pub fn is_frozen(&self) -> bool {
        self.frozen && self.child.is_some()
    }

    /// Its pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, signal: Signal) -> Result<()> {
        let child = self
            .child
            .as_ref()
            .ok_or_else(|| self.error(format!("not running; cannot send {signal}")))?;
        let pid = i32::try_from(child.id()).map_err(|e| self.error(e.to_string()))?;
        kill(Pid::from_raw(pid), signal).map_err(|e| self.error(format!("{signal}: {e}")))
    }

    /// SIGKILL, then reaps it. Nothing happens if it is not running.
    pub fn kill(&mut self) -> Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        self.signal(Signal::SIGKILL)?;
        if let Some(mut child) = self.child.take() {
            // SIGKILL ends even a stopped process, so this wait is short.
            child.wait().map_err(|e| self.error(format!("wait: {e}")))?;
        }
        self.frozen = false;
        Ok(())
    }

    /// SIGTERM (after SIGCONT if frozen), then waits up to `limit` for it to exit, as a
    /// service manager's stop does: how long it took, or an error after a SIGKILL when it
    /// did not end in time. Nothing happens if it is not running.
    pub async fn terminate(&mut self, limit: Duration) -> Result<Duration> {
        if !self.is_running() {
            return Ok(Duration::ZERO);
        }
        if self.frozen {
            self.thaw()?;
        }
        self.signal(Signal::SIGTERM)?;
        let began = Instant::now();
        while self.is_running() {
            if began.elapsed() >= limit {
                self.kill()?;
                return Err(self.error(format!("still running {limit:?} after SIGTERM; killed")));
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
        Ok(began.elapsed())
    }

    /// SIGSTOP: it keeps its sockets and state but answers nothing.
    pub fn freeze(&mut self) -> Result<()> {
        self.signal(Signal::SIGSTOP)?;
        self.frozen = true;
        Ok(())
    }

    /// SIGCONT after [`Process::freeze`].
    pub fn thaw(&mut self) -> Result<()> {
        self.signal(Signal::SIGCONT)?;
        self.frozen = false;
        Ok(())
    }

    /// Kills it if it runs, then starts it with the same command.
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.start()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
