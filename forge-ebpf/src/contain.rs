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
//! the caller (the one who made the escape) is killed, and the escaped
//! process is *doomed* (`DOOMED`): every process it forks is doomed at the
//! fork, here, and the agent kills them all when it reads the event or at
//! its next tick ([`forge_common::escape::LEFT_TO_AGENT`]).
//!
//! `TASKS` and `DOOMED` entries go when the whole process is gone (its last
//! thread exits, `tracepoint::sched_process_exit`), not when its first
//! thread does.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_probe_read_kernel_str_bytes,
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use forge_common::{Governor, escape, hook, mode, op, rule_id, verdict};

use crate::{
    decide::{Governing, governing, governor, nearest_governed, scratch, stays_near},
    emit::{Report, report},
    kernel,
    maps::{CONFIG, DOOMED, POLICIES, TASKS},
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

/// Marks process `tgid` for the agent to kill (the kernel could not), with
/// every process it forks from now on.
#[inline(always)]
fn doom(tgid: u32) {
    let _ = DOOMED.insert(&tgid, &1u8, 0);
}

/// The agent's tgid (0 before an agent registered).
#[inline(always)]
fn agent_tgid() -> u32 {
    CONFIG.get(0).map_or(0, |c| c.agent_tgid)
}

fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// Kills process `tgid` (its task at `task`) before it runs on: the
/// current one by `bpf_send_signal`, another by the kfunc. Where that is
/// not possible it is doomed (the agent kills it and all it forks) and the
/// current task, which made the escape, is killed instead. Returns the
/// [`escape`] outcome.
#[inline(always)]
fn kill(task: *const u8, tgid: u32) -> u32 {
    if tgid == current_tgid() {
        if kernel::signal_current(SIGKILL) >= 0 {
            return escape::KILLED;
        }
    } else if kernel::signal_task(task, SIGKILL) >= 0 {
        return escape::KILLED;
    } else {
        let _ = kernel::signal_current(SIGKILL);
    }
    doom(tgid);
    escape::LEFT_TO_AGENT
}

/// Kills the escaped process `tgid` (see [`kill`]) unless `g`'s record is in
/// monitor mode, and reports the breach of `g`'s subtree into `dst_id`.
#[inline(always)]
fn breach(g: &Governing, h: u16, task: *const u8, tgid: u32, dst_id: u64) {
    let monitor = g.record.mode == mode::MONITOR;
    let outcome = if monitor { 0 } else { kill(task, tgid) };
    let m = if monitor { mode::MONITOR } else { mode::ENFORCE };
    let mut r = Report::of(g, h, op::PROTECT, verdict::KILL, m, rule_id::CONTAINMENT);
    r.target_pid = tgid;
    r.target_cgroup_id = dst_id;
    r.nr = outcome;
    report(Some(g.record), &r, None);
}

/// `sched_process_fork(parent, child)`, in the parent, for every fork and
/// thread on the host. The child of a governed process belongs to its
/// parent's subtree; one forked into a cgroup outside it
/// (`clone3(CLONE_INTO_CGROUP)`) is killed before it runs. A child an
/// ungoverned parent places straight into a governed subtree (a container
/// runtime's `clone3`) belongs to that subtree. A doomed process's children
/// are doomed.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    let child: *const u8 = ctx.arg(1);
    let tgid = kernel::tgid_of(child);
    let me = current_tgid();
    // SAFETY: a plain u8 written whole.
    if tgid != me && unsafe { DOOMED.get(&me) }.is_some() {
        doom(tgid);
        if kernel::signal_task(child, SIGKILL) < 0 {
            // Wake the agent now rather than at its next tick. Not counted
            // (no governed cgroup is known here); the escape that doomed the
            // parent was.
            let mut r = Report::new(0, hook::ESCAPE_FORK, op::PROTECT, verdict::INFO, mode::ENFORCE, 0);
            r.target_pid = tgid;
            r.nr = escape::LEFT_TO_AGENT;
            report(None, &r, None);
        }
        return 0;
    }
    let cgrp = kernel::task_cgroup(child);
    let dst = cgrp.and_then(kernel::cgroup_id).unwrap_or(0);
    // SAFETY: the helper has no preconditions.
    let here = unsafe { bpf_get_current_cgroup_id() };
    // The child's nearest governed cgroup, walked once and only when it was
    // placed elsewhere than its parent's cgroup (not in a plain fork).
    // (black_box: computed here, once; the compiler would otherwise copy
    // the walk into each branch that reads it, and the verifier walk each.)
    let near = core::hint::black_box(match cgrp {
        Some(c) if dst != here => nearest_governed(c),
        _ => 0,
    });
    let Some(g) = governing() else {
        if near != 0 {
            mark(tgid, near);
        }
        return 0;
    };
    match cgrp {
        Some(_) if dst == g.actual => mark(tgid, g.id),
        Some(c) if stays_near(c, g.id, g.level, near) => mark(tgid, g.id),
        // Elsewhere, or unreadable: the most restrictive answer.
        _ => breach(&g, hook::ESCAPE_FORK, child, tgid, dst),
    }
    0
}

