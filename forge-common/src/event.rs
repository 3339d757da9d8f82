//! Decision events sent by the kernel through the ring buffer.

use core::mem::size_of;

/// Bytes reserved for a path (NUL-terminated, truncated if longer).
pub const PATH_BUF_LEN: usize = 256;

/// One fixed-size event. Emitted for every decision other than a plain allow
/// (deny, kill, would-deny in monitor mode) and for process tracking.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()` (monotonic, boot-relative).
    pub ts_ns: u64,
    /// The governed cgroup whose record decided: the caller's own cgroup or
    /// its nearest governed ancestor. 0 for events outside any governed
    /// subtree (cgroup lifecycle, signals to the agent).
    pub cgroup_id: u64,
    /// The cgroup the calling task is actually in (equal to `cgroup_id`
    /// when the task sits in the governed cgroup itself).
    pub actual_cgroup_id: u64,
    /// A second cgroup the event is about: the destination of a containment
    /// breach (`ESCAPE_*`), the cgroup made or removed (`CGROUP_MKDIR`,
    /// `CGROUP_RMDIR`); 0 otherwise.
    pub target_cgroup_id: u64,
    /// Generation of the policy record that decided.
    pub generation: u64,
    /// Thread id.
    pub pid: u32,
    /// Process id (thread-group id).
    pub tgid: u32,
    /// Parent process id, where the hook knows it (0 otherwise).
    pub ppid: u32,
    pub rule_id: u32,
    /// [`crate::hook`].
    pub hook: u16,
    /// [`crate::op`].
    pub op: u8,
    /// [`crate::verdict`].
    pub verdict: u8,
    /// [`crate::mode`].
    pub mode: u8,
    /// [`crate::family`] for network events.
    pub family: u8,
    /// Port in host byte order for network events.
    pub port: u16,
    /// Syscall number as the entry saw it (`SYS_ENTER`; x32 calls carry
    /// [`crate::X32_SYSCALL_BIT`], i386 calls [`crate::COMPAT_SYSCALL_BIT`]), bpf command (`LSM_BPF`), signal
    /// (`LSM_TASK_KILL`, `LSM_FILE_SIGIOTASK`), exit code (`PROC_EXIT`),
    /// [`crate::escape`] outcome (`ESCAPE_*`), cgroup level (`CGROUP_*`),
    /// permission mask (`LSM_INODE_PERMISSION`); 0 otherwise.
    pub nr: u32,
    /// Target pid for ptrace/kill, the escaped task's tgid (`ESCAPE_*`); 0 otherwise.
    pub target_pid: u32,
    /// Address words in network order (IPv4 in word 0).
    pub addr: [u32; 4],
    /// Length of `path` without its NUL (0 when the event has no path).
    pub path_len: u16,
    pub _pad: [u8; 6],
    pub comm: [u8; 16],
    pub path: [u8; PATH_BUF_LEN],
}
const _: () = assert!(size_of::<Event>() == 8 * 5 + 4 * 4 + 2 + 4 + 2 + 4 + 4 + 16 + 8 + 16 + 256);

impl Event {
    /// An all-zero event (valid: every field is an integer).
    pub const fn zeroed() -> Self {
        Self {
            ts_ns: 0,
            cgroup_id: 0,
            actual_cgroup_id: 0,
            target_cgroup_id: 0,
            generation: 0,
            pid: 0,
            tgid: 0,
            ppid: 0,
            rule_id: 0,
            hook: 0,
            op: 0,
            verdict: 0,
            mode: 0,
            family: 0,
            port: 0,
            nr: 0,
            target_pid: 0,
            addr: [0; 4],
            path_len: 0,
            _pad: [0; 6],
            comm: [0; 16],
            path: [0; PATH_BUF_LEN],
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]`, `Copy`, only integer fields and explicit padding;
// every bit pattern is a valid `Event`.
unsafe impl aya::Pod for Event {}
