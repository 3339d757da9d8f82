//! Wasm capsules: package verification (3-of-5 signatures over a 1 MiB
//! module, beside plain sha3-256 and the sha3-256 tree digest of the same
//! bytes); the start of a capsule
//! whose entry point returns at once (compiled, from the disk cache, from
//! memory), through instantiation to that return; and the host-call gate's
//! cost per call: 10 000 calls per run with a policy gate against the same
//! run with an allow-all gate. Every call is journaled in both arms. Writes
//! to stdout are not a gated facility (the gate is not asked), so that
//! variant's difference is a control: the noise floor of the comparison.
//! The start is measured again for the same program as a WASI 0.2
//! component. Goals: verify ≤1 ms, warm start ≤100 µs, gate ≤100 ns per call. Run with
//! `cargo bench -p forge-agent --bench wasm`, or `cargo xtask bench`, whose
//! report adds the ratios derived from the medians of the same run.

use std::{
    fmt::Write as _,
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use forge_agent::{
    policy::{Policy, PolicySet, Tier, Workload},
    sign::{SigningKey, TrustConfig, sha3_256, sha3_256_tree, trust::TrustedKey},
    wasm::{
        Package, Runtime,
        cache::ModuleCache,
        gate::{AllowAll, Gate, PolicyGate},
        host::{Live, Sink, journal::Journal},
        manifest::{CapsuleManifest, Limits},
        runtime::{End, Prepared, Source, run},
    },
};

/// Builds the gate of one run.
type MakeGate<'a> = &'a dyn Fn() -> Box<dyn Gate>;

/// Host calls per run in the gate benchmarks.
const CALLS: u32 = 10_000;
/// Runs of each arm for the printed per-call difference.
const PAIRED_ROUNDS: usize = 101;

const CAPSULE_TOML: &str = "name = \"bench\"\nversion = 1\n\n[capabilities]\nclock = true\n";

const POLICY: &str = "apiVersion: forgeone.dev/v1alpha1
kind: Policy
metadata: {name: bench-capsule}
spec:
  capsule: {clock: allow}
";

/// `_start` returns at once.
const TINY: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;

/// A valid module of about 1 MiB: one data segment of pseudo-random bytes.
fn module_1mib() -> Vec<u8> {
    const LEN: usize = 1 << 20;
    let mut wat = String::with_capacity(3 * LEN + 200);
    wat.push_str("(module (memory (export \"memory\") 17) (func (export \"_start\")) (data (i32.const 0) \"");
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..LEN {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let _ = write!(wat, "\\{:02x}", x as u8);
    }
    wat.push_str("\"))");
    wat::parse_str(&wat).expect("the 1 MiB module assembles")
}

/// A loop making `CALLS` calls of `call` (which must leave errno 0 on the
/// stack, or the module traps).
fn loop_module(import: &str, call: &str, setup: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
             {import}
             (memory (export "memory") 1)
             (func (export "_start")
               (local $i i32)
               {setup}
               (loop $l
                 (if {call} (then unreachable))
                 (local.set $i (i32.add (local.get $i) (i32.const 1)))
                 (br_if $l (i32.lt_u (local.get $i) (i32.const {CALLS}))))))"#
    ))
    .expect("the loop module assembles")
}

fn clock_module() -> Vec<u8> {
    loop_module(
        r#"(import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))"#,
        "(call $clock (i32.const 0) (i64.const 1) (i32.const 8))",
        "",
    )
}

/// `fd_write` of 2 bytes to fd 1 (an iovec at 0, the count written at 8, the bytes at 16).
fn stdout_module() -> Vec<u8> {
    loop_module(
        r#"(import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))"#,
        "(call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))",
        "(i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 2)) \
         (i32.store16 (i32.const 16) (i32.const 0x0a78))",
    )
}

fn live(gate: Box<dyn Gate>) -> Live {
    let mut l = Live::new(gate, vec!["bench".into()], Vec::new(), 16);
    l.stdout = Sink::Discard;
    l.stderr = Sink::Discard;
    l
}

/// One run; panics unless the capsule returned normally after `calls` host calls.
fn run_once(prepared: &Prepared, limits: &Limits, gate: Box<dyn Gate>, calls: u64) {
    let r = run(prepared, "_start", limits, live(gate), Journal::live(None));
    assert_eq!(r.end, End::Exited { code: 0 }, "the bench capsule failed");
    assert_eq!(r.host_calls, calls);
    assert!(r.denied.is_empty(), "denied: {:?}", r.denied);
    black_box(r.output_sha3);
}

