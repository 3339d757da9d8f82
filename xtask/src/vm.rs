//! `cargo xtask vm-test` and `cargo xtask vm-run`: boot Debian kernels under
//! QEMU (software emulation) and run a command in the guest as root.
//!
//! The host kernel refuses BPF-LSM (trampoline) programs, so LSM enforcement
//! is proven in guests. A guest is a kernel series and the LSM list it boots
//! with ([`Lsm`]); the test matrix ([`MATRIX`]) is Debian's 6.1 and 6.12
//! cloud kernels with `lsm=...,bpf`, and Debian 11's 5.10 cloud kernel twice:
//! with `lsm=lockdown,capability,bpf`, and with its own default list, which
//! has no `bpf` (BPF-LSM programs load there but never run: the inert case).
//!
//! Per guest:
//! 1. [`kernel::fetch`] picks the newest Debian cloud kernel of the series
//!    (`apt-cache`), downloads and unpacks it once into `target/vm/kernels/`
//!    (5.10 through a private bullseye apt state; the host's apt sources are
//!    not changed).
//! 2. [`modules::resolve`] picks the kernel modules virtiofs needs there (5.10
//!    and 6.1 build it as a module; 6.12 builds it in).
//! 3. [`virtiofs::start`] serves each share read-only: the host's `/usr` at
//!    `/usr`, the working tree at [`SRC`], and the target directory at
//!    `/target` when it is outside the tree. The host enforces read-only
//!    (see [`virtiofs`]); the guest's `/`, `/tmp`, `/root` and `/run` are its
//!    own memory. The tree's host path is a link to [`SRC`] in the guest.
//! 4. [`initramfs::build`] writes a newc cpio: static busybox under
//!    `/.vm/bin` for /init, the modules, a few files of `/etc`, and an
//!    `/init` that mounts proc, sysfs, devtmpfs, devpts, securityfs, bpffs,
//!    cgroup2, tracefs, debugfs, tmpfs on /tmp and /run, then the shares,
//!    brings up `lo`, prints markers, runs the command (`HOME=/tmp`, `PATH`
//!    with the freshly built `forge` first, then the host's directories, then
//!    busybox) with stdin from /dev/null, prints its exit status and powers
//!    off.
//! 5. [`qemu::boot`] runs `qemu-system-x86_64 -accel tcg` (never KVM), streams
//!    the serial console to `target/vm/runs/<guest>/serial-<attempt>.log` and
//!    to stdout, and kills QEMU at a deadline. A boot that dies before the start
//!    marker is retried once; a run without the exit marker is a failure,
//!    except that vm-test (and `cargo xtask test`) run the binary once more
//!    when the guest kernel panicked during the run, and report that panic.
//!
//! `vm-test` runs a host-built binary (a test binary) in each guest of the
//! matrix and prints a summary; `vm-run` runs any command in one guest and
//! exits with its status (see [`VmRunArgs`]).
//!
//! Knobs (environment): `FORGE_VM_CPU` (QEMU `-cpu`, default [`DEFAULT_CPU`]),
//! `FORGE_VM_MEM` (guest MiB, default [`DEFAULT_MEM_MIB`]),
//! `FORGE_VM_TIMEOUT` (seconds for the whole run, default 600 for vm-run,
//! 1800 for vm-test), `FORGE_VM_BOOT_TIMEOUT` (seconds until /init starts,
//! default 180), `FORGE_VM_QUIET=1` (vm-test: do not echo guest output).

mod initramfs;
mod kernel;
mod markers;
mod modules;
mod qemu;
mod virtiofs;

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail, ensure};

use self::{qemu::Echo, virtiofs::Share};

/// Where the working tree is mounted (read-only) in a guest.
pub(crate) const SRC: &str = "/src";
/// Where the target directory is mounted when it is not inside the tree.
const TARGET: &str = "/target";
/// QEMU CPU model. Measured here (QEMU 7.2, TCG, this harness): 48 boots per
/// kernel with `max` and 8–16 each with `qemu64`, `Haswell`, `Skylake-Client`
/// all reached /init, loaded BPF-LSM programs and powered off; no early
/// panic, and no model booted measurably faster. The retry stays in case.
pub(crate) const DEFAULT_CPU: &str = "max";
/// Guest memory: the privileged suite runs Prometheus, three NATS servers
/// and Wasmtime next to the agent, and the guest caches what it reads from
/// the host.
pub(crate) const DEFAULT_MEM_MIB: u64 = 2048;
/// Boots tried before a kernel counts as failed to boot.
const MAX_BOOT_ATTEMPTS: u32 = 2;
/// Exit status of `vm-run` when the guest did not produce the command's
/// status (no boot, timeout, setup failure), as `env` and container runners do.
pub(crate) const VM_RUN_FAILED: u8 = 125;

