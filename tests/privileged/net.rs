//! cgroup sock_addr hooks: connect, bind, sendmsg, IPv4 and IPv6.

use forge_agent::{
    ebpf::Want,
    events::{Hook, Mode, Op, Target, Verdict},
    workload::Outcome,
};
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
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
  defaults: {{exec: allow, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, net.unix: allow, syscall: allow}}
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

/// A TCP listener that counts the connections it accepted.
pub(crate) fn counting_listener(addr: &str) -> Result<(std::net::SocketAddr, Arc<AtomicUsize>), Failed> {
    let l = std::net::TcpListener::bind(addr).map_err(forge_tests::fail)?;
    let local = l.local_addr().map_err(forge_tests::fail)?;
    let n = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&n);
    std::thread::spawn(move || {
        for c in l.incoming() {
            if c.is_ok() {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    Ok((local, n))
}

/// `0.0.0.0` and `::` as a destination reach the loopback listener (Linux
/// routes them there), so a rule for loopback decides them: none of the
/// ways of writing "this host" gets a connection through.
pub(crate) fn unspecified_destination_is_loopback() -> Result<(), Failed> {
    let (v4, accepted4) = counting_listener("127.0.0.1:0")?;
    let (v6, accepted6) = counting_listener("[::1]:0")?;
    let yaml = policy(&format!(
        "    - {{name: no-local-port, op: net.connect, action: deny, cidrs: [127.0.0.0/8], ports: {}}}
    - {{name: no-local-port6, op: net.connect, action: deny, cidrs: [\"::1/128\"], ports: {}}}\n",
        v4.port(),
        v6.port()
    ));
    let mut f = Fixture::new("anyaddr", &yaml, Want { cgroup: Some(true), ..Want::default() })?;
    let p4 = v4.port();
    let p6 = v6.port();
    for target in [format!("0.0.0.0:{p4}"), format!("[::ffff:0.0.0.0]:{p4}"), format!("127.0.0.1:{p4}")] {
        expect(&format!("connect {target} inside"), f.inside(&format!("connect {target}"))?, EPERM)?;
    }
    expect("connect [::] inside", f.inside(&format!("connect [::]:{p6}"))?, EPERM)?;
    std::thread::sleep(std::time::Duration::from_millis(200));
    check!(accepted4.load(Ordering::SeqCst) == 0, "a denied connect reached the IPv4 listener");
    check!(accepted6.load(Ordering::SeqCst) == 0, "a denied connect reached the IPv6 listener");
    // Outside, the same unspecified destination does reach the listener.
    expect("connect 0.0.0.0 outside", f.outside(&format!("connect 0.0.0.0:{p4}"))?, Outcome::Ok)?;
    expect("connect [::] outside", f.outside(&format!("connect [::]:{p6}"))?, Outcome::Ok)?;
    let waited = std::time::Instant::now();
    while (accepted4.load(Ordering::SeqCst) < 1 || accepted6.load(Ordering::SeqCst) < 1)
        && waited.elapsed() < std::time::Duration::from_secs(2)
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    check!(
        accepted4.load(Ordering::SeqCst) == 1 && accepted6.load(Ordering::SeqCst) == 1,
        "the connects from outside did not arrive: {} {}",
        accepted4.load(Ordering::SeqCst),
        accepted6.load(Ordering::SeqCst)
    );
    let events = f.decisions(4);
    let ev = find(&events, "the 0.0.0.0 connect", |e| {
        e.target == Target::Addr { addr: "0.0.0.0".parse().unwrap(), port: p4 }
    })?;
    check!(ev.verdict == Verdict::Deny && ev.rule_id == rule_id::FIRST, "{ev}");
    Ok(())
}

/// A connected UDP socket sends without naming the destination, so no
/// sendmsg hook sees those sends: the connect decides them as `net.sendto`.
/// The datagram must not arrive.
pub(crate) fn connected_udp_is_decided_as_sendto() -> Result<(), Failed> {
    let rx = std::net::UdpSocket::bind("127.0.0.1:0").map_err(forge_tests::fail)?;
    rx.set_read_timeout(Some(std::time::Duration::from_millis(300))).map_err(forge_tests::fail)?;
    let port = rx.local_addr().map_err(forge_tests::fail)?.port();
    let yaml = policy(&format!(
        "    - {{name: no-udp-here, op: net.sendto, action: deny, cidrs: [127.0.0.1/32], ports: {port}}}\n"
    ));
    let mut f = Fixture::new("udpconn", &yaml, Want { cgroup: Some(true), ..Want::default() })?;
    expect("connected UDP send inside", f.inside(&format!("udp-connect-send 127.0.0.1:{port}"))?, EPERM)?;
    expect("UDP send to 0.0.0.0 inside", f.inside(&format!("sendto 0.0.0.0:{port}"))?, EPERM)?;
    expect(
        "connected UDP send to 0.0.0.0 inside",
        f.inside(&format!("udp-connect-send 0.0.0.0:{port}"))?,
        EPERM,
    )?;
    let mut buf = [0u8; 64];
    check!(rx.recv_from(&mut buf).is_err(), "a denied datagram arrived");
    // A TCP connect to the same place is not a send: allowed.
    let tcp = listener("127.0.0.1:0")?;
    expect("TCP connect inside", f.inside(&format!("connect {tcp}"))?, Outcome::Ok)?;
    // Outside, the same connected send arrives.
    expect(
        "connected UDP send outside",
        f.outside(&format!("udp-connect-send 127.0.0.1:{port}"))?,
        Outcome::Ok,
    )?;
    let (n, _) =
        rx.recv_from(&mut buf).map_err(|e| format!("the datagram from outside did not arrive: {e}"))?;
    check!(&buf[..n] == b"forge", "got {:?}", &buf[..n]);
    let events = f.decisions(3);
    let ev = find(&events, "the connected send", |e| {
        e.hook == Hook::CgroupConnect4
            && e.target == Target::Addr { addr: "127.0.0.1".parse().unwrap(), port }
    })?;
    check!(ev.op == Op::NetSendto && ev.verdict == Verdict::Deny, "decided as {} {}", ev.op, ev.verdict);
    Ok(())
}

/// Raw sockets build their own packets, outside every address rule: they
/// are the `net.raw` class, decided when the socket is made. Denied by
/// default (a policy that does not name the class), allowed by a rule.
pub(crate) fn raw_sockets_are_a_class() -> Result<(), Failed> {
    let yaml = policy("    - {name: other, op: net.bind, action: deny, ports: 1}\n");
    let mut f = Fixture::new("rawsock", &yaml, Want { cgroup: Some(true), ..Want::default() })?;
    expect("raw IPv4 socket inside", f.inside("raw-socket 4")?, EPERM)?;
    expect("raw IPv6 socket inside", f.inside("raw-socket 6")?, EPERM)?;
    expect("raw IPv4 socket outside", f.outside("raw-socket 4")?, Outcome::Ok)?;
    expect("TCP connect inside", f.inside(&format!("connect {}", listener("127.0.0.1:0")?))?, Outcome::Ok)?;
    let events = f.decisions(2);
    let ev = find(&events, "the IPv4 raw socket", |e| {
        e.op == Op::NetRaw && e.target == Target::Socket { ipv6: false, sock_type: 3, protocol: 1 }
    })?;
    check!(ev.hook == Hook::CgroupSockCreate && ev.verdict == Verdict::Deny, "{ev}");
    check!(ev.rule_id == rule_id::DEFAULT, "decided by rule {}", ev.rule_id);
    drop(f);
    // A rule allows the class.
    let allow = Fixture::new(
        "rawallow",
        &policy("    - {name: ping, op: net.raw, action: allow}\n"),
        Want { cgroup: Some(true), ..Want::default() },
    )?;
    expect("raw IPv4 socket under an allow rule", allow.inside("raw-socket 4")?, Outcome::Ok)?;
    Ok(())
}
