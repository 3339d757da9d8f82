//! Kernel structure offsets, filled in by the agent from the running
//! kernel's BTF before load (read-only data, so the verifier sees constants).

/// `offsetof(struct linux_binprm, file)`.
#[unsafe(no_mangle)]
static OFF_BPRM_FILE: u32 = 0;
/// `offsetof(struct linux_binprm, filename)`.
#[unsafe(no_mangle)]
static OFF_BPRM_FILENAME: u32 = 0;
/// `offsetof(struct file, f_path)`.
#[unsafe(no_mangle)]
static OFF_FILE_F_PATH: u32 = 0;
/// `offsetof(struct file, f_mode)`.
#[unsafe(no_mangle)]
static OFF_FILE_F_MODE: u32 = 0;
/// `offsetof(struct file, f_inode)`.
#[unsafe(no_mangle)]
static OFF_FILE_F_INODE: u32 = 0;
/// `offsetof(struct inode, i_ino)`.
#[unsafe(no_mangle)]
static OFF_INODE_INO: u32 = 0;
/// `offsetof(struct inode, i_nlink)`.
#[unsafe(no_mangle)]
static OFF_INODE_NLINK: u32 = 0;
/// `offsetof(struct super_block, s_dev)`.
#[unsafe(no_mangle)]
static OFF_SB_DEV: u32 = 0;
/// `offsetof(struct task_struct, tgid)`.
#[unsafe(no_mangle)]
static OFF_TASK_TGID: u32 = 0;
/// `offsetof(struct task_struct, real_parent)`.
#[unsafe(no_mangle)]
static OFF_TASK_REAL_PARENT: u32 = 0;
/// `offsetof(struct task_struct, exit_code)`.
#[unsafe(no_mangle)]
static OFF_TASK_EXIT_CODE: u32 = 0;

