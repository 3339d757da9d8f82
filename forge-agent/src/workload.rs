//! Running workloads inside a cgroup, and the small set of operations the
//! demo workload and the privileged tests perform (each in a process of its
//! own, so that a kill by the kernel is observable from outside).

use std::{
    fmt,
    fs::OpenOptions,
    io,
    net::{SocketAddr, TcpStream, UdpSocket},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
    str::FromStr,
    time::Duration,
};

use crate::cgroup::Cgroup;

/// One operation a workload performs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Connect(SocketAddr),
    Bind(SocketAddr),
    SendTo(SocketAddr),
    /// A UDP socket connected to the address, then a `send` without one
    /// (the way a DNS client sends).
    UdpConnectSend(SocketAddr),
    /// A TCP Fast Open connect: `sendto(MSG_FASTOPEN)` on a new stream
    /// socket, which connects without `connect()`.
    TfoConnect(SocketAddr),
    /// `listen()` on a TCP socket of IPv4 (`4`) or IPv6 (`6`) never bound:
    /// the kernel picks a port itself (autobind). A refused listen must
    /// leave the socket without a port; one that has a port anyway is an
    /// error of its own.
    ListenUnbound(u8),
    /// A raw ICMP socket of IPv4 (`4`) or IPv6 (`6`), and an echo request
    /// sent through it to loopback; or (`packet`, 17) a packet socket
    /// (`AF_PACKET`, every protocol), made and closed.
    RawSocket(u8),
    /// A syscall by name: `unshare` (CLONE_NEWUTS), `unshare-user` (CLONE_NEWUSER),
    /// `clone-user` (a child in a new user namespace), `perf_event_open` (a software
    /// counter), `request-module` (a socket of an unregistered family, which makes the
    /// kernel ask for a module), `ptrace` (PTRACE_TRACEME), `getppid`, `setns` (on fd -1:
    /// EBADF), `getpgrp`, `getsid`, `sched_yield`, `getuid`, `getpriority`.
    Syscall(String),
    Exec(String),
    /// `execveat(fd, "", AT_EMPTY_PATH)` of a file opened first (what
    /// `fexecve` does): the kernel is given no path at all.
    FdExec(String),
    /// A copy of a program in a `memfd`, executed from its fd: an
    /// anonymous executable, in no directory.
    ExecMemfd(String),
    /// A copy of a program in /tmp, opened, unlinked and executed from its
    /// fd: a deleted file.
    ExecDeleted(String),
    OpenRead(String),
    OpenWrite(String),
    /// bpf(BPF_MAP_CREATE) of a tiny array map.
    Bpf,
    /// kill(pid, SIGTERM)... with the signal given.
    Kill(u32, i32),
    /// ptrace(PTRACE_ATTACH, pid), detached again on success.
    PtraceAttach(u32),
    /// `n` connects to an address that must be denied: succeeds only if
    /// every one failed with EPERM (a hot-swap must never open a gap).
    ConnectDeniedLoop(SocketAddr, u32),
    /// `n` connect(2) calls as fast as possible on one socket (a denied
    /// connect leaves it unconnected): an event storm. Prints `denied D of N`
    /// on stdout, D counting the calls that failed with EPERM or EACCES, and
    /// succeeds only if every call was denied.
    ConnectStorm(SocketAddr, u32),
    /// Stay alive for this many milliseconds (a process that lingers, like
    /// a shell waiting for its operator).
    Sleep(u64),
    /// Move this process into the cgroup directory (made first if missing,
    /// like a workload making a child cgroup) by writing `0` to its
    /// `cgroup.procs`, then perform the action there.
    MoveSelf(PathBuf, Box<Action>),
    /// `clone3(CLONE_INTO_CGROUP)` a child straight into the cgroup directory
    /// (opened `O_PATH`) that performs the action; print `child <outcome>`.
    Clone3Into(PathBuf, Box<Action>),
    /// Fork a child, move it into the cgroup directory by writing its pid
    /// to `cgroup.procs`, then let it perform the action; print `child
    /// <outcome>`.
    MoveChild(PathBuf, Box<Action>),
    /// Start a thread that moves itself into the (threaded) cgroup
    /// directory through `cgroup.threads` and performs the action there.
    Thread(PathBuf, Box<Action>),
    /// How else a signal reaches a process: `tgkill(pid, pid, sig)`,
    /// `pidfd_send_signal`, or a file owner's signal (`F_SETOWN` to `pid`,
    /// `F_SETSIG` `sig`, `O_ASYNC` on a pipe, then a write to it).
    Signal(SignalRoute, u32, i32),
    /// unlink(2) of a path (a bpffs pin, say).
    Unlink(PathBuf),
    /// umount2(2) of a mount point.
    Umount(PathBuf),
    /// mount(2) of a tmpfs on a directory.
    MountTmpfs(PathBuf),
    /// A tmpfs mounted on a directory with the new mount API (`fsopen`,
    /// `fsconfig(FSCONFIG_CMD_CREATE)`, `fsmount`, `move_mount`), as
    /// util-linux's `mount` does from 2.39.
    MountApi(PathBuf),
    /// A bind mount of the first directory on the second with the new mount
    /// API (`open_tree(OPEN_TREE_CLONE)`, `move_mount`).
    BindApi(PathBuf, PathBuf),
    /// A connect to the unix stream socket bound at a path.
    UnixConnect(PathBuf),
    /// A datagram (`x`) to the unix datagram socket bound at a path.
    UnixSend(PathBuf),
    /// chroot(2) into a directory.
    Chroot(PathBuf),
    /// finit_module(2) of a file (not a module: the kernel would refuse it
    /// with ENOEXEC once read).
    FinitModule(PathBuf),
    /// kexec_file_load(2) of a file as the kernel image, without an initrd
    /// (not a kernel: refused as a format once read; nothing is loaded).
    KexecFile(PathBuf),
    /// A syscall of another ABI than x86_64 (the same process, the same
    /// kernel, another table): `syscall32` makes an i386 call with `int
    /// 0x80`, `syscall-x32` an x32 call. Names: `mkdir PATH`, `unshare`
    /// (CLONE_NEWUTS; `unshare user`: CLONE_NEWUSER), `getpid`, `getppid`,
    /// `process_vm_readv` (of nothing), and the differential test's harmless
    /// ones: `getpgrp`, `getsid`, `sched_yield`, `getuid`, `getpriority`,
    /// `setns` (on fd -1: EBADF).
    /// Prints `returned` on stdout once the call came back, so a test can
    /// tell that a killed caller did not go on.
    OtherAbi(OtherAbi, String, Option<String>),
}

