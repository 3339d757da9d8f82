//! BPF-LSM hooks: exec and file opens by resolved path, socket connect/bind,
//! and self-protection of the agent.
//!
//! Each hook returns a non-zero `retval` from an earlier BPF LSM program
//! unchanged, 0 to allow and `-EPERM` to deny.

use core::ffi::c_void;

use aya_ebpf::{helpers::bpf_probe_read_kernel, macros::lsm, programs::LsmContext};
use forge_common::{family, flags, hook, mode, op, rule_id, verdict};

use crate::{
    decide::{Decision, decide_net, decide_path, governing, resolve_path, scratch},
    emit::{Report, report},
    kernel,
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
    record: &forge_common::PolicyRecord,
    cgroup_id: u64,
    h: u16,
    op_class: u8,
    d: Decision,
    fill: impl FnOnce(&mut Report),
    with_path: bool,
) -> i32 {
    if d.allows() {
        return 0;
    }
    let mut r = Report::new(cgroup_id, h, op_class, verdict::DENY, d.mode, d.rule_id);
    fill(&mut r);
    let path = if with_path { scratch().map(|s| &*s) } else { None };
    report(Some(record), &r, path);
    if d.enforced() { -EPERM } else { 0 }
}

#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    prior!(ctx, 1);
    let Some((cgroup_id, slot, record)) = governing() else {
        return 0;
    };
    if record.flags & flags::HAS_PATH_RULES == 0 {
        return 0;
    }
    let bprm: *const u8 = ctx.arg(0);
    // SAFETY: `bprm` is the hook's `struct linux_binprm *`; the offset comes
    // from the running kernel's BTF, so this is a direct, verifier-checked
    // load of `bprm->file`.
    let file: *const u8 =
        unsafe { core::ptr::read_volatile(bprm.add(kernel::bprm_file()) as *const *const u8) };
    let Some(s) = scratch() else { return 0 };
    // SAFETY: `file->f_path` at its BTF offset: a `struct path *`.
    let path = unsafe { file.add(kernel::file_f_path()) } as *mut c_void;
    resolve_path(s, path);
    let d = decide_path(record, slot, op::EXEC, s);
    apply(record, cgroup_id, hook::LSM_BPRM_CHECK, op::EXEC, d, |_| {}, true)
}

#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    prior!(ctx, 1);
    let Some((cgroup_id, slot, record)) = governing() else {
        return 0;
    };
    if record.flags & flags::HAS_PATH_RULES == 0 {
        return 0;
    }
    let file: *const u8 = ctx.arg(0);
    // SAFETY: probe read of `file->f_mode` at its BTF offset.
    let fmode: u32 =
        unsafe { bpf_probe_read_kernel(file.add(kernel::file_f_mode()) as *const u32) }.unwrap_or(0);
    let Some(s) = scratch() else { return 0 };
    // SAFETY: `file->f_path` at its BTF offset: a `struct path *`.
    let path = unsafe { file.add(kernel::file_f_path()) } as *mut c_void;
    resolve_path(s, path);
    if fmode & FMODE_READ != 0 {
        let d = decide_path(record, slot, op::FILE_READ, s);
        let ret = apply(record, cgroup_id, hook::LSM_FILE_OPEN, op::FILE_READ, d, |_| {}, true);
        if ret != 0 {
            return ret;
        }
    }
    if fmode & FMODE_WRITE != 0 {
        let d = decide_path(record, slot, op::FILE_WRITE, s);
        return apply(record, cgroup_id, hook::LSM_FILE_OPEN, op::FILE_WRITE, d, |_| {}, true);
    }
    0
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

#[inline(always)]
fn socket_op(ctx: &LsmContext, h: u16, op_class: u8) -> i32 {
    let Some((cgroup_id, _slot, record)) = governing() else {
        return 0;
    };
    if record.flags & flags::NET_VIA_LSM == 0 {
        return 0;
    }
    let addr: *const u8 = ctx.arg(1);
    let Some((fam, ip, port)) = sockaddr(addr) else {
        return 0;
    };
    let d = decide_net(record, op_class, fam, &ip, port);
    apply(
        record,
        cgroup_id,
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

#[lsm(hook = "socket_connect")]
pub fn socket_connect(ctx: LsmContext) -> i32 {
    prior!(ctx, 3);
    socket_op(&ctx, hook::LSM_SOCKET_CONNECT, op::NET_CONNECT)
}

#[lsm(hook = "socket_bind")]
pub fn socket_bind(ctx: LsmContext) -> i32 {
    prior!(ctx, 3);
    socket_op(&ctx, hook::LSM_SOCKET_BIND, op::NET_BIND)
}

/// The governing record when it asks for self-protection.
#[inline(always)]
fn protected() -> Option<(u64, &'static forge_common::PolicyRecord)> {
    let (cgroup_id, _slot, record) = governing()?;
    if record.flags & flags::SELF_PROTECT == 0 {
        return None;
    }
    Some((cgroup_id, record))
}

/// Self-protection: reports and (in enforce mode) denies.
#[inline(always)]
fn protect(
    cgroup_id: u64,
    record: &forge_common::PolicyRecord,
    h: u16,
    fill: impl FnOnce(&mut Report),
) -> i32 {
    let d = Decision {
        action: verdict::DENY,
        mode: if record.mode == mode::MONITOR { mode::MONITOR } else { mode::ENFORCE },
        rule_id: rule_id::SELF_PROTECT,
    };
    apply(record, cgroup_id, h, op::PROTECT, d, fill, false)
}

/// The agent's tgid, 0 when no agent registered itself.
#[inline(always)]
fn agent_tgid() -> u32 {
    CONFIG.get(0).map_or(0, |c| c.agent_tgid)
}

#[lsm(hook = "bpf")]
pub fn bpf(ctx: LsmContext) -> i32 {
    prior!(ctx, 3);
    let Some((cgroup_id, record)) = protected() else {
        return 0;
    };
    let cmd: i32 = ctx.arg(0);
    protect(cgroup_id, record, hook::LSM_BPF, |r| r.nr = cmd as u32)
}

#[lsm(hook = "ptrace_access_check")]
pub fn ptrace_access_check(ctx: LsmContext) -> i32 {
    prior!(ctx, 2);
    let Some((cgroup_id, record)) = protected() else {
        return 0;
    };
    let child: *const u8 = ctx.arg(0);
    let target = kernel::tgid_of(child);
    let agent = agent_tgid();
    if agent == 0 || target != agent {
        return 0;
    }
    protect(cgroup_id, record, hook::LSM_PTRACE, |r| r.target_pid = target)
}

#[lsm(hook = "task_kill")]
pub fn task_kill(ctx: LsmContext) -> i32 {
    prior!(ctx, 4);
    let Some((cgroup_id, record)) = protected() else {
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
    protect(cgroup_id, record, hook::LSM_TASK_KILL, |r| {
        r.nr = sig as u32;
        r.target_pid = target;
    })
}
