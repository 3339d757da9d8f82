//! Differential test: the userspace evaluator (`forge_agent::policy::eval`)
//! against the real kernel programs.
//!
//! Random policies (a fixed-seed xorshift generator; `FORGE_DIFF_SEED`
//! overrides the seed) govern one real cgroup in turn. For each, random
//! operations run in processes inside the cgroup, and for every operation
//! the kernel must agree with the evaluator, run on the very record the
//! kernel holds (read back from the map):
//! - the outcome: an enforced deny is EPERM, an enforced kill is SIGKILL,
//!   anything else lets the operation through (it succeeds, or fails for an
//!   ordinary reason such as ECONNREFUSED);
//! - the decision events the operation's process caused: exactly the checks
//!   the evaluator says are reported, in order, with the same class, verdict,
//!   mode, rule id and hook (an allowed operation sends none), from the
//!   current generation and about the operation's target.
//!
//! Syscalls are made through both tables a 64-bit process can reach: the
//! x86_64 one and, one in three, the i386 one (`int 0x80`), decided by the
//! rules that name the x86_64 call.
//!
//! Two trials: cgroup hooks + syscall tracepoint + exec tracepoint fallback
//! (runs on this host), and BPF LSM (paths, and network through the LSM socket
//! hooks; runs in the QEMU guests).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use forge_agent::{
    ebpf::Want,
    events::{DecisionEvent, Hook, Mode, Op, Target, Verdict},
    policy::{
        CompiledRecord, Policy, compile,
        eval::{self, Considered, Evaluation, Operation},
        syscalls::{self, Abi},
    },
    workload::Outcome,
};
use forge_common::flags;
use forge_tests::{Fixture, fail};
use libtest_mimic::Failed;

use crate::{free_port, listener};

/// How much one trial draws. The sequence of policies and operations depends
/// only on the seed; the time budget only decides how far along it a slow
/// machine (a software-emulated guest runs a process ~50x slower) gets.
struct Plan {
    name: &'static str,
    want: Want,
    lsm: bool,
    ops_per_policy: usize,
    max_policies: usize,
    /// Policies run whatever the time.
    min_policies: usize,
    /// No new policy starts after this.
    budget: Duration,
}

const DEFAULT_SEED: u64 = 0x5EED_F0E6_E0DE_0001;

/// Syscalls a policy may deny: harmless, and not made by the workload
/// process while it starts (so only the operation itself can trip them).
const DENIABLE: &[&str] = &["unshare", "setns", "getpgrp", "getsid", "sched_yield", "getuid", "getpriority"];
/// Never denied: an exec'd copy of the test binary calls it.
const ALWAYS_ALLOWED: &str = "getppid";

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }

    /// 1..=max distinct items.
    fn some<'a, T>(&mut self, xs: &'a [T], max: usize) -> Vec<&'a T> {
        let n = 1 + self.below(max.min(xs.len()));
        let mut idx: Vec<usize> = (0..xs.len()).collect();
        for i in 0..n {
            let j = i + self.below(xs.len() - i);
            idx.swap(i, j);
        }
        idx[..n].iter().map(|i| &xs[*i]).collect()
    }
}

/// Everything the operations aim at.
struct World {
    lsm: bool,
    /// TCP listeners on 127.0.0.1 (and ::1 where the port was free there).
    listening: Vec<u16>,
    /// Ports nothing listens on.
    free: Vec<u16>,
    /// Scratch tree for exec and file operations (removed on drop).
    root: PathBuf,
    exe: String,
    /// Top-level entries of `/` other than /tmp: read-allowed when a policy
    /// denies file.read by default, so the workload can still load.
    system: Vec<String>,
    /// Unix stream listeners at [`UNIX_SOCKETS`] (BPF LSM plan only).
    _unix: Vec<std::os::unix::net::UnixListener>,
}