/// Which LSM list a guest kernel boots with.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub(crate) enum Lsm {
    /// `lsm=lockdown,capability,landlock,bpf` (no landlock where the kernel
    /// lacks it, as 5.10): BPF-LSM programs run.
    Bpf,
    /// No `lsm=`: the kernel's built-in list. Debian 11's 5.10 has no `bpf`
    /// in it, so BPF-LSM programs load but never run (the inert case).
    Default,
}

/// A guest: a kernel (series or package) and the LSM list it boots with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Guest {
    pub(crate) kernel: String,
    pub(crate) lsm: Lsm,
}

impl Guest {
    /// `6.12`, `5.10-lsm-default`: names the run directory and summary lines.
    pub(crate) fn label(&self) -> String {
        let kernel = self.kernel.strip_prefix("linux-image-").unwrap_or(&self.kernel);
        match self.lsm {
            Lsm::Bpf => kernel.to_owned(),
            Lsm::Default => format!("{kernel}-lsm-default"),
        }
    }
}

/// The guests `cargo xtask test` and `vm-test` boot by default: the supported
/// range, 5.10 to 6.12, with BPF LSM active, and 5.10 with it inert. The
/// first is the primary guest ([`PRIMARY`]).
pub(crate) const MATRIX: &[(&str, Lsm)] =
    &[("6.12", Lsm::Bpf), ("6.1", Lsm::Bpf), ("5.10", Lsm::Bpf), ("5.10", Lsm::Default)];

/// The guest that runs the whole suite under `cargo xtask test`; the others
/// run its kernel-facing tests (`FORGE_TESTS=kernel`), because every test
/// is slow under software emulation and the agent-side ones do the same on
/// every kernel.
pub(crate) const PRIMARY: (&str, Lsm) = ("6.12", Lsm::Bpf);

/// The guests for `--kernel` and `--lsm` options: each named kernel with
/// `lsm` (default bpf); none named: the matrix entries with `lsm` (all when
/// `lsm` is not given).
pub(crate) fn guests(kernels: &[String], lsm: Option<Lsm>) -> Vec<Guest> {
    if kernels.is_empty() {
        MATRIX
            .iter()
            .filter(|(_, l)| lsm.is_none_or(|want| want == *l))
            .map(|(k, l)| Guest { kernel: (*k).to_owned(), lsm: *l })
            .collect()
    } else {
        kernels.iter().map(|k| Guest { kernel: k.clone(), lsm: lsm.unwrap_or(Lsm::Bpf) }).collect()
    }
}

