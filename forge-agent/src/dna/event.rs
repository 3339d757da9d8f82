//! The compact binary form of a [`DecisionEvent`] inside a trace record.
//! Events are the bulk of a trace, so they are not JSON: fixed-width
//! little-endian integers, the kernel's own tags, length-prefixed strings.
//!
//! ```text
//! u64 ts_ns | u64 cgroup_id | u64 generation | u32 pid | u32 tgid | u32 ppid | u32 rule_id
//! u16 hook | u8 op | u8 verdict | u8 mode | u32 len + comm (UTF-8)
//! u8 target tag, then: 0 none | 1 u32 len + path | 2 [4] addr + u16 port | 3 [16] addr + u16 port
//!                      | 4 u32 nr | 5 u32 pid + u32 signal | 6 u32 cmd | 7 u32 code
//!                      | 8 u64 cgroup + u32 mask | 9 u32 pid + u64 cgroup + u32 outcome
//!                      | 10 u64 id + u32 level + u32 len + path
//! [u8 1 | u64 actual_cgroup_id]   only when the task was below the governed cgroup
//! ```
//!
//! Events written before the actual cgroup was recorded end after the
//! target; they decode with the actual cgroup equal to the governed one.
//!
//! Decoding checks every tag and that the bytes end exactly where the event
//! does; it returns a message, never panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::events::{DecisionEvent, EscapeOutcome, Hook, Mode, Op, Target, Verdict};

/// Tag of the trailer carrying the actual cgroup.
const ACTUAL_CGROUP: u8 = 1;

pub(crate) fn encode(ev: &DecisionEvent, out: &mut Vec<u8>) {
    out.extend_from_slice(&ev.ts_ns.to_le_bytes());
    out.extend_from_slice(&ev.cgroup_id.to_le_bytes());
    out.extend_from_slice(&ev.generation.to_le_bytes());
    for v in [ev.pid, ev.tgid, ev.ppid, ev.rule_id] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&ev.hook.tag().to_le_bytes());
    out.extend_from_slice(&[ev.op.tag(), ev.verdict.tag(), ev.mode.tag()]);
    put_str(out, &ev.comm);
    match &ev.target {
        Target::None => out.push(0),
        Target::Path { path } => {
            out.push(1);
            put_str(out, path);
        }
        Target::Addr { addr: IpAddr::V4(a), port } => {
            out.push(2);
            out.extend_from_slice(&a.octets());
            out.extend_from_slice(&port.to_le_bytes());
        }
        Target::Addr { addr: IpAddr::V6(a), port } => {
            out.push(3);
            out.extend_from_slice(&a.octets());
            out.extend_from_slice(&port.to_le_bytes());
        }
        Target::Syscall { nr } => put_tagged(out, 4, &[*nr]),
        Target::Process { pid, signal } => put_tagged(out, 5, &[*pid, *signal]),
        Target::BpfCmd { cmd } => put_tagged(out, 6, &[*cmd]),
        Target::Exit { code } => put_tagged(out, 7, &[*code]),
        Target::Write { cgroup, mask } => {
            out.push(8);
            out.extend_from_slice(&cgroup.to_le_bytes());
            out.extend_from_slice(&mask.to_le_bytes());
        }
        Target::Escape { pid, cgroup, outcome } => {
            out.push(9);
            out.extend_from_slice(&pid.to_le_bytes());
            out.extend_from_slice(&cgroup.to_le_bytes());
            out.extend_from_slice(&outcome.tag().to_le_bytes());
        }
        Target::Cgroup { id, level, path } => {
            out.push(10);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&level.to_le_bytes());
            put_str(out, path);
        }
        Target::Socket { ipv6, sock_type, protocol } => {
            put_tagged(out, 11, &[u32::from(*ipv6), *sock_type, *protocol])
        }
        Target::PacketSocket { sock_type, protocol } => put_tagged(out, 12, &[*sock_type, *protocol]),
    }
    if ev.actual_cgroup_id != ev.cgroup_id && ev.actual_cgroup_id != 0 {
        out.push(ACTUAL_CGROUP);
        out.extend_from_slice(&ev.actual_cgroup_id.to_le_bytes());
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Strings longer than 4 GiB cannot occur: a record is at most 16 MiB.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..len as usize]);
}

fn put_tagged(out: &mut Vec<u8>, tag: u8, words: &[u32]) {
    out.push(tag);
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
}

