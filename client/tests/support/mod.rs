//! A whole system started by `run.sh` on spare ports, as a user starts it, stopped when
//! dropped.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use testkit::spare_ports;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub struct System {
    env: Vec<(String, String)>,
    pub state: tempfile::TempDir,
    /// Front end, catalog, replicas 1, 2, 3.
    pub ports: Vec<u16>,
}

impl System {
    /// Starts everything with `run.sh`; panics with its output when it fails.
    pub fn start() -> System {
        let ports = spare_ports(5);
        let state = tempfile::tempdir().unwrap();
        let mut system = System {
            env: vec![
                ("STATE_DIR".into(), state.path().display().to_string()),
                ("FRONTEND_PORT".into(), ports[0].to_string()),
                ("CATALOG_PORT".into(), ports[1].to_string()),
                (
                    "ORDER_PORTS".into(),
                    format!("{},{},{}", ports[2], ports[3], ports[4]),
                ),
                ("RUST_LOG".into(), "info".into()),
                // The debug build the test run already made, not a second optimised one.
                ("PROFILE".into(), "dev".into()),
            ],
            state,
            ports,
        };
        let started = system.script(&["run.sh"]).output().unwrap();
        assert!(
            started.status.success(),
            "run.sh failed: {}",
            show(&started)
        );
        // Later commands (audit, restarts) present the token run.sh generated.
        let token = system.token();
        system.env.push(("BAZAAR_CLUSTER_TOKEN".into(), token));
        system
    }

    /// The cluster token run.sh generated.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.token_file()).unwrap()
    }

    pub fn token_file(&self) -> PathBuf {
        self.state.path().join("cluster-token")
    }

    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.current_dir(root());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
    }

    pub fn script(&self, args: &[&str]) -> Command {
        let mut command = self.command("bash");
        command.args(args);
        command
    }

    pub fn binary(&self, name: &str) -> Command {
        self.command(root().join("target/debug").join(name).to_str().unwrap())
    }

    /// `order audit` of the three replicas' state and the catalog, over `--catalog`.
    pub fn audit(&self) -> Output {
        let dirs: Vec<String> = (1..=3)
            .flat_map(|id| {
                [
                    "--state-dir".to_string(),
                    self.state
                        .path()
                        .join(format!("order-{id}"))
                        .display()
                        .to_string(),
                ]
            })
            .collect();
        let catalog = format!("127.0.0.1:{}", self.ports[1]);
        self.binary("order")
            .arg("audit")
            .args(&dirs)
            .args(["--catalog", &catalog, "--seed", "data/catalog.csv"])
            .output()
            .unwrap()
    }
}

impl Drop for System {
    fn drop(&mut self) {
        let _ = self.script(&["run.sh", "stop"]).output();
    }
}

pub fn show(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