#[derive(clap::Args, Default)]
pub(crate) struct VmTestArgs {
    /// Kernels to boot: 5.10 (Debian 11), 6.1, 6.12 (Debian 12 cloud kernels) or a
    /// linux-image-* package; repeatable. Default: the matrix (6.1, 6.12, 5.10, and 5.10 with
    /// its default LSM list).
    #[arg(long = "kernel")]
    pub(crate) kernels: Vec<String>,
    /// LSM list of the guests: bpf (`lsm=...,bpf`) or default (the kernel's own). With
    /// --kernel it applies to each (default bpf); without, it picks matrix entries.
    #[arg(long, value_enum)]
    pub(crate) lsm: Option<Lsm>,
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

/// `cargo xtask vm-run`.
#[derive(clap::Args)]
#[command(after_long_help = VM_RUN_HELP)]
pub(crate) struct VmRunArgs {
    /// Kernel to boot: 5.10 (Debian 11), 6.1, 6.12 (Debian 12 cloud kernels) or a linux-image-*
    /// package.
    #[arg(long, default_value = "6.12")]
    pub(crate) kernel: String,
    /// LSM list: bpf (`lsm=lockdown,capability[,landlock],bpf`: BPF LSM enforces) or default
    /// (the kernel's own list; on 5.10 it has no bpf).
    #[arg(long, value_enum, default_value_t = Lsm::Bpf)]
    pub(crate) lsm: Lsm,
    /// Environment for the command, KEY=VALUE, repeatable.
    #[arg(long = "env")]
    pub(crate) env: Vec<String>,
    /// Show the whole guest console (boot messages too), not only the command's output.
    #[arg(long)]
    pub(crate) console: bool,
    /// Do not build target/debug/forge first.
    #[arg(long)]
    pub(crate) no_build: bool,
    /// The command and its arguments, after `--`: a program on the guest's PATH or a path.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub(crate) command: Vec<String>,
}

const VM_RUN_HELP: &str = "\
The guest:
  runs CMD as root in a fresh QEMU guest (software emulation, about 10-20 s to boot) and
  exits with CMD's exit status (128+N when a signal N ended it; 125 when the guest could
  not run it). CMD's stdout and stderr are printed as they arrive (interleaved, as on the
  guest's console); stdin is /dev/null.
  /usr      the host's /usr, read-only (python3, gcc, clang, setpriv, tmux, prometheus,
            nats-server, ...; /bin, /sbin, /lib are links into it)
  /src      this working tree, read-only; the working directory (or the matching
            subdirectory of it), also reachable at its host path
  PATH      target/debug (the freshly built forge) first, then the host's directories
  /, /tmp, /root, /run
            the guest's own memory: writes there are gone when it powers off
  Nothing the guest does can change the host: the host serves its shares read-only
  (its kernel refuses writes even if the guest remounts them read-write).
  Logs: target/vm/runs/<kernel>/serial-<attempt>.log.

Examples:
  cargo xtask vm-run -- python3 -c 'print(1)'
  cargo xtask vm-run -- forge doctor
  # Attacks under BPF LSM: the agent governs a cgroup denying a file and an exec; a shell
  # inside tries them directly and through symlinks, `..`, a hard link and kill -9 on
  # the agent. Exit 0: all denied; 1: one got through (the script says which).
  cargo xtask vm-run -- sh tests/vm/lsm-attack.sh
  cargo xtask vm-run --kernel 5.10 --lsm default -- forge doctor   # BPF LSM built in, inert
  cargo xtask vm-run -- touch /usr/x /src/x                        # fails: read-only
  # every kernel program loaded on its own, whole verifier logs:
  cargo build -p forge-tests --example verifier_logs
  cargo xtask vm-run --kernel 5.10 -- target/debug/examples/verifier_logs
";

/// How a command fared in one guest.
#[derive(Debug)]
pub(crate) struct VmOutcome {
    /// `uname -r` in the guest.
    pub(crate) kernel_release: String,
    /// The command's exit status as the guest shell saw it (128+n: signal n).
    pub(crate) exit_code: i32,
    /// The command's stdout and stderr (interleaved as on the console).
    pub(crate) output: String,
    pub(crate) boot_attempts: u32,
    /// Wall-clock seconds of the boot that ran the command (QEMU start to exit).
    pub(crate) seconds: f64,
    /// The guest's /sys/kernel/security/lsm.
    pub(crate) lsm: String,
    /// Serial log of the boot that ran the command.
    pub(crate) log: PathBuf,
    /// Guest kernel panics of earlier attempts that were retried.
    pub(crate) panics: Vec<String>,
}

/// One command to run in one guest.
pub(crate) struct Run<'a> {
    pub(crate) guest: &'a Guest,
    /// `argv[0]`: a guest path, or a name looked up on the guest's PATH.
    pub(crate) argv: Vec<String>,
    pub(crate) env: &'a [(String, String)],
    /// Guest working directory.
    pub(crate) cwd: String,
    /// Host files copied into the guest: (host path, guest path).
    pub(crate) copies: Vec<(PathBuf, String)>,
    pub(crate) echo: Echo,
    /// Keep kernel messages off the console while the command runs.
    pub(crate) quiet_kernel: bool,
    pub(crate) timeout: Duration,
    /// Whether a run whose guest kernel panicked may be run again (once).
    pub(crate) retry_panic: bool,
}