const V4: &[&str] = &["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.1.5", "127.1.2.3", "0.0.0.0"];
const V6: &[&str] = &["::1", "::ffff:127.0.0.1", "::ffff:127.0.0.2", "::", "::ffff:0.0.0.0"];
const CIDRS: &[&str] = &[
    "127.0.0.1/32",
    "127.0.0.2/32",
    "127.0.0.0/31",
    "127.0.0.0/30",
    "127.0.0.0/24",
    "127.0.1.0/24",
    "127.0.0.0/16",
    "127.1.0.0/16",
    "127.0.0.0/8",
    "0.0.0.0/0",
    "10.0.0.0/8",
    "::1/128",
    "::/127",
    "::/0",
    "::ffff:127.0.0.0/104",
    "::ffff:127.0.0.1/128",
    "fe80::/10",
];
/// Relative to the scratch root; a trailing `/` is a directory prefix.
const PATTERNS: &[&str] =
    &["", "bin/", "bin/a", "bin/ab", "binx/", "bin", "sbin/c", "f/", "f/a", "f/ab", "f", "fx/", "w", "f/w"];
const EXECS: &[&str] = &["bin/a", "bin/ab", "binx/a", "sbin/c"];
const READS: &[&str] = &["f/a", "f/ab", "f", "fx/a", "fx", "g", "bin/a"];
const WRITES: &[&str] = &["f/w", "fx/w", "w", "f/a"];
/// Unix sockets the workload connects to, and `net.unix` patterns.
const UNIX_SOCKETS: &[&str] = &["u/a.sock", "u/ab.sock", "ux/a.sock"];
const UNIX_PATTERNS: &[&str] = &["u/", "u/a.sock", "u/ab.sock", "ux/", "u/a", ""];

impl World {
    fn new(lsm: bool) -> Result<Self, Failed> {
        let mut listening = Vec::new();
        for _ in 0..2 {
            let a = listener("127.0.0.1:0")?;
            // Also on ::1 when the port is free there (best effort).
            let _ = listener(&format!("[::1]:{}", a.port()));
            listening.push(a.port());
        }
        let mut free = Vec::new();
        while free.len() < 2 {
            let p = free_port("127.0.0.1:0")?;
            if !listening.contains(&p) && !free.contains(&p) {
                free.push(p);
            }
        }
        let root = PathBuf::from(format!("/tmp/forge-diff-{}-{}", std::process::id(), u8::from(lsm)));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["bin", "binx", "sbin", "f", "fx"] {
            std::fs::create_dir_all(root.join(d)).map_err(fail)?;
        }
        let exe_path = std::env::current_exe().map_err(fail)?;
        let exe = exe_path.display().to_string();
        // One copy of the test binary, hard-linked under every exec name.
        let copy = root.join("exe");
        std::fs::copy(&exe_path, &copy).map_err(fail)?;
        for e in EXECS {
            std::fs::hard_link(&copy, root.join(e)).map_err(fail)?;
        }
        for f in ["f/a", "f/ab", "fx/a", "g"] {
            std::fs::write(root.join(f), "x").map_err(fail)?;
        }
        let mut system = Vec::new();
        for entry in std::fs::read_dir("/").map_err(fail)? {
            let entry = entry.map_err(fail)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "tmp" {
                continue;
            }
            let dir = std::fs::metadata(entry.path()).is_ok_and(|m| m.is_dir());
            system.push(if dir { format!("/{name}/") } else { format!("/{name}") });
        }
        let mut unix = Vec::new();
        if lsm {
            for sock in UNIX_SOCKETS {
                let p = root.join(sock);
                std::fs::create_dir_all(p.parent().expect("a directory")).map_err(fail)?;
                unix.push(std::os::unix::net::UnixListener::bind(&p).map_err(fail)?);
            }
        }
        Ok(Self { lsm, listening, free, root, exe, system, _unix: unix })
    }

    fn path(&self, rel: &str) -> String {
        if rel.is_empty() {
            format!("{}/", self.root.display())
        } else {
            format!("{}/{rel}", self.root.display())
        }
    }

    fn pick_path(&self, rng: &mut Rng, rel: &[&str]) -> String {
        let r = rng.pick(rel);
        self.path(r)
    }

    fn ports(&self) -> Vec<u16> {
        self.listening.iter().chain(&self.free).copied().collect()
    }

    fn addr(&self, rng: &mut Rng, port: u16) -> SocketAddr {
        let ip: IpAddr = if rng.chance(70) { rng.pick(V4).parse() } else { rng.pick(V6).parse() }
            .expect("literal address");
        SocketAddr::new(ip, port)
    }

