//! Fleet propagation: from a bundle (or trust record) being published on
//! the bus to every one of three agents enforcing it. A real nats-server
//! with JetStream on loopback and three real agents (`forge agent run`,
//! separate processes). Each round publishes a new signed bundle version
//! (alternately denying and allowing a loopback port), polls the agents
//! until all three report it applied, then checks each kernel enforces it.
//! Baseline from the same run: the same kind of bundle applied through one
//! agent's API directly (verify + compile + swap, no bus). Also: an
//! operator-signed trust record until all three hold it. Needs root,
//! nats-server and the release `forge` binary (`cargo xtask bench` builds
//! it). Alone: `cargo bench -p forge-tests --bench fleet`.
#![allow(clippy::print_stdout, reason = "a benchmark's report is its output")]

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use forge_agent::{
    api::Request,
    fleet::{Identity, RecordAction, TrustRecord, bus::bucket, link::now_ms, wire},
    policy::Tier,
    sign::Bundle,
    workload::Outcome,
};
use forge_tests::{EPERM, fleet::Fleet};

/// Rounds of the measurement (3 in a smoke run: `forge_tests::bench_rounds`).
const ROUNDS: usize = 40;
/// Rounds of the baseline (3 in a smoke run: `forge_tests::bench_rounds`).
const BASELINE_ROUNDS: usize = 20;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn row(name: &str, mut v: Vec<f64>) -> (String, f64) {
    v.sort_by(f64::total_cmp);
    let p50 = percentile(&v, 0.5);
    let line = format!(
        "| {name} | {p50:.1} | {:.1} | {:.1} | {} |",
        percentile(&v, 0.99),
        v.last().copied().unwrap_or(0.0),
        v.len()
    );
    (line, p50)
}

fn forge_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent().map(|d| d.join("forge")))
        .unwrap_or_else(|| PathBuf::from("target/release/forge"))
}

fn main() {
    // The kernel checks run this binary again inside a node's cgroup.
    forge_agent::workload::maybe_perform_from_env();
    if !nix::unistd::geteuid().is_root() {
        println!("fleet propagation benchmark: SKIPPED (needs root)");
        return;
    }
    let forge = forge_binary();
    if !forge.is_file() || !std::path::Path::new(forge_tests::fleet::NATS_SERVER).is_file() {
        println!(
            "fleet propagation benchmark: SKIPPED (needs {} and {}; `cargo xtask bench` builds and installs both)",
            forge.display(),
            forge_tests::fleet::NATS_SERVER
        );
        return;
    }
    match run(&forge) {
        Ok(report) => println!("{report}"),
        Err(e) => println!("fleet propagation benchmark: FAILED: {e}"),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn run(forge: &std::path::Path) -> Result<String, String> {
    let f = Fleet::start("bench", forge).map_err(|e| format!("{e:?}"))?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let peer = listener.local_addr().map_err(|e| e.to_string())?.port();
    std::thread::spawn(move || for _ in listener.incoming() {});
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let (policy, trust) = rt.block_on(async {
        let client = async_nats::connect(f.nats.url()).await.map_err(|e| e.to_string())?;
        let js = async_nats::jetstream::new(client);
        Ok::<_, String>((
            bucket(&js, forge_agent::fleet::POLICY_BUCKET).await?,
            bucket(&js, forge_agent::fleet::TRUST_BUCKET).await?,
        ))
    })?;
    let status = |i: usize| f.status(i).map_err(|e| format!("{e:?}"));

    // Baseline: one agent, its API, no bus.
    let mut version = 100;
    let mut local = Vec::new();
    for r in 0..forge_tests::bench_rounds(BASELINE_ROUNDS) {
        version += 1;
        let dir = f.bundle(version, (r % 2 == 0).then_some(peer), true).map_err(|e| format!("{e:?}"))?;
        let req = Request::PolicyApplyBundle { path: dir.display().to_string() };
        let t0 = Instant::now();
        f.call(0, &req).map_err(|e| format!("{e:?}"))?;
        local.push(ms(t0.elapsed()));
    }

    let (mut all, mut each, mut enforced, mut checks) = (Vec::new(), Vec::new(), 0, 0);
    for r in 0..forge_tests::bench_rounds(ROUNDS) {
        version += 1;
        let deny = r % 2 == 0;
        let dir = f.bundle(version, deny.then_some(peer), true).map_err(|e| format!("{e:?}"))?;
        let packed =
            wire::pack(&Bundle::load(&dir).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        rt.block_on(policy.put("fleet", packed.bytes.into())).map_err(|e| e.to_string())?;
        let mut pending = vec![0usize, 1, 2];
        while !pending.is_empty() {
            let mut still = Vec::new();
            for i in pending {
                if status(i)?["fleet"]["last_bundle"]["version"] == version {
                    each.push(ms(t0.elapsed()));
                } else {
                    still.push(i);
                }
            }
            pending = still;
            if t0.elapsed() > Duration::from_secs(30) {
                return Err(format!("round {r}: version {version} not applied everywhere in 30 s"));
            }
        }
        all.push(ms(t0.elapsed()));
        for i in 0..3 {
            let want = if deny { EPERM } else { Outcome::Ok };
            checks += 1;
            if f.connect(i, peer).map_err(|e| format!("{e:?}"))? == want {
                enforced += 1;
            }
        }
    }

    let mut records = Vec::new();
    for r in 0..forge_tests::bench_rounds(ROUNDS) {
        let identity = Identity::parse(&format!("sha3-256:{:064x}", r + 1)).map_err(|e| e.to_string())?;
        let record = TrustRecord {
            node: "ops".into(),
            identity: identity.clone(),
            action: RecordAction::Quarantine,
            tier: Tier::Compromised,
            reason: vec!["benchmark".into()],
            trace_head: None,
            issued_at_ms: now_ms(),
            seq: r as u64,
        };
        let bytes = record.sign(&f.ops).to_bytes();
        let t0 = Instant::now();
        rt.block_on(trust.put(record.bucket_key(), bytes.into())).map_err(|e| e.to_string())?;
        let digest = identity.digest.clone().unwrap_or_default();
        let mut pending = vec![0usize, 1, 2];
        while !pending.is_empty() {
            let mut still = Vec::new();
            for i in pending {
                let s = status(i)?;
                let held = s["fleet"]["identities"]
                    .as_array()
                    .is_some_and(|ids| ids.iter().any(|e| e["identity"]["digest"] == digest.as_str()));
                if !held {
                    still.push(i);
                }
            }
            pending = still;
            if t0.elapsed() > Duration::from_secs(30) {
                return Err(format!("record {r} not held everywhere in 30 s"));
            }
        }
        records.push(ms(t0.elapsed()));
    }

    let (local_row, local_p50) =
        row("baseline: the same kind of bundle applied through one agent's API", local);
    let (all_row, all_p50) = row("bundle: publish → applied on all 3 agents", all);
    let (each_row, _) = row("bundle: publish → applied, each agent", each);
    let (rec_row, _) = row("trust record: publish → held by all 3 agents", records);
    Ok(format!(
        "## Fleet propagation (3 agents, nats-server on loopback)\n\n\
         Milliseconds, measured by polling each agent's status (about 1 ms granularity).\n\n\
         | figure | p50 | p99 | max | samples |\n|---|---|---|---|---|\n\
         {all_row}\n{each_row}\n{local_row}\n{rec_row}\n\n\
         All-agents p50 / local-apply p50: {:.1}x. Kernel checks after each round: {enforced}/{checks} connects as the bundle says.\n",
        all_p50 / local_p50
    ))
}
