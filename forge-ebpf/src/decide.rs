//! Shared decision logic: which record governs the caller, and what it says.

use aya_ebpf::helpers::{
    bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_pid_tgid,
    bpf_get_current_task, generated::bpf_d_path,
};
use forge_common::{Governor, MAX_GOVERNED_LEVEL, PathKey, PolicyRecord, mode, verdict};

use crate::{
    kernel,
    maps::{CGROUPS, CONFIG, PATHS, POLICIES, SCRATCH, Scratch},
};

/// The governed cgroup whose record decides for a task, and the record.
pub(crate) struct Governing {
    /// The governed cgroup: the task's own, or its nearest governed ancestor.
    pub(crate) id: u64,
    /// The task's own cgroup.
    pub(crate) actual: u64,
    pub(crate) slot: u32,
    /// Level of the governed cgroup.
    pub(crate) level: u32,
    pub(crate) record: &'static PolicyRecord,
}

/// The record governing the current task: its cgroup's, or its nearest
/// governed ancestor's. `None` outside every governed subtree, and for the
/// agent itself. A task in a governed cgroup costs one hash lookup; one
/// outside costs that plus one lookup per level at which some cgroup is
/// governed (most hosts: one). For tracing and LSM programs.
#[inline(always)]
pub(crate) fn governing() -> Option<Governing> {
    governing_by(|actual| {
        if kernel::tracing_ancestor_helper() {
            nearest_current_ancestor(actual)
        } else {
            // Kernels before 5.14 refuse the ancestor helper in tracing and
            // LSM programs: read the task's cgroup instead.
            // SAFETY: the helper has no preconditions.
            let task = unsafe { bpf_get_current_task() } as *const u8;
            kernel::task_cgroup(task).map_or(0, nearest_governed)
        }
    })
}

/// [`governing`] for cgroup hooks, where the ancestor helper always exists
/// (and the task helper does not).
#[inline(always)]
pub(crate) fn governing_in_cgroup_hook() -> Option<Governing> {
    governing_by(nearest_current_ancestor)
}

#[inline(always)]
fn governing_by(nearest: impl FnOnce(u64) -> u64) -> Option<Governing> {
    // SAFETY: the helper has no preconditions.
    let actual = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the value is two integers the agent writes whole.
    let (id, gov) = match unsafe { CGROUPS.get(actual) } {
        Some(g) => (actual, *g),
        None => {
            let id = nearest(actual);
            // SAFETY: as above.
            (id, *unsafe { CGROUPS.get(id) }?)
        }
    };
    let record = POLICIES.get(gov.slot)?;
    let agent = CONFIG.get(0).map_or(0, |c| c.agent_tgid);
    if agent != 0 && (bpf_get_current_pid_tgid() >> 32) as u32 == agent {
        return None;
    }
    Some(Governing { id, actual, slot: gov.slot, level: gov.level, record })
}

/// Walks the governed levels, deepest first, as `CONFIG.levels_rev` lists
/// them, calling `at(level)` until it answers a cgroup id; 0 when none does.
/// (Plain ids, 0 for none: an `Option` payload left undefined on `None` is
/// a register the verifier refuses to read.)
#[inline(always)]
fn deepest_first(mut at: impl FnMut(u32) -> u64) -> u64 {
    let Some(cfg) = CONFIG.get(0) else { return 0 };
    let mut m = cfg.levels_rev;
    let mut i = 0;
    while i <= MAX_GOVERNED_LEVEL && m != 0 {
        let low = m & m.wrapping_neg();
        m ^= low;
        let level = MAX_GOVERNED_LEVEL - low.trailing_zeros();
        let found = at(level);
        if found != 0 {
            return found;
        }
        i += 1;
    }
    0
}

/// Whether `id` is a governed cgroup.
#[inline(always)]
fn is_governed(id: u64) -> bool {
    // SAFETY: the value is two integers the agent writes whole.
    unsafe { CGROUPS.get(id) }.is_some()
}

/// The current task's nearest governed ancestor (its own cgroup, `actual`,
/// was looked up already); 0 when it has none.
#[inline(always)]
fn nearest_current_ancestor(actual: u64) -> u64 {
    deepest_first(|level| {
        // SAFETY: the helper has no preconditions; 0 means no such level.
        let a = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if a != 0 && a != actual && is_governed(a) { a } else { 0 }
    })
}

/// The nearest governed cgroup at or above the cgroup at `cgrp` (a `struct
/// cgroup *`); 0 when there is none.
#[inline(always)]
pub(crate) fn nearest_governed(cgrp: *const u8) -> u64 {
    deepest_first(|level| match kernel::cgroup_ancestor_id(cgrp, level) {
        Some(a) if is_governed(a) => a,
        _ => 0,
    })
}

