//! cgroup v2 helpers: find the unified hierarchy, create a cgroup, learn its
//! id (the inode number the kernel's `bpf_get_current_cgroup_id` returns),
//! and move processes into it.

use std::{
    fs,
    io::{self, Write as _},
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 hierarchy is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("reading /proc/self/mountinfo: {0}")]
    MountInfo(#[source] io::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not inside the cgroup v2 mount {mount}")]
    Outside { path: PathBuf, mount: PathBuf },
    #[error("no cgroup with id {id} exists (it was removed)")]
    NoSuchId { id: u64 },
    #[error("{path} is not a cgroup v2 directory (a mount over it?)")]
    NotCgroup { path: PathBuf },
    #[error("finding the cgroup with id {id}: {source}")]
    ById {
        id: u64,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io { path: path.to_path_buf(), source }
}

/// Mount point of the cgroup v2 (unified) hierarchy, e.g. `/sys/fs/cgroup`
/// or `/sys/fs/cgroup/unified` on hybrid hosts.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let info = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::MountInfo)?;
    parse_cgroup2_mount(&info).ok_or(CgroupError::NoCgroup2)
}

/// Finds the first `cgroup2` mount in mountinfo text.
pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // Fields: id parent maj:min root mountpoint options [optional...] - fstype source superopts
        let (pre, post) = line.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        pre.split_whitespace().nth(4).map(|m| PathBuf::from(unescape_octal(m)))
    })
}

fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let code =
                std::str::from_utf8(&bytes[i + 1..i + 4]).ok().and_then(|d| u8::from_str_radix(d, 8).ok());
            if let Some(v) = code {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A cgroup v2 directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    pub path: PathBuf,
    pub id: u64,
}

impl Cgroup {
    /// Opens an existing cgroup by absolute path (it must be a directory of
    /// the cgroup v2 file system, not something mounted over one).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, CgroupError> {
        let path = path.into();
        let id = fs::metadata(&path).map_err(io_err(&path))?.ino();
        let fs = nix::sys::statfs::statfs(&path)
            .map_err(|e| CgroupError::Io { path: path.clone(), source: e.into() })?;
        if fs.filesystem_type().0 as i64 != CGROUP2_SUPER_MAGIC {
            return Err(CgroupError::NotCgroup { path });
        }
        Ok(Self { path, id })
    }

    /// Creates (or reuses) `name` below the cgroup v2 mount. `name` may have
    /// several components, e.g. `forge/demo`.
    pub fn create(name: &str) -> Result<Self, CgroupError> {
        let mount = cgroup2_mount()?;
        let path = mount.join(name.trim_start_matches('/'));
        fs::create_dir_all(&path).map_err(io_err(&path))?;
        Self::open(path)
    }

    /// Resolves a user-given path: absolute inside the mount, or relative to it.
    pub fn resolve(spec: &str) -> Result<Self, CgroupError> {
        let mount = cgroup2_mount()?;
        let p = Path::new(spec);
        let path = if p.is_absolute() && p.starts_with(&mount) {
            p.to_path_buf()
        } else {
            mount.join(spec.trim_start_matches('/'))
        };
        if !path.starts_with(&mount) {
            return Err(CgroupError::Outside { path, mount });
        }
        Self::open(path)
    }

    /// Opens the cgroup whose id (kernfs node id, as `bpf_get_current_cgroup_id`
    /// reports it) is `id`, by file handle: finds it wherever it is, tells a
    /// removed cgroup from a re-created one at the same path, and is not
    /// fooled by a mount over the path (the handle is resolved on the
    /// hierarchy held open since [`hold_hierarchy`]).
    pub fn open_by_id(id: u64) -> Result<Self, CgroupError> {
        let dir = hold_hierarchy()?;
        let fd = open_by_handle(dir, id)?;
        let link = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let path = fs::read_link(&link).map_err(|source| CgroupError::ById { id, source })?;
        Ok(Self { path, id })
    }

    /// The cgroup's level in the v2 hierarchy (the root cgroup is 0): the
    /// number of directories below the mount.
    pub fn level(&self) -> Result<u32, CgroupError> {
        let mount = cgroup2_mount()?;
        let rel = self
            .path
            .strip_prefix(&mount)
            .map_err(|_| CgroupError::Outside { path: self.path.clone(), mount: mount.clone() })?;
        Ok(rel.components().count() as u32)
    }

    /// Whether `other` is this cgroup or lies below it.
    pub fn contains(&self, other: &Path) -> bool {
        other.starts_with(&self.path)
    }

    /// The cgroup this process is in.
    pub fn current() -> Result<Self, CgroupError> {
        Self::of_pid("self")
    }

    /// The cgroup v2 cgroup of process `pid` (`"self"` for this one).
    pub fn of_pid(pid: &str) -> Result<Self, CgroupError> {
        let file = PathBuf::from(format!("/proc/{pid}/cgroup"));
        let text = fs::read_to_string(&file).map_err(io_err(&file))?;
        let rel = parse_proc_cgroup(&text).ok_or_else(|| CgroupError::Io {
            path: file.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, "no cgroup v2 line (0::/path)"),
        })?;
        let mount = cgroup2_mount()?;
        Self::open(mount.join(rel.trim_start_matches('/')))
    }

    /// Moves process `pid` into this cgroup.
    pub fn add_pid(&self, pid: u32) -> Result<(), CgroupError> {
        let procs = self.path.join("cgroup.procs");
        let mut f = fs::OpenOptions::new().write(true).open(&procs).map_err(io_err(&procs))?;
        f.write_all(pid.to_string().as_bytes()).map_err(io_err(&procs))
    }

    /// Pids currently in the cgroup.
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        let procs = self.path.join("cgroup.procs");
        let text = fs::read_to_string(&procs).map_err(io_err(&procs))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// [`Self::destroy`] for the cgroup and every cgroup below it, deepest
    /// first.
    pub fn destroy_tree(&self) -> Result<(), CgroupError> {
        let mut dirs = vec![self.path.clone()];
        let mut i = 0;
        while i < dirs.len() {
            if let Ok(entries) = fs::read_dir(&dirs[i]) {
                dirs.extend(
                    entries
                        .filter_map(Result::ok)
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
            i += 1;
        }
        for dir in dirs.iter().rev() {
            Self { path: dir.clone(), id: 0 }.destroy()?;
        }
        Ok(())
    }

    /// Kills every process in the cgroup (SIGKILL) and removes it; waits
    /// briefly for the processes to be gone.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        let kill = self.path.join("cgroup.kill");
        if kill.exists() {
            let _ = fs::write(&kill, "1");
        } else {
            for pid in self.pids().unwrap_or_default() {
                // SAFETY: kill(2) with a pid read from cgroup.procs; no memory involved.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        for _ in 0..200 {
            if self.pids().map(|p| p.is_empty()).unwrap_or(true) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        match fs::remove_dir(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CgroupError::Io { path: self.path.clone(), source: e }),
        }
    }
}

/// `CGROUP2_SUPER_MAGIC` from linux/magic.h.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The cgroup v2 hierarchy's mount, opened once and held for the life of
/// the process: the agent opens it at start, before any workload could
/// mount something over `/sys/fs/cgroup`, and finds cgroups by id through
/// it from then on.
pub fn hold_hierarchy() -> Result<&'static fs::File, CgroupError> {
    static HELD: std::sync::OnceLock<fs::File> = std::sync::OnceLock::new();
    if let Some(f) = HELD.get() {
        return Ok(f);
    }
    let mount = cgroup2_mount()?;
    let file = fs::File::open(&mount).map_err(io_err(&mount))?;
    Ok(HELD.get_or_init(|| file))
}

