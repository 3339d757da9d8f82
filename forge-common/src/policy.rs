//! Policy records as the kernel reads them.

use core::mem::size_of;

use crate::op;

/// Entries in the syscall bitmaps: one per [`syscall_slot`].
pub const SYSCALL_SLOTS: usize = 1152;
/// `u64` words in a syscall bitmap.
pub const SYSCALL_WORDS: usize = SYSCALL_SLOTS / 64;
/// Slots `0..SYSCALL_COMPAT_BASE` hold the 64-bit syscalls: x86_64 numbers
/// below 512, and the x32-only numbers 512..576 (an x32 call of a number
/// below 512 is the x86_64 call of that number and shares its slot).
/// Slots from here hold the i386 (`int 0x80`, compat) numbers.
pub const SYSCALL_COMPAT_BASE: usize = 576;
/// `__X32_SYSCALL_BIT`: set in the number of an x32 syscall.
pub const X32_SYSCALL_BIT: u64 = 0x4000_0000;
/// Set in [`crate::Event::nr`] of a syscall event when the call was a
/// 32-bit (i386) one.
pub const COMPAT_SYSCALL_BIT: u32 = 0x8000_0000;

/// The bitmap slot of a syscall as the kernel's entry sees it: its number
/// (`id`, with [`X32_SYSCALL_BIT`] for x32 calls) and whether it is a 32-bit
/// (i386) call. `None` for numbers no ABI table has a slot for.
#[inline(always)]
pub fn syscall_slot(compat: bool, id: u64) -> Option<usize> {
    let limit = SYSCALL_SLOTS - SYSCALL_COMPAT_BASE;
    if compat {
        if id < limit as u64 {
            return Some(SYSCALL_COMPAT_BASE + id as usize);
        }
        return None;
    }
    if id & X32_SYSCALL_BIT != 0 {
        let n = id & !X32_SYSCALL_BIT;
        return if n < SYSCALL_COMPAT_BASE as u64 { Some(n as usize) } else { None };
    }
    if id < 512 { Some(id as usize) } else { None }
}
/// Network rules per record, evaluated in order; the first match decides.
pub const MAX_NET_RULES: usize = 32;
/// Path bytes in an LPM key: 256 (the kernel's limit for LPM data) minus
/// the 4-byte slot and 1-byte op.
pub const PATH_KEY_PATH_LEN: usize = 251;

/// One network rule: CIDR + port range + operations.
///
/// `addr` is pre-masked and both `addr` and `mask` are in network byte order,
/// word by word as they appear in `bpf_sock_addr.user_ip6` (IPv4 uses word 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NetRule {
    pub addr: [u32; 4],
    pub mask: [u32; 4],
    /// Inclusive port range in host byte order; `0..=65535` for any.
    pub port_lo: u16,
    pub port_hi: u16,
    /// [`crate::family`]: `ANY`, `INET` or `INET6`.
    pub family: u8,
    /// Bit `1 << op::NET_*` for each operation this rule covers.
    pub ops: u8,
    /// [`crate::verdict`]: `ALLOW` or `DENY`.
    pub action: u8,
    /// [`crate::mode`].
    pub mode: u8,
    pub rule_id: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<NetRule>() == 48);

impl NetRule {
    /// Whether this rule covers `op_class` for an address in `family` with the
    /// given address words (network order) and host-order port.
    #[inline(always)]
    pub fn matches(&self, op_class: u8, family: u8, ip: &[u32; 4], port: u16) -> bool {
        if self.ops & (1u8 << op_class) == 0 {
            return false;
        }
        if self.family != crate::family::ANY && self.family != family {
            return false;
        }
        if port < self.port_lo || port > self.port_hi {
            return false;
        }
        if self.family == crate::family::ANY {
            return true;
        }
        let words = if family == crate::family::INET { 1 } else { 4 };
        let mut i = 0;
        while i < 4 {
            if i < words && ip[i] & self.mask[i] != self.addr[i] {
                return false;
            }
            i += 1;
        }
        true
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is decided as the IPv4
/// address it stands for, so IPv4 rules cannot be bypassed from a
/// dual-stack socket. Other addresses are returned unchanged.
#[inline(always)]
pub fn unmap_v4(family: u8, ip: &[u32; 4]) -> (u8, [u32; 4]) {
    if family == crate::family::INET6
        && ip[0] == 0
        && ip[1] == 0
        && ip[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff])
    {
        (crate::family::INET, [ip[3], 0, 0, 0])
    } else {
        (family, *ip)
    }
}

/// The destination the kernel uses for a connect or send to `ip`, which
/// is what a rule decides: an IPv4-mapped address as the IPv4 address
/// ([`unmap_v4`]), and the unspecified address (`0.0.0.0`, `::`) as
/// loopback (`127.0.0.1`, `::1`), where Linux routes a connect or datagram
/// to it. For a bind, `0.0.0.0` means "every address" and stays.
#[inline(always)]
pub fn canonical_dest(op_class: u8, family: u8, ip: &[u32; 4]) -> (u8, [u32; 4]) {
    let (family, ip) = unmap_v4(family, ip);
    if op_class == op::NET_BIND {
        return (family, ip);
    }
    if family == crate::family::INET && ip[0] == 0 {
        return (family, [u32::from_ne_bytes([127, 0, 0, 1]), 0, 0, 0]);
    }
    if family == crate::family::INET6 && ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] == 0 {
        return (family, [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]);
    }
    (family, ip)
}