    fn random_op(&self, rng: &mut Rng) -> Operation {
        if rng.chance(4) {
            return Operation::Raw;
        }
        if self.lsm && rng.chance(8) {
            return Operation::Unix(self.pick_path(rng, UNIX_SOCKETS));
        }
        let ports = self.ports();
        // Cumulative weights of net, exec, file.read, file.write (the rest: syscalls).
        let (net, exec, read, write) = if self.lsm { (35, 60, 85, 100) } else { (55, 70, 75, 80) };
        match rng.below(100) {
            r if r < net => {
                let kind = rng.below(3);
                if kind == 0 {
                    let port = if rng.chance(20) { rng.pick(&ports) + 1 } else { *rng.pick(&ports) };
                    Operation::Connect(self.addr(rng, port))
                } else if kind == 1 {
                    let mut choices = self.free.clone();
                    choices.extend([0, self.listening[0]]);
                    let port = *rng.pick(&choices);
                    Operation::Bind(self.addr(rng, port))
                } else {
                    let port = *rng.pick(&ports);
                    Operation::SendTo(self.addr(rng, port))
                }
            }
            r if r < exec => Operation::Exec(self.pick_path(rng, EXECS)),
            r if r < read => Operation::FileRead(self.pick_path(rng, READS)),
            r if r < write => Operation::FileWrite(self.pick_path(rng, WRITES)),
            _ => {
                let name = if rng.chance(15) { ALWAYS_ALLOWED } else { rng.pick(DENIABLE) };
                // One in three through `int 0x80`: the i386 table, decided by
                // the rules that name the x86_64 call.
                if rng.chance(3) {
                    let nr = syscalls::number_in(Abi::I386, name).expect("known i386 syscall");
                    Operation::Syscall(syscalls::to_event_nr(Abi::I386, nr))
                } else {
                    Operation::Syscall(syscalls::number(name).expect("known syscall"))
                }
            }
        }
    }

    fn ports_field(&self, rng: &mut Rng) -> String {
        let ports = self.ports();
        let b = *rng.pick(&ports);
        match rng.below(7) {
            0 | 1 => String::new(),
            2 => format!(", ports: {b}"),
            3 => format!(", ports: \"{}-{b}\"", b - 1),
            4 => format!(", ports: \"{b}-{}\"", b + 1),
            5 => format!(", ports: \"{}-{}\"", b - 3, b + 3),
            _ => ", ports: \"0-1023\"".to_string(),
        }
    }

