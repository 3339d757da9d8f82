//! `forge doctor`.

use std::process::ExitCode;

use clap::Args;
use forge_agent::doctor;

#[derive(Args)]
pub(crate) struct DoctorArgs {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(a: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let r = doctor::gather();
    if a.json {
        super::print_json(&r)?;
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
    }
    Ok(if r.healthy() { ExitCode::SUCCESS } else { ExitCode::from(3) })
}
