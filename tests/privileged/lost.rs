//! Lost events through the daemon: a workload floods a tiny event ring with
//! denied connects while the agent runs. Every connect is still denied, the
//! loss shows in `forge status` (all and per workload) and as `lost` records
//! in the workload's trace, and the trace still verifies and replays.

use std::{net::SocketAddr, time::Duration};

use forge_agent::{
    api::{Request, client::call, protocol::Document},
    dna::{self, Record, Trace, VerifyOptions},
    ebpf::{Want, loader},
    workload::{Action, Outcome, run_action_in},
};
use forge_tests::{DaemonFixture, EPERM, check, expect, fail};
use libtest_mimic::Failed;

use crate::free_port;

const STORM: u32 = 20_000;

fn policy(port: u16) -> String {
    format!(
        "apiVersion: forgeone.dev/v1alpha1
kind: Policy
metadata: {{name: lost-test}}
spec:
  selector: {{cgroups: [forge-test/*]}}
  defaults: {{exec: allow, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, net.unix: allow, syscall: allow}}
  rules:
    - {{name: no-storm-port, op: net.connect, action: deny, cidrs: [127.0.0.1/32], ports: {port}}}\n"
    )
}

pub(crate) fn daemon_reports_lost_events() -> Result<(), Failed> {
    let port = free_port("127.0.0.1:0")?;
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().map_err(fail)?;
    let ring = u32::try_from(2 * loader::page_size()).map_err(fail)?;
    let mut d = DaemonFixture::start_with_ring(
        "lost",
        vec![Document { name: "lost.yaml".into(), text: policy(port) }],
        Want { cgroup: Some(true), tracepoint: Some(true), ..Want::default() },
        Some(ring),
        |_| {},
    )?;
    let exe = std::env::current_exe().map_err(fail)?;
    let storm = run_action_in(&d.cgroup, &exe, &Action::ConnectStorm(target, STORM)).map_err(fail)?;
    expect("every connect of the storm denied", storm, Outcome::Ok)?;

    // The agent notices on its next tick (once a second).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let status = loop {
        let s = call(&d.socket, &Request::Status).map_err(fail)?;
        if s["governed"][0]["lost_events"].as_u64().unwrap_or(0) > 0
            && s["governed"][0]["trace"]["lost_events"].as_u64().unwrap_or(0) > 0
        {
            break s;
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("no lost events in the status: {s}").into());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let lost = status["governed"][0]["lost_events"].as_u64().unwrap_or(0);
    let all = status["ring_drops"].as_u64().unwrap_or(0);
    check!(all >= lost, "ring_drops {all} < the workload's {lost}");
    expect(
        "connect after the storm",
        run_action_in(&d.cgroup, &exe, &Action::Connect(target)).map_err(fail)?,
        EPERM,
    )?;

    d.stop();
    let report =
        dna::verify_file(&d.trace_path(), &VerifyOptions { trusted_key: Some(d.agent_key) }).map_err(fail)?;
    check!(report.ok, "trace does not verify: {report:?}");
    let trace = Trace::open(d.trace_path()).map_err(fail)?;
    let mut recorded = 0;
    let mut last_total = 0;
    for e in trace.records().map_err(fail)? {
        if let Record::Lost(l) = e.map_err(fail)?.record {
            recorded += l.events;
            last_total = l.total;
        }
    }
    check!(
        recorded == last_total && last_total >= lost,
        "lost records sum {recorded}, total {last_total}, status {lost}"
    );
    let r = dna::replay(&trace).map_err(fail)?;
    check!(r.ok(), "replay diverges: {:?}", r.divergence);
    eprintln!(
        "lost: {STORM} connects denied; {lost} events lost for the workload ({all} in all); trace holds {} decisions",
        r.events
    );
    Ok(())
}
