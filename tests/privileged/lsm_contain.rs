//! Containment and self-protection under BPF LSM: the way out is refused
//! with an errno before anything happens. These run inside QEMU guests
//! booted with `lsm=...,bpf` (`cargo xtask vm-test`); the host refuses
//! BPF-LSM loads.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use forge_agent::{
    cgroup::{Cgroup, cgroup2_mount},
    ebpf::Want,
    events::{Hook, Op, Target, Verdict},
    workload::Outcome,
};
use forge_common::rule_id;
use forge_tests::{EPERM, Fixture, check, counting_listener, expect, fail};
use libtest_mimic::Failed;

use crate::find;

fn policy(denied: std::net::SocketAddr) -> String {
    format!(
        "apiVersion: forgeone.dev/v1alpha1
kind: Policy
metadata: {{name: lsm-contain}}
spec:
  selfProtect: true
  defaults: {{exec: allow, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, net.unix: allow, syscall: allow}}
  rules:
    - {{name: no-denied-port, op: net.connect, action: deny, cidrs: [127.0.0.1/32], ports: {}}}
",
        denied.port()
    )
}

const LSM: Want = Want { lsm: Some(true), cgroup: Some(true), tracepoint: Some(true) };

fn never_connected(hits: &AtomicUsize, what: &str) -> Result<(), Failed> {
    std::thread::sleep(Duration::from_millis(50));
    let n = hits.load(Ordering::SeqCst);
    check!(n == 0, "{what}: {n} connection(s) reached the denied listener");
    Ok(())
}

/// Every way out of the subtree is refused with EPERM before it happens:
/// moving a child to the root cgroup (the child is still governed and its
/// connect is denied), moving itself, `clone3(CLONE_INTO_CGROUP)` (no child
/// is made), making a cgroup outside the subtree (it does not exist
/// afterwards). Moving within the subtree keeps working.
pub(crate) fn ways_out_refused() -> Result<(), Failed> {
    let (denied, hits) = counting_listener("127.0.0.1:0")?;
    let mut f = Fixture::new("lsmcontain", &policy(denied), LSM)?;
    let root = cgroup2_mount().map_err(fail)?;
    let root_id = Cgroup::open(&root).map_err(fail)?.id;

    let (got, out) = f.inside_output(&format!("move-child {} connect {denied}", root.display()))?;
    expect("moving a child to the root cgroup", got, EPERM)?;
    check!(
        out.trim() == "child failed: Operation not permitted (os error 1)",
        "the child was not kept governed: {out:?}"
    );
    expect(
        "moving itself to the root cgroup",
        f.inside(&format!("move-self {} connect {denied}", root.display()))?,
        EPERM,
    )?;
    let (got, out) = f.inside_output(&format!("clone3-into {} connect {denied}", root.display()))?;
    expect("clone3 into the root cgroup", got, EPERM)?;
    check!(out.is_empty(), "a child was made: {out:?}");
    let outside = root.join(format!("forge-escape-{}", std::process::id()));
    expect(
        "making a cgroup outside the subtree",
        f.inside(&format!("move-self {} connect {denied}", outside.display()))?,
        EPERM,
    )?;
    check!(!outside.exists(), "{} was made", outside.display());
    never_connected(&hits, "every way out")?;

    let events = f.decisions(4);
    let denials: Vec<_> = events.iter().filter(|e| e.hook == Hook::LsmInodePermission).collect();
    check!(denials.len() >= 4, "expected 4 containment denials, got:\n{events:#?}");
    for ev in &denials {
        check!(
            ev.op == Op::Protect && ev.verdict == Verdict::Deny && ev.rule_id == rule_id::CONTAINMENT,
            "containment event {ev}"
        );
    }
    check!(
        denials.iter().any(|e| matches!(e.target, Target::Write { cgroup, .. } if cgroup == root_id)),
        "no denial names the root cgroup ({root_id}): {denials:#?}"
    );

    // Inside the subtree, moves and forks into child cgroups are allowed.
    let mine = f.cgroup.path.join("mine");
    expect(
        "moving itself into a child cgroup",
        f.inside(&format!("move-self {} syscall getppid", mine.display()))?,
        Outcome::Ok,
    )?;
    let (got, out) = f.inside_output(&format!("clone3-into {} syscall getppid", mine.display()))?;
    expect("clone3 into its own child cgroup", got, Outcome::Ok)?;
    check!(out.trim() == "child succeeded", "clone3 child: {out:?}");
    let (got, out) = f.inside_output(&format!("move-child {} syscall getppid", mine.display()))?;
    expect("moving a child into its own child cgroup", got, Outcome::Ok)?;
    check!(out.trim() == "child succeeded", "moved child: {out:?}");
    Ok(())
}