/// The entry of the governed cgroup `id`, if it is governed.
#[inline(always)]
pub(crate) fn governor(id: u64) -> Option<Governor> {
    // SAFETY: the value is two integers the agent writes whole.
    unsafe { CGROUPS.get(id) }.copied()
}

/// Whether a process governed by `id` (at `level`) may be in the cgroup at
/// `cgrp`: inside `id`'s subtree and not inside a governed subtree nested
/// in it (whose record would decide for it instead: moving there is
/// leaving, both ways).
#[inline(always)]
pub(crate) fn stays(cgrp: *const u8, id: u64, level: u32) -> bool {
    within(cgrp, id, level) && nearest_governed(cgrp) == id
}

/// [`stays`] for a caller that already has `nearest_governed(cgrp)`: one
/// walk of the levels per program keeps the verifier's work (and the
/// agent's start time) down.
#[inline(always)]
pub(crate) fn stays_near(cgrp: *const u8, id: u64, level: u32, nearest: u64) -> bool {
    nearest == id && within(cgrp, id, level)
}

/// Whether the cgroup at `cgrp` is `gov_id` (at `gov_level`) or below it.
#[inline(always)]
pub(crate) fn within(cgrp: *const u8, gov_id: u64, gov_level: u32) -> bool {
    kernel::cgroup_ancestor_id(cgrp, gov_level) == Some(gov_id)
}

/// Socket constants of the `net.raw` class.
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const SOCK_DGRAM: u32 = 2;
const SOCK_RAW: u32 = 3;
const IPPROTO_ICMP: u32 = 1;
const IPPROTO_ICMPV6: u32 = 58;

/// Whether a socket of `family`, `kind` and `protocol` is an inet socket of
/// the `net.raw` class: `SOCK_RAW`, or an ICMP datagram ("ping") socket.
#[inline(always)]
pub(crate) fn is_raw_inet(family: u32, kind: u32, protocol: u32) -> bool {
    let icmp = kind == SOCK_DGRAM && (protocol == IPPROTO_ICMP || protocol == IPPROTO_ICMPV6);
    (family == AF_INET || family == AF_INET6) && (kind == SOCK_RAW || icmp)
}

/// The record's one decision for the `net.raw` class (a rule or the
/// default), monitored where the record says so.
#[inline(always)]
pub(crate) fn raw_decision(record: &PolicyRecord) -> Decision {
    let mut d = Decision::default_for(record, forge_common::op::NET_RAW).under(record);
    if record.flags & forge_common::flags::NET_RAW_MONITOR != 0 {
        d.mode = mode::MONITOR;
    }
    d
}

/// What a rule or default says about one operation.
#[derive(Clone, Copy)]
pub(crate) struct Decision {
    pub(crate) action: u8,
    pub(crate) mode: u8,
    pub(crate) rule_id: u32,
}

impl Decision {
    /// The decision as one integer, never 0 (0 stands for none): to keep a
    /// decision across a later walk. A kept `Option<Decision>` is stack
    /// memory partly undefined on `None` (and padding), which the 5.10
    /// verifier refuses to read.
    #[inline(always)]
    pub(crate) fn packed(self) -> u64 {
        1 << 63 | u64::from(self.action) << 40 | u64::from(self.mode) << 32 | u64::from(self.rule_id)
    }

