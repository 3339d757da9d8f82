//! Kernel overhead: the same syscall-heavy loops run
//!   A. with no ForgeOne programs loaded,
//!   B. ungoverned, with the agent loaded and a 100-rule policy governing
//!      another cgroup (so every hook, including raw_tp/sys_enter, is attached),
//!   C. governed by that 100-rule policy (rules that do not deny the loop),
//!   D. ungoverned in a cgroup six levels deep, while cgroups at two other
//!      levels are governed (the hooks walk the task's ancestors at every
//!      governed level before they know it is ungoverned).
//! Each configuration runs REPEATS times, interleaved; the report gives the
//! median ns/op with min and max (A is the plain loop: its absolute cost),
//! and B/A, C/A and D/A as ratios from the same run.
//! Needs root. `cargo xtask bench` runs it; alone: `cargo bench -p forge-tests --bench kernel`.
//! With `FORGE_BENCH_SMOKE` set (`cargo xtask test`), one repeat of a
//! hundredth of each loop: a check that it runs, not a measurement.
#![allow(clippy::print_stdout, reason = "a benchmark's report is its output")]

use std::{
    fmt::Write as _,
    net::{TcpListener, TcpStream},
    process::Command,
    time::Instant,
};

use forge_agent::{
    agent::{Agent, AgentOptions},
    cgroup::Cgroup,
    ebpf::{Pins, Want},
    policy::{Policy, compile},
    workload::spawn_in,
};

const REPEATS: usize = 7;
const LOOP_ENV: &str = "FORGE_KBENCH_LOOP";

struct Loop {
    name: &'static str,
    iterations: u32,
}

/// The loops, by index in [`run_loop`].
const LOOPS: [Loop; 5] = [
    Loop { name: "getppid (syscall entry)", iterations: 1_000_000 },
    Loop { name: "open+close", iterations: 200_000 },
    Loop { name: "mmap+munmap of a file", iterations: 200_000 },
    Loop { name: "tcp connect+accept+close (loopback)", iterations: 5_000 },
    Loop { name: "fork+exec /bin/true", iterations: 300 },
];

/// One connect, accepted: it waits for the listener's close (end of
/// stream), so the accept queue never fills (a full queue drops SYNs, and
/// the retried connect costs a second); its own close is a reset
/// (SO_LINGER 0), so no TIME_WAIT is left on either side to use up the
/// ephemeral ports, which makes every later connect search for a free one.
fn connect_once(port: u16) {
    use std::io::Read as _;
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the bench listener");
    let off = libc::linger { l_onoff: 1, l_linger: 0 };
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Linger, &off).expect("SO_LINGER");
    let n = s.read(&mut [0u8; 1]).expect("read the listener's close");
    assert_eq!(n, 0, "the listener sends nothing");
}

/// A private read-only mapping of `file`'s first page, unmapped at once.
fn map_once(file: &std::fs::File) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a new private read-only mapping of an open file, which no
    // Rust reference points into; unmapped below.
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ, libc::MAP_PRIVATE, file.as_raw_fd(), 0)
    };
    assert!(p != libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
    // SAFETY: `p` is the mapping just made, of that length.
    let rc = unsafe { libc::munmap(p, 4096) };
    assert_eq!(rc, 0, "munmap");
}

/// In the child: run one loop and print ns per operation.
fn run_loop(spec: &str) -> ! {
    let mut it = spec.split(':');
    let which: usize = it.next().and_then(|s| s.parse().ok()).expect("loop index");
    let n: u32 = it.next().and_then(|s| s.parse().ok()).expect("iterations");
    let port: u16 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let mapped = std::fs::File::open("/etc/hostname").expect("open /etc/hostname");
    let start = Instant::now();
    for _ in 0..n {
        match which {
            0 => drop(std::hint::black_box(nix::unistd::getppid())),
            1 => drop(std::fs::File::open("/etc/hostname").expect("open /etc/hostname")),
            2 => map_once(&mapped),
            3 => connect_once(port),
            _ => {
                let st = Command::new("/bin/true").status().expect("exec /bin/true");
                assert!(st.success());
            }
        }
    }
    println!("{}", start.elapsed().as_nanos() / u128::from(n));
    std::process::exit(0);
}

fn policy_100() -> String {
    let mut s = String::from(
        "apiVersion: forgeone.dev/v1alpha1\nkind: Policy\nmetadata: {name: bench-100}\nspec:\n  defaults: {exec: allow, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, net.unix: allow, syscall: allow}\n  rules:\n",
    );
    for i in 0..16 {
        let _ = writeln!(
            s,
            "    - {{name: net{i}, op: net.connect, action: deny, cidrs: [10.{i}.0.0/16], ports: \"1-1024\"}}"
        );
    }
    let _ = writeln!(
        s,
        "    - {{name: sys, op: syscall, action: deny, syscalls: [ptrace, kexec_load, init_module, finit_module, delete_module]}}"
    );
    for i in 0..83 {
        let _ = writeln!(
            s,
            "    - {{name: path{i}, op: {}, action: deny, paths: [/opt/denied{i}/]}}",
            ["exec", "file.read", "file.write"][i % 3]
        );
    }
    s
}

