//! The simulator as tests: a few thousand seeds keep every invariant; a seed replays exactly;
//! and the simulator has teeth: with any one safety rule switched off it finds a violation
//! within 3,000 seeds, on a seed that is clean with every rule on.
#![allow(clippy::unwrap_used, missing_docs)]

use common::safety::{Rule, Rules};
use simulator::{replay, run, Options};

/// Seeds of the invariant run: a few thousand, well within a minute on a debug build.
const SEEDS: u64 = 5_000;
/// At most this many seeds for a broken rule to show.
const TEETH: u64 = 3_000;

#[test]
fn thousands_of_seeds_with_faults_keep_every_invariant() {
    let (mut events, mut orders, mut faults) = (0u64, 0u64, 0u64);
    for seed in 0..SEEDS {
        let outcome = run(seed, Options::default());
        if let Some(violation) = outcome.violation {
            panic!("seed {seed}: {violation} (replay: simulate --seed {seed})");
        }
        events += outcome.stats.events;
        orders += outcome.stats.orders;
        faults += outcome.stats.faults as u64;
    }
    // The runs did work: orders answered under faults, not empty seeds.
    assert!(orders > SEEDS * 5, "{orders} orders in {SEEDS} seeds");
    assert!(faults > SEEDS * 2, "{faults} faults in {SEEDS} seeds");
    assert!(events > SEEDS * 300, "{events} events in {SEEDS} seeds");
}

#[test]
fn without_faults_every_order_is_answered_and_checked() {
    for seed in 0..200 {
        let options = Options {
            faults: false,
            ..Options::default()
        };
        let outcome = run(seed, options);
        assert!(outcome.violation.is_none(), "seed {seed}: {outcome:?}");
        assert_eq!(outcome.stats.faults, 0);
        assert!(outcome.stats.orders >= 6, "seed {seed}: {outcome:?}");
    }
}

#[test]
fn a_seed_replays_exactly_with_a_readable_trace() {
    for seed in [3, 41, 977] {
        let first = run(seed, Options::default());
        let second = run(seed, Options::default());
        assert_eq!(first.stats.events, second.stats.events);
        assert_eq!(first.stats.simulated, second.stats.simulated);
        let (replayed, trace) = replay(seed, Options::default());
        assert_eq!(replayed.stats.events, first.stats.events);
        assert_eq!(replayed.violation, first.violation);
        // Messages, faults and the engines' own log lines, with their simulated time.
        assert!(trace.iter().any(|l| l.contains("catalog ← ")), "{trace:?}");
        assert!(trace.iter().any(|l| l.contains("INFO")), "{trace:?}");
    }
}

/// The invariants an acknowledged order lost (or renumbered) breaks.
const LOST_ORDER: [&str; 3] = [
    "new-leader-holds-acknowledged",
    "acknowledged-orders-kept",
    "one-order-per-number",
];

/// The first seed below [`TEETH`] on which the simulator catches `rule` switched off; that
/// seed must be clean with every rule on, so the violation is the rule's.
fn caught(rule: Rule) -> (u64, &'static str) {
    let broken = Options {
        rules: Rules::without(rule),
        ..Options::default()
    };
    for seed in 0..TEETH {
        if let Some(violation) = run(seed, broken).violation {
            let clean = run(seed, Options::default());
            assert!(
                clean.violation.is_none(),
                "seed {seed} also fails with every rule on: {:?}",
                clean.violation
            );
            return (seed, violation.invariant);
        }
    }
    panic!("with {rule} switched off, {TEETH} seeds found no violation");
}

#[test]
fn switching_off_fencing_at_the_catalog_is_caught() {
    let (_, invariant) = caught(Rule::Fencing);
    assert_eq!(invariant, "deposed-leaders-cannot-trade");
}

#[test]
fn switching_off_shrinking_the_in_sync_set_before_going_on_is_caught() {
    let (_, invariant) = caught(Rule::ShrinkBeforeGoingOn);
    assert!(LOST_ORDER.contains(&invariant), "{invariant}");
}

#[test]
fn switching_off_the_in_sync_check_at_election_is_caught() {
    let (_, invariant) = caught(Rule::InSyncElection);
    assert!(LOST_ORDER.contains(&invariant), "{invariant}");
}

#[test]
fn switching_off_orphan_adoption_is_caught() {
    // A leader that leaves the catalog's trades unrecorded never finds the catalog's history
    // a prefix of its log: it never places again (or the stocks stop adding up).
    let (_, invariant) = caught(Rule::OrphanAdoption);
    assert!(
        ["conservation", "settles-after-faults", "catalog-history"].contains(&invariant),
        "{invariant}"
    );
}

#[test]
fn switching_off_acting_only_once_the_epoch_is_stored_is_caught() {
    let (_, invariant) = caught(Rule::EpochBeforeOffice);
    assert_eq!(invariant, "epoch-led-once");
}

#[test]
fn switching_off_replay_before_a_restarted_catalog_serves_is_caught() {
    let (_, invariant) = caught(Rule::ReplayBeforeServe);
    assert!(
        [
            "lookups-show-acknowledged-trades",
            "catalog-history",
            "conservation",
            "acknowledged-orders-kept"
        ]
        .contains(&invariant),
        "{invariant}"
    );
}

#[test]
fn switching_off_durable_refusals_is_caught() {
    let (_, invariant) = caught(Rule::RefusalDurableBeforeAnswer);
    assert_eq!(invariant, "refused-trades-not-recorded");
}

#[test]
fn switching_off_durability_before_acknowledging_is_caught() {
    let (_, invariant) = caught(Rule::DurableBeforeAck);
    assert!(LOST_ORDER.contains(&invariant), "{invariant}");
}

#[test]
fn switching_off_committing_only_what_the_catalog_applied_is_caught() {
    let (_, invariant) = caught(Rule::AppliedBeforeCommit);
    assert_eq!(invariant, "acknowledged-orders-applied");
}

#[test]
fn switching_off_withdrawing_under_a_new_epoch_is_caught() {
    let (_, invariant) = caught(Rule::WithdrawUnderNewEpoch);
    assert!(
        ["one-entry-per-position", "one-history"].contains(&invariant),
        "{invariant}"
    );
}
