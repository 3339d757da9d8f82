//! The eBPF object built from `forge-ebpf` by this crate's build script.

/// The object's bytes, aligned for the ELF parser.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/forge-ebpf.o"));

/// LSM programs and the hooks they attach to: network, containment and
/// self-protection (the `lsm` backend).
pub const LSM_PROGRAMS: [&str; 27] = [
    "socket_connect",
    "socket_bind",
    "bpf",
    "ptrace_access_check",
    "task_kill",
    "inode_permission",
    "sb_umount",
    "file_send_sigiotask",
    "task_setrlimit",
    "task_setnice",
    "task_setscheduler",
    "task_setioprio",
    "sb_mount",
    "move_mount",
    "sb_pivotroot",
    "path_chroot",
    "kernel_read_file",
    "kernel_load_data",
    "perf_event_open",
    "ptrace_traceme",
    "kernel_module_request",
    "socket_create",
    "socket_listen",
    "sb_kern_mount",
    "unix_stream_connect",
    "unix_may_send",
    "socket_sendmsg",
];

/// LSM programs on hooks that not every kernel has (`userns_create`: from
/// 6.1), attached with the `lsm` backend where the running kernel has the
/// hook.
pub const LSM_OPTIONAL_PROGRAMS: [&str; 1] = ["userns_create"];

/// LSM programs that resolve paths with `bpf_d_path` (the `lsm-paths`
/// backend: exec and file rules). Kernels before 5.11 refuse that helper in
/// LSM programs; there exec is decided by the tracepoint fallback and file
/// rules are reported unenforceable.
pub const LSM_PATH_PROGRAMS: [&str; 2] = ["bprm_check_security", "file_open"];

/// cgroup programs, attached per governed cgroup: the sock_addr hooks and
/// [`SOCK_CREATE`] (a `cgroup/sock` program, for the `net.raw` class).
pub const CGROUP_PROGRAMS: [&str; 7] =
    ["connect4", "connect6", "bind4", "bind6", "sendmsg4", "sendmsg6", SOCK_CREATE];

/// The `cgroup/sock_create` program among [`CGROUP_PROGRAMS`].
pub const SOCK_CREATE: &str = "sock_create";

/// BTF tracepoints (program = tracepoint name), attached globally with the
/// tracepoint backend: process tracking and the exec fallback, containment
/// (fork, attach) and the cgroup lifecycle. BTF tracepoints' links can be
/// pinned on every supported kernel (classic tracepoints' perf links only
/// from 5.15).
pub const BTF_TRACEPOINTS: [&str; 6] = [
    "sched_process_exec",
    "sched_process_exit",
    "sched_process_fork",
    "cgroup_attach_task",
    "cgroup_mkdir",
    "cgroup_rmdir",
];

/// The raw syscall tracepoint, attached only while some governed cgroup has
/// syscall rules (it taxes every syscall on the host while attached).
pub const SYS_ENTER: &str = "sys_enter";