pub(crate) fn decode(bytes: &[u8]) -> Result<DecisionEvent, String> {
    let mut c = Cursor { bytes, at: 0 };
    let ts_ns = c.u64()?;
    let cgroup_id = c.u64()?;
    let generation = c.u64()?;
    let (pid, tgid, ppid, rule_id) = (c.u32()?, c.u32()?, c.u32()?, c.u32()?);
    let hook = Hook::from_tag(c.u16()?).map_err(|e| e.to_string())?;
    let op = Op::from_tag(c.u8()?).map_err(|e| e.to_string())?;
    let verdict = Verdict::from_tag(c.u8()?).map_err(|e| e.to_string())?;
    let mode = Mode::from_tag(c.u8()?).map_err(|e| e.to_string())?;
    let comm = c.string("comm")?;
    let target = match c.u8()? {
        0 => Target::None,
        1 => Target::Path { path: c.string("path")? },
        2 => Target::Addr { addr: IpAddr::V4(Ipv4Addr::from(c.array::<4>()?)), port: c.u16()? },
        3 => Target::Addr { addr: IpAddr::V6(Ipv6Addr::from(c.array::<16>()?)), port: c.u16()? },
        4 => Target::Syscall { nr: c.u32()? },
        5 => Target::Process { pid: c.u32()?, signal: c.u32()? },
        6 => Target::BpfCmd { cmd: c.u32()? },
        7 => Target::Exit { code: c.u32()? },
        8 => Target::Write { cgroup: c.u64()?, mask: c.u32()? },
        9 => Target::Escape { pid: c.u32()?, cgroup: c.u64()?, outcome: EscapeOutcome::from_tag(c.u32()?) },
        10 => Target::Cgroup { id: c.u64()?, level: c.u32()?, path: c.string("cgroup path")? },
        11 => Target::Socket { ipv6: c.u32()? != 0, sock_type: c.u32()?, protocol: c.u32()? },
        12 => Target::PacketSocket { sock_type: c.u32()?, protocol: c.u32()? },
        other => return Err(format!("unknown target tag {other}")),
    };
    let actual_cgroup_id = if c.at == bytes.len() {
        cgroup_id
    } else {
        match c.u8()? {
            ACTUAL_CGROUP => c.u64()?,
            other => return Err(format!("unknown event trailer tag {other}")),
        }
    };
    if c.at != bytes.len() {
        return Err(format!("{} bytes after the event", bytes.len() - c.at));
    }
    Ok(DecisionEvent {
        ts_ns,
        cgroup_id,
        actual_cgroup_id,
        generation,
        pid,
        tgid,
        ppid,
        comm,
        hook,
        op,
        verdict,
        mode,
        rule_id,
        target,
    })
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            format!("event ends at byte {} but needs {n} more from byte {}", self.bytes.len(), self.at)
        })?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(target: Target) -> DecisionEvent {
        DecisionEvent {
            ts_ns: 1_000_000_007,
            cgroup_id: 4242,
            actual_cgroup_id: 4242,
            generation: 3,
            pid: 10,
            tgid: 11,
            ppid: 1,
            comm: "curl".into(),
            hook: Hook::CgroupConnect4,
            op: Op::NetConnect,
            verdict: Verdict::Deny,
            mode: Mode::Enforce,
            rule_id: 17,
            target,
        }
    }

    #[test]
    fn every_target_and_tag_round_trips() {
        let targets = [
            Target::None,
            Target::Path { path: "/etc/shadow".into() },
            Target::Addr { addr: "169.254.169.254".parse().unwrap(), port: 80 },
            Target::Addr { addr: "2001:db8::1".parse().unwrap(), port: 443 },
            Target::Syscall { nr: 272 },
            Target::Process { pid: 99, signal: 9 },
            Target::BpfCmd { cmd: 5 },
            Target::Exit { code: 0x100 },
            Target::Write { cgroup: 77, mask: 2 },
            Target::Escape { pid: 5, cgroup: 1, outcome: EscapeOutcome::Killed },
            Target::Escape { pid: 5, cgroup: 1, outcome: EscapeOutcome::LeftToAgent },
            Target::Escape { pid: 5, cgroup: 1, outcome: EscapeOutcome::Reported },
            Target::Escape { pid: 5, cgroup: 1, outcome: EscapeOutcome::WriterKilled },
            Target::Cgroup { id: 9000, level: 4, path: "/kubepods/pod-a/ctr".into() },
            Target::Socket { ipv6: true, sock_type: 3, protocol: 58 },
            Target::PacketSocket { sock_type: 3, protocol: 3 },
            Target::Syscall { nr: 39 | forge_common::COMPAT_SYSCALL_BIT },
        ];
        for t in targets {
            let ev = event(t);
            let mut b = Vec::new();
            encode(&ev, &mut b);
            assert_eq!(decode(&b).unwrap(), ev);
        }
        for &hook in Hook::ALL {
            for &op in Op::ALL {
                for &verdict in Verdict::ALL {
                    for &mode in Mode::ALL {
                        let ev = DecisionEvent { hook, op, verdict, mode, ..event(Target::None) };
                        let mut b = Vec::new();
                        encode(&ev, &mut b);
                        assert_eq!(decode(&b).unwrap(), ev);
                    }
                }
            }
        }
    }

    #[test]
    fn every_truncation_and_a_trailing_byte_are_errors() {
        let mut b = Vec::new();
        encode(&event(Target::Path { path: "/bin/sh".into() }), &mut b);
        for len in 0..b.len() {
            assert!(decode(&b[..len]).is_err(), "a {len}-byte prefix decoded");
        }
        b.push(0);
        assert_eq!(decode(&b).unwrap_err(), "unknown event trailer tag 0");
        let mut b = Vec::new();
        encode(&event(Target::None), &mut b);
        b.extend_from_slice(&[ACTUAL_CGROUP, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(decode(&b).unwrap_err(), "1 bytes after the event");
    }

    #[test]
    fn the_actual_cgroup_is_kept_when_it_differs() {
        let ev = DecisionEvent { actual_cgroup_id: 5151, ..event(Target::Syscall { nr: 272 }) };
        let mut b = Vec::new();
        encode(&ev, &mut b);
        let mut same = Vec::new();
        encode(&event(Target::Syscall { nr: 272 }), &mut same);
        // Nine bytes more than an event in the governed cgroup itself.
        assert_eq!(b.len(), same.len() + 9);
        assert_eq!(decode(&b).unwrap(), ev);
        // Cut inside the trailer: an error, not a silently shorter event.
        for cut in same.len() + 1..b.len() {
            assert!(decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        // An event from before the trailer existed decodes as governed itself.
        assert_eq!(decode(&same).unwrap().actual_cgroup_id, 4242);
    }
}
