//! The protocol's safety rules, each named so that the simulator can switch one off
//! (`simulate --break RULE`) and show that it then finds the violation the rule prevents: a
//! checker that finds nothing on a broken protocol proves nothing. Every service runs with
//! every rule on; only the simulator builds a [`Rules`] with one off.

use std::fmt;

/// One safety rule of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// The catalog refuses a trade whose epoch is not the recorded leader's, so a deposed
    /// leader cannot trade.
    Fencing,
    /// A leader removes a silent member from the recorded in-sync set before it commits
    /// without it, so every recorded member holds every acknowledged order.
    ShrinkBeforeGoingOn,
    /// An election chooses, and the catalog accepts, only a member of the in-sync set.
    InSyncElection,
    /// A leader makes its log and the catalog's history of trades equal before it places or
    /// commits anything: it records every trade the catalog applied without an order.
    OrphanAdoption,
    /// A replica counts an entry as its own only once it is on its disk: a leader commits
    /// and a follower acknowledges only what was flushed.
    DurableBeforeAck,
    /// A leader takes office only once its epoch is stored, so that after a restart it never
    /// leads the same epoch twice.
    EpochBeforeOffice,
    /// A catalog that restarts after a crash serves no lookup until the leader has brought
    /// its history back up to every order it may have acknowledged.
    ReplayBeforeServe,
    /// The catalog answers a refusal only once it is on its disk, so that a later attempt of
    /// the same request gets the same refusal.
    RefusalDurableBeforeAnswer,
    /// A leader counts an order committed only once the catalog has applied it as well, so
    /// that nothing it acknowledges can still be refused by the catalog (and a lookup after
    /// the answer shows it).
    AppliedBeforeCommit,
    /// A leader withdraws orders of its own epoch that the catalog would not apply only under
    /// a new epoch, so that two entries never share a position.
    WithdrawUnderNewEpoch,
}

impl Rule {
    /// Every rule, in the order `simulate --list-rules` prints them.
    pub const ALL: [Rule; 10] = [
        Rule::Fencing,
        Rule::ShrinkBeforeGoingOn,
        Rule::InSyncElection,
        Rule::OrphanAdoption,
        Rule::DurableBeforeAck,
        Rule::EpochBeforeOffice,
        Rule::ReplayBeforeServe,
        Rule::RefusalDurableBeforeAnswer,
        Rule::AppliedBeforeCommit,
        Rule::WithdrawUnderNewEpoch,
    ];

    /// The rule's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Rule::Fencing => "fencing",
            Rule::ShrinkBeforeGoingOn => "shrink-before-going-on",
            Rule::InSyncElection => "in-sync-election",
            Rule::OrphanAdoption => "orphan-adoption",
            Rule::DurableBeforeAck => "durable-before-ack",
            Rule::EpochBeforeOffice => "epoch-before-office",
            Rule::ReplayBeforeServe => "replay-before-serve",
            Rule::RefusalDurableBeforeAnswer => "refusal-durable-before-answer",
            Rule::AppliedBeforeCommit => "applied-before-commit",
            Rule::WithdrawUnderNewEpoch => "withdraw-under-new-epoch",
        }
    }

    /// What the rule guarantees, in one line.
    pub fn describe(self) -> &'static str {
        match self {
            Rule::Fencing => "the catalog refuses trades from any epoch but the recorded one",
            Rule::ShrinkBeforeGoingOn => {
                "a leader records a smaller in-sync set before committing without a member"
            }
            Rule::InSyncElection => "only a member of the in-sync set may be elected",
            Rule::OrphanAdoption => {
                "a leader records every trade the catalog applied without an order"
            }
            Rule::ReplayBeforeServe => {
                "a restarted catalog serves only once it holds every order the leader may have \
                 acknowledged"
            }
            Rule::RefusalDurableBeforeAnswer => {
                "the catalog answers a refusal only once it is on its disk"
            }
            Rule::DurableBeforeAck => "only entries on a replica's disk count towards a commit",
            Rule::EpochBeforeOffice => "a leader acts only once its epoch is stored",
            Rule::AppliedBeforeCommit => {
                "a leader commits an order only once the catalog has applied it"
            }
            Rule::WithdrawUnderNewEpoch => {
                "a leader withdraws its own epoch's orders only under a new epoch"
            }
        }
    }

    /// The rule named `name`.
    pub fn from_name(name: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|rule| rule.name() == name)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which rules hold: all of them, except in the simulator's mutation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rules {
    broken: Option<Rule>,
}

impl Rules {
    /// Every rule holds: how every service runs.
    pub const ALL: Rules = Rules { broken: None };

    /// Every rule but `rule`.
    pub fn without(rule: Rule) -> Rules {
        Rules { broken: Some(rule) }
    }

    /// Whether `rule` holds.
    pub fn holds(self, rule: Rule) -> bool {
        self.broken != Some(rule)
    }

    /// The rule switched off, if one is.
    pub fn broken(self) -> Option<Rule> {
        self.broken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_one_rule_at_a_time_is_off() {
        for rule in Rule::ALL {
            assert_eq!(Rule::from_name(rule.name()), Some(rule));
            let rules = Rules::without(rule);
            assert!(!rules.holds(rule));
            assert!(Rule::ALL
                .iter()
                .filter(|&&other| other != rule)
                .all(|&other| rules.holds(other)));
            assert!(Rules::ALL.holds(rule));
        }
        assert_eq!(Rule::from_name("nothing"), None);
    }
}
