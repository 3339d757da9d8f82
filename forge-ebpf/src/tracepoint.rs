//! Tracepoints: the syscall deny list (kill on deny), process tracking, and
//! the exec-deny fallback for kernels without BPF LSM.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel_str_bytes, generated::bpf_send_signal},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use forge_common::{flags, hook, mode, op, verdict};

use crate::{
    decide::{decide_path, governing, scratch},
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
    let nr: u64 = ctx.arg(1);
    let Some((monitor, rule_id)) = record.syscall_denied(nr as usize) else {
        return 0;
    };
    let m = if monitor || record.mode == mode::MONITOR { mode::MONITOR } else { mode::ENFORCE };
    let mut r = Report::of(&g, hook::SYS_ENTER, op::SYSCALL, verdict::KILL, m, rule_id);
    r.nr = nr as u32;
    report(Some(record), &r, None);
    if m == mode::ENFORCE {
        // SAFETY: the helper signals the current task; it has no memory arguments.
        unsafe { bpf_send_signal(SIGKILL) };
    }
    0
}

/// Offsets in the `sched_process_exec` record (stable since 4.x; the
/// `filename` field is a `__data_loc`: offset in the low 16 bits).
const EXEC_FILENAME_LOC: usize = 8;

/// `sched/sched_process_exec`: report the exec of a governed process, and
/// kill it when exec is decided here (no LSM) and its path is denied.
#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let Some(g) = governing() else {
        return 0;
    };
    let record = g.record;
    let Some(s) = scratch() else { return 0 };
    s.path_len = 0;
    // SAFETY: reads inside the tracepoint record through the context helpers.
    if let Ok(loc) = unsafe { ctx.read_at::<u32>(EXEC_FILENAME_LOC) } {
        let off = (loc & 0xffff) as usize;
        let src = (ctx.as_ptr() as *const u8).wrapping_add(off);
        // SAFETY: bpf_probe_read_kernel_str_bytes bounds the copy by the
        // destination and checks the source address.
        let dst = unsafe { &mut *core::ptr::addr_of_mut!(s.key.data.path) };
        // SAFETY: as above.
        if let Ok(bytes) = unsafe { bpf_probe_read_kernel_str_bytes(src, dst) } {
            s.path_len = bytes.len() as u32 + 1;
        }
    }
    let ppid = kernel::current_ppid();
    if record.flags & flags::EXEC_VIA_TRACEPOINT != 0 && record.flags & flags::HAS_PATH_RULES != 0 {
        let d = decide_path(record, g.slot, op::EXEC, s);
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

/// `sched/sched_process_exit`: forget a process in `TASKS` and `DOOMED`
/// when its last thread exits; report the exit of a governed process (once,
/// for its thread-group leader).
#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
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
