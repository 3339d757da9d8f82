//! The shipped policies, as one set, governing real cgroups that their
//! selectors pick: each profile denies what it says and allows the rest.

use forge_agent::{
    agent::{Agent, AgentOptions},
    api::daemon::{Daemon, workload_of},
    api::protocol::Document,
    cgroup::Cgroup,
    ebpf::{Pins, Want},
    workload::{Action, Outcome, run_action_in, run_action_moved_in},
};
use forge_tests::{EPERM, SIGKILL, check, expect, fail};
use libtest_mimic::Failed;

use crate::listener;

const SHIPPED: [(&str, &str); 4] = [
    ("policies/default.yaml", include_str!("../../policies/default.yaml")),
    ("policies/web-server.yaml", include_str!("../../policies/web-server.yaml")),
    ("policies/build-job.yaml", include_str!("../../policies/build-job.yaml")),
    ("policies/strict-baseline.yaml", include_str!("../../policies/strict-baseline.yaml")),
];

pub(crate) fn shipped_profiles() -> Result<(), Failed> {
    let id = std::process::id();
    let pin_root = format!("/sys/fs/bpf/forge-test-{id}-shipped");
    let names =
        [format!("web/forge-test-{id}"), format!("ci/forge-test-{id}"), format!("strict/forge-test-{id}")];
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(fail)?;
    let _guard = rt.enter();
    let docs =
        SHIPPED.iter().map(|(n, t)| Document { name: (*n).to_string(), text: (*t).to_string() }).collect();
    let agent = Agent::start(&AgentOptions {
        pin_root: pin_root.clone().into(),
        want: Want::default(),
        ring_bytes: None,
    })
    .map_err(fail)?;
    let mut daemon = Daemon::new(agent, docs).map_err(|e| Failed::from(format!("{e:?}")))?;
    let result = (|| {
        let mut cgroups = Vec::new();
        for n in &names {
            let r = daemon.govern(n).map_err(|e| Failed::from(e.message))?;
            cgroups.push(Cgroup::open(r["cgroup"].as_str().ok_or("cgroup path")?).map_err(fail)?);
        }
        let [web, ci, strict] = [&cgroups[0], &cgroups[1], &cgroups[2]];
        let pols =
            |cg: &Cgroup| daemon.compiled_for(cg.id).map(|c| c.policy_name.clone()).unwrap_or_default();
        check!(pols(web) == "default+web-server", "web workload {:?} got {}", workload_of(web), pols(web));
        check!(pols(ci) == "default+build-job", "ci workload got {}", pols(ci));
        check!(pols(strict) == "default+strict-baseline", "strict workload got {}", pols(strict));

        let exe = std::env::current_exe().map_err(fail)?;
        // Workloads already running when governed (their exec came before);
        // the strict case below starts one inside instead.
        let run = |cg: &Cgroup, a: &str| {
            run_action_moved_in(cg, &exe, &a.parse::<Action>().map_err(Failed::from)?).map_err(fail)
        };
        let service = listener("127.0.0.1:0")?;

        // web-server: listens on 80 only, connects only to its database and DNS.
        expect("web: bind :80", run(web, "bind 127.0.0.1:80")?, Outcome::Ok)?;
        expect("web: bind :8080", run(web, "bind 127.0.0.1:8080")?, EPERM)?;
        expect(
            "web: connect to an arbitrary local service",
            run(web, &format!("connect {service}"))?,
            EPERM,
        )?;
        expect("web: unshare", run(web, "syscall unshare")?, SIGKILL)?;
        // build-job: loopback listeners only; no metadata endpoint; no ptrace.
        expect("ci: bind loopback", run(ci, "bind 127.0.0.1:0")?, Outcome::Ok)?;
        expect("ci: bind all interfaces", run(ci, "bind 0.0.0.0:0")?, EPERM)?;
        expect("ci: connect to a local service", run(ci, &format!("connect {service}"))?, Outcome::Ok)?;
        expect("ci: cloud metadata", run(ci, "connect 169.254.169.254:80")?, EPERM)?;
        expect("ci: ptrace", run(ci, "syscall ptrace")?, SIGKILL)?;
        // strict-baseline: the test binary lives outside the allowed exec
        // paths, so it does not even start (denied at exec).
        // With LSM the exec fails in the child (spawn reports EPERM); without,
        // the new image is killed at sched_process_exec.
        let strict_outcome =
            match run_action_in(strict, &exe, &"syscall getppid".parse::<Action>().map_err(Failed::from)?) {
                Ok(o) => o,
                Err(e) => Outcome::Errno(e.raw_os_error().ok_or_else(|| fail(&e))?),
            };
        let lsm = daemon.agent.writer.handles().active.lsm_paths;
        expect("strict: exec of an unlisted binary", strict_outcome, if lsm { EPERM } else { SIGKILL })?;
        Ok(())
    })();
    let _ = daemon.agent.remove_pins();
    let _ = Pins::new(&pin_root).remove_all();
    for n in &names {
        if let Ok(cg) = Cgroup::resolve(n) {
            let _ = cg.destroy();
        }
    }
    for parent in ["web", "ci", "strict"] {
        if let Ok(cg) = Cgroup::resolve(parent) {
            let _ = std::fs::remove_dir(cg.path);
        }
    }
    result
}
