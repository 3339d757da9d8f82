//! Runs of real modules (WAT written here): the gate at run time, limits,
//! the trace, replay and the module cache.

use std::sync::Arc;

use super::{
    cache::ModuleCache,
    capsule::{RunOptions, replay, run_capsule},
    gate::{AllowAll, Gate, PolicyGate},
    host::{Live, Sink, errno, journal::Journal},
    manifest::{CapsuleManifest, Limits},
    runtime::{End, PrepareError, RunResult, Runtime, Source, run},
    tests::{CAPS, HELLO, POLICY, Signers, wasm},
};
use crate::{
    dna::{Record, Records, TraceStore},
    policy::{Policy, PolicySet},
    sign::SigningKey,
};

pub(super) fn live(gate: Box<dyn Gate>, max_open: u32) -> Live {
    let mut l = Live::new(gate, vec!["t".into()], Vec::new(), max_open);
    l.stdout = Sink::Capture(Vec::new());
    l.stderr = Sink::Capture(Vec::new());
    l
}

fn run_wat(wat: &str, limits: &Limits, gate: Box<dyn Gate>) -> RunResult {
    let rt = Runtime::new(None);
    let p = rt.prepare(&wasm(wat)).unwrap();
    run(&p, "_start", limits, live(gate, limits.max_open_files), Journal::live(None))
}

pub(super) fn stdout(r: &RunResult) -> String {
    match &r.ctx.live.stdout {
        Sink::Capture(v) => String::from_utf8_lossy(v).into_owned(),
        _ => String::new(),
    }
}

const OPEN_IMPORTS: &str = r#"
  (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)"#;

/// Opens `path` (relative to the root preopen) for reading, or creates it
/// for writing, and exits with the errno.
fn open_and_exit(path: &str, write: bool) -> String {
    let rel = path.trim_start_matches('/');
    let (oflags, rights) = if write { (1 | 8, 64) } else { (0, 2) };
    format!(
        r#"(module {OPEN_IMPORTS}
  (data (i32.const 64) "{rel}")
  (func (export "_start")
    (call $exit (call $open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const {len})
      (i32.const {oflags}) (i64.const {rights}) (i64.const 0) (i32.const 0) (i32.const 32)))))"#,
        len = rel.len()
    )
}

pub(super) fn gate(caps: &str, policy: &str) -> Box<dyn Gate> {
    let m = CapsuleManifest::parse(format!("name = \"g\"\nversion = 1\n[capabilities]\n{caps}").as_bytes())
        .unwrap();
    let set = PolicySet::from_docs(vec![Policy::from_yaml(policy, "p.yaml").unwrap()]).unwrap();
    let record = set.compile_for(&crate::policy::Workload::any(), crate::policy::Tier::Trusted, 1).unwrap();
    Box::new(PolicyGate::new(m.capabilities, record, false))
}

#[test]
fn host_calls_pass_the_gate_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    std::fs::write(dir.path().join("in.txt"), "x").unwrap();
    let policy = POLICY.replace("/srv/out/", &format!("{d}/out/"));
    std::fs::create_dir(dir.path().join("out")).unwrap();
    let caps = format!(
        "files = [{{path = \"{d}/in.txt\", access = \"read\"}}, {{path = \"{d}/out/\", access = \"write\"}}]\n"
    );
    let code = |path: String, write: bool| {
        let r = run_wat(&open_and_exit(&path, write), &Limits::default(), gate(&caps, &policy));
        (r.end.exit_code().unwrap(), r.denied)
    };
    assert_eq!(code(format!("{d}/in.txt"), false).0, 0);
    assert_eq!(code(format!("{d}/out/new.txt"), true).0, 0);
    assert!(dir.path().join("out/new.txt").exists(), "the allowed write happened");
    let (e, denied) = code(format!("{d}/in.txt"), true);
    assert_eq!(e, i32::from(errno::ACCES), "read-only capability");
    assert_eq!(denied.len(), 1);
    assert!(denied[0].enforced && denied[0].facility.starts_with("write "), "{denied:?}");
    let (e, denied) = code("/etc/passwd".into(), false);
    assert_eq!(e, i32::from(errno::ACCES), "not requested");
    assert_eq!(denied[0].name, "path_open");
    // `..` cannot climb out of what the gate decided.
    let (e, _) = code(format!("{d}/out/../../../etc/passwd"), false);
    assert_eq!(e, i32::from(errno::ACCES));
    // A symlink inside an allowed directory is not followed out of it.
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("out/link")).unwrap();
    let (e, _) = code(format!("{d}/out/link"), true);
    assert_eq!(e, i32::from(errno::LOOP), "symlinks are refused, not followed");
    // The same call under an allow-all gate goes through.
    let r = run_wat(&open_and_exit("/etc/passwd", false), &Limits::default(), Box::new(AllowAll));
    assert_eq!(r.end, End::Exited { code: 0 });
}

