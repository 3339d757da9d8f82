//! `forge trace show|verify|export` on real trace files: output, exit
//! codes, tampering and torn tails as the command line reports them.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Arc,
};

use forge_agent::{
    dna::{Identity, Record, TraceStore, WriterConfig},
    events::{DecisionEvent, Hook, Mode, Op, Target, Verdict},
    sign::{SigningKey, keys::generate_files},
};

fn forge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_forge")).args(args).output().expect("run forge")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn event(i: u32) -> DecisionEvent {
    DecisionEvent {
        ts_ns: u64::from(i),
        cgroup_id: 4242,
        actual_cgroup_id: 4242,
        generation: 1,
        pid: 10 + i,
        tgid: 10 + i,
        ppid: 1,
        comm: "curl".into(),
        hook: Hook::CgroupConnect4,
        op: Op::NetConnect,
        verdict: Verdict::Deny,
        mode: Mode::Enforce,
        rule_id: 17,
        target: Target::Addr { addr: "169.254.169.254".parse().unwrap(), port: 80 },
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    trace: PathBuf,
    public: PathBuf,
    other_public: PathBuf,
}

/// A data dir with the trace of cgroup 4242: identity, checkpoint, 20
/// decisions with checkpoints every 8, a trust change, a closing checkpoint.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let agent = generate_files(dir.path(), "agent").unwrap();
    let other = generate_files(dir.path(), "other").unwrap();
    let key = Arc::new(SigningKey::load(&agent.private_path).unwrap());
    let store = TraceStore::new(dir.path());
    let config = WriterConfig { checkpoint_every: 8, ..WriterConfig::default() };
    let identity = Identity::cgroup("/sys/fs/cgroup/demo", 4242, 1_700_000_000_000_000_000);
    let (mut w, _) = store.open_or_create(&identity, key, config).unwrap();
    for i in 0..20 {
        w.decision(&event(i)).unwrap();
    }
    w.append(&Record::TrustChange(forge_agent::dna::TrustChange {
        ts_ns: 99,
        from: forge_agent::policy::Tier::Unknown,
        to: forge_agent::policy::Tier::Suspicious,
        reason: vec!["20 denied connects to 169.254.169.254:80".into()],
        actor: "scorer".into(),
        score: Some(80),
    }))
    .unwrap();
    w.close().unwrap();
    let trace = store.path("cgroup-4242").unwrap();
    Fixture { trace, public: agent.public_path, other_public: other.public_path, dir }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Byte offset of record `k`, following the length fields.
fn offset_of(bytes: &[u8], k: usize) -> usize {
    let mut at = 16;
    for _ in 0..k {
        at += 8 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize + 32;
    }
    at
}

