//! Counting decisions and sending events to the agent.

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
    bpf_probe_read_kernel_buf,
};
use forge_common::{CounterKey, Event, PolicyRecord};

use crate::{
    decide::Governing,
    maps::{COUNTERS, DROPS, EVENTS, Scratch},
};

/// `BPF_NOEXIST`: insert only if absent.
const BPF_NOEXIST: u64 = 1;

/// What one event says, apart from the fields every event has.
pub(crate) struct Report {
    pub(crate) cgroup_id: u64,
    /// The caller's own cgroup; 0: filled in from the current task.
    pub(crate) actual_cgroup_id: u64,
    pub(crate) target_cgroup_id: u64,
    pub(crate) hook: u16,
    pub(crate) op: u8,
    pub(crate) verdict: u8,
    pub(crate) mode: u8,
    pub(crate) rule_id: u32,
    pub(crate) family: u8,
    pub(crate) port: u16,
    pub(crate) addr: [u32; 4],
    pub(crate) nr: u32,
    pub(crate) target_pid: u32,
    pub(crate) ppid: u32,
}

impl Report {
    #[inline(always)]
    pub(crate) const fn new(cgroup_id: u64, hook: u16, op: u8, verdict: u8, mode: u8, rule_id: u32) -> Self {
        Self {
            cgroup_id,
            actual_cgroup_id: 0,
            target_cgroup_id: 0,
            hook,
            op,
            verdict,
            mode,
            rule_id,
            family: 0,
            port: 0,
            addr: [0; 4],
            nr: 0,
            target_pid: 0,
            ppid: 0,
        }
    }

    /// A report for a decision of `g`'s record about the current task.
    #[inline(always)]
    pub(crate) const fn of(g: &Governing, hook: u16, op: u8, verdict: u8, mode: u8, rule_id: u32) -> Self {
        let mut r = Self::new(g.id, hook, op, verdict, mode, rule_id);
        r.actual_cgroup_id = g.actual;
        r
    }
}

/// Adds one to the per-CPU counter for `(cgroup, hook, verdict, mode)`;
/// `verdict` may also be `verdict::DROPPED`.
#[inline(always)]
pub(crate) fn count(cgroup_id: u64, hook: u16, verdict: u8, mode: u8) {
    let key = CounterKey { cgroup_id, hook, verdict, mode, _pad: 0 };
    match COUNTERS.get_ptr_mut(key) {
        // SAFETY: per-CPU value: no other CPU writes it.
        Some(v) => unsafe { *v += 1 },
        None => {
            // Losing a race with another program on this CPU only loses one
            // count: BPF_NOEXIST keeps the other write.
            let _ = COUNTERS.insert(key, 1u64, BPF_NOEXIST);
        }
    }
}

/// Counts the decision and sends the event. `path` is the scratch area when
/// the event carries a resolved path (or a cgroup path). An event the full ring has no room for
/// is counted twice: in the global `DROPS`, and per cgroup and hook under
/// `verdict::DROPPED` in `COUNTERS` (process tracking included), so that a
/// storm in one workload is attributed to it. The decision itself was taken
/// before this point and does not depend on the ring.
#[inline(always)]
pub(crate) fn report(record: Option<&PolicyRecord>, r: &Report, path: Option<&Scratch>) {
    if r.verdict != forge_common::verdict::INFO {
        count(r.cgroup_id, r.hook, r.verdict, r.mode);
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        if let Some(d) = DROPS.get_ptr_mut(0) {
            // SAFETY: per-CPU value: no other CPU writes it.
            unsafe { *d += 1 };
        }
        count(r.cgroup_id, r.hook, forge_common::verdict::DROPPED, r.mode);
        return;
    };
    let ev = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: `ev` points at a reserved, exclusively owned ring buffer slot of
    // `size_of::<Event>()` bytes; every field is written before submit.
    unsafe {
        (*ev).ts_ns = bpf_ktime_get_ns();
        (*ev).cgroup_id = r.cgroup_id;
        (*ev).actual_cgroup_id =
            if r.actual_cgroup_id != 0 { r.actual_cgroup_id } else { bpf_get_current_cgroup_id() };
        (*ev).target_cgroup_id = r.target_cgroup_id;
        (*ev).generation = match record {
            Some(rec) => rec.generation,
            None => 0,
        };
        (*ev).pid = pid_tgid as u32;
        (*ev).tgid = (pid_tgid >> 32) as u32;
        (*ev).ppid = r.ppid;
        (*ev).rule_id = r.rule_id;
        (*ev).hook = r.hook;
        (*ev).op = r.op;
        (*ev).verdict = r.verdict;
        (*ev).mode = r.mode;
        (*ev).family = r.family;
        (*ev).port = r.port;
        (*ev).nr = r.nr;
        (*ev).target_pid = r.target_pid;
        (*ev).addr = r.addr;
        (*ev)._pad = [0; 6];
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*ev).path_len = 0;
        (*ev).path[0] = 0;
        if let Some(s) = path {
            let len = s.path_len as usize;
            if len > 1 && len <= forge_common::PATH_KEY_PATH_LEN {
                let src = core::ptr::addr_of!(s.key.data.path) as *const u8;
                let dst = &mut (&mut (*ev).path)[..forge_common::PATH_KEY_PATH_LEN];
                if bpf_probe_read_kernel_buf(src, dst).is_ok() {
                    (*ev).path_len = (len - 1) as u16;
                }
            }
        }
    }
    entry.submit(0);
}