fn measure(exe: &std::path::Path, cgroup: Option<&Cgroup>, which: usize, n: u32, port: u16) -> f64 {
    let mut cmd = Command::new(exe);
    cmd.env(LOOP_ENV, format!("{which}:{n}:{port}")).stdout(std::process::Stdio::piped());
    let child = match cgroup {
        Some(cg) => spawn_in(cg, &mut cmd).expect("spawn in cgroup"),
        None => cmd.spawn().expect("spawn"),
    };
    let out = child.wait_with_output().expect("loop output");
    assert!(out.status.success(), "loop {which} failed: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("ns per op")
}

fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn main() {
    if let Ok(spec) = std::env::var(LOOP_ENV) {
        run_loop(&spec);
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        println!("kernel overhead benchmark: SKIPPED (needs root)");
        return;
    }
    let exe = std::env::current_exe().expect("exe");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            drop(c);
        }
    });
    let id = std::process::id();
    let pin_root = format!("/sys/fs/bpf/forge-bench-{id}");
    let governed = Cgroup::create(&format!("forge-bench/{id}-governed")).expect("cgroup");
    let other = Cgroup::create(&format!("forge-bench/{id}-other")).expect("cgroup");
    // Level 6 (forge-bench is level 1): ungoverned, below no governed cgroup.
    let deep = Cgroup::create(&format!("forge-bench/{id}-deep/a/b/c/d")).expect("cgroup");
    // A second governed level (5), for configuration D.
    let nested = Cgroup::create(&format!("forge-bench/{id}-other/x/y/z")).expect("cgroup");
    let compiled = compile(&Policy::from_yaml(&policy_100(), "bench-100").expect("policy"), "bench-100", 1)
        .expect("compile");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let _guard = rt.enter();

    let (repeats, divide, swap_rounds) =
        if forge_tests::bench_smoke() { (1, 100, 5) } else { (REPEATS, 1, 50) };
    // samples[loop][config] = ns/op per repeat
    let mut samples = vec![vec![Vec::new(); 4]; LOOPS.len()];
    let mut backends = String::new();
    let mut swaps: Vec<f64> = Vec::new();
    for rep in 0..repeats {
        for config in [rep % 4, (rep + 1) % 4, (rep + 2) % 4, (rep + 3) % 4] {
            let agent = (config > 0).then(|| {
                let mut a = Agent::start(&AgentOptions {
                    pin_root: pin_root.clone().into(),
                    want: Want::default(),
                    ring_bytes: None,
                })
                .expect("agent");
                a.writer.govern(&governed, &compiled).expect("govern");
                if config == 1 || config == 3 {
                    // Ungoverned run: the policy governs another cgroup.
                    a.writer.govern(&other, &compiled).expect("govern other");
                    a.writer.ungovern(governed.id).expect("ungovern");
                }
                if config == 3 {
                    a.writer.govern(&nested, &compiled).expect("govern nested");
                }
                backends = format!("{:?}", a.writer.handles().active);
                a
            });
            for (i, l) in LOOPS.iter().enumerate() {
                let cg = match config {
                    2 => Some(&governed),
                    3 => Some(&deep),
                    _ => None,
                };
                samples[i][config].push(measure(&exe, cg, i, (l.iterations / divide).max(2), port));
            }
            if let Some(mut a) = agent {
                if config == 2 {
                    // Apply latency: a whole-record swap for one governed cgroup.
                    for _ in 0..swap_rounds {
                        let t = Instant::now();
                        a.writer.govern(&governed, &compiled).expect("swap");
                        swaps.push(t.elapsed().as_nanos() as f64);
                    }
                }
                a.remove_pins().expect("remove pins");
            }
        }
    }
    let _ = Pins::new(&pin_root).remove_all();
    let _ = governed.destroy();
    let _ = Cgroup::resolve(&format!("forge-bench/{id}-deep")).map(|c| c.destroy_tree());
    let _ = other.destroy_tree();

    println!("## Kernel overhead (ns per operation, {repeats} repeats: median [min-max])\n");
    println!(
        "Backends with the agent loaded: {backends}. 100-rule policy: 16 net, 1 syscall list, 83 path rules.\n"
    );
    println!(
        "| loop | A: no agent | B: agent, ungoverned | C: governed, 100 rules | D: ungoverned, 6 levels deep, 2 governed levels | B/A | C/A | D/A |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (i, l) in LOOPS.iter().enumerate() {
        let [a, b, c, d] = [0, 1, 2, 3].map(|k| stats(&mut samples[i][k]));
        let cell = |x: (f64, f64, f64)| format!("{:.0} [{:.0}-{:.0}]", x.1, x.0, x.2);
        println!(
            "| {} | {} | {} | {} | {} | {:.3} | {:.3} | {:.3} |",
            l.name,
            cell(a),
            cell(b),
            cell(c),
            cell(d),
            b.1 / a.1,
            c.1 / a.1,
            d.1 / a.1
        );
    }
    let (lo, med, hi) = stats(&mut swaps);
    println!(
        "\nApply (hot-swap of the 100-rule record, {} swaps): median {:.1} µs [{:.1}-{:.1}]",
        swaps.len(),
        med / 1e3,
        lo / 1e3,
        hi / 1e3
    );
}
