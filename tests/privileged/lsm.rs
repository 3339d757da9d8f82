//! BPF-LSM paths. This host refuses LSM loads; these run inside QEMU guests
//! booted with `lsm=...,bpf` by `cargo xtask vm-test`.

use std::{os::unix::fs::symlink, path::PathBuf};

use forge_agent::{
    ebpf::Want,
    events::{Hook, Op, Target, Verdict},
    workload::Outcome,
};
use forge_common::rule_id;
use forge_tests::{EPERM, Fixture, check, expect, fail};
use libtest_mimic::Failed;

use crate::{
    find, free_port, listener,
    process::{exe_copy, mounted},
};

const ALLOW_ALL: &str = "{exec: allow, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, net.unix: allow, syscall: allow}";

fn policy(self_protect: bool, rules: &str) -> String {
    format!(
        "apiVersion: forgeone.dev/v1alpha1
kind: Policy
metadata: {{name: lsm-test}}
spec:
  selfProtect: {self_protect}
  defaults: {ALLOW_ALL}
  rules:
{rules}"
    )
}

fn scratch(name: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/forge-lsm-{}-{name}", std::process::id()))
}

pub(crate) fn exec_deny() -> Result<(), Failed> {
    let dir = scratch("exec");
    let denied = exe_copy(&dir, "denied")?;
    let allowed = exe_copy(&dir, "allowed")?;
    let link = dir.join("innocent-name");
    symlink(&denied, &link).map_err(fail)?;
    let yaml =
        policy(false, &format!("    - {{name: no-denied-bin, op: exec, action: deny, paths: [{denied}]}}\n"));
    let r = (|| {
        let mut f = Fixture::new("lsmexec", &yaml, Want { lsm: Some(true), ..Want::default() })?;
        expect("denied exec inside", f.inside(&format!("exec {denied}"))?, EPERM)?;
        expect("denied exec through a symlink", f.inside(&format!("exec {}", link.display()))?, EPERM)?;
        expect("allowed exec inside", f.inside(&format!("exec {allowed}"))?, Outcome::Ok)?;
        expect("denied exec outside", f.outside(&format!("exec {denied}"))?, Outcome::Ok)?;
        // A hard link made after the policy was written is the same file:
        // denied under its own name, by the same rule.
        let hard = dir.join("hard-link");
        std::fs::hard_link(&denied, &hard).map_err(fail)?;
        expect("denied exec through a hard link", f.inside(&format!("exec {}", hard.display()))?, EPERM)?;
        let events = f.decisions(3);
        let by_link = find(&events, "the hard link's deny", |e| {
            e.op == Op::Exec && e.target == Target::Path { path: hard.display().to_string() }
        })?;
        check!(by_link.hook == Hook::LsmBprmCheck && by_link.rule_id == rule_id::FIRST, "{by_link}");
        let execs: Vec<_> = events.iter().filter(|e| e.op == Op::Exec && e.tgid != by_link.tgid).collect();
        check!(execs.len() == 2, "expected 2 exec denies by path, got {}", execs.len());
        for ev in execs {
            check!(
                ev.hook == Hook::LsmBprmCheck && ev.verdict == Verdict::Deny,
                "hook {} verdict {}",
                ev.hook,
                ev.verdict
            );
            // The symlink is resolved in the kernel: both events name the real file.
            check!(ev.target == Target::Path { path: denied.clone() }, "target {}", ev.target);
            check!(ev.rule_id == rule_id::FIRST, "rule id {}", ev.rule_id);
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// Anonymous executables (a memfd, a deleted file) have no path an exec
/// rule could name: where the policy denies some exec they are denied
/// (built-in rule `ANONYMOUS_EXEC`), so a copy of a denied program does not
/// run from memory; a rule naming `<anonymous>` allows them.
pub(crate) fn exec_anonymous() -> Result<(), Failed> {
    let dir = scratch("anon");
    let denied = exe_copy(&dir, "denied")?;
    let ok = std::fs::canonicalize("/bin/true").map_err(fail)?.display().to_string();
    let deny = format!("    - {{name: no-denied-bin, op: exec, action: deny, paths: [{denied}]}}\n");
    let want = Want { lsm: Some(true), ..Want::default() };
    let r = (|| {
        let mut f = Fixture::new("lsmanon", &policy(false, &deny), want)?;
        expect("a program by path", f.inside(&format!("exec {ok}"))?, Outcome::Ok)?;
        expect("the denied program by path", f.inside(&format!("exec {denied}"))?, EPERM)?;
        // The same bytes from a memfd and from a deleted copy: refused
        // before they run (the copy of this binary would exit 0).
        expect("a memfd copy", f.inside(&format!("exec-memfd {ok}"))?, EPERM)?;
        expect("a deleted copy", f.inside(&format!("exec-deleted {ok}"))?, EPERM)?;
        expect("a memfd copy outside", f.outside(&format!("exec-memfd {ok}"))?, Outcome::Ok)?;
        let events = f.decisions(3);
        let anon: Vec<_> = events.iter().filter(|e| e.rule_id == rule_id::ANONYMOUS_EXEC).collect();
        check!(anon.len() == 2, "expected 2 anonymous exec denies: {events:?}");
        for ev in &anon {
            check!(ev.hook == Hook::LsmBprmCheck && ev.op == Op::Exec && ev.verdict == Verdict::Deny, "{ev}");
        }
        check!(
            anon.iter()
                .any(|e| matches!(&e.target, Target::Path { path } if path.starts_with("/memfd:forge-anon"))),
            "the memfd event names no memfd: {anon:?}"
        );
        // A rule naming <anonymous> lets them run.
        f.swap(&policy(
            false,
            &format!("{deny}    - {{name: jit, op: exec, action: allow, paths: [\"<anonymous>\"]}}\n"),
        ))?;
        expect("a memfd copy, allowed", f.inside(&format!("exec-memfd {ok}"))?, Outcome::Ok)?;
        expect("a deleted copy, allowed", f.inside(&format!("exec-deleted {ok}"))?, Outcome::Ok)?;
        expect("the denied program by path, still", f.inside(&format!("exec {denied}"))?, EPERM)?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    r
}

pub(crate) fn file_open() -> Result<(), Failed> {
    let dir = scratch("files");
    let secret = dir.join("secret");
    let public = dir.join("public");
    let ro = dir.join("ro");
    std::fs::create_dir_all(dir.join("sub")).map_err(fail)?;
    std::fs::create_dir_all(&ro).map_err(fail)?;
    std::fs::write(&secret, "s").map_err(fail)?;
    std::fs::write(&public, "p").map_err(fail)?;
    let link = dir.join("link-to-secret");
    symlink(&secret, &link).map_err(fail)?;
    let yaml = policy(
        false,
        &format!(
            "    - {{name: no-secret, op: file.read, action: deny, paths: [{}]}}
    - {{name: read-only-dir, op: file.write, action: deny, paths: [{}/]}}\n",
            secret.display(),
            ro.display()
        ),
    );
    let r = (|| {
        let mut f = Fixture::new("lsmfile", &yaml, Want { lsm: Some(true), ..Want::default() })?;
        let s = secret.display();
        expect("read of the secret", f.inside(&format!("open-read {s}"))?, EPERM)?;
        expect("read through a symlink", f.inside(&format!("open-read {}", link.display()))?, EPERM)?;
        expect("read through ..", f.inside(&format!("open-read {}/sub/../secret", dir.display()))?, EPERM)?;
        expect("read of another file", f.inside(&format!("open-read {}", public.display()))?, Outcome::Ok)?;
        expect(
            "write below the read-only dir",
            f.inside(&format!("open-write {}/new", ro.display()))?,
            EPERM,
        )?;
        expect("write elsewhere", f.inside(&format!("open-write {}/new", dir.display()))?, Outcome::Ok)?;
        // Paths longer than the kernel key (a deep build tree): decided on
        // their leading part, so the directory rule still holds below it,
        // and a deep path elsewhere still works.
        let deep = "node_modules/package-with-a-long-name/".repeat(8);
        let long_ro = ro.join(&deep);
        let long_ok = dir.join(&deep);
        std::fs::create_dir_all(&long_ro).map_err(fail)?;
        std::fs::create_dir_all(&long_ok).map_err(fail)?;
        check!(long_ro.as_os_str().len() > 300, "the deep path is only {} bytes", long_ro.as_os_str().len());
        expect(
            "write at a long path below the read-only dir",
            f.inside(&format!("open-write {}/new", long_ro.display()))?,
            EPERM,
        )?;
        // The open was refused, so nothing was written through it. (An
        // O_CREAT open makes the empty file before `file_open` runs: a known
        // gap of the file_open hook, see docs/policy.md.)
        let made = std::fs::metadata(long_ro.join("new")).map_or(0, |m| m.len());
        check!(made == 0, "{made} bytes reached the file at the denied long path");
        expect(
            "write at a long path elsewhere",
            f.inside(&format!("open-write {}/new", long_ok.display()))?,
            Outcome::Ok,
        )?;
        check!(long_ok.join("new").exists(), "the allowed write at a long path made no file");
        expect("read of the secret outside", f.outside(&format!("open-read {s}"))?, Outcome::Ok)?;
        // Other paths to the same file: a hard link made after the policy
        // was written, and a bind mount of it over another file. The
        // exact-file rule names the file itself (device and inode).
        let hard = dir.join("hard-link");
        std::fs::hard_link(&secret, &hard).map_err(fail)?;
        expect("read through a hard link", f.inside(&format!("open-read {}", hard.display()))?, EPERM)?;
        let decoy = dir.join("decoy");
        std::fs::write(&decoy, "d").map_err(fail)?;
        nix::mount::mount(Some(&secret), &decoy, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>)
            .map_err(fail)?;
        let bound = f.inside(&format!("open-read {}", decoy.display()));
        let _ = nix::mount::umount2(&decoy, nix::mount::MntFlags::MNT_DETACH);
        expect("read through a bind mount", bound?, EPERM)?;
        let events = f.decisions(7);
        let reads: Vec<_> = events.iter().filter(|e| e.op == Op::FileRead).collect();
        check!(reads.len() == 5, "expected 5 read denies, got {}", reads.len());
        let others = [hard.display().to_string(), decoy.display().to_string()];
        for ev in reads {
            check!(ev.hook == Hook::LsmFileOpen && ev.rule_id == rule_id::FIRST, "{ev}");
            let Target::Path { path } = &ev.target else {
                return Err(format!("target {}", ev.target).into());
            };
            check!(path == &s.to_string() || others.contains(path), "resolved path {path}");
        }
        for other in &others {
            find(&events, &format!("the deny at {other}"), |e| {
                e.target == Target::Path { path: other.clone() }
            })?;
        }
        let w = find(&events, "the write deny", |e| {
            e.op == Op::FileWrite && e.target == Target::Path { path: format!("{}/new", ro.display()) }
        })?;
        check!(
            w.target == Target::Path { path: format!("{}/new", ro.display()) },
            "write target {}",
            w.target
        );
        check!(w.rule_id == rule_id::FIRST + 1, "write rule id {}", w.rule_id);
        let long = find(&events, "the write deny at a long path", |e| {
            e.op == Op::FileWrite && e.target != Target::Path { path: format!("{}/new", ro.display()) }
        })?;
        check!(long.rule_id == rule_id::FIRST + 1, "long write decided by rule {}", long.rule_id);
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// `net.unix`: connects and datagrams to unix sockets bound to a path are
/// decided by that path, resolved in the kernel (a symlink to a denied
/// socket is the denied socket), before anything reaches the listener. A
/// record that does not mention the class denies it (zero trust).
pub(crate) fn unix_sockets() -> Result<(), Failed> {
    use std::os::unix::net::{UnixDatagram, UnixListener};
    let dir = scratch("unix");
    std::fs::create_dir_all(dir.join("private")).map_err(fail)?;
    let (denied, allowed, private) =
        (dir.join("denied.sock"), dir.join("allowed.sock"), dir.join("private/p.sock"));
    let (denied_d, allowed_d) = (dir.join("denied-d.sock"), dir.join("allowed-d.sock"));
    let link = dir.join("innocent.sock");
    let r = (|| {
        let listen = |p: &std::path::Path| -> Result<UnixListener, Failed> {
            let l = UnixListener::bind(p).map_err(fail)?;
            l.set_nonblocking(true).map_err(fail)?;
            Ok(l)
        };
        let receive = |p: &std::path::Path| -> Result<UnixDatagram, Failed> {
            let d = UnixDatagram::bind(p).map_err(fail)?;
            d.set_nonblocking(true).map_err(fail)?;
            Ok(d)
        };
        let (ld, la, lp) = (listen(&denied)?, listen(&allowed)?, listen(&private)?);
        let (dd, da) = (receive(&denied_d)?, receive(&allowed_d)?);
        symlink(&denied, &link).map_err(fail)?;
        let accepted = |l: &UnixListener| l.accept().is_ok();
        let received = |d: &UnixDatagram| d.recv(&mut [0u8; 8]).is_ok();
        let yaml = policy(
            false,
            &format!(
                "    - {{name: no-socket, op: net.unix, action: deny, paths: [{}, {}, {}/private/]}}\n",
                denied.display(),
                denied_d.display(),
                dir.display()
            ),
        );
        let mut f = Fixture::new("lsmunix", &yaml, Want { lsm: Some(true), ..Want::default() })?;
        for (what, p) in [
            ("denied socket", &denied),
            ("socket through a symlink", &link),
            ("socket below a denied dir", &private),
        ] {
            expect(
                &format!("connect to the {what}"),
                f.inside(&format!("unix-connect {}", p.display()))?,
                EPERM,
            )?;
        }
        check!(!accepted(&ld) && !accepted(&lp), "a refused connect reached its listener");
        expect(
            "connect to another socket",
            f.inside(&format!("unix-connect {}", allowed.display()))?,
            Outcome::Ok,
        )?;
        check!(accepted(&la), "the allowed connect did not arrive");
        expect(
            "datagram to the denied socket",
            f.inside(&format!("unix-send {}", denied_d.display()))?,
            EPERM,
        )?;
        check!(!received(&dd), "the refused datagram arrived");
        expect(
            "datagram to another socket",
            f.inside(&format!("unix-send {}", allowed_d.display()))?,
            Outcome::Ok,
        )?;
        check!(received(&da), "the allowed datagram did not arrive");
        expect("connect outside", f.outside(&format!("unix-connect {}", denied.display()))?, Outcome::Ok)?;
        check!(accepted(&ld), "the connect from outside did not arrive");
        let events = f.decisions(5);
        // The connect through the symlink is reported as the socket itself.
        let refused: Vec<_> = events
            .iter()
            .filter(|e| {
                e.hook == Hook::LsmUnixConnect
                    && e.target == Target::Path { path: denied.display().to_string() }
            })
            .collect();
        check!(refused.len() == 2, "expected 2 refused connects to {}: {events:?}", denied.display());
        for ev in refused {
            check!(
                ev.op == Op::NetUnix && ev.rule_id == rule_id::FIRST && ev.verdict == Verdict::Deny,
                "{ev}"
            );
        }
        let ev = find(&events, "the refused datagram", |e| e.hook == Hook::LsmUnixSend)?;
        check!(
            ev.target == Target::Path { path: denied_d.display().to_string() }
                && ev.rule_id == rule_id::FIRST,
            "{ev}"
        );
        // A policy that does not mention net.unix denies it (zero trust).
        let silent = policy(false, "    - {name: r, op: file.read, action: deny, paths: [/nonexistent]}\n")
            .replace(", net.unix: allow", "");
        f.swap(&silent)?;
        expect(
            "connect under a silent policy",
            f.inside(&format!("unix-connect {}", allowed.display()))?,
            EPERM,
        )?;
        check!(!accepted(&la), "the connect denied by default arrived");
        let events = f.decisions(1);
        let ev = find(&events, "the default deny", |e| {
            e.hook == Hook::LsmUnixConnect && e.rule_id == rule_id::DEFAULT
        })?;
        check!(ev.target == Target::Path { path: allowed.display().to_string() }, "{ev}");
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    r
}

pub(crate) fn socket() -> Result<(), Failed> {
    let (denied, connections) = crate::net::counting_listener("127.0.0.1:0")?;
    let allowed = listener("127.0.0.1:0")?;
    let bind_port = free_port("127.0.0.1:0")?;
    let udp_denied = std::net::UdpSocket::bind("127.0.0.1:0").map_err(fail)?;
    let udp_allowed = std::net::UdpSocket::bind("127.0.0.1:0").map_err(fail)?;
    for u in [&udp_denied, &udp_allowed] {
        u.set_read_timeout(Some(std::time::Duration::from_millis(300))).map_err(fail)?;
    }
    let udp_port = udp_denied.local_addr().map_err(fail)?.port();
    let yaml = policy(
        false,
        &format!(
            "    - {{name: no-port, op: net.connect, action: deny, cidrs: [127.0.0.1/32], ports: {}}}
    - {{name: no-bind, op: net.bind, action: deny, cidrs: [127.0.0.1/32], ports: {bind_port}}}
    - {{name: no-autobind, op: net.bind, action: deny, ports: 0}}
    - {{name: no-send, op: net.sendto, action: deny, cidrs: [127.0.0.1/32], ports: {udp_port}}}\n",
            denied.port()
        ),
    );
    let got = |u: &std::net::UdpSocket| u.recv(&mut [0u8; 16]).is_ok();
    // Without the cgroup backend, the LSM socket hooks decide network rules.
    let mut f =
        Fixture::new("lsmsock", &yaml, Want { lsm: Some(true), cgroup: Some(false), ..Want::default() })?;
    expect("denied connect inside", f.inside(&format!("connect {denied}"))?, EPERM)?;
    expect("allowed connect inside", f.inside(&format!("connect {allowed}"))?, Outcome::Ok)?;
    expect("denied bind inside", f.inside(&format!("bind 127.0.0.1:{bind_port}"))?, EPERM)?;
    expect("denied connect outside", f.outside(&format!("connect {denied}"))?, Outcome::Ok)?;
    // A listen that would take a port itself is a bind of port 0 (the
    // action also fails if the refused socket got a port anyway).
    expect("listen without bind inside", f.inside("listen-unbound 4")?, EPERM)?;
    expect("listen without bind inside, IPv6", f.inside("listen-unbound 6")?, EPERM)?;
    expect("listen without bind outside", f.outside("listen-unbound 4")?, Outcome::Ok)?;
    // net.raw (denied by default: the policy does not name it): without the
    // cgroup hooks the LSM socket hook decides raw inet sockets too, and
    // packet sockets always.
    expect("raw ICMP socket inside", f.inside("raw-socket 4")?, EPERM)?;
    expect("packet socket inside", f.inside("raw-socket packet")?, EPERM)?;
    expect("raw ICMP socket outside", f.outside("raw-socket 4")?, Outcome::Ok)?;
    expect("packet socket outside", f.outside("raw-socket packet")?, Outcome::Ok)?;
    let events = f.decisions(6);
    let listens: Vec<_> = events.iter().filter(|e| e.hook == Hook::LsmSocketListen).collect();
    check!(listens.len() == 2, "expected 2 listen denies, got:\n{events:?}");
    for l in listens {
        check!(l.op == Op::NetBind && l.verdict == Verdict::Deny && l.rule_id == rule_id::FIRST + 2, "{l}");
    }
    let raw = find(&events, "raw socket deny", |e| matches!(e.target, Target::Socket { .. }))?;
    check!(
        raw.hook == Hook::LsmSocketCreate
            && raw.target == Target::Socket { ipv6: false, sock_type: 3, protocol: 1 }
            && raw.verdict == Verdict::Deny,
        "{raw}"
    );
    let packet = find(&events, "packet socket deny", |e| matches!(e.target, Target::PacketSocket { .. }))?;
    check!(
        packet.hook == Hook::LsmSocketCreate
            && packet.target == Target::PacketSocket { sock_type: 3, protocol: 3 }
            && packet.op == Op::NetRaw,
        "{packet}"
    );
    let c = find(&events, "connect deny", |e| e.op == Op::NetConnect && e.hook != Hook::LsmSocketSendmsg)?;
    check!(c.hook == Hook::LsmSocketConnect, "connect hook {}", c.hook);
    check!(
        c.target == Target::Addr { addr: denied.ip(), port: denied.port() },
        "connect target {}",
        c.target
    );
    let b = find(&events, "bind deny", |e| e.op == Op::NetBind && e.hook != Hook::LsmSocketListen)?;
    check!(b.hook == Hook::LsmSocketBind, "bind hook {}", b.hook);
    // UDP and TCP Fast Open without the cgroup hooks: a datagram with a
    // destination at socket_sendmsg, a connected UDP socket at its connect
    // (as net.sendto), a Fast Open connect as a connect. Nothing arrives.
    // (The sends bind their socket to port 0 first, which `no-autobind`
    // denies: without it now.)
    let without_autobind =
        yaml.replace("    - {name: no-autobind, op: net.bind, action: deny, ports: 0}\n", "");
    check!(without_autobind != yaml, "the policy has no no-autobind rule to drop");
    f.swap(&without_autobind)?;
    let udp_to = |u: &std::net::UdpSocket| u.local_addr().map_err(fail);
    expect("denied UDP send inside", f.inside(&format!("sendto {}", udp_to(&udp_denied)?))?, EPERM)?;
    expect(
        "denied connected UDP send inside",
        f.inside(&format!("udp-connect-send {}", udp_to(&udp_denied)?))?,
        EPERM,
    )?;
    check!(!got(&udp_denied), "a refused datagram arrived");
    expect("allowed UDP send inside", f.inside(&format!("sendto {}", udp_to(&udp_allowed)?))?, Outcome::Ok)?;
    check!(got(&udp_allowed), "the allowed datagram did not arrive");
    expect("denied Fast Open connect inside", f.inside(&format!("tfo-connect {denied}"))?, EPERM)?;
    std::thread::sleep(std::time::Duration::from_millis(200));
    // The connect from outside above is the only one the listener may have.
    let arrived = connections.load(std::sync::atomic::Ordering::SeqCst);
    check!(
        arrived == 1,
        "{arrived} connections reached the denied port (only the one from outside expected)"
    );
    let events = f.decisions(3);
    let sends: Vec<_> = events.iter().filter(|e| e.op == Op::NetSendto).collect();
    check!(sends.len() == 2, "expected 2 send denies: {events:?}");
    check!(
        sends.iter().any(|e| e.hook == Hook::LsmSocketSendmsg)
            && sends.iter().any(|e| e.hook == Hook::LsmSocketConnect),
        "send hooks: {sends:?}"
    );
    let tfo =
        find(&events, "the Fast Open deny", |e| e.hook == Hook::LsmSocketSendmsg && e.op == Op::NetConnect)?;
    check!(
        tfo.target == Target::Addr { addr: denied.ip(), port: denied.port() }
            && tfo.rule_id == rule_id::FIRST,
        "{tfo}"
    );
    Ok(())
}

pub(crate) fn self_protection() -> Result<(), Failed> {
    let yaml =
        policy(true, "    - {name: nothing-else, op: syscall, action: deny, syscalls: [kexec_load]}\n");
    let mut f = Fixture::new("lsmself", &yaml, Want { lsm: Some(true), ..Want::default() })?;
    let me = std::process::id();
    expect("bpf() inside", f.inside("bpf")?, EPERM)?;
    expect("ptrace of the agent inside", f.inside(&format!("ptrace {me}"))?, EPERM)?;
    // SIGURG is ignored by default, so a failure here cannot kill the test.
    expect("signal to the agent inside", f.inside(&format!("kill {me} {}", libc::SIGURG))?, EPERM)?;
    expect("bpf() outside", f.outside("bpf")?, Outcome::Ok)?;
    // With the cgroup hooks in use too, packet sockets are still the LSM
    // hook's (cgroup/sock_create never sees them); net.raw is denied by
    // default here.
    expect("packet socket inside", f.inside("raw-socket packet")?, EPERM)?;
    expect("raw ICMP socket inside", f.inside("raw-socket 4")?, EPERM)?;
    let events = f.decisions(5);
    let packet = find(&events, "packet socket deny", |e| matches!(e.target, Target::PacketSocket { .. }))?;
    check!(packet.hook == Hook::LsmSocketCreate, "{packet}");
    let raw = find(&events, "raw socket deny", |e| matches!(e.target, Target::Socket { .. }))?;
    check!(raw.hook == Hook::CgroupSockCreate, "decided by the cgroup hook alone: {raw}");
    let b = find(&events, "bpf deny", |e| e.hook == Hook::LsmBpf)?;
    check!(b.target == Target::BpfCmd { cmd: 0 } && b.rule_id == rule_id::SELF_PROTECT, "bpf event {b}");
    let p = find(&events, "ptrace deny", |e| e.hook == Hook::LsmPtrace)?;
    check!(p.target == Target::Process { pid: me, signal: 0 }, "ptrace target {}", p.target);
    let k = find(&events, "kill deny", |e| e.hook == Hook::LsmTaskKill)?;
    check!(k.target == Target::Process { pid: me, signal: libc::SIGURG as u32 }, "kill target {}", k.target);
    Ok(())
}

/// Under BPF LSM a syscall rule is enforced where the call has its effect,
/// before it happens: with only the LSM backend (no kill at syscall entry)
/// the denied calls fail with EPERM and did nothing: nothing mounted, the
/// mount still there, no chroot, no module read.
pub(crate) fn syscall_denies_refused_before_the_effect() -> Result<(), Failed> {
    let dir = scratch("effects");
    let target = dir.join("mnt");
    let kept = dir.join("kept");
    std::fs::create_dir_all(&target).map_err(fail)?;
    std::fs::create_dir_all(&kept).map_err(fail)?;
    nix::mount::mount(Some("tmpfs"), &kept, Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(fail)?;
    let yaml = policy(
        false,
        "    - {name: no-host-calls, op: syscall, action: deny, syscalls: [mount, umount2, chroot, finit_module, kexec_file_load, pivot_root, ptrace, bpf, perf_event_open, unshare, clone]}\n",
    );
    // The kernel's module helper, replaced by a script that leaves a mark:
    // whether the kernel asked for a module is what a module request rule
    // is about.
    let modprobe = std::path::Path::new("/proc/sys/kernel/modprobe");
    let modprobe_was = std::fs::read_to_string(modprobe).map_err(fail)?;
    let mark = dir.join("modprobe-ran");
    let helper = dir.join("modprobe");
    std::fs::write(&helper, format!("#!/bin/sh\necho \"$@\" >> {}\n", mark.display())).map_err(fail)?;
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).map_err(fail)?;
    std::fs::write(modprobe, helper.display().to_string()).map_err(fail)?;
    let userns_hook = forge_agent::ebpf::loader::kernel_has_lsm_hook("userns_create");
    let r = (|| {
        let mut f = Fixture::new(
            "lsmeffect",
            &yaml,
            Want { lsm: Some(true), tracepoint: Some(false), ..Want::default() },
        )?;
        expect("mount inside", f.inside(&format!("mount-tmpfs {}", target.display()))?, EPERM)?;
        check!(!mounted(&target)?, "the denied mount is there");
        // The new mount API: a new tmpfs is refused when made (fsconfig, at
        // lsm/sb_kern_mount), a bind clone when attached (lsm/move_mount).
        expect("new mount API inside", f.inside(&format!("mount-api {}", target.display()))?, EPERM)?;
        check!(!mounted(&target)?, "a tmpfs was mounted through the new mount API");
        let bind = format!("bind-api {} {}", kept.display(), target.display());
        expect("new mount API bind inside", f.inside(&bind)?, EPERM)?;
        check!(!mounted(&target)?, "a bind mount was made through the new mount API");
        expect("umount inside", f.inside(&format!("umount {}", kept.display()))?, EPERM)?;
        check!(mounted(&kept)?, "the denied umount removed the mount");
        expect("chroot inside", f.inside(&format!("chroot {}", dir.display()))?, EPERM)?;
        // A process to attach to: the attach is refused, so it is not traced.
        let mut victim = std::process::Command::new("sleep").arg("30").spawn().map_err(fail)?;
        let attach = f.inside(&format!("ptrace {}", victim.id()));
        let status = std::fs::read_to_string(format!("/proc/{}/status", victim.id())).unwrap_or_default();
        let _ = victim.kill();
        let _ = victim.wait();
        expect("ptrace attach inside", attach?, EPERM)?;
        check!(status.contains("TracerPid:\t0"), "the victim is traced: {status}");
        expect("bpf inside", f.inside("bpf")?, EPERM)?;
        expect("PTRACE_TRACEME inside", f.inside("syscall ptrace")?, EPERM)?;
        expect("perf_event_open inside", f.inside("syscall perf_event_open")?, EPERM)?;
        expect("perf_event_open outside", f.outside("syscall perf_event_open")?, Outcome::Ok)?;
        // A user namespace, by each call that makes one, in both ABIs.
        let userns = ["syscall unshare-user", "syscall clone-user", "syscall32 unshare user"];
        for call in userns {
            let want = if userns_hook { EPERM } else { Outcome::Ok };
            expect(&format!("{call} inside"), f.inside(call)?, want)?;
            expect(&format!("{call} outside"), f.outside(call)?, Outcome::Ok)?;
        }
        if !userns_hook {
            eprintln!(
                "no userns_create hook on this kernel (before 6.1): user namespaces are not refused here"
            );
        }
        // A module request: outside, the kernel runs the helper ...
        expect("module request outside", f.outside("syscall request-module")?, Outcome::Ok)?;
        let asked = std::fs::read_to_string(&mark).unwrap_or_default();
        check!(
            asked.contains("net-pf-5"),
            "the kernel asked for no module outside ({asked:?}): the test cannot tell"
        );
        std::fs::remove_file(&mark).map_err(fail)?;
        // ... inside, where finit_module is denied, it never runs.
        expect("module request inside", f.inside("syscall request-module")?, Outcome::Ok)?;
        check!(
            !mark.exists(),
            "the kernel loaded a module for the workload: {:?}",
            std::fs::read_to_string(&mark)
        );
        // A regular file (the kernel reads only those), not a module.
        let blob = dir.join("not-a-module.ko");
        std::fs::write(&blob, [0u8; 64]).map_err(fail)?;
        expect("finit_module inside", f.inside(&format!("finit-module {}", blob.display()))?, EPERM)?;
        // Outside, the same calls run (the kernel reads the file and refuses
        // it as a module itself, not with EPERM).
        expect("mount outside", f.outside(&format!("mount-tmpfs {}", target.display()))?, Outcome::Ok)?;
        check!(mounted(&target)?, "the mount from outside is not there");
        let outside = f.outside(&format!("finit-module {}", blob.display()))?;
        check!(outside != EPERM && outside != Outcome::Ok, "finit_module of the blob outside: {outside}");
        // The same for a kexec image: refused before the kernel reads it
        // inside; read (and refused as a format) outside.
        expect("kexec_file_load inside", f.inside(&format!("kexec-file {}", blob.display()))?, EPERM)?;
        let outside = f.outside(&format!("kexec-file {}", blob.display()))?;
        check!(outside != EPERM && outside != Outcome::Ok, "kexec_file_load of the blob outside: {outside}");
        // One deny each: mount (three ways), umount, chroot, ptrace attach,
        // bpf, finit_module, kexec_file_load, TRACEME, perf_event_open, the
        // module request, and the user namespaces.
        let events = f.decisions(if userns_hook { 15 } else { 12 });
        let ev = find(&events, "the refused fsconfig", |e| e.hook == Hook::LsmSbKernMount)?;
        check!(ev.target == Target::Syscall { nr: 165 } && ev.rule_id == rule_id::FIRST, "{ev}");
        let ev = find(&events, "the refused move_mount", |e| e.target == Target::Syscall { nr: 429 })?;
        check!(ev.hook == Hook::LsmMount && ev.rule_id == rule_id::FIRST, "{ev}");
        let ev = find(&events, "the refused kexec image", |e| {
            e.hook == Hook::LsmKernelLoad && e.target == Target::Syscall { nr: 320 }
        })?;
        check!(ev.verdict == Verdict::Deny, "{ev}");
        let ev = find(&events, "the refused mount", |e| {
            e.hook == Hook::LsmMount && e.op == Op::Syscall && e.target == Target::Syscall { nr: 165 }
        })?;
        check!(ev.target == Target::Syscall { nr: 165 } && ev.verdict == Verdict::Deny, "{ev}");
        check!(ev.rule_id == rule_id::FIRST, "rule {}", ev.rule_id);
        let ev = find(&events, "the refused PTRACE_TRACEME", |e| e.hook == Hook::LsmPtraceTraceme)?;
        check!(ev.target == Target::Syscall { nr: 101 } && ev.verdict == Verdict::Deny, "{ev}");
        let ev = find(&events, "the refused module request", |e| e.hook == Hook::LsmModuleRequest)?;
        check!(ev.target == Target::Syscall { nr: 313 } && ev.verdict == Verdict::Deny, "{ev}");
        if userns_hook {
            for (nr, what) in
                [(272, "unshare"), (56, "clone"), (310 | forge_common::COMPAT_SYSCALL_BIT, "i386 unshare")]
            {
                let ev = find(&events, &format!("the user namespace {what} would make"), |e| {
                    e.hook == Hook::LsmUserns && e.target == Target::Syscall { nr }
                })?;
                check!(ev.verdict == Verdict::Deny, "{ev}");
            }
        }
        Ok(())
    })();
    let _ = std::fs::write(modprobe, modprobe_was.trim());
    let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
    let _ = nix::mount::umount2(&kept, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// A workload with path rules may not change what its paths mean: no
/// mount (old or new API, tmpfs or bind), no chroot, no user namespace,
/// though no syscall rule names them (the built-in path guard, at the LSM
/// hooks only: no syscall tracepoint runs). A rule allowing `mount` by name
/// lifts the guard for mounts, and only for them.
pub(crate) fn path_rules_guard_what_paths_mean() -> Result<(), Failed> {
    let dir = scratch("guard");
    let target = dir.join("mnt");
    let secret = dir.join("secret");
    std::fs::create_dir_all(&target).map_err(fail)?;
    std::fs::write(&secret, "s3cret").map_err(fail)?;
    let read_rule =
        format!("    - {{name: no-secret, op: file.read, action: deny, paths: [{}]}}\n", secret.display());
    let userns_hook = forge_agent::ebpf::loader::kernel_has_lsm_hook("userns_create");
    let want = Want { lsm: Some(true), tracepoint: Some(false), ..Want::default() };
    let r = (|| {
        let mut f = Fixture::new("lsmguard", &policy(false, &read_rule), want)?;
        let mount = format!("mount-tmpfs {}", target.display());
        let mount_api = format!("mount-api {}", target.display());
        let bind = format!("bind-api {} {}", dir.display(), target.display());
        for op in [&mount, &mount_api, &bind] {
            expect(&format!("{op} inside"), f.inside(op)?, EPERM)?;
            check!(!mounted(&target)?, "{op} inside mounted something");
        }
        expect("chroot inside", f.inside(&format!("chroot {}", dir.display()))?, EPERM)?;
        let want_userns = if userns_hook { EPERM } else { Outcome::Ok };
        for call in ["syscall unshare-user", "syscall32 unshare user"] {
            expect(&format!("{call} inside"), f.inside(call)?, want_userns)?;
        }
        // Other namespaces are not about paths: a UTS namespace is made.
        expect("unshare UTS inside", f.inside("syscall unshare")?, Outcome::Ok)?;
        expect("chroot outside", f.outside(&format!("chroot {}", dir.display()))?, Outcome::Ok)?;
        expect("user namespace outside", f.outside("syscall unshare-user")?, Outcome::Ok)?;
        let events = f.decisions(if userns_hook { 6 } else { 4 });
        for (hook, nr) in [
            (Hook::LsmMount, 165),
            (Hook::LsmSbKernMount, 165),
            (Hook::LsmMount, 429),
            (Hook::LsmPathChroot, 161),
        ] {
            let ev = find(&events, &format!("the guard at {hook} for {nr}"), |e| {
                e.hook == hook && e.target == Target::Syscall { nr }
            })?;
            check!(ev.rule_id == rule_id::PATH_GUARD && ev.verdict == Verdict::Deny, "{ev}");
        }
        if userns_hook {
            for nr in [272, 310 | forge_common::COMPAT_SYSCALL_BIT] {
                let ev = find(&events, &format!("the guard at userns_create for {nr}"), |e| {
                    e.hook == Hook::LsmUserns && e.target == Target::Syscall { nr }
                })?;
                check!(ev.rule_id == rule_id::PATH_GUARD, "{ev}");
            }
        }
        // The file rule itself still holds (where BPF LSM resolves paths:
        // 5.11+; the guard needs no path).
        if matches!(forge_tests::gate(&["lsm-paths"]), Ok(None)) {
            expect("denied read inside", f.inside(&format!("open-read {}", secret.display()))?, EPERM)?;
        }
        drop(f);
        // Allowing `mount` by name lifts the guard for mounts only.
        let allow_mount =
            format!("{read_rule}    - {{name: may-mount, op: syscall, action: allow, syscalls: [mount]}}\n");
        let f = Fixture::new("lsmguardok", &policy(false, &allow_mount), want)?;
        expect("allowed mount inside", f.inside(&mount)?, Outcome::Ok)?;
        check!(mounted(&target)?, "the allowed mount is not there");
        nix::mount::umount2(&target, nix::mount::MntFlags::empty()).map_err(fail)?;
        expect("allowed new-API mount inside", f.inside(&mount_api)?, Outcome::Ok)?;
        check!(mounted(&target)?, "the allowed new-API mount is not there");
        expect("chroot still refused inside", f.inside(&format!("chroot {}", dir.display()))?, EPERM)?;
        Ok(())
    })();
    while nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
    let _ = std::fs::remove_dir_all(&dir);
    r
}
