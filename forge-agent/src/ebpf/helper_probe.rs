//! Which BPF helpers the running kernel offers to tracing programs.
//!
//! Helpers are allowed per program type and the lists grew over time: a
//! tracing or LSM program that calls a helper its kernel does not allow is
//! refused whole. The embedded object asks the loader (through a global)
//! whether to call such a helper or take its fallback; this module answers
//! by loading a minimal raw tracepoint program (whose helper list is the
//! tracing list, as LSM programs') that calls it.

use std::os::fd::{FromRawFd as _, OwnedFd};

use super::sys::bpf;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
/// `bpf_get_current_ancestor_cgroup_id`: tracing programs from 5.14.
pub const GET_CURRENT_ANCESTOR_CGROUP_ID: i32 = 123;

/// The head of `bpf_attr` for `BPF_PROG_LOAD`, and zeros after it (the
/// kernel requires what it does not know to be zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    rest: [u64; 12],
}

/// One instruction: opcode, registers (`src << 4 | dst`), offset, immediate.
fn insn(code: u8, regs: u8, imm: i32) -> u64 {
    u64::from(code) | (u64::from(regs) << 8) | (u64::from(imm as u32) << 32)
}

/// Whether a raw tracepoint program may call helper number `helper`.
pub fn tracing_helper(helper: i32) -> bool {
    const MOV64_IMM: u8 = 0xb7;
    const CALL: u8 = 0x85;
    const EXIT: u8 = 0x95;
    // r1 = 0; call helper; r0 = 0; exit
    let prog = [insn(MOV64_IMM, 1, 0), insn(CALL, 0, helper), insn(MOV64_IMM, 0, 0), insn(EXIT, 0, 0)];
    let license = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_RAW_TRACEPOINT,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..ProgLoadAttr::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => {
            // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing
            // else owns; dropping it closes the program.
            drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            true
        }
        Err(_) => false,
    }
}
