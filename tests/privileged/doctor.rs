//! `forge doctor`'s integrity checks on a real agent's pinned state and
//! traces: every pinned program carries the kernel tag of the embedded
//! program loaded on this kernel, a program that is not ours is named, and
//! a modified trace is named; and whether the policy generation in force
//! came from a verified signed bundle, for an agent without a trust config
//! (a warning) and in strict mode (a problem until a signed bundle is
//! applied, and `forge doctor` exits 4 for it).

use std::{path::Path, process::Command};

use forge_agent::{
    api::{Request, client::call, daemon, protocol::Document},
    ebpf::{Want, loader},
    integrity::{
        self,
        policy::{Signed, TrustSummary, check_agent},
    },
    sign::{
        bundle::{Bundle, Document as BundleDoc},
        keys::{SigningKey, generate_files},
        trust::TrustConfig,
    },
};
use forge_tests::{DaemonFixture, check, fail};
use libtest_mimic::Failed;

const POLICY: &str = "apiVersion: forgeone.dev/v1alpha1
kind: Policy
metadata: {name: doctor-test}
spec:
  selector: {cgroups: [forge-test/*]}
  defaults: {exec: allow, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, net.unix: allow, syscall: allow}
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

    // No trust config: the initial policy files are unsigned, a warning only.
    let policy = check_agent(&d.socket, None);
    check!(
        policy.signed == Signed::Unsigned && policy.strict == Some(false) && policy.problem.is_none(),
        "policy check without a trust config: {policy:?}"
    );
    let with = integrity::check(d.pin_root(), &tags, &d.data_dir, Some(d.agent_key)).with_policy(policy);
    check!(with.problems.is_empty() && with.warnings.len() == 1, "problems {:?}", with.problems);

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

/// `forge doctor --json` against the fixture's agent: its exit code and report.
fn doctor(d: &DaemonFixture, trust: Option<&Path>) -> Result<(i32, serde_json::Value), Failed> {
    let mut cmd = Command::new(crate::sigterm::forge_binary());
    cmd.arg("doctor")
        .arg("--json")
        .arg("--pin-root")
        .arg(d.pin_root())
        .arg("--data-dir")
        .arg(&d.data_dir)
        .arg("--socket")
        .arg(&d.socket);
    if let Some(t) = trust {
        cmd.arg("--trust").arg(t);
    }
    let out = cmd.output().map_err(fail)?;
    let report = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("doctor --json: {e}: {}", String::from_utf8_lossy(&out.stderr)))?;
    Ok((out.status.code().unwrap_or(-1), report))
}

/// Strict mode (a 2-of-2 trust config): the initial files are unsigned, so
/// doctor is unhealthy (exit 4) until a bundle both keys signed is applied;
/// then it is healthy, and a trust config that does not hold those keys,
/// given to doctor, makes it unhealthy again.
pub(crate) fn policy_in_force_signed() -> Result<(), Failed> {
    let work = std::path::PathBuf::from(format!("/tmp/forge-test-{}-doctor-signed", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("keys")).map_err(fail)?;
    let result = signed_scenario(&work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn signed_scenario(work: &Path) -> Result<(), Failed> {
    for n in ["alice", "bob", "mallory"] {
        generate_files(&work.join("keys"), n).map_err(fail)?;
    }
    let trust_file = |name: &str, body: &str| -> Result<std::path::PathBuf, Failed> {
        let p = work.join(name);
        std::fs::write(&p, body).map_err(fail)?;
        Ok(p)
    };
    let trust_path = trust_file(
        "trust.toml",
        "threshold = 2\n[[key]]\nfile = \"keys/alice.pub\"\n[[key]]\nfile = \"keys/bob.pub\"\n",
    )?;
    let other = trust_file("other.toml", "threshold = 1\n[[key]]\nfile = \"keys/mallory.pub\"\n")?;
    let trust = TrustConfig::load(&trust_path).map_err(fail)?;
    let summary = TrustSummary::of(&trust);
    let bundle = work.join("bundle");
    Bundle::create(
        &bundle,
        "prod",
        1,
        vec![BundleDoc { name: "d.yaml".into(), bytes: POLICY.as_bytes().to_vec() }],
    )
    .map_err(fail)?;
    for s in ["alice", "bob"] {
        let key = SigningKey::load(&work.join("keys").join(format!("{s}.key"))).map_err(fail)?;
        Bundle::sign(&bundle, &key).map_err(fail)?;
    }
    let state = work.join("applied.json");
    let d = DaemonFixture::start(
        "doctor-signed",
        vec![Document { name: "d.yaml".into(), text: POLICY.into() }],
        Want { cgroup: Some(true), ..Want::default() },
        move |d| d.signing = Some(daemon::Signing { trust, state, require_enforceable: false }),
    )?;

    let before = check_agent(&d.socket, None);
    check!(
        before.signed == Signed::Unsigned && before.strict == Some(true) && before.problem.is_some(),
        "strict mode with the initial files: {before:?}"
    );
    let (code, report) = doctor(&d, None)?;
    let policy = &report["integrity"]["policy"];
    check!(
        code == 4 && report["healthy"] == false && policy["signed"] == "unsigned" && policy["strict"] == true,
        "doctor before the bundle: exit {code}, {}",
        report["integrity"]
    );

    let applied =
        call(&d.socket, &Request::PolicyApplyBundle { path: bundle.display().to_string() }).map_err(fail)?;
    let signers: Vec<String> = applied["bundle"]["signers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect();
    check!(signers.len() == 2 && signers.iter().all(|s| summary.keys.contains(s)), "applied {applied}");
    let after = check_agent(&d.socket, None);
    check!(
        after.signed == Signed::Verified && after.problem.is_none() && after.warning.is_none(),
        "after the signed bundle: {after:?}"
    );
    check!(
        after.detail.contains("\"prod\" version 1") && after.detail.contains("2 of the 2 required"),
        "{after:?}"
    );
    let (code, report) = doctor(&d, Some(&trust_path))?;
    check!(
        code == 0 && report["integrity"]["policy"]["signed"] == "verified",
        "doctor after the bundle: exit {code}, {}",
        report["integrity"]
    );
    let (code, report) = doctor(&d, Some(&other))?;
    check!(
        code == 4 && report["integrity"]["policy"]["signed"] == "unverified",
        "doctor with a trust config of other keys: exit {code}, {}",
        report["integrity"]
    );
    Ok(())
}