/// `offsetof(struct task_struct, cgroups)`.
#[unsafe(no_mangle)]
static OFF_TASK_CGROUPS: u32 = 0;
/// `offsetof(struct css_set, dfl_cgrp)`.
#[unsafe(no_mangle)]
static OFF_CSS_SET_DFL_CGRP: u32 = 0;
/// `offsetof(struct cgroup, kn)`.
#[unsafe(no_mangle)]
static OFF_CGROUP_KN: u32 = 0;
/// `offsetof(struct cgroup, level)`.
#[unsafe(no_mangle)]
static OFF_CGROUP_LEVEL: u32 = 0;
/// `offsetof(struct cgroup, root)`.
#[unsafe(no_mangle)]
static OFF_CGROUP_ROOT: u32 = 0;
/// `offsetof(struct cgroup, ancestors)` (kernels from 6.0: `struct cgroup *`
/// per level) or `offsetof(struct cgroup, ancestor_ids)` (before: the ids).
#[unsafe(no_mangle)]
static OFF_CGROUP_ANCESTORS: u32 = 0;
/// 1 when `OFF_CGROUP_ANCESTORS` points at `u64 ancestor_ids[]`, 0 when at
/// `struct cgroup *ancestors[]`.
#[unsafe(no_mangle)]
static CGROUP_ANCESTOR_IDS: u32 = 0;
/// 1 when tracing and LSM programs may call
/// `bpf_get_current_ancestor_cgroup_id` (kernels from 5.14), which the agent
/// probes before loading.
#[unsafe(no_mangle)]
static TRACING_ANCESTOR_HELPER: u32 = 0;
/// `offsetof(struct kernfs_node, id)`.
#[unsafe(no_mangle)]
static OFF_KN_ID: u32 = 0;
/// `offsetof(struct kernfs_node, parent)` (`__parent` from 6.15).
#[unsafe(no_mangle)]
static OFF_KN_PARENT: u32 = 0;
/// `offsetof(struct kernfs_node, priv)`.
#[unsafe(no_mangle)]
static OFF_KN_PRIV: u32 = 0;
/// `offsetof(struct kernfs_node, flags)`.
#[unsafe(no_mangle)]
static OFF_KN_FLAGS: u32 = 0;
/// `offsetof(struct kernfs_node, name)`.
#[unsafe(no_mangle)]
static OFF_KN_NAME: u32 = 0;
/// `offsetof(struct inode, i_sb)`.
#[unsafe(no_mangle)]
static OFF_INODE_SB: u32 = 0;
/// `offsetof(struct inode, i_private)`.
#[unsafe(no_mangle)]
static OFF_INODE_PRIVATE: u32 = 0;
/// `offsetof(struct super_block, s_magic)`.
#[unsafe(no_mangle)]
static OFF_SB_MAGIC: u32 = 0;
/// `offsetof(struct vfsmount, mnt_sb)`.
#[unsafe(no_mangle)]
static OFF_VFSMOUNT_SB: u32 = 0;
/// `offsetof(struct task_struct, signal)`.
#[unsafe(no_mangle)]
static OFF_TASK_SIGNAL: u32 = 0;
/// `offsetof(struct signal_struct, live)`.
#[unsafe(no_mangle)]
static OFF_SIGNAL_LIVE: u32 = 0;
/// `offsetof(struct task_struct, nsproxy)`.
#[unsafe(no_mangle)]
static OFF_TASK_NSPROXY: u32 = 0;
/// `offsetof(struct nsproxy, mnt_ns)`.
#[unsafe(no_mangle)]
static OFF_NSPROXY_MNT_NS: u32 = 0;
/// `offsetof(struct mnt_namespace, ns) + offsetof(struct ns_common, inum)`.
#[unsafe(no_mangle)]
static OFF_MNT_NS_INUM: u32 = 0;
/// `offsetof(struct proc_inode, vfs_inode)`.
#[unsafe(no_mangle)]
static OFF_PROC_INODE_VFS: u32 = 0;
/// `offsetof(struct proc_inode, pid)`.
#[unsafe(no_mangle)]
static OFF_PROC_INODE_PID: u32 = 0;
/// `offsetof(struct pid, tasks)` (`tasks[PIDTYPE_PID]` is the first).
#[unsafe(no_mangle)]
static OFF_PID_TASKS: u32 = 0;
/// `offsetof(struct task_struct, pid_links)` (`pid_links[PIDTYPE_PID]` first).
#[unsafe(no_mangle)]
static OFF_TASK_PID_LINKS: u32 = 0;
/// `offsetof(struct path, mnt)`.
#[unsafe(no_mangle)]
static OFF_PATH_MNT: u32 = 0;
/// `offsetof(struct path, dentry)`.
#[unsafe(no_mangle)]
static OFF_PATH_DENTRY: u32 = 0;
/// `offsetof(struct dentry, d_parent)`.
#[unsafe(no_mangle)]
static OFF_DENTRY_PARENT: u32 = 0;
/// `offsetof(struct dentry, d_name) + offsetof(struct qstr, name)`.
#[unsafe(no_mangle)]
static OFF_DENTRY_NAME: u32 = 0;
/// `offsetof(struct dentry, d_name) + offsetof(struct qstr, len)`.
#[unsafe(no_mangle)]
static OFF_DENTRY_NAME_LEN: u32 = 0;
/// `offsetof(struct vfsmount, mnt_root)`.
#[unsafe(no_mangle)]
static OFF_VFSMOUNT_ROOT: u32 = 0;
/// `offsetof(struct mount, mnt)` (the `struct vfsmount` inside it).
#[unsafe(no_mangle)]
static OFF_MOUNT_MNT: u32 = 0;
/// `offsetof(struct mount, mnt_parent)`.
#[unsafe(no_mangle)]
static OFF_MOUNT_PARENT: u32 = 0;
/// `offsetof(struct mount, mnt_mountpoint)`.
#[unsafe(no_mangle)]
static OFF_MOUNT_MOUNTPOINT: u32 = 0;
/// `offsetof(struct unix_sock, path)`.
#[unsafe(no_mangle)]
static OFF_UNIX_SOCK_PATH: u32 = 0;
/// `offsetof(struct socket, type)`.
#[unsafe(no_mangle)]
static OFF_SOCKET_TYPE: u32 = 0;
/// `offsetof(struct msghdr, msg_name)`.
#[unsafe(no_mangle)]
static OFF_MSGHDR_NAME: u32 = 0;
/// `offsetof(struct msghdr, msg_flags)`.
#[unsafe(no_mangle)]
static OFF_MSGHDR_FLAGS: u32 = 0;
/// `offsetof(struct socket, sk)`.
#[unsafe(no_mangle)]
static OFF_SOCKET_SK: u32 = 0;
/// `offsetof(struct sock, __sk_common.skc_family)`.
#[unsafe(no_mangle)]
static OFF_SK_FAMILY: u32 = 0;
/// `offsetof(struct sock, __sk_common.skc_num)`.
#[unsafe(no_mangle)]
static OFF_SK_NUM: u32 = 0;
/// `offsetof(struct sock, __sk_common.skc_rcv_saddr)`.
#[unsafe(no_mangle)]
static OFF_SK_RCV_SADDR: u32 = 0;
/// `offsetof(struct sock, __sk_common.skc_v6_rcv_saddr)`.
#[unsafe(no_mangle)]
static OFF_SK_V6_RCV_SADDR: u32 = 0;
/// `offsetof(struct task_struct, thread_info) + offsetof(struct thread_info,
/// status)` (x86: `TS_COMPAT` is set there while a 32-bit syscall runs).
#[unsafe(no_mangle)]
static OFF_TASK_TI_STATUS: u32 = 0;

