//! The guest's root file system: a newc cpio archive (written here, no
//! `cpio` command needed) holding static busybox under `/.vm/bin` for the
//! guest's own /init, the kernel modules virtiofs needs on this kernel, a few
//! files of `/etc`, and an `/init` script that mounts the kernel file systems
//! and the host's shares, prints markers on the serial console, runs the
//! command and powers off.
//!
//! Programs come from the host: `/usr` is a read-only share, and `/bin`,
//! `/sbin`, `/lib`, `/lib64` are links into it as on the host (Debian's merged
//! /usr), so host-built glibc binaries and installed programs (python3, gcc,
//! clang, tmux, prometheus, nats-server, setpriv) run unchanged. Everything
//! else in the guest (`/`, `/tmp`, `/root`, `/run`) is guest memory: writes
//! there never reach the host.
//!
//! From the host's `/etc` the image takes what programs need to start
//! (`ld.so.cache` and its config, `alternatives`, `nsswitch.conf`,
//! `services`, `protocols`, `localtime`, `os-release`); `passwd`, `group` and
//! `hosts` are the guest's own.

use std::{
    collections::BTreeSet,
    fs::{self, File},
    io::{self, BufWriter},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, ensure};

use super::{markers, modules::Module, virtiofs::Share};

/// Where binaries that no share holds are copied to in the guest.
pub(crate) const GUEST_BIN_DIR: &str = "/opt/forge";
/// The guest's own tools (busybox applets), for /init; last on the command's PATH.
pub(crate) const VM_BIN: &str = "/.vm/bin";
/// Host busybox; `busybox-static` installs it (`cargo xtask setup`).
const BUSYBOX: &str = "/bin/busybox";
/// Files and directories of the host's /etc copied into the guest.
const HOST_ETC: &[&str] = &[
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "nsswitch.conf",
    "services",
    "protocols",
    "localtime",
    "os-release",
];
/// /init's exit status for the command when the guest could not be set up
/// (a share did not mount): the command did not run.
pub(crate) const SETUP_FAILED: i32 = 125;

/// What to run in the guest, and with what.
pub(crate) struct Payload<'a> {
    /// The command and its arguments; `argv[0]` is a guest path or a name
    /// looked up on `path`.
    pub(crate) argv: &'a [String],
    pub(crate) env: &'a [(String, String)],
    /// Guest working directory.
    pub(crate) cwd: &'a str,
    /// `PATH` of the command.
    pub(crate) path: &'a str,
    /// Host directories mounted read-only.
    pub(crate) shares: &'a [Share],
    /// Host files copied into the image: (host path, guest path).
    pub(crate) copies: &'a [(PathBuf, String)],
    /// Symlinks /init makes after mounting: (guest link, target).
    pub(crate) links: &'a [(String, String)],
    /// Kernel modules to load first, in order.
    pub(crate) modules: &'a [Module],
    /// Keep kernel messages off the console while the command runs.
    pub(crate) quiet_kernel: bool,
    /// Marker nonce, so the command's output cannot fake a marker by accident.
    pub(crate) nonce: &'a str,
}

/// Writes the initramfs for `payload` to `out`.
pub(crate) fn build(payload: &Payload<'_>, out: &Path) -> anyhow::Result<()> {
    ensure!(
        is_static(Path::new(BUSYBOX))?,
        "{BUSYBOX} is dynamically linked; install busybox-static (cargo xtask setup)"
    );
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut cpio = Cpio::new(BufWriter::new(file));
    for dir in ["dev", "proc", "sys", "tmp", "run", "root", "etc", "mnt", "usr", ".vm/modules"] {
        cpio.dir(dir)?;
    }
    for share in payload.shares {
        cpio.dir(share.guest.trim_start_matches('/'))?;
    }
    // The host's merged-/usr links (/bin -> usr/bin, ...), as they are.
    for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        if let Ok(target) = fs::read_link(Path::new("/").join(top)) {
            cpio.symlink(top, &target.to_string_lossy())?;
        }
    }
    cpio.char_dev("dev/console", 0o600, 5, 1)?;
    cpio.char_dev("dev/null", 0o666, 1, 3)?;

    let busybox = format!("{}/busybox", VM_BIN.trim_start_matches('/'));
    cpio.file_from(&busybox, 0o755, Path::new(BUSYBOX))?;
    for applet in busybox_applets()? {
        let path = format!("{}/{applet}", VM_BIN.trim_start_matches('/'));
        if !cpio.has(&path) {
            cpio.symlink(&path, "busybox")?;
        }
    }
    for (i, m) in payload.modules.iter().enumerate() {
        cpio.file(&format!(".vm/modules/{i:02}-{}.ko", m.name), 0o644, &m.data)?;
    }
    for (host, guest) in payload.copies {
        copy_binary(&mut cpio, host, guest.trim_start_matches('/'), out)?;
    }

    cpio.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    )?;
    cpio.file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")?;
    cpio.file("etc/hosts", 0o644, b"127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n")?;
    for name in HOST_ETC {
        copy_host_tree(&mut cpio, &Path::new("/etc").join(name), &format!("etc/{name}"))?;
    }
    cpio.file("init", 0o755, init_script(payload).as_bytes())?;
    cpio.finish()?;
    Ok(())
}

