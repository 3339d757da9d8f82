//! The policy set of record and its trust domain's version, kept in one
//! JSON file (`--state`), so that no validly signed older bundle can take a
//! node back, whatever name it carries, across restarts too.
//!
//! The rule (docs/policy.md, "Signed bundles: versions and names"):
//!
//! 1. **One version per trust domain.** A node verifies bundles against one
//!    trust config (its trust domain); the domain has one version, the
//!    highest of every bundle applied under it, whatever the bundle's name.
//!    A bundle is applied only if its version is greater
//!    ([`AppliedBundles::admit`]); anything else is refused as a replay or
//!    rollback, naming both versions and the bundle that holds the newer
//!    one. Changing the trust config keeps the version: a key rotation never
//!    reopens old versions. Only removing the file resets it.
//! 2. **Names compose.** The policy set of record is the latest bundle
//!    applied of each name ([`AppliedBundles::compose`]): applying bundle
//!    `web` keeps the documents of bundle `prod`. Every held bundle is
//!    verified again (k of n, digests) each time the set is composed.
//! 3. **Redelivery.** The fleet delivers again what the bus holds (after a
//!    restart or a partition). When the caller allows it (`again`), a bundle
//!    identical to its name's bundle of record is accepted, records nothing
//!    new and puts the set of record back in force.
//!
//! ```json
//! {"format": "forgeone-applied v2", "version": 9,
//!  "bundles": {
//!    "prod": {"version": 7, "manifest": "forgeone-manifest v1\n…", "signatures": "ed25519 …\n",
//!             "documents": {"base.yaml": "apiVersion: …"}},
//!    "web": {"version": 9, "manifest": "…", "signatures": "…", "documents": {"…": "…"}}}}
//! ```
//!
//! A missing file means nothing was applied yet. A file that cannot be read
//! or parsed is an error, never an empty state (that would reopen every old
//! version). Updates replace the file atomically (temporary file, fsync,
//! rename).
//!
//! Version 1 files (`{"applied": {"prod": 7}}`: the last version per name,
//! no documents) are read and migrated: the domain's version becomes the
//! highest version they record, and each name is held at its version
//! without documents (a v1 agent kept none, and its set in force was the
//! last bundle alone). Such an entry adds nothing to the set of record until
//! that very name and version is delivered again (rule 3), which fills it
//! in. The file is written as version 2 at the next apply.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{
    bundle::{Bundle, BundleError, Document, VerifiedBundle},
    files::{self, Unusable},
    trust::TrustConfig,
    verify::Refusal,
};

/// The `format` of the state file this module writes.
pub const FORMAT: &str = "forgeone-applied v2";
/// Largest state file read (it holds the documents of the set of record).
const MAX_STATE_BYTES: u64 = 64 << 20;

/// Errors of this module; each names the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: not a bundle state file: {reason} (refusing to treat it as empty, which would accept old versions again)"
    )]
    Malformed { path: PathBuf, reason: String },
    #[error(
        "{path}: cannot record {name:?} version {version}: version {recorded} is already recorded (versions only increase)"
    )]
    NotNewer { path: PathBuf, name: String, version: u64, recorded: u64 },
    #[error("{path}: cannot record {name:?}: document {document:?} is not UTF-8 text")]
    NotText { path: PathBuf, name: String, document: String },
    #[error(
        "bundle {name:?} version {version} of the set of record does not verify any more ({source}); \
         a newer version of {name:?} signed under the current trust config replaces it"
    )]
    Held {
        name: String,
        version: u64,
        #[source]
        source: Box<BundleError>,
    },
}

/// One bundle of the set of record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldBundle {
    pub version: u64,
    /// The signed manifest as verified; none for an entry migrated from a
    /// version 1 file (no documents known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// The signatures file's lines.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub signatures: String,
    /// The documents by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub documents: BTreeMap<String, String>,
}

impl HeldBundle {
    fn of(b: &VerifiedBundle, path: &Path) -> Result<Self, StateError> {
        let text = |bytes: Vec<u8>, document: &str| {
            String::from_utf8(bytes).map_err(|_| StateError::NotText {
                path: path.to_path_buf(),
                name: b.name.clone(),
                document: document.to_string(),
            })
        };
        let mut documents = BTreeMap::new();
        for d in &b.documents {
            documents.insert(d.name.clone(), text(d.bytes.clone(), &d.name)?);
        }
        Ok(Self {
            version: b.version,
            manifest: Some(text(b.manifest.to_bytes(), "MANIFEST")?),
            signatures: text(b.signatures.to_bytes(), "SIGNATURES")?,
            documents,
        })
    }

