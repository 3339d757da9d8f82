//! The single map writer: the only code that updates ForgeOne's maps.
//!
//! Each governed cgroup owns a pair of policy slots. A new record (and its
//! path rules) is written into the slot the cgroup is *not* using, then the
//! cgroup's entry in `CGROUPS` is pointed at it in one map update. The old
//! slot stays intact until the next swap, so a program that read the old slot
//! finishes its decision on a whole, consistent record.
//!
//! A governed cgroup governs its whole subtree (the kernel programs walk to
//! the nearest governed ancestor). So that a cgroup and everything below it
//! are governed from one instant on, a new governed cgroup is published in
//! this order: its record; its level in `CONFIG.levels_rev` (lookups at that
//! level miss until the next step); the sock_addr links, if it has no
//! governed ancestor already holding them (the kernel runs a cgroup's
//! programs for its whole subtree, so links are attached only at the top of
//! each governed subtree); then its `CGROUPS` entry, the flip. Afterwards the
//! processes already in the subtree are recorded in `TASKS` (the fork and
//! attach tracepoints keep it from then on), and links of governed
//! descendants that now sit below it are released. Ungoverning undoes it in
//! the opposite order, attaching links to descendants that become the top
//! of their subtree before releasing its own.
//!
//! The writer holds a descriptor on every link it attached or adopted
//! ([`HeldLink`]); [`MapWriter::repair_links`] pins again any whose pin went
//! missing.

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, RingBuf, lpm_trie::Key},
    programs::links::FdLink,
};
use forge_common::{
    Config, CounterKey, Governor, LAYOUT_VERSION, MAX_GOVERNED_LEVEL, PATH_KEY_PATH_LEN, PathKey, PathRule,
    PolicyRecord, capacity, flags, verdict,
};

use super::{
    links::{HeldLink, LinkState},
    loader::{Handles, chain},
    object::{CGROUP_PROGRAMS, SYS_ENTER},
};
use crate::{
    cgroup::{Cgroup, CgroupError},
    policy::{
        CompiledRecord,
        identity::{self, FileId},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("map {map}: {message}")]
    Map { map: &'static str, message: String },
    #[error("all {0} governed-cgroup places are in use")]
    Full(u32),
    #[error("cgroup {id} is not governed")]
    NotGoverned { id: u64 },
    #[error("attaching {program} to cgroup {path}: {message}")]
    Attach { program: String, path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("path pattern of {len} bytes exceeds the {max}-byte key")]
    PathTooLong { len: usize, max: usize },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(
        "{path} is at cgroup level {level}; the agent governs cgroups down to level {MAX_GOVERNED_LEVEL} \
         (their descendants at any depth are governed with them)"
    )]
    TooDeep { path: PathBuf, level: u32 },
    #[error(
        "{path} contains the agent itself ({agent}): governing it would subject the agent to the policy \
         it enforces; run the agent outside the governed subtree"
    )]
    ContainsAgent { path: PathBuf, agent: PathBuf },
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> WriterError {
    move |e| WriterError::Map { map, message: chain(&e) }
}

#[derive(Clone, Debug)]
struct Governed {
    slot: u32,
    has_syscalls: bool,
    level: u32,
    /// The cgroup directory (how governed cgroups nest).
    path: PathBuf,
}

/// A governed cgroup as the writer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GovernedCgroup {
    pub id: u64,
    pub slot: u32,
    pub level: u32,
    pub path: PathBuf,
    /// Whether it holds the sock_addr links of its subtree (it has no
    /// governed ancestor).
    pub top: bool,
}

/// Owns the maps; see the module docs for the protocols.
pub struct MapWriter {
    h: Handles,
    governed: BTreeMap<u64, Governed>,
    /// sock_addr links of the governed cgroups at the top of their subtree.
    cgroup_links: BTreeMap<u64, Vec<HeldLink>>,
    next_generation: u64,
    observe_net: bool,
    /// Links attached again because their pin was missing (adoption, repair).
    reattached: Vec<String>,
}