#[inline(always)]
fn get(v: &'static u32) -> usize {
    // SAFETY: reading a static; volatile so the compiler does not fold the
    // placeholder 0 that the loader replaces.
    unsafe { core::ptr::read_volatile(v) as usize }
}

pub(crate) fn bprm_file() -> usize {
    get(&OFF_BPRM_FILE)
}
pub(crate) fn bprm_filename() -> usize {
    get(&OFF_BPRM_FILENAME)
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

/// Reads a `T` at `base + off` in kernel memory.
#[inline(always)]
pub(crate) fn read<T>(base: *const u8, off: usize) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address; a fault returns Err.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(base.wrapping_add(off) as *const T).ok() }
}

/// Reads a kernel pointer at `base + off`; `None` if unreadable or null.
#[inline(always)]
pub(crate) fn read_ptr(base: *const u8, off: usize) -> Option<*const u8> {
    read::<*const u8>(base, off).filter(|p| !p.is_null())
}

/// The cgroup v2 cgroup (`struct cgroup *`) of the task at `task`.
#[inline(always)]
pub(crate) fn task_cgroup(task: *const u8) -> Option<*const u8> {
    let cset = read_ptr(task, get(&OFF_TASK_CGROUPS))?;
    read_ptr(cset, get(&OFF_CSS_SET_DFL_CGRP))
}

/// The id of the cgroup at `cgrp` (its kernfs node id, what
/// `bpf_get_current_cgroup_id` returns for a task in it).
#[inline(always)]
pub(crate) fn cgroup_id(cgrp: *const u8) -> Option<u64> {
    let kn = read_ptr(cgrp, get(&OFF_CGROUP_KN))?;
    read::<u64>(kn, get(&OFF_KN_ID))
}

/// The level of the cgroup at `cgrp` (root = 0).
#[inline(always)]
pub(crate) fn cgroup_level(cgrp: *const u8) -> Option<u32> {
    read::<i32>(cgrp, get(&OFF_CGROUP_LEVEL)).map(|l| l as u32)
}

/// Whether tracing and LSM programs may call the ancestor helper here.
#[inline(always)]
pub(crate) fn tracing_ancestor_helper() -> bool {
    get(&TRACING_ANCESTOR_HELPER) != 0
}

/// The hierarchy (`struct cgroup_root *`) the cgroup at `cgrp` belongs to.
#[inline(always)]
pub(crate) fn cgroup_root(cgrp: *const u8) -> Option<*const u8> {
    read_ptr(cgrp, get(&OFF_CGROUP_ROOT))
}

/// The id of the ancestor of the cgroup at `cgrp` at `level` (itself at its
/// own level); `None` when `level` is deeper than the cgroup.
#[inline(always)]
pub(crate) fn cgroup_ancestor_id(cgrp: *const u8, level: u32) -> Option<u64> {
    // Opaque to the compiler, so that the bound below stays in the program:
    // a caller may know the level is at most MAX_GOVERNED_LEVEL where older
    // verifiers (6.1) cannot, and refuse the offset built from it.
    let level = core::hint::black_box(level);
    if level > forge_common::MAX_GOVERNED_LEVEL || level > cgroup_level(cgrp)? {
        return None;
    }
    let slot = get(&OFF_CGROUP_ANCESTORS) + 8 * level as usize;
    if get(&CGROUP_ANCESTOR_IDS) != 0 { read::<u64>(cgrp, slot) } else { cgroup_id(read_ptr(cgrp, slot)?) }
}

