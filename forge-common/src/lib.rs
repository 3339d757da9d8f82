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
//! CGROUPS   hash    cgroup id (u64)  -> Governor{slot, level}   a governed cgroup
//! POLICIES  array   slot             -> PolicyRecord       double-buffered by the writer
//! PATHS     lpm     PathKey{slot,op,path} -> PathRule     longest prefix wins; also
//!                   PathKey{slot,op,inode_key_path(dev, ino)} for exact-file denies
//! EVENTS    ringbuf Event                                 decisions other than plain allow
//! DROPS     percpu  [u64; 1]                              ring reservations that failed
//! COUNTERS  percpu hash CounterKey -> u64                 per cgroup, hook, verdict (or DROPPED), mode
//! CONFIG    array   [Config; 1]                           agent tgid, layout, governed levels
//! TASKS     hash    tgid (u32) -> governed cgroup id (u64) processes inside a governed subtree
//! DOOMED    hash    tgid (u32) -> 1                       escaped processes the agent must kill
//! ```
//!
//! A governed cgroup governs its whole subtree. A program first looks up the
//! caller's own cgroup in `CGROUPS`; on a miss it walks the caller's
//! ancestors, but only at the levels where some governed cgroup exists
//! ([`Config::levels_rev`]), deepest first, so the nearest governed ancestor
//! decides. A cgroup made below a governed one is governed from the moment it
//! exists: nothing has to be written for it.
//!
//! `TASKS` remembers, per process, the governed cgroup it belongs to, so that
//! a process that moves itself out of its subtree is still known for what it
//! was when the move is reported (after the move, its cgroup says nothing).
//! Kept by the fork, exit and attach tracepoints and seeded by the agent when
//! it starts governing a cgroup.
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
    ANON_KEY_PATH, COMPAT_SYSCALL_BIT, Config, CounterKey, Governor, INODE_KEY_LEN, INODE_KEY_TAG,
    MAX_NET_RULES, NetRule, PATH_KEY_PATH_LEN, PathKey, PathRule, PolicyRecord, SYSCALL_COMPAT_BASE,
    SYSCALL_SLOTS, SYSCALL_WORDS, X32_SYSCALL_BIT, canonical_dest, inode_key_path, syscall_slot, unmap_v4,
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
    pub const TASKS: &str = "TASKS";
    pub const DOOMED: &str = "DOOMED";
    /// All maps the agent pins, in a stable order.
    pub const ALL: [&str; 9] = [CGROUPS, POLICIES, PATHS, EVENTS, DROPS, COUNTERS, TASKS, DOOMED, CONFIG];
}

/// Version of the map layout. An agent refuses to adopt pinned maps of
/// another layout (it says so and how to start over), instead of reading
/// records it would misunderstand.
pub const LAYOUT_VERSION: u32 = 5;

/// Deepest cgroup level the agent governs (their descendants are governed at
/// any depth). Every program walks the governed levels on a miss, and the
/// verifier explores each step: 15 keeps the programs' load time down
/// (levels are the low bits of `Config::levels_rev`).
pub const MAX_GOVERNED_LEVEL: u32 = 15;

/// Kernel functions (kfuncs) the programs call. aya 0.14 cannot relocate
/// kfunc calls, so a program calls a placeholder helper number no kernel
/// has, and the agent rewrites each such call before loading: into a call of
/// the kfunc by its BTF id in the running kernel, or into `r0 = -ENOSYS`
/// where the kernel lacks it (the program then takes its fallback).
pub mod kfunc {
    /// Placeholder for `bpf_send_signal_task(task, sig, type, value)`
    /// (kernels from 6.13).
    pub const SIGNAL_TASK_CALL: i32 = 0x7ff0;
    /// The kfunc the placeholder stands for.
    pub const SIGNAL_TASK: &str = "bpf_send_signal_task";
}

