//! BPF-LSM hooks: exec and file opens by resolved path, socket connect/bind,
//! containment (no cgroup writes outside the governed subtree, so no moves
//! out of it, by `cgroup.procs` or `clone3(CLONE_INTO_CGROUP)`), and
//! self-protection of the agent.
//!
//! Each hook returns a non-zero `retval` from an earlier BPF LSM program
//! unchanged, 0 to allow and `-EPERM` to deny.

use core::ffi::c_void;

use aya_ebpf::{helpers::bpf_probe_read_kernel, macros::lsm, programs::LsmContext};
use forge_common::{
    COMPAT_SYSCALL_BIT, PolicyRecord, family, flags, hook, mode, op, rule_id, syscall_effect as effect,
    verdict,
};

use crate::{
    decide::{
        Decision, Governing, decide_anonymous, decide_inode, decide_net, decide_path, governing, is_raw_inet,
        raw_decision, resolve_path, scratch, stays, unresolved_path,
    },
    emit::{Report, report},
    kernel::{self, magic},
    maps::CONFIG,
};

const EPERM: i32 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// `FMODE_READ` and `FMODE_WRITE` from `include/linux/fs.h`.
const FMODE_READ: u32 = 1;
const FMODE_WRITE: u32 = 2;

/// Reads an LSM hook argument and the previous program's return value.
macro_rules! prior {
    ($ctx:expr, $n:expr) => {{
        let ret: i32 = $ctx.arg($n);
        if ret != 0 {
            return ret;
        }
    }};
}

/// Applies a decision: reports anything but a plain allow, and turns an
/// enforced deny into `-EPERM`.
#[inline(always)]
fn apply(
    g: &Governing,
    h: u16,
    op_class: u8,
    d: Decision,
    fill: impl FnOnce(&mut Report),
    with_path: bool,
) -> i32 {
    if d.allows() {
        return 0;
    }
    let mut r = Report::of(g, h, op_class, verdict::DENY, d.mode, d.rule_id);
    fill(&mut r);
    let path = if with_path { scratch().map(|s| &*s) } else { None };
    report(Some(g.record), &r, path);
    if d.enforced() { -EPERM } else { 0 }
}

#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    prior!(ctx, 1);
    let Some(g) = governing() else {
        return 0;
    };
    if g.record.flags & flags::HAS_PATH_RULES == 0 {
        return 0;
    }
    let bprm: *const u8 = ctx.arg(0);
    // SAFETY: `bprm` is the hook's `struct linux_binprm *`; the offset comes
    // from the running kernel's BTF, so this is a direct, verifier-checked
    // load of `bprm->file`.
    let file: *const u8 =
        unsafe { core::ptr::read_volatile(bprm.add(kernel::bprm_file()) as *const *const u8) };
    let Some(s) = scratch() else { return 0 };
    // The file itself (an exact-file deny by identity), then whether it is
    // anonymous (no path a rule could name), then its path, which also goes
    // into the event.
    let same_file = decide_inode(g.record, g.slot, op::EXEC, s, file);
    let anonymous = if kernel::file_unlinked(file) == Some(true) {
        Some(decide_anonymous(g.record, g.slot, s))
    } else {
        None
    };
    // SAFETY: `file->f_path` at its BTF offset: a `struct path *`.
    let path = unsafe { file.add(kernel::file_f_path()) } as *mut c_void;
    let resolved = resolve_path(s, path).is_some();
    let d = match (same_file, anonymous) {
        (Some(d), _) | (None, Some(d)) => d,
        (None, None) if resolved => decide_path(g.record, g.slot, op::EXEC, s),
        (None, None) => unresolved_path(g.record),
    };
    apply(&g, hook::LSM_BPRM_CHECK, op::EXEC, d, |_| {}, true)
}

