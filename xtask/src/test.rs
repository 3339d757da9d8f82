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
    /// Only the QEMU guests: no unit, host or fuzz runs (the privileged test binary is built).
    #[arg(long, conflicts_with = "no_vm")]
    pub(crate) vm_only: bool,
    /// Kernels for the VM tests, repeatable (default: the matrix: 6.1, 6.12, 5.10, and 5.10
    /// with its default LSM list).
    #[arg(long = "kernel")]
    pub(crate) kernels: Vec<String>,
    /// LSM list of the guests: bpf or default (see `cargo xtask vm-test --help`).
    #[arg(long, value_enum)]
    pub(crate) lsm: Option<vm::Lsm>,
    /// Make every backend and program this machine kind supports mandatory on the host
    /// (default when CI is set): tracepoint, cgroup, prometheus, tmux, clang, nats-server,
    /// forge. The guests always require theirs.
    #[arg(long)]
    pub(crate) strict: bool,
    /// Run the whole suite in every guest. By default only the primary guest (6.12 with BPF
    /// LSM) does; the others run the kernel-facing tests (`FORGE_TESTS=kernel`: the
    /// agent-side tests, the same on every kernel, are reported ignored there), and a guest
    /// whose BPF LSM is inert (`--lsm default`) only those whose outcome depends on BPF LSM
    /// (`FORGE_TESTS=lsm-inert`), which keeps the matrix within CI time under software
    /// emulation.
    #[arg(long)]
    pub(crate) full_guests: bool,
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").to_path_buf()
}

pub(crate) fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

/// Host tests require these when strict (this host refuses BPF-LSM loads);
/// `prometheus` is the server `setup` installs for the metrics test, `tmux`
/// the terminal the `forge top` test drives; `nats-server` the fleet tests'
/// bus; `forge` is the agent binary `cargo test` builds next to the test
/// binaries.
/// `signal-task`: this host's kernel (6.18) kills an escaped child from the
/// hook itself (the `bpf_send_signal_task` kfunc, 6.13+).
const HOST_REQUIRE: &str = "tracepoint,cgroup,signal-task,prometheus,tmux,clang,nats-server,forge";
/// Programs the guests run from the host's /usr (shared read-only) and the
/// forge binary from the shared target directory: required in every guest.
const GUEST_PROGRAMS: &str = "prometheus,tmux,clang,nats-server,forge";

/// What the privileged suite must find in `guest`: `FORGE_REQUIRE`, and
/// `FORGE_EXPECT_UNAVAILABLE` for the backends that must be reported
/// unavailable. With `lsm=...,bpf` every backend is required, but on 5.10
/// the LSM path hooks, which need `bpf_d_path` in LSM programs (5.11+), must
/// be reported unavailable. With the kernel's default LSM list (5.10: no
/// `bpf`) BPF LSM must be reported unavailable, and the fallbacks (cgroup
/// hooks, tracepoints) are required.
pub(crate) fn guest_env(guest: &vm::Guest) -> Vec<(String, String)> {
    let old = guest.kernel == "5.10";
    match guest.lsm {
        vm::Lsm::Bpf if old => vec![
            ("FORGE_REQUIRE".to_owned(), format!("lsm,tracepoint,cgroup,{GUEST_PROGRAMS}")),
            ("FORGE_EXPECT_UNAVAILABLE".to_owned(), "lsm-paths".to_owned()),
        ],
        vm::Lsm::Bpf => {
            vec![("FORGE_REQUIRE".to_owned(), format!("lsm,lsm-paths,tracepoint,cgroup,{GUEST_PROGRAMS}"))]
        }
        vm::Lsm::Default => vec![
            ("FORGE_REQUIRE".to_owned(), format!("tracepoint,cgroup,{GUEST_PROGRAMS}")),
            ("FORGE_EXPECT_UNAVAILABLE".to_owned(), "lsm,lsm-paths".to_owned()),
        ],
    }
}

/// Whether the guest's active LSM list (`/sys/kernel/security/lsm`) is
/// the one its mode asks for: `bpf` in it exactly when booted with `lsm=...,bpf`.
fn lsm_list_matches(lsm: vm::Lsm, list: &str) -> bool {
    list.split(',').any(|l| l.trim() == "bpf") == (lsm == vm::Lsm::Bpf)
}