/// The cgroup v2 path in `/proc/<pid>/cgroup` text (the `0::/path` line).
pub fn parse_proc_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// `FILEID_KERNFS`: a kernfs file handle is the node's 64-bit id.
const FILEID_KERNFS: i32 = 0xfe;

/// Opens the cgroup directory with kernfs id `id` below the mount `dir`.
fn open_by_handle(dir: &fs::File, id: u64) -> Result<std::os::fd::OwnedFd, CgroupError> {
    use std::os::fd::FromRawFd as _;
    /// `struct file_handle` with room for the 8-byte kernfs handle.
    #[repr(C)]
    struct Handle {
        bytes: u32,
        ty: i32,
        id: [u8; 8],
    }
    let mut handle = Handle { bytes: 8, ty: FILEID_KERNFS, id: id.to_ne_bytes() };
    // SAFETY: `handle` is a valid `struct file_handle` of `bytes` payload
    // bytes; the kernel only reads it. `dir` is an open descriptor.
    let fd = unsafe {
        libc::open_by_handle_at(
            dir.as_raw_fd(),
            (&raw mut handle).cast(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let source = io::Error::last_os_error();
        return Err(match source.raw_os_error() {
            Some(libc::ESTALE | libc::ENOENT) => CgroupError::NoSuchId { id },
            _ => CgroupError::ById { id, source },
        });
    }
    // SAFETY: a new descriptor the kernel just returned; we own it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_unified_mount_on_hybrid_host() {
        let info = "\
25 30 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
35 25 0:32 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(parse_cgroup2_mount(info), Some(PathBuf::from("/sys/fs/cgroup/unified")));
    }

    #[test]
    fn no_cgroup2_mount() {
        let info = "26 25 0:23 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(parse_cgroup2_mount(info), None);
    }

    #[test]
    fn proc_cgroup_v2_line() {
        assert_eq!(
            parse_proc_cgroup("12:cpu:/x\n0::/system.slice/forge.service\n"),
            Some("/system.slice/forge.service")
        );
        assert_eq!(parse_proc_cgroup("0::/\n"), Some("/"));
        assert_eq!(parse_proc_cgroup("3:memory:/a\n"), None);
    }

    #[test]
    fn mount_point_escapes_are_decoded() {
        let info = "35 25 0:32 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_cgroup2_mount(info), Some(PathBuf::from("/mnt/with space")));
    }
}