#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    prior!(ctx, 1);
    let Some(g) = governing() else {
        return 0;
    };
    if g.record.flags & flags::HAS_PATH_RULES == 0 {
        return 0;
    }
    let file: *const u8 = ctx.arg(0);
    // SAFETY: probe read of `file->f_mode` at its BTF offset.
    let fmode: u32 =
        unsafe { bpf_probe_read_kernel(file.add(kernel::file_f_mode()) as *const u32) }.unwrap_or(0);
    let Some(s) = scratch() else { return 0 };
    // The file itself first (an exact-file deny by device and inode), then
    // its path, which also goes into the event.
    let read_id =
        if fmode & FMODE_READ != 0 { decide_inode(g.record, g.slot, op::FILE_READ, s, file) } else { None };
    let write_id =
        if fmode & FMODE_WRITE != 0 { decide_inode(g.record, g.slot, op::FILE_WRITE, s, file) } else { None };
    // SAFETY: `file->f_path` at its BTF offset: a `struct path *`.
    let path = unsafe { file.add(kernel::file_f_path()) } as *mut c_void;
    let resolved = resolve_path(s, path).is_some();
    if fmode & FMODE_READ != 0 {
        let d = match read_id {
            Some(d) => d,
            None if resolved => decide_path(g.record, g.slot, op::FILE_READ, s),
            None => unresolved_path(g.record),
        };
        let ret = apply(&g, hook::LSM_FILE_OPEN, op::FILE_READ, d, |_| {}, true);
        if ret != 0 {
            return ret;
        }
    }
    if fmode & FMODE_WRITE != 0 {
        let d = match write_id {
            Some(d) => d,
            None if resolved => decide_path(g.record, g.slot, op::FILE_WRITE, s),
            None => unresolved_path(g.record),
        };
        return apply(&g, hook::LSM_FILE_OPEN, op::FILE_WRITE, d, |_| {}, true);
    }
    0
}

/// A unix socket reached by path (`other`, a `struct sock *`): decided as
/// `net.unix` by the path the socket is bound to, resolved in the kernel
/// (the dentry walk: `bpf_d_path` is not allowed at these hooks). Abstract
/// and unbound sockets have no path and are not decided.
#[inline(always)]
fn unix_peer(h: u16, other: *const u8) -> i32 {
    let Some(g) = governing() else {
        return 0;
    };
    if g.record.flags & flags::UNIX_RULES == 0 {
        return 0;
    }
    let Some(path) = kernel::unix_sock_path(other) else {
        return 0;
    };
    let Some(s) = scratch() else { return 0 };
    let d = if kernel::file_path(path, s) {
        decide_path(g.record, g.slot, op::NET_UNIX, s)
    } else {
        unresolved_path(g.record)
    };
    apply(&g, h, op::NET_UNIX, d, |_| {}, true)
}

#[lsm(hook = "unix_stream_connect")]
pub fn unix_stream_connect(ctx: LsmContext) -> i32 {
    prior!(ctx, 3);
    let other: *const u8 = ctx.arg(1);
    unix_peer(hook::LSM_UNIX_CONNECT, other)
}

#[lsm(hook = "unix_may_send")]
pub fn unix_may_send(ctx: LsmContext) -> i32 {
    prior!(ctx, 2);
    let other: *const u8 = ctx.arg(1);
    let Some(sk) = kernel::socket_sock(other) else {
        return 0;
    };
    unix_peer(hook::LSM_UNIX_SEND, sk)
}

/// Reads `(family, ip words, port)` from a `struct sockaddr *`.
#[inline(always)]
fn sockaddr(addr: *const u8) -> Option<(u8, [u32; 4], u16)> {
    // SAFETY: every read goes through bpf_probe_read_kernel; the layouts of
    // sockaddr_in and sockaddr_in6 are the stable UAPI ones.
    unsafe {
        let fam: u16 = bpf_probe_read_kernel(addr as *const u16).ok()?;
        let port = u16::from_be(bpf_probe_read_kernel(addr.add(2) as *const u16).ok()?);
        match fam {
            AF_INET => {
                let ip: u32 = bpf_probe_read_kernel(addr.add(4) as *const u32).ok()?;
                Some((family::INET, [ip, 0, 0, 0], port))
            }
            AF_INET6 => {
                let ip: [u32; 4] = bpf_probe_read_kernel(addr.add(8) as *const [u32; 4]).ok()?;
                Some((family::INET6, ip, port))
            }
            _ => None,
        }
    }
}

/// A connect or bind where the cgroup hooks are not in use; `class(sock)`
/// is the class it is decided as (asked only for a governed caller).
#[inline(always)]
fn socket_op(ctx: &LsmContext, h: u16, class: impl FnOnce(*const u8) -> u8) -> i32 {
    let Some(g) = governing() else {
        return 0;
    };
    if g.record.flags & flags::NET_VIA_LSM == 0 {
        return 0;
    }
    let sock: *const u8 = ctx.arg(0);
    let op_class = class(sock);
    let addr: *const u8 = ctx.arg(1);
    let Some((fam, ip, port)) = sockaddr(addr) else {
        return 0;
    };
    let d = decide_net(g.record, op_class, fam, &ip, port);
    apply(
        &g,
        h,
        op_class,
        d,
        |r| {
            r.family = fam;
            r.addr = ip;
            r.port = port;
        },
        false,
    )
}

