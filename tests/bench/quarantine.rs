//! Quarantine latency: from the triggering event being read to the cgroup
//! running under its redzone policy and frozen. A real agent governs a real
//! cgroup with a process in it; each round feeds the daemon one anomalous
//! event (an exec from /tmp, as the ring buffer would hand it over) and
//! takes the daemon's own `contained_us` for that quarantine, then releases
//! it (not timed). Baselines from the same run: the policy swap alone and
//! the cgroup freeze alone (both done by hand on the same cgroup). Goal: p99
//! ≤ 5 ms. Needs root. `cargo xtask bench` runs it; alone:
//! `cargo bench -p forge-tests --bench quarantine`.
#![allow(clippy::print_stdout, reason = "a benchmark's report is its output")]

use std::{
    process::Command,
    time::{Duration, Instant},
};

use forge_agent::{
    agent::{Agent, AgentOptions},
    api::{
        Request,
        daemon::Daemon,
        protocol::Document,
        traces::{TraceSettings, Traces, kernel_now_ns},
    },
    cgroup::Cgroup,
    ebpf::{Pins, Want},
    events::{DecisionEvent, Hook, Mode, Op, Target, Verdict},
    policy::Tier,
    sign::SigningKey,
    trust::quarantine,
    workload::spawn_in,
};

/// Rounds of the measurement (3 in a smoke run: `forge_tests::bench_rounds`).
const ROUNDS: usize = 300;

const POLICY: &str = "apiVersion: forgeone.dev/v1alpha1
kind: Policy
metadata: {name: bench-quarantine}
spec:
  selector: {cgroups: [forge-bench/*]}
  trust: verified
  defaults: {exec: allow, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, net.unix: allow, syscall: allow}
  escalation:
    compromised:
      quarantine: true
";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn row(name: &str, mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "| {name} | {:.0} | {:.0} | {:.0} | {:.0} |",
        percentile(&v, 0.5),
        percentile(&v, 0.9),
        percentile(&v, 0.99),
        v.last().copied().unwrap_or(0.0)
    )
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("quarantine latency benchmark: SKIPPED (needs root)");
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let pin_root = format!("/sys/fs/bpf/forge-bench-q-{}", std::process::id());
    let cgroup = Cgroup::create(&format!("forge-bench/q-{}", std::process::id())).expect("a cgroup");
    let data = tempfile_dir();
    let result = rt.block_on(async { run(&pin_root, &cgroup, &data) });
    let _ = Pins::new(&pin_root).remove_all();
    let _ = std::fs::write(cgroup.path.join("cgroup.freeze"), "0");
    for pid in cgroup.pids().unwrap_or_default() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
    }
    std::thread::sleep(Duration::from_millis(100));
    let _ = cgroup.destroy();
    let _ = std::fs::remove_dir_all(&data);
    match result {
        Ok(report) => println!("{report}"),
        Err(e) => {
            println!("quarantine latency benchmark: FAILED: {e}");
            std::process::exit(1);
        }
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("forge-bench-q-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("a data directory");
    d
}

fn run(pin_root: &str, cgroup: &Cgroup, data: &std::path::Path) -> Result<String, String> {
    let want = Want { cgroup: Some(true), tracepoint: Some(true), ..Want::default() };
    let agent = Agent::start(&AgentOptions { pin_root: pin_root.into(), want, ..AgentOptions::default() })
        .map_err(|e| e.to_string())?;
    let docs = vec![Document { name: "q.yaml".into(), text: POLICY.into() }];
    let mut d = Daemon::new(agent, docs).map_err(|e| e.message)?;
    let key = std::sync::Arc::new(SigningKey::generate().map_err(|e| e.to_string())?);
    d.traces = Some(Traces::new(TraceSettings::new(data, key)));
    d.scorer.config.learning_ns = 0;
    d.trust.thresholds.compromised = 60;
    d.govern(&cgroup.path.display().to_string()).map_err(|e| e.message)?;
    // Something to freeze: a few sleeping processes.
    let mut children = Vec::new();
    for _ in 0..4 {
        let child = spawn_in(cgroup, Command::new("/bin/sleep").arg("600")).map_err(|e| e.to_string())?;
        children.push(child);
    }
    std::thread::sleep(Duration::from_millis(100));
    let spec = cgroup.path.display().to_string();

    let mut contained = Vec::new();
    let mut whole = Vec::new();
    for i in 0..forge_tests::bench_rounds(ROUNDS) {
        let ev = DecisionEvent {
            ts_ns: kernel_now_ns(),
            cgroup_id: cgroup.id,
            actual_cgroup_id: cgroup.id,
            generation: 0,
            pid: 1,
            tgid: 1,
            ppid: 1,
            comm: "sh".into(),
            hook: Hook::ProcExec,
            op: Op::Process,
            verdict: Verdict::Info,
            mode: Mode::Enforce,
            rule_id: 0,
            target: Target::Path { path: format!("/tmp/.x/{i}") },
        };
        let start = Instant::now();
        let done = d.observe(&ev);
        whole.push(start.elapsed().as_secs_f64() * 1e6);
        let q = done
            .iter()
            .find(|a| a["action"] == "quarantine")
            .ok_or_else(|| format!("round {i}: no quarantine: {done:?}"))?;
        contained.push(q["contained_us"].as_f64().unwrap_or(f64::NAN));
        if !quarantine::is_frozen(cgroup).map_err(|e| e.to_string())? {
            return Err(format!("round {i}: not frozen"));
        }
        if d.compiled_for(cgroup.id).map(|c| c.tier) != Some(Tier::Compromised) {
            return Err(format!("round {i}: not in the redzone"));
        }
        d.handle(Request::Release { cgroup: spec.clone(), actor: "bench".into() }).map_err(|e| e.message)?;
    }

    // Baselines on the same cgroup: a policy swap alone, a freeze alone.
    let record = d.compiled_for(cgroup.id).cloned().ok_or("not governed")?;
    let mut swap = Vec::new();
    let mut freeze = Vec::new();
    for _ in 0..forge_tests::bench_rounds(ROUNDS) {
        let start = Instant::now();
        d.agent.writer.govern(cgroup, &record).map_err(|e| e.to_string())?;
        swap.push(start.elapsed().as_secs_f64() * 1e6);
        let start = Instant::now();
        quarantine::freeze(cgroup, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        freeze.push(start.elapsed().as_secs_f64() * 1e6);
        quarantine::thaw(cgroup).map_err(|e| e.to_string())?;
    }
    d.close();
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let p99 = {
        let mut v = contained.clone();
        v.sort_by(f64::total_cmp);
        percentile(&v, 0.99)
    };
    let rounds = forge_tests::bench_rounds(ROUNDS);
    Ok(format!(
        "## Quarantine latency (µs, {rounds} rounds, 4 processes in the cgroup)\n\n\
         | step | p50 | p90 | p99 | max |\n|---|---|---|---|---|\n{}\n{}\n{}\n{}\n\n\
         Goal p99 ≤ 5000 µs from event read to redzone + frozen: {} (p99 {p99:.0} µs).\n",
        row("event read → redzone swapped + frozen (contained_us)", contained),
        row("whole observe() incl. snapshot and trace records", whole),
        row("baseline: policy swap alone", swap),
        row("baseline: cgroup freeze alone", freeze),
        if p99 <= 5000.0 { "met" } else { "NOT met" },
    ))
}
