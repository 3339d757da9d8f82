//! Digests of execution traces for people and machines: what a workload
//! did, which rules decided, its trust tier, what the agent did and what an
//! operator can do, as a few lines of text and as compact JSON (for a SIEM
//! or a language model). Built only from the trace's records, so the same
//! trace always gives the same digest.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    dna::{Entry, QuarantineOp, Record, Subject},
    events::{DecisionEvent, Mode, Verdict},
    policy::{RuleInfo, Tier},
};

/// One thing the agent did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Act {
    /// The trace record it is in.
    pub record: u64,
    pub text: String,
}

/// A workload's whole trace in brief.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkloadDigest {
    pub workload: String,
    pub subject: String,
    pub policies: Option<String>,
    pub tier: Option<Tier>,
    /// `running`, `quarantined (frozen)`, `quarantined (redzone)`, or the outcome.
    pub state: String,
    pub events: u64,
    pub decisions: u64,
    pub elided: u64,
    pub lost: u64,
    /// The most frequent decisions: `(count, what, rule)`.
    pub top_decisions: Vec<(u64, String, String)>,
    pub agent_did: Vec<Act>,
    pub operator_can: Vec<String>,
}

/// One record explained.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecordDigest {
    pub workload: String,
    pub record: u64,
    pub what: String,
    pub why: String,
    /// The workload's tier when it happened.
    pub tier: Option<Tier>,
    /// What the agent did because of it (scores, tier changes, quarantine).
    pub agent_did: Vec<Act>,
    pub operator_can: Vec<String>,
}

fn rule_name(rules: &[RuleInfo], id: u32, op: &str) -> String {
    match id {
        forge_common::rule_id::DEFAULT => format!("the policy's default for {op}"),
        forge_common::rule_id::SELF_PROTECT => "the agent's self-protection".to_string(),
        forge_common::rule_id::CONTAINMENT => "the containment of the governed subtree".to_string(),
        forge_common::rule_id::UNRESOLVED_PATH => "a path that could not be resolved".to_string(),
        forge_common::rule_id::ANONYMOUS_EXEC => "the built-in deny of anonymous executables".to_string(),
        forge_common::rule_id::PATH_GUARD => {
            "the path guard (no mounts, chroot or user namespaces)".to_string()
        }
        id => rules
            .iter()
            .find(|r| r.id == id)
            .map_or_else(|| format!("rule id {id}"), |r| format!("rule {:?} ({})", r.name, r.source)),
    }
}

fn verb(ev: &DecisionEvent) -> &'static str {
    match (ev.verdict, ev.mode) {
        (Verdict::Deny, Mode::Enforce) => "denied",
        (Verdict::Kill, Mode::Enforce) => "killed the caller for",
        (Verdict::Deny | Verdict::Kill, Mode::Monitor) => "would have denied",
        (Verdict::Allow, _) => "allowed",
        (Verdict::Info, _) => "observed",
    }
}

fn act_text(r: &Record) -> Option<String> {
    Some(match r {
        Record::Score(s) => format!(
            "scored it {} ({})",
            s.value,
            s.features.iter().map(|f| f.detail.as_str()).collect::<Vec<_>>().join("; ")
        ),
        Record::TrustChange(t) => format!(
            "{} moved it from {} to {}: {}",
            t.actor,
            t.from.as_str(),
            t.to.as_str(),
            t.reason.join("; ")
        ),
        Record::Quarantine(q) if q.op == QuarantineOp::Freeze => {
            let frozen =
                if q.snapshot["frozen"] == false { "in the redzone, running" } else { "and froze it" };
            let n = q.snapshot["processes"].as_array().map_or(0, Vec::len);
            format!("{} quarantined it {frozen} ({n} processes recorded): {}", q.actor, q.reason.join("; "))
        }
        Record::Quarantine(q) => format!("{} released it: {}", q.actor, q.reason.join("; ")),
        Record::Lost(l) => format!("lost {} of its events to a full ring buffer", l.events),
        _ => return None,
    })
}

struct Walk<'a> {
    rules: Vec<RuleInfo>,
    policies: Option<String>,
    tier: Option<Tier>,
    quarantined: Option<bool>,
    outcome: Option<String>,
    entries: &'a [Entry],
}