/// Runs the binary in every selected guest, prints a summary; `Err` if any failed.
pub(crate) fn run(args: &VmTestArgs) -> anyhow::Result<()> {
    let binary = args.binary.as_deref().context("--binary is required (the binary to run in the guest)")?;
    let env = parse_env(&args.env)?;
    let guests = guests(&args.kernels, args.lsm);
    let mut results = Vec::new();
    for g in &guests {
        let result = binary_run(g, binary, &args.args, &env).and_then(|r| run_in_vm(&r));
        if let Err(err) = &result {
            eprintln!("vm-test {}: error: {err:#}", g.label());
        }
        results.push((g.label(), result));
    }

    let mut out = std::io::stdout();
    let _ = writeln!(out, "\nvm-test summary ({}):", binary.display());
    let mut failed = Vec::new();
    for (label, result) in &results {
        match result {
            Ok(o) => {
                let verdict = if o.exit_code == 0 { "PASS" } else { "FAIL" };
                let _ = writeln!(
                    out,
                    "  {label:<17} {verdict}  release {}  boot attempts {}  {:.1} s  exit {}  lsm {}",
                    o.kernel_release, o.boot_attempts, o.seconds, o.exit_code, o.lsm
                );
                for panic in &o.panics {
                    let _ = writeln!(out, "        retried after a guest kernel panic: {panic}");
                }
                if o.exit_code != 0 {
                    failed.push(label.as_str());
                    if !echoed() {
                        // The guest output was not streamed: show it now.
                        let _ = write!(out, "--- {label} output ---\n{}--- end ---\n", o.output);
                    }
                    let _ = writeln!(out, "        serial log {}", o.log.display());
                }
            }
            Err(err) => {
                failed.push(label.as_str());
                let _ = writeln!(
                    out,
                    "  {label:<17} FAIL  {}",
                    first_line(&format!("{err:#}")).trim_end_matches(':')
                );
            }
        }
    }
    if !failed.is_empty() {
        bail!("vm-test failed on: {}", failed.join(", "));
    }
    Ok(())
}

/// The run of a host-built `binary` with `args` in `guest`, from /tmp: by
/// its path in a share, or copied into the guest when no share holds it.
pub(crate) fn binary_run<'a>(
    guest: &'a Guest,
    binary: &Path,
    args: &[String],
    env: &'a [(String, String)],
) -> anyhow::Result<Run<'a>> {
    let binary = binary.canonicalize().with_context(|| format!("binary {}", binary.display()))?;
    ensure!(binary.is_file(), "{} is not a file", binary.display());
    let mut copies = Vec::new();
    let guest_bin = match virtiofs::guest_path(&shares()?, &binary) {
        Some(path) => path,
        None => {
            let name = binary.file_name().context("binary without a file name")?.to_string_lossy();
            let path = format!("{}/{name}", initramfs::GUEST_BIN_DIR);
            copies.push((binary.clone(), path.clone()));
            path
        }
    };
    let mut argv = vec![guest_bin];
    argv.extend(args.iter().cloned());
    Ok(Run {
        guest,
        argv,
        env,
        cwd: "/tmp".to_owned(),
        copies,
        echo: if echoed() { Echo::Console } else { Echo::Nothing },
        quiet_kernel: false,
        timeout: Duration::from_secs(env_number("FORGE_VM_TIMEOUT", 1800)?),
        retry_panic: true,
    })
}

/// `cargo xtask vm-run`: the command's exit status, or [`VM_RUN_FAILED`].
pub(crate) fn run_command(args: &VmRunArgs) -> ExitCode {
    match try_run_command(args) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(VM_RUN_FAILED)),
        Err(err) => {
            eprintln!("vm-run: error: {err:#}");
            ExitCode::from(VM_RUN_FAILED)
        }
    }
}