/// The ABI of [`Action::OtherAbi`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtherAbi {
    I386,
    X32,
}

/// The ways of [`Action::Signal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalRoute {
    Tgkill,
    Pidfd,
    Sigio,
}

impl SignalRoute {
    const ALL: [(Self, &'static str); 3] =
        [(Self::Tgkill, "tgkill"), (Self::Pidfd, "pidfd-kill"), (Self::Sigio, "sigio")];

    fn verb(self) -> &'static str {
        Self::ALL.iter().find(|(r, _)| *r == self).map_or("?", |(_, v)| v)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(a) => write!(f, "connect {a}"),
            Self::Bind(a) => write!(f, "bind {a}"),
            Self::SendTo(a) => write!(f, "sendto {a}"),
            Self::UdpConnectSend(a) => write!(f, "udp-connect-send {a}"),
            Self::TfoConnect(a) => write!(f, "tfo-connect {a}"),
            Self::ListenUnbound(v) => write!(f, "listen-unbound {v}"),
            Self::RawSocket(17) => f.write_str("raw-socket packet"),
            Self::RawSocket(v) => write!(f, "raw-socket {v}"),
            Self::Syscall(s) => write!(f, "syscall {s}"),
            Self::Exec(p) => write!(f, "exec {p}"),
            Self::FdExec(p) => write!(f, "fd-exec {p}"),
            Self::ExecMemfd(p) => write!(f, "exec-memfd {p}"),
            Self::ExecDeleted(p) => write!(f, "exec-deleted {p}"),
            Self::OpenRead(p) => write!(f, "open-read {p}"),
            Self::OpenWrite(p) => write!(f, "open-write {p}"),
            Self::Bpf => f.write_str("bpf"),
            Self::Kill(pid, sig) => write!(f, "kill {pid} {sig}"),
            Self::PtraceAttach(pid) => write!(f, "ptrace {pid}"),
            Self::ConnectDeniedLoop(a, n) => write!(f, "connect-denied-loop {a} {n}"),
            Self::ConnectStorm(a, n) => write!(f, "connect-storm {a} {n}"),
            Self::Sleep(ms) => write!(f, "sleep {ms}"),
            Self::MoveSelf(dir, a) => write!(f, "move-self {} {a}", dir.display()),
            Self::Clone3Into(dir, a) => write!(f, "clone3-into {} {a}", dir.display()),
            Self::MoveChild(dir, a) => write!(f, "move-child {} {a}", dir.display()),
            Self::Thread(dir, a) => write!(f, "thread-in {} {a}", dir.display()),
            Self::Signal(route, pid, sig) => write!(f, "{} {pid} {sig}", route.verb()),
            Self::Unlink(p) => write!(f, "unlink {}", p.display()),
            Self::Umount(p) => write!(f, "umount {}", p.display()),
            Self::MountTmpfs(p) => write!(f, "mount-tmpfs {}", p.display()),
            Self::MountApi(p) => write!(f, "mount-api {}", p.display()),
            Self::BindApi(from, to) => write!(f, "bind-api {} {}", from.display(), to.display()),
            Self::UnixConnect(p) => write!(f, "unix-connect {}", p.display()),
            Self::UnixSend(p) => write!(f, "unix-send {}", p.display()),
            Self::Chroot(p) => write!(f, "chroot {}", p.display()),
            Self::FinitModule(p) => write!(f, "finit-module {}", p.display()),
            Self::KexecFile(p) => write!(f, "kexec-file {}", p.display()),
            Self::OtherAbi(abi, name, arg) => {
                let verb = if *abi == OtherAbi::I386 { "syscall32" } else { "syscall-x32" };
                write!(f, "{verb} {name}")?;
                arg.as_ref().map_or(Ok(()), |a| write!(f, " {a}"))
            }
        }
    }
}