pub(crate) fn run(args: &TestArgs) -> anyhow::Result<()> {
    setup::run(&setup::SetupArgs::default())?;
    let strict = args.strict || std::env::var_os("CI").is_some();
    let require = std::env::var("FORGE_REQUIRE").ok().or_else(|| strict.then(|| HOST_REQUIRE.to_string()));

    let mut tally = Tally::default();
    if args.vm_only {
        println!("== unit, host and fuzz runs NOT RUN (--vm-only)");
    } else {
        println!("== unit and host integration tests (cargo test --workspace)");
        let mut test = cargo();
        test.args(["test", "--workspace", "--exclude", "forge-ebpf"]);
        if let Some(r) = &require {
            println!("   FORGE_REQUIRE={r}");
            test.env("FORGE_REQUIRE", r);
        }
        run_counting(&mut test, &mut tally)?;

        println!("== fuzz targets, briefly");
        crate::fuzz::run(&crate::fuzz::FuzzArgs { seconds: 20 })?;

        println!("== benchmarks, smoke run: each runs briefly and its report rows are checked");
        crate::bench::run(&crate::bench::BenchArgs { seconds: 0, smoke: true })?;
    }

    if args.no_vm {
        println!("== VM tests NOT RUN (--no-vm): the BPF-LSM paths were not proven by this run");
        tally.print();
        return Ok(());
    }
    let binary = privileged_test_binary()?;
    let guests = vm::guests(&args.kernels, args.lsm);
    let mut failures = Vec::new();
    let mut rows = Vec::new();
    for guest in &guests {
        let label = guest.label();
        let mut env = guest_env(guest);
        if !args.full_guests && (guest.kernel.as_str(), guest.lsm) != vm::PRIMARY {
            // A guest whose BPF LSM is inert runs what depends on it; the same
            // kernel with it active runs the rest.
            let subset = if guest.lsm == vm::Lsm::Default { "lsm-inert" } else { "kernel" };
            env.push(("FORGE_TESTS".to_owned(), subset.to_owned()));
        }
        let wants = env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
        println!("== privileged tests in the {label} guest ({wants})");
        let mut counts = Tally::default();
        let result = vm::binary_run(guest, &binary, &[], &env).and_then(|r| vm::run_in_vm(&r));
        match result {
            Ok(o) => {
                o.output.lines().for_each(|l| counts.add_line(l));
                let mut verdict = if o.exit_code == 0 { "ok" } else { "FAILED" };
                if o.exit_code != 0 {
                    failures.push(format!(
                        "{label}: tests failed (exit {}); serial log {}",
                        o.exit_code,
                        o.log.display()
                    ));
                }
                if !lsm_list_matches(guest.lsm, &o.lsm) {
                    verdict = "FAILED";
                    let want = match guest.lsm {
                        vm::Lsm::Bpf => "with bpf (booted with lsm=...,bpf)",
                        vm::Lsm::Default => {
                            "without bpf (--lsm default is the inert case: only for kernels whose \
                             default list lacks bpf, such as 5.10)"
                        }
                    };
                    failures.push(format!(
                        "{label}: the guest's active LSM list is {:?}, expected one {want}",
                        o.lsm
                    ));
                }
                rows.push(format!(
                    "  {label:<17} {verdict:<6} {:>4} passed {:>3} failed {:>3} ignored  {:>6.1} s  {}  lsm {}",
                    counts.passed, counts.failed, counts.ignored, o.seconds, o.kernel_release, o.lsm
                ));
                rows.extend(
                    o.panics.iter().map(|p| format!("  {label:<17} retried after a guest kernel panic: {p}")),
                );
                rows.extend(counts.failures.iter().map(|(n, m)| format!("  {label:<17} failed: {n}: {m}")));
            }
            Err(e) => {
                rows.push(format!("  {label:<17} FAILED no result: {}", first_line(&format!("{e:#}"))));
                failures.push(format!("{label}: {e:#}"));
            }
        }
        tally.add(&counts);
    }
    println!("== host and {} guest(s) done; per guest:", guests.len());
    rows.iter().for_each(|r| println!("{r}"));
    tally.print();
    if !failures.is_empty() {
        bail!("VM tests failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// Test counts summed over every `test result:` line (host and guests), and
/// the failed tests with the first line of what they said when they panicked,
/// so the end of a long CI log names them.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
    /// (test name, first panic message line), in the order seen.
    failures: Vec<(String, String)>,
    /// The test whose `panicked at` line was the last seen: its message is the next line.
    panicking: Option<String>,
}

impl Tally {
    fn add_line(&mut self, line: &str) {
        let line = line.trim();
        if let Some(name) = self.panicking.take() {
            self.note_failure(&name, line);
        }
        if let Some(rest) = line.strip_prefix("thread '")
            && let Some((name, tail)) = rest.split_once("' ")
            && tail.contains("panicked at")
        {
            self.panicking = Some(name.to_owned());
        }
        if let Some(name) = line.strip_prefix("---- ").and_then(|l| l.strip_suffix(" stdout ----")) {
            self.note_failure(name, "");
        }
        let Some(rest) = line.strip_prefix("test result: ") else { return };
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

    /// Records `name` as failed; a non-empty `message` replaces an empty one.
    fn note_failure(&mut self, name: &str, message: &str) {
        match self.failures.iter_mut().find(|f| f.0 == name) {
            Some(f) if f.1.is_empty() => f.1 = message.to_owned(),
            Some(_) => {}
            None => self.failures.push((name.to_owned(), message.to_owned())),
        }
    }

    fn add(&mut self, other: &Self) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
        self.failures.extend(other.failures.iter().cloned());
    }

    fn print(&self) {
        println!("{} passed, {} failed, {} skipped", self.passed, self.failed, self.ignored);
        for (name, message) in &self.failures {
            println!("  failed: {name}: {message}");
        }
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

/// Builds the privileged test binary (and the forge binary next to it) and
/// returns its path. The same package selection as the host run, so the
/// same features: after it, nothing is rebuilt (`-p forge-tests` alone
/// unifies features differently and rebuilds forge-agent and its dependents).
pub(crate) fn privileged_test_binary() -> anyhow::Result<PathBuf> {
    let out = cargo()
        .args(["test", "--workspace", "--exclude", "forge-ebpf", "--no-run", "--message-format=json"])
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
    use super::*;

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

    #[test]
    fn tally_names_failed_tests_with_their_panic_message() {
        let mut t = Tally::default();
        for l in [
            "test hot_swap ... FAILED",
            "failures:",
            "",
            "---- hot_swap stdout ----",
            "",
            "thread 'hot_swap' panicked at tests/privileged/swap.rs:10:5:",
            "no run crossed a swap",
            "---- other stdout ----",
            "failures:",
            "    hot_swap",
        ] {
            t.add_line(l);
        }
        assert_eq!(
            t.failures,
            [
                ("hot_swap".to_owned(), "no run crossed a swap".to_owned()),
                ("other".to_owned(), String::new())
            ]
        );
    }

    #[test]
    fn inert_guests_expect_lsm_unavailable_and_require_the_fallbacks() {
        let g = |lsm| vm::Guest { kernel: "5.10".to_owned(), lsm };
        let env = guest_env(&g(vm::Lsm::Default));
        let get = |env: &[(String, String)], k: &str| env.iter().find(|e| e.0 == k).map(|e| e.1.clone());
        assert_eq!(get(&env, "FORGE_EXPECT_UNAVAILABLE").as_deref(), Some("lsm,lsm-paths"));
        let require = get(&env, "FORGE_REQUIRE").unwrap();
        assert!(require.starts_with("tracepoint,cgroup,") && !require.contains("lsm"), "{require}");
        let env = guest_env(&g(vm::Lsm::Bpf));
        assert_eq!(get(&env, "FORGE_EXPECT_UNAVAILABLE").as_deref(), Some("lsm-paths"));
        assert!(get(&env, "FORGE_REQUIRE").unwrap().starts_with("lsm,tracepoint,cgroup,"));
        let env = guest_env(&vm::Guest { kernel: "6.12".to_owned(), lsm: vm::Lsm::Bpf });
        assert_eq!(get(&env, "FORGE_EXPECT_UNAVAILABLE"), None);
        assert!(get(&env, "FORGE_REQUIRE").unwrap().starts_with("lsm,lsm-paths,tracepoint,cgroup,"));
    }

    #[test]
    fn lsm_list_must_match_the_mode() {
        assert!(lsm_list_matches(vm::Lsm::Bpf, "lockdown,capability,landlock,bpf,ima,evm"));
        assert!(!lsm_list_matches(vm::Lsm::Bpf, "lockdown,capability,yama,apparmor"));
        assert!(lsm_list_matches(vm::Lsm::Default, "lockdown,capability,yama,apparmor"));
        assert!(!lsm_list_matches(vm::Lsm::Default, "capability,bpf"));
        assert!(!lsm_list_matches(vm::Lsm::Bpf, ""));
    }
}
