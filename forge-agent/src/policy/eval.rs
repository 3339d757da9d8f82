//! The userspace policy evaluator: would one operation by a workload governed
//! by a compiled record be allowed, and by which rule?
//!
//! It answers with the kernel programs' semantics (forge-ebpf's `decide.rs`,
//! `cgroup.rs`, `lsm.rs`, `tracepoint.rs`), over the same data the map writer
//! hands the kernel — the [`PolicyRecord`] and the path entries:
//!
//! - **network**: the record's rules in record order, the first match decides
//!   ([`NetRule::matches`], the very function the kernel runs); no match falls
//!   back to `defaults[class]` with `default_rule[class]`;
//! - **exec and file opens**: the longest prefix among the class's path
//!   entries. A directory entry ends in `/`, an exact-file entry in a NUL, and
//!   the kernel looks up the resolved path *including* its NUL, so `/a/b`
//!   matches only `/a/b` while `/a/` matches everything below `/a`. A path
//!   that does not fit the 251-byte key falls back to the default (LSM);
//!   the exec tracepoint truncates it instead. Only decided when the record
//!   has [`flags::HAS_PATH_RULES`];
//! - **syscalls**: the deny bitmap ([`PolicyRecord::syscall_denied`]); a denied
//!   syscall kills the caller (verdict `kill`);
//! - a record in **monitor** mode turns every decision into monitor (the
//!   kernel's `Decision::under`); a monitored deny is allowed and reported;
//! - decisions other than a plain allow are reported as events, and so are
//!   allowed connects and sends at the cgroup hooks under [`flags::OBSERVE_NET`].
//!
//! Which hook decides depends on the backends the map writer found, which it
//! records in the record's flags: [`flags::NET_VIA_LSM`] (no cgroup hooks: the
//! LSM socket hooks decide connect and bind, and `lsm/socket_sendmsg` UDP sends)
//! and [`flags::EXEC_VIA_TRACEPOINT`] (no BPF LSM: exec is decided after the
//! fact at `sched_process_exec` by killing the new image, by the path as given
//! to execve, and file opens are not decided at all). Without either flag the
//! evaluator assumes every hook is attached. Under BPF LSM an exec first opens
//! the binary for reading, so it passes a `file.read` check before the `exec`
//! one ([`Evaluation::prior`]).
//!
//! What the evaluator cannot know: paths are taken as the kernel reports them
//! (resolved: symlinks and `..` followed; a file that does not exist fails to
//! open before any hook runs), and the files a new image opens while loading
//! (interpreter, libraries) are checks of their own.
//!
//! `tests/privileged/differential.rs` drives random policies and operations
//! through this evaluator and through the real kernel programs and requires
//! the same verdicts and rule ids.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use forge_common::{
    MAX_NET_RULES, NetRule, PATH_KEY_PATH_LEN, PolicyRecord, family, flags, mode, op, verdict,
};
use serde::{Serialize, Serializer};

use super::{CompiledRecord, RuleInfo, identity, syscalls};
use crate::{
    ebpf::Active,
    events::{Hook, Mode, Op, Verdict},
};

/// Errors in the text form of an [`Operation`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OperationError {
    #[error("empty operation; expected e.g. `net.connect 10.0.0.5:5432` or `exec /usr/bin/curl`")]
    Empty,
    #[error(
        "unknown operation {0:?}; expected exec, file.read, file.write, net.connect, net.bind, net.sendto, net.raw, net.unix or syscall"
    )]
    Unknown(String),
    #[error("{op} needs {what}")]
    Missing { op: &'static str, what: &'static str },
    #[error("{op}: bad socket address {text:?}: expected IP:PORT or [IPv6]:PORT")]
    Address { op: &'static str, text: String },
    #[error(
        "{op}: path {path:?} is not one the kernel reports: it must be absolute, without `.`, `..`, empty components, a trailing `/` or NUL (give the resolved path)"
    )]
    Path { op: &'static str, path: String },
    #[error(
        "syscall {0:?} is neither a syscall name nor a number, optionally after an ABI (`i386:mkdir`): {1}"
    )]
    Syscall(String, syscalls::SyscallNameError),
}

/// One operation a governed workload could attempt.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    Exec(String),
    FileRead(String),
    FileWrite(String),
    Connect(SocketAddr),
    Bind(SocketAddr),
    SendTo(SocketAddr),
    /// A syscall in the form a `SYS_ENTER` event reports it
    /// ([`syscalls::to_event_nr`]): x86_64 numbers as they are, i386 and x32
    /// ones with their ABI bit.
    Syscall(u32),
    /// Making a raw or ICMP socket.
    Raw,
    /// A connect or datagram to the unix socket bound at a path.
    Unix(String),
}

impl Operation {
    /// The operation class ([`op`]).
    pub const fn class(&self) -> u8 {
        match self {
            Self::Exec(_) => op::EXEC,
            Self::FileRead(_) => op::FILE_READ,
            Self::FileWrite(_) => op::FILE_WRITE,
            Self::Connect(_) => op::NET_CONNECT,
            Self::Bind(_) => op::NET_BIND,
            Self::SendTo(_) => op::NET_SENDTO,
            Self::Syscall(_) => op::SYSCALL,
            Self::Raw => op::NET_RAW,
            Self::Unix(_) => op::NET_UNIX,
        }
    }

    fn verb(&self) -> &'static str {
        op_of(self.class()).as_str()
    }
}

fn op_of(class: u8) -> Op {
    Op::from_tag(class).unwrap_or(Op::Process)
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = self.verb();
        match self {
            Self::Exec(p) | Self::FileRead(p) | Self::FileWrite(p) | Self::Unix(p) => write!(f, "{verb} {p}"),
            Self::Connect(a) | Self::Bind(a) | Self::SendTo(a) => write!(f, "{verb} {a}"),
            Self::Raw => f.write_str(verb),
            Self::Syscall(ev) => {
                let (abi, nr) = syscalls::from_event_nr(*ev);
                let prefix = if abi == syscalls::Abi::X86_64 { String::new() } else { format!("{abi}:") };
                match syscalls::name_in(abi, nr) {
                    Some(name) => write!(f, "{verb} {prefix}{name}"),
                    None => write!(f, "{verb} {prefix}{nr}"),
                }
            }
        }
    }
}

impl FromStr for Operation {
    type Err = OperationError;

    fn from_str(s: &str) -> Result<Self, OperationError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(OperationError::Empty);
        }
        let (verb, arg) = s.split_once(char::is_whitespace).map_or((s, ""), |(v, a)| (v, a.trim()));
        let class = Op::ALL
            .iter()
            .find(|o| o.as_str() == verb && (o.tag() <= op::SYSCALL || o.tag() >= op::NET_RAW))
            .ok_or_else(|| OperationError::Unknown(verb.to_string()))?;
        let name = class.as_str();
        let addr = || -> Result<SocketAddr, OperationError> {
            if arg.is_empty() {
                return Err(OperationError::Missing { op: name, what: "an address, e.g. 10.0.0.5:5432" });
            }
            arg.parse().map_err(|_| OperationError::Address { op: name, text: arg.to_string() })
        };
        let path = || -> Result<String, OperationError> {
            if arg.is_empty() {
                return Err(OperationError::Missing { op: name, what: "an absolute path" });
            }
            if kernel_reported(arg) {
                Ok(arg.to_string())
            } else {
                Err(OperationError::Path { op: name, path: arg.to_string() })
            }
        };
        Ok(match *class {
            Op::Exec if arg == super::compile::ANONYMOUS => Self::Exec(arg.to_string()),
            Op::Exec => Self::Exec(path()?),
            Op::FileRead => Self::FileRead(path()?),
            Op::FileWrite => Self::FileWrite(path()?),
            Op::NetConnect => Self::Connect(addr()?),
            Op::NetBind => Self::Bind(addr()?),
            Op::NetSendto => Self::SendTo(addr()?),
            Op::NetRaw => Self::Raw,
            Op::NetUnix => Self::Unix(path()?),
            _ => {
                if arg.is_empty() {
                    return Err(OperationError::Missing { op: name, what: "a syscall name or number" });
                }
                Self::Syscall(syscalls::parse(arg).map_err(|e| OperationError::Syscall(arg.to_string(), e))?)
            }
        })
    }
}

/// Whether `p` has the form `bpf_d_path` gives: absolute, no `.`/`..`/empty
/// components, no trailing `/` (except `/` itself), no NUL.
pub(crate) fn kernel_reported(p: &str) -> bool {
    if p == "/" {
        return true;
    }
    p.starts_with('/')
        && !p.contains('\0')
        && p[1..].split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

impl Serialize for Operation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Why a network rule did not match (every failing condition, in the order
/// the kernel tests them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NetMismatch {
    /// The rule does not cover this operation class.
    Op {
        covers: Vec<Op>,
    },
    /// The rule is for the other address family.
    Family {
        rule: &'static str,
        operation: &'static str,
    },
    Port {
        port: u16,
        lo: u16,
        hi: u16,
    },
    Address {
        addr: IpAddr,
        cidr: String,
    },
}

impl fmt::Display for NetMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Op { covers } => {
                let list: Vec<&str> = covers.iter().map(|o| o.as_str()).collect();
                write!(f, "covers {} only", list.join(", "))
            }
            Self::Family { rule, operation } => write!(f, "an {rule} rule, the address is {operation}"),
            Self::Port { port, lo, hi } if lo == hi => write!(f, "port {port} is not {lo}"),
            Self::Port { port, lo, hi } => write!(f, "port {port} is outside {lo}-{hi}"),
            Self::Address { addr, cidr } => write!(f, "{addr} is outside {cidr}"),
        }
    }
}

