//! The system as containers: the image built from this checkout (`image/build.sh`), the
//! stack of `compose.yaml` under a project name of its own, and the faults a container
//! engine can inject (kill, pause, disconnect from the network, restart). Everything runs
//! through the `docker` and `docker-compose` commands; [`Stack`] takes down what it made
//! when dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::bins::workspace_root;
use crate::{Error, Result};

/// Set on CI: without a Docker Engine the container tests fail instead of skipping.
pub const REQUIRE_ENV: &str = "BAZAAR_REQUIRE_DOCKER";

/// Why containers cannot be used here, if they cannot: no `docker` or `docker-compose`
/// command, or no engine answering.
pub fn unavailable() -> Option<String> {
    for (tool, args) in [
        ("docker", &["info", "--format", "{{.ServerVersion}}"][..]),
        ("docker-compose", &["version", "--short"][..]),
    ] {
        match Command::new(tool).args(args).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                return Some(format!(
                    "`{tool} {}` failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
            Err(e) => return Some(format!("no `{tool}` command: {e}")),
        }
    }
    None
}

/// Runs `program args`, returning its standard output; an error with its standard error
/// when it fails.
pub fn run(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result<String> {
    let output = output(program, args, envs)?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(Error::Setup(format!(
            "`{program} {}` failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// How long one docker command may take (building the image takes longer: [`BUILD_LIMIT`]).
pub const COMMAND_LIMIT: Duration = Duration::from_secs(300);
/// How long building the image may take.
pub const BUILD_LIMIT: Duration = Duration::from_secs(1_200);

fn output(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result<Output> {
    output_within(program, args, envs, COMMAND_LIMIT)
}

/// Runs `program args` in the workspace to completion, killed if it takes longer than
/// `limit`.
pub fn output_within(
    program: &str,
    args: &[&str],
    envs: &[(&str, &str)],
    limit: Duration,
) -> Result<Output> {
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(workspace_root());
    crate::process::output_within(command, limit)
}

/// An image built from this checkout, removed when dropped.
pub struct Image {
    /// Its tag.
    pub tag: String,
}

impl Image {
    /// Builds it with `image/build.sh` (`profile`: `dev` or `release`) under `tag`.
    pub fn build(tag: &str, profile: &str) -> Result<Image> {
        let out = output_within(
            "bash",
            &["image/build.sh"],
            &[("BAZAAR_IMAGE", tag), ("PROFILE", profile)],
            BUILD_LIMIT,
        )?;
        if !out.status.success() {
            return Err(Error::Setup(format!(
                "image/build.sh failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(Image {
            tag: tag.to_owned(),
        })
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = output("docker", &["rmi", &self.tag], &[]);
    }
}

/// A running `compose.yaml` stack.
pub struct Stack {
    /// The compose project name; containers are `<project>_<service>_1`.
    pub project: String,
    /// The image every service runs.
    pub image: String,
    /// The env file holding the cluster token.
    pub cluster_env: PathBuf,
    /// The front end's port on this host.
    pub frontend_port: u16,
    /// Each service's container id, as Compose made it (v1 and v2 name them differently).
    containers: BTreeMap<String, String>,
}

impl Stack {
    /// Brings the stack up (`docker-compose up -d`) under `project` with a fresh token and
    /// waits until every service's health check passes.
    pub fn up(project: &str, image: &str, dir: &Path, frontend_port: u16) -> Result<Stack> {
        let cluster_env = dir.join("cluster.env");
        let token: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        std::fs::write(&cluster_env, format!("BAZAAR_CLUSTER_TOKEN={token}\n"))
            .map_err(|e| Error::Setup(format!("cannot write the token file: {e}")))?;
        let mut stack = Stack {
            project: project.to_owned(),
            image: image.to_owned(),
            cluster_env,
            frontend_port,
            containers: BTreeMap::new(),
        };
        stack.compose(&["up", "-d"])?;
        for service in SERVICES {
            let id = stack.compose(&["ps", "-q", service])?.trim().to_owned();
            if id.is_empty() {
                return Err(Error::Setup(format!(
                    "compose made no container for {service}"
                )));
            }
            stack.containers.insert(service.to_owned(), id);
        }
        for service in SERVICES {
            stack.wait_healthy(service, Duration::from_secs(90))?;
        }
        Ok(stack)
    }

    /// Runs `docker-compose` on this stack.
    pub fn compose(&self, args: &[&str]) -> Result<String> {
        let file = workspace_root().join("compose.yaml");
        let file = file.to_string_lossy();
        let port = self.frontend_port.to_string();
        let env = self.cluster_env.to_string_lossy();
        let mut all = vec!["-f", &file, "-p", &self.project];
        all.extend_from_slice(args);
        run(
            "docker-compose",
            &all,
            &[
                ("BAZAAR_IMAGE", &self.image),
                ("BAZAAR_CLUSTER_ENV", &env),
                ("FRONTEND_PORT", &port),
            ],
        )
    }

    /// The container of `service`.
    pub fn container(&self, service: &str) -> String {
        self.containers
            .get(service)
            .cloned()
            .unwrap_or_else(|| format!("(no container for {service})"))
    }

    /// The stack's network.
    pub fn network(&self) -> String {
        format!("{}_default", self.project)
    }

    /// What the engine's health check says of `service` (`healthy`, `starting`, ...).
    pub fn health(&self, service: &str) -> String {
        run(
            "docker",
            &[
                "inspect",
                "--format",
                "{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}",
                &self.container(service),
            ],
            &[],
        )
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| e.to_string())
    }

    /// Waits until `service` runs and its health check passes, for at most `limit`.
    pub fn wait_healthy(&self, service: &str, limit: Duration) -> Result<()> {
        wait_for(&format!("{service} to be healthy"), limit, || {
            (self.health(service) == "running/healthy").then_some(())
        })
        .map_err(|e| {
            let logs = self.logs(service);
            Error::Setup(format!("{e}; its log ends:\n{logs}"))
        })
    }

    /// The last lines of `service`'s log.
    pub fn logs(&self, service: &str) -> String {
        output(
            "docker",
            &["logs", "--tail", "30", &self.container(service)],
            &[],
        )
        .map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .unwrap_or_default()
    }

    /// `docker <verb> <service's container>` (kill, pause, unpause, start, restart).
    pub fn signal(&self, verb: &str, service: &str) -> Result<()> {
        run("docker", &[verb, &self.container(service)], &[]).map(|_| ())
    }

    /// Cuts `service` off the stack's network.
    pub fn disconnect(&self, service: &str) -> Result<()> {
        run(
            "docker",
            &[
                "network",
                "disconnect",
                &self.network(),
                &self.container(service),
            ],
            &[],
        )
        .map(|_| ())
    }

    /// Puts `service` back on the stack's network under its service name.
    pub fn connect(&self, service: &str) -> Result<()> {
        run(
            "docker",
            &[
                "network",
                "connect",
                "--alias",
                service,
                &self.network(),
                &self.container(service),
            ],
            &[],
        )
        .map(|_| ())
    }

    /// `docker run --rm` of `args` in the image, on the stack's network, with the token.
    pub fn run_in_image(&self, name: &str, args: &[&str]) -> Result<Output> {
        let network = self.network();
        let env = self.cluster_env.to_string_lossy();
        let mut all = vec![
            "run",
            "--rm",
            "--name",
            name,
            "--network",
            &network,
            "--env-file",
            &env,
            &self.image,
        ];
        all.extend_from_slice(args);
        output("docker", &all, &[])
    }

    /// `order audit` over the network, from a container on the stack's network.
    pub fn audit(&self) -> Result<(bool, String)> {
        let name = format!("{}-audit", self.project);
        let out = self.run_in_image(
            &name,
            &[
                "order",
                "audit",
                "--peers",
                PEERS,
                "--catalog",
                "catalog:7000",
            ],
        )?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = output(
            "docker",
            &["rm", "-f", &format!("{}-client", self.project)],
            &[],
        );
        let _ = output(
            "docker",
            &["rm", "-f", &format!("{}-audit", self.project)],
            &[],
        );
        if let Err(e) = self.compose(&["down", "--volumes", "--remove-orphans", "--timeout", "5"]) {
            eprintln!("cannot take down {}: {e}", self.project);
        }
    }
}

/// The stack's services.
pub const SERVICES: [&str; 5] = ["catalog", "order1", "order2", "order3", "frontend"];

/// The replicas as the services name each other.
pub const PEERS: &str = "1=order1:7001,2=order2:7002,3=order3:7003";

/// Polls `probe` every 250 ms until it returns `Some`, for at most `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: what.to_owned(),
                limit,
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `compose.yaml` deployed as a swarm stack on this engine (`docker stack deploy`), on a
/// single-node swarm made for it when the engine is not in one; dropped, it removes the
/// stack, its volumes, and the swarm if it made it.
pub struct SwarmStack {
    /// The stack's name; its services are `<name>_<service>`.
    pub name: String,
    /// The front end's published port on this host.
    pub frontend_port: u16,
    made_swarm: bool,
    /// Whether `swarm init` made the `docker_gwbridge` network (removed after leaving).
    made_gwbridge: bool,
}

/// Whether the engine has a network of that name.
fn has_network(name: &str) -> bool {
    run(
        "docker",
        &["network", "ls", "-q", "--filter", &format!("name=^{name}$")],
        &[],
    )
    .is_ok_and(|ids| !ids.trim().is_empty())
}

impl SwarmStack {
    /// Deploys the stack of `image` with the token in `cluster_env`. `Ok(None)` with the
    /// reason when this engine cannot run a swarm (it is a worker of another one, or swarm
    /// mode is refused).
    pub fn deploy(
        name: &str,
        image: &str,
        cluster_env: &Path,
        frontend_port: u16,
    ) -> Result<std::result::Result<SwarmStack, String>> {
        let state = run(
            "docker",
            &[
                "info",
                "--format",
                "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
            ],
            &[],
        )?;
        let had_gwbridge = has_network("docker_gwbridge");
        let made_swarm = match state.split_whitespace().collect::<Vec<_>>()[..] {
            ["inactive", ..] => {
                if let Err(e) = run(
                    "docker",
                    &["swarm", "init", "--advertise-addr", "127.0.0.1"],
                    &[],
                ) {
                    return Ok(Err(format!("the engine refuses swarm mode: {e}")));
                }
                true
            }
            ["active", "true"] => false,
            _ => {
                return Ok(Err(format!(
                    "the engine is in a swarm it does not manage: {}",
                    state.trim()
                )))
            }
        };
        let stack = SwarmStack {
            name: name.to_owned(),
            frontend_port,
            made_swarm,
            made_gwbridge: made_swarm && !had_gwbridge,
        };
        let file = workspace_root().join("compose.yaml");
        let port = frontend_port.to_string();
        run(
            "docker",
            &["stack", "deploy", "-c", &file.to_string_lossy(), name],
            &[
                ("BAZAAR_IMAGE", image),
                ("BAZAAR_CLUSTER_ENV", &cluster_env.to_string_lossy()),
                ("FRONTEND_PORT", &port),
            ],
        )?;
        Ok(Ok(stack))
    }

    /// The running container of `service`'s task, if there is one.
    pub fn container(&self, service: &str) -> Option<String> {
        let filter = format!(
            "label=com.docker.swarm.service.name={}_{service}",
            self.name
        );
        let ids = run("docker", &["ps", "-q", "--filter", &filter], &[]).ok()?;
        ids.lines().next().map(str::to_owned)
    }

    /// `docker exec` of `args` in `service`'s task; its exit status and output.
    pub fn exec(&self, service: &str, args: &[&str]) -> Result<(bool, String)> {
        let container = self
            .container(service)
            .ok_or_else(|| Error::Setup(format!("no running task of {service}")))?;
        let mut all = vec!["exec", container.as_str()];
        all.extend_from_slice(args);
        let out = output("docker", &all, &[])?;
        Ok((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }
}

impl Drop for SwarmStack {
    fn drop(&mut self) {
        let _ = output("docker", &["stack", "rm", &self.name], &[]);
        let label = format!("label=com.docker.stack.namespace={}", self.name);
        // Tasks stop, then their volumes and network can go.
        let _ = wait_for("the stack's tasks gone", Duration::from_secs(60), || {
            run("docker", &["ps", "-aq", "--filter", &label], &[])
                .ok()
                .filter(|ids| ids.trim().is_empty())
        });
        if let Ok(volumes) = run("docker", &["volume", "ls", "-q", "--filter", &label], &[]) {
            for volume in volumes.lines() {
                let _ = output("docker", &["volume", "rm", volume], &[]);
            }
        }
        if self.made_swarm {
            let _ = wait_for("the stack's network gone", Duration::from_secs(30), || {
                run("docker", &["network", "ls", "-q", "--filter", &label], &[])
                    .ok()
                    .filter(|ids| ids.trim().is_empty())
            });
            let _ = output("docker", &["swarm", "leave", "--force"], &[]);
            if self.made_gwbridge {
                let _ = output("docker", &["network", "rm", "docker_gwbridge"], &[]);
            }
        }
    }
}