impl<'a> Walk<'a> {
    fn new(entries: &'a [Entry]) -> Self {
        Self { rules: Vec::new(), policies: None, tier: None, quarantined: None, outcome: None, entries }
    }

    /// Applies record `e` to the running state.
    fn step(&mut self, e: &Entry) {
        match &e.record {
            Record::Governed(g) => {
                self.rules.clone_from(&g.rules);
                self.policies = Some(g.policies.clone());
                if g.fresh {
                    self.tier = Some(g.tier);
                }
            }
            Record::TrustChange(t) => self.tier = Some(t.to),
            Record::Quarantine(q) if q.op == QuarantineOp::Freeze => {
                self.quarantined = Some(q.snapshot["frozen"] != false);
            }
            Record::Quarantine(_) => self.quarantined = None,
            Record::Outcome(o) => self.outcome = Some(o.summary.clone()),
            _ => {}
        }
    }

    fn cgroup(&self) -> String {
        match self.entries.first().map(|e| &e.record) {
            Some(Record::Identity(i)) => match &i.subject {
                Subject::Cgroup { path, .. } => path.clone(),
                Subject::Capsule { package, .. } => package.clone(),
            },
            _ => "?".into(),
        }
    }

    fn operator_can(&self, workload: &str) -> Vec<String> {
        let cg = self.cgroup();
        let mut out = Vec::new();
        if self.outcome.is_none() {
            if self.quarantined.is_some() {
                out.push(format!("release it after investigating: forge release {cg} --actor NAME"));
            } else if matches!(self.tier, Some(Tier::Suspicious | Tier::Compromised)) {
                out.push(format!("restore trust after investigating: forge trust-set {cg} verified --actor NAME --reason WHY"));
            }
            if self.quarantined.is_none() {
                out.push(format!("isolate it now: forge quarantine {cg} --actor NAME --reason WHY"));
            }
        }
        out.push(format!("read the whole record: forge trace show {workload}"));
        out.push(format!("check it was not altered: forge trace verify {workload} --key AGENT.pub"));
        out
    }
}

fn workload_id(entries: &[Entry]) -> String {
    match entries.first().map(|e| &e.record) {
        Some(Record::Identity(i)) => i.workload_id.clone(),
        _ => "?".into(),
    }
}

/// The digest of a whole trace.
pub fn workload(entries: &[Entry]) -> WorkloadDigest {
    let mut w = Walk::new(entries);
    let (mut events, mut decisions, mut elided, mut lost) = (0, 0, 0, 0);
    let mut groups: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut agent_did = Vec::new();
    for e in entries {
        w.step(e);
        match &e.record {
            Record::Decision(ev) => {
                events += 1;
                decisions += 1;
                let what = format!("{} {} {}", verb(ev), ev.op, ev.target);
                let rule = rule_name(&w.rules, ev.rule_id, ev.op.as_str());
                *groups.entry((what, rule)).or_default() += 1;
            }
            Record::SampledAllowed(_) => events += 1,
            Record::Elided(x) => elided += x.counts.events(),
            Record::Lost(l) => lost += l.events,
            r @ (Record::TrustChange(_) | Record::Quarantine(_)) => {
                agent_did.extend(act_text(r).map(|text| Act { record: e.index, text }));
            }
            _ => {}
        }
    }
    let mut top: Vec<(u64, String, String)> = groups.into_iter().map(|((w, r), n)| (n, w, r)).collect();
    top.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    top.truncate(5);
    let state = match (&w.outcome, w.quarantined) {
        (Some(o), _) => format!("ended: {o}"),
        (None, Some(true)) => "quarantined (frozen)".into(),
        (None, Some(false)) => "quarantined (redzone, running)".into(),
        (None, None) => "governed".into(),
    };
    let id = workload_id(entries);
    WorkloadDigest {
        subject: w.cgroup(),
        policies: w.policies.clone(),
        tier: w.tier,
        state,
        events,
        decisions,
        elided,
        lost,
        top_decisions: top,
        agent_did,
        operator_can: w.operator_can(&id),
        workload: id,
    }
}

/// The last quarantine of the trace, explained; `None` if there was none.
pub fn last_quarantine(entries: &[Entry]) -> Option<RecordDigest> {
    let at = entries
        .iter()
        .rposition(|e| matches!(&e.record, Record::Quarantine(q) if q.op == QuarantineOp::Freeze))?;
    record(entries, entries[at].index)
}

