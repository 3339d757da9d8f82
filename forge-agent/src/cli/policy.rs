//! `forge policy check|compile|explain|diff`.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Subcommand};
use forge_agent::policy::{CompiledRecord, Diagnostics, PolicySet, Severity, Tier, Workload};

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
    /// Parse, validate and compile policy files (or directories of them) as one set;
    /// print every error with file:line:column and exit non-zero if there is any.
    Check {
        /// Policy files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Also check that a backend available on this host enforces every rule (needs root).
        #[arg(long)]
        host: bool,
        /// With --host: an unenforceable rule is an error, not a warning.
        #[arg(long)]
        strict: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show what a workload's record would be: what would be written to the maps.
    Compile(CompileArgs),
    /// Would an operation be allowed under a policy set, and by which rule?
    /// Evaluated with the kernel's semantics; lists the rules considered.
    Explain(super::explain::ExplainArgs),
    /// Replace the running agent's policy set atomically (all governed workloads
    /// are recompiled and swapped, or nothing changes). A signed bundle
    /// directory is verified by the agent first (required in strict mode).
    Apply {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print the agent's answer as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: super::SocketArgs,
    },
    /// Show what changes in a workload's record between two policy sets.
    Diff {
        old: PathBuf,
        new: PathBuf,
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub(crate) struct TargetArgs {
    /// The workload's cgroup (relative to the cgroup v2 mount); default: any workload.
    #[arg(long)]
    cgroup: Option<String>,
    /// Trust tier to compile for (default: the workload's initial tier).
    #[arg(long)]
    tier: Option<Tier>,
}

#[derive(Args)]
pub(crate) struct CompileArgs {
    /// Policy files or directories.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    target: TargetArgs,
    /// Print the full record (every denied syscall, every path entry).
    #[arg(long)]
    dump: bool,
    /// Print the OCI `linux.seccomp` profile for launched workloads instead.
    #[arg(long)]
    seccomp: bool,
}

pub(crate) fn run(cmd: &PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Check { paths, host, strict, json } => check(paths, *host, *strict, *json),
        PolicyCommand::Apply { paths, json, socket } => {
            if let [dir] = paths.as_slice()
                && dir.join("MANIFEST").exists()
            {
                let path = std::fs::canonicalize(dir)?.display().to_string();
                return super::call(socket, &forge_agent::api::Request::PolicyApplyBundle { path }, *json);
            }
            let documents = super::run::read_documents(paths)?;
            super::call(socket, &forge_agent::api::Request::PolicyApply { documents }, *json)
        }
        PolicyCommand::Explain(a) => super::explain::run(a),
        PolicyCommand::Compile(a) => {
            let set = PolicySet::load(&a.paths)?;
            let c = compile_target(&set, &a.target)?;
            if a.seccomp {
                super::print_json(&forge_agent::policy::seccomp::profile(&c))?;
            } else {
                super::print_json(&dump(&c, a.dump))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Diff { old, new, target, json } => {
            let a = compile_target(&PolicySet::load(std::slice::from_ref(old))?, target)?;
            let b = compile_target(&PolicySet::load(std::slice::from_ref(new))?, target)?;
            let changes = diff(&dump(&a, true), &dump(&b, true), "");
            if *json {
                super::print_json(&changes)?;
            } else if changes.is_empty() {
                println!("no change");
            } else {
                for c in &changes {
                    println!("{c}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check(paths: &[PathBuf], host: bool, strict: bool, json: bool) -> anyhow::Result<ExitCode> {
    let mut docs = 0;
    let mut findings = match PolicySet::load(paths) {
        Ok(set) => {
            docs = set.docs.len();
            let mut f = set.check();
            if host {
                let statuses = forge_agent::ebpf::loader::probe()?;
                let on = |b: &str| statuses.iter().any(|s| s.backend == b && s.available);
                let active = forge_agent::ebpf::Active {
                    lsm: on("lsm"),
                    lsm_paths: on("lsm-paths"),
                    lsm_userns: on("lsm") && forge_agent::ebpf::loader::kernel_has_lsm_hook("userns_create"),
                    cgroup: on("cgroup"),
                    tracepoint: on("tracepoint"),
                };
                f.extend(set.check_backends(&active, strict));
            }
            f
        }
        Err(e) => e.0.0,
    };
    findings.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    let errors = findings.iter().filter(|d| d.severity == Severity::Error).count();
    if json {
        super::print_json(&serde_json::json!({"ok": errors == 0, "errors": errors, "findings": findings}))?;
    } else if findings.is_empty() {
        println!("ok: {docs} policy document(s) checked");
    } else {
        println!("{}", Diagnostics(findings.clone()));
        let notes = findings.iter().filter(|d| d.severity == Severity::Note).count();
        println!("{errors} error(s), {} warning(s), {notes} note(s)", findings.len() - errors - notes);
    }
    Ok(if errors == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn compile_target(set: &PolicySet, t: &TargetArgs) -> anyhow::Result<CompiledRecord> {
    let w = t.cgroup.as_deref().map_or_else(Workload::any, Workload::cgroup);
    let tier = match t.tier {
        Some(tier) => tier,
        None => set.initial_tier(&w)?,
    };
    Ok(set.compile_for(&w, tier, 1)?)
}

/// The record as JSON: what the map writer would write.
fn dump(c: &CompiledRecord, full: bool) -> serde_json::Value {
    use forge_agent::policy::compile::{CLASSES, class_name};
    let r = &c.record;
    let denied: Vec<String> = forge_agent::policy::syscalls::slots()
        .filter(|slot| r.syscall_denied(*slot).is_some())
        .map(forge_agent::policy::syscalls::slot_name)
        .collect();
    let word = |a: u8| if a == forge_common::verdict::ALLOW { "allow" } else { "deny" };
    let rule_name = |id: u32| {
        c.rule(id).map_or_else(|| format!("default ({id})"), |r| format!("{} ({})", r.name, r.source))
    };
    serde_json::json!({
        "policies": c.policy_name,
        "tier": c.tier,
        "quarantine": c.quarantine,
        "freeze": c.freeze,
        "mode": if r.mode == forge_common::mode::MONITOR { "monitor" } else { "enforce" },
        "self_protect": r.flags & forge_common::flags::SELF_PROTECT != 0,
        "defaults": CLASSES.iter().map(|(n, i)| ((*n).to_string(), serde_json::json!(word(r.defaults[*i as usize])))).collect::<serde_json::Map<_, _>>(),
        "net_rules": r.net[..r.net_count as usize].iter().map(|n| {
            let cidr = forge_agent::policy::net::describe(n);
            serde_json::json!(format!("{} {} {} ports {}-{} [{}]", word(n.action), ops_text(n.ops), cidr, n.port_lo, n.port_hi, rule_name(n.rule_id)))
        }).collect::<Vec<_>>(),
        "denied_syscalls": if full || denied.len() < 64 { serde_json::json!(denied) } else { serde_json::json!(format!("{} syscalls (--dump lists them)", denied.len())) },
        "paths": c.paths.iter().map(|p| serde_json::json!(format!(
            "{} {} {} [{}]",
            word(p.rule.action),
            class_name(p.op),
            String::from_utf8_lossy(&p.pattern).trim_end_matches('\0'),
            rule_name(p.rule.rule_id)
        ))).collect::<Vec<_>>(),
        "active_rules": c.active_rules.iter().map(|id| rule_name(*id)).collect::<Vec<_>>(),
    })
}

fn ops_text(ops: u8) -> String {
    (0..8u8)
        .filter(|b| ops & (1 << b) != 0)
        .map(forge_agent::policy::compile::class_name)
        .collect::<Vec<_>>()
        .join(",")
}

/// Line-level differences between two JSON values: `- old` / `+ new` per path.
fn diff(a: &serde_json::Value, b: &serde_json::Value, path: &str) -> Vec<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .flat_map(|k| {
                    diff(
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                        &format!("{path}/{k}"),
                    )
                })
                .collect()
        }
        (Value::Array(x), Value::Array(y)) => {
            let mut out = Vec::new();
            for v in x.iter().filter(|v| !y.contains(v)) {
                out.push(format!("- {path}: {v}"));
            }
            for v in y.iter().filter(|v| !x.contains(v)) {
                out.push(format!("+ {path}: {v}"));
            }
            out
        }
        _ if a == b => Vec::new(),
        _ => vec![format!("- {path}: {a}"), format!("+ {path}: {b}")],
    }
}
