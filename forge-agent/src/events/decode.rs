//! Turns the ring buffer's raw bytes into a typed [`DecisionEvent`]. Every
//! integer tag is checked; bad bytes give an error, never undefined behaviour.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use forge_common::{Event, family, hook, mode, op, verdict};
use serde::Serialize;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event is {got} bytes, expected {expected}")]
    Size { got: usize, expected: usize },
    #[error("unknown {field} tag {value}")]
    Tag { field: &'static str, value: u32 },
    #[error("path length {len} exceeds the {max}-byte buffer")]
    PathLen { len: usize, max: usize },
}

macro_rules! tagged {
    ($(#[$m:meta])* $name:ident : $ty:ty, $field:literal { $($variant:ident = $value:path => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn from_tag(v: $ty) -> Result<Self, DecodeError> {
                match v {
                    $(x if x == $value => Ok(Self::$variant),)+
                    other => Err(DecodeError::Tag { field: $field, value: u32::from(other) }),
                }
            }

            pub const fn tag(self) -> $ty {
                match self { $(Self::$variant => $value),+ }
            }

            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

tagged!(
    /// Where a decision was taken.
    Hook: u16, "hook" {
    LsmBprmCheck = hook::LSM_BPRM_CHECK => "lsm/bprm_check_security",
    LsmFileOpen = hook::LSM_FILE_OPEN => "lsm/file_open",
    LsmSocketConnect = hook::LSM_SOCKET_CONNECT => "lsm/socket_connect",
    LsmSocketBind = hook::LSM_SOCKET_BIND => "lsm/socket_bind",
    LsmBpf = hook::LSM_BPF => "lsm/bpf",
    LsmPtrace = hook::LSM_PTRACE => "lsm/ptrace_access_check",
    LsmTaskKill = hook::LSM_TASK_KILL => "lsm/task_kill",
    CgroupConnect4 = hook::CGROUP_CONNECT4 => "cgroup/connect4",
    CgroupConnect6 = hook::CGROUP_CONNECT6 => "cgroup/connect6",
    CgroupBind4 = hook::CGROUP_BIND4 => "cgroup/bind4",
    CgroupBind6 = hook::CGROUP_BIND6 => "cgroup/bind6",
    CgroupSendmsg4 = hook::CGROUP_SENDMSG4 => "cgroup/sendmsg4",
    CgroupSendmsg6 = hook::CGROUP_SENDMSG6 => "cgroup/sendmsg6",
    SysEnter = hook::SYS_ENTER => "raw_tp/sys_enter",
    ProcExec = hook::PROC_EXEC => "tp_btf/sched_process_exec",
    ProcExit = hook::PROC_EXIT => "tp_btf/sched_process_exit",
    ExecTracepoint = hook::EXEC_TRACEPOINT => "tp_btf/sched_process_exec(kill)",
    LsmInodePermission = hook::LSM_INODE_PERMISSION => "lsm/inode_permission",
    LsmSbUmount = hook::LSM_SB_UMOUNT => "lsm/sb_umount",
    LsmFileSigiotask = hook::LSM_FILE_SIGIOTASK => "lsm/file_send_sigiotask",
    EscapeFork = hook::ESCAPE_FORK => "tp_btf/sched_process_fork",
    EscapeAttach = hook::ESCAPE_ATTACH => "tp_btf/cgroup_attach_task",
    CgroupMkdir = hook::CGROUP_MKDIR => "tp_btf/cgroup_mkdir",
    CgroupRmdir = hook::CGROUP_RMDIR => "tp_btf/cgroup_rmdir",
    LsmTaskControl = hook::LSM_TASK_CONTROL => "lsm/task_set*",
    LsmMount = hook::LSM_MOUNT => "lsm/sb_mount",
    CgroupSockCreate = hook::CGROUP_SOCK_CREATE => "cgroup/sock_create",
    LsmPathChroot = hook::LSM_PATH_CHROOT => "lsm/path_chroot",
    LsmKernelLoad = hook::LSM_KERNEL_LOAD => "lsm/kernel_read_file|load_data",
    LsmPerfEvent = hook::LSM_PERF_EVENT => "lsm/perf_event_open",
    LsmUserns = hook::LSM_USERNS => "lsm/userns_create",
    LsmModuleRequest = hook::LSM_MODULE_REQUEST => "lsm/kernel_module_request",
    LsmSocketCreate = hook::LSM_SOCKET_CREATE => "lsm/socket_create",
    LsmSocketListen = hook::LSM_SOCKET_LISTEN => "lsm/socket_listen",
    LsmPtraceTraceme = hook::LSM_PTRACE_TRACEME => "lsm/ptrace_traceme",
    LsmSbKernMount = hook::LSM_SB_KERN_MOUNT => "lsm/sb_kern_mount",
    LsmUnixConnect = hook::LSM_UNIX_CONNECT => "lsm/unix_stream_connect",
    LsmUnixSend = hook::LSM_UNIX_SEND => "lsm/unix_may_send",
    LsmSocketSendmsg = hook::LSM_SOCKET_SENDMSG => "lsm/socket_sendmsg",
});

tagged!(
    /// Operation class.
    Op: u8, "op" {
    Exec = op::EXEC => "exec",
    FileRead = op::FILE_READ => "file.read",
    FileWrite = op::FILE_WRITE => "file.write",
    NetConnect = op::NET_CONNECT => "net.connect",
    NetBind = op::NET_BIND => "net.bind",
    NetSendto = op::NET_SENDTO => "net.sendto",
    Syscall = op::SYSCALL => "syscall",
    Protect = op::PROTECT => "self-protect",
    Process = op::PROCESS => "process",
    Cgroup = op::CGROUP => "cgroup",
    NetRaw = op::NET_RAW => "net.raw",
    NetUnix = op::NET_UNIX => "net.unix",
});

tagged!(
    /// What the kernel decided. The verdict of an event: `verdict::DROPPED`
    /// only ever tags a counter (see [`CounterVerdict`]) and is rejected here.
    Verdict: u8, "verdict" {
    Allow = verdict::ALLOW => "allow",
    Deny = verdict::DENY => "deny",
    Kill = verdict::KILL => "kill",
    Info = verdict::INFO => "info",
});

tagged!(
    /// The verdict tag of a `COUNTERS` key: every event [`Verdict`], plus
    /// `Dropped` for events of the cgroup and hook lost to a full ring buffer.
    CounterVerdict: u8, "counter verdict" {
    Allow = verdict::ALLOW => "allow",
    Deny = verdict::DENY => "deny",
    Kill = verdict::KILL => "kill",
    Info = verdict::INFO => "info",
    Dropped = verdict::DROPPED => "dropped",
});

impl From<Verdict> for CounterVerdict {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Allow => Self::Allow,
            Verdict::Deny => Self::Deny,
            Verdict::Kill => Self::Kill,
            Verdict::Info => Self::Info,
        }
    }
}