const AF_PACKET: i32 = 17;

/// A socket being made by a task: the `net.raw` class for packet sockets
/// (`AF_PACKET`, link layer, which no cgroup hook sees) and, where the
/// cgroup hooks are not in use for the workload, for raw and ICMP inet
/// sockets (elsewhere `cgroup/sock_create` decides those).
#[lsm(hook = "socket_create")]
pub fn socket_create(ctx: LsmContext) -> i32 {
    prior!(ctx, 4);
    let kern: i32 = ctx.arg(3);
    if kern != 0 {
        return 0;
    }
    let fam: i32 = ctx.arg(0);
    let kind: i32 = ctx.arg(1);
    let protocol: i32 = ctx.arg(2);
    if fam != AF_PACKET && !is_raw_inet(fam as u32, kind as u32, protocol as u32) {
        return 0;
    }
    let Some(g) = governing() else {
        return 0;
    };
    let record = g.record;
    if fam != AF_PACKET && record.flags & flags::NET_VIA_LSM == 0 {
        return 0;
    }
    let d = raw_decision(record);
    let fam = match fam {
        AF_PACKET => family::PACKET,
        f if f == i32::from(AF_INET) => family::INET,
        _ => family::INET6,
    };
    apply(
        &g,
        hook::LSM_SOCKET_CREATE,
        op::NET_RAW,
        d,
        |r| {
            r.family = fam;
            r.nr = kind as u32;
            r.port = protocol as u16;
        },
        false,
    )
}

/// `SOCK_DGRAM`, and `MSG_FASTOPEN` in a `msghdr`'s flags.
const SOCK_DGRAM: u16 = 2;
const SOCK_STREAM: u16 = 1;
const MSG_FASTOPEN: u32 = 0x2000_0000;

/// A connect. A datagram socket's connect is decided as `net.sendto`: it
/// stands for the sends that follow, which name no destination (as at the
/// cgroup hooks).
#[lsm(hook = "socket_connect")]
pub fn socket_connect(ctx: LsmContext) -> i32 {
    prior!(ctx, 3);
    socket_op(&ctx, hook::LSM_SOCKET_CONNECT, |sock| {
        if kernel::socket_type(sock) == Some(SOCK_DGRAM) { op::NET_SENDTO } else { op::NET_CONNECT }
    })
}

/// A message with a destination, where the cgroup hooks are not in use: a
/// datagram is decided as `net.sendto`; a TCP Fast Open send
/// (`MSG_FASTOPEN`), which connects without `connect()`, as `net.connect`.
/// Messages without a destination were decided at the socket's connect.
#[lsm(hook = "socket_sendmsg")]
pub fn socket_sendmsg(ctx: LsmContext) -> i32 {
    prior!(ctx, 3);
    let Some(g) = governing() else {
        return 0;
    };
    if g.record.flags & flags::NET_VIA_LSM == 0 {
        return 0;
    }
    let sock: *const u8 = ctx.arg(0);
    let msg: *const u8 = ctx.arg(1);
    let Some((name, msg_flags)) = kernel::msghdr_dest(msg) else {
        return 0;
    };
    let class = match kernel::socket_type(sock) {
        Some(SOCK_DGRAM) => op::NET_SENDTO,
        Some(SOCK_STREAM) if msg_flags & MSG_FASTOPEN != 0 => op::NET_CONNECT,
        _ => return 0,
    };
    let Some((fam, ip, port)) = sockaddr(name) else {
        return 0;
    };
    let d = decide_net(g.record, class, fam, &ip, port);
    apply(
        &g,
        hook::LSM_SOCKET_SENDMSG,
        class,
        d,
        |r| {
            r.family = fam;
            r.addr = ip;
            r.port = port;
        },
        false,
    )
}

