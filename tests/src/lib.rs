//! Shared fixtures for ForgeOne's privileged integration tests.
//!
//! Each test runs in a fresh cgroup with its own agent (own bpffs pin root),
//! asserts on what the kernel did (errno, signal, event fields) and cleans up
//! after itself. A test that needs a backend this kernel does not offer is
//! reported as ignored with the kernel's reason, unless `FORGE_REQUIRE` names
//! that backend, in which case it fails.

pub mod agent;
pub mod fleet;

use std::{collections::BTreeSet, path::PathBuf, sync::OnceLock, time::Duration};

use forge_agent::{
    agent::{Agent, AgentOptions},
    cgroup::Cgroup,
    ebpf::{BackendStatus, Want, loader},
    events::{DecisionEvent, Verdict},
    policy::{CompiledRecord, Policy, compile},
    workload::{ACTION_ENV, Action, Outcome, run_action, spawn_in},
};
use libtest_mimic::{Completion, Failed};

/// What this machine offers, probed once.
pub struct HostCaps {
    pub root: bool,
    pub backends: Vec<BackendStatus>,
    pub probe_error: Option<String>,
    pub require: BTreeSet<String>,
}

pub fn caps() -> &'static HostCaps {
    static CAPS: OnceLock<HostCaps> = OnceLock::new();
    CAPS.get_or_init(|| {
        let require = std::env::var("FORGE_REQUIRE")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let root = nix::unistd::geteuid().is_root();
        let (backends, probe_error) = if root {
            match loader::probe() {
                Ok(b) => (b, None),
                Err(e) => (Vec::new(), Some(e.to_string())),
            }
        } else {
            (Vec::new(), None)
        };
        HostCaps { root, backends, probe_error, require }
    })
}

/// Decides whether a test needing `needs` (backend names) can run here.
/// `Ok(None)`: run it. `Ok(Some(ignored))`: report ignored with the reason.
/// `Err`: a required capability is missing.
/// Which tests a slow (emulated) guest runs, from `FORGE_TESTS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subset {
    /// Everything (unset).
    All,
    /// `kernel`: the kernel-facing tests; the agent-side ones run on the
    /// host and in the primary guest.
    Kernel,
    /// `lsm-inert`: the kernel-facing tests whose outcome depends on
    /// whether BPF LSM runs, for a guest whose kernel has BPF LSM built in
    /// but inert, next to a guest of the same kernel where it is active.
    LsmInert,
}

impl Subset {
    pub fn from_env() -> Self {
        match std::env::var("FORGE_TESTS").as_deref() {
            Ok("kernel") => Self::Kernel,
            Ok("lsm-inert") => Self::LsmInert,
            _ => Self::All,
        }
    }
}

/// `Some(ignored)` for a test the subset asked for by `FORGE_TESTS` leaves
/// out (the guests other than the primary one, whose software emulation
/// makes every test slow): an agent-side test (`agent_side`) under
/// `kernel` and `lsm-inert`, and a test whose kernel paths never involve
/// BPF LSM (`lsm_independent`) under `lsm-inert`.
pub fn gate_kernel_subset(agent_side: bool, lsm_independent: bool) -> Option<Completion> {
    let subset = Subset::from_env();
    if agent_side && subset != Subset::All {
        return Some(Completion::ignored_with(
            "agent-side test, the same on every kernel (FORGE_TESTS=kernel runs the kernel-facing \
             tests only; the host and the primary guest run this one)"
                .to_string(),
        ));
    }
    (lsm_independent && subset == Subset::LsmInert).then(|| {
        Completion::ignored_with(
            "its kernel paths (cgroup hooks, syscall tracepoint, exec fallback) never involve BPF \
             LSM on this kernel: it runs the same in the guest of this kernel with BPF LSM active, \
             which runs it (FORGE_TESTS=lsm-inert)"
                .to_string(),
        )
    })
}

