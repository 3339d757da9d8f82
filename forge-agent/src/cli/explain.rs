//! `forge policy explain`: would an operation be allowed under a policy set,
//! and by which rule? The answer follows the kernel programs' semantics
//! (`forge_agent::policy::eval`).

use std::{path::PathBuf, process::ExitCode};

use clap::Args;
use forge_agent::{
    ebpf::Active,
    events::{Mode, Op, Verdict},
    explain::rule_text,
    policy::{
        CompiledRecord, PolicySet, Workload,
        eval::{self, Check, Considered, Evaluation, Operation},
    },
};

use super::Backend;

#[derive(Args)]
pub(crate) struct ExplainArgs {
    /// Policy files or directories, composed as one set (repeatable).
    #[arg(long = "policy", required = true, value_name = "FILE")]
    policies: Vec<PathBuf>,
    /// The operation: `exec PATH`, `file.read PATH`, `file.write PATH`,
    /// `net.connect ADDR:PORT`, `net.bind ADDR:PORT`, `net.sendto ADDR:PORT`,
    /// `syscall NAME` or `syscall NUMBER`. Paths as the kernel resolves them.
    #[arg(long, value_name = "OPERATION")]
    op: Operation,
    /// Backends assumed in force; they choose which hook decides (and, without
    /// LSM, whether file opens are decided at all).
    #[arg(long, value_delimiter = ',', default_value = "lsm,cgroup,tracepoint")]
    backends: Vec<Backend>,
    /// The workload: its cgroup (relative to the cgroup v2 mount). Only the
    /// policies selecting it apply. Default: every policy of the set.
    #[arg(long = "workload", value_name = "CGROUP")]
    workload: Option<String>,
    /// Trust tier to evaluate at (default: the workload's initial tier).
    #[arg(long)]
    tier: Option<forge_agent::policy::Tier>,
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(a: &ExplainArgs) -> anyhow::Result<ExitCode> {
    let set = PolicySet::load(&a.policies)?;
    let mut c = record_for(&set, a.workload.as_deref(), a.tier)?;
    let has = |b| a.backends.contains(&b);
    let active = Active {
        lsm: has(Backend::Lsm),
        lsm_paths: has(Backend::Lsm),
        lsm_userns: has(Backend::Lsm),
        cgroup: has(Backend::Cgroup),
        tracepoint: has(Backend::Tracepoint),
    };
    c.record.flags |= eval::backend_flags(&active);
    let ev = eval::evaluate(&c, &a.op);
    if a.json {
        let mut v = serde_json::to_value(&ev)?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("policies".into(), serde_json::json!(c.policy_name));
            obj.insert("tier".into(), serde_json::json!(c.tier));
            obj.insert("backends".into(), serde_json::json!(active));
        }
        super::print_json(&v)?;
    } else {
        print_human(&c, &ev);
    }
    Ok(ExitCode::SUCCESS)
}

/// The record the operation is evaluated against: the policies selecting the
/// workload's cgroup (all of them without `--workload`), at `tier` or the
/// workload's initial tier.
fn record_for(
    set: &PolicySet,
    cgroup: Option<&str>,
    tier: Option<forge_agent::policy::Tier>,
) -> anyhow::Result<CompiledRecord> {
    let w = cgroup.map_or_else(Workload::any, Workload::cgroup);
    let tier = match tier {
        Some(t) => t,
        None => set.initial_tier(&w)?,
    };
    Ok(set.compile_for(&w, tier, 1)?)
}

fn outcome(c: &Check) -> String {
    let Some(hook) = c.hook else {
        return "allowed: no hook decides it".to_string();
    };
    let what = match (c.verdict, c.mode) {
        (Verdict::Allow, _) => "allowed",
        (Verdict::Kill, Mode::Enforce) => "killed (SIGKILL)",
        (Verdict::Kill, Mode::Monitor) => "would be killed (monitor mode: allowed and reported)",
        (_, Mode::Enforce) => "denied (EPERM)",
        (_, Mode::Monitor) => "would be denied (monitor mode: allowed and reported)",
    };
    format!("{what} at {hook}")
}

fn print_check(c: &CompiledRecord, check: &Check, indent: &str) {
    if let Some(why) = &check.undecided {
        println!("{indent}{why}");
        return;
    }
    println!("{indent}by {}", rule_text(check.rule_id, check.class.as_str(), Some(c)));
    let heading = match check.considered.first() {
        Some(Considered::NetRule { .. }) => "network rules, in the kernel's order (the first match decides):",
        Some(Considered::Path { .. }) => "path rules (the longest matching prefix decides):",
        _ => "considered:",
    };
    println!("{indent}{heading}");
    for (i, item) in check.considered.iter().enumerate() {
        let rule = match item {
            Considered::NetRule { rule_id, .. } | Considered::Path { rule_id, .. } => {
                format!(" — {}", rule_text(*rule_id, check.class.as_str(), Some(c)))
            }
            _ => String::new(),
        };
        println!("{indent}  {}. {item}{rule}", i + 1);
    }
}

fn print_human(c: &CompiledRecord, ev: &Evaluation) {
    let own = Op::from_tag(ev.operation.class()).ok();
    let which = if own == Some(ev.decision.class) {
        String::new()
    } else {
        format!(" (its {} check)", ev.decision.class)
    };
    println!("{}: {}{which}", ev.operation, outcome(&ev.decision));
    println!("  policies: {} (tier {})", c.policy_name, c.tier);
    for p in &ev.prior {
        println!("  first, a {} check: {}", p.class, outcome(p));
        print_check(c, p, "    ");
    }
    if !ev.prior.is_empty() {
        println!("  then the {} check: {}", ev.decision.class, outcome(&ev.decision));
        print_check(c, &ev.decision, "    ");
    } else {
        print_check(c, &ev.decision, "  ");
    }
    for n in &ev.notes {
        println!("  note: {n}");
    }
}