impl MapWriter {
    /// Takes over the handles, registers this process as the agent, and
    /// rebuilds its view of governed cgroups from the maps (after adoption):
    /// each one's path (found by its id), its links (held, and attached
    /// again where missing) and the processes below it.
    pub fn new(h: Handles) -> Result<Self, WriterError> {
        crate::cgroup::hold_hierarchy()?;
        let reattached = h.reattached.clone();
        let mut w = Self {
            h,
            governed: BTreeMap::new(),
            cgroup_links: BTreeMap::new(),
            next_generation: 1,
            observe_net: false,
            reattached,
        };
        let entries: Vec<(u64, Governor)> = w.h.maps.cgroups.iter().filter_map(Result::ok).collect();
        for (id, gov) in entries {
            let rec = w.h.maps.policies.get(&gov.slot, 0).map_err(map_err("POLICIES"))?;
            w.next_generation = w.next_generation.max(rec.generation + 1);
            let path = match Cgroup::open_by_id(id) {
                Ok(cg) => cg.path,
                Err(CgroupError::NoSuchId { .. }) => {
                    tracing::warn!(
                        cgroup_id = id,
                        "a governed cgroup was removed while no agent ran; forgetting it"
                    );
                    let _ = w.h.maps.cgroups.remove(&id);
                    let _ = std::fs::remove_dir_all(w.h.pins.cgroup_dir(id));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            w.governed.insert(
                id,
                Governed {
                    slot: gov.slot,
                    has_syscalls: rec.flags & flags::HAS_SYSCALL_RULES != 0,
                    level: gov.level,
                    path,
                },
            );
        }
        w.write_config()?;
        if w.h.active.cgroup {
            let tops: Vec<u64> = w.governed.keys().copied().filter(|id| w.is_top(*id)).collect();
            for id in tops {
                let links = w.hold_cgroup_links(id)?;
                w.cgroup_links.insert(id, links);
            }
        }
        let all: Vec<PathBuf> = w.tops().map(|g| g.path.clone()).collect();
        for path in all {
            w.seed_tasks(&path);
        }
        Ok(w)
    }

    /// Whether records written from now on ask the kernel to report allowed
    /// connects and sends too (the anomaly scorer's view of destinations).
    pub fn set_observe_net(&mut self, on: bool) {
        self.observe_net = on;
    }

    pub fn handles(&self) -> &Handles {
        &self.h
    }

    /// Hands the ring buffer to the event reader (once).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.h.maps.events.take()
    }

    /// Governed cgroup ids with their current slot.
    pub fn governed(&self) -> Vec<(u64, u32)> {
        self.governed.iter().map(|(id, g)| (*id, g.slot)).collect()
    }

    /// The governed cgroups with their level, path and whether each holds
    /// the links of its subtree.
    pub fn governed_cgroups(&self) -> Vec<GovernedCgroup> {
        self.governed
            .iter()
            .map(|(id, g)| GovernedCgroup {
                id: *id,
                slot: g.slot,
                level: g.level,
                path: g.path.clone(),
                top: self.is_top(*id),
            })
            .collect()
    }

    /// The record currently in force for `cgroup_id`.
    pub fn record(&self, cgroup_id: u64) -> Result<PolicyRecord, WriterError> {
        let g = self.governed.get(&cgroup_id).ok_or(WriterError::NotGoverned { id: cgroup_id })?;
        self.h.maps.policies.get(&g.slot, 0).map_err(map_err("POLICIES"))
    }

    /// The governed cgroup whose record decides for a process in the cgroup
    /// at `path`: the deepest governed one at or above it.
    pub fn governing(&self, path: &Path) -> Option<u64> {
        self.governed
            .iter()
            .filter(|(_, g)| path.starts_with(&g.path))
            .max_by_key(|(_, g)| g.level)
            .map(|(id, _)| *id)
    }

    /// Governs `cgroup` with `compiled` (or swaps its policy), returning the
    /// generation written.
    pub fn govern(&mut self, cgroup: &Cgroup, compiled: &CompiledRecord) -> Result<u64, WriterError> {
        let fresh = !self.governed.contains_key(&cgroup.id);
        let level = if fresh { self.check_governable(cgroup)? } else { self.governed[&cgroup.id].level };
        let generation = self.next_generation;
        self.next_generation += 1;
        let mut record = compiled.record;
        record.generation = generation;
        let active = self.h.active;
        if !active.cgroup && active.lsm {
            record.flags |= flags::NET_VIA_LSM;
        }
        if !active.lsm_paths && active.tracepoint {
            record.flags |= flags::EXEC_VIA_TRACEPOINT;
        }
        if self.observe_net {
            record.flags |= flags::OBSERVE_NET;
        }

        let slot = match self.governed.get(&cgroup.id) {
            Some(g) => g.slot ^ 1,
            None => self.free_pair()? * 2,
        };
        self.clear_paths(slot)?;
        for entry in &compiled.paths {
            let key = path_key(slot, entry.op, &entry.pattern)?;
            self.h.maps.paths.insert(&key, entry.kernel_rule(), 0).map_err(map_err("PATHS"))?;
        }
        // Exact-file denies also by the identity of their file (hard links,
        // bind mounts), read now.
        let same_files = identity::inode_entries(&compiled.paths, FileId::of);
        for e in &same_files {
            let key = path_key(slot, e.op, &e.id.key_path())?;
            let rule =
                PathRule { action: e.rule.action, mode: e.rule.mode, _pad: [0; 2], rule_id: e.rule.rule_id };
            self.h.maps.paths.insert(&key, rule, 0).map_err(map_err("PATHS"))?;
        }
        if !same_files.is_empty() {
            record.flags |= flags::INODE_RULES;
        }
        self.h.maps.policies.set(slot, record, 0).map_err(map_err("POLICIES"))?;
        let has_syscalls = record.flags & flags::HAS_SYSCALL_RULES != 0;
        let entry = Governed { slot, has_syscalls, level, path: cgroup.path.clone() };
        if fresh {
            // Known before the flip, so that the new cgroup's level is in
            // CONFIG and whether it is the top of its subtree is decided.
            self.governed.insert(cgroup.id, entry);
            let published = self.publish_new(cgroup);
            if let Err(e) = published {
                self.governed.remove(&cgroup.id);
                let _ = self.write_config();
                return Err(e);
            }
        } else {
            // The flip: from here on the kernel decides with the new record.
            self.h.maps.cgroups.insert(cgroup.id, Governor { slot, level }, 0).map_err(map_err("CGROUPS"))?;
            self.governed.insert(cgroup.id, entry);
        }
        self.sync_sys_enter()?;
        tracing::info!(cgroup = %cgroup.path.display(), cgroup_id = cgroup.id, level, slot, generation, policy = %compiled.policy_name, "governing");
        Ok(generation)
    }

    /// The level of `cgroup` if the agent may govern it.
    fn check_governable(&self, cgroup: &Cgroup) -> Result<u32, WriterError> {
        let level = cgroup.level()?;
        if level > MAX_GOVERNED_LEVEL {
            return Err(WriterError::TooDeep { path: cgroup.path.clone(), level });
        }
        if let Ok(me) = Cgroup::current()
            && cgroup.contains(&me.path)
        {
            return Err(WriterError::ContainsAgent { path: cgroup.path.clone(), agent: me.path });
        }
        Ok(level)
    }

    /// Publishes a cgroup whose record is written and which is already in
    /// `self.governed` (see the module docs for the order).
    fn publish_new(&mut self, cgroup: &Cgroup) -> Result<(), WriterError> {
        let g = self.governed[&cgroup.id].clone();
        self.write_config()?;
        let top = self.is_top(cgroup.id);
        if self.h.active.cgroup && top {
            let links = self.attach_cgroup(cgroup)?;
            self.cgroup_links.insert(cgroup.id, links);
        }
        self.h
            .maps
            .cgroups
            .insert(cgroup.id, Governor { slot: g.slot, level: g.level }, 0)
            .map_err(map_err("CGROUPS"))?;
        self.seed_tasks(&cgroup.path);
        if top {
            // Governed descendants that held their subtree's links now sit
            // below this one, which holds them.
            let below: Vec<u64> = self
                .cgroup_links
                .keys()
                .copied()
                .filter(|id| *id != cgroup.id && !self.is_top(*id))
                .collect();
            for id in below {
                self.release_cgroup_links(id)?;
            }
        }
        Ok(())
    }

    /// Stops governing `cgroup_id`: it is ungoverned from the first step on
    /// (or governed by its nearest governed ancestor, if it has one).
    pub fn ungovern(&mut self, cgroup_id: u64) -> Result<(), WriterError> {
        let g = self.governed.get(&cgroup_id).cloned().ok_or(WriterError::NotGoverned { id: cgroup_id })?;
        let had_links = self.cgroup_links.contains_key(&cgroup_id);
        self.governed.remove(&cgroup_id);
        if had_links {
            // Descendants that become the top of their subtree hold their
            // own links before this one's go.
            let tops: Vec<u64> = self
                .governed
                .iter()
                .filter(|(id, d)| d.path.starts_with(&g.path) && self.is_top(**id))
                .map(|(id, _)| *id)
                .collect();
            for id in tops {
                if !self.cgroup_links.contains_key(&id) {
                    let cg = Cgroup { path: self.governed[&id].path.clone(), id };
                    match self.attach_cgroup(&cg) {
                        Ok(links) => {
                            self.cgroup_links.insert(id, links);
                        }
                        Err(e) => {
                            self.governed.insert(cgroup_id, g);
                            return Err(e);
                        }
                    }
                }
            }
        }
        match self.h.maps.cgroups.remove(&cgroup_id) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err("CGROUPS")(e)),
        }
        self.write_config()?;
        self.release_cgroup_links(cgroup_id)?;
        let dir = self.h.pins.cgroup_dir(cgroup_id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(WriterError::Io { path: dir, source }),
        }
        self.forget_tasks(cgroup_id);
        if g.path.exists() {
            self.seed_tasks(&g.path);
        }
        let pair = g.slot & !1;
        self.clear_paths(pair)?;
        self.clear_paths(pair | 1)?;
        self.sync_sys_enter()?;
        tracing::info!(cgroup_id, "no longer governed");
        Ok(())
    }

    /// Summed per-CPU decision counters.
    pub fn counters(&self) -> Result<Vec<(CounterKey, u64)>, WriterError> {
        let mut out = Vec::new();
        for item in self.h.maps.counters.iter() {
            let (k, per_cpu) = item.map_err(map_err("COUNTERS"))?;
            out.push((k, per_cpu.iter().sum()));
        }
        out.sort_by_key(|(k, _)| (k.cgroup_id, k.hook, k.verdict, k.mode));
        Ok(out)
    }

    /// Ring buffer reservations that failed (events lost), summed over CPUs.
    pub fn drops(&self) -> Result<u64, WriterError> {
        let v = self.h.maps.drops.get(&0, 0).map_err(map_err("DROPS"))?;
        Ok(v.iter().sum())
    }

    /// Events lost to a full ring buffer per cgroup id, over all hooks and
    /// CPUs (the `verdict::DROPPED` counters). Cgroups without a loss are
    /// absent. The sum can fall short of [`Self::drops`] only when a loss
    /// could not be keyed: `COUNTERS` was full, or two CPUs created the same
    /// counter at the same moment (one count lost).
    pub fn drops_by_cgroup(&self) -> Result<BTreeMap<u64, u64>, WriterError> {
        Ok(sum_dropped(self.counters()?))
    }

    /// Processes the kernel doomed (escaped, and everything they forked)
    /// for the agent to kill.
    pub fn doomed(&self) -> Vec<u32> {
        self.h.maps.doomed.keys().filter_map(Result::ok).collect()
    }

    /// The governed cgroup `TASKS` says process `tgid` belongs to.
    pub fn task_governor(&self, tgid: u32) -> Option<u64> {
        self.h.maps.tasks.get(&tgid, 0).ok()
    }

    /// Every link the agent expects, with its state as the kernel reports it.
    pub fn link_states(&self) -> Vec<LinkState> {
        let global = self.h.links.iter().chain(self.h.sys_enter_link.as_ref());
        global
            .chain(self.cgroup_links.values().flatten())
            .map(|l| {
                let mut state = LinkState::of(&l.name, &l.pin);
                if state.problem.is_some()
                    && let Ok(info) = l.info()
                {
                    // The pin is gone but the agent's descriptor still holds it.
                    state.info = Some(info);
                    if info.attached() {
                        state.problem = Some("pin missing (the agent still holds the link)".to_string());
                    }
                }
                state
            })
            .collect()
    }

    /// Pins again every held link whose pin is missing; returns their names.
    pub fn repair_links(&mut self) -> Vec<String> {
        let mut repaired = Vec::new();
        let global = self.h.links.iter().chain(self.h.sys_enter_link.as_ref());
        for l in global.chain(self.cgroup_links.values().flatten()) {
            match l.repin() {
                Ok(true) => {
                    tracing::warn!(link = %l.name, pin = %l.pin.display(), "a link's pin was removed; pinned it again");
                    repaired.push(format!("{} ({})", l.name, l.pin.display()));
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(link = %l.name, pin = %l.pin.display(), error = %e, "pinning a link again")
                }
            }
        }
        self.reattached.extend(repaired.iter().cloned());
        repaired
    }

    /// Links attached or pinned again since this agent started.
    pub fn reattached(&self) -> &[String] {
        &self.reattached
    }

    fn is_top(&self, id: u64) -> bool {
        let Some(g) = self.governed.get(&id) else { return false };
        !self
            .governed
            .iter()
            .any(|(other, o)| *other != id && g.path.starts_with(&o.path) && o.level < g.level)
    }

    fn tops(&self) -> impl Iterator<Item = &Governed> {
        self.governed.iter().filter(|(id, _)| self.is_top(**id)).map(|(_, g)| g)
    }

    /// Writes `CONFIG`: this agent, the map layout, the governed levels.
    fn write_config(&mut self) -> Result<(), WriterError> {
        let cfg = Config {
            agent_tgid: std::process::id(),
            layout: LAYOUT_VERSION,
            levels_rev: Config::levels_rev_of(self.governed.values().map(|g| g.level)),
            agent_mnt_ns: own_mount_namespace(),
            _pad: 0,
        };
        self.h.maps.config.set(0, cfg, 0).map_err(map_err("CONFIG"))
    }

    /// Records in `TASKS` every process in the subtree at `root` with the
    /// governed cgroup it belongs to (or forgets it, outside every governed
    /// subtree). Best effort: a cgroup that vanishes meanwhile is skipped.
    fn seed_tasks(&mut self, root: &Path) {
        let mut dirs = vec![root.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            let governor = self.governing(&dir);
            if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for tgid in text.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                    let r = match governor {
                        Some(id) => self.h.maps.tasks.insert(tgid, id, 0),
                        None => self.h.maps.tasks.remove(&tgid),
                    };
                    if let Err(e) = r
                        && !matches!(e, aya::maps::MapError::KeyNotFound)
                    {
                        tracing::warn!(tgid, error = %chain(&e), "recording a governed process in TASKS");
                    }
                }
            }
            dirs.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }

    /// Drops every `TASKS` entry that names `cgroup_id`.
    fn forget_tasks(&mut self, cgroup_id: u64) {
        let stale: Vec<u32> = self
            .h
            .maps
            .tasks
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, id)| *id == cgroup_id)
            .map(|(t, _)| t)
            .collect();
        for tgid in stale {
            let _ = self.h.maps.tasks.remove(&tgid);
        }
    }

    fn free_pair(&self) -> Result<u32, WriterError> {
        let used: Vec<u32> = self.governed.values().map(|g| g.slot / 2).collect();
        (0..capacity::MAX_GOVERNED)
            .find(|p| !used.contains(p))
            .ok_or(WriterError::Full(capacity::MAX_GOVERNED))
    }

    fn clear_paths(&mut self, slot: u32) -> Result<(), WriterError> {
        let stale: Vec<Key<PathKey>> = self
            .h
            .maps
            .paths
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                let data = k.data();
                let s = data.slot;
                s == slot
            })
            .collect();
        for k in stale {
            match self.h.maps.paths.remove(&k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err("PATHS")(e)),
            }
        }
        Ok(())
    }

    /// Attaches the sock_addr programs to `cgroup`, pins the links and
    /// holds them.
    fn attach_cgroup(&mut self, cgroup: &Cgroup) -> Result<Vec<HeldLink>, WriterError> {
        let dir = self.h.pins.cgroup_dir(cgroup.id);
        std::fs::create_dir_all(&dir).map_err(|source| WriterError::Io { path: dir.clone(), source })?;
        let file = File::open(&cgroup.path)
            .map_err(|source| WriterError::Io { path: cgroup.path.clone(), source })?;
        let mut held = Vec::new();
        for (name, prog) in &mut self.h.cgroup_progs {
            let attach_err = |e: &dyn std::error::Error| WriterError::Attach {
                program: (*name).to_string(),
                path: cgroup.path.clone(),
                message: chain(e),
            };
            let link = prog.attach_link(&file).map_err(|e| attach_err(&*e))?;
            let pin = dir.join(*name);
            link.pin(&pin).map_err(|e| attach_err(&e))?;
            held.push(HeldLink::open(*name, &pin).map_err(|e| attach_err(&e))?);
        }
        Ok(held)
    }

    /// Holds the pinned sock_addr links of the governed cgroup `id`,
    /// attaching any that is missing again.
    fn hold_cgroup_links(&mut self, id: u64) -> Result<Vec<HeldLink>, WriterError> {
        let dir = self.h.pins.cgroup_dir(id);
        let missing = CGROUP_PROGRAMS.iter().any(|name| !dir.join(name).exists());
        if missing {
            let path = self.governed[&id].path.clone();
            tracing::warn!(cgroup = %path.display(), "the cgroup's sock_addr links were missing from the pins; attaching them again");
            let _ = std::fs::remove_dir_all(&dir);
            self.reattached.push(format!("sock_addr links of {}", path.display()));
            return self.attach_cgroup(&Cgroup { path, id });
        }
        CGROUP_PROGRAMS
            .iter()
            .map(|name| {
                let pin = dir.join(name);
                HeldLink::open(*name, &pin).map_err(|source| WriterError::Io { path: pin, source })
            })
            .collect()
    }

    /// Releases the sock_addr links of `id` (if it holds any).
    fn release_cgroup_links(&mut self, id: u64) -> Result<(), WriterError> {
        for link in self.cgroup_links.remove(&id).unwrap_or_default() {
            let pin = link.pin.clone();
            link.release().map_err(|source| WriterError::Io { path: pin, source })?;
        }
        let _ = std::fs::remove_dir(self.h.pins.cgroup_dir(id));
        Ok(())
    }

    /// Attaches `raw_tp/sys_enter` while any governed record has syscall
    /// rules, and detaches it when none has: it costs every syscall on the host.
    fn sync_sys_enter(&mut self) -> Result<(), WriterError> {
        let need = self.governed.values().any(|g| g.has_syscalls);
        let pin = self.h.pins.link(SYS_ENTER);
        let attached = self.h.sys_enter_link.is_some();
        if need && !attached {
            let Some(prog) = self.h.sys_enter.as_mut() else {
                tracing::warn!(
                    "a governed policy has syscall rules but the syscall tracepoint backend is not available"
                );
                return Ok(());
            };
            let err = |e: &dyn std::error::Error| WriterError::Attach {
                program: SYS_ENTER.into(),
                path: pin.clone(),
                message: chain(e),
            };
            let id = prog.attach("sys_enter").map_err(|e| err(&e))?;
            let link = FdLink::from(prog.take_link(id).map_err(|e| err(&e))?);
            link.pin(&pin).map_err(|e| err(&e))?;
            self.h.sys_enter_link = Some(HeldLink::open(SYS_ENTER, &pin).map_err(|e| err(&e))?);
            tracing::info!("attached raw_tp/sys_enter (syscall rules present)");
        } else if !need && attached {
            if let Some(link) = self.h.sys_enter_link.take() {
                link.release().map_err(|source| WriterError::Io { path: pin.clone(), source })?;
            }
            tracing::info!("detached raw_tp/sys_enter (no syscall rules governed)");
        }
        Ok(())
    }
}

