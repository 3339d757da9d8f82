//! Who is calling the API, as the kernel says (`SO_PEERCRED`), and whether
//! they may.
//!
//! Two rules (docs/api.md, "Who may call"):
//! - The API is for root and, if the agent was given one (`--api-group`),
//!   the members of one group; everyone else is refused at the socket.
//! - A caller inside a governed subtree may not change the agent: every
//!   mutating method is refused and audited, whoever the caller is (root
//!   included). Read-only methods answer.

use std::{fs, io, os::fd::AsFd};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use serde::Serialize;

/// The peer of an API connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Caller {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// When process `pid` started (`/proc/<pid>/stat`, clock ticks since
    /// boot), read when it connected: a later request from a connection
    /// whose process is gone (its pid maybe reused) is told apart.
    pub start: Option<u64>,
}

impl Caller {
    /// The peer's credentials, as recorded by the kernel when it connected.
    pub fn of(socket: &impl AsFd) -> io::Result<Self> {
        let cred = getsockopt(socket, PeerCredentials).map_err(io::Error::from)?;
        let pid = cred.pid() as u32;
        Ok(Self { pid, uid: cred.uid(), gid: cred.gid(), start: start_time(pid) })
    }

    /// Whether the process that connected still runs (same pid, same start).
    pub fn still_there(&self) -> bool {
        self.start.is_some() && start_time(self.pid) == self.start
    }

    /// Whether the caller may use the API at all: root, or a member of
    /// `group` (its primary group or one of its supplementary groups).
    pub fn allowed(&self, group: Option<u32>) -> bool {
        if self.uid == 0 {
            return true;
        }
        let Some(group) = group else { return false };
        self.gid == group || supplementary_groups(self.pid).is_ok_and(|g| g.contains(&group))
    }
}

/// When process `pid` started, in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`).
pub fn start_time(pid: u32) -> Option<u64> {
    parse_start_time(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Field 22 of a `/proc/<pid>/stat` line (after the `(comm)`, which may
/// hold spaces and parentheses).
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The supplementary groups of process `pid` (`Groups:` in its status).
fn supplementary_groups(pid: u32) -> io::Result<Vec<u32>> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(parse_groups(&status))
}

/// The ids on the `Groups:` line of a `/proc/<pid>/status` text.
pub fn parse_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default()
}

/// Resolves a group name (or a numeric id) for `--api-group`.
pub fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(id) = name.parse() {
        return Ok(id);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("no group named {name:?} on this host")),
        Err(e) => Err(format!("looking up group {name:?}: {e}")),
    }
}

#[cfg(test)]
impl Caller {
    fn of_pid_for_test(pid: u32) -> Self {
        Self { pid, uid: 0, gid: 0, start: start_time(pid) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_line() {
        let status = "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 27 998 \nVmPeak:\t1 kB\n";
        assert_eq!(parse_groups(status), vec![4, 27, 998]);
        assert_eq!(parse_groups("Groups:\t\n"), Vec::<u32>::new());
        assert_eq!(parse_groups("Name:\tx\n"), Vec::<u32>::new());
    }

    #[test]
    fn start_time_is_field_22_after_the_command() {
        let stat =
            "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(parse_start_time(stat), Some(987_654));
        assert_eq!(parse_start_time("garbage"), None);
        let me = Caller::of_pid_for_test(std::process::id());
        assert!(me.still_there());
        let gone = Caller { start: Some(1), ..me };
        assert!(!gone.still_there());
    }

    #[test]
    fn root_always_others_by_group() {
        let root = Caller { pid: 1, uid: 0, gid: 0, start: None };
        assert!(root.allowed(None));
        let user = Caller { pid: u32::MAX, uid: 1000, gid: 998, start: None };
        assert!(!user.allowed(None));
        assert!(user.allowed(Some(998)));
        // Not its primary group, and the process does not exist: refused.
        assert!(!user.allowed(Some(27)));
    }

    #[test]
    fn numeric_groups_and_unknown_names() {
        assert_eq!(group_id("998"), Ok(998));
        assert_eq!(group_id("root"), Ok(0));
        assert!(group_id("no-such-group-here").unwrap_err().contains("no group named"));
    }
}
