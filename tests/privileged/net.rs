//! cgroup sock_addr hooks: connect, bind, sendmsg, IPv4 and IPv6.

use forge_agent::{
    ebpf::Want,
    events::{Hook, Mode, Op, Target, Verdict},
    workload::Outcome,
};
use forge_common::rule_id;
use forge_tests::{EPERM, Fixture, check, expect};
use libtest_mimic::Failed;

use crate::{find, free_port, listener};

fn policy(rules: &str) -> String {
    format!(
        "apiVersion: forgeone.dev/v1alpha1
kind: Policy
metadata: {{name: net-test}}
spec:
  defaults: {{exec: allow, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, syscall: allow}}
  rules:
{rules}"
    )
}

pub(crate) fn connect4() -> Result<(), Failed> {
    let denied = listener("127.0.0.1:0")?;
    let allowed = listener("127.0.0.1:0")?;
    let yaml = policy(&format!(
        "    - {{name: deny-one-port, op: net.connect, action: deny, cidrs: [127.0.0.1/32], ports: {}}}\n",
        denied.port()
    ));
    let mut f = Fixture::new("connect4", &yaml, Want { cgroup: Some(true), ..Want::default() })?;
    let (pid, got) = f.inside_pid(&format!("connect {denied}"))?;
    expect("denied connect inside", got, EPERM)?;
    expect("allowed connect inside", f.inside(&format!("connect {allowed}"))?, Outcome::Ok)?;
    expect("same connect outside", f.outside(&format!("connect {denied}"))?, Outcome::Ok)?;

    let events = f.decisions(1);
    let ev = find(&events, "the denied connect", |e| e.op == Op::NetConnect)?;
    check!(ev.hook == Hook::CgroupConnect4, "hook {}", ev.hook);
    check!(ev.cgroup_id == f.cgroup.id, "cgroup id {} != {}", ev.cgroup_id, f.cgroup.id);
    check!(ev.tgid == pid, "tgid {} != child pid {pid}", ev.tgid);
    check!(
        ev.verdict == Verdict::Deny && ev.mode == Mode::Enforce,
        "verdict {} mode {}",
        ev.verdict,
        ev.mode
    );
    check!(ev.target == Target::Addr { addr: denied.ip(), port: denied.port() }, "target {}", ev.target);
    check!(ev.rule_id == rule_id::FIRST, "rule id {}", ev.rule_id);
    check!(ev.generation >= 1, "generation {}", ev.generation);

    // The same address written IPv4-mapped, from a dual-stack socket.
    let mapped = format!("[::ffff:127.0.0.1]:{}", denied.port());
    expect("IPv4-mapped connect inside", f.inside(&format!("connect {mapped}"))?, EPERM)?;
    let events = f.decisions(1);
    let ev = find(&events, "the mapped connect", |e| e.op == Op::NetConnect)?;
    check!(
        ev.hook == Hook::CgroupConnect6 && ev.rule_id == rule_id::FIRST,
        "mapped connect decided at {} by rule {}",
        ev.hook,
        ev.rule_id
    );
    Ok(())
}

pub(crate) fn bind_and_ipv6() -> Result<(), Failed> {
    let p4 = free_port("127.0.0.1:0")?;
    let p6 = free_port("[::1]:0")?;
    let v6_denied = listener("[::1]:0")?;
    let v6_allowed = listener("[::1]:0")?;
    let yaml = policy(&format!(
        "    - {{name: no-bind4, op: net.bind, action: deny, cidrs: [127.0.0.0/8], ports: {p4}}}
    - {{name: no-bind6, op: net.bind, action: deny, cidrs: [\"::1/128\"], ports: {p6}}}
    - {{name: no-connect6, op: net.connect, action: deny, cidrs: [\"::1/128\"], ports: {}}}\n",
        v6_denied.port()
    ));
    let mut f = Fixture::new("bind6", &yaml, Want { cgroup: Some(true), ..Want::default() })?;
    expect("denied bind4 inside", f.inside(&format!("bind 127.0.0.1:{p4}"))?, EPERM)?;
    expect("other bind4 port inside", f.inside("bind 127.0.0.1:0")?, Outcome::Ok)?;
    expect("denied bind4 outside", f.outside(&format!("bind 127.0.0.1:{p4}"))?, Outcome::Ok)?;
    expect("denied bind6 inside", f.inside(&format!("bind [::1]:{p6}"))?, EPERM)?;
    expect("denied bind6 outside", f.outside(&format!("bind [::1]:{p6}"))?, Outcome::Ok)?;
    expect("denied connect6 inside", f.inside(&format!("connect {v6_denied}"))?, EPERM)?;
    expect("allowed connect6 inside", f.inside(&format!("connect {v6_allowed}"))?, Outcome::Ok)?;
    expect("denied connect6 outside", f.outside(&format!("connect {v6_denied}"))?, Outcome::Ok)?;

    let events = f.decisions(3);
    let b4 = find(&events, "bind4", |e| e.hook == Hook::CgroupBind4)?;
    check!(
        b4.target == Target::Addr { addr: "127.0.0.1".parse().unwrap(), port: p4 },
        "bind4 target {}",
        b4.target
    );
    let b6 = find(&events, "bind6", |e| e.hook == Hook::CgroupBind6)?;
    check!(
        b6.target == Target::Addr { addr: "::1".parse().unwrap(), port: p6 },
        "bind6 target {}",
        b6.target
    );
    check!(b6.rule_id == rule_id::FIRST + 1, "bind6 rule id {}", b6.rule_id);
    let c6 = find(&events, "connect6", |e| e.hook == Hook::CgroupConnect6)?;
    check!(
        c6.target == Target::Addr { addr: "::1".parse().unwrap(), port: v6_denied.port() },
        "connect6 target {}",
        c6.target
    );
    check!(events.iter().all(|e| e.cgroup_id == f.cgroup.id), "an event from another cgroup");
    Ok(())
}

pub(crate) fn sendmsg_udp() -> Result<(), Failed> {
    let yaml = policy(
        "    - {name: no-dns-here, op: net.sendto, action: deny, cidrs: [127.0.0.53/32], ports: 53}\n",
    );
    let mut f = Fixture::new("sendmsg", &yaml, Want { cgroup: Some(true), ..Want::default() })?;
    expect("denied UDP send inside", f.inside("sendto 127.0.0.53:53")?, EPERM)?;
    expect("other UDP port inside", f.inside("sendto 127.0.0.53:54")?, Outcome::Ok)?;
    expect("denied UDP send outside", f.outside("sendto 127.0.0.53:53")?, Outcome::Ok)?;
    let events = f.decisions(1);
    let ev = find(&events, "the denied sendto", |e| e.op == Op::NetSendto)?;
    check!(ev.hook == Hook::CgroupSendmsg4, "hook {}", ev.hook);
    check!(
        ev.target == Target::Addr { addr: "127.0.0.53".parse().unwrap(), port: 53 },
        "target {}",
        ev.target
    );
    Ok(())
}
