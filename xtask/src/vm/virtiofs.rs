//! Host directories shared read-only with a guest over virtiofs.
//!
//! Each share is served by its own QEMU `virtiofsd` (the C daemon in
//! `qemu-system-common`, `/usr/lib/qemu/virtiofsd`; Debian 12 has no
//! separate `virtiofsd` package). That daemon has no read-only option, so the
//! host enforces it: `unshare --mount` gives the daemon a private mount
//! namespace in which the shared directory is bind-mounted onto itself and
//! remounted read-only; the daemon then pivots into it (its default
//! `sandbox=namespace`). Every write the guest attempts — even after it
//! remounts its side read-write — is refused by the host kernel with EROFS.
//! The bind is not recursive, so mounts below the directory are not shared.
//! The host's mount table is untouched.
//!
//! The guest mounts each share with `mount -t virtiofs -o ro TAG DIR`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

/// QEMU's virtiofsd.
pub(crate) const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";

/// A host directory and where the guest mounts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Share {
    /// virtiofs tag (what the guest names in `mount`).
    pub(crate) tag: String,
    /// Absolute, canonical host directory.
    pub(crate) host: PathBuf,
    /// Absolute guest mount point.
    pub(crate) guest: String,
}

impl Share {
    pub(crate) fn new(tag: &str, host: &Path, guest: &str) -> anyhow::Result<Self> {
        let host = host.canonicalize().with_context(|| format!("shared directory {}", host.display()))?;
        ensure!(host.is_dir(), "{} is not a directory", host.display());
        Ok(Self { tag: tag.to_owned(), host, guest: guest.to_owned() })
    }
}

/// Where `host` (an absolute path) appears in the guest, if a share holds it;
/// the share with the longest matching host directory wins.
pub(crate) fn guest_path(shares: &[Share], host: &Path) -> Option<String> {
    shares
        .iter()
        .filter_map(|s| host.strip_prefix(&s.host).ok().map(|rest| (s, rest)))
        .max_by_key(|(s, _)| s.host.as_os_str().len())
        .map(|(s, rest)| {
            let rest = rest.to_string_lossy();
            if rest.is_empty() {
                s.guest.clone()
            } else {
                format!("{}/{rest}", s.guest.trim_end_matches('/'))
            }
        })
}

/// A running virtiofsd serving one share; killed (by its handle) on drop.
pub(crate) struct Daemon {
    child: Child,
    pub(crate) socket: PathBuf,
    pub(crate) tag: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Our own child: SIGKILL by handle, then reap. It normally exited
        // already when QEMU closed the connection.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.socket);
    }
}

/// A private directory for the daemons' sockets, outside every share (a
/// daemon sees its share read-only, so it could not create a socket there);
/// removed on drop.
pub(crate) struct SocketDir(PathBuf);

impl SocketDir {
    pub(crate) fn new(shares: &[Share]) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("forge-vm-{}", std::process::id()));
        ensure!(
            guest_path(shares, &dir).is_none(),
            "{} is inside a shared directory; set TMPDIR elsewhere",
            dir.display()
        );
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Starts a virtiofsd for `share`, its socket in `sockets` and its log in
/// `logs`, and waits until it listens.
pub(crate) fn start(share: &Share, sockets: &SocketDir, logs: &Path) -> anyhow::Result<Daemon> {
    ensure!(
        Path::new(VIRTIOFSD).is_file(),
        "{VIRTIOFSD} is missing: it comes with qemu-system-x86 (cargo xtask setup)"
    );
    let socket = sockets.0.join(format!("{}.sock", share.tag));
    // sockaddr_un holds 108 bytes with the terminating NUL.
    ensure!(
        socket.as_os_str().len() < 108,
        "socket path {} is too long for a unix socket: use a shorter TMPDIR",
        socket.display()
    );
    let _ = fs::remove_file(&socket);
    let log_path = logs.join(format!("virtiofsd-{}.log", share.tag));
    let log = fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c", SCRIPT, "virtiofs"])
        .arg(&share.host)
        .arg(&socket)
        .arg(VIRTIOFSD)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let mut child = cmd.spawn().context("starting unshare (util-linux) for virtiofsd")?;
    let started = Instant::now();
    while !socket.exists() {
        if let Some(status) = child.try_wait()? {
            bail!(
                "virtiofsd for {} exited ({status}) before listening; log {}:\n{}",
                share.host.display(),
                log_path.display(),
                fs::read_to_string(&log_path).unwrap_or_default().trim_end()
            );
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "virtiofsd for {} did not listen within 10 s (log {})",
                share.host.display(),
                log_path.display()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(Daemon { child, socket, tag: share.tag.clone() })
}

/// Runs inside the private mount namespace: `$1` the directory, `$2` the
/// socket, `$3` virtiofsd. Before serving, the mount table must show the
/// directory's topmost mount read-only (a path that mountinfo escapes, such
/// as one with a space, fails this check: closed, not open).
const SCRIPT: &str = r#"set -eu
mount --bind "$1" "$1"
mount -o remount,bind,ro "$1"
if ! awk -v d="$1" '$5 == d { o = $6 } END { exit !(o ~ /(^|,)ro(,|$)/) }' /proc/self/mountinfo; then
    echo "virtiofs: $1 is not mounted read-only after the remount; not sharing it" >&2
    exit 1
fi
exec "$3" --socket-path="$2" -o source="$1" -o cache=always -o no_posix_lock -o no_flock
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn share(tag: &str, host: &str, guest: &str) -> Share {
        Share { tag: tag.to_owned(), host: PathBuf::from(host), guest: guest.to_owned() }
    }

    #[test]
    fn guest_path_maps_through_the_longest_share() {
        let shares = [
            share("usr", "/usr", "/usr"),
            share("src", "/work/tree", "/src"),
            share("target", "/work/tree/target", "/target"),
        ];
        let map = |p: &str| guest_path(&shares, Path::new(p));
        assert_eq!(map("/usr/bin/python3").as_deref(), Some("/usr/bin/python3"));
        assert_eq!(map("/work/tree").as_deref(), Some("/src"));
        assert_eq!(map("/work/tree/policies/a.yaml").as_deref(), Some("/src/policies/a.yaml"));
        assert_eq!(map("/work/tree/target/debug/forge").as_deref(), Some("/target/debug/forge"));
        assert_eq!(map("/work/treehouse/x"), None);
        assert_eq!(map("/tmp/x"), None);
    }
}
