//! Full disks, on the real binaries: a state directory is a small tmpfs the test fills while
//! clients trade. Nothing is acknowledged that is not durable, the front end's `/health`
//! turns 503 naming the service and the reason, and once space returns the service restarts
//! itself from its log (same pid, no operator) and trading goes on; the whole history is then
//! checked (see `chaos::check`). Skipped, with the reason printed, where mounting a tmpfs is
//! not allowed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use chaos::cluster::{order_name, CATALOG};
use chaos::{check, poll, Cluster, ClusterOptions, History, Load, Verdict, WriteQuorum};

const SECOND: Duration = Duration::from_secs(1);
const DISK: u64 = 4 << 20;

fn skipped() -> bool {
    match chaos::disk::available() {
        Ok(()) => false,
        Err(reason) => {
            eprintln!("skipped: cannot mount a small disk here: {reason}");
            true
        }
    }
}

fn options(label: &str, mode: WriteQuorum) -> ClusterOptions {
    let mut options = ClusterOptions::new(label, mode);
    // A refused trade is answered 503 after this long, so the full-disk phase moves on.
    options.failover_deadline = Some(Duration::from_millis(1500));
    options
}

/// Waits until front end 0's `/health` is 503 and its body names `service` and a full disk.
async fn wait_unhealthy_naming(cluster: &Cluster, service: &str) -> chaos::Result<String> {
    poll(
        &format!("/health to be 503 naming {service}'s full disk"),
        10 * SECOND,
        Duration::from_millis(50),
        || async {
            let answer = cluster.health_answer(0).await?;
            (answer.status == 503
                && answer.body.contains(service)
                && answer.body.contains("No space left"))
            .then_some(answer.body)
        },
    )
    .await
}

/// Checks that `name` was never restarted by the harness, runs under `pid`, and restarted
/// itself from its log.
fn restarted_in_place(verdict: &mut Verdict, cluster: &mut Cluster, name: &str, pid: Option<u32>) {
    if !cluster.is_running(name) || cluster.pid(name) != pid {
        verdict.problem(format!(
            "{name} is not the same process as before the full disk"
        ));
    }
    let log =
        std::fs::read_to_string(cluster.root().join(format!("{name}.stderr"))).unwrap_or_default();
    if !log.contains("restart from its log") {
        verdict.problem(format!(
            "{name}'s log does not say it restarted from its log"
        ));
    }
}

/// The catalog's disk fills up while trades flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_disk_full_refuses_reports_and_recovers() {
    if skipped() {
        return;
    }
    let _serial = chaos::serial().await;
    let mode = WriteQuorum::All;
    let mut verdict = Verdict::new("catalog_disk_full_refuses_reports_and_recovers", mode);
    let mut cluster = Cluster::start(options("catalog-disk", mode).small_disk(CATALOG, DISK))
        .await
        .unwrap();
    let history = History::new();
    // Short retries, so that trades refused while the disk is full end soon.
    let keyed = Load::keyed("disk", &[0]).workers(2).retry_for(2 * SECOND);
    let load = history.start(&cluster, keyed).unwrap();
    verdict.expect(
        history
            .wait_acknowledged(Duration::ZERO, 100, 30 * SECOND)
            .await,
        "trading before the disk fills",
    );
    let pid = cluster.pid(CATALOG);

    cluster.disk(CATALOG).unwrap().fill().unwrap();
    let health = wait_unhealthy_naming(&cluster, CATALOG).await;
    if let Some(body) = verdict.expect(health, "the full disk reported") {
        eprintln!("health while full: {body}");
    }
    // From now on nothing can be durable, so nothing may be acknowledged.
    let full = history.now();
    verdict.expect(
        history
            .wait_count(
                "trades answered while the disk is full",
                6,
                30 * SECOND,
                |o| o.start >= full,
            )
            .await,
        "answers while the disk is full",
    );
    let acknowledged = history.acknowledged_since(full);
    if acknowledged > 0 {
        verdict.problem(format!(
            "{acknowledged} trades acknowledged while the catalog's disk was full"
        ));
    }

    cluster.disk(CATALOG).unwrap().free().unwrap();
    let freed = history.now();
    verdict.expect(
        cluster.wait_healthy(0, 20 * SECOND).await,
        "/health 200 once space returned",
    );
    verdict.expect(
        history.wait_acknowledged(freed, 100, 30 * SECOND).await,
        "trading after space returned",
    );
    restarted_in_place(&mut verdict, &mut cluster, CATALOG, pid);
    load.finish().await.unwrap();
    let report = check(&mut cluster, &history).await;
    verdict.finish(&mut cluster, &history, &report);
}

/// The order leader's disk fills up while trades flow: another in-sync replica takes over,
/// and the old leader comes back by itself once space returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_disk_full_fails_over_reports_and_recovers() {
    if skipped() {
        return;
    }
    let _serial = chaos::serial().await;
    let mode = WriteQuorum::All;
    let mut verdict = Verdict::new("leader_disk_full_fails_over_reports_and_recovers", mode);
    let mut options = options("leader-disk", mode);
    for id in chaos::cluster::REPLICAS {
        options = options.small_disk(&order_name(id), DISK);
    }
    let mut cluster = Cluster::start(options).await.unwrap();
    let history = History::new();
    let load = history
        .start(&cluster, Load::keyed("disk", &[0]).workers(2))
        .unwrap();
    verdict.expect(
        history
            .wait_acknowledged(Duration::ZERO, 100, 30 * SECOND)
            .await,
        "trading before the disk fills",
    );
    let leader = cluster.leader(0).await.unwrap();
    let name = order_name(leader);
    let pid = cluster.pid(&name);

    cluster.disk(&name).unwrap().fill().unwrap();
    let health = wait_unhealthy_naming(&cluster, &name).await;
    if let Some(body) = verdict.expect(health, "the full disk reported") {
        eprintln!("health while full: {body}");
    }
    let full = history.now();
    verdict.expect(
        history.wait_acknowledged(full, 50, 30 * SECOND).await,
        "trading with another leader while the old one's disk is full",
    );
    let now = cluster.leader(0).await;
    if now.as_ref().ok() == Some(&leader) {
        verdict.problem(format!("{name} still leads with a full disk"));
    }

    cluster.disk(&name).unwrap().free().unwrap();
    verdict.expect(
        cluster.wait_healthy(0, 20 * SECOND).await,
        "/health 200 once space returned",
    );
    restarted_in_place(&mut verdict, &mut cluster, &name, pid);
    let freed = history.now();
    verdict.expect(
        history.wait_acknowledged(freed, 50, 30 * SECOND).await,
        "trading after space returned",
    );
    load.finish().await.unwrap();
    let report = check(&mut cluster, &history).await;
    verdict.finish(&mut cluster, &history, &report);
}
