//! Builds the eBPF object (`forge-ebpf`) and hands it to the agent, which
//! embeds it with `include_bytes!`. The nested cargo build decides what is
//! stale; this script reruns whenever the kernel crate or the wire types
//! change, so an old object is never embedded silently. A missing toolchain
//! is an error that says how to install it.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

const EBPF_TARGET: &str = "bpfel-unknown-none";
const SYSTEM_CARGO: &str = "/usr/bin/cargo";
const SYSTEM_RUSTC: &str = "/usr/bin/rustc";
const HINT: &str = "run `cargo xtask setup` to install the eBPF toolchain";

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let root = manifest.parent().context("workspace root")?.to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR")?);
    for dir in ["forge-ebpf", "forge-common"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("Cargo.lock").display());
    println!("cargo:rerun-if-env-changed=FORGE_BPF_LINKER_DIR");

    let linker_dir = bpf_linker_dir()?;
    for tool in [SYSTEM_CARGO, SYSTEM_RUSTC] {
        if !Path::new(tool).exists() {
            bail!("{tool} not found (Debian's cargo-web/rustc-web build the eBPF crate): {HINT}");
        }
    }
    let path = env::join_paths(
        std::iter::once(PathBuf::from("/usr/bin"))
            .chain(std::iter::once(linker_dir))
            .chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )?;

    let target_dir = root.join("target").join("ebpf");
    let mut cmd = Command::new(SYSTEM_CARGO);
    // The outer cargo exports variables that would point the nested build at
    // the wrong compiler or flags; start from a clean slate.
    for (key, _) in env::vars_os() {
        let k = key.to_string_lossy();
        if (k.starts_with("CARGO") && k != "CARGO_HOME")
            || k.starts_with("RUSTC")
            || k.starts_with("RUSTUP")
            || k == "RUSTFLAGS"
            || k == "RUSTDOCFLAGS"
        {
            cmd.env_remove(&key);
        }
    }
    cmd.current_dir(&root)
        .env("PATH", path)
        .env("RUSTC", SYSTEM_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", ["-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f"))
        .args([
            "build",
            "--release",
            "--package",
            "forge-ebpf",
            "--bin",
            "forge-ebpf",
            "--target",
            EBPF_TARGET,
            "--target-dir",
        ])
        .arg(&target_dir);
    let status = cmd.status().with_context(|| format!("running {SYSTEM_CARGO}"))?;
    if !status.success() {
        bail!("building forge-ebpf failed ({status}); if the toolchain is missing, {HINT}");
    }
    let object = target_dir.join(EBPF_TARGET).join("release").join("forge-ebpf");
    std::fs::copy(&object, out_dir.join("forge-ebpf.o"))
        .with_context(|| format!("copying {}", object.display()))?;
    Ok(())
}

/// Directory holding `bpf-linker`: `FORGE_BPF_LINKER_DIR`, cargo's bin dir,
/// or anywhere on `PATH`.
fn bpf_linker_dir() -> anyhow::Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = env::var_os("FORGE_BPF_LINKER_DIR") {
        candidates.push(dir.into());
    }
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(home) = cargo_home {
        candidates.push(home.join("bin"));
    }
    candidates.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    candidates
        .into_iter()
        .find(|d| d.join("bpf-linker").is_file())
        .with_context(|| format!("bpf-linker not found: {HINT}"))
}