impl FromStr for Action {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut it = s.split_whitespace();
        let verb = it.next().ok_or("empty action")?;
        if let Some(wrap) = wrapper(verb) {
            // `VERB DIR ACTION...`: the rest of the line is the inner action.
            let dir = it.next().ok_or_else(|| format!("{verb} needs a cgroup directory"))?;
            let inner: Action = it.collect::<Vec<_>>().join(" ").parse()?;
            return Ok(wrap(PathBuf::from(dir), Box::new(inner)));
        }
        let arg = it.next();
        let need = |a: Option<&str>| a.map(str::to_string).ok_or_else(|| format!("{verb} needs an argument"));
        let addr = |a: Option<&str>| -> Result<SocketAddr, String> {
            need(a)?.parse().map_err(|e| format!("{verb}: bad address: {e}"))
        };
        let pid = |a: Option<&str>| -> Result<u32, String> {
            need(a)?.parse().map_err(|e| format!("{verb}: bad pid: {e}"))
        };
        Ok(match verb {
            "connect" => Self::Connect(addr(arg)?),
            "bind" => Self::Bind(addr(arg)?),
            "sendto" => Self::SendTo(addr(arg)?),
            "udp-connect-send" => Self::UdpConnectSend(addr(arg)?),
            "tfo-connect" => Self::TfoConnect(addr(arg)?),
            "listen-unbound" => match arg {
                Some("4") => Self::ListenUnbound(4),
                Some("6") => Self::ListenUnbound(6),
                _ => return Err("listen-unbound needs 4 or 6".into()),
            },
            "raw-socket" => match arg {
                Some("4") => Self::RawSocket(4),
                Some("6") => Self::RawSocket(6),
                Some("packet") => Self::RawSocket(17),
                _ => return Err("raw-socket needs 4, 6 or packet".into()),
            },
            "syscall" => Self::Syscall(need(arg)?),
            "exec" => Self::Exec(need(arg)?),
            "fd-exec" => Self::FdExec(need(arg)?),
            "exec-memfd" => Self::ExecMemfd(need(arg)?),
            "exec-deleted" => Self::ExecDeleted(need(arg)?),
            "open-read" => Self::OpenRead(need(arg)?),
            "open-write" => Self::OpenWrite(need(arg)?),
            "bpf" => Self::Bpf,
            "sleep" => Self::Sleep(need(arg)?.parse().map_err(|e| format!("sleep: bad milliseconds: {e}"))?),
            "kill" => {
                let p = pid(arg)?;
                let sig = it
                    .next()
                    .map_or(Ok(libc::SIGTERM), |s| s.parse().map_err(|e| format!("kill: bad signal: {e}")))?;
                Self::Kill(p, sig)
            }
            "ptrace" => Self::PtraceAttach(pid(arg)?),
            "unlink" => Self::Unlink(PathBuf::from(need(arg)?)),
            "umount" => Self::Umount(PathBuf::from(need(arg)?)),
            "mount-tmpfs" => Self::MountTmpfs(PathBuf::from(need(arg)?)),
            "mount-api" => Self::MountApi(PathBuf::from(need(arg)?)),
            "bind-api" => {
                let to = it.next().ok_or("bind-api needs a source and a target directory")?;
                Self::BindApi(PathBuf::from(need(arg)?), PathBuf::from(to))
            }
            "unix-connect" => Self::UnixConnect(PathBuf::from(need(arg)?)),
            "unix-send" => Self::UnixSend(PathBuf::from(need(arg)?)),
            "chroot" => Self::Chroot(PathBuf::from(need(arg)?)),
            "finit-module" => Self::FinitModule(PathBuf::from(need(arg)?)),
            "kexec-file" => Self::KexecFile(PathBuf::from(need(arg)?)),
            "syscall32" | "syscall-x32" => {
                let abi = if verb == "syscall32" { OtherAbi::I386 } else { OtherAbi::X32 };
                Self::OtherAbi(abi, need(arg)?, it.next().map(str::to_string))
            }
            v if SignalRoute::ALL.iter().any(|(_, name)| *name == v) => {
                let route =
                    SignalRoute::ALL.iter().find(|(_, name)| *name == v).map(|(r, _)| *r).expect("found");
                let sig = it.next().ok_or_else(|| format!("{verb} needs a signal"))?;
                Self::Signal(route, pid(arg)?, sig.parse().map_err(|e| format!("{verb}: bad signal: {e}"))?)
            }
            "connect-denied-loop" | "connect-storm" => {
                let a = addr(arg)?;
                let n = it
                    .next()
                    .ok_or_else(|| format!("{verb} needs a count"))?
                    .parse()
                    .map_err(|e| format!("bad count: {e}"))?;
                if verb == "connect-storm" { Self::ConnectStorm(a, n) } else { Self::ConnectDeniedLoop(a, n) }
            }
            other => return Err(format!("unknown action {other:?}")),
        })
    }
}

type Wrap = fn(PathBuf, Box<Action>) -> Action;

/// The actions that wrap another one in a cgroup move.
fn wrapper(verb: &str) -> Option<Wrap> {
    Some(match verb {
        "move-self" => Action::MoveSelf,
        "clone3-into" => Action::Clone3Into,
        "move-child" => Action::MoveChild,
        "thread-in" => Action::Thread,
        _ => return None,
    })
}