tagged!(
    /// Whether a deny was applied or only reported.
    Mode: u8, "mode" {
    Enforce = mode::ENFORCE => "enforce",
    Monitor = mode::MONITOR => "monitor",
});

/// What the operation was aimed at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    None,
    Path {
        path: String,
    },
    Addr {
        addr: IpAddr,
        port: u16,
    },
    Syscall {
        nr: u32,
    },
    Process {
        pid: u32,
        signal: u32,
    },
    BpfCmd {
        cmd: u32,
    },
    Exit {
        code: u32,
    },
    /// A write the containment or self-protection hook saw: to a file of
    /// `cgroup` (0 when not a cgroup file), with the permission mask asked.
    Write {
        cgroup: u64,
        mask: u32,
    },
    /// A governed process `pid` that left its subtree for `cgroup`.
    Escape {
        pid: u32,
        cgroup: u64,
        outcome: EscapeOutcome,
    },
    /// A cgroup v2 directory (made or removed).
    Cgroup {
        id: u64,
        level: u32,
        path: String,
    },
    /// A socket being made: `ipv6`, its type (`SOCK_RAW` 3, `SOCK_DGRAM`
    /// 2) and protocol.
    Socket {
        ipv6: bool,
        sock_type: u32,
        protocol: u32,
    },
    /// A packet socket (`AF_PACKET`) being made: its type (`SOCK_RAW` 3,
    /// `SOCK_DGRAM` 2) and link-layer protocol (`ETH_P_*`, host order).
    PacketSocket {
        sock_type: u32,
        protocol: u32,
    },
}