/// `listen()` on an inet socket that has no port yet takes an ephemeral
/// one (autobind) without any bind hook running: decided here as
/// `net.bind` of the socket's address and port 0, as `bind(addr, 0)` would
/// be, whichever backend decides binds.
#[lsm(hook = "socket_listen")]
pub fn socket_listen(ctx: LsmContext) -> i32 {
    prior!(ctx, 2);
    let sock: *const u8 = ctx.arg(0);
    let Some(g) = governing() else {
        return 0;
    };
    let Some((fam, ip)) = kernel::unbound_inet_socket(sock) else {
        return 0;
    };
    let fam = if fam == AF_INET { family::INET } else { family::INET6 };
    let d = decide_net(g.record, op::NET_BIND, fam, &ip, 0);
    apply(
        &g,
        hook::LSM_SOCKET_LISTEN,
        op::NET_BIND,
        d,
        |r| {
            r.family = fam;
            r.addr = ip;
        },
        false,
    )
}

#[lsm(hook = "socket_bind")]
pub fn socket_bind(ctx: LsmContext) -> i32 {
    prior!(ctx, 3);
    socket_op(&ctx, hook::LSM_SOCKET_BIND, |_| op::NET_BIND)
}

/// The governing record when it asks for self-protection.
#[inline(always)]
fn protected() -> Option<Governing> {
    governing().filter(|g| g.record.flags & flags::SELF_PROTECT != 0)
}

/// A built-in rule (`rule_id::SELF_PROTECT` or `CONTAINMENT`): reports and
/// (unless the record is in monitor mode) denies.
#[inline(always)]
fn protect(g: &Governing, h: u16, rule: u32, fill: impl FnOnce(&mut Report)) -> i32 {
    let d = Decision {
        action: verdict::DENY,
        mode: if g.record.mode == mode::MONITOR { mode::MONITOR } else { mode::ENFORCE },
        rule_id: rule,
    };
    apply(g, h, op::PROTECT, d, fill, false)
}

/// The agent's tgid, 0 when no agent registered itself.
#[inline(always)]
fn agent_tgid() -> u32 {
    CONFIG.get(0).map_or(0, |c| c.agent_tgid)
}

#[lsm(hook = "bpf")]
pub fn bpf(ctx: LsmContext) -> i32 {
    prior!(ctx, 3);
    let ret = syscall_effect(hook::LSM_BPF, effect::BPF);
    if ret != 0 {
        return ret;
    }
    let Some(g) = protected() else {
        return 0;
    };
    let cmd: i32 = ctx.arg(0);
    protect(&g, hook::LSM_BPF, rule_id::SELF_PROTECT, |r| r.nr = cmd as u32)
}

/// `PTRACE_MODE_ATTACH`: an attach, or access as strong as one (another
/// process's memory); reads of `/proc/PID` files ask for less.
const PTRACE_MODE_ATTACH: u32 = 0x02;

#[lsm(hook = "ptrace_access_check")]
pub fn ptrace_access_check(ctx: LsmContext) -> i32 {
    let ret = agent_targeted(&ctx, hook::LSM_PTRACE, 2);
    if ret != 0 {
        return ret;
    }
    let mode: u32 = ctx.arg(1);
    if mode & PTRACE_MODE_ATTACH == 0 {
        return 0;
    }
    syscall_effect(hook::LSM_PTRACE, effect::PTRACE)
}

#[lsm(hook = "task_kill")]
pub fn task_kill(ctx: LsmContext) -> i32 {
    prior!(ctx, 4);
    let Some(g) = protected() else {
        return 0;
    };
    let sig: i32 = ctx.arg(2);
    if sig == 0 {
        return 0;
    }
    let task: *const u8 = ctx.arg(0);
    let target = kernel::tgid_of(task);
    let agent = agent_tgid();
    if agent == 0 || target != agent {
        return 0;
    }
    protect(&g, hook::LSM_TASK_KILL, rule_id::SELF_PROTECT, |r| {
        r.nr = sig as u32;
        r.target_pid = target;
    })
}

/// `MAY_WRITE` in an `inode_permission` mask.
const MAY_WRITE: i32 = 2;

/// The files of its own governed cgroup a governed task may write: moving
/// tasks between the cgroups of its subtree and enabling controllers for
/// them. Its limits, `cgroup.freeze`, `cgroup.kill` and the rest are the
/// operator's.
const OWN_WRITABLE: [&[u8]; 3] = [b"cgroup.procs", b"cgroup.threads", b"cgroup.subtree_control"];