/// One thing the kernel looked at on the way to a decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Considered {
    /// A network rule, in the order the kernel tries them (first match wins).
    NetRule {
        /// Position in the record (0-based).
        index: usize,
        rule_id: u32,
        name: Option<String>,
        action: Verdict,
        /// The rule's own mode (before a monitor-mode record overrides it).
        mode: Mode,
        /// `127.0.0.0/8`, `::1/128` or `any`.
        cidr: String,
        port_lo: u16,
        port_hi: u16,
        ops: Vec<Op>,
        matched: bool,
        mismatches: Vec<NetMismatch>,
    },
    /// A path entry of the class (the longest matching prefix wins).
    Path {
        /// The pattern without its NUL; `exact` tells which kind it is.
        pattern: String,
        exact: bool,
        rule_id: u32,
        name: Option<String>,
        action: Verdict,
        mode: Mode,
        matched: bool,
        /// The longest match: the entry that decides.
        longest: bool,
    },
    /// The syscall's entry in the deny bitmap.
    /// `nr` in event form ([`Operation::Syscall`]); `slot` is `None` for a
    /// number no ABI table has a place for.
    Syscall { nr: u32, slot: Option<usize>, denied: bool, monitor: bool, rule_id: u32 },
    /// The record's default for the class (used when nothing else matched).
    Default { class: Op, action: Verdict, rule_id: u32 },
    /// The path could not be put into the kernel's lookup key.
    PathTooLong { len: usize, max: usize },
    /// The file is the one an exact-file deny names by another path (same
    /// device and inode: a hard link, a bind mount); that rule decides.
    SameFile { path: String, rule_id: u32, name: Option<String>, mode: Mode },
}

impl fmt::Display for Considered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NetRule { action, cidr, port_lo, port_hi, ops, matched, mismatches, .. } => {
                let ops: Vec<&str> = ops.iter().map(|o| o.as_str()).collect();
                let ports = match (*port_lo, *port_hi) {
                    (0, u16::MAX) => "any port".to_string(),
                    (lo, hi) if lo == hi => format!("port {lo}"),
                    (lo, hi) => format!("ports {lo}-{hi}"),
                };
                write!(f, "{action} {} {cidr} {ports}: ", ops.join(","))?;
                if *matched {
                    f.write_str("matches")
                } else {
                    let why: Vec<String> = mismatches.iter().map(ToString::to_string).collect();
                    write!(f, "no match ({})", why.join("; "))
                }
            }
            Self::Path { pattern, exact, action, matched, longest, .. } => {
                let kind = if *exact { "exact file" } else { "prefix" };
                let what = match (matched, longest) {
                    (true, true) => "matches, longest: decides",
                    (true, false) => "matches, but a longer prefix also does",
                    (false, _) if *exact => "no match (a different file)",
                    (false, _) => "no match (not a prefix)",
                };
                write!(f, "{action} {kind} {pattern}: {what}")
            }
            Self::Syscall { nr, slot, denied, monitor, .. } => {
                let n = syscalls::describe(*nr);
                match (slot, denied, monitor) {
                    (None, false, _) => {
                        write!(f, "syscall {n} has no slot in the bitmaps: the default (allow) decides")
                    }
                    (None, true, _) => {
                        write!(f, "syscall {n} has no slot in the bitmaps: the default (deny) decides")
                    }
                    (Some(_), false, _) => write!(f, "syscall {n}: not in the deny bitmap"),
                    (Some(_), true, false) => write!(f, "syscall {n}: in the deny bitmap"),
                    (Some(_), true, true) => write!(f, "syscall {n}: in the deny bitmap, monitored"),
                }
            }
            Self::Default { class, action, .. } => write!(f, "default for {class}: {action}"),
            Self::PathTooLong { len, max } => {
                write!(f, "the path ({len} bytes) does not fit the {max}-byte key: the default decides")
            }
            Self::SameFile { path, .. } => write!(
                f,
                "deny exact file {path}: the same file (device and inode), reached by another path: decides"
            ),
        }
    }
}

/// One check the kernel makes: where, what it decided, on what grounds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Class decided (an exec's first check under BPF LSM is `file.read`).
    pub class: Op,
    /// The program that decides; `None`: no hook decides this (allowed).
    pub hook: Option<Hook>,
    pub verdict: Verdict,
    pub mode: Mode,
    /// Rule id the kernel reports (0: the class default).
    pub rule_id: u32,
    /// The rule behind `rule_id`, if the policy set defines it.
    pub rule: Option<RuleInfo>,
    /// Whether the operation is stopped here (a deny or kill in enforce mode).
    pub enforced: bool,
    /// Whether the kernel sends a decision event: anything but a plain allow,
    /// and allowed connects and sends when the record asks to observe them.
    pub reported: bool,
    pub considered: Vec<Considered>,
    /// Why no hook decides, when `hook` is `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undecided: Option<String>,
}

/// The answer for one operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Evaluation {
    pub operation: Operation,
    /// The check that decides the operation's fate.
    #[serde(flatten)]
    pub decision: Check,
    /// Checks passed before the deciding one, in kernel order (an exec under
    /// BPF LSM first opens the binary for reading). A reported one still
    /// sends its event.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prior: Vec<Check>,
    pub notes: Vec<String>,
}

impl Evaluation {
    pub fn verdict(&self) -> Verdict {
        self.decision.verdict
    }

    pub fn mode(&self) -> Mode {
        self.decision.mode
    }

    pub fn rule_id(&self) -> u32 {
        self.decision.rule_id
    }

    /// Whether the kernel stops the operation.
    pub fn enforced(&self) -> bool {
        self.decision.enforced
    }

    /// Every check, in the order the kernel makes them.
    pub fn checks(&self) -> impl Iterator<Item = &Check> {
        self.prior.iter().chain(std::iter::once(&self.decision))
    }

    /// The checks the kernel reports as decision events, in order.
    pub fn reported(&self) -> impl Iterator<Item = &Check> {
        self.checks().filter(|c| c.reported)
    }
}

/// The record flags the map writer derives from the backends in force
/// (`MapWriter::govern` sets the same), for evaluating a freshly compiled
/// record as a given host would run it.
pub fn backend_flags(active: &Active) -> u32 {
    let mut f = 0;
    if !active.cgroup && active.lsm {
        f |= flags::NET_VIA_LSM;
    }
    if !active.lsm_paths && active.tracepoint {
        f |= flags::EXEC_VIA_TRACEPOINT;
    }
    f
}

/// What the kernel would decide for `operation` by a workload governed by `c`.
pub fn evaluate(c: &CompiledRecord, operation: &Operation) -> Evaluation {
    let mut notes = Vec::new();
    let (decision, prior) = match operation {
        Operation::Connect(a) | Operation::Bind(a) | Operation::SendTo(a) => {
            if matches!(operation, Operation::Bind(_)) && a.port() == 0 {
                notes.push(
                    "a listen() on a socket without a port (which takes one itself) is decided the same way, at lsm/socket_listen where BPF LSM runs; without it nothing decides it"
                        .to_string(),
                );
            }
            (net(c, operation.class(), a, &mut notes), Vec::new())
        }
        Operation::Syscall(nr) => {
            if let Some(note) = guard_note(c, *nr) {
                notes.push(note);
            }
            let d = syscall(c, *nr);
            if d.enforced && d.verdict == Verdict::Kill {
                let (abi, n) = syscalls::from_event_nr(*nr);
                let effect = syscalls::name_in(abi, n)
                    .map(|name| syscalls::DenyEffect::of(name, |_| true))
                    .unwrap_or_default();
                let parts = effect.parts_text();
                notes.push(match (effect.refused(), parts.is_empty()) {
                    (true, true) => format!(
                        "under BPF LSM {} refuses the call's effect first (EPERM, nothing done); without it the kill is sent at syscall entry and the call itself still runs",
                        effect.whole.join(", ")
                    ),
                    (true, false) => format!(
                        "under BPF LSM {} refuses the call's effect first (EPERM, nothing done), and {parts}; without it the kill is sent at syscall entry and the call itself still runs",
                        effect.whole.join(", ")
                    ),
                    (false, false) => format!(
                        "under BPF LSM {parts} (EPERM); the rest of the call, and all of it without BPF LSM, still runs before the kill sent at syscall entry"
                    ),
                    (false, true) => {
                        "the kill is sent at syscall entry: the call itself still runs (its effect happens) before the caller dies"
                            .to_string()
                    }
                });
            }
            (d, Vec::new())
        }
        Operation::FileRead(p) | Operation::FileWrite(p) => (file(c, operation.class(), p), Vec::new()),
        Operation::Exec(p) => exec(c, p, &mut notes),
        Operation::Unix(p) => {
            notes.push(
                "unix sockets are decided only where BPF LSM runs (lsm/unix_stream_connect, lsm/unix_may_send; any kernel with BPF LSM, no path helper needed); `forge policy check --host` says whether it runs here. Abstract sockets (no path) are not decided"
                    .to_string(),
            );
            (unix(c, p), Vec::new())
        }
        Operation::Raw => {
            notes.push(
                "packet sockets (AF_PACKET) are decided the same way, at lsm/socket_create where BPF LSM runs; without it nothing decides them"
                    .to_string(),
            );
            (raw(c), Vec::new())
        }
    };
    Evaluation { operation: operation.clone(), decision, prior, notes }
}

