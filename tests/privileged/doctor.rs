//! `forge doctor`'s integrity checks on a real agent's pinned state and
//! traces: every pinned program carries the kernel tag of the embedded
//! program loaded on this kernel, a program that is not ours is named, and
//! a modified trace is named.

use forge_agent::{
    api::protocol::Document,
    ebpf::{Want, loader},
    integrity,
};
use forge_tests::{DaemonFixture, check, fail};
use libtest_mimic::Failed;

const POLICY: &str = "apiVersion: forgeone.dev/v1alpha1
kind: Policy
metadata: {name: doctor-test}
spec:
  selector: {cgroups: [forge-test/*]}
  defaults: {exec: allow, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, syscall: allow}
";

pub(crate) fn integrity_of_pins_and_traces() -> Result<(), Failed> {
    let mut d = DaemonFixture::start(
        "doctor",
        vec![Document { name: "d.yaml".into(), text: POLICY.into() }],
        Want { cgroup: Some(true), tracepoint: Some(true), ..Want::default() },
        |_| {},
    )?;
    let (_, tags) = loader::probe_with_tags().map_err(fail)?;
    let ok = integrity::check(d.pin_root(), &tags, &d.data_dir, Some(d.agent_key));
    check!(ok.problems.is_empty(), "a fresh agent has problems: {:?}", ok.problems);
    check!(ok.pinned && ok.programs.len() >= 5, "programs checked: {:?}", ok.programs);
    check!(ok.programs.iter().all(|p| p.matches), "tags: {:?}", ok.programs);

    // Someone else's program under our name: a different expected tag stands for it.
    let first = ok.programs.first().ok_or("no program")?;
    let (name, tag) = (first.name, first.pinned_tag.clone());
    let forged: Vec<(&'static str, u64)> =
        tags.iter().map(|&(n, t)| if n == name { (n, !t) } else { (n, t) }).collect();
    let bad = integrity::check(d.pin_root(), &forged, &d.data_dir, Some(d.agent_key));
    check!(
        bad.problems.iter().any(|p| p.contains(&format!("pinned program {name} has tag {tag}"))),
        "a foreign program was not named: {:?}",
        bad.problems
    );

    // A modified trace.
    d.stop();
    let path = d.trace_path();
    let mut bytes = std::fs::read(&path).map_err(fail)?;
    let at = bytes.len() - 40;
    bytes[at] ^= 0x20;
    std::fs::write(&path, bytes).map_err(fail)?;
    let tampered = integrity::check(d.pin_root(), &tags, &d.data_dir, Some(d.agent_key));
    check!(
        tampered.problems.iter().any(|p| p.starts_with(&format!("trace cgroup-{}: record", d.cgroup.id))),
        "a modified trace was not named: {:?}",
        tampered.problems
    );
    Ok(())
}
