//! Round trips, every kind of tampering with the exact first bad index,
//! torn tails cut at every byte, and random bytes for the reader.

use std::{
    path::Path,
    sync::{Arc, OnceLock},
    time::Duration,
};

use serde_json::json;

use super::*;
use crate::{
    events::{DecisionEvent, Hook, Mode, Op, Target, Verdict},
    policy::Tier,
    sign::SigningKey,
};

/// The agent's key: one per test run.
fn key() -> Arc<SigningKey> {
    static KEY: OnceLock<Arc<SigningKey>> = OnceLock::new();
    KEY.get_or_init(|| Arc::new(SigningKey::generate().unwrap())).clone()
}

fn other_key() -> Arc<SigningKey> {
    static KEY: OnceLock<Arc<SigningKey>> = OnceLock::new();
    KEY.get_or_init(|| Arc::new(SigningKey::generate().unwrap())).clone()
}

fn trusted() -> VerifyOptions {
    VerifyOptions { trusted_key: Some(key().public_key()) }
}

fn config(every: u64) -> WriterConfig {
    WriterConfig {
        checkpoint_every: every,
        checkpoint_interval: None,
        flush_interval: Duration::from_secs(3600),
        fsync: FsyncPolicy::Never,
        ..WriterConfig::default()
    }
}

fn identity() -> Identity {
    Identity::cgroup("/sys/fs/cgroup/test", 4242, 1_700_000_000_000_000_000)
}

fn event(i: u64) -> DecisionEvent {
    DecisionEvent {
        ts_ns: 1_000 + i,
        cgroup_id: 4242,
        actual_cgroup_id: 4242,
        generation: 1,
        pid: 100 + i as u32,
        tgid: 100 + i as u32,
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

/// The `i`th appended record: mostly decisions, every other kind now and then.
fn record(i: u64) -> Record {
    match i % 10 {
        3 => Record::SampledAllowed(DecisionEvent { verdict: Verdict::Allow, ..event(i) }),
        5 => Record::TrustChange(TrustChange {
            ts_ns: 1_000 + i,
            from: Tier::Unknown,
            to: Tier::Suspicious,
            reason: vec!["new destination 169.254.169.254:80".into()],
            actor: "scorer".into(),
            score: Some(71),
        }),
        7 => Record::Quarantine(QuarantineAction {
            ts_ns: 1_000 + i,
            op: QuarantineOp::Freeze,
            actor: "operator".into(),
            reason: vec!["tier compromised".into()],
            snapshot: json!({"processes": [{"pid": 7, "ppid": 1, "exe": "/usr/bin/curl", "open_files": [], "sockets": 1}]}),
        }),
        8 => Record::HostCall(HostCall {
            ts_ns: 1_000 + i,
            duration_ns: 1234,
            name: "fs.read".into(),
            args: json!({"path": "/data/in.txt"}),
            result: json!({"bytes": 12}),
            allowed: true,
        }),
        9 => Record::Outcome(Outcome {
            ts_ns: 1_000 + i,
            exit_code: Some(0),
            signal: None,
            summary: "exited".into(),
            output_sha3: None,
            host_calls: None,
        }),
        _ => Record::Decision(event(i)),
    }
}

/// A closed trace with `n` appended records, checkpoints every `every`.
fn build_with(dir: &Path, n: u64, every: u64, signer: Arc<SigningKey>) -> Vec<u8> {
    let path = dir.join("t.dna");
    let mut w = TraceWriter::create(&path, &identity(), signer, config(every)).unwrap();
    for i in 0..n {
        w.append(&record(i)).unwrap();
    }
    w.close().unwrap();
    std::fs::read(&path).unwrap()
}

fn build(n: u64, every: u64) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    build_with(dir.path(), n, every, key())
}

fn entries(bytes: &[u8]) -> Vec<Entry> {
    Records::from_reader(bytes, Path::new("t.dna")).unwrap().map(Result::unwrap).collect()
}

fn check(bytes: &[u8], opts: &VerifyOptions) -> VerifyReport {
    verify_reader(bytes, Path::new("t.dna"), opts).unwrap()
}

/// `"record N: reason"` of the first problem, without the byte offset.
fn first_bad(bytes: &[u8]) -> String {
    let r = check(bytes, &trusted());
    let Some(p) = r.problem.clone() else { panic!("verified: {r:?}") };
    match p.index {
        Some(i) => format!("record {i}: {}", p.reason),
        None => format!("file header: {}", p.reason),
    }
}

/// The header and each record's bytes, split by their length fields.
fn split(bytes: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut at = frame::HEADER_LEN;
    let mut frames = Vec::new();
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        frames.push(bytes[at..at + 8 + len + 32].to_vec());
        at += 8 + len + 32;
    }
    (bytes[..frame::HEADER_LEN].to_vec(), frames)
}

