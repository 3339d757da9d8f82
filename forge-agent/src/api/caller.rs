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
}

impl Caller {
    /// The peer's credentials, as recorded by the kernel when it connected.
    pub fn of(socket: &impl AsFd) -> io::Result<Self> {
        let cred = getsockopt(socket, PeerCredentials).map_err(io::Error::from)?;
        Ok(Self { pid: cred.pid() as u32, uid: cred.uid(), gid: cred.gid() })
    }

    /// The agent itself (requests it makes on its own behalf, tests).
    pub fn agent() -> Self {
        Self {
            pid: std::process::id(),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
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
    fn root_always_others_by_group() {
        let root = Caller { pid: 1, uid: 0, gid: 0 };
        assert!(root.allowed(None));
        let user = Caller { pid: u32::MAX, uid: 1000, gid: 998 };
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
