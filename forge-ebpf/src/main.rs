//! ForgeOne kernel programs.
//!
//! Every program starts the same way: find the record governing the current
//! task in `CGROUPS`, by its own cgroup or its nearest governed ancestor
//! (one hash lookup, and one per governed level on a miss; outside every
//! governed subtree the program returns at once), then decide from that
//! `PolicyRecord`. Decisions other than a plain
//! allow are counted and sent to the agent through `EVENTS`.
#![no_std]
#![no_main]

mod cgroup;
mod contain;
mod decide;
mod emit;
mod kernel;
mod lsm;
mod maps;
mod tracepoint;

/// The kernel only lets GPL-compatible programs call helpers such as
/// `bpf_d_path`, `bpf_probe_read_kernel` and `bpf_send_signal`.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic, so
    // this is never executed in the kernel.
    unsafe { core::hint::unreachable_unchecked() }
}
