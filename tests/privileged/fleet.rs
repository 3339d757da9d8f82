//! Fleet acceptance on real kernels: three agents share policy bundles and
//! trust records through a real nats-server (JetStream).

use std::time::{Duration, Instant};

use forge_agent::{api::Request, wasm::Package};
use forge_tests::{EPERM, check, expect, fail};
use libtest_mimic::Failed;
use serde_json::Value;

use forge_tests::fleet::Fleet;

use crate::{listener, sigterm::forge_binary};

fn audit_has(a: &[Value], action: &str, needle: &str) -> bool {
    a.iter().any(|e| e["action"] == action && e.to_string().contains(needle))
}

/// A bundle published once reaches all three agents and each one's kernel
/// enforces it; killing the bus leaves enforcement as it was; after a
/// restart the agents catch up and converge; unsigned and replayed bundles
/// are refused by every agent.
pub(crate) fn bundles_partition_and_replay() -> Result<(), Failed> {
    let f = Fleet::start("bundles", &forge_binary())?;
    let mut f = f;
    let peer = listener("127.0.0.1:0")?.port();
    let other = listener("127.0.0.1:0")?.port();
    for i in 0..3 {
        expect(
            &format!("{} before any bundle", f.nodes[i].name),
            f.connect(i, peer)?,
            forge_agent::workload::Outcome::Ok,
        )?;
    }

    // v1 denies the peer: published once, enforced by all three kernels.
    let published = f.publish(&f.bundle(1, Some(peer), true)?)?;
    let t0 = published["published_at_ms"].as_u64().ok_or("published_at_ms")?;
    let took = f.wait_all("bundle v1 applied", Duration::from_secs(20), |s| {
        s["fleet"]["last_bundle"]["version"] == 1
    })?;
    for i in 0..3 {
        expect(&format!("{} under v1", f.nodes[i].name), f.connect(i, peer)?, EPERM)?;
        let applied = f.audit(i)?;
        let at = applied
            .iter()
            .rev()
            .find(|e| e["via"] == "fleet" && e["bundle"]["version"] == 1)
            .and_then(|e| e["applied_at_ms"].as_u64())
            .ok_or("the agent's audit has the fleet apply")?;
        eprintln!("  {}: v1 applied {} ms after publish", f.nodes[i].name, at.saturating_sub(t0));
    }
    eprintln!("  all three enforced v1 within {took:?} of the publish returning");

    // Unsigned (under quorum): refused and reported by every agent, nothing changes.
    f.publish(&f.bundle(5, None, false)?)?;
    f.wait_all("unsigned bundle refused", Duration::from_secs(20), |s| {
        s["fleet"]["counts"]["bundles_refused"].as_u64() >= Some(1)
    })?;
    for i in 0..3 {
        let a = f.audit(i)?;
        check!(audit_has(&a, "fleet_bundle_refused", "signature"), "{}: {a:?}", f.nodes[i].name);
        expect(&format!("{} after the unsigned bundle", f.nodes[i].name), f.connect(i, peer)?, EPERM)?;
    }

    // The bus dies mid-run: enforcement stays exactly as it was.
    f.nats.kill();
    f.wait_all("bus loss noticed", Duration::from_secs(20), |s| s["fleet"]["connected"] == false)?;
    for i in 0..3 {
        expect(&format!("{} while the bus is down", f.nodes[i].name), f.connect(i, peer)?, EPERM)?;
        expect(
            &format!("{} other port while down", f.nodes[i].name),
            f.connect(i, other)?,
            forge_agent::workload::Outcome::Ok,
        )?;
    }
    std::thread::sleep(Duration::from_millis(500));

    // Back up (same store): the agents reconnect, catch up and converge on v2.
    f.nats.restart()?;
    f.wait_all("reconnected", Duration::from_secs(30), |s| {
        s["fleet"]["connected"] == true && s["fleet"]["counts"]["partitions"].as_u64() >= Some(1)
    })?;
    f.publish(&f.bundle(2, Some(other), true)?)?;
    f.wait_all("bundle v2 applied", Duration::from_secs(20), |s| s["fleet"]["last_bundle"]["version"] == 2)?;
    for i in 0..3 {
        let s = f.status(i)?;
        let partitioned = s["fleet"]["partitions_s"][0].as_f64().unwrap_or(0.0);
        check!(partitioned >= 0.5, "{}: partition measured: {}", f.nodes[i].name, s["fleet"]);
        eprintln!("  {}: partitioned for {partitioned:.2} s", f.nodes[i].name);
        expect(
            &format!("{} under v2 (peer)", f.nodes[i].name),
            f.connect(i, peer)?,
            forge_agent::workload::Outcome::Ok,
        )?;
        expect(&format!("{} under v2 (other)", f.nodes[i].name), f.connect(i, other)?, EPERM)?;
    }

    // node-c is down while v3 is published; started again (its files say
    // otherwise) it catches up from the stream.
    f.stop_node(2)?;
    f.publish(&f.bundle(3, Some(other), true)?)?;
    f.start_node(2, "bundles")?;
    f.wait_all("bundle v3 applied (node-c from the stream)", Duration::from_secs(30), |s| {
        s["fleet"]["last_bundle"]["version"] == 3
    })?;
    expect("node-c after catching up", f.connect(2, other)?, EPERM)?;

    // A replayed old bundle (v1, validly signed) is refused everywhere.
    f.publish(&f.bundle(1, Some(peer), true)?)?;
    f.wait_all("replayed v1 refused", Duration::from_secs(20), |s| {
        s["fleet"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not newer than the last applied version 3"))
    })?;
    for i in 0..3 {
        let a = f.audit(i)?;
        check!(
            audit_has(&a, "fleet_bundle_refused", "not newer than the last applied version 3"),
            "{}: {a:?}",
            f.nodes[i].name
        );
        let m = f.call(i, &Request::Metrics)?;
        let text = m.as_str().unwrap_or_default();
        let value = |name: &str| {
            text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok())
        };
        check!(value("forge_fleet_connected") == Some(1), "{}: connected in the metrics", f.nodes[i].name);
        check!(
            value("forge_fleet_bundles_refused_total") >= Some(1)
                && value("forge_fleet_bundles_applied_total") >= Some(1),
            "{}: applies and refusals counted in the metrics",
            f.nodes[i].name
        );
        expect(
            &format!("{} after the replay", f.nodes[i].name),
            f.connect(i, peer)?,
            forge_agent::workload::Outcome::Ok,
        )?;
    }
    Ok(())
}