/// Copies `host` (a file, a symlink, or a directory one level deep) to
/// `path` in the archive, if it exists.
fn copy_host_tree<W: io::Write>(cpio: &mut Cpio<W>, host: &Path, path: &str) -> anyhow::Result<()> {
    let Ok(meta) = fs::symlink_metadata(host) else { return Ok(()) };
    if meta.file_type().is_symlink() {
        cpio.symlink(path, &fs::read_link(host)?.to_string_lossy())?;
    } else if meta.is_file() {
        cpio.file_from(path, 0o644, host)?;
    } else if meta.is_dir() {
        cpio.dir(path)?;
        let mut names: Vec<_> = fs::read_dir(host)?.filter_map(Result::ok).map(|e| e.file_name()).collect();
        names.sort();
        for name in names {
            let sub = host.join(&name);
            let sub_path = format!("{path}/{}", name.to_string_lossy());
            let meta = fs::symlink_metadata(&sub)?;
            if meta.file_type().is_symlink() {
                cpio.symlink(&sub_path, &fs::read_link(&sub)?.to_string_lossy())?;
            } else if meta.is_file() {
                cpio.file_from(&sub_path, 0o644, &sub)?;
            }
        }
    }
    Ok(())
}

/// Copies a binary into the archive without its debug sections (a debug
/// test binary is hundreds of MiB, and the guest unpacks the initramfs into
/// its memory). Its libraries come from the shared /usr.
fn copy_binary<W: io::Write>(cpio: &mut Cpio<W>, host: &Path, path: &str, out: &Path) -> anyhow::Result<()> {
    let stripped = out.with_extension("bin");
    let status = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(host)
        .arg(&stripped)
        .status()
        .context("running objcopy (binutils)")?;
    ensure!(status.success(), "objcopy --strip-debug {} failed", host.display());
    let copied = cpio.file_from(path, 0o755, &stripped);
    let _ = fs::remove_file(&stripped);
    copied
}

/// The guest's /init (busybox sh).
pub(super) fn init_script(payload: &Payload<'_>) -> String {
    let nonce = payload.nonce;
    let mut env = vec!["HOME=/tmp".to_owned(), format!("PATH={}", payload.path)];
    env.extend(payload.env.iter().map(|(k, v)| format!("{k}={v}")));
    // busybox runs its own applet for a bare name it knows (`sh`,
    // `setpriv`), so /init looks argv[0] up on the command's PATH first.
    let mut command: Vec<String> = vec![format!("{VM_BIN}/env"), "-i".to_owned()];
    command.extend(env.iter().map(|e| shell_quote(e)));
    command.push("\"$argv0\"".to_owned());
    command.extend(payload.argv.iter().skip(1).map(|a| shell_quote(a)));
    let command = command.join(" ");
    let argv0 = shell_quote(payload.argv.first().map_or("", String::as_str));
    let cmd_path = shell_quote(payload.path);
    let shares: String = payload
        .shares
        .iter()
        .map(|s| format!("share {} {}\n", shell_quote(&s.tag), shell_quote(&s.guest)))
        .collect();
    let links: String = payload
        .links
        .iter()
        .map(|(link, target)| format!("link {} {}\n", shell_quote(target), shell_quote(link)))
        .collect();
    let quiet = if payload.quiet_kernel { "echo 1 >/proc/sys/kernel/printk\n" } else { "" };
    let cwd = shell_quote(payload.cwd);
    let (start, lsm, run, exit) = (markers::START, markers::LSM, markers::RUN, markers::EXIT);
    format!(
        r#"#!{VM_BIN}/sh
# Generated by `cargo xtask vm-test` / `vm-run`.
export PATH={VM_BIN}
m() {{ mount -t "$1" "$1" "$2" 2>/dev/null || echo "vm-init: mount -t $1 $2 failed"; }}
m proc /proc
m sysfs /sys
m devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm
m devpts /dev/pts
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
m securityfs /sys/kernel/security
m bpf /sys/fs/bpf
m cgroup2 /sys/fs/cgroup
m tracefs /sys/kernel/tracing
m debugfs /sys/kernel/debug
m tmpfs /tmp
m tmpfs /run
m tmpfs /dev/shm
for k in /.vm/modules/*.ko; do
    [ -e "$k" ] || continue
    insmod "$k" || echo "vm-init: insmod $k failed"
done
setup=ok
share() {{
    mkdir -p "$2"
    mount -t virtiofs -o ro "$1" "$2" || {{ echo "vm-init: mounting host share $1 at $2 failed"; setup=failed; }}
}}
link() {{ mkdir -p "$(dirname "$2")" && ln -s "$1" "$2" || echo "vm-init: ln -s $1 $2 failed"; }}
resolve() {{
    case "$1" in */*) echo "$1"; return ;; esac
    (IFS=:; for d in $2; do [ -f "$d/$1" ] && [ -x "$d/$1" ] && {{ echo "$d/$1"; exit; }}; done; echo "$1")
}}
{shares}{links}ip link set lo up || echo "vm-init: ip link set lo up failed"
echo "{start} {nonce} $(uname -r)"
echo "{lsm} {nonce} $(cat /sys/kernel/security/lsm)"
cd {cwd} || setup=failed
argv0=$(resolve {argv0} {cmd_path})
{quiet}echo "{run} {nonce}"
if [ "$setup" = ok ]; then
    {command} </dev/null
    rc=$?
