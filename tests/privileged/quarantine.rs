//! Events to action on a real cgroup: a workload learns, stays untouched
//! while it behaves like itself, then does something reverse-shell-like (a
//! connect to a never-seen network and the exec of a shell copied into /tmp);
//! the agent scores it, drops it to `compromised` and quarantines it live,
//! frozen or running inside the redzone as the policy says. Release restores
//! its previous policy. The workload's execution trace verifies against the
//! agent key, explains why, names who released it, and replays exactly.

use std::{path::PathBuf, time::Duration};

use forge_agent::{
    api::{Request, client::call, protocol::Document},
    cgroup::Cgroup,
    dna::{self, QuarantineOp, Record, Trace, VerifyOptions},
    ebpf::Want,
    policy::Tier,
    trust::quarantine::is_frozen,
    workload::{Action, Outcome, run_action_in, run_action_moved_in},
};
use forge_tests::{DaemonFixture, EPERM, SIGKILL, check, expect, fail};
use libtest_mimic::Failed;

use crate::{listener, process::exe_copy};

fn policy(quarantine: &str) -> String {
    format!(
        "apiVersion: forgeone.dev/v1alpha1
kind: Policy
metadata: {{name: quarantine-test}}
spec:
  selector: {{cgroups: [forge-test/*]}}
  trust: verified
  defaults: {{exec: allow, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, net.unix: allow, syscall: allow}}
  escalation:
    suspicious:
      defaults: {{net.connect: deny}}
    compromised:
      quarantine: {quarantine}
"
    )
}

fn start(name: &str, quarantine: &str) -> Result<DaemonFixture, Failed> {
    DaemonFixture::start(
        name,
        vec![Document { name: "q.yaml".into(), text: policy(quarantine) }],
        Want { cgroup: Some(true), tracepoint: Some(true), ..Want::default() },
        |d| d.scorer.config.learning_ns = 3_000_000_000,
    )
}

/// `quarantine: true`: frozen.
pub(crate) fn learn_score_quarantine_release() -> Result<(), Failed> {
    let mut d = start("quarantine", "true")?;
    scenario(&d, true)?;
    d.stop();
    check_trace(&d, true)
}

/// `quarantine: redzone`: keeps running, but connect is now EPERM.
pub(crate) fn redzone_keeps_running_without_network() -> Result<(), Failed> {
    let mut d = start("redzone", "redzone")?;
    scenario(&d, false)?;
    d.stop();
    check_trace(&d, false)
}

/// A benign workload (its own binary executed over and over, file writes
/// and reads, connects to its own service) through learning and a long
/// scoring window: never escalated, nothing scored, and its trace replays.
pub(crate) fn benign_long_run_is_not_escalated() -> Result<(), Failed> {
    let mut d = start("benign", "true")?;
    let service = listener("127.0.0.1:0")?;
    let exe = std::env::current_exe().map_err(fail)?;
    let dir = PathBuf::from(format!("/tmp/forge-benign-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(fail)?;
    let out = dir.join("out.txt").display().to_string();
    let start = std::time::Instant::now();
    let mut rounds = 0;
    while start.elapsed() < Duration::from_secs(15) {
        for a in [
            Action::Connect(service),
            Action::OpenWrite(out.clone()),
            Action::OpenRead(out.clone()),
            Action::OpenRead("/proc/self/status".into()),
            Action::Syscall("getppid".into()),
        ] {
            let what = format!("round {rounds}: {a}");
            expect(&what, run_action_in(&d.cgroup, &exe, &a).map_err(fail)?, Outcome::Ok)?;
        }
        rounds += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&dir);
    check!(tier_of(&d.socket)? == "verified", "a benign workload was escalated to {}", tier_of(&d.socket)?);
    d.stop();
    let trace = verified_trace(&d)?;
    let records = records(&trace)?;
    let scores: Vec<String> = records
        .iter()
        .filter(|r| matches!(r, Record::Score(_) | Record::TrustChange(_)))
        .map(ToString::to_string)
        .collect();
    check!(scores.is_empty(), "a benign workload was scored: {scores:?}");
    let r = dna::replay(&trace).map_err(fail)?;
    check!(r.ok(), "replay diverges: {:?}", r.divergence);
    eprintln!("benign: {rounds} rounds over 15 s; trace: {} events recorded, {} elided", r.events, r.elided);
    check!(r.events > 0 && rounds > 10, "too little happened: {rounds} rounds, {} events", r.events);
    Ok(())
}

fn tier_of(socket: &std::path::Path) -> Result<String, Failed> {
    let s = call(socket, &Request::Status).map_err(fail)?;
    Ok(s["governed"][0]["tier"].as_str().unwrap_or("?").to_string())
}

fn scenario(d: &DaemonFixture, freeze: bool) -> Result<(), Failed> {
    let (socket, cgroup): (&std::path::Path, &Cgroup) = (&d.socket, &d.cgroup);
    let service = listener("127.0.0.1:0")?;
    // 127.0.1.0/24 is loopback too, but a network the workload never used.
    let elsewhere = listener("127.0.1.1:0")?;
    let exe = std::env::current_exe().map_err(fail)?;
    let run = |a: Action| run_action_in(cgroup, &exe, &a).map_err(fail);
    // On a surprise, say what the agent did and why.
    let benign = |what: &str| -> Result<(), Failed> {
        expect(what, run(Action::Connect(service))?, Outcome::Ok).map_err(|e| {
            let audit = call(socket, &Request::Audit).map(|a| a.to_string()).unwrap_or_default();
            Failed::from(format!("{}; agent audit: {audit}", e.message().unwrap_or("")))
        })
    };
    // Learning (3 s): the workload's own binary, its own service.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(2000) {
        benign("benign connect while learning")?;
        std::thread::sleep(Duration::from_millis(100));
    }
    while start.elapsed() < Duration::from_millis(3300) {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Scoring: the same behaviour for a while is not escalated.
    for _ in 0..20 {
        benign("benign connect while scored")?;
    }
    std::thread::sleep(Duration::from_millis(300));
    check!(tier_of(socket)? == "verified", "a benign workload was escalated to {}", tier_of(socket)?);

    // The attack: a never-seen network, then a shell dropped into /tmp.
    let dir = PathBuf::from(format!("/tmp/forge-q-{}", std::process::id()));
    let shell = exe_copy(&dir, "sh")?;
    expect("connect to a new network", run(Action::Connect(elsewhere))?, Outcome::Ok)?;
    // The dropped shell lingers, as a reverse shell would (frozen with its
    // cgroup, so it is not waited for until the release).
    let mut cmd = std::process::Command::new(&shell);
    cmd.env(forge_agent::workload::ACTION_ENV, Action::Sleep(3000).to_string());
    let mut dropped = forge_agent::workload::spawn_in(cgroup, &mut cmd).map_err(fail)?;

    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while tier_of(socket)? != "compromised" && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    check!(tier_of(socket)? == "compromised", "tier {}", tier_of(socket)?);
    check!(is_frozen(cgroup).map_err(fail)? == freeze, "frozen: expected {freeze}");
    if !freeze {
        // The redzone, enforced by the kernel: no new program runs there, and
        // a process that is there (moved in past its exec) cannot connect.
        let moved = run_action_moved_in(cgroup, &exe, &Action::Connect(service)).map_err(fail)?;
        expect("connect inside the redzone", moved, EPERM)?;
        // Denied by BPF LSM (execve fails) or killed at the exec tracepoint.
        match run_action_in(cgroup, &exe, &Action::Connect(service)) {
            Ok(SIGKILL) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {}
            other => return Err(format!("exec inside the redzone: expected a denial, got {other:?}").into()),
        }
    }
    let audit = call(socket, &Request::Audit).map_err(fail)?;
    let text = audit.to_string();
    check!(
        text.contains("never-seen 127.0.1.0/24")
            && text.contains(&format!("exec from a writable dir: {shell}")),
        "audit lacks the reasons: {text}"
    );
    check!(text.contains("\"action\":\"quarantine\""), "audit lacks the quarantine: {text}");
    let contained =
        audit.as_array().into_iter().flatten().filter_map(|e| e["contained_us"].as_u64()).max().unwrap_or(0);
    eprintln!("quarantine: event read to redzone in place (and frozen: {freeze}) in {contained} µs");

    // Release: thawed, previous policy back, who did it recorded.
    let r = call(
        socket,
        &Request::Release { cgroup: cgroup.path.display().to_string(), actor: "test-operator".into() },
    )
    .map_err(fail)?;
    check!(r["tier"] == "verified", "release result {r}");
    check!(!is_frozen(cgroup).map_err(fail)?, "still frozen after release");
    dropped.wait().map_err(fail)?;
    let _ = std::fs::remove_dir_all(&dir);
    expect("connect after release", run(Action::Connect(service))?, Outcome::Ok)?;
    let audit = call(socket, &Request::Audit).map_err(fail)?.to_string();
    check!(audit.contains("\"actor\":\"test-operator\""), "release not audited: {audit}");

    // The same story through the API, for machines.
    let spec = cgroup.path.display().to_string();
    let q = call(socket, &Request::Explain { cgroup: spec.clone(), record: None, quarantine: true })
        .map_err(fail)?;
    check!(
        q["tier"] == "compromised"
            && q["why"].as_str().is_some_and(|w| w.contains("exec from a writable dir"))
            && q["agent_did"].to_string().contains("test-operator released it"),
        "explain over the API: {q}"
    );
    let page = call(socket, &Request::TraceExport { cgroup: spec, from: 0, limit: Some(3) }).map_err(fail)?;
    check!(
        page["records"].as_array().map(Vec::len) == Some(3)
            && page["total"].as_u64().is_some_and(|t| t > 3)
            && page["records"][0]["kind"] == "identity",
        "trace export over the API: {page}"
    );
    let metrics = call(socket, &Request::Metrics).map_err(fail)?;
    check!(
        metrics.as_str().is_some_and(|m| m
            .lines()
            .any(|l| l.starts_with("forge_quarantines_total") && l.ends_with(" 1"))),
        "metrics over the API: {metrics}"
    );
    Ok(())
}

/// The trace, verified against the agent key.
fn verified_trace(d: &DaemonFixture) -> Result<Trace, Failed> {
    let path = d.trace_path();
    let opts = VerifyOptions { trusted_key: Some(d.agent_key) };
    let report = dna::verify_file(&path, &opts).map_err(fail)?;
    check!(report.ok && report.unsigned_tail == 0, "trace does not verify: {report:?}");
    Trace::open(&path).map_err(fail)
}

fn records(trace: &Trace) -> Result<Vec<Record>, Failed> {
    trace.records().map_err(fail)?.map(|e| e.map(|e| e.record).map_err(fail)).collect()
}

fn check_trace(d: &DaemonFixture, freeze: bool) -> Result<(), Failed> {
    let trace = verified_trace(d)?;
    let records = records(&trace)?;
    let dump = || records.iter().map(|r| format!("{}: {r}", r.kind_name())).collect::<Vec<_>>().join("\n");
    let escalation = records.iter().find_map(|r| match r {
        Record::TrustChange(t) if t.actor == "scorer" && t.to == Tier::Compromised => Some(t),
        _ => None,
    });
    let Some(escalation) = escalation else {
        return Err(format!("no escalation in the trace:\n{}", dump()).into());
    };
    let why = escalation.reason.join("; ");
    check!(
        why.contains("never-seen 127.0.1.0/24") && why.contains("exec from a writable dir"),
        "the escalation does not explain itself: {why}"
    );
    let frozen = records.iter().find_map(|r| match r {
        Record::Quarantine(q) if q.op == QuarantineOp::Freeze => Some(q),
        _ => None,
    });
    let Some(frozen) = frozen else { return Err(format!("no quarantine in the trace:\n{}", dump()).into()) };
    check!(frozen.actor == "scorer" && frozen.snapshot["frozen"] == freeze, "quarantine record {frozen:?}");
    check!(
        frozen.snapshot["processes"].as_array().is_some_and(|p| !p.is_empty()),
        "no process snapshot: {}",
        frozen.snapshot
    );
    check!(
        records.iter().any(|r| matches!(r, Record::Quarantine(q) if q.op == QuarantineOp::Release && q.actor == "test-operator")),
        "the release is not in the trace:\n{}",
        dump()
    );
    check!(
        records.iter().any(
            |r| matches!(r, Record::TrustChange(t) if t.actor == "test-operator" && t.to == Tier::Verified)
        ),
        "the restored tier is not in the trace:\n{}",
        dump()
    );
    let r = dna::replay(&trace).map_err(fail)?;
    check!(r.ok(), "replay diverges: {:?}\n{}", r.divergence, dump());
    check!(r.tier_changes >= 1 && r.quarantines == 1, "replay reproduced too little: {r:?}");

    // The digest an operator reads, from the recorded trace alone.
    let entries: Vec<dna::Entry> = trace.records().map_err(fail)?.collect::<Result<_, _>>().map_err(fail)?;
    let q = forge_agent::digest::last_quarantine(&entries).ok_or("no quarantine digest")?;
    let text = q.to_string();
    let how = if freeze { "and froze it" } else { "in the redzone, running" };
    check!(
        q.tier == Some(Tier::Compromised)
            && text.contains(&format!("scorer quarantined it {how}"))
            && text.contains("exec from a writable dir")
            && text.contains("test-operator released it"),
        "quarantine digest:\n{text}"
    );
    let w = forge_agent::digest::workload(&entries).to_string();
    check!(
        w.contains("governed, tier verified") && w.contains("scorer moved it from verified to compromised"),
        "workload digest:\n{w}"
    );
    Ok(())
}
