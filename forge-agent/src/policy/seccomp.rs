//! The seccomp form of a compiled record, for workloads the agent launches:
//! an OCI runtime-spec `linux.seccomp` profile (usable by runc, crun and
//! friends), so syscall lists cost only the launched workload instead of
//! every process on the host.

use forge_common::{MAX_SYSCALLS, mode};
use serde::Serialize;

use super::{CompiledRecord, syscalls};

/// `linux.seccomp` of the OCI runtime spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeccompProfile {
    pub default_action: &'static str,
    pub architectures: Vec<&'static str>,
    pub syscalls: Vec<SyscallGroup>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SyscallGroup {
    pub names: Vec<&'static str>,
    pub action: &'static str,
    /// ERRNO value for `SCMP_ACT_ERRNO`.
    #[serde(rename = "errnoRet", skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
}

/// The kernel's verdict for a denied syscall is a kill; under seccomp the
/// same deny is `SCMP_ACT_KILL_PROCESS`, and a monitored one is logged.
pub fn profile(c: &CompiledRecord) -> SeccompProfile {
    let mut killed = Vec::new();
    let mut logged = Vec::new();
    let mut allowed = Vec::new();
    for nr in 0..MAX_SYSCALLS {
        let Some(name) = syscalls::name(nr as u32) else { continue };
        match c.record.syscall_denied(nr) {
            Some((monitor, _)) if monitor || c.record.mode == mode::MONITOR => logged.push(name),
            Some(_) => killed.push(name),
            None => allowed.push(name),
        }
    }
    // The smaller list carries the exceptions to the default.
    let deny_by_default = allowed.len() < killed.len();
    let mut groups = Vec::new();
    if deny_by_default {
        if !allowed.is_empty() {
            groups.push(SyscallGroup { names: allowed, action: "SCMP_ACT_ALLOW", errno_ret: None });
        }
    } else if !killed.is_empty() {
        groups.push(SyscallGroup { names: killed, action: "SCMP_ACT_KILL_PROCESS", errno_ret: None });
    }
    if !logged.is_empty() {
        groups.push(SyscallGroup { names: logged, action: "SCMP_ACT_LOG", errno_ret: None });
    }
    SeccompProfile {
        default_action: if deny_by_default { "SCMP_ACT_KILL_PROCESS" } else { "SCMP_ACT_ALLOW" },
        architectures: vec!["SCMP_ARCH_X86_64"],
        syscalls: groups,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Policy, compile};

    fn compiled(spec: &str) -> CompiledRecord {
        let text =
            format!("apiVersion: forgeone.dev/v1alpha1\nkind: Policy\nmetadata: {{name: s}}\nspec:\n{spec}");
        compile(&Policy::from_yaml(&text, "s.yaml").unwrap(), "s.yaml", 1).unwrap()
    }

    #[test]
    fn deny_list_becomes_kill_exceptions() {
        let p = profile(&compiled(
            "  defaults: {syscall: allow}\n  rules:\n    - {op: syscall, action: deny, syscalls: [ptrace, unshare]}\n    - {op: syscall, action: deny, mode: monitor, syscalls: [setns]}\n",
        ));
        assert_eq!(p.default_action, "SCMP_ACT_ALLOW");
        assert_eq!(
            p.syscalls[0],
            SyscallGroup {
                names: vec!["ptrace", "unshare"],
                action: "SCMP_ACT_KILL_PROCESS",
                errno_ret: None
            }
        );
        assert_eq!(p.syscalls[1].names, vec!["setns"]);
        assert_eq!(p.syscalls[1].action, "SCMP_ACT_LOG");
    }

    #[test]
    fn allow_list_becomes_default_kill() {
        let p = profile(&compiled(
            "  rules:\n    - {op: syscall, action: allow, syscalls: [read, write, exit_group]}\n",
        ));
        assert_eq!(p.default_action, "SCMP_ACT_KILL_PROCESS");
        assert_eq!(p.syscalls[0].names, vec!["read", "write", "exit_group"]);
        assert_eq!(p.syscalls[0].action, "SCMP_ACT_ALLOW");
    }
}
