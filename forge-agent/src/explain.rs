//! Plain-language accounts of kernel decisions.

use serde::Serialize;

use crate::{
    events::{DecisionEvent, Mode, Verdict},
    policy::CompiledRecord,
};

/// Why an event happened, for people and for machines.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Explanation {
    /// e.g. "denied net.connect 169.254.169.254:80".
    pub what: String,
    /// e.g. "rule \"no-cloud-metadata\" (policies/default.yaml)".
    pub why: String,
    pub event: DecisionEvent,
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} — {}", self.what, self.why)
    }
}

/// The rule behind `rule_id` in words.
pub fn rule_text(rule_id: u32, op: &str, compiled: Option<&CompiledRecord>) -> String {
    match rule_id {
        forge_common::rule_id::DEFAULT => format!("the policy's default for {op}"),
        forge_common::rule_id::SELF_PROTECT => "built-in self-protection of the agent".to_string(),
        forge_common::rule_id::CONTAINMENT => "built-in containment of the governed subtree".to_string(),
        forge_common::rule_id::UNRESOLVED_PATH => {
            "built-in: a path the kernel program could not resolve is denied".to_string()
        }
        forge_common::rule_id::ANONYMOUS_EXEC => {
            "built-in: an anonymous executable (memfd, deleted file) is denied where a rule denies some program \
             and no rule names <anonymous>"
                .to_string()
        }
        forge_common::rule_id::PATH_GUARD => {
            "built-in path guard: a workload with path rules may not mount, pivot_root, chroot or make a user \
             namespace unless a rule allows the call by name"
                .to_string()
        }
        id => match compiled.and_then(|c| c.rule(id)) {
            Some(r) => format!("rule {:?} ({})", r.name, r.source),
            None => format!("rule id {id} (not in the policy this agent compiled)"),
        },
    }
}

pub fn explain(ev: &DecisionEvent, compiled: Option<&CompiledRecord>) -> Explanation {
    let action = match (ev.verdict, ev.mode) {
        (Verdict::Deny, Mode::Enforce) => "denied",
        (Verdict::Kill, Mode::Enforce) => "killed the caller for",
        (Verdict::Deny | Verdict::Kill, Mode::Monitor) => "would have denied (monitor mode)",
        (Verdict::Allow, _) => "allowed",
        (Verdict::Info, _) => "observed",
    };
    let who = format!("pid {} ({})", ev.tgid, ev.comm);
    Explanation {
        what: format!("{action} {} {} by {who}", ev.op, ev.target),
        why: if ev.verdict == Verdict::Info {
            format!("process tracking at {}", ev.hook)
        } else {
            format!("{} at {}", rule_text(ev.rule_id, ev.op.as_str(), compiled), ev.hook)
        },
        event: ev.clone(),
    }
}
