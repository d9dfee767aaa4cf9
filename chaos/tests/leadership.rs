//! Regression tests for leadership faults, on the real binaries: each scenario injects
//! process faults (SIGKILL, SIGSTOP/SIGCONT, restarts, a front end with a skewed clock) while
//! clients trade, then checks the whole history (see `chaos::check`). Every scenario runs in
//! both write-quorum modes (`<scenario>::all`, `<scenario>::majority`); the tests of this file
//! run one at a time (`chaos::serial`).
//!
//! Set `BAZAAR_BIN_DIR` to run them against other binaries (e.g. an older build).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::time::Duration;

use chaos::cluster::{followers, frontend_name, order_name};
use chaos::{both_modes, check, Cluster, ClusterOptions, History, Load, Verdict, WriteQuorum};

const SECOND: Duration = Duration::from_secs(1);

/// No fault at all: the harness itself must find a plain run clean (so that what the other
/// scenarios report is the system's doing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fault_history_is_clean() {
    let _serial = chaos::serial().await;
    let mut verdict = Verdict::new("no_fault_history_is_clean", WriteQuorum::All);
    let mut cluster = Cluster::start(ClusterOptions::new("baseline", WriteQuorum::All))
        .await
        .unwrap();
    let history = History::new();
    let keyed = history
        .start(&cluster, Load::keyed("base", &[0]).workers(2))
        .unwrap();
    let unkeyed = history
        .start(&cluster, Load::unkeyed("base", &[0]).workers(2))
        .unwrap();
    let result = history
        .wait_acknowledged(Duration::ZERO, 400, 30 * SECOND)
        .await;
    verdict.expect(result, "trading");
    keyed.finish().await.unwrap();
    unkeyed.finish().await.unwrap();
    let report = check(&mut cluster, &history).await;
    verdict.finish(&mut cluster, &history, &report);
}

/// A front end restarted while the only replica it reaches missed orders must not elect it.
///
/// Trades flow (keyed). Follower F is frozen (SIGSTOP) for longer than the replicate timeout,
/// so the leader goes on without it; then the leader and the other follower are SIGKILLed and
/// F thawed. Trades now get 503 (fine: no replica holding every acknowledged order is
/// alive). The front end is restarted, so it no longer remembers what it acknowledged; trades
/// go on a little (all 503 is fine); then the two killed replicas come back, trading resumes,
/// and the history is checked. Electing F loses every order acknowledged while F was frozen
/// and hands their numbers out again.
async fn frontend_restart_keeps_acknowledged_orders(mode: WriteQuorum) {
    let _serial = chaos::serial().await;
    let mut verdict = Verdict::new("frontend_restart_keeps_acknowledged_orders", mode);
    let mut cluster = Cluster::start(ClusterOptions::new("fe-restart", mode))
        .await
        .unwrap();
    let history = History::new();
    let load = history
        .start(
            &cluster,
            Load::keyed("restart", &[0])
                .workers(4)
                .retry_for(2 * SECOND),
        )
        .unwrap();
    history
        .wait_acknowledged(Duration::ZERO, 200, 30 * SECOND)
        .await
        .unwrap();

    let leader = cluster.leader(0).await.unwrap();
    let (frozen, other) = followers(leader);
    cluster.freeze(&order_name(frozen)).unwrap();
    let frozen_at = history.now();
    // Orders begun a second after the freeze are acknowledged without F.
    let result = history
        .wait_acknowledged(frozen_at + SECOND, 100, 20 * SECOND)
        .await;
    verdict.expect(result, "trading without the frozen follower");

    cluster.kill(&order_name(leader)).unwrap();
    cluster.kill(&order_name(other)).unwrap();
    cluster.thaw(&order_name(frozen)).unwrap();
    let killed_at = history.now();
    // Every worker has had an answer (or given up) since the kill.
    let result = history.wait_completed(killed_at, 4, 20 * SECOND).await;
    verdict.expect(result, "answers after the kill");

    cluster.restart(&frontend_name(0)).unwrap();
    cluster.wait_answering(0, 20 * SECOND).await.unwrap();
    let restarted_at = history.now();
    let result = history
        .wait_acknowledged_or_completed(restarted_at, 50, 4, 20 * SECOND)
        .await;
    verdict.expect(result, "answers after the front end restart");

    cluster.restart(&order_name(leader)).unwrap();
    cluster.restart(&order_name(other)).unwrap();
    let back_at = history.now();
    let result = history.wait_acknowledged(back_at, 50, 20 * SECOND).await;
    verdict.expect(result, "trading once every replica is back");
    load.finish().await.unwrap();

    let report = check(&mut cluster, &history).await;
    verdict.finish(&mut cluster, &history, &report);
}
both_modes!(frontend_restart_keeps_acknowledged_orders);

