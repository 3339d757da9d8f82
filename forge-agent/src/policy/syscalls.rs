//! Syscall names and numbers for every ABI an x86_64 kernel accepts
//! (x86_64, i386 through `int 0x80` or the compat entries, x32), and the
//! bitmap slots ([`forge_common::syscall_slot`]) a rule naming a syscall
//! covers.
//!
//! A rule names a syscall by what it does, not by one ABI's number: `mkdir`
//! covers x86_64 `mkdir` (83), x32 `mkdir` (the same number) and i386
//! `mkdir` (39); `chown` covers i386 `chown` and `chown32`; `rt_sigaction`
//! covers x32's own `rt_sigaction` (512) and i386 `sigaction` and `signal`.
//! A name may be qualified with an ABI (`i386:mkdir`) to cover that ABI
//! only; x32 shares the x86_64 numbers below 512, so `x86_64:NAME` covers x32
//! too.

use std::{fmt, str::FromStr};

use forge_common::{
    COMPAT_SYSCALL_BIT, SYSCALL_COMPAT_BASE, SYSCALL_SLOTS, X32_SYSCALL_BIT,
    syscall_effect::{Hooked, Scope},
};

#[cfg(target_arch = "x86_64")]
#[path = "syscalls_x86_64.rs"]
mod table;

/// A syscall ABI of an x86_64 kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Abi {
    X86_64,
    I386,
    X32,
}

impl Abi {
    pub const ALL: [Self; 3] = [Self::X86_64, Self::I386, Self::X32];

    pub fn name(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::I386 => "i386",
            Self::X32 => "x32",
        }
    }
}

impl fmt::Display for Abi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Abi {
    type Err = SyscallNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| SyscallNameError::UnknownAbi(s.to_string()))
    }
}

/// A syscall entry of a rule that names nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyscallNameError {
    #[error("unknown ABI {0:?}; expected x86_64, i386 or x32 before the colon")]
    UnknownAbi(String),
    #[error("unknown syscall {0:?} (no ABI of this kernel has it)")]
    Unknown(String),
    #[error("{abi} has no syscall {name:?}")]
    UnknownIn { abi: Abi, name: String },
}

