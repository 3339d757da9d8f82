//! The `.forgepkg` format, signatures and the gate (pure logic); runs of
//! real modules are in `run_tests.rs`.

use super::{
    gate::{AllowAll, Denial, Facility, Gate, PolicyGate, grants},
    manifest::CapsuleManifest,
    package::{Package, PackageError},
};
use crate::{
    policy::{CompiledRecord, Policy, PolicySet, Tier, Workload},
    sign::{Refusal, SigningKey, TrustConfig, trust::TrustedKey},
};

pub(super) const HELLO: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 6))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

pub(super) const CAPS: &str = "name = \"hello\"\nversion = 2\n";

pub(super) fn wasm(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).unwrap()
}

pub(super) struct Signers {
    pub keys: Vec<SigningKey>,
}

impl Signers {
    pub fn new(n: usize) -> Self {
        Self { keys: (0..n).map(|_| SigningKey::generate().unwrap()).collect() }
    }

    /// The first `trusted` keys are trusted, `k` of them required.
    pub fn trust(&self, trusted: usize, k: usize) -> TrustConfig {
        let keys = self.keys[..trusted]
            .iter()
            .enumerate()
            .map(|(i, s)| TrustedKey { key: s.public_key(), label: format!("signer{i}") })
            .collect();
        TrustConfig::new(k, keys, "test trust").unwrap()
    }

    pub fn signed(&self, caps: &str, module: Vec<u8>, by: &[usize]) -> Package {
        let mut p = Package::build(caps.as_bytes().to_vec(), module).unwrap();
        for i in by {
            p.sign(&self.keys[*i]).unwrap();
        }
        p
    }
}

#[test]
fn the_encoding_is_canonical_and_round_trips() {
    let s = Signers::new(2);
    let p = s.signed(CAPS, wasm(HELLO), &[0, 1]);
    let bytes = p.to_bytes();
    let back = Package::parse(&bytes).unwrap();
    assert_eq!(back.to_bytes(), bytes);
    assert_eq!(back.manifest().name, "hello");
    assert_eq!(back.signatures().entries().len(), 2);
    assert_eq!(back.module_digest(), p.module_digest());
}

#[test]
fn signature_lines_out_of_order_are_not_a_second_encoding() {
    let s = Signers::new(2);
    let bytes = s.signed(CAPS, wasm(HELLO), &[0, 1]).to_bytes();
    // SIGS is the last section: its two lines, swapped.
    let at = bytes.windows(4).rposition(|w| w == b"SIGS").unwrap() + 8;
    let lines: Vec<&[u8]> = bytes[at..].split_inclusive(|b| *b == b'\n').collect();
    assert_eq!(lines.len(), 2);
    let mut swapped = bytes[..at].to_vec();
    swapped.extend_from_slice(lines[1]);
    swapped.extend_from_slice(lines[0]);
    let e = parse_err(&swapped);
    assert_eq!(e.code(), "bad_signatures");
    assert!(e.to_string().contains("sorted"), "{e}");
}

fn parse_err(bytes: &[u8]) -> PackageError {
    Package::parse(bytes).expect_err("refused")
}

#[test]
fn malformed_files_are_refused_naming_the_place() {
    let good = Signers::new(1).signed(CAPS, wasm(HELLO), &[0]).to_bytes();
    let mut magic = good.clone();
    magic[0] = b'X';
    assert!(matches!(parse_err(&magic), PackageError::BadMagic));
    let mut version = good.clone();
    version[8] = 2;
    assert!(matches!(parse_err(&version), PackageError::Version { found: 2 }));
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(matches!(parse_err(&trailing), PackageError::Trailing { extra: 1, .. }));
    // The first section's tag is at byte 10.
    let mut order = good.clone();
    order[10..14].copy_from_slice(b"WASM");
    let e = parse_err(&order);
    assert!(matches!(e, PackageError::SectionOrder { index: 0, expected: "CAPS", .. }), "{e}");
    // CAPS length field at 14..18: claim more than the limit.
    let mut huge = good.clone();
    huge[14..18].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(parse_err(&huge), PackageError::SectionTooLarge { tag: "CAPS", .. }));
    // Every strict prefix is refused, never a panic.
    for n in 0..good.len() {
        let e = parse_err(&good[..n]);
        assert!(
            matches!(e, PackageError::BadMagic | PackageError::Truncated { .. }),
            "prefix of {n} bytes: {e}"
        );
    }
    let e = parse_err(&good[..good.len() - 3]);
    assert!(e.to_string().contains("section SIGS"), "{e}");
}

