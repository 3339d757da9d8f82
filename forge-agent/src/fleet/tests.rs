//! Unit tests of the fleet's pure parts: records (k-of-n operator records),
//! the conflict rule, the ledger on disk, the bundle transport.

use super::{
    ledger::{Admit, Ledger},
    record::{Identity, Issuer, RecordAction, RecordError, SignedRecord, TrustRecord, Verified},
    store, wire,
};
use crate::{
    policy::Tier,
    sign::{SigningKey, trust::TrustConfig, trust::TrustedKey},
};

fn key() -> SigningKey {
    SigningKey::generate().expect("a key")
}

fn trust_of(named: &[(&str, &SigningKey)]) -> TrustConfig {
    trust_k(1, named)
}

fn trust_k(k: usize, named: &[(&str, &SigningKey)]) -> TrustConfig {
    let keys =
        named.iter().map(|(n, k)| TrustedKey { key: k.public_key(), label: (*n).to_string() }).collect();
    TrustConfig::new(k, keys, "test trust").expect("a trust config")
}

/// `r` as verified, signed by a fresh key of its issuer.
fn verified(r: TrustRecord, operator: bool) -> Verified {
    let k = key();
    let envelope = r.sign(&k);
    let issuer = if operator { Issuer::Operator(r.node.clone()) } else { Issuer::Node(r.node.clone()) };
    Verified { record: r, issuer, signers: vec![k.public_key().id()], envelope }
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
    assert_eq!(l.admit(verified(rec("node-a", RecordAction::Tier, Tier::Suspicious, 10), false)), Admit::New);
    assert_eq!(
        l.admit(verified(rec("node-b", RecordAction::Quarantine, Tier::Compromised, 11), false)),
        Admit::New
    );
    let e = l.effective(&id).expect("in force");
    assert_eq!((e.tier, e.by.clone()), (Tier::Compromised, vec!["node-b".to_string()]));

    // node-b withdrawing its own record leaves node-a's.
    assert_eq!(
        l.admit(verified(rec("node-b", RecordAction::Release, Tier::Verified, 12), false)),
        Admit::New
    );
    assert_eq!(l.effective(&id).expect("in force").tier, Tier::Suspicious);

    // An operator release clears everything issued before it...
    assert_eq!(l.admit(verified(rec("ops", RecordAction::Release, Tier::Verified, 13), true)), Admit::New);
    assert_eq!(l.effective(&id), None);
    // ...but not what comes after.
    assert_eq!(
        l.admit(verified(rec("node-c", RecordAction::Quarantine, Tier::Compromised, 14), false)),
        Admit::New
    );
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
                l.admit(verified(r.clone(), *op));
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
    assert_eq!(l.admit(verified(new.clone(), false)), Admit::New);
    assert_eq!(l.admit(verified(new, false)), Admit::Duplicate);
    assert_eq!(l.admit(verified(old.clone(), false)), Admit::Stale { held_issued_at_ms: 20 });
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

fn quorum(e: &RecordError) -> Option<(usize, usize)> {
    match e {
        RecordError::Quorum(r) => match **r {
            crate::sign::Refusal::TooFewSignatures { valid, required, .. } => Some((valid, required)),
            _ => None,
        },
        _ => None,
    }
}

#[test]
fn operator_records_need_the_trust_configs_threshold() {
    let (a, ops0, ops1, ops2) = (key(), key(), key(), key());
    let nodes = trust_of(&[("node-a", &a)]);
    let operators = trust_k(2, &[("alice", &ops0), ("bob", &ops1), ("carol", &ops2)]);
    let release = rec("alice", RecordAction::Release, Tier::Verified, 20);

    // One operator of the two the trust config asks for.
    let one = release.sign(&ops0);
    let e = SignedRecord::verify(&one.to_bytes(), &nodes, &operators).unwrap_err();
    assert_eq!(quorum(&e), Some((1, 2)), "{e}");
    assert!(e.to_string().contains("1 valid signature from distinct trusted keys, 2 required"), "{e}");

    // Signing twice with one key, or co-signing with a node key, does not make two.
    let mut twice = one.clone();
    twice.cosign(&ops0).unwrap();
    assert_eq!(
        quorum(&SignedRecord::verify(&twice.to_bytes(), &nodes, &operators).unwrap_err()),
        Some((1, 2))
    );
    let mut with_node = one.clone();
    with_node.cosign(&a).unwrap();
    let e = SignedRecord::verify(&with_node.to_bytes(), &nodes, &operators).unwrap_err();
    assert_eq!(quorum(&e), Some((1, 2)), "{e}");
    assert!(e.to_string().contains("not a trusted key"), "{e}");

    // Two operators: verified, whichever form the first signature came in.
    let mut two = one.clone();
    assert_eq!(two.cosign(&ops2).unwrap(), crate::sign::signature::AddOutcome::Added);
    assert!(two.key.is_empty() && two.signatures.lines().count() == 2);
    let v = SignedRecord::verify(&two.to_bytes(), &nodes, &operators).expect("2 of 3");
    assert_eq!(v.issuer, Issuer::Operator("alice".into()));
    let mut ids = v.signers.clone();
    ids.sort();
    let mut want = vec![ops0.public_key().id(), ops2.public_key().id()];
    want.sort();
    assert_eq!(ids, want);
    assert!(SignedRecord::verify_operator(&two.to_bytes(), &operators).is_ok());

    // The body changed after signing: no signature counts.
    let mut tampered = two.clone();
    tampered.body = tampered.body.replace("\"verified\"", "\"trusted\"");
    let e = SignedRecord::verify(&tampered.to_bytes(), &nodes, &operators).unwrap_err();
    assert_eq!(quorum(&e), Some((0, 2)), "{e}");
    assert!(e.to_string().contains("does not verify"), "{e}");

    // The record must name one of the operators who signed it.
    let mut other = TrustRecord { node: "carol".into(), ..release.clone() }.sign(&ops0);
    other.cosign(&ops1).unwrap();
    let e = SignedRecord::verify(&other.to_bytes(), &nodes, &operators).unwrap_err();
    assert!(matches!(&e, RecordError::NodeMismatch { node, .. } if node == "carol"), "{e}");

    // Both envelope forms at once: malformed.
    let mut both = two.clone();
    both.key = one.key.clone();
    both.sig = one.sig.clone();
    let e = SignedRecord::verify(&both.to_bytes(), &nodes, &operators).unwrap_err();
    assert!(matches!(e, RecordError::Malformed(_)), "{e}");

    // A node still signs alone, whatever the operators' threshold.
    let q = rec("node-a", RecordAction::Quarantine, Tier::Compromised, 30);
    let v = SignedRecord::verify(&q.sign(&a).to_bytes(), &nodes, &operators).expect("a node record");
    assert_eq!(v.issuer, Issuer::Node("node-a".into()));
}

#[test]
fn the_ledger_kept_on_disk_is_verified_again_at_restore() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fleet").join(store::FILE);
    assert!(store::load(&path).expect("missing is empty").is_empty());
    let (a, b, ops) = (key(), key(), key());
    let nodes = trust_of(&[("node-a", &a), ("node-b", &b)]);
    let operators = trust_of(&[("ops", &ops)]);
    let id = Identity::parse(DIGEST).expect("identity");
    let signed = |r: TrustRecord, k: &SigningKey| {
        SignedRecord::verify(&r.sign(k).to_bytes(), &nodes, &operators).expect("verifies")
    };
    let mut l = Ledger::default();
    l.admit(signed(rec("node-a", RecordAction::Quarantine, Tier::Compromised, 10), &a));
    l.admit(signed(rec("ops", RecordAction::Release, Tier::Verified, 20), &ops));
    l.admit(signed(rec("node-b", RecordAction::Quarantine, Tier::Compromised, 30), &b));
    store::save(&path, &l.signed()).expect("saved");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).expect("meta").permissions());
    assert_eq!(mode & 0o777, 0o600);

    // A restart: the same verdict from the file alone, every record verified.
    let stored = store::load(&path).expect("loads");
    assert_eq!(stored.len(), 3);
    let mut back = Ledger::default();
    let r = store::restore(&mut back, &stored, &nodes, &operators, &path);
    assert_eq!((r.admitted, r.dropped.len()), (3, 0));
    assert_eq!(back.effective(&id), l.effective(&id));
    assert_eq!(back.effective(&id).expect("in force").by, vec!["node-b".to_string()]);
    // The stored release still clears node-a's older record (no replay of it counts).
    let replay = signed(rec("node-a", RecordAction::Quarantine, Tier::Compromised, 10), &a);
    assert_eq!(back.admit(replay), Admit::Duplicate);

    // node-b's key removed from the node list: its record is dropped, said where.
    let fewer = trust_of(&[("node-a", &a)]);
    let mut back = Ledger::default();
    let r = store::restore(&mut back, &stored, &fewer, &operators, &path);
    assert_eq!(r.admitted, 2);
    assert_eq!(r.dropped.len(), 1);
    assert!(r.dropped[0].contains(&path.display().to_string()), "{:?}", r.dropped);
    assert!(r.dropped[0].contains("neither a fleet node key nor an operator key"), "{:?}", r.dropped);
    assert_eq!(back.effective(&id), None);

    // A record changed in the file does not verify.
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, text.replacen("compromised", "suspicious", 1)).expect("write");
    let mut back = Ledger::default();
    let r = store::restore(&mut back, &store::load(&path).expect("loads"), &nodes, &operators, &path);
    assert!(r.dropped.iter().any(|d| d.contains("bad signature")), "{:?}", r.dropped);

    // An unreadable file is an error, not an empty ledger.
    for bad in ["{", "{\"format\": \"other\", \"records\": []}", "[]"] {
        std::fs::write(&path, bad).expect("write");
        let e = store::load(&path).unwrap_err();
        assert!(matches!(e, store::StoreError::Malformed { .. }), "{bad}: {e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }
}
