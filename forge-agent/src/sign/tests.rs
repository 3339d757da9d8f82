//! Bundle tests with real keys in temporary directories: the happy path and
//! one test per refusal.

use std::{fs, path::Path};

use super::{
    bundle::{Bundle, BundleError, DOCUMENTS_DIR, Document, MANIFEST_FILE, SIGNATURES_FILE},
    keys::{PublicKey, SigningKey, generate_files},
    signature::{AddOutcome, Rejection},
    trust::{TrustConfig, TrustedKey},
    verify::Refusal,
};

struct Fixture {
    dir: tempfile::TempDir,
    keys: Vec<SigningKey>,
}

impl Fixture {
    /// `n` key pairs written to disk as a person would (`forge key generate`).
    fn new(n: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keys = (0..n)
            .map(|i| {
                let g = generate_files(dir.path(), &format!("signer{i}")).unwrap();
                SigningKey::load(&g.private_path).unwrap()
            })
            .collect();
        Self { dir, keys }
    }

    fn bundle(&self, name: &str, version: u64) -> std::path::PathBuf {
        let path = self.dir.path().join(format!("{name}-v{version}"));
        let docs = vec![
            Document { name: "base.yaml".into(), bytes: b"kind: Policy\nmetadata: {name: base}\n".to_vec() },
            Document { name: "web.yaml".into(), bytes: b"kind: Policy\nmetadata: {name: web}\n".to_vec() },
        ];
        Bundle::create(&path, name, version, docs).unwrap();
        path
    }

    /// Trust the first `trusted` keys, threshold `k`.
    fn trust(&self, trusted: usize, k: usize) -> TrustConfig {
        let keys = self.keys[..trusted]
            .iter()
            .enumerate()
            .map(|(i, s)| TrustedKey { key: s.public_key(), label: format!("signer{i}") })
            .collect();
        TrustConfig::new(k, keys, "test trust").unwrap()
    }

    fn sign(&self, bundle: &Path, signers: &[usize]) {
        for i in signers {
            Bundle::sign(bundle, &self.keys[*i]).unwrap();
        }
    }
}

