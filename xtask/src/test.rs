//! `cargo xtask test` (the whole suite) and `cargo xtask demo`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{setup, vm};

#[derive(clap::Args, Default)]
pub(crate) struct TestArgs {
    /// Skip the QEMU guests (BPF-LSM tests); they are reported as not run.
    #[arg(long)]
    pub(crate) no_vm: bool,
    /// Kernels for the VM tests (default: 6.1 and 6.12).
    #[arg(long = "kernel")]
    pub(crate) kernels: Vec<String>,
    /// Make every backend this machine kind supports mandatory (default when CI is set):
    /// the host run requires tracepoint and cgroup, the guests also lsm.
    #[arg(long)]
    pub(crate) strict: bool,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

/// Host tests require these when strict (this host refuses BPF-LSM loads).
const HOST_REQUIRE: &str = "tracepoint,cgroup";
/// Guests boot with `lsm=...,bpf`: everything is required there.
const GUEST_REQUIRE: &str = "lsm,tracepoint,cgroup";

pub(crate) fn run(args: &TestArgs) -> anyhow::Result<()> {
    setup::run(&setup::SetupArgs::default())?;
    let strict = args.strict || std::env::var_os("CI").is_some();
    let require = std::env::var("FORGE_REQUIRE").ok().or_else(|| strict.then(|| HOST_REQUIRE.to_string()));

    println!("== unit and host integration tests (cargo test --workspace)");
    let mut test = cargo();
    test.args(["test", "--workspace", "--exclude", "forge-ebpf"]);
    if let Some(r) = &require {
        println!("   FORGE_REQUIRE={r}");
        test.env("FORGE_REQUIRE", r);
    }
    setup::run_cmd(&mut test, "cargo test")?;

    if args.no_vm {
        println!("== VM tests NOT RUN (--no-vm): the BPF-LSM paths were not proven by this run");
        return Ok(());
    }
    let binary = privileged_test_binary()?;
    let kernels: Vec<String> = if args.kernels.is_empty() {
        vm::DEFAULT_KERNELS.iter().map(|s| (*s).to_string()).collect()
    } else {
        args.kernels.clone()
    };
    let env = vec![("FORGE_REQUIRE".to_string(), GUEST_REQUIRE.to_string())];
    let mut failures = Vec::new();
    for kernel in &kernels {
        println!("== privileged tests in a QEMU guest: Debian {kernel} kernel, lsm=...,bpf");
        match vm::run_in_vm(kernel, &binary, &[], &env) {
            Ok(o) => {
                let summary = o
                    .output
                    .lines()
                    .rev()
                    .find(|l| l.starts_with("test result:"))
                    .unwrap_or("no test summary");
                println!(
                    "   {kernel}: {} boot(s), {:.1}s, kernel {}, LSMs {}: exit {} — {summary}",
                    o.boot_attempts, o.seconds, o.kernel_release, o.lsm, o.exit_code
                );
                if o.exit_code != 0 {
                    failures.push(format!(
                        "{kernel}: tests failed (exit {}); serial log {}",
                        o.exit_code,
                        o.log.display()
                    ));
                }
            }
            Err(e) => failures.push(format!("{kernel}: {e:#}")),
        }
    }
    if !failures.is_empty() {
        bail!("VM tests failed:\n  {}", failures.join("\n  "));
    }
    println!("== all tests passed (host and {} guest kernel(s))", kernels.len());
    Ok(())
}

/// Builds the privileged test binary and returns its path.
pub(crate) fn privileged_test_binary() -> anyhow::Result<PathBuf> {
    let out = cargo()
        .args(["test", "-p", "forge-tests", "--test", "privileged", "--no-run", "--message-format=json"])
        .output()
        .context("building the privileged test binary")?;
    if !out.status.success() {
        bail!("building the privileged test binary failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if msg["reason"] == "compiler-artifact"
            && msg["target"]["name"] == "privileged"
            && let Some(exe) = msg["executable"].as_str()
        {
            return Ok(PathBuf::from(exe));
        }
    }
    bail!("cargo did not report the privileged test executable")
}

pub(crate) fn demo() -> anyhow::Result<()> {
    setup::run(&setup::SetupArgs::default())?;
    setup::run_cmd(cargo().args(["build", "-p", "forge-agent", "--bin", "forge"]), "cargo build")?;
    let forge = workspace_root().join("target/debug/forge");
    setup::run_cmd(Command::new(&forge).arg("demo"), "forge demo")
}