/// `cgroup_attach_task(dst_cgrp, path, task, threadgroup)`, in the task that
/// wrote `cgroup.procs` or `cgroup.threads`, after the move.
///
/// Moves decided by a governed writer (itself governed, or a process that
/// moved itself: `TASKS` says what it belonged to, since its cgroup now
/// says nothing): a process that belonged to a governed subtree and is now
/// outside it is killed before it runs on; a process that belonged to none
/// (another workload's, the agent) is not the writer's to kill, but the
/// writer, which tried, is. Moves by anyone else (the operator, systemd,
/// the agent) are the host's business: `TASKS` follows them.
#[btf_tracepoint(function = "cgroup_attach_task")]
pub fn cgroup_attach_task(ctx: BtfTracePointContext) -> i32 {
    let dst: *const u8 = ctx.arg(0);
    let task: *const u8 = ctx.arg(2);
    let tgid = kernel::tgid_of(task);
    let me = current_tgid();
    let dst_id = kernel::cgroup_id(dst).unwrap_or(0);
    let now = nearest_governed(dst);
    // SAFETY: a plain u64 written whole.
    let before = unsafe { TASKS.get(&tgid) }.copied().unwrap_or(0);
    let moved = governor(before).map(|gov| (before, gov));
    let writer = if me == tgid {
        moved
    } else {
        governing().map(|g| (g.id, Governor { slot: g.slot, level: g.level }))
    };
    let Some((wid, wgov)) = writer else {
        mark(tgid, now);
        return 0;
    };
    // One signal only below: this tracepoint runs with interrupts off, where
    // the kernel defers a hook's signal to a per-CPU work item that a
    // second signal would find busy.
    match moved {
        Some((mid, mgov)) if stays_near(dst, mid, mgov.level, now) => mark(tgid, now),
        Some((mid, mgov)) => {
            let Some(record) = POLICIES.get(mgov.slot) else {
                mark(tgid, now);
                return 0;
            };
            // SAFETY: the helper has no preconditions.
            let actual = unsafe { bpf_get_current_cgroup_id() };
            let g = Governing { id: mid, actual, slot: mgov.slot, level: mgov.level, record };
            mark(tgid, now);
            breach(&g, hook::ESCAPE_ATTACH, task, tgid, dst_id);
        }
        None if stays_near(dst, wid, wgov.level, now) => mark(tgid, now),
        None => {
            // A governed writer moved a process that is not its own (and
            // not governed): its move stands, the writer goes.
            mark(tgid, now);
            let Some(record) = POLICIES.get(wgov.slot) else { return 0 };
            let monitor = record.mode == mode::MONITOR;
            if !monitor {
                let _ = kernel::signal_current(SIGKILL);
            }
            // SAFETY: the helper has no preconditions.
            let actual = unsafe { bpf_get_current_cgroup_id() };
            let g = Governing { id: wid, actual, slot: wgov.slot, level: wgov.level, record };
            let m = if monitor { mode::MONITOR } else { mode::ENFORCE };
            let rule = if tgid == agent_tgid() { rule_id::SELF_PROTECT } else { rule_id::CONTAINMENT };
            let mut r = Report::of(&g, hook::ESCAPE_ATTACH, op::PROTECT, verdict::KILL, m, rule);
            r.target_pid = tgid;
            r.target_cgroup_id = dst_id;
            r.nr = escape::WRITER_KILLED;
            report(Some(record), &r, None);
        }
    }
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
    s.truncated = 0;
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
