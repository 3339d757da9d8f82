//! cgroup sock_addr hooks, attached to each governed cgroup that has no
//! governed ancestor (the kernel runs them for the whole subtree below):
//! connect, bind and UDP sendmsg for IPv4 and IPv6. Return 1 to allow, 0 to
//! deny (the syscall fails with EPERM). A connect of a datagram socket is
//! decided as `net.sendto`; `0.0.0.0` and `::` destinations as the
//! loopback address the kernel sends them to.

use aya_ebpf::{
    macros::{cgroup_sock, cgroup_sock_addr},
    programs::{SockAddrContext, SockContext},
};
use forge_common::{family, flags, hook, op, verdict};

use crate::{
    decide::{decide_net, governing_in_cgroup_hook, is_raw_inet, raw_decision},
    emit::{Report, report},
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;
const AF_INET: u32 = 2;
const SOCK_DGRAM: u32 = 2;

#[inline(always)]
fn decide(ctx: &SockAddrContext, h: u16, op_class: u8, fam: u8) -> i32 {
    let Some(g) = governing_in_cgroup_hook() else {
        return ALLOW;
    };
    let record = g.record;
    if record.flags & flags::NET_VIA_LSM != 0 {
        // The LSM socket hooks decide for this cgroup.
        return ALLOW;
    }
    // SAFETY: `sock_addr` is the context pointer the kernel passed; the
    // fields read are part of the sock_addr context the verifier allows.
    let (ip, port) = unsafe {
        let sa = &*ctx.sock_addr;
        let ip = if fam == family::INET {
            [sa.user_ip4, 0, 0, 0]
        } else {
            [sa.user_ip6[0], sa.user_ip6[1], sa.user_ip6[2], sa.user_ip6[3]]
        };
        (ip, u16::from_be(sa.user_port as u16))
    };
    // A connected datagram socket sends without naming a destination (no
    // sendmsg hook runs for those sends), so its connect is decided as the
    // sends it stands for: a destination that may not be sent to cannot be
    // connected to. (One decision per hook: older verifiers refuse two
    // passes over the rules in one program.)
    // SAFETY: `type` is part of the sock_addr context the verifier allows.
    let op_class = if op_class == op::NET_CONNECT && unsafe { (*ctx.sock_addr).type_ } == SOCK_DGRAM {
        op::NET_SENDTO
    } else {
        op_class
    };
    let d = decide_net(record, op_class, fam, &ip, port);
    let observed = record.flags & flags::OBSERVE_NET != 0 && op_class != op::NET_BIND;
    if d.allows() && !observed {
        return ALLOW;
    }
    let v = if d.allows() { verdict::ALLOW } else { verdict::DENY };
    let mut r = Report::of(&g, h, op_class, v, d.mode, d.rule_id);
    r.family = fam;
    r.addr = ip;
    r.port = port;
    report(Some(record), &r, None);
    if !d.allows() && d.enforced() { DENY } else { ALLOW }
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    decide(&ctx, hook::CGROUP_CONNECT4, op::NET_CONNECT, family::INET)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    decide(&ctx, hook::CGROUP_CONNECT6, op::NET_CONNECT, family::INET6)
}

#[cgroup_sock_addr(bind4)]
pub fn bind4(ctx: SockAddrContext) -> i32 {
    decide(&ctx, hook::CGROUP_BIND4, op::NET_BIND, family::INET)
}

#[cgroup_sock_addr(bind6)]
pub fn bind6(ctx: SockAddrContext) -> i32 {
    decide(&ctx, hook::CGROUP_BIND6, op::NET_BIND, family::INET6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    decide(&ctx, hook::CGROUP_SENDMSG4, op::NET_SENDTO, family::INET)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    decide(&ctx, hook::CGROUP_SENDMSG6, op::NET_SENDTO, family::INET6)
}

/// `cgroup/sock_create`: a socket of the inet families being made. Raw
/// sockets and ICMP datagram sockets are the `net.raw` class: the workload
/// builds its own packets with them, outside every address rule. (Packet
/// sockets are not inet sockets; this hook does not see them.)
#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    let Some(g) = governing_in_cgroup_hook() else {
        return ALLOW;
    };
    // SAFETY: `sock` is the context's `struct bpf_sock *`; family, type and
    // protocol are fields the verifier allows this program to read.
    let (fam, kind, protocol) = unsafe { ((*ctx.sock).family, (*ctx.sock).type_, (*ctx.sock).protocol) };
    if !is_raw_inet(fam, kind, protocol) {
        return ALLOW;
    }
    let record = g.record;
    let d = raw_decision(record);
    if d.allows() {
        return ALLOW;
    }
    let mut r = Report::of(&g, hook::CGROUP_SOCK_CREATE, op::NET_RAW, verdict::DENY, d.mode, d.rule_id);
    r.family = if fam == AF_INET { family::INET } else { family::INET6 };
    r.nr = kind;
    r.port = protocol as u16;
    report(Some(record), &r, None);
    if d.enforced() { DENY } else { ALLOW }
}
