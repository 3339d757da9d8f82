//! Trace appends per second: buffered with signed checkpoints every 1024
//! records, with and without an fsync at each checkpoint, and with no
//! checkpoints at all (what signing costs). Criterion reports elements/s =
//! appends/s. Run with `cargo bench -p forge-agent --bench dna`.

use std::{
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use forge_agent::{
    dna::{FsyncPolicy, Identity, TraceWriter, WriterConfig},
    events::{DecisionEvent, Hook, Mode, Op, Target, Verdict},
    sign::SigningKey,
};

/// A typical decision: a denied file open with a path.
fn event(i: u64) -> DecisionEvent {
    DecisionEvent {
        ts_ns: i,
        cgroup_id: 4242,
        actual_cgroup_id: 4242,
        generation: 3,
        pid: 1000,
        tgid: 1000,
        ppid: 1,
        comm: "python3".into(),
        hook: Hook::LsmFileOpen,
        op: Op::FileRead,
        verdict: Verdict::Deny,
        mode: Mode::Enforce,
        rule_id: 17,
        target: Target::Path { path: "/etc/shadow".into() },
    }
}

fn appends(c: &mut Criterion) {
    let key = Arc::new(SigningKey::generate().expect("a key"));
    let dir = tempfile::tempdir().expect("a temporary directory");
    let identity = Identity::cgroup("/sys/fs/cgroup/bench", 4242, 0);
    let ev = event(1);
    let cases = [
        ("checkpoint every 1024, no fsync", 1024, FsyncPolicy::Never),
        ("checkpoint every 1024, fsync at each", 1024, FsyncPolicy::Checkpoint),
        ("no checkpoints, no fsync", u64::MAX, FsyncPolicy::Never),
    ];
    let mut g = c.benchmark_group("dna_append");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(8));
    for (name, every, fsync) in cases {
        let config = WriterConfig {
            checkpoint_every: every,
            checkpoint_interval: None,
            fsync,
            ..WriterConfig::default()
        };
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                // A fresh file per sample (creating it is not timed), so the
                // file does not grow without bound.
                let path = dir.path().join("bench.dna");
                let _ = std::fs::remove_file(&path);
                let mut w =
                    TraceWriter::create(&path, &identity, key.clone(), config.clone()).expect("create");
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(w.decision(&ev).expect("append"));
                }
                w.flush().expect("flush");
                let took = start.elapsed();
                drop(w);
                took
            });
        });
    }
    g.finish();
}

criterion_group!(benches, appends);
criterion_main!(benches);