/// Whether the NUL-less `name` is one of [`OWN_WRITABLE`].
#[inline(always)]
fn own_writable(name: &[u8; 24], len: usize) -> bool {
    let mut i = 0;
    while i < OWN_WRITABLE.len() {
        let want = OWN_WRITABLE[i];
        if len == want.len() {
            let mut j = 0;
            let mut same = true;
            while j < want.len() && j < name.len() {
                if name[j] != want[j] {
                    same = false;
                }
                j += 1;
            }
            if same {
                return true;
            }
        }
        i += 1;
    }
    false
}

/// Containment and self-protection at the permission check every write to a
/// file system object passes (opening for write, creating or removing an
/// entry, and the kernel's own check on `cgroup.procs` when a task is moved
/// or forked into another cgroup). A governed task may write cgroup v2 files
/// only inside its governed subtree, not inside a governed subtree nested in
/// it (see [`OWN_WRITABLE`] for the governed cgroup's own files); with
/// self-protection it may not change bpffs (the agent's pins) or cgroup v1
/// hierarchies at all, nor the agent's `/proc/<pid>` files
/// (`oom_score_adj`, ...).
#[lsm(hook = "inode_permission")]
pub fn inode_permission(ctx: LsmContext) -> i32 {
    prior!(ctx, 2);
    let mask: i32 = ctx.arg(1);
    if mask & MAY_WRITE == 0 {
        return 0;
    }
    let Some(g) = governing() else {
        return 0;
    };
    let inode: *const u8 = ctx.arg(0);
    let fill = |r: &mut Report| r.nr = mask as u32;
    let Some(fs) = kernel::inode_fs_magic(inode) else {
        // Unreadable: the most restrictive answer.
        return protect(&g, hook::LSM_INODE_PERMISSION, rule_id::CONTAINMENT, fill);
    };
    match fs {
        magic::CGROUP2 => {
            let Some(entry) = kernel::kernfs_entry(inode) else {
                return protect(&g, hook::LSM_INODE_PERMISSION, rule_id::CONTAINMENT, fill);
            };
            let target = kernel::cgroup_id(entry.cgroup).unwrap_or(0);
            let inside = stays(entry.cgroup, g.id, g.level);
            let allowed = inside
                && (entry.is_dir || target != g.id || {
                    let mut name = [0u8; 24];
                    let len = kernel::kernfs_name(entry.kn, &mut name);
                    own_writable(&name, len)
                });
            if allowed {
                return 0;
            }
            protect(&g, hook::LSM_INODE_PERMISSION, rule_id::CONTAINMENT, |r| {
                r.nr = mask as u32;
                r.target_cgroup_id = target;
            })
        }
        magic::BPF_FS | magic::CGROUP if g.record.flags & flags::SELF_PROTECT != 0 => {
            protect(&g, hook::LSM_INODE_PERMISSION, rule_id::SELF_PROTECT, fill)
        }
        magic::PROC if g.record.flags & flags::SELF_PROTECT != 0 => {
            let agent = agent_tgid();
            match kernel::proc_inode_tgid(inode) {
                Some(t) if agent != 0 && t == agent => {
                    protect(&g, hook::LSM_INODE_PERMISSION, rule_id::SELF_PROTECT, |r| {
                        r.nr = mask as u32;
                        r.target_pid = agent;
                    })
                }
                _ => 0,
            }
        }
        _ => 0,
    }
}

/// Self-protection for hooks whose first argument is the target task:
/// governed tasks may not ptrace the agent or change its resource limits,
/// nice value, scheduling policy or affinity, or I/O priority (routes that
/// kill or starve it without a signal). The target is checked first: most
/// calls on the host are not about the agent and need no policy lookup.
#[inline(always)]
fn agent_targeted(ctx: &LsmContext, h: u16, prior_arg: usize) -> i32 {
    let ret: i32 = ctx.arg(prior_arg);
    if ret != 0 {
        return ret;
    }
    let task: *const u8 = ctx.arg(0);
    let target = kernel::tgid_of(task);
    let agent = agent_tgid();
    if agent == 0 || target != agent {
        return 0;
    }
    let Some(g) = protected() else {
        return 0;
    };
    protect(&g, h, rule_id::SELF_PROTECT, |r| r.target_pid = target)
}

#[lsm(hook = "task_setrlimit")]
pub fn task_setrlimit(ctx: LsmContext) -> i32 {
    agent_targeted(&ctx, hook::LSM_TASK_CONTROL, 3)
}