else
    echo "vm-init: the guest is not set up (see above): the command did not run"
    rc={SETUP_FAILED}
fi
echo
echo "{exit} {nonce} $rc"
# Wait until the serial line has sent everything (stty sets modes with TCSADRAIN).
stty -F /dev/console "$(stty -F /dev/console -g)" 2>/dev/null
poweroff -f
"#
    )
}

/// Single-quotes `s` for sh.
pub(super) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Applet names of the host busybox.
fn busybox_applets() -> anyhow::Result<Vec<String>> {
    let out =
        Command::new(BUSYBOX).arg("--list").output().with_context(|| format!("running {BUSYBOX} --list"))?;
    ensure!(out.status.success(), "{BUSYBOX} --list failed");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains('/') && *l != "busybox")
        .map(str::to_owned)
        .collect())
}

/// Whether `binary` is statically linked (`ldd` says it is not dynamic).
fn is_static(binary: &Path) -> anyhow::Result<bool> {
    let out = Command::new("ldd").arg(binary).output().context("running ldd")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok(text.contains("not a dynamic executable") || text.contains("statically linked"))
}

/// A newc (SVR4, no CRC) cpio writer.
pub(super) struct Cpio<W: io::Write> {
    out: W,
    ino: u32,
    entries: BTreeSet<String>,
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

impl<W: io::Write> Cpio<W> {
    pub(super) fn new(out: W) -> Self {
        Self { out, ino: 1, entries: BTreeSet::new() }
    }

    pub(super) fn has(&self, path: &str) -> bool {
        self.entries.contains(path)
    }

    pub(super) fn dir(&mut self, path: &str) -> io::Result<()> {
        self.parents(path)?;
        if self.entries.contains(path) {
            return Ok(());
        }
        self.header(path, S_IFDIR | 0o755, 2, 0, (0, 0))
    }

    pub(super) fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.parents(path)?;
        self.header(path, S_IFLNK | 0o777, 1, target.len(), (0, 0))?;
        self.data(target.as_bytes())
    }

