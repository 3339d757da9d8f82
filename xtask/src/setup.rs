//! `cargo xtask setup`: installs what building and testing ForgeOne needs on a
//! fresh Debian 12 root machine, and says what it did. Safe to run again.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Debian packages: the eBPF compiler (rustc-web with a prebuilt `core` for
/// bpfel), LLVM 22 for bpf-linker, QEMU + busybox for the VM tests (QEMU's
/// `qemu-system-common` brings `/usr/lib/qemu/virtiofsd`, which shares the
/// host's /usr and the tree with the guests), and the
/// Prometheus server that scrapes the agent's `/metrics` in a privileged test
/// (the test runs its own instance; the packaged service is disabled), and
/// tmux, the terminal the `forge top` test drives.
pub(crate) const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "prometheus",
    "tmux",
    // C capsules in the tests: clang targeting wasm32-wasi, its linker, libc and builtins.
    "clang",
    "lld",
    "wasi-libc",
    "libclang-rt-14-dev-wasm32",
    // The fleet tests run their own JetStream servers on free loopback ports.
    "nats-server",
];

pub(crate) const BPF_LINKER_VERSION: &str = "0.13.0";

#[derive(clap::Args, Default)]
pub(crate) struct SetupArgs {
    /// Only report what is missing; install nothing.
    #[arg(long)]
    pub(crate) check: bool,
}

pub(crate) fn run(args: &SetupArgs) -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    if missing.is_empty() {
        println!("setup: apt packages present ({})", APT_PACKAGES.join(", "));
    } else if args.check {
        bail!("missing apt packages: {}", missing.join(" "));
    } else {
        println!("setup: installing apt packages: {}", missing.join(" "));
        if !apt_lists_present() {
            run_cmd(Command::new("apt-get").arg("update"), "apt-get update")?;
        }
        let mut cmd = Command::new("apt-get");
        cmd.args(["install", "-y", "--no-install-recommends"]).args(&missing);
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        if run_cmd(&mut cmd, "apt-get install").is_err() {
            // Package lists may be stale on a long-lived machine.
            run_cmd(Command::new("apt-get").arg("update"), "apt-get update")?;
            run_cmd(&mut cmd, "apt-get install")?;
        }
        if missing.contains(&"prometheus") {
            disable_packaged_prometheus();
        }
    }

    let bin = cargo_bin_dir();
    let linker = bin.join("bpf-linker");
    if linker_version_ok(&linker) {
        println!("setup: bpf-linker {BPF_LINKER_VERSION} present at {}", linker.display());
    } else if args.check {
        bail!("bpf-linker {BPF_LINKER_VERSION} missing at {}", linker.display());
    } else {
        println!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)");
        let mut cmd = Command::new("cargo");
        cmd.args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked"])
            .args(["--no-default-features", "--features", "llvm-22", "--force"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22");
        run_cmd(&mut cmd, "cargo install bpf-linker")?;
        if !linker_version_ok(&linker) {
            bail!("bpf-linker was installed but {} does not report {BPF_LINKER_VERSION}", linker.display());
        }
        println!("setup: installed bpf-linker at {}", linker.display());
    }
    Ok(())
}

/// Debian's package enables (and, where services may start, starts) a
/// Prometheus service on port 9090 with its own data. The tests start their
/// own server and need none of it: stop and disable it. Best effort, said.
fn disable_packaged_prometheus() {
    let booted_with_systemd = Path::new("/run/systemd/system").is_dir();
    let steps: &[&[&str]] = if booted_with_systemd {
        &[&["systemctl", "disable", "--now", "prometheus.service"]]
    } else {
        &[
            &["invoke-rc.d", "prometheus", "stop"],
            &["update-rc.d", "prometheus", "disable"],
            &["systemctl", "disable", "prometheus.service"],
        ]
    };
    for step in steps {
        let ok = Command::new(step[0]).args(&step[1..]).status().is_ok_and(|s| s.success());
        let how = if ok { "done" } else { "failed (ignored)" };
        println!("setup: packaged prometheus service: `{}` {how}", step.join(" "));
    }
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn apt_lists_present() -> bool {
    std::fs::read_dir("/var/lib/apt/lists")
        .map(|d| d.filter_map(Result::ok).any(|e| e.file_name().to_string_lossy().contains("_Packages")))
        .unwrap_or(false)
}

fn linker_version_ok(linker: &Path) -> bool {
    Command::new(linker)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
}

pub(crate) fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

pub(crate) fn run_cmd(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed: {status}");
    }
    Ok(())
}
