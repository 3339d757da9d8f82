//! cgroup v2 helpers: find the unified hierarchy, create a cgroup, learn its
//! id (the inode number the kernel's `bpf_get_current_cgroup_id` returns),
//! and move processes into it.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::MetadataExt as _,
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
    /// Opens an existing cgroup by absolute path.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, CgroupError> {
        let path = path.into();
        let id = fs::metadata(&path).map_err(io_err(&path))?.ino();
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
    fn mount_point_escapes_are_decoded() {
        let info = "35 25 0:32 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_cgroup2_mount(info), Some(PathBuf::from("/mnt/with space")));
    }
}