fn try_run_command(args: &VmRunArgs) -> anyhow::Result<i32> {
    let env = parse_env(&args.env)?;
    if !args.no_build {
        build_forge()?;
    }
    let guest = Guest { kernel: args.kernel.clone(), lsm: args.lsm };
    let shares = shares()?;
    let cwd = std::env::current_dir()
        .ok()
        .and_then(|d| d.canonicalize().ok())
        .and_then(|d| virtiofs::guest_path(&shares[1..], &d))
        .unwrap_or_else(|| SRC.to_owned());
    let outcome = run_in_vm(&Run {
        guest: &guest,
        argv: args.command.clone(),
        env: &env,
        cwd,
        copies: Vec::new(),
        echo: if args.console { Echo::Console } else { Echo::Command },
        quiet_kernel: !args.console,
        timeout: Duration::from_secs(env_number("FORGE_VM_TIMEOUT", 600)?),
        retry_panic: false,
    })?;
    eprintln!(
        "vm-run: {} exited {} in the {} guest ({}, lsm {}); {:.1} s",
        args.command[0],
        outcome.exit_code,
        guest.label(),
        outcome.kernel_release,
        outcome.lsm,
        outcome.seconds
    );
    Ok(outcome.exit_code)
}

/// Builds `target/debug/forge` (cargo decides whether it is stale).
pub(crate) fn build_forge() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", "forge-agent", "--bin", "forge"])
        .current_dir(crate::test::workspace_root())
        .env("CARGO_TARGET_DIR", target_dir())
        .status()
        .context("running cargo build for the forge binary")?;
    ensure!(status.success(), "building the forge binary failed: {status}");
    Ok(forge_dir().join("forge"))
}

/// The directory of the forge binary cargo builds.
fn forge_dir() -> PathBuf {
    target_dir().join("debug")
}

/// What the guest mounts: the host's /usr, the working tree at [`SRC`], and
/// the target directory at [`TARGET`] when it is outside the tree. The usr
/// share comes first.
fn shares() -> anyhow::Result<Vec<Share>> {
    let mut shares = vec![
        Share::new("usr", Path::new("/usr"), "/usr")?,
        Share::new("src", &crate::test::workspace_root(), SRC)?,
    ];
    let target = target_dir();
    fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
    let target = Share::new("target", &target, TARGET)?;
    if virtiofs::guest_path(&shares, &target.host).is_none() {
        shares.push(target);
    }
    Ok(shares)
}

/// Guest links from each share's host path to its mount point, so host
/// paths (in arguments, in paths compiled into binaries) work in the guest;
/// skipped where the host path is a guest system directory.
fn host_path_links(shares: &[Share]) -> Vec<(String, String)> {
    const SYSTEM: &[&str] =
        &["/usr", "/proc", "/sys", "/dev", "/.vm", "/bin", "/sbin", "/lib", "/lib64", "/etc"];
    shares
        .iter()
        .filter(|s| {
            let host = s.host.to_string_lossy();
            let under = |dir: &str| host == dir || host.starts_with(&format!("{dir}/"));
            host != s.guest
                && host != "/"
                && !SYSTEM.iter().any(|d| under(d))
                && !shares.iter().any(|o| under(&o.guest) || o.guest.starts_with(&format!("{host}/")))
        })
        .map(|s| (s.host.to_string_lossy().into_owned(), s.guest.clone()))
        .collect()
}

/// The kernel command line for `lsm` on `kernel`.
fn append(kernel: &kernel::Kernel, lsm: Lsm) -> anyhow::Result<String> {
    match lsm {
        Lsm::Default => Ok(qemu::APPEND.to_owned()),
        Lsm::Bpf => {
            ensure!(
                kernel.config("BPF_LSM")?.as_deref() == Some("y"),
                "{} is built without CONFIG_BPF_LSM: there is no BPF LSM to turn on",
                kernel.release
            );
            let landlock = kernel.config("SECURITY_LANDLOCK")?.as_deref() == Some("y");
            let list = if landlock { "lockdown,capability,landlock,bpf" } else { "lockdown,capability,bpf" };
            Ok(format!("{} lsm={list}", qemu::APPEND))
        }
    }
}

