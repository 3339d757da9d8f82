//! The daemon's trace keeping, driven the way the daemon drives it (scorer,
//! trust controller, operator actions) without a kernel, then read back:
//! the chain verifies and replay reproduces every score and action.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use super::*;
use crate::{
    dna::{QuarantineAction, QuarantineOp, Trace, TrustChange, VerifyOptions, replay, verify_file},
    events::{Hook, Mode, Op, Target},
    policy::Tier,
    trust::{Action, ScoreConfig, Scorer, TrustController, controller::Thresholds},
};

const S: u64 = 1_000_000_000;
const ID: u64 = 4242;

fn ev(ts_ns: u64, hook: Hook, op: Op, verdict: Verdict, target: Target) -> DecisionEvent {
    DecisionEvent {
        ts_ns,
        cgroup_id: ID,
        actual_cgroup_id: ID,
        generation: 1,
        pid: 7,
        tgid: 7,
        ppid: 1,
        comm: "job".into(),
        hook,
        op,
        verdict,
        mode: Mode::Enforce,
        rule_id: 0,
        target,
    }
}

fn exec(ts_ns: u64, path: &str) -> DecisionEvent {
    ev(ts_ns, Hook::ProcExec, Op::Process, Verdict::Info, Target::Path { path: path.into() })
}

fn connect(ts_ns: u64, addr: &str, verdict: Verdict) -> DecisionEvent {
    let target = Target::Addr { addr: addr.parse().unwrap(), port: 4444 };
    ev(ts_ns, Hook::CgroupConnect4, Op::NetConnect, verdict, target)
}

/// The daemon in miniature: scorer, controller, traces.
struct Mini {
    scorer: Scorer,
    trust: TrustController,
    traces: Traces,
    quarantine_at: Vec<Tier>,
}

impl Mini {
    fn observe(&mut self, e: &DecisionEvent) {
        let o = self.scorer.observe(e);
        self.traces.event(e, &o);
        let Observed::Scored(score) = o else { return };
        self.traces.score(&score);
        let q = self.quarantine_at.clone();
        for a in self.trust.on_score(&score, |t| q.contains(&t)) {
            let record = match a {
                Action::SetTier { from, to, reason, actor, score, .. } => {
                    Record::TrustChange(TrustChange { ts_ns: e.ts_ns, from, to, reason, actor, score })
                }
                Action::Quarantine { reason, .. } => Record::Quarantine(QuarantineAction {
                    ts_ns: e.ts_ns,
                    op: QuarantineOp::Freeze,
                    actor: "scorer".into(),
                    reason,
                    snapshot: Value::Null,
                }),
                Action::Release { .. } => unreachable!("the scorer never releases"),
            };
            self.traces.record(ID, &record);
        }
    }
}

fn governed(fresh: bool, tier: Tier, config: &ScoreConfig) -> Governed {
    Governed {
        ts_ns: 0,
        fresh,
        tier,
        policies: "base".into(),
        generation: 1,
        cgroup_id: None,
        previous_cgroup_id: None,
        quarantine_at: vec![Tier::Compromised],
        scoring: config.clone(),
        thresholds: Thresholds::default(),
        rules: Vec::new(),
    }
}

/// Learning with benign repeats, a reverse shell after it, an operator
/// release, then learning and an anomaly again.
fn run(dir: &Path, config: ScoreConfig) -> (PathBuf, Arc<SigningKey>) {
    let key = Arc::new(SigningKey::generate().unwrap());
    let mut settings = TraceSettings::new(dir, key.clone());
    settings.sample_per_sec = 2;
    let mut m = Mini {
        scorer: Scorer::new(config.clone()),
        trust: TrustController::default(),
        traces: Traces::new(settings),
        quarantine_at: vec![Tier::Compromised],
    };
    let cg = Cgroup { path: "/sys/fs/cgroup/job".into(), id: ID };
    m.trust.track(ID, Tier::Verified);
    m.traces.govern(&cg, governed(true, Tier::Verified, &config));
    let mut t = 0;
    for i in 0..4000u64 {
        t = i * 10_000_000;
        m.observe(&exec(t, if i % 3 == 0 { "/usr/bin/cc" } else { "/usr/bin/ld" }));
        if i % 50 == 0 {
            m.observe(&connect(t, "10.0.0.5", Verdict::Allow));
            m.traces.tick();
        }
    }
    m.observe(&connect(t + S, "203.0.113.9", Verdict::Allow));
    m.observe(&exec(t + S + 1, "/tmp/.x/sh"));
    m.observe(&ev(t + S + 2, Hook::SysEnter, Op::Syscall, Verdict::Kill, Target::Syscall { nr: 101 }));
    // The operator releases it: the daemon records both records and resets.
    let release = QuarantineAction {
        ts_ns: t + 2 * S,
        op: QuarantineOp::Release,
        actor: "alice".into(),
        reason: vec!["investigated".into()],
        snapshot: Value::Null,
    };
    m.traces.record(ID, &Record::Quarantine(release));
    let back = TrustChange {
        ts_ns: t + 2 * S,
        from: Tier::Compromised,
        to: Tier::Verified,
        reason: vec!["investigated".into()],
        actor: "alice".into(),
        score: None,
    };
    m.traces.record(ID, &Record::TrustChange(back));
    m.trust.track(ID, Tier::Verified);
    m.scorer.reset(ID);
    for i in 0..200u64 {
        m.observe(&exec(t + 3 * S + i * 100_000_000, "/usr/bin/cc"));
    }
    m.observe(&connect(t + 60 * S, "198.51.100.1", Verdict::Deny));
    m.lost_and_close();
    (TraceStore::new(dir).path(&format!("cgroup-{ID}")).unwrap(), key)
}

