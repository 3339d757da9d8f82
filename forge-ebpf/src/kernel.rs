//! Kernel structure offsets, filled in by the agent from the running
//! kernel's BTF before load (read-only data, so the verifier sees constants).

/// `offsetof(struct linux_binprm, file)`.
#[unsafe(no_mangle)]
static OFF_BPRM_FILE: u32 = 0;
/// `offsetof(struct file, f_path)`.
#[unsafe(no_mangle)]
static OFF_FILE_F_PATH: u32 = 0;
/// `offsetof(struct file, f_mode)`.
#[unsafe(no_mangle)]
static OFF_FILE_F_MODE: u32 = 0;
/// `offsetof(struct task_struct, tgid)`.
#[unsafe(no_mangle)]
static OFF_TASK_TGID: u32 = 0;
/// `offsetof(struct task_struct, real_parent)`.
#[unsafe(no_mangle)]
static OFF_TASK_REAL_PARENT: u32 = 0;
/// `offsetof(struct task_struct, exit_code)`.
#[unsafe(no_mangle)]
static OFF_TASK_EXIT_CODE: u32 = 0;

#[inline(always)]
fn get(v: &'static u32) -> usize {
    // SAFETY: reading a static; volatile so the compiler does not fold the
    // placeholder 0 that the loader replaces.
    unsafe { core::ptr::read_volatile(v) as usize }
}

pub(crate) fn bprm_file() -> usize {
    get(&OFF_BPRM_FILE)
}
pub(crate) fn file_f_path() -> usize {
    get(&OFF_FILE_F_PATH)
}
pub(crate) fn file_f_mode() -> usize {
    get(&OFF_FILE_F_MODE)
}
pub(crate) fn task_tgid() -> usize {
    get(&OFF_TASK_TGID)
}
pub(crate) fn task_real_parent() -> usize {
    get(&OFF_TASK_REAL_PARENT)
}
pub(crate) fn task_exit_code() -> usize {
    get(&OFF_TASK_EXIT_CODE)
}

/// `tgid` of the task at `task` (a `struct task_struct *`), 0 if unreadable.
#[inline(always)]
pub(crate) fn tgid_of(task: *const u8) -> u32 {
    // SAFETY: bpf_probe_read_kernel checks the address; a fault returns Err.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(task.add(task_tgid()) as *const u32).unwrap_or(0) }
}

/// Parent tgid of the current task, 0 if unreadable.
#[inline(always)]
pub(crate) fn current_ppid() -> u32 {
    // SAFETY: bpf_get_current_task returns the current task pointer, and every
    // dereference goes through bpf_probe_read_kernel.
    unsafe {
        let task = aya_ebpf::helpers::bpf_get_current_task() as *const u8;
        let parent: *const u8 = match aya_ebpf::helpers::bpf_probe_read_kernel(
            task.add(task_real_parent()) as *const *const u8
        ) {
            Ok(p) => p,
            Err(_) => return 0,
        };
        tgid_of(parent)
    }
}

/// `exit_code` of the current task, 0 if unreadable.
#[inline(always)]
pub(crate) fn current_exit_code() -> u32 {
    // SAFETY: as in `current_ppid`.
    unsafe {
        let task = aya_ebpf::helpers::bpf_get_current_task() as *const u8;
        aya_ebpf::helpers::bpf_probe_read_kernel(task.add(task_exit_code()) as *const u32).unwrap_or(0)
    }
}
