//! `forge policy check|compile`.

use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;
use forge_agent::policy::{Policy, compile};

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
    /// Parse, validate and compile policy files; report every error.
    Check {
        files: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Show the kernel record a policy compiles to.
    Compile {
        file: PathBuf,
        /// Print what would be written to the maps.
        #[arg(long)]
        dump: bool,
    },
}

pub(crate) fn run(cmd: &PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Check { files, json } => {
            let mut results = Vec::new();
            for f in files {
                let name = f.display().to_string();
                let outcome = std::fs::read_to_string(f)
                    .map_err(|e| format!("{name}: {e}"))
                    .and_then(|text| Policy::from_yaml(&text, &name).map_err(|e| e.to_string()))
                    .and_then(|p| compile(&p, &name, 1).map(|_| ()).map_err(|e| e.to_string()));
                results.push((name, outcome));
            }
            let failed = results.iter().filter(|(_, r)| r.is_err()).count();
            if *json {
                let v: Vec<_> = results
                    .iter()
                    .map(|(f, r)| serde_json::json!({"file": f, "ok": r.is_ok(), "error": r.as_ref().err()}))
                    .collect();
                super::print_json(&v)?;
            } else {
                for (f, r) in &results {
                    match r {
                        Ok(()) => println!("ok    {f}"),
                        Err(e) => println!("error {e}"),
                    }
                }
            }
            Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        PolicyCommand::Compile { file, dump } => {
            let name = file.display().to_string();
            let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            let c = compile(&Policy::from_yaml(&text, &name)?, &name, 1)?;
            let r = &c.record;
            let denied: Vec<String> = (0..forge_common::MAX_SYSCALLS)
                .filter(|nr| r.syscall_denied(*nr).is_some())
                .map(|nr| {
                    forge_agent::policy::syscalls::name(nr as u32).map_or(nr.to_string(), str::to_string)
                })
                .collect();
            let v = serde_json::json!({
                "policy": c.policy_name,
                "flags": r.flags,
                "mode": r.mode,
                "defaults": r.defaults,
                "net_rules": r.net[..r.net_count as usize].iter().map(|n| format!("{n:?}")).collect::<Vec<_>>(),
                "denied_syscalls": if *dump || denied.len() < 64 { serde_json::json!(denied) } else { serde_json::json!(format!("{} syscalls", denied.len())) },
                "paths": c.paths.iter().map(|p| serde_json::json!({"op": p.op, "pattern": String::from_utf8_lossy(&p.pattern).replace('\0', "$"), "rule": p.rule})).collect::<Vec<_>>(),
                "rules": c.rules,
            });
            super::print_json(&v)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
