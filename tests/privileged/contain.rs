//! Containment: a governed cgroup governs its whole subtree, and a governed
//! process cannot leave it. Every test runs the move for real and checks
//! the outcome that matters: the connect the policy denies never reached
//! the listener.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicUsize, atomic::Ordering},
    time::Duration,
};

use forge_agent::{
    cgroup::{Cgroup, cgroup2_mount},
    ebpf::Want,
    events::{DecisionEvent, EscapeOutcome, Hook, Op, Target, Verdict},
    workload::Outcome,
};
use forge_common::rule_id;
use forge_tests::{EPERM, Fixture, SIGKILL, check, counting_listener, expect, fail};
use libtest_mimic::{Completion, Failed};

use crate::find;

/// Allows everything but connects to `denied` and the `getpgrp` syscall.
fn policy(denied: std::net::SocketAddr) -> String {
    format!(
        "apiVersion: forgeone.dev/v1alpha1
kind: Policy
metadata: {{name: contain-test}}
spec:
  defaults: {{exec: allow, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, net.unix: allow, syscall: allow}}
  rules:
    - {{name: no-denied-port, op: net.connect, action: deny, cidrs: [127.0.0.1/32], ports: {}}}
    - {{name: no-getpgrp, op: syscall, action: deny, syscalls: [getpgrp]}}
",
        denied.port()
    )
}

/// Without BPF LSM (refused on this host; off in the guests for these
/// tests, which prove the fallbacks).
const HOST: Want = Want { lsm: Some(false), cgroup: Some(true), tracepoint: Some(true) };

/// A fixture denying connects to a counting listener.
fn fixture(name: &str) -> Result<(Fixture, std::net::SocketAddr, Arc<AtomicUsize>), Failed> {
    let (denied, hits) = counting_listener("127.0.0.1:0")?;
    let f = Fixture::new(name, &policy(denied), HOST)?;
    Ok((f, denied, hits))
}

/// Fails unless no connection reached the listener (after a moment for
/// any in flight).
fn never_connected(hits: &AtomicUsize, what: &str) -> Result<(), Failed> {
    std::thread::sleep(Duration::from_millis(50));
    let n = hits.load(Ordering::SeqCst);
    check!(n == 0, "{what}: {n} connection(s) reached the denied listener");
    Ok(())
}

/// The denied connect's event: decided by `governed`'s record for a task in `actual`.
fn connect_event(f: &mut Fixture, governed: u64, actual: u64) -> Result<DecisionEvent, Failed> {
    let events = f.decisions(1);
    let ev = find(&events, "the denied connect", |e| e.op == Op::NetConnect)?.clone();
    check!(ev.verdict == Verdict::Deny, "verdict {}", ev.verdict);
    check!(
        ev.cgroup_id == governed && ev.actual_cgroup_id == actual,
        "event names governed cgroup {} and actual {}; expected {governed} and {actual}",
        ev.cgroup_id,
        ev.actual_cgroup_id
    );
    Ok(ev)
}

/// The root of the cgroup v2 hierarchy (the usual escape target).
fn root() -> Result<PathBuf, Failed> {
    cgroup2_mount().map_err(fail)
}

fn id_of(path: &Path) -> Result<u64, Failed> {
    Cgroup::open(path).map(|c| c.id).map_err(fail)
}

/// A workload makes child cgroups below its governed one, at several
/// depths, moves into them and is governed there: the denied connect and
/// the denied syscall hold, and events name both cgroups.
pub(crate) fn child_cgroups_are_governed() -> Result<(), Failed> {
    let (mut f, denied, hits) = fixture("subtree")?;
    let deep = f.cgroup.path.join("a/b/c");
    let got = f.inside(&format!("move-self {} connect {denied}", deep.display()))?;
    expect("connect from a child cgroup three levels down", got, EPERM)?;
    never_connected(&hits, "connect from G/a/b/c")?;
    let deep_id = id_of(&deep)?;
    let governed = f.cgroup.id;
    connect_event(&mut f, governed, deep_id)?;

    let side = f.cgroup.path.join("side");
    let got = f.inside(&format!("move-self {} syscall getpgrp", side.display()))?;
    expect("a denied syscall from a child cgroup", got, SIGKILL)?;
    let events = f.decisions(1);
    let ev = find(&events, "the denied syscall", |e| e.op == Op::Syscall)?;
    check!(
        ev.cgroup_id == governed && ev.actual_cgroup_id == id_of(&side)?,
        "syscall event names {} / {}",
        ev.cgroup_id,
        ev.actual_cgroup_id
    );

    // The listener counts: the same connect from outside arrives.
    expect("the same connect outside", f.outside(&format!("connect {denied}"))?, Outcome::Ok)?;
    std::thread::sleep(Duration::from_millis(50));
    check!(hits.load(Ordering::SeqCst) == 1, "the listener did not count the allowed connect");
    deepest_governed_level(&mut f, denied, &hits)
}

