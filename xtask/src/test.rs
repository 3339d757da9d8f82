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
    /// the host run requires tracepoint, cgroup, the Prometheus server, tmux and clang, the guests
    /// lsm, tracepoint and cgroup.
    #[arg(long)]
    pub(crate) strict: bool,
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

/// Host tests require these when strict (this host refuses BPF-LSM loads);
/// `prometheus` is the server `setup` installs for the metrics test, `tmux`
/// the terminal the `forge top` test drives; `nats-server` the fleet tests'
/// bus; `forge` is the agent binary `cargo test` builds next to the test
/// binaries.
const HOST_REQUIRE: &str = "tracepoint,cgroup,prometheus,tmux,clang,nats-server,forge";
/// Guests boot with `lsm=...,bpf`: every backend is required there. Their
/// initramfs has no Prometheus server, tmux, clang or nats-server, so the
/// metrics, `forge top`, C capsule and fleet tests are ignored there.
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
    let mut tally = Tally::default();
    run_counting(&mut test, &mut tally)?;

    println!("== fuzz targets, briefly");
    crate::fuzz::run(&crate::fuzz::FuzzArgs { seconds: 20 })?;

    if args.no_vm {
        println!("== VM tests NOT RUN (--no-vm): the BPF-LSM paths were not proven by this run");
        tally.print();
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
                o.output.lines().for_each(|l| tally.add_line(l));
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
    println!("== host and {} guest kernel(s) done", kernels.len());
    tally.print();
    if !failures.is_empty() {
        bail!("VM tests failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

/// Test counts summed over every `test result:` line (host and guests).
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else { return };
        for part in rest.split([';', '.']) {
            let mut words = part.split_whitespace();
            if let (Some(n), Some(what)) = (words.next().and_then(|n| n.parse::<u64>().ok()), words.next()) {
                match what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    "ignored" => self.ignored += n,
                    _ => {}
                }
            }
        }
    }

    fn print(&self) {
        println!("{} passed, {} failed, {} skipped", self.passed, self.failed, self.ignored);
    }
}

/// Runs `cmd`, echoing its stdout while counting its test results.
fn run_counting(cmd: &mut Command, tally: &mut Tally) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().context("starting cargo test")?;
    let out = child.stdout.take().context("cargo test stdout")?;
    for line in std::io::BufReader::new(out).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        tally.add_line(&line);
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        tally.print();
        bail!("cargo test failed: {status}");
    }
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

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn tally_sums_cargo_test_summaries() {
        let mut t = Tally::default();
        t.add_line(
            "test result: ok. 8 passed; 0 failed; 4 ignored; 0 measured; 0 filtered out; finished in 2.56s",
        );
        t.add_line("[6.1] ignored noise");
        t.add_line("test result: FAILED. 20 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out");
        assert_eq!((t.passed, t.failed, t.ignored), (28, 1, 4));
    }
}
