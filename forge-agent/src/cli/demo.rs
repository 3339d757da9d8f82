//! `forge demo`: the default policy on a demo cgroup, a workload that tries
//! denied operations, and what the kernel said about each.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::Args;
use forge_agent::{
    agent::{Agent, AgentOptions},
    cgroup::Cgroup,
    events::Verdict,
    explain::explain,
    policy::{DEFAULT_POLICY, DEFAULT_POLICY_NAME, Policy, compile},
    workload::{Action, run_action_in},
};

use super::{BackendArgs, print_json};

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
    /// bpffs directory for the demo's pins (kept apart from a running agent's).
    #[arg(long, default_value = "/sys/fs/bpf/forge-demo")]
    pin_root: std::path::PathBuf,
    /// cgroup (below the cgroup v2 mount) the demo governs.
    #[arg(long, default_value = "forge-demo")]
    cgroup: String,
    /// Leave the demo's programs pinned and the cgroup governed afterwards.
    #[arg(long)]
    keep: bool,
    #[command(flatten)]
    backends: BackendArgs,
}

#[derive(serde::Serialize)]
struct Step {
    description: &'static str,
    action: String,
    outcome: String,
    expected: &'static str,
}

pub(crate) fn run(a: &DemoArgs) -> anyhow::Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("forge demo loads eBPF programs and creates a cgroup: run it as root");
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(demo(a))
}

async fn demo(a: &DemoArgs) -> anyhow::Result<ExitCode> {
    let policy = Policy::from_yaml(DEFAULT_POLICY, DEFAULT_POLICY_NAME)?;
    let compiled = compile(&policy, DEFAULT_POLICY_NAME, 1)?;
    forge_agent::ebpf::Pins::new(&a.pin_root).remove_all().context("clearing the demo pin root")?;
    let mut agent = Agent::start(&AgentOptions {
        pin_root: a.pin_root.clone(),
        want: a.backends.want(),
        ring_bytes: None,
    })?;
    let active = agent.writer.handles().active;
    let statuses = agent.writer.handles().statuses.clone();
    let cgroup = Cgroup::create(&a.cgroup)?;
    agent.writer.govern(&cgroup, &compiled)?;

    if !a.json {
        println!(
            "ForgeOne demo: policy {DEFAULT_POLICY_NAME} governs cgroup {} (id {})",
            cgroup.path.display(),
            cgroup.id
        );
        for s in &statuses {
            let state = if s.available {
                "active".to_string()
            } else {
                format!("unavailable: {}", s.error.as_deref().unwrap_or("").lines().next().unwrap_or(""))
            };
            println!("  backend {:<10} {state}", s.backend);
        }
        println!();
    }

    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let allowed: SocketAddr = listener.local_addr()?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    let exe = std::env::current_exe()?;
    let mut plan: Vec<(&'static str, Action, &'static str)> = vec![
        ("connect to a local service", Action::Connect(allowed), "allowed"),
        (
            "connect to the cloud metadata endpoint",
            Action::Connect("169.254.169.254:80".parse()?),
            "denied (EPERM)",
        ),
        (
            "connect to the discard port on loopback",
            Action::Connect("127.0.0.1:9".parse()?),
            "denied (EPERM)",
        ),
    ];
    if active.lsm_paths {
        plan.push(("read /etc/shadow", Action::OpenRead("/etc/shadow".into()), "denied (EPERM)"));
    }
    plan.push((
        "unshare(CLONE_NEWUTS): a denied syscall",
        Action::Syscall("unshare".into()),
        "killed (SIGKILL)",
    ));

    let mut steps = Vec::new();
    for (description, action, expected) in plan {
        let outcome = run_action_in(&cgroup, &exe, &action)?;
        if !a.json {
            println!("workload: {description:<42} {action:<32} -> {outcome}");
        }
        steps.push(Step { description, action: action.to_string(), outcome: outcome.to_string(), expected });
    }
    let want_denials = steps.iter().filter(|s| s.expected != "allowed").count();
    let events = agent
        .collect_until(Duration::from_secs(3), |evs| {
            evs.iter().filter(|e| e.verdict != Verdict::Info).count() >= want_denials
        })
        .await;
    let explanations: Vec<_> =
        events.iter().filter(|e| e.verdict != Verdict::Info).map(|e| explain(e, Some(&compiled))).collect();
    let tracked = events.len() - explanations.len();
    let drops = agent.writer.drops()?;

    if a.json {
        print_json(&serde_json::json!({
            "policy": DEFAULT_POLICY_NAME,
            "cgroup": {"path": cgroup.path, "id": cgroup.id},
            "backends": statuses,
            "steps": steps,
            "decisions": explanations,
            "process_events": tracked,
            "ring_drops": drops,
        }))?;
    } else {
        println!();
        println!("What the kernel denied, and why:");
        for e in &explanations {
            println!("  - {e}");
        }
        if !active.lsm_paths {
            println!();
            println!(
                "File and exec rules need BPF LSM, which this kernel does not accept (see `forge doctor`);"
            );
            println!(
                "exec denies fall back to a kill at sched_process_exec. `cargo xtask vm-test` proves the LSM paths."
            );
        }
        println!();
        println!("{} process events tracked, {} ring-buffer drops.", tracked, drops);
    }

    if a.keep {
        if !a.json {
            println!(
                "--keep: {} stays governed; `forge reset --pin-root {}` ends it.",
                cgroup.path.display(),
                a.pin_root.display()
            );
        }
    } else {
        agent.writer.ungovern(cgroup.id)?;
        cgroup.destroy()?;
        agent.remove_pins()?;
    }
    Ok(ExitCode::SUCCESS)
}