/// `KERNFS_DIR` in `kernfs_node.flags & KERNFS_TYPE_MASK`.
const KERNFS_DIR: u16 = 1;
const KERNFS_TYPE_MASK: u16 = 0xf;

/// A file or directory of a kernfs file system (cgroupfs) as an LSM hook
/// sees it through its inode.
pub(crate) struct KernfsEntry {
    /// The cgroup (`struct cgroup *`) the entry belongs to: the directory
    /// itself, or the directory holding the file.
    pub(crate) cgroup: *const u8,
    /// Whether the entry is the directory.
    pub(crate) is_dir: bool,
    /// The entry's kernfs node.
    pub(crate) kn: *const u8,
}

/// The kernfs node behind a cgroupfs `inode` and the cgroup it belongs to.
#[inline(always)]
pub(crate) fn kernfs_entry(inode: *const u8) -> Option<KernfsEntry> {
    let kn = read_ptr(inode, get(&OFF_INODE_PRIVATE))?;
    let flags = read::<u16>(kn, get(&OFF_KN_FLAGS))?;
    let is_dir = flags & KERNFS_TYPE_MASK == KERNFS_DIR;
    let dir = if is_dir { kn } else { read_ptr(kn, get(&OFF_KN_PARENT))? };
    let cgroup = read_ptr(dir, get(&OFF_KN_PRIV))?;
    Some(KernfsEntry { cgroup, is_dir, kn })
}

/// Copies the name of the kernfs node `kn` into `buf` (NUL-terminated,
/// truncated); returns the bytes copied without the NUL.
#[inline(always)]
pub(crate) fn kernfs_name(kn: *const u8, buf: &mut [u8]) -> usize {
    let Some(name) = read_ptr(kn, get(&OFF_KN_NAME)) else { return 0 };
    // SAFETY: the helper bounds the copy by `buf` and checks the source.
    match unsafe { aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes(name, buf) } {
        Ok(b) => b.len(),
        Err(_) => 0,
    }
}

/// The magic number of the file system an `inode` lives on.
#[inline(always)]
pub(crate) fn inode_fs_magic(inode: *const u8) -> Option<u64> {
    let sb = read_ptr(inode, get(&OFF_INODE_SB))?;
    read::<u64>(sb, get(&OFF_SB_MAGIC))
}

/// The identity of the file at `file` (a `struct file *`): its super
/// block's device (the kernel's `dev_t`) and its inode number.
#[inline(always)]
pub(crate) fn file_id(file: *const u8) -> Option<(u32, u64)> {
    let inode = read_ptr(file, get(&OFF_FILE_F_INODE))?;
    let ino = read::<u64>(inode, get(&OFF_INODE_INO))?;
    let sb = read_ptr(inode, get(&OFF_INODE_SB))?;
    let dev = read::<u32>(sb, get(&OFF_SB_DEV))?;
    Some((dev, ino))
}

/// Whether the file at `file` (a `struct file *`) has no link in any
/// directory: a `memfd`, a deleted or an `O_TMPFILE` file. `None` if
/// unreadable.
#[inline(always)]
pub(crate) fn file_unlinked(file: *const u8) -> Option<bool> {
    let inode = read_ptr(file, get(&OFF_FILE_F_INODE))?;
    read::<u32>(inode, get(&OFF_INODE_NLINK)).map(|n| n == 0)
}

/// The `struct path *` a unix socket (`struct sock *`) is bound to, `None`
/// for an abstract or unbound socket (no dentry).
#[inline(always)]
pub(crate) fn unix_sock_path(sk: *const u8) -> Option<*const u8> {
    let path = sk.wrapping_add(get(&OFF_UNIX_SOCK_PATH));
    read_ptr(path, get(&OFF_PATH_DENTRY))?;
    Some(path)
}

