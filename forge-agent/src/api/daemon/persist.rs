//! What the agent governs, kept across restarts in `<data-dir>/state.json`.
//!
//! The kernel keeps enforcing while no agent runs (the pins), but the
//! daemon's own view (which workload each cgroup is, its tier, its
//! quarantine, the policy set in force, the selectors, the workloads
//! waiting for their cgroup to be made again) lives in memory. This file
//! holds it, replaced atomically whenever it changes, so that a restarted
//! agent resumes everything: each workload is governed again at its tier,
//! a quarantined one stays quarantined (and frozen), its trace goes on
//! (the trace file is reopened, not forked), and later policy applies and
//! fleet bundles reach it. Scoring resumes with a fresh baseline (the
//! scorer's models are not kept), which the trace records.
//!
//! The policy set at start: the set in force before the restart, unless
//! the `--policy` files changed since that set began from them (then the
//! files, as an operator who edits them and restarts expects). In strict
//! mode a set that came from signed bundles is resumed whatever the files
//! say (files never override a signed set there), and it is composed again
//! from the bundle state, every bundle verified k of n again: the documents
//! in this file are not trusted for it.
//!
//! Format (`version` 1):
//!
//! ```json
//! {"version": 1, "source": "api", "bundle": null, "files_digest": "sha3-256:…",
//!  "documents": [{"name": "…", "text": "…"}],
//!  "workloads": [{"path": "/sys/fs/cgroup/web", "id": 4242, "origin": "path",
//!                 "workload": {"cgroup": "web", "digest": null, "signers": []},
//!                 "tier": "compromised", "before_escalation": "verified",
//!                 "frozen": true, "fleet_hold": false, "previous_ids": [4100]}],
//!  "waiting": [...same fields...], "selectors": ["kubepods/*"]}
//! ```
//!
//! A file that cannot be read or parsed stops the start with an error
//! naming it: starting without what it says would silently drop
//! quarantines.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Daemon, Governed, Origin, Selector, build_set, quarantine_tiers};
use crate::{
    api::protocol::Document,
    cgroup::Cgroup,
    integrity::policy as origin,
    policy::{Tier, Workload},
    sign::files,
};

/// File name in the data directory.
pub const STATE_FILE: &str = "state.json";
const VERSION: u32 = 1;
const MAX_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "{path}: {reason}; move it aside to start without it (workloads are then adopted from the pins, quarantines are lost)"
    )]
    Unusable { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    version: u32,
    source: origin::Source,
    bundle: Option<origin::BundleSource>,
    /// Digest of the start files the set in force began from.
    files_digest: Option<String>,
    documents: Vec<Document>,
    workloads: Vec<Kept>,
    waiting: Vec<Kept>,
    selectors: Vec<String>,
}

/// A governed (or waiting) workload as kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Kept {
    path: PathBuf,
    id: u64,
    origin: Origin,
    workload: KeptWorkload,
    tier: Tier,
    /// The tier before the first trust drop or quarantine (a release goes back to it).
    before_escalation: Option<Tier>,
    frozen: bool,
    fleet_hold: bool,
    previous_ids: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeptWorkload {
    cgroup: Option<String>,
    digest: Option<String>,
    signers: Vec<String>,
}

impl From<&Workload> for KeptWorkload {
    fn from(w: &Workload) -> Self {
        Self { cgroup: w.cgroup.clone(), digest: w.digest.clone(), signers: w.signers.clone() }
    }
}

impl From<KeptWorkload> for Workload {
    fn from(k: KeptWorkload) -> Self {
        Self { cgroup: k.cgroup, exe: None, digest: k.digest, signers: k.signers, any: false }
    }
}

impl Kept {
    fn of(g: &Governed) -> Self {
        Self {
            path: g.cgroup.path.clone(),
            id: g.cgroup.id,
            origin: g.origin,
            workload: (&g.workload).into(),
            tier: g.compiled.tier,
            before_escalation: g.before_escalation.as_ref().map(|c| c.tier),
            frozen: g.frozen,
            fleet_hold: g.fleet_hold,
            previous_ids: g.previous_ids.clone(),
        }
    }
}

