//! `forge doctor`.

use std::process::ExitCode;

use clap::Args;
use forge_agent::{doctor, integrity::policy};

#[derive(Args)]
pub(crate) struct DoctorArgs {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pins: super::PinArgs,
    /// The agent's data directory (its traces are verified).
    #[arg(long, env = "FORGE_DATA_DIR", default_value = forge_agent::dna::DEFAULT_DATA_DIR)]
    data_dir: std::path::PathBuf,
    /// The agent's public key for trace checkpoints (default `<data-dir>/agent.pub`).
    #[arg(long, value_name = "PUBKEY")]
    key: Option<std::path::PathBuf>,
    /// The running agent's API socket, asked where its policy came from.
    #[arg(long, default_value = forge_agent::api::DEFAULT_SOCKET)]
    socket: std::path::PathBuf,
    /// Check the signers of the policy in force against this trust config
    /// (default: the one the agent reports).
    #[arg(long, value_name = "FILE")]
    trust: Option<std::path::PathBuf>,
}

/// Exit codes: 0 healthy, 3 no enforcement backend, 4 integrity problems
/// (an unverified policy in strict mode among them).
pub(crate) fn run(a: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let r = doctor::gather();
    let key = a.key.as_deref().map(forge_agent::sign::PublicKey::load).transpose()?;
    let trust = a.trust.as_deref().map(forge_agent::sign::trust::TrustConfig::load).transpose()?;
    let trust = trust.as_ref().map(policy::TrustSummary::of);
    let integrity = forge_agent::integrity::check(&a.pins.pin_root, &r.tags, &a.data_dir, key)
        .with_policy(policy::check_agent(&a.socket, trust.as_ref()));
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["integrity"] = serde_json::to_value(&integrity)?;
        v["healthy"] = serde_json::json!(r.healthy() && integrity.problems.is_empty());
        super::print_json(&v)?;
    } else {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        println!("kernel           {}", r.kernel);
        println!("BTF              {}", yes_no(r.btf));
        println!("cgroup v2        {}", r.cgroup2_mount.as_deref().unwrap_or("not mounted"));
        println!(
            "bpffs            {}",
            if r.bpffs_mounted { "mounted" } else { "not mounted (the agent mounts it)" }
        );
        println!("LSM list         {}", r.lsm_list.as_deref().unwrap_or("unreadable"));
        println!("bpf in LSM list  {}", yes_no(r.bpf_in_lsm_list));
        println!(
            "escapes killed   {}",
            if r.kill_other_task_in_kernel {
                "in the kernel, before they run (bpf_send_signal_task)"
            } else {
                "by the agent after they start, unless BPF LSM refuses them (no bpf_send_signal_task)"
            }
        );
        println!();
        println!("{:<12} {:<10} detail", "backend", "available");
        for b in &r.backends {
            let detail = b.error.as_deref().unwrap_or("loads");
            let first = detail.lines().next().unwrap_or("");
            println!("{:<12} {:<10} {first}", b.backend, yes_no(b.available));
            for line in detail.lines().skip(1) {
                println!("{:<23} {line}", "");
            }
        }
        if let Some(e) = &r.probe_error {
            println!("probe failed: {e}");
        }
        print_integrity(&integrity);
    }
    Ok(if !r.healthy() {
        ExitCode::from(3)
    } else if !integrity.problems.is_empty() {
        ExitCode::from(4)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_integrity(i: &forge_agent::integrity::Integrity) {
    println!();
    if i.pinned {
        let matching = i.programs.iter().filter(|p| p.matches).count();
        println!(
            "pinned state     {}: {} programs, {matching} match the embedded object",
            i.pin_root.display(),
            i.programs.len()
        );
        let attached = i.links.iter().filter(|l| l.ok()).count();
        println!("links            {attached} of {} expected are pinned and attached", i.links.len());
    } else {
        println!("pinned state     none at {} (no agent has loaded)", i.pin_root.display());
    }
    let ok = i.traces.iter().filter(|t| t.ok).count();
    let key = i.trace_key.as_deref().unwrap_or("each checkpoint's own key (no agent.pub)");
    println!("traces           {} of {} verify, against {key}", ok, i.traces.len());
    println!("clocks           {}", if i.clock.ok { "sane" } else { "NOT sane" });
    if let Some(p) = &i.policy {
        let mode = match p.strict {
            Some(true) => ", strict mode",
            Some(false) => ", not strict",
            None => "",
        };
        let signed = match p.signed {
            policy::Signed::Verified => "signed",
            policy::Signed::Unverified => "NOT verified",
            policy::Signed::Unsigned => "UNSIGNED",
            policy::Signed::Unknown => "not checked",
        };
        println!("policy in force  {signed}{mode}: {}", p.detail);
    }
    for w in &i.warnings {
        println!("WARNING          {w}");
    }
    if i.problems.is_empty() {
        println!("integrity        ok");
    } else {
        for p in &i.problems {
            println!("PROBLEM          {p}");
        }
    }
}
