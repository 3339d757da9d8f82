//! Event storm: a workload floods a small event ring with denied connects
//! while nothing reads it. Enforcement must not weaken (every connect is
//! denied), and every lost event must be accounted to the workload's cgroup:
//! per hook, events read + events counted as dropped = decisions counted.

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    time::Instant,
};

use forge_agent::{
    agent::{Agent, AgentError, AgentOptions},
    ebpf::{LoadError, Want, loader},
    events::{Hook, Mode, Op, Verdict},
    workload::{ACTION_ENV, Outcome, spawn_in},
};
use forge_common::{CounterKey, hook, mode, verdict};
use forge_tests::{EPERM, Fixture, check, expect, fail};
use libtest_mimic::Failed;

use crate::free_port;

/// Connects in the storm: far more than a small ring holds.
const STORM: u32 = 200_000;

fn policy(port: u16) -> String {
    format!(
        "apiVersion: forgeone.dev/v1alpha1
kind: Policy
metadata: {{name: storm-test}}
spec:
  defaults: {{exec: allow, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, net.unix: allow, syscall: allow}}
  rules:
    - {{name: no-storm-port, op: net.connect, action: deny, cidrs: [127.0.0.1/32], ports: {port}}}\n"
    )
}

pub(crate) fn storm() -> Result<(), Failed> {
    let page = loader::page_size();
    // Two pages (8 KiB with 4 KiB pages): a couple of dozen events.
    let ring = u32::try_from(2 * page).map_err(fail)?;
    let want = Want { cgroup: Some(true), tracepoint: Some(true), ..Want::default() };

    // A size that is not a power-of-two multiple of the page is refused up front.
    let bad = ring + u32::try_from(page).map_err(fail)?;
    let bad_root = format!("/sys/fs/bpf/forge-test-{}-storm-bad", std::process::id());
    match Agent::start(&AgentOptions { pin_root: bad_root.clone().into(), want, ring_bytes: Some(bad) }) {
        Err(AgentError::Load(LoadError::RingBytes { bytes, page_size })) => {
            check!(bytes == bad && page_size == page, "error names {bytes} and {page_size}");
        }
        Err(e) => return Err(format!("ring of {bad} bytes: unexpected error {e}").into()),
        Ok(_) => {
            let _ = forge_agent::ebpf::Pins::new(&bad_root).remove_all();
            return Err(format!("a ring of {bad} bytes was accepted").into());
        }
    }

    let port = free_port("127.0.0.1:0")?;
    let target = format!("127.0.0.1:{port}");
    let mut f = Fixture::with_ring("storm", &policy(port), want, Some(ring))?;
    let cg = f.cgroup.id;
    let h = f.agent_mut().writer.handles();
    check!(h.ring_bytes == ring, "ring of {} bytes, asked for {ring}", h.ring_bytes);
    check!(h.active.cgroup && h.active.tracepoint, "backends in force: {:?}", h.active);

    // The storm, in one process inside the cgroup; nothing reads the ring meanwhile.
    let mut cmd = Command::new(&f.exe);
    cmd.env(ACTION_ENV, format!("connect-storm {target} {STORM}")).stdout(Stdio::piped());
    let started = Instant::now();
    let child = spawn_in(&f.cgroup, &mut cmd).map_err(fail)?;
    let out = child.wait_with_output().map_err(fail)?;
    let took = started.elapsed();
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // (a) Enforcement did not weaken: every single connect was denied.
    check!(
        said == format!("denied {STORM} of {STORM}"),
        "the workload reports {said:?} ({})",
        Outcome::from_status(out.status)
    );
    expect("the storm workload", Outcome::from_status(out.status), Outcome::Ok)?;

    // The workload has exited (its exit event was reported before wait
    // returned): the counters are final. Drain what the ring held.
    let agent = f.agent_mut();
    let events = agent.drain();
    check!(agent.events.decode_errors == 0, "{} undecodable events", agent.events.decode_errors);
    let counters = agent.writer.counters().map_err(fail)?;
    let by_cgroup = agent.writer.drops_by_cgroup().map_err(fail)?;
    let global = agent.writer.drops().map_err(fail)?;
    let counter = |h: u16, v: u8| {
        let key = CounterKey { cgroup_id: cg, hook: h, verdict: v, mode: mode::ENFORCE, _pad: 0 };
        counters.iter().find(|(k, _)| *k == key).map_or(0, |(_, n)| *n)
    };
    let mut read: BTreeMap<Hook, u64> = BTreeMap::new();
    for e in events.iter().filter(|e| e.cgroup_id == cg) {
        *read.entry(e.hook).or_default() += 1;
    }
    let read_of = |h: Hook| read.get(&h).copied().unwrap_or(0);
    let denies_read = events
        .iter()
        .filter(|e| {
            e.cgroup_id == cg
                && e.hook == Hook::CgroupConnect4
                && e.op == Op::NetConnect
                && e.verdict == Verdict::Deny
                && e.mode == Mode::Enforce
        })
        .count() as u64;
    let denied = counter(hook::CGROUP_CONNECT4, verdict::DENY);
    let dropped = counter(hook::CGROUP_CONNECT4, verdict::DROPPED);
    let cg_drops = by_cgroup.get(&cg).copied().unwrap_or(0);
    eprintln!(
        "storm: {STORM} connects denied in {:.2} s with a {ring}-byte ring; {denies_read} deny events read, \
         {dropped} dropped; {cg_drops} drops for the cgroup, {global} in all",
        took.as_secs_f64()
    );
    let detail = || format!("counters {counters:?}, drops by cgroup {by_cgroup:?}, events read {read:?}");

    check!(denied == u64::from(STORM), "deny counter {denied} for {STORM} denied connects: {}", detail());
    // (b) The storm overflowed the ring, and the loss is the workload's.
    check!(cg_drops > 0 && global > 0, "no drops: {}", detail());
    check!(denies_read > 0 && dropped > 0, "{denies_read} read, {dropped} dropped: {}", detail());
    // (c) Nothing unaccounted for the denied hook...
    check!(
        denies_read + dropped == denied,
        "{denies_read} deny events read + {dropped} dropped != {denied} denies counted: {}",
        detail()
    );
    check!(read_of(Hook::CgroupConnect4) == denies_read, "other connect4 events: {}", detail());
    // ... nor for process tracking: one exec and one exit, each read or
    // dropped. The ring was still full at exit, so that INFO event was lost
    // and counted as such.
    for (h, tag) in [(Hook::ProcExec, hook::PROC_EXEC), (Hook::ProcExit, hook::PROC_EXIT)] {
        let lost = counter(tag, verdict::DROPPED);
        check!(read_of(h) + lost == 1, "{h}: {} read + {lost} dropped != 1: {}", read_of(h), detail());
    }
    check!(
        counter(hook::PROC_EXIT, verdict::DROPPED) == 1,
        "the exit event was not counted as dropped: {}",
        detail()
    );
    // ... nor for the cgroup as a whole, nor globally (it is the only
    // governed cgroup of this agent's maps).
    let all_read: u64 = read.values().sum();
    check!(
        all_read + cg_drops == u64::from(STORM) + 2,
        "{all_read} events read + {cg_drops} dropped != {STORM} denies + exec + exit: {}",
        detail()
    );
    check!(
        by_cgroup.values().sum::<u64>() == global,
        "drops by cgroup {by_cgroup:?} do not add up to the {global} global drops"
    );

    // Once drained, the ring carries events again.
    expect("a denied connect after the storm", f.inside(&format!("connect {target}"))?, EPERM)?;
    let after = f.decisions(1);
    check!(
        after.iter().any(|e| e.cgroup_id == cg && e.hook == Hook::CgroupConnect4),
        "no connect event after draining the ring: {after:?}"
    );

    // An agent adopting these pins keeps the ring they were loaded with.
    let _guard = f.rt.enter();
    let adopted = Agent::start(&AgentOptions {
        pin_root: f.pin_root.clone(),
        want,
        ring_bytes: Some(forge_common::capacity::EVENT_RING_BYTES),
    })
    .map_err(fail)?;
    let h = adopted.writer.handles();
    check!(h.adopted && h.ring_bytes == ring, "adopted: {}, ring of {} bytes", h.adopted, h.ring_bytes);
    Ok(())
}
