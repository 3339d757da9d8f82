//! Files and directories. Every path is resolved from a directory
//! descriptor, gated as the absolute path it names, and opened without
//! following symlinks, so the path the gate decided is the file opened.

use std::{
    fs::File,
    io::{Read, Seek as _, SeekFrom, Write},
    os::unix::fs::{DirEntryExt as _, MetadataExt as _},
};

use nix::{
    fcntl::{AT_FDCWD, OFlag, OpenHow, ResolveFlag, openat2},
    sys::stat::Mode,
};
use serde_json::{Value, json};
use wasmtime::Caller;

use super::{
    Ctx, Live, answer, bytes_of, errno,
    errno::Errno,
    errno_of,
    fds::{Fd, filetype, resolve},
    field, mem, memory,
};
use crate::wasm::gate::Facility;

/// Returns the errno of a failed step from the host function.
macro_rules! ok_or_errno {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(errno) => return Ok(i32::from(errno)),
        }
    };
}
pub(super) use ok_or_errno;

const RIGHT_FD_READ: u64 = 1 << 1;
const RIGHT_FD_WRITE: u64 = 1 << 6;
const RIGHT_FD_READDIR: u64 = 1 << 14;
pub(super) const OFLAG_CREAT: i32 = 1;
pub(super) const OFLAG_DIRECTORY: i32 = 2;
pub(super) const OFLAG_EXCL: i32 = 4;
pub(super) const OFLAG_TRUNC: i32 = 8;
const FDFLAG_APPEND: i32 = 1;
/// Largest read or directory listing served in one call.
const MAX_IO: u32 = 1 << 20;

/// The absolute path `path` names from directory descriptor `dirfd`.
pub(super) fn path_from(live: &Live, dirfd: i32, path: &str) -> Result<String, Errno> {
    let base = live.fds.get(dirfd)?.dir_path().ok_or(errno::NOTDIR)?;
    Ok(resolve(base, path))
}

pub(super) fn open_no_symlinks(path: &str, flags: OFlag) -> Result<File, Errno> {
    let mut how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    if flags.contains(OFlag::O_CREAT) {
        // openat2 refuses a mode without O_CREAT.
        how = how.mode(Mode::from_bits_truncate(0o644));
    }
    openat2(AT_FDCWD, path, how).map(File::from).map_err(|e| errno::from_io(&std::io::Error::from(e)))
}

#[allow(clippy::too_many_arguments)]
pub fn path_open(
    mut c: Caller<'_, Ctx>,
    dirfd: i32,
    _lookup: i32,
    path: i32,
    path_len: i32,
    oflags: i32,
    rights: i64,
    _inheriting: i64,
    fdflags: i32,
    out: i32,
) -> wasmtime::Result<i32> {
    let (mem, ctx) = memory(&mut c)?;
    let rel = ok_or_errno!(mem::str_at(mem, path, path_len)).to_string();
    let rights = rights as u64;
    let read = rights & (RIGHT_FD_READ | RIGHT_FD_READDIR) != 0;
    let write = rights & RIGHT_FD_WRITE != 0
        || oflags & (OFLAG_CREAT | OFLAG_TRUNC) != 0
        || fdflags & FDFLAG_APPEND != 0;
    let args = json!({"dirfd": dirfd, "path": rel, "oflags": oflags, "read": read, "write": write, "fdflags": fdflags});
    let r = ctx.call("path_open", args, |live| open_path(live, dirfd, &rel, read, write, oflags, fdflags))?;
    let e = errno_of(&r);
    if e == 0 {
        ok_or_errno!(mem::put_u32(mem, out, field(&r, "fd") as u32));
    }
    Ok(i32::from(e))
}