/// What a restored workload brings back besides its cgroup and tier.
pub(super) struct Resumed {
    pub frozen: bool,
    pub fleet_hold: bool,
    pub previous_ids: Vec<u64>,
    pub before_escalation: Option<Tier>,
}

fn load(path: &Path) -> Result<Option<State>, StateError> {
    let unusable = |reason: String| StateError::Unusable { path: path.to_path_buf(), reason };
    let bytes = match files::read_state(path, MAX_BYTES) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(None),
        Err(files::Unusable::Io(e)) => return Err(unusable(e.to_string())),
        Err(files::Unusable::Not(why)) => return Err(unusable(why)),
    };
    let state: State =
        serde_json::from_slice(&bytes).map_err(|e| unusable(format!("not a state file: {e}")))?;
    if state.version != VERSION {
        return Err(unusable(format!("state format version {} (this agent reads {VERSION})", state.version)));
    }
    Ok(Some(state))
}

/// The digest of a set of start documents (names and texts).
pub fn files_digest(documents: &[Document]) -> String {
    use sha3::Digest as _;
    let mut h = sha3::Sha3_256::new();
    for d in documents {
        for part in [d.name.as_bytes(), d.text.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
    }
    format!("sha3-256:{}", hex::encode(h.finalize()))
}

impl Daemon {
    /// Writes the state file if something it keeps changed. A failure is
    /// logged and retried at the next change or tick; enforcement never
    /// waits on it.
    pub(super) fn save_state(&mut self) {
        if !self.dirty {
            return;
        }
        let Some(path) = self.state_file.clone() else { return };
        let state = State {
            version: VERSION,
            source: self.origin.0,
            bundle: self.origin.1.clone(),
            files_digest: self.files_digest.clone(),
            documents: self.documents.clone(),
            workloads: self.governed.values().map(Kept::of).collect(),
            waiting: self.waiting.values().map(Kept::of).collect(),
            selectors: self.selectors.iter().map(|s| s.pattern.clone()).collect(),
        };
        let result = serde_json::to_vec_pretty(&state).map_err(std::io::Error::other).and_then(|bytes| {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            files::write_atomic(&path, &bytes, 0o600)
        });
        match result {
            Ok(()) => self.dirty = false,
            Err(e) => tracing::error!(path = %path.display(), error = %e, "writing the state file"),
        }
    }

    /// Resumes what the state file (if any) says the agent governed, and
    /// adopts every cgroup the pinned maps govern that it does not name.
    /// `files`: the documents the agent was started with. Returns what was
    /// resumed, for the log.
    pub fn restore(&mut self, files: &[Document]) -> Result<Value, StateError> {
        let digest = files_digest(files);
        self.files_digest = Some(digest.clone());
        let state = match &self.state_file {
            Some(path) => load(path)?,
            None => None,
        };
        let mut report =
            json!({"state": self.state_file, "resumed": [], "waiting": [], "adopted": [], "ended": []});
        if let Some(state) = state {
            self.resume_set(&state, &digest, &mut report);
            for pattern in &state.selectors {
                match Selector::parse(pattern) {
                    Ok(Some(sel)) => self.selectors.push(sel),
                    _ => tracing::warn!(selector = %pattern, "a kept selector no longer parses; dropped"),
                }
            }
            for kept in state.workloads.into_iter().chain(state.waiting) {
                self.resume(kept, &mut report);
            }
        }
        // Cgroups the pins govern that the state does not name ("pins
        // only"): governed again as named by their path.
        let known: Vec<u64> = self.governed.keys().copied().collect();
        for kc in self.agent.writer.governed_cgroups() {
            if known.contains(&kc.id) {
                continue;
            }
            let cgroup = Cgroup { path: kc.path.clone(), id: kc.id };
            let workload = super::workload_of(&cgroup);
            match self.govern_as(cgroup, workload, Origin::Path) {
                Ok(_) => push(&mut report, "adopted", json!({"cgroup": kc.path, "id": kc.id})),
                Err(e) => {
                    tracing::error!(cgroup = %kc.path.display(), error = %e.message, "adopting a pinned governed cgroup")
                }
            }
        }
        self.check_cgroups();
        self.dirty = true;
        self.save_state();
        Ok(report)
    }

    /// Takes the kept policy set when it is the one to resume (module docs).
    /// In strict mode the set is composed again from the bundle state (each
    /// bundle verified k of n again), never taken from this file.
    fn resume_set(&mut self, state: &State, digest: &str, report: &mut Value) {
        if let Some(signing) = &self.signing
            && state.source == origin::Source::Bundle
        {
            let composed = crate::sign::state::AppliedBundles::load(&signing.state)
                .map_err(|e| e.to_string())
                .and_then(|s| s.set_of_record(&signing.state, &signing.trust).map_err(|e| e.to_string()));
            let documents = composed.and_then(|set| super::documents_of(&set));
            match documents.and_then(|d| build_set(&d).map(|set| (d, set)).map_err(|e| e.message)) {
                Ok((documents, set)) if !documents.is_empty() => {
                    self.set = set;
                    self.documents = documents;
                    self.origin = (state.source, state.bundle.clone());
                    report["policy"] = json!("resumed (bundles of record, verified again)");
                }
                Ok(_) => report["policy"] = json!("files (no bundle of record)"),
                Err(e) => {
                    tracing::error!(error = %e, "the bundles of record do not verify again; starting from the files");
                    report["policy"] = json!(format!("files (the bundles of record did not verify: {e})"));
                }
            }
            return;
        }
        if state.files_digest.as_deref() != Some(digest) {
            tracing::info!("the policy files changed since the last run: starting from them");
            report["policy"] = json!("files (changed since the last run)");
            return;
        }
        match build_set(&state.documents) {
            Ok(set) => {
                self.set = set;
                self.documents = state.documents.clone();
                self.origin = (state.source, state.bundle.clone());
                report["policy"] = json!(format!("resumed ({:?})", state.source).to_lowercase());
            }
            Err(e) => {
                tracing::error!(error = %e.message, "the kept policy set no longer validates; starting from the files");
                report["policy"] = json!("files (the kept set did not validate)");
            }
        }
    }

    /// Resumes one kept workload (see the module docs).
    fn resume(&mut self, kept: Kept, report: &mut Value) {
        let now = Cgroup::open(&kept.path).ok();
        if now.as_ref().is_none_or(|c| c.id != kept.id)
            && self.agent.writer.governed().iter().any(|(id, _)| *id == kept.id)
        {
            // Removed (or made again) while no agent ran: its old entry goes.
            let _ = self.agent.writer.ungovern(kept.id);
        }
        let resumed = Resumed {
            frozen: kept.frozen,
            fleet_hold: kept.fleet_hold,
            previous_ids: kept.previous_ids.clone(),
            before_escalation: kept.before_escalation,
        };
        let workload: Workload = kept.workload.clone().into();
        match (now, kept.origin) {
            (Some(cg), _) if cg.id == kept.id => {
                let id = cg.id;
                match self.govern_at(cg, workload, kept.origin, kept.tier, Some(resumed)) {
                    Ok(_) => push(
                        report,
                        "resumed",
                        json!({"cgroup": kept.path, "id": id, "tier": kept.tier, "frozen": kept.frozen}),
                    ),
                    Err(e) => {
                        tracing::error!(cgroup = %kept.path.display(), error = %e.message, "resuming a governed workload")
                    }
                }
            }
            (now, Origin::Path) => {
                // Gone, or made again while no agent ran: it waits, and is
                // governed as before if its path exists now.
                let compiled = match self.set.compile_for(&workload, kept.tier, 1) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(cgroup = %kept.path.display(), error = %e.0, "a kept workload's policy does not compile; dropped");
                        return;
                    }
                };
                let before_escalation =
                    kept.before_escalation.and_then(|t| self.set.compile_for(&workload, t, 1).ok());
                let w = Governed {
                    cgroup: Cgroup { path: kept.path.clone(), id: kept.id },
                    quarantine_at: quarantine_tiers(&self.set, &workload),
                    workload,
                    compiled,
                    generation: 0,
                    before_escalation,
                    frozen: kept.frozen,
                    fleet_hold: kept.fleet_hold,
                    origin: Origin::Path,
                    previous_ids: kept.previous_ids,
                };
                push(report, "waiting", json!({"cgroup": kept.path, "old_id": kept.id}));
                self.waiting.insert(kept.path.clone(), w);
                if let Some(cg) = now {
                    self.cgroup_made(cg, super::lifecycle::Found::Restart);
                }
            }
            (_, _) => {
                push(report, "ended", json!({"cgroup": kept.path, "id": kept.id, "origin": kept.origin}))
            }
        }
    }
}