/// The type (`SOCK_STREAM`, `SOCK_DGRAM`, ...) of a `struct socket *`.
#[inline(always)]
pub(crate) fn socket_type(sock: *const u8) -> Option<u16> {
    read::<u16>(sock, get(&OFF_SOCKET_TYPE))
}

/// The destination (a kernel `struct sockaddr *`, `None` when the call
/// names none) and the flags of a `struct msghdr *`.
#[inline(always)]
pub(crate) fn msghdr_dest(msg: *const u8) -> Option<(*const u8, u32)> {
    let name = read_ptr(msg, get(&OFF_MSGHDR_NAME))?;
    let flags = read::<u32>(msg, get(&OFF_MSGHDR_FLAGS))?;
    Some((name, flags))
}

/// The `struct sock *` of a `struct socket *`.
#[inline(always)]
pub(crate) fn socket_sock(sock: *const u8) -> Option<*const u8> {
    read_ptr(sock, get(&OFF_SOCKET_SK))
}

/// The magic number of the file system a `struct vfsmount` mounts.
#[inline(always)]
pub(crate) fn mount_fs_magic(mnt: *const u8) -> Option<u64> {
    let sb = read_ptr(mnt, get(&OFF_VFSMOUNT_SB))?;
    read::<u64>(sb, get(&OFF_SB_MAGIC))
}

/// File system magic numbers (`include/uapi/linux/magic.h`).
pub(crate) mod magic {
    pub(crate) const CGROUP: u64 = 0x0027_e0eb;
    pub(crate) const CGROUP2: u64 = 0x6367_7270;
    pub(crate) const BPF_FS: u64 = 0xcafe_4a11;
    pub(crate) const PROC: u64 = 0x9fa0;
}

/// Whether the thread group of `task` is gone (its last thread exiting):
/// `signal->live` is 0. Unreadable counts as not gone.
#[inline(always)]
pub(crate) fn group_dead(task: *const u8) -> bool {
    let Some(signal) = read_ptr(task, get(&OFF_TASK_SIGNAL)) else { return false };
    read::<i32>(signal, get(&OFF_SIGNAL_LIVE)) == Some(0)
}

/// The inode number of the mount namespace of `task` (0 if unreadable).
#[inline(always)]
pub(crate) fn mnt_ns(task: *const u8) -> u32 {
    let Some(nsproxy) = read_ptr(task, get(&OFF_TASK_NSPROXY)) else { return 0 };
    let Some(ns) = read_ptr(nsproxy, get(&OFF_NSPROXY_MNT_NS)) else { return 0 };
    read::<u32>(ns, get(&OFF_MNT_NS_INUM)).unwrap_or(0)
}

/// The thread-group id of the process a procfs `inode` is about
/// (`/proc/<pid>/...`, `/proc/<pid>/task/<tid>/...`); `None` for procfs
/// files about no process.
#[inline(always)]
pub(crate) fn proc_inode_tgid(inode: *const u8) -> Option<u32> {
    let proc_inode = inode.wrapping_sub(get(&OFF_PROC_INODE_VFS));
    let pid = read_ptr(proc_inode, get(&OFF_PROC_INODE_PID))?;
    let first = read_ptr(pid, get(&OFF_PID_TASKS))?;
    let task = first.wrapping_sub(get(&OFF_TASK_PID_LINKS));
    Some(tgid_of(task))
}

/// `enum pid_type`'s `PIDTYPE_TGID`: signal the whole process.
const PIDTYPE_TGID: u32 = 1;

/// Sends `sig` to the process of `task` (a trusted `struct task_struct *`
/// from the hook's arguments) through the `bpf_send_signal_task` kfunc, by
/// way of the placeholder call the loader rewrites
/// ([`forge_common::kfunc`]). Negative when this kernel cannot, or when the
/// kernel refused (an `int`, as the kfunc returns: read as 32 bits).
#[inline(always)]
pub(crate) fn signal_task(task: *const u8, sig: u32) -> i32 {
    // SAFETY: the loader turns this call into the kfunc (whose prototype is
    // this one) or into a constant result; it is never called as an address.
    unsafe {
        let f: unsafe extern "C" fn(*const u8, u32, u32, u64) -> i32 =
            core::mem::transmute(forge_common::kfunc::SIGNAL_TASK_CALL as usize);
        f(task, sig, PIDTYPE_TGID, 0)
    }
}