#[test]
fn limits_end_the_run_with_a_reason() {
    let spin = r#"(module (func (export "_start") (loop $l (br $l))))"#;
    let r = run_wat(spin, &Limits { fuel: 100_000, ..Limits::default() }, Box::new(AllowAll));
    assert_eq!(r.end, End::OutOfFuel { fuel: 100_000 });
    let r = run_wat(spin, &Limits { deadline_ms: 50, ..Limits::default() }, Box::new(AllowAll));
    assert_eq!(r.end, End::Deadline { ms: 50 });
    assert!(r.end.summary().contains("deadline of 50 ms"));

    let grow = r#"(module (memory (export "memory") 1)
      (func (export "_start") (drop (memory.grow (i32.const 100)))))"#;
    let r = run_wat(grow, &Limits { memory_mib: 2, ..Limits::default() }, Box::new(AllowAll));
    assert!(matches!(r.end, End::MemoryLimit { limit_bytes, .. } if limit_bytes == 2 << 20), "{:?}", r.end);

    let trap = r#"(module (func (export "_start") unreachable))"#;
    let r = run_wat(trap, &Limits::default(), Box::new(AllowAll));
    assert!(matches!(&r.end, End::Trapped { trap } if trap.contains("unreachable")), "{:?}", r.end);

    let many = format!(
        r#"(module {OPEN_IMPORTS}
  (data (i32.const 64) "etc/passwd")
  (func (export "_start") (local $e i32)
    (loop $l
      (local.set $e (call $open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const 10)
        (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 32)))
      (br_if $l (i32.eqz (local.get $e))))
    (call $exit (local.get $e))))"#
    );
    let r = run_wat(&many, &Limits { max_open_files: 3, ..Limits::default() }, Box::new(AllowAll));
    assert_eq!(r.end, End::Exited { code: i32::from(errno::MFILE) });
    assert_eq!(r.host_calls, 5, "3 opens, the refused 4th, exit");
}

#[test]
fn modules_the_host_cannot_run_are_refused_before_running() {
    let rt = Runtime::new(None);
    // An empty component: nothing to run (components run wasi:cli/run).
    let component = b"\0asm\x0d\0\x01\0".to_vec();
    assert!(matches!(rt.prepare(&component), Err(PrepareError::NoRun)));
    let foreign = r#"(module (import "env" "system" (func (param i32))) (func (export "_start")))"#;
    let e = rt.prepare(&wasm(foreign)).err().unwrap();
    assert!(e.to_string().contains("env.system"), "{e}");
    assert!(matches!(rt.prepare(b"\0asm\x01\0\0\0\x99"), Err(PrepareError::Invalid(_))));
    // An unimplemented WASI call is answered ENOSYS and recorded, not a link error.
    let poll = r#"(module
      (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (func (export "_start") (call $exit (call $poll (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))))"#;
    let r = run_wat(poll, &Limits::default(), Box::new(AllowAll));
    assert_eq!(r.end, End::Exited { code: i32::from(errno::NOSYS) });
}

/// Writes 16 random bytes and the realtime clock to stdout.
const NONDETERMINISTIC: &str = r#"(module
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (drop (call $random (i32.const 100) (i32.const 16)))
    (drop (call $clock (i32.const 0) (i64.const 1) (i32.const 116)))
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 24))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

fn policy_set() -> PolicySet {
    PolicySet::from_docs(vec![
        Policy::from_yaml(&POLICY.replace("clock: allow}", "clock: allow, random: allow}"), "p.yaml")
            .unwrap(),
    ])
    .unwrap()
}

