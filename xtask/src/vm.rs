//! `cargo xtask vm-test`: boots Debian kernels with BPF LSM under QEMU
//! (software emulation) and runs a host-built binary in the guest.
//!
//! The host kernel refuses BPF-LSM (trampoline) programs, so LSM enforcement
//! is proven in guests booted with `lsm=lockdown,capability,landlock,bpf`.
//!
//! Per kernel:
//! 1. [`kernel::fetch`] picks the newest Debian cloud kernel of the series
//!    (`apt-cache`), downloads and unpacks it once into `target/vm/kernels/`.
//! 2. [`initramfs::build`] writes a newc cpio: static busybox, the binary at
//!    `/opt/forge/<name>` with its `ldd` libraries, and an `/init` that mounts
//!    proc, sysfs, devtmpfs, securityfs, bpffs, cgroup2, tracefs, debugfs and a
//!    /tmp tmpfs, brings up `lo`, prints markers, runs the binary (cwd /tmp,
//!    `HOME=/tmp`, `PATH=/bin:/sbin:/usr/bin`, plus `--env`), prints its exit
//!    status and powers off. No kernel modules are needed.
//! 3. [`qemu::boot`] runs `qemu-system-x86_64 -accel tcg` (never KVM), streams
//!    the serial console to `target/vm/runs/<kernel>/serial-<attempt>.log` and
//!    to stdout, and kills QEMU at a deadline. A boot that dies before the start
//!    marker is retried once; a run without the exit marker is a failure.
//!
//! Knobs (environment): `FORGE_VM_CPU` (QEMU `-cpu`, default [`DEFAULT_CPU`]),
//! `FORGE_VM_TIMEOUT` (seconds for the whole run, default 600),
//! `FORGE_VM_BOOT_TIMEOUT` (seconds until /init starts, default 180),
//! `FORGE_VM_QUIET=1` (do not echo guest output).

mod initramfs;
mod kernel;
mod markers;
mod qemu;

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail, ensure};

/// Kernel series booted when none is named.
pub(crate) const DEFAULT_KERNELS: &[&str] = &["6.1", "6.12"];
/// QEMU CPU model. Measured here (QEMU 7.2, TCG, this harness): 48 boots per
/// kernel with `max` and 8–16 each with `qemu64`, `Haswell`, `Skylake-Client`
/// all reached /init, loaded BPF-LSM programs and powered off; no early
/// panic, and no model booted measurably faster. The retry stays in case.
pub(crate) const DEFAULT_CPU: &str = "max";
/// Boots tried before a kernel counts as failed to boot.
const MAX_BOOT_ATTEMPTS: u32 = 2;

#[derive(clap::Args, Default)]
pub(crate) struct VmTestArgs {
    /// Kernels to boot: "6.1", "6.12" (Debian cloud kernels); default both.
    #[arg(long = "kernel")]
    pub(crate) kernels: Vec<String>,
    /// Binary to run in the guest (a host-built glibc binary, e.g. a test binary). Required for now.
    #[arg(long)]
    pub(crate) binary: Option<PathBuf>,
    /// Environment for the binary in the guest, KEY=VALUE, repeatable.
    #[arg(long = "env")]
    pub(crate) env: Vec<String>,
    /// Arguments for the binary.
    #[arg(last = true)]
    pub(crate) args: Vec<String>,
}

/// How the binary fared in one guest.
#[derive(Debug)]
pub(crate) struct VmOutcome {
    /// `uname -r` in the guest.
    pub(crate) kernel_release: String,
    /// The binary's exit status as the guest shell saw it (128+n: signal n).
    pub(crate) exit_code: i32,
    /// The binary's stdout and stderr (interleaved as on the console).
    pub(crate) output: String,
    pub(crate) boot_attempts: u32,
    /// Wall-clock seconds of the boot that ran the binary (QEMU start to exit).
    pub(crate) seconds: f64,
    /// The guest's /sys/kernel/security/lsm.
    pub(crate) lsm: String,
    /// Serial log of the boot that ran the binary.
    pub(crate) log: PathBuf,
}