/// A cgroup at the deepest level the agent governs decides for a process
/// one level below it (the walk reaches that level); one level deeper
/// cannot be governed, and the refusal names the cgroup and its level.
fn deepest_governed_level(
    f: &mut Fixture,
    denied: std::net::SocketAddr,
    hits: &AtomicUsize,
) -> Result<(), Failed> {
    let top = root()?;
    let mut deepest = f.cgroup.path.clone();
    for _ in f.cgroup.level().map_err(fail)?..forge_common::MAX_GOVERNED_LEVEL {
        deepest.push("d");
    }
    let rel = |p: &Path| {
        p.strip_prefix(&top).map_err(fail).and_then(|r| r.to_str().map(str::to_owned).ok_or("path".into()))
    };
    let cg = Cgroup::create(&rel(&deepest)?).map_err(fail)?;
    let compiled = f.compiled.clone();
    f.agent_mut().writer.govern(&cg, &compiled).map_err(fail)?;
    let below = deepest.join("below");
    let rel_below = below.strip_prefix(&f.cgroup.path).map_err(fail)?.to_str().ok_or("path")?.to_owned();
    let (got, _) = run_in(f, &rel_below, &format!("connect {denied}"))?;
    expect("connect from below the deepest governed cgroup", got, EPERM)?;
    check!(hits.load(Ordering::SeqCst) == 1, "a connect from below the deepest governed cgroup arrived");
    connect_event(f, cg.id, id_of(&below)?)?;
    let too_deep = Cgroup::open(&below).map_err(fail)?;
    let err = match f.agent_mut().writer.govern(&too_deep, &compiled) {
        Ok(_) => {
            return Err(
                format!("{} (one level deeper than the deepest) was governed", below.display()).into()
            );
        }
        Err(e) => e.to_string(),
    };
    let level = forge_common::MAX_GOVERNED_LEVEL + 1;
    check!(
        err.contains(&format!("{}", below.display())) && err.contains(&format!("level {level}")),
        "refusal to govern too deep: {err}"
    );
    Ok(())
}

/// Creates `rel` below the fixture's cgroup (as a container runtime or
/// systemd would) and runs `action` in a process placed straight into it.
fn run_in(f: &Fixture, rel: &str, action: &str) -> Result<(Outcome, Cgroup), Failed> {
    let cg =
        Cgroup::create(f.cgroup.path.join(rel).strip_prefix(root()?).map_err(fail)?.to_str().ok_or("path")?)
            .map_err(fail)?;
    let a: forge_agent::workload::Action = action.parse().map_err(|e: String| Failed::from(e))?;
    let got = forge_agent::workload::run_action_in(&cg, &f.exe, &a).map_err(fail)?;
    Ok((got, cg))
}

/// The kubepods layout: governing the top (`kubepods`) governs every pod
/// slice and container scope below it, including those made after the
/// govern, with nothing done by the agent for them.
pub(crate) fn kubepods_layout() -> Result<(), Failed> {
    let (mut f, denied, hits) = fixture("kubepods")?;
    let governed = f.cgroup.id;
    for (pod, ctr) in [
        ("kubepods-burstable.slice/kubepods-burstable-pod1a2b.slice", "cri-containerd-0123abcd.scope"),
        ("kubepods-besteffort.slice/kubepods-besteffort-pod9f8e.slice", "cri-containerd-4567ef01.scope"),
    ] {
        // The pod and its container appear now, after the top was governed.
        let (got, cg) = run_in(&f, &format!("{pod}/{ctr}"), &format!("connect {denied}"))?;
        expect(&format!("connect from container {ctr}"), got, EPERM)?;
        connect_event(&mut f, governed, cg.id)?;
        let (got, _) = run_in(&f, &format!("{pod}/{ctr}"), "syscall getpgrp")?;
        expect(&format!("denied syscall in container {ctr}"), got, SIGKILL)?;
    }
    never_connected(&hits, "connects from every container")
}

/// A systemd service with `Delegate=yes`: its processes run in sub-cgroups
/// the service makes itself (here: as systemd lays them out); governing the
/// service's cgroup governs them.
pub(crate) fn delegated_service_layout() -> Result<(), Failed> {
    let (mut f, denied, hits) = fixture("svc.service")?;
    let governed = f.cgroup.id;
    // The service's main process starts in the service cgroup and moves
    // itself (and its payload) into delegated sub-cgroups.
    let got = f.inside(&format!("move-self {}/supervisor connect {denied}", f.cgroup.path.display()))?;
    expect("connect from the supervisor sub-cgroup", got, EPERM)?;
    let supervisor = id_of(&f.cgroup.path.join("supervisor"))?;
    connect_event(&mut f, governed, supervisor)?;
    let got =
        f.inside(&format!("move-self {}/payload/worker-1 connect {denied}", f.cgroup.path.display()))?;
    expect("connect from payload/worker-1", got, EPERM)?;
    let worker = id_of(&f.cgroup.path.join("payload/worker-1"))?;
    connect_event(&mut f, governed, worker)?;
    never_connected(&hits, "connects from the delegated sub-cgroups")
}

