//! Loads each kernel program of the agent's eBPF object on its own, the
//! way the agent does (same object, same BTF offsets, kfunc calls
//! rewritten), and prints per
//! program `ok` or the kernel's whole answer, verifier log included: `forge
//! doctor` stops a backend at its first refused program and shortens the
//! log. Nothing is attached or pinned. A loaded program's line gives its
//! load time and the instructions the verifier processed (kernel 5.16+):
//! where the agent's start time goes on a slow machine.
//!
//! For a guest kernel (root, in a QEMU guest):
//! `cargo build -p forge-tests --example verifier_logs &&
//!  cargo xtask vm-run --kernel 5.10 -- target/debug/examples/verifier_logs`.
//! Exits 1 when a program was refused.
#![allow(clippy::print_stdout, reason = "a diagnostic tool: its output is the interface")]

use std::{error::Error, process::ExitCode, time::Instant};

use aya::{
    Btf,
    programs::{BtfTracePoint, CgroupSock, CgroupSockAddr, Lsm, Program, ProgramError, RawTracePoint},
};
use forge_agent::ebpf::{
    loader,
    object::{
        BTF_TRACEPOINTS, CGROUP_PROGRAMS, LSM_OPTIONAL_PROGRAMS, LSM_PATH_PROGRAMS, LSM_PROGRAMS,
        SOCK_CREATE, SYS_ENTER,
    },
};

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            println!("error: {}", chain(e.as_ref()));
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<bool, Box<dyn Error>> {
    let mut ebpf = loader::load_object(None)?;
    let btf = Btf::from_sys_fs()?;
    let mut all_ok = true;
    let mut total_ms = 0.0;
    let mut report =
        |ebpf: &aya::Ebpf, kind: &str, name: &str, start: Instant, r: Result<(), ProgramError>| match r {
            Ok(()) => {
                let ms = start.elapsed().as_secs_f64() * 1e3;
                total_ms += ms;
                let insns = ebpf
                    .program(name)
                    .and_then(|p| p.info().ok())
                    .and_then(|i| i.verified_instruction_count())
                    .map_or_else(|| "?".to_owned(), |n| n.to_string());
                println!("{kind:<10} {name:<22} ok {ms:>9.1} ms {insns:>9} insns verified");
            }
            Err(e) => {
                all_ok = false;
                println!("{kind:<10} {name:<22} REFUSED: {}", chain(&e));
            }
        };
    for name in LSM_PROGRAMS.iter().chain(&LSM_OPTIONAL_PROGRAMS).chain(&LSM_PATH_PROGRAMS) {
        if LSM_OPTIONAL_PROGRAMS.contains(name) && !loader::kernel_has_lsm_hook(name) {
            println!("lsm        {name:<22} absent: this kernel has no such hook (the agent goes without)");
            continue;
        }
        let start = Instant::now();
        let r = program::<Lsm>(&mut ebpf, name).and_then(|p| p.load(name, &btf));
        report(&ebpf, "lsm", name, start, r);
    }
    for name in CGROUP_PROGRAMS {
        let start = Instant::now();
        let r = if name == SOCK_CREATE {
            program::<CgroupSock>(&mut ebpf, name).and_then(CgroupSock::load)
        } else {
            program::<CgroupSockAddr>(&mut ebpf, name).and_then(CgroupSockAddr::load)
        };
        report(&ebpf, "cgroup", name, start, r);
    }
    for name in BTF_TRACEPOINTS {
        let start = Instant::now();
        let r = program::<BtfTracePoint>(&mut ebpf, name).and_then(|p| p.load(name, &btf));
        report(&ebpf, "tp_btf", name, start, r);
    }
    let start = Instant::now();
    let r = program::<RawTracePoint>(&mut ebpf, SYS_ENTER).and_then(RawTracePoint::load);
    report(&ebpf, "raw_tp", SYS_ENTER, start, r);
    println!("loaded programs: {total_ms:.1} ms in all");
    Ok(all_ok)
}

fn program<'a, T>(ebpf: &'a mut aya::Ebpf, name: &str) -> Result<&'a mut T, ProgramError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or_else(|| ProgramError::UnexpectedProgramType)?;
    p.try_into()
}

/// The error and its sources, whole.
fn chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let text = src.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = src.source();
    }
    s
}
