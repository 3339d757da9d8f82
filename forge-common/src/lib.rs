//! Wire types shared by the kernel programs (`forge-ebpf`) and the agent.
//!
//! Every type here is `#[repr(C)]`, `Copy`, uses integer tags instead of Rust
//! enums or `bool`, and spells out its padding, so that the bytes the kernel
//! writes are always a valid value on the agent side. Sizes are pinned with
//! `const` assertions: changing a layout is a deliberate act.
//!
//! Map layout (one policy record per governed cgroup):
//!
//! ```text
//! CGROUPS   hash    cgroup id (u64)  -> slot (u32)        one lookup; a miss = ungoverned
//! POLICIES  array   slot             -> PolicyRecord       double-buffered by the writer
//! PATHS     lpm     PathKey{slot,op,path} -> PathRule     longest prefix wins
//! EVENTS    ringbuf Event                                 decisions other than plain allow
//! DROPS     percpu  [u64; 1]                              ring reservations that failed
//! COUNTERS  percpu hash CounterKey -> u64                 per cgroup, hook, verdict (or DROPPED), mode
//! CONFIG    array   [Config; 1]                           agent tgid, flags
//! ```
//!
//! `COUNTERS` counts every decision other than `INFO` under its verdict, and
//! every event the ring had no room for (decisions and `INFO` alike) under
//! [`verdict::DROPPED`] with the lost event's cgroup, hook and mode. So, per
//! cgroup and hook, the decisions counted equal the events read plus those
//! counted as dropped. `DROPS` is the global total of lost events; it stays
//! exact when a counter cannot be keyed (`COUNTERS` full, or two CPUs
//! creating the same counter at once: one count lost).
//!
//! `EVENTS` is [`capacity::EVENT_RING_BYTES`] unless the agent sets another
//! size (a power-of-two multiple of the page size) when it loads the object.
//!
//! A policy swap writes a new record into a free slot (and its path rules
//! under that slot), then flips the cgroup's slot in one map update.
#![no_std]

pub mod event;
pub mod policy;

pub use event::{Event, PATH_BUF_LEN};
pub use policy::{
    Config, CounterKey, MAX_NET_RULES, MAX_SYSCALLS, NetRule, PATH_KEY_PATH_LEN, PathKey, PathRule,
    PolicyRecord, SYSCALL_WORDS, unmap_v4,
};

/// Names of the maps in the eBPF object, used by the agent to find them.
pub mod map_name {
    pub const CGROUPS: &str = "CGROUPS";
    pub const POLICIES: &str = "POLICIES";
    pub const PATHS: &str = "PATHS";
    pub const EVENTS: &str = "EVENTS";
    pub const DROPS: &str = "DROPS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const CONFIG: &str = "CONFIG";
    /// All maps the agent pins, in a stable order.
    pub const ALL: [&str; 7] = [CGROUPS, POLICIES, PATHS, EVENTS, DROPS, COUNTERS, CONFIG];
}

/// Capacity of the maps; the agent and the kernel object agree on these.
pub mod capacity {
    /// Governed cgroups at once.
    pub const MAX_GOVERNED: u32 = 1024;
    /// Policy slots: two per governed cgroup so a swap never overwrites a live record.
    pub const POLICY_SLOTS: u32 = 2 * MAX_GOVERNED;
    /// Path rules across all slots.
    pub const PATH_RULES: u32 = 16_384;
    /// Counter entries (cgroup x hook x verdict x mode).
    pub const COUNTERS: u32 = 16_384;
    /// Default ring buffer size in bytes (power of two, multiple of the page
    /// size); the agent may load the object with another size.
    pub const EVENT_RING_BYTES: u32 = 1 << 20;
}

