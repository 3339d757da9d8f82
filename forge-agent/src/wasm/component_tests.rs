//! Component capsules (WASI 0.2): preview1 WAT modules made components
//! with the adapter, run through the gate, recorded and replayed.

use std::sync::Arc;

use super::{
    cache::ModuleCache,
    capsule::{RunOptions, replay, run_capsule},
    component::{ComponentizeError, from_preview1},
    gate::AllowAll,
    host::{LinkError, Sink, journal::Journal},
    manifest::Limits,
    run_tests::{gate, live, stdout},
    runtime::{End, PrepareError, Runtime, Source, run, validate},
    tests::{POLICY, Signers, wasm},
};
use crate::{
    dna::{Record, Records, TraceStore},
    policy::{Policy, PolicySet},
    sign::SigningKey,
};

/// Reads `input` and writes it to stdout, then tries to open /etc/passwd
/// and writes `A` + the errno it got; exits 0.
fn reader(input: &str) -> Vec<u8> {
    let rel = input.trim_start_matches('/');
    let wat = format!(
        r#"(module
  (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "{rel}")
  (data (i32.const 512) "etc/passwd")
  (func (export "_start") (local $e i32)
    (if (call $open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const {len}) (i32.const 0)
          (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 32))
      (then (call $exit (i32.const 10))))
    (i32.store (i32.const 16) (i32.const 1024))
    (i32.store (i32.const 20) (i32.const 100))
    (if (call $read (i32.load (i32.const 32)) (i32.const 16) (i32.const 1) (i32.const 24))
      (then (call $exit (i32.const 11))))
    (i32.store (i32.const 20) (i32.load (i32.const 24)))
    (drop (call $write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 28)))
    (local.set $e (call $open (i32.const 3) (i32.const 0) (i32.const 512) (i32.const 10) (i32.const 0)
      (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 32)))
    (i32.store8 (i32.const 1024) (i32.add (i32.const 65) (local.get $e)))
    (i32.store (i32.const 20) (i32.const 1))
    (drop (call $write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 28)))
    (call $exit (i32.const 0))))"#,
        len = rel.len()
    );
    from_preview1(&wasm(&wat)).unwrap()
}

#[test]
fn a_component_passes_the_gate_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "x").unwrap();
    let input = input.display().to_string();
    let component = reader(&input);
    validate(&component).unwrap();
    let rt = Runtime::new(None);
    let p = rt.prepare(&component).unwrap();
    assert!(p.is_component());

    let caps = format!("files = [{{path = \"{input}\", access = \"read\"}}]\n");
    let r = run(&p, "_start", &Limits::default(), live(gate(&caps, POLICY), 16), Journal::live(None));
    assert_eq!(r.end, End::Exited { code: 0 });
    // The allowed file was read; /etc/passwd was refused with EACCES (2).
    assert_eq!(stdout(&r), "xC");
    assert_eq!(r.denied.len(), 1, "{:?}", r.denied);
    assert_eq!(r.denied[0].name, "descriptor.open-at");
    assert!(r.denied[0].enforced && r.denied[0].facility == "read /etc/passwd", "{:?}", r.denied);

    // Allow-all: the same call goes through (A + 0).
    let r = run(&p, "_start", &Limits::default(), live(Box::new(AllowAll), 16), Journal::live(None));
    assert_eq!(stdout(&r), "xA");
    assert!(r.denied.is_empty());
}

