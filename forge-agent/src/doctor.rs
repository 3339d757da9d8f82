//! Host facts and backend probing for `forge doctor`.

use std::{fs, path::Path};

use serde::Serialize;

use crate::ebpf::{BackendStatus, loader};

#[derive(Debug, Serialize)]
pub struct Report {
    pub kernel: String,
    pub btf: bool,
    pub cgroup2_mount: Option<String>,
    pub bpffs_mounted: bool,
    pub lsm_list: Option<String>,
    pub bpf_in_lsm_list: bool,
    /// The kernel can kill an escaped child from a hook (the
    /// `bpf_send_signal_task` kfunc, 6.13+); without it and without BPF LSM
    /// the agent kills it (docs/policy.md, "Containment").
    pub kill_other_task_in_kernel: bool,
    pub backends: Vec<BackendStatus>,
    /// Why probing could not run at all (e.g. not root), if it could not.
    pub probe_error: Option<String>,
    /// The kernel tag of each embedded program that loads here.
    #[serde(skip)]
    pub tags: Vec<(&'static str, u64)>,
}

impl Report {
    /// Healthy when at least one enforcement backend is available.
    pub fn healthy(&self) -> bool {
        self.backends.iter().any(|b| b.available)
    }
}

/// Gathers the report; probing loads (but never attaches) every program.
pub fn gather() -> Report {
    let kernel = nix::sys::utsname::uname()
        .map(|u| format!("{} {}", u.sysname().to_string_lossy(), u.release().to_string_lossy()))
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let lsm_list = crate::ebpf::lsm_list::read().ok();
    let (backends, tags, probe_error) = match loader::probe_with_tags() {
        Ok((b, t)) => (b, t, None),
        Err(e) => (Vec::new(), Vec::new(), Some(e.to_string())),
    };
    Report {
        kernel,
        btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
        cgroup2_mount: crate::cgroup::cgroup2_mount().ok().map(|p| p.display().to_string()),
        bpffs_mounted: fs::read_to_string("/proc/self/mounts")
            .is_ok_and(|m| m.lines().any(|l| l.split_whitespace().nth(2) == Some("bpf"))),
        bpf_in_lsm_list: lsm_list.as_deref().is_some_and(crate::ebpf::lsm_list::names_bpf),
        kill_other_task_in_kernel: crate::ebpf::btf::Btf::from_running_kernel()
            .is_ok_and(|b| b.func_id(forge_common::kfunc::SIGNAL_TASK).is_some()),
        lsm_list,
        backends,
        probe_error,
        tags,
    }
}
