//! `forge`: the ForgeOne agent and its command line.

use std::process::ExitCode;

use clap::Parser as _;

mod cli;

fn main() -> ExitCode {
    // A process started to perform one workload action (demo, tests) does
    // only that.
    forge_agent::workload::maybe_perform_from_env();
    let args = cli::Cli::parse();
    cli::init_tracing(&args.log);
    cli::run(args)
}