fn spinner(f: &Fleet) -> Result<(std::path::PathBuf, String), Failed> {
    let wat = r#"(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))"#;
    let caps = b"name = \"spinner\"\nversion = 1\n[limits]\ndeadline_ms = 30000\n".to_vec();
    let mut pkg = Package::build(caps, wat::parse_str(wat).map_err(fail)?).map_err(fail)?;
    pkg.sign(&f.ops).map_err(fail)?;
    let path = f.dir.join("spinner.forgepkg");
    std::fs::write(&path, pkg.to_bytes()).map_err(fail)?;
    Ok((path, format!("sha3-256:{}", pkg.module_digest().to_hex())))
}

/// Starts the capsule on node `i` and waits until it runs; its cgroup.
fn start_running(f: &mut Fleet, i: usize, pkg: &std::path::Path) -> Result<String, Failed> {
    let run = run_capsule(f, i, pkg)?.map_err(|e| format!("{} runs the capsule: {e}", f.nodes[i].name))?;
    let cgroup = run["cgroup"].as_str().ok_or("run cgroup")?.to_string();
    f.runs.push(cgroup.clone().into());
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(format!("{cgroup}/cgroup.procs")).is_ok_and(|p| p.trim().is_empty()) {
        check!(Instant::now() < deadline, "the capsule never ran in {cgroup}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(cgroup)
}

fn run_capsule(f: &Fleet, i: usize, pkg: &std::path::Path) -> Result<Result<Value, String>, Failed> {
    let req = Request::CapsuleRun {
        package: pkg.display().to_string(),
        args: Vec::new(),
        inputs: Vec::new(),
        monitor: false,
        tier: None,
    };
    match forge_agent::api::client::call(&f.nodes[i].socket, &req) {
        Ok(v) => Ok(Ok(v)),
        Err(forge_agent::api::client::ClientError::Api(e)) => Ok(Err(e.message)),
        Err(e) => Err(fail(e)),
    }
}

/// A quarantine on one node makes the same capsule identity refused on
/// the others (time measured); forged and tampered records are refused by
/// every node and change nothing; an operator release clears it.
pub(crate) fn quarantine_propagates_forgeries_refused() -> Result<(), Failed> {
    let mut f = Fleet::start("trust", &forge_binary())?;
    let (pkg, digest) = spinner(&f)?;

    // Runs on node-b and on node-a; node-a quarantines its run.
    let on_b = start_running(&mut f, 1, &pkg)?;
    let cgroup = start_running(&mut f, 0, &pkg)?;
    let quarantine = Request::Quarantine {
        cgroup: cgroup.clone(),
        actor: "test".into(),
        reason: "exfiltration seen".into(),
    };
    f.call(0, &quarantine)?;
    let t0 = Instant::now();
    let compromised = |s: &Value| {
        s["fleet"]["identities"].as_array().is_some_and(|ids| {
            ids.iter().any(|e| e["identity"]["digest"] == digest.as_str() && e["tier"] == "compromised")
        })
    };
    f.wait_all("the quarantine reached every node", Duration::from_secs(20), compromised)?;
    let took = t0.elapsed();
    for i in 1..3 {
        let r = run_capsule(&f, i, &pkg)?;
        let msg = r.err().ok_or_else(|| format!("{} still runs the quarantined capsule", f.nodes[i].name))?;
        check!(
            msg.contains("marked compromised in the fleet by node-a") && msg.contains("exfiltration seen"),
            "{msg}"
        );
    }
    eprintln!("  quarantine on node-a refused on node-b and node-c within {took:?}");
    // The rule (quarantine) also quarantined node-b's running instance, live.
    let governed = |s: &Value| -> Option<Value> {
        s["governed"].as_array()?.iter().find(|g| g["cgroup"] == on_b.as_str()).cloned()
    };
    check!(
        governed(&f.status(1)?).is_some_and(|g| g["tier"] == "compromised"),
        "node-b's running instance is under the compromised tier: {:?}",
        governed(&f.status(1)?)
    );
    let a = f.audit(1)?;
    check!(
        a.iter()
            .any(|e| e["action"] == "quarantine" && e["actor"] == "fleet" && e["cgroup"] == on_b.as_str()),
        "node-b's audit names the fleet as the actor: {a:?}"
    );
    let history = f.forge(&[
        "fleet",
        "history",
        "--nodes",
        &f.dir.join("nodes.toml").display().to_string(),
        "--trust",
        &f.dir.join("trust.toml").display().to_string(),
    ])?;
    let rec = history
        .as_array()
        .and_then(|h| h.iter().find(|e| e["action"] == "quarantine" && e["identity"] == digest.as_str()))
        .ok_or_else(|| format!("the history shows the quarantine: {history}"))?;
    check!(rec["verified"] == true && rec["issued_by"] == "node-a" && rec["trace_head"].is_string(), "{rec}");

    // Forgeries: an unknown key, node-a's key speaking for node-b, a tampered body.
    let stranger = forge_agent::sign::keys::generate_files(&f.dir, "stranger").map_err(fail)?;
    f.forge(&[
        "fleet",
        "release",
        &digest,
        "--key",
        &stranger.private_path.display().to_string(),
        "--as",
        "ops",
    ])?;
    f.forge(&[
        "fleet",
        "release",
        &digest,
        "--key",
        &f.dir.join("node-a.key").display().to_string(),
        "--as",
        "node-b",
    ])?;
    tamper(&f, &digest)?;
    f.wait_all("three forgeries refused", Duration::from_secs(20), |s| {
        s["fleet"]["counts"]["records_refused"].as_u64() >= Some(3)
    })?;
    for i in 0..3 {
        let a = f.audit(i)?;
        for needle in [
            "neither a fleet node key nor an operator key",
            "signed by the key of \\\"node-a\\\"",
            "bad signature",
        ] {
            check!(
                audit_has(&a, "fleet_record_refused", needle),
                "{}: no refusal with {needle:?}: {a:?}",
                f.nodes[i].name
            );
        }
        check!(compromised(&f.status(i)?), "{}: a forgery changed the verdict", f.nodes[i].name);
    }

    // The operator's release clears it everywhere.
    f.forge(&[
        "fleet",
        "release",
        &digest,
        "--key",
        &f.dir.join("ops.key").display().to_string(),
        "--reason",
        "cleaned up",
    ])?;
    f.wait_all("released everywhere", Duration::from_secs(20), |s| !compromised(s))?;
    let r = run_capsule(&f, 1, &pkg)?.map_err(|e| format!("node-b runs it after the release: {e}"))?;
    f.runs.push(r["cgroup"].as_str().unwrap_or_default().into());
    for i in 1..3 {
        check!(
            audit_has(&f.audit(i)?, "fleet_record", "cleaned up"),
            "{}: the release is audited",
            f.nodes[i].name
        );
    }
    // node-b's instance the fleet quarantined is released with it.
    check!(
        governed(&f.status(1)?).is_some_and(|g| g["tier"] == "trusted"),
        "node-b's instance is back at its tier: {:?}",
        governed(&f.status(1)?)
    );
    let a = f.audit(1)?;
    check!(
        a.iter().any(|e| e["action"] == "release" && e["actor"] == "fleet" && e["cgroup"] == on_b.as_str()),
        "node-b released its instance: {a:?}"
    );

    // A quarantine while the bus is down is published when it is back.
    let again = start_running(&mut f, 0, &pkg)?;
    f.nats.kill();
    f.wait_all("bus loss noticed", Duration::from_secs(20), |s| s["fleet"]["connected"] == false)?;
    let q = Request::Quarantine { cgroup: again, actor: "test".into(), reason: "seen offline".into() };
    f.call(0, &q)?;
    std::thread::sleep(Duration::from_millis(300));
    check!(!compromised(&f.status(1)?), "node-b cannot know yet");
    f.nats.restart()?;
    f.wait_all("the offline quarantine reached every node", Duration::from_secs(30), compromised)?;
    let r = run_capsule(&f, 2, &pkg)?;
    check!(
        r.as_ref().is_err_and(|m| m.contains("seen offline")),
        "node-c refuses it for the offline quarantine: {r:?}"
    );
    Ok(())
}

/// Puts node-a's quarantine record back with its body changed (tier
/// lowered to trusted) but the old signature: a bad signature.
fn tamper(f: &Fleet, digest: &str) -> Result<(), Failed> {
    use futures_util::StreamExt as _;
    let key = format!("d-{}.node-a", digest.trim_start_matches("sha3-256:"));
    on_trust_bucket(f, async |kv| {
        let mut h = kv.history(&key).await.map_err(fail)?;
        let first = h.next().await.ok_or("node-a's record")?.map_err(fail)?;
        let mut env: forge_agent::fleet::SignedRecord = serde_json::from_slice(&first.value).map_err(fail)?;
        env.body = env.body.replace("\"compromised\"", "\"trusted\"");
        kv.put(&key, env.to_bytes().into()).await.map_err(fail)?;
        Ok(())
    })
}

/// Runs `op` on the fleet's trust bucket, from this test process.
fn on_trust_bucket(
    f: &Fleet,
    op: impl AsyncFnOnce(async_nats::jetstream::kv::Store) -> Result<(), Failed>,
) -> Result<(), Failed> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(fail)?;
    rt.block_on(async {
        let client = async_nats::connect(f.nats.url()).await.map_err(fail)?;
        let js = async_nats::jetstream::new(client);
        op(js.get_key_value(forge_agent::fleet::TRUST_BUCKET).await.map_err(fail)?).await
    })
}

/// `text` as it appears inside a JSON string (quotes escaped), to find it
/// in an audit entry with [`audit_has`].
fn in_json(text: &str) -> String {
    let quoted = serde_json::to_string(text).unwrap_or_default();
    quoted.trim_matches('"').to_string()
}

/// Waits until every node's audit has an `action` entry containing `text`.
fn wait_audit(f: &Fleet, what: &str, action: &str, text: &str) -> Result<(), Failed> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let needle = in_json(text);
    for i in 0..f.nodes.len() {
        while !audit_has(&f.audit(i)?, action, &needle) {
            check!(
                Instant::now() < deadline,
                "{what}: no {action} with {needle:?} on {}: {:?}",
                f.nodes[i].name,
                f.audit(i)?
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// Connects from node `i` to `ports` and checks each kernel decision:
/// `denied` ports get EPERM, the others connect.
fn enforces(f: &Fleet, i: usize, when: &str, ports: &[(u16, bool)]) -> Result<(), Failed> {
    for (port, denied) in ports {
        let want = if *denied { EPERM } else { forge_agent::workload::Outcome::Ok };
        expect(&format!("{} {when}: connect to {port}", f.nodes[i].name), f.connect(i, *port)?, want)?;
    }
    Ok(())
}

/// Two bundle names are both in force on every node; an older validly
/// signed bundle under a name never seen is refused everywhere and every
/// kernel still enforces the newer set; a restarted agent resumes the whole
/// set of record and refuses the old one again when the bus delivers it.
pub(crate) fn bundle_names_compose_rollback_refused() -> Result<(), Failed> {
    let mut f = Fleet::start("rollback", &forge_binary())?;
    let p = listener("127.0.0.1:0")?.port();
    let q = listener("127.0.0.1:0")?.port();
    let r = listener("127.0.0.1:0")?.port();

    // "fleet" v2 denies P, then "extra" v3 denies Q: both in force.
    f.publish(&f.bundle(2, Some(p), true)?)?;
    f.wait_all("fleet v2 applied", Duration::from_secs(20), |s| s["fleet"]["last_bundle"]["version"] == 2)?;
    f.publish(&f.named_bundle("extra", 3, q)?)?;
    f.wait_all("extra v3 applied", Duration::from_secs(20), |s| {
        s["fleet"]["last_bundle"]["name"] == "extra"
    })?;
    for i in 0..3 {
        enforces(&f, i, "under fleet v2 + extra v3", &[(p, true), (q, true), (r, false)])?;
    }

    // "old" v1: validly signed, a new name, older than v3. Accepted, it
    // would deny R (and, as a whole set, allow P and Q).
    f.publish(&f.named_bundle("old", 1, r)?)?;
    let why = "\"old\" version 1 is not newer than the last applied version 3 (bundle \"extra\"";
    wait_audit(&f, "old v1 refused", "fleet_bundle_refused", why)?;
    for i in 0..3 {
        enforces(&f, i, "after the old bundle", &[(p, true), (q, true), (r, false)])?;
        let s = f.status(i)?;
        check!(s["policy"]["bundle"]["name"] == "extra", "{}: {}", f.nodes[i].name, s["policy"]);
    }

    // node-b restarts: it resumes the set of record it enforced (its state
    // file), at once and before the bus answers; the bus delivers the
    // bundles again (those of record change nothing) and the old bundle is
    // refused again.
    f.stop_node(1)?;
    f.start_node(1, "rollback")?;
    enforces(&f, 1, "right after its restart", &[(p, true), (q, true), (r, false)])?;
    let s = f.status(1)?;
    check!(
        s["policy"]["source"] == "bundle" && s["policy"]["bundle"]["name"] == "extra",
        "node-b did not resume the set of record: {}",
        s["policy"]
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !audit_has(&f.audit(1)?, "fleet_bundle_refused", &in_json(why)) {
        check!(Instant::now() < deadline, "node-b did not refuse the old bundle again: {:?}", f.audit(1)?);
        std::thread::sleep(Duration::from_millis(20));
    }
    enforces(&f, 1, "after the bus delivered the bundles again", &[(p, true), (q, true), (r, false)])?;
    Ok(())
}

/// With operators trusted 2 of 3: a fleet quarantine is still enforced by
/// agents restarted after its bus key was purged and overwritten; a release
/// signed by one operator is refused everywhere; one signed by two (made,
/// signed and published separately) clears it.
pub(crate) fn quarantine_kept_across_restart_release_k_of_n() -> Result<(), Failed> {
    let mut f = Fleet::start_with("keep", &forge_binary(), 2)?;
    let (pkg, digest) = spinner(&f)?;
    let compromised = |s: &Value| {
        s["fleet"]["identities"].as_array().is_some_and(|ids| {
            ids.iter().any(|e| e["identity"]["digest"] == digest.as_str() && e["tier"] == "compromised")
        })
    };
    let refused_here = |f: &Fleet, i: usize| -> Result<(), Failed> {
        let r = run_capsule(f, i, &pkg)?;
        let msg = r.err().ok_or_else(|| format!("{} runs the quarantined capsule", f.nodes[i].name))?;
        check!(msg.contains("marked compromised in the fleet by node-a"), "{}: {msg}", f.nodes[i].name);
        Ok(())
    };
    let cgroup = start_running(&mut f, 0, &pkg)?;
    let quarantine = Request::Quarantine { cgroup, actor: "test".into(), reason: "exfiltration seen".into() };
    f.call(0, &quarantine)?;
    f.wait_all("the quarantine reached every node", Duration::from_secs(20), compromised)?;

    // The bus loses the record: purged (no history left), then overwritten.
    let key = format!("d-{}.node-a", digest.trim_start_matches("sha3-256:"));
    purge_and_overwrite(&f, &key)?;
    f.wait_all("the overwrite refused", Duration::from_secs(20), |s| {
        s["fleet"]["counts"]["records_refused"].as_u64() >= Some(1)
    })?;

    // node-a (which issued the record) and node-b (which received it)
    // restart: the bus holds nothing valid for it, their own files do.
    for i in [0, 1] {
        f.stop_node(i)?;
        f.start_node(i, "keep")?;
        check!(
            compromised(&f.status(i)?),
            "{} forgot the quarantine: {}",
            f.nodes[i].name,
            f.status(i)?["fleet"]
        );
        refused_here(&f, i)?;
    }
    f.wait_all("connected again", Duration::from_secs(20), |s| s["fleet"]["connected"] == true)?;

    // One operator of the two the trust config asks for: refused everywhere.
    let ops = |n: &str| f.dir.join(format!("{n}.key")).display().to_string();
    f.forge(&["fleet", "release", &digest, "--key", &ops("ops"), "--reason", "one operator"])?;
    wait_audit(
        &f,
        "1-of-3 release refused",
        "fleet_record_refused",
        "1 valid signature from distinct trusted keys, 2 required",
    )?;
    for i in 0..3 {
        check!(compromised(&f.status(i)?), "{}: a 1-of-3 release cleared it", f.nodes[i].name);
        refused_here(&f, i)?;
    }

    // Two operators, signing one after the other as with bundles: released everywhere.
    let release = f.dir.join("release.json").display().to_string();
    f.forge_json(&[
        "fleet",
        "release",
        &digest,
        "--key",
        &ops("ops"),
        "--reason",
        "two operators",
        "--out",
        &release,
    ])?;
    f.forge_json(&["fleet", "sign", &release, "--key", &ops("ops2")])?;
    let trust = f.dir.join("trust.toml").display().to_string();
    f.forge(&["fleet", "publish", &release, "--trust", &trust])?;
    f.wait_all("released by two operators", Duration::from_secs(20), |s| !compromised(s))?;
    let r = run_capsule(&f, 1, &pkg)?.map_err(|e| format!("node-b runs it after the release: {e}"))?;
    f.runs.push(r["cgroup"].as_str().unwrap_or_default().into());
    wait_audit(&f, "the release audited", "fleet_record", "two operators")?;
    Ok(())
}

/// Purges the bus key `key` of the trust bucket (its history too), then
/// puts bytes that are no record under it.
fn purge_and_overwrite(f: &Fleet, key: &str) -> Result<(), Failed> {
    on_trust_bucket(f, async |kv| {
        kv.purge(key).await.map_err(fail)?;
        check!(kv.get(key).await.map_err(fail)?.is_none(), "the key is gone after the purge");
        kv.put(key, b"{\"body\": \"nothing\"}".to_vec().into()).await.map_err(fail)?;
        Ok(())
    })
}