fn verify(c: &mut Criterion) {
    let module = module_1mib();
    let mut pkg = Package::build(CAPSULE_TOML.as_bytes().to_vec(), module).expect("the package builds");
    let keys: Vec<SigningKey> = (0..5).map(|_| SigningKey::generate().expect("a key")).collect();
    for k in &keys[..3] {
        pkg.sign(k).expect("signing");
    }
    let trusted = keys
        .iter()
        .enumerate()
        .map(|(i, k)| TrustedKey { key: k.public_key(), label: format!("k{i}") })
        .collect();
    let trust = TrustConfig::new(3, trusted, "bench trust").expect("a 3-of-5 trust configuration");
    let bytes = pkg.to_bytes();
    let v = Package::parse(&bytes).expect("parses").verify(&trust).expect("verifies");
    assert_eq!(v.signers.len(), 3);

    let mut g = c.benchmark_group("wasm_verify");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("sha3-256_1MiB", |b| b.iter(|| black_box(sha3_256(black_box(&bytes)))));
    g.bench_function("sha3-256-tree_1MiB", |b| b.iter(|| black_box(sha3_256_tree(black_box(&bytes)))));
    g.bench_function("parse+verify_3of5_1MiB", |b| {
        b.iter(|| {
            let p = Package::parse(black_box(&bytes)).expect("parses");
            black_box(p.verify(&trust).expect("verifies"))
        });
    });
    g.finish();
}

fn start(c: &mut Criterion) {
    let tiny = wat::parse_str(TINY).expect("the tiny module assembles");
    let limits = Limits::default();
    let mut g = c.benchmark_group("wasm_start");

    g.bench_function("cold_compile", |b| {
        b.iter(|| {
            let rt = Runtime::new(None);
            let p = rt.prepare(black_box(&tiny)).expect("prepares");
            debug_assert_eq!(p.source, Source::Compiled);
            run_once(&p, &limits, Box::new(AllowAll), 0);
        });
    });

    let dir = tempfile::tempdir().expect("a temporary directory");
    let first = Runtime::new(Some(ModuleCache::open(dir.path()).expect("the cache opens")))
        .prepare(&tiny)
        .expect("prepares");
    assert_eq!(first.source, Source::Compiled);
    let again = Runtime::new(Some(ModuleCache::open(dir.path()).expect("the cache opens")))
        .prepare(&tiny)
        .expect("prepares");
    assert_eq!(again.source, Source::DiskCache, "the disk cache is populated");
    g.bench_function("warm_disk_cache", |b| {
        b.iter(|| {
            let rt = Runtime::new(Some(ModuleCache::open(dir.path()).expect("the cache opens")));
            let p = rt.prepare(black_box(&tiny)).expect("prepares");
            debug_assert_eq!(p.source, Source::DiskCache);
            run_once(&p, &limits, Box::new(AllowAll), 0);
        });
    });

    let rt = Runtime::new(None);
    rt.prepare(&tiny).expect("prepares");
    g.bench_function("warm_memory_prepare+run", |b| {
        b.iter(|| {
            let p = rt.prepare(black_box(&tiny)).expect("prepares");
            debug_assert_eq!(p.source, Source::Memory);
            run_once(&p, &limits, Box::new(AllowAll), 0);
        });
    });

    let prepared = rt.prepare(&tiny).expect("prepares");
    g.bench_function("warm_memory_run", |b| b.iter(|| run_once(&prepared, &limits, Box::new(AllowAll), 0)));
    g.finish();
}

