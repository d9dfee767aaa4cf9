//! Network partitions on the real binaries: every process runs in its own network namespace
//! (see `chaos::netns`), and partitions are iptables DROP rules between namespaces. Each
//! scenario runs in both write-quorum modes and checks the whole history after healing.
//!
//! Needs root (`ip netns add`) and the Debian package `iptables`; without them the tests print
//! why and pass without running.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use chaos::cluster::{followers, frontend_name, order_name, CATALOG};
use chaos::{check, Cluster, ClusterOptions, History, Load, Verdict, WriteQuorum};

const SECOND: Duration = Duration::from_secs(1);

/// Runs a scenario once per write quorum, as `<scenario>::all` and `<scenario>::majority`.
macro_rules! both_modes {
    ($scenario:ident) => {
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn all() {
                super::$scenario(chaos::WriteQuorum::All).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn majority() {
                super::$scenario(chaos::WriteQuorum::Majority).await
            }
        }
    };
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
    let loads = [
        history
            .start(
                &cluster,
                Load::keyed("split0", &[0]).workers(3).retry_for(3 * SECOND),
            )
            .unwrap(),
        history
            .start(
                &cluster,
                Load::keyed("split1", &[1]).workers(3).retry_for(3 * SECOND),
            )
            .unwrap(),
    ];
    history
        .wait_acknowledged(Duration::ZERO, 200, 30 * SECOND)
        .await
        .unwrap();

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
