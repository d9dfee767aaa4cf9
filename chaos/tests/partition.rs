//! Network partitions on the real binaries: every process runs in its own network namespace
//! (see `chaos::netns`), and partitions are iptables DROP rules between namespaces. Each
//! scenario runs in both write-quorum modes and checks the whole history after healing.
//!
//! Needs root (`ip netns add`) and the Debian package `iptables`; without them the tests print
//! why and pass without running.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use chaos::cluster::{followers, frontend_name, order_name, CATALOG};
use chaos::{
    both_modes, check, Cluster, ClusterOptions, History, Load, LoadHandle, Verdict, WriteQuorum,
};

const SECOND: Duration = Duration::from_secs(1);

/// Keyed trades through each of two front ends (three workers each, ids `<prefix>0-…` and
/// `<prefix>1-…`, retried for `retry`), once 200 of them were acknowledged.
async fn load_per_frontend(
    cluster: &Cluster,
    history: &History,
    prefix: &str,
    retry: Duration,
) -> [LoadHandle; 2] {
    let load = |frontend: usize| {
        let keys = format!("{prefix}{frontend}");
        history
            .start(
                cluster,
                Load::keyed(&keys, &[frontend]).workers(3).retry_for(retry),
            )
            .unwrap()
    };
    let loads = [load(0), load(1)];
    history
        .wait_acknowledged(Duration::ZERO, 200, 30 * SECOND)
        .await
        .unwrap();
    loads
}

/// Whether namespaces can be used here; prints why not.
fn namespaces_usable(scenario: &str) -> bool {
    match chaos::netns::available() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("SKIPPED {scenario}: {why}");
            false
        }
    }
}

/// A front end on the minority side of a partition must not create a second history.
///
/// Two front ends; keyed trades through each. The network splits into {leader, follower A,
/// front end 0} and {follower B, front end 1} (the catalog and the clients reach both
/// sides). Trades go on through both front ends for a while (front end 1 may answer 503:
/// it cannot reach the leader); then the partition heals, trading goes on, and the history
/// is checked: no acknowledged order lost, no number given twice, one log, conservation.
async fn partition_minority_frontend_cannot_split_the_cluster(mode: WriteQuorum) {
    let scenario = "partition_minority_frontend_cannot_split_the_cluster";
    if !namespaces_usable(scenario) {
        return;
    }
    let _serial = chaos::serial().await;
    let mut verdict = Verdict::new(scenario, mode);
    let options = ClusterOptions::new("split", mode)
        .frontends(2)
        .in_namespaces();
    let mut cluster = Cluster::start(options).await.unwrap();
    let history = History::new();
    let loads = load_per_frontend(&cluster, &history, "split", 3 * SECOND).await;

    let leader = cluster.leader(0).await.unwrap();
    let (a, b) = followers(leader);
    let majority = [order_name(leader), order_name(a), frontend_name(0)];
    let minority = [order_name(b), frontend_name(1)];
    let majority: Vec<&str> = majority.iter().map(String::as_str).collect();
    let minority: Vec<&str> = minority.iter().map(String::as_str).collect();
    cluster
        .topology()
        .expect("namespaces")
        .partition(&[&majority, &minority])
        .unwrap();
    let split_at = history.now();
    // Front end 1 has answered (or given up on) a few trades begun after the split ...
    let result = chaos::poll(
        "front end 1 answering during the partition",
        30 * SECOND,
        Duration::from_millis(20),
        || async { (history.count(|o| o.start >= split_at && o.frontend == 1) >= 6).then_some(()) },
    )
    .await;
    verdict.expect(result, "front end 1 (minority side) during the partition");
    // ... and front end 0, on the leader's side, kept trading.
    let result = chaos::poll(
        "front end 0 trading during the partition",
        20 * SECOND,
        Duration::from_millis(20),
        || async {
            let traded = history
                .count(|o| o.start >= split_at && o.frontend == 0 && o.outcome.number().is_some());
            (traded >= 100).then_some(())
        },
    )
    .await;
    verdict.expect(result, "front end 0 (leader's side) during the partition");

    cluster.topology().expect("namespaces").heal().unwrap();
    let healed_at = history.now();
    let result = history.wait_acknowledged(healed_at, 100, 20 * SECOND).await;
    verdict.expect(result, "trading after healing");
    for load in loads {
        load.finish().await.unwrap();
    }

    let report = check(&mut cluster, &history).await;
    verdict.finish(&mut cluster, &history, &report);
}
both_modes!(partition_minority_frontend_cannot_split_the_cluster);

