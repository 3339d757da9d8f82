//! Governed workloads across the life of their cgroups.
//!
//! A workload the operator named by path (`--govern`, `forge govern`) keeps
//! its identity when its cgroup is removed and made again at the same path
//! (a service restart, a container restart): the kernel reports the
//! `mkdir` (`tp_btf/cgroup_mkdir`) and the agent governs the new cgroup, in
//! the same loop turn, with the policy, tier and quarantine of the old one;
//! its trace goes on, with a record naming the old and the new id. Until
//! then the workload waits ([`Daemon::waiting`]).
//!
//! A selector `DIR/*` governs the cgroups directly below `DIR`: those there
//! when it is given, and each one made later, as soon as the kernel reports
//! it. Their own subtrees are governed with them. A selector's cgroup that
//! is removed ends (a new one at the same path is a new match).
//!
//! Capsule runs' cgroups end with the run.
//!
//! The timer checks the same things (a path gone, a path made again, a
//! selector's directory) in case a kernel event was lost to a full ring.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Daemon, Governed, kernel};
use crate::{
    api::{ApiError, ErrorCode},
    cgroup::{Cgroup, CgroupError, cgroup2_mount},
    dna::Record,
    events::{DecisionEvent, Hook, Target},
    telemetry::spans,
    trust::quarantine,
};

/// How the agent came to govern a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Named by path: governed again when its path is made again.
    Path,
    /// Matched a `DIR/*` selector: governed while its cgroup exists.
    Selector,
    /// A capsule run's cgroup: ends with the run.
    Capsule,
}

/// How the agent learnt that a cgroup was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Found {
    /// The kernel's `cgroup_mkdir` event: in the agent's next loop turn.
    KernelEvent,
    /// The timer's look (a lost event, or made while no agent ran).
    Timer,
    /// At start, from the state file.
    Restart,
}

/// A `DIR/*` selector: the cgroups directly below `dir`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selector {
    /// As given (relative to the cgroup v2 mount), e.g. `kubepods/*`.
    pub pattern: String,
    /// The directory whose children it matches (absolute).
    pub dir: PathBuf,
}

impl Selector {
    /// `spec` as a selector, if it is one (`DIR/*`).
    pub fn parse(spec: &str) -> Result<Option<Self>, CgroupError> {
        let Some(dir) = spec.strip_suffix("/*") else { return Ok(None) };
        if dir.contains('*') {
            return Ok(None);
        }
        let mount = cgroup2_mount()?;
        let p = Path::new(dir);
        let dir = if p.is_absolute() && p.starts_with(&mount) {
            p.to_path_buf()
        } else {
            mount.join(dir.trim_start_matches('/'))
        };
        if !dir.starts_with(&mount) {
            return Err(CgroupError::Outside { path: dir, mount });
        }
        Ok(Some(Self { pattern: spec.to_string(), dir }))
    }

    /// Whether the cgroup at `path` is directly below the selector's directory.
    pub fn matches(&self, path: &Path) -> bool {
        path.parent() == Some(self.dir.as_path())
    }
}

