//! End to end, as a user runs it: `run.sh` starts the whole system on spare ports, the client
//! drives it with several sessions while `simulate_crashes.sh --random` kills and restarts
//! replicas (the leader among them) with SIGKILL. No client sees an error other than a
//! legitimate 409, every order verifies, and once the replicas are back the audit finds
//! their logs identical and the catalog consistent with them.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use testkit::spare_ports;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct System {
    env: Vec<(String, String)>,
    state: tempfile::TempDir,
}

impl System {
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.current_dir(root());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
    }

    fn script(&self, args: &[&str]) -> Command {
        let mut command = self.command("bash");
        command.args(args);
        command
    }

    fn binary(&self, name: &str) -> Command {
        self.command(root().join("target/release").join(name).to_str().unwrap())
    }
}

impl Drop for System {
    fn drop(&mut self) {
        let _ = self.script(&["run.sh", "stop"]).output();
    }
}

fn show(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_client_sees_no_error_while_replicas_crash_and_the_audit_is_clean() {
    let ports = spare_ports(5);
    let state = tempfile::tempdir().unwrap();
    let system = System {
        env: vec![
            ("STATE_DIR".into(), state.path().display().to_string()),
            ("FRONTEND_PORT".into(), ports[0].to_string()),
            ("CATALOG_PORT".into(), ports[1].to_string()),
            (
                "ORDER_PORTS".into(),
                format!("{},{},{}", ports[2], ports[3], ports[4]),
            ),
            ("RUST_LOG".into(), "info".into()),
        ],
        state,
    };
    let started = system.script(&["run.sh"]).output().unwrap();
    assert!(
        started.status.success(),
        "run.sh failed: {}",
        show(&started)
    );

    let mut crashes: Child = system
        .script(&[
            "simulate_crashes.sh",
            "--random",
            "--count",
            "4",
            "--interval",
            "1",
            "--restart-after",
            "1",
        ])
        .spawn()
        .unwrap();
    // Keep the client going for as long as the crashes go on (bounded in runs).
    let mut runs = 0;
    loop {
        runs += 1;
        let port = ports[0].to_string();
        let seed = runs.to_string();
        let run = system
            .binary("client")
            .args([
                "run",
                "--port",
                &port,
                "--sessions",
                "4",
                "--requests",
                "300",
            ])
            .args(["--p", "0.6", "--seed", &seed])
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "client run {runs} failed:\n{}",
            show(&run)
        );
        if crashes.try_wait().unwrap().is_some() || runs >= 60 {
            break;
        }
    }
    let crashed = crashes.wait().unwrap();
    assert!(crashed.success(), "simulate_crashes.sh failed");

    let dirs: Vec<String> = (1..=3)
        .flat_map(|id| {
            [
                "--state-dir".to_string(),
                system
                    .state
                    .path()
                    .join(format!("order-{id}"))
                    .display()
                    .to_string(),
            ]
        })
        .collect();
    let catalog = format!("127.0.0.1:{}", ports[1]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let audit = system
            .binary("order")
            .arg("audit")
            .args(&dirs)
            .args(["--catalog", &catalog, "--seed", "data/catalog.csv"])
            .output()
            .unwrap();
        if audit.status.success() {
            assert!(String::from_utf8_lossy(&audit.stdout).contains("audit: clean"));
            break;
        }
        // Replicas restarted last may still be catching up.
        assert!(
            Instant::now() < deadline,
            "audit not clean:\n{}",
            show(&audit)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
