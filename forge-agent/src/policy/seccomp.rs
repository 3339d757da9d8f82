//! The seccomp form of a compiled record, for workloads the agent launches:
//! an OCI runtime-spec `linux.seccomp` profile (usable by runc, crun and
//! friends), so syscall lists cost only the launched workload instead of
//! every process on the host.

use std::collections::BTreeSet;

use forge_common::mode;
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
/// The profile covers every ABI (x86_64, i386, x32); seccomp resolves a
/// name per architecture, so a name denied on one ABI is denied on all
/// that have it (the stricter reading).
pub fn profile(c: &CompiledRecord) -> SeccompProfile {
    let mut killed = BTreeSet::new();
    let mut logged = BTreeSet::new();
    let mut all = BTreeSet::new();
    for slot in syscalls::slots() {
        let Some(name) = slot_syscall_name(slot) else { continue };
        all.insert(name);
        match c.record.syscall_denied(slot) {
            Some((monitor, _)) if monitor || c.record.mode == mode::MONITOR => {
                logged.insert(name);
            }
            Some(_) => {
                killed.insert(name);
            }
            None => {}
        }
    }
    let logged: BTreeSet<_> = logged.difference(&killed).copied().collect();
    let allowed: Vec<_> =
        all.iter().filter(|n| !killed.contains(*n) && !logged.contains(*n)).copied().collect();
    let (killed, logged): (Vec<_>, Vec<_>) = (killed.into_iter().collect(), logged.into_iter().collect());
    // The smaller list carries the exceptions to the default.
    let deny_by_default =
        c.record.flags & forge_common::flags::SYSCALL_DEFAULT_DENY != 0 || allowed.len() < killed.len();
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
        architectures: vec!["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        syscalls: groups,
    }
}

/// The name seccomp knows the syscall of bitmap slot `slot` by.
fn slot_syscall_name(slot: usize) -> Option<&'static str> {
    let (abi, nr) = syscalls::slot_abi(slot);
    syscalls::name_in(abi, nr)
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
        // i386-only variants of a denied call are denied by their own name.
        let p = profile(&compiled(
            "  defaults: {syscall: allow}\n  rules:\n    - {op: syscall, action: deny, syscalls: [chown]}\n",
        ));
        assert_eq!(p.syscalls[0].names, vec!["chown", "chown32"]);
    }

    #[test]
    fn allow_list_becomes_default_kill() {
        let p = profile(&compiled(
            "  rules:\n    - {op: syscall, action: allow, syscalls: [read, write, exit_group]}\n",
        ));
        assert_eq!(p.default_action, "SCMP_ACT_KILL_PROCESS");
        // Sorted by name; i386 has the same names for these three.
        assert_eq!(p.syscalls[0].names, vec!["exit_group", "read", "write"]);
        assert_eq!(p.architectures, vec!["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]);
        assert_eq!(p.syscalls[0].action, "SCMP_ACT_ALLOW");
    }
}