/// The per-cgroup record. Written whole by the agent's map writer into a
/// free slot, then published by pointing the cgroup at the slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyRecord {
    /// Policy generation this record was compiled from.
    pub generation: u64,
    /// [`crate::flags`] bits.
    pub flags: u32,
    /// Mode of the defaults and of the self-protection hooks.
    pub mode: u8,
    pub _pad0: [u8; 3],
    /// Default action per op class ([`crate::verdict`] `ALLOW`/`DENY`).
    pub defaults: [u8; op::COUNT],
    /// Rule id reported when a default decides, per op class.
    pub default_rule: [u32; op::COUNT],
    /// Number of valid entries in `net`.
    pub net_count: u32,
    pub _pad1: [u32; 2],
    pub net: [NetRule; MAX_NET_RULES],
    /// Syscall slots ([`syscall_slot`]) that are denied (bit set = deny).
    /// Already folds the default; numbers without a slot are denied when
    /// [`crate::flags::SYSCALL_DEFAULT_DENY`] is set.
    pub syscall_deny: [u64; SYSCALL_WORDS],
    /// Of the denied syscalls, those only monitored (bit set = monitor).
    pub syscall_monitor: [u64; SYSCALL_WORDS],
    /// Rule id per syscall slot (for denied ones).
    pub syscall_rule: [u32; SYSCALL_SLOTS],
}
const _: () = assert!(
    size_of::<PolicyRecord>()
        == 16
            + op::COUNT
            + 4 * op::COUNT
            + 12
            + 48 * MAX_NET_RULES
            + 8 * SYSCALL_WORDS * 2
            + 4 * SYSCALL_SLOTS
);

impl PolicyRecord {
    /// A record that allows everything and denies nothing.
    pub const fn allow_all(generation: u64) -> Self {
        Self {
            generation,
            flags: 0,
            mode: crate::mode::ENFORCE,
            _pad0: [0; 3],
            defaults: [crate::verdict::ALLOW; op::COUNT],
            default_rule: [crate::rule_id::DEFAULT; op::COUNT],
            net_count: 0,
            _pad1: [0; 2],
            net: [NetRule {
                addr: [0; 4],
                mask: [0; 4],
                port_lo: 0,
                port_hi: 0,
                family: 0,
                ops: 0,
                action: 0,
                mode: 0,
                rule_id: 0,
                _pad: 0,
            }; MAX_NET_RULES],
            syscall_deny: [0; SYSCALL_WORDS],
            syscall_monitor: [0; SYSCALL_WORDS],
            syscall_rule: [0; SYSCALL_SLOTS],
        }
    }

    /// The decision on a syscall as the kernel's entry sees it (see
    /// [`syscall_slot`]): `None` when allowed, else `(monitor_only, rule)`.
    /// What the syscall tracepoint and the evaluator both ask.
    #[inline(always)]
    pub fn syscall_decision(&self, compat: bool, id: u64) -> Option<(bool, u32)> {
        match syscall_slot(compat, id) {
            Some(slot) => self.syscall_denied(slot),
            None if self.flags & crate::flags::SYSCALL_DEFAULT_DENY != 0 => {
                Some((self.mode == crate::mode::MONITOR, self.default_rule[op::SYSCALL as usize]))
            }
            None => None,
        }
    }

    /// Whether syscall slot `nr` is denied; returns `(monitor_only, rule)`.
    #[inline(always)]
    pub fn syscall_denied(&self, nr: usize) -> Option<(bool, u32)> {
        if nr >= SYSCALL_SLOTS {
            return None;
        }
        let word = nr / 64;
        let bit = 1u64 << (nr % 64);
        if self.syscall_deny[word] & bit == 0 {
            return None;
        }
        Some((self.syscall_monitor[word] & bit != 0, self.syscall_rule[nr]))
    }

