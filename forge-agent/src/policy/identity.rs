//! The files exact-file deny rules name, by identity: a file is one inode
//! on one device, whichever path reaches it. The map writer stores each
//! exact-file deny under its file's identity too, so that a hard link or a
//! bind mount of a denied file is denied where BPF LSM decides file opens
//! and execs; the evaluator looks files up the same way.
//!
//! Identities are read with `stat(2)` in the agent's mount namespace when a
//! record is written: a file created, replaced or hard-linked later keeps
//! its path rule, and gets its identity entry at the workload's next policy
//! write (apply, tier change). A file that does not exist then has none.

use std::{os::unix::fs::MetadataExt as _, path::Path};

use forge_common::{op, verdict};
use serde::Serialize;

use super::compile::{PathEntry, PathRuleInfo};

/// A file as the kernel programs identify it: its super block's device, in
/// the kernel's `dev_t` encoding (`major << 20 | minor`), and its inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct FileId {
    pub dev: u32,
    pub ino: u64,
}

impl FileId {
    /// The identity of the file at `path` (symlinks followed, as an open
    /// follows them), `None` if it cannot be stat'ed.
    pub fn of(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        Some(Self { dev: kernel_dev(m.dev()), ino: m.ino() })
    }

    /// The path-trie bytes of this identity.
    pub fn key_path(&self) -> [u8; forge_common::INODE_KEY_LEN] {
        forge_common::inode_key_path(self.dev, self.ino)
    }
}

/// `st_dev` (the user-space `dev_t` encoding) as the kernel's `dev_t`.
fn kernel_dev(st_dev: u64) -> u32 {
    let (major, minor) = (libc::major(st_dev), libc::minor(st_dev));
    (major << 20) | (minor & 0xf_ffff)
}

/// An exact-file deny stored by its file's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InodeEntry {
    pub op: u8,
    pub id: FileId,
    pub rule: PathRuleInfo,
    /// The path the rule names.
    pub path: String,
}

/// The exact-file denies of `paths` whose file `id_of` identifies, one per
/// class and file: the first in `paths` order when two rules name the same
/// file (hard links of it).
pub fn inode_entries(paths: &[PathEntry], id_of: impl Fn(&Path) -> Option<FileId>) -> Vec<InodeEntry> {
    let mut out: Vec<InodeEntry> = Vec::new();
    for e in paths {
        let Some((&0, text)) = e.pattern.split_last() else { continue };
        if text.first() != Some(&b'/') {
            continue;
        }
        if e.rule.action != verdict::DENY || !matches!(e.op, op::EXEC | op::FILE_READ | op::FILE_WRITE) {
            continue;
        }
        let path = String::from_utf8_lossy(text).into_owned();
        let Some(id) = id_of(Path::new(&path)) else { continue };
        if out.iter().any(|o| o.op == e.op && o.id == id) {
            continue;
        }
        out.push(InodeEntry { op: e.op, id, rule: e.rule, path });
    }
    out
}

#[cfg(test)]
mod tests {
    use forge_common::mode;

    use super::*;

    fn entry(op: u8, pattern: &[u8], action: u8, rule_id: u32) -> PathEntry {
        PathEntry {
            op,
            pattern: pattern.to_vec(),
            rule: PathRuleInfo { action, mode: mode::ENFORCE, rule_id },
        }
    }

    #[test]
    fn exact_denies_only_first_rule_per_file() {
        let paths = [
            entry(op::FILE_READ, b"/srv/a\0", verdict::DENY, 16),
            entry(op::FILE_READ, b"/srv/link-to-a\0", verdict::DENY, 17),
            entry(op::FILE_READ, b"/srv/\0", verdict::ALLOW, 18),
            entry(op::FILE_READ, b"/srv/dir/", verdict::DENY, 19),
            entry(op::EXEC, b"/srv/a\0", verdict::DENY, 20),
            entry(op::FILE_READ, b"/srv/missing\0", verdict::DENY, 21),
        ];
        let id_of = |p: &Path| match p.to_str()? {
            "/srv/a" | "/srv/link-to-a" => Some(FileId { dev: 1 << 20 | 3, ino: 42 }),
            "/srv/" | "/srv/dir" => Some(FileId { dev: 1 << 20 | 3, ino: 2 }),
            _ => None,
        };
        let got = inode_entries(&paths, id_of);
        let summary: Vec<_> = got.iter().map(|e| (e.op, e.rule.rule_id, e.path.as_str())).collect();
        assert_eq!(summary, [(op::FILE_READ, 16, "/srv/a"), (op::EXEC, 20, "/srv/a")]);
    }

    #[test]
    fn identities_are_the_kernels() {
        // 8:1 (sda1) in user space is 0x801; the kernel's dev_t is 8 << 20 | 1.
        assert_eq!(kernel_dev(0x801), 8 << 20 | 1);
        // Minors above 255 are split in the user-space encoding.
        assert_eq!(kernel_dev(libc::makedev(259, 300)), 259 << 20 | 300);
        let me = FileId::of(Path::new("/proc/self/exe")).expect("stat the test binary");
        let again = FileId::of(&std::env::current_exe().unwrap()).unwrap();
        assert_eq!(me, again);
        assert_eq!(me.key_path()[0], forge_common::INODE_KEY_TAG);
        assert_eq!(FileId::of(Path::new("/nonexistent/forge")), None);
    }
}