impl Daemon {
    /// Governs what `spec` names: one cgroup (made if missing), or, for
    /// `DIR/*`, every cgroup directly below `DIR` now and later.
    pub fn govern(&mut self, spec: &str) -> Result<serde_json::Value, ApiError> {
        let not_found = |e: CgroupError| ApiError::new(ErrorCode::NotFound, e.to_string());
        if let Some(sel) = Selector::parse(spec).map_err(not_found)? {
            if !sel.dir.is_dir() {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!("{}: no such cgroup directory for the selector {spec}", sel.dir.display()),
                ));
            }
            let mut out = Vec::new();
            if !self.selectors.iter().any(|s| s.dir == sel.dir) {
                self.selectors.push(sel.clone());
            }
            for child in children(&sel.dir) {
                if self.governed.values().any(|g| g.cgroup.path == child) {
                    continue;
                }
                let cgroup = Cgroup::open(&child).map_err(not_found)?;
                let workload = super::workload_of(&cgroup);
                out.push(self.govern_as(cgroup, workload, Origin::Selector)?);
            }
            self.dirty = true;
            tracing::info!(
                selector = spec,
                governed = out.len(),
                "selector: governing the cgroups below {} as they appear",
                sel.dir.display()
            );
            return Ok(json!({"selector": spec, "dir": sel.dir, "governed": out}));
        }
        let cgroup = Cgroup::resolve(spec).or_else(|_| Cgroup::create(spec)).map_err(not_found)?;
        if let Some(g) = self.governed.get(&cgroup.id) {
            return Ok(
                json!({"cgroup": g.cgroup.path, "id": g.cgroup.id, "policies": g.compiled.policy_name, "tier": g.compiled.tier, "generation": g.generation, "already": true}),
            );
        }
        let workload = super::workload_of(&cgroup);
        self.govern_as(cgroup, workload, Origin::Path)
    }

    /// A cgroup lifecycle event from the kernel.
    pub(super) fn on_cgroup_event(&mut self, ev: &DecisionEvent) {
        let Target::Cgroup { id, .. } = &ev.target else { return };
        match ev.hook {
            Hook::CgroupMkdir => {
                // Its path as the kernel has it now (the event's may be cut).
                if let Ok(cgroup) = Cgroup::open_by_id(*id) {
                    self.cgroup_made(cgroup, Found::KernelEvent);
                }
            }
            Hook::CgroupRmdir if self.governed.contains_key(id) => self.cgroup_gone(*id, "cgroup removed"),
            _ => {}
        }
    }

    /// A cgroup appeared: a waiting workload's path made again, or a
    /// selector's new match.
    pub(super) fn cgroup_made(&mut self, cgroup: Cgroup, found: Found) {
        if self.governed.contains_key(&cgroup.id) {
            return;
        }
        if let Some(w) = self.waiting.remove(&cgroup.path) {
            self.regovern(w, cgroup, found);
        } else if self.selectors.iter().any(|s| s.matches(&cgroup.path)) {
            let workload = super::workload_of(&cgroup);
            let path = cgroup.path.clone();
            if let Err(e) = self.govern_as(cgroup, workload, Origin::Selector) {
                tracing::error!(cgroup = %path.display(), error = %e.message, "governing a selector's new cgroup failed");
            }
        }
    }

    /// The cgroup of governed workload `id` is gone: its kernel record is
    /// dropped; a workload named by path waits for the path to come back,
    /// others end.
    pub(super) fn cgroup_gone(&mut self, id: u64, why: &str) {
        let _ = self.agent.writer.ungovern(id);
        let Some(g) = self.governed.get(&id) else { return };
        self.dirty = true;
        if g.origin == Origin::Path {
            let g = self.governed.remove(&id).expect("present");
            tracing::info!(cgroup = %g.cgroup.path.display(), cgroup_id = id, "governed cgroup removed; it is governed again if its path is made again");
            self.audit.push(json!({"action": "cgroup_removed", "cgroup": g.cgroup.path, "cgroup_id": id, "waiting": true}));
            self.waiting.insert(g.cgroup.path.clone(), g);
            return;
        }
        self.end_run(id, spans::RunEnd::CgroupRemoved);
        self.governed.remove(&id);
        self.scorer.reset(id);
        tracing::info!(cgroup_id = id, "governed cgroup removed; its trace is closed");
        self.end_trace(id, why);
    }

    /// Governs `cgroup`, the path of waiting workload `w` made again, as `w`
    /// was: same policy, tier, quarantine; the trace goes on.
    fn regovern(&mut self, mut w: Governed, cgroup: Cgroup, found: Found) {
        let old = w.cgroup.id;
        let compiled = match self.set.compile_for(&w.workload, w.compiled.tier, 1) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(cgroup = %cgroup.path.display(), error = %e.0, "the re-created cgroup's policy does not compile; it waits");
                self.waiting.insert(w.cgroup.path.clone(), w);
                return;
            }
        };
        let generation = match self.agent.writer.govern(&cgroup, &compiled) {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(cgroup = %cgroup.path.display(), error = %e, "governing the re-created cgroup failed; it waits");
                self.waiting.insert(w.cgroup.path.clone(), w);
                return;
            }
        };
        if w.frozen
            && let Err(e) = quarantine::freeze(&cgroup, std::time::Duration::from_secs(2))
        {
            tracing::error!(cgroup = %cgroup.path.display(), error = %e, "freezing the re-created cgroup of a quarantined workload");
        }
        w.previous_ids.push(old);
        w.cgroup = cgroup;
        w.compiled = compiled;
        w.generation = generation;
        let new = w.cgroup.id;
        self.trust.track(new, w.compiled.tier);
        self.scorer.rekey(old, new);
        if let Some(t) = &mut self.traces {
            t.rekey(old, new);
        }
        let mut record = self.governed_record(&w, false);
        record.cgroup_id = Some(new);
        record.previous_cgroup_id = Some(old);
        self.trace(new, Record::Governed(record));
        tracing::warn!(cgroup = %w.cgroup.path.display(), old_id = old, new_id = new, tier = %w.compiled.tier, "governed cgroup made again: governed as before");
        self.audit.push(json!({"action": "cgroup_recreated", "cgroup": w.cgroup.path, "old_id": old, "cgroup_id": new, "tier": w.compiled.tier, "generation": generation, "frozen": w.frozen, "found_by": found}));
        self.governed.insert(new, w);
        self.dirty = true;
    }

    /// The timer's look at cgroups (in case a kernel event was lost): a
    /// governed path gone or made again under another id, a waiting path
    /// back, a selector's new child.
    pub(super) fn check_cgroups(&mut self) {
        // Gone means gone by id (a mount over a path changes nothing).
        let changed: Vec<u64> = self
            .governed
            .values()
            .filter(|g| matches!(Cgroup::open_by_id(g.cgroup.id), Err(CgroupError::NoSuchId { .. })))
            .map(|g| g.cgroup.id)
            .collect();
        for id in changed {
            self.cgroup_gone(id, "cgroup removed");
        }
        let back: Vec<Cgroup> = self.waiting.keys().filter_map(|p| Cgroup::open(p).ok()).collect();
        for cgroup in back {
            self.cgroup_made(cgroup, Found::Timer);
        }
        let new: Vec<PathBuf> = self
            .selectors
            .iter()
            .flat_map(|s| children(&s.dir))
            .filter(|p| !self.governed.values().any(|g| &g.cgroup.path == p))
            .collect();
        for path in new {
            if let Ok(cgroup) = Cgroup::open(&path) {
                self.cgroup_made(cgroup, Found::Timer);
            }
        }
    }

    /// Stops governing `spec`: a governed cgroup, a waiting path, or a selector.
    pub(super) fn ungovern(&mut self, spec: &str) -> Result<serde_json::Value, ApiError> {
        let not_found = |e: CgroupError| ApiError::new(ErrorCode::NotFound, e.to_string());
        if let Some(sel) = Selector::parse(spec).map_err(not_found)? {
            let before = self.selectors.len();
            self.selectors.retain(|s| s.dir != sel.dir);
            if self.selectors.len() == before {
                return Err(ApiError::new(ErrorCode::NotFound, format!("no selector {spec}")));
            }
            self.dirty = true;
            // Its cgroups stay governed until ungoverned one by one.
            return Ok(json!({"selector": spec, "governed": false}));
        }
        let mount = cgroup2_mount().map_err(not_found)?;
        let path = mount.join(spec.trim_start_matches('/'));
        if self.waiting.remove(&path).is_some() {
            self.dirty = true;
            return Ok(json!({"cgroup": path, "governed": false, "was": "waiting for its cgroup"}));
        }
        let cg = Cgroup::resolve(spec).map_err(not_found)?;
        if !self.governed.contains_key(&cg.id) {
            return Err(ApiError::new(ErrorCode::NotFound, format!("{} is not governed", cg.path.display())));
        }
        self.agent.writer.ungovern(cg.id).map_err(kernel)?;
        self.end_run(cg.id, spans::RunEnd::Ungoverned);
        self.governed.remove(&cg.id);
        self.scorer.reset(cg.id);
        self.end_trace(cg.id, "no longer governed (ungovern)");
        self.dirty = true;
        Ok(json!({"cgroup": cg.path, "id": cg.id, "governed": false}))
    }
}

/// The cgroup directories directly below `dir`.
fn children(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_match_direct_children_only() {
        let s = Selector { pattern: "kubepods/*".into(), dir: PathBuf::from("/sys/fs/cgroup/kubepods") };
        assert!(s.matches(Path::new("/sys/fs/cgroup/kubepods/pod-a")));
        assert!(!s.matches(Path::new("/sys/fs/cgroup/kubepods/pod-a/ctr")));
        assert!(!s.matches(Path::new("/sys/fs/cgroup/kubepods")));
        assert!(!s.matches(Path::new("/sys/fs/cgroup/other/pod-a")));
    }
}