    /// Marks syscall slot `nr` as denied by `rule_id`. Out-of-range slots are
    /// ignored and reported as `false`.
    pub fn deny_syscall(&mut self, nr: usize, rule_id: u32, monitor: bool) -> bool {
        if nr >= SYSCALL_SLOTS {
            return false;
        }
        let word = nr / 64;
        let bit = 1u64 << (nr % 64);
        self.syscall_deny[word] |= bit;
        if monitor {
            self.syscall_monitor[word] |= bit;
        } else {
            self.syscall_monitor[word] &= !bit;
        }
        self.syscall_rule[nr] = rule_id;
        self.flags |= crate::flags::HAS_SYSCALL_RULES;
        true
    }
}

/// Data of the path LPM trie key (the map key is `{prefix_len: u32, data: PathKey}`):
/// `{slot, op, path}`. The trie matches the longest prefix in bits, so the slot
/// and op must match whole and the path by prefix.
///
/// A rule for a directory is stored with its trailing `/`; a rule for one exact
/// file is stored with its terminating NUL, so `/usr/bin/curl` does not also
/// match `/usr/bin/curlx`.
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct PathKey {
    pub slot: u32,
    pub op: u8,
    pub path: [u8; PATH_KEY_PATH_LEN],
}
const _: () = assert!(size_of::<PathKey>() == 256);

impl PathKey {
    /// Bits taken by `slot` and `op` before the path starts.
    pub const HEADER_BITS: u32 = 8 * 5;
}

/// First byte of an inode entry's "path" in the path trie: an exact-file
/// deny rule is also stored under the identity of the file it names
/// (device and inode), so that another path to the same file (a hard link,
/// a bind mount) is denied too. No resolved path starts with this byte, so
/// path lookups and inode lookups never match each other's entries.
pub const INODE_KEY_TAG: u8 = 1;
/// Length of an inode entry's path: the tag, the device (`u32`, the
/// kernel's `dev_t` encoding: `major << 20 | minor`), the inode number
/// (`u64`), both little-endian, and a NUL.
pub const INODE_KEY_LEN: usize = 14;

/// The path-trie bytes of the exec class's entry for anonymous executables
/// (a `memfd`, a deleted or `O_TMPFILE` file: no link in any directory),
/// which have no path a rule could name. Written by a rule naming
/// `<anonymous>`, or by the compiler (built-in rule `ANONYMOUS_EXEC`).
pub const ANON_KEY_PATH: [u8; 2] = [2, 0];

/// The path-trie bytes of the file `(dev, ino)`.
pub const fn inode_key_path(dev: u32, ino: u64) -> [u8; INODE_KEY_LEN] {
    let d = dev.to_le_bytes();
    let i = ino.to_le_bytes();
    [INODE_KEY_TAG, d[0], d[1], d[2], d[3], i[0], i[1], i[2], i[3], i[4], i[5], i[6], i[7], 0]
}

/// Value of the path LPM trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PathRule {
    /// [`crate::verdict`] `ALLOW` or `DENY`.
    pub action: u8,
    /// [`crate::mode`].
    pub mode: u8,
    pub _pad: [u8; 2],
    pub rule_id: u32,
}
const _: () = assert!(size_of::<PathRule>() == 8);

/// Key of the per-CPU decision counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CounterKey {
    pub cgroup_id: u64,
    pub hook: u16,
    /// [`crate::verdict`]: a decision's verdict, or `DROPPED` for events of
    /// this cgroup and hook lost to a full ring buffer.
    pub verdict: u8,
    pub mode: u8,
    pub _pad: u32,
}
const _: () = assert!(size_of::<CounterKey>() == 16);

/// Agent-wide settings read by the kernel programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Thread-group id of the running agent (target of self-protection;
    /// never governed itself).
    pub agent_tgid: u32,
    /// [`crate::LAYOUT_VERSION`] of the agent that wrote the maps.
    pub layout: u32,
    /// The cgroup levels at which some cgroup is governed, bit-reversed:
    /// bit `MAX_GOVERNED_LEVEL - level` is set for a governed cgroup at `level` (the root
    /// cgroup is level 0). Reversed so that the lowest set bit is the
    /// deepest level, the first one a walk for the nearest governed
    /// ancestor looks at.
    pub levels_rev: u64,
    /// Inode number of the agent's mount namespace: governed tasks in it may
    /// not mount (self-protection under BPF LSM).
    pub agent_mnt_ns: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Config>() == 24);