#[lsm(hook = "task_setnice")]
pub fn task_setnice(ctx: LsmContext) -> i32 {
    agent_targeted(&ctx, hook::LSM_TASK_CONTROL, 2)
}

#[lsm(hook = "task_setscheduler")]
pub fn task_setscheduler(ctx: LsmContext) -> i32 {
    agent_targeted(&ctx, hook::LSM_TASK_CONTROL, 1)
}

#[lsm(hook = "task_setioprio")]
pub fn task_setioprio(ctx: LsmContext) -> i32 {
    agent_targeted(&ctx, hook::LSM_TASK_CONTROL, 2)
}

/// Self-protection: a governed task in the agent's own mount namespace
/// (a host service, not a container with its own) may not mount, move a
/// mount or pivot the root there: a mount over the cgroup hierarchy, bpffs
/// or the API socket's directory would change what the agent sees.
#[inline(always)]
fn mount_op(g: &Governing) -> i32 {
    if g.record.flags & flags::SELF_PROTECT == 0 {
        return 0;
    }
    let agent_ns = CONFIG.get(0).map_or(0, |c| c.agent_mnt_ns);
    // SAFETY: the helper returns the current task; reads go through probes.
    let current = unsafe { aya_ebpf::helpers::bpf_get_current_task() } as *const u8;
    let ns = kernel::mnt_ns(current);
    if agent_ns == 0 || (ns != 0 && ns != agent_ns) {
        return 0;
    }
    protect(g, hook::LSM_MOUNT, rule_id::SELF_PROTECT, |r| r.nr = ns)
}

/// A syscall rule enforced at the hook of the syscall's effect, before it
/// happens: `EPERM` when the caller's record denies the syscall (its
/// x86_64 number or, in a 32-bit call, its i386 number). The kill at syscall entry still follows; this
/// makes sure the call did nothing first.
#[inline(always)]
fn syscall_effect(h: u16, nrs: (u32, u32)) -> i32 {
    let Some(g) = governing() else {
        return 0;
    };
    effect_in(&g, h, |_, compat| Some(u64::from(pick(nrs, compat))))
}

/// The number of `(x86_64, i386)` in the caller's ABI.
#[inline(always)]
fn pick((x64, i386): (u32, u32), compat: bool) -> u32 {
    if compat { i386 } else { x64 }
}

/// [`syscall_effect`] for `g`'s record and the syscall `nr(record,
/// compat)` answers (`None`: no decision).
#[inline(always)]
fn effect_in(g: &Governing, h: u16, nr: impl FnOnce(&PolicyRecord, bool) -> Option<u64>) -> i32 {
    if g.record.flags & flags::HAS_SYSCALL_RULES == 0 {
        return 0;
    }
    let compat = kernel::current_in_compat_syscall().unwrap_or(false);
    let Some(nr) = nr(g.record, compat) else { return 0 };
    let Some((monitor, rule_id)) = g.record.syscall_decision(compat, nr) else {
        return 0;
    };
    let m = if monitor || g.record.mode == mode::MONITOR { mode::MONITOR } else { mode::ENFORCE };
    let d = Decision { action: verdict::DENY, mode: m, rule_id };
    let nr = nr as u32;
    apply(g, h, op::SYSCALL, d, |r| r.nr = if compat { nr | COMPAT_SYSCALL_BIT } else { nr }, false)
}

/// The path guard: a record with path rules refuses the calls that change
/// what a path means (see [`forge_common::path_guard`]) where no rule
/// allows them (`flag` set), as the built-in rule `PATH_GUARD`. `nr(compat)`
/// is the call reported.
#[inline(always)]
fn guard_in(g: &Governing, h: u16, flag: u32, nr: impl FnOnce(bool) -> u32) -> i32 {
    if g.record.flags & flag == 0 {
        return 0;
    }
    let compat = kernel::current_in_compat_syscall().unwrap_or(false);
    let nr = nr(compat);
    let m = if g.record.mode == mode::MONITOR { mode::MONITOR } else { mode::ENFORCE };
    let d = Decision { action: verdict::DENY, mode: m, rule_id: rule_id::PATH_GUARD };
    apply(g, h, op::SYSCALL, d, |r| r.nr = if compat { nr | COMPAT_SYSCALL_BIT } else { nr }, false)
}

