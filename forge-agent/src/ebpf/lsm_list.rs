//! Whether BPF LSM really runs: `bpf` in the kernel's active LSM list.
//!
//! A kernel built with `CONFIG_BPF_LSM` loads and attaches LSM programs
//! whether or not it was booted with `bpf` in `lsm=`; without it the hooks
//! simply never run. So BPF LSM counts as a backend only when securityfs's
//! `lsm` file names it (securityfs is mounted here if the host has not).

use std::{fs, io, path::Path};

/// securityfs, by convention.
pub const SECURITYFS: &str = "/sys/kernel/security";
const LSM_FILE: &str = "/sys/kernel/security/lsm";

/// The active LSM list as the kernel prints it (`lockdown,capability,...`),
/// mounting securityfs first if needed.
pub fn read() -> io::Result<String> {
    if !Path::new(LSM_FILE).exists() {
        nix::mount::mount(
            Some("securityfs"),
            SECURITYFS,
            Some("securityfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| io::Error::other(format!("mounting securityfs at {SECURITYFS}: {e}")))?;
        tracing::info!(path = SECURITYFS, "mounted securityfs (it was not mounted)");
    }
    fs::read_to_string(LSM_FILE).map(|s| s.trim().to_string())
}

/// Whether `list` (comma-separated, as in securityfs) names `bpf`.
pub fn names_bpf(list: &str) -> bool {
    list.split(',').any(|x| x.trim() == "bpf")
}

/// `Ok(())` when BPF LSM is active here; otherwise why not, in words an
/// operator can act on.
pub fn bpf_active() -> Result<(), String> {
    match read() {
        Ok(list) if names_bpf(&list) => Ok(()),
        Ok(list) => Err(format!(
            "BPF LSM is not active: the kernel's LSM list ({LSM_FILE}) is \"{list}\" without \"bpf\", \
             so LSM programs would load and attach but never run; boot with lsm={list},bpf to enable it"
        )),
        Err(e) => Err(format!("BPF LSM state unknown: reading {LSM_FILE}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpf_must_be_named_exactly() {
        assert!(names_bpf("lockdown,capability,landlock,bpf"));
        assert!(names_bpf("bpf"));
        assert!(!names_bpf("lockdown,capability,landlock,yama,apparmor"));
        assert!(!names_bpf("bpfx,xbpf"));
        assert!(!names_bpf(""));
    }
}