fn join(header: &[u8], frames: &[Vec<u8>]) -> Vec<u8> {
    let mut b = header.to_vec();
    for f in frames {
        b.extend_from_slice(f);
    }
    b
}

fn hash_of(f: &[u8]) -> Hash {
    Hash(f[f.len() - 32..].try_into().unwrap())
}

/// A well-formed frame, as a forger with the format but not the key makes it.
fn forge(kind: u8, prev: &Hash, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let start = frame::begin(&mut out, kind, prev);
    out.extend_from_slice(payload);
    frame::finish(&mut out, start).unwrap();
    out
}

/// Re-hashes frames `from..` so each links to the one before: what a forger
/// does after changing something.
fn rechain(frames: &mut [Vec<u8>], from: usize) {
    for i in from..frames.len() {
        let prev = hash_of(&frames[i - 1]);
        let f = &frames[i];
        let payload = f[41..f.len() - 32].to_vec();
        frames[i] = forge(f[8], &prev, &payload);
    }
}

#[test]
fn records_round_trip_and_checkpoints_fall_every_n() {
    let bytes = build(40, 8);
    let all = entries(&bytes);
    assert!(matches!(&all[0].record, Record::Identity(i) if *i == identity()));
    assert!(matches!(&all[1].record, Record::Checkpoint(c) if c.index == 1));
    let appended: Vec<&Record> = all
        .iter()
        .map(|e| &e.record)
        .filter(|r| !matches!(r, Record::Checkpoint(_) | Record::Identity(_)))
        .collect();
    let expected: Vec<Record> = (0..40).map(record).collect();
    assert_eq!(appended, expected.iter().collect::<Vec<_>>());
    let checkpoints: Vec<u64> =
        all.iter().filter(|e| matches!(e.record, Record::Checkpoint(_))).map(|e| e.index).collect();
    // Created with one; then one after every 8 appended records; none on close (nothing unsigned).
    assert_eq!(checkpoints, [1, 10, 19, 28, 37, 46]);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.index, i as u64);
        if i > 0 {
            assert_eq!(e.prev, all[i - 1].hash);
        }
    }
    let r = check(&bytes, &trusted());
    assert!(r.ok, "{r:?}");
    assert_eq!((r.records, r.checkpoints, r.last_checkpoint, r.unsigned_tail), (47, 6, Some(46), 0));
    assert_eq!(r.workload_id.as_deref(), Some("cgroup-4242"));
    assert_eq!(r.signers, [key().public_key().id().to_string()]);
}