pub fn gate(needs: &[&str]) -> Result<Option<Completion>, Failed> {
    let c = caps();
    let mut missing = Vec::new();
    if !c.root {
        missing.push(("root".to_string(), "needs root (loads eBPF programs, creates cgroups)".to_string()));
    }
    if let Some(e) = &c.probe_error {
        missing.push(("probe".to_string(), format!("backend probe failed: {e}")));
    }
    for need in needs {
        if !c.root {
            break;
        }
        match c.backends.iter().find(|b| b.backend == *need) {
            Some(b) if b.available => {}
            Some(b) => missing.push((
                (*need).to_string(),
                format!("backend {need} unavailable: {}", first_line(b.error.as_deref().unwrap_or("?"))),
            )),
            None => missing.push(((*need).to_string(), format!("backend {need} was not probed"))),
        }
    }
    let Some((what, reason)) = missing.into_iter().next() else { return Ok(None) };
    // Root and a working probe are preconditions of every required backend.
    let required = c.require.contains(&what)
        || ((what == "root" || what == "probe") && needs.iter().any(|n| c.require.contains(*n)));
    if required {
        let list = c.require.iter().cloned().collect::<Vec<_>>().join(",");
        return Err(format!("FORGE_REQUIRE={list}: {reason}").into());
    }
    Ok(Some(Completion::ignored_with(reason)))
}

/// Decides whether a test that runs the program at `path` can run here:
/// `Ok(None)` if it is installed; else ignored with the reason, or `Err` when
/// `FORGE_REQUIRE` names `name` (the host CI run does, and so do the VM
/// guests, which run the host's programs from its /usr shared read-only).
pub fn gate_program(name: &str, path: &std::path::Path) -> Result<Option<Completion>, Failed> {
    if path.is_file() {
        return Ok(None);
    }
    let reason = if name == "forge" {
        format!(
            "{} is not there (`cargo test --workspace` builds the forge binary next to the tests)",
            path.display()
        )
    } else {
        format!("{} is not installed (`cargo xtask setup` installs {name})", path.display())
    };
    let c = caps();
    if c.require.contains(name) {
        let list = c.require.iter().cloned().collect::<Vec<_>>().join(",");
        return Err(format!("FORGE_REQUIRE={list}: {reason}").into());
    }
    Ok(Some(Completion::ignored_with(reason)))
}

/// Decides whether a test that needs a hook to kill a task other than the
/// caller (`bpf_send_signal_task`, kernels from 6.13) can run: `signal_task`
/// is what the agent found. Without it the test is ignored with the reason,
/// or fails when `FORGE_REQUIRE` names `signal-task`.
pub fn gate_signal_task(signal_task: bool) -> Result<Option<Completion>, Failed> {
    if signal_task {
        return Ok(None);
    }
    let reason = "this kernel has no bpf_send_signal_task kfunc (6.13+): without BPF LSM an escaped child \
                  is killed by the agent after it starts, not before (docs/policy.md, Containment)";
    let c = caps();
    if c.require.contains("signal-task") {
        let list = c.require.iter().cloned().collect::<Vec<_>>().join(",");
        return Err(format!("FORGE_REQUIRE={list}: {reason}").into());
    }
    Ok(Some(Completion::ignored_with(reason)))
}