/// Threaded cgroups: a thread moved into a threaded child cgroup is still
/// governed.
pub(crate) fn threaded_cgroups() -> Result<(), Failed> {
    let (mut f, denied, hits) = fixture("threaded")?;
    let t = f.cgroup.path.join("t");
    std::fs::create_dir(&t).map_err(fail)?;
    std::fs::write(t.join("cgroup.type"), "threaded").map_err(fail)?;
    let got = f.inside(&format!("thread-in {} connect {denied}", t.display()))?;
    expect("connect from a thread in a threaded child cgroup", got, EPERM)?;
    let governed = f.cgroup.id;
    connect_event(&mut f, governed, id_of(&t)?)?;
    never_connected(&hits, "connect from the threaded cgroup")
}

/// The escape event for `hook`, checked: the escaped process `pid` (if
/// known), the destination, the outcome.
fn escape_event(
    f: &mut Fixture,
    hook: Hook,
    into: u64,
    outcome: EscapeOutcome,
) -> Result<DecisionEvent, Failed> {
    let events = f.decisions(1);
    let ev = find(&events, "the escape", |e| e.hook == hook)?.clone();
    check!(
        ev.op == Op::Protect && ev.verdict == Verdict::Kill && ev.rule_id == rule_id::CONTAINMENT,
        "escape event {ev}"
    );
    match ev.target {
        Target::Escape { cgroup, outcome: o, .. } => {
            check!(
                cgroup == into && o == outcome,
                "escape into {cgroup} ({}); expected {into} ({})",
                o.as_str(),
                outcome.as_str()
            )
        }
        ref other => return Err(format!("escape event target {other}").into()),
    }
    Ok(ev)
}

/// Whether process `pid` is gone (dead and reaped).
fn gone(pid: u32) -> bool {
    for _ in 0..100 {
        // SAFETY: kill(2) with signal 0 only checks that the process exists.
        if unsafe { libc::kill(pid as i32, 0) } < 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Without BPF LSM: a process that moves itself out of its subtree
/// (`cgroup.procs` of the root cgroup) is killed at the move, before it
/// runs another instruction: its connect never happens.
pub(crate) fn move_self_out_is_killed() -> Result<(), Failed> {
    let (mut f, denied, hits) = fixture("moveself")?;
    let root = root()?;
    let got = f.inside(&format!("move-self {} connect {denied}", root.display()))?;
    expect("a process that moved itself to the root cgroup", got, SIGKILL)?;
    never_connected(&hits, "connect after moving out")?;
    escape_event(&mut f, Hook::EscapeAttach, id_of(&root)?, EscapeOutcome::Killed)?;
    Ok(())
}

/// Without BPF LSM: the child a governed process moves out of its subtree
/// is killed before it runs on (the mover stays, governed, and the breach is
/// reported).
pub(crate) fn move_child_out_is_killed() -> Result<Completion, Failed> {
    let (mut f, denied, hits) = fixture("movechild")?;
    if let Some(ignored) = forge_tests::gate_signal_task(f.agent_mut().writer.handles().signal_task)? {
        return Ok(ignored);
    }
    let root = root()?;
    let (got, out) = f.inside_output(&format!("move-child {} connect {denied}", root.display()))?;
    expect("the governed process that moved its child out", got, Outcome::Ok)?;
    check!(out.trim() == "child killed by SIGKILL", "the mover reports: {out:?}");
    never_connected(&hits, "the moved child's connect")?;
    let ev = escape_event(&mut f, Hook::EscapeAttach, id_of(&root)?, EscapeOutcome::Killed)?;
    let Target::Escape { pid, .. } = ev.target else { unreachable!("checked") };
    check!(gone(pid), "the escaped child {pid} is still alive");
    Ok(Completion::Completed)
}

/// Without BPF LSM: `clone3(CLONE_INTO_CGROUP)` into the root cgroup (the
/// directory opened `O_PATH`) gives a child that is killed before its first
/// instruction.
pub(crate) fn clone3_out_is_killed() -> Result<Completion, Failed> {
    let (mut f, denied, hits) = fixture("clone3")?;
    if let Some(ignored) = forge_tests::gate_signal_task(f.agent_mut().writer.handles().signal_task)? {
        return Ok(ignored);
    }
    let root = root()?;
    let (got, out) = f.inside_output(&format!("clone3-into {} connect {denied}", root.display()))?;
    expect("the parent of the escaped child", got, Outcome::Ok)?;
    check!(out.trim() == "child killed by SIGKILL", "the parent reports: {out:?}");
    never_connected(&hits, "the escaped child's connect")?;
    escape_event(&mut f, Hook::EscapeFork, id_of(&root)?, EscapeOutcome::Killed)?;
    // Forking into a child cgroup of its own subtree is fine.
    let inside = f.cgroup.path.join("mine");
    std::fs::create_dir(&inside).map_err(fail)?;
    let (got, out) = f.inside_output(&format!("clone3-into {} syscall getppid", inside.display()))?;
    expect("clone3 into its own child cgroup", got, Outcome::Ok)?;
    check!(out.trim() == "child succeeded", "the parent reports: {out:?}");
    Ok(Completion::Completed)
}