/// Where a decision was taken. Stable numbers: they are on the wire.
pub mod hook {
    pub const LSM_BPRM_CHECK: u16 = 1;
    pub const LSM_FILE_OPEN: u16 = 2;
    pub const LSM_SOCKET_CONNECT: u16 = 3;
    pub const LSM_SOCKET_BIND: u16 = 4;
    pub const LSM_BPF: u16 = 5;
    pub const LSM_PTRACE: u16 = 6;
    pub const LSM_TASK_KILL: u16 = 7;
    pub const CGROUP_CONNECT4: u16 = 8;
    pub const CGROUP_CONNECT6: u16 = 9;
    pub const CGROUP_BIND4: u16 = 10;
    pub const CGROUP_BIND6: u16 = 11;
    pub const CGROUP_SENDMSG4: u16 = 12;
    pub const CGROUP_SENDMSG6: u16 = 13;
    pub const SYS_ENTER: u16 = 14;
    pub const PROC_EXEC: u16 = 15;
    pub const PROC_EXIT: u16 = 16;
    /// Exec deny fallback: the new image is killed at `sched_process_exec`.
    pub const EXEC_TRACEPOINT: u16 = 17;
    pub const MAX: u16 = 17;
}

/// Operation classes. Index into [`PolicyRecord::defaults`].
pub mod op {
    pub const EXEC: u8 = 0;
    pub const FILE_READ: u8 = 1;
    pub const FILE_WRITE: u8 = 2;
    pub const NET_CONNECT: u8 = 3;
    pub const NET_BIND: u8 = 4;
    pub const NET_SENDTO: u8 = 5;
    pub const SYSCALL: u8 = 6;
    /// Self-protection: bpf(), ptrace of the agent, signals to the agent.
    pub const PROTECT: u8 = 7;
    /// Process lifecycle (exec, exit): informational.
    pub const PROCESS: u8 = 8;
    /// Number of classes that carry a default action.
    pub const COUNT: usize = 8;
}

/// What was decided.
pub mod verdict {
    pub const ALLOW: u8 = 0;
    /// Denied with an errno (EPERM).
    pub const DENY: u8 = 1;
    /// Denied by killing the caller with SIGKILL.
    pub const KILL: u8 = 2;
    /// Not a decision: process tracking.
    pub const INFO: u8 = 3;
    /// Counter tag only, never an event's verdict: an event of the counter's
    /// cgroup and hook that was lost because the ring buffer was full. Kept
    /// apart from the event verdicts so that new verdicts never collide.
    pub const DROPPED: u8 = 0x80;
}

/// Whether a deny is applied (`ENFORCE`) or only reported (`MONITOR`).
pub mod mode {
    pub const ENFORCE: u8 = 0;
    pub const MONITOR: u8 = 1;
}

/// Bits in [`PolicyRecord::flags`].
pub mod flags {
    /// The LSM socket hooks decide network rules (set when the cgroup
    /// sock_addr hooks are not attached for this cgroup).
    pub const NET_VIA_LSM: u32 = 1 << 0;
    /// Self-protection hooks are active for this cgroup.
    pub const SELF_PROTECT: u32 = 1 << 1;
    /// The record has syscall deny bits (the syscall tracepoint is needed).
    pub const HAS_SYSCALL_RULES: u32 = 1 << 2;
    /// Exec is decided at `sched_process_exec` (kill) because no LSM is active.
    pub const EXEC_VIA_TRACEPOINT: u32 = 1 << 3;
    /// The record has path rules or non-allow defaults for exec/file ops.
    pub const HAS_PATH_RULES: u32 = 1 << 4;
    /// Report allowed connects and sends too (verdict `ALLOW`), for the
    /// anomaly scorer's baseline of destinations.
    pub const OBSERVE_NET: u32 = 1 << 5;
}

/// Address families in [`NetRule::family`] and [`Event::family`].
pub mod family {
    pub const ANY: u8 = 0;
    pub const INET: u8 = 4;
    pub const INET6: u8 = 6;
}

/// Rule ids with a fixed meaning. Compiled rules start at [`rule_id::FIRST`].
pub mod rule_id {
    /// No rule: the decision came from the record's default for the class.
    pub const DEFAULT: u32 = 0;
    /// Built-in self-protection of the agent.
    pub const SELF_PROTECT: u32 = 1;
    pub const FIRST: u32 = 16;
}