#[test]
fn events_replays_decisions_in_order() {
    let dir = tempfile::tempdir().unwrap();
    build_with(dir.path(), 25, 8, key());
    let trace = Trace::open(dir.path().join("t.dna")).unwrap();
    assert_eq!(trace.identity(), &identity());
    let got: Vec<DecisionEvent> = trace.events().unwrap().map(Result::unwrap).collect();
    let want: Vec<DecisionEvent> = (0..25)
        .filter_map(|i| match record(i) {
            Record::Decision(e) | Record::SampledAllowed(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(got.len(), 17);
}

#[test]
fn a_flipped_byte_anywhere_in_a_record_names_that_record() {
    let bytes = build(30, 8);
    let (header, frames) = split(&bytes);
    let k = 17;
    let start = header.len() + frames[..k].iter().map(Vec::len).sum::<usize>();
    for at in start..start + frames[k].len() {
        let mut b = bytes.clone();
        b[at] ^= 0x20;
        let want = match at - start {
            0..8 => format!("record {k}: bad length field"),
            _ => format!("record {k}: checksum mismatch"),
        };
        assert_eq!(first_bad(&b), want, "byte {} of record {k}", at - start);
    }
}

#[test]
fn a_flipped_byte_in_the_header_is_a_header_problem() {
    let bytes = build(3, 8);
    for at in 0..frame::HEADER_LEN {
        let mut b = bytes.clone();
        b[at] ^= 1;
        assert!(first_bad(&b).starts_with("file header: "), "byte {at}: {}", first_bad(&b));
    }
}

#[test]
fn a_modified_and_rehashed_record_breaks_the_next_link() {
    let bytes = build(30, 8);
    let (header, mut frames) = split(&bytes);
    let f = &mut frames[12];
    let at = f.len() - 40; // a payload byte
    f[at] ^= 1;
    let prev = Hash(f[9..41].try_into().unwrap());
    let payload = f[41..f.len() - 32].to_vec();
    frames[12] = forge(f[8], &prev, &payload);
    assert_eq!(first_bad(&join(&header, &frames)), "record 13: prev hash mismatch");
}

#[test]
fn a_removed_record_is_named() {
    let bytes = build(30, 8);
    let (header, mut frames) = split(&bytes);
    frames.remove(17);
    assert_eq!(first_bad(&join(&header, &frames)), "record 17: prev hash mismatch");
    let (header, mut frames) = split(&bytes);
    frames.remove(0);
    assert_eq!(
        first_bad(&join(&header, &frames)),
        "record 0: the first record is a checkpoint record, not the identity"
    );
}

#[test]
fn swapped_records_are_named() {
    let bytes = build(30, 8);
    let (header, mut frames) = split(&bytes);
    frames.swap(20, 21);
    assert_eq!(first_bad(&join(&header, &frames)), "record 20: prev hash mismatch");
    let (header, mut frames) = split(&bytes);
    frames.swap(5, 25);
    assert_eq!(first_bad(&join(&header, &frames)), "record 5: prev hash mismatch");
}

#[test]
fn an_inserted_record_is_named() {
    let bytes = build(30, 8);
    let (header, mut frames) = split(&bytes);
    let mut payload = Vec::new();
    Record::Decision(event(999)).encode(&mut payload).unwrap();
    // Linked to record 8 and correctly hashed: the record after it no longer links.
    let forged = forge(record::kind::DECISION, &hash_of(&frames[8]), &payload);
    frames.insert(9, forged.clone());
    assert_eq!(first_bad(&join(&header, &frames)), "record 10: prev hash mismatch");
    // Linked to nothing: named itself.
    let (header, mut frames) = split(&bytes);
    frames.insert(9, forge(record::kind::DECISION, &Hash([1; 32]), &payload));
    assert_eq!(first_bad(&join(&header, &frames)), "record 9: prev hash mismatch");
    // A second identity record, however well linked.
    let (header, mut frames) = split(&bytes);
    let id = frames[0][41..frames[0].len() - 32].to_vec();
    frames.insert(9, forge(record::kind::IDENTITY, &hash_of(&frames[8]), &id));
    assert_eq!(first_bad(&join(&header, &frames)), "record 9: a second identity record");
}

#[test]
fn a_forged_checkpoint_signature_is_named() {
    let bytes = build(30, 8);
    let (header, mut frames) = split(&bytes);
    let all = entries(&bytes);
    assert!(matches!(all[19].record, Record::Checkpoint(_)));
    // Flip a signature byte and re-hash the record so the chain still holds.
    let f = &mut frames[19];
    let sig_at = f.len() - 32 - 10;
    f[sig_at] ^= 1;
    rechain(&mut frames, 19);
    assert_eq!(first_bad(&join(&header, &frames)), "record 19: bad checkpoint signature");
}

#[test]
fn a_rewritten_history_fails_at_the_next_checkpoint() {
    let bytes = build(30, 8);
    let (header, mut frames) = split(&bytes);
    // Change record 12 and re-hash everything after it: every link holds,
    // but checkpoint 19 signed the old chain head.
    let f = &mut frames[12];
    let at = f.len() - 40;
    f[at] ^= 1;
    frames[12] = {
        let prev = hash_of(&frames[11]);
        let f = &frames[12];
        forge(f[8], &prev, &f[41..f.len() - 32])
    };
    rechain(&mut frames, 13);
    assert_eq!(first_bad(&join(&header, &frames)), "record 19: bad checkpoint signature");
}

#[test]
fn a_moved_checkpoint_is_named() {
    let bytes = build(30, 8);
    let (header, mut frames) = split(&bytes);
    let cp = frames.remove(10);
    frames.insert(12, cp);
    rechain(&mut frames, 10);
    assert_eq!(first_bad(&join(&header, &frames)), "record 12: checkpoint claims to be record 10");
}

#[test]
fn another_key_is_not_the_trusted_key() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = build_with(dir.path(), 10, 4, other_key());
    let id = other_key().public_key().id().to_string();
    assert_eq!(first_bad(&bytes), format!("record 1: checkpoint signed by key {id}, not the trusted key"));
    // Without a trusted key it verifies, and says who signed.
    let r = check(&bytes, &VerifyOptions::default());
    assert!(r.ok);
    assert_eq!(r.signers, [id]);
}

#[test]
fn a_trace_cut_before_its_first_checkpoint_is_unsigned() {
    let bytes = build(10, 4);
    let (header, frames) = split(&bytes);
    assert_eq!(
        first_bad(&join(&header, &frames[..1])),
        "record 1: the trace ends before any checkpoint: nothing in it is signed"
    );
    let r = check(&join(&header, &frames[..1]), &VerifyOptions::default());
    assert!(r.ok);
    assert_eq!(check(&join(&header, &[]), &VerifyOptions::default()).problem.unwrap().reason, Reason::Empty);
}

#[test]
fn a_torn_tail_cut_at_any_byte_is_found_cut_off_and_appended_after() {
    let dir = tempfile::tempdir().unwrap();
    // Few checkpoints (signatures are slow in debug builds); the last record is one.
    let bytes = build_with(dir.path(), 12, 100, key());
    let (header, frames) = split(&bytes);
    let n = frames.len();
    let last_two = header.len() + frames[..n - 2].iter().map(Vec::len).sum::<usize>();
    let path = dir.path().join("cut.dna");
    for cut in last_two..bytes.len() {
        let complete = split_complete(&header, &frames, cut);
        let boundary = header.len() + frames[..complete].iter().map(Vec::len).sum::<usize>();
        // Signatures are slow in debug builds: the full check on every 8th cut.
        let full = cut % 8 == 0;
        let torn =
            (cut > boundary).then_some(TornTail { offset: boundary as u64, bytes: (cut - boundary) as u64 });
        let mut rs = Records::from_reader(&bytes[..cut], Path::new("t.dna")).unwrap();
        assert_eq!(rs.by_ref().map(Result::unwrap).count(), complete, "cut at {cut}");
        assert_eq!(rs.torn_tail(), torn, "cut at {cut}");
        if full {
            let r = check(&bytes[..cut], &trusted());
            assert!(r.ok && r.records == complete as u64 && r.torn_tail == torn, "cut at {cut}: {r:?}");
        }

        std::fs::write(&path, &bytes[..cut]).unwrap();
        let (mut w, report) = TraceWriter::open(&path, key(), config(100)).unwrap();
        assert_eq!(report, OpenReport { records: complete as u64, torn_tail: torn });
        w.append(&record(100)).unwrap();
        w.close().unwrap();
        let after = std::fs::read(&path).unwrap();
        assert_eq!(&after[..boundary], &bytes[..boundary]);
        let all = entries(&after);
        assert!(
            matches!(&all[complete].record, Record::Reopen(o) if o.torn_bytes == (cut - boundary) as u64)
        );
        assert_eq!(all[complete + 1].record, record(100));
        assert!(matches!(all[complete + 2].record, Record::Checkpoint(_)));
        assert_eq!(all.len(), complete + 3);
        if full {
            let r = check(&after, &trusted());
            assert!(r.ok && r.torn_tail.is_none() && r.unsigned_tail == 0, "cut at {cut}: {r:?}");
        }
    }
}

fn split_complete(header: &[u8], frames: &[Vec<u8>], cut: usize) -> usize {
    let mut at = header.len();
    frames
        .iter()
        .take_while(|f| {
            at += f.len();
            at <= cut
        })
        .count()
}

#[test]
fn a_zero_filled_tail_is_torn_but_garbage_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = build_with(dir.path(), 6, 4, key());
    let records = entries(&bytes).len() as u64;
    let mut zeros = bytes.clone();
    zeros.extend_from_slice(&[0; 5000]);
    let r = check(&zeros, &trusted());
    assert!(r.ok);
    assert_eq!(r.torn_tail, Some(TornTail { offset: bytes.len() as u64, bytes: 5000 }));

    let mut garbage = bytes.clone();
    garbage.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(first_bad(&garbage), format!("record {records}: bad length field"));
    let path = dir.path().join("garbage.dna");
    std::fs::write(&path, &garbage).unwrap();
    let err = TraceWriter::open(&path, key(), config(4)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{}: record {records}: bad length field (byte {})", path.display(), bytes.len())
    );
    assert_eq!(std::fs::read(&path).unwrap(), garbage, "a damaged trace is left as it was");
}

#[test]
fn random_bytes_never_panic_and_single_flips_name_their_record() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Pure garbage, some of it behind a valid header.
    for i in 0..3000 {
        let len = (next() % 600) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 0 {
            b.splice(0..0, frame::header());
        }
        let r = check(&b, &VerifyOptions::default());
        assert!(!r.ok || r.records > 0);
        let _ = Records::from_reader(&b[..], Path::new("x")).map(|rs| rs.count());
    }
    // Mutations of a real trace: flips, cuts, splices, duplications.
    let bytes = build(40, 20);
    let (header, frames) = split(&bytes);
    let mut owner = Vec::new();
    for (k, f) in frames.iter().enumerate() {
        owner.extend(std::iter::repeat_n(k, f.len()));
    }
    for _ in 0..300 {
        let mut b = bytes.clone();
        let at = (next() as usize) % b.len();
        let op = next() % 4;
        match op {
            0 => b[at] ^= 1 << (next() % 8),
            1 => b.truncate(at),
            2 => {
                let junk: Vec<u8> = (0..next() % 64).map(|_| next() as u8).collect();
                b.splice(at..at, junk);
            }
            _ => {
                let end = (at + (next() as usize % 200)).min(b.len());
                let dup = b[at..end].to_vec();
                b.splice(at..at, dup);
            }
        }
        let r = check(&b, &trusted());
        if op == 0 {
            let p = r.problem.expect("a flipped bit is always found");
            let want = at.checked_sub(header.len()).map(|o| owner[o] as u64);
            assert_eq!(p.index, want, "flip at byte {at}: {p}");
        }
    }
}