/// How a containment breach ended, in [`Event::nr`] of `ESCAPE_*` events.
pub mod escape {
    /// The escaped task was killed by the kernel program before it ran on.
    pub const KILLED: u32 = 1;
    /// This kernel cannot signal another task from the hook: the caller
    /// that made the escape was killed, and the escaped process is doomed
    /// (`DOOMED`, with everything it forks) for the agent to kill.
    pub const LEFT_TO_AGENT: u32 = 2;
    /// A governed task moved a process that was not its own (another
    /// workload's, the agent): the move stands, the writer was killed.
    pub const WRITER_KILLED: u32 = 3;
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
    /// Entries of the per-process maps (`TASKS`, `DOOMED`): `PID_MAX_LIMIT`,
    /// every pid the kernel can hand out (allocated as used, not up front).
    pub const PIDS: u32 = 4 * 1024 * 1024;
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
    /// Writes to cgroup and bpffs files (containment, self-protection).
    pub const LSM_INODE_PERMISSION: u16 = 18;
    /// Unmounting bpffs or cgroup2 (self-protection).
    pub const LSM_SB_UMOUNT: u16 = 19;
    /// SIGIO/SIGURG (`F_SETOWN`, `F_SETSIG`) aimed at the agent.
    pub const LSM_FILE_SIGIOTASK: u16 = 20;
    /// A child forked into a cgroup outside its parent's governed subtree
    /// (`clone3(CLONE_INTO_CGROUP)`).
    pub const ESCAPE_FORK: u16 = 21;
    /// A task moved (`cgroup.procs`, `cgroup.threads`) out of its governed
    /// subtree.
    pub const ESCAPE_ATTACH: u16 = 22;
    /// A cgroup v2 directory was made.
    pub const CGROUP_MKDIR: u16 = 23;
    /// A cgroup v2 directory was removed.
    pub const CGROUP_RMDIR: u16 = 24;
    /// Changing the agent's limits, nice value, scheduling or I/O priority.
    pub const LSM_TASK_CONTROL: u16 = 25;
    /// Mounting, moving a mount or pivoting the root in the agent's mount
    /// namespace.
    pub const LSM_MOUNT: u16 = 26;
    /// `cgroup/sock_create`: a raw or ICMP socket being made.
    pub const CGROUP_SOCK_CREATE: u16 = 27;
    /// `lsm/path_chroot`: a denied `chroot` refused before it happens.
    pub const LSM_PATH_CHROOT: u16 = 28;
    /// `lsm/kernel_read_file`, `lsm/kernel_load_data`: a denied module or
    /// kexec load refused before the kernel reads it.
    pub const LSM_KERNEL_LOAD: u16 = 29;
    /// `lsm/perf_event_open`: a denied `perf_event_open` refused.
    pub const LSM_PERF_EVENT: u16 = 30;
    /// `lsm/userns_create`: a user namespace made by a denied `unshare`,
    /// `clone` or `clone3` refused.
    pub const LSM_USERNS: u16 = 31;
    /// `lsm/kernel_module_request`: a module the kernel would load for a
    /// workload that may not load modules refused.
    pub const LSM_MODULE_REQUEST: u16 = 32;
    /// `lsm/socket_create`: a packet socket being made (and raw or ICMP
    /// inet sockets where the cgroup hooks are not in use).
    pub const LSM_SOCKET_CREATE: u16 = 33;
    /// `lsm/socket_listen`: a listen that takes a port itself (autobind),
    /// decided as `net.bind` of port 0.
    pub const LSM_SOCKET_LISTEN: u16 = 34;
    /// `lsm/ptrace_traceme`: a denied `ptrace(PTRACE_TRACEME)` refused.
    pub const LSM_PTRACE_TRACEME: u16 = 35;
    /// `lsm/sb_kern_mount`: a new file system instance (a `mount`, or the
    /// new mount API's `fsconfig(FSCONFIG_CMD_CREATE)`) refused.
    pub const LSM_SB_KERN_MOUNT: u16 = 36;
    /// `lsm/unix_stream_connect`: a connect to a path unix stream socket.
    pub const LSM_UNIX_CONNECT: u16 = 37;
    /// `lsm/unix_may_send`: a datagram to a path unix socket.
    pub const LSM_UNIX_SEND: u16 = 38;
    /// `lsm/socket_sendmsg`: a datagram with a destination, or a TCP Fast
    /// Open connect, where the cgroup hooks are not in use.
    pub const LSM_SOCKET_SENDMSG: u16 = 39;
    pub const MAX: u16 = 39;
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
    /// cgroup lifecycle (mkdir, rmdir): informational.
    pub const CGROUP: u8 = 9;
    /// Raw and ICMP sockets (packets built by the workload, outside every
    /// address rule), decided when the socket is made.
    pub const NET_RAW: u8 = 10;
    /// Unix sockets bound to a path: stream connects and datagrams, by the
    /// socket's path (BPF LSM only).
    pub const NET_UNIX: u8 = 11;
    /// Entries of the per-class default arrays: every class above has one
    /// (`PROCESS` and `CGROUP` unused).
    pub const COUNT: usize = 12;
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
    /// The syscall class defaults to deny: a syscall number that has no
    /// slot in the bitmaps (an unknown number or ABI) is denied too.
    pub const SYSCALL_DEFAULT_DENY: u32 = 1 << 6;
    /// The `net.raw` decision (the class's entry in the defaults) is only
    /// monitored.
    pub const NET_RAW_MONITOR: u32 = 1 << 7;
    /// Path guard ([`crate::rule_id::PATH_GUARD`]): the record has path
    /// rules and no rule allows `mount`, so no mount is made or moved
    /// (`lsm/sb_mount`, `lsm/sb_kern_mount`, `lsm/move_mount`).
    pub const GUARD_MOUNT: u32 = 1 << 8;
    /// Path guard: no rule allows `pivot_root` (`lsm/sb_pivotroot`).
    pub const GUARD_PIVOT_ROOT: u32 = 1 << 9;
    /// Path guard: no `chroot` (`lsm/path_chroot`); a policy cannot allow
    /// it together with path rules.
    pub const GUARD_CHROOT: u32 = 1 << 10;
    /// Path guard: no rule allows `unshare`, so no user namespace is made,
    /// by any call (`lsm/userns_create`).
    pub const GUARD_USERNS: u32 = 1 << 11;
    /// The slot has inode entries (exact-file denies by device and inode):
    /// the LSM path hooks look the opened file up by identity first. Set
    /// by the map writer, which makes them.
    pub const INODE_RULES: u32 = 1 << 12;
    /// The record has `net.unix` rules or a `net.unix` default other than
    /// allow: the unix socket hooks decide.
    pub const UNIX_RULES: u32 = 1 << 13;
}