/// Record `index` explained; `None` if the trace has no such record.
pub fn record(entries: &[Entry], index: u64) -> Option<RecordDigest> {
    let pos = entries.iter().position(|e| e.index == index)?;
    let mut w = Walk::new(entries);
    for e in &entries[..pos] {
        w.step(e);
    }
    let tier = w.tier;
    let e = &entries[pos];
    let (what, why) = match &e.record {
        Record::Decision(ev) | Record::SampledAllowed(ev) => (
            format!("{} {} {} by pid {} ({})", verb(ev), ev.op, ev.target, ev.tgid, ev.comm),
            if ev.verdict == Verdict::Info {
                format!("process tracking at {}", ev.hook)
            } else {
                format!("{} at {}", rule_name(&w.rules, ev.rule_id, ev.op.as_str()), ev.hook)
            },
        ),
        Record::Quarantine(q) => {
            let score = entries[..pos].iter().rev().find_map(|e| match &e.record {
                Record::Score(s) => Some(s.value),
                _ => None,
            });
            let why = match score {
                Some(s) if q.actor == "scorer" => format!("score {s}: {}", q.reason.join("; ")),
                _ => q.reason.join("; "),
            };
            (act_text(&e.record).unwrap_or_default(), why)
        }
        r => (format!("{} record: {r}", r.kind_name()), String::new()),
    };
    w.step(e);
    // What followed from it: the records up to the next event.
    let mut agent_did = Vec::new();
    let is_event = |r: &Record| matches!(r, Record::Decision(_) | Record::SampledAllowed(_));
    for later in entries[pos + 1..].iter().take_while(|l| !is_event(&l.record)) {
        w.step(later);
        agent_did.extend(act_text(&later.record).map(|text| Act { record: later.index, text }));
    }
    // A quarantine's release, wherever it came.
    if let Record::Quarantine(q) = &e.record
        && q.op == QuarantineOp::Freeze
    {
        for later in &entries[pos + 1..] {
            w.step(later);
            if matches!(&later.record, Record::Quarantine(r) if r.op == QuarantineOp::Release) {
                agent_did.extend(act_text(&later.record).map(|text| Act { record: later.index, text }));
                break;
            }
        }
    }
    let id = workload_id(entries);
    Some(RecordDigest {
        operator_can: w.operator_can(&id),
        workload: id,
        record: index,
        what,
        why,
        tier,
        agent_did,
    })
}

impl std::fmt::Display for WorkloadDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tier = self.tier.map_or("?", Tier::as_str);
        writeln!(f, "Workload {} ({}): {}, tier {tier}.", self.workload, self.subject, self.state)?;
        if let Some(p) = &self.policies {
            writeln!(f, "Policies: {p}.")?;
        }
        writeln!(
            f,
            "Events: {} recorded ({} decisions), {} routine ones counted, {} lost.",
            self.events, self.decisions, self.elided, self.lost
        )?;
        for (n, what, rule) in &self.top_decisions {
            writeln!(f, "  {n}x {what} — {rule}")?;
        }
        write_tail(f, "The agent:", &self.agent_did, &self.operator_can)
    }
}

impl std::fmt::Display for RecordDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tier = self.tier.map_or("?", Tier::as_str);
        writeln!(f, "Record {} of {} (tier {tier} at the time): {}.", self.record, self.workload, self.what)?;
        if !self.why.is_empty() {
            writeln!(f, "Why: {}.", self.why)?;
        }
        write_tail(f, "Then:", &self.agent_did, &self.operator_can)
    }
}

/// What the agent did (under `heading`, if anything) and what an operator can do.
fn write_tail(
    f: &mut std::fmt::Formatter<'_>,
    heading: &str,
    did: &[Act],
    can: &[String],
) -> std::fmt::Result {
    if !did.is_empty() {
        writeln!(f, "{heading}")?;
        for a in did {
            writeln!(f, "  [record {}] {}", a.record, a.text)?;
        }
    }
    writeln!(f, "You can:")?;
    for c in can {
        writeln!(f, "  {c}")?;
    }
    Ok(())
}