fn errno_result(ret: libc::c_long) -> io::Result<()> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Performs `action` in the current process.
pub fn perform(action: &Action) -> io::Result<()> {
    match action {
        Action::Connect(a) => TcpStream::connect_timeout(a, Duration::from_secs(2)).map(drop),
        Action::Bind(a) => std::net::TcpListener::bind(a).map(drop),
        Action::SendTo(a) => {
            let local: SocketAddr = if a.is_ipv4() {
                "0.0.0.0:0".parse().expect("literal")
            } else {
                "[::]:0".parse().expect("literal")
            };
            UdpSocket::bind(local)?.send_to(b"forge", a).map(drop)
        }
        Action::RawSocket(v) => raw_socket(*v),
        Action::ListenUnbound(v) => listen_unbound(*v),
        Action::TfoConnect(a) => tfo_connect(a),
        Action::UdpConnectSend(a) => {
            let local: SocketAddr = if a.is_ipv4() {
                "0.0.0.0:0".parse().expect("literal")
            } else {
                "[::]:0".parse().expect("literal")
            };
            let s = UdpSocket::bind(local)?;
            s.connect(a)?;
            s.send(b"forge").map(drop)
        }
        Action::Syscall(name) => syscall(name),
        Action::FdExec(path) => {
            let file = std::fs::File::open(path)?;
            Err(exec_fd(&file, path))
        }
        Action::ExecMemfd(path) => {
            let bytes = std::fs::read(path)?;
            // SAFETY: memfd_create with a C string name and no flags.
            let fd = fd_result(unsafe { libc::syscall(libc::SYS_memfd_create, c"forge-anon".as_ptr(), 0) })?;
            let mut file = std::fs::File::from(fd);
            io::Write::write_all(&mut file, &bytes)?;
            Err(exec_fd(&file, path))
        }
        Action::ExecDeleted(path) => {
            let copy = std::env::temp_dir().join(format!("forge-deleted-{}", std::process::id()));
            std::fs::copy(path, &copy)?;
            let file = std::fs::File::open(&copy)?;
            std::fs::remove_file(&copy)?;
            Err(exec_fd(&file, path))
        }
        Action::Exec(path) => {
            // If the program is a copy of a binary that honours ACTION_ENV,
            // give it a harmless action so it exits at once.
            let err = Command::new(path).env(ACTION_ENV, "syscall getppid").exec();
            Err(err)
        }
        Action::OpenRead(p) => OpenOptions::new().read(true).open(p).map(drop),
        Action::OpenWrite(p) => OpenOptions::new().write(true).create(true).truncate(false).open(p).map(drop),
        Action::Bpf => bpf_map_create(),
        Action::Kill(pid, sig) => {
            // SAFETY: kill(2) has no memory arguments.
            errno_result(unsafe { libc::kill(*pid as i32, *sig) }.into())
        }
        Action::ConnectDeniedLoop(a, n) => {
            for i in 0..*n {
                match TcpStream::connect_timeout(a, Duration::from_secs(2)) {
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
                    Ok(_) => return Err(io::Error::other(format!("connect {i} of {n} to {a} was allowed"))),
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
        Action::ConnectStorm(a, n) => connect_storm(a, *n),
        Action::Sleep(ms) => {
            std::thread::sleep(Duration::from_millis(*ms));
            Ok(())
        }
        Action::PtraceAttach(pid) => {
            // SAFETY: ptrace(2) attach/detach with null addr/data.
            let r = unsafe { libc::ptrace(libc::PTRACE_ATTACH, *pid as libc::pid_t, 0usize, 0usize) };
            errno_result(r)?;
            // SAFETY: as above.
            unsafe { libc::ptrace(libc::PTRACE_DETACH, *pid as libc::pid_t, 0usize, 0usize) };
            Ok(())
        }
        Action::Signal(route, pid, sig) => signal(*route, *pid, *sig),
        Action::Unlink(p) => std::fs::remove_file(p),
        Action::Umount(p) => {
            nix::mount::umount2(p.as_path(), nix::mount::MntFlags::empty()).map_err(io::Error::from)
        }
        Action::MountTmpfs(p) => nix::mount::mount(
            Some("tmpfs"),
            p.as_path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(io::Error::from),
        Action::MountApi(p) => mount_api(p),
        Action::BindApi(from, to) => bind_api(from, to),
        Action::UnixConnect(p) => std::os::unix::net::UnixStream::connect(p).map(drop),
        Action::UnixSend(p) => {
            let sock = std::os::unix::net::UnixDatagram::unbound()?;
            sock.send_to(b"x", p).map(drop)
        }
        Action::Chroot(p) => nix::unistd::chroot(p.as_path()).map_err(io::Error::from),
        Action::FinitModule(p) => {
            let file = std::fs::File::open(p)?;
            // SAFETY: finit_module(fd, params, flags) with an open fd and an
            // empty C string.
            errno_result(unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), 0) })
        }
        Action::KexecFile(p) => {
            /// `KEXEC_FILE_NO_INITRAMFS`.
            const NO_INITRAMFS: u64 = 4;
            let file = std::fs::File::open(p)?;
            // SAFETY: kexec_file_load(kernel_fd, initrd_fd, cmdline_len,
            // cmdline, flags) with an open fd, no initrd and an empty command
            // line (length 1: its NUL).
            errno_result(unsafe {
                libc::syscall(libc::SYS_kexec_file_load, file.as_raw_fd(), -1, 1, c"".as_ptr(), NO_INITRAMFS)
            })
        }
        Action::OtherAbi(abi, name, arg) => {
            use std::io::Write as _;
            let r = other_abi_syscall(*abi, name, arg.as_deref());
            let mut out = io::stdout().lock();
            writeln!(out, "returned")?;
            out.flush()?;
            r
        }
        Action::MoveSelf(dir, inner) => {
            if !dir.exists() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(dir.join("cgroup.procs"), "0")?;
            perform(inner)
        }
        Action::Clone3Into(dir, inner) => clone3_into(dir, inner),
        Action::MoveChild(dir, inner) => move_child(dir, inner),
        Action::Thread(dir, inner) => {
            let (dir, inner) = (dir.clone(), (**inner).clone());
            let t = std::thread::spawn(move || -> io::Result<()> {
                std::fs::write(dir.join("cgroup.threads"), "0")?;
                perform(&inner)
            });
            t.join().map_err(|_| io::Error::other("the thread panicked"))?
        }
    }
}

/// `F_SETSIG` from `<fcntl.h>` (Linux; not in the libc crate).
const F_SETSIG: libc::c_int = 10;

fn signal(route: SignalRoute, pid: u32, sig: i32) -> io::Result<()> {
    let pid = pid as libc::pid_t;
    match route {
        // SAFETY: tgkill(2) has no memory arguments.
        SignalRoute::Tgkill => errno_result(unsafe { libc::syscall(libc::SYS_tgkill, pid, pid, sig) }),
        SignalRoute::Pidfd => {
            // SAFETY: pidfd_open(2) has no memory arguments.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            errno_result(fd)?;
            // SAFETY: a null siginfo asks for a plain kill(2)-like signal.
            let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd, sig, 0usize, 0) };
            // SAFETY: closing the pidfd opened above.
            unsafe { libc::close(fd as i32) };
            errno_result(r)
        }
        SignalRoute::Sigio => {
            let mut fds = [0; 2];
            // SAFETY: pipe(2) into a two-element array; fcntl(2) on its read
            // end with integer arguments; a one-byte write to its write end.
            unsafe {
                if libc::pipe(fds.as_mut_ptr()) < 0 {
                    return Err(io::Error::last_os_error());
                }
                errno_result(libc::fcntl(fds[0], libc::F_SETOWN, pid).into())?;
                errno_result(libc::fcntl(fds[0], F_SETSIG, sig).into())?;
                errno_result(libc::fcntl(fds[0], libc::F_SETFL, libc::O_ASYNC | libc::O_NONBLOCK).into())?;
                errno_result(libc::write(fds[1], b"x".as_ptr().cast(), 1) as libc::c_long)?;
                libc::close(fds[0]);
                libc::close(fds[1]);
            }
            Ok(())
        }
    }
}