impl Config {
    /// `levels_rev` for governed cgroups at `levels` (levels above
    /// [`crate::MAX_GOVERNED_LEVEL`] are ignored; the agent refuses them).
    pub fn levels_rev_of(levels: impl IntoIterator<Item = u32>) -> u64 {
        levels
            .into_iter()
            .filter(|l| *l <= crate::MAX_GOVERNED_LEVEL)
            .fold(0, |acc, l| acc | 1u64 << (crate::MAX_GOVERNED_LEVEL - l))
    }
}

/// A governed cgroup's entry in `CGROUPS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Governor {
    /// The `POLICIES` slot of its record.
    pub slot: u32,
    /// Its level in the cgroup v2 hierarchy (root = 0): where to look for it
    /// among a descendant's ancestors.
    pub level: u32,
}
const _: () = assert!(size_of::<Governor>() == 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]`, `Copy`, only integer fields and explicit padding;
    // every bit pattern is a valid value.
    unsafe impl aya::Pod for super::NetRule {}
    // SAFETY: as above: integers, integer arrays and explicit padding only.
    unsafe impl aya::Pod for super::PolicyRecord {}
    // SAFETY: packed integers and a byte array; any bit pattern is valid.
    unsafe impl aya::Pod for super::PathKey {}
    // SAFETY: integers and explicit padding only.
    unsafe impl aya::Pod for super::PathRule {}
    // SAFETY: integers and explicit padding only.
    unsafe impl aya::Pod for super::CounterKey {}
    // SAFETY: integers and explicit padding only.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: two integers, no padding.
    unsafe impl aya::Pod for super::Governor {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{family, op};

    fn v4(a: u8, b: u8, c: u8, d: u8) -> u32 {
        u32::from_ne_bytes([a, b, c, d])
    }

    fn rule(addr: u32, prefix: u32, lo: u16, hi: u16) -> NetRule {
        let mask = if prefix == 0 { 0 } else { (u32::MAX << (32 - prefix)).to_be() };
        NetRule {
            addr: [addr & mask, 0, 0, 0],
            mask: [mask, 0, 0, 0],
            port_lo: lo,
            port_hi: hi,
            family: family::INET,
            ops: 1 << op::NET_CONNECT,
            action: crate::verdict::DENY,
            ..NetRule::default()
        }
    }

    #[test]
    fn cidr_and_port_range_match() {
        let r = rule(v4(10, 1, 0, 0), 16, 5000, 5999);
        assert!(r.matches(op::NET_CONNECT, family::INET, &[v4(10, 1, 200, 3), 0, 0, 0], 5432));
        assert!(!r.matches(op::NET_CONNECT, family::INET, &[v4(10, 2, 0, 1), 0, 0, 0], 5432));
        assert!(!r.matches(op::NET_CONNECT, family::INET, &[v4(10, 1, 0, 1), 0, 0, 0], 6000));
        assert!(!r.matches(op::NET_BIND, family::INET, &[v4(10, 1, 0, 1), 0, 0, 0], 5432));
        assert!(!r.matches(op::NET_CONNECT, family::INET6, &[v4(10, 1, 0, 1), 0, 0, 0], 5432));
    }

    #[test]
    fn ipv4_mapped_addresses_are_decided_as_ipv4() {
        let mapped = [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), v4(169, 254, 169, 254)];
        assert_eq!(unmap_v4(family::INET6, &mapped), (family::INET, [v4(169, 254, 169, 254), 0, 0, 0]));
        let plain6 = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];
        assert_eq!(unmap_v4(family::INET6, &plain6), (family::INET6, plain6));
        assert_eq!(unmap_v4(family::INET, &[1, 0, 0, 0]), (family::INET, [1, 0, 0, 0]));
    }

    #[test]
    fn zero_prefix_matches_every_address() {
        let r = rule(0, 0, 0, u16::MAX);
        assert!(r.matches(op::NET_CONNECT, family::INET, &[v4(8, 8, 8, 8), 0, 0, 0], 53));
    }

    #[test]
    fn governed_levels_are_bit_reversed() {
        assert_eq!(Config::levels_rev_of([]), 0);
        let max = crate::MAX_GOVERNED_LEVEL;
        assert_eq!(Config::levels_rev_of([0]), 1 << max);
        assert_eq!(Config::levels_rev_of([max]), 1);
        let m = Config::levels_rev_of([2, 5, 5]);
        assert_eq!(m, (1 << (max - 2)) | (1 << (max - 5)));
        // The lowest set bit is the deepest level.
        assert_eq!(max - m.trailing_zeros(), 5);
        assert_eq!(Config::levels_rev_of([max + 1, 64, 1000]), 0);
    }

    #[test]
    fn unspecified_destinations_are_loopback() {
        let lo4 = [v4(127, 0, 0, 1), 0, 0, 0];
        let lo6 = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];
        for class in [op::NET_CONNECT, op::NET_SENDTO] {
            assert_eq!(canonical_dest(class, family::INET, &[0; 4]), (family::INET, lo4));
            assert_eq!(canonical_dest(class, family::INET6, &[0; 4]), (family::INET6, lo6));
            // ::ffff:0.0.0.0 is 0.0.0.0, which is 127.0.0.1.
            let mapped_any = [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), 0];
            assert_eq!(canonical_dest(class, family::INET6, &mapped_any), (family::INET, lo4));
            let other = [v4(10, 1, 2, 3), 0, 0, 0];
            assert_eq!(canonical_dest(class, family::INET, &other), (family::INET, other));
        }
        assert_eq!(canonical_dest(op::NET_BIND, family::INET, &[0; 4]), (family::INET, [0; 4]));
        assert_eq!(canonical_dest(op::NET_BIND, family::INET6, &[0; 4]), (family::INET6, [0; 4]));
    }

    #[test]
    fn syscall_bitmap_edges() {
        let mut rec = PolicyRecord::allow_all(1);
        assert!(rec.deny_syscall(0, 20, false));
        assert!(rec.deny_syscall(63, 21, true));
        assert!(rec.deny_syscall(64, 22, false));
        assert!(rec.deny_syscall(SYSCALL_SLOTS - 1, 23, false));
        assert!(!rec.deny_syscall(SYSCALL_SLOTS, 24, false));
        assert_eq!(rec.syscall_denied(0), Some((false, 20)));
        assert_eq!(rec.syscall_denied(63), Some((true, 21)));
        assert_eq!(rec.syscall_denied(64), Some((false, 22)));
        assert_eq!(rec.syscall_denied(SYSCALL_SLOTS - 1), Some((false, 23)));
        assert_eq!(rec.syscall_denied(1), None);
        assert_eq!(rec.syscall_denied(SYSCALL_SLOTS), None);
        assert_ne!(rec.flags & crate::flags::HAS_SYSCALL_RULES, 0);
    }

    #[test]
    fn syscall_slots_per_abi() {
        // x86_64: the number itself, below 512.
        assert_eq!(syscall_slot(false, 83), Some(83));
        assert_eq!(syscall_slot(false, 511), Some(511));
        assert_eq!(syscall_slot(false, 512), None);
        // x32: the number without the bit; its own calls sit at 512..576.
        assert_eq!(syscall_slot(false, X32_SYSCALL_BIT | 83), Some(83));
        assert_eq!(syscall_slot(false, X32_SYSCALL_BIT | 520), Some(520));
        assert_eq!(syscall_slot(false, X32_SYSCALL_BIT | 576), None);
        // i386: a slot of its own, whatever the number means on x86_64.
        assert_eq!(syscall_slot(true, 39), Some(SYSCALL_COMPAT_BASE + 39));
        assert_eq!(syscall_slot(true, 575), Some(SYSCALL_SLOTS - 1));
        assert_eq!(syscall_slot(true, 576), None);
        // -1 (a syscall skipped by a tracer) and other wild numbers.
        assert_eq!(syscall_slot(false, u64::MAX), None);
        assert_eq!(syscall_slot(true, u64::MAX), None);
    }

    #[test]
    fn numbers_without_a_slot_follow_the_default() {
        let mut rec = PolicyRecord::allow_all(1);
        rec.default_rule[op::SYSCALL as usize] = 7;
        assert!(rec.deny_syscall(SYSCALL_COMPAT_BASE + 39, 30, false));
        assert_eq!(rec.syscall_decision(true, 39), Some((false, 30)));
        assert_eq!(rec.syscall_decision(false, 39), None, "x86_64 39 is another syscall");
        assert_eq!(rec.syscall_decision(false, 4000), None, "default allow");
        rec.flags |= crate::flags::SYSCALL_DEFAULT_DENY;
        assert_eq!(rec.syscall_decision(false, 4000), Some((false, 7)));
        assert_eq!(rec.syscall_decision(true, 4000), Some((false, 7)));
        assert_eq!(rec.syscall_decision(false, u64::MAX), Some((false, 7)));
        rec.mode = crate::mode::MONITOR;
        assert_eq!(rec.syscall_decision(false, 4000), Some((true, 7)));
    }
}
