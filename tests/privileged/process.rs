//! Syscall tracepoint (kill on deny), exec fallback, monitor mode, process events.

use forge_agent::{
    ebpf::Want,
    events::{Hook, Mode, Op, Target, Verdict},
    workload::Outcome,
};
use forge_common::{CounterKey, hook, mode, verdict};
use forge_tests::{Fixture, SIGKILL, check, expect};
use libtest_mimic::Failed;

use crate::{find, listener};

const ALLOW_ALL: &str = "{exec: allow, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, net.unix: allow, syscall: allow}";

fn policy(mode: &str, rules: &str) -> String {
    format!(
        "apiVersion: forgeone.dev/v1alpha1
kind: Policy
metadata: {{name: proc-test}}
spec:
  mode: {mode}
  defaults: {ALLOW_ALL}
  rules:
{rules}"
    )
}

pub(crate) fn syscall_kill() -> Result<(), Failed> {
    let yaml = policy(
        "enforce",
        "    - {name: no-unshare, op: syscall, action: deny, syscalls: [unshare, mount]}\n",
    );
    let dir = std::path::PathBuf::from(format!("/tmp/forge-proc-{}-mount", std::process::id()));
    let (from, to) = (dir.join("from"), dir.join("to"));
    std::fs::create_dir_all(&from).map_err(forge_tests::fail)?;
    std::fs::create_dir_all(&to).map_err(forge_tests::fail)?;
    let r = (|| {
        let mut f = Fixture::new("syscall", &yaml, Want { tracepoint: Some(true), ..Want::default() })?;
        let (pid, got) = f.inside_pid("syscall unshare")?;
        expect("denied syscall inside", got, SIGKILL)?;
        expect("other syscall inside", f.inside("syscall getppid")?, Outcome::Ok)?;
        expect("denied syscall outside", f.outside("syscall unshare")?, Outcome::Ok)?;
        // A `mount` deny covers the new mount API: the first call (fsopen,
        // open_tree) is killed, nothing is attached.
        expect("new mount API inside", f.inside(&format!("mount-api {}", to.display()))?, SIGKILL)?;
        check!(!mounted(&to)?, "a tmpfs was mounted through the new mount API");
        let bind = format!("bind-api {} {}", from.display(), to.display());
        expect("new mount API bind inside", f.inside(&bind)?, SIGKILL)?;
        check!(!mounted(&to)?, "a bind mount was made through the new mount API");
        let events = f.decisions(3);
        let ev = find(&events, "the killed unshare", |e| {
            e.op == Op::Syscall && e.target == Target::Syscall { nr: libc::SYS_unshare as u32 }
        })?;
        check!(ev.hook == Hook::SysEnter, "hook {}", ev.hook);
        check!(
            ev.verdict == Verdict::Kill && ev.mode == Mode::Enforce,
            "verdict {} mode {}",
            ev.verdict,
            ev.mode
        );
        check!(ev.tgid == pid && ev.cgroup_id == f.cgroup.id, "pid {} cgroup {}", ev.tgid, ev.cgroup_id);
        for (nr, call) in [(libc::SYS_fsopen, "fsopen"), (libc::SYS_open_tree, "open_tree")] {
            let ev = find(&events, &format!("the killed {call}"), |e| {
                e.target == Target::Syscall { nr: nr as u32 }
            })?;
            check!(ev.verdict == Verdict::Kill && ev.rule_id == forge_common::rule_id::FIRST, "{ev}");
        }
        // Outside, the same calls mount.
        expect("new mount API outside", f.outside(&format!("mount-api {}", to.display()))?, Outcome::Ok)?;
        check!(mounted(&to)?, "the tmpfs mounted from outside is not there: the test cannot tell");
        Ok(())
    })();
    let _ = nix::mount::umount2(&to, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// Whether `p` is a mount point in this mount namespace.
pub(crate) fn mounted(p: &std::path::Path) -> Result<bool, Failed> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(forge_tests::fail)?;
    let p = p.display().to_string();
    Ok(info.lines().any(|l| l.split(' ').nth(4) == Some(p.as_str())))
}

/// Copies the test binary to `dir/name` (an executable that exits 0 when
/// started by a workload's exec action).
pub(crate) fn exe_copy(dir: &std::path::Path, name: &str) -> Result<String, Failed> {
    std::fs::create_dir_all(dir).map_err(forge_tests::fail)?;
    let dst = dir.join(name);
    std::fs::copy(std::env::current_exe().map_err(forge_tests::fail)?, &dst).map_err(forge_tests::fail)?;
    Ok(dst.display().to_string())
}

pub(crate) fn exec_fallback() -> Result<(), Failed> {
    let dir = std::path::PathBuf::from(format!("/tmp/forge-exec-{}", std::process::id()));
    let denied = exe_copy(&dir, "denied")?;
    let allowed = exe_copy(&dir, "allowed")?;
    let yaml = policy(
        "enforce",
        &format!("    - {{name: no-denied-bin, op: exec, action: deny, paths: [{denied}]}}\n"),
    );
    // Without LSM, exec is decided at sched_process_exec: the new image is killed.
    let mut f =
        Fixture::new("execfb", &yaml, Want { lsm: Some(false), tracepoint: Some(true), ..Want::default() })?;
    let r = (|| {
        expect("denied exec inside", f.inside(&format!("exec {denied}"))?, SIGKILL)?;
        expect("allowed exec inside", f.inside(&format!("exec {allowed}"))?, Outcome::Ok)?;
        expect("denied exec outside", f.outside(&format!("exec {denied}"))?, Outcome::Ok)?;
        let events = f.decisions(1);
        let ev = find(&events, "the killed exec", |e| e.op == Op::Exec)?;
        check!(
            ev.hook == Hook::ExecTracepoint && ev.verdict == Verdict::Kill,
            "hook {} verdict {}",
            ev.hook,
            ev.verdict
        );
        check!(ev.target == Target::Path { path: denied.clone() }, "target {}", ev.target);
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    r
}

pub(crate) fn monitor_mode() -> Result<(), Failed> {
    let target = listener("127.0.0.1:0")?;
    let yaml = policy(
        "monitor",
        &format!(
            "    - {{name: watch-port, op: net.connect, action: deny, cidrs: [127.0.0.1/32], ports: {}}}
    - {{name: watch-unshare, op: syscall, action: deny, syscalls: [unshare]}}\n",
            target.port()
        ),
    );
    let mut f = Fixture::new(
        "monitor",
        &yaml,
        Want { cgroup: Some(true), tracepoint: Some(true), ..Want::default() },
    )?;
    expect("monitored connect inside", f.inside(&format!("connect {target}"))?, Outcome::Ok)?;
    expect("monitored syscall inside", f.inside("syscall unshare")?, Outcome::Ok)?;
    let events = f.decisions(2);
    let c = find(&events, "would-deny connect", |e| e.op == Op::NetConnect)?;
    check!(
        c.mode == Mode::Monitor && c.verdict == Verdict::Deny,
        "connect: verdict {} mode {}",
        c.verdict,
        c.mode
    );
    let s = find(&events, "would-kill unshare", |e| e.op == Op::Syscall)?;
    check!(
        s.mode == Mode::Monitor && s.verdict == Verdict::Kill,
        "syscall: verdict {} mode {}",
        s.verdict,
        s.mode
    );

    let counters = f.agent_mut().writer.counters().map_err(forge_tests::fail)?;
    let get = |h: u16, v: u8| {
        let key = CounterKey { cgroup_id: f.cgroup.id, hook: h, verdict: v, mode: mode::MONITOR, _pad: 0 };
        counters.iter().find(|(k, _)| *k == key).map_or(0, |(_, n)| *n)
    };
    check!(get(hook::CGROUP_CONNECT4, verdict::DENY) == 1, "would-deny connect4 counter: {counters:?}");
    check!(get(hook::SYS_ENTER, verdict::KILL) == 1, "would-kill sys_enter counter: {counters:?}");
    check!(
        counters.iter().all(|(k, _)| k.cgroup_id != f.cgroup.id || k.mode == mode::MONITOR),
        "an enforce-mode counter in a monitor-mode cgroup: {counters:?}"
    );
    Ok(())
}

pub(crate) fn process_events() -> Result<(), Failed> {
    let yaml = policy("enforce", "    - {name: none, op: syscall, action: deny, syscalls: [kexec_load]}\n");
    let mut f = Fixture::new("procev", &yaml, Want { tracepoint: Some(true), ..Want::default() })?;
    let (pid, got) = f.inside_pid("open-read /definitely/not/here")?;
    expect("failing open inside", got, Outcome::Errno(libc::ENOENT))?;
    let exe = f.exe.display().to_string();
    let me = std::process::id();
    let events = f.events_until(|evs| evs.iter().any(|e| e.hook == Hook::ProcExit && e.tgid == pid));
    let exec = find(&events, "exec of the workload", |e| e.hook == Hook::ProcExec && e.tgid == pid)?;
    check!(exec.target == Target::Path { path: exe.clone() }, "exec path {} != {exe}", exec.target);
    check!(exec.ppid == me, "exec ppid {} != test pid {me}", exec.ppid);
    check!(exec.cgroup_id == f.cgroup.id && exec.verdict == Verdict::Info, "exec event fields: {exec}");
    let exit = find(&events, "exit of the workload", |e| e.hook == Hook::ProcExit && e.tgid == pid)?;
    // exit_code holds the wait status: the code in bits 8-15.
    check!(exit.target == Target::Exit { code: (libc::ENOENT as u32) << 8 }, "exit target {}", exit.target);
    Ok(())
}

/// A syscall rule names what a call does, whatever the ABI: an i386 call
/// made with `int 0x80` from a 64-bit process is looked up in the i386
/// table. Before, i386 `mkdir` (39) was read as x86_64 `getpid` and i386
/// `unshare` (310) as `process_vm_readv`.
pub(crate) fn syscall_rules_cover_i386() -> Result<(), Failed> {
    let dir = std::path::PathBuf::from(format!("/tmp/forge-abi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(forge_tests::fail)?;
    let r = (|| {
        let yaml = policy(
            "enforce",
            "    - {name: no-mkdir, op: syscall, action: deny, syscalls: [mkdir, unshare]}\n    - {name: no-vm-read, op: syscall, action: deny, syscalls: [process_vm_readv]}\n",
        );
        let mut f = Fixture::new("abi32", &yaml, Want { tracepoint: Some(true), ..Want::default() })?;
        // The denied calls, made the 32-bit way: killed before the caller
        // goes on (it would print `returned`).
        let denied = dir.join("denied");
        let (got, out) = f.inside_output(&format!("syscall32 mkdir {}", denied.display()))?;
        expect("i386 mkdir inside", got, SIGKILL)?;
        check!(!out.contains("returned"), "the killed i386 mkdir went on: {out:?}");
        let (got, out) = f.inside_output("syscall32 unshare")?;
        expect("i386 unshare inside", got, SIGKILL)?;
        check!(!out.contains("returned"), "the killed i386 unshare went on: {out:?}");
        // x86_64 process_vm_readv (310) is denied; i386 310 is unshare, and
        // i386 39 is mkdir, not x86_64 getpid: allowed 32-bit calls work.
        expect("i386 getppid inside", f.inside_output("syscall32 getppid")?.0, Outcome::Ok)?;
        expect("i386 getpid inside", f.inside_output("syscall32 getpid")?.0, Outcome::Ok)?;
        let (got, _) = f.inside_output("syscall32 process_vm_readv")?;
        expect("i386 process_vm_readv inside", got, SIGKILL)?;
        // Outside the governed cgroup the same 32-bit call runs, and has its effect.
        let made = dir.join("outside");
        expect(
            "i386 mkdir outside",
            f.outside(&format!("syscall32 mkdir {}", made.display()))?,
            Outcome::Ok,
        )?;
        check!(made.is_dir(), "the i386 mkdir outside made no directory");
        let events = f.decisions(3);
        let ev = find(&events, "the killed i386 mkdir", |e| {
            e.op == Op::Syscall && e.target == Target::Syscall { nr: 39 | forge_common::COMPAT_SYSCALL_BIT }
        })?;
        check!(ev.hook == Hook::SysEnter && ev.verdict == Verdict::Kill, "{ev}");
        check!(ev.target.to_string() == "i386:mkdir(39)", "target shown as {}", ev.target);
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// The other way round: a policy that denies x86_64 `process_vm_readv`
/// (310) leaves i386 `unshare` (310) alone, and i386 calls it does not
/// deny have their effect (the directory is made).
pub(crate) fn i386_numbers_are_not_x86_64_numbers() -> Result<(), Failed> {
    let dir = std::path::PathBuf::from(format!("/tmp/forge-abi39-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(forge_tests::fail)?;
    let r = (|| {
        let yaml = policy(
            "enforce",
            "    - {name: no-vm-read, op: syscall, action: deny, syscalls: [process_vm_readv]}\n",
        );
        let f = Fixture::new("abi39", &yaml, Want { tracepoint: Some(true), ..Want::default() })?;
        // i386 unshare is 310, x86_64 process_vm_readv's number.
        expect("i386 unshare inside", f.inside_output("syscall32 unshare")?.0, Outcome::Ok)?;
        let made = dir.join("made");
        expect(
            "i386 mkdir inside",
            f.inside_output(&format!("syscall32 mkdir {}", made.display()))?.0,
            Outcome::Ok,
        )?;
        check!(made.is_dir(), "the allowed i386 mkdir made no directory");
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// x32 calls (numbers with `__X32_SYSCALL_BIT`) are decided like the
/// x86_64 calls they are. Ignored where the kernel takes no x32 calls.
pub(crate) fn syscall_rules_cover_x32() -> Result<libtest_mimic::Completion, Failed> {
    // SAFETY: x32 getpid has no arguments.
    let probe = unsafe { libc::syscall(0x4000_0000 | 39) };
    if probe < 0 {
        return Ok(libtest_mimic::Completion::ignored_with(format!(
            "this kernel takes no x32 syscalls ({}: CONFIG_X86_X32_ABI off, or booted without syscall.x32=y)",
            std::io::Error::last_os_error()
        )));
    }
    let dir = std::path::PathBuf::from(format!("/tmp/forge-abix32-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(forge_tests::fail)?;
    let r = (|| {
        let yaml =
            policy("enforce", "    - {name: no-mkdir, op: syscall, action: deny, syscalls: [mkdir]}\n");
        let f = Fixture::new("abix32", &yaml, Want { tracepoint: Some(true), ..Want::default() })?;
        let (got, out) = f.inside_output(&format!("syscall-x32 mkdir {}", dir.join("d").display()))?;
        expect("x32 mkdir inside", got, SIGKILL)?;
        check!(!out.contains("returned"), "the killed x32 mkdir went on: {out:?}");
        expect("x32 getppid inside", f.inside("syscall-x32 getppid")?, Outcome::Ok)?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    r.map(|()| libtest_mimic::Completion::Completed)
}

/// Without LSM, exec is decided on the file the kernel loaded, resolved to
/// an absolute path by walking its dentries and mounts, not on the string
/// given to execve: a relative path, `..`, a symlink, fexecve and a file on
/// another mount all decide like the path they reach.
pub(crate) fn exec_fallback_decides_the_loaded_file() -> Result<(), Failed> {
    let dir = std::path::PathBuf::from(format!("/tmp/forge-execpath-{}", std::process::id()));
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).map_err(forge_tests::fail)?;
    // A file system of its own below the directory: the walk crosses it.
    nix::mount::mount(Some("tmpfs"), &mnt, Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(forge_tests::fail)?;
    let r = (|| {
        let denied = exe_copy(&mnt.join("denied"), "bin")?;
        // Longer than the kernel key: decided on its leading part.
        let deep = mnt.join("denied").join("a-directory-with-a-long-name/".repeat(8));
        let denied_long = exe_copy(&deep, "bin")?;
        let allowed = exe_copy(&dir.join("allowed"), "h")?;
        std::os::unix::fs::symlink(&denied, dir.join("allowed/link")).map_err(forge_tests::fail)?;
        let me = std::env::current_exe().map_err(forge_tests::fail)?;
        let exe_dir = me.parent().expect("a directory").display().to_string();
        let yaml = format!(
            "apiVersion: forgeone.dev/v1alpha1
kind: Policy
metadata: {{name: exec-path}}
spec:
  defaults: {{exec: deny, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, net.unix: allow, syscall: allow}}
  rules:
    - {{name: runner, op: exec, action: allow, paths: [{exe_dir}/, {}/allowed/]}}
    - {{name: no-denied-dir, op: exec, action: deny, paths: [{}/denied/]}}
",
            dir.display(),
            mnt.display()
        );
        let mut f = Fixture::new(
            "execpath",
            &yaml,
            Want { lsm: Some(false), tracepoint: Some(true), ..Want::default() },
        )?;
        // Relative to the workload's working directory (the runner's).
        let cwd = std::env::current_dir().map_err(forge_tests::fail)?;
        let up = "../".repeat(cwd.components().count().saturating_sub(1));
        let rel = |p: &str| format!("{up}{}", p.trim_start_matches('/'));
        let dotdot = format!("{}/allowed/../mnt/denied/bin", dir.display());
        for (what, action) in [
            ("absolute", format!("exec {denied}")),
            ("relative", format!("exec {}", rel(&denied))),
            ("through ..", format!("exec {dotdot}")),
            ("through a symlink in an allowed directory", format!("exec {}/allowed/link", dir.display())),
            ("fexecve", format!("fd-exec {denied}")),
            ("at a path longer than the key", format!("exec {denied_long}")),
        ] {
            expect(&format!("denied exec {what}"), f.inside(&action)?, SIGKILL)?;
        }
        // The allowed program by a relative path: allowed (the string
        // `../…/h` matches no rule; the file it reaches does).
        expect("allowed exec, relative", f.inside(&format!("exec {}", rel(&allowed)))?, Outcome::Ok)?;
        expect("allowed exec, fexecve", f.inside(&format!("fd-exec {allowed}"))?, Outcome::Ok)?;
        // Outside, the denied program runs.
        expect("denied exec outside", f.outside(&format!("exec {}", rel(&denied)))?, Outcome::Ok)?;
        let events = f.decisions(6);
        let kills: Vec<_> =
            events.iter().filter(|e| e.op == Op::Exec && e.verdict == Verdict::Kill).collect();
        check!(kills.len() == 6, "{} exec kills, expected 6: {events:?}", kills.len());
        let head = &denied_long[..forge_common::PATH_KEY_PATH_LEN - 1];
        for ev in kills {
            let Target::Path { path } = &ev.target else {
                return Err(format!("a kill without a path: {ev}").into());
            };
            check!(
                path == &denied || path == head,
                "a kill names {path}, not {denied} or the head of {denied_long}"
            );
            check!(ev.rule_id == forge_common::rule_id::FIRST + 1, "decided by rule {}", ev.rule_id);
        }
        anonymous_and_same_file(&mut f, &dir)
    })();
    let _ = nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// The exec fallback decides a program by what it is, as BPF LSM does:
/// where exec is allowed by default and a rule denies one file, a hard link
/// made to that file elsewhere is the same file (killed by that rule), and
/// a memfd copy of an allowed program is `<anonymous>` (killed by the
/// built-in rule), before either runs.
fn anonymous_and_same_file(f: &mut Fixture, dir: &std::path::Path) -> Result<(), Failed> {
    // A copy of a small program (the guests keep /tmp in memory).
    let ok = std::fs::canonicalize("/bin/true").map_err(forge_tests::fail)?.display().to_string();
    std::fs::create_dir_all(dir.join("exact")).map_err(forge_tests::fail)?;
    let exact = dir.join("exact/bin").display().to_string();
    std::fs::copy(&ok, &exact).map_err(forge_tests::fail)?;
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).map_err(forge_tests::fail)?;
    let hard = elsewhere.join("hard-link");
    std::fs::hard_link(&exact, &hard).map_err(forge_tests::fail)?;
    f.swap(&policy(
        "enforce",
        &format!("    - {{name: no-exact, op: exec, action: deny, paths: [{exact}]}}\n"),
    ))?;
    expect("an allowed program", f.inside(&format!("exec {ok}"))?, Outcome::Ok)?;
    expect("the denied file", f.inside(&format!("exec {exact}"))?, SIGKILL)?;
    expect("a hard link to the denied file", f.inside(&format!("exec {}", hard.display()))?, SIGKILL)?;
    expect("a memfd copy of an allowed program", f.inside(&format!("exec-memfd {ok}"))?, SIGKILL)?;
    expect("a deleted copy of an allowed program", f.inside(&format!("exec-deleted {ok}"))?, SIGKILL)?;
    expect("a memfd copy outside", f.outside(&format!("exec-memfd {ok}"))?, Outcome::Ok)?;
    let events = f.decisions(4);
    let kills: Vec<_> = events.iter().filter(|e| e.op == Op::Exec && e.verdict == Verdict::Kill).collect();
    let by = |id| kills.iter().filter(|e| e.rule_id == id).count();
    check!(
        by(forge_common::rule_id::FIRST) == 2 && by(forge_common::rule_id::ANONYMOUS_EXEC) == 2,
        "expected 2 kills by the exact deny and 2 by ANONYMOUS_EXEC: {events:?}"
    );
    Ok(())
}