/// A leader that cannot reach the catalog is replaced within a few seconds.
///
/// One front end; keyed trades. The leader's namespace drops everything to and from the
/// catalog (it still reaches the replicas and the front end). Trading must resume through
/// another replica: the longest stretch without any successful trade, measured from the cut
/// until 100 trades succeeded after it (or 8 s), must be at most 3 s. Then the cut heals,
/// trading goes on and the history is checked.
async fn leader_cut_from_catalog_is_replaced(mode: WriteQuorum) {
    let scenario = "leader_cut_from_catalog_is_replaced";
    if !namespaces_usable(scenario) {
        return;
    }
    let _serial = chaos::serial().await;
    let mut verdict = Verdict::new(scenario, mode);
    let mut cluster = Cluster::start(ClusterOptions::new("cut", mode).in_namespaces())
        .await
        .unwrap();
    let history = History::new();
    let load = history
        .start(
            &cluster,
            Load::keyed("cut", &[0]).workers(4).retry_for(15 * SECOND),
        )
        .unwrap();
    history
        .wait_acknowledged(Duration::ZERO, 200, 30 * SECOND)
        .await
        .unwrap();

    let leader = cluster.leader(0).await.unwrap();
    cluster
        .topology()
        .expect("namespaces")
        .cut(&order_name(leader), CATALOG)
        .unwrap();
    let cut_at = history.now();
    // Until trading has clearly resumed; failing that, the window ends after 8 s.
    let _ = history.wait_acknowledged(cut_at, 100, 8 * SECOND).await;
    let gap = history.longest_gap(cut_at, history.now());
    if gap > 3 * SECOND {
        verdict.problem(format!(
            "no trade succeeded for {:.1} s after the leader lost the catalog (at most 3 s \
             expected)",
            gap.as_secs_f64()
        ));
    }

    cluster.topology().expect("namespaces").heal().unwrap();
    let healed_at = history.now();
    let result = history.wait_acknowledged(healed_at, 100, 20 * SECOND).await;
    verdict.expect(result, "trading after healing");
    load.finish().await.unwrap();

    let report = check(&mut cluster, &history).await;
    verdict.finish(&mut cluster, &history, &report);
}
both_modes!(leader_cut_from_catalog_is_replaced);

/// Waits until `count` trades through front end `frontend` that began at or after `since`
/// were acknowledged.
async fn wait_acknowledged_through(
    history: &History,
    frontend: usize,
    since: Duration,
    count: usize,
    limit: Duration,
) -> chaos::Result<()> {
    let what = format!("trades acknowledged through {}", frontend_name(frontend));
    history
        .wait_count(&what, count, limit, |o| {
            o.start >= since && o.frontend == frontend && o.outcome.number().is_some()
        })
        .await
}

/// Waits until `count` trades through front end `frontend` got their 200 at or after `since`
/// (whenever they began: a keyed trade begun before may still be retrying).
async fn wait_answered_200_through(
    history: &History,
    frontend: usize,
    since: Duration,
    count: usize,
    limit: Duration,
) -> chaos::Result<()> {
    let what = format!("trades answered 200 through {}", frontend_name(frontend));
    history
        .wait_count(&what, count, limit, |o| {
            o.end >= since && o.frontend == frontend && o.outcome.number().is_some()
        })
        .await
}

/// Waits until `count` trades through front end `frontend` that began at or after `since`
/// have ended, whatever their outcome (503 is a fine answer on a cut-off side).
async fn wait_completed_through(
    history: &History,
    frontend: usize,
    since: Duration,
    count: usize,
    limit: Duration,
) -> chaos::Result<()> {
    let what = format!("trades through {} answered", frontend_name(frontend));
    history
        .wait_count(&what, count, limit, |o| {
            o.start >= since && o.frontend == frontend
        })
        .await
}

/// Trades through front end `frontend` acknowledged with an end in `from..to`.
fn acknowledged_through(history: &History, frontend: usize, from: Duration, to: Duration) -> usize {
    history.count(|o| {
        o.frontend == frontend && o.end >= from && o.end < to && o.outcome.number().is_some()
    })
}