    fn policy(&self, rng: &mut Rng, name: &str) -> String {
        let word = |rng: &mut Rng, p: u64| if rng.chance(p) { "deny" } else { "allow" };
        let monitor = rng.chance(30);
        // Rule modes of their own; in a monitor-mode policy mostly `enforce`,
        // which the record's monitor mode must override.
        let mode = |rng: &mut Rng| match (monitor, rng.below(10)) {
            (false, 0 | 1) | (true, 0) => ", mode: monitor",
            (false, 2) | (true, 1..=4) => ", mode: enforce",
            _ => "",
        };
        let mut rules = Vec::new();
        let defaults = format!(
            "{{exec: {}, file.read: {}, file.write: {}, net.connect: {}, net.bind: {}, net.sendto: {}, net.unix: {}, syscall: allow}}",
            word(rng, 30),
            word(rng, if self.lsm { 30 } else { 10 }),
            word(rng, if self.lsm { 30 } else { 10 }),
            word(rng, 30),
            word(rng, 30),
            word(rng, 30),
            if self.lsm { word(rng, 30) } else { "allow" },
        );
        if self.lsm {
            for i in 0..rng.below(3) {
                let paths: Vec<String> =
                    rng.some(UNIX_PATTERNS, 2).into_iter().map(|p| format!("\"{}\"", self.path(p))).collect();
                rules.push(format!(
                    "{{name: unix-{i}, op: net.unix, action: {}{}, paths: [{}]}}",
                    word(rng, 60),
                    mode(rng),
                    paths.join(", ")
                ));
            }
        }
        if rng.chance(40) {
            rules.push(format!("{{name: raw, op: net.raw, action: {}{}}}", word(rng, 50), mode(rng)));
        }
        for i in 0..rng.below(6) {
            let ops: Vec<String> = rng
                .some(&["net.connect", "net.bind", "net.sendto"], 3)
                .into_iter()
                .map(|s| s.to_string())
                .collect();
            let cidrs = match rng.below(4) {
                0 => String::new(),
                _ => {
                    let c: Vec<String> = rng.some(CIDRS, 2).into_iter().map(|c| format!("\"{c}\"")).collect();
                    format!(", cidrs: [{}]", c.join(", "))
                }
            };
            let ports = self.ports_field(rng);
            rules.push(format!(
                "{{name: net-{i}, ops: [{}], action: {}{}{cidrs}{ports}}}",
                ops.join(", "),
                word(rng, 60),
                mode(rng)
            ));
        }
        if !self.lsm {
            let mut pool: Vec<&str> = DENIABLE.to_vec();
            for i in 0..rng.below(3) {
                if pool.is_empty() {
                    break;
                }
                let picked: Vec<&str> = rng.some(&pool, 3).into_iter().copied().collect();
                pool.retain(|s| !picked.contains(s));
                rules.push(format!(
                    "{{name: sys-{i}, op: syscall, action: deny{}, syscalls: [{}]}}",
                    mode(rng),
                    picked.join(", ")
                ));
            }
            if rng.chance(30) {
                rules.push(format!(
                    "{{name: sys-ok, op: syscall, action: allow, syscalls: [{ALWAYS_ALLOWED}]}}"
                ));
            }
        }
        let classes: &[&[&str]] = if self.lsm {
            &[
                &["exec"],
                &["file.read"],
                &["file.write"],
                &["exec", "file.read"],
                &["file.read", "file.write"],
            ]
        } else {
            &[&["exec"], &["exec"], &["file.read"]]
        };
        for i in 0..rng.below(6) {
            let ops = rng.pick(classes).join(", ");
            let paths: Vec<String> =
                rng.some(PATTERNS, 2).into_iter().map(|p| format!("\"{}\"", self.path(p))).collect();
            rules.push(format!(
                "{{name: path-{i}, ops: [{ops}], action: {}{}, paths: [{}]}}",
                word(rng, 60),
                mode(rng),
                paths.join(", ")
            ));
        }
        // The workload process itself must be able to start.
        if defaults.contains("exec: deny") {
            rules.push(format!("{{name: self-exec, op: exec, action: allow, paths: [\"{}\"]}}", self.exe));
        }
        if self.lsm && defaults.contains("file.read: deny") {
            rules.push(format!(
                "{{name: self-read, op: file.read, action: allow, paths: [\"{}\"]}}",
                self.exe
            ));
            for (i, p) in self.system.iter().enumerate() {
                rules.push(format!("{{name: system-{i}, op: file.read, action: allow, paths: [\"{p}\"]}}"));
            }
        }
        let rules: String = rules.iter().map(|r| format!("    - {r}\n")).collect();
        format!(
            "apiVersion: forgeone.dev/v1alpha1
kind: Policy
metadata: {{name: {name}}}
spec:
  mode: {}
  selfProtect: false
  defaults: {defaults}
  rules:
{rules}",
            if monitor { "monitor" } else { "enforce" }
        )
    }