    /// The decision [`Self::packed`] made, `None` for 0.
    #[inline(always)]
    pub(crate) fn unpacked(v: u64) -> Option<Self> {
        (v != 0).then_some(Self { action: (v >> 40) as u8, mode: (v >> 32) as u8, rule_id: v as u32 })
    }

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
    let (family, mapped) = forge_common::canonical_dest(op_class, family, ip);
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
/// scratch key with `bpf_d_path`. Returns the length including the NUL. A
/// path too long for the key is resolved again into the `PATH_MAX` walk
/// buffer and keeps its leading part (`truncated`: only directory rules
/// decide it). `None` only when the kernel cannot resolve it at all.
#[inline(always)]
pub(crate) fn resolve_path(scratch: &mut Scratch, path: *mut core::ffi::c_void) -> Option<u32> {
    let buf = core::ptr::addr_of_mut!(scratch.key.data.path) as *mut core::ffi::c_char;
    // SAFETY: `buf` is PATH_KEY_PATH_LEN bytes of map memory and `path` is a
    // BTF-typed `struct path *` from the hook's arguments.
    let len = unsafe { bpf_d_path(path.cast(), buf, forge_common::PATH_KEY_PATH_LEN as u32) };
    scratch.path_len = 0;
    scratch.truncated = 0;
    if len > 0 && len as usize <= forge_common::PATH_KEY_PATH_LEN {
        scratch.path_len = len as u32;
        return Some(len as u32);
    }
    let walk = scratch.walk.as_mut_ptr() as *mut core::ffi::c_char;
    // SAFETY: `walk` is WALK_BUF bytes of map memory; `path` as above.
    let len = unsafe { bpf_d_path(path.cast(), walk, kernel::WALK_BUF as u32) };
    if len <= 0 {
        return None;
    }
    let n = forge_common::PATH_KEY_PATH_LEN - 1;
    // SAFETY: the key's path is map memory of this program.
    let key_path = unsafe { &mut *core::ptr::addr_of_mut!(scratch.key.data.path) };
    // SAFETY: both are map memory; `n` bytes fit each.
    if unsafe { aya_ebpf::helpers::bpf_probe_read_kernel_buf(scratch.walk.as_ptr(), &mut key_path[..n]) }
        .is_err()
    {
        return None;
    }
    key_path[n] = 0;
    scratch.path_len = n as u32 + 1;
    scratch.truncated = 1;
    Some(scratch.path_len)
}

/// A path that could not be resolved: denied where the record has path
/// rules, since no rule can be known not to apply.
#[inline(always)]
pub(crate) fn unresolved_path(record: &PolicyRecord) -> Decision {
    Decision { action: verdict::DENY, mode: mode::ENFORCE, rule_id: forge_common::rule_id::UNRESOLVED_PATH }
        .under(record)
}

/// The exact-file deny that names the file at `file` (a `struct file *`)
/// itself, by device and inode, whatever path reached it: `None` when the
/// record has no such entries or none is this file's. Uses the scratch key
/// (resolve the path afterwards).
#[inline(always)]
pub(crate) fn decide_inode(
    record: &PolicyRecord,
    slot: u32,
    op_class: u8,
    scratch: &mut Scratch,
    file: *const u8,
) -> Option<Decision> {
    if record.flags & forge_common::flags::INODE_RULES == 0 {
        return None;
    }
    let (dev, ino) = kernel::file_id(file)?;
    let id = forge_common::inode_key_path(dev, ino);
    let path = &mut scratch.key.data.path;
    let mut i = 0;
    while i < forge_common::INODE_KEY_LEN {
        path[i] = id[i];
        i += 1;
    }
    scratch.key.prefix_len = PathKey::HEADER_BITS + 8 * forge_common::INODE_KEY_LEN as u32;
    scratch.key.data.slot = slot;
    scratch.key.data.op = op_class;
    let rule = PATHS.get(&scratch.key)?;
    Some(Decision { action: rule.action, mode: rule.mode, rule_id: rule.rule_id }.under(record))
}

/// An anonymous executable's decision: the exec class's `<anonymous>`
/// entry (a rule, or the compiler's built-in deny), else the exec default.
/// Uses the scratch key (resolve the path afterwards).
#[inline(always)]
pub(crate) fn decide_anonymous(record: &PolicyRecord, slot: u32, scratch: &mut Scratch) -> Decision {
    let op_class = forge_common::op::EXEC;
    let path = &mut scratch.key.data.path;
    path[0] = forge_common::ANON_KEY_PATH[0];
    path[1] = forge_common::ANON_KEY_PATH[1];
    scratch.key.prefix_len = PathKey::HEADER_BITS + 8 * forge_common::ANON_KEY_PATH.len() as u32;
    scratch.key.data.slot = slot;
    scratch.key.data.op = op_class;
    match PATHS.get(&scratch.key) {
        Some(rule) => Decision { action: rule.action, mode: rule.mode, rule_id: rule.rule_id }.under(record),
        None => Decision::default_for(record, op_class).under(record),
    }
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
    // A truncated path ends with a NUL that is not its own: leave it out,
    // so that only a directory rule (a prefix without NUL) matches.
    let len = if scratch.truncated != 0 { len - 1 } else { len };
    scratch.key.prefix_len = PathKey::HEADER_BITS + 8 * len;
    scratch.key.data.slot = slot;
    scratch.key.data.op = op_class;
    match PATHS.get(&scratch.key) {
        Some(rule) => Decision { action: rule.action, mode: rule.mode, rule_id: rule.rule_id }.under(record),
        None => Decision::default_for(record, op_class).under(record),
    }
}