#[test]
fn a_run_is_recorded_and_replays_identically_without_touching_the_world() {
    let dir = tempfile::tempdir().unwrap();
    let s = Signers::new(1);
    let caps = format!("{CAPS}[capabilities]\nclock = true\nrandom = true\n");
    let module = wasm(NONDETERMINISTIC);
    let pkg = s.signed(&caps, module.clone(), &[0]).verify(&s.trust(1, 1)).unwrap();
    let rt = Runtime::new(None);
    let opts = RunOptions {
        policy: policy_set(),
        tier: None,
        monitor: false,
        args: vec!["--flag".into()],
        inputs: Vec::new(),
        run_id: None,
        trace: Some((TraceStore::new(dir.path()), Arc::new(SigningKey::generate().unwrap()))),
        stdout: Sink::Capture(Vec::new()),
        stderr: Sink::Discard,
        enter: None,
    };
    let (report, _) = run_capsule(&rt, &pkg, opts).unwrap();
    assert_eq!(report.end, End::Exited { code: 0 });
    assert_eq!(report.host_calls, 3);
    let trace = report.trace.clone().unwrap();

    let records: Vec<Record> = Records::open(&trace).unwrap().map(|e| e.unwrap().record).collect();
    let run =
        records.iter().find_map(|r| if let Record::CapsuleRun(c) = r { Some(c) } else { None }).unwrap();
    assert_eq!(run.name, "hello");
    assert_eq!(run.args, ["hello", "--flag"]);
    assert_eq!(run.signers, pkg.signer_ids());
    let calls: Vec<&str> = records
        .iter()
        .filter_map(|r| if let Record::HostCall(c) = r { Some(c.name.as_str()) } else { None })
        .collect();
    assert_eq!(calls, ["random_get", "clock_time_get", "fd_write"]);
    let Some(Record::Outcome(o)) = records.iter().rev().find(|r| matches!(r, Record::Outcome(_))) else {
        panic!("no outcome")
    };
    assert_eq!(o.output_sha3.as_deref(), Some(report.output_sha3.as_str()));

    // Replay: the random bytes and the time come from the recording, so the
    // output digest is the same although a live run would differ.
    let again = replay(&rt, &trace, &module).unwrap();
    assert!(again.identical, "{again:?}");
    assert_eq!(again.replayed.output_sha3.as_deref(), Some(report.output_sha3.as_str()));
    let v = crate::dna::verify_file(&trace, &crate::dna::VerifyOptions::default()).unwrap();
    assert!(v.ok && v.unsigned_tail == 0, "the run's trace verifies and is signed to its end: {v:?}");

    // Another module is refused by digest.
    let e = replay(&rt, &trace, &wasm(HELLO)).unwrap_err();
    assert!(e.to_string().contains("recorded a run of"), "{e}");
}

#[test]
fn a_run_that_cannot_enter_its_confinement_says_so_in_its_trace() {
    let dir = tempfile::tempdir().unwrap();
    let s = Signers::new(1);
    let caps = format!("{CAPS}[capabilities]\nclock = true\nrandom = true\n");
    let pkg = s.signed(&caps, wasm(NONDETERMINISTIC), &[0]).verify(&s.trust(1, 1)).unwrap();
    let opts = RunOptions {
        policy: policy_set(),
        tier: None,
        monitor: false,
        args: Vec::new(),
        inputs: Vec::new(),
        run_id: Some("r-enter".into()),
        trace: Some((TraceStore::new(dir.path()), Arc::new(SigningKey::generate().unwrap()))),
        stdout: Sink::Discard,
        stderr: Sink::Discard,
        enter: Some(Box::new(|| Err(std::io::Error::other("cgroup.procs: permission denied")))),
    };
    let Err(e) = run_capsule(&Runtime::new(None), &pkg, opts) else { panic!("it ran") };
    assert!(e.to_string().contains("permission denied"), "{e}");
    let trace = std::fs::read_dir(dir.path().join("traces"))
        .or_else(|_| std::fs::read_dir(dir.path()))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "dna"))
        .expect("the run's trace");
    let records: Vec<Record> = Records::open(&trace).unwrap().map(|e| e.unwrap().record).collect();
    let Some(Record::Outcome(o)) = records.iter().rev().find(|r| matches!(r, Record::Outcome(_))) else {
        panic!("no outcome: {records:?}")
    };
    assert!(o.summary.contains("not run") && o.host_calls == Some(0), "{o:?}");
    assert!(!records.iter().any(|r| matches!(r, Record::HostCall(_))));
}

#[test]
fn replay_names_the_first_call_that_differs() {
    let rt = Runtime::new(None);
    let p = rt.prepare(&wasm(NONDETERMINISTIC)).unwrap();
    let limits = Limits::default();
    // Record with an allow-all gate and a writer-less journal, then capture the calls.
    let dir = tempfile::tempdir().unwrap();
    let store = TraceStore::new(dir.path());
    let id = crate::dna::Identity::capsule("t", "sha3-256:00", "r1", 1);
    let (w, _) =
        store.open_or_create(&id, Arc::new(SigningKey::generate().unwrap()), Default::default()).unwrap();
    let path = w.path().to_path_buf();
    let mut r = run(&p, "_start", &limits, live(Box::new(AllowAll), 16), Journal::live(Some(w)));
    r.ctx.journal.take_writer().unwrap().close().unwrap();
    let mut calls: Vec<crate::dna::HostCall> = Records::open(&path)
        .unwrap()
        .filter_map(|e| if let Record::HostCall(c) = e.unwrap().record { Some(c) } else { None })
        .collect();
    assert_eq!(calls.len(), 3);

    let same = run(&p, "_start", &limits, live(Box::new(AllowAll), 16), Journal::replay(calls.clone()));
    assert_eq!(same.end, End::Exited { code: 0 });
    assert_eq!(same.output_sha3, r.output_sha3);

    calls[1].args = serde_json::json!({"id": 1});
    let diff = run(&p, "_start", &limits, live(Box::new(AllowAll), 16), Journal::replay(calls.clone()));
    match &diff.end {
        End::Diverged { divergence } => {
            assert_eq!(divergence.call, 1);
            assert!(divergence.to_string().contains("clock_time_get"), "{divergence}");
        }
        other => panic!("{other:?}"),
    }
    calls[1].args = serde_json::json!({"id": 0});
    calls.push(calls[0].clone());
    let longer = run(&p, "_start", &limits, live(Box::new(AllowAll), 16), Journal::replay(calls));
    assert!(matches!(&longer.end, End::Diverged { divergence } if divergence.call == 3), "{:?}", longer.end);
}

