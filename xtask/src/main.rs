//! `cargo xtask`: install the toolchain, build, test, demo, VM tests and runs, benchmarks.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "xtask is a command-line tool: its output is the interface"
)]

mod bench;
mod fuzz;
mod setup;
mod test;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "ForgeOne project tasks", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install every prerequisite (apt packages, bpf-linker); idempotent.
    Setup(setup::SetupArgs),
    /// Set up, build, and run the agent's demo on the default policy (root).
    Demo,
    /// Set up and run the whole test suite: unit, privileged host tests, VM tests.
    Test(test::TestArgs),
    /// Run a test binary inside QEMU guests: 6.1, 6.12, 5.10 with BPF LSM, and 5.10 without.
    VmTest(vm::VmTestArgs),
    /// Run any command as root in a QEMU guest (host /usr and this tree read-only, forge on
    /// PATH); exit with its status.
    VmRun(vm::VmRunArgs),
    /// Run every benchmark and write target/bench/report.md (root, for the kernel overhead).
    Bench(bench::BenchArgs),
    /// Run each fuzz target briefly (cargo-fuzz, installed on demand).
    Fuzz(fuzz::FuzzArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup(args) => setup::run(&args),
        Cmd::Demo => test::demo(),
        Cmd::Test(args) => test::run(&args),
        Cmd::VmTest(args) => vm::run(&args),
        Cmd::VmRun(args) => return vm::run_command(&args),
        Cmd::Bench(args) => bench::run(&args),
        Cmd::Fuzz(args) => fuzz::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