/// Calls that change what a path means to the caller (a mount over a
/// directory, a new root, a user namespace in which the caller may mount).
/// For a record with path rules the LSM hooks refuse them (built-in rule
/// [`rule_id::PATH_GUARD`]) unless a syscall rule allows the call by name.
pub mod path_guard {
    /// One guarded call.
    #[derive(Clone, Copy, Debug)]
    pub struct Guard {
        /// The record flag that turns the guard on.
        pub flag: u32,
        /// The syscall whose explicit allow turns it off.
        pub syscall: &'static str,
        /// The hooks that refuse it.
        pub hooks: &'static str,
        /// Whether a policy may allow it at all while it has path rules.
        pub allowable: bool,
    }

    pub const GUARDS: [Guard; 4] = [
        Guard {
            flag: super::flags::GUARD_MOUNT,
            syscall: "mount",
            hooks: "lsm/sb_mount, lsm/sb_kern_mount, lsm/move_mount",
            allowable: true,
        },
        Guard {
            flag: super::flags::GUARD_PIVOT_ROOT,
            syscall: "pivot_root",
            hooks: "lsm/sb_pivotroot",
            allowable: true,
        },
        Guard {
            flag: super::flags::GUARD_CHROOT,
            syscall: "chroot",
            hooks: "lsm/path_chroot",
            allowable: false,
        },
        Guard {
            flag: super::flags::GUARD_USERNS,
            syscall: "unshare",
            hooks: "lsm/userns_create",
            allowable: true,
        },
    ];
}

/// Syscalls whose effect an LSM hook can refuse before it happens: under
/// BPF LSM a syscall rule denying one of them is enforced there (`EPERM`,
/// nothing done, or nothing of the [`Scope`] named), not only by the kill
/// at syscall entry.
pub mod syscall_effect {
    /// `(x86_64 number, i386 number)` of each syscall the hooks refuse.
    pub const MOUNT: (u32, u32) = (165, 21);
    pub const UMOUNT2: (u32, u32) = (166, 52);
    pub const PIVOT_ROOT: (u32, u32) = (155, 217);
    pub const MOVE_MOUNT: (u32, u32) = (429, 429);
    pub const CHROOT: (u32, u32) = (161, 61);
    pub const INIT_MODULE: (u32, u32) = (175, 128);
    pub const FINIT_MODULE: (u32, u32) = (313, 350);
    pub const KEXEC_LOAD: (u32, u32) = (246, 283);
    pub const PTRACE: (u32, u32) = (101, 26);
    pub const BPF: (u32, u32) = (321, 357);
    pub const PERF_EVENT_OPEN: (u32, u32) = (298, 336);
    pub const UNSHARE: (u32, u32) = (272, 310);
    pub const CLONE: (u32, u32) = (56, 120);
    pub const CLONE3: (u32, u32) = (435, 435);
    /// `kexec_file_load` has no i386 number: one no table has stands in.
    pub const KEXEC_FILE_LOAD: (u32, u32) = (320, u32::MAX);

    /// What of a call's effect its hook refuses.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Scope {
        /// All of it: the call does nothing.
        Whole,
        /// Only this part; the rest happens before the kill at syscall
        /// entry.
        Part(&'static str),
    }