/// The inode number of this process's mount namespace (0 if unreadable).
fn own_mount_namespace() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self/ns/mnt").map_or(0, |m| m.ino() as u32)
}

/// Whether the cgroup `id` at `path` has a governed ancestor among
/// `governed` (id, path): then the ancestor holds the sock_addr links of its
/// subtree, and this one holds none.
pub fn has_governed_ancestor<'a>(
    path: &Path,
    governed: impl IntoIterator<Item = (u64, &'a Path)>,
    id: u64,
) -> bool {
    governed.into_iter().any(|(other, o)| other != id && path != o && path.starts_with(o))
}

/// Sums the `verdict::DROPPED` counters per cgroup id; other verdicts are
/// decisions, not losses, and are left out.
pub fn sum_dropped(counters: impl IntoIterator<Item = (CounterKey, u64)>) -> BTreeMap<u64, u64> {
    let mut out = BTreeMap::new();
    for (k, n) in counters {
        if k.verdict == verdict::DROPPED && n > 0 {
            *out.entry(k.cgroup_id).or_default() += n;
        }
    }
    out
}

/// The LPM key for `pattern` (already encoded with its trailing `/` or NUL).
pub fn path_key(slot: u32, op: u8, pattern: &[u8]) -> Result<Key<PathKey>, WriterError> {
    if pattern.len() > PATH_KEY_PATH_LEN {
        return Err(WriterError::PathTooLong { len: pattern.len(), max: PATH_KEY_PATH_LEN });
    }
    let mut path = [0u8; PATH_KEY_PATH_LEN];
    path[..pattern.len()].copy_from_slice(pattern);
    let bits = PathKey::HEADER_BITS + 8 * pattern.len() as u32;
    Ok(Key::new(bits, PathKey { slot, op, path }))
}

