//! The spans the agent exports, as attributes built from plain values (so
//! they are tested without a collector): `forge.workload.run` (a governed
//! workload's lifetime), `forge.policy.apply`, `forge.quarantine` and
//! `forge.release`. Reference: docs/telemetry.md.

use opentelemetry::{Array, KeyValue, StringValue, Value};

use crate::policy::Tier;

/// A cgroup id as an attribute value: an integer (a string in the
/// impossible case it does not fit an i64).
pub fn id(v: u64) -> Value {
    i64::try_from(v).map_or_else(|_| Value::from(v.to_string()), Value::I64)
}

fn strings(v: &[String]) -> Value {
    Value::Array(Array::String(v.iter().map(|s| StringValue::from(s.clone())).collect()))
}

/// The workload a span is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadRef {
    pub cgroup_id: u64,
    /// The cgroup's directory.
    pub cgroup: String,
    /// The workload identity policies select on (the cgroup relative to the v2 mount).
    pub workload: String,
}

impl WorkloadRef {
    fn attributes(&self) -> [KeyValue; 3] {
        [
            KeyValue::new("forge.cgroup.id", id(self.cgroup_id)),
            KeyValue::new("forge.cgroup.path", self.cgroup.clone()),
            KeyValue::new("forge.workload", self.workload.clone()),
        ]
    }
}

/// `forge.workload.run` starts when the daemon governs a cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunStart {
    pub workload: WorkloadRef,
    /// The policies that selected it, joined with `+`.
    pub policies: String,
    pub tier: Tier,
    pub generation: u64,
}

impl RunStart {
    pub fn attributes(&self) -> Vec<KeyValue> {
        let mut a = self.workload.attributes().to_vec();
        a.push(KeyValue::new("forge.policy.names", self.policies.clone()));
        a.push(KeyValue::new("forge.tier", self.tier.as_str()));
        a.push(KeyValue::new("forge.policy.generation", id(self.generation)));
        a
    }
}

/// Why a workload run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// `forge ungovern`.
    Ungoverned,
    /// The cgroup directory was removed.
    CgroupRemoved,
    /// The agent stopped (enforcement stays pinned).
    AgentStopped,
}

impl RunEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ungoverned => "ungoverned",
            Self::CgroupRemoved => "cgroup_removed",
            Self::AgentStopped => "agent_stopped",
        }
    }

    /// Set on the span when it ends, with the tier and generation then in force.
    pub fn attributes(self, tier: Option<Tier>, generation: Option<u64>) -> Vec<KeyValue> {
        let mut a = vec![KeyValue::new("forge.run.end", self.as_str())];
        if let Some(t) = tier {
            a.push(KeyValue::new("forge.tier", t.as_str()));
        }
        if let Some(g) = generation {
            a.push(KeyValue::new("forge.policy.generation", id(g)));
        }
        a
    }
}

/// A signed bundle behind a policy apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleRef {
    pub name: String,
    pub version: u64,
    pub signers: Vec<String>,
}

/// `forge.policy.apply`: one `policy_apply` or `policy_apply_bundle` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyApply {
    /// `api` (policy_apply) or `bundle` (policy_apply_bundle).
    pub source: &'static str,
    pub documents: usize,
    /// The policies of the set in force afterwards (empty when refused).
    pub policies: Vec<String>,
    /// Rules in the set, escalation rules included.
    pub rules: usize,
    /// `(cgroup id, generation)` of each governed workload swapped.
    pub swapped: Vec<(u64, u64)>,
    pub bundle: Option<BundleRef>,
    /// `applied`, or the API error code (`invalid_policy`, `kernel`, `refused`...).
    pub outcome: String,
    pub duration_us: u64,
}

impl PolicyApply {
    pub fn attributes(&self) -> Vec<KeyValue> {
        let mut a = vec![
            KeyValue::new("forge.policy.source", self.source),
            KeyValue::new("forge.policy.documents", self.documents as i64),
            KeyValue::new("forge.policy.names", strings(&self.policies)),
            KeyValue::new("forge.policy.rules", self.rules as i64),
            KeyValue::new("forge.policy.workloads", self.swapped.len() as i64),
            KeyValue::new(
                "forge.policy.generations",
                Value::Array(Array::I64(
                    self.swapped.iter().map(|(_, g)| i64::try_from(*g).unwrap_or(i64::MAX)).collect(),
                )),
            ),
            KeyValue::new("forge.outcome", self.outcome.clone()),
            KeyValue::new("forge.duration_us", id(self.duration_us)),
        ];
        if let Some(b) = &self.bundle {
            a.push(KeyValue::new("forge.bundle.name", b.name.clone()));
            a.push(KeyValue::new("forge.bundle.version", id(b.version)));
            a.push(KeyValue::new("forge.bundle.signers", strings(&b.signers)));
        }
        a
    }
}

