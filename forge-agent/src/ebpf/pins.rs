//! Layout of ForgeOne's pins on bpffs, so that enforcement survives the
//! agent and a restarted agent can adopt it.
//!
//! ```text
//! <root>/maps/<MAP>                 every map
//! <root>/progs/<program>            every loaded program
//! <root>/links/<program>            global attachments (LSM, tracepoints, sys_enter)
//! <root>/cgroups/<id>/<program>     sock_addr attachments of one governed cgroup
//! ```

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// Default pin root.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/forge";
const BPFFS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    pub fn prog(&self, name: &str) -> PathBuf {
        self.root.join("progs").join(name)
    }

    pub fn link(&self, name: &str) -> PathBuf {
        self.root.join("links").join(name)
    }

    pub fn cgroup_dir(&self, cgroup_id: u64) -> PathBuf {
        self.root.join("cgroups").join(cgroup_id.to_string())
    }

    /// Creates the directories (the root must be on a bpffs).
    pub fn create_dirs(&self) -> io::Result<()> {
        for d in ["maps", "progs", "links", "cgroups"] {
            fs::create_dir_all(self.root.join(d))?;
        }
        Ok(())
    }

    /// Whether a complete pinned state exists: all maps and programs.
    pub fn complete(&self, maps: &[&str], progs: &[&str]) -> bool {
        maps.iter().all(|m| self.map(m).exists()) && progs.iter().all(|p| self.prog(p).exists())
    }

    /// Removes every pin below the root (dropping the last reference detaches
    /// links and frees programs and maps).
    pub fn remove_all(&self) -> io::Result<()> {
        match fs::remove_dir_all(&self.root) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

/// Mounts bpffs at `/sys/fs/bpf` unless a bpffs is already there, so that the
/// pin root (below it) can be used.
pub fn ensure_bpffs(root: &Path) -> io::Result<()> {
    let mount = Path::new("/sys/fs/bpf");
    if !root.starts_with(mount) || is_bpffs(mount)? {
        return Ok(());
    }
    nix::mount::mount(Some("bpffs"), mount, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(io::Error::from)
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let st = nix::sys::statfs::statfs(path).map_err(io::Error::from)?;
    Ok(st.filesystem_type().0 as i64 == BPFFS_MAGIC)
}
