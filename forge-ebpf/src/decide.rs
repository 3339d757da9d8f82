//! Shared decision logic: which record governs the caller, and what it says.

use aya_ebpf::helpers::{bpf_get_current_cgroup_id, generated::bpf_d_path};
use forge_common::{PathKey, PolicyRecord, mode, verdict};

use crate::maps::{CGROUPS, PATHS, POLICIES, SCRATCH, Scratch};

/// The record governing the current cgroup, with its cgroup id and slot.
/// `None` for ungoverned cgroups: one hash lookup and nothing else.
#[inline(always)]
pub(crate) fn governing() -> Option<(u64, u32, &'static PolicyRecord)> {
    // SAFETY: the helper has no preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the value is a plain u32 that the agent writes whole.
    let slot = *unsafe { CGROUPS.get(cgroup_id) }?;
    let record = POLICIES.get(slot)?;
    Some((cgroup_id, slot, record))
}

/// What a rule or default says about one operation.
#[derive(Clone, Copy)]
pub(crate) struct Decision {
    pub(crate) action: u8,
    pub(crate) mode: u8,
    pub(crate) rule_id: u32,
}

impl Decision {
    /// The record's default for `op_class`.
    #[inline(always)]
    pub(crate) fn default_for(record: &PolicyRecord, op_class: u8) -> Self {
        let i = op_class as usize;
        if i >= forge_common::op::COUNT {
            return Self { action: verdict::ALLOW, mode: record.mode, rule_id: 0 };
        }
        Self { action: record.defaults[i], mode: record.mode, rule_id: record.default_rule[i] }
    }

    /// A record in monitor mode turns every rule into monitor.
    #[inline(always)]
    pub(crate) fn under(mut self, record: &PolicyRecord) -> Self {
        if record.mode == mode::MONITOR {
            self.mode = mode::MONITOR;
        }
        self
    }

    pub(crate) fn allows(&self) -> bool {
        self.action == verdict::ALLOW
    }

    pub(crate) fn enforced(&self) -> bool {
        self.mode == mode::ENFORCE
    }
}

/// First matching network rule, or the default for `op_class`.
#[inline(always)]
pub(crate) fn decide_net(
    record: &PolicyRecord,
    op_class: u8,
    family: u8,
    ip: &[u32; 4],
    port: u16,
) -> Decision {
    let (family, mapped) = forge_common::unmap_v4(family, ip);
    let ip = &mapped;
    let count = record.net_count as usize;
    let mut i = 0;
    while i < forge_common::MAX_NET_RULES {
        if i >= count {
            break;
        }
        let rule = &record.net[i];
        if rule.matches(op_class, family, ip, port) {
            return Decision { action: rule.action, mode: rule.mode, rule_id: rule.rule_id }.under(record);
        }
        i += 1;
    }
    Decision::default_for(record, op_class).under(record)
}

/// The per-CPU scratch area.
#[inline(always)]
pub(crate) fn scratch() -> Option<&'static mut Scratch> {
    let ptr = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU array value lives as long as the map. A program
    // preempted on its CPU by another ForgeOne program could see the area
    // rewritten; each decision fills it and reads it back at once to keep that
    // window small (the same trade-off every per-CPU scratch buffer makes).
    Some(unsafe { &mut *ptr })
}

/// Resolves `path` (a `struct path *` the verifier knows as such) into the
/// scratch key with `bpf_d_path`. Returns the length including the NUL.
#[inline(always)]
pub(crate) fn resolve_path(scratch: &mut Scratch, path: *mut core::ffi::c_void) -> Option<u32> {
    let buf = core::ptr::addr_of_mut!(scratch.key.data.path) as *mut core::ffi::c_char;
    // SAFETY: `buf` is PATH_KEY_PATH_LEN bytes of map memory and `path` is a
    // BTF-typed `struct path *` from the hook's arguments.
    let len = unsafe { bpf_d_path(path.cast(), buf, forge_common::PATH_KEY_PATH_LEN as u32) };
    scratch.path_len = 0;
    if len <= 0 || len as usize > forge_common::PATH_KEY_PATH_LEN {
        return None;
    }
    scratch.path_len = len as u32;
    Some(len as u32)
}

/// Looks up the path held in the scratch key for `op_class` under `slot`.
/// Falls back to the record's default when no rule's prefix matches or the
/// path could not be resolved.
#[inline(always)]
pub(crate) fn decide_path(record: &PolicyRecord, slot: u32, op_class: u8, scratch: &mut Scratch) -> Decision {
    let len = scratch.path_len;
    if len == 0 {
        return Decision::default_for(record, op_class).under(record);
    }
    scratch.key.prefix_len = PathKey::HEADER_BITS + 8 * len;
    scratch.key.data.slot = slot;
    scratch.key.data.op = op_class;
    match PATHS.get(&scratch.key) {
        Some(rule) => Decision { action: rule.action, mode: rule.mode, rule_id: rule.rule_id }.under(record),
        None => Decision::default_for(record, op_class).under(record),
    }
}