#[test]
fn a_changed_module_byte_is_a_digest_mismatch_and_nothing_is_believed_before_k_signers() {
    let s = Signers::new(5);
    let trust = s.trust(5, 3);
    let p = s.signed(CAPS, wasm(HELLO), &[0, 1, 2]);
    let v = p.clone().verify(&trust).unwrap();
    assert_eq!(v.signers.len(), 3);

    // One byte of the data segment ("hello") changed after signing.
    let mut bytes = p.to_bytes();
    let at = bytes.windows(6).position(|w| w == b"hello\n").unwrap();
    bytes[at] = b'j';
    let e = Package::parse(&bytes).unwrap().verify(&trust).unwrap_err();
    match e {
        PackageError::Refused(r) => {
            assert!(matches!(*r, Refusal::DigestMismatch { ref name, .. } if name == "module.wasm"), "{r}")
        }
        other => panic!("{other}"),
    }

    // Signing again with the same key still counts once: 2 < 3.
    let mut p = s.signed(CAPS, wasm(HELLO), &[0, 1]);
    p.sign(&s.keys[1]).unwrap();
    let e = p.verify(&trust).unwrap_err();
    assert_eq!(e.code(), "too_few_signatures", "{e}");
    let untrusted = Signers::new(3);
    let p = untrusted.signed(CAPS, wasm(HELLO), &[0, 1, 2]);
    let e = p.verify(&trust).unwrap_err();
    assert!(e.to_string().contains("not a trusted key"), "{e}");
}

#[test]
fn a_signature_over_another_manifest_does_not_count() {
    let s = Signers::new(1);
    let trust = s.trust(1, 1);
    let v2 = s.signed(CAPS, wasm(HELLO), &[0]);
    // Version 3's manifest with version 2's signature lines.
    let mut v3 = Package::build(b"name = \"hello\"\nversion = 3\n".to_vec(), wasm(HELLO)).unwrap().to_bytes();
    let sigs = v2.signatures().to_bytes();
    v3.truncate(v3.len() - 4);
    v3.extend_from_slice(&(sigs.len() as u32).to_le_bytes());
    v3.extend_from_slice(&sigs);
    let e = Package::parse(&v3).unwrap().verify(&trust).unwrap_err();
    assert!(e.to_string().contains("does not verify"), "{e}");
}

#[test]
fn manifest_and_capsule_toml_must_agree() {
    let good = Package::build(CAPS.as_bytes().to_vec(), wasm(HELLO)).unwrap().to_bytes();
    // Same length: "hello" -> "jello" in CAPS only.
    let mut bytes = good.clone();
    let at = bytes.windows(7).position(|w| w == b"\"hello\"").unwrap();
    bytes[at + 1] = b'j';
    let e = parse_err(&bytes);
    assert!(e.to_string().contains("capsule.toml says jello"), "{e}");
}

fn record(policy: &str, tier: Option<Tier>) -> CompiledRecord {
    let doc = Policy::from_yaml(policy, "capsule.yaml").unwrap();
    let set = PolicySet::from_docs(vec![doc]).unwrap();
    let w =
        Workload { digest: Some("sha3-256:00".into()), signers: vec!["k1".into()], ..Workload::default() };
    let tier = tier.unwrap_or_else(|| set.initial_tier(&w).unwrap());
    set.compile_for(&w, tier, 1).unwrap()
}

pub(super) const POLICY: &str = "apiVersion: forgeone.dev/v1alpha1\nkind: Policy\nmetadata: {name: capsules}\nspec:\n  trust: trusted\n  defaults: {file.read: allow, file.write: deny, net.connect: deny}\n  rules:\n    - {name: out-dir, op: file.write, action: allow, paths: [/srv/out/]}\n    - {name: no-shadow, op: file.read, action: deny, paths: [/etc/shadow]}\n    - {name: api, op: net.connect, action: allow, cidrs: [10.1.0.0/16], ports: 443}\n  escalation:\n    suspicious:\n      rules:\n        - {name: suspicious-no-net, op: net.connect, action: deny, cidrs: [0.0.0.0/0]}\n  capsule: {env: [LANG], clock: allow}\n";

fn manifest(caps: &str) -> CapsuleManifest {
    CapsuleManifest::parse(format!("name = \"g\"\nversion = 1\n[capabilities]\n{caps}").as_bytes()).unwrap()
}