/// Opens `rel` from directory descriptor `dirfd` for reading and/or
/// writing (preview1 `oflags` and `fdflags` bits), once the gate allows
/// it; the answer names the descriptor and the absolute path.
pub(super) fn open_path(
    live: &mut Live,
    dirfd: i32,
    rel: &str,
    read: bool,
    write: bool,
    oflags: i32,
    fdflags: i32,
) -> Value {
    let path = match path_from(live, dirfd, rel) {
        Ok(p) => p,
        Err(e) => return answer(e),
    };
    if (read && !live.allow(&Facility::FileRead(&path)))
        || (write && !live.allow(&Facility::FileWrite(&path)))
    {
        return json!({"errno": errno::ACCES, "path": path});
    }
    let mut flags = match (read, write) {
        (_, false) => OFlag::O_RDONLY,
        (false, true) => OFlag::O_WRONLY,
        (true, true) => OFlag::O_RDWR,
    };
    for (bit, flag) in [
        (OFLAG_CREAT, OFlag::O_CREAT),
        (OFLAG_DIRECTORY, OFlag::O_DIRECTORY),
        (OFLAG_EXCL, OFlag::O_EXCL),
        (OFLAG_TRUNC, OFlag::O_TRUNC),
    ] {
        if oflags & bit != 0 {
            flags |= flag;
        }
    }
    if fdflags & FDFLAG_APPEND != 0 {
        flags |= OFlag::O_APPEND;
    }
    let file = match open_no_symlinks(&path, flags) {
        Ok(f) => f,
        Err(e) => return json!({"errno": e, "path": path}),
    };
    let is_dir = file.metadata().map(|m| m.is_dir()).unwrap_or(false);
    let entry = if is_dir {
        Fd::Dir { path: path.clone() }
    } else {
        Fd::File { file, path: path.clone(), read, write }
    };
    match live.fds.insert(entry) {
        Ok(fd) => json!({"errno": 0, "fd": fd, "path": path}),
        Err(e) => answer(e),
    }
}

/// A file or a socket.
trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// The file or socket behind `fd`, once the gate let this use of it
/// through: a file as a read or write of its path, a socket as a connect
/// to its peer (checked on every call, so a lowered tier takes effect at once).
fn gated_stream(live: &mut Live, fd: i32, write: bool) -> Result<&mut dyn Stream, Errno> {
    let allowed = match live.fds.get(fd)? {
        Fd::File { path, .. } => {
            let path = path.clone();
            live.allow(&if write { Facility::FileWrite(&path) } else { Facility::FileRead(&path) })
        }
        Fd::Socket { peer, .. } => {
            let peer = *peer;
            live.allow(&Facility::Connect(peer))
        }
        Fd::Root | Fd::Dir { .. } => return Err(errno::ISDIR),
        Fd::Stdin | Fd::Stdout | Fd::Stderr => return Err(errno::BADF),
    };
    if !allowed {
        return Err(errno::ACCES);
    }
    match live.fds.get_mut(fd)? {
        Fd::File { file, .. } => Ok(file),
        Fd::Socket { stream, .. } => Ok(stream),
        _ => Err(errno::BADF),
    }
}

pub fn fd_read(mut c: Caller<'_, Ctx>, fd: i32, iovs: i32, count: i32, out: i32) -> wasmtime::Result<i32> {
    let (mem, ctx) = memory(&mut c)?;
    let vecs = ok_or_errno!(mem::iovecs(mem, iovs, count));
    let cap = vecs.iter().map(|(_, l)| *l).fold(0u32, u32::saturating_add).min(MAX_IO);
    let r = ctx.call("fd_read", json!({"fd": fd, "len": cap}), |live| {
        let mut buf = vec![0u8; cap as usize];
        let n = match live.fds.get(fd) {
            Ok(Fd::Stdin) => Ok(0),
            Ok(Fd::Stdout | Fd::Stderr) => Err(errno::BADF),
            _ => {
                gated_stream(live, fd, false).and_then(|st| st.read(&mut buf).map_err(|e| errno::from_io(&e)))
            }
        };
        match n {
            Ok(n) => json!({"errno": 0, "n": n, "data": hex::encode(&buf[..n])}),
            Err(e) => answer(e),
        }
    })?;
    let e = errno_of(&r);
    if e == 0 {
        let data = bytes_of(&r, "data");
        ok_or_errno!(mem::scatter(mem, &vecs, &data));
        ok_or_errno!(mem::put_u32(mem, out, data.len() as u32));
    }
    Ok(i32::from(e))
}

pub fn fd_write(mut c: Caller<'_, Ctx>, fd: i32, iovs: i32, count: i32, out: i32) -> wasmtime::Result<i32> {
    let (mem, ctx) = memory(&mut c)?;
    let data = ok_or_errno!(mem::gather(mem, iovs, count));
    if fd == 1 || fd == 2 {
        ctx.output(fd, &data);
    }
    let args = json!({"fd": fd, "len": data.len(), "sha3": crate::sign::sha3_256(&data).to_hex()});
    let r = ctx.call("fd_write", args, |live| {
        let n = match live.fds.get(fd) {
            Ok(Fd::Stdout | Fd::Stderr) => Ok(data.len()),
            Ok(Fd::Stdin) => Err(errno::BADF),
            _ => gated_stream(live, fd, true).and_then(|st| st.write(&data).map_err(|e| errno::from_io(&e))),
        };
        match n {
            Ok(n) => json!({"errno": 0, "n": n}),
            Err(e) => answer(e),
        }
    })?;
    let e = errno_of(&r);
    if e == 0 {
        ok_or_errno!(mem::put_u32(mem, out, field(&r, "n") as u32));
    }
    Ok(i32::from(e))
}

