//! A capsule run through the agent's API gets its own governed cgroup: the
//! kernel backs up the Wasm gate. In monitor mode the gate lets a connect
//! the policy denies through (and records it as would-deny); the cgroup
//! connect hook still refuses it with EPERM, as a decision event of the
//! capsule's cgroup.

use std::{path::PathBuf, time::Duration};

use forge_agent::{
    api::{Request, capsules::CapsuleRunner, client, protocol::Document},
    dna::{Record, Records},
    ebpf::Want,
    sign::keys,
    wasm::Package,
};
use forge_tests::{DaemonFixture, fail};
use libtest_mimic::Failed;
use serde_json::Value;

use crate::sigterm::forge_binary;

fn check(cond: bool, what: impl Into<String>) -> Result<(), Failed> {
    if cond { Ok(()) } else { Err(what.into().into()) }
}

pub(crate) fn kernel_backs_up_the_gate() -> Result<(), Failed> {
    let t = PathBuf::from(format!("/tmp/forge-test-{}-capsule-keys", std::process::id()));
    let _ = std::fs::remove_dir_all(&t);
    std::fs::create_dir_all(&t).map_err(fail)?;
    let made = keys::generate_files(&t, "ops").map_err(fail)?;
    std::fs::write(t.join("trust.toml"), "threshold = 1\n[[key]]\nfile = \"ops.pub\"\n").map_err(fail)?;
    let key = forge_agent::sign::SigningKey::load(&made.private_path).map_err(fail)?;

    let peer = crate::listener("127.0.0.1:0")?;
    let module = format!(
        r#"(module
  (import "forge" "sock_connect" (func $connect (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "{peer}")
  (func (export "_start")
    (call $exit (call $connect (i32.const 64) (i32.const {len}) (i32.const 32)))))"#,
        len = peer.to_string().len()
    );
    let caps = format!("name = \"dialer\"\nversion = 1\n[capabilities]\nconnect = [\"{peer}\"]\n");
    let mut pkg = Package::build(caps.into_bytes(), wat::parse_str(&module).map_err(fail)?).map_err(fail)?;
    pkg.sign(&key).map_err(fail)?;
    let pkg_path = t.join("dialer.forgepkg");
    std::fs::write(&pkg_path, pkg.to_bytes()).map_err(fail)?;

    let policy = format!(
        "apiVersion: forgeone.dev/v1alpha1\nkind: Policy\nmetadata: {{name: capsules}}\nspec:\n  \
         selector: {{signers: [\"{}\"]}}\n  trust: trusted\n  \
         defaults: {{exec: allow, file.read: allow, file.write: allow, net.connect: allow, syscall: allow}}\n  \
         rules:\n    - {{name: capsule-no-loopback, op: net.connect, action: deny, cidrs: [127.0.0.0/8], ports: {}}}\n",
        made.key_id,
        peer.port()
    );
    let data = PathBuf::from(format!("/tmp/forge-test-{}-capsuleapi/data", std::process::id()));
    let trust_path = t.join("trust.toml");
    let d = DaemonFixture::start(
        "capsuleapi",
        vec![Document { name: "capsules.yaml".into(), text: policy }],
        Want { cgroup: Some(true), ..Want::default() },
        move |d| {
            d.capsules = Some(CapsuleRunner::new(forge_binary(), trust_path, data).expect("capsule trust"));
        },
    )?;
    let result = (|| {
        let run = |monitor: bool| -> Result<Value, Failed> {
            let req = Request::CapsuleRun {
                package: pkg_path.display().to_string(),
                args: Vec::new(),
                inputs: Vec::new(),
                monitor,
                tier: None,
            };
            let started = client::call(&d.socket, &req).map_err(fail)?;
            let id = started["run_id"].as_str().ok_or("run id")?.to_string();
            check(
                started["policies"] == "capsules",
                format!("the capsule's own policy governs its cgroup: {started}"),
            )?;
            for _ in 0..300 {
                let list = client::call(&d.socket, &Request::CapsuleList).map_err(fail)?;
                let r = list["runs"]
                    .as_array()
                    .and_then(|a| a.iter().find(|r| r["run_id"] == id.as_str()))
                    .cloned();
                if let Some(r) = r.filter(|r| r["state"] == "finished") {
                    return Ok(r);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err("the capsule run did not finish in 30 s".into())
        };

        // Enforcing: the gate refuses the run before it starts (the policy denies what it requests).
        let r = run(false)?;
        check(r["report"]["error"]["code"] == "not_granted", format!("refused before running: {r}"))?;

        // Monitor mode: the gate lets the connect through, the kernel refuses it.
        let r = run(true)?;
        let report = &r["report"];
        check(report["end"] == "exited", format!("{r}"))?;
        check(report["code"] == 63, format!("the capsule got EPERM from the kernel (WASI errno 63): {r}"))?;
        let would = report["denied"].as_array().cloned().unwrap_or_default();
        check(
            would.iter().any(|x| x["enforced"] == false && x["rule"] == "capsule-no-loopback"),
            format!("the gate recorded the would-deny: {would:?}"),
        )?;
        check(report["run_id"] == r["run_id"], format!("the trace is named after the API's run id: {r}"))?;
        let cgroup_id = r["cgroup_id"].as_u64().ok_or("cgroup id")?;
        // The kernel's decision, in the capsule cgroup's trace.
        let trace = d.data_dir.join("traces").join(format!("cgroup-{cgroup_id}.dna"));
        let mut found = false;
        for _ in 0..50 {
            found = Records::open(&trace).is_ok_and(|recs| {
                recs.filter_map(Result::ok).any(|e| {
                    matches!(&e.record, Record::Decision(ev) if ev.cgroup_id == cgroup_id && ev.rule_id != 0)
                })
            });
            if found {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        check(found, format!("a kernel decision for the capsule's cgroup in {}", trace.display()))?;
        let status = client::call(&d.socket, &Request::Status).map_err(fail)?;
        let still = status["governed"].as_array().is_some_and(|g| g.iter().any(|g| g["id"] == cgroup_id));
        let mut gone = !still;
        for _ in 0..30 {
            if gone {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            let status = client::call(&d.socket, &Request::Status).map_err(fail)?;
            gone = !status["governed"].as_array().is_some_and(|g| g.iter().any(|g| g["id"] == cgroup_id));
        }
        check(gone, "the finished run's cgroup is removed and no longer governed")?;
        let metrics = client::call(&d.socket, &Request::Metrics).map_err(fail)?;
        let text = metrics.as_str().unwrap_or_default();
        check(
            text.lines().any(|l| l == "forge_capsule_runs_total 2")
                && text.lines().any(|l| l == "forge_capsules_running 0"),
            "the metrics count both runs, none still running",
        )?;

        // `forge pkg run` finds the agent on its socket and runs the capsule there.
        let out = std::process::Command::new(forge_binary())
            .args(["pkg", "run", "--monitor", "--json", "--socket"])
            .arg(&d.socket)
            .arg(&pkg_path)
            .output()
            .map_err(fail)?;
        let v: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stderr)))?;
        check(out.status.code() == Some(63), format!("the CLI exits with the capsule's code: {v}"))?;
        check(v["cgroup"].as_str().is_some_and(|c| c.contains("forge-capsules/")), format!("{v}"))
    })();
    drop(d);
    let _ = std::fs::remove_dir_all(&t);
    result
}