/// Runs the binary in every selected kernel, prints a summary; `Err` if any failed.
pub(crate) fn run(args: &VmTestArgs) -> anyhow::Result<()> {
    let binary = args.binary.as_deref().context("--binary is required (the binary to run in the guest)")?;
    let env = parse_env(&args.env)?;
    let kernels: Vec<&str> = if args.kernels.is_empty() {
        DEFAULT_KERNELS.to_vec()
    } else {
        args.kernels.iter().map(String::as_str).collect()
    };

    let mut results = Vec::new();
    for k in &kernels {
        let result = run_in_vm(k, binary, &args.args, &env);
        if let Err(err) = &result {
            eprintln!("vm-test {k}: error: {err:#}");
        }
        results.push((*k, result));
    }

    let mut out = std::io::stdout();
    let _ = writeln!(out, "\nvm-test summary ({}):", binary.display());
    let mut failed = Vec::new();
    for (k, result) in &results {
        match result {
            Ok(o) => {
                let verdict = if o.exit_code == 0 { "PASS" } else { "FAIL" };
                let _ = writeln!(
                    out,
                    "  {k:<5} {verdict}  release {}  boot attempts {}  {:.1} s  exit {}  lsm {}",
                    o.kernel_release, o.boot_attempts, o.seconds, o.exit_code, o.lsm
                );
                if o.exit_code != 0 {
                    failed.push(*k);
                    if !echoed() {
                        // The guest output was not streamed: show it now.
                        let _ = write!(out, "--- {k} output ---\n{}--- end ---\n", o.output);
                    }
                    let _ = writeln!(out, "        serial log {}", o.log.display());
                }
            }
            Err(err) => {
                failed.push(*k);
                let _ =
                    writeln!(out, "  {k:<5} FAIL  {}", first_line(&format!("{err:#}")).trim_end_matches(':'));
            }
        }
    }
    if !failed.is_empty() {
        bail!("vm-test failed on kernel(s): {}", failed.join(", "));
    }
    Ok(())
}

/// Boots `kernel` (a series such as "6.12", or a linux-image package name)
/// and runs `binary` in it. `Ok` means the binary ran to completion, whatever
/// its exit code; `Err` means no trustworthy result (boot failed twice, timeout,
/// no exit marker, setup trouble).
pub(crate) fn run_in_vm(
    kernel: &str,
    binary: &Path,
    args: &[String],
    env: &[(String, String)],
) -> anyhow::Result<VmOutcome> {
    let binary = binary.canonicalize().with_context(|| format!("binary {}", binary.display()))?;
    ensure!(binary.is_file(), "{} is not a file", binary.display());
    for (k, _) in env {
        ensure!(!k.is_empty() && !k.contains('='), "bad environment variable name {k:?}");
    }
    let vm_dir = target_dir().join("vm");
    let kernel_info = kernel::fetch(kernel, &vm_dir.join("kernels"))?;
    let label = kernel.strip_prefix("linux-image-").unwrap_or(kernel);
    let run_dir = vm_dir.join("runs").join(label);
    fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    // One run per kernel at a time: runs share the directory, and two
    // emulated guests on a small machine slow each other towards timeouts.
    let _lock = lock(&run_dir.join(".lock"), &format!("vm-test {label}"))?;
    // Logs of an earlier run would pass for this run's retries.
    for attempt in 1..=MAX_BOOT_ATTEMPTS {
        let _ = fs::remove_file(qemu::log_path(&run_dir, attempt));
    }

    let cpu = env_or("FORGE_VM_CPU", DEFAULT_CPU);
    let timeout = Duration::from_secs(env_secs("FORGE_VM_TIMEOUT", 600)?);
    let boot_timeout = Duration::from_secs(env_secs("FORGE_VM_BOOT_TIMEOUT", 180)?);
    let echo = echoed();
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "vm-test {label}: kernel {} ({}{}), cpu {cpu}, binary {}",
        kernel_info.release,
        kernel_info.package,
        if kernel_info.downloaded { ", downloaded" } else { ", cached" },
        binary.display()
    );

    let mut failures = Vec::new();
    for attempt in 1..=MAX_BOOT_ATTEMPTS {
        let nonce = nonce(attempt);
        let initrd = run_dir.join("initramfs.cpio");
        initramfs::build(&initramfs::Payload { binary: &binary, args, env, nonce: &nonce }, &initrd)
            .context("building the initramfs")?;
        let log = qemu::log_path(&run_dir, attempt);
        let result = qemu::boot(&qemu::Boot {
            label,
            vmlinuz: &kernel_info.vmlinuz,
            initrd: &initrd,
            cpu: &cpu,
            nonce: &nonce,
            log: &log,
            boot_timeout,
            timeout,
            echo,
        })?;
        let p = &result.parsed;
        let (release, exit_code) = match markers::verdict(p, result.timed_out, &result.qemu_status) {
            markers::Verdict::Ran { release, exit_code } => (release, exit_code),
            markers::Verdict::NoBoot(why) => {
                eprintln!(
                    "vm-test {label}: boot attempt {attempt} failed after {:.1} s: {why} (log {})",
                    result.seconds,
                    log.display()
                );
                failures.push(format!("attempt {attempt}: {why}"));
                if attempt == MAX_BOOT_ATTEMPTS {
                    bail!(
                        "{label}: no boot reached /init in {MAX_BOOT_ATTEMPTS} attempts ({}); last log {}:\n{}",
                        failures.join("; "),
                        log.display(),
                        qemu::tail(&result.log, 30)
                    );
                }
                continue;
            }
            markers::Verdict::Died(why) => bail!(
                "{label}: the binary started but no exit marker was seen: {why} (log {}):\n{}",
                log.display(),
                qemu::tail(&result.log, 30)
            ),
        };
        if let Some(panic) = &p.panic {
            eprintln!("vm-test {label}: warning: kernel panic after the binary exited: {panic}");
        }
        if result.timed_out.is_some() {
            eprintln!("vm-test {label}: warning: the guest did not power off; QEMU was killed");
        }
        let _ = writeln!(
            out,
            "vm-test {label}: release {release}, boot {:.1} s, total {:.1} s, attempt {attempt}, exit {exit_code}",
            result.boot_seconds.unwrap_or(f64::NAN),
            result.seconds
        );
        if release != kernel_info.release {
            eprintln!("vm-test {label}: warning: guest reports {release}, expected {}", kernel_info.release);
        }
        return Ok(VmOutcome {
            kernel_release: release,
            exit_code,
            output: p.output.clone(),
            boot_attempts: attempt,
            seconds: result.seconds,
            lsm: p.lsm.clone().unwrap_or_default(),
            log,
        });
    }
    unreachable!("the last boot attempt returns or bails")
}