fn refusal(r: Result<super::VerifiedBundle, BundleError>) -> Refusal {
    match r {
        Err(BundleError::Refused { source, .. }) => *source,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn two_of_three_with_an_untrusted_third_signer() {
    let f = Fixture::new(4);
    let b = f.bundle("prod", 3);
    // Keys 0-2 trusted, k = 2; key 3 is not trusted.
    f.sign(&b, &[0, 3, 2]);
    let v = Bundle::load(&b).unwrap().verify(&f.trust(3, 2), Some(2)).unwrap();
    assert_eq!(v.name, "prod");
    assert_eq!(v.version, 3);
    assert_eq!(v.documents.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["base.yaml", "web.yaml"]);
    assert_eq!(v.documents[1].text().unwrap(), "kind: Policy\nmetadata: {name: web}\n");
    let mut expected = vec![f.keys[0].public_key().id(), f.keys[2].public_key().id()];
    let mut got = v.signer_ids();
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
    assert_eq!(v.rejected, [Rejection::Untrusted { key_id: f.keys[3].public_key().id() }]);
}

#[test]
fn modified_document_byte_is_a_digest_mismatch_naming_it() {
    let f = Fixture::new(2);
    let b = f.bundle("prod", 1);
    f.sign(&b, &[0, 1]);
    let doc = b.join(DOCUMENTS_DIR).join("web.yaml");
    let mut bytes = fs::read(&doc).unwrap();
    bytes[0] ^= 0x20;
    fs::write(&doc, bytes).unwrap();
    let r = refusal(Bundle::load(&b).unwrap().verify(&f.trust(2, 2), None));
    assert!(matches!(&r, Refusal::DigestMismatch { name, .. } if name == "web.yaml"), "{r}");
    assert!(r.to_string().contains("\"web.yaml\" was modified after signing"), "{r}");
    // And a signer refuses to sign it.
    let e = Bundle::sign(&b, &f.keys[0]).unwrap_err();
    assert_eq!(e.code(), "digest_mismatch");
}

#[test]
fn too_few_signers_says_how_many() {
    let f = Fixture::new(3);
    let b = f.bundle("prod", 1);
    f.sign(&b, &[0, 1]);
    let r = refusal(Bundle::load(&b).unwrap().verify(&f.trust(3, 3), None));
    assert!(matches!(r, Refusal::TooFewSignatures { valid: 2, required: 3, .. }));
    assert_eq!(r.to_string(), "2 valid signatures from distinct trusted keys, 3 required");
}

#[test]
fn untrusted_signer_is_reported_by_key_id_and_not_counted() {
    let f = Fixture::new(3);
    let b = f.bundle("prod", 1);
    f.sign(&b, &[0, 2]);
    let r = refusal(Bundle::load(&b).unwrap().verify(&f.trust(2, 2), None));
    let untrusted = f.keys[2].public_key().id();
    assert!(
        matches!(&r, Refusal::TooFewSignatures { valid: 1, required: 2, rejected, .. }
            if *rejected == [Rejection::Untrusted { key_id: untrusted }]),
        "{r}"
    );
    assert!(r.to_string().contains(&format!("signer {untrusted} is not a trusted key")), "{r}");
}

#[test]
fn bad_signature_is_reported_and_not_counted() {
    let f = Fixture::new(2);
    let b = f.bundle("prod", 1);
    f.sign(&b, &[0, 1]);
    // Corrupt signer1's signature: flip one hex digit of its line.
    let sig_path = b.join(SIGNATURES_FILE);
    let text = fs::read_to_string(&sig_path).unwrap();
    let key1 = f.keys[1].public_key().to_hex();
    let corrupted: String = text
        .lines()
        .map(|l| {
            if l.contains(&key1) {
                let mut l = l.to_string();
                let last = if l.ends_with('0') { "1" } else { "0" };
                l.replace_range(l.len() - 1.., last);
                l
            } else {
                l.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect();
    fs::write(&sig_path, corrupted).unwrap();
    let r = refusal(Bundle::load(&b).unwrap().verify(&f.trust(2, 2), None));
    let id = f.keys[1].public_key().id();
    assert!(
        matches!(&r, Refusal::TooFewSignatures { valid: 1, rejected, .. }
            if matches!(rejected.as_slice(), [Rejection::BadSignature { key_id, .. }] if *key_id == id)),
        "{r}"
    );
    assert!(r.to_string().contains(&format!("signature by {id} (signer1) does not verify")), "{r}");
}

#[test]
fn signature_over_an_edited_manifest_does_not_count() {
    let f = Fixture::new(2);
    let b = f.bundle("prod", 1);
    f.sign(&b, &[0, 1]);
    // Raise the version in the manifest after signing: every signature breaks.
    let m = b.join(MANIFEST_FILE);
    let text = fs::read_to_string(&m).unwrap().replace("version 1\n", "version 9\n");
    fs::write(&m, text).unwrap();
    let r = refusal(Bundle::load(&b).unwrap().verify(&f.trust(2, 1), None));
    assert!(matches!(&r, Refusal::TooFewSignatures { valid: 0, rejected, .. } if rejected.len() == 2), "{r}");
}

#[test]
fn replayed_or_older_version_is_refused() {
    let f = Fixture::new(1);
    let b = f.bundle("prod", 5);
    f.sign(&b, &[0]);
    let bundle = Bundle::load(&b).unwrap();
    for last in [5, 6] {
        let r = refusal(bundle.verify(&f.trust(1, 1), Some(last)));
        assert_eq!(r, Refusal::Replay { name: "prod".into(), version: 5, last_applied: last, newest: None });
        assert!(r.to_string().contains("not newer than the last applied version"), "{r}");
    }
    assert!(bundle.verify(&f.trust(1, 1), Some(4)).is_ok());
    assert!(bundle.verify(&f.trust(1, 1), None).is_ok());
}

#[test]
fn duplicate_signatures_by_one_key_count_once() {
    let f = Fixture::new(2);
    let b = f.bundle("prod", 1);
    f.sign(&b, &[0]);
    // Merge by concatenation gone wrong: the same line twice.
    let sig_path = b.join(SIGNATURES_FILE);
    let line = fs::read_to_string(&sig_path).unwrap();
    fs::write(&sig_path, format!("{line}{line}")).unwrap();
    let r = refusal(Bundle::load(&b).unwrap().verify(&f.trust(2, 2), None));
    let id = f.keys[0].public_key().id();
    assert!(
        matches!(&r, Refusal::TooFewSignatures { valid: 1, required: 2, rejected, .. }
            if matches!(rejected.as_slice(), [Rejection::Duplicate { key_id, .. }] if *key_id == id)),
        "{r}"
    );
}

#[test]
fn signing_twice_with_one_key_adds_one_line() {
    let f = Fixture::new(1);
    let b = f.bundle("prod", 1);
    let (_, first) = Bundle::sign(&b, &f.keys[0]).unwrap();
    let (_, second) = Bundle::sign(&b, &f.keys[0]).unwrap();
    assert_eq!(first.outcome, AddOutcome::Added);
    assert_eq!(second.outcome, AddOutcome::Unchanged);
    assert_eq!(second.signatures, 1);
    assert_eq!(fs::read_to_string(b.join(SIGNATURES_FILE)).unwrap().lines().count(), 1);
}

#[test]
fn malformed_bundles_say_what_and_where() {
    let f = Fixture::new(1);

    let b = f.bundle("a", 1);
    fs::write(b.join(MANIFEST_FILE), b"forgeone-manifest v1\nkind policy-bundle\nname a\nversion one\n")
        .unwrap();
    let e = Bundle::load(&b).unwrap_err();
    assert!(matches!(e, BundleError::Manifest { .. }), "{e}");
    assert!(e.to_string().starts_with("malformed bundle: ") && e.to_string().contains("line 4"), "{e}");

    let b = f.bundle("b", 1);
    fs::write(b.join(SIGNATURES_FILE), b"ed25519 zz\n").unwrap();
    let e = Bundle::load(&b).unwrap_err();
    assert!(matches!(e, BundleError::Signatures { .. }), "{e}");
    assert!(e.to_string().contains("SIGNATURES: line 1"), "{e}");

    let b = f.bundle("c", 1);
    fs::remove_file(b.join(DOCUMENTS_DIR).join("web.yaml")).unwrap();
    let e = Bundle::load(&b).unwrap_err();
    assert!(
        matches!(&e, BundleError::MissingDocument { path } if path.ends_with("documents/web.yaml")),
        "{e}"
    );

    let b = f.bundle("d", 1);
    fs::write(b.join(DOCUMENTS_DIR).join("extra.yaml"), b"x").unwrap();
    let e = Bundle::load(&b).unwrap_err();
    assert!(matches!(&e, BundleError::UnlistedFile { path } if path.ends_with("extra.yaml")), "{e}");

    let b = f.bundle("e", 1);
    let web = b.join(DOCUMENTS_DIR).join("web.yaml");
    fs::remove_file(&web).unwrap();
    std::os::unix::fs::symlink(b.join(DOCUMENTS_DIR).join("base.yaml"), &web).unwrap();
    let e = Bundle::load(&b).unwrap_err();
    assert!(matches!(e, BundleError::NotRegularFile { .. }), "{e}");

    let e = Bundle::load(f.dir.path()).unwrap_err();
    assert!(matches!(e, BundleError::NotABundle { .. }), "{e}");
}

#[test]
fn create_refuses_to_overwrite_and_bad_names() {
    let f = Fixture::new(0);
    let b = f.bundle("prod", 1);
    let docs = vec![Document { name: "x.yaml".into(), bytes: vec![] }];
    assert!(matches!(Bundle::create(&b, "prod", 2, docs), Err(BundleError::Exists { .. })));
    let bad = vec![Document { name: "../x.yaml".into(), bytes: vec![] }];
    let path = f.dir.path().join("bad");
    assert!(matches!(Bundle::create(&path, "prod", 1, bad), Err(BundleError::Manifest { .. })));
    assert!(!path.exists(), "nothing is written for an invalid bundle");
}

#[test]
fn trust_by_key_file_works_end_to_end() {
    let f = Fixture::new(2);
    let b = f.bundle("prod", 1);
    f.sign(&b, &[1]);
    let trust_path = f.dir.path().join("trust.toml");
    fs::write(
        &trust_path,
        "threshold = 1\n[[key]]\nfile = \"signer0.pub\"\n[[key]]\nfile = \"signer1.pub\"\n",
    )
    .unwrap();
    let trust = TrustConfig::load(&trust_path).unwrap();
    let v = Bundle::load(&b).unwrap().verify(&trust, None).unwrap();
    assert_eq!(v.signers[0].label, "signer1");
    assert_eq!(PublicKey::load(&f.dir.path().join("signer1.pub")).unwrap().id(), v.signers[0].key_id);
}