/// The same tiny program as a WASI 0.2 component (wrapped with the
/// preview1 adapter): compiled, from the disk cache, from memory.
fn start_component(c: &mut Criterion) {
    let tiny = wat::parse_str(TINY).expect("the tiny module assembles");
    let component = forge_agent::wasm::component::from_preview1(&tiny).expect("the component encodes");
    // Started as the agent starts a capsule: from its verified package,
    // whose module digest verification already checked.
    let key = SigningKey::generate().expect("a key");
    let trust = TrustConfig::new(1, vec![TrustedKey { key: key.public_key(), label: "k".into() }], "bench")
        .expect("a 1-of-1 trust configuration");
    let mut pkg = Package::build(CAPSULE_TOML.as_bytes().to_vec(), component.clone()).expect("builds");
    pkg.sign(&key).expect("signing");
    let pkg = pkg.verify(&trust).expect("verifies");
    let limits = Limits::default();
    let mut g = c.benchmark_group("wasm_start_component");
    g.bench_function("cold_compile", |b| {
        b.iter(|| {
            let p = Runtime::new(None).prepare(black_box(&component)).expect("prepares");
            debug_assert_eq!(p.source, Source::Compiled);
            run_once(&p, &limits, Box::new(AllowAll), 0);
        });
    });
    let dir = tempfile::tempdir().expect("a temporary directory");
    let cache = || Some(ModuleCache::open(dir.path()).expect("the cache opens"));
    assert_eq!(Runtime::new(cache()).prepare(&component).expect("prepares").source, Source::Compiled);
    let again = Runtime::new(cache()).prepare(&component).expect("prepares");
    assert_eq!(again.source, Source::DiskCache, "the disk cache is populated");
    g.bench_function("warm_disk_cache", |b| {
        b.iter(|| {
            let p = Runtime::new(cache()).prepare_verified(black_box(&pkg)).expect("prepares");
            debug_assert_eq!(p.source, Source::DiskCache);
            run_once(&p, &limits, Box::new(AllowAll), 0);
        });
    });
    let rt = Runtime::new(None);
    let prepared = rt.prepare(&component).expect("prepares");
    assert!(prepared.is_component());
    g.bench_function("warm_memory_run", |b| b.iter(|| run_once(&prepared, &limits, Box::new(AllowAll), 0)));
    g.finish();
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[allow(clippy::print_stdout, reason = "the per-call figures go beside criterion's report, on stdout")]
fn gate(c: &mut Criterion) {
    let caps = CapsuleManifest::parse(CAPSULE_TOML.as_bytes()).expect("the manifest parses").capabilities;
    let set = PolicySet::from_docs(vec![Policy::from_yaml(POLICY, "bench.yaml").expect("the policy parses")])
        .expect("a policy set");
    let limits = Limits::default();
    let rt = Runtime::new(None);
    let mut g = c.benchmark_group("wasm_gate");
    g.throughput(Throughput::Elements(u64::from(CALLS)));
    g.sample_size(20);

    let mut summary = String::new();
    for (name, module) in [("clock_time_get", clock_module()), ("fd_write_stdout", stdout_module())] {
        let prepared = rt.prepare(&module).expect("prepares");
        let w = Workload {
            digest: Some(format!("sha3-256:{}", prepared.digest.to_hex())),
            ..Workload::default()
        };
        let record = set.compile_for(&w, Tier::Verified, 1).expect("the policy compiles");
        assert!(record.capsule.clock, "the policy grants the clock");
        let policy_gate =
            || -> Box<dyn Gate> { Box::new(PolicyGate::new(caps.clone(), record.clone(), false)) };
        let allow_all = || -> Box<dyn Gate> { Box::new(AllowAll) };
        let runs: [(&str, MakeGate<'_>); 2] = [("policy_gate", &policy_gate), ("allow_all", &allow_all)];
        for (arm, make) in runs {
            g.bench_function(BenchmarkId::new(format!("{name}_x{CALLS}"), arm), |b| {
                b.iter_batched(
                    make,
                    |gate| run_once(&prepared, &limits, gate, u64::from(CALLS)),
                    BatchSize::SmallInput,
                );
            });
        }
        // The printed difference: the two arms alternated run by run, so
        // that load changing on the machine weighs on both alike.
        let mut times = [Vec::new(), Vec::new()];
        for _ in 0..PAIRED_ROUNDS {
            for (t, (_, make)) in times.iter_mut().zip(runs) {
                let gate = make();
                let start = Instant::now();
                run_once(&prepared, &limits, gate, u64::from(CALLS));
                t.push(start.elapsed());
            }
        }
        let medians = times.map(|mut t| median(&mut t));
        let (gated, open) = (medians[0], medians[1]);
        let per_call = (gated.as_nanos() as f64 - open.as_nanos() as f64) / f64::from(CALLS);
        let _ = writeln!(
            summary,
            "{name}: median run {:.1} µs with the policy gate, {:.1} µs with allow-all: \
             gate {per_call:+.1} ns per call; a host call takes {:.0} ns with allow-all",
            gated.as_nanos() as f64 / 1e3,
            open.as_nanos() as f64 / 1e3,
            open.as_nanos() as f64 / f64::from(CALLS),
        );
    }
    g.finish();
    print!(
        "\nwasm gate overhead ({CALLS} calls per run, every call journaled in both arms; medians of \
         {PAIRED_ROUNDS} runs of each arm, alternated):\n{summary}"
    );
}

criterion_group!(benches, verify, start, start_component, gate);
criterion_main!(benches);