pub fn fd_close(mut c: Caller<'_, Ctx>, fd: i32) -> wasmtime::Result<i32> {
    let (_, ctx) = memory(&mut c)?;
    let r = ctx.call("fd_close", json!({"fd": fd}), |live| match live.fds.remove(fd) {
        Ok(_) => answer(0),
        Err(e) => answer(e),
    })?;
    Ok(i32::from(errno_of(&r)))
}

pub fn fd_seek(mut c: Caller<'_, Ctx>, fd: i32, offset: i64, whence: i32, out: i32) -> wasmtime::Result<i32> {
    let (mem, ctx) = memory(&mut c)?;
    let r = ctx.call("fd_seek", json!({"fd": fd, "offset": offset, "whence": whence}), |live| {
        let to = match whence {
            0 if offset >= 0 => SeekFrom::Start(offset as u64),
            1 => SeekFrom::Current(offset),
            2 => SeekFrom::End(offset),
            _ => return answer(errno::INVAL),
        };
        match live.fds.get_mut(fd) {
            Ok(Fd::File { file, .. }) => match file.seek(to) {
                Ok(pos) => json!({"errno": 0, "offset": pos}),
                Err(e) => answer(errno::from_io(&e)),
            },
            Ok(_) => answer(errno::SPIPE),
            Err(e) => answer(e),
        }
    })?;
    let e = errno_of(&r);
    if e == 0 {
        ok_or_errno!(mem::put_u64(mem, out, field(&r, "offset")));
    }
    Ok(i32::from(e))
}

