//! Syscall names to numbers for the running architecture.

#[cfg(target_arch = "x86_64")]
#[path = "syscalls_x86_64.rs"]
mod table;

/// Number of syscall `name`, if this architecture has it.
pub fn number(name: &str) -> Option<u32> {
    table::X86_64.binary_search_by(|(n, _)| n.cmp(&name)).ok().map(|i| u32::from(table::X86_64[i].1))
}

/// Name of syscall `nr`, if known.
pub fn name(nr: u32) -> Option<&'static str> {
    table::X86_64.iter().find(|(_, n)| u32::from(*n) == nr).map(|(name, _)| *name)
}

/// Every known syscall name.
pub fn names() -> impl Iterator<Item = &'static str> {
    table::X86_64.iter().map(|(n, _)| *n)
}

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
    }

    #[test]
    fn table_is_sorted_and_fits_the_bitmap() {
        let names: Vec<_> = names().collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]));
        assert!(names.iter().all(|n| (number(n).unwrap() as usize) < forge_common::MAX_SYSCALLS));
    }
}