/// Boots the guest and runs the command in it. `Ok` means the command ran
/// to completion, whatever its exit code; `Err` means no trustworthy result
/// (boot failed twice, timeout, no exit marker, setup trouble).
pub(crate) fn run_in_vm(run: &Run<'_>) -> anyhow::Result<VmOutcome> {
    for (k, _) in run.env {
        ensure!(!k.is_empty() && !k.contains('='), "bad environment variable name {k:?}");
    }
    ensure!(!run.argv.is_empty(), "no command to run");
    let vm_dir = target_dir().join("vm");
    let kernel_info = kernel::fetch(&run.guest.kernel, &vm_dir.join("kernels"))?;
    let label = run.guest.label();
    let run_dir = vm_dir.join("runs").join(&label);
    fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    // One run per guest at a time: runs share the directory, and two
    // emulated guests on a small machine slow each other towards timeouts.
    let _lock = lock(&run_dir.join(".lock"), &format!("vm {label}"))?;
    // Logs of an earlier run would pass for this run's retries.
    for attempt in 1..=MAX_BOOT_ATTEMPTS {
        let _ = fs::remove_file(qemu::log_path(&run_dir, attempt));
    }
    let modules = modules::resolve(&kernel_info.tree, &kernel_info.release, modules::VIRTIOFS)
        .context("the kernel modules virtiofs needs")?;
    let append = append(&kernel_info, run.guest.lsm)?;
    let shares = shares()?;
    let links = host_path_links(&shares);
    let forge_dir = virtiofs::guest_path(&shares, &forge_dir()).context("the forge binary's directory")?;
    let path = format!(
        "{forge_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{}",
        initramfs::VM_BIN
    );

    let cpu = env_or("FORGE_VM_CPU", DEFAULT_CPU);
    let mem_mib = env_number("FORGE_VM_MEM", DEFAULT_MEM_MIB)?;
    let boot_timeout = Duration::from_secs(env_number("FORGE_VM_BOOT_TIMEOUT", 180)?);
    let note = format!(
        "vm {label}: kernel {} ({}{}), {append:?}, cpu {cpu}, {mem_mib} MiB, command {}",
        kernel_info.release,
        kernel_info.package,
        if kernel_info.downloaded { ", downloaded" } else { ", cached" },
        run.argv[0]
    );
    // vm-run keeps stdout for the command's output.
    if run.echo == Echo::Command {
        eprintln!("{note}");
    } else {
        println!("{note}");
    }

    let sockets = virtiofs::SocketDir::new(&shares)?;
    let mut failures = Vec::new();
    let mut panics = Vec::new();
    for attempt in 1..=MAX_BOOT_ATTEMPTS {
        let nonce = nonce(attempt);
        let initrd = run_dir.join("initramfs.cpio");
        initramfs::build(
            &initramfs::Payload {
                argv: &run.argv,
                env: run.env,
                cwd: &run.cwd,
                path: &path,
                shares: &shares,
                copies: &run.copies,
                links: &links,
                modules: &modules,
                quiet_kernel: run.quiet_kernel,
                nonce: &nonce,
            },
            &initrd,
        )
        .context("building the initramfs")?;
        let daemons = shares
            .iter()
            .map(|s| virtiofs::start(s, &sockets, &run_dir))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let sockets: Vec<(String, PathBuf)> =
            daemons.iter().map(|d| (d.tag.clone(), d.socket.clone())).collect();
        let log = qemu::log_path(&run_dir, attempt);
        let result = qemu::boot(&qemu::Boot {
            label: &label,
            vmlinuz: &kernel_info.vmlinuz,
            initrd: &initrd,
            append: &append,
            cpu: &cpu,
            mem_mib,
            shares: &sockets,
            nonce: &nonce,
            log: &log,
            boot_timeout,
            timeout: run.timeout,
            echo: run.echo,
        });
        drop(daemons);
        let result = result?;
        let p = &result.parsed;
        let (release, exit_code) = match markers::verdict(p, result.timed_out, &result.qemu_status) {
            markers::Verdict::Ran { release, exit_code } => (release, exit_code),
            markers::Verdict::NoBoot(why) => {
                eprintln!(
                    "vm {label}: boot attempt {attempt} failed after {:.1} s: {why} (log {})",
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
            // A guest kernel that panics mid-run is retried once when the
            // run may be repeated (vm-test): emulation has shown rare
            // oopses in kernel code being live-patched ("Oops: int3" in
            // a static-branch site). The panic is reported either way; one
            // our programs cause panics again and fails.
            markers::Verdict::Died(why)
                if p.panic.is_some() && run.retry_panic && attempt < MAX_BOOT_ATTEMPTS =>
            {
                eprintln!(
                    "vm {label}: WARNING: the guest kernel panicked during the run, retrying once: {why} (log {})",
                    log.display()
                );
                panics.push(format!("attempt {attempt}: {why} (log {})", log.display()));
                continue;
            }
            markers::Verdict::Died(why) => bail!(
                "{label}: the command started but no exit marker was seen: {why} (log {}):\n{}",
                log.display(),
                qemu::tail(&result.log, 30)
            ),
        };
        if let Some(panic) = &p.panic {
            eprintln!("vm {label}: warning: kernel panic after the command exited: {panic}");
        }
        if result.timed_out.is_some() {
            eprintln!("vm {label}: warning: the guest did not power off; QEMU was killed");
        }
        if exit_code == initramfs::SETUP_FAILED && p.output.contains("vm-init: the guest is not set up") {
            bail!(
                "{label}: the guest could not be set up, the command did not run (log {}):\n{}",
                log.display(),
                p.output.trim_end()
            );
        }
        let note = format!(
            "vm {label}: release {release}, boot {:.1} s, total {:.1} s, attempt {attempt}, exit {exit_code}",
            result.boot_seconds.unwrap_or(f64::NAN),
            result.seconds
        );
        if run.echo == Echo::Command {
            eprintln!("{note}");
        } else {
            println!("{note}");
        }
        if release != kernel_info.release {
            eprintln!("vm {label}: warning: guest reports {release}, expected {}", kernel_info.release);
        }
        return Ok(VmOutcome {
            kernel_release: release,
            exit_code,
            output: p.output.clone(),
            boot_attempts: attempt,
            seconds: result.seconds,
            lsm: p.lsm.clone().unwrap_or_default(),
            log,
            panics,
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

/// `CARGO_TARGET_DIR` (relative to the working directory, as cargo reads
/// it), else the workspace's `target/`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => std::env::current_dir().unwrap_or_default().join(dir),
        _ => crate::test::workspace_root().join("target"),
    }
}

/// Whether guest output is streamed to stdout (`FORGE_VM_QUIET` unset or 0).
fn echoed() -> bool {
    std::env::var_os("FORGE_VM_QUIET").is_none_or(|v| v.is_empty() || v == "0")
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned())
}

fn env_number(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.parse().with_context(|| format!("{name}={v:?}: expected a whole number")),
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
    fn guests_from_options() {
        let labels = |g: Vec<Guest>| g.iter().map(Guest::label).collect::<Vec<_>>();
        assert_eq!(labels(guests(&[], None)), ["6.12", "6.1", "5.10", "5.10-lsm-default"]);
        assert_eq!(labels(guests(&[], Some(Lsm::Default))), ["5.10-lsm-default"]);
        assert_eq!(labels(guests(&["6.12".to_owned()], None)), ["6.12"]);
        assert_eq!(
            labels(guests(&["5.10".to_owned(), "6.1".to_owned()], Some(Lsm::Default))),
            ["5.10-lsm-default", "6.1-lsm-default"]
        );
        let package = Guest { kernel: "linux-image-6.1.0-57-cloud-amd64".to_owned(), lsm: Lsm::Bpf };
        assert_eq!(package.label(), "6.1.0-57-cloud-amd64");
    }

    #[test]
    fn host_paths_link_to_their_shares_where_the_guest_allows() {
        let share = |tag: &str, host: &str, guest: &str| Share {
            tag: tag.to_owned(),
            host: PathBuf::from(host),
            guest: guest.to_owned(),
        };
        let shares = [
            share("usr", "/usr", "/usr"),
            share("src", "/work/tree", SRC),
            share("target", "/var/cache/t", TARGET),
        ];
        assert_eq!(
            host_path_links(&shares),
            [("/work/tree".to_owned(), SRC.to_owned()), ("/var/cache/t".to_owned(), TARGET.to_owned())]
        );
        // Under /usr (read-only), at the mount point itself, or above another mount point: no link.
        for host in ["/usr/src/tree", "/src", "/src/tree", "/"] {
            let shares = [share("usr", "/usr", "/usr"), share("src", host, SRC)];
            assert!(host_path_links(&shares).is_empty(), "{host}");
        }
    }

    #[test]
    fn nonces_differ_per_attempt() {
        assert_ne!(nonce(1), nonce(2));
        assert!(nonce(1).bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
