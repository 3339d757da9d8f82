//! Atomic hot-swap: policies are swapped in a loop while a workload hammers
//! a connect that every generation denies. No connect may slip through a gap,
//! and every decision must come whole from one generation: its rule id is
//! the one of the policy that generation was compiled from.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use forge_agent::{
    events::{DecisionEvent, Op, Verdict},
    workload::Outcome,
};
use forge_tests::{Fixture, check, expect, fail};
use libtest_mimic::Failed;

use crate::listener;

fn policy(name: &str, padding_rules: usize, port: u16) -> String {
    let mut rules = String::new();
    for i in 0..padding_rules {
        rules.push_str(&format!(
            "    - {{name: {name}-pad-{i}, op: net.bind, action: deny, cidrs: [10.9.9.{i}/32]}}\n"
        ));
    }
    rules.push_str(&format!(
        "    - {{name: {name}-deny, op: net.connect, action: deny, cidrs: [127.0.0.1/32], ports: {port}}}\n"
    ));
    format!(
        "apiVersion: forgeone.dev/v1alpha1
kind: Policy
metadata: {{name: {name}}}
spec:
  defaults: {{exec: allow, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, net.unix: allow, syscall: allow}}
  rules:
{rules}"
    )
}

const SWAPS: usize = 300;
/// Fits the 1 MiB ring (352-byte events) while the test only reads at the end.
const CONNECTS: u32 = 2000;

pub(crate) fn hot_swap() -> Result<(), Failed> {
    let target = listener("127.0.0.1:0")?;
    // Same verdict, different rule ids: A's deny is its 2nd rule, B's its 1st.
    let a = policy("swap-a", 1, target.port());
    let b = policy("swap-b", 0, target.port());
    let mut f =
        Fixture::new("hotswap", &a, forge_agent::ebpf::Want { cgroup: Some(true), ..Default::default() })?;
    let cgroup_id = f.cgroup.id;
    // Under emulation the workload can be scheduled through all its
    // connects before the test thread gets to the first swap; such a run
    // proves nothing (every decision from one generation) and is made again,
    // up to three times. Every run's decisions are checked in full.
    let mut attempts = 0;
    let seen = loop {
        attempts += 1;
        let seen = run_once(&mut f, cgroup_id, target, &a, &b)?;
        if seen > 1 || attempts == 3 {
            break seen;
        }
        eprintln!("hot-swap: run {attempts} never ran across a swap (the workload was done first); again");
    };
    check!(seen > 1, "the workload never ran across a swap in {attempts} runs; the test proved nothing");
    Ok(())
}

/// One workload run under `SWAPS` swaps; the number of generations its
/// decisions came from.
fn run_once(
    f: &mut Fixture,
    cgroup_id: u64,
    target: std::net::SocketAddr,
    a: &str,
    b: &str,
) -> Result<usize, Failed> {
    let first_gen = f.agent_mut().writer.record(cgroup_id).map_err(fail)?.generation;
    let mut gens_a: BTreeSet<u64> = BTreeSet::from([first_gen]);
    let mut gens_b = BTreeSet::new();
    let (mut rule_a, mut rule_b) = (0, 0);

    let mut child = f.start_inside(&format!("connect-denied-loop {target} {CONNECTS}"))?;
    // Swap only once the workload connects: a child can take longer to
    // start (a QEMU guest under emulation pages its binary in from the host)
    // than all the swaps take, and then nothing runs across a swap.
    let is_connect = |e: &DecisionEvent| e.op == Op::NetConnect && e.verdict != Verdict::Info;
    let started = Instant::now();
    let mut early = Vec::new();
    while early.is_empty() && started.elapsed() < Duration::from_secs(60) {
        early.extend(f.events_until(|evs| evs.iter().any(is_connect)).into_iter().filter(is_connect));
    }
    check!(!early.is_empty(), "the workload made no connect within 60 s");
    for i in 0..SWAPS {
        let (generation, compiled) = f.swap(if i % 2 == 0 { b } else { a })?;
        let deny_id =
            compiled.rules.iter().find(|r| r.name.ends_with("-deny")).map(|r| r.id).ok_or("no deny rule")?;
        if i % 2 == 0 {
            gens_b.insert(generation);
            rule_b = deny_id;
        } else {
            gens_a.insert(generation);
            rule_a = deny_id;
        }
    }
    let status = child.wait().map_err(fail)?;
    expect("every connect during the swaps denied with EPERM", Outcome::from_status(status), Outcome::Ok)?;
    check!(rule_a != rule_b, "the two policies must deny with different rule ids ({rule_a})");

    let rest = f.decisions(CONNECTS as usize - early.len()).into_iter().filter(|e| e.op == Op::NetConnect);
    let events: Vec<_> = early.into_iter().chain(rest).collect();
    let drops = f.agent_mut().writer.drops().map_err(fail)?;
    check!(
        events.len() as u64 + drops == u64::from(CONNECTS),
        "{} connect events + {drops} ring drops for {CONNECTS} connects",
        events.len()
    );
    let mut seen = BTreeSet::new();
    for ev in &events {
        let expected = if gens_a.contains(&ev.generation) {
            rule_a
        } else if gens_b.contains(&ev.generation) {
            rule_b
        } else {
            return Err(format!("event from unknown generation {}: {ev}", ev.generation).into());
        };
        check!(
            ev.rule_id == expected,
            "generation {} decided with rule {} instead of {expected}: mixed record",
            ev.generation,
            ev.rule_id
        );
        seen.insert(ev.generation);
    }
    eprintln!(
        "hot-swap: {SWAPS} swaps, {CONNECTS} connects denied, decisions came from {} generations",
        seen.len()
    );
    Ok(seen.len())
}