    /// A random policy that compiles (contradictions and overfull records
    /// are drawn again).
    fn valid_policy(&self, rng: &mut Rng, name: &str) -> Result<(String, CompiledRecord), Failed> {
        let mut last = String::new();
        for _ in 0..100 {
            let yaml = self.policy(rng, name);
            let compiled = Policy::from_yaml(&yaml, name)
                .map_err(|e| e.to_string())
                .and_then(|p| compile(&p, name, 1).map_err(|e| e.to_string()));
            match compiled {
                Ok(c) => return Ok((yaml, c)),
                Err(e) => last = e,
            }
        }
        Err(format!("no valid random policy in 100 draws; last error: {last}").into())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The workload action performing `op`.
fn action(op: &Operation) -> String {
    match op {
        Operation::Connect(a) => format!("connect {a}"),
        Operation::Bind(a) => format!("bind {a}"),
        Operation::SendTo(a) => format!("sendto {a}"),
        Operation::Syscall(nr) => match syscalls::from_event_nr(*nr) {
            (Abi::I386, n) => format!("syscall32 {}", syscalls::name_in(Abi::I386, n).unwrap_or("?")),
            _ => format!("syscall {}", syscalls::name(*nr).unwrap_or("?")),
        },
        Operation::Exec(p) => format!("exec {p}"),
        Operation::FileRead(p) => format!("open-read {p}"),
        Operation::FileWrite(p) => format!("open-write {p}"),
        Operation::Raw => "raw-socket 4".to_string(),
        Operation::Unix(p) => format!("unix-connect {p}"),
    }
}

/// The operations the workload action for `op` performs, in order: a UDP
/// send first binds its socket to the unspecified address, port 0 (Rust's
/// `UdpSocket` cannot send unbound), which the bind hooks decide too.
fn steps(op: &Operation) -> Vec<Operation> {
    match op {
        Operation::SendTo(a) => {
            let any: IpAddr = if a.is_ipv4() { [0u8; 4].into() } else { [0u8; 16].into() };
            vec![Operation::Bind(SocketAddr::new(any, 0)), op.clone()]
        }
        other => vec![other.clone()],
    }
}

/// The evaluations of `steps` up to the first one the kernel stops.
fn evaluate_steps(c: &CompiledRecord, op: &Operation) -> Vec<Evaluation> {
    let mut out = Vec::new();
    for step in steps(op) {
        let ev = eval::evaluate(c, &step);
        let stop = ev.enforced();
        out.push(ev);
        if stop {
            break;
        }
    }
    out
}

/// What one decision event (or evaluator check) says.
type Said = (Op, Verdict, Mode, u32, Hook);

fn said_by(e: &DecisionEvent) -> Said {
    (e.op, e.verdict, e.mode, e.rule_id, e.hook)
}

/// Failures that still let the operation through the hooks.
const ORDINARY: &[i32] = &[libc::ECONNREFUSED, libc::EADDRINUSE, libc::EBADF];

/// The differences between the evaluator and the kernel for one operation
/// (its evaluated steps, the last one deciding).
fn compare(evs: &[Evaluation], seen: Outcome, events: &[&DecisionEvent], generation: u64) -> Vec<String> {
    let mut out = Vec::new();
    let ev = evs.last().expect("at least one step");
    let expected_outcome = match (ev.enforced(), ev.verdict()) {
        (true, Verdict::Kill) => Some(Outcome::Signal(libc::SIGKILL)),
        (true, _) => Some(Outcome::Errno(libc::EPERM)),
        (false, _) => None,
    };
    match (expected_outcome, seen) {
        (Some(want), got) if want != got => out.push(format!("evaluator: {want}; kernel: {got}")),
        (None, Outcome::Ok) => {}
        (None, Outcome::Errno(e)) if ORDINARY.contains(&e) => {}
        (None, got) => out.push(format!("evaluator: let through; kernel: {got}")),
        _ => {}
    }
    let want: Vec<(Said, &Operation)> = evs
        .iter()
        .flat_map(|ev| {
            ev.reported().map(move |c| {
                let hook = c.hook.expect("a reported check has a hook");
                ((c.class, c.verdict, c.mode, c.rule_id, hook), &ev.operation)
            })
        })
        .collect();
    let got: Vec<Said> = events.iter().map(|e| said_by(e)).collect();
    let want_said: Vec<Said> = want.iter().map(|(s, _)| *s).collect();
    if want_said != got {
        out.push(format!("events: evaluator {want_said:?}; kernel {got:?}"));
        return out;
    }
    for (e, (_, op)) in events.iter().zip(&want) {
        if e.generation != generation {
            out.push(format!("event from generation {} (current {generation}): {e}", e.generation));
        }
        let about = match (op, &e.target) {
            (
                Operation::Connect(a) | Operation::Bind(a) | Operation::SendTo(a),
                Target::Addr { port, .. },
            ) => *port == a.port(),
            (Operation::Syscall(nr), Target::Syscall { nr: got }) => nr == got,
            (Operation::Raw, Target::Socket { ipv6: false, sock_type: 3, protocol: 1 }) => true,
            (
                Operation::Exec(p) | Operation::FileRead(p) | Operation::FileWrite(p) | Operation::Unix(p),
                Target::Path { path },
            ) => p == path,
            _ => false,
        };
        if !about {
            out.push(format!("event about another target: {e}"));
        }
    }
    out
}

#[derive(Default)]
struct Tally {
    ops: usize,
    events: usize,
    by: BTreeMap<String, usize>,
}

impl Tally {
    fn add(&mut self, op: &Operation, ev: &Evaluation, events: usize) {
        self.ops += 1;
        self.events += events;
        let what = match (ev.verdict(), ev.mode(), ev.decision.hook) {
            (_, _, None) => "undecided".to_string(),
            (Verdict::Allow, _, _) if ev.reported().next().is_some() => "allowed+reported".to_string(),
            (Verdict::Allow, _, _) => "allowed".to_string(),
            (v, Mode::Monitor, _) => format!("would-{v}"),
            (v, Mode::Enforce, _) => v.to_string(),
        };
        let verb = Op::from_tag(op.class()).map_or("?", Op::as_str);
        let at = ev.decision.class.as_str();
        let at = if at == verb { String::new() } else { format!(" (at its {at})") };
        *self.by.entry(format!("{verb}{at} {what}")).or_default() += 1;
        let rule = if ev.rule_id() >= forge_common::rule_id::FIRST { "by a rule" } else { "by a default" };
        *self.by.entry(format!("(decided {rule})")).or_default() += 1;
        // A monitor-mode record turning a rule written to enforce into monitor.
        let own_enforce = ev.decision.considered.iter().any(|x| match x {
            Considered::NetRule { matched: true, mode, .. }
            | Considered::Path { longest: true, mode, .. } => *mode == Mode::Enforce,
            _ => false,
        });
        if ev.decision.reported && ev.mode() == Mode::Monitor && own_enforce {
            *self
                .by
                .entry(format!("(monitor record over an enforce {} rule)", ev.decision.class))
                .or_default() += 1;
        }
        if ev.notes.iter().any(|n| n.contains("IPv4-mapped")) {
            *self.by.entry("(IPv4-mapped address)".into()).or_default() += 1;
        }
        // The exec names are hard links of one file: an exact-file deny of
        // one decides the others by identity (BPF LSM).
        if ev.checks().any(|c| c.considered.iter().any(|x| matches!(x, Considered::SameFile { .. }))) {
            *self.by.entry("(same file by another path)".into()).or_default() += 1;
        }
    }

    fn count(&self, part: &str) -> usize {
        self.by.iter().filter(|(k, _)| k.contains(part)).map(|(_, n)| n).sum()
    }
}

fn seed() -> u64 {
    std::env::var("FORGE_DIFF_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SEED)
}

fn run(plan: &Plan) -> Result<(), Failed> {
    let seed = seed();
    let mut rng = Rng(seed);
    let world = World::new(plan.lsm)?;
    let (first, compiled) = world.valid_policy(&mut rng, "diff-0")?;
    let start = Instant::now();
    let mut f = Fixture::new(plan.name, &first, plan.want)?;
    let active = f.agent_mut().writer.handles().active;
    let (mut yaml, mut compiled) = (first, compiled);
    let mut tally = Tally::default();
    let mut disagreements: Vec<String> = Vec::new();
    let mut policies = 0;
    for p in 0..plan.max_policies {
        if p >= plan.min_policies && start.elapsed() > plan.budget {
            break;
        }
        policies += 1;
        if p > 0 {
            // Some records also ask the cgroup hooks to report allowed connects and sends.
            let observe = !plan.lsm && rng.chance(30);
            f.agent_mut().writer.set_observe_net(observe);
            let (y, _) = world.valid_policy(&mut rng, &format!("diff-{p}"))?;
            let (_, c) = f.swap(&y)?;
            (yaml, compiled) = (y, c);
        }
        // Evaluate on the record the kernel holds; it must be the compiled
        // one plus the writer's backend flags.
        let cgroup_id = f.cgroup.id;
        let live = f.agent_mut().writer.record(cgroup_id).map_err(fail)?;
        let backend = flags::NET_VIA_LSM | flags::EXEC_VIA_TRACEPOINT;
        let mut expect = compiled.record;
        expect.generation = live.generation;
        expect.flags |= eval::backend_flags(&active) | (live.flags & flags::OBSERVE_NET);
        // The writer's inode entries: exact-file denies of files that exist.
        let same_files = forge_agent::policy::identity::inode_entries(
            &compiled.paths,
            forge_agent::policy::identity::FileId::of,
        );
        if !same_files.is_empty() {
            expect.flags |= flags::INODE_RULES;
        }
        if expect != live || live.flags & backend != eval::backend_flags(&active) {
            return Err(format!(
                "policy {p}: the kernel's record is not the compiled one with backend flags"
            )
            .into());
        }
        let c = CompiledRecord { record: live, ..compiled.clone() };
        let _ = f.agent_mut().drain();
        let mut runs = Vec::new();
        for _ in 0..plan.ops_per_policy {
            let op = world.random_op(&mut rng);
            let evs = evaluate_steps(&c, &op);
            let (pid, outcome) = f.inside_pid(&action(&op))?;
            runs.push((op, evs, pid, outcome));
        }
        let expected: usize =
            runs.iter().flat_map(|(_, evs, _, _)| evs).map(|ev| ev.reported().count()).sum();
        let mut events = f.decisions(expected);
        events.extend(f.agent_mut().drain().into_iter().filter(|e| e.verdict != Verdict::Info));
        events.sort_by_key(|e| e.ts_ns);
        let mut by_pid: BTreeMap<u32, Vec<&DecisionEvent>> = BTreeMap::new();
        for e in &events {
            by_pid.entry(e.tgid).or_default().push(e);
        }
        let mut wrong = Vec::new();
        for (op, evs, pid, outcome) in &runs {
            let mine = by_pid.remove(pid).unwrap_or_default();
            tally.add(op, evs.last().expect("one step"), mine.len());
            let diffs = compare(evs, *outcome, &mine, live.generation);
            if !diffs.is_empty() {
                let detail = evs
                    .iter()
                    .flat_map(Evaluation::checks)
                    .map(|c| {
                        let considered: Vec<String> =
                            c.considered.iter().map(|x| format!("      {x}")).collect();
                        format!(
                            "    {} check at {:?}: {} {} rule {}\n{}",
                            c.class,
                            c.hook.map(|h| h.as_str()),
                            c.verdict,
                            c.mode,
                            c.rule_id,
                            considered.join("\n")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                wrong.push(format!("  {op} (pid {pid}):\n    {}\n{detail}", diffs.join("\n    ")));
            }
        }
        for (pid, evs) in by_pid {
            for e in evs {
                wrong.push(format!("  a decision event from pid {pid}, which ran no operation: {e}"));
            }
        }
        if !wrong.is_empty() {
            disagreements.push(format!("policy {p} (seed {seed:#x}):\n{yaml}\n{}", wrong.join("\n")));
        }
    }
    let by: Vec<String> = tally.by.iter().map(|(k, n)| format!("{n} {k}")).collect();
    eprintln!(
        "differential ({}, seed {seed:#x}): {policies} policies, {} operations compared with the kernel, {} decision events matched, in {:.1} s; {}",
        plan.name,
        tally.ops,
        tally.events,
        start.elapsed().as_secs_f64(),
        by.join(", ")
    );
    if !disagreements.is_empty() {
        let n = disagreements.len();
        disagreements.truncate(4);
        return Err(format!(
            "the evaluator and the kernel disagree under {n} of {policies} policies:\n{}",
            disagreements.join("\n\n")
        )
        .into());
    }
    // The run must have exercised both sides of every kind of decision (the
    // rarer kinds only when the whole plan ran).
    let mut needed = vec![" allowed", " deny", "by a rule", "by a default"];
    if policies == plan.max_policies {
        needed.extend([" would-", "over an enforce", "mapped"]);
        if plan.lsm {
            needed.extend(["same file", "net.unix deny", "net.unix allowed"]);
        }
        if !plan.lsm {
            needed.extend([" kill", "allowed+reported"]);
        }
    }
    for s in needed {
        if tally.count(s) == 0 {
            return Err(
                format!("no operation ended {s:?}: the random draw proved too little ({by:?})").into()
            );
        }
    }
    Ok(())
}

/// cgroup sock_addr hooks, the syscall tracepoint and the exec tracepoint
/// fallback, with no LSM (so file opens are undecided).
pub(crate) fn host() -> Result<(), Failed> {
    run(&Plan {
        name: "diffhost",
        want: Want { lsm: Some(false), cgroup: Some(true), tracepoint: Some(true) },
        lsm: false,
        ops_per_policy: 50,
        max_policies: 40,
        min_policies: 3,
        budget: Duration::from_secs(20),
    })
}

/// BPF LSM alone: exec and file opens by resolved path, connect and bind via
/// the LSM socket hooks (UDP sends are then undecided).
pub(crate) fn lsm() -> Result<(), Failed> {
    run(&Plan {
        name: "difflsm",
        want: Want { lsm: Some(true), cgroup: Some(false), tracepoint: Some(false) },
        lsm: true,
        ops_per_policy: 30,
        max_policies: 12,
        min_policies: 4,
        budget: Duration::from_secs(40),
    })
}