fn push(report: &mut Value, key: &str, v: Value) {
    if let Some(a) = report[key].as_array_mut() {
        a.push(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept() -> Kept {
        Kept {
            path: PathBuf::from("/sys/fs/cgroup/web"),
            id: 4242,
            origin: Origin::Path,
            workload: KeptWorkload { cgroup: Some("web".into()), digest: None, signers: vec![] },
            tier: Tier::Compromised,
            before_escalation: Some(Tier::Verified),
            frozen: true,
            fleet_hold: false,
            previous_ids: vec![4100],
        }
    }

    fn state() -> State {
        State {
            version: VERSION,
            source: origin::Source::Api,
            bundle: None,
            files_digest: Some(files_digest(&[])),
            documents: vec![Document { name: "a.yaml".into(), text: "x".into() }],
            workloads: vec![kept()],
            waiting: vec![],
            selectors: vec!["kubepods/*".into()],
        }
    }

    #[test]
    fn state_round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        assert!(load(&path).unwrap().is_none(), "a missing file is nothing kept");
        files::write_atomic(&path, &serde_json::to_vec(&state()).unwrap(), 0o600).unwrap();
        let back = load(&path).unwrap().unwrap();
        assert_eq!(back.workloads, vec![kept()]);
        assert_eq!(back.selectors, vec!["kubepods/*".to_string()]);
        let w: Workload = back.workloads[0].workload.clone().into();
        assert_eq!(w.cgroup.as_deref(), Some("web"));
    }

    #[test]
    fn bad_state_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        for bad in [&b"{"[..], b"[]", b"{\"version\": 1}", br#"{"version":9,"source":"api","bundle":null,"files_digest":null,"documents":[],"workloads":[],"waiting":[],"selectors":[]}"#] {
            std::fs::write(&path, bad).unwrap();
            let e = load(&path).unwrap_err().to_string();
            assert!(e.starts_with(&path.display().to_string()), "{e}");
            assert!(e.contains("move it aside"), "{e}");
        }
        let mut extra = serde_json::to_value(state()).unwrap();
        extra["surprise"] = json!(1);
        std::fs::write(&path, serde_json::to_vec(&extra).unwrap()).unwrap();
        assert!(load(&path).is_err(), "unknown fields are refused, not dropped");
    }

    #[test]
    fn the_files_digest_depends_on_names_and_texts() {
        let a = vec![Document { name: "a".into(), text: "bc".into() }];
        let b = vec![Document { name: "ab".into(), text: "c".into() }];
        assert_ne!(files_digest(&a), files_digest(&b));
        assert_eq!(files_digest(&a), files_digest(&a.clone()));
        assert!(files_digest(&[]).starts_with("sha3-256:"));
    }
}
