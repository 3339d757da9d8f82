//! Events to action on a real cgroup: a workload learns, stays untouched
//! while it behaves like itself, then does something reverse-shell-like (a
//! connect to a never-seen network and the exec of a shell copied into /tmp);
//! the agent scores it, drops it to `compromised` and quarantines it live.
//! Release thaws it and restores its previous policy; the audit names who.

use std::{path::PathBuf, time::Duration};

use forge_agent::{
    api::{Request, client::call, protocol::Document},
    cgroup::Cgroup,
    ebpf::Want,
    trust::quarantine::is_frozen,
    workload::{Action, Outcome, run_action_in},
};
use forge_tests::{DaemonFixture, check, expect, fail};
use libtest_mimic::Failed;

use crate::{listener, process::exe_copy};

const POLICY: &str = "apiVersion: forgeone.dev/v1alpha1
kind: Policy
metadata: {name: quarantine-test}
spec:
  selector: {cgroups: [forge-test/*]}
  trust: verified
  defaults: {exec: allow, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, syscall: allow}
  escalation:
    suspicious:
      defaults: {net.connect: deny}
    compromised:
      quarantine: true
";

pub(crate) fn learn_score_quarantine_release() -> Result<(), Failed> {
    let service = listener("127.0.0.1:0")?;
    // 127.0.1.0/24 is loopback too, but a network the workload never used.
    let elsewhere = listener("127.0.1.1:0")?;
    let d = DaemonFixture::start(
        "quarantine",
        vec![Document { name: "q.yaml".into(), text: POLICY.into() }],
        Want { cgroup: Some(true), tracepoint: Some(true), ..Want::default() },
        |d| d.scorer.config.learning_ns = 3_000_000_000,
    )?;
    scenario(&d.socket, &d.cgroup, service, elsewhere)
}

fn tier_of(socket: &std::path::Path) -> Result<String, Failed> {
    let s = call(socket, &Request::Status).map_err(fail)?;
    Ok(s["governed"][0]["tier"].as_str().unwrap_or("?").to_string())
}

fn scenario(
    socket: &std::path::Path,
    cgroup: &Cgroup,
    service: std::net::SocketAddr,
    elsewhere: std::net::SocketAddr,
) -> Result<(), Failed> {
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
    // The dropped shell is frozen with its cgroup: do not wait for it here.
    let mut cmd = std::process::Command::new(&exe);
    cmd.env(forge_agent::workload::ACTION_ENV, Action::Exec(shell.clone()).to_string());
    let mut dropped = forge_agent::workload::spawn_in(cgroup, &mut cmd).map_err(fail)?;

    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !is_frozen(cgroup).map_err(fail)? && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    check!(is_frozen(cgroup).map_err(fail)?, "the cgroup was not frozen; tier {}", tier_of(socket)?);
    check!(tier_of(socket)? == "compromised", "tier {}", tier_of(socket)?);
    let audit = call(socket, &Request::Audit).map_err(fail)?;
    let text = audit.to_string();
    check!(
        text.contains("never-seen 127.0.1.0/24")
            && text.contains(&format!("exec from a writable dir: {shell}")),
        "audit lacks the reasons: {text}"
    );
    check!(text.contains("\"action\":\"quarantine\""), "audit lacks the quarantine: {text}");
    let latency =
        audit.as_array().into_iter().flatten().filter_map(|e| e["latency_us"].as_u64()).max().unwrap_or(0);
    eprintln!("quarantine: event read to frozen + policy switched in {latency} µs");

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
    Ok(())
}