/// Prints how the child `pid` ended (`child succeeded`, `child failed: ...`,
/// `child killed by SIGKILL`) and returns.
fn report_child(pid: libc::pid_t) -> io::Result<()> {
    use std::io::Write as _;
    let mut status = 0;
    // SAFETY: waitpid(2) on our own child with a valid status pointer.
    if unsafe { libc::waitpid(pid, &raw mut status, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let outcome = if libc::WIFSIGNALED(status) {
        Outcome::Signal(libc::WTERMSIG(status))
    } else {
        match libc::WEXITSTATUS(status) {
            0 => Outcome::Ok,
            c => Outcome::Errno(c),
        }
    };
    let mut out = io::stdout().lock();
    writeln!(out, "child {outcome}")?;
    out.flush()
}

/// In a forked child: performs `inner` and exits with its code.
fn child_performs(inner: &Action) -> ! {
    let code = exit_code(&perform(inner));
    // SAFETY: ends the forked child without running the parent's atexit work.
    unsafe { libc::_exit(code) }
}

fn clone3_into(dir: &Path, inner: &Action) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: open(2) of a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    /// `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2).
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let mut args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: fd as u64,
        ..Default::default()
    };
    // SAFETY: clone3(2) like fork (no new stack); `args` is a valid
    // clone_args of the size given. The workload process is single-threaded.
    let pid = unsafe { libc::syscall(libc::SYS_clone3, &raw mut args, size_of::<CloneArgs>()) };
    if pid < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: closing the descriptor opened above.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    if pid == 0 {
        child_performs(inner);
    }
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
    report_child(pid as libc::pid_t)
}

fn move_child(dir: &Path, inner: &Action) -> io::Result<()> {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) into a two-element array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fork(2) in a single-threaded workload process.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        let mut b = [0u8; 1];
        // SAFETY: reading one byte from the pipe's read end; closing its write end.
        unsafe {
            libc::close(fds[1]);
            libc::read(fds[0], b.as_mut_ptr().cast(), 1);
        }
        child_performs(inner);
    }
    // SAFETY: closing the read end in the parent.
    unsafe { libc::close(fds[0]) };
    let moved = std::fs::write(dir.join("cgroup.procs"), pid.to_string());
    // SAFETY: one byte to let the child go, then close the write end.
    unsafe {
        libc::write(fds[1], b"g".as_ptr().cast(), 1);
        libc::close(fds[1]);
    }
    let reported = report_child(pid);
    moved?;
    reported
}

fn connect_storm(addr: &SocketAddr, n: u32) -> io::Result<()> {
    use std::io::Write as _;
    // sockaddr_in or sockaddr_in6 for `addr`, in network byte order.
    // SAFETY: both are plain C structs for which all-zero bytes are valid.
    let mut v4: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut v6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let (domain, sa, len) = match addr {
        SocketAddr::V4(a) => {
            v4.sin_family = libc::AF_INET as libc::sa_family_t;
            v4.sin_port = a.port().to_be();
            v4.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            let p: *const libc::sockaddr = (&raw const v4).cast();
            (libc::AF_INET, p, size_of::<libc::sockaddr_in>())
        }
        SocketAddr::V6(a) => {
            v6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            v6.sin6_port = a.port().to_be();
            v6.sin6_addr.s6_addr = a.ip().octets();
            let p: *const libc::sockaddr = (&raw const v6).cast();
            (libc::AF_INET6, p, size_of::<libc::sockaddr_in6>())
        }
    };
    // SAFETY: socket(2) has no memory arguments.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut denied = 0u32;
    let mut other = None;
    for i in 0..n {
        // SAFETY: `sa` points at the live sockaddr above, of `len` bytes.
        let r = unsafe { libc::connect(fd, sa, len as libc::socklen_t) };
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) if r < 0 => denied += 1,
            _ => {
                let what = if r == 0 { "succeeded".to_string() } else { err.to_string() };
                other = Some(format!("connect {i} of {n} to {addr} was not denied: {what}"));
                break;
            }
        }
    }
    // SAFETY: `fd` is the socket opened above, closed once.
    unsafe { libc::close(fd) };
    let mut out = io::stdout().lock();
    writeln!(out, "denied {denied} of {n}")?;
    out.flush()?;
    match other {
        None => Ok(()),
        Some(msg) => Err(io::Error::other(msg)),
    }
}

fn syscall(name: &str) -> io::Result<()> {
    // SAFETY: each call passes only integer arguments the syscall accepts.
    let r = unsafe {
        match name {
            "unshare" => libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUTS),
            "unshare-user" => libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER),
            "clone-user" => return clone_user(),
            "perf_event_open" => return perf_event_open(),
            "request-module" => return request_module(),
            "ptrace" => libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0),
            "getppid" => libc::syscall(libc::SYS_getppid),
            "setns" => libc::syscall(libc::SYS_setns, -1, 0),
            // Harmless calls the process does not make while starting up, so
            // a test may deny them without killing its workload early.
            "getpgrp" => libc::syscall(libc::SYS_getpgrp),
            "getsid" => libc::syscall(libc::SYS_getsid, 0),
            "sched_yield" => libc::syscall(libc::SYS_sched_yield),
            "getuid" => libc::syscall(libc::SYS_getuid),
            "getpriority" => libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, 0),
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("syscall {other} is not one the workload knows"),
                ));
            }
        }
    };
    errno_result(r)
}