#[test]
fn errors_name_the_file_and_place() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = build_with(dir.path(), 20, 8, key());
    let (header, frames) = split(&bytes);
    let at = header.len() + frames[..9].iter().map(Vec::len).sum::<usize>();
    bytes[at + 50] ^= 1;
    let path = dir.path().join("t.dna");
    std::fs::write(&path, &bytes).unwrap();
    let trace = Trace::open(&path).unwrap();
    let err = trace.records().unwrap().find_map(Result::err).unwrap();
    assert_eq!(err.to_string(), format!("{}: record 9: checksum mismatch (byte {at})", path.display()));
    let err = trace.events().unwrap().find_map(Result::err).unwrap();
    assert!(matches!(err, DnaError::Corrupt { problem: Problem { index: Some(9), .. }, .. }));

    std::fs::write(&path, b"hello").unwrap();
    assert_eq!(
        Trace::open(&path).unwrap_err().to_string(),
        format!("{}: file header: not a ForgeOne trace (bad magic)", path.display())
    );
    let missing = dir.path().join("missing.dna");
    assert!(matches!(verify_file(&missing, &trusted()), Err(DnaError::Io { op: "open", .. })));
}

#[test]
fn the_writer_refuses_its_own_kinds_and_oversized_records_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.dna");
    let mut w = TraceWriter::create(&path, &identity(), key(), config(100)).unwrap();
    assert!(matches!(w.append(&Record::Identity(identity())), Err(DnaError::NotAppendable { .. })));
    let huge = Record::Quarantine(QuarantineAction {
        ts_ns: 0,
        op: QuarantineOp::Freeze,
        actor: "x".into(),
        reason: vec![],
        snapshot: json!("a".repeat(frame::MAX_PAYLOAD)),
    });
    assert!(matches!(w.append(&huge), Err(DnaError::TooLarge { kind: "quarantine", .. })));
    w.append(&record(0)).unwrap();
    assert!(
        TraceWriter::create(&path, &identity(), key(), config(100))
            .is_err_and(|e| matches!(e, DnaError::Exists { .. }))
    );
    w.close().unwrap();
    let r = verify_file(&path, &trusted()).unwrap();
    assert!(r.ok);
    assert_eq!(r.records, 4); // identity, checkpoint, the decision, the closing checkpoint
}

