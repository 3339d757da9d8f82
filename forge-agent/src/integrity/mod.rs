//! The agent's own integrity, for `forge doctor`: the pinned state is
//! complete, every pinned program is the embedded object's program (same
//! kernel tag as a fresh load of it on this kernel), every execution trace
//! verifies against the agent key, the clocks are sane, and the policy
//! generation in force came from a verified signed bundle ([`policy`]).

pub mod policy;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{
    dna::{self, TraceStore, VerifyOptions},
    ebpf::{Pins, loader},
    sign::PublicKey,
};

#[derive(Clone, Debug, Serialize)]
pub struct ProgramCheck {
    pub name: &'static str,
    pub pinned_tag: String,
    /// The tag of the embedded program loaded on this kernel (none: it does
    /// not load here, so it cannot be compared).
    pub expected_tag: Option<String>,
    pub matches: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct TraceCheck {
    pub workload_id: String,
    pub ok: bool,
    pub records: u64,
    pub problem: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ClockCheck {
    pub wall_unix_s: u64,
    pub monotonic_s: u64,
    pub boottime_s: u64,
    pub ok: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Integrity {
    pub pin_root: PathBuf,
    /// Pinned state exists here (an agent loaded it).
    pub pinned: bool,
    pub missing_maps: Vec<String>,
    pub programs: Vec<ProgramCheck>,
    /// Every link the pinned state should hold, and whether it is there and attached.
    pub links: Vec<crate::ebpf::links::LinkState>,
    pub data_dir: PathBuf,
    /// The key traces were checked against (none: each checkpoint's own key).
    pub trace_key: Option<String>,
    pub traces: Vec<TraceCheck>,
    pub clock: ClockCheck,
    /// The policy in force (none: not checked).
    pub policy: Option<policy::PolicyCheck>,
    /// Everything wrong, one line each; empty when healthy.
    pub problems: Vec<String>,
    /// Worth knowing, not unhealthy.
    pub warnings: Vec<String>,
}

impl Integrity {
    /// Adds the check of the policy in force (its problem or warning too).
    pub fn with_policy(mut self, check: policy::PolicyCheck) -> Self {
        self.problems.extend(check.problem.clone());
        self.warnings.extend(check.warning.clone());
        self.policy = Some(check);
        self
    }
}

/// No wall clock before this (2025-01-01) is plausible for a running agent.
const WALL_FLOOR_S: u64 = 1_735_689_600;

fn clock_s(id: nix::time::ClockId) -> u64 {
    nix::time::clock_gettime(id).map_or(0, |t| u64::try_from(t.tv_sec()).unwrap_or(0))
}

/// Checks the pinned state under `pin_root` against `expected` program tags
/// (from [`loader::probe_with_tags`]) and the traces under `data_dir`
/// against `key` (default: `<data_dir>/agent.pub` when it exists).
pub fn check(
    pin_root: &Path,
    expected: &[(&'static str, u64)],
    data_dir: &Path,
    key: Option<PublicKey>,
) -> Integrity {
    let mut problems = Vec::new();
    let pins = Pins::new(pin_root);
    let pinned = pin_root.exists();
    let mut missing_maps = Vec::new();
    let mut programs = Vec::new();
    let mut links = Vec::new();
    if pinned {
        links = loader::link_states(&pins);
        for l in links.iter().filter(|l| !l.ok()) {
            problems.push(format!(
                "link {} ({}): {}; the hook it attaches does not run (a running agent pins it again; \
                 an agent that starts attaches it again)",
                l.name,
                l.pin.display(),
                l.problem.as_deref().unwrap_or("?")
            ));
        }
        for name in forge_common::map_name::ALL {
            if !pins.map(name).exists() {
                missing_maps.push(name.to_string());
                problems.push(format!("pinned map {name} is missing under {}", pin_root.display()));
            }
        }
        for (name, tag) in loader::pinned_tags(&pins) {
            let Some(tag) = tag else { continue };
            let want = expected.iter().find(|(n, _)| *n == name).map(|(_, t)| *t);
            let matches = want == Some(tag);
            if let Some(w) = want
                && w != tag
            {
                problems.push(format!(
                    "pinned program {name} has tag {tag:016x}, the embedded one loads as {w:016x}: not this agent's program"
                ));
            }
            programs.push(ProgramCheck {
                name,
                pinned_tag: format!("{tag:016x}"),
                expected_tag: want.map(|w| format!("{w:016x}")),
                matches,
            });
        }
        if programs.is_empty() {
            problems.push(format!("no pinned programs under {}", pin_root.display()));
        }
    }

    let key = key.or_else(|| PublicKey::load(&data_dir.join("agent.pub")).ok());
    let store = TraceStore::new(data_dir);
    let mut traces = Vec::new();
    match store.list() {
        Ok(ids) => {
            for id in ids {
                let check = match store.path(&id).map_err(|e| e.to_string()).and_then(|p| {
                    dna::verify_file(&p, &VerifyOptions { trusted_key: key }).map_err(|e| e.to_string())
                }) {
                    Ok(r) => TraceCheck {
                        workload_id: id,
                        ok: r.ok,
                        records: r.records,
                        problem: r.problem.map(|p| p.to_string()),
                    },
                    Err(e) => TraceCheck { workload_id: id, ok: false, records: 0, problem: Some(e) },
                };
                if let Some(p) = &check.problem {
                    problems.push(format!("trace {}: {p}", check.workload_id));
                }
                traces.push(check);
            }
        }
        Err(e) => problems.push(format!("listing traces: {e}")),
    }

    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let monotonic = clock_s(nix::time::ClockId::CLOCK_MONOTONIC);
    let boottime = clock_s(nix::time::ClockId::CLOCK_BOOTTIME);
    let clock_ok = wall >= WALL_FLOOR_S && boottime >= monotonic && monotonic > 0;
    if !clock_ok {
        problems.push(format!(
            "clocks look wrong: wall {wall} s since 1970, monotonic {monotonic} s, boottime {boottime} s"
        ));
    }
    Integrity {
        pin_root: pin_root.to_path_buf(),
        pinned,
        missing_maps,
        programs,
        links,
        data_dir: data_dir.to_path_buf(),
        trace_key: key.map(|k| k.id().to_string()),
        traces,
        clock: ClockCheck { wall_unix_s: wall, monotonic_s: monotonic, boottime_s: boottime, ok: clock_ok },
        policy: None,
        problems,
        warnings: Vec::new(),
    }
}