/// Backends this machine is expected to report unavailable: the
/// comma-separated `FORGE_EXPECT_UNAVAILABLE` (the QEMU guest booted with
/// its kernel's default LSM list, which has no `bpf`, sets `lsm`).
pub fn expected_unavailable() -> Vec<String> {
    std::env::var("FORGE_EXPECT_UNAVAILABLE")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Checks that the probe reports every backend of [`expected_unavailable`]
/// unavailable (a backend that loads but cannot enforce, such as BPF LSM
/// without `bpf` in the active LSM list, must not count). Ignored with the
/// reason when nothing is expected; the outcome names each backend's state.
pub fn check_expected_unavailable() -> Result<Completion, Failed> {
    let expected = expected_unavailable();
    if expected.is_empty() {
        return Ok(Completion::ignored_with(
            "FORGE_EXPECT_UNAVAILABLE is not set: no backend is expected to be unavailable here",
        ));
    }
    let c = caps();
    if !c.root {
        return Err("needs root to probe the backends".into());
    }
    if let Some(e) = &c.probe_error {
        return Err(format!("backend probe failed: {e}").into());
    }
    let lsm_list =
        std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_else(|e| format!("unreadable: {e}"));
    let mut wrong = Vec::new();
    for name in &expected {
        match c.backends.iter().find(|b| b.backend == name.as_str()) {
            Some(b) if !b.available => {
                eprintln!(
                    "backend {name} reported unavailable, as expected: {}",
                    first_line(b.error.as_deref().unwrap_or("?"))
                );
            }
            Some(_) => wrong.push(format!("backend {name} is reported available")),
            None => wrong.push(format!("backend {name} was not probed")),
        }
    }
    if wrong.is_empty() {
        Ok(Completion::Completed)
    } else {
        Err(format!(
            "FORGE_EXPECT_UNAVAILABLE={}: {} (active LSM list: {})",
            expected.join(","),
            wrong.join("; "),
            lsm_list.trim()
        )
        .into())
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Set by `cargo xtask bench --smoke` (and so by `cargo xtask test`): a
/// benchmark runs a few iterations, to show that it runs and reports.
pub const BENCH_SMOKE_ENV: &str = "FORGE_BENCH_SMOKE";

/// Whether this benchmark run is a smoke run ([`BENCH_SMOKE_ENV`]).
pub fn bench_smoke() -> bool {
    std::env::var_os(BENCH_SMOKE_ENV).is_some()
}

/// `full` rounds of a benchmark, or 3 in a smoke run.
pub fn bench_rounds(full: usize) -> usize {
    if bench_smoke() { 3 } else { full }
}

/// How long a test waits for the events it expects: they come within
/// milliseconds, but a guest under software emulation on a loaded machine
/// can stall for seconds (the wait ends as soon as they are there).
pub const EVENT_WAIT: Duration = Duration::from_secs(6);

/// One test's world: a cgroup governed by its own agent.
pub struct Fixture {
    pub rt: tokio::runtime::Runtime,
    pub agent: Option<Agent>,
    pub cgroup: Cgroup,
    pub compiled: CompiledRecord,
    pub exe: PathBuf,
    pub pin_root: PathBuf,
}

impl Fixture {
    /// Starts an agent with `want`, creates `forge-test/<name>` and governs it
    /// with the policy in `yaml`.
    pub fn new(name: &str, yaml: &str, want: Want) -> Result<Self, Failed> {
        Self::with_ring(name, yaml, want, None)
    }

    /// Like [`Self::new`], with an event ring of `ring_bytes` (`None`: the default).
    pub fn with_ring(name: &str, yaml: &str, want: Want, ring_bytes: Option<u32>) -> Result<Self, Failed> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(fail)?;
        // bpffs refuses names with dots.
        let pin_name = name.replace('.', "-");
        let pin_root = PathBuf::from(format!("/sys/fs/bpf/forge-test-{}-{pin_name}", std::process::id()));
        let agent = {
            let _guard = rt.enter();
            Agent::start(&AgentOptions { pin_root: pin_root.clone(), want, ring_bytes }).map_err(fail)?
        };
        let cgroup = Cgroup::create(&format!("forge-test/{}-{name}", std::process::id())).map_err(fail)?;
        let policy = Policy::from_yaml(yaml, name).map_err(fail)?;
        let compiled = compile(&policy, name, 1).map_err(fail)?;
        let mut f = Self {
            rt,
            agent: Some(agent),
            cgroup,
            compiled,
            exe: std::env::current_exe().map_err(fail)?,
            pin_root,
        };
        if let Some(agent) = f.agent.as_mut() {
            agent.writer.govern(&f.cgroup, &f.compiled).map_err(fail)?;
        }
        Ok(f)
    }

    pub fn agent_mut(&mut self) -> &mut Agent {
        self.agent.as_mut().expect("agent present until drop")
    }

    /// Compiles `yaml` and swaps it in for the fixture's cgroup; returns the
    /// generation written.
    pub fn swap(&mut self, yaml: &str) -> Result<(u64, CompiledRecord), Failed> {
        let policy = Policy::from_yaml(yaml, "swap").map_err(fail)?;
        let compiled = compile(&policy, "swap", 1).map_err(fail)?;
        let agent = self.agent.as_mut().ok_or("no agent")?;
        let generation = agent.writer.govern(&self.cgroup, &compiled).map_err(fail)?;
        Ok((generation, compiled))
    }

    /// Starts `action` in a new process inside the cgroup without waiting.
    pub fn start_inside(&self, action: &str) -> Result<std::process::Child, Failed> {
        let a: Action = action.parse().map_err(|e: String| Failed::from(e))?;
        let mut cmd = std::process::Command::new(&self.exe);
        cmd.env(ACTION_ENV, a.to_string());
        spawn_in(&self.cgroup, &mut cmd).map_err(fail)
    }

    /// Runs `action` in a new process inside the governed cgroup.
    pub fn inside(&self, action: &str) -> Result<Outcome, Failed> {
        self.inside_pid(action).map(|(_, o)| o)
    }

    /// Like [`Self::inside`], also returning the process id.
    pub fn inside_pid(&self, action: &str) -> Result<(u32, Outcome), Failed> {
        let a: Action = action.parse().map_err(|e: String| Failed::from(e))?;
        let mut cmd = std::process::Command::new(&self.exe);
        cmd.env(ACTION_ENV, a.to_string());
        let mut child = spawn_in(&self.cgroup, &mut cmd).map_err(fail)?;
        let pid = child.id();
        let status = child.wait().map_err(fail)?;
        Ok((pid, Outcome::from_status(status)))
    }

    /// Like [`Self::inside`], also returning what the process printed on
    /// stdout (the compound actions report a child's outcome there).
    pub fn inside_output(&self, action: &str) -> Result<(Outcome, String), Failed> {
        let a: Action = action.parse().map_err(|e: String| Failed::from(e))?;
        let mut cmd = std::process::Command::new(&self.exe);
        cmd.env(ACTION_ENV, a.to_string()).stdout(std::process::Stdio::piped());
        let child = spawn_in(&self.cgroup, &mut cmd).map_err(fail)?;
        let out = child.wait_with_output().map_err(fail)?;
        Ok((Outcome::from_status(out.status), String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    /// Runs `action` in a new process outside any governed cgroup.
    pub fn outside(&self, action: &str) -> Result<Outcome, Failed> {
        let a: Action = action.parse().map_err(|e: String| Failed::from(e))?;
        run_action(&self.exe, &a).map_err(fail)
    }

    /// Collects decision events (not process tracking) until `n` arrived or
    /// [`EVENT_WAIT`] passed.
    pub fn decisions(&mut self, n: usize) -> Vec<DecisionEvent> {
        let rt = &self.rt;
        let agent = self.agent.as_mut().expect("agent present until drop");
        rt.block_on(
            agent.collect_until(EVENT_WAIT, |evs| {
                evs.iter().filter(|e| e.verdict != Verdict::Info).count() >= n
            }),
        )
        .into_iter()
        .filter(|e| e.verdict != Verdict::Info)
        .collect()
    }

    /// All events (including process tracking) until `pred` holds or [`EVENT_WAIT`] passes.
    pub fn events_until(&mut self, pred: impl FnMut(&[DecisionEvent]) -> bool) -> Vec<DecisionEvent> {
        let rt = &self.rt;
        let agent = self.agent.as_mut().expect("agent present until drop");
        rt.block_on(agent.collect_until(EVENT_WAIT, pred))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.writer.ungovern(self.cgroup.id);
            let _guard = self.rt.enter();
            let _ = agent.remove_pins();
        }
        let _ = forge_agent::ebpf::Pins::new(&self.pin_root).remove_all();
        // The cgroups a test made below its own go with it.
        let _ = self.cgroup.destroy_tree();
    }
}

/// A TCP listener on `addr` (port 0 = any) that counts the connections it
/// accepts: what a deny test checks did not happen.
pub fn counting_listener(
    addr: &str,
) -> Result<(std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>), Failed> {
    use std::sync::{Arc, atomic::AtomicUsize};
    let l = std::net::TcpListener::bind(addr).map_err(fail)?;
    let local = l.local_addr().map_err(fail)?;
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    std::thread::spawn(move || {
        for c in l.incoming() {
            if c.is_ok() {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    Ok((local, hits))
}

pub fn fail(e: impl std::fmt::Display) -> Failed {
    Failed::from(e.to_string())
}

/// `check!(cond, "message {}", args)`: fails the test with the message.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(::libtest_mimic::Failed::from(format!($($fmt)+)));
        }
    };
}

/// Compares an outcome with the expected one, naming the action.
pub fn expect(what: &str, got: Outcome, want: Outcome) -> Result<(), Failed> {
    if got == want { Ok(()) } else { Err(format!("{what}: expected {want}, got {got}").into()) }
}

pub const EPERM: Outcome = Outcome::Errno(libc::EPERM);
pub const SIGKILL: Outcome = Outcome::Signal(libc::SIGKILL);

/// A daemon (agent + local API) on its own thread, governing one fresh
/// cgroup `forge-test/<pid>-<name>`, serving `socket`, keeping execution
/// traces under `data_dir` signed with a fresh agent key. Stopped and
/// cleaned up on drop.
pub struct DaemonFixture {
    pub socket: PathBuf,
    pub cgroup: Cgroup,
    pub data_dir: PathBuf,
    /// The agent key's public half (trace checkpoints are signed with it).
    pub agent_key: forge_agent::sign::PublicKey,
    pin_root: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DaemonFixture {
    /// Starts the daemon with `documents`; `configure` runs on it before it
    /// governs the cgroup.
    pub fn start(
        name: &str,
        documents: Vec<forge_agent::api::protocol::Document>,
        want: Want,
        configure: impl FnOnce(&mut forge_agent::api::daemon::Daemon) + Send + 'static,
    ) -> Result<Self, Failed> {
        Self::start_with_ring(name, documents, want, None, configure)
    }

    /// Like [`Self::start`], with an event ring of `ring_bytes`.
    pub fn start_with_ring(
        name: &str,
        documents: Vec<forge_agent::api::protocol::Document>,
        want: Want,
        ring_bytes: Option<u32>,
        configure: impl FnOnce(&mut forge_agent::api::daemon::Daemon) + Send + 'static,
    ) -> Result<Self, Failed> {
        use forge_agent::api::{daemon, server};
        let id = std::process::id();
        let pin_root = PathBuf::from(format!("/sys/fs/bpf/forge-test-{id}-{name}"));
        let socket = PathBuf::from(format!("/tmp/forge-test-{id}-{name}/agent.sock"));
        let cg_name = format!("forge-test/{id}-{name}");
        let cgroup = Cgroup::create(&cg_name).map_err(fail)?;
        let data_dir = socket.parent().map(|d| d.join("data")).unwrap_or_default();
        let key = std::sync::Arc::new(forge_agent::sign::SigningKey::generate().map_err(fail)?);
        let agent_key = key.public_key();
        let traces = forge_agent::api::traces::TraceSettings::new(&data_dir, key);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let (pins, sock) = (pin_root.clone(), socket.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let started = (|| {
                    let agent = Agent::start(&AgentOptions { pin_root: pins, want, ring_bytes })
                        .map_err(|e| e.to_string())?;
                    let mut d = daemon::Daemon::new(agent, documents).map_err(|e| e.message)?;
                    d.traces = Some(forge_agent::api::traces::Traces::new(traces));
                    configure(&mut d);
                    d.govern(&cg_name).map_err(|e| e.message)?;
                    let l = server::bind(&sock, None).map_err(|e| e.to_string())?;
                    Ok::<_, String>((d, l))
                })();
                match started {
                    Ok((mut d, l)) => {
                        let _ = ready_tx.send(Ok(()));
                        let _ = daemon::run(&mut d, l, async { drop(stop_rx.await) }, |_, _| {}).await;
                        let _ = d.agent.remove_pins();
                    }
                    Err(e) => drop(ready_tx.send(Err(e))),
                }
            });
        });
        let f =
            Self { socket, cgroup, data_dir, agent_key, pin_root, stop: Some(stop_tx), thread: Some(thread) };
        ready_rx.recv().map_err(fail)?.map_err(Failed::from)?;
        Ok(f)
    }
}

impl DaemonFixture {
    /// Stops the daemon (its traces are signed and closed); the files stay
    /// until drop.
    pub fn stop(&mut self) {
        let _ = std::fs::write(self.cgroup.path.join("cgroup.freeze"), "0");
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// The agent's bpffs pin root.
    pub fn pin_root(&self) -> &std::path::Path {
        &self.pin_root
    }

    /// The governed cgroup's trace file.
    pub fn trace_path(&self) -> PathBuf {
        self.data_dir.join("traces").join(format!("cgroup-{}.dna", self.cgroup.id))
    }
}

impl Drop for DaemonFixture {
    fn drop(&mut self) {
        self.stop();
        let _ = forge_agent::ebpf::Pins::new(&self.pin_root).remove_all();
        if let Some(dir) = self.socket.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
        let _ = self.cgroup.destroy_tree();
    }
}
