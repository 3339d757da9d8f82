//! The capsule's descriptor table. Descriptors 0-2 are stdio, 3 is the
//! preopened root `/` (every path is resolved from it and gated), files and
//! sockets the capsule opens take the lowest free number above.

use std::{collections::BTreeMap, fs::File, net::TcpStream};

use super::errno::{BADF, Errno, MFILE};

pub enum Fd {
    Stdin,
    Stdout,
    Stderr,
    /// The preopened root directory.
    Root,
    File {
        file: File,
        path: String,
        /// Opened for reading and/or writing (what WASI 0.2's `get-flags` reports).
        read: bool,
        write: bool,
    },
    Dir {
        path: String,
    },
    Socket {
        stream: TcpStream,
        peer: std::net::SocketAddr,
    },
}

/// WASI file types.
pub mod filetype {
    pub const CHARACTER_DEVICE: u8 = 2;
    pub const DIRECTORY: u8 = 3;
    pub const REGULAR_FILE: u8 = 4;
    pub const SOCKET_STREAM: u8 = 6;
}

impl Fd {
    pub fn filetype(&self) -> u8 {
        match self {
            Self::Stdin | Self::Stdout | Self::Stderr => filetype::CHARACTER_DEVICE,
            Self::Root | Self::Dir { .. } => filetype::DIRECTORY,
            Self::File { .. } => filetype::REGULAR_FILE,
            Self::Socket { .. } => filetype::SOCKET_STREAM,
        }
    }

    /// The absolute path of a directory descriptor (for resolving paths).
    pub fn dir_path(&self) -> Option<&str> {
        match self {
            Self::Root => Some("/"),
            Self::Dir { path } => Some(path),
            _ => None,
        }
    }
}

pub struct FdTable {
    fds: BTreeMap<i32, Fd>,
    max_open: usize,
}

/// Descriptors the table starts with (not counted against the limit).
const INITIAL: usize = 4;

impl FdTable {
    pub fn new(max_open: usize) -> Self {
        let fds = BTreeMap::from([(0, Fd::Stdin), (1, Fd::Stdout), (2, Fd::Stderr), (3, Fd::Root)]);
        Self { fds, max_open }
    }

    pub fn get(&self, fd: i32) -> Result<&Fd, Errno> {
        self.fds.get(&fd).ok_or(BADF)
    }

    pub fn get_mut(&mut self, fd: i32) -> Result<&mut Fd, Errno> {
        self.fds.get_mut(&fd).ok_or(BADF)
    }

    /// Adds `fd` at the lowest free number; `EMFILE` past the run's limit.
    pub fn insert(&mut self, fd: Fd) -> Result<i32, Errno> {
        if self.fds.len() >= INITIAL + self.max_open {
            return Err(MFILE);
        }
        let mut n = 0;
        while self.fds.contains_key(&n) {
            n += 1;
        }
        self.fds.insert(n, fd);
        Ok(n)
    }

    pub fn remove(&mut self, fd: i32) -> Result<Fd, Errno> {
        self.fds.remove(&fd).ok_or(BADF)
    }
}

/// `base` joined with the capsule's relative `path`, normalized lexically
/// (`..` never climbs above `/`). The result is what the gate sees; the
/// open itself refuses symlinks, so it is also what is opened.
pub fn resolve(base: &str, path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let joined = if path.starts_with('/') { path.to_string() } else { format!("{base}/{path}") };
    for c in joined.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() { "/".into() } else { format!("/{}", parts.join("/")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_never_climbs_above_root() {
        assert_eq!(resolve("/", "etc/passwd"), "/etc/passwd");
        assert_eq!(resolve("/", "../../etc/./passwd"), "/etc/passwd");
        assert_eq!(resolve("/var/out", "a/../b"), "/var/out/b");
        assert_eq!(resolve("/var/out", "../../../x"), "/x");
        assert_eq!(resolve("/", "."), "/");
    }

    #[test]
    fn descriptors_take_the_lowest_free_number_up_to_the_limit() {
        let mut t = FdTable::new(2);
        assert_eq!(t.insert(Fd::Dir { path: "/a".into() }), Ok(4));
        assert_eq!(t.insert(Fd::Dir { path: "/b".into() }), Ok(5));
        assert_eq!(t.insert(Fd::Dir { path: "/c".into() }).unwrap_err(), MFILE);
        t.remove(4).unwrap();
        assert_eq!(t.insert(Fd::Dir { path: "/d".into() }), Ok(4));
        assert!(t.get(9).is_err());
    }
}
