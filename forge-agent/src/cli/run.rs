//! `forge agent run`.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use forge_agent::{
    agent::{Agent, AgentOptions},
    cgroup::Cgroup,
    explain::explain,
    policy::{CompiledRecord, Policy, compile},
};
use tokio::signal::unix::{SignalKind, signal};

use super::{BackendArgs, PinArgs};

#[derive(Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pins: PinArgs,
    #[command(flatten)]
    backends: BackendArgs,
    /// Govern a cgroup with a policy file: `CGROUP=POLICY.yaml` (CGROUP is
    /// relative to the cgroup v2 mount, or absolute). Repeatable.
    #[arg(long, value_name = "CGROUP=POLICY")]
    govern: Vec<String>,
    /// Print decision events as JSON lines on stdout.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(a: &RunArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(agent(a))
}

async fn agent(a: &RunArgs) -> anyhow::Result<ExitCode> {
    let mut compiled: Vec<(Cgroup, CompiledRecord)> = Vec::new();
    for spec in &a.govern {
        let (cg, file) =
            spec.split_once('=').with_context(|| format!("--govern {spec:?}: expected CGROUP=POLICY"))?;
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
        let policy = Policy::from_yaml(&text, file)?;
        let c = compile(&policy, file, 1)?;
        let cgroup = Cgroup::resolve(cg).or_else(|_| Cgroup::create(cg))?;
        compiled.push((cgroup, c));
    }
    let mut agent =
        Agent::start(&AgentOptions { pin_root: a.pins.pin_root.clone(), want: a.backends.want() })?;
    let h = agent.writer.handles();
    tracing::info!(
        adopted = h.adopted,
        lsm = h.active.lsm,
        cgroup = h.active.cgroup,
        tracepoint = h.active.tracepoint,
        "agent started"
    );
    for (cgroup, c) in &compiled {
        agent.writer.govern(cgroup, c)?;
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            r = agent.events.read_batch(&mut batch) => {
                r.context("reading events")?;
                for ev in batch.drain(..) {
                    let rec = compiled.iter().find(|(cg, _)| cg.id == ev.cgroup_id).map(|(_, c)| c);
                    if a.json {
                        println!("{}", serde_json::to_string(&explain(&ev, rec))?);
                    } else {
                        println!("{}", explain(&ev, rec));
                    }
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    eprintln!(
        "forge: stopping; enforcement stays pinned under {} (fail-closed). `forge reset` removes it.",
        a.pins.pin_root.display()
    );
    Ok(ExitCode::SUCCESS)
}
