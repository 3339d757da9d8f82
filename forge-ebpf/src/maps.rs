//! The maps shared with the agent. Layout documented in `forge-common`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key},
};
use forge_common::{Config, CounterKey, Governor, PathKey, PathRule, PolicyRecord, capacity};

#[map(name = "CGROUPS")]
pub(crate) static CGROUPS: HashMap<u64, Governor> = HashMap::with_max_entries(capacity::MAX_GOVERNED, 0);

/// `BPF_F_NO_PREALLOC`: entries are allocated as they are inserted, so a
/// map sized for every possible pid costs only what it holds.
const NO_PREALLOC: u32 = 1;

/// Process (tgid) -> the governed cgroup it belongs to. Room for every pid
/// the kernel can hand out: it cannot fill up.
#[map(name = "TASKS")]
pub(crate) static TASKS: HashMap<u32, u64> = HashMap::with_max_entries(capacity::PIDS, NO_PREALLOC);

/// Processes the agent must kill (escaped where the kernel could not kill
/// them from the hook), and every process they fork.
#[map(name = "DOOMED")]
pub(crate) static DOOMED: HashMap<u32, u8> = HashMap::with_max_entries(capacity::PIDS, NO_PREALLOC);

#[map(name = "POLICIES")]
pub(crate) static POLICIES: Array<PolicyRecord> = Array::with_max_entries(capacity::POLICY_SLOTS, 0);

#[map(name = "PATHS")]
pub(crate) static PATHS: LpmTrie<PathKey, PathRule> = LpmTrie::with_max_entries(capacity::PATH_RULES, 0);

#[map(name = "EVENTS")]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(capacity::EVENT_RING_BYTES, 0);

#[map(name = "DROPS")]
pub(crate) static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "COUNTERS")]
pub(crate) static COUNTERS: PerCpuHashMap<CounterKey, u64> =
    PerCpuHashMap::with_max_entries(capacity::COUNTERS, 0);

#[map(name = "CONFIG")]
pub(crate) static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Per-CPU scratch space: the LPM key is too large for the BPF stack next to
/// everything else a hook keeps there.
#[repr(C)]
pub(crate) struct Scratch {
    pub(crate) key: Key<PathKey>,
    /// Set once the key holds a resolved path; length of it including its NUL.
    pub(crate) path_len: u32,
    /// 1 when the key holds only the leading part of a path too long for it
    /// (`path_len - 1` bytes and a NUL that is not the path's end): only
    /// directory rules can match it.
    pub(crate) truncated: u32,
    /// Where [`crate::kernel::file_path`] assembles a path from its end.
    pub(crate) walk: [u8; crate::kernel::WALK_BUF],
}

#[map(name = "SCRATCH")]
pub(crate) static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
