//! The daemon's local API on a real unix socket: a policy set applied
//! through it takes effect at once, a bad set or a bad request changes
//! nothing and gets a clear error, and the daemon keeps answering.

use std::{io::Write as _, path::PathBuf};

use forge_agent::{
    api::{
        ErrorCode, Request,
        client::{ClientError, call},
        daemon,
        protocol::Document,
    },
    cgroup::Cgroup,
    ebpf::Want,
    workload::{Action, Outcome, run_action_in},
};
use forge_tests::{DaemonFixture, EPERM, check, expect, fail};
use libtest_mimic::Failed;

use crate::listener;

fn doc(name: &str, deny_port: u16) -> Document {
    Document {
        name: format!("{name}.yaml"),
        text: format!(
            "apiVersion: forgeone.dev/v1alpha1
kind: Policy
metadata: {{name: {name}}}
spec:
  selector: {{cgroups: [forge-test/*]}}
  defaults: {{exec: allow, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, net.unix: allow, syscall: allow}}
  rules:
    - {{name: {name}-deny, op: net.connect, action: deny, cidrs: [127.0.0.1/32], ports: {deny_port}}}
"
        ),
    }
}

pub(crate) fn apply_through_api() -> Result<(), Failed> {
    let p = listener("127.0.0.1:0")?;
    let q = listener("127.0.0.1:0")?;
    let d = DaemonFixture::start(
        "api",
        vec![doc("api-a", p.port())],
        Want { cgroup: Some(true), ..Want::default() },
        |_| {},
    )?;
    scenario(&d.socket, &d.cgroup, p, q)
}

fn scenario(
    socket: &std::path::Path,
    cgroup: &Cgroup,
    p: std::net::SocketAddr,
    q: std::net::SocketAddr,
) -> Result<(), Failed> {
    let exe = std::env::current_exe().map_err(fail)?;
    let connect = |a| run_action_in(cgroup, &exe, &Action::Connect(a)).map_err(fail);
    expect("connect to P under policy A", connect(p)?, EPERM)?;
    expect("connect to Q under policy A", connect(q)?, Outcome::Ok)?;

    // A set with an error: refused with the place of the error; A stays in force.
    let mut bad = doc("api-b", q.port());
    bad.text = bad.text.replace("net.connect", "net.konnect");
    match call(socket, &Request::PolicyApply { documents: vec![bad] }) {
        Err(ClientError::Api(e)) => {
            check!(e.code == ErrorCode::InvalidPolicy, "code {:?}", e.code);
            let details = e.details.map(|d| d.to_string()).unwrap_or_default();
            check!(
                details.contains("api-b.yaml")
                    && details.contains("\"line\":8")
                    && details.contains("net.konnect"),
                "details {details}"
            );
        }
        other => return Err(format!("a bad set was not refused: {other:?}").into()),
    }
    expect("connect to P after the refused set", connect(p)?, EPERM)?;

    // Not JSON, unknown method: errors, and the daemon keeps serving.
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(fail)?;
    s.write_all(b"this is not json\n{\"method\":\"fly\"}\n").map_err(fail)?;
    let mut answers = String::new();
    // One reader for both lines: a reader dropped after the first line could
    // take the second one with it in its buffer.
    let mut reader = std::io::BufReader::new(&s);
    for _ in 0..2 {
        std::io::BufRead::read_line(&mut reader, &mut answers).map_err(fail)?;
    }
    check!(answers.matches("\"bad_request\"").count() == 2, "answers to bad requests: {answers}");

    // The good set B: swapped in at once.
    let r = call(socket, &Request::PolicyApply { documents: vec![doc("api-b", q.port())] }).map_err(fail)?;
    check!(r["swapped"].as_array().is_some_and(|a| a.len() == 1), "apply result {r}");
    expect("connect to P under policy B", connect(p)?, Outcome::Ok)?;
    expect("connect to Q under policy B", connect(q)?, EPERM)?;
    let status = call(socket, &Request::Status).map_err(fail)?;
    check!(status["governed"][0]["policies"] == "api-b", "status {status}");
    Ok(())
}

/// Strict mode: only signed bundles change the running policy. Unsigned
/// documents, too few signers, a replayed version and an old version under
/// a new name are refused with the reason, and enforcement stays as it was.
pub(crate) fn signed_apply_in_strict_mode() -> Result<(), Failed> {
    use forge_agent::sign::{
        bundle::{Bundle, Document as BundleDoc},
        keys::{SigningKey, generate_files},
        trust::TrustConfig,
    };
    let p = listener("127.0.0.1:0")?;
    let q = listener("127.0.0.1:0")?;
    let id = std::process::id();
    let work = PathBuf::from(format!("/tmp/forge-test-{id}-strict"));
    std::fs::create_dir_all(work.join("keys")).map_err(fail)?;
    for n in ["alice", "bob", "mallory"] {
        generate_files(&work.join("keys"), n).map_err(fail)?;
    }
    std::fs::write(
        work.join("trust.toml"),
        "threshold = 2\n[[key]]\nfile = \"keys/alice.pub\"\n[[key]]\nfile = \"keys/bob.pub\"\n",
    )
    .map_err(fail)?;
    let trust = TrustConfig::load(&work.join("trust.toml")).map_err(fail)?;
    let b = doc("signed-b", q.port());
    let make_named = |dir: &str, name: &str, version: u64, signers: &[&str]| -> Result<PathBuf, Failed> {
        let path = work.join(dir);
        Bundle::create(
            &path,
            name,
            version,
            vec![BundleDoc { name: b.name.clone(), bytes: b.text.clone().into_bytes() }],
        )
        .map_err(fail)?;
        for s in signers {
            let key = SigningKey::load(&work.join("keys").join(format!("{s}.key"))).map_err(fail)?;
            Bundle::sign(&path, &key).map_err(fail)?;
        }
        Ok(path)
    };
    let make = |dir: &str, version: u64, signers: &[&str]| make_named(dir, "prod", version, signers);
    let one_signer = make("b-one", 1, &["alice", "mallory"])?;
    let good = make("b-good", 1, &["alice", "bob"])?;
    // Validly signed, a name never applied, but not newer than prod v1.
    let renamed = make_named("b-renamed", "renamed", 1, &["alice", "bob"])?;

    let state = work.join("applied.json");
    let d = DaemonFixture::start(
        "strict",
        vec![doc("strict-a", p.port())],
        Want { cgroup: Some(true), ..Want::default() },
        move |d| {
            d.signing = Some(daemon::Signing { trust, state, require_enforceable: true });
        },
    )?;
    let (socket, cgroup) = (&d.socket, &d.cgroup);
    let result = (|| {
        let exe = std::env::current_exe().map_err(fail)?;
        let connect = |a| run_action_in(cgroup, &exe, &Action::Connect(a)).map_err(fail);
        let refused = |req: Request, needle: &str| -> Result<(), Failed> {
            match call(socket, &req) {
                Err(ClientError::Api(e)) if e.code == ErrorCode::Refused && e.message.contains(needle) => {
                    Ok(())
                }
                other => Err(format!("expected a refusal mentioning {needle:?}, got {other:?}").into()),
            }
        };
        expect("connect to P under policy A", connect(p)?, EPERM)?;
        refused(Request::PolicyApply { documents: vec![doc("sneaky", q.port())] }, "only signed bundles")?;
        refused(Request::PolicyApplyBundle { path: one_signer.display().to_string() }, "2 required")?;
        expect("connect to P after the refusals", connect(p)?, EPERM)?;
        let r =
            call(socket, &Request::PolicyApplyBundle { path: good.display().to_string() }).map_err(fail)?;
        check!(r["bundle"]["version"] == 1, "apply result {r}");
        expect("connect to P under the signed bundle", connect(p)?, Outcome::Ok)?;
        expect("connect to Q under the signed bundle", connect(q)?, EPERM)?;
        refused(Request::PolicyApplyBundle { path: good.display().to_string() }, "version")?;
        refused(
            Request::PolicyApplyBundle { path: renamed.display().to_string() },
            "\"renamed\" version 1 is not newer than the last applied version 1 (bundle \"prod\"",
        )?;
        expect("connect to P after the renamed bundle", connect(p)?, Outcome::Ok)?;
        expect("connect to Q after the renamed bundle", connect(q)?, EPERM)?;
        Ok(())
    })();
    drop(d);
    let _ = std::fs::remove_dir_all(&work);
    result
}