    pub(super) fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.parents(path)?;
        self.header(path, S_IFCHR | perm, 1, 0, (major, minor))
    }

    pub(super) fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.parents(path)?;
        self.header(path, S_IFREG | perm, 1, data.len(), (0, 0))?;
        self.data(data)
    }

    /// Copies host file `src` (following links) into the archive at `path`.
    pub(super) fn file_from(&mut self, path: &str, perm: u32, src: &Path) -> anyhow::Result<()> {
        let mut f = File::open(src).with_context(|| format!("opening {}", src.display()))?;
        let len = usize::try_from(f.metadata()?.len())?;
        self.parents(path)?;
        self.header(path, S_IFREG | perm, 1, len, (0, 0))?;
        let copied = io::copy(&mut f, &mut self.out)?;
        ensure!(usize::try_from(copied)? == len, "{} changed size while being archived", src.display());
        self.pad(len)?;
        Ok(())
    }

    /// Writes the trailer and flushes.
    pub(super) fn finish(mut self) -> io::Result<W> {
        self.header_raw("TRAILER!!!", 0, 1, 0, (0, 0), 0)?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn parents(&mut self, path: &str) -> io::Result<()> {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            let parent = &path[..end + i];
            if !parent.is_empty() && !self.entries.contains(parent) {
                self.header(parent, S_IFDIR | 0o755, 2, 0, (0, 0))?;
            }
            end += i + 1;
        }
        Ok(())
    }

    fn header(&mut self, path: &str, mode: u32, nlink: u32, size: usize, rdev: (u32, u32)) -> io::Result<()> {
        let ino = self.ino;
        self.ino += 1;
        self.entries.insert(path.to_owned());
        self.header_raw(path, mode, nlink, size, rdev, ino)
    }

    fn header_raw(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        size: usize,
        (rmajor, rminor): (u32, u32),
        ino: u32,
    ) -> io::Result<()> {
        let size = u32::try_from(size)
            .map_err(|_| io::Error::other(format!("{name}: too big for newc cpio (4 GiB)")))?;
        let namesize = u32::try_from(name.len() + 1).map_err(io::Error::other)?;
        let fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rmajor, rminor, namesize, 0];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(110 + name.len() + 1)
    }

    fn data(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    fn pad(&mut self, len: usize) -> io::Result<()> {
        let pad = (4 - len % 4) % 4;
        self.out.write_all(&[0; 3][..pad])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_escapes_single_quotes() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn init_script_mounts_shares_then_runs_the_command_with_markers() {
        let env = [("RUST_LOG".to_owned(), "debug x".to_owned())];
        let argv = ["/src/target/debug/t".to_owned(), "--exact".to_owned(), "a'b".to_owned()];
        let shares = [Share { tag: "usr".to_owned(), host: PathBuf::from("/usr"), guest: "/usr".to_owned() }];
        let links = [("/work/tree".to_owned(), "/src".to_owned())];
        let p = Payload {
            argv: &argv,
            env: &env,
            cwd: "/tmp",
            path: "/usr/bin:/.vm/bin",
            shares: &shares,
            copies: &[],
            links: &links,
            modules: &[],
            quiet_kernel: false,
            nonce: "n0nce",
        };
        let s = init_script(&p);
        assert!(s.starts_with("#!/.vm/bin/sh\n"), "{s}");
        assert!(s.contains(
            "/.vm/bin/env -i 'HOME=/tmp' 'PATH=/usr/bin:/.vm/bin' 'RUST_LOG=debug x' \"$argv0\" '--exact' 'a'\\''b' </dev/null"
        ), "{s}");
        assert!(s.contains("argv0=$(resolve '/src/target/debug/t' '/usr/bin:/.vm/bin')\n"), "{s}");
        assert!(s.contains("share 'usr' '/usr'\n"), "{s}");
        assert!(s.contains("link '/src' '/work/tree'\n"), "{s}");
        assert!(s.contains("mount -t virtiofs -o ro"), "{s}");
        assert!(s.contains("cd '/tmp' || setup=failed"), "{s}");
        assert!(s.contains(&format!("rc={SETUP_FAILED}")), "{s}");
        assert!(s.contains(&format!("echo \"{} n0nce $rc\"", markers::EXIT)));
        assert!(s.contains("m securityfs /sys/kernel/security"));
        assert!(s.contains("m devpts /dev/pts"));
        assert!(!s.contains("printk"));
        assert!(s.trim_end().ends_with("poweroff -f"));
        let s = init_script(&Payload { quiet_kernel: true, ..p });
        assert!(s.contains("echo 1 >/proc/sys/kernel/printk\necho \"FORGE-VM-RUN n0nce\""), "{s}");
    }

    /// Reads back a newc archive: (name, mode, data) per entry.
    fn read_newc(mut b: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let hex = |s: &[u8]| u32::from_str_radix(std::str::from_utf8(s).unwrap(), 16).unwrap();
        let mut out = Vec::new();
        loop {
            assert_eq!(&b[..6], b"070701");
            let field = |i: usize| hex(&b[6 + i * 8..14 + i * 8]);
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let name = std::str::from_utf8(&b[110..110 + namesize - 1]).unwrap().to_owned();
            let data_at = (110 + namesize).div_ceil(4) * 4;
            let data = b[data_at..data_at + size].to_vec();
            b = &b[(data_at + size).div_ceil(4) * 4..];
            if name == "TRAILER!!!" {
                assert!(b.is_empty());
                return out;
            }
            out.push((name, mode, data));
        }
    }

    #[test]
    fn cpio_writes_parents_once_and_pads() {
        let mut c = Cpio::new(Vec::new());
        c.dir("usr/bin").unwrap();
        c.file("usr/bin/x", 0o755, b"hello").unwrap();
        c.symlink("bin", "usr/bin").unwrap();
        c.char_dev("dev/console", 0o600, 5, 1).unwrap();
        let bytes = c.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let entries = read_newc(&bytes);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["usr", "usr/bin", "usr/bin/x", "bin", "dev", "dev/console"]);
        assert_eq!(entries[2].1, S_IFREG | 0o755);
        assert_eq!(entries[2].2, b"hello");
        assert_eq!(entries[3].1, S_IFLNK | 0o777);
        assert_eq!(entries[3].2, b"usr/bin");
        assert_eq!(entries[5].1, S_IFCHR | 0o600);
    }
}