    /// A syscall and the LSM hook that refuses its effect.
    #[derive(Clone, Copy, Debug)]
    pub struct Hooked {
        pub nr: (u32, u32),
        pub hook: &'static str,
        pub scope: Scope,
        /// The hook exists only from this kernel version on (the agent
        /// attaches it where the running kernel has it).
        pub since: Option<&'static str>,
    }

    const fn whole(nr: (u32, u32), hook: &'static str) -> Hooked {
        Hooked { nr, hook, scope: Scope::Whole, since: None }
    }

    /// The hook of user-namespace creation, which not every kernel has.
    pub const USERNS_HOOK: &str = "lsm/userns_create";
    const USERNS: Scope = Scope::Part("user-namespace creation");

    const MODULE_REQUEST_HOOK: &str = "lsm/kernel_module_request";
    const MODULE_REQUEST: Scope = Scope::Part("modules loaded on the caller's behalf");

    /// Each syscall above with the hook that refuses it.
    pub const HOOKED: [Hooked; 17] = [
        whole(MOUNT, "lsm/sb_mount"),
        whole(UMOUNT2, "lsm/sb_umount"),
        whole(PIVOT_ROOT, "lsm/sb_pivotroot"),
        whole(MOVE_MOUNT, "lsm/move_mount"),
        whole(CHROOT, "lsm/path_chroot"),
        whole(INIT_MODULE, "lsm/kernel_load_data"),
        whole(FINIT_MODULE, "lsm/kernel_read_file"),
        whole(KEXEC_LOAD, "lsm/kernel_load_data"),
        whole(KEXEC_FILE_LOAD, "lsm/kernel_read_file"),
        whole(PTRACE, "lsm/ptrace_access_check, lsm/ptrace_traceme"),
        whole(BPF, "lsm/bpf"),
        whole(PERF_EVENT_OPEN, "lsm/perf_event_open"),
        Hooked { nr: UNSHARE, hook: USERNS_HOOK, scope: USERNS, since: Some("6.1") },
        Hooked { nr: CLONE, hook: USERNS_HOOK, scope: USERNS, since: Some("6.1") },
        Hooked { nr: CLONE3, hook: USERNS_HOOK, scope: USERNS, since: Some("6.1") },
        // A module the kernel would load for a workload's call (a socket
        // of an unloaded family, say) is refused where the workload may not
        // load one itself.
        Hooked { nr: FINIT_MODULE, hook: MODULE_REQUEST_HOOK, scope: MODULE_REQUEST, since: None },
        Hooked { nr: INIT_MODULE, hook: MODULE_REQUEST_HOOK, scope: MODULE_REQUEST, since: None },
    ];

    /// The hooks that refuse x86_64 syscall `nr`'s effect (or part of it)
    /// before it happens.
    pub fn hooks_of(nr: u32) -> impl Iterator<Item = &'static Hooked> {
        HOOKED.iter().filter(move |h| h.nr.0 == nr)
    }
}

/// Address families in [`NetRule::family`] and [`Event::family`].
pub mod family {
    pub const ANY: u8 = 0;
    pub const INET: u8 = 4;
    pub const INET6: u8 = 6;
    /// `AF_PACKET` (link layer), in `net.raw` events only.
    pub const PACKET: u8 = 17;
}

/// Rule ids with a fixed meaning. Compiled rules start at [`rule_id::FIRST`].
pub mod rule_id {
    /// No rule: the decision came from the record's default for the class.
    pub const DEFAULT: u32 = 0;
    /// Built-in self-protection of the agent.
    pub const SELF_PROTECT: u32 = 1;
    /// Built-in containment: a governed task may not leave its governed
    /// subtree, nor write cgroup files outside it.
    pub const CONTAINMENT: u32 = 2;
    /// Built-in: a path that could not be resolved (too deep, too long for
    /// the walk, unreadable) is denied where the record has path rules for
    /// the class, since no rule can be known not to apply.
    pub const UNRESOLVED_PATH: u32 = 3;
    /// Built-in: a workload with path rules may not mount, pivot its root,
    /// `chroot` or make a user namespace unless its policy allows the call
    /// by name (see [`crate::path_guard`]).
    pub const PATH_GUARD: u32 = 4;
    /// Built-in: an anonymous executable (memfd, deleted file) is denied
    /// where exec is allowed by default but a rule denies some program, and
    /// no rule names `<anonymous>`: a copy of a denied program must not run
    /// from memory.
    pub const ANONYMOUS_EXEC: u32 = 5;
    pub const FIRST: u32 = 16;
}
