//! ForgeOne agent library: loads the kernel programs, governs cgroups, reads
//! decision events. The `forge` binary is a thin command line over it.

pub mod agent;
pub mod api;
pub mod cgroup;
pub mod config;
pub mod digest;
pub mod dna;
pub mod doctor;
pub mod ebpf;
pub mod events;
pub mod explain;
pub mod fleet;
pub mod integrity;
pub mod policy;
pub mod sign;
pub mod telemetry;
pub mod trust;
pub mod wasm;
pub mod workload;