    /// Whether `b` is this bundle: same version, and the same signed
    /// manifest when it is known.
    fn is(&self, b: &VerifiedBundle) -> bool {
        self.version == b.version
            && self.manifest.as_deref().is_none_or(|m| m.as_bytes() == b.manifest.to_bytes().as_slice())
    }
}

/// What the rule says about applying a verified bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Newer than every version of the trust domain: apply, then record.
    Newer,
    /// The bundle of record of its name, delivered again: apply the set of
    /// record; nothing new is recorded.
    OfRecord,
}

/// The trust domain's version and the policy set of record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppliedBundles {
    /// The highest version applied, whatever the bundle's name.
    pub version: u64,
    /// The latest bundle applied of each name.
    pub bundles: BTreeMap<String, HeldBundle>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV2 {
    format: String,
    version: u64,
    bundles: BTreeMap<String, HeldBundle>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV1 {
    applied: BTreeMap<String, u64>,
}

impl AppliedBundles {
    /// Reads the state file (a version 1 file is migrated); a missing file
    /// is an empty state.
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let malformed = |reason: String| StateError::Malformed { path: path.to_path_buf(), reason };
        let bytes = match files::read_state(path, MAX_STATE_BYTES) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(Self::default()),
            Err(Unusable::Not(reason)) => return Err(malformed(reason)),
            Err(Unusable::Io(source)) => return Err(StateError::Io { path: path.to_path_buf(), source }),
        };
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| malformed(e.to_string()))?;
        let state = if value.get("format").is_some() {
            let f: FileV2 = serde_json::from_value(value).map_err(|e| malformed(e.to_string()))?;
            if f.format != FORMAT {
                return Err(malformed(format!("format {:?}; this agent reads {FORMAT:?}", f.format)));
            }
            Self { version: f.version, bundles: f.bundles }
        } else {
            let f: FileV1 = serde_json::from_value(value).map_err(|e| {
                malformed(format!("{e} (neither {FORMAT:?} nor a version 1 file of last versions by name)"))
            })?;
            Self::from_v1(f.applied)
        };
        if let Some((name, h)) = state.bundles.iter().find(|(_, h)| h.version > state.version) {
            return Err(malformed(format!(
                "bundle {name:?} is held at version {}, above the recorded version {}",
                h.version, state.version
            )));
        }
        Ok(state)
    }

    /// A version 1 state: the last version of each name, no documents.
    fn from_v1(applied: BTreeMap<String, u64>) -> Self {
        let version = applied.values().copied().max().unwrap_or(0);
        let bundles = applied
            .into_iter()
            .map(|(name, version)| {
                let held = HeldBundle {
                    version,
                    manifest: None,
                    signatures: String::new(),
                    documents: BTreeMap::new(),
                };
                (name, held)
            })
            .collect();
        Self { version, bundles }
    }

    /// The name of the bundle of record that holds the domain's version.
    pub fn newest(&self) -> Option<&str> {
        self.bundles.iter().find(|(_, h)| h.version == self.version).map(|(n, _)| n.as_str())
    }

    /// The version rule (rules 1 and 3 of the module doc) for a bundle whose
    /// signatures and digests were verified. `again`: a redelivery of the
    /// bundle of record of its name is accepted.
    pub fn admit(&self, b: &VerifiedBundle, again: bool) -> Result<Admission, BundleError> {
        if b.version > self.version {
            return Ok(Admission::Newer);
        }
        if again && self.bundles.get(&b.name).is_some_and(|h| h.is(b)) {
            return Ok(Admission::OfRecord);
        }
        Err(BundleError::Refused {
            path: b.path.clone(),
            source: Box::new(Refusal::Replay {
                name: b.name.clone(),
                version: b.version,
                last_applied: self.version,
                newest: self.newest().map(String::from),
            }),
        })
    }

    /// The policy set of record once `new` is applied (rule 2): the held
    /// bundle of every other name, each verified again against `trust`, and
    /// `new`; in name order. Entries migrated without documents add none.
    /// `path` is the state file (named in errors).
    pub fn compose(
        &self,
        path: &Path,
        trust: &TrustConfig,
        new: &VerifiedBundle,
    ) -> Result<Vec<VerifiedBundle>, StateError> {
        let mut set = self.held(path, trust, Some(&new.name))?;
        set.push(new.clone());
        set.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(set)
    }

    /// The policy set of record as it stands: every held bundle, each
    /// verified again against `trust`, in name order (what a restarted agent
    /// resumes in strict mode). `path` is the state file.
    pub fn set_of_record(&self, path: &Path, trust: &TrustConfig) -> Result<Vec<VerifiedBundle>, StateError> {
        self.held(path, trust, None)
    }

    /// The held bundles but `skip`'s, verified again (name order).
    fn held(
        &self,
        path: &Path,
        trust: &TrustConfig,
        skip: Option<&str>,
    ) -> Result<Vec<VerifiedBundle>, StateError> {
        let mut set = Vec::with_capacity(self.bundles.len() + 1);
        for (name, h) in &self.bundles {
            let Some(manifest) = h.manifest.as_deref().filter(|_| Some(name.as_str()) != skip) else {
                continue;
            };
            let documents = h
                .documents
                .iter()
                .map(|(n, text)| Document { name: n.clone(), bytes: text.clone().into_bytes() })
                .collect();
            let held = Bundle::from_parts(path, manifest.as_bytes(), h.signatures.as_bytes(), documents)
                .and_then(|b| b.verify(trust, None))
                .map_err(|source| StateError::Held {
                    name: name.clone(),
                    version: h.version,
                    source: Box::new(source),
                })?;
            if held.name != *name || held.version != h.version {
                return Err(StateError::Malformed {
                    path: path.to_path_buf(),
                    reason: format!(
                        "bundle {name:?} version {} holds the manifest of {:?} version {}",
                        h.version, held.name, held.version
                    ),
                });
            }
            set.push(held);
        }
        Ok(set)
    }

    /// Records `b` as the bundle of record of its name (and its version as
    /// the domain's, when newer) and saves the file atomically. Refuses what
    /// [`Self::admit`] would refuse; recording the bundle of record again
    /// changes nothing.
    pub fn record(&mut self, path: &Path, b: &VerifiedBundle) -> Result<(), StateError> {
        let held = self.bundles.get(&b.name);
        if held.is_some_and(|h| h.manifest.is_some() && h.is(b)) {
            return Ok(());
        }
        if b.version <= self.version && !held.is_some_and(|h| h.is(b)) {
            return Err(StateError::NotNewer {
                path: path.to_path_buf(),
                name: b.name.clone(),
                version: b.version,
                recorded: self.version,
            });
        }
        let entry = HeldBundle::of(b, path)?;
        self.version = self.version.max(b.version);
        self.bundles.insert(b.name.clone(), entry);
        self.save(path)
    }

    fn save(&self, path: &Path) -> Result<(), StateError> {
        let file =
            FileV2 { format: FORMAT.to_string(), version: self.version, bundles: self.bundles.clone() };
        let mut bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| StateError::Malformed { path: path.to_path_buf(), reason: e.to_string() })?;
        bytes.push(b'\n');
        files::write_atomic(path, &bytes, 0o644)
            .map_err(|source| StateError::Io { path: path.to_path_buf(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::{keys::SigningKey, trust::TrustedKey};

    struct Fixture {
        dir: tempfile::TempDir,
        key: SigningKey,
        trust: TrustConfig,
        made: std::cell::Cell<u32>,
    }

    impl Fixture {
        fn new() -> Self {
            let key = SigningKey::generate().unwrap();
            let trust =
                TrustConfig::new(1, vec![TrustedKey { key: key.public_key(), label: "ops".into() }], "t")
                    .unwrap();
            Self { dir: tempfile::tempdir().unwrap(), key, trust, made: std::cell::Cell::new(0) }
        }

        fn state(&self) -> PathBuf {
            self.dir.path().join("applied.json")
        }

        /// A verified bundle `name` at `version` with one document `<name>.yaml`.
        fn bundle(&self, name: &str, version: u64, text: &str) -> VerifiedBundle {
            self.made.set(self.made.get() + 1);
            let dir = self.dir.path().join(format!("{name}-{version}-{}", self.made.get()));
            let docs = vec![Document { name: format!("{name}.yaml"), bytes: text.as_bytes().to_vec() }];
            Bundle::create(&dir, name, version, docs).unwrap();
            Bundle::sign(&dir, &self.key).unwrap();
            Bundle::load(&dir).unwrap().verify(&self.trust, None).unwrap()
        }
    }

    fn replay(r: Result<Admission, BundleError>) -> Refusal {
        match r {
            Err(BundleError::Refused { source, .. }) => *source,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn missing_is_empty_and_records_round_trip() {
        let f = Fixture::new();
        let p = f.state();
        let mut s = AppliedBundles::load(&p).unwrap();
        assert_eq!((s.version, s.newest()), (0, None));
        let prod = f.bundle("prod", 3, "a");
        assert_eq!(s.admit(&prod, false).unwrap(), Admission::Newer);
        s.record(&p, &prod).unwrap();
        let back = AppliedBundles::load(&p).unwrap();
        assert_eq!(back, s);
        assert_eq!((back.version, back.newest()), (3, Some("prod")));
        let text: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(text["format"], FORMAT);
        assert_eq!(text["bundles"]["prod"]["documents"]["prod.yaml"], "a");
    }

    #[test]
    fn an_older_version_is_refused_whatever_its_name() {
        let f = Fixture::new();
        let p = f.state();
        let mut s = AppliedBundles::default();
        s.record(&p, &f.bundle("prod", 3, "a")).unwrap();
        s.record(&p, &f.bundle("web", 5, "b")).unwrap();
        for (name, version) in [("rollback", 4), ("prod", 4), ("web", 5), ("new", 1)] {
            let r = replay(s.admit(&f.bundle(name, version, "c"), false));
            assert_eq!(
                r,
                Refusal::Replay { name: name.into(), version, last_applied: 5, newest: Some("web".into()) }
            );
            let msg = r.to_string();
            assert!(
                msg.contains(&format!(
                    "{name:?} version {version} is not newer than the last applied version 5 (bundle \"web\";"
                )),
                "{msg}"
            );
        }
        assert_eq!(s.admit(&f.bundle("prod", 6, "d"), false).unwrap(), Admission::Newer);
        // The state refuses to record what the rule refuses, too.
        assert!(matches!(
            s.record(&p, &f.bundle("rollback", 4, "c")),
            Err(StateError::NotNewer { recorded: 5, .. })
        ));
    }

    #[test]
    fn names_compose_and_a_newer_bundle_replaces_only_its_name() {
        let f = Fixture::new();
        let p = f.state();
        let mut s = AppliedBundles::default();
        let prod = f.bundle("prod", 1, "prod v1");
        let set = s.compose(&p, &f.trust, &prod).unwrap();
        assert_eq!(set.iter().map(|b| (b.name.as_str(), b.version)).collect::<Vec<_>>(), [("prod", 1)]);
        s.record(&p, &prod).unwrap();
        let web = f.bundle("web", 2, "web v2");
        s.record(&p, &web).unwrap();
        let prod3 = f.bundle("prod", 3, "prod v3");
        let set = s.compose(&p, &f.trust, &prod3).unwrap();
        assert_eq!(
            set.iter().map(|b| (b.name.as_str(), b.version)).collect::<Vec<_>>(),
            [("prod", 3), ("web", 2)]
        );
        assert_eq!(set[0].documents[0].text().unwrap(), "prod v3");
        assert_eq!(set[1].documents[0].text().unwrap(), "web v2");
    }

    #[test]
    fn the_bundle_of_record_is_accepted_again_only_when_redelivered() {
        let f = Fixture::new();
        let p = f.state();
        let mut s = AppliedBundles::default();
        let prod = f.bundle("prod", 3, "a");
        s.record(&p, &prod).unwrap();
        s.record(&p, &f.bundle("web", 4, "b")).unwrap();
        assert_eq!(s.admit(&prod, true).unwrap(), Admission::OfRecord);
        assert!(matches!(replay(s.admit(&prod, false)), Refusal::Replay { last_applied: 4, .. }));
        // Same name and version, other content: not the bundle of record.
        let forged = f.bundle("prod", 3, "other");
        assert!(matches!(replay(s.admit(&forged, true)), Refusal::Replay { version: 3, .. }));
        // Recording the bundle of record again changes nothing.
        let before = std::fs::read(&p).unwrap();
        s.record(&p, &prod).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), before);
    }

    #[test]
    fn a_held_bundle_is_verified_again_when_composing() {
        let f = Fixture::new();
        let p = f.state();
        let mut s = AppliedBundles::default();
        s.record(&p, &f.bundle("prod", 1, "a")).unwrap();
        // A document of the set of record changed in the file.
        let mut text = std::fs::read_to_string(&p).unwrap();
        text = text.replace("\"prod.yaml\": \"a\"", "\"prod.yaml\": \"b\"");
        std::fs::write(&p, text).unwrap();
        let s = AppliedBundles::load(&p).unwrap();
        let e = s.compose(&p, &f.trust, &f.bundle("web", 2, "w")).unwrap_err();
        assert!(matches!(&e, StateError::Held { name, version: 1, .. } if name == "prod"), "{e}");
        assert!(e.to_string().contains("modified after signing"), "{e}");
        // Under another trust config (the key rotated out) it does not verify either...
        let other = Fixture::new();
        let e = s.compose(&p, &other.trust, &f.bundle("web", 2, "w")).unwrap_err();
        assert!(e.to_string().contains("1 required"), "{e}");
        // ...but a newer bundle of the same name replaces it without it.
        let set = s.compose(&p, &f.trust, &f.bundle("prod", 2, "c")).unwrap();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn a_version_1_file_is_migrated() {
        let f = Fixture::new();
        let p = f.state();
        std::fs::write(&p, r#"{"applied": {"prod": 7, "web": 3}}"#).unwrap();
        let mut s = AppliedBundles::load(&p).unwrap();
        assert_eq!((s.version, s.newest()), (7, Some("prod")));
        // Every version up to the highest is refused, under any name.
        let r = replay(s.admit(&f.bundle("web", 5, "w"), false));
        assert!(matches!(r, Refusal::Replay { last_applied: 7, .. }), "{r}");
        // Migrated entries hold no documents: they add nothing to the set.
        let set = s.compose(&p, &f.trust, &f.bundle("new", 8, "n")).unwrap();
        assert_eq!(set.len(), 1);
        // The very bundle recorded, delivered again, fills its entry in.
        let prod = f.bundle("prod", 7, "p");
        assert_eq!(s.admit(&prod, true).unwrap(), Admission::OfRecord);
        s.record(&p, &prod).unwrap();
        let text: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!((text["format"].as_str(), text["version"].as_u64()), (Some(FORMAT), Some(7)));
        assert_eq!(text["bundles"]["prod"]["documents"]["prod.yaml"], "p");
        assert_eq!(text["bundles"]["web"], serde_json::json!({"version": 3}));
        let set = AppliedBundles::load(&p).unwrap().compose(&p, &f.trust, &f.bundle("new", 8, "n")).unwrap();
        assert_eq!(set.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(), ["new", "prod"]);
    }

    #[test]
    fn a_corrupt_state_is_an_error_not_empty() {
        let f = Fixture::new();
        let p = f.state();
        for (text, needle) in [
            ("{not json", "key must be a string"),
            ("", "EOF"),
            (r#"{"format": "forgeone-applied v9", "version": 1, "bundles": {}}"#, "this agent reads"),
            (r#"{"format": "forgeone-applied v2", "version": 1}"#, "missing field `bundles`"),
            (r#"{"applied": {"prod": "7"}}"#, "version 1 file"),
            (r#"{"something": 1}"#, "unknown field"),
            (r#"{"format": "forgeone-applied v2", "version": 1, "bundles": {"a": {"version": 2}}}"#, "above"),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = AppliedBundles::load(&p).unwrap_err();
            assert!(matches!(e, StateError::Malformed { .. }), "{text}: {e}");
            let msg = e.to_string();
            assert!(msg.contains(&p.display().to_string()) && msg.contains(needle), "{text}: {msg}");
        }
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &p).unwrap();
        assert!(matches!(AppliedBundles::load(&p), Err(StateError::Malformed { .. })));
    }
}