#[cfg(test)]
mod tests {
    use forge_common::{hook, mode};

    use super::*;

    #[test]
    fn dropped_counters_sum_per_cgroup_over_hooks_and_modes() {
        let key = |cgroup_id, hook, verdict, mode| CounterKey { cgroup_id, hook, verdict, mode, _pad: 0 };
        let counters = vec![
            (key(7, hook::CGROUP_CONNECT4, verdict::DENY, mode::ENFORCE), 1000),
            (key(7, hook::CGROUP_CONNECT4, verdict::DROPPED, mode::ENFORCE), 990),
            (key(7, hook::PROC_EXIT, verdict::DROPPED, mode::ENFORCE), 1),
            (key(7, hook::SYS_ENTER, verdict::DROPPED, mode::MONITOR), 4),
            (key(9, hook::LSM_FILE_OPEN, verdict::DENY, mode::ENFORCE), 3),
            (key(9, hook::LSM_FILE_OPEN, verdict::KILL, mode::ENFORCE), 2),
            (key(11, hook::CGROUP_BIND6, verdict::DROPPED, mode::ENFORCE), 0),
            (key(12, hook::PROC_EXEC, verdict::DROPPED, mode::MONITOR), 5),
        ];
        let sums = sum_dropped(counters);
        assert_eq!(sums, BTreeMap::from([(7, 995), (12, 5)]));
        assert!(sum_dropped(Vec::new()).is_empty());
    }

    #[test]
    fn path_keys_count_header_and_pattern_bits() {
        let k = path_key(3, forge_common::op::EXEC, b"/usr/bin/curl\0").unwrap();
        assert_eq!(k.prefix_len(), 40 + 8 * 14);
        let data = k.data();
        let (slot, op, path) = (data.slot, data.op, data.path);
        assert_eq!((slot, op), (3, forge_common::op::EXEC));
        assert_eq!(&path[..14], b"/usr/bin/curl\0");
        assert!(path[14..].iter().all(|b| *b == 0));
        assert!(path_key(0, 0, &[b'a'; PATH_KEY_PATH_LEN]).is_ok());
        assert!(matches!(
            path_key(0, 0, &[b'a'; PATH_KEY_PATH_LEN + 1]),
            Err(WriterError::PathTooLong { .. })
        ));
    }
}
