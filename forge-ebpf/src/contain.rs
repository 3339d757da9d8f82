//! Containment where no LSM decides (and behind it where one does): BTF
//! tracepoints that see every fork into another cgroup and every move
//! between cgroups, keep `TASKS` (which governed subtree each process
//! belongs to), and kill a governed process that left its subtree before it
//! runs on. And the cgroup lifecycle the agent follows (mkdir, rmdir).
//!
//! A kill lands before the escaped task runs another instruction of its own:
//! the child of a fork has not run yet, and a task that moved itself is
//! still in the `write` that moved it. Killing a task other than the caller
//! needs the `bpf_send_signal_task` kfunc (kernels from 6.13); without it
//! the caller (the one who made the escape) is killed and the event asks the
//! agent to kill the escaped task ([`forge_common::escape::LEFT_TO_AGENT`]).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel_str_bytes},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use forge_common::{Governor, escape, hook, mode, op, rule_id, verdict};

use crate::{
    decide::{Governing, governing, governor, nearest_governed, scratch, within},
    emit::{Report, report},
    kernel,
    maps::{CONFIG, TASKS},
};

const SIGKILL: u32 = 9;

/// Records that the process `tgid` now belongs to the governed cgroup `id`
/// (0: to none).
#[inline(always)]
fn mark(tgid: u32, id: u64) {
    if id != 0 {
        let _ = TASKS.insert(&tgid, &id, 0);
    } else {
        let _ = TASKS.remove(&tgid);
    }
}

/// The agent's tgid (0 before an agent registered).
#[inline(always)]
fn agent_tgid() -> u32 {
    CONFIG.get(0).map_or(0, |c| c.agent_tgid)
}

/// Kills the escaped task `task` (tgid `tgid`), or, where the kernel cannot
/// signal another task, the current one; reports the breach of `g`'s
/// subtree into the cgroup `dst_id`.
#[inline(always)]
fn breach(g: &Governing, h: u16, task: *const u8, tgid: u32, dst_id: u64) {
    let monitor = g.record.mode == mode::MONITOR;
    let me = (bpf_get_current_pid_tgid() >> 32) as u32;
    let outcome = if monitor {
        0
    } else if me == tgid {
        // SAFETY: signals the current task; no memory arguments.
        unsafe { aya_ebpf::helpers::generated::bpf_send_signal(SIGKILL) };
        escape::KILLED
    } else if kernel::signal_task(task, SIGKILL) >= 0 {
        escape::KILLED
    } else {
        // SAFETY: signals the current task; no memory arguments.
        unsafe { aya_ebpf::helpers::generated::bpf_send_signal(SIGKILL) };
        escape::LEFT_TO_AGENT
    };
    let m = if monitor { mode::MONITOR } else { mode::ENFORCE };
    let mut r = Report::of(g, h, op::PROTECT, verdict::KILL, m, rule_id::CONTAINMENT);
    r.target_pid = tgid;
    r.target_cgroup_id = dst_id;
    r.nr = outcome;
    report(Some(g.record), &r, None);
}

/// `sched_process_fork(parent, child)`, in the parent: the child of a
/// governed process belongs to its parent's subtree; a child forked into a
/// cgroup outside it (`clone3(CLONE_INTO_CGROUP)`) is killed before it runs.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    let Some(g) = governing() else {
        return 0;
    };
    let child: *const u8 = ctx.arg(1);
    let tgid = kernel::tgid_of(child);
    let Some(cgrp) = kernel::task_cgroup(child) else {
        mark(tgid, g.id);
        return 0;
    };
    let dst = kernel::cgroup_id(cgrp).unwrap_or(0);
    if dst == g.actual {
        mark(tgid, g.id);
        return 0;
    }
    if within(cgrp, g.id, g.level) {
        let nearest = nearest_governed(cgrp);
        mark(tgid, if nearest != 0 { nearest } else { g.id });
        return 0;
    }
    breach(&g, hook::ESCAPE_FORK, child, tgid, dst);
    0
}

