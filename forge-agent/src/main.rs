//! `forge`: the ForgeOne agent and its command line.

use std::process::ExitCode;

use clap::Parser as _;

mod cli;

fn main() -> ExitCode {
    // Output piped into `head` and the like ends quietly, as in other CLIs.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread
    // starts; no handler code is involved.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // A process started to perform one workload action (demo, tests) does
    // only that.
    forge_agent::workload::maybe_perform_from_env();
    let args = cli::Cli::parse();
    cli::init_tracing(&args.log);
    cli::run(args)
}