/// How a containment breach ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapeOutcome {
    /// The escaped process was killed by the kernel before it ran on.
    Killed,
    /// The kernel killed the process that made the escape; the escaped one
    /// is left to the agent (kernels without `bpf_send_signal_task`).
    LeftToAgent,
    /// A governed task moved a process that was not its own: the move
    /// stands, the task that made it was killed.
    WriterKilled,
    /// Monitor mode: nothing was killed.
    Reported,
}

impl EscapeOutcome {
    pub fn from_tag(v: u32) -> Self {
        match v {
            forge_common::escape::KILLED => Self::Killed,
            forge_common::escape::LEFT_TO_AGENT => Self::LeftToAgent,
            forge_common::escape::WRITER_KILLED => Self::WriterKilled,
            _ => Self::Reported,
        }
    }

    pub const fn tag(self) -> u32 {
        match self {
            Self::Killed => forge_common::escape::KILLED,
            Self::LeftToAgent => forge_common::escape::LEFT_TO_AGENT,
            Self::WriterKilled => forge_common::escape::WRITER_KILLED,
            Self::Reported => 0,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Killed => "killed",
            Self::LeftToAgent => "left to the agent",
            Self::WriterKilled => "its mover killed",
            Self::Reported => "reported",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("-"),
            Self::Path { path } => f.write_str(path),
            Self::Addr { addr: IpAddr::V6(a), port } => write!(f, "[{a}]:{port}"),
            Self::Addr { addr, port } => write!(f, "{addr}:{port}"),
            Self::Syscall { nr } => {
                let (abi, n) = crate::policy::syscalls::from_event_nr(*nr);
                match crate::policy::syscalls::name_in(abi, n) {
                    Some(_) => f.write_str(&crate::policy::syscalls::describe(*nr)),
                    None => write!(f, "syscall {}", crate::policy::syscalls::describe(*nr)),
                }
            }
            Self::Process { pid, signal: 0 } => write!(f, "pid {pid}"),
            Self::Process { pid, signal } => write!(f, "pid {pid} signal {signal}"),
            Self::BpfCmd { cmd } => write!(f, "bpf cmd {cmd}"),
            Self::Exit { code } => write!(f, "exit status {code:#x}"),
            Self::Write { cgroup: 0, mask } => write!(f, "write (mask {mask:#x})"),
            Self::Write { cgroup, mask } => write!(f, "write to cgroup {cgroup} (mask {mask:#x})"),
            Self::Escape { pid, cgroup, outcome } => {
                write!(f, "pid {pid} into cgroup {cgroup} ({})", outcome.as_str())
            }
            Self::Cgroup { id, path, .. } => write!(f, "{path} (id {id})"),
            Self::Socket { ipv6, sock_type, protocol } => {
                let fam = if *ipv6 { "IPv6" } else { "IPv4" };
                match (sock_type, protocol) {
                    (2, 1 | 58) => write!(f, "{fam} ICMP datagram socket"),
                    (3, _) => write!(f, "{fam} raw socket (protocol {protocol})"),
                    _ => write!(f, "{fam} socket type {sock_type} protocol {protocol}"),
                }
            }
            Self::PacketSocket { sock_type, protocol } => {
                write!(f, "packet socket type {sock_type} (protocol {protocol:#06x})")
            }
        }
    }
}

/// One decoded event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DecisionEvent {
    pub ts_ns: u64,
    /// The governed cgroup whose record decided (the task's own cgroup or
    /// its nearest governed ancestor); 0 for events outside every governed
    /// subtree.
    pub cgroup_id: u64,
    /// The cgroup the task actually was in.
    pub actual_cgroup_id: u64,
    pub generation: u64,
    pub pid: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub comm: String,
    pub hook: Hook,
    pub op: Op,
    pub verdict: Verdict,
    pub mode: Mode,
    pub rule_id: u32,
    pub target: Target,
}

