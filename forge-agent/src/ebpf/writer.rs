//! The single map writer: the only code that updates ForgeOne's maps.
//!
//! Each governed cgroup owns a pair of policy slots. A new record (and its
//! path rules) is written into the slot the cgroup is *not* using, then the
//! cgroup's entry in `CGROUPS` is pointed at it in one map update. The old
//! slot stays intact until the next swap, so a program that read the old slot
//! finishes its decision on a whole, consistent record.

use std::{collections::BTreeMap, fs::File, io, path::PathBuf};

use aya::{
    maps::{MapData, RingBuf, lpm_trie::Key},
    programs::links::{CgroupAttachMode, FdLink},
};
use forge_common::{Config, CounterKey, PATH_KEY_PATH_LEN, PathKey, PolicyRecord, capacity, flags, verdict};

use super::{loader::Handles, loader::chain, object::SYS_ENTER};
use crate::{cgroup::Cgroup, policy::CompiledRecord};

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
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> WriterError {
    move |e| WriterError::Map { map, message: chain(&e) }
}

#[derive(Clone, Copy, Debug)]
struct Governed {
    slot: u32,
    has_syscalls: bool,
}

/// Owns the maps; see the module docs for the swap protocol.
pub struct MapWriter {
    h: Handles,
    governed: BTreeMap<u64, Governed>,
    next_generation: u64,
    observe_net: bool,
}

impl MapWriter {
    /// Takes over the handles, registers this process as the agent, and
    /// rebuilds its view of governed cgroups from the maps (after adoption).
    pub fn new(h: Handles) -> Result<Self, WriterError> {
        let mut w = Self { h, governed: BTreeMap::new(), next_generation: 1, observe_net: false };
        let cfg = Config { agent_tgid: std::process::id(), _pad: 0 };
        w.h.maps.config.set(0, cfg, 0).map_err(map_err("CONFIG"))?;
        let entries: Vec<(u64, u32)> = w.h.maps.cgroups.iter().filter_map(Result::ok).collect();
        for (id, slot) in entries {
            let rec = w.h.maps.policies.get(&slot, 0).map_err(map_err("POLICIES"))?;
            w.next_generation = w.next_generation.max(rec.generation + 1);
            w.governed.insert(id, Governed { slot, has_syscalls: rec.flags & flags::HAS_SYSCALL_RULES != 0 });
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

    /// The record currently in force for `cgroup_id`.
    pub fn record(&self, cgroup_id: u64) -> Result<PolicyRecord, WriterError> {
        let g = self.governed.get(&cgroup_id).ok_or(WriterError::NotGoverned { id: cgroup_id })?;
        self.h.maps.policies.get(&g.slot, 0).map_err(map_err("POLICIES"))
    }

    /// Governs `cgroup` with `compiled` (or swaps its policy), returning the
    /// generation written.
    pub fn govern(&mut self, cgroup: &Cgroup, compiled: &CompiledRecord) -> Result<u64, WriterError> {
        let generation = self.next_generation;
        self.next_generation += 1;
        let mut record = compiled.record;
        record.generation = generation;
        let active = self.h.active;
        if !active.cgroup && active.lsm {
            record.flags |= flags::NET_VIA_LSM;
        }
        if !active.lsm && active.tracepoint {
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
        self.h.maps.policies.set(slot, record, 0).map_err(map_err("POLICIES"))?;
        if active.cgroup && !self.governed.contains_key(&cgroup.id) {
            self.attach_cgroup(cgroup)?;
        }
        // The flip: from here on the kernel decides with the new record.
        self.h.maps.cgroups.insert(cgroup.id, slot, 0).map_err(map_err("CGROUPS"))?;
        self.governed
            .insert(cgroup.id, Governed { slot, has_syscalls: record.flags & flags::HAS_SYSCALL_RULES != 0 });
        self.sync_sys_enter()?;
        tracing::info!(cgroup = %cgroup.path.display(), cgroup_id = cgroup.id, slot, generation, policy = %compiled.policy_name, "governing");
        Ok(generation)
    }

    /// Stops governing `cgroup_id`: it is ungoverned from the first step on.
    pub fn ungovern(&mut self, cgroup_id: u64) -> Result<(), WriterError> {
        let g = self.governed.remove(&cgroup_id).ok_or(WriterError::NotGoverned { id: cgroup_id })?;
        match self.h.maps.cgroups.remove(&cgroup_id) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err("CGROUPS")(e)),
        }
        let dir = self.h.pins.cgroup_dir(cgroup_id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(WriterError::Io { path: dir, source }),
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

    fn attach_cgroup(&mut self, cgroup: &Cgroup) -> Result<(), WriterError> {
        let dir = self.h.pins.cgroup_dir(cgroup.id);
        std::fs::create_dir_all(&dir).map_err(|source| WriterError::Io { path: dir.clone(), source })?;
        let file = File::open(&cgroup.path)
            .map_err(|source| WriterError::Io { path: cgroup.path.clone(), source })?;
        for (name, prog) in &mut self.h.cgroup_progs {
            let attach_err = |e: &dyn std::error::Error| WriterError::Attach {
                program: (*name).to_string(),
                path: cgroup.path.clone(),
                message: chain(e),
            };
            // With bpf_link (kernel >= 5.7) attachments always coexist; the
            // link API rejects the ALLOW_MULTI flag, so ask for the default.
            let id = prog.attach(&file, CgroupAttachMode::Single).map_err(|e| attach_err(&e))?;
            let link = FdLink::try_from(prog.take_link(id).map_err(|e| attach_err(&e))?)
                .map_err(|e| attach_err(&e))?;
            link.pin(dir.join(*name)).map_err(|e| attach_err(&e))?;
        }
        Ok(())
    }

    /// Attaches `raw_tp/sys_enter` while any governed record has syscall
    /// rules, and detaches it when none has: it costs every syscall on the host.
    fn sync_sys_enter(&mut self) -> Result<(), WriterError> {
        let need = self.governed.values().any(|g| g.has_syscalls);
        let pin = self.h.pins.link(SYS_ENTER);
        let attached = pin.exists();
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
            tracing::info!("attached raw_tp/sys_enter (syscall rules present)");
        } else if !need && attached {
            std::fs::remove_file(&pin).map_err(|source| WriterError::Io { path: pin.clone(), source })?;
            tracing::info!("detached raw_tp/sys_enter (no syscall rules governed)");
        }
        Ok(())
    }
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