#[test]
fn show_prints_one_line_per_record_by_file_or_workload() {
    let f = fixture();
    let o = forge(&["trace", "show", s(&f.trace)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    // A title, then identity, checkpoint, 20 decisions with 2 checkpoints among them, trust change, checkpoint.
    assert_eq!(lines.len(), 1 + 26, "{out}");
    assert!(lines[0].starts_with("trace ") && lines[0].ends_with("of workload cgroup-4242"));
    assert!(lines[1].contains("identity") && lines[1].contains("cgroup /sys/fs/cgroup/demo, id 4242"));
    assert!(lines[2].contains("checkpoint") && lines[2].contains("signed by key"));
    assert!(lines[3].contains("decision") && lines[3].contains("deny net.connect 169.254.169.254:80"));
    assert!(out.contains("trust_change     unknown -> suspicious by scorer (score 80)"), "{out}");

    let by_id = forge(&["trace", "show", "cgroup-4242", "--data-dir", s(f.dir.path())]);
    assert_eq!(stdout(&by_id), out);
    let list = forge(&["trace", "list", "--data-dir", s(f.dir.path())]);
    assert!(list.status.success(), "{}", stderr(&list));
    assert!(
        stdout(&list).starts_with("cgroup-4242") && stdout(&list).contains("cgroup /sys/fs/cgroup/demo"),
        "{}",
        stdout(&list)
    );
    let list = forge(&["trace", "list", "--data-dir", s(f.dir.path()), "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&stdout(&list)).unwrap();
    assert_eq!(rows[0]["subject"]["id"], 4242, "{rows}");
    let missing = forge(&["trace", "show", "cgroup-1", "--data-dir", s(f.dir.path())]);
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("no trace of workload \"cgroup-1\""), "{}", stderr(&missing));

    let json = forge(&["trace", "show", s(&f.trace), "--json"]);
    let records: Vec<serde_json::Value> =
        stdout(&json).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 26);
    assert_eq!(records[0]["kind"], "identity");
    assert_eq!(records[2]["kind"], "decision");
    assert_eq!(records[2]["record"]["target"]["port"], 80);
    assert_eq!(records[3]["prev"], records[2]["hash"]);
}

#[test]
fn verify_accepts_the_agents_key_and_names_the_first_bad_record() {
    let f = fixture();
    let o = forge(&["trace", "verify", s(&f.trace), "--key", s(&f.public)]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains(": ok: workload cgroup-4242, 26 records, 4 checkpoints signed by key"));
    assert!(stdout(&o).contains("the trusted key"));

    // Without --key it says whose signatures they are and that nobody vouched for the key.
    let o = forge(&["trace", "verify", s(&f.trace)]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("not checked against a trusted key"));

    let o = forge(&["trace", "verify", s(&f.trace), "--key", s(&f.other_public)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("BAD: record 1: checkpoint signed by key"), "{}", stdout(&o));

    // One changed byte in record 9.
    let mut bytes = std::fs::read(&f.trace).unwrap();
    let at = offset_of(&bytes, 9) + 60;
    bytes[at] ^= 1;
    std::fs::write(&f.trace, &bytes).unwrap();
    let o = forge(&["trace", "verify", s(&f.trace), "--key", s(&f.public)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("BAD: record 9: checksum mismatch (byte"), "{}", stdout(&o));
    assert!(stdout(&o).contains("records 0 to 8 verify"), "{}", stdout(&o));
    let o = forge(&["trace", "verify", s(&f.trace), "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["problem"]["index"], 9);
    assert_eq!(v["problem"]["reason"]["code"], "checksum_mismatch");
    assert_eq!(v["records"], 9);

    // show stops there too, naming the file and the record.
    let o = forge(&["trace", "show", s(&f.trace)]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o).lines().count(), 1 + 9);
    let err = stderr(&o);
    assert!(err.contains(s(&f.trace)) && err.contains("record 9: checksum mismatch"), "{err}");
}

#[test]
fn verify_reports_a_torn_tail_and_rejects_garbage_without_panicking() {
    let f = fixture();
    let mut bytes = std::fs::read(&f.trace).unwrap();
    let whole = bytes.len();
    // The first bytes of a copy of record 5: a record cut short.
    bytes.extend_from_within(offset_of(&bytes, 5)..offset_of(&bytes, 6) - 10);
    std::fs::write(&f.trace, &bytes).unwrap();
    let o = forge(&["trace", "verify", s(&f.trace), "--key", s(&f.public)]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(
        stdout(&o).contains(&format!("torn last record: {} bytes from byte {whole}", bytes.len() - whole))
    );

    let garbage = f.dir.path().join("garbage.dna");
    std::fs::write(&garbage, b"FORGEDNA\x01\0\0\0\0\0\0\0\x30\0\0\0\x30\0\0\0junk").unwrap();
    let o = forge(&["trace", "verify", s(&garbage)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("BAD: record 0: bad length field (byte 16)"), "{}", stdout(&o));
    let o = forge(&["trace", "show", s(&garbage)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("garbage.dna: record 0: bad length field"), "{}", stderr(&o));
}

#[test]
fn export_writes_a_document_or_json_lines() {
    let f = fixture();
    let o = forge(&["trace", "export", s(&f.trace)]);
    assert!(o.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["workload_id"], "cgroup-4242");
    assert_eq!(doc["records"].as_array().unwrap().len(), 26);
    assert_eq!(doc["records"][25]["kind"], "checkpoint");
    assert_eq!(doc["records"][25]["record"]["index"], 25);
    assert!(doc["torn_tail"].is_null());

    let o = forge(&["trace", "export", s(&f.trace), "--jsonl"]);
    assert!(o.status.success());
    let lines: Vec<serde_json::Value> =
        stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines, doc["records"].as_array().unwrap().clone());
}

/// A trace the agent could have written: governed (learning 0 s), three
/// connects scored by the real scorer, its scores and tier change recorded.
fn scored_trace(dir: &Path, tamper_score: bool) -> PathBuf {
    use forge_agent::{
        dna::{Governed, ScoreRecord, TrustChange},
        policy::Tier,
        trust::{Observed, ScoreConfig, Scorer, TrustController, controller::Thresholds},
    };
    let key = Arc::new(SigningKey::generate().unwrap());
    let store = TraceStore::new(dir);
    let identity = Identity::cgroup("/sys/fs/cgroup/demo", 4242, 1_700_000_000_000_000_000);
    let (mut w, _) = store.open_or_create(&identity, key, WriterConfig::default()).unwrap();
    let scoring = ScoreConfig { learning_ns: 0, ..ScoreConfig::default() };
    w.append(&Record::Governed(Governed {
        ts_ns: 0,
        fresh: true,
        tier: Tier::Verified,
        policies: "demo".into(),
        generation: 1,
        cgroup_id: None,
        previous_cgroup_id: None,
        quarantine_at: vec![Tier::Compromised],
        scoring: scoring.clone(),
        thresholds: Thresholds::default(),
        rules: Vec::new(),
    }))
    .unwrap();
    let mut scorer = Scorer::new(scoring);
    let mut trust = TrustController::default();
    trust.track(4242, Tier::Verified);
    for (i, addr) in ["10.1.2.3", "10.9.9.9", "192.0.2.1"].into_iter().enumerate() {
        let ev = DecisionEvent {
            verdict: Verdict::Allow,
            target: Target::Addr { addr: addr.parse().unwrap(), port: 443 },
            ts_ns: 1_000 + i as u64,
            ..event(i as u32)
        };
        w.sampled_allowed(&ev).unwrap();
        let Observed::Scored(score) = scorer.observe(&ev) else { panic!("a new destination scores") };
        let value = if tamper_score && i == 1 { score.value + 1 } else { score.value };
        w.append(&Record::Score(ScoreRecord { ts_ns: score.ts_ns, value, features: score.features.clone() }))
            .unwrap();
        for a in trust.on_score(&score, |_| false) {
            if let forge_agent::trust::Action::SetTier { from, to, reason, actor, score, .. } = a {
                let change = TrustChange { ts_ns: ev.ts_ns, from, to, reason, actor, score };
                w.append(&Record::TrustChange(change)).unwrap();
            }
        }
    }
    w.close().unwrap();
    store.path("cgroup-4242").unwrap()
}

#[test]
fn replay_reproduces_scores_and_names_the_first_divergence() {
    let dir = tempfile::tempdir().unwrap();
    let good = scored_trace(dir.path(), false);
    let o = forge(&["trace", "replay", s(&good)]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o)
            .contains("ok: 3 events and 0 elided events replayed; 3 scores, 1 tier changes, 0 quarantines"),
        "{}",
        stdout(&o)
    );
    let json = forge(&["trace", "replay", s(&good), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!((v["scores"].as_u64(), v["divergence"].is_null()), (Some(3), true), "{v}");

    let other = tempfile::tempdir().unwrap();
    let bad = scored_trace(other.path(), true);
    let o = forge(&["trace", "replay", s(&bad)]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    // identity 0, checkpoint 1, governed 2, event 3, score 4, event 5, score 6 (tampered).
    assert!(stdout(&o).contains("DIVERGES at record 6: the trace has score 41"), "{}", stdout(&o));
    assert!(stdout(&o).contains("replay produced score 40"), "{}", stdout(&o));

    // A trace whose tier change has no governed record to score from.
    let f = fixture();
    let o = forge(&["trace", "replay", s(&f.trace)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("the trace has tier unknown -> suspicious at score 80, replay produced nothing"),
        "{}",
        stdout(&o)
    );
}