impl DecisionEvent {
    /// Decodes one ring buffer record.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let expected = size_of::<Event>();
        if bytes.len() != expected {
            return Err(DecodeError::Size { got: bytes.len(), expected });
        }
        // SAFETY: the length was checked; `Event` is `repr(C)` with integer
        // fields only, so every bit pattern is valid; `read_unaligned` copes
        // with any alignment of the ring buffer slice.
        let raw = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) };
        Self::from_raw(&raw)
    }

    /// Checks every tag of a raw event.
    pub fn from_raw(raw: &Event) -> Result<Self, DecodeError> {
        let hook = Hook::from_tag(raw.hook)?;
        let op = Op::from_tag(raw.op)?;
        let verdict = Verdict::from_tag(raw.verdict)?;
        let mode = Mode::from_tag(raw.mode)?;
        let path_len = usize::from(raw.path_len);
        if path_len >= raw.path.len() {
            return Err(DecodeError::PathLen { len: path_len, max: raw.path.len() - 1 });
        }
        let target = match op {
            Op::NetConnect | Op::NetBind | Op::NetSendto => {
                Target::Addr { addr: decode_addr(raw.family, &raw.addr)?, port: raw.port }
            }
            Op::Syscall => Target::Syscall { nr: raw.nr },
            Op::NetRaw if raw.family == family::PACKET => {
                Target::PacketSocket { sock_type: raw.nr, protocol: u32::from(u16::from_be(raw.port)) }
            }
            Op::NetRaw => Target::Socket {
                ipv6: raw.family == family::INET6,
                sock_type: raw.nr,
                protocol: u32::from(raw.port),
            },
            Op::Exec | Op::FileRead | Op::FileWrite | Op::NetUnix => path_target(raw, path_len),
            Op::Protect => match hook {
                Hook::LsmBpf => Target::BpfCmd { cmd: raw.nr },
                Hook::LsmInodePermission => Target::Write { cgroup: raw.target_cgroup_id, mask: raw.nr },
                Hook::LsmSbUmount | Hook::LsmMount => Target::None,
                Hook::EscapeFork | Hook::EscapeAttach => Target::Escape {
                    pid: raw.target_pid,
                    cgroup: raw.target_cgroup_id,
                    outcome: EscapeOutcome::from_tag(raw.nr),
                },
                _ => Target::Process { pid: raw.target_pid, signal: raw.nr },
            },
            Op::Process => match hook {
                Hook::ProcExit => Target::Exit { code: raw.nr },
                _ => path_target(raw, path_len),
            },
            Op::Cgroup => Target::Cgroup {
                id: raw.target_cgroup_id,
                level: raw.nr,
                path: String::from_utf8_lossy(&raw.path[..path_len]).into_owned(),
            },
        };
        Ok(Self {
            ts_ns: raw.ts_ns,
            cgroup_id: raw.cgroup_id,
            actual_cgroup_id: raw.actual_cgroup_id,
            generation: raw.generation,
            pid: raw.pid,
            tgid: raw.tgid,
            ppid: raw.ppid,
            comm: c_string(&raw.comm),
            hook,
            op,
            verdict,
            mode,
            rule_id: raw.rule_id,
            target,
        })
    }

    /// Whether the kernel actually stopped the operation.
    pub fn enforced(&self) -> bool {
        matches!(self.verdict, Verdict::Deny | Verdict::Kill) && self.mode == Mode::Enforce
    }
}

impl fmt::Display for DecisionEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match (self.verdict, self.mode) {
            (Verdict::Info, _) => self.hook.as_str().rsplit('_').next().unwrap_or("info").to_string(),
            (v, Mode::Monitor) => format!("would-{v}"),
            (v, Mode::Enforce) => v.to_string(),
        };
        write!(
            f,
            "{what} {op} {target} by pid {pid} ({comm}) in cgroup {cg}",
            op = self.op,
            target = self.target,
            pid = self.tgid,
            comm = self.comm,
            cg = self.cgroup_id,
        )?;
        if self.actual_cgroup_id != self.cgroup_id && self.actual_cgroup_id != 0 {
            write!(f, " (from cgroup {} below it)", self.actual_cgroup_id)?;
        }
        write!(f, " [hook {}, rule {}, gen {}]", self.hook, self.rule_id, self.generation)
    }
}

fn path_target(raw: &Event, len: usize) -> Target {
    if len == 0 {
        return Target::None;
    }
    Target::Path { path: String::from_utf8_lossy(&raw.path[..len]).into_owned() }
}