/// The path guard's word on syscall `ev` (an event number) for this record,
/// if it guards the call.
fn guard_note(c: &CompiledRecord, ev: u32) -> Option<String> {
    let (abi, n) = syscalls::from_event_nr(ev);
    let name = syscalls::family(syscalls::name_in(abi, n)?);
    let guarded = match name {
        "clone" | "clone3" => "unshare",
        "fsconfig" | "move_mount" => "mount",
        other => other,
    };
    let g = forge_common::path_guard::GUARDS.iter().find(|g| g.syscall == guarded)?;
    if c.record.flags & g.flag == 0 {
        return None;
    }
    let what = match g.syscall {
        "unshare" => "making a user namespace (by any call)".to_string(),
        "mount" if name != "mount" => format!("{name} (a mount)"),
        other => other.to_string(),
    };
    let lift = if g.allowable {
        format!("a syscall rule allowing {} by name lifts it", g.syscall)
    } else {
        format!("{} cannot be allowed together with path rules", g.syscall)
    };
    Some(format!(
        "this workload has path rules: under BPF LSM {} refuses {what} (EPERM, built-in path guard, rule id {}); {lift}",
        g.hooks,
        forge_common::rule_id::PATH_GUARD
    ))
}

/// A rule's or default's decision, as forge-ebpf's `Decision`.
#[derive(Clone, Copy)]
struct Decision {
    action: u8,
    mode: u8,
    rule_id: u32,
}

impl Decision {
    fn default_for(r: &PolicyRecord, class: u8) -> Self {
        let i = class as usize;
        Self { action: r.defaults[i], mode: r.mode, rule_id: r.default_rule[i] }
    }

    /// A record in monitor mode turns every rule into monitor.
    fn under(mut self, r: &PolicyRecord) -> Self {
        if r.mode == mode::MONITOR {
            self.mode = mode::MONITOR;
        }
        self
    }
}

fn verdict_of(action: u8) -> Verdict {
    if action == verdict::ALLOW { Verdict::Allow } else { Verdict::Deny }
}

fn mode_of(m: u8) -> Mode {
    if m == mode::ENFORCE { Mode::Enforce } else { Mode::Monitor }
}

fn rule_of(c: &CompiledRecord, id: u32) -> Option<RuleInfo> {
    if id < forge_common::rule_id::FIRST { None } else { c.rule(id).cloned() }
}

/// A check decided by `d` at `hook`; a non-allow is reported as `denied`.
fn decided(
    c: &CompiledRecord,
    class: u8,
    hook: Hook,
    denied: Verdict,
    d: Decision,
    considered: Vec<Considered>,
) -> Check {
    let allows = d.action == verdict::ALLOW;
    let enforce = d.mode == mode::ENFORCE;
    Check {
        class: op_of(class),
        hook: Some(hook),
        verdict: if allows { Verdict::Allow } else { denied },
        mode: mode_of(d.mode),
        rule_id: d.rule_id,
        rule: rule_of(c, d.rule_id),
        enforced: !allows && enforce,
        reported: !allows,
        considered,
        undecided: None,
    }
}

/// A check no hook makes: allowed, nothing reported.
fn undecided(c: &CompiledRecord, class: u8, why: &str) -> Check {
    Check {
        class: op_of(class),
        hook: None,
        verdict: Verdict::Allow,
        mode: mode_of(c.record.mode),
        rule_id: forge_common::rule_id::DEFAULT,
        rule: None,
        enforced: false,
        reported: false,
        considered: Vec::new(),
        undecided: Some(why.to_string()),
    }
}

fn default_considered(r: &PolicyRecord, class: u8) -> Considered {
    let d = Decision::default_for(r, class);
    Considered::Default { class: op_of(class), action: verdict_of(d.action), rule_id: d.rule_id }
}

/// `(family, address words in network order, port)` as the deciding hook sees
/// the destination of `class` to `addr`.
fn kernel_view(class: u8, addr: &SocketAddr, via_lsm: bool, notes: &mut Vec<String>) -> (u8, [u32; 4], u16) {
    let port = addr.port();
    match addr.ip() {
        IpAddr::V4(v4) => (family::INET, [u32::from_ne_bytes(v4.octets()), 0, 0, 0], port),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                if class == op::NET_SENDTO && !via_lsm {
                    // udpv6_sendmsg hands a v4-mapped destination to
                    // udp_sendmsg, whose hook is sendmsg4.
                    notes.push(format!(
                        "{v6} is IPv4-mapped: a UDP send to it runs the IPv4 path, so cgroup/sendmsg4 decides it as {v4}"
                    ));
                    return (family::INET, [u32::from_ne_bytes(v4.octets()), 0, 0, 0], port);
                }
                notes.push(format!(
                    "{v6} is IPv4-mapped: this hook sees an IPv6 address, and ForgeOne decides it by the IPv4 rules, as {v4}"
                ));
            }
            let b = v6.octets();
            let mut w = [0u32; 4];
            for (i, word) in w.iter_mut().enumerate() {
                *word = u32::from_ne_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]]);
            }
            (family::INET6, w, port)
        }
    }
}

fn net_hook(class: u8, fam: u8, via_lsm: bool) -> Hook {
    let v4 = fam == family::INET;
    match (class, via_lsm, v4) {
        (op::NET_CONNECT, true, _) => Hook::LsmSocketConnect,
        (op::NET_BIND, true, _) => Hook::LsmSocketBind,
        (op::NET_SENDTO, true, _) => Hook::LsmSocketSendmsg,
        (op::NET_CONNECT, false, true) => Hook::CgroupConnect4,
        (op::NET_CONNECT, false, false) => Hook::CgroupConnect6,
        (op::NET_BIND, false, true) => Hook::CgroupBind4,
        (op::NET_BIND, false, false) => Hook::CgroupBind6,
        (_, _, true) => Hook::CgroupSendmsg4,
        (_, _, false) => Hook::CgroupSendmsg6,
    }
}

fn family_name(f: u8) -> &'static str {
    match f {
        family::INET => "IPv4",
        family::INET6 => "IPv6",
        _ => "any-family",
    }
}

/// Every condition of [`NetRule::matches`] that fails, in its order.
fn mismatches(rule: &NetRule, class: u8, fam: u8, ip: &[u32; 4], port: u16) -> Vec<NetMismatch> {
    let mut out = Vec::new();
    if rule.ops & (1u8 << class) == 0 {
        out.push(NetMismatch::Op { covers: ops_of(rule.ops) });
    }
    let family_ok = rule.family == family::ANY || rule.family == fam;
    if !family_ok {
        out.push(NetMismatch::Family { rule: family_name(rule.family), operation: family_name(fam) });
    }
    if port < rule.port_lo || port > rule.port_hi {
        out.push(NetMismatch::Port { port, lo: rule.port_lo, hi: rule.port_hi });
    }
    if family_ok && rule.family != family::ANY {
        let words = if fam == family::INET { 1 } else { 4 };
        if (0..words).any(|i| ip[i] & rule.mask[i] != rule.addr[i]) {
            out.push(NetMismatch::Address { addr: ip_of(fam, ip), cidr: super::net::describe(rule) });
        }
    }
    out
}

fn ip_of(fam: u8, ip: &[u32; 4]) -> IpAddr {
    if fam == family::INET {
        IpAddr::from(ip[0].to_ne_bytes())
    } else {
        let mut b = [0u8; 16];
        for (i, w) in ip.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::from(b)
    }
}

fn ops_of(bits: u8) -> Vec<Op> {
    (0..8u8).filter(|b| bits & (1 << b) != 0).map(op_of).collect()
}

/// forge-ebpf `decide_net`: the first matching rule, else the default.
fn net(c: &CompiledRecord, class: u8, addr: &SocketAddr, notes: &mut Vec<String>) -> Check {
    let r = &c.record;
    let via_lsm = r.flags & flags::NET_VIA_LSM != 0;
    let (fam, ip, port) = kernel_view(class, addr, via_lsm, notes);
    let hook = net_hook(class, fam, via_lsm);
    let (fam, ip) = forge_common::canonical_dest(class, fam, &ip);
    let mut considered = Vec::new();
    let count = (r.net_count as usize).min(MAX_NET_RULES);
    for (index, rule) in r.net[..count].iter().enumerate() {
        let matched = rule.matches(class, fam, &ip, port);
        let why = mismatches(rule, class, fam, &ip, port);
        debug_assert_eq!(matched, why.is_empty(), "mismatch reasons disagree with NetRule::matches");
        considered.push(Considered::NetRule {
            index,
            rule_id: rule.rule_id,
            name: rule_of(c, rule.rule_id).map(|i| i.name),
            action: verdict_of(rule.action),
            mode: mode_of(rule.mode),
            cidr: super::net::describe(rule),
            port_lo: rule.port_lo,
            port_hi: rule.port_hi,
            ops: ops_of(rule.ops),
            matched,
            mismatches: why,
        });
        if matched {
            let d = Decision { action: rule.action, mode: rule.mode, rule_id: rule.rule_id }.under(r);
            return observed(r, class, via_lsm, decided(c, class, hook, Verdict::Deny, d, considered));
        }
    }
    considered.push(default_considered(r, class));
    let d = Decision::default_for(r, class).under(r);
    observed(r, class, via_lsm, decided(c, class, hook, Verdict::Deny, d, considered))
}

