//! Planned restarts on the real binaries: every process stopped with SIGTERM (as a service
//! manager stops it) and started again, one at a time, twice around, under keyed trades and
//! lookups through two front ends, by clients that move to the other front end when theirs
//! does not answer. A planned restart must cost latency only: no client sees an error, and
//! the whole history checks out. Every scenario runs in both write-quorum modes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use chaos::cluster::{followers, frontend_name, order_name, CATALOG};
use chaos::lookups::Lookups;
use chaos::{
    both_modes, check, Cluster, ClusterOptions, History, Load, Operation, Outcome, Verdict,
    WriteQuorum,
};

const SECOND: Duration = Duration::from_secs(1);
/// Longest a service may take to exit after SIGTERM.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// What the user of a trade saw go wrong: a final answer that is not 200 or 409, or a 5xx
/// on the way (a transport failure at a front end that restarts is not one: the client
/// moved on to the other front end).
fn errors_seen(operation: &Operation) -> Vec<String> {
    let mut seen: Vec<String> = operation
        .failed_attempts
        .iter()
        .filter(|attempt| !attempt.contains("NoAnswer"))
        .cloned()
        .collect();
    match &operation.outcome {
        Outcome::Traded { .. } => {}
        Outcome::Refused { status: 409, .. } => {}
        other => seen.push(format!("in the end {other:?}")),
    }
    seen
}

/// Stops `name` with SIGTERM, starts it again, and waits until it is back in service: both
/// front ends healthy with every replica in sync, and 20 trades begun after that answered 200.
async fn restart_in_turn(
    cluster: &mut Cluster,
    history: &History,
    verdict: &mut Verdict,
    name: &str,
) {
    let stopped = verdict.expect(
        cluster.terminate(name, STOP_LIMIT).await,
        &format!("{name} ending after SIGTERM"),
    );
    cluster.start_process(name).unwrap();
    let started = history.now();
    for index in 0..2 {
        verdict.expect(
            cluster.wait_all_in_sync(index, 30 * SECOND).await,
            &format!("front end {index} healthy with every replica in sync after {name}'s restart"),
        );
    }
    let back = history.now();
    eprintln!(
        "restarted {name}: {stopped:?} to stop, back in service {:?} after its start",
        back - started
    );
    verdict.expect(
        history.wait_acknowledged(back, 20, 30 * SECOND).await,
        &format!("trading after {name} was restarted"),
    );
}

/// The catalog, the leader's followers, the leader and both front ends are restarted in
/// turn, twice around; trades and lookups flow through both front ends meanwhile.
async fn rolling_restart_shows_clients_no_error(mode: WriteQuorum) {
    let _serial = chaos::serial().await;
    let mut verdict = Verdict::new("rolling_restart_shows_clients_no_error", mode);
    let mut cluster = Cluster::start(ClusterOptions::new("rolling", mode).frontends(2))
        .await
        .unwrap();
    let history = History::new();
    let load = history
        .start(
            &cluster,
            Load::keyed("roll", &[0, 1])
                .workers(4)
                .retry_for(20 * SECOND),
        )
        .unwrap();
    let lookups = Lookups::start(&cluster, &[0, 1], 2, 100 * SECOND).unwrap();
    verdict.expect(
        history
            .wait_acknowledged(Duration::ZERO, 200, 30 * SECOND)
            .await,
        "trading before the restarts",
    );
    for round in 0..2 {
        eprintln!("round {round}");
        restart_in_turn(&mut cluster, &history, &mut verdict, CATALOG).await;
        let Some(leader) = verdict.expect(cluster.leader(0).await, "a leader") else {
            break;
        };
        let (first, second) = followers(leader);
        for id in [first, second, leader] {
            restart_in_turn(&mut cluster, &history, &mut verdict, &order_name(id)).await;
        }
        for index in 0..2 {
            restart_in_turn(&mut cluster, &history, &mut verdict, &frontend_name(index)).await;
        }
    }
    load.finish().await.unwrap();
    let looked = lookups.finish().await.unwrap();
    eprintln!(
        "lookups: {} answered, {} moved to the other front end, {} errors",
        looked.answered,
        looked.moved,
        looked.errors.len()
    );
    for error in looked.errors.iter().take(20) {
        eprintln!("  lookup error {error}");
    }
    if !looked.errors.is_empty() {
        verdict.problem(format!(
            "{} lookups answered with an error during the restarts (first: {})",
            looked.errors.len(),
            looked.errors[0]
        ));
    }
    if looked.answered < 100 {
        verdict.problem(format!("only {} lookups answered", looked.answered));
    }
    let operations = history.operations();
    let seen: Vec<(u64, Vec<String>)> = operations
        .iter()
        .map(|o| (o.id, errors_seen(o)))
        .filter(|(_, seen)| !seen.is_empty())
        .collect();
    for (id, errors) in seen.iter().take(20) {
        eprintln!("  trade {id} saw {errors:?}");
    }
    if !seen.is_empty() {
        verdict.problem(format!(
            "{} of {} trades saw an error during the restarts",
            seen.len(),
            operations.len()
        ));
    }
    let report = check(&mut cluster, &history).await;
    verdict.finish(&mut cluster, &history, &report);
}
both_modes!(rolling_restart_shows_clients_no_error);