/// A leader cut from both its followers must not let two leaders acknowledge orders.
///
/// Two front ends; keyed trades through each (front end 0's only through front end 0, front
/// end 1's only through front end 1). The leader's namespace then drops everything to and
/// from both followers, and front end 0 is on the leader's side: {leader, front end 0} |
/// {follower A, follower B, front end 1}; the catalog and the clients reach everyone.
///
/// - `all`: the leader drops the followers from the in-sync set and goes on alone (or front
///   end 1 elects a follower first, and the followers go on); either way trading goes on and
///   no number is acknowledged twice.
/// - `majority`: the leader cannot commit (`stalled`); front end 1 elects a follower and
///   trades resume through it: the longest stretch without any successful trade, from the
///   cut until 100 trades succeeded after it (or 8 s), must be at most 4 s.
///
/// The partition lasts at least 6 s. Then it heals, both front ends trade again, and the
/// history is checked.
async fn leader_cut_from_its_followers_cannot_split_the_cluster(mode: WriteQuorum) {
    let scenario = "leader_cut_from_its_followers_cannot_split_the_cluster";
    if !namespaces_usable(scenario) {
        return;
    }
    let _serial = chaos::serial().await;
    let mut verdict = Verdict::new(scenario, mode);
    let options = ClusterOptions::new("leader-cut", mode)
        .frontends(2)
        .in_namespaces();
    let mut cluster = Cluster::start(options).await.unwrap();
    let history = History::new();
    let loads = load_per_frontend(&cluster, &history, "lcut", 10 * SECOND).await;

    let leader = cluster.leader(0).await.unwrap();
    let (a, b) = followers(leader);
    let before = verdict.elections(&cluster, 2).await;
    let leader_side = [order_name(leader), frontend_name(0)];
    let follower_side = [order_name(a), order_name(b), frontend_name(1)];
    let leader_side: Vec<&str> = leader_side.iter().map(String::as_str).collect();
    let follower_side: Vec<&str> = follower_side.iter().map(String::as_str).collect();
    cluster
        .topology()
        .expect("namespaces")
        .partition(&[&leader_side, &follower_side])
        .unwrap();
    let cut_at = history.now();
    // Until trading has clearly resumed; failing that, the window ends after 8 s.
    let _ = history.wait_acknowledged(cut_at, 100, 8 * SECOND).await;
    let window_end = history.now();
    let gap = history.longest_gap(cut_at, window_end);
    eprintln!(
        "{scenario} ({mode}): replica {leader} cut from {a} and {b}; longest gap without a \
         successful trade {:.2} s; acknowledged in the window through front end 0: {}, \
         through front end 1: {}",
        gap.as_secs_f64(),
        acknowledged_through(&history, 0, cut_at, window_end),
        acknowledged_through(&history, 1, cut_at, window_end),
    );
    let result = history.wait_acknowledged(cut_at, 100, 15 * SECOND).await;
    verdict.expect(result, "trading during the partition");
    if mode == WriteQuorum::Majority {
        if gap > 4 * SECOND {
            verdict.problem(format!(
                "no trade succeeded for {:.1} s after the leader lost both followers (at \
                 most 4 s expected)",
                gap.as_secs_f64()
            ));
        }
        let result = wait_acknowledged_through(&history, 1, cut_at, 50, 10 * SECOND).await;
        verdict.expect(
            result,
            "front end 1 (followers' side) trading during the partition",
        );
    }
    // Long enough for front end 1 to have checked the leader, and elected if it will.
    let hold = (cut_at + 6 * SECOND).saturating_sub(history.now());
    tokio::time::sleep(hold).await;
    let during = verdict.elections(&cluster, 2).await - before;
    let now = history.now();
    let health = (cluster.health(0).await, cluster.health(1).await);
    eprintln!(
        "{scenario} ({mode}): {during} elections in {:.1} s of partition; acknowledged \
         through front end 0: {}, front end 1: {}; health now {health:?}",
        (now - cut_at).as_secs_f64(),
        acknowledged_through(&history, 0, cut_at, now),
        acknowledged_through(&history, 1, cut_at, now),
    );

    cluster.topology().expect("namespaces").heal().unwrap();
    let healed_at = history.now();
    let result = history.wait_acknowledged(healed_at, 100, 20 * SECOND).await;
    verdict.expect(result, "trading after healing");
    for frontend in [0, 1] {
        let result =
            wait_answered_200_through(&history, frontend, healed_at, 20, 20 * SECOND).await;
        verdict.expect(
            result,
            &format!("{} trading after healing", frontend_name(frontend)),
        );
    }
    for load in loads {
        load.finish().await.unwrap();
    }

    let report = check(&mut cluster, &history).await;
    verdict.finish(&mut cluster, &history, &report);
}
both_modes!(leader_cut_from_its_followers_cannot_split_the_cluster);

