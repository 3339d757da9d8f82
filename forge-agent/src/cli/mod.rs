//! The command line. The only place that prints to stdout.
#![allow(clippy::print_stdout, reason = "the CLI's output layer")]

mod demo;
mod doctor;
mod explain;
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
    Reset(PinArgs),
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
    Govern {
        cgroup: String,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Ask the running agent to stop governing a cgroup.
    Ungovern {
        cgroup: String,
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
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Release a quarantined or escalated workload: thaw it, restore its previous policy.
    Release {
        cgroup: String,
        #[arg(long, env = "USER", default_value = "operator")]
        actor: String,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Show the audit log: trust changes, quarantines, releases and why.
    Audit {
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
        Command::Key { command } => sign::run_key(&command),
        Command::Trace { command } => trace::run(&command),
        Command::Explain(a) => trace::explain(&a),
        Command::Reset(a) => reset(&a),
        Command::Status { socket, json } => call(&socket, &Request::Status, json),
        Command::Top(a) => top::run(&a),
        Command::Govern { cgroup, socket } => call(&socket, &Request::Govern { cgroup }, true),
        Command::Ungovern { cgroup, socket } => call(&socket, &Request::Ungovern { cgroup }, true),
        Command::TrustSet { cgroup, tier, actor, reason, socket } => {
            call(&socket, &Request::TrustSet { cgroup, tier, actor, reason }, true)
        }
        Command::Quarantine { cgroup, actor, reason, socket } => {
            call(&socket, &Request::Quarantine { cgroup, actor, reason }, true)
        }
        Command::Release { cgroup, actor, socket } => {
            call(&socket, &Request::Release { cgroup, actor }, true)
        }
        Command::Audit { socket } => call(&socket, &Request::Audit, true),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("forge: error: {e:#}");
            ExitCode::FAILURE
        }
    }
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
    if json || !matches!(req, Request::Status) {
        print_json(&v)?;
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
        }
        println!("ring drops: {}, undecodable events: {}", v["ring_drops"], v["decode_errors"]);
        if let Some(t) = v["traces"].as_object()
            && t["errors"] != 0
        {
            println!("trace write errors: {} (last: {})", t["errors"], t["last_error"]);
        }
        println!("events by hook: {}", v["events_by_hook"]);
    }
    Ok(ExitCode::SUCCESS)
}

fn reset(a: &PinArgs) -> anyhow::Result<ExitCode> {
    Pins::new(&a.pin_root).remove_all()?;
    println!("removed {}", a.pin_root.display());
    Ok(ExitCode::SUCCESS)
}

/// Prints `value` as pretty JSON.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