/// A syscall rule at its effect's hook, then the path guard `flag` for the
/// same call: one lookup of the governing record for both.
#[inline(always)]
fn effect_or_guard(g: &Governing, h: u16, nrs: (u32, u32), flag: u32) -> i32 {
    let ret = effect_in(g, h, |_, compat| Some(u64::from(pick(nrs, compat))));
    if ret != 0 {
        return ret;
    }
    guard_in(g, h, flag, |compat| pick(nrs, compat))
}

/// `ptrace(PTRACE_TRACEME)`: the caller would make its parent its tracer.
#[lsm(hook = "ptrace_traceme")]
pub fn ptrace_traceme(ctx: LsmContext) -> i32 {
    prior!(ctx, 1);
    syscall_effect(hook::LSM_PTRACE_TRACEME, effect::PTRACE)
}

/// Parameters of the `perf_event_open` hook on this kernel, set by the
/// loader: `(attr, type)` in 6.1, `(type)` in 6.12.
#[unsafe(no_mangle)]
static PERF_EVENT_OPEN_PARAMS: u32 = 2;

#[lsm(hook = "perf_event_open")]
pub fn perf_event_open(ctx: LsmContext) -> i32 {
    // SAFETY: reading a static; volatile so the compiler keeps the load of
    // the value the loader sets (the verifier knows it and follows one arm).
    if unsafe { core::ptr::read_volatile(&PERF_EVENT_OPEN_PARAMS) } == 1 {
        prior!(ctx, 1);
    } else {
        prior!(ctx, 2);
    }
    syscall_effect(hook::LSM_PERF_EVENT, effect::PERF_EVENT_OPEN)
}

/// A user namespace about to be made (`unshare`, `clone`, `clone3` with
/// `CLONE_NEWUSER`; kernels from 6.1): refused when the call making it is
/// denied, whichever it is.
#[lsm(hook = "userns_create")]
pub fn userns_create(ctx: LsmContext) -> i32 {
    prior!(ctx, 1);
    let Some(g) = governing() else {
        return 0;
    };
    let ret = effect_in(&g, hook::LSM_USERNS, |_, _| kernel::current_syscall_nr());
    if ret != 0 {
        return ret;
    }
    guard_in(&g, hook::LSM_USERNS, flags::GUARD_USERNS, |_| kernel::current_syscall_nr().unwrap_or(0) as u32)
}

/// A module the kernel is about to load for the current task (a socket of
/// an unloaded family, a file system type, a device): refused where the
/// task may not load modules itself.
#[lsm(hook = "kernel_module_request")]
pub fn kernel_module_request(ctx: LsmContext) -> i32 {
    prior!(ctx, 1);
    let Some(g) = governing() else {
        return 0;
    };
    effect_in(&g, hook::LSM_MODULE_REQUEST, |record, compat| {
        let finit = u64::from(pick(effect::FINIT_MODULE, compat));
        // The decision of finit_module where it is denied, else init_module's.
        Some(if record.syscall_decision(compat, finit).is_some() {
            finit
        } else {
            u64::from(pick(effect::INIT_MODULE, compat))
        })
    })
}

#[lsm(hook = "sb_mount")]
pub fn sb_mount(ctx: LsmContext) -> i32 {
    prior!(ctx, 5);
    let Some(g) = governing() else {
        return 0;
    };
    let ret = effect_or_guard(&g, hook::LSM_MOUNT, effect::MOUNT, flags::GUARD_MOUNT);
    if ret != 0 {
        return ret;
    }
    mount_op(&g)
}

/// A new file system instance, made for `mount(2)` (after `lsm/sb_mount`)
/// or by the new mount API (`fsconfig(FSCONFIG_CMD_CREATE)`, which no
/// `sb_mount` sees): refused where `mount` is denied, or under the path
/// guard. Reported as `mount`: the hook cannot tell the calls apart on
/// every kernel, and a `mount` deny covers both.
#[lsm(hook = "sb_kern_mount")]
pub fn sb_kern_mount(ctx: LsmContext) -> i32 {
    prior!(ctx, 1);
    let Some(g) = governing() else {
        return 0;
    };
    effect_or_guard(&g, hook::LSM_SB_KERN_MOUNT, effect::MOUNT, flags::GUARD_MOUNT)
}

