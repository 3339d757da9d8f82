//! `cargo xtask fuzz`: runs each cargo-fuzz target briefly (also part of
//! `cargo xtask test`). A crash or a hang (5 s per input) fails the run.

use std::process::Command;

use anyhow::Context as _;

use crate::{setup, test::workspace_root};

pub(crate) const CARGO_FUZZ_VERSION: &str = "0.13.2";
pub(crate) const TARGETS: [&str; 6] =
    ["policy_parse", "bundle_parse", "api_request", "trace_read", "pkg_parse", "fleet_parse"];

#[derive(clap::Args)]
pub(crate) struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 20)]
    pub(crate) seconds: u32,
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let bin = setup::cargo_bin_dir().join("cargo-fuzz");
    let ok = Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION));
    if ok {
        println!("fuzz: cargo-fuzz {CARGO_FUZZ_VERSION} present");
        return Ok(());
    }
    println!("fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    setup::run_cmd(
        Command::new("cargo").args(["install", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION, "--locked"]),
        "cargo install cargo-fuzz",
    )
}

pub(crate) fn run(args: &FuzzArgs) -> anyhow::Result<()> {
    ensure_cargo_fuzz()?;
    let dir = workspace_root().join("fuzz");
    for t in TARGETS {
        let corpus = dir.join("corpus").join(t);
        std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        println!("== fuzz {t} for {} s", args.seconds);
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&dir)
            // cargo-fuzz passes nightly-only flags; the stable compiler accepts them this way.
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", t])
            .arg(&corpus)
            .arg(dir.join("seeds").join(t))
            .args(["--", &format!("-max_total_time={}", args.seconds), "-timeout=5"]);
        setup::run_cmd(&mut cmd, &format!("fuzzing {t}"))?;
    }
    Ok(())
}