/// `forge.quarantine`: from the event (or request) that called for it until
/// the workload was contained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantine {
    pub workload: WorkloadRef,
    pub from: Tier,
    pub to: Tier,
    /// The scorer's features and reasons, or the operator's reason.
    pub reason: Vec<String>,
    /// `scorer` or the operator.
    pub actor: String,
    /// Frozen (`freeze`) or running inside the redzone (`redzone`).
    pub freeze: bool,
    pub contained_us: u64,
    pub generation: u64,
    /// Processes in the snapshot taken.
    pub processes: usize,
}

impl Quarantine {
    pub fn attributes(&self) -> Vec<KeyValue> {
        let mut a = self.workload.attributes().to_vec();
        a.extend([
            KeyValue::new("forge.tier.from", self.from.as_str()),
            KeyValue::new("forge.tier.to", self.to.as_str()),
            KeyValue::new("forge.quarantine.reason", strings(&self.reason)),
            KeyValue::new("forge.actor", self.actor.clone()),
            KeyValue::new("forge.quarantine.mode", if self.freeze { "freeze" } else { "redzone" }),
            KeyValue::new("forge.contained_us", id(self.contained_us)),
            KeyValue::new("forge.policy.generation", id(self.generation)),
            KeyValue::new("forge.quarantine.processes", self.processes as i64),
        ]);
        a
    }
}

/// `forge.release`: a workload released from quarantine or escalation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub workload: WorkloadRef,
    pub from: Tier,
    pub to: Tier,
    pub actor: String,
    pub generation: u64,
}

impl Release {
    pub fn attributes(&self) -> Vec<KeyValue> {
        let mut a = self.workload.attributes().to_vec();
        a.extend([
            KeyValue::new("forge.tier.from", self.from.as_str()),
            KeyValue::new("forge.tier.to", self.to.as_str()),
            KeyValue::new("forge.actor", self.actor.clone()),
            KeyValue::new("forge.policy.generation", id(self.generation)),
        ]);
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(a: &'a [KeyValue], key: &str) -> &'a Value {
        &a.iter().find(|kv| kv.key.as_str() == key).unwrap_or_else(|| panic!("no {key} in {a:?}")).value
    }

    fn workload() -> WorkloadRef {
        WorkloadRef { cgroup_id: 4242, cgroup: "/sys/fs/cgroup/web/a".into(), workload: "web/a".into() }
    }

    #[test]
    fn quarantine_attributes_carry_tiers_mode_and_containment() {
        let q = Quarantine {
            workload: workload(),
            from: Tier::Verified,
            to: Tier::Compromised,
            reason: vec!["new network 127.0.1.0/24".into(), "exec from /tmp".into()],
            actor: "scorer".into(),
            freeze: false,
            contained_us: 812,
            generation: 9,
            processes: 2,
        };
        let a = q.attributes();
        assert_eq!(get(&a, "forge.cgroup.id"), &Value::I64(4242));
        assert_eq!(get(&a, "forge.workload"), &Value::from("web/a"));
        assert_eq!(get(&a, "forge.tier.from"), &Value::from("verified"));
        assert_eq!(get(&a, "forge.tier.to"), &Value::from("compromised"));
        assert_eq!(get(&a, "forge.quarantine.mode"), &Value::from("redzone"));
        assert_eq!(get(&a, "forge.contained_us"), &Value::I64(812));
        assert_eq!(get(&a, "forge.quarantine.reason"), &strings(&q.reason));
        let frozen = Quarantine { freeze: true, ..q }.attributes();
        assert_eq!(get(&frozen, "forge.quarantine.mode"), &Value::from("freeze"));
    }

    #[test]
    fn policy_apply_attributes_list_generations_and_the_bundle() {
        let p = PolicyApply {
            source: "bundle",
            documents: 2,
            policies: vec!["web".into(), "db".into()],
            rules: 5,
            swapped: vec![(1, 7), (2, 8)],
            bundle: Some(BundleRef { name: "prod".into(), version: 3, signers: vec!["k1".into()] }),
            outcome: "applied".into(),
            duration_us: 120,
        };
        let a = p.attributes();
        assert_eq!(get(&a, "forge.policy.rules"), &Value::I64(5));
        assert_eq!(get(&a, "forge.policy.workloads"), &Value::I64(2));
        assert_eq!(get(&a, "forge.policy.generations"), &Value::Array(Array::I64(vec![7, 8])));
        assert_eq!(get(&a, "forge.bundle.version"), &Value::I64(3));
        assert_eq!(get(&a, "forge.outcome"), &Value::from("applied"));
        let refused = PolicyApply { bundle: None, outcome: "refused".into(), ..p }.attributes();
        assert!(!refused.iter().any(|kv| kv.key.as_str().starts_with("forge.bundle.")));
    }

    #[test]
    fn run_end_and_ids_beyond_i64() {
        let a = RunEnd::CgroupRemoved.attributes(Some(Tier::Suspicious), Some(4));
        assert_eq!(get(&a, "forge.run.end"), &Value::from("cgroup_removed"));
        assert_eq!(get(&a, "forge.tier"), &Value::from("suspicious"));
        assert_eq!(RunEnd::AgentStopped.attributes(None, None).len(), 1);
        assert_eq!(id(u64::MAX), Value::from(u64::MAX.to_string()));
        assert_eq!(id(5), Value::I64(5));
    }
}