/// Takes an exclusive lock on `path` (created if missing), waiting for
/// another process that holds it; released when the file is dropped.
pub(crate) fn lock(path: &Path, what: &str) -> anyhow::Result<fs::File> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => return Ok(file),
        Err(fs::TryLockError::WouldBlock) => {
            eprintln!("{what}: waiting for another run holding {}", path.display());
        }
        Err(fs::TryLockError::Error(err)) => {
            return Err(err).with_context(|| format!("locking {}", path.display()));
        }
    }
    file.lock().with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

/// Parses `KEY=VALUE` items.
pub(crate) fn parse_env(items: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|item| match item.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => bail!("--env {item:?}: expected KEY=VALUE"),
        })
        .collect()
}

/// `CARGO_TARGET_DIR`, else the workspace's `target/`.
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).join("target")
}

/// Whether guest output is streamed to stdout (`FORGE_VM_QUIET` unset or 0).
fn echoed() -> bool {
    std::env::var_os("FORGE_VM_QUIET").is_none_or(|v| v.is_empty() || v == "0")
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned())
}

fn env_secs(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.parse().with_context(|| format!("{name}={v:?}: expected whole seconds")),
        _ => Ok(default),
    }
}

/// A marker nonce unlikely to appear in the binary's output.
fn nonce(attempt: u32) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{:x}{:x}{attempt}", nanos & 0xffff_ffff_ffff, std::process::id())
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_env_splits_at_first_equals() {
        let got = parse_env(&["A=1".to_owned(), "B=x=y".to_owned(), "C=".to_owned()]).unwrap();
        assert_eq!(
            got,
            [
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "x=y".to_owned()),
                ("C".to_owned(), String::new()),
            ]
        );
        assert!(parse_env(&["NOEQUALS".to_owned()]).is_err());
        assert!(parse_env(&["=v".to_owned()]).is_err());
    }

    #[test]
    fn nonces_differ_per_attempt() {
        assert_ne!(nonce(1), nonce(2));
        assert!(nonce(1).bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