fn listen_unbound(version: u8) -> io::Result<()> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let domain = if version == 6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: socket(2) with integer arguments.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is the socket just made; wrapping it closes it once.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: listen(2) on the socket above.
    if unsafe { libc::listen(sock.as_raw_fd(), 1) } == 0 {
        return Ok(());
    }
    let refused = io::Error::last_os_error();
    let local: nix::sys::socket::SockaddrStorage =
        nix::sys::socket::getsockname(sock.as_raw_fd()).map_err(io::Error::from)?;
    let port = local.as_sockaddr_in().map(|a| a.port()).or(local.as_sockaddr_in6().map(|a| a.port()));
    match port {
        Some(0) | None => Err(refused),
        Some(p) => Err(io::Error::other(format!("listen refused ({refused}) but the socket took port {p}"))),
    }
}

/// `clone(CLONE_NEWUSER)`: a child in a new user namespace, which exits at
/// once; `Ok` once it was made and reaped.
fn clone_user() -> io::Result<()> {
    // SAFETY: a fork-like clone (no new stack, no shared memory): the child
    // runs on a copy of this stack and leaves at once through _exit.
    let pid = unsafe { libc::syscall(libc::SYS_clone, libc::CLONE_NEWUSER | libc::SIGCHLD, 0, 0, 0, 0) };
    if pid == 0 {
        // SAFETY: the child ends here without touching the parent's state.
        unsafe { libc::_exit(0) };
    }
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut status = 0;
    // SAFETY: waits for the child made above.
    unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
    Ok(())
}

/// `perf_event_open` of a software counter on this process; `Ok` when the
/// kernel handed out the event (closed again at once).
fn perf_event_open() -> io::Result<()> {
    /// `PERF_TYPE_SOFTWARE`, `PERF_COUNT_SW_DUMMY`.
    const SOFTWARE: u32 = 1;
    const DUMMY: u64 = 9;
    // struct perf_event_attr, version 0 (64 bytes): type, size, config.
    let mut attr = [0u8; 64];
    attr[0..4].copy_from_slice(&SOFTWARE.to_ne_bytes());
    attr[4..8].copy_from_slice(&64u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&DUMMY.to_ne_bytes());
    // SAFETY: `attr` is a valid 64-byte perf_event_attr that outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), 0, -1, -1, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is the event opened above, closed once.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// A socket of an address family no module has registered (AppleTalk):
/// the kernel asks user space (`/proc/sys/kernel/modprobe`) to load
/// `net-pf-5` for the caller. `Ok` whatever the socket call answers; what
/// matters is whether the helper ran.
fn request_module() -> io::Result<()> {
    // SAFETY: plain integer arguments; a socket that opens is closed.
    let fd = unsafe { libc::socket(libc::AF_APPLETALK, libc::SOCK_DGRAM, 0) };
    if fd >= 0 {
        // SAFETY: as above.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Arguments of an [`Action::OtherAbi`] call: number in that ABI, and up to
/// three integer arguments.
fn other_abi_args(
    abi: OtherAbi,
    name: &str,
    arg: Option<&str>,
    path: Option<u64>,
) -> io::Result<(u32, [u64; 3])> {
    use crate::policy::syscalls::{Abi, number_in};
    let table = if abi == OtherAbi::I386 { Abi::I386 } else { Abi::X32 };
    let nr = number_in(table, name).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{table} has no syscall {name}"))
    })?;
    let args = match name {
        "mkdir" => {
            [path.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "mkdir needs a path"))?, 0o755, 0]
        }
        "unshare" if arg == Some("user") => [libc::CLONE_NEWUSER as u64, 0, 0],
        "unshare" => [libc::CLONE_NEWUTS as u64, 0, 0],
        "getpid" | "getppid" | "getpgrp" | "sched_yield" | "getuid" | "getsid" => [0; 3],
        // fd -1: EBADF once the call runs.
        "setns" => [u64::from(u32::MAX), 0, 0],
        "getpriority" => [libc::PRIO_PROCESS as u64, 0, 0],
        // pid 0 does not exist: ESRCH once the call runs.
        "process_vm_readv" => [0; 3],
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("syscall {other} is not one the workload makes in another ABI"),
            ));
        }
    };
    Ok((nr, args))
}

/// An i386 syscall through `int 0x80`, or an x32 one, from this 64-bit
/// process. Pointers for i386 live below 4 GiB (`MAP_32BIT`).
#[cfg(target_arch = "x86_64")]
fn other_abi_syscall(abi: OtherAbi, name: &str, arg: Option<&str>) -> io::Result<()> {
    let path = match arg {
        Some(a) if name == "mkdir" => {
            let bytes =
                std::ffi::CString::new(a).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            // SAFETY: a fresh anonymous private mapping; no existing memory is touched.
            let page = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
                    -1,
                    0,
                )
            };
            if page == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let b = bytes.as_bytes_with_nul();
            if b.len() > 4096 {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "path longer than a page"));
            }
            // SAFETY: `page` is a writable 4096-byte mapping and `b` fits in it.
            unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), page.cast::<u8>(), b.len()) };
            Some(page as u64)
        }
        _ => None,
    };
    let (nr, [a1, a2, a3]) = other_abi_args(abi, name, arg, path)?;
    let ret: i64 = match abi {
        OtherAbi::I386 => {
            let ret: i32;
            // SAFETY: a 32-bit syscall with integer arguments and, for mkdir,
            // a pointer to the NUL-terminated path copied above. rbx cannot
            // be named as an operand, so it is swapped in and out; int 0x80
            // from 64-bit code clobbers r8-r11.
            unsafe {
                core::arch::asm!(
                    "xchg {b}, rbx",
                    "int 0x80",
                    "xchg {b}, rbx",
                    b = inout(reg) a1 => _,
                    inlateout("eax") nr => ret,
                    in("ecx") a2 as u32,
                    in("edx") a3 as u32,
                    out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                );
            }
            i64::from(ret)
        }
        // SAFETY: as above; the x32 call takes 64-bit registers.
        OtherAbi::X32 => unsafe { libc::syscall(i64::from(nr) | 0x4000_0000, a1, a2, a3) },
    };
    if abi == OtherAbi::I386 && ret < 0 {
        return Err(io::Error::from_raw_os_error(-ret as i32));
    }
    errno_result(ret)
}

