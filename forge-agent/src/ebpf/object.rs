//! The eBPF object built from `forge-ebpf` by this crate's build script.

/// The object's bytes, aligned for the ELF parser.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/forge-ebpf.o"));

/// LSM programs and the hooks they attach to.
pub const LSM_PROGRAMS: [&str; 17] = [
    "bprm_check_security",
    "file_open",
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
];

/// cgroup sock_addr programs, attached per governed cgroup.
pub const CGROUP_PROGRAMS: [&str; 6] = ["connect4", "connect6", "bind4", "bind6", "sendmsg4", "sendmsg6"];

/// Classic tracepoints `(program, category, name)`, attached globally.
pub const TRACEPOINTS: [(&str, &str, &str); 2] = [
    ("sched_process_exec", "sched", "sched_process_exec"),
    ("sched_process_exit", "sched", "sched_process_exit"),
];

/// BTF tracepoints (program = tracepoint name), attached globally with the
/// tracepoint backend: containment (fork, attach) and the cgroup lifecycle.
pub const BTF_TRACEPOINTS: [&str; 4] =
    ["sched_process_fork", "cgroup_attach_task", "cgroup_mkdir", "cgroup_rmdir"];

/// The raw syscall tracepoint, attached only while some governed cgroup has
/// syscall rules (it taxes every syscall on the host while attached).
pub const SYS_ENTER: &str = "sys_enter";
