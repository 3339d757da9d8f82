//! Unit tests of the fleet's pure parts: records, the conflict rule, the
//! bundle transport.

use super::{
    ledger::{Admit, Ledger},
    record::{Identity, Issuer, RecordAction, RecordError, SignedRecord, TrustRecord},
    wire,
};
use crate::{
    policy::Tier,
    sign::{SigningKey, trust::TrustConfig, trust::TrustedKey},
};

fn key() -> SigningKey {
    SigningKey::generate().expect("a key")
}

fn trust_of(named: &[(&str, &SigningKey)]) -> TrustConfig {
    let keys =
        named.iter().map(|(n, k)| TrustedKey { key: k.public_key(), label: (*n).to_string() }).collect();
    TrustConfig::new(1, keys, "test trust").expect("a trust config")
}

const DIGEST: &str = "sha3-256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn rec(node: &str, action: RecordAction, tier: Tier, at: u64) -> TrustRecord {
    TrustRecord {
        node: node.into(),
        identity: Identity::parse(DIGEST).expect("identity"),
        action,
        tier,
        reason: vec![format!("{node} says {}", tier.as_str())],
        trace_head: Some("ab".repeat(32)),
        issued_at_ms: at,
        seq: 1,
    }
}

#[test]
fn a_signed_record_verifies_and_names_its_issuer() {
    let (a, ops) = (key(), key());
    let nodes = trust_of(&[("node-a", &a)]);
    let operators = trust_of(&[("ops", &ops)]);
    let r = rec("node-a", RecordAction::Quarantine, Tier::Compromised, 10);
    let v = SignedRecord::verify(&r.sign(&a).to_bytes(), &nodes, &operators).expect("verifies");
    assert_eq!(v.record, r);
    assert_eq!(v.issuer, Issuer::Node("node-a".into()));

    let release = TrustRecord { node: "ops".into(), ..rec("ops", RecordAction::Release, Tier::Verified, 20) };
    let v = SignedRecord::verify(&release.sign(&ops).to_bytes(), &nodes, &operators).expect("verifies");
    assert_eq!(v.issuer, Issuer::Operator("ops".into()));
}

#[test]
fn forged_tampered_and_impersonating_records_are_refused() {
    let (a, b, stranger) = (key(), key(), key());
    let nodes = trust_of(&[("node-a", &a), ("node-b", &b)]);
    let operators = trust_of(&[("ops", &key())]);
    let r = rec("node-a", RecordAction::Quarantine, Tier::Compromised, 10);

    // A key nobody listed.
    let e = SignedRecord::verify(&r.sign(&stranger).to_bytes(), &nodes, &operators).unwrap_err();
    assert!(matches!(e, RecordError::UnknownKey(id) if id == stranger.public_key().id()), "{e}");

    // The body changed after signing.
    let mut env = r.sign(&a);
    env.body = env.body.replace("compromised", "trusted");
    let e = SignedRecord::verify(&env.to_bytes(), &nodes, &operators).unwrap_err();
    assert!(matches!(e, RecordError::BadSignature(_)), "{e}");

    // node-b signing a record that claims to come from node-a.
    let e = SignedRecord::verify(&r.sign(&b).to_bytes(), &nodes, &operators).unwrap_err();
    assert!(matches!(&e, RecordError::NodeMismatch { node, label } if node == "node-a" && label == "node-b"));

    // Not an envelope at all.
    let e = SignedRecord::verify(b"{\"body\": 1}", &nodes, &operators).unwrap_err();
    assert!(matches!(e, RecordError::Malformed(_)), "{e}");
}

#[test]
fn the_least_trusted_tier_wins_until_an_operator_release() {
    let mut l = Ledger::default();
    let id = Identity::parse(DIGEST).expect("identity");
    assert_eq!(l.admit(rec("node-a", RecordAction::Tier, Tier::Suspicious, 10), false), Admit::New);
    assert_eq!(l.admit(rec("node-b", RecordAction::Quarantine, Tier::Compromised, 11), false), Admit::New);
    let e = l.effective(&id).expect("in force");
    assert_eq!((e.tier, e.by.clone()), (Tier::Compromised, vec!["node-b".to_string()]));

    // node-b withdrawing its own record leaves node-a's.
    assert_eq!(l.admit(rec("node-b", RecordAction::Release, Tier::Verified, 12), false), Admit::New);
    assert_eq!(l.effective(&id).expect("in force").tier, Tier::Suspicious);

    // An operator release clears everything issued before it...
    assert_eq!(l.admit(rec("ops", RecordAction::Release, Tier::Verified, 13), true), Admit::New);
    assert_eq!(l.effective(&id), None);
    // ...but not what comes after.
    assert_eq!(l.admit(rec("node-c", RecordAction::Quarantine, Tier::Compromised, 14), false), Admit::New);
    assert_eq!(l.effective(&id).expect("in force").by, vec!["node-c".to_string()]);
}