const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// A front end whose clock is a day behind must never elect with an epoch already used.
///
/// Epochs taken from a clock let a slow clock pick "the highest epoch I can see + 1", which
/// another election picked before when it saw the same replicas' epochs. With process faults
/// only, two replicas come to lead the same epoch like this:
///
/// 1. Front end 0 (true clock) elects leader L at epoch E; keyed trades flow through it.
///    Then front end 0 is killed, so that only the skewed front end elects from now on.
/// 2. Both followers A and B are SIGKILLed, and front end 1 (libfaketime, one day behind)
///    starts: it reaches only L. (Old code: it elects L at E+1, since its clock is below E;
///    A and B never hear of E+1.) Trades through it: L goes on alone (`all`) or cannot
///    commit (`majority`; the catalog has traded the first ones all the same).
/// 3. Front end 1 and L are SIGKILLed; A and B restart (still at E, with leader L).
///    Front end 1 starts again, without memory of its last epoch, and reaches only A and B.
///    (Old code: it elects B at E+1 again: two leaders of one epoch, numbering different
///    orders at the same positions.) Trading goes on (503 is a fine answer here).
/// 4. L comes back, trading goes on, and the history is checked: every acknowledged order
///    must be on every replica once, the logs identical, the catalog conserved.
///
/// Needs the Debian package `faketime`.
async fn skewed_clock_frontend_never_reuses_an_epoch(mode: WriteQuorum) {
    assert!(
        Path::new(FAKETIME_LIB).exists(),
        "{FAKETIME_LIB} is missing: install the Debian package `faketime` \
         (apt-get install faketime) to run this test"
    );
    let _serial = chaos::serial().await;
    let mut verdict = Verdict::new("skewed_clock_frontend_never_reuses_an_epoch", mode);
    let options = ClusterOptions::new("skew", mode)
        .frontends(2)
        .deferred(1)
        .frontend_env(1, "LD_PRELOAD", FAKETIME_LIB)
        .frontend_env(1, "FAKETIME", "-1d")
        // Timers and timeouts run on the monotonic clock, which must stay true.
        .frontend_env(1, "DONT_FAKE_MONOTONIC", "1");
    let mut cluster = Cluster::start(options).await.unwrap();
    let history = History::new();

    // 1.
    let load = history
        .start(&cluster, Load::keyed("skew0", &[0]).workers(4))
        .unwrap();
    history
        .wait_acknowledged(Duration::ZERO, 100, 30 * SECOND)
        .await
        .unwrap();
    load.finish().await.unwrap();
    let leader = cluster.leader(0).await.unwrap();
    let (a, b) = followers(leader);
    cluster.kill(&frontend_name(0)).unwrap();

    // 2.
    cluster.kill(&order_name(a)).unwrap();
    cluster.kill(&order_name(b)).unwrap();
    cluster.start_process(&frontend_name(1)).unwrap();
    let result = cluster.wait_healthy(1, 20 * SECOND).await;
    verdict.expect(result, "the skewed front end serving while L is up");
    let load = history
        .start(
            &cluster,
            Load::keyed("skew1", &[1]).workers(4).retry_for(2 * SECOND),
        )
        .unwrap();
    let since = history.now();
    let result = history
        .wait_acknowledged_or_completed(since, 50, 4, 20 * SECOND)
        .await;
    verdict.expect(result, "answers through the skewed front end");

    // 3.
    cluster.kill(&frontend_name(1)).unwrap();
    cluster.kill(&order_name(leader)).unwrap();
    cluster.restart(&order_name(a)).unwrap();
    cluster.restart(&order_name(b)).unwrap();
    cluster.start_process(&frontend_name(1)).unwrap();
    cluster.wait_answering(1, 20 * SECOND).await.unwrap();
    let since = history.now();
    let result = history
        .wait_acknowledged_or_completed(since, 50, 4, 20 * SECOND)
        .await;
    verdict.expect(result, "answers after the skewed front end restarted");

    // 4.
    cluster.restart(&order_name(leader)).unwrap();
    let since = history.now();
    let result = history.wait_acknowledged(since, 50, 20 * SECOND).await;
    verdict.expect(result, "trading once every replica is back");
    load.finish().await.unwrap();

    let report = check(&mut cluster, &history).await;
    verdict.finish(&mut cluster, &history, &report);
}
both_modes!(skewed_clock_frontend_never_reuses_an_epoch);