/// A front end that cannot reach a leader that serves does not depose it.
///
/// Two front ends; keyed trades through each. Front end 0's namespace and the leader's drop
/// each other's traffic; everyone else reaches everyone. The catalog hears from the leader
/// (its lease holds), so front end 0's elections are refused and it answers 503; front end 1
/// trades on. The cut lasts at least 6 s without a single election. Then the cut heals,
/// trading goes on through both and the history is checked.
async fn leader_cut_from_one_frontend(mode: WriteQuorum) {
    let scenario = "leader_cut_from_one_frontend";
    if !namespaces_usable(scenario) {
        return;
    }
    let _serial = chaos::serial().await;
    let mut verdict = Verdict::new(scenario, mode);
    let options = ClusterOptions::new("fe-cut", mode)
        .frontends(2)
        .in_namespaces();
    let mut cluster = Cluster::start(options).await.unwrap();
    let history = History::new();
    let loads = load_per_frontend(&cluster, &history, "fecut", 10 * SECOND).await;

    let leader = cluster.leader(1).await.unwrap();
    let before = verdict.elections(&cluster, 2).await;
    cluster
        .topology()
        .expect("namespaces")
        .cut(&frontend_name(0), &order_name(leader))
        .unwrap();
    let cut_at = history.now();
    // The leader serves (the catalog hears from it), so front end 0, which is the one cut
    // off, answers 503 instead of deposing it; front end 1 trades on.
    let result = wait_acknowledged_through(&history, 1, cut_at, 100, 20 * SECOND).await;
    verdict.expect(result, "front-end-1 trading during the cut");
    let result = wait_completed_through(&history, 0, cut_at, 3, 20 * SECOND).await;
    verdict.expect(result, "front-end-0 answering during the cut");
    // Long enough for leaders alternating between the front ends' views to show.
    let hold = (cut_at + 6 * SECOND).saturating_sub(history.now());
    tokio::time::sleep(hold).await;
    let during = verdict.elections(&cluster, 2).await - before;
    let now = history.now();
    let gap = history.longest_gap(cut_at, now);
    let leaders = (cluster.health(0).await, cluster.health(1).await);
    eprintln!(
        "{scenario} ({mode}): front end 0 cut from replica {leader}; {during} elections in \
         {:.1} s of cut; longest gap without a successful trade {:.2} s; acknowledged through \
         front end 0: {}, front end 1: {}; health now {leaders:?}",
        (now - cut_at).as_secs_f64(),
        gap.as_secs_f64(),
        acknowledged_through(&history, 0, cut_at, now),
        acknowledged_through(&history, 1, cut_at, now),
    );
    if during > 0.0 {
        verdict.problem(format!(
            "{during} elections while front end 0 could not reach a leader that serves (none \
             expected: the catalog holds its lease)"
        ));
    }

    cluster.topology().expect("namespaces").heal().unwrap();
    let healed_at = history.now();
    let result = history.wait_acknowledged(healed_at, 100, 20 * SECOND).await;
    verdict.expect(result, "trading after healing");
    for load in loads {
        load.finish().await.unwrap();
    }

    let report = check(&mut cluster, &history).await;
    verdict.finish(&mut cluster, &history, &report);
}
both_modes!(leader_cut_from_one_frontend);