#[test]
fn the_outcome_does_not_depend_on_arrival_order() {
    let records = [
        (rec("node-a", RecordAction::Quarantine, Tier::Compromised, 10), false),
        (rec("ops", RecordAction::Release, Tier::Verified, 20), true),
        (rec("node-b", RecordAction::Tier, Tier::Suspicious, 30), false),
        (rec("node-a", RecordAction::Tier, Tier::Unknown, 5), false),
    ];
    let mut outcomes = Vec::new();
    // Every rotation and its reverse.
    for start in 0..records.len() {
        for rev in [false, true] {
            let mut order: Vec<_> = records.iter().cycle().skip(start).take(records.len()).collect();
            if rev {
                order.reverse();
            }
            let mut l = Ledger::default();
            for (r, op) in order {
                l.admit(r.clone(), *op);
            }
            outcomes.push(l.effective(&records[0].0.identity));
        }
    }
    assert!(outcomes.windows(2).all(|w| w[0] == w[1]), "{outcomes:?}");
    assert_eq!(outcomes[0].as_ref().map(|e| e.tier), Some(Tier::Suspicious));
}

#[test]
fn an_older_record_from_the_same_node_is_stale() {
    let mut l = Ledger::default();
    let new = rec("node-a", RecordAction::Release, Tier::Verified, 20);
    let old = rec("node-a", RecordAction::Quarantine, Tier::Compromised, 10);
    assert_eq!(l.admit(new.clone(), false), Admit::New);
    assert_eq!(l.admit(new, false), Admit::Duplicate);
    assert_eq!(l.admit(old.clone(), false), Admit::Stale { held_issued_at_ms: 20 });
    assert_eq!(l.effective(&old.identity), None, "the replayed quarantine does not count");
}

#[test]
fn identities_parse_and_match_workloads() {
    let id = Identity::parse(DIGEST).expect("digest");
    let mut w = crate::policy::Workload::cgroup("forge-capsules/x");
    assert!(!id.matches(&w));
    w.digest = Some(DIGEST.into());
    assert!(id.matches(&w));
    assert!(id.key().starts_with("d-0011"));
    let c = Identity::parse("cgroup:/system.slice/nginx.service").expect("cgroup");
    assert!(c.matches(&crate::policy::Workload::cgroup("system.slice/nginx.service")));
    assert!(c.key().starts_with("c-") && c.key().len() == 34);
    for bad in ["sha3-256:12", "md5:00", "cgroup:/", ""] {
        assert!(Identity::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_bundle_survives_the_wire_and_nothing_escapes_its_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("b");
    let docs = vec![crate::sign::Document { name: "base.yaml".into(), bytes: b"kind: Policy\n".to_vec() }];
    crate::sign::Bundle::create(&src, "prod", 3, docs).expect("bundle");
    let (bundle, _) = crate::sign::Bundle::sign(&src, &key()).expect("signed");
    let packed = wire::pack(&bundle).expect("packed");
    assert_eq!((packed.name.as_str(), packed.version), ("prod", 3));
    let out = wire::unpack(&packed.bytes, &dir.path().join("out")).expect("unpacked");
    let back = crate::sign::Bundle::load(&out).expect("loads");
    assert_eq!(back.manifest().to_bytes(), bundle.manifest().to_bytes());
    assert_eq!(back.signatures().to_bytes(), bundle.signatures().to_bytes());

    let evil =
        String::from_utf8(packed.bytes).expect("json").replace("documents/base.yaml", "documents/../x");
    let e = wire::unpack(evil.as_bytes(), &dir.path().join("evil")).unwrap_err();
    assert!(e.to_string().contains("no place in a bundle"), "{e}");
    assert!(wire::unpack(b"[]", &dir.path().join("x")).is_err());
}