#[lsm(hook = "move_mount")]
pub fn move_mount(ctx: LsmContext) -> i32 {
    prior!(ctx, 2);
    let Some(g) = governing() else {
        return 0;
    };
    let ret = effect_or_guard(&g, hook::LSM_MOUNT, effect::MOVE_MOUNT, flags::GUARD_MOUNT);
    if ret != 0 {
        return ret;
    }
    mount_op(&g)
}

#[lsm(hook = "sb_pivotroot")]
pub fn sb_pivotroot(ctx: LsmContext) -> i32 {
    prior!(ctx, 2);
    let Some(g) = governing() else {
        return 0;
    };
    let ret = effect_or_guard(&g, hook::LSM_MOUNT, effect::PIVOT_ROOT, flags::GUARD_PIVOT_ROOT);
    if ret != 0 {
        return ret;
    }
    mount_op(&g)
}

#[lsm(hook = "path_chroot")]
pub fn path_chroot(ctx: LsmContext) -> i32 {
    prior!(ctx, 1);
    let Some(g) = governing() else {
        return 0;
    };
    effect_or_guard(&g, hook::LSM_PATH_CHROOT, effect::CHROOT, flags::GUARD_CHROOT)
}

/// `kernel_read_file_id` and `kernel_load_data_id` values
/// (`include/linux/kernel_read_file.h`): the module and kexec image reads.
const READING_MODULE: u32 = 2;
const READING_KEXEC_IMAGE: u32 = 3;

/// `finit_module` and `kexec_file_load` read their file here.
#[lsm(hook = "kernel_read_file")]
pub fn kernel_read_file(ctx: LsmContext) -> i32 {
    prior!(ctx, 3);
    let id: u32 = ctx.arg(1);
    match id {
        READING_MODULE => syscall_effect(hook::LSM_KERNEL_LOAD, effect::FINIT_MODULE),
        READING_KEXEC_IMAGE => syscall_effect(hook::LSM_KERNEL_LOAD, effect::KEXEC_FILE_LOAD),
        _ => 0,
    }
}

/// `init_module` and `kexec_load` hand their image over here.
#[lsm(hook = "kernel_load_data")]
pub fn kernel_load_data(ctx: LsmContext) -> i32 {
    prior!(ctx, 2);
    let id: u32 = ctx.arg(0);
    match id {
        READING_MODULE => syscall_effect(hook::LSM_KERNEL_LOAD, effect::INIT_MODULE),
        READING_KEXEC_IMAGE => syscall_effect(hook::LSM_KERNEL_LOAD, effect::KEXEC_LOAD),
        _ => 0,
    }
}

/// Self-protection: governed tasks may not unmount bpffs (dropping the
/// agent's pins) or a cgroup hierarchy.
#[lsm(hook = "sb_umount")]
pub fn sb_umount(ctx: LsmContext) -> i32 {
    prior!(ctx, 2);
    let ret = syscall_effect(hook::LSM_SB_UMOUNT, effect::UMOUNT2);
    if ret != 0 {
        return ret;
    }
    let Some(g) = protected() else {
        return 0;
    };
    let mnt: *const u8 = ctx.arg(0);
    match kernel::mount_fs_magic(mnt).unwrap_or(0) {
        magic::BPF_FS | magic::CGROUP2 | magic::CGROUP => {
            protect(&g, hook::LSM_SB_UMOUNT, rule_id::SELF_PROTECT, |_| {})
        }
        _ => 0,
    }
}

/// Self-protection: no SIGIO or SIGURG reaches the agent through a file's
/// owner (`F_SETOWN`, `F_SETSIG`), whoever set it: the agent uses none, and
/// the task that triggers the signal is not the one that aimed it.
#[lsm(hook = "file_send_sigiotask")]
pub fn file_send_sigiotask(ctx: LsmContext) -> i32 {
    prior!(ctx, 3);
    let task: *const u8 = ctx.arg(0);
    let agent = agent_tgid();
    if agent == 0 || kernel::tgid_of(task) != agent {
        return 0;
    }
    let sig: i32 = ctx.arg(2);
    let mut r = Report::new(
        0,
        hook::LSM_FILE_SIGIOTASK,
        op::PROTECT,
        verdict::DENY,
        mode::ENFORCE,
        rule_id::SELF_PROTECT,
    );
    r.nr = sig as u32;
    r.target_pid = agent;
    report(None, &r, None);
    -EPERM
}
