//! Trust tiers move down on scores, never up on their own: only an explicit,
//! audited operator action restores trust.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::scorer::Score;
use crate::policy::Tier;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// A score at or above this moves a workload to `suspicious`.
    pub suspicious: u32,
    /// A score at or above this moves it to `compromised` (quarantine).
    pub compromised: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { suspicious: 40, compromised: 80 }
    }
}

/// What the agent must do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Recompile the workload's policy at `to` and swap it in.
    SetTier { cgroup_id: u64, from: Tier, to: Tier, reason: Vec<String>, actor: String, score: Option<u32> },
    /// Freeze and/or isolate the workload (its policy asks for quarantine at this tier).
    Quarantine { cgroup_id: u64, reason: Vec<String> },
    /// Undo a quarantine and restore the previous policy generation.
    Release { cgroup_id: u64, actor: String },
}

#[derive(Default)]
pub struct TrustController {
    pub thresholds: Thresholds,
    tiers: BTreeMap<u64, Tier>,
}

impl TrustController {
    pub fn new(thresholds: Thresholds) -> Self {
        Self { thresholds, tiers: BTreeMap::new() }
    }

    /// Registers a workload at its initial tier.
    pub fn track(&mut self, cgroup_id: u64, tier: Tier) {
        self.tiers.insert(cgroup_id, tier);
    }

    pub fn tier(&self, cgroup_id: u64) -> Option<Tier> {
        self.tiers.get(&cgroup_id).copied()
    }

    /// The actions a score calls for: a lower tier, and quarantine when the
    /// new tier's policy asks for it (`quarantine_at` answers that).
    pub fn on_score(&mut self, score: &Score, quarantine_at: impl Fn(Tier) -> bool) -> Vec<Action> {
        let Some(current) = self.tier(score.cgroup_id) else { return Vec::new() };
        let target = if score.value >= self.thresholds.compromised {
            Tier::Compromised
        } else if score.value >= self.thresholds.suspicious {
            Tier::Suspicious
        } else {
            return Vec::new();
        };
        if !target.at_or_below(current) || target == current {
            return Vec::new();
        }
        let reason: Vec<String> = score.features.iter().map(ToString::to_string).collect();
        self.tiers.insert(score.cgroup_id, target);
        let mut out = vec![Action::SetTier {
            cgroup_id: score.cgroup_id,
            from: current,
            to: target,
            reason: reason.clone(),
            actor: "scorer".into(),
            score: Some(score.value),
        }];
        if quarantine_at(target) {
            out.push(Action::Quarantine { cgroup_id: score.cgroup_id, reason });
        }
        out
    }

    /// An operator sets a tier (up or down); audited by the caller.
    pub fn set(&mut self, cgroup_id: u64, tier: Tier, actor: &str, why: &str) -> Option<Action> {
        let from = self.tier(cgroup_id)?;
        self.tiers.insert(cgroup_id, tier);
        Some(Action::SetTier {
            cgroup_id,
            from,
            to: tier,
            reason: vec![why.to_string()],
            actor: actor.to_string(),
            score: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::features::{Feature, FeatureKind};

    fn score(value: u32) -> Score {
        Score {
            cgroup_id: 7,
            value,
            features: vec![Feature {
                kind: FeatureKind::NewBinary,
                weight: value,
                detail: "new binary /tmp/x executed".into(),
                ts_ns: 1,
            }],
            ts_ns: 1,
        }
    }

    #[test]
    fn tiers_only_go_down_on_scores() {
        let mut c = TrustController::default();
        c.track(7, Tier::Verified);
        assert!(c.on_score(&score(10), |_| false).is_empty());
        let a = c.on_score(&score(50), |_| false);
        assert!(matches!(&a[..], [Action::SetTier { from: Tier::Verified, to: Tier::Suspicious, .. }]));
        assert!(c.on_score(&score(60), |_| false).is_empty(), "already suspicious");
        let a = c.on_score(&score(90), |t| t == Tier::Compromised);
        assert!(matches!(
            &a[..],
            [Action::SetTier { to: Tier::Compromised, .. }, Action::Quarantine { cgroup_id: 7, .. }]
        ));
        assert!(c.on_score(&score(10), |_| true).is_empty(), "no automatic way back up");
        assert_eq!(c.tier(7), Some(Tier::Compromised));
        let a = c.set(7, Tier::Verified, "alice", "investigated");
        assert!(matches!(a, Some(Action::SetTier { to: Tier::Verified, .. })));
    }

    #[test]
    fn untracked_workloads_are_ignored() {
        let mut c = TrustController::default();
        assert!(c.on_score(&score(100), |_| true).is_empty());
    }
}
