//! The host-call gate: whether a capsule may use a facility of the host.
//!
//! A call is let through only when the capsule's manifest requested the
//! facility AND the policy compiled for the capsule (its digest, signers
//! and current trust tier) allows it. Files and network go through the same
//! evaluator as the kernel's decisions (`policy::eval`); env, clock and
//! random through the policy's `capsule:` section. In monitor mode a denied
//! call goes through and is recorded as one that would have been denied.

use std::{collections::BTreeSet, net::SocketAddr};

use serde::Serialize;

use super::manifest::Capabilities;
use crate::{
    events::Verdict,
    policy::{
        CompiledRecord,
        eval::{Operation, evaluate},
    },
};

/// A facility a host call uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Facility<'a> {
    FileRead(&'a str),
    FileWrite(&'a str),
    Connect(SocketAddr),
    Env(&'a str),
    Clock,
    Random,
}

impl Facility<'_> {
    pub fn describe(&self) -> String {
        match self {
            Self::FileRead(p) => format!("read {p}"),
            Self::FileWrite(p) => format!("write {p}"),
            Self::Connect(a) => format!("connect {a}"),
            Self::Env(v) => format!("env {v}"),
            Self::Clock => "clock".into(),
            Self::Random => "random".into(),
        }
    }
}

/// Why a facility is (or would be) refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Denial {
    /// The capsule's manifest does not request it.
    Manifest,
    /// The policy denies it: the rule (0 = the class default) and its name.
    Policy { rule_id: u32, rule: Option<String> },
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Manifest => f.write_str("not requested by the capsule's manifest"),
            Self::Policy { rule_id, rule: Some(name) } => {
                write!(f, "denied by policy rule {name} (id {rule_id})")
            }
            Self::Policy { rule_id, rule: None } => {
                write!(f, "denied by the policy's default (rule id {rule_id})")
            }
        }
    }
}

/// The gate's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the call proceeds.
    pub allowed: bool,
    /// Why it is refused, or would be (monitor mode).
    pub denial: Option<Denial>,
}

impl Decision {
    const ALLOW: Self = Self { allowed: true, denial: None };
}

/// What decides host calls.
pub trait Gate: Send {
    fn check(&self, facility: &Facility<'_>) -> Decision;
}

/// The real gate: the manifest's requests intersected with the policy.
pub struct PolicyGate {
    caps: Capabilities,
    record: CompiledRecord,
    monitor: bool,
    env: BTreeSet<String>,
    clock: Decision,
    random: Decision,
}

impl PolicyGate {
    pub fn new(caps: Capabilities, record: CompiledRecord, monitor: bool) -> Self {
        let simple = |requested: bool, granted: bool| match (requested, granted) {
            (false, _) => refuse(Denial::Manifest),
            (true, false) => refuse(Denial::Policy { rule_id: 0, rule: Some("capsule".into()) }),
            (true, true) => Decision::ALLOW,
        };
        let clock = simple(caps.clock, record.capsule.clock);
        let random = simple(caps.random, record.capsule.random);
        let env = caps.env.iter().filter(|v| record.capsule.env.contains(*v)).cloned().collect();
        Self { caps, record, monitor, env, clock, random }
    }

    pub fn record(&self) -> &CompiledRecord {
        &self.record
    }

    fn policy(&self, op: Operation) -> Decision {
        let ev = evaluate(&self.record, &op);
        if ev.verdict() == Verdict::Allow {
            return Decision::ALLOW;
        }
        let denial =
            Denial::Policy { rule_id: ev.rule_id(), rule: ev.decision.rule.as_ref().map(|r| r.name.clone()) };
        Decision { allowed: !ev.enforced(), denial: Some(denial) }
    }

    /// The decision as if enforcing (what monitor mode would refuse).
    fn decide(&self, facility: &Facility<'_>) -> Decision {
        match facility {
            Facility::Clock => self.clock.clone(),
            Facility::Random => self.random.clone(),
            Facility::Env(v) => {
                if self.env.contains(*v) {
                    Decision::ALLOW
                } else if self.caps.env.iter().any(|e| e == v) {
                    refuse(Denial::Policy { rule_id: 0, rule: Some("capsule".into()) })
                } else {
                    refuse(Denial::Manifest)
                }
            }
            Facility::FileRead(p) | Facility::FileWrite(p) => {
                let write = matches!(facility, Facility::FileWrite(_));
                let requested = self
                    .caps
                    .files
                    .iter()
                    .any(|c| c.covers(p) && if write { c.access.write() } else { c.access.read() });
                if !requested {
                    return refuse(Denial::Manifest);
                }
                let op = if write {
                    Operation::FileWrite(p.to_string())
                } else {
                    Operation::FileRead(p.to_string())
                };
                self.policy(op)
            }
            Facility::Connect(a) => {
                if !self.caps.connect.contains(a) {
                    return refuse(Denial::Manifest);
                }
                self.policy(Operation::Connect(*a))
            }
        }
    }
}

fn refuse(denial: Denial) -> Decision {
    Decision { allowed: false, denial: Some(denial) }
}

impl Gate for PolicyGate {
    fn check(&self, facility: &Facility<'_>) -> Decision {
        let mut d = self.decide(facility);
        d.allowed |= self.monitor;
        d
    }
}

/// Lets everything through: the baseline the gate's cost is measured against.
pub struct AllowAll;

impl Gate for AllowAll {
    fn check(&self, _: &Facility<'_>) -> Decision {
        Decision::ALLOW
    }
}

/// What the policy would grant of each requested capability (`forge pkg
/// inspect`, and the check before a run).
#[derive(Clone, Debug, Serialize)]
pub struct Grant {
    pub capability: String,
    pub granted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denial: Option<Denial>,
}

/// The name a directory capability is checked with, as a file in it.
const DIR_PROBE: &str = "any-file";

/// Checks each capability the manifest requests against the policy (a
/// directory is checked as the directory's own path).
pub fn grants(gate: &PolicyGate) -> Vec<Grant> {
    let mut out = Vec::new();
    let mut push = |capability: String, d: Decision| {
        out.push(Grant { capability, granted: d.allowed, denial: d.denial });
    };
    for f in &gate.caps.files {
        // A directory is checked as a file in it (what the capsule will open).
        let path = if f.is_dir() { format!("{}{DIR_PROBE}", f.path) } else { f.path.clone() };
        if f.access.read() {
            push(format!("read {}", f.path), gate.decide(&Facility::FileRead(&path)));
        }
        if f.access.write() {
            push(format!("write {}", f.path), gate.decide(&Facility::FileWrite(&path)));
        }
    }
    for a in &gate.caps.connect {
        push(format!("connect {a}"), gate.decide(&Facility::Connect(*a)));
    }
    for v in &gate.caps.env {
        push(format!("env {v}"), gate.decide(&Facility::Env(v)));
    }
    if gate.caps.clock {
        push("clock".into(), gate.decide(&Facility::Clock));
    }
    if gate.caps.random {
        push("random".into(), gate.decide(&Facility::Random));
    }
    out
}