/// Sends `sig` to the current process; negative when the kernel refused
/// (one deferred signal per CPU at a time where interrupts are off).
#[inline(always)]
pub(crate) fn signal_current(sig: u32) -> i64 {
    // SAFETY: the helper signals the current task; no memory arguments.
    unsafe { aya_ebpf::helpers::generated::bpf_send_signal(sig) }
}

/// `tgid` of the task at `task` (a `struct task_struct *`), 0 if unreadable.
#[inline(always)]
pub(crate) fn tgid_of(task: *const u8) -> u32 {
    // SAFETY: bpf_probe_read_kernel checks the address; a fault returns Err.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(task.add(task_tgid()) as *const u32).unwrap_or(0) }
}

/// Size of [`crate::maps::Scratch::walk`]: `PATH_MAX`, so that `bpf_d_path`
/// resolves every path there. The tracepoint walk assembles a path from its
/// end in the first `WALK_LIMIT` bytes, each name copied whole (up to 255
/// bytes) after its start, so the copies stay inside the buffer.
pub(crate) const WALK_BUF: usize = 4096;
const WALK_LIMIT: usize = 512;
const WALK_MASK: usize = WALK_LIMIT - 1;
/// Names and mount crossings walked at most.
const WALK_STEPS: u32 = 64;

/// The absolute path of the file behind `path` (a `struct path *`), the way
/// `d_path` builds it but without the helper (which tracepoints may not
/// call): the dentries up to the mount's root, then across each mount to
/// its parent, up to the root of the mount tree. Fills the scratch key and
/// `path_len`; a path longer than the key keeps its leading part and sets
/// `truncated`. Returns `false` when the path could not be resolved (a
/// read failed, or it is longer than `WALK_LIMIT` or deeper than
/// `WALK_STEPS`): its head is unknown then.
#[inline(always)]
pub(crate) fn file_path(path: *const u8, s: &mut crate::maps::Scratch) -> bool {
    s.path_len = 0;
    s.truncated = 0;
    let (Some(mut mnt), Some(mut dentry)) =
        (read_ptr(path, get(&OFF_PATH_MNT)), read_ptr(path, get(&OFF_PATH_DENTRY)))
    else {
        return false;
    };
    let mut pos = WALK_LIMIT;
    let mut complete = false;
    let mut step = 0;
    while step < WALK_STEPS {
        step += 1;
        let Some(root) = read_ptr(mnt, get(&OFF_VFSMOUNT_ROOT)) else { return false };
        let Some(parent) = read_ptr(dentry, get(&OFF_DENTRY_PARENT)) else { return false };
        if dentry == root || parent == dentry {
            // The top of this mount: go on at the mount point in the parent
            // mount, or stop at the root of the tree.
            let mount = mnt.wrapping_sub(get(&OFF_MOUNT_MNT));
            let Some(up) = read_ptr(mount, get(&OFF_MOUNT_PARENT)) else { return false };
            if up == mount || dentry != root {
                complete = true;
                break;
            }
            let Some(point) = read_ptr(mount, get(&OFF_MOUNT_MOUNTPOINT)) else { return false };
            dentry = point;
            mnt = up.wrapping_add(get(&OFF_MOUNT_MNT));
            continue;
        }
        let Some(name) = read_ptr(dentry, get(&OFF_DENTRY_NAME)) else { return false };
        let Some(len) = read::<u32>(dentry, get(&OFF_DENTRY_NAME_LEN)) else { return false };
        let len = (len as usize) & 0xff;
        if len + 1 > pos {
            break;
        }
        pos -= len;
        let at = pos & WALK_MASK;
        // SAFETY: `at + len` stays below WALK_LIMIT + 256 <= WALK_BUF; the
        // helper checks the source address.
        let dst = unsafe { core::slice::from_raw_parts_mut(s.walk.as_mut_ptr().add(at), len) };
        // SAFETY: as above.
        if unsafe { aya_ebpf::helpers::bpf_probe_read_kernel_buf(name, dst) }.is_err() {
            return false;
        }
        pos -= 1;
        s.walk[pos & WALK_MASK] = b'/';
        dentry = parent;
        // A no-op (pos <= WALK_LIMIT) that gives every pass the same range
        // of `pos`, so the verifier merges the passes' states.
        pos &= WALK_BUF - 1;
    }
    if !complete {
        return false;
    }
    if pos == WALK_LIMIT {
        // The root itself.
        pos -= 1;
        s.walk[pos & WALK_MASK] = b'/';
    }
    let total = WALK_LIMIT - pos;
    let max = forge_common::PATH_KEY_PATH_LEN - 1;
    let n = if total > max { max } else { total };
    let src = s.walk.as_ptr().wrapping_add(pos & WALK_MASK);
    // SAFETY: `n` bytes fit the key's path; the source is this map value.
    let dst =
        unsafe { core::slice::from_raw_parts_mut(core::ptr::addr_of_mut!(s.key.data.path) as *mut u8, n) };
    // SAFETY: as above.
    if unsafe { aya_ebpf::helpers::bpf_probe_read_kernel_buf(src, dst) }.is_err() {
        return false;
    }
    // SAFETY: the key's path is map memory of this program.
    let key_path = unsafe { &mut *core::ptr::addr_of_mut!(s.key.data.path) };
    if n < key_path.len() {
        key_path[n] = 0;
    }
    s.path_len = n as u32 + 1;
    s.truncated = u32::from(total > max);
    true
}

