//! Catalog faults on the real binaries, under a keyed load whose whole history is checked
//! afterwards (see `chaos::check`): the catalog answers a trade before its own log reaches the
//! disk (the replicated order log is the trade's durability), so a catalog killed at any
//! moment comes back without the tail of its log, and one whose state directory is gone
//! comes back with nothing. Both must come back with every acknowledged order's effect on its
//! stocks, exactly once. Every scenario runs in both write-quorum modes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chaos::cluster::CATALOG;
use chaos::{both_modes, check, Cluster, ClusterOptions, History, Load, Verdict, WriteQuorum};

const SECOND: Duration = Duration::from_secs(1);

/// A pseudo-random wait in `0..max`, different in every run (the kills land at random
/// moments of the load); printed so that a failing run says what it did.
fn random_wait(max: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let spread = (nanos.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16) % max.as_micros().max(1) as u64;
    Duration::from_micros(spread)
}

/// How often the catalog's log says something, over all its lives.
fn said(cluster: &Cluster, what: &str) -> usize {
    std::fs::read_to_string(cluster.log_path(CATALOG))
        .unwrap_or_default()
        .matches(what)
        .count()
}

/// The catalog is SIGKILLed three times at random moments while trades flow, and restarted
/// after a random pause. Each time its log loses what it had not fsynced (trades the order
/// log holds, some of them acknowledged); it serves no lookup until the leader has brought
/// them back, and the history must come out whole.
async fn catalog_killed_under_load_loses_nothing(mode: WriteQuorum) {
    let _serial = chaos::serial().await;
    let mut verdict = Verdict::new("catalog_killed_under_load_loses_nothing", mode);
    let mut cluster = Cluster::start(ClusterOptions::new("catalog-kill", mode))
        .await
        .unwrap();
    let history = History::new();
    let load = history
        .start(
            &cluster,
            Load::keyed("ckill", &[0]).workers(4).retry_for(10 * SECOND),
        )
        .unwrap();
    verdict.expect(
        history
            .wait_acknowledged(Duration::ZERO, 200, 30 * SECOND)
            .await,
        "trading before the kills",
    );
    for round in 0..3 {
        let before = random_wait(SECOND / 2);
        tokio::time::sleep(before).await;
        cluster.kill(CATALOG).unwrap();
        let down = random_wait(SECOND / 2);
        tokio::time::sleep(down).await;
        cluster.restart(CATALOG).unwrap();
        eprintln!("kill {round}: after {before:?} of trading, down for {down:?}");
        let back = history.now();
        verdict.expect(
            history.wait_acknowledged(back, 100, 30 * SECOND).await,
            "trading after the catalog came back",
        );
    }
    load.finish().await.unwrap();
    let replays = said(&cluster, "brought back orders the catalog's log had lost");
    eprintln!("the leader brought back lost orders {replays} times over 3 kills");
    if replays == 0 {
        verdict.problem(
            "no kill cost the catalog any trade: the test did not exercise bringing them back",
        );
    }
    let report = check(&mut cluster, &history).await;
    verdict.finish(&mut cluster, &history, &report);
}
both_modes!(catalog_killed_under_load_loses_nothing);

/// The catalog's state directory is deleted (a lost disk) while trades flow, and the catalog
/// restarted on an empty one. It must not come back with every stock at its seed quantity:
/// it rebuilds them from the seed plus the longest order log, under an epoch above every one
/// the replicas stored, and the history must come out whole.
async fn catalog_disk_lost_is_rebuilt_from_the_order_log(mode: WriteQuorum) {
    let _serial = chaos::serial().await;
    let mut verdict = Verdict::new("catalog_disk_lost_is_rebuilt_from_the_order_log", mode);
    let mut cluster = Cluster::start(ClusterOptions::new("catalog-disk-lost", mode))
        .await
        .unwrap();
    let history = History::new();
    let load = history
        .start(
            &cluster,
            Load::keyed("lost", &[0]).workers(4).retry_for(20 * SECOND),
        )
        .unwrap();
    verdict.expect(
        history
            .wait_acknowledged(Duration::ZERO, 300, 30 * SECOND)
            .await,
        "trading before the disk is lost",
    );
    let epoch_before = cluster.health(0).await.and_then(|h| h.epoch).unwrap_or(0);
    tokio::time::sleep(random_wait(SECOND / 2)).await;
    cluster.kill(CATALOG).unwrap();
    std::fs::remove_dir_all(cluster.root().join(CATALOG)).unwrap();
    cluster.restart(CATALOG).unwrap();
    let back = history.now();
    verdict.expect(
        history.wait_acknowledged(back, 100, 40 * SECOND).await,
        "trading after the catalog was rebuilt",
    );
    load.finish().await.unwrap();
    if said(&cluster, "catalog rebuilt from the order log") != 1 {
        verdict.problem("the catalog's log does not say it rebuilt from the order log");
    }
    // (In majority mode the rebuilt record may name the leader alone in sync, which then
    // waits for a follower before it serves: /health may say 503 for a moment.)
    match cluster.wait_healthy(0, 20 * SECOND).await.map(|h| h.epoch) {
        Ok(Some(epoch)) if epoch > epoch_before => {}
        other => verdict.problem(format!(
            "the rebuilt record's epoch {other:?} is not above {epoch_before}, the one before"
        )),
    }
    let report = check(&mut cluster, &history).await;
    verdict.finish(&mut cluster, &history, &report);
}
both_modes!(catalog_disk_lost_is_rebuilt_from_the_order_log);
