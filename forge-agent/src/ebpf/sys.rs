//! The `bpf(2)` system call, for the commands aya 0.14 does not expose.

use std::io;

/// Runs `bpf(cmd, attr, sizeof attr)`; the kernel's answer, or the error.
pub(crate) fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, properly sized `bpf_attr` variant for `cmd`;
    // the kernel reads (and for info, writes) only within its size.
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, (attr as *mut T).cast::<libc::c_void>(), size_of::<T>() as u32)
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}