/// With [`flags::OBSERVE_NET`] the cgroup hooks report allowed connects and
/// sends too (verdict `allow`), for the anomaly scorer.
fn observed(r: &PolicyRecord, class: u8, via_lsm: bool, mut check: Check) -> Check {
    if r.flags & flags::OBSERVE_NET != 0 && !via_lsm && class != op::NET_BIND {
        check.reported = true;
    }
    check
}

/// The trie lookup data for `path`: its bytes and NUL, as `bpf_d_path` (LSM)
/// or `bpf_probe_read_kernel_str` (exec tracepoint) fill the key. `None`:
/// the LSM could not resolve it into the key.
fn lookup_key(path: &str, truncate: bool) -> Option<Vec<u8>> {
    let mut key = path.as_bytes().to_vec();
    if key.len() < PATH_KEY_PATH_LEN {
        key.push(0);
        return Some(key);
    }
    if !truncate {
        return None;
    }
    key.truncate(PATH_KEY_PATH_LEN - 1);
    key.push(0);
    Some(key)
}

/// forge-ebpf `decide_path`: the longest matching entry, else the default.
fn decide_path(c: &CompiledRecord, class: u8, path: &str, truncate: bool) -> (Decision, Vec<Considered>) {
    let r = &c.record;
    // The file itself comes first (under BPF LSM and at the exec
    // tracepoint alike): an exact-file deny naming it by another path.
    if let Some(e) = same_file(c, class, path) {
        let d = Decision { action: e.rule.action, mode: e.rule.mode, rule_id: e.rule.rule_id };
        let considered = vec![Considered::SameFile {
            path: e.path,
            rule_id: e.rule.rule_id,
            name: rule_of(c, e.rule.rule_id).map(|i| i.name),
            mode: mode_of(e.rule.mode),
        }];
        return (d.under(r), considered);
    }
    let Some(key) = lookup_key(path, truncate) else {
        let considered = vec![
            Considered::PathTooLong { len: path.len(), max: PATH_KEY_PATH_LEN - 1 },
            default_considered(r, class),
        ];
        return (Decision::default_for(r, class).under(r), considered);
    };
    // Entries by path only (not the `<anonymous>` one, which no path reaches).
    let entries: Vec<_> =
        c.paths.iter().filter(|e| e.op == class && e.pattern.first() == Some(&b'/')).collect();
    let longest = entries
        .iter()
        .filter(|e| key.starts_with(&e.pattern))
        .max_by_key(|e| e.pattern.len())
        .map(|e| e.pattern.clone());
    let mut considered: Vec<Considered> = entries
        .iter()
        .map(|e| {
            let exact = e.pattern.last() == Some(&0);
            let text = &e.pattern[..e.pattern.len() - usize::from(exact)];
            Considered::Path {
                pattern: String::from_utf8_lossy(text).into_owned(),
                exact,
                rule_id: e.rule.rule_id,
                name: rule_of(c, e.rule.rule_id).map(|i| i.name),
                action: verdict_of(e.rule.action),
                mode: mode_of(e.rule.mode),
                matched: key.starts_with(&e.pattern),
                longest: longest.as_ref() == Some(&e.pattern),
            }
        })
        .collect();
    match entries.iter().find(|e| longest.as_ref() == Some(&e.pattern)) {
        Some(e) => {
            let d = Decision { action: e.rule.action, mode: e.rule.mode, rule_id: e.rule.rule_id };
            (d.under(r), considered)
        }
        None => {
            considered.push(default_considered(r, class));
            (Decision::default_for(r, class).under(r), considered)
        }
    }
}

const NO_PATH_RULES: &str = "the record has no path rules and allows exec, file.read and file.write by default: the path hooks return at once";

/// The exact-file deny of `class` whose file is the one at `path` (same
/// device and inode, as stat'ed here and now), as the map writer stores it.
fn same_file(c: &CompiledRecord, class: u8, path: &str) -> Option<identity::InodeEntry> {
    let id = identity::FileId::of(std::path::Path::new(path))?;
    identity::inode_entries(&c.paths, identity::FileId::of).into_iter().find(|e| e.op == class && e.id == id)
}

/// `lsm/file_open` for a read or write open.
fn file(c: &CompiledRecord, class: u8, path: &str) -> Check {
    let r = &c.record;
    if r.flags & flags::HAS_PATH_RULES == 0 {
        return undecided(c, class, NO_PATH_RULES);
    }
    if r.flags & flags::EXEC_VIA_TRACEPOINT != 0 {
        return undecided(
            c,
            class,
            "no BPF LSM for this workload (exec falls back to the tracepoint): file opens are not decided",
        );
    }
    let (d, considered) = decide_path(c, class, path, false);
    decided(c, class, Hook::LsmFileOpen, Verdict::Deny, d, considered)
}

/// Exec: under BPF LSM the binary's open for reading (`lsm/file_open`), then
/// `lsm/bprm_check_security`; without it, `sched_process_exec` (kill).
fn exec(c: &CompiledRecord, path: &str, notes: &mut Vec<String>) -> (Check, Vec<Check>) {
    let r = &c.record;
    if r.flags & flags::HAS_PATH_RULES == 0 {
        return (undecided(c, op::EXEC, NO_PATH_RULES), Vec::new());
    }
    if path == super::compile::ANONYMOUS {
        return (anonymous(c, notes), Vec::new());
    }
    if r.flags & flags::EXEC_VIA_TRACEPOINT != 0 {
        notes.push(
            "no BPF LSM path hooks: exec is decided at sched_process_exec, after it succeeded, on the file the \
             kernel loaded (its identity for an exact-file deny, then its path resolved in the kernel); a denied \
             exec kills the new image before its first instruction"
                .to_string(),
        );
        let (d, considered) = decide_path(c, op::EXEC, path, true);
        return (decided(c, op::EXEC, Hook::ExecTracepoint, Verdict::Kill, d, considered), Vec::new());
    }
    notes.push(
        "an exec opens the binary for reading first (a file.read check); its interpreter and libraries are opened \
         for reading too, each a check of its own"
            .to_string(),
    );
    let (d, considered) = decide_path(c, op::FILE_READ, path, false);
    let read = decided(c, op::FILE_READ, Hook::LsmFileOpen, Verdict::Deny, d, considered);
    if read.enforced {
        return (read, Vec::new());
    }
    let (d, considered) = decide_path(c, op::EXEC, path, false);
    (decided(c, op::EXEC, Hook::LsmBprmCheck, Verdict::Deny, d, considered), vec![read])
}

/// An anonymous executable (memfd, deleted file) at `lsm/bprm_check_security`
/// or, without the BPF LSM path hooks, at `sched_process_exec` (a kill):
/// the `<anonymous>` entry (a rule or the built-in deny), else the default.
fn anonymous(c: &CompiledRecord, notes: &mut Vec<String>) -> Check {
    let r = &c.record;
    let tracepoint = r.flags & flags::EXEC_VIA_TRACEPOINT != 0;
    if tracepoint {
        notes.push(
            "no BPF LSM path hooks: an anonymous executable is decided at sched_process_exec; a denied one is \
             killed before its first instruction"
                .to_string(),
        );
    }
    let entry = c.paths.iter().find(|e| e.op == op::EXEC && e.pattern == forge_common::ANON_KEY_PATH);
    let (d, considered) = match entry {
        Some(e) => (
            Decision { action: e.rule.action, mode: e.rule.mode, rule_id: e.rule.rule_id }.under(r),
            vec![Considered::Path {
                pattern: super::compile::ANONYMOUS.to_string(),
                exact: true,
                rule_id: e.rule.rule_id,
                name: rule_of(c, e.rule.rule_id).map(|i| i.name),
                action: verdict_of(e.rule.action),
                mode: mode_of(e.rule.mode),
                matched: true,
                longest: true,
            }],
        ),
        None => (Decision::default_for(r, op::EXEC).under(r), vec![default_considered(r, op::EXEC)]),
    };
    let (hook, verdict) =
        if tracepoint { (Hook::ExecTracepoint, Verdict::Kill) } else { (Hook::LsmBprmCheck, Verdict::Deny) };
    decided(c, op::EXEC, hook, verdict, d, considered)
}

