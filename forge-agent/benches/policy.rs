//! Policy compile time for 10, 1k and 10k rules, and the decode cost of an
//! event. Run with `cargo xtask bench` (or `cargo bench -p forge-agent`).

use std::{fmt::Write as _, hint::black_box};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use forge_agent::{
    events::DecisionEvent,
    policy::{Policy, compile},
};

/// A policy with `n` rules: mostly exec/file path rules (the kernel holds
/// 16k of those), 16 network rules and a syscall deny list.
fn policy_text(n: usize) -> String {
    let mut s = String::from(
        "apiVersion: forgeone.dev/v1alpha1\nkind: Policy\nmetadata: {name: bench}\nspec:\n  defaults: {exec: allow, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, net.unix: allow, syscall: allow}\n  rules:\n",
    );
    for i in 0..n {
        let _ = match i % 64 {
            0..=15 if i < 16 => writeln!(
                s,
                "    - {{name: r{i}, op: net.connect, action: deny, cidrs: [10.{}.0.0/16], ports: \"{}\"}}",
                i,
                1000 + i
            ),
            16 if i == 16 => writeln!(
                s,
                "    - {{name: r{i}, op: syscall, action: deny, syscalls: [ptrace, unshare, setns, kexec_load]}}"
            ),
            k if k % 3 == 0 => {
                writeln!(s, "    - {{name: r{i}, op: exec, action: deny, paths: [/opt/app{i}/bin/tool]}}")
            }
            k if k % 3 == 1 => {
                writeln!(s, "    - {{name: r{i}, op: file.read, action: deny, paths: [/srv/data{i}/]}}")
            }
            _ => {
                writeln!(s, "    - {{name: r{i}, op: file.write, action: allow, paths: [/var/lib/app{i}/]}}")
            }
        };
    }
    s
}

fn compile_rules(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy_compile");
    g.sample_size(10);
    for n in [10usize, 1_000, 10_000] {
        let text = policy_text(n);
        g.bench_with_input(BenchmarkId::new("parse+compile", n), &text, |b, text| {
            b.iter(|| {
                let p = Policy::from_yaml(black_box(text), "bench.yaml").expect("bench policy parses");
                black_box(compile(&p, "bench.yaml", 1).expect("bench policy compiles"))
            });
        });
    }
    g.finish();
}

fn decode_event(c: &mut Criterion) {
    let mut ev = forge_common::Event::zeroed();
    ev.hook = forge_common::hook::CGROUP_CONNECT4;
    ev.op = forge_common::op::NET_CONNECT;
    ev.verdict = forge_common::verdict::DENY;
    ev.family = forge_common::family::INET;
    // SAFETY: `Event` is plain old data; viewing it as bytes is sound.
    let bytes =
        unsafe { std::slice::from_raw_parts((&raw const ev).cast::<u8>(), size_of::<forge_common::Event>()) }
            .to_vec();
    c.bench_function("event_decode", |b| b.iter(|| black_box(DecisionEvent::from_bytes(black_box(&bytes)))));
}

fn evaluate_ops(c: &mut Criterion) {
    use forge_agent::policy::eval::{Operation, evaluate};
    let p = Policy::from_yaml(&policy_text(1_000), "bench.yaml").expect("bench policy parses");
    let compiled = compile(&p, "bench.yaml", 1).expect("bench policy compiles");
    let ops: Vec<Operation> = [
        "net.connect 10.3.1.1:1003",
        "net.connect 192.0.2.1:443",
        "exec /opt/app99/bin/tool",
        "file.read /srv/data100/x",
        "syscall ptrace",
        "syscall read",
    ]
    .iter()
    .map(|o| o.parse().expect("bench operation parses"))
    .collect();
    let mut g = c.benchmark_group("evaluator");
    g.throughput(criterion::Throughput::Elements(ops.len() as u64));
    g.bench_function("decisions_1k_rules", |b| {
        b.iter(|| {
            for op in &ops {
                black_box(evaluate(black_box(&compiled), op));
            }
        });
    });
    g.finish();
}

criterion_group!(benches, compile_rules, decode_event, evaluate_ops);
criterion_main!(benches);