impl Mini {
    fn lost_and_close(&mut self) {
        self.traces.lost(ID, 17);
        self.traces.lost(ID, 17);
        self.traces.close_all();
    }
}

#[test]
fn a_daemon_trace_verifies_and_replays_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let config = ScoreConfig { learning_ns: 10 * S, ..ScoreConfig::default() };
    let (path, key) = run(dir.path(), config);
    let report = verify_file(&path, &VerifyOptions { trusted_key: Some(key.public_key()) }).unwrap();
    assert!(report.ok, "{report:?}");

    let trace = Trace::open(&path).unwrap();
    let records: Vec<Record> = trace.records().unwrap().map(|e| e.unwrap().record).collect();
    let count = |f: fn(&Record) -> bool| records.iter().filter(|r| f(r)).count();
    let events = count(|r| matches!(r, Record::Decision(_) | Record::SampledAllowed(_)));
    let elided: u64 = records
        .iter()
        .filter_map(|r| if let Record::Elided(e) = r { Some(e.counts.events()) } else { None })
        .sum();
    assert!(events < 1000, "allowed events are sampled: {events} recorded");
    assert_eq!(events as u64 + elided, 4000 + 80 + 3 + 200 + 1, "every event is recorded or counted");
    assert_eq!(count(|r| matches!(r, Record::Lost(l) if l.events == 17 && l.total == 17)), 1);
    let to_compromised = records.iter().find_map(|r| match r {
        Record::TrustChange(t) if t.to == Tier::Compromised => Some(t),
        _ => None,
    });
    let why = to_compromised.expect("the reverse shell escalates").reason.join("; ");
    assert!(why.contains("exec from a writable dir: /tmp/.x/sh"), "{why}");
    assert!(why.contains("never-seen 203.0.113.0/24"), "{why}");

    let r = replay(&trace).unwrap();
    assert!(r.ok(), "{:?}", r.divergence);
    assert!(r.scores >= 3 && r.tier_changes >= 1 && r.quarantines == 1, "{r:?}");
    assert_eq!(r.operator_actions, 2);
    assert_eq!(r.events + r.elided, 4000 + 80 + 3 + 200 + 1);
}

#[test]
fn replay_names_the_first_record_it_cannot_reproduce() {
    let dir = tempfile::tempdir().unwrap();
    let config = ScoreConfig { learning_ns: 10 * S, ..ScoreConfig::default() };
    let (path, _) = run(dir.path(), config.clone());
    // The same events scored with other weights: a trace whose recorded
    // scores no longer follow from its configuration.
    let trace = Trace::open(&path).unwrap();
    let key = Arc::new(SigningKey::generate().unwrap());
    let other = dir.path().join("other");
    let mut w = TraceWriter::create(&other, trace.identity(), key, WriterConfig::default()).unwrap();
    let mut first_score = None;
    for e in trace.records().unwrap().skip(1) {
        let e = e.unwrap();
        let r = match e.record {
            Record::Checkpoint(_) | Record::Reopen(_) => continue,
            Record::Governed(mut g) => {
                g.scoring.weights.insert(crate::trust::FeatureKind::NewDestination, 21);
                Record::Governed(g)
            }
            Record::Decision(ev) => {
                w.decision(&ev).unwrap();
                continue;
            }
            Record::SampledAllowed(ev) => {
                w.sampled_allowed(&ev).unwrap();
                continue;
            }
            r => r,
        };
        let index = w.append(&r).unwrap();
        if matches!(r, Record::Score(_)) && first_score.is_none() {
            first_score = Some(index);
        }
    }
    w.close().unwrap();
    let r = replay(&Trace::open(&other).unwrap()).unwrap();
    let d = r.divergence.expect("diverges");
    assert_eq!(Some(d.index), first_score, "{d}");
    assert!(d.to_string().contains("the trace has score 20"), "{d}");
    assert!(d.to_string().contains("replay produced score 21"), "{d}");
}

#[test]
fn digests_explain_the_workload_and_its_quarantine_from_the_trace_alone() {
    let dir = tempfile::tempdir().unwrap();
    let config = ScoreConfig { learning_ns: 10 * S, ..ScoreConfig::default() };
    let (path, _) = run(dir.path(), config);
    let entries: Vec<crate::dna::Entry> =
        Trace::open(&path).unwrap().records().unwrap().map(Result::unwrap).collect();
    let w = crate::digest::workload(&entries);
    assert_eq!(w.workload, format!("cgroup-{ID}"));
    assert_eq!(w.state, "governed");
    assert_eq!(w.tier, Some(Tier::Verified), "released and restored");
    assert_eq!((w.decisions, w.lost), (2, 17));
    let text = w.to_string();
    assert!(text.contains("scorer moved it from verified to compromised"), "{text}");
    assert!(text.contains("alice released it: investigated"), "{text}");
    assert!(text.contains("1x killed the caller for syscall"), "{text}");

    let q = crate::digest::last_quarantine(&entries).expect("quarantined once");
    assert_eq!(q.tier, Some(Tier::Compromised));
    assert!(
        q.why.starts_with("score 85: ") && q.why.contains("exec from a writable dir: /tmp/.x/sh"),
        "{}",
        q.why
    );
    assert!(q.agent_did.iter().any(|a| a.text.starts_with("alice released it")), "{q:?}");
    let json = serde_json::to_value(&q).unwrap();
    assert_eq!(json["record"], q.record);
    // The same trace, the same digest.
    assert_eq!(crate::digest::last_quarantine(&entries), Some(q));
}
