//! The command line. The only place that prints to stdout.
#![allow(clippy::print_stdout, reason = "the CLI's output layer")]

mod demo;
mod doctor;
mod explain;
mod fleet;
mod pkg;
mod policy;
mod run;
mod sign;
mod top;
mod trace;

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand, ValueEnum};
use forge_agent::{
    api::Request,
    ebpf::{Pins, Want, pins::DEFAULT_ROOT},
};

#[derive(Parser)]
#[command(
    name = "forge",
    version,
    about = "ForgeOne: per-cgroup enforcement in the kernel (BPF LSM, cgroup hooks, syscall tracepoints)",
    long_about = "ForgeOne loads eBPF programs that decide, per cgroup, whether an exec, a file open, \
a connect/bind/sendto or a syscall is allowed, from policies you write in YAML. \
Decisions other than a plain allow are reported as events.\n\n\
Start with `forge doctor` (what this kernel supports), then `forge demo`."
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
pub(crate) struct LogArgs {
    /// Log filter, e.g. `info`, `forge_agent=debug` (also RUST_LOG).
    #[arg(long, global = true, env = "FORGE_LOG", default_value = "warn")]
    pub(crate) log_level: String,
    /// Log as JSON lines on stderr.
    #[arg(long, global = true)]
    pub(crate) log_json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Report kernel features and which enforcement backends load here.
    Doctor(doctor::DoctorArgs),
    /// Govern a demo cgroup with the default policy, run a workload that
    /// tries denied operations, and show what was denied and why.
    Demo(demo::DemoArgs),
    /// Run the agent.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// Check, compile, bundle, sign and verify policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Wasm capsules: build, sign, verify, inspect, run and replay .forgepkg files.
    Pkg {
        #[command(subcommand)]
        command: pkg::PkgCommand,
    },
    /// Fleet (NATS JetStream): publish signed bundles to every agent,
    /// release identities fleet-wide, read the signed history.
    Fleet {
        #[command(subcommand)]
        command: fleet::FleetCommand,
    },
    /// Generate signing keys for policy bundles and capsules.
    Key {
        #[command(subcommand)]
        command: sign::KeyCommand,
    },
    /// Show, verify, export and replay a workload's execution trace (hash-chained, signed).
    Trace {
        #[command(subcommand)]
        command: trace::TraceCommand,
    },
    /// Explain a workload from its trace in a few lines: what it did, which
    /// rules decided, its tier, what the agent did, what you can do. One
    /// record with `--record N`, the last quarantine with `--quarantine`.
    /// `--json` is compact, for a SIEM or a language model.
    Explain(trace::ExplainArgs),
    /// Remove all pinned ForgeOne state: enforcement ends for every cgroup.
    Reset {
        #[command(flatten)]
        pins: PinArgs,
        /// Print `{"removed": PIN_ROOT}`.
        #[arg(long)]
        json: bool,
    },
    /// Ask the running agent for its state: backends, governed workloads, counters.
    Status {
        #[command(flatten)]
        socket: SocketArgs,
        #[arg(long)]
        json: bool,
    },
    /// A live view of the running agent: per workload its tier, policy
    /// generation, decisions and denials per second, lost events and trace
    /// records. q quits, s changes the sort. `--once` prints one table.
    Top(top::TopArgs),
    /// Ask the running agent to govern a cgroup with what its policy set says.
    ///
    /// The whole subtree below it is governed with it, including cgroups
    /// made later. If the cgroup is removed and made again at the same path,
    /// the agent governs the new one as it was. `DIR/*` governs every cgroup
    /// directly below DIR, now and as they appear.
    #[command(
        after_help = "Examples:\n  forge govern system.slice/nginx.service\n  forge govern 'kubepods.slice/*'"
    )]
    Govern {
        /// A cgroup, relative to the cgroup v2 mount (or absolute; made if
        /// missing), or a selector `DIR/*`.
        cgroup: String,
        /// Print the agent's answer as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Ask the running agent to stop governing a cgroup (or drop a `DIR/*`
    /// selector, or a workload waiting for its cgroup to be made again).
    Ungovern {
        cgroup: String,
        /// Print the agent's answer as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Set a workload's trust tier (audited; the only way trust goes back up).
    TrustSet {
        cgroup: String,
        tier: forge_agent::policy::Tier,
        #[arg(long, env = "USER", default_value = "operator")]
        actor: String,
        #[arg(long, default_value = "operator decision")]
        reason: String,
        /// Print the agent's answer as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Quarantine a workload now: redzone policy, frozen if its policy says so.
    Quarantine {
        cgroup: String,
        #[arg(long, env = "USER", default_value = "operator")]
        actor: String,
        #[arg(long, default_value = "operator decision")]
        reason: String,
        /// Print the agent's answer as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Release a quarantined or escalated workload: thaw it, restore its previous policy.
    Release {
        cgroup: String,
        #[arg(long, env = "USER", default_value = "operator")]
        actor: String,
        /// Print the agent's answer as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Show the audit log: trust changes, quarantines, releases and why.
    Audit {
        /// Print the agent's answer as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArgs,
    },
}

#[derive(Args, Clone)]
pub(crate) struct SocketArgs {
    /// The agent's API socket.
    #[arg(long, default_value = forge_agent::api::DEFAULT_SOCKET)]
    pub(crate) socket: PathBuf,
}

/// `forge policy`: check and compile (policy.rs); bundles, sign, verify (sign.rs).
#[derive(Subcommand)]
enum PolicyCommand {
    #[command(flatten)]
    Check(policy::PolicyCommand),
    #[command(flatten)]
    Bundle(sign::BundleCommand),
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Load (or adopt) the kernel programs, govern cgroups, log decisions.
    Run(Box<run::RunArgs>),
}

#[derive(Args, Clone)]
pub(crate) struct PinArgs {
    /// bpffs directory for ForgeOne's pinned programs, links and maps.
    #[arg(long, default_value = DEFAULT_ROOT)]
    pub(crate) pin_root: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Backend {
    Lsm,
    Cgroup,
    Tracepoint,
}

#[derive(Args, Clone)]
pub(crate) struct BackendArgs {
    /// Use only these backends (default: all this kernel accepts).
    #[arg(long, value_delimiter = ',')]
    pub(crate) backends: Vec<Backend>,
}

impl BackendArgs {
    pub(crate) fn want(&self) -> Want {
        if self.backends.is_empty() {
            return Want::default();
        }
        let has = |b| Some(self.backends.contains(&b));
        Want { lsm: has(Backend::Lsm), cgroup: has(Backend::Cgroup), tracepoint: has(Backend::Tracepoint) }
    }
}

pub(crate) fn init_tracing(log: &LogArgs) {
    forge_agent::telemetry::logging::init(&log.log_level, log.log_json);
}

/// Exit codes: 0 ok, 1 failure, 2 usage (clap), 3 unhealthy (doctor).
pub(crate) fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Doctor(a) => doctor::run(&a),
        Command::Demo(a) => demo::run(&a),
        Command::Agent { command: AgentCommand::Run(a) } => run::run(&a),
        Command::Policy { command: PolicyCommand::Check(c) } => policy::run(&c),
        Command::Policy { command: PolicyCommand::Bundle(c) } => sign::run_bundle(&c),
        Command::Pkg { command } => pkg::run(&command),
        Command::Fleet { command } => fleet::run(&command),
        Command::Key { command } => sign::run_key(&command),
        Command::Trace { command } => trace::run(&command),
        Command::Explain(a) => trace::explain(&a),
        Command::Reset { pins, json } => reset(&pins, json),
        Command::Status { socket, json } => call(&socket, &Request::Status, json),
        Command::Top(a) => top::run(&a),
        Command::Govern { cgroup, json, socket } => call(&socket, &Request::Govern { cgroup }, json),
        Command::Ungovern { cgroup, json, socket } => call(&socket, &Request::Ungovern { cgroup }, json),
        Command::TrustSet { cgroup, tier, actor, reason, json, socket } => {
            call(&socket, &Request::TrustSet { cgroup, tier, actor, reason }, json)
        }
        Command::Quarantine { cgroup, actor, reason, json, socket } => {
            call(&socket, &Request::Quarantine { cgroup, actor, reason }, json)
        }
        Command::Release { cgroup, actor, json, socket } => {
            call(&socket, &Request::Release { cgroup, actor }, json)
        }
        Command::Audit { json, socket } => call(&socket, &Request::Audit, json),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("forge: error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, `a: b: c`, leaving out a cause
/// whose text the message before it already shows (many errors here name
/// their cause in their own message).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// One API call; prints the result (JSON, or a short text form for status).
pub(crate) fn call(socket: &SocketArgs, req: &Request, json: bool) -> anyhow::Result<ExitCode> {
    let v = match forge_agent::api::client::call(&socket.socket, req) {
        Ok(v) => v,
        Err(forge_agent::api::client::ClientError::Api(e)) => {
            eprintln!("forge: the agent refused ({:?}): {}", e.code, e.message);
            for d in e.details.as_ref().and_then(|d| d.as_array()).into_iter().flatten() {
                eprintln!(
                    "  {}:{}:{}: {}: {}",
                    d["file"].as_str().unwrap_or("?"),
                    d["line"],
                    d["column"],
                    d["severity"].as_str().unwrap_or("error"),
                    d["message"].as_str().unwrap_or("")
                );
            }
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        print_json(&v)?;
    } else if !matches!(req, Request::Status) {
        for line in text_lines(&v) {
            println!("{line}");
        }
    } else {
        println!("agent pid {} (adopted pinned state: {})", v["pid"], v["adopted"]);
        println!("backends: {}", v["backends"]);
        for g in v["governed"].as_array().into_iter().flatten() {
            let frozen = if g["frozen"] == true { ", FROZEN" } else { "" };
            println!(
                "governed {} (id {}): policies {}, tier {}{frozen}, generation {}, {} events lost",
                g["cgroup"], g["id"], g["policies"], g["tier"], g["generation"], g["lost_events"]
            );
            if let Some(path) = g["trace"]["path"].as_str() {
                println!("  trace {path} ({} records)", g["trace"]["records"]);
            }
            if let Some(prev) = g["previous_ids"].as_array().filter(|p| !p.is_empty()) {
                let ids: Vec<String> = prev.iter().map(ToString::to_string).collect();
                println!("  its cgroup was made again; earlier ids {}", ids.join(", "));
            }
        }
        for w in v["waiting_for_cgroup"].as_array().into_iter().flatten() {
            println!(
                "waiting  {} (was id {}, tier {}): governed again when it is made again",
                w["cgroup"], w["old_id"], w["tier"]
            );
        }
        for sel in v["selectors"].as_array().into_iter().flatten() {
            println!("selector {sel}: the cgroups below it are governed as they appear");
        }
        let links = &v["links"];
        let problems = links["problems"].as_array().map_or(0, Vec::len);
        println!("links: {} expected, {problems} with a problem", links["expected"]);
        for l in links["problems"].as_array().into_iter().flatten() {
            println!("  {} ({}): {}", l["name"], l["pin"], l["problem"]);
        }
        println!("ring drops: {}, undecodable events: {}", v["ring_drops"], v["decode_errors"]);
        if let Some(t) = v["traces"].as_object()
            && t["errors"] != 0
        {
            println!("trace write errors: {} (last: {})", t["errors"], t["last_error"]);
        }
        println!("events by hook: {}", v["events_by_hook"]);
        if let Some(f) = v["fleet"].as_object() {
            let c = &f["counts"];
            println!(
                "fleet: node {} on {} ({}), rule {}; bundles applied {} refused {}; records admitted {} refused {} published {}; partitions {}",
                f["node"].as_str().unwrap_or_default(),
                f["nats"].as_str().unwrap_or_default(),
                if f["connected"] == true { "connected" } else { "NOT CONNECTED" },
                f["rule"].as_str().unwrap_or_default(),
                c["bundles_applied"],
                c["bundles_refused"],
                c["records_admitted"],
                c["records_refused"],
                c["records_published"],
                c["partitions"]
            );
            for e in f["identities"].as_array().into_iter().flatten() {
                let id = &e["identity"];
                let name = id["digest"].as_str().map_or_else(
                    || format!("cgroup:{}", id["cgroup"].as_str().unwrap_or_default()),
                    String::from,
                );
                println!(
                    "  {name}: {} by {} ({})",
                    e["tier"].as_str().unwrap_or_default(),
                    e["by"],
                    e["reason"]
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A plain-text form of an answer: `key: value` per field of an object,
/// one line of `key=value` pairs per object of a list.
fn text_lines(v: &serde_json::Value) -> Vec<String> {
    use serde_json::Value;
    let scalar = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let pairs = |o: &serde_json::Map<String, Value>| {
        o.iter().map(|(k, v)| format!("{k}={}", scalar(v))).collect::<Vec<_>>().join(" ")
    };
    match v {
        Value::Object(o) => o
            .iter()
            .flat_map(|(k, v)| match v {
                Value::Array(items) if items.iter().all(Value::is_object) && !items.is_empty() => {
                    let mut lines = vec![format!("{k}:")];
                    lines
                        .extend(items.iter().filter_map(Value::as_object).map(|o| format!("  {}", pairs(o))));
                    lines
                }
                Value::Object(inner) => vec![format!("{k}: {}", pairs(inner))],
                other => vec![format!("{k}: {}", scalar(other))],
            })
            .collect(),
        Value::Array(items) if items.is_empty() => vec!["(none)".into()],
        Value::Array(items) => {
            items.iter().map(|i| i.as_object().map_or_else(|| scalar(i), &pairs)).collect()
        }
        other => vec![scalar(other)],
    }
}

fn reset(a: &PinArgs, json: bool) -> anyhow::Result<ExitCode> {
    Pins::new(&a.pin_root).remove_all()?;
    if json {
        print_json(&serde_json::json!({"removed": a.pin_root}))?;
    } else {
        println!("removed {}", a.pin_root.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints `value` as pretty JSON.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cause_already_in_the_message_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        let e = anyhow::Error::new(forge_agent::config::ConfigError::Io {
            path: "/etc/forge.toml".into(),
            source: io,
        })
        .context("--config");
        assert_eq!(
            super::error_chain(&e),
            "--config: /etc/forge.toml: No such file or directory (os error 2)"
        );
    }
}