/// `cgroup/sock_create`: the class's one decision (a `net.raw` rule or the
/// default) for every raw or ICMP socket.
fn raw(c: &CompiledRecord) -> Check {
    let r = &c.record;
    let mut d = Decision::default_for(r, op::NET_RAW).under(r);
    if r.flags & flags::NET_RAW_MONITOR != 0 {
        d.mode = mode::MONITOR;
    }
    // Without the cgroup hooks, the LSM socket hook decides inet raw sockets too.
    let hook = if r.flags & flags::NET_VIA_LSM != 0 { Hook::LsmSocketCreate } else { Hook::CgroupSockCreate };
    decided(c, op::NET_RAW, hook, Verdict::Deny, d, vec![default_considered(r, op::NET_RAW)])
}

/// `lsm/unix_stream_connect` and `lsm/unix_may_send`: the socket's path
/// (walked in the kernel, a too-long path on its leading part) against the
/// class's path entries.
fn unix(c: &CompiledRecord, path: &str) -> Check {
    let r = &c.record;
    if r.flags & flags::UNIX_RULES == 0 {
        return undecided(
            c,
            op::NET_UNIX,
            "the record allows net.unix and has no net.unix rules: the unix socket hooks return at once",
        );
    }
    let (d, considered) = decide_path(c, op::NET_UNIX, path, true);
    decided(c, op::NET_UNIX, Hook::LsmUnixConnect, Verdict::Deny, d, considered)
}

