//! The real agent (`forge agent run`) across the life of its workloads and
//! of itself: a governed cgroup made again is governed again from the
//! kernel's event; a selector governs cgroups as they appear; a governed
//! caller cannot change the agent through its API; a restarted agent
//! resumes everything (quarantine included) and later applies reach it;
//! links are held, pinned again, attached again, and `forge doctor` checks
//! them.

use std::{
    path::Path,
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use forge_agent::{
    api::{Request, protocol::Document},
    cgroup::{Cgroup, cgroup2_mount},
    dna::{self, Record},
    policy::Tier,
    workload::{Action, Outcome, run_action_in},
};
use forge_tests::{EPERM, SIGKILL, agent::AgentProcess, check, counting_listener, expect, fail};
use libtest_mimic::Failed;
use serde_json::Value;

/// Denies connects to `denied`; at `compromised` every connect (the redzone).
fn policy(denied: std::net::SocketAddr) -> String {
    format!(
        "apiVersion: forgeone.dev/v1alpha1
kind: Policy
metadata: {{name: lifecycle}}
spec:
  selector: {{cgroups: [forge-test/*]}}
  defaults: {{exec: allow, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, net.unix: allow, syscall: allow}}
  rules:
    - {{name: no-denied-port, op: net.connect, action: deny, cidrs: [127.0.0.1/32], ports: {}}}
  escalation:
    compromised:
      quarantine: redzone
",
        denied.port()
    )
}

fn connect(cgroup: &Cgroup, to: std::net::SocketAddr) -> Result<Outcome, Failed> {
    let exe = std::env::current_exe().map_err(fail)?;
    run_action_in(cgroup, &exe, &Action::Connect(to)).map_err(fail)
}

/// In the redzone nothing new runs: a process started there to connect is
/// killed at its exec (tracepoints) or refused it (LSM), or its connect is
/// denied; either way the connect does not happen (its listener counts).
fn redzone_connect(
    cgroup: &Cgroup,
    to: std::net::SocketAddr,
    hits: &AtomicUsize,
    what: &str,
) -> Result<(), Failed> {
    let before = hits.load(Ordering::SeqCst);
    let got = connect(cgroup, to)?;
    check!(
        got == EPERM || got == SIGKILL,
        "{what}: expected the connect refused or the process killed, got {got}"
    );
    std::thread::sleep(Duration::from_millis(50));
    check!(hits.load(Ordering::SeqCst) == before, "{what}: the connect reached its listener");
    Ok(())
}

/// The status entry of the governed cgroup at `path`, if governed.
fn entry(status: &Value, path: &Path) -> Option<Value> {
    status["governed"].as_array()?.iter().find(|g| g["cgroup"].as_str() == path.to_str()).cloned()
}

fn audit(a: &AgentProcess, action: &str) -> Result<Vec<Value>, Failed> {
    let all = a.ask(&Request::Audit)?;
    Ok(all.as_array().into_iter().flatten().filter(|e| e["action"] == action).cloned().collect())
}

/// A named cgroup removed and made again at the same path (a service or
/// container restart) is governed again, with the same policy and tier,
/// from the kernel's `cgroup_mkdir` event; a quarantined one stays
/// quarantined; status and the trace name the old and new ids.
pub(crate) fn recreated_cgroup_governed_again() -> Result<(), Failed> {
    let (denied, hits) = counting_listener("127.0.0.1:0")?;
    let (open, open_hits) = counting_listener("127.0.0.1:0")?;
    let mut a = AgentProcess::new("recreate", &policy(denied))?;
    let name = format!("forge-test/{}-recreate.service", std::process::id());
    let cg = Cgroup::create(&name).map_err(fail)?;
    let r = (|| {
        a.start(&["--govern", &name])?;
        expect("connect to the denied port", connect(&cg, denied)?, EPERM)?;
        expect("connect to an open port", connect(&cg, open)?, Outcome::Ok)?;
        let mut ids = vec![cg.id];
        for round in 0..2 {
            let old = *ids.last().expect("one id");
            if round == 1 {
                // Quarantined now: the redzone must survive the next restart.
                a.ask(&Request::Quarantine {
                    cgroup: name.clone(),
                    actor: "test".into(),
                    reason: "round 2".into(),
                })?;
                redzone_connect(&Cgroup { path: cg.path.clone(), id: old }, open, &open_hits, "the redzone")?;
            }
            Cgroup { path: cg.path.clone(), id: old }.destroy().map_err(fail)?;
            let new = Cgroup::create(&name).map_err(fail)?;
            check!(new.id != old, "the re-made cgroup kept id {old}");
            let s = a.status_until(Duration::from_secs(3), |s| {
                entry(s, &new.path).is_some_and(|e| e["id"] == new.id)
            })?;
            let e = entry(&s, &new.path).ok_or("the re-made cgroup is not governed")?;
            check!(e["id"] == new.id, "status names id {} for the re-made cgroup {}", e["id"], new.id);
            let previous: Vec<u64> =
                e["previous_ids"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect();
            ids.push(new.id);
            check!(
                previous == ids[..ids.len() - 1],
                "previous ids {previous:?}, expected {:?}",
                &ids[..ids.len() - 1]
            );
            let remade = audit(&a, "cgroup_recreated")?;
            let last = remade.last().ok_or("no cgroup_recreated entry in the audit log")?;
            check!(
                last["found_by"] == "kernel_event",
                "the re-made cgroup was found by {}",
                last["found_by"]
            );
            if round == 0 {
                expect("connect to the denied port after the restart", connect(&new, denied)?, EPERM)?;
            } else {
                redzone_connect(&new, denied, &hits, "the denied port in the redzone after the restart")?;
            }
            if round == 1 {
                check!(
                    e["tier"] == serde_json::json!(Tier::Compromised),
                    "the quarantine was lost: tier {}",
                    e["tier"]
                );
                redzone_connect(&new, open, &open_hits, "the redzone after the restart")?;
            } else {
                expect("connect to an open port after the restart", connect(&new, open)?, Outcome::Ok)?;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
        let n = hits.load(Ordering::SeqCst);
        check!(n == 0, "{n} connect(s) reached the denied port");
        // The trace of the first id goes on with the later ones.
        a.stop_with(nix::sys::signal::SIGTERM)?;
        let trace = a.data_dir.join("traces").join(format!("cgroup-{}.dna", ids[0]));
        let t = dna::Trace::open(&trace).map_err(fail)?;
        let records: Vec<dna::Entry> = t.records().map_err(fail)?.collect::<Result<_, _>>().map_err(fail)?;
        let remade: Vec<(u64, u64)> = records
            .iter()
            .filter_map(|e| match &e.record {
                Record::Governed(g) => Some((g.previous_cgroup_id?, g.cgroup_id?)),
                _ => None,
            })
            .collect();
        check!(remade == vec![(ids[0], ids[1]), (ids[1], ids[2])], "trace records {remade:?}, ids {ids:?}");
        Ok(())
    })();
    if let Ok(now) = Cgroup::open(&cg.path) {
        let _ = now.destroy();
    }
    r
}

/// `DIR/*` governs the cgroups below DIR: those there at start and those
/// made later (from the kernel's event), with their own subtrees.
pub(crate) fn selector_governs_new_children() -> Result<(), Failed> {
    let (denied, hits) = counting_listener("127.0.0.1:0")?;
    let mut a = AgentProcess::new("selector", &policy(denied))?;
    let pods = format!("forge-test/{}-pods", std::process::id());
    let top = Cgroup::create(&pods).map_err(fail)?;
    let r = (|| {
        let first = Cgroup::create(&format!("{pods}/pod-a")).map_err(fail)?;
        a.start(&["--govern", &format!("{pods}/*")])?;
        expect("connect from a pod there at start", connect(&first, denied)?, EPERM)?;
        let second = Cgroup::create(&format!("{pods}/pod-b")).map_err(fail)?;
        a.status_until(Duration::from_secs(3), |s| entry(s, &second.path).is_some())?;
        let ctr = Cgroup::create(&format!("{pods}/pod-b/ctr-1")).map_err(fail)?;
        expect("connect from a container of a pod made later", connect(&ctr, denied)?, EPERM)?;
        let s = a.ask(&Request::Status)?;
        check!(s["selectors"][0] == format!("{pods}/*"), "selectors {}", s["selectors"]);
        // The directory itself is not selected.
        check!(entry(&s, &top.path).is_none(), "the selector's directory was governed");
        std::thread::sleep(Duration::from_millis(50));
        let n = hits.load(Ordering::SeqCst);
        check!(n == 0, "{n} connect(s) reached the denied port");
        Ok(())
    })();
    let _ = top.destroy_tree();
    r
}

/// `forge` as a process inside a governed cgroup: reading works, every
/// change is refused (and audited), and enforcement is unchanged. A caller
/// that is neither root nor in the API group is refused at the socket.
pub(crate) fn governed_callers_cannot_change_the_agent() -> Result<(), Failed> {
    let (denied, hits) = counting_listener("127.0.0.1:0")?;
    let mut a = AgentProcess::new("apicaller", &policy(denied))?;
    let name = format!("forge-test/{}-apicaller", std::process::id());
    let cg = Cgroup::create(&name).map_err(fail)?;
    let r = (|| {
        a.start(&["--govern", &name])?;
        let forge = forge_tests::agent::forge_binary();
        let socket = a.socket.display().to_string();
        let inside = |args: &[&str]| -> Result<std::process::Output, Failed> {
            let mut cmd = Command::new(&forge);
            cmd.args(args).args(["--socket", &socket]);
            let child = forge_agent::workload::spawn_in(
                &cg,
                cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()),
            )
            .map_err(fail)?;
            child.wait_with_output().map_err(fail)
        };
        let out = inside(&["status", "--json"])?;
        check!(out.status.success(), "status from inside failed: {}", String::from_utf8_lossy(&out.stderr));
        for args in [
            vec!["ungovern", name.as_str()],
            vec!["release", name.as_str()],
            vec!["govern", "forge-test/escape"],
        ] {
            let out = inside(&args)?;
            let err = String::from_utf8_lossy(&out.stderr);
            check!(
                !out.status.success(),
                "`forge {}` from inside the governed cgroup succeeded",
                args.join(" ")
            );
            check!(
                err.contains("a governed workload may not change the agent"),
                "`forge {}`: {err}",
                args.join(" ")
            );
        }
        check!(
            !cgroup2_mount().map_err(fail)?.join("forge-test/escape").exists(),
            "a governed caller made a cgroup"
        );
        let s = a.ask(&Request::Status)?;
        check!(entry(&s, &cg.path).is_some(), "the cgroup is no longer governed");
        expect("connect after the refused calls", connect(&cg, denied)?, EPERM)?;
        let refused = audit(&a, "api_refused")?;
        check!(refused.len() == 3, "{} refusals audited, expected 3: {refused:?}", refused.len());
        // Neither root nor in the API group: refused even on a socket
        // whose mode would let it in.
        std::fs::set_permissions(&a.socket, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .map_err(fail)?;
        let mut cmd = Command::new(&forge);
        std::os::unix::process::CommandExt::uid(cmd.args(["status", "--socket", &socket]), 65534);
        std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
        let out = cmd.output().map_err(fail)?;
        let err = String::from_utf8_lossy(&out.stderr);
        check!(!out.status.success() && err.contains("may not use the agent's API"), "uid 65534: {err}");
        std::thread::sleep(Duration::from_millis(50));
        let n = hits.load(Ordering::SeqCst);
        check!(n == 0, "{n} connect(s) reached the denied port");
        Ok(())
    })();
    let _ = cg.destroy();
    r
}

/// A restarted agent (SIGKILL, then a new one on the same pins and data)
/// resumes the workload as it was, quarantine included, with no "pins
/// only" state; a policy applied to it afterwards reaches it; its trace
/// goes on in the same file and verifies; a release restores the tier the
/// workload had before its quarantine.
pub(crate) fn restart_resumes_everything() -> Result<(), Failed> {
    let (denied, hits) = counting_listener("127.0.0.1:0")?;
    let (open, open_hits) = counting_listener("127.0.0.1:0")?;
    let (later, later_hits) = counting_listener("127.0.0.1:0")?;
    let mut a = AgentProcess::new("restart", &policy(denied))?;
    let name = format!("forge-test/{}-restart", std::process::id());
    let cg = Cgroup::create(&name).map_err(fail)?;
    let r = (|| {
        a.start(&["--govern", &name])?;
        a.ask(&Request::Quarantine {
            cgroup: name.clone(),
            actor: "test".into(),
            reason: "before the restart".into(),
        })?;
        redzone_connect(&cg, open, &open_hits, "the redzone before the restart")?;
        a.stop_with(nix::sys::signal::SIGKILL)?;
        check!(a.state_file().exists(), "no state file at {}", a.state_file().display());
        // The same start command (the same --govern, the same files).
        a.start(&["--govern", &name])?;
        let s = a.ask(&Request::Status)?;
        let e = entry(&s, &cg.path).ok_or("the workload is not governed after the restart")?;
        check!(e["id"] == cg.id, "id {} after the restart", e["id"]);
        check!(
            e["tier"] == serde_json::json!(Tier::Compromised),
            "the quarantine was lost: tier {}",
            e["tier"]
        );
        check!(
            s["governed_from_pins_only"].as_array().is_some_and(Vec::is_empty),
            "pins only: {}",
            s["governed_from_pins_only"]
        );
        redzone_connect(&cg, open, &open_hits, "the redzone after the restart")?;
        // Release: back to the tier before the quarantine, under the policy in force.
        a.ask(&Request::Release { cgroup: name.clone(), actor: "test".into() })?;
        expect("connect to an open port after the release", connect(&cg, open)?, Outcome::Ok)?;
        // A policy applied now reaches the resumed workload.
        let doc = Document { name: "later.yaml".into(), text: policy(later) };
        a.ask(&Request::PolicyApply { documents: vec![doc] })?;
        expect("connect to the newly denied port", connect(&cg, later)?, EPERM)?;
        expect("connect to the formerly denied port", connect(&cg, denied)?, Outcome::Ok)?;
        std::thread::sleep(Duration::from_millis(50));
        check!(hits.load(Ordering::SeqCst) == 1, "the formerly denied port counts its one allowed connect");
        check!(later_hits.load(Ordering::SeqCst) == 0, "a connect reached the newly denied port");
        a.stop_with(nix::sys::signal::SIGTERM)?;
        let trace = a.data_dir.join("traces").join(format!("cgroup-{}.dna", cg.id));
        let key = forge_agent::sign::PublicKey::load(&a.data_dir.join("agent.pub")).map_err(fail)?;
        let v = dna::verify_file(&trace, &dna::VerifyOptions { trusted_key: Some(key) }).map_err(fail)?;
        check!(v.ok, "the continued trace does not verify: {v:?}");
        let t = dna::Trace::open(&trace).map_err(fail)?;
        let records: Vec<dna::Entry> = t.records().map_err(fail)?.collect::<Result<_, _>>().map_err(fail)?;
        check!(
            records.iter().any(|e| matches!(e.record, Record::Reopen(_))),
            "the trace was not continued (no reopen record)"
        );
        check!(
            records.iter().any(|e| matches!(e.record, Record::Quarantine(_))),
            "the quarantine is not in the trace"
        );
        Ok(())
    })();
    let _ = cg.destroy();
    r
}

fn doctor(a: &AgentProcess) -> Result<(i32, Value), Failed> {
    let out = Command::new(forge_tests::agent::forge_binary())
        .args(["doctor", "--json", "--pin-root"])
        .arg(&a.pin_root)
        .arg("--data-dir")
        .arg(&a.data_dir)
        .arg("--socket")
        .arg(&a.socket)
        .output()
        .map_err(fail)?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("doctor --json: {e}: {}", String::from_utf8_lossy(&out.stdout)))?;
    Ok((out.status.code().unwrap_or(-1), v))
}

/// The agent holds every link: a removed pin detaches nothing while it
/// runs, and it pins the link again. With no agent running, a missing link
/// makes `forge doctor` fail (exit 4, naming it); the next agent attaches
/// it again.
pub(crate) fn links_held_repinned_and_checked() -> Result<(), Failed> {
    let (denied, hits) = counting_listener("127.0.0.1:0")?;
    let mut a = AgentProcess::new("links", &policy(denied))?;
    let name = format!("forge-test/{}-links", std::process::id());
    let cg = Cgroup::create(&name).map_err(fail)?;
    let r = (|| {
        a.start(&["--govern", &name])?;
        let (code, v) = doctor(&a)?;
        check!(code == 0, "doctor exit {code} with every link in place: {}", v["integrity"]["problems"]);
        let attach = a.pin_root.join("links/cgroup_attach_task");
        let connect4 = a.pin_root.join(format!("cgroups/{}/connect4", cg.id));
        for pin in [&attach, &connect4] {
            std::fs::remove_file(pin).map_err(|e| format!("{}: {e}", pin.display()))?;
        }
        // Still enforced: the agent holds the links.
        expect("connect with its link pin removed", connect(&cg, denied)?, EPERM)?;
        let root = cgroup2_mount().map_err(fail)?;
        let exe = std::env::current_exe().map_err(fail)?;
        let escape = Action::MoveSelf(root.clone(), Box::new(Action::Connect(denied)));
        expect(
            "moving out with the attach link's pin removed",
            run_action_in(&cg, &exe, &escape).map_err(fail)?,
            SIGKILL,
        )?;
        a.status_until(Duration::from_secs(3), |_| attach.exists() && connect4.exists())?;
        check!(attach.exists() && connect4.exists(), "the agent did not pin its links again");
        let repinned = audit(&a, "link_repinned")?;
        check!(repinned.len() >= 2, "re-pinning not audited: {repinned:?}");

        a.stop_with(nix::sys::signal::SIGKILL)?;
        let fork = a.pin_root.join("links/sched_process_fork");
        std::fs::remove_file(&fork).map_err(fail)?;
        let (code, v) = doctor(&a)?;
        let problems = v["integrity"]["problems"].to_string();
        check!(code == 4, "doctor exit {code} with a link missing; problems {problems}");
        check!(problems.contains("sched_process_fork"), "doctor does not name the missing link: {problems}");

        a.start(&["--govern", &name])?;
        check!(fork.exists(), "the next agent did not attach the missing link again");
        let s = a.ask(&Request::Status)?;
        check!(s["links"]["reattached"].to_string().contains("sched_process_fork"), "status: {}", s["links"]);
        let (code, v) = doctor(&a)?;
        check!(
            code == 0,
            "doctor exit {code} after the agent attached it again: {}",
            v["integrity"]["problems"]
        );
        std::thread::sleep(Duration::from_millis(50));
        let n = hits.load(Ordering::SeqCst);
        check!(n == 0, "{n} connect(s) reached the denied port");
        Ok(())
    })();
    let _ = cg.destroy();
    r
}

/// Processes whose command line environment holds `needle` (the workload
/// action a forked process inherits), other than zombies.
fn processes_with(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z'));
            !zombie && env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes())
        })
        .collect()
}

/// An escaped process ends dead, with what it forks, whatever the kernel:
/// killed by the kernel before it runs (6.13+), or doomed there, with
/// every process it forks, and killed by the agent (older kernels; the
/// event says so and the audit log names each pid).
pub(crate) fn escaped_processes_end_dead() -> Result<(), Failed> {
    let (denied, _) = counting_listener("127.0.0.1:0")?;
    let mut a = AgentProcess::new("doomed", &policy(denied))?;
    let name = format!("forge-test/{}-doomed", std::process::id());
    let cg = Cgroup::create(&name).map_err(fail)?;
    let r = (|| {
        a.start(&["--govern", &name])?;
        let in_kernel = a.ask(&Request::Status)?["kill_other_task_in_kernel"] == true;
        let root = cgroup2_mount().map_err(fail)?;
        // The escaped child escapes again, and its child sleeps.
        let action = format!(
            "clone3-into {r} clone3-into {r} sleep {}",
            3_600_000 + std::process::id(),
            r = root.display()
        );
        let needle = format!("{}={action}", forge_agent::workload::ACTION_ENV);
        let exe = std::env::current_exe().map_err(fail)?;
        let a_action: Action = action.parse().map_err(|e: String| Failed::from(e))?;
        let got = run_action_in(&cg, &exe, &a_action).map_err(fail)?;
        if in_kernel {
            expect("the parent of a child killed in the kernel", got, Outcome::Ok)?;
        } else {
            expect("the parent that made the escape (the kernel kills it)", got, SIGKILL)?;
        }
        // A doomed process's children are killed at the agent's next tick
        // (1 s) when no event wakes it first; emulated guests are slow.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !processes_with(&needle).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let left = processes_with(&needle);
        let describe = |pid: &u32| {
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let ppid = status.lines().find(|l| l.starts_with("PPid:")).unwrap_or("PPid: ?");
            format!("{pid} ({ppid}, cgroup {})", cgroup.trim())
        };
        check!(
            left.is_empty(),
            "escaped processes still alive: {:?}; the agent's audit: {:?}",
            left.iter().map(describe).collect::<Vec<_>>(),
            audit(&a, "escaped_process_killed")
        );
        if !in_kernel {
            let killed = audit(&a, "escaped_process_killed")?;
            check!(!killed.is_empty(), "the agent did not kill the doomed processes: {killed:?}");
        }
        Ok(())
    })();
    let _ = cg.destroy();
    r
}