#[cfg(not(target_arch = "x86_64"))]
fn other_abi_syscall(_: OtherAbi, _: &str, _: Option<&str>) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "i386 and x32 syscalls exist on x86_64 only"))
}

fn raw_socket(version: u8) -> io::Result<()> {
    if version == 17 {
        /// `ETH_P_ALL`, in network byte order as the call takes it.
        const ALL: i32 = 0x0003_u16.to_be() as i32;
        // SAFETY: socket(2) with integer arguments.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, ALL) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is the socket just made, closed once.
        unsafe { libc::close(fd) };
        return Ok(());
    }
    let (domain, proto) = if version == 6 {
        (libc::AF_INET6, libc::IPPROTO_ICMPV6)
    } else {
        (libc::AF_INET, libc::IPPROTO_ICMP)
    };
    // SAFETY: socket(2) with integer arguments.
    let fd = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is the socket just made; wrapping it closes it once.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // An echo request (type 8 for ICMP, 128 for ICMPv6), id and sequence 1.
    let mut packet = [if version == 6 { 128u8 } else { 8 }, 0, 0, 0, 0, 1, 0, 1];
    if version == 4 {
        let sum = !packet.chunks(2).fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]]))) as u16;
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    let to: SocketAddr = if version == 6 {
        "[::1]:0".parse().expect("literal")
    } else {
        "127.0.0.1:0".parse().expect("literal")
    };
    let to = nix::sys::socket::SockaddrStorage::from(to);
    nix::sys::socket::sendto(sock.as_raw_fd(), &packet, &to, nix::sys::socket::MsgFlags::empty())
        .map(drop)
        .map_err(io::Error::from)
}

fn bpf_map_create() -> io::Result<()> {
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries.
    let mut attr = [0u32; 32];
    attr[0] = 2; // BPF_MAP_TYPE_ARRAY
    attr[1] = 4;
    attr[2] = 4;
    attr[3] = 1;
    // SAFETY: `attr` is a zeroed buffer larger than the part of bpf_attr the
    // kernel reads for BPF_MAP_CREATE with the given size.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_mut_ptr(), size_of_val(&attr)) };
    errno_result(fd)?;
    // SAFETY: `fd` is a descriptor the kernel just returned to us.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// Exit code a workload process uses for `result`: 0 for success, the errno
/// (1..=255) otherwise, 255 for errors without one.
pub fn exit_code(result: &io::Result<()>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => e.raw_os_error().map_or(255, |c| c.clamp(1, 255)),
    }
}

/// How a workload process ended, as the kernel reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exited 0: the operation succeeded.
    Ok,
    /// Exited with an errno.
    Errno(i32),
    /// Killed by a signal.
    Signal(i32),
}