/// cgroup files outside the subtree, and the governed cgroup's own
/// controls, cannot be written: another cgroup's `cgroup.freeze` (it stays
/// thawed), the governed cgroup's own `cgroup.freeze` and `cgroup.kill`.
pub(crate) fn cgroup_files_outside_refused() -> Result<(), Failed> {
    let (denied, _hits) = counting_listener("127.0.0.1:0")?;
    let f = Fixture::new("lsmcgfiles", &policy(denied), LSM)?;
    let other = Cgroup::create(&format!("forge-test/{}-lsm-other", std::process::id())).map_err(fail)?;
    let r = (|| {
        let freeze = other.path.join("cgroup.freeze");
        expect(
            "writing another cgroup's cgroup.freeze",
            f.inside(&format!("open-write {}", freeze.display()))?,
            EPERM,
        )?;
        let frozen = std::fs::read_to_string(other.path.join("cgroup.events")).map_err(fail)?;
        check!(frozen.contains("frozen 0"), "the other cgroup: {frozen}");
        for own in ["cgroup.freeze", "cgroup.kill"] {
            let p = f.cgroup.path.join(own);
            if !p.exists() {
                // cgroup.kill arrived in 5.14.
                eprintln!("{own}: this kernel has no such file");
                continue;
            }
            expect(
                &format!("writing its own {own}"),
                f.inside(&format!("open-write {}", p.display()))?,
                EPERM,
            )?;
        }
        Ok(())
    })();
    let _ = other.destroy();
    r
}

/// Signals delivered to this process (the agent of the fixtures).
static SIGURGS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_sigurg(_: libc::c_int) {
    SIGURGS.fetch_add(1, Ordering::SeqCst);
}

/// Counts SIGURG deliveries to this process from now on.
fn count_sigurgs() -> Result<(), Failed> {
    // SAFETY: installs an async-signal-safe handler (one atomic add).
    let old = unsafe { libc::signal(libc::SIGURG, count_sigurg as *const () as libc::sighandler_t) };
    check!(old != libc::SIG_ERR, "installing a SIGURG handler");
    Ok(())
}

/// No route signals the agent: `tgkill`, `pidfd_send_signal` (EPERM) and a
/// file owner's SIGIO (`F_SETOWN` + `F_SETSIG`; the write succeeds, the
/// signal is not delivered). The pins cannot be unlinked and bpffs cannot
/// be unmounted.
pub(crate) fn agent_out_of_reach() -> Result<(), Failed> {
    let (denied, _hits) = counting_listener("127.0.0.1:0")?;
    let mut f = Fixture::new("lsmreach", &policy(denied), LSM)?;
    count_sigurgs()?;
    let me = std::process::id();
    let urg = libc::SIGURG;
    let before = SIGURGS.load(Ordering::SeqCst);
    expect("tgkill of the agent", f.inside(&format!("tgkill {me} {urg}"))?, EPERM)?;
    expect("pidfd_send_signal to the agent", f.inside(&format!("pidfd-kill {me} {urg}"))?, EPERM)?;
    expect("a file owner's signal aimed at the agent", f.inside(&format!("sigio {me} {urg}"))?, Outcome::Ok)?;
    std::thread::sleep(Duration::from_millis(100));
    let delivered = SIGURGS.load(Ordering::SeqCst) - before;
    check!(delivered == 0, "{delivered} SIGURG reached the agent");
    // The same from outside arrives: the handler counts.
    expect("tgkill from outside", f.outside(&format!("tgkill {me} {urg}"))?, Outcome::Ok)?;
    std::thread::sleep(Duration::from_millis(100));
    check!(SIGURGS.load(Ordering::SeqCst) > before, "the SIGURG counter did not count");

    let pin: PathBuf = f.pin_root.join("links").join("inode_permission");
    check!(pin.exists(), "{} is missing", pin.display());
    expect("unlinking a pin", f.inside(&format!("unlink {}", pin.display()))?, EPERM)?;
    check!(pin.exists(), "{} was removed", pin.display());
    expect("unmounting bpffs", f.inside("umount /sys/fs/bpf")?, EPERM)?;
    check!(pin.exists(), "bpffs was unmounted: {} is gone", pin.display());

    let events = f.decisions(5);
    find(&events, "the file owner's signal", |e| e.hook == Hook::LsmFileSigiotask)?;
    find(&events, "the umount", |e| e.hook == Hook::LsmSbUmount)?;
    check!(
        events.iter().filter(|e| e.hook == Hook::LsmTaskKill).count() >= 2,
        "tgkill and pidfd denials: {events:#?}"
    );
    Ok(())
}