#[test]
fn the_gate_grants_what_the_manifest_requests_and_the_policy_allows() {
    let m = manifest(
        "files = [{path = \"/srv/out/\", access = \"read-write\"}, {path = \"/etc/shadow\", access = \"read\"}]\nconnect = [\"10.1.2.3:443\"]\nenv = [\"LANG\", \"HOME\"]\nclock = true\nrandom = true\n",
    );
    let g = PolicyGate::new(m.capabilities.clone(), record(POLICY, None), false);
    let ok = |f: Facility<'_>| g.check(&f).allowed;
    assert!(ok(Facility::FileWrite("/srv/out/report.txt")));
    assert!(ok(Facility::FileRead("/srv/out/a/b")));
    assert!(!ok(Facility::FileWrite("/srv/other")), "not requested");
    assert_eq!(g.check(&Facility::FileWrite("/srv/other")).denial, Some(Denial::Manifest));
    let shadow = g.check(&Facility::FileRead("/etc/shadow"));
    assert!(!shadow.allowed);
    assert!(matches!(shadow.denial, Some(Denial::Policy { rule: Some(ref r), .. }) if r == "no-shadow"));
    assert!(ok(Facility::Connect("10.1.2.3:443".parse().unwrap())));
    assert!(!ok(Facility::Connect("10.1.2.3:80".parse().unwrap())), "not requested");
    assert!(ok(Facility::Env("LANG")));
    assert!(!ok(Facility::Env("HOME")), "requested, not granted by the policy");
    assert!(!ok(Facility::Env("PATH")), "not requested");
    assert!(ok(Facility::Clock));
    assert!(!ok(Facility::Random), "the policy does not grant random");

    let denied: Vec<String> = grants(&g).into_iter().filter(|x| !x.granted).map(|x| x.capability).collect();
    assert_eq!(denied, ["read /etc/shadow", "env HOME", "random"]);

    // A lower tier takes the network away.
    let low = PolicyGate::new(m.capabilities.clone(), record(POLICY, Some(Tier::Suspicious)), false);
    let d = low.check(&Facility::Connect("10.1.2.3:443".parse().unwrap()));
    assert!(!d.allowed);
    assert!(matches!(d.denial, Some(Denial::Policy { rule: Some(ref r), .. }) if r == "suspicious-no-net"));

    // Monitor mode lets it through and still says why it would be denied.
    let mon = PolicyGate::new(m.capabilities, record(POLICY, None), true);
    let d = mon.check(&Facility::FileRead("/etc/shadow"));
    assert!(d.allowed && d.denial.is_some());
    assert!(AllowAll.check(&Facility::FileRead("/etc/shadow")).allowed);
}

#[test]
fn a_capsule_no_policy_selects_gets_nothing() {
    let m = manifest("clock = true\nfiles = [{path = \"/srv/in.txt\", access = \"read\"}]\n");
    let other = POLICY.replace("spec:\n", "spec:\n  selector: {signers: [someone-else]}\n");
    let g = PolicyGate::new(m.capabilities, record(&other, Some(Tier::Trusted)), false);
    assert!(!g.check(&Facility::Clock).allowed);
    assert!(!g.check(&Facility::FileRead("/srv/in.txt")).allowed);
}

#[test]
fn the_module_is_listed_by_its_tree_digest_and_older_plain_listings_still_check() {
    use crate::sign::{manifest::Hash, sha3_256, sha3_256_tree};
    let module = wasm(HELLO);
    let p = Package::build(CAPS.as_bytes().to_vec(), module.clone()).unwrap();
    let e = p.signed_manifest().entry(super::package::MODULE_NAME).unwrap();
    assert_eq!((e.hash, e.digest), (Hash::Tree, sha3_256_tree(&module)));
    assert_eq!(p.module_digest(), sha3_256_tree(&module));
    let text = String::from_utf8(p.signed_manifest().to_bytes()).unwrap();
    assert!(text.contains(&format!("\ntree {} {} module.wasm\n", e.digest, module.len())), "{text}");
    assert!(text.contains("\nfile "), "capsule.toml keeps its plain digest: {text}");

    // A package built before the tree digest (a fuzz seed) lists the
    // module as `file`: it still checks, and its identity stays that digest.
    let old = Package::parse(include_bytes!("../../../fuzz/seeds/pkg_parse/signed-2.forgepkg")).unwrap();
    let e = old.signed_manifest().entry(super::package::MODULE_NAME).unwrap();
    assert_eq!(e.hash, Hash::Plain);
    old.check_digests().unwrap();
    assert_eq!(old.module_digest(), sha3_256(old.module()));

    // The fuzz seed whose `tree` line Python's hashlib computed checks too.
    let seed =
        Package::parse(include_bytes!("../../../fuzz/seeds/pkg_parse/unsigned-tree.forgepkg")).unwrap();
    seed.check_digests().unwrap();
    assert_eq!(seed.module_digest(), sha3_256_tree(seed.module()));

    // The keyword is signed: relisting a module under the other digest is a mismatch.
    let mut bytes = p.to_bytes();
    let at = bytes.windows(6).position(|w| w == b"\ntree ").unwrap();
    bytes[at..at + 6].copy_from_slice(b"\nfile ");
    let relisted = Package::parse(&bytes).unwrap();
    assert_eq!(relisted.check_digests().unwrap_err().code(), "digest_mismatch");
}
