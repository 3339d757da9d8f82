//! ForgeOne agent library: loads the kernel programs, governs cgroups, reads
//! decision events. The `forge` binary is a thin command line over it.

pub mod ebpf;