/// `TS_COMPAT` in `thread_info.status` (`arch/x86/include/asm/thread_info.h`):
/// set by the 32-bit syscall entries before the syscall tracepoints run,
/// cleared on the way back to user mode.
const TS_COMPAT: u32 = 0x0002;

/// Whether the current task is in a 32-bit (i386, `int 0x80` or compat
/// `sysenter`/`syscall`) syscall; `None` if the status cannot be read.
#[inline(always)]
pub(crate) fn current_in_compat_syscall() -> Option<bool> {
    // SAFETY: bpf_get_current_task returns the current task pointer; the
    // read goes through bpf_probe_read_kernel.
    let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() } as *const u8;
    read::<u32>(task, get(&OFF_TASK_TI_STATUS)).map(|s| s & TS_COMPAT != 0)
}

/// The local address of a socket (a `struct socket *`) that has no port
/// yet: `(family, address)` for an inet socket whose `skc_num` is 0,
/// `None` when it has a port or is not inet (or is unreadable).
#[inline(always)]
pub(crate) fn unbound_inet_socket(sock: *const u8) -> Option<(u16, [u32; 4])> {
    let sk = read_ptr(sock, get(&OFF_SOCKET_SK))?;
    if read::<u16>(sk, get(&OFF_SK_NUM))? != 0 {
        return None;
    }
    match read::<u16>(sk, get(&OFF_SK_FAMILY))? {
        2 => Some((2, [read::<u32>(sk, get(&OFF_SK_RCV_SADDR))?, 0, 0, 0])),
        10 => Some((10, read::<[u32; 4]>(sk, get(&OFF_SK_V6_RCV_SADDR))?)),
        _ => None,
    }
}

/// `offsetof(struct pt_regs, orig_ax)` on x86_64 (a user-visible layout).
const OFF_PT_REGS_ORIG_AX: usize = 15 * 8;

/// The number of the syscall the current task is in, as `sys_enter` sees it
/// (an i386 number in a compat call, x32 calls with their bit), from its
/// saved user registers; `None` if unreadable. Uses `bpf_task_pt_regs`
/// (5.15): only for programs on hooks that newer kernels have.
#[inline(always)]
pub(crate) fn current_syscall_nr() -> Option<u64> {
    // SAFETY: the helper returns the current task as a BTF pointer, which is
    // what bpf_task_pt_regs takes; the read goes through bpf_probe_read_kernel.
    let regs = unsafe {
        let task = aya_ebpf::helpers::generated::bpf_get_current_task_btf();
        aya_ebpf::helpers::generated::bpf_task_pt_regs(task)
    } as *const u8;
    // The entry code stores the number zero-extended from 32 bits.
    read::<u64>(regs, OFF_PT_REGS_ORIG_AX).map(|n| n & 0xffff_ffff)
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
