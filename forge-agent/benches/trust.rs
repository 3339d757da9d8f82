//! Anomaly scoring throughput: events scored per second on one core, for a
//! realistic stream (16 workloads past learning; mostly routine execs and
//! connects to known networks, some new destinations, denials and execs of
//! new binaries), and the same with the daemon's trace keeping (sampling,
//! elided counts, hash chain, signed checkpoints) after the scorer. The
//! baseline in the same run is `event_decode` (policy bench): the cost the
//! agent pays for every event anyway. Goal: ≥500k events/s per core for
//! scoring. Run with `cargo bench -p forge-agent --bench trust`.

use std::{hint::black_box, sync::Arc, time::Duration};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use forge_agent::{
    api::traces::{TraceSettings, Traces},
    cgroup::Cgroup,
    dna::Governed,
    events::{DecisionEvent, Hook, Mode, Op, Target, Verdict},
    policy::Tier,
    sign::SigningKey,
    trust::{ScoreConfig, Scorer, controller::Thresholds},
};

const WORKLOADS: u64 = 16;
const S: u64 = 1_000_000_000;

fn event(ts_ns: u64, cgroup_id: u64, hook: Hook, op: Op, verdict: Verdict, target: Target) -> DecisionEvent {
    DecisionEvent {
        ts_ns,
        cgroup_id,
        actual_cgroup_id: cgroup_id,
        generation: 1,
        pid: 1000,
        tgid: 1000,
        ppid: 1,
        comm: "worker".into(),
        hook,
        op,
        verdict,
        mode: Mode::Enforce,
        rule_id: 0,
        target,
    }
}

/// One kernel-time-ordered stream: `n` events spread over the workloads.
fn stream(n: u64, start_ns: u64) -> Vec<DecisionEvent> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ts = start_ns + i * 20_000;
            let cg = 100 + x % WORKLOADS;
            let addr = |a: String| Target::Addr { addr: a.parse().expect("an address"), port: 443 };
            match x % 100 {
                0..=49 => event(
                    ts,
                    cg,
                    Hook::ProcExec,
                    Op::Process,
                    Verdict::Info,
                    Target::Path {
                        path: ["/usr/bin/cc", "/usr/bin/ld", "/usr/bin/as"][(x >> 8) as usize % 3].into(),
                    },
                ),
                50..=89 => event(
                    ts,
                    cg,
                    Hook::CgroupConnect4,
                    Op::NetConnect,
                    Verdict::Allow,
                    addr(format!("10.0.{}.7", x % 4)),
                ),
                90..=94 => event(
                    ts,
                    cg,
                    Hook::CgroupConnect4,
                    Op::NetConnect,
                    Verdict::Allow,
                    addr(format!("198.51.{}.{}", (x >> 8) % 250, (x >> 16) % 250)),
                ),
                95..=97 => event(
                    ts,
                    cg,
                    Hook::LsmFileOpen,
                    Op::FileRead,
                    Verdict::Deny,
                    Target::Path { path: "/etc/shadow".into() },
                ),
                _ => event(
                    ts,
                    cg,
                    Hook::ProcExec,
                    Op::Process,
                    Verdict::Info,
                    Target::Path { path: format!("/tmp/x{}", x % 1000) },
                ),
            }
        })
        .collect()
}

/// A scorer whose workloads have learned the routine part of the stream.
fn learned(config: &ScoreConfig) -> Scorer {
    let mut s = Scorer::new(config.clone());
    for e in stream(20_000, 0).iter().filter(|e| {
        matches!(e.target, Target::Path { ref path } if path.starts_with("/usr"))
            || matches!(e.target, Target::Addr { addr, .. } if addr.to_string().starts_with("10."))
    }) {
        s.observe(e);
    }
    s
}

fn scoring(c: &mut Criterion) {
    let config = ScoreConfig { learning_ns: S, ..ScoreConfig::default() };
    let events = stream(1 << 20, 2 * S);
    let mut g = c.benchmark_group("trust");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(5));

    let mut scorer = learned(&config);
    let mut i = 0usize;
    g.bench_function("score_event", |b| {
        b.iter(|| {
            i = (i + 1) & (events.len() - 1);
            black_box(scorer.observe(black_box(&events[i])))
        });
    });

    let dir = tempfile::tempdir().expect("a temporary directory");
    let key = Arc::new(SigningKey::generate().expect("a key"));
    let mut traces = Traces::new(TraceSettings::new(dir.path(), key));
    for id in 100..100 + WORKLOADS {
        let cg = Cgroup { path: format!("/sys/fs/cgroup/bench-{id}").into(), id };
        let governed = Governed {
            ts_ns: 0,
            fresh: true,
            tier: Tier::Verified,
            policies: "bench".into(),
            generation: 1,
            cgroup_id: None,
            previous_cgroup_id: None,
            quarantine_at: vec![Tier::Compromised],
            scoring: config.clone(),
            thresholds: Thresholds::default(),
            rules: Vec::new(),
        };
        traces.govern(&cg, governed);
    }
    let mut scorer = learned(&config);
    let mut i = 0usize;
    g.bench_function("score_and_trace_event", |b| {
        b.iter(|| {
            i = (i + 1) & (events.len() - 1);
            let e = &events[i];
            let o = scorer.observe(black_box(e));
            traces.event(e, &o);
        });
    });
    g.finish();
    assert_eq!(traces.errors, 0, "trace writes failed: {:?}", traces.last_error);
}

criterion_group!(benches, scoring);
criterion_main!(benches);