/// `raw_tp/sys_enter`: the deny bitmap of the caller's ABI; a denied
/// syscall kills the caller.
fn syscall(c: &CompiledRecord, ev: u32) -> Check {
    let r = &c.record;
    if r.flags & flags::HAS_SYSCALL_RULES == 0 {
        return undecided(
            c,
            op::SYSCALL,
            "the record denies no syscall: the syscall tracepoint returns at once",
        );
    }
    let (abi, nr) = syscalls::from_event_nr(ev);
    let compat = abi == syscalls::Abi::I386;
    let id =
        if abi == syscalls::Abi::X32 { u64::from(nr) | forge_common::X32_SYSCALL_BIT } else { u64::from(nr) };
    let slot = forge_common::syscall_slot(compat, id);
    match r.syscall_decision(compat, id) {
        None => {
            let considered =
                vec![Considered::Syscall { nr: ev, slot, denied: false, monitor: false, rule_id: 0 }];
            let d =
                Decision { action: verdict::ALLOW, mode: r.mode, rule_id: forge_common::rule_id::DEFAULT };
            decided(c, op::SYSCALL, Hook::SysEnter, Verdict::Kill, d, considered)
        }
        Some((monitor, rule_id)) => {
            let considered = vec![Considered::Syscall { nr: ev, slot, denied: true, monitor, rule_id }];
            let m = if monitor || r.mode == mode::MONITOR { mode::MONITOR } else { mode::ENFORCE };
            let d = Decision { action: verdict::DENY, mode: m, rule_id };
            decided(c, op::SYSCALL, Hook::SysEnter, Verdict::Kill, d, considered)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Policy, compile};

    const FIRST: u32 = forge_common::rule_id::FIRST;

    fn compiled(body: &str) -> CompiledRecord {
        let text =
            format!("apiVersion: forgeone.dev/v1alpha1\nkind: Policy\nmetadata: {{name: t}}\nspec:\n{body}");
        let p = Policy::from_yaml(&text, "t.yaml").unwrap_or_else(|e| panic!("{e}"));
        compile(&p, "t.yaml", 1).unwrap_or_else(|e| panic!("{e}"))
    }

    const OPEN: &str = "  defaults: {exec: allow, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, net.unix: allow, syscall: allow}\n";

    fn with_rules(defaults: &str, rules: &str) -> CompiledRecord {
        compiled(&format!("{defaults}  rules:\n{rules}"))
    }

    fn eval(c: &CompiledRecord, op: &str) -> Evaluation {
        evaluate(c, &op.parse().unwrap_or_else(|e| panic!("{op}: {e}")))
    }

    /// `(verdict, mode, rule id, enforced)`.
    fn outcome(e: &Evaluation) -> (Verdict, Mode, u32, bool) {
        (e.verdict(), e.mode(), e.rule_id(), e.enforced())
    }

    const DENIED: (Verdict, Mode, bool) = (Verdict::Deny, Mode::Enforce, true);

    fn is(e: &Evaluation, (v, m, enforced): (Verdict, Mode, bool), rule: u32) {
        assert_eq!(outcome(e), (v, m, rule, enforced), "{}: {e:#?}", e.operation);
    }

    fn allowed(e: &Evaluation, rule: u32) {
        assert_eq!(
            (e.verdict(), e.rule_id(), e.enforced()),
            (Verdict::Allow, rule, false),
            "{}: {e:#?}",
            e.operation
        );
        assert!(!e.decision.reported);
    }

    #[test]
    fn operations_parse_and_print_back() {
        for s in [
            "exec /usr/bin/curl",
            "file.read /etc/shadow",
            "file.write /tmp/x",
            "net.connect 10.0.0.5:5432",
            "net.bind [::1]:80",
            "net.sendto 1.1.1.1:53",
            "syscall ptrace",
            "file.read /",
            "file.read /tmp/with space",
        ] {
            let o: Operation = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(o.to_string(), s);
        }
        assert_eq!("syscall 101".parse::<Operation>(), Ok(Operation::Syscall(101)));
        assert_eq!("syscall 101".parse::<Operation>().unwrap().to_string(), "syscall ptrace");
        assert_eq!("syscall 4000".parse::<Operation>().unwrap().to_string(), "syscall 4000");
        assert_eq!(
            "  net.bind   127.0.0.1:0 ".parse::<Operation>(),
            Ok(Operation::Bind("127.0.0.1:0".parse().unwrap()))
        );
    }

    #[test]
    fn bad_operations_say_what_is_wrong() {
        assert_eq!("".parse::<Operation>(), Err(OperationError::Empty));
        assert!(matches!("fly /x".parse::<Operation>(), Err(OperationError::Unknown(v)) if v == "fly"));
        assert!(matches!("process /x".parse::<Operation>(), Err(OperationError::Unknown(_))));
        assert!(matches!("exec".parse::<Operation>(), Err(OperationError::Missing { op: "exec", .. })));
        assert!(matches!("net.connect 10.0.0.5".parse::<Operation>(), Err(OperationError::Address { .. })));
        assert!(matches!("net.connect ::1:80".parse::<Operation>(), Err(OperationError::Address { .. })));
        assert!(matches!("syscall no_such".parse::<Operation>(), Err(OperationError::Syscall(..))));
        for p in ["relative", "/a/../b", "/a/./b", "/a//b", "/a/", "/a\0b"] {
            assert!(
                matches!(format!("file.read {p}").parse::<Operation>(), Err(OperationError::Path { .. })),
                "{p:?} should be refused"
            );
        }
    }

    #[test]
    fn net_first_match_in_record_order_with_overlapping_cidrs() {
        // Compiled order: denies first, the narrower CIDR first.
        let c = with_rules(
            OPEN,
            "    - {name: wide-allow, op: net.connect, action: allow, cidrs: [10.0.0.0/8]}\n    - {name: mid-deny, op: net.connect, action: deny, cidrs: [10.1.0.0/16]}\n    - {name: host-deny, op: net.connect, action: deny, cidrs: [10.1.2.3/32]}\n    - {name: lan-allow, op: net.connect, action: allow, cidrs: [10.1.2.0/24]}\n",
        );
        let e = eval(&c, "net.connect 10.1.2.3:80");
        is(&e, DENIED, FIRST + 2);
        assert_eq!(e.decision.hook, Some(Hook::CgroupConnect4));
        assert_eq!(e.decision.rule.as_ref().map(|r| r.name.as_str()), Some("host-deny"));
        assert_eq!(e.decision.considered.len(), 1, "the /32 deny is tried first");
        // Denies are tried before the /24 allow, so the /16 deny wins inside it.
        let e = eval(&c, "net.connect 10.1.2.4:80");
        is(&e, DENIED, FIRST + 1);
        let Considered::NetRule { matched: false, mismatches, .. } = &e.decision.considered[0] else {
            panic!()
        };
        assert_eq!(
            mismatches,
            &[NetMismatch::Address { addr: "10.1.2.4".parse().unwrap(), cidr: "10.1.2.3/32".into() }]
        );
        allowed(&eval(&c, "net.connect 10.2.0.1:80"), FIRST);
        let e = eval(&c, "net.connect 11.0.0.1:80");
        allowed(&e, 0);
        assert!(matches!(
            e.decision.considered.last(),
            Some(Considered::Default { action: Verdict::Allow, .. })
        ));
        assert_eq!(e.decision.considered.len(), 5);
    }

    #[test]
    fn net_port_ranges_are_inclusive() {
        let c = with_rules(
            OPEN,
            "    - {name: r, op: net.connect, action: deny, cidrs: [127.0.0.0/8], ports: 5000-5999}\n",
        );
        for (port, denied) in [(4999, false), (5000, true), (5432, true), (5999, true), (6000, false)] {
            let e = eval(&c, &format!("net.connect 127.0.0.1:{port}"));
            assert_eq!(e.enforced(), denied, "port {port}");
            if !denied {
                let Considered::NetRule { mismatches, .. } = &e.decision.considered[0] else { panic!() };
                assert_eq!(mismatches, &[NetMismatch::Port { port, lo: 5000, hi: 5999 }]);
            }
        }
    }

    #[test]
    fn net_families_and_mapped_addresses() {
        let c = with_rules(
            OPEN,
            "    - {name: v4-all, ops: [net.connect, net.sendto], action: deny, cidrs: [0.0.0.0/0], ports: 53}\n    - {name: anywhere, op: net.bind, action: deny, ports: 22}\n    - {name: v6-lo, op: net.connect, action: deny, cidrs: [\"::1/128\"], ports: 80}\n",
        );
        is(&eval(&c, "net.connect 8.8.8.8:53"), DENIED, FIRST);
        let e = eval(&c, "net.connect [::1]:53");
        allowed(&e, 0);
        assert!(e.decision.considered.iter().any(|x| matches!(
            x,
            Considered::NetRule { mismatches, .. }
                if mismatches.contains(&NetMismatch::Family { rule: "IPv4", operation: "IPv6" })
        )));
        // A rule without CIDRs covers both families.
        is(&eval(&c, "net.bind 127.0.0.1:22"), DENIED, FIRST + 1);
        is(&eval(&c, "net.bind [::1]:22"), DENIED, FIRST + 1);
        assert_eq!(eval(&c, "net.bind [::1]:22").decision.hook, Some(Hook::CgroupBind6));
        is(&eval(&c, "net.connect [::1]:80"), DENIED, FIRST + 2);
        allowed(&eval(&c, "net.connect [::2]:80"), 0);
        // An IPv4-mapped destination is decided by the IPv4 rules, whichever hook sees it.
        let e = eval(&c, "net.connect [::ffff:8.8.8.8]:53");
        is(&e, DENIED, FIRST);
        assert_eq!(e.decision.hook, Some(Hook::CgroupConnect6));
        assert!(e.notes.iter().any(|n| n.contains("IPv4-mapped")));
        let e = eval(&c, "net.sendto [::ffff:8.8.8.8]:53");
        is(&e, DENIED, FIRST);
        assert_eq!(e.decision.hook, Some(Hook::CgroupSendmsg4));
        // The unspecified address is where Linux sends it: loopback.
        is(&eval(&c, "net.connect [::]:80"), DENIED, FIRST + 2);
        let c = with_rules(
            OPEN,
            "    - {name: lo, ops: [net.connect, net.sendto], action: deny, cidrs: [127.0.0.0/8], ports: 80}\n",
        );
        is(&eval(&c, "net.connect 0.0.0.0:80"), DENIED, FIRST);
        is(&eval(&c, "net.connect [::ffff:0.0.0.0]:80"), DENIED, FIRST);
        is(&eval(&c, "net.sendto 0.0.0.0:80"), DENIED, FIRST);
        allowed(&eval(&c, "net.connect 0.0.0.0:81"), 0);
    }

    #[test]
    fn net_defaults_and_ops_mismatch() {
        let c = with_rules(
            "  defaults: {net.connect: deny, net.bind: allow, net.sendto: deny, exec: allow, file.read: allow, file.write: allow, syscall: allow}\n",
            "    - {name: dns, op: net.sendto, action: allow, cidrs: [127.0.0.53/32], ports: 53}\n",
        );
        let e = eval(&c, "net.connect 127.0.0.53:53");
        is(&e, DENIED, 0);
        let Considered::NetRule { mismatches, .. } = &e.decision.considered[0] else { panic!() };
        assert_eq!(mismatches, &[NetMismatch::Op { covers: vec![Op::NetSendto] }]);
        allowed(&eval(&c, "net.sendto 127.0.0.53:53"), FIRST);
        is(&eval(&c, "net.sendto 127.0.0.53:54"), DENIED, 0);
        allowed(&eval(&c, "net.bind 0.0.0.0:80"), 0);
    }

    #[test]
    fn monitor_mode_overrides_rule_modes() {
        let rules = "    - {name: r, op: net.connect, action: deny, mode: enforce, cidrs: [127.0.0.1/32]}\n    - {name: s, op: syscall, action: deny, syscalls: [unshare]}\n";
        let c = with_rules(&format!("  mode: monitor\n{OPEN}"), rules);
        let e = eval(&c, "net.connect 127.0.0.1:80");
        is(&e, (Verdict::Deny, Mode::Monitor, false), FIRST);
        assert!(e.decision.reported, "a monitored deny is reported");
        is(&eval(&c, "syscall unshare"), (Verdict::Kill, Mode::Monitor, false), FIRST + 1);
        // A monitor-mode default in a monitor record.
        let c = with_rules("  mode: monitor\n  defaults: {net.bind: deny}\n", rules);
        is(&eval(&c, "net.bind 127.0.0.1:80"), (Verdict::Deny, Mode::Monitor, false), 0);
        // A rule in monitor mode inside an enforcing record stays monitor; the rest enforce.
        let c = with_rules(
            OPEN,
            "    - {name: watch, op: net.connect, action: deny, mode: monitor, cidrs: [127.0.0.1/32]}\n    - {name: s, op: syscall, action: deny, mode: monitor, syscalls: [unshare]}\n    - {name: k, op: syscall, action: deny, syscalls: [setns]}\n",
        );
        is(&eval(&c, "net.connect 127.0.0.1:80"), (Verdict::Deny, Mode::Monitor, false), FIRST);
        is(&eval(&c, "syscall unshare"), (Verdict::Kill, Mode::Monitor, false), FIRST + 1);
        is(&eval(&c, "syscall setns"), (Verdict::Kill, Mode::Enforce, true), FIRST + 2);
    }

    #[test]
    fn paths_longest_prefix_and_exact_files() {
        let c = with_rules(
            OPEN,
            "    - {name: no-etc, op: file.read, action: deny, paths: [/etc/]}\n    - {name: ssl-ok, op: file.read, action: allow, paths: [/etc/ssl/]}\n    - {name: no-key, op: file.read, action: deny, paths: [/etc/ssl/private.key]}\n    - {name: no-etc-file, op: file.write, action: deny, paths: [/etc]}\n",
        );
        is(&eval(&c, "file.read /etc/shadow"), DENIED, FIRST);
        allowed(&eval(&c, "file.read /etc/ssl/cert.pem"), FIRST + 1);
        is(&eval(&c, "file.read /etc/ssl/private.key"), DENIED, FIRST + 2);
        // An exact file matches that file only, not a longer name.
        allowed(&eval(&c, "file.read /etc/ssl/private.key2"), FIRST + 1);
        // `/etc/` does not cover `/etcfoo`, nor the directory `/etc` itself.
        allowed(&eval(&c, "file.read /etcfoo/x"), 0);
        allowed(&eval(&c, "file.read /etc"), 0);
        // The exact pattern `/etc` is the directory itself, not `/etcfoo` or what is below.
        is(&eval(&c, "file.write /etc"), DENIED, FIRST + 3);
        allowed(&eval(&c, "file.write /etcfoo"), 0);
        allowed(&eval(&c, "file.write /etc/passwd"), 0);
        let e = eval(&c, "file.read /etc/ssl/cert.pem");
        assert_eq!(e.decision.hook, Some(Hook::LsmFileOpen));
        let matched: Vec<(&str, bool)> = e
            .decision
            .considered
            .iter()
            .filter_map(|x| match x {
                Considered::Path { pattern, matched: true, longest, .. } => {
                    Some((pattern.as_str(), *longest))
                }
                _ => None,
            })
            .collect();
        assert_eq!(matched, vec![("/etc/", false), ("/etc/ssl/", true)]);
    }

    #[test]
    fn exec_under_lsm_passes_a_read_check_first() {
        let c = with_rules(
            OPEN,
            "    - {name: no-read-tmp, op: file.read, action: deny, paths: [/tmp/]}\n    - {name: no-curl, op: exec, action: deny, paths: [/usr/bin/curl]}\n    - {name: watch-read, op: file.read, action: deny, mode: monitor, paths: [/usr/bin/wget]}\n",
        );
        let e = eval(&c, "exec /tmp/tool");
        is(&e, DENIED, FIRST);
        assert_eq!((e.decision.class, e.decision.hook), (Op::FileRead, Some(Hook::LsmFileOpen)));
        assert!(e.prior.is_empty());
        let e = eval(&c, "exec /usr/bin/curl");
        is(&e, DENIED, FIRST + 1);
        assert_eq!((e.decision.class, e.decision.hook), (Op::Exec, Some(Hook::LsmBprmCheck)));
        assert_eq!(e.prior.len(), 1);
        assert_eq!(e.reported().count(), 1);
        // A monitored read deny is reported and the exec check still runs.
        let e = eval(&c, "exec /usr/bin/wget");
        allowed(&e, 0);
        let reported: Vec<(Op, Mode, u32)> = e.reported().map(|c| (c.class, c.mode, c.rule_id)).collect();
        assert_eq!(reported, vec![(Op::FileRead, Mode::Monitor, FIRST + 2)]);
    }

    #[test]
    fn exec_via_tracepoint_kills_and_files_are_undecided() {
        let mut c = with_rules(
            OPEN,
            "    - {name: no-bin, op: exec, action: deny, paths: [/opt/bin/]}\n    - {name: no-read, op: file.read, action: deny, paths: [/opt/]}\n",
        );
        c.record.flags |= flags::EXEC_VIA_TRACEPOINT;
        let e = eval(&c, "exec /opt/bin/tool");
        is(&e, (Verdict::Kill, Mode::Enforce, true), FIRST);
        assert_eq!(e.decision.hook, Some(Hook::ExecTracepoint));
        assert!(e.prior.is_empty());
        let e = eval(&c, "file.read /opt/secret");
        allowed(&e, 0);
        assert_eq!(e.decision.hook, None);
        // The tracepoint truncates an over-long path; a prefix still matches it.
        let long = format!("/opt/bin/{}", "x".repeat(300));
        is(&eval(&c, &format!("exec {long}")), (Verdict::Kill, Mode::Enforce, true), FIRST);
        c.record.flags &= !flags::EXEC_VIA_TRACEPOINT;
        // The LSM cannot resolve it into the key: the default decides.
        let e = eval(&c, &format!("file.read {long}"));
        allowed(&e, 0);
        assert!(matches!(e.decision.considered[0], Considered::PathTooLong { .. }));
    }

    #[test]
    fn path_key_limit_is_250_bytes_plus_nul() {
        let c = with_rules(OPEN, "    - {name: no-a, op: file.read, action: deny, paths: [/a/]}\n");
        let fits = format!("/a/{}", "x".repeat(247));
        assert_eq!(fits.len(), 250);
        is(&eval(&c, &format!("file.read {fits}")), DENIED, FIRST);
        allowed(&eval(&c, &format!("file.read {fits}y")), 0);
    }

    #[test]
    fn paths_are_only_decided_with_path_rules() {
        let c = with_rules(OPEN, "    - {name: r, op: net.bind, action: deny, ports: 1}\n");
        assert_eq!(c.record.flags & flags::HAS_PATH_RULES, 0);
        let e = eval(&c, "exec /usr/bin/anything");
        allowed(&e, 0);
        assert!(e.decision.hook.is_none() && e.decision.undecided.is_some());
        // A deny default for a path class is enough.
        let c = compiled("  defaults: {exec: deny, file.read: allow, file.write: allow}\n");
        let e = eval(&c, "exec /usr/bin/anything");
        is(&e, DENIED, 0);
        assert_eq!(e.prior.len(), 1, "the read check allowed it first");
        allowed(&eval(&c, "file.write /tmp/x"), 0);
    }

    #[test]
    fn a_hard_link_of_a_denied_file_is_the_denied_file() {
        let dir = std::env::temp_dir().join(format!("forge-eval-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (file, link, other) = (dir.join("secret"), dir.join("innocent"), dir.join("other"));
        std::fs::write(&file, "s").unwrap();
        std::fs::write(&other, "o").unwrap();
        let _ = std::fs::remove_file(&link);
        std::fs::hard_link(&file, &link).unwrap();
        let mut c = with_rules(
            OPEN,
            &format!(
                "    - {{name: no-secret, ops: [file.read, exec], action: deny, paths: [{}]}}\n",
                file.display()
            ),
        );
        let id = FIRST;
        for op in ["file.read", "exec"] {
            let e = eval(&c, &format!("{op} {}", link.display()));
            is(&e, DENIED, id);
            assert!(
                e.checks().any(|k| k.considered.iter().any(|x| matches!(x, Considered::SameFile { .. }))),
                "{e:#?}"
            );
            allowed(&eval(&c, &format!("{op} {}", other.display())), forge_common::rule_id::DEFAULT);
        }
        // The exec tracepoint (no BPF LSM path hooks) decides by identity
        // too, as a kill.
        c.record.flags |= flags::EXEC_VIA_TRACEPOINT;
        let e = eval(&c, &format!("exec {}", link.display()));
        is(&e, (Verdict::Kill, Mode::Enforce, true), id);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn anonymous_executables() {
        let c = with_rules(OPEN, "    - {name: no-curl, op: exec, action: deny, paths: [/usr/bin/curl]}\n");
        is(&eval(&c, "exec <anonymous>"), DENIED, forge_common::rule_id::ANONYMOUS_EXEC);
        // The entry is no path: a path exec never considers it.
        let e = eval(&c, "exec /usr/bin/true");
        allowed(&e, forge_common::rule_id::DEFAULT);
        assert!(e.checks().all(|k| k.considered.iter().all(|x| !x.to_string().contains('\u{2}'))), "{e:#?}");
        let c = with_rules(
            OPEN,
            "    - {name: no-curl, op: exec, action: deny, paths: [/usr/bin/curl]}\n    - {name: runc, op: exec, action: allow, paths: [\"<anonymous>\"]}\n",
        );
        allowed(&eval(&c, "exec <anonymous>"), FIRST + 1);
        assert!("file.read <anonymous>".parse::<Operation>().is_err());
        // Without the LSM path hooks the exec tracepoint decides it the same
        // way, as a kill.
        let mut c =
            with_rules(OPEN, "    - {name: no-curl, op: exec, action: deny, paths: [/usr/bin/curl]}\n");
        c.record.flags |= flags::EXEC_VIA_TRACEPOINT;
        let e = eval(&c, "exec <anonymous>");
        is(&e, (Verdict::Kill, Mode::Enforce, true), forge_common::rule_id::ANONYMOUS_EXEC);
        assert_eq!(e.decision.hook, Some(Hook::ExecTracepoint));
    }

    #[test]
    fn unix_sockets_by_path() {
        let c = with_rules(
            OPEN,
            "    - {name: no-docker, op: net.unix, action: deny, paths: [/run/docker.sock, /run/private/]}\n",
        );
        is(&eval(&c, "net.unix /run/docker.sock"), DENIED, FIRST);
        is(&eval(&c, "net.unix /run/private/a.sock"), DENIED, FIRST);
        allowed(&eval(&c, "net.unix /run/other.sock"), forge_common::rule_id::DEFAULT);
        assert_eq!(eval(&c, "net.unix /run/docker.sock").decision.hook, Some(Hook::LsmUnixConnect));
        assert_eq!(
            "net.unix run/x".parse::<Operation>(),
            Err(OperationError::Path { op: "net.unix", path: "run/x".into() })
        );
        assert!(
            eval(&c, "net.unix /run/docker.sock").notes.iter().any(|n| n.contains("only where BPF LSM runs"))
        );
    }

    #[test]
    fn the_path_guard_is_named_for_the_calls_it_refuses() {
        let guarded =
            with_rules(OPEN, "    - {name: no-secret, op: file.read, action: deny, paths: [/srv/s]}\n");
        for (op, words) in [
            ("syscall chroot", "lsm/path_chroot refuses chroot"),
            ("syscall fsconfig", "refuses fsconfig (a mount)"),
            ("syscall clone3", "lsm/userns_create refuses making a user namespace"),
            ("syscall i386:mount", "lsm/sb_mount, lsm/sb_kern_mount, lsm/move_mount refuses mount"),
        ] {
            let e = eval(&guarded, op);
            assert!(
                e.notes.iter().any(|n| n.contains(words) && n.contains("built-in path guard")),
                "{op}: {:?}",
                e.notes
            );
            // The sys_enter decision is unchanged: no syscall rule.
            assert_eq!(e.verdict(), Verdict::Allow, "{op}");
        }
        assert!(eval(&guarded, "syscall chroot").notes.iter().any(|n| n.contains("cannot be allowed")));
        assert!(
            eval(&guarded, "syscall unshare")
                .notes
                .iter()
                .any(|n| n.contains("allowing unshare by name lifts it"))
        );
        assert!(eval(&guarded, "syscall getpid").notes.is_empty());
        let open = with_rules(OPEN, "    - {name: r, op: syscall, action: deny, syscalls: [bpf]}\n");
        assert!(eval(&open, "syscall chroot").notes.iter().all(|n| !n.contains("path guard")));
    }

    #[test]
    fn syscalls_by_bitmap() {
        let c = with_rules(
            OPEN,
            "    - {name: no-ptrace, op: syscall, action: deny, syscalls: [ptrace, setns]}\n    - {name: watch-unshare, op: syscall, action: deny, mode: monitor, syscalls: [unshare]}\n",
        );
        let e = eval(&c, "syscall ptrace");
        is(&e, (Verdict::Kill, Mode::Enforce, true), FIRST);
        assert_eq!(e.decision.hook, Some(Hook::SysEnter));
        assert!(
            e.notes.iter().any(|n| n.contains("lsm/ptrace_traceme refuses the call's effect first")),
            "{:?}",
            e.notes
        );
        let e = eval(&c, "syscall 308");
        is(&e, (Verdict::Kill, Mode::Enforce, true), FIRST);
        assert!(e.notes.iter().any(|n| n.starts_with("the kill is sent at syscall entry")), "{:?}", e.notes);
        is(&eval(&c, "syscall unshare"), (Verdict::Kill, Mode::Monitor, false), FIRST + 1);
        // A hook that refuses only a part of the call says which part.
        let c2 = with_rules(OPEN, "    - {name: no-ns, op: syscall, action: deny, syscalls: [unshare]}\n");
        let e = eval(&c2, "syscall unshare");
        assert!(
            e.notes
                .iter()
                .any(|n| n.contains("lsm/userns_create (kernel 6.1+) refuses user-namespace creation first")
                    && n.contains("the rest of the call")),
            "{:?}",
            e.notes
        );
        allowed(&eval(&c, "syscall getppid"), 0);
        allowed(&eval(&c, "syscall 600"), 0);
        // Default deny: everything but the allowed ones, with the default's rule id.
        let c = compiled(
            "  defaults: {syscall: deny}\n  rules:\n    - {name: basics, op: syscall, action: allow, syscalls: [read, write]}\n",
        );
        allowed(&eval(&c, "syscall read"), 0);
        is(&eval(&c, "syscall openat"), (Verdict::Kill, Mode::Enforce, true), 0);
        // Numbers without a slot (unknown, or an unknown ABI's) are denied too.
        is(&eval(&c, "syscall 600"), (Verdict::Kill, Mode::Enforce, true), 0);
        is(&eval(&c, "syscall i386:4000"), (Verdict::Kill, Mode::Enforce, true), 0);
        allowed(&eval(&c, "syscall i386:read"), 0);
        is(&eval(&c, "syscall i386:openat"), (Verdict::Kill, Mode::Enforce, true), 0);
        // No syscall rules at all: nothing decides.
        let c = with_rules(OPEN, "    - {name: r, op: net.bind, action: deny, ports: 1}\n");
        assert!(eval(&c, "syscall ptrace").decision.undecided.is_some());
    }

    #[test]
    fn raw_sockets_one_decision_for_the_class() {
        // Not named: the class default (deny when the policy sets none).
        let c = with_rules(OPEN, "    - {name: r, op: net.bind, action: deny, ports: 1}\n");
        let e = eval(&c, "net.raw");
        is(&e, DENIED, 0);
        assert_eq!(e.decision.hook, Some(Hook::CgroupSockCreate));
        let c = with_rules(OPEN, "    - {name: ping, op: net.raw, action: allow}\n");
        allowed(&eval(&c, "net.raw"), FIRST);
        // Without the cgroup hooks, the LSM socket hook decides.
        let mut via_lsm = with_rules(OPEN, "    - {name: r, op: net.bind, action: deny, ports: 1}\n");
        via_lsm.record.flags |= flags::NET_VIA_LSM;
        let e = eval(&via_lsm, "net.raw");
        is(&e, DENIED, 0);
        assert_eq!(e.decision.hook, Some(Hook::LsmSocketCreate));
        assert!(e.notes.iter().any(|n| n.contains("AF_PACKET")), "{:?}", e.notes);
        // A bind of port 0 says a listen without a port is decided the same way.
        let e = eval(&c, "net.bind 0.0.0.0:0");
        assert!(e.notes.iter().any(|n| n.contains("lsm/socket_listen")), "{:?}", e.notes);
        assert!(!eval(&c, "net.bind 0.0.0.0:80").notes.iter().any(|n| n.contains("socket_listen")));
        let c = with_rules(OPEN, "    - {name: watch, op: net.raw, action: deny, mode: monitor}\n");
        is(&eval(&c, "net.raw"), (Verdict::Deny, Mode::Monitor, false), FIRST);
        // A raw rule takes no matchers.
        let text = format!(
            "apiVersion: forgeone.dev/v1alpha1\nkind: Policy\nmetadata: {{name: t}}\nspec:\n{OPEN}  rules:\n    - {{name: bad, op: net.raw, action: allow, cidrs: [10.0.0.0/8]}}\n"
        );
        let p = Policy::from_yaml(&text, "t.yaml").unwrap();
        assert!(compile(&p, "t.yaml", 1).is_err());
        assert_eq!("net.raw".parse::<Operation>().unwrap().to_string(), "net.raw");
    }

    #[test]
    fn syscalls_per_abi() {
        let c = with_rules(
            OPEN,
            "    - {name: no-mkdir, op: syscall, action: deny, syscalls: [mkdir, unshare]}\n    - {name: no-getpid, op: syscall, action: deny, syscalls: [getpid]}\n",
        );
        // i386 mkdir is 39, which is x86_64 getpid: each ABI has its table.
        is(&eval(&c, "syscall i386:mkdir"), (Verdict::Kill, Mode::Enforce, true), FIRST);
        is(&eval(&c, "syscall i386:39"), (Verdict::Kill, Mode::Enforce, true), FIRST);
        is(&eval(&c, "syscall i386:unshare"), (Verdict::Kill, Mode::Enforce, true), FIRST);
        is(&eval(&c, "syscall x32:mkdir"), (Verdict::Kill, Mode::Enforce, true), FIRST);
        is(&eval(&c, "syscall 39"), (Verdict::Kill, Mode::Enforce, true), FIRST + 1);
        is(&eval(&c, "syscall i386:getpid"), (Verdict::Kill, Mode::Enforce, true), FIRST + 1);
        allowed(&eval(&c, "syscall i386:getppid"), 0);
        assert_eq!("syscall i386:39".parse::<Operation>().unwrap().to_string(), "syscall i386:mkdir");
        // A denied socket call denies the i386 multiplexer that reaches it.
        let c =
            with_rules(OPEN, "    - {name: no-connect, op: syscall, action: deny, syscalls: [connect]}\n");
        is(&eval(&c, "syscall i386:socketcall"), (Verdict::Kill, Mode::Enforce, true), FIRST);
        allowed(&eval(&c, "syscall i386:ipc"), 0);
        // ... unless a rule names it.
        let c = with_rules(
            OPEN,
            "    - {name: no-connect, op: syscall, action: deny, syscalls: [connect]}\n    - {name: legacy, op: syscall, action: allow, syscalls: [socketcall]}\n",
        );
        allowed(&eval(&c, "syscall i386:socketcall"), 0);
    }

    #[test]
    fn backends_choose_the_hook() {
        let mut c = with_rules(
            OPEN,
            "    - {name: r, ops: [net.connect, net.sendto, net.bind], action: deny, cidrs: [127.0.0.0/8]}\n",
        );
        let lsm_only =
            Active { lsm: true, lsm_paths: true, lsm_userns: true, cgroup: false, tracepoint: false };
        c.record.flags |= backend_flags(&lsm_only);
        let e = eval(&c, "net.connect 127.0.0.1:80");
        is(&e, DENIED, FIRST);
        assert_eq!(e.decision.hook, Some(Hook::LsmSocketConnect));
        assert_eq!(eval(&c, "net.bind 127.0.0.1:80").decision.hook, Some(Hook::LsmSocketBind));
        // UDP sends (with a destination) at lsm/socket_sendmsg.
        let e = eval(&c, "net.sendto 127.0.0.1:53");
        is(&e, DENIED, FIRST);
        assert_eq!(e.decision.hook, Some(Hook::LsmSocketSendmsg));
        let all = Active { lsm: true, lsm_paths: true, lsm_userns: true, cgroup: true, tracepoint: true };
        assert_eq!(backend_flags(&all), 0);
        let tp = Active { lsm: false, lsm_paths: false, lsm_userns: false, cgroup: true, tracepoint: true };
        assert_eq!(backend_flags(&tp), flags::EXEC_VIA_TRACEPOINT);
    }

    #[test]
    fn observed_records_report_allowed_connects_and_sends() {
        let mut c = with_rules(OPEN, "    - {name: r, op: net.connect, action: deny, cidrs: [10.0.0.0/8]}\n");
        assert!(!eval(&c, "net.connect 127.0.0.1:80").decision.reported);
        c.record.flags |= flags::OBSERVE_NET;
        let e = eval(&c, "net.connect 127.0.0.1:80");
        assert_eq!((e.verdict(), e.decision.reported), (Verdict::Allow, true));
        assert!(eval(&c, "net.sendto 127.0.0.1:53").decision.reported);
        assert!(!eval(&c, "net.bind 127.0.0.1:80").decision.reported, "binds are not observed");
        assert!(eval(&c, "net.connect 10.0.0.1:80").decision.reported);
        // The LSM socket hooks do not observe.
        c.record.flags |= flags::NET_VIA_LSM;
        assert!(!eval(&c, "net.connect 127.0.0.1:80").decision.reported);
    }

    #[test]
    fn evaluations_serialize_for_json() {
        let c = with_rules(
            OPEN,
            "    - {name: no-db, op: net.connect, action: deny, cidrs: [10.0.0.0/24], ports: 5432}\n",
        );
        let v = serde_json::to_value(eval(&c, "net.connect 10.0.0.5:5432")).unwrap();
        assert_eq!(v["operation"], "net.connect 10.0.0.5:5432");
        assert_eq!(v["verdict"], "deny");
        assert_eq!(v["mode"], "enforce");
        assert_eq!(v["rule_id"], FIRST);
        assert_eq!(v["rule"]["name"], "no-db");
        assert_eq!(v["enforced"], true);
        assert_eq!(v["hook"], "cgroup_connect4");
        assert_eq!(v["considered"][0]["kind"], "net_rule");
        assert_eq!(v["considered"][0]["matched"], true);
        assert!(v.get("prior").is_none());
        let v = serde_json::to_value(eval(&c, "net.connect 10.0.1.5:5432")).unwrap();
        assert_eq!(v["considered"][0]["mismatches"][0]["kind"], "address");
        assert_eq!(v["considered"][1]["kind"], "default");
    }
}