pub fn fd_fdstat_get(mut c: Caller<'_, Ctx>, fd: i32, out: i32) -> wasmtime::Result<i32> {
    let (mem, ctx) = memory(&mut c)?;
    let r = ctx.call("fd_fdstat_get", json!({"fd": fd}), |live| match live.fds.get(fd) {
        Ok(f) => json!({"errno": 0, "filetype": f.filetype()}),
        Err(e) => answer(e),
    })?;
    let e = errno_of(&r);
    if e == 0 {
        // filetype u8 @0, flags u16 @2, rights_base u64 @8, rights_inheriting u64 @16.
        let mut stat = [0u8; 24];
        stat[0] = field(&r, "filetype") as u8;
        stat[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        stat[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        ok_or_errno!(mem::put(mem, out, &stat));
    }
    Ok(i32::from(e))
}

pub fn fd_fdstat_set_flags(mut c: Caller<'_, Ctx>, fd: i32, flags: i32) -> wasmtime::Result<i32> {
    let (_, ctx) = memory(&mut c)?;
    let r = ctx.call("fd_fdstat_set_flags", json!({"fd": fd, "flags": flags}), |live| {
        answer(if live.fds.get(fd).is_ok() { errno::NOSYS } else { errno::BADF })
    })?;
    Ok(i32::from(errno_of(&r)))
}

pub fn fd_prestat_get(mut c: Caller<'_, Ctx>, fd: i32, out: i32) -> wasmtime::Result<i32> {
    let (mem, ctx) = memory(&mut c)?;
    let r = ctx.call("fd_prestat_get", json!({"fd": fd}), |live| match live.fds.get(fd) {
        Ok(Fd::Root) => json!({"errno": 0, "name_len": 1}),
        Ok(_) => answer(errno::BADF),
        Err(e) => answer(e),
    })?;
    let e = errno_of(&r);
    if e == 0 {
        // tag u8 @0 (0: directory), name length u32 @4.
        let mut pre = [0u8; 8];
        pre[4..8].copy_from_slice(&(field(&r, "name_len") as u32).to_le_bytes());
        ok_or_errno!(mem::put(mem, out, &pre));
    }
    Ok(i32::from(e))
}

pub fn fd_prestat_dir_name(mut c: Caller<'_, Ctx>, fd: i32, path: i32, len: i32) -> wasmtime::Result<i32> {
    let (mem, ctx) = memory(&mut c)?;
    let r =
        ctx.call("fd_prestat_dir_name", json!({"fd": fd, "len": len}), |live| match live.fds.get(fd) {
            Ok(Fd::Root) if len >= 1 => json!({"errno": 0, "name": "/"}),
            Ok(Fd::Root) => answer(errno::NAMETOOLONG),
            Ok(_) => answer(errno::BADF),
            Err(e) => answer(e),
        })?;
    let e = errno_of(&r);
    if e == 0 {
        let name = r.get("name").and_then(Value::as_str).unwrap_or("/");
        ok_or_errno!(mem::put(mem, path, name.as_bytes()));
    }
    Ok(i32::from(e))
}

pub(super) fn filestat(m: &std::fs::Metadata) -> Value {
    let ft = if m.is_dir() {
        filetype::DIRECTORY
    } else if m.is_file() {
        filetype::REGULAR_FILE
    } else {
        0
    };
    json!({"errno": 0, "filetype": ft, "size": m.len(), "nlink": m.nlink(), "ino": m.ino(), "dev": m.dev(),
           "atim": m.atime().max(0) as u64 * 1_000_000_000, "mtim": m.mtime().max(0) as u64 * 1_000_000_000,
           "ctim": m.ctime().max(0) as u64 * 1_000_000_000})
}

/// The status of `rel` from directory descriptor `dirfd`, gated as a read.
pub(super) fn stat_path(live: &mut Live, dirfd: i32, rel: &str) -> Value {
    let path = match path_from(live, dirfd, rel) {
        Ok(p) => p,
        Err(e) => return answer(e),
    };
    if !live.allow(&Facility::FileRead(&path)) {
        return json!({"errno": errno::ACCES, "path": path});
    }
    match open_no_symlinks(&path, OFlag::O_PATH).and_then(|f| f.metadata().map_err(|e| errno::from_io(&e))) {
        Ok(m) => filestat(&m),
        Err(e) => answer(e),
    }
}

fn put_filestat(mem: &mut [u8], out: i32, r: &Value) -> Result<(), Errno> {
    // dev @0, ino @8, filetype u8 @16, nlink @24, size @32, atim @40, mtim @48, ctim @56.
    let mut st = [0u8; 64];
    for (at, name) in
        [(0, "dev"), (8, "ino"), (24, "nlink"), (32, "size"), (40, "atim"), (48, "mtim"), (56, "ctim")]
    {
        st[at..at + 8].copy_from_slice(&field(r, name).to_le_bytes());
    }
    st[16] = field(r, "filetype") as u8;
    mem::put(mem, out, &st)
}

pub fn fd_filestat_get(mut c: Caller<'_, Ctx>, fd: i32, out: i32) -> wasmtime::Result<i32> {
    let (mem, ctx) = memory(&mut c)?;
    let r = ctx.call("fd_filestat_get", json!({"fd": fd}), |live| match live.fds.get(fd) {
        Ok(Fd::File { file, .. }) => {
            file.metadata().map_or_else(|e| answer(errno::from_io(&e)), |m| filestat(&m))
        }
        Ok(f) => json!({"errno": 0, "filetype": f.filetype()}),
        Err(e) => answer(e),
    })?;
    let e = errno_of(&r);
    if e == 0 {
        ok_or_errno!(put_filestat(mem, out, &r));
    }
    Ok(i32::from(e))
}

pub fn path_filestat_get(
    mut c: Caller<'_, Ctx>,
    dirfd: i32,
    _flags: i32,
    path: i32,
    len: i32,
    out: i32,
) -> wasmtime::Result<i32> {
    let (mem, ctx) = memory(&mut c)?;
    let rel = ok_or_errno!(mem::str_at(mem, path, len)).to_string();
    let r = ctx.call("path_filestat_get", json!({"dirfd": dirfd, "path": rel}), |live| {
        stat_path(live, dirfd, &rel)
    })?;
    let e = errno_of(&r);
    if e == 0 {
        ok_or_errno!(put_filestat(mem, out, &r));
    }
    Ok(i32::from(e))
}

pub fn fd_readdir(
    mut c: Caller<'_, Ctx>,
    fd: i32,
    buf: i32,
    len: i32,
    cookie: i64,
    out: i32,
) -> wasmtime::Result<i32> {
    let (mem, ctx) = memory(&mut c)?;
    let cap = (len as u32).min(MAX_IO);
    let r = ctx.call("fd_readdir", json!({"fd": fd, "len": cap, "cookie": cookie}), |live| {
        let path = match listable_dir(live, fd) {
            Ok(p) => p,
            Err(e) => return answer(e),
        };
        match dirents(&path, cookie as u64, cap as usize) {
            Ok(bytes) => json!({"errno": 0, "data": hex::encode(bytes)}),
            Err(e) => answer(e),
        }
    })?;
    let e = errno_of(&r);
    if e == 0 {
        let data = bytes_of(&r, "data");
        ok_or_errno!(mem::put(mem, buf, &data));
        ok_or_errno!(mem::put_u32(mem, out, data.len() as u32));
    }
    Ok(i32::from(e))
}

/// The directory's entries from `cookie` on, in WASI's dirent layout,
/// sorted by name, cut at `cap` bytes (a full buffer tells the capsule to
/// ask again).
fn dirents(path: &str, cookie: u64, cap: usize) -> Result<Vec<u8>, Errno> {
    let mut names: Vec<(String, u8, u64)> =
        vec![(".".into(), filetype::DIRECTORY, 0), ("..".into(), filetype::DIRECTORY, 0)];
    names.extend(entries(path)?);
    let mut out = Vec::new();
    for (i, (name, ft, ino)) in names.iter().enumerate().skip(cookie as usize) {
        // d_next u64, d_ino u64, d_namlen u32, d_type u8, 3 bytes padding, then the name.
        out.extend_from_slice(&(i as u64 + 1).to_le_bytes());
        out.extend_from_slice(&ino.to_le_bytes());
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&[*ft, 0, 0, 0]);
        out.extend_from_slice(name.as_bytes());
        if out.len() >= cap {
            out.truncate(cap);
            break;
        }
    }
    Ok(out)
}

/// The path of directory descriptor `fd`, once the gate let a listing
/// (a read of the directory) through.
pub(super) fn listable_dir(live: &mut Live, fd: i32) -> Result<String, Errno> {
    let path = live.fds.get(fd)?.dir_path().ok_or(errno::NOTDIR)?.to_string();
    if !live.allow(&Facility::FileRead(&path)) {
        return Err(errno::ACCES);
    }
    Ok(path)
}

/// The directory's entries (name, WASI file type, inode), sorted by name,
/// without `.` and `..`.
pub(super) fn entries(path: &str) -> Result<Vec<(String, u8, u64)>, Errno> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(path).map_err(|e| errno::from_io(&e))? {
        let e = e.map_err(|e| errno::from_io(&e))?;
        let ft = match e.file_type() {
            Ok(t) if t.is_dir() => filetype::DIRECTORY,
            Ok(t) if t.is_file() => filetype::REGULAR_FILE,
            _ => 0,
        };
        names.push((e.file_name().to_string_lossy().into_owned(), ft, e.ino()));
    }
    names.sort();
    Ok(names)
}

