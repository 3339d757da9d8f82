//! Live, reversible quarantine of a cgroup: freeze it (cgroup v2
//! `cgroup.freeze`), and record what was running (process tree, executables,
//! open files, sockets) for the trace.

use std::{fs, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::cgroup::Cgroup;

#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cgroup {path} did not report frozen within {waited:?}")]
    NotFrozen { path: PathBuf, waited: Duration },
}

/// One process of a quarantined workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub ppid: u32,
    pub exe: Option<String>,
    pub cmdline: Vec<String>,
    pub open_files: Vec<String>,
    pub sockets: usize,
}

/// What was running when a workload was quarantined.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub processes: Vec<ProcessInfo>,
}

fn io(path: PathBuf) -> impl FnOnce(std::io::Error) -> QuarantineError {
    move |source| QuarantineError::Io { path, source }
}

/// Whether the kernel reports the cgroup frozen (`cgroup.events: frozen 1`).
pub fn is_frozen(cgroup: &Cgroup) -> Result<bool, QuarantineError> {
    let events = cgroup.path.join("cgroup.events");
    let text = fs::read_to_string(&events).map_err(io(events))?;
    Ok(text.lines().any(|l| l.trim() == "frozen 1"))
}

fn set_freeze(cgroup: &Cgroup, on: bool) -> Result<(), QuarantineError> {
    let f = cgroup.path.join("cgroup.freeze");
    fs::write(&f, if on { "1" } else { "0" }).map_err(io(f))
}

/// Freezes every task of the cgroup and waits until the kernel says so.
pub fn freeze(cgroup: &Cgroup, timeout: Duration) -> Result<(), QuarantineError> {
    set_freeze(cgroup, true)?;
    let start = std::time::Instant::now();
    while !is_frozen(cgroup)? {
        if start.elapsed() > timeout {
            return Err(QuarantineError::NotFrozen { path: cgroup.path.clone(), waited: timeout });
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// Lets the cgroup's tasks run again.
pub fn thaw(cgroup: &Cgroup) -> Result<(), QuarantineError> {
    set_freeze(cgroup, false)
}

/// Reads the process tree, executables, open files and socket counts.
pub fn snapshot(cgroup: &Cgroup) -> Snapshot {
    let mut processes = Vec::new();
    for pid in cgroup.pids().unwrap_or_default() {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let stat = fs::read_to_string(proc_dir.join("stat")).unwrap_or_default();
        // Field 4 (ppid) comes after the parenthesised command name.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let exe = fs::read_link(proc_dir.join("exe")).ok().map(|p| p.display().to_string());
        let cmdline = fs::read(proc_dir.join("cmdline"))
            .map(|b| {
                b.split(|c| *c == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let mut open_files = Vec::new();
        let mut sockets = 0;
        if let Ok(fds) = fs::read_dir(proc_dir.join("fd")) {
            for fd in fds.filter_map(Result::ok) {
                if let Ok(target) = fs::read_link(fd.path()) {
                    let t = target.display().to_string();
                    if t.starts_with("socket:") {
                        sockets += 1;
                    } else if t.starts_with('/') {
                        open_files.push(t);
                    }
                }
            }
        }
        open_files.sort();
        open_files.dedup();
        processes.push(ProcessInfo { pid, ppid, exe, cmdline, open_files, sockets });
    }
    Snapshot { processes }
}