/// Trades the catalog applied when the leader and the front end died together must be in
/// the order log (conservation).
///
/// Many unkeyed trades are in flight (16 workers). Three times: the leader and the front end
/// are SIGKILLed at the same moment; the front end restarts and elects among the survivors,
/// then the old leader restarts and rejoins; trading resumes. Unkeyed trades in flight have
/// no retry (their outcome is unknown), but every trade the catalog applied must be an order
/// in the log, and nothing acknowledged may be lost.
async fn leader_and_frontend_killed_mid_trade_keep_conservation(mode: WriteQuorum) {
    let _serial = chaos::serial().await;
    let mut verdict = Verdict::new(
        "leader_and_frontend_killed_mid_trade_keep_conservation",
        mode,
    );
    let mut cluster = Cluster::start(ClusterOptions::new("conserve", mode))
        .await
        .unwrap();
    let history = History::new();
    let load = history
        .start(&cluster, Load::unkeyed("conserve", &[0]).workers(16))
        .unwrap();
    history
        .wait_acknowledged(Duration::ZERO, 300, 30 * SECOND)
        .await
        .unwrap();
    for round in 0..3 {
        let Some(leader) = verdict.expect(cluster.leader(0).await, "a leader") else {
            break;
        };
        cluster.kill(&order_name(leader)).unwrap();
        cluster.kill(&frontend_name(0)).unwrap();
        cluster.restart(&frontend_name(0)).unwrap();
        let result = cluster.wait_healthy(0, 20 * SECOND).await;
        verdict.expect(result, &format!("round {round}: the front end back"));
        cluster.restart(&order_name(leader)).unwrap();
        let since = history.now();
        let result = history.wait_acknowledged(since, 150, 20 * SECOND).await;
        verdict.expect(result, &format!("round {round}: trading resumed"));
    }
    load.finish().await.unwrap();

    let report = check(&mut cluster, &history).await;
    verdict.finish(&mut cluster, &history, &report);
}
both_modes!(leader_and_frontend_killed_mid_trade_keep_conservation);

