//! Decision events as OTLP log records (event name `forge.decision`): every
//! deny and kill the agent reads for a workload it governs, monitor-mode
//! ones included. Allowed decisions are counted in the metrics, not logged.
//! Reference: docs/telemetry.md.

use opentelemetry::logs::{AnyValue, Severity};

use crate::{
    events::{DecisionEvent, Mode, Verdict},
    policy::{RuleInfo, Tier},
};

/// Whether an event becomes a log record.
pub fn wanted(ev: &DecisionEvent) -> bool {
    matches!(ev.verdict, Verdict::Deny | Verdict::Kill)
}

/// Warn for an enforced deny or kill, info for one monitor mode reported.
pub fn severity(ev: &DecisionEvent) -> (Severity, &'static str) {
    match ev.mode {
        Mode::Enforce => (Severity::Warn, "WARN"),
        Mode::Monitor => (Severity::Info, "INFO"),
    }
}

fn int(v: u64) -> AnyValue {
    i64::try_from(v).map_or_else(|_| AnyValue::from(v.to_string()), AnyValue::Int)
}

/// The record's attributes. `rule`: the rule behind `ev.rule_id` in the
/// record governing the workload, when it has one (not the defaults or
/// self-protection).
pub fn attributes(ev: &DecisionEvent, tier: Tier, rule: Option<&RuleInfo>) -> Vec<(&'static str, AnyValue)> {
    let mut a = vec![
        ("forge.rule.id", AnyValue::Int(i64::from(ev.rule_id))),
        ("forge.hook", AnyValue::from(ev.hook.as_str())),
        ("forge.op", AnyValue::from(ev.op.as_str())),
        ("forge.verdict", AnyValue::from(ev.verdict.as_str())),
        ("forge.mode", AnyValue::from(ev.mode.as_str())),
        ("forge.cgroup.id", int(ev.cgroup_id)),
        ("forge.tier", AnyValue::from(tier.as_str())),
        ("forge.policy.generation", int(ev.generation)),
        ("forge.target", AnyValue::from(ev.target.to_string())),
        ("process.pid", AnyValue::Int(i64::from(ev.tgid))),
        ("process.executable.name", AnyValue::from(ev.comm.clone())),
    ];
    if let Some(r) = rule {
        a.push(("forge.rule.name", AnyValue::from(r.name.clone())));
        a.push(("forge.rule.source", AnyValue::from(r.source.clone())));
        a.push(("forge.policy.name", AnyValue::from(r.policy.clone())));
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Hook, Op, Target};

    fn event(verdict: Verdict, mode: Mode) -> DecisionEvent {
        DecisionEvent {
            ts_ns: 1,
            cgroup_id: 77,
            actual_cgroup_id: 77,
            generation: 3,
            pid: 10,
            tgid: 10,
            ppid: 1,
            comm: "curl".into(),
            hook: Hook::CgroupConnect4,
            op: Op::NetConnect,
            verdict,
            mode,
            rule_id: 5,
            target: Target::Addr { addr: [127, 0, 0, 1].into(), port: 80 },
        }
    }

    fn get<'a>(a: &'a [(&str, AnyValue)], key: &str) -> &'a AnyValue {
        &a.iter().find(|(k, _)| *k == key).unwrap_or_else(|| panic!("no {key}")).1
    }

    #[test]
    fn denies_and_kills_are_logged_allows_are_not() {
        assert!(wanted(&event(Verdict::Deny, Mode::Enforce)));
        assert!(wanted(&event(Verdict::Deny, Mode::Monitor)));
        assert!(wanted(&event(Verdict::Kill, Mode::Enforce)));
        assert!(!wanted(&event(Verdict::Allow, Mode::Enforce)));
        assert!(!wanted(&event(Verdict::Info, Mode::Enforce)));
        assert_eq!(severity(&event(Verdict::Deny, Mode::Enforce)).0, Severity::Warn);
        assert_eq!(severity(&event(Verdict::Deny, Mode::Monitor)).0, Severity::Info);
    }

    #[test]
    fn attributes_name_the_rule_hook_verdict_mode_cgroup_and_tier() {
        let rule = RuleInfo { id: 5, name: "no-web".into(), source: "p.yaml:9".into(), policy: "p".into() };
        let a = attributes(&event(Verdict::Deny, Mode::Monitor), Tier::Suspicious, Some(&rule));
        assert_eq!(get(&a, "forge.rule.id"), &AnyValue::Int(5));
        assert_eq!(get(&a, "forge.rule.name"), &AnyValue::from("no-web"));
        assert_eq!(get(&a, "forge.hook"), &AnyValue::from("cgroup/connect4"));
        assert_eq!(get(&a, "forge.verdict"), &AnyValue::from("deny"));
        assert_eq!(get(&a, "forge.mode"), &AnyValue::from("monitor"));
        assert_eq!(get(&a, "forge.cgroup.id"), &AnyValue::Int(77));
        assert_eq!(get(&a, "forge.tier"), &AnyValue::from("suspicious"));
        assert_eq!(get(&a, "forge.target"), &AnyValue::from("127.0.0.1:80"));
        let without = attributes(&event(Verdict::Deny, Mode::Enforce), Tier::Trusted, None);
        assert!(!without.iter().any(|(k, _)| *k == "forge.rule.name"));
    }
}
