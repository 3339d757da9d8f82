//! Enforcement is pinned: it outlives a SIGKILLed agent, and the next agent
//! adopts the pinned state instead of loading a second copy.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use forge_agent::{
    agent::{Agent, AgentOptions},
    cgroup::Cgroup,
    ebpf::{Pins, Want},
    policy::{Policy, compile},
    workload::{Action, Outcome, run_action_in},
};
use forge_tests::{EPERM, check, expect, fail};
use libtest_mimic::Failed;

use crate::listener;

const PIN_ENV: &str = "FORGE_TEST_AGENT_PIN";
const CGROUP_ENV: &str = "FORGE_TEST_AGENT_CGROUP";
const POLICY_ENV: &str = "FORGE_TEST_AGENT_POLICY";

fn policy(port: u16, action: &str) -> String {
    format!(
        "apiVersion: forgeone.dev/v1alpha1
kind: Policy
metadata: {{name: restart-test}}
spec:
  defaults: {{exec: allow, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, net.unix: allow, syscall: allow}}
  rules:
    - {{name: the-port, op: net.connect, action: {action}, cidrs: [127.0.0.1/32], ports: {port}}}
"
    )
}

/// In a child started by the test: be an agent governing one cgroup, say
/// "ready", and wait to be killed.
pub(crate) fn maybe_run_agent_child() {
    let (Ok(pin), Ok(cg), Ok(yaml)) =
        (std::env::var(PIN_ENV), std::env::var(CGROUP_ENV), std::env::var(POLICY_ENV))
    else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let _guard = rt.enter();
    let mut agent = Agent::start(&AgentOptions {
        pin_root: pin.into(),
        want: Want { cgroup: Some(true), ..Want::default() },
        ring_bytes: None,
    })
    .expect("agent start");
    let cgroup = Cgroup::open(cg).expect("cgroup");
    let compiled =
        compile(&Policy::from_yaml(&yaml, "restart").expect("policy"), "restart", 1).expect("compile");
    agent.writer.govern(&cgroup, &compiled).expect("govern");
    #[allow(clippy::print_stdout, reason = "the parent reads this line from the child's stdout")]
    {
        println!("ready");
    }
    loop {
        std::thread::park();
    }
}

pub(crate) fn survives_sigkill() -> Result<(), Failed> {
    let target = listener("127.0.0.1:0")?;
    let pin_root = format!("/sys/fs/bpf/forge-test-{}-restart", std::process::id());
    let cgroup = Cgroup::create(&format!("forge-test/{}-restart", std::process::id())).map_err(fail)?;
    let result = run(&pin_root, &cgroup, target);
    let _ = Pins::new(&pin_root).remove_all();
    let _ = cgroup.destroy();
    result
}

fn run(pin_root: &str, cgroup: &Cgroup, target: std::net::SocketAddr) -> Result<(), Failed> {
    let exe = std::env::current_exe().map_err(fail)?;
    let mut child = Command::new(&exe)
        .env(PIN_ENV, pin_root)
        .env(CGROUP_ENV, &cgroup.path)
        .env(POLICY_ENV, policy(target.port(), "deny"))
        .stdout(Stdio::piped())
        .spawn()
        .map_err(fail)?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).map_err(fail)?;
    check!(line.trim() == "ready", "agent child said {line:?}");
    let connect = Action::Connect(target);
    expect("deny while the agent runs", run_action_in(cgroup, &exe, &connect).map_err(fail)?, EPERM)?;

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL)
        .map_err(fail)?;
    child.wait().map_err(fail)?;
    expect(
        "deny after the agent was SIGKILLed",
        run_action_in(cgroup, &exe, &connect).map_err(fail)?,
        EPERM,
    )?;

    // A new agent adopts the pins: same programs, the cgroup still governed.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(fail)?;
    let _guard = rt.enter();
    let mut agent =
        Agent::start(&AgentOptions { pin_root: pin_root.into(), want: Want::default(), ring_bytes: None })
            .map_err(fail)?;
    check!(agent.writer.handles().adopted, "the new agent loaded afresh instead of adopting");
    let governed = agent.writer.governed();
    check!(governed.iter().any(|(id, _)| *id == cgroup.id), "adopted state lost the cgroup: {governed:?}");
    let progs = std::fs::read_dir(format!("{pin_root}/progs")).map_err(fail)?.count();
    let before = loaded_forge_programs();
    // Swapping the policy through the adopted state takes effect at once.
    let allow =
        compile(&Policy::from_yaml(&policy(target.port(), "allow"), "restart").map_err(fail)?, "restart", 1)
            .map_err(fail)?;
    let generation = agent.writer.govern(cgroup, &allow).map_err(fail)?;
    check!(generation >= 2, "generation after adoption {generation}");
    expect(
        "allow after the adopted swap",
        run_action_in(cgroup, &exe, &connect).map_err(fail)?,
        Outcome::Ok,
    )?;
    check!(loaded_forge_programs() == before, "programs were loaded again on adoption ({progs} pinned)");
    agent.writer.ungovern(cgroup.id).map_err(fail)?;
    agent.remove_pins().map_err(fail)?;
    Ok(())
}

/// Number of loaded BPF programs named like ours (a second load would add more).
fn loaded_forge_programs() -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("connect4")))
        .count()
}
