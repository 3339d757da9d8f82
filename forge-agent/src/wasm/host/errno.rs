//! WASI preview1 error numbers, and how host errors map to them.

pub type Errno = u16;

pub const SUCCESS: Errno = 0;
pub const ACCES: Errno = 2;
pub const BADF: Errno = 8;
pub const CONNREFUSED: Errno = 14;
pub const EXIST: Errno = 20;
pub const FAULT: Errno = 21;
pub const HOSTUNREACH: Errno = 23;
pub const INVAL: Errno = 28;
pub const IO: Errno = 29;
pub const ISDIR: Errno = 31;
pub const LOOP: Errno = 32;
pub const MFILE: Errno = 33;
pub const NAMETOOLONG: Errno = 37;
pub const NETUNREACH: Errno = 40;
pub const NOENT: Errno = 44;
pub const NOSPC: Errno = 51;
pub const NOSYS: Errno = 52;
pub const NOTDIR: Errno = 54;
pub const NOTEMPTY: Errno = 55;
pub const PERM: Errno = 63;
pub const SPIPE: Errno = 70;
pub const TIMEDOUT: Errno = 73;

/// The WASI errno for a host I/O error.
pub fn from_io(e: &std::io::Error) -> Errno {
    match e.raw_os_error() {
        Some(libc::ENOENT) => NOENT,
        Some(libc::EACCES) => ACCES,
        Some(libc::EPERM) => PERM,
        Some(libc::EEXIST) => EXIST,
        Some(libc::EISDIR) => ISDIR,
        Some(libc::ENOTDIR) => NOTDIR,
        Some(libc::ELOOP) => LOOP,
        Some(libc::ENOTEMPTY) => NOTEMPTY,
        Some(libc::EINVAL) => INVAL,
        Some(libc::ENOSPC) => NOSPC,
        Some(libc::ESPIPE) => SPIPE,
        Some(libc::ENAMETOOLONG) => NAMETOOLONG,
        Some(libc::ECONNREFUSED) => CONNREFUSED,
        Some(libc::ENETUNREACH) => NETUNREACH,
        Some(libc::EHOSTUNREACH) => HOSTUNREACH,
        Some(libc::ETIMEDOUT) => TIMEDOUT,
        Some(libc::EMFILE) => MFILE,
        _ => match e.kind() {
            std::io::ErrorKind::TimedOut => TIMEDOUT,
            std::io::ErrorKind::NotFound => NOENT,
            _ => IO,
        },
    }
}