/// Two front ends on one cluster agree on one leader instead of re-electing each other's.
///
/// The second front end starts once the first serves. Keyed trades flow through both for
/// about ten seconds without any fault: both together may have run at most two elections
/// (one each at start-up). Then the leader is SIGKILLed and trading goes on: at most one
/// more election per front end. The killed replica comes back and the history is checked.
async fn two_frontends_elect_once(mode: WriteQuorum) {
    let _serial = chaos::serial().await;
    let mut verdict = Verdict::new("two_frontends_elect_once", mode);
    // One after the other, so that the second does not elect in the same millisecond as the
    // first (which would hide the re-elections by chance).
    let options = ClusterOptions::new("two-fe", mode).frontends(2).deferred(1);
    let mut cluster = Cluster::start(options).await.unwrap();
    cluster.start_process(&frontend_name(1)).unwrap();
    cluster.wait_healthy(1, 20 * SECOND).await.unwrap();
    let history = History::new();
    let load = history
        .start(
            &cluster,
            Load::keyed("two", &[0, 1]).workers(4).duration(10 * SECOND),
        )
        .unwrap();
    load.join().await.unwrap();
    let quiet = verdict.elections(&cluster, 2).await;
    eprintln!("two_frontends_elect_once ({mode}): {quiet} elections without a fault");
    if quiet > 2.0 {
        verdict.problem(format!(
            "{quiet} elections in ~10 s without a fault (at most 2 expected)"
        ));
    }

    let load = history
        .start(&cluster, Load::keyed("two-kill", &[0, 1]).workers(4))
        .unwrap();
    let leader = cluster.leader(0).await.unwrap();
    let before = verdict.elections(&cluster, 2).await;
    cluster.kill(&order_name(leader)).unwrap();
    let since = history.now();
    let result = history.wait_acknowledged(since, 200, 20 * SECOND).await;
    verdict.expect(result, "trading after the leader was killed");
    let after = verdict.elections(&cluster, 2).await;
    eprintln!(
        "two_frontends_elect_once ({mode}): {} elections after the leader kill",
        after - before
    );
    if after - before > 2.0 {
        verdict.problem(format!(
            "{} elections after one leader kill (at most 1 per front end expected)",
            after - before
        ));
    }
    cluster.restart(&order_name(leader)).unwrap();
    load.finish().await.unwrap();

    let report = check(&mut cluster, &history).await;
    verdict.finish(&mut cluster, &history, &report);
}
both_modes!(two_frontends_elect_once);

/// Three front ends, leader kills and front end restarts cost latency, never an error.
///
/// Keyed trades go round-robin over three front ends (a retry goes to the next one).
/// Twenty rounds: the leader is SIGKILLed and, at the same moment, one front end (another each
/// round) restarts without memory of what it acknowledged; once trading resumed the killed
/// replica comes back. Every keyed trade must end 200 or 409, and the history be clean.
async fn three_frontends_leader_kill_and_frontend_restart(mode: WriteQuorum) {
    const ROUNDS: usize = 20;
    let _serial = chaos::serial().await;
    let mut verdict = Verdict::new("three_frontends_leader_kill_and_frontend_restart", mode);
    // Frequent health checks: each front end notices a dead leader (or a newer term) fast.
    let options = ClusterOptions {
        health_interval: Some(Duration::from_millis(100)),
        ..ClusterOptions::new("three-fe", mode).frontends(3)
    };
    let mut cluster = Cluster::start(options).await.unwrap();
    let history = History::new();
    let load = history
        .start(
            &cluster,
            Load::keyed("three", &[0, 1, 2])
                .workers(6)
                .retry_for(15 * SECOND),
        )
        .unwrap();
    history
        .wait_acknowledged(Duration::ZERO, 200, 30 * SECOND)
        .await
        .unwrap();
    for round in 0..ROUNDS {
        let restarted = (round + 1) % 3;
        let asked = (restarted + 1) % 3;
        let Some(leader) = verdict.expect(cluster.leader(asked).await, "a leader") else {
            break;
        };
        cluster.kill(&order_name(leader)).unwrap();
        cluster.restart(&frontend_name(restarted)).unwrap();
        let since = history.now();
        let result = history.wait_acknowledged(since, 50, 20 * SECOND).await;
        verdict.expect(
            result,
            &format!("round {round}: trading after the leader kill"),
        );
        let result = cluster.wait_healthy(restarted, 20 * SECOND).await;
        verdict.expect(
            result,
            &format!("round {round}: front end {restarted} back"),
        );
        cluster.restart(&order_name(leader)).unwrap();
        let since = history.now();
        let result = history.wait_acknowledged(since, 50, 20 * SECOND).await;
        verdict.expect(
            result,
            &format!("round {round}: trading with replica {leader} back"),
        );
    }
    load.finish().await.unwrap();

    let errors = history.summary().other_than("keyed", &["200", "409"]);
    if errors > 0 {
        verdict.problem(format!(
            "{errors} keyed trades ended in an error (neither 200 nor 409) after retrying"
        ));
    }
    let report = check(&mut cluster, &history).await;
    verdict.finish(&mut cluster, &history, &report);
}
both_modes!(three_frontends_leader_kill_and_frontend_restart);