#[test]
fn flush_and_sync_policies_put_records_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.dna");
    let len = |p: &Path| std::fs::metadata(p).unwrap().len();
    // Buffered: nothing reaches the file until a flush.
    let mut w = TraceWriter::create(&path, &identity(), key(), config(100)).unwrap();
    let created = len(&path);
    w.decision(&event(1)).unwrap();
    assert_eq!(len(&path), created);
    w.flush().unwrap();
    assert!(len(&path) > created);
    // Dropped without close: written, not signed.
    w.decision(&event(2)).unwrap();
    drop(w);
    let r = verify_file(&path, &trusted()).unwrap();
    assert!(r.ok);
    assert_eq!((r.records, r.unsigned_tail), (4, 2));
    // Per-record sync writes each record at once.
    let path = dir.path().join("r.dna");
    let cfg = WriterConfig { fsync: FsyncPolicy::Record, ..config(100) };
    let mut w = TraceWriter::create(&path, &identity(), key(), cfg).unwrap();
    let before = len(&path);
    w.sampled_allowed(&event(3)).unwrap();
    assert!(len(&path) > before);
    // A zero flush interval writes on the next append or tick.
    let path = dir.path().join("z.dna");
    let cfg = WriterConfig { flush_interval: Duration::ZERO, ..config(100) };
    let mut w = TraceWriter::create(&path, &identity(), key(), cfg).unwrap();
    let before = len(&path);
    w.decision(&event(4)).unwrap();
    assert!(len(&path) > before);
    // A checkpoint interval signs on tick.
    let cfg = WriterConfig { checkpoint_interval: Some(Duration::ZERO), ..config(100) };
    let (mut w, _) = TraceWriter::open(&path, key(), cfg).unwrap();
    w.tick().unwrap();
    drop(w);
    let r = verify_file(&path, &trusted()).unwrap();
    assert_eq!(r.unsigned_tail, 0, "{r:?}");
}

