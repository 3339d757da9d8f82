//! `forge agent run --config forge.toml` (the real binary) on SIGTERM:
//! exits 0, says that enforcement stays pinned, leaves it pinned and
//! enforcing, and leaves its traces signed and closed.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use forge_agent::{
    cgroup::Cgroup,
    dna::{self, VerifyOptions},
    ebpf::Pins,
    sign::PublicKey,
    workload::{Action, run_action_in},
};
use forge_tests::{EPERM, check, expect, fail};
use libtest_mimic::Failed;

use crate::free_port;

/// The `forge` binary next to this test's directory (`target/<profile>/forge`).
pub(crate) fn forge_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent().map(|d| d.join("forge")))
        .unwrap_or_else(|| PathBuf::from("target/debug/forge"))
}

pub(crate) fn sigterm_leaves_enforcement_pinned() -> Result<(), Failed> {
    let id = std::process::id();
    let dir = PathBuf::from(format!("/tmp/forge-test-{id}-sigterm"));
    let pin_root = PathBuf::from(format!("/sys/fs/bpf/forge-test-{id}-sigterm"));
    let cg_name = format!("forge-test/{id}-sigterm");
    std::fs::create_dir_all(&dir).map_err(fail)?;
    let port = free_port("127.0.0.1:0")?;
    let policy = dir.join("p.yaml");
    std::fs::write(
        &policy,
        format!(
            "apiVersion: forgeone.dev/v1alpha1\nkind: Policy\nmetadata: {{name: sigterm}}\nspec:\n  selector: {{cgroups: [forge-test/*]}}\n  defaults: {{exec: allow, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, net.unix: allow, syscall: allow}}\n  rules:\n    - {{name: no-port, op: net.connect, action: deny, cidrs: [127.0.0.1/32], ports: {port}}}\n"
        ),
    )
    .map_err(fail)?;
    let socket = dir.join("agent.sock");
    let data = dir.join("data");
    // Everything from forge.toml (relative paths follow the file).
    let config = dir.join("forge.toml");
    std::fs::write(
        &config,
        format!(
            "pin_root = {pin:?}\nbackends = [\"cgroup\", \"tracepoint\"]\npolicies = [\"p.yaml\"]\ngovern = [{cg_name:?}]\nsocket = \"agent.sock\"\ndata_dir = \"data\"\n",
            pin = pin_root.display().to_string()
        ),
    )
    .map_err(fail)?;
    let result = (|| {
        let mut child = Command::new(forge_binary())
            .args(["agent", "run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(fail)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() && Instant::now() < deadline && child.try_wait().map_err(fail)?.is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        check!(socket.exists(), "the agent did not start serving its API");
        let cgroup = Cgroup::resolve(&cg_name).map_err(fail)?;
        let exe = std::env::current_exe().map_err(fail)?;
        let target = format!("127.0.0.1:{port}").parse().map_err(fail)?;
        expect(
            "connect while the agent runs",
            run_action_in(&cgroup, &exe, &Action::Connect(target)).map_err(fail)?,
            EPERM,
        )?;

        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(child.id()).map_err(fail)?),
            nix::sys::signal::SIGTERM,
        )
        .map_err(fail)?;
        let out = child.wait_with_output().map_err(fail)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        check!(out.status.success(), "exit status {} on SIGTERM: {stderr}", out.status);
        check!(stderr.contains("enforcement stays pinned under"), "it does not say so: {stderr}");
        check!(Pins::new(&pin_root).map(forge_common::map_name::CONFIG).exists(), "pins removed");
        expect(
            "connect after the agent stopped",
            run_action_in(&cgroup, &exe, &Action::Connect(target)).map_err(fail)?,
            EPERM,
        )?;
        let key = PublicKey::load(&data.join("agent.pub")).map_err(fail)?;
        let trace = data.join("traces").join(format!("cgroup-{}.dna", cgroup.id));
        let r = dna::verify_file(&trace, &VerifyOptions { trusted_key: Some(key) }).map_err(fail)?;
        check!(r.ok && r.unsigned_tail == 0, "trace not closed cleanly: {r:?}");
        Ok(())
    })();
    let _ = Pins::new(&pin_root).remove_all();
    if let Ok(cg) = Cgroup::resolve(&cg_name) {
        let _ = cg.destroy();
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}
