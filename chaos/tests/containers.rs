//! The system as containers (`compose.yaml` on the image from `image/build.sh`), under the
//! faults a container engine injects while the `client` runs in a container beside it:
//! `docker kill` of the leader, `docker pause` of a follower, a replica cut off the network,
//! a restart of the front end. Every client run must end clean (every order verified, no
//! unexpected error) and the audit over the network must find one history and conservation.
//!
//! Needs a Docker Engine with `docker-compose`; without one it prints `SKIPPED` and passes,
//! unless `BAZAAR_REQUIRE_DOCKER=1` (CI), where it fails.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chaos::docker::{self, Image, Stack, SwarmStack};
use chaos::http::HttpClient;

/// Client runs, one after another, while the faults go on; each is short so that one is
/// always under way. Bounded in count and in time.
const MOST_RUNS: usize = 500;
const RUNS_LIMIT: Duration = Duration::from_secs(600);

/// The client loop's thread: told to stop and joined when dropped, so that a failing test
/// stops starting clients before the stack is taken down.
struct ClientLoop {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ClientLoop {
    fn finish(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ClientLoop {
    fn drop(&mut self) {
        self.finish();
    }
}

/// What one `client run` in a container reported.
struct ClientRun {
    started: Instant,
    ended: Instant,
    clean: bool,
    output: String,
}

/// The front end's view of the leadership record: leader and in-sync set.
fn leadership(port: u16) -> Option<(u64, Vec<u64>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut http = HttpClient::new(format!("127.0.0.1:{port}"));
        let answer = http.get("/health", Duration::from_secs(2)).await.ok()?;
        let json = answer.json()?;
        let data = json.get("data")?;
        let leader = data.get("leader")?.as_u64()?;
        let in_sync = data
            .get("in_sync")?
            .as_array()?
            .iter()
            .filter_map(|v| v.as_u64())
            .collect();
        Some((leader, in_sync))
    })
}

#[test]
fn the_stack_survives_container_faults_under_the_client() {
    if let Some(why) = docker::unavailable() {
        assert!(
            std::env::var_os(docker::REQUIRE_ENV).is_none(),
            "{} is set but containers cannot run: {why}",
            docker::REQUIRE_ENV
        );
        eprintln!("SKIPPED: no container engine: {why}");
        return;
    }
    let unique = format!(
        "bazaar{}x{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let image = Image::build(&format!("stock-bazaar:{unique}"), "dev").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = testkit::spare_ports(1)[0];
    let stack = Stack::up(&unique, &image.tag, dir.path(), port).unwrap();
    let (first_leader, _) =
        docker::wait_for("a leader", Duration::from_secs(30), || leadership(port)).unwrap();

    // The client, in a container on the stack's network, run after run until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let running = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(Mutex::new(Vec::<ClientRun>::new()));
    let mut client = {
        let (stack_image, network, env) = (
            stack.image.clone(),
            stack.network(),
            stack.cluster_env.to_string_lossy().into_owned(),
        );
        let name = format!("{}-client", stack.project);
        let (stop_thread, running, runs) = (stop.clone(), running.clone(), runs.clone());
        let begun = Instant::now();
        let thread = std::thread::spawn(move || {
            for round in 0..MOST_RUNS {
                if stop_thread.load(Ordering::SeqCst) || begun.elapsed() > RUNS_LIMIT {
                    break;
                }
                let seed = (round + 1).to_string();
                let started = Instant::now();
                running.store(true, Ordering::SeqCst);
                let args = [
                    "run",
                    "--rm",
                    "--name",
                    &name,
                    "--network",
                    &network,
                    "--env-file",
                    &env,
                    &stack_image,
                    "client",
                    "run",
                    "--host",
                    "frontend",
                    "--sessions",
                    "4",
                    "--requests",
                    "150",
                    "--seed",
                    &seed,
                ];
                let out = docker::output_within("docker", &args, &[], Duration::from_secs(180));
                running.store(false, Ordering::SeqCst);
                let (clean, output) = match out {
                    Ok(out) => (
                        out.status.success(),
                        format!(
                            "{}{}",
                            String::from_utf8_lossy(&out.stdout),
                            String::from_utf8_lossy(&out.stderr)
                        ),
                    ),
                    Err(e) => {
                        // A client that hangs is not clean.
                        let _ = docker::run("docker", &["rm", "-f", &name], &[]);
                        (false, e.to_string())
                    }
                };
                runs.lock().unwrap().push(ClientRun {
                    started,
                    ended: Instant::now(),
                    clean,
                    output,
                });
            }
        });
        ClientLoop {
            stop: stop.clone(),
            thread: Some(thread),
        }
    };
    // Each fault is injected while a client run is under way.
    let mut faults: Vec<(Instant, String)> = Vec::new();
    let mut inject = |what: String, fault: &dyn Fn() -> chaos::Result<()>| {
        docker::wait_for("a client run under way", Duration::from_secs(60), || {
            running.load(Ordering::SeqCst).then_some(())
        })
        .unwrap();
        faults.push((Instant::now(), what));
        fault().unwrap();
    };
    let leader_service = format!("order{first_leader}");
    let followers: Vec<u64> = (1..=3).filter(|&id| id != first_leader).collect();

    // 1. The leader is killed; a new one takes over; the old one comes back and catches up.
    inject(format!("docker kill {leader_service}"), &|| {
        stack.signal("kill", &leader_service)
    });
    let (second_leader, _) = docker::wait_for("a new leader", Duration::from_secs(30), || {
        leadership(port).filter(|(leader, _)| *leader != first_leader)
    })
    .unwrap();
    stack.signal("start", &leader_service).unwrap();
    stack
        .wait_healthy(&leader_service, Duration::from_secs(60))
        .unwrap();

    // 2. A follower of the new leader is frozen until the leader goes on without it.
    let frozen = (1..=3)
        .find(|&id| id != second_leader && id != first_leader)
        .unwrap_or(followers[0]);
    let frozen_service = format!("order{frozen}");
    inject(format!("docker pause {frozen_service}"), &|| {
        stack.signal("pause", &frozen_service)
    });
    docker::wait_for(
        "the frozen follower out of sync",
        Duration::from_secs(30),
        || leadership(port).filter(|(_, in_sync)| !in_sync.contains(&frozen)),
    )
    .unwrap();
    inject(format!("docker unpause {frozen_service}"), &|| {
        stack.signal("unpause", &frozen_service)
    });
    docker::wait_for(
        "the thawed follower back in sync",
        Duration::from_secs(60),
        || leadership(port).filter(|(_, in_sync)| in_sync.contains(&frozen)),
    )
    .unwrap();

    // 3. A replica is cut off the network and put back.
    let cut = first_leader;
    let cut_service = format!("order{cut}");
    inject(format!("docker network disconnect {cut_service}"), &|| {
        stack.disconnect(&cut_service)
    });
    docker::wait_for(
        "the cut replica out of sync",
        Duration::from_secs(30),
        || leadership(port).filter(|(leader, in_sync)| *leader != cut && !in_sync.contains(&cut)),
    )
    .unwrap();
    inject(format!("docker network connect {cut_service}"), &|| {
        stack.connect(&cut_service)
    });
    docker::wait_for(
        "the cut replica back in sync",
        Duration::from_secs(60),
        || leadership(port).filter(|(_, in_sync)| in_sync.contains(&cut)),
    )
    .unwrap();

    // 4. The front end restarts under the client's sessions.
    inject("docker restart frontend".to_owned(), &|| {
        stack.signal("restart", "frontend")
    });
    stack
        .wait_healthy("frontend", Duration::from_secs(60))
        .unwrap();

    // One more whole client run after the last fault, then stop.
    let settled = Instant::now();
    docker::wait_for(
        "a client run begun and ended after the faults",
        Duration::from_secs(180),
        || {
            runs.lock()
                .unwrap()
                .iter()
                .any(|run| run.started > settled)
                .then_some(())
        },
    )
    .unwrap();
    client.finish();

    let runs = runs.lock().unwrap();
    let dirty: Vec<&ClientRun> = runs.iter().filter(|run| !run.clean).collect();
    assert!(
        dirty.is_empty(),
        "{} of {} client runs were not clean; the first said:\n{}",
        dirty.len(),
        runs.len(),
        dirty[0].output
    );
    for (at, what) in &faults {
        assert!(
            runs.iter()
                .any(|run| run.started <= *at && *at <= run.ended),
            "no client run was under way at `{what}`"
        );
    }
    let (clean, report) = docker::wait_for("a clean audit", Duration::from_secs(60), || {
        let (clean, report) = stack.audit().unwrap();
        clean.then_some((clean, report))
    })
    .unwrap_or_else(|e| panic!("{e}: {}", stack.audit().unwrap().1));
    assert!(clean, "{report}");
    assert!(report.contains("order logs: identical"), "{report}");
    eprintln!(
        "{} client runs clean through {} faults; audit:\n{report}",
        runs.len(),
        faults.len()
    );
    drop(stack);

    // The same compose.yaml as a swarm stack, where the engine can run a single-node swarm.
    let port = testkit::spare_ports(1)[0];
    let swarm = match SwarmStack::deploy(&unique, &image.tag, &dir.path().join("cluster.env"), port)
        .unwrap()
    {
        Ok(swarm) => swarm,
        Err(why) => {
            assert!(
                std::env::var_os(docker::REQUIRE_ENV).is_none(),
                "{} is set but the swarm stack cannot run: {why}",
                docker::REQUIRE_ENV
            );
            eprintln!("SKIPPED the swarm stack: {why}");
            return;
        }
    };
    for service in docker::SERVICES {
        docker::wait_for(
            &format!("{service}'s task healthy"),
            Duration::from_secs(90),
            || {
                let container = swarm.container(service)?;
                let health = docker::run(
                    "docker",
                    &[
                        "inspect",
                        "--format",
                        "{{.State.Health.Status}}",
                        &container,
                    ],
                    &[],
                )
                .ok()?;
                (health.trim() == "healthy").then_some(())
            },
        )
        .unwrap();
    }
    let client = std::process::Command::new(chaos::bins::binary("client").unwrap())
        .args([
            "run",
            "--port",
            &port.to_string(),
            "--sessions",
            "4",
            "--requests",
            "100",
        ])
        .output()
        .unwrap();
    assert!(
        client.status.success(),
        "client against the swarm stack: {}{}",
        String::from_utf8_lossy(&client.stdout),
        String::from_utf8_lossy(&client.stderr)
    );
    let audit = [
        "order",
        "audit",
        "--peers",
        docker::PEERS,
        "--catalog",
        "catalog:7000",
    ];
    let (clean, report) = docker::wait_for(
        "a clean audit of the swarm stack",
        Duration::from_secs(60),
        || {
            swarm
                .exec("frontend", &audit)
                .ok()
                .filter(|(clean, _)| *clean)
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", swarm.exec("frontend", &audit)));
    assert!(
        clean && report.contains("order logs: identical"),
        "{report}"
    );
    eprintln!("swarm stack: client clean; audit:\n{report}");
}
