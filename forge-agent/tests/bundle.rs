//! Signed policy bundles through the `forge` binary, as an operator uses them:
//! keys, bundle, signatures, trust file, verify (text and JSON), refusals.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

const FORGE: &str = env!("CARGO_BIN_EXE_forge");

fn forge(dir: &Path, args: &[&str]) -> Output {
    Command::new(FORGE).current_dir(dir).args(args).env_remove("RUST_LOG").output().expect("run forge")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = forge(dir, args);
    assert!(
        out.status.success(),
        "forge {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a verify that must be refused; returns its JSON.
fn refused_json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = forge(dir, args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit 1 for {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn repo_policy(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies").join(name)
}

/// Four keys (alice, bob, carol trusted 2-of-3; mallory not), a bundle of
/// two shipped policies at `version`.
fn setup(version: u64) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    fs::create_dir(d.join("keys")).unwrap();
    for n in ["alice", "bob", "carol", "mallory"] {
        ok(d, &["key", "generate", "--out", "keys", "--name", n]);
    }
    let carol = fs::read_to_string(d.join("keys/carol.pub")).unwrap();
    let carol_hex = carol.split(' ').nth(1).unwrap();
    fs::write(
        d.join("trust.toml"),
        format!(
            "threshold = 2\n[[key]]\nfile = \"keys/alice.pub\"\n[[key]]\nfile = \"keys/bob.pub\"\n\
             [[key]]\nname = \"carol\"\npublic = \"{carol_hex}\"\n"
        ),
    )
    .unwrap();
    let default = repo_policy("default.yaml");
    let web = repo_policy("web-server.yaml");
    let v = version.to_string();
    ok(
        d,
        &[
            "policy",
            "bundle",
            "create",
            "--name",
            "prod",
            "--version",
            &v,
            "--out",
            "b",
            default.to_str().unwrap(),
            web.to_str().unwrap(),
        ],
    );
    t
}

fn key_id(dir: &Path, name: &str) -> String {
    ok(dir, &["key", "id", &format!("keys/{name}.pub")]).trim().to_string()
}

#[test]
fn key_generate_writes_a_private_0600_file_and_refuses_overwrite() {
    let t = tempfile::tempdir().unwrap();
    let out = ok(t.path(), &["key", "generate", "--out", ".", "--name", "k", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = v["key_id"].as_str().unwrap();
    assert_eq!(id.len(), 16);
    let mode = fs::metadata(t.path().join("k.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(ok(t.path(), &["key", "id", "k.pub"]).trim(), id);
    assert_eq!(ok(t.path(), &["key", "id", "k.key"]).trim(), id);
    let before = fs::read(t.path().join("k.key")).unwrap();
    let again = forge(t.path(), &["key", "generate", "--out", ".", "--name", "k"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(fs::read(t.path().join("k.key")).unwrap(), before);
}

#[test]
fn two_of_three_verifies_and_reports_the_untrusted_signer() {
    let t = setup(7);
    let d = t.path();
    for k in ["alice", "mallory", "carol"] {
        ok(d, &["policy", "sign", "b", "--key", &format!("keys/{k}.key")]);
    }
    let out = ok(d, &["policy", "verify", "b", "--trust", "trust.toml", "--min-version", "7", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["version"], 7);
    // Signers come in SIGNATURES order (sorted by public key): compare as a set.
    let mut signers: Vec<&str> =
        v["signers"].as_array().unwrap().iter().map(|s| s["label"].as_str().unwrap()).collect();
    signers.sort_unstable();
    assert_eq!(signers, ["alice", "carol"]);
    assert_eq!(v["not_counted"][0]["key_id"], key_id(d, "mallory"));
    assert_eq!(v["not_counted"][0]["reason"], "untrusted_signer");
    assert_eq!(v["documents"].as_array().unwrap().len(), 2);

    let text = ok(d, &["policy", "verify", "b", "--trust", "trust.toml"]);
    assert!(text.starts_with("verified: bundle prod version 7"), "{text}");
    assert!(
        text.contains(&format!("not counted: signer {} is not a trusted key", key_id(d, "mallory"))),
        "{text}"
    );
}

#[test]
fn too_few_signers_exits_1_with_counts() {
    let t = setup(1);
    let d = t.path();
    ok(d, &["policy", "sign", "b", "--key", "keys/bob.key"]);
    // Signing twice with the same key does not make two signatures.
    ok(d, &["policy", "sign", "b", "--key", "keys/bob.key"]);
    let v = refused_json(d, &["policy", "verify", "b", "--trust", "trust.toml", "--json"]);
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["code"], "too_few_signatures");
    assert_eq!(v["error"]["valid"], 1);
    assert_eq!(v["error"]["required"], 2);
    let out = forge(d, &["policy", "verify", "b", "--trust", "trust.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("1 valid signature from distinct trusted keys, 2 required"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn one_modified_byte_is_refused_naming_the_document() {
    let t = setup(1);
    let d = t.path();
    ok(d, &["policy", "sign", "b", "--key", "keys/alice.key"]);
    ok(d, &["policy", "sign", "b", "--key", "keys/bob.key"]);
    let doc = d.join("b/documents/web-server.yaml");
    let mut bytes = fs::read(&doc).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 1;
    fs::write(&doc, bytes).unwrap();
    let v = refused_json(d, &["policy", "verify", "b", "--trust", "trust.toml", "--json"]);
    assert_eq!(v["error"]["code"], "digest_mismatch");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("\"web-server.yaml\" was modified after signing"), "{msg}");
    // Nobody signs it either.
    let out = forge(d, &["policy", "sign", "b", "--key", "keys/carol.key"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn replay_is_refused_through_the_state_file() {
    let t = setup(3);
    let d = t.path();
    ok(d, &["policy", "sign", "b", "--key", "keys/alice.key"]);
    ok(d, &["policy", "sign", "b", "--key", "keys/bob.key"]);
    let verify = ["policy", "verify", "b", "--trust", "trust.toml", "--state", "state.json"];
    ok(d, &[&verify[..], &["--record"]].concat());
    let state: serde_json::Value = serde_json::from_slice(&fs::read(d.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["format"], "forgeone-applied v2");
    assert_eq!((state["version"].as_u64(), state["bundles"]["prod"]["version"].as_u64()), (Some(3), Some(3)));
    let v = refused_json(d, &[&verify[..], &["--json"]].concat());
    assert_eq!(v["error"]["code"], "replay");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("version 3 is not newer than the last applied version 3")
    );
    let v =
        refused_json(d, &["policy", "verify", "b", "--trust", "trust.toml", "--min-version", "4", "--json"]);
    assert_eq!(v["error"]["code"], "replay");
}

#[test]
fn an_older_bundle_under_another_name_is_refused_through_the_state_file() {
    let t = setup(5);
    let d = t.path();
    for k in ["alice", "bob"] {
        ok(d, &["policy", "sign", "b", "--key", &format!("keys/{k}.key")]);
    }
    ok(d, &["policy", "verify", "b", "--trust", "trust.toml", "--state", "state.json", "--record"]);
    let default = repo_policy("default.yaml");
    let args = ["policy", "bundle", "create", "--name", "other", "--version", "4", "--out", "b2"];
    ok(d, &[&args[..], &[default.to_str().unwrap()]].concat());
    for k in ["alice", "carol"] {
        ok(d, &["policy", "sign", "b2", "--key", &format!("keys/{k}.key")]);
    }
    let verify = ["policy", "verify", "b2", "--trust", "trust.toml", "--json", "--state"];
    let v = refused_json(d, &[&verify[..], &["state.json"]].concat());
    assert_eq!(v["error"]["code"], "replay");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("\"other\" version 4 is not newer than the last applied version 5 (bundle \"prod\";"),
        "{msg}"
    );
    // Without the state it verifies: the refusal is the version rule alone.
    ok(d, &["policy", "verify", "b2", "--trust", "trust.toml"]);

    // A state file of the old format (last version per name) is read as its highest version.
    fs::write(d.join("old.json"), r#"{"applied": {"prod": 2, "web": 9}}"#).unwrap();
    let v = refused_json(d, &[&verify[..], &["old.json"]].concat());
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("version 4 is not newer than the last applied version 9 (bundle \"web\";"), "{msg}");
    // A corrupt one is an error naming it, not an empty state.
    fs::write(d.join("bad.json"), "{\"applied\": ").unwrap();
    let out = forge(d, &[&verify[..], &["bad.json"]].concat());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.json: not a bundle state file"), "{err}");
}

#[test]
fn an_operator_release_is_signed_k_of_n_like_a_bundle() {
    let t = setup(1);
    let d = t.path();
    let id = format!("sha3-256:{}", "ab".repeat(32));
    // One signature of the two the trust file asks for: not written.
    let release = ["fleet", "release", &id, "--trust", "trust.toml", "--key", "keys/alice.key"];
    let out = forge(d, &[&release[..], &["--out", "one.json"]].concat());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 valid signature from distinct trusted keys, 2 required"), "{err}");
    assert!(!d.join("one.json").exists());
    // --key twice: two signatures.
    ok(d, &[&release[..], &["--key", "keys/bob.key", "--out", "two.json"]].concat());
    let env: serde_json::Value = serde_json::from_slice(&fs::read(d.join("two.json")).unwrap()).unwrap();
    assert_eq!(env["signatures"].as_str().unwrap().lines().count(), 2, "{env}");
    // Or one by one, as with `forge policy sign`; mallory's does not count.
    ok(d, &["fleet", "release", &id, "--key", "keys/alice.key", "--out", "r.json"]);
    for k in ["mallory", "carol", "carol"] {
        ok(d, &["fleet", "sign", "r.json", "--key", &format!("keys/{k}.key"), "--json"]);
    }
    let env: serde_json::Value = serde_json::from_slice(&fs::read(d.join("r.json")).unwrap()).unwrap();
    assert_eq!(env["signatures"].as_str().unwrap().lines().count(), 3, "{env}");
    // Checked against the trust file before publishing: 2 of 3 count, so it
    // goes on to the bus (none here: the connection is what fails).
    let out =
        forge(d, &["fleet", "publish", "r.json", "--trust", "trust.toml", "--nats", "nats://127.0.0.1:1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("connecting to nats://127.0.0.1:1"), "{err}");
}

#[test]
fn malformed_bundle_says_where() {
    let t = setup(1);
    let d = t.path();
    fs::write(d.join("b/documents/extra.yaml"), "x").unwrap();
    let v = refused_json(d, &["policy", "verify", "b", "--trust", "trust.toml", "--json"]);
    assert_eq!(v["error"]["code"], "malformed_bundle");
    assert!(v["error"]["message"].as_str().unwrap().contains("extra.yaml is not listed in MANIFEST"));
}

#[test]
fn bundle_create_refuses_invalid_policies() {
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join("bad.yaml"), "apiVersion: nope\n").unwrap();
    let out = forge(
        t.path(),
        &["policy", "bundle", "create", "--name", "x", "--version", "1", "--out", "b", "bad.yaml"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(!t.path().join("b").exists());
}