fn lookup(t: &[(&'static str, u16)], name: &str) -> Option<u32> {
    t.binary_search_by(|(n, _)| n.cmp(&name)).ok().map(|i| u32::from(t[i].1))
}

fn reverse(t: &[(&'static str, u16)], nr: u32) -> Option<&'static str> {
    t.iter().find(|(_, n)| u32::from(*n) == nr).map(|(name, _)| *name)
}

/// Number of syscall `name` on x86_64.
pub fn number(name: &str) -> Option<u32> {
    lookup(table::X86_64, name)
}

/// Name of x86_64 syscall `nr`, if known.
pub fn name(nr: u32) -> Option<&'static str> {
    reverse(table::X86_64, nr)
}

/// Number of syscall `name` in `abi` (x32: without `__X32_SYSCALL_BIT`).
pub fn number_in(abi: Abi, name: &str) -> Option<u32> {
    match abi {
        Abi::X86_64 => number(name),
        Abi::I386 => lookup(table::I386, name),
        // x32 has its own numbers for some calls, and the x86_64 ones below 512.
        Abi::X32 => lookup(table::X32_ONLY, name).or_else(|| number(name).filter(|n| *n < 512)),
    }
}

/// Name of syscall `nr` in `abi` (x32: without `__X32_SYSCALL_BIT`).
pub fn name_in(abi: Abi, nr: u32) -> Option<&'static str> {
    match abi {
        Abi::X86_64 => name(nr),
        Abi::I386 => reverse(table::I386, nr),
        Abi::X32 if nr >= 512 => reverse(table::X32_ONLY, nr),
        Abi::X32 => name(nr),
    }
}

/// Every x86_64 syscall name.
pub fn names() -> impl Iterator<Item = &'static str> {
    table::X86_64.iter().map(|(n, _)| *n)
}

/// The x86_64 name for what syscall `name` (of any ABI) does: itself, or
/// the call an i386 variant stands for (`chown32` → `chown`).
pub fn family(name: &str) -> &str {
    table::I386_ALIASES.binary_search_by(|(n, _)| n.cmp(&name)).map_or(name, |i| table::I386_ALIASES[i].1)
}

/// Where a deny of a syscall is enforced before the call's effect: the LSM
/// hooks that refuse all of it, and those that refuse a part of it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DenyEffect {
    pub whole: Vec<&'static str>,
    /// `(hook, the part it refuses, the kernel it needs)`.
    pub parts: Vec<(&'static str, &'static str, Option<&'static str>)>,
}

impl DenyEffect {
    /// The hooks among those `on` accepts (the ones that run on some host)
    /// that refuse syscall `name`'s effect (a rule's name, of any ABI)
    /// before it happens.
    pub fn of(name: &str, on: impl Fn(&Hooked) -> bool) -> Self {
        let bare = name.split_once(':').map_or(name, |(_, n)| n);
        let mut out = Self::default();
        let Some(nr) = number(family(bare)) else { return out };
        for h in forge_common::syscall_effect::hooks_of(nr).filter(|h| on(h)) {
            match h.scope {
                Scope::Whole => out.whole.push(h.hook),
                Scope::Part(what) => out.parts.push((h.hook, what, h.since)),
            }
        }
        out
    }

    /// Whether nothing of the call happens.
    pub fn refused(&self) -> bool {
        !self.whole.is_empty()
    }

    /// "H refuses P first; ..." for the partial hooks (empty when none).
    pub fn parts_text(&self) -> String {
        self.parts
            .iter()
            .map(|(hook, what, since)| match since {
                Some(v) => format!("{hook} (kernel {v}+) refuses {what} first"),
                None => format!("{hook} refuses {what} first"),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The bitmap slots of `abi` that do what `family` does.
fn family_slots(abi: Abi, family_name: &str, out: &mut Vec<usize>) {
    match abi {
        Abi::X86_64 => out.extend(number(family_name).map(|n| n as usize)),
        Abi::X32 => out.extend(
            lookup(table::X32_ONLY, family_name)
                .or_else(|| number(family_name).filter(|n| *n < 512))
                .map(|n| n as usize),
        ),
        Abi::I386 => out.extend(
            table::I386
                .iter()
                .filter(|(n, _)| family(n) == family_name)
                .map(|(_, nr)| SYSCALL_COMPAT_BASE + usize::from(*nr)),
        ),
    }
}

/// The bitmap slots a rule's syscall entry covers: `NAME` on every ABI,
/// `ABI:NAME` on that ABI only (see the module docs). Sorted, no duplicates.
pub fn rule_slots(entry: &str) -> Result<Vec<usize>, SyscallNameError> {
    let (abis, name): (&[Abi], &str) = match entry.split_once(':') {
        Some((abi, name)) => (
            match abi.parse::<Abi>()? {
                Abi::X86_64 => &[Abi::X86_64, Abi::X32],
                Abi::I386 => &[Abi::I386],
                Abi::X32 => &[Abi::X32],
            },
            name,
        ),
        None => (&Abi::ALL, entry),
    };
    let fam = family(name);
    let mut slots = Vec::new();
    for abi in abis {
        family_slots(*abi, fam, &mut slots);
    }
    slots.sort_unstable();
    slots.dedup();
    if slots.is_empty() {
        return Err(match entry.split_once(':') {
            Some((_, n)) => SyscallNameError::UnknownIn { abi: abis[0], name: n.to_string() },
            None => SyscallNameError::Unknown(name.to_string()),
        });
    }
    Ok(slots)
}

/// The name of bitmap slot `slot`: `mkdir` (x86_64, and x32 below 512),
/// `x32:execve` (x32's own numbers), `i386:mkdir`; the number where the
/// table has no name.
pub fn slot_name(slot: usize) -> String {
    let (abi, nr) = slot_abi(slot);
    let n = name_in(abi, nr).map_or_else(|| nr.to_string(), str::to_string);
    if abi == Abi::X86_64 { n } else { format!("{abi}:{n}") }
}

/// The ABI and number (in that ABI) a bitmap slot stands for.
pub fn slot_abi(slot: usize) -> (Abi, u32) {
    if slot >= SYSCALL_COMPAT_BASE {
        (Abi::I386, (slot - SYSCALL_COMPAT_BASE) as u32)
    } else if slot >= 512 {
        (Abi::X32, slot as u32)
    } else {
        (Abi::X86_64, slot as u32)
    }
}

/// Every bitmap slot, in order.
pub fn slots() -> std::ops::Range<usize> {
    0..SYSCALL_SLOTS
}

/// A syscall as a `SYS_ENTER` event reports it ([`forge_common::Event::nr`]):
/// its ABI and its number in that ABI.
pub fn from_event_nr(nr: u32) -> (Abi, u32) {
    if nr & COMPAT_SYSCALL_BIT != 0 {
        (Abi::I386, nr & !COMPAT_SYSCALL_BIT)
    } else if u64::from(nr) & X32_SYSCALL_BIT != 0 {
        (Abi::X32, nr & !(X32_SYSCALL_BIT as u32))
    } else {
        (Abi::X86_64, nr)
    }
}

/// The event form of syscall `nr` of `abi`.
pub fn to_event_nr(abi: Abi, nr: u32) -> u32 {
    match abi {
        Abi::X86_64 => nr,
        Abi::I386 => nr | COMPAT_SYSCALL_BIT,
        Abi::X32 => nr | X32_SYSCALL_BIT as u32,
    }
}

/// A syscall in event form, for people: `unshare(272)`, `i386:mkdir(39)`,
/// `x32:execve(520)`, or the bare number where no table names it.
pub fn describe(event_nr: u32) -> String {
    let (abi, nr) = from_event_nr(event_nr);
    let prefix = if abi == Abi::X86_64 { String::new() } else { format!("{abi}:") };
    match name_in(abi, nr) {
        Some(n) => format!("{prefix}{n}({nr})"),
        None => format!("{prefix}{nr}"),
    }
}

/// Parses a syscall as an operator writes it: a name or number, optionally
/// after an ABI (`i386:mkdir`, `i386:39`); returns the event form.
pub fn parse(s: &str) -> Result<u32, SyscallNameError> {
    let (abi, what) = match s.split_once(':') {
        Some((abi, what)) => (abi.parse::<Abi>()?, what),
        None => (Abi::X86_64, s),
    };
    let nr = match what.parse::<u32>() {
        Ok(n) => n,
        Err(_) => {
            number_in(abi, what).ok_or_else(|| SyscallNameError::UnknownIn { abi, name: what.to_string() })?
        }
    };
    Ok(to_event_nr(abi, nr))
}

/// i386 calls that multiplex others behind their first argument
/// (`socketcall(SYS_CONNECT, …)`, `ipc(SEMOP, …)`): the call and the
/// families it reaches. A record that denies any of those families denies
/// the multiplexer too (unless a rule names it), since the kernel program
/// decides on the syscall number alone.
/// The new mount API: calls that make, configure, clone or attach mounts
/// without `mount(2)`. A `mount` deny covers them (see
/// `compile::deny_mount_family`).
pub const MOUNT_API: &[&str] = &[
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "open_tree",
    "open_tree_attr",
    "move_mount",
    "mount_setattr",
];

pub const I386_MULTIPLEXERS: &[(&str, &[&str])] = &[
    (
        "socketcall",
        &[
            "socket",
            "bind",
            "connect",
            "listen",
            "accept",
            "accept4",
            "getsockname",
            "getpeername",
            "socketpair",
            "sendto",
            "recvfrom",
            "shutdown",
            "setsockopt",
            "getsockopt",
            "sendmsg",
            "recvmsg",
            "recvmmsg",
            "sendmmsg",
        ],
    ),
    (
        "ipc",
        &[
            "semop",
            "semget",
            "semctl",
            "semtimedop",
            "msgsnd",
            "msgrcv",
            "msgget",
            "msgctl",
            "shmat",
            "shmdt",
            "shmget",
            "shmctl",
        ],
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_numbers() {
        assert_eq!(number("read"), Some(0));
        assert_eq!(number("ptrace"), Some(101));
        assert_eq!(number("unshare"), Some(272));
        assert_eq!(number("no_such_call"), None);
        assert_eq!(name(101), Some("ptrace"));
        assert_eq!(number_in(Abi::I386, "mkdir"), Some(39));
        assert_eq!(number_in(Abi::I386, "unshare"), Some(310));
        assert_eq!(number_in(Abi::X32, "execve"), Some(520));
        assert_eq!(number_in(Abi::X32, "mkdir"), Some(83));
        assert_eq!(name_in(Abi::I386, 39), Some("mkdir"));
        // Calls newer than the 6.1 headers, on both ABIs.
        assert_eq!(number("mseal"), Some(462));
        assert_eq!(number_in(Abi::I386, "mseal"), Some(462));
        assert_eq!(number_in(Abi::I386, "map_shadow_stack"), None);
    }

    #[test]
    fn tables_are_sorted_and_fit_the_bitmap() {
        for t in [table::X86_64, table::I386, table::X32_ONLY] {
            assert!(t.windows(2).all(|w| w[0].0 < w[1].0));
        }
        assert!(table::I386_ALIASES.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(table::X86_64.iter().all(|(_, n)| *n < 512));
        assert!(table::X32_ONLY.iter().all(|(_, n)| (512..SYSCALL_COMPAT_BASE as u16).contains(n)));
        assert!(table::I386.iter().all(|(_, n)| usize::from(*n) < SYSCALL_SLOTS - SYSCALL_COMPAT_BASE));
        // Every alias names an i386 call and an x86_64 family.
        for (alias, fam) in table::I386_ALIASES {
            assert!(number_in(Abi::I386, alias).is_some(), "{alias}");
            assert!(number(fam).is_some(), "{fam}");
        }
    }

    /// The tables hold every call of the UAPI headers installed here (they
    /// may hold newer ones). Skipped where the headers are not installed.
    #[test]
    fn tables_match_the_installed_uapi_headers() {
        let dir = std::path::Path::new("/usr/include/x86_64-linux-gnu/asm");
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        let (Some(h64), Some(h32), Some(hx32)) =
            (read("unistd_64.h"), read("unistd_32.h"), read("unistd_x32.h"))
        else {
            eprintln!("no UAPI headers under {}: nothing to compare", dir.display());
            return;
        };
        let defines = |h: &str, x32: bool| -> Vec<(String, u32)> {
            h.lines()
                .filter_map(|l| {
                    let rest = l.strip_prefix("#define __NR_")?;
                    let (name, val) = rest.split_once(' ')?;
                    let val =
                        if x32 { val.strip_prefix("(__X32_SYSCALL_BIT + ")?.strip_suffix(')')? } else { val };
                    Some((name.to_string(), val.trim().parse().ok()?))
                })
                .collect()
        };
        let d64 = defines(&h64, false);
        assert!(d64.len() > 300, "parsed {} x86_64 defines", d64.len());
        for (n, nr) in d64 {
            assert_eq!(number_in(Abi::X86_64, &n), Some(nr), "x86_64 {n}");
        }
        for (n, nr) in defines(&h32, false) {
            assert_eq!(number_in(Abi::I386, &n), Some(nr), "i386 {n}");
        }
        for (n, nr) in defines(&hx32, true) {
            assert_eq!(number_in(Abi::X32, &n), Some(nr), "x32 {n}");
        }
    }

    #[test]
    fn a_name_covers_every_abi() {
        let base = SYSCALL_COMPAT_BASE;
        assert_eq!(rule_slots("mkdir"), Ok(vec![83, base + 39]));
        assert_eq!(rule_slots("unshare"), Ok(vec![272, base + 310]));
        // chown: x86_64 92, i386 chown (182) and chown32 (212); either name.
        assert_eq!(rule_slots("chown"), Ok(vec![92, base + 182, base + 212]));
        assert_eq!(rule_slots("chown32"), rule_slots("chown"));
        // execve: x86_64 59, x32's own 520, i386 11.
        assert_eq!(rule_slots("execve"), Ok(vec![59, 520, base + 11]));
        // Only one ABI has it.
        assert_eq!(rule_slots("socketcall"), Ok(vec![base + 102]));
        assert_eq!(rule_slots("kexec_file_load"), Ok(vec![320]));
        // Qualified.
        assert_eq!(rule_slots("i386:mkdir"), Ok(vec![base + 39]));
        assert_eq!(rule_slots("x86_64:execve"), Ok(vec![59, 520]));
        assert_eq!(rule_slots("x32:execve"), Ok(vec![520]));
        assert_eq!(
            rule_slots("i386:kexec_file_load"),
            Err(SyscallNameError::UnknownIn { abi: Abi::I386, name: "kexec_file_load".into() })
        );
        assert_eq!(rule_slots("no_such"), Err(SyscallNameError::Unknown("no_such".into())));
        assert!(matches!(rule_slots("arm64:mkdir"), Err(SyscallNameError::UnknownAbi(_))));
    }

    #[test]
    fn deny_effects_name_their_hooks_and_parts() {
        let all = |_: &Hooked| true;
        let mount = DenyEffect::of("mount", all);
        assert!(mount.refused() && mount.parts.is_empty());
        assert_eq!(mount.whole, ["lsm/sb_mount"]);
        // i386 names decide like their x86_64 family.
        assert_eq!(DenyEffect::of("i386:ptrace", all).whole, ["lsm/ptrace_access_check, lsm/ptrace_traceme"]);
        let unshare = DenyEffect::of("unshare", all);
        assert!(!unshare.refused());
        assert_eq!(unshare.parts, [("lsm/userns_create", "user-namespace creation", Some("6.1"))]);
        assert!(unshare.parts_text().contains("(kernel 6.1+) refuses user-namespace creation first"));
        // Where the hook does not run, nothing of the call is refused.
        let no_userns = DenyEffect::of("clone3", |h| h.hook != forge_common::syscall_effect::USERNS_HOOK);
        assert_eq!(no_userns, DenyEffect::default());
        let finit = DenyEffect::of("finit_module", all);
        assert_eq!(finit.whole, ["lsm/kernel_read_file"]);
        assert_eq!(finit.parts.len(), 1);
        assert!(finit.parts_text().contains("modules loaded on the caller's behalf"));
        assert_eq!(DenyEffect::of("mkdir", all), DenyEffect::default());
        assert_eq!(DenyEffect::of("no_such_call", all), DenyEffect::default());
    }

    #[test]
    fn event_numbers_name_their_abi() {
        assert_eq!(describe(272), "unshare(272)");
        assert_eq!(describe(39 | COMPAT_SYSCALL_BIT), "i386:mkdir(39)");
        assert_eq!(describe(520 | X32_SYSCALL_BIT as u32), "x32:execve(520)");
        assert_eq!(describe(83 | X32_SYSCALL_BIT as u32), "x32:mkdir(83)");
        assert_eq!(describe(4000), "4000");
        assert_eq!(parse("i386:mkdir"), Ok(39 | COMPAT_SYSCALL_BIT));
        assert_eq!(parse("i386:39"), Ok(39 | COMPAT_SYSCALL_BIT));
        assert_eq!(parse("mkdir"), Ok(83));
        assert!(parse("i386:newfstatat").is_err());
        for slot in [83, 520, SYSCALL_COMPAT_BASE + 39] {
            let n = slot_name(slot);
            let ev = parse(n.as_str()).unwrap();
            let (abi, nr) = from_event_nr(ev);
            let compat = abi == Abi::I386;
            let id = if abi == Abi::X32 { u64::from(nr) | X32_SYSCALL_BIT } else { u64::from(nr) };
            assert_eq!(forge_common::syscall_slot(compat, id), Some(slot), "{n}");
        }
        assert_eq!(slot_name(SYSCALL_COMPAT_BASE + 39), "i386:mkdir");
        assert_eq!(slot_name(520), "x32:execve");
    }

    #[test]
    fn multiplexed_families_exist() {
        for (mux, fams) in I386_MULTIPLEXERS {
            assert!(number_in(Abi::I386, mux).is_some(), "{mux}");
            for f in *fams {
                assert!(rule_slots(f).is_ok(), "{f}");
            }
        }
    }
}