/// A partition that heals in two steps, the replicas' links first, must not split the
/// cluster either.
///
/// As in `partition_minority_frontend_cannot_split_the_cluster`: two front ends, keyed
/// trades through each, and the network splits into {leader, follower A, front end 0} and
/// {follower B, front end 1}. Then the partition heals in two steps: first B reaches the
/// leader and A again (the replicas are whole) while front end 1 still reaches neither the
/// leader nor A (and front end 0 not B); front end 1 answers 503 without electing (the
/// leader serves, so the catalog refuses to depose it: no alternating leaders), and trades
/// go on through front end 0 for 5 s more; then the rest heals, trading goes on through both,
/// and the history is checked. The elections of each step are printed.
async fn partition_heals_in_either_order(mode: WriteQuorum) {
    let scenario = "partition_heals_in_either_order";
    if !namespaces_usable(scenario) {
        return;
    }
    let _serial = chaos::serial().await;
    let mut verdict = Verdict::new(scenario, mode);
    let options = ClusterOptions::new("heal-order", mode)
        .frontends(2)
        .in_namespaces();
    let mut cluster = Cluster::start(options).await.unwrap();
    let history = History::new();
    let loads = load_per_frontend(&cluster, &history, "heal", 3 * SECOND).await;

    let leader = cluster.leader(0).await.unwrap();
    let (a, b) = followers(leader);
    let start = verdict.elections(&cluster, 2).await;
    let majority = [order_name(leader), order_name(a), frontend_name(0)];
    let minority = [order_name(b), frontend_name(1)];
    let majority: Vec<&str> = majority.iter().map(String::as_str).collect();
    let minority: Vec<&str> = minority.iter().map(String::as_str).collect();
    cluster
        .topology()
        .expect("namespaces")
        .partition(&[&majority, &minority])
        .unwrap();
    let split_at = history.now();
    let result = wait_acknowledged_through(&history, 0, split_at, 100, 20 * SECOND).await;
    verdict.expect(result, "front end 0 (leader's side) during the partition");
    let result = wait_completed_through(&history, 1, split_at, 3, 20 * SECOND).await;
    verdict.expect(result, "front end 1 (minority side) during the partition");
    let split = verdict.elections(&cluster, 2).await;
    eprintln!(
        "{scenario} ({mode}): split {{{leader}, {a}, fe0}} | {{{b}, fe1}}: {} elections; \
         acknowledged through front end 0: {}, front end 1: {}",
        split - start,
        acknowledged_through(&history, 0, split_at, history.now()),
        acknowledged_through(&history, 1, split_at, history.now()),
    );

    // First step: the replicas are whole again; the front ends are still cut as before.
    {
        let topology = cluster.topology().expect("namespaces");
        topology.uncut(&order_name(leader), &order_name(b)).unwrap();
        topology.uncut(&order_name(a), &order_name(b)).unwrap();
    }
    let replicas_at = history.now();
    // The leader serves and front end 1 still cannot reach it: front end 1 answers (503)
    // without deposing it, while trades go on through front end 0 for a while. Electing B
    // from front end 1 here made the two front ends take turns replacing each other's leader.
    let result = wait_completed_through(&history, 1, replicas_at, 3, 20 * SECOND).await;
    verdict.expect(
        result,
        "front end 1 answering once the replicas reach each other again",
    );
    let frontend_1_back = history.now();
    let result = history
        .wait_acknowledged(replicas_at, 100, 20 * SECOND)
        .await;
    verdict.expect(result, "trading once the replicas reach each other again");
    let hold = (frontend_1_back + 5 * SECOND).saturating_sub(history.now());
    tokio::time::sleep(hold).await;
    let replicas_healed = verdict.elections(&cluster, 2).await;
    if replicas_healed - split > 0.0 {
        verdict.problem(format!(
            "{} elections while the replicas were whole and front end 1 could not reach a \
             leader that serves (none expected: the leaders must not alternate)",
            replicas_healed - split
        ));
    }
    let now = history.now();
    let health = (cluster.health(0).await, cluster.health(1).await);
    eprintln!(
        "{scenario} ({mode}): replicas healed for {:.1} s (front end 1 traded again after \
         {:.1} s): {} elections; acknowledged through front end 0: {}, front end 1: {}; \
         longest gap {:.2} s; health {health:?}",
        (now - replicas_at).as_secs_f64(),
        (frontend_1_back - replicas_at).as_secs_f64(),
        replicas_healed - split,
        acknowledged_through(&history, 0, replicas_at, now),
        acknowledged_through(&history, 1, replicas_at, now),
        history.longest_gap(replicas_at, now).as_secs_f64(),
    );

    // Second step: everything.
    cluster.topology().expect("namespaces").heal().unwrap();
    let healed_at = history.now();
    let result = history.wait_acknowledged(healed_at, 100, 20 * SECOND).await;
    verdict.expect(result, "trading after healing");
    for load in loads {
        load.finish().await.unwrap();
    }
    let healed = verdict.elections(&cluster, 2).await;
    eprintln!(
        "{scenario} ({mode}): {} elections after the full heal",
        healed - replicas_healed
    );

    let report = check(&mut cluster, &history).await;
    verdict.finish(&mut cluster, &history, &report);
}
both_modes!(partition_heals_in_either_order);
