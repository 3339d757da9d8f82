//! A real writer process, SIGKILLed mid-write, again and again: every
//! complete record survives and verifies, a torn last record is found, cut
//! off and reported, and appends continue after it.
//!
//! The child is this same test binary, re-executed with `FORGE_DNA_CRASH_CHILD`
//! set: it then appends records as fast as it can until it is killed. Every
//! 64th record is a quarantine record with a large snapshot (64-512 KiB), so
//! some `write(2)` calls take long enough to be caught in the act.
//!
//! Even rounds kill at a random moment once the file has grown. Odd rounds
//! aim: the parent follows the records' length fields as the file grows and
//! kills the moment the file ends inside a record, which (since the writer
//! only writes whole records) means a `write(2)` is in progress. If it ends
//! before the signal lands, nothing is torn; the rounds go on (up to
//! `MAX_ROUNDS`) until at least one kill has torn a record.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use forge_agent::{
    dna::{
        FsyncPolicy, Identity, QuarantineAction, QuarantineOp, Record, Trace, TraceWriter, VerifyOptions,
        WriterConfig, verify_file,
    },
    events::{DecisionEvent, Hook, Mode, Op, Target, Verdict},
    sign::{SigningKey, keys::generate_files},
};

const CHILD_ENV: &str = "FORGE_DNA_CRASH_CHILD";
const KEY_ENV: &str = "FORGE_DNA_CRASH_KEY";
const TEST_NAME: &str = "sigkill_mid_write_loses_only_the_torn_tail";
const ROUNDS: u32 = 8;
const MAX_ROUNDS: u32 = 40;
/// The pid the parent's own appends carry (no process has it).
const PARENT: u32 = u32::MAX;

/// The agent's key, loaded from the key file the parent generated.
fn load_key(path: &Path) -> Arc<SigningKey> {
    Arc::new(SigningKey::load(path).expect("load the agent key"))
}

fn config() -> WriterConfig {
    WriterConfig { checkpoint_every: 256, fsync: FsyncPolicy::Checkpoint, ..WriterConfig::default() }
}

fn event(seq: u64, pid: u32) -> DecisionEvent {
    DecisionEvent {
        ts_ns: seq,
        cgroup_id: 77,
        actual_cgroup_id: 77,
        generation: 1,
        pid,
        tgid: pid,
        ppid: 1,
        comm: "writer".into(),
        hook: Hook::LsmFileOpen,
        op: Op::FileRead,
        verdict: Verdict::Deny,
        mode: Mode::Enforce,
        rule_id: 3,
        target: Target::Path { path: format!("/srv/data/file-{seq}") },
    }
}

/// The child: append as fast as possible until SIGKILL.
fn child(path: &Path, key: Arc<SigningKey>) -> ! {
    let pid = std::process::id();
    let (mut w, _) = TraceWriter::open(path, key, config()).expect("child: open the trace");
    let mut state = u64::from(pid) | 1;
    for seq in 0.. {
        if seq % 64 == 63 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let size = (64 << 10) + (state % (448 << 10)) as usize;
            w.append(&Record::Quarantine(QuarantineAction {
                ts_ns: seq,
                op: QuarantineOp::Freeze,
                actor: format!("child {pid}"),
                reason: vec![format!("record {seq}")],
                snapshot: serde_json::Value::String("x".repeat(size)),
            }))
            .expect("child: append a snapshot");
        }
        w.decision(&event(seq, pid)).expect("child: append");
    }
    unreachable!("the loop only ends when the process is killed")
}

/// Each child numbers its events 0, 1, 2, ...: a gap or a repeat would mean
/// a record in the middle was lost or doubled.
fn check_sequences(path: &Path) -> u64 {
    let mut last: std::collections::HashMap<u32, u64> = Default::default();
    let mut n = 0;
    for ev in Trace::open(path).unwrap().events().unwrap() {
        let ev = ev.unwrap();
        if ev.pid == PARENT {
            continue;
        }
        let want = last.get(&ev.pid).map_or(0, |s| s + 1);
        assert_eq!(ev.ts_ns, want, "event sequence of writer {}", ev.pid);
        last.insert(ev.pid, ev.ts_ns);
        n += 1;
    }
    n
}

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Follows length fields from `boundary` (a record boundary) as far as the
/// file's current size allows; returns the last boundary reached and
/// whether the file ends inside a record there.
fn follow(file: &std::fs::File, mut boundary: u64) -> (u64, bool) {
    use std::os::unix::fs::FileExt as _;
    let size = file.metadata().unwrap().len();
    let mut h = [0u8; 4];
    while boundary + 4 <= size && file.read_exact_at(&mut h, boundary).is_ok() {
        let end = boundary + 8 + u64::from(u32::from_le_bytes(h)) + 32;
        if end > size {
            break;
        }
        boundary = end;
    }
    (boundary, size > boundary)
}