#[test]
fn compiled_modules_are_cached_by_digest_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let module = wasm(HELLO);
    let rt = Runtime::new(Some(ModuleCache::open(dir.path()).unwrap()));
    assert_eq!(rt.prepare(&module).unwrap().source, Source::Compiled);
    assert_eq!(rt.prepare(&module).unwrap().source, Source::Memory);
    let fresh = Runtime::new(Some(ModuleCache::open(dir.path()).unwrap()));
    let p = fresh.prepare(&module).unwrap();
    assert_eq!(p.source, Source::DiskCache);
    let r = run(&p, "_start", &Limits::default(), live(Box::new(AllowAll), 16), Journal::live(None));
    assert_eq!(stdout(&r), "hello\n");

    // A changed artifact is not loaded: compiled again, and replaced.
    let file = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .unwrap();
    let good = std::fs::read(&file).unwrap();
    // A byte of the artifact, of its tag, of the trailer; and the file cut short.
    let n = good.len();
    type Change<'a> = &'a dyn Fn(&mut Vec<u8>);
    let changes: [Change<'_>; 4] =
        [&|b| b[n / 2] ^= 1, &|b| b[n - 20] ^= 1, &|b| b[n - 1] ^= 1, &|b| b.truncate(n - 45)];
    for change in changes {
        let mut bytes = good.clone();
        change(&mut bytes);
        std::fs::write(&file, &bytes).unwrap();
        let tampered = Runtime::new(Some(ModuleCache::open(dir.path()).unwrap()));
        assert_eq!(tampered.prepare(&module).unwrap().source, Source::Compiled);
        let again = Runtime::new(Some(ModuleCache::open(dir.path()).unwrap()));
        assert_eq!(again.prepare(&module).unwrap().source, Source::DiskCache);
    }
}

#[test]
fn refusals_before_running_name_what_is_not_granted() {
    let s = Signers::new(1);
    let caps = format!("{CAPS}[capabilities]\nrandom = true\nenv = [\"HOME\"]\n");
    let pkg = s.signed(&caps, wasm(HELLO), &[0]).verify(&s.trust(1, 1)).unwrap();
    let opts = || RunOptions {
        policy: PolicySet::from_docs(vec![Policy::from_yaml(POLICY, "p.yaml").unwrap()]).unwrap(),
        tier: None,
        monitor: false,
        args: Vec::new(),
        inputs: Vec::new(),
        run_id: None,
        trace: None,
        stdout: Sink::Discard,
        stderr: Sink::Discard,
        enter: None,
    };
    let e = run_capsule(&Runtime::new(None), &pkg, opts()).err().unwrap();
    assert_eq!(e.code(), "not_granted");
    assert!(e.to_string().contains("env HOME") && e.to_string().contains("random"), "{e}");
    // Monitor mode runs it.
    let (r, _) = run_capsule(&Runtime::new(None), &pkg, RunOptions { monitor: true, ..opts() }).unwrap();
    assert_eq!(r.end, End::Exited { code: 0 });

    // Inputs must be among the intended ones when the manifest names any.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "abc").unwrap();
    let digest = crate::sign::sha3_256(b"abc").to_hex();
    let intent = format!("{CAPS}[intent]\ninputs = [\"sha3-256:{digest}\"]\n");
    let pkg = s.signed(&intent, wasm(HELLO), &[0]).verify(&s.trust(1, 1)).unwrap();
    let ok = run_capsule(&Runtime::new(None), &pkg, RunOptions { inputs: vec![input.clone()], ..opts() });
    assert!(ok.is_ok());
    std::fs::write(&input, "abd").unwrap();
    let e =
        run_capsule(&Runtime::new(None), &pkg, RunOptions { inputs: vec![input], ..opts() }).err().unwrap();
    assert_eq!(e.code(), "unintended_input", "{e}");
}
