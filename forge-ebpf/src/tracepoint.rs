//! Tracepoints: the syscall deny list (kill on deny), process tracking, and
//! the exec-deny fallback for kernels without BPF LSM.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel_str_bytes, generated::bpf_send_signal},
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use forge_common::{COMPAT_SYSCALL_BIT, flags, hook, mode, op, verdict};

use crate::{
    decide::{Decision, decide_anonymous, decide_inode, decide_path, governing, scratch, unresolved_path},
    emit::{Report, report},
    kernel,
    maps::{DOOMED, TASKS},
};

const SIGKILL: u32 = 9;

/// `raw_syscalls/sys_enter(struct pt_regs *regs, long id)`.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    let Some(g) = governing() else {
        return 0;
    };
    let record = g.record;
    if record.flags & flags::HAS_SYSCALL_RULES == 0 {
        return 0;
    }
    let id: u64 = ctx.arg(1);
    // The same number means another syscall in each ABI: an i386 call is
    // looked up in the i386 table (x32 numbers carry their bit).
    // Should the ABI be unreadable, either table's deny decides.
    let abi = kernel::current_in_compat_syscall();
    let compat = abi.unwrap_or(false);
    let decision = match abi {
        Some(compat) => record.syscall_decision(compat, id),
        None => record.syscall_decision(false, id).or_else(|| record.syscall_decision(true, id)),
    };
    let Some((monitor, rule_id)) = decision else {
        return 0;
    };
    let m = if monitor || record.mode == mode::MONITOR { mode::MONITOR } else { mode::ENFORCE };
    let mut r = Report::of(&g, hook::SYS_ENTER, op::SYSCALL, verdict::KILL, m, rule_id);
    r.nr = if compat { id as u32 | COMPAT_SYSCALL_BIT } else { id as u32 };
    report(Some(record), &r, None);
    if m == mode::ENFORCE {
        // SAFETY: the helper signals the current task; it has no memory arguments.
        unsafe { bpf_send_signal(SIGKILL) };
    }
    0
}

/// `sched_process_exec(p, old_pid, bprm)` (a BTF tracepoint: its link can
/// be pinned on every supported kernel): report the exec of a governed
/// process, and kill it when exec is decided here (no LSM path hooks) and
/// the program is denied: by its identity (an exact-file deny, whatever
/// link or mount reaches it), as `<anonymous>` (a memfd, a deleted file),
/// or by its path. The kill lands before the new program's first
/// instruction.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    let Some(g) = governing() else {
        return 0;
    };
    let record = g.record;
    let Some(s) = scratch() else { return 0 };
    let bprm: *const u8 = ctx.arg(2);
    let file = kernel::read_ptr(bprm, kernel::bprm_file());
    let decides = record.flags & flags::EXEC_VIA_TRACEPOINT != 0 && record.flags & flags::HAS_PATH_RULES != 0;
    // The file itself, then whether it is anonymous, first: both use the
    // scratch key, which the path then fills (for the event too).
    let early = match file {
        Some(f) if decides => match decide_inode(record, g.slot, op::EXEC, s, f) {
            Some(d) => d.packed(),
            None if kernel::file_unlinked(f) == Some(true) => decide_anonymous(record, g.slot, s).packed(),
            None => 0,
        },
        _ => 0,
    };
    // The file the kernel loaded, resolved to an absolute path (not the
    // string given to execve: `./x`, `..`, symlinks and fexecve decide the
    // same as the path they reach).
    let resolved = file.is_some_and(|file| kernel::file_path(file.wrapping_add(kernel::file_f_path()), s));
    if !resolved {
        // For the event only: the name execve was given.
        s.path_len = 0;
        s.truncated = 0;
        if let Some(src) = kernel::read_ptr(bprm, kernel::bprm_filename()) {
            // SAFETY: bpf_probe_read_kernel_str_bytes bounds the copy by the
            // destination and checks the source address.
            let dst = unsafe { &mut *core::ptr::addr_of_mut!(s.key.data.path) };
            // SAFETY: as above.
            if let Ok(bytes) = unsafe { bpf_probe_read_kernel_str_bytes(src, dst) } {
                s.path_len = bytes.len() as u32 + 1;
            }
        }
    }
    let ppid = kernel::current_ppid();
    if decides {
        let d = match Decision::unpacked(early) {
            Some(d) => d,
            None if resolved => decide_path(record, g.slot, op::EXEC, s),
            None => unresolved_path(record),
        };
        if !d.allows() {
            let mut r = Report::of(&g, hook::EXEC_TRACEPOINT, op::EXEC, verdict::KILL, d.mode, d.rule_id);
            r.ppid = ppid;
            report(Some(record), &r, Some(s));
            if d.enforced() {
                // SAFETY: signals the current task; no memory arguments.
                unsafe { bpf_send_signal(SIGKILL) };
                return 0;
            }
        }
    }
    let mut r = Report::of(&g, hook::PROC_EXEC, op::PROCESS, verdict::INFO, record.mode, 0);
    r.ppid = ppid;
    report(Some(record), &r, Some(s));
    0
}

/// `sched_process_exit(p)` (BTF tracepoint): forget a process in `TASKS`
/// and `DOOMED` when its last thread exits; report the exit of a governed
/// process (once, for its thread-group leader).
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(_ctx: BtfTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: the helper returns the current task; reads go through probes.
    let current = unsafe { aya_ebpf::helpers::bpf_get_current_task() } as *const u8;
    if kernel::group_dead(current) {
        let _ = TASKS.remove(&tgid);
        let _ = DOOMED.remove(&tgid);
    }
    if pid_tgid as u32 != tgid {
        return 0;
    }
    let Some(g) = governing() else {
        return 0;
    };
    let mut r = Report::of(&g, hook::PROC_EXIT, op::PROCESS, verdict::INFO, g.record.mode, 0);
    r.ppid = kernel::current_ppid();
    r.nr = kernel::current_exit_code();
    report(Some(g.record), &r, None);
    0
}
