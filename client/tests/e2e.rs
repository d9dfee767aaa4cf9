//! End to end, as a user runs it: `run.sh` starts the whole system on spare ports, the client
//! drives it with several sessions while `simulate_crashes.sh --random` kills and restarts
//! replicas (the leader among them) with SIGKILL. No client sees an error other than a
//! legitimate 409, every order verifies, and once the replicas are back the audit finds
//! their logs identical and the catalog consistent with them.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::process::Child;
use std::time::{Duration, Instant};

use support::{show, System};

#[test]
fn the_client_sees_no_error_while_replicas_crash_and_the_audit_is_clean() {
    let system = System::start();
    let ports = &system.ports;

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

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let audit = system.audit();
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