#[test]
fn sigkill_mid_write_loses_only_the_torn_tail() {
    if let (Some(path), Some(key_path)) = (std::env::var_os(CHILD_ENV), std::env::var_os(KEY_ENV)) {
        child(&PathBuf::from(path), load_key(Path::new(&key_path)));
    }
    let dir = tempfile::tempdir().unwrap();
    let key_file = generate_files(dir.path(), "agent").unwrap().private_path;
    let key = load_key(&key_file);
    let trusted = VerifyOptions { trusted_key: Some(key.public_key()) };
    let mut torn_seen = 0;
    let mut rng = 0x2545_F491_4F6C_DD1Du64 ^ u64::from(std::process::id());
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut round = 0;
    while round < ROUNDS || (torn_seen == 0 && round < MAX_ROUNDS) {
        // A fresh trace each round (hashing is slow in debug builds; big files make slow tests).
        let path = dir.path().join(format!("crash-{round}.dna"));
        TraceWriter::create(&path, &Identity::cgroup("/sys/fs/cgroup/crash", 77, 0), key.clone(), config())
            .unwrap()
            .close()
            .unwrap();
        let start_len = len(&path);
        let aim = round % 2 == 1;
        let grow = if aim { next() % (256 << 10) } else { (64 << 10) + next() % (512 << 10) };
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .env(KEY_ENV, &key_file)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let mut boundary = start_len;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                Instant::now() < deadline,
                "round {round}: the writer did not write {grow} bytes in 60 s"
            );
            let inside;
            (boundary, inside) = follow(&file, boundary);
            if boundary >= start_len + grow && (!aim || inside) {
                break;
            }
            assert!(child.try_wait().unwrap().is_none(), "round {round}: the writer exited on its own");
            if !aim {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        if !aim {
            std::thread::sleep(Duration::from_micros(next() % 3000));
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        let written = len(&path) - start_len;
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "round {round}: {status:?}");

        // Read-only: everything up to the last complete record verifies.
        let before = verify_file(&path, &trusted).unwrap();
        assert!(before.ok, "round {round}: {before:?}");
        let events = check_sequences(&path);
        torn_seen += u32::from(before.torn_tail.is_some());

        // The agent restarts: the torn tail is cut off and reported, appends go on.
        let (mut w, report) = TraceWriter::open(&path, key.clone(), config()).unwrap();
        assert_eq!(report.records, before.records, "round {round}");
        assert_eq!(report.torn_tail, before.torn_tail, "round {round}");
        if let Some(t) = report.torn_tail {
            assert_eq!(len(&path), t.offset, "round {round}: the torn tail was cut off");
        }
        for i in 0..100 {
            w.decision(&event(i, PARENT)).unwrap();
        }
        w.close().unwrap();
        let after = verify_file(&path, &trusted).unwrap();
        assert!(
            after.ok && after.torn_tail.is_none() && after.unsigned_tail == 0,
            "round {round}: {after:?}"
        );
        // + the reopen record, 100 events, and the checkpoints among and after them.
        assert!(after.records >= before.records + 102, "round {round}: {before:?} then {after:?}");
        eprintln!(
            "round {round} ({}): killed after writing {written} bytes; {} records ({events} events) verify; {}",
            if aim { "aimed at a write in progress" } else { "at a random moment" },
            before.records,
            before.torn_tail.map_or("no torn record".to_string(), |t| t.to_string()),
        );
        round += 1;
    }
    eprintln!(
        "{round} SIGKILLs: {torn_seen} left a torn last record; every one was cut off and appended after"
    );
    assert!(torn_seen > 0, "no kill in {round} rounds tore a record: the torn-tail path was not exercised");
}
