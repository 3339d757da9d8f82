//! tracefs, which attaching a tracepoint reads the tracepoint's id from.
//! A host that has not mounted it (a minimal VM, a container host that
//! mounts only sysfs) gets it mounted at its usual place.

use std::{io, path::Path};

/// `TRACEFS_MAGIC` from linux/magic.h.
const TRACEFS_MAGIC: i64 = 0x7472_6163;

/// Where the kernel's tracing directory is mounted by convention.
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Makes sure tracepoints can be attached: tracefs is mounted at
/// `/sys/kernel/tracing` (or the older debugfs path has the events), or
/// this mounts it there.
pub fn ensure_tracefs() -> io::Result<()> {
    let at = Path::new(TRACEFS);
    if is_tracefs(at) || Path::new("/sys/kernel/debug/tracing/events").is_dir() {
        return Ok(());
    }
    nix::mount::mount(Some("tracefs"), at, Some("tracefs"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|e| io::Error::other(format!("mounting tracefs at {TRACEFS}: {e}")))?;
    tracing::info!(path = TRACEFS, "mounted tracefs (it was not mounted)");
    Ok(())
}

fn is_tracefs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|st| st.filesystem_type().0 == TRACEFS_MAGIC)
}