#[test]
fn the_store_names_files_by_workload_and_reopens_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = TraceStore::new(dir.path());
    for bad in ["", ".hidden", "../x", "a/b", "a b", &"x".repeat(129)] {
        assert!(matches!(store.path(bad), Err(DnaError::BadWorkloadId { .. })), "{bad:?}");
    }
    let (mut w, report) = store.open_or_create(&identity(), key(), config(8)).unwrap();
    assert_eq!(report, OpenReport { records: 2, torn_tail: None });
    assert_eq!(w.path(), dir.path().join("traces/cgroup-4242.dna"));
    w.decision(&event(1)).unwrap();
    w.close().unwrap();
    let (w, report) = store.open_or_create(&identity(), key(), config(8)).unwrap();
    assert_eq!(report.records, 4);
    assert_eq!(w.len(), 5);
    w.close().unwrap();
    assert_eq!(store.list().unwrap(), ["cgroup-4242"]);
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(store.dir()), 0o700);
    assert_eq!(mode(&store.path("cgroup-4242").unwrap()), 0o600);

    // A file under this workload's name that is another workload's trace is refused.
    let moved = dir.path().join("moved.dna");
    TraceWriter::create(&moved, &Identity::cgroup("/x", 1, 0), key(), config(8)).unwrap().close().unwrap();
    std::fs::rename(&moved, store.path("cgroup-4242").unwrap()).unwrap();
    let err = store.open_or_create(&identity(), key(), config(8)).unwrap_err();
    assert!(matches!(&err, DnaError::WrongWorkload { found, .. } if found == "cgroup-1"), "{err}");
}