/// `cgroup_attach_task(dst_cgrp, path, task, threadgroup)`, in the task that
/// wrote `cgroup.procs` or `cgroup.threads`, after the move. A governed
/// writer may move tasks only within its subtree (what it moves out is
/// killed); a process that belonged to a governed subtree and moved itself
/// out is killed. Moves by anyone else
/// (the operator, systemd, the agent) are the host's business: `TASKS`
/// follows them.
#[btf_tracepoint(function = "cgroup_attach_task")]
pub fn cgroup_attach_task(ctx: BtfTracePointContext) -> i32 {
    let dst: *const u8 = ctx.arg(0);
    let task: *const u8 = ctx.arg(2);
    let tgid = kernel::tgid_of(task);
    let me = (bpf_get_current_pid_tgid() >> 32) as u32;
    let dst_id = kernel::cgroup_id(dst).unwrap_or(0);
    let now = nearest_governed(dst);
    // Who decided the move: the writer as it was before the move. A process
    // that moved itself is now in `dst`; what it belonged to is in `TASKS`.
    let writer = if me == tgid {
        // SAFETY: a plain u64 written whole.
        let before = unsafe { TASKS.get(&tgid) }.copied().unwrap_or(0);
        governor(before).map(|gov| (before, gov))
    } else {
        governing().map(|g| (g.id, Governor { slot: g.slot, level: g.level }))
    };
    let Some((id, gov)) = writer else {
        mark(tgid, now);
        return 0;
    };
    if within(dst, id, gov.level) {
        mark(tgid, now);
        return 0;
    }
    let Some(record) = crate::maps::POLICIES.get(gov.slot) else {
        mark(tgid, now);
        return 0;
    };
    // SAFETY: the helper has no preconditions.
    let actual = unsafe { aya_ebpf::helpers::bpf_get_current_cgroup_id() };
    let g = Governing { id, actual, slot: gov.slot, level: gov.level, record };
    if tgid == agent_tgid() {
        // The agent moved by a governed task: never killed; the writer is.
        // SAFETY: signals the current task; no memory arguments.
        unsafe { aya_ebpf::helpers::generated::bpf_send_signal(SIGKILL) };
        let mut r = Report::of(
            &g,
            hook::ESCAPE_ATTACH,
            op::PROTECT,
            verdict::KILL,
            mode::ENFORCE,
            rule_id::SELF_PROTECT,
        );
        r.target_pid = tgid;
        r.target_cgroup_id = dst_id;
        r.nr = escape::KILLED;
        report(Some(record), &r, None);
        return 0;
    }
    mark(tgid, now);
    // One signal only: this tracepoint runs with interrupts off, where the
    // kernel defers a hook's signal to a per-CPU work item that a second
    // signal would find busy. The escaped task is the one that matters; the
    // writer stays governed, and its breach is reported.
    breach(&g, hook::ESCAPE_ATTACH, task, tgid, dst_id);
    0
}

/// Reports a cgroup v2 directory made or removed (`hook`), with its id,
/// level and path, and the governed cgroup it lies under, if any.
#[inline(always)]
fn lifecycle(ctx: &BtfTracePointContext, h: u16) {
    let cgrp: *const u8 = ctx.arg(0);
    let path: *const u8 = ctx.arg(1);
    // Only the v2 hierarchy: the one every task's default cgroup is in.
    // SAFETY: the helper returns the current task; reads go through probes.
    let current = unsafe { bpf_get_current_task() } as *const u8;
    let v2 = kernel::task_cgroup(current).and_then(kernel::cgroup_root);
    if v2.is_none() || kernel::cgroup_root(cgrp) != v2 {
        return;
    }
    let Some(s) = scratch() else { return };
    s.path_len = 0;
    // SAFETY: the helper bounds the copy by the destination and checks the source.
    let dst = unsafe { &mut *core::ptr::addr_of_mut!(s.key.data.path) };
    // SAFETY: as above.
    if let Ok(bytes) = unsafe { bpf_probe_read_kernel_str_bytes(path, dst) } {
        s.path_len = bytes.len() as u32 + 1;
    }
    let under = nearest_governed(cgrp);
    let mut r = Report::new(under, h, op::CGROUP, verdict::INFO, mode::ENFORCE, 0);
    r.target_cgroup_id = kernel::cgroup_id(cgrp).unwrap_or(0);
    r.nr = kernel::cgroup_level(cgrp).unwrap_or(0);
    report(None, &r, Some(s));
}

/// `cgroup_mkdir(cgrp, path)`: the agent governs a re-created or selected
/// cgroup as soon as it reads this.
#[btf_tracepoint(function = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: BtfTracePointContext) -> i32 {
    lifecycle(&ctx, hook::CGROUP_MKDIR);
    0
}

/// `cgroup_rmdir(cgrp, path)`.
#[btf_tracepoint(function = "cgroup_rmdir")]
pub fn cgroup_rmdir(ctx: BtfTracePointContext) -> i32 {
    lifecycle(&ctx, hook::CGROUP_RMDIR);
    0
}