impl Outcome {
    pub fn from_status(st: ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt as _;
        match (st.code(), st.signal()) {
            (Some(0), _) => Self::Ok,
            (Some(c), _) => Self::Errno(c),
            (None, Some(s)) => Self::Signal(s),
            (None, None) => Self::Errno(255),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok => f.write_str("succeeded"),
            Self::Errno(e) => write!(f, "failed: {}", io::Error::from_raw_os_error(*e)),
            Self::Signal(9) => f.write_str("killed by SIGKILL"),
            Self::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// Spawns `cmd` as a process that joins `cgroup` before it executes, so that
/// its first instruction already runs governed.
pub fn spawn_in(cgroup: &Cgroup, cmd: &mut Command) -> io::Result<Child> {
    let procs = OpenOptions::new().write(true).open(cgroup.path.join("cgroup.procs"))?;
    let fd = procs.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and only calls
    // write(2) on a descriptor opened before the fork (async-signal-safe).
    unsafe {
        cmd.pre_exec(move || {
            let r = libc::write(fd, b"0".as_ptr().cast(), 1);
            if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
        });
    }
    let child = cmd.spawn();
    drop(procs);
    child
}

/// Runs `action` in a new process inside `cgroup` (re-executing `exe` with
/// `FORGE_WORKLOAD_ACTION` set) and reports how it ended.
pub fn run_action_in(cgroup: &Cgroup, exe: &Path, action: &Action) -> io::Result<Outcome> {
    let mut cmd = Command::new(exe);
    cmd.env(ACTION_ENV, action.to_string());
    let status = spawn_in(cgroup, &mut cmd)?.wait()?;
    Ok(Outcome::from_status(status))
}

/// Starts `exe` outside `cgroup`, moves the running process into it, then
/// lets it perform `action`: a workload that was already running (past its
/// exec) when its cgroup became governed.
pub fn run_action_moved_in(cgroup: &Cgroup, exe: &Path, action: &Action) -> io::Result<Outcome> {
    use std::io::{Read as _, Write as _};
    let mut child = Command::new(exe)
        .env(ACTION_ENV, action.to_string())
        .env(WAIT_ENV, "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    // Wait for the child to say it runs (it has exec'd) before moving it.
    let mut ready = [0u8; 1];
    child.stdout.take().ok_or_else(|| io::Error::other("child stdout"))?.read_exact(&mut ready)?;
    let moved = cgroup.add_pid(child.id()).map_err(io::Error::other);
    let mut stdin = child.stdin.take().ok_or_else(|| io::Error::other("child stdin"))?;
    if let Err(e) = moved {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    stdin.write_all(b"go")?;
    drop(stdin);
    Ok(Outcome::from_status(child.wait()?))
}

/// Set by [`run_action_moved_in`]: wait for a byte on stdin before acting.
const WAIT_ENV: &str = "FORGE_WORKLOAD_WAIT";

/// Runs `action` in a new process outside any governed cgroup.
pub fn run_action(exe: &Path, action: &Action) -> io::Result<Outcome> {
    let status = Command::new(exe).env(ACTION_ENV, action.to_string()).status()?;
    Ok(Outcome::from_status(status))
}

/// Environment variable naming the action a re-executed process performs.
pub const ACTION_ENV: &str = "FORGE_WORKLOAD_ACTION";

/// Call first in `main` of any binary used with [`run_action_in`]: if this
/// process was started to perform an action, perform it and exit.
pub fn maybe_perform_from_env() {
    let Ok(spec) = std::env::var(ACTION_ENV) else { return };
    if std::env::var_os(WAIT_ENV).is_some() {
        use std::io::{Read as _, Write as _};
        let _ = io::stdout().write_all(b"r").and_then(|()| io::stdout().flush());
        let mut b = [0u8; 1];
        let _ = io::stdin().read(&mut b);
    }
    let code = match spec.parse::<Action>() {
        Ok(action) => exit_code(&perform(&action)),
        Err(_) => 254,
    };
    std::process::exit(code);
}

/// `execveat(fd, "", AT_EMPTY_PATH)` (what `fexecve` does) of `file`,
/// telling a copy of this binary to exit at once; returns only on failure.
fn exec_fd(file: &std::fs::File, arg0: &str) -> io::Error {
    let env = std::ffi::CString::new(format!("{ACTION_ENV}=syscall getppid")).expect("no NUL");
    let Ok(arg0) = std::ffi::CString::new(arg0) else {
        return io::Error::new(io::ErrorKind::InvalidInput, "NUL in the program path");
    };
    let argv = [arg0.as_ptr().cast_mut(), std::ptr::null_mut()];
    let envp = [env.as_ptr().cast_mut(), std::ptr::null_mut()];
    // SAFETY: the fd is open, the path is the empty C string, and argv/envp
    // are NULL-terminated arrays of live C strings.
    unsafe {
        libc::execveat(file.as_raw_fd(), c"".as_ptr(), argv.as_ptr(), envp.as_ptr(), libc::AT_EMPTY_PATH)
    };
    io::Error::last_os_error()
}

fn tfo_connect(a: &SocketAddr) -> io::Result<()> {
    let SocketAddr::V4(v4) = a else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "tfo-connect takes an IPv4 address"));
    };
    // SAFETY: socket(2) with constant arguments.
    let fd = fd_result(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) }.into())?;
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
        sin_zero: [0; 8],
    };
    // SAFETY: sendto with a live 1-byte buffer and a sockaddr_in of its size.
    let r = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            b"x".as_ptr().cast(),
            1,
            libc::MSG_FASTOPEN,
            (&raw const sin).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    errno_result(r as libc::c_long)
}

/// A path as a C string for a raw syscall.
fn c_path(p: &Path) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// A raw syscall's file descriptor result as an owned fd.
fn fd_result(r: libc::c_long) -> io::Result<std::os::fd::OwnedFd> {
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(r as i32) })
}

/// `move_mount(fd, "", AT_FDCWD, to, MOVE_MOUNT_F_EMPTY_PATH)`: attaches a
/// detached mount.
fn move_mount_to(fd: &std::os::fd::OwnedFd, to: &Path) -> io::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    let to = c_path(to)?;
    // SAFETY: move_mount with a valid fd, an empty C string and a C path.
    errno_result(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
}

fn mount_api(to: &Path) -> io::Result<()> {
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    // SAFETY: fsopen with a C string and flags.
    let fs = fd_result(unsafe { libc::syscall(libc::SYS_fsopen, c"tmpfs".as_ptr(), FSOPEN_CLOEXEC) })?;
    // SAFETY: fsconfig(fd, FSCONFIG_CMD_CREATE, NULL, NULL, 0).
    errno_result(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })?;
    // SAFETY: fsmount(fd, flags, attr flags).
    let mnt = fd_result(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0) })?;
    move_mount_to(&mnt, to)
}

fn bind_api(from: &Path, to: &Path) -> io::Result<()> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    let from = c_path(from)?;
    // SAFETY: open_tree with a C path and flags.
    let tree = fd_result(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            from.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    })?;
    move_mount_to(&tree, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_round_trip_through_text() {
        for s in [
            "connect 127.0.0.1:9",
            "bind [::1]:8080",
            "sendto 10.0.0.1:53",
            "syscall unshare",
            "raw-socket 4",
            "raw-socket packet",
            "listen-unbound 6",
            "kexec-file /tmp/blob",
            "syscall32 unshare user",
            "exec /bin/true",
            "open-read /etc/shadow",
            "open-write /tmp/x",
            "bpf",
            "kill 1 15",
            "ptrace 42",
            "connect-denied-loop 127.0.0.1:80 100",
            "connect-storm 127.0.0.1:80 200000",
            "connect-storm [::1]:443 5",
            "move-self /sys/fs/cgroup/a/b connect 127.0.0.1:9",
            "clone3-into /sys/fs/cgroup syscall getppid",
            "move-child /sys/fs/cgroup move-self /x exec /bin/true",
            "thread-in /sys/fs/cgroup/t sendto 10.0.0.1:53",
            "tgkill 1 23",
            "pidfd-kill 1 23",
            "sigio 1 23",
            "unlink /sys/fs/bpf/forge/links/x",
            "umount /sys/fs/bpf",
        ] {
            let a: Action = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
        assert!("connect nowhere".parse::<Action>().is_err());
        assert!("fly".parse::<Action>().is_err());
        assert!("exec".parse::<Action>().is_err());
        assert!("move-self".parse::<Action>().is_err());
        assert!("move-self /x".parse::<Action>().is_err());
        assert!("clone3-into /x fly".parse::<Action>().is_err());
    }
}