/// `path_unlink_file`, `path_create_directory`, `path_remove_directory`:
/// a change to one path, gated as a write.
fn change(
    mut c: Caller<'_, Ctx>,
    name: &'static str,
    dirfd: i32,
    path: i32,
    len: i32,
    op: fn(&str) -> std::io::Result<()>,
) -> wasmtime::Result<i32> {
    let (mem, ctx) = memory(&mut c)?;
    let rel = ok_or_errno!(mem::str_at(mem, path, len)).to_string();
    let r =
        ctx.call(name, json!({"dirfd": dirfd, "path": rel}), |live| change_path(live, dirfd, &rel, op))?;
    Ok(i32::from(errno_of(&r)))
}

/// Applies `op` to `rel` from directory descriptor `dirfd`, gated as a write.
pub(super) fn change_path(
    live: &mut Live,
    dirfd: i32,
    rel: &str,
    op: fn(&str) -> std::io::Result<()>,
) -> Value {
    let path = match path_from(live, dirfd, rel) {
        Ok(p) => p,
        Err(e) => return answer(e),
    };
    if !live.allow(&Facility::FileWrite(&path)) {
        return json!({"errno": errno::ACCES, "path": path});
    }
    match op(&path) {
        Ok(()) => json!({"errno": 0, "path": path}),
        Err(e) => answer(errno::from_io(&e)),
    }
}

pub fn path_unlink_file(c: Caller<'_, Ctx>, dirfd: i32, path: i32, len: i32) -> wasmtime::Result<i32> {
    change(c, "path_unlink_file", dirfd, path, len, |p| std::fs::remove_file(p))
}

pub fn path_create_directory(c: Caller<'_, Ctx>, dirfd: i32, path: i32, len: i32) -> wasmtime::Result<i32> {
    change(c, "path_create_directory", dirfd, path, len, |p| std::fs::create_dir(p))
}

pub fn path_remove_directory(c: Caller<'_, Ctx>, dirfd: i32, path: i32, len: i32) -> wasmtime::Result<i32> {
    change(c, "path_remove_directory", dirfd, path, len, |p| std::fs::remove_dir(p))
}