#[test]
fn a_denied_clock_stops_a_component_with_the_reason() {
    let clock = r#"(module
      (import "wasi_snapshot_preview1" "clock_time_get" (func $now (param i32 i64 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start") (drop (call $now (i32.const 0) (i64.const 1) (i32.const 0)))))"#;
    let component = from_preview1(&wasm(clock)).unwrap();
    let rt = Runtime::new(None);
    let p = rt.prepare(&component).unwrap();
    let no_clock = POLICY.replace(", clock: allow}", "}");
    let r = run(
        &p,
        "_start",
        &Limits::default(),
        live(gate("clock = true\n", &no_clock), 16),
        Journal::live(None),
    );
    match &r.end {
        End::Trapped { trap } => assert!(trap.contains("wall-clock.now: denied"), "{trap}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.denied[0].facility, "clock");
    let r =
        run(&p, "_start", &Limits::default(), live(gate("clock = true\n", POLICY), 16), Journal::live(None));
    assert_eq!(r.end, End::Exited { code: 0 });
}

#[test]
fn a_component_run_is_recorded_and_replays_identically() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "x").unwrap();
    let input_s = input.display().to_string();
    let component = reader(&input_s);
    let s = Signers::new(1);
    let caps = format!(
        "name = \"reader\"\nversion = 1\n[capabilities]\nfiles = [{{path = \"{input_s}\", access = \"read\"}}]\n"
    );
    let pkg = s.signed(&caps, component.clone(), &[0]).verify(&s.trust(1, 1)).unwrap();
    let rt = Runtime::new(None);
    let opts = RunOptions {
        policy: PolicySet::from_docs(vec![Policy::from_yaml(POLICY, "p.yaml").unwrap()]).unwrap(),
        tier: None,
        monitor: false,
        args: Vec::new(),
        inputs: Vec::new(),
        run_id: None,
        trace: Some((TraceStore::new(dir.path().join("traces")), Arc::new(SigningKey::generate().unwrap()))),
        stdout: Sink::Capture(Vec::new()),
        stderr: Sink::Discard,
        enter: None,
    };
    let (report, _) = run_capsule(&rt, &pkg, opts).unwrap();
    assert_eq!(report.end, End::Exited { code: 0 });
    let trace = report.trace.clone().unwrap();
    let records: Vec<Record> = Records::open(&trace).unwrap().map(|e| e.unwrap().record).collect();
    let calls: Vec<&str> = records
        .iter()
        .filter_map(|r| if let Record::HostCall(c) = r { Some(c.name.as_str()) } else { None })
        .collect();
    assert!(calls.contains(&"get-directories") && calls.contains(&"exit"), "{calls:?}");
    assert_eq!(calls.iter().filter(|c| **c == "descriptor.open-at").count(), 2, "{calls:?}");

    // The input is gone: replay answers every call from the recording.
    std::fs::remove_file(&input).unwrap();
    let again = replay(&rt, &trace, &component).unwrap();
    assert!(again.identical, "{again:?}");
    assert_eq!(again.replayed.output_sha3.as_deref(), Some(report.output_sha3.as_str()));

    // Another component (it reads another path) diverges at its first open.
    let other = reader("/tmp/elsewhere");
    let e = replay(&rt, &trace, &other).unwrap_err();
    assert!(e.to_string().contains("recorded a run of"), "{e}");
}

#[test]
fn components_the_host_cannot_run_are_refused_before_running() {
    let sockets = wasm(r#"(component (import "wasi:sockets/tcp@0.2.0" (instance)))"#);
    match validate(&sockets) {
        Err(PrepareError::Link(e @ LinkError::UnknownInterface(_))) => {
            assert!(e.to_string().contains("wasi:sockets/tcp@0.2.0"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(validate(&wasm("(component)")), Err(PrepareError::NoRun)));
    let mut broken = wasm("(component)");
    broken.extend_from_slice(&[0x7f, 0x00]);
    assert!(matches!(validate(&broken), Err(PrepareError::Invalid(_))), "{:?}", validate(&broken));
    assert!(matches!(Runtime::new(None).prepare(&wasm("(component)")), Err(PrepareError::NoRun)));
    let component = reader("/x");
    assert!(matches!(from_preview1(&component), Err(ComponentizeError::AlreadyComponent)));
    let foreign =
        r#"(module (import "env" "system" (func)) (memory (export "memory") 1) (func (export "_start")))"#;
    assert!(matches!(from_preview1(&wasm(foreign)), Err(ComponentizeError::Encode(_))));
}

#[test]
fn compiled_components_are_cached_by_digest() {
    let dir = tempfile::tempdir().unwrap();
    let component = reader("/x");
    let rt = Runtime::new(Some(ModuleCache::open(dir.path()).unwrap()));
    assert_eq!(rt.prepare(&component).unwrap().source, Source::Compiled);
    let fresh = Runtime::new(Some(ModuleCache::open(dir.path()).unwrap()));
    let p = fresh.prepare(&component).unwrap();
    assert_eq!(p.source, Source::DiskCache);
    let r = run(&p, "_start", &Limits::default(), live(Box::new(AllowAll), 16), Journal::live(None));
    // The input is missing: the module calls proc_exit(10), which the
    // adapter turns into WASI 0.2's exit(err): code 1.
    assert_eq!(r.end, End::Exited { code: 1 });
}

/// Calls `func` (a preview1 path call: dirfd, path, len) on each path in
/// turn and writes `A` + each errno to stdout.
fn path_calls(func: &str, paths: &[&str]) -> Vec<u8> {
    let mut data = String::new();
    let mut body = String::new();
    for (i, p) in paths.iter().enumerate() {
        let rel = p.trim_start_matches('/');
        let at = 256 + i * 256;
        data.push_str(&format!("(data (i32.const {at}) \"{rel}\")\n"));
        body.push_str(&format!(
            "(i32.store8 (i32.const 1024) (i32.add (i32.const 65) (call $f (i32.const 3) (i32.const {at}) (i32.const {len}))))
             (drop (call $write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 28)))\n",
            len = rel.len()
        ));
    }
    let wat = format!(
        r#"(module
  (import "wasi_snapshot_preview1" "{func}" (func $f (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  {data}
  (func (export "_start")
    (i32.store (i32.const 16) (i32.const 1024))
    (i32.store (i32.const 20) (i32.const 1))
    {body}))"#
    );
    from_preview1(&wasm(&wat)).unwrap()
}

#[test]
fn component_directory_changes_are_gated_as_writes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    std::fs::create_dir(dir.path().join("out")).unwrap();
    std::fs::write(dir.path().join("out/old.txt"), "x").unwrap();
    std::fs::write(dir.path().join("keep.txt"), "x").unwrap();
    let policy = POLICY.replace("/srv/out/", &format!("{d}/out/"));
    let caps = format!(
        "files = [{{path = \"{d}/out/\", access = \"write\"}}, {{path = \"{d}/keep.txt\", access = \"write\"}}]\n"
    );
    let rt = Runtime::new(None);
    let go = |component: &[u8]| {
        let p = rt.prepare(component).unwrap();
        run(&p, "_start", &Limits::default(), live(gate(&caps, &policy), 16), Journal::live(None))
    };

    let made = go(&path_calls("path_create_directory", &[&format!("{d}/out/new"), &format!("{d}/new")]));
    // Inside out/: made (A + 0). Beside it: not requested, EACCES (A + 2).
    assert_eq!(stdout(&made), "AC");
    assert!(dir.path().join("out/new").is_dir() && !dir.path().join("new").exists());
    assert_eq!(made.denied.len(), 1);
    assert_eq!(made.denied[0].name, "descriptor.create-directory-at");

    let removed =
        go(&path_calls("path_unlink_file", &[&format!("{d}/out/old.txt"), &format!("{d}/keep.txt")]));
    // keep.txt is requested, but the policy denies writes outside out/.
    assert_eq!(stdout(&removed), "AC");
    assert!(!dir.path().join("out/old.txt").exists() && dir.path().join("keep.txt").exists());
    assert_eq!(removed.denied[0].facility, format!("write {d}/keep.txt"));

    let rmdir = go(&path_calls("path_remove_directory", &[&format!("{d}/out/new")]));
    assert_eq!(stdout(&rmdir), "A");
    assert!(!dir.path().join("out/new").exists());
}

#[test]
fn a_component_appends_at_the_end_of_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.txt");
    std::fs::write(&log, "x").unwrap();
    let rel = log.display().to_string();
    let rel = rel.trim_start_matches('/');
    // path_open for writing with fdflags APPEND (1), exit 9 if that fails,
    // then fd_write "y" and exit with its errno.
    let wat = format!(
        r#"(module
  (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "{rel}")
  (data (i32.const 1024) "y")
  (func (export "_start")
    (if (call $open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const {len}) (i32.const 0)
          (i64.const 64) (i64.const 0) (i32.const 1) (i32.const 32))
      (then (call $exit (i32.const 9))))
    (i32.store (i32.const 16) (i32.const 1024))
    (i32.store (i32.const 20) (i32.const 1))
    (call $exit (call $write (i32.load (i32.const 32)) (i32.const 16) (i32.const 1) (i32.const 28)))))"#,
        len = rel.len()
    );
    let component = from_preview1(&wasm(&wat)).unwrap();
    let p = Runtime::new(None).prepare(&component).unwrap();
    let r = run(&p, "_start", &Limits::default(), live(Box::new(AllowAll), 16), Journal::live(None));
    assert_eq!(r.end, End::Exited { code: 0 });
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "xy", "appended, not written over");
}