fn decode_addr(fam: u8, words: &[u32; 4]) -> Result<IpAddr, DecodeError> {
    match fam {
        family::INET => Ok(IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))),
        family::INET6 => {
            let mut b = [0u8; 16];
            for (i, w) in words.iter().enumerate() {
                b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            Ok(IpAddr::V6(Ipv6Addr::from(b)))
        }
        other => Err(DecodeError::Tag { field: "family", value: u32::from(other) }),
    }
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_bytes(ev: &Event) -> Vec<u8> {
        // SAFETY: `Event` is plain old data; viewing it as bytes is sound.
        unsafe { std::slice::from_raw_parts((ev as *const Event).cast::<u8>(), size_of::<Event>()) }.to_vec()
    }

    fn connect_event() -> Event {
        let mut ev = Event::zeroed();
        ev.cgroup_id = 42;
        ev.actual_cgroup_id = 42;
        ev.pid = 7;
        ev.tgid = 7;
        ev.hook = hook::CGROUP_CONNECT4;
        ev.op = op::NET_CONNECT;
        ev.verdict = verdict::DENY;
        ev.family = family::INET;
        ev.addr = [u32::from_ne_bytes([127, 0, 0, 1]), 0, 0, 0];
        ev.port = 9;
        ev.rule_id = 17;
        ev.comm[..4].copy_from_slice(b"curl");
        ev
    }

    #[test]
    fn decodes_a_connect_deny() {
        let ev = DecisionEvent::from_bytes(&as_bytes(&connect_event())).expect("valid event");
        assert_eq!(ev.hook, Hook::CgroupConnect4);
        assert_eq!(ev.op, Op::NetConnect);
        assert_eq!(ev.target, Target::Addr { addr: "127.0.0.1".parse().unwrap(), port: 9 });
        assert_eq!(ev.comm, "curl");
        assert!(ev.enforced());
        assert_eq!(
            ev.to_string(),
            "deny net.connect 127.0.0.1:9 by pid 7 (curl) in cgroup 42 [hook cgroup/connect4, rule 17, gen 0]"
        );
    }

    #[test]
    fn decodes_ipv6_and_paths() {
        let mut ev = connect_event();
        ev.family = family::INET6;
        let mut b = [0u8; 16];
        b[15] = 1;
        for i in 0..4 {
            ev.addr[i] = u32::from_ne_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
        }
        let d = DecisionEvent::from_raw(&ev).unwrap();
        assert_eq!(d.target, Target::Addr { addr: "::1".parse().unwrap(), port: 9 });

        let mut ev = Event::zeroed();
        ev.hook = hook::LSM_BPRM_CHECK;
        ev.op = op::EXEC;
        ev.verdict = verdict::DENY;
        ev.mode = mode::MONITOR;
        ev.path[..9].copy_from_slice(b"/bin/true");
        ev.path_len = 9;
        let d = DecisionEvent::from_raw(&ev).unwrap();
        assert_eq!(d.target, Target::Path { path: "/bin/true".into() });
        assert!(!d.enforced());
    }

    #[test]
    fn events_name_the_governed_and_the_actual_cgroup() {
        let mut ev = connect_event();
        ev.actual_cgroup_id = 4242;
        let d = DecisionEvent::from_raw(&ev).unwrap();
        assert_eq!((d.cgroup_id, d.actual_cgroup_id), (42, 4242));
        assert_eq!(
            d.to_string(),
            "deny net.connect 127.0.0.1:9 by pid 7 (curl) in cgroup 42 (from cgroup 4242 below it) [hook cgroup/connect4, rule 17, gen 0]"
        );
    }

    #[test]
    fn decodes_containment_and_cgroup_lifecycle() {
        let mut ev = connect_event();
        ev.hook = hook::ESCAPE_FORK;
        ev.op = op::PROTECT;
        ev.verdict = verdict::KILL;
        ev.rule_id = forge_common::rule_id::CONTAINMENT;
        ev.target_pid = 77;
        ev.target_cgroup_id = 1;
        ev.nr = forge_common::escape::KILLED;
        let d = DecisionEvent::from_raw(&ev).unwrap();
        assert_eq!(d.target, Target::Escape { pid: 77, cgroup: 1, outcome: EscapeOutcome::Killed });
        assert!(d.to_string().starts_with("kill self-protect pid 77 into cgroup 1 (killed) by pid 7"), "{d}");
        ev.nr = forge_common::escape::LEFT_TO_AGENT;
        let d = DecisionEvent::from_raw(&ev).unwrap();
        assert!(matches!(d.target, Target::Escape { outcome: EscapeOutcome::LeftToAgent, .. }));

        ev.hook = hook::LSM_INODE_PERMISSION;
        ev.verdict = verdict::DENY;
        ev.nr = 2;
        ev.target_cgroup_id = 9;
        assert_eq!(DecisionEvent::from_raw(&ev).unwrap().target, Target::Write { cgroup: 9, mask: 2 });

        let mut ev = Event::zeroed();
        ev.hook = hook::CGROUP_MKDIR;
        ev.op = op::CGROUP;
        ev.verdict = verdict::INFO;
        ev.target_cgroup_id = 5150;
        ev.nr = 3;
        ev.path[..13].copy_from_slice(b"/kubepods/pod");
        ev.path_len = 13;
        let d = DecisionEvent::from_raw(&ev).unwrap();
        assert_eq!(d.target, Target::Cgroup { id: 5150, level: 3, path: "/kubepods/pod".into() });
        assert!(d.to_string().starts_with("mkdir cgroup /kubepods/pod (id 5150)"), "{d}");
    }

    #[test]
    fn rejects_wrong_sizes() {
        let bytes = as_bytes(&connect_event());
        for len in [0, 1, bytes.len() - 1] {
            assert_eq!(
                DecisionEvent::from_bytes(&bytes[..len]),
                Err(DecodeError::Size { got: len, expected: bytes.len() })
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(DecisionEvent::from_bytes(&long), Err(DecodeError::Size { .. })));
    }

    #[test]
    fn rejects_unknown_tags() {
        type Corrupt = fn(&mut Event);
        let cases: [(Corrupt, &str); 5] = [
            (|e| e.hook = 0, "hook"),
            (|e| e.hook = 999, "hook"),
            (|e| e.op = 200, "op"),
            (|e| e.verdict = 9, "verdict"),
            (|e| e.mode = 2, "mode"),
        ];
        for (corrupt, field) in cases {
            let mut ev = connect_event();
            corrupt(&mut ev);
            match DecisionEvent::from_raw(&ev) {
                Err(DecodeError::Tag { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected a {field} tag error, got {other:?}"),
            }
        }
        let mut ev = connect_event();
        ev.family = 3;
        assert_eq!(DecisionEvent::from_raw(&ev), Err(DecodeError::Tag { field: "family", value: 3 }));
    }

    #[test]
    fn dropped_tags_counters_but_never_an_event() {
        assert_eq!(
            Verdict::from_tag(verdict::DROPPED),
            Err(DecodeError::Tag { field: "verdict", value: u32::from(verdict::DROPPED) })
        );
        let mut ev = connect_event();
        ev.verdict = verdict::DROPPED;
        assert!(matches!(DecisionEvent::from_raw(&ev), Err(DecodeError::Tag { field: "verdict", .. })));
        assert_eq!(CounterVerdict::from_tag(verdict::DROPPED), Ok(CounterVerdict::Dropped));
        assert_eq!(CounterVerdict::Dropped.to_string(), "dropped");
        for &v in Verdict::ALL {
            let c = CounterVerdict::from_tag(v.tag()).expect("every event verdict tags a counter");
            assert_eq!((c, c.as_str()), (CounterVerdict::from(v), v.as_str()));
        }
        assert_eq!(CounterVerdict::ALL.len(), Verdict::ALL.len() + 1);
        assert!(CounterVerdict::from_tag(9).is_err());
    }

    #[test]
    fn rejects_overlong_path_length() {
        let mut ev = Event::zeroed();
        ev.hook = hook::LSM_FILE_OPEN;
        ev.op = op::FILE_READ;
        ev.verdict = verdict::DENY;
        ev.path_len = 256;
        assert!(matches!(DecisionEvent::from_raw(&ev), Err(DecodeError::PathLen { .. })));
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small xorshift generator: deterministic garbage of the right size.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut bytes = vec![0u8; size_of::<Event>()];
        let mut ok = 0;
        for _ in 0..20_000 {
            for b in &mut bytes {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            if DecisionEvent::from_bytes(&bytes).is_ok() {
                ok += 1;
            }
        }
        // With 26 valid hooks out of 65536 values, random bytes almost never decode.
        assert!(ok < 20, "{ok} random events decoded");
    }
}
