//! `cargo xtask bench`: every benchmark of the project, and one markdown
//! report with the machine and kernel (`target/bench/report.md`).

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::Context as _;

use crate::{
    setup,
    test::{cargo, workspace_root},
};

#[derive(clap::Args, Default)]
pub(crate) struct BenchArgs {
    /// Criterion measurement time per benchmark, seconds.
    #[arg(long, default_value_t = 3)]
    pub(crate) seconds: u32,
    /// Run every benchmark once, briefly, in the test profile, and check that
    /// the report has a row for each: criterion benchmarks in their test mode
    /// (one iteration), the kernel, quarantine and fleet benchmarks with few
    /// iterations (`FORGE_BENCH_SMOKE=1`). `cargo xtask test` runs this so
    /// that a broken benchmark fails CI. Its figures are not measurements;
    /// the report goes to `target/bench/smoke-report.md`.
    #[arg(long)]
    pub(crate) smoke: bool,
}

fn capture(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.current_dir(workspace_root()).output().context("running a benchmark")?;
    if !out.status.success() {
        anyhow::bail!("benchmark failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Cargo's package selection for every benchmark command: the same as the
/// test run's, so the dependencies are built with one feature set.
const PACKAGES: [&str; 3] = ["--workspace", "--exclude", "forge-ebpf"];

/// Set in a smoke run: the kernel, quarantine and fleet benchmarks run a
/// few iterations.
pub(crate) const SMOKE_ENV: &str = "FORGE_BENCH_SMOKE";

/// A benchmark target of the workspace (`[[bench]]`).
struct Target {
    package: String,
    name: String,
}

impl Target {
    /// forge-agent's benchmarks are criterion's; the others print a report
    /// section of their own.
    fn is_criterion(&self) -> bool {
        self.package == "forge-agent"
    }
}

/// Every `[[bench]]` target of the workspace, from `cargo metadata`: a new
/// benchmark is run (and its rows checked) without being listed here.
fn targets() -> anyhow::Result<Vec<Target>> {
    let out = capture(cargo().args(["metadata", "--no-deps", "--format-version", "1"]))?;
    let meta: serde_json::Value = serde_json::from_str(&out).context("reading cargo metadata")?;
    let mut found = Vec::new();
    for pkg in meta["packages"].as_array().into_iter().flatten() {
        for t in pkg["targets"].as_array().into_iter().flatten() {
            if t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bench")) {
                found.push(Target {
                    package: pkg["name"].as_str().unwrap_or_default().to_owned(),
                    name: t["name"].as_str().unwrap_or_default().to_owned(),
                });
            }
        }
    }
    anyhow::ensure!(found.iter().any(Target::is_criterion), "cargo metadata lists no criterion benchmark");
    Ok(found)
}

/// `cargo bench` (or, for a smoke run, `cargo test`) of `targets`.
fn cargo_bench<'a>(smoke: bool, targets: impl IntoIterator<Item = &'a Target>) -> Command {
    let mut c = cargo();
    c.arg(if smoke { "test" } else { "bench" }).args(PACKAGES);
    for t in targets {
        c.args(["--bench", &t.name]);
    }
    if smoke {
        c.env(SMOKE_ENV, "1");
    }
    c
}

pub(crate) fn run(args: &BenchArgs) -> anyhow::Result<()> {
    setup::run(&setup::SetupArgs::default())?;
    let root = workspace_root();
    let targets = targets()?;
    let (criterion, sections): (Vec<&Target>, Vec<&Target>) = targets.iter().partition(|t| t.is_criterion());
    let mut report = String::from(if args.smoke {
        "# ForgeOne benchmarks: smoke run\n\nEvery benchmark ran once or a few iterations, unoptimised: these \
         figures are not measurements (`cargo xtask bench` measures).\n\n"
    } else {
        "# ForgeOne benchmarks\n\n"
    });
    let uname = capture(Command::new("uname").arg("-srm")).unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let _ = writeln!(report, "Machine: {} cores, {cpu}; kernel {}\n", cores, uname.trim());
    if !args.smoke {
        let _ = writeln!(
            report,
            "Each figure comes from this run; ratios compare configurations measured in the same run.\n\n"
        );
    }

    // Everything builds once, with one feature set (the forge binary the
    // fleet benchmark drives included: a package's binaries are built with
    // its benchmarks).
    println!("== building the benchmarks");
    setup::run_cmd(cargo_bench(args.smoke, targets.iter()).arg("--no-run"), "building the benchmarks")?;

    println!("== criterion: policy compile, event decode, evaluator, scoring, traces, wasm capsules");
    let expected = criterion_ids(args.smoke, &criterion)?;
    let mut cmd = cargo_bench(args.smoke, criterion.iter().copied());
    if !args.smoke {
        let secs = args.seconds.to_string();
        cmd.args(["--", "--warm-up-time", "1", "--measurement-time", &secs]);
    }
    let crit = capture(&mut cmd)?;
    print!("{crit}");
    report
        .push_str("## Userspace (criterion, median)\n\n| benchmark | median | throughput |\n|---|---|---|\n");
    if args.smoke {
        smoke_rows(&crit, &expected, &mut report)?;
    } else {
        let dir = root.join("target/criterion");
        let missing: Vec<&String> = expected.iter().filter(|id| median_ns(&dir, id).is_none()).collect();
        anyhow::ensure!(missing.is_empty(), "criterion benchmarks that wrote no estimate: {missing:?}");
        criterion_rows(&dir, &mut report);
        report.push_str("\n### Derived from the medians above\n\n| figure | value | from |\n|---|---|---|\n");
        derived_rows(&dir, &mut report);
    }

    let root_user = is_root();
    for t in sections {
        if !root_user {
            println!("== {} ({}): NOT RUN, needs root", t.name, t.package);
            let _ = writeln!(report, "\n## {}: not run (needs root)", t.name);
            continue;
        }
        println!("== {} ({}, root)", t.name, t.package);
        let out = capture(&mut cargo_bench(args.smoke, [t]))?;
        print!("{out}");
        check_section(&t.name, &out)?;
        report.push('\n');
        report.push_str(&out);
    }

    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(if args.smoke { "smoke-report.md" } else { "report.md" });
    std::fs::write(&path, &report)?;
    println!("== report written to {}", path.display());
    Ok(())
}

/// Whether this process runs as root (the owner of `/proc/self` is its
/// effective user).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The ids of the criterion benchmarks, as each binary lists them.
fn criterion_ids(smoke: bool, criterion: &[&Target]) -> anyhow::Result<Vec<String>> {
    let list = capture(cargo_bench(smoke, criterion.iter().copied()).args(["--", "--list"]))?;
    let ids: Vec<String> =
        list.lines().filter_map(|l| l.strip_suffix(": benchmark")).map(str::to_owned).collect();
    anyhow::ensure!(!ids.is_empty(), "the criterion benchmarks listed nothing:\n{list}");
    Ok(ids)
}

/// One row per criterion benchmark of a smoke run (criterion's test mode
/// prints `Testing ID` and then `Success`); every listed id must have passed.
fn smoke_rows(output: &str, expected: &[String], out: &mut String) -> anyhow::Result<()> {
    let mut passed = Vec::new();
    let mut testing: Option<&str> = None;
    for line in output.lines() {
        if let Some(id) = line.strip_prefix("Testing ") {
            testing = Some(id.trim());
        } else if line.trim() == "Success"
            && let Some(id) = testing.take()
        {
            passed.push(id.to_owned());
        }
    }
    let missing: Vec<&String> = expected.iter().filter(|id| !passed.contains(id)).collect();
    anyhow::ensure!(missing.is_empty(), "criterion benchmarks that did not run to Success: {missing:?}");
    for id in expected {
        let _ = writeln!(out, "| {id} | ran once (smoke) | |");
    }
    Ok(())
}

/// A report section from one of the root benchmarks: a markdown table whose
/// rows all have a value in every cell; not skipped.
fn check_section(name: &str, out: &str) -> anyhow::Result<()> {
    anyhow::ensure!(!out.contains("SKIPPED"), "benchmark {name} was skipped:\n{out}");
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with('|') && !l.starts_with("|---")).collect();
    anyhow::ensure!(rows.len() >= 2, "benchmark {name} printed no table:\n{out}");
    if let Some(bad) = rows.iter().find(|r| r.trim_matches('|').split('|').any(|c| c.trim().is_empty())) {
        anyhow::bail!("benchmark {name}: a row with an empty cell: {bad}");
    }
    Ok(())
}

/// One row per criterion benchmark from its `estimates.json`.
fn criterion_rows(dir: &Path, out: &mut String) {
    let mut found = Vec::new();
    collect(dir, &mut found);
    found.sort();
    for est in found {
        let Ok(text) = std::fs::read_to_string(&est) else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        let Some(ns) = v["median"]["point_estimate"].as_f64() else { continue };
        let name = est
            .parent()
            .and_then(Path::parent)
            .and_then(|p| p.strip_prefix(dir).ok())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let _ = writeln!(out, "| {name} | {} | {:.0} /s |", human(ns), 1e9 / ns);
    }
}

/// A figure computed from criterion medians of the same run.
enum Derived {
    /// How many times slower the first benchmark is than the second.
    Ratio(&'static str, &'static str),
    /// (first − second) / units: the cost of what the first adds, per unit.
    PerUnit(&'static str, &'static str, f64),
}

const DERIVED: [(&str, Derived); 7] = [
    (
        "wasm package verify (3-of-5 signatures, 1 MiB module) vs sha3-256 of its bytes",
        Derived::Ratio("wasm_verify/parse+verify_3of5_1MiB", "wasm_verify/sha3-256_1MiB"),
    ),
    (
        "sha3-256 of 1 MiB vs its sha3-256 tree digest (the module digest)",
        Derived::Ratio("wasm_verify/sha3-256_1MiB", "wasm_verify/sha3-256-tree_1MiB"),
    ),
    (
        "wasm start: compiled vs from memory",
        Derived::Ratio("wasm_start/cold_compile", "wasm_start/warm_memory_run"),
    ),
    (
        "wasm start: from the disk cache vs from memory",
        Derived::Ratio("wasm_start/warm_disk_cache", "wasm_start/warm_memory_run"),
    ),
    (
        "wasm start, component: from the disk cache vs from memory",
        Derived::Ratio("wasm_start_component/warm_disk_cache", "wasm_start_component/warm_memory_run"),
    ),
    (
        "wasm host-call gate, per clock_time_get call (policy gate − allow-all)",
        Derived::PerUnit(
            "wasm_gate/clock_time_get_x10000/policy_gate",
            "wasm_gate/clock_time_get_x10000/allow_all",
            10_000.0,
        ),
    ),
    (
        "wasm host-call gate, per fd_write call to stdout (policy gate − allow-all)",
        Derived::PerUnit(
            "wasm_gate/fd_write_stdout_x10000/policy_gate",
            "wasm_gate/fd_write_stdout_x10000/allow_all",
            10_000.0,
        ),
    ),
];

fn median_ns(dir: &Path, bench: &str) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join(bench).join("new/estimates.json")).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["median"]["point_estimate"].as_f64()
}

/// The rows of [`DERIVED`] whose benchmarks ran.
fn derived_rows(dir: &Path, out: &mut String) {
    for (what, d) in &DERIVED {
        let (a, b) = match d {
            Derived::Ratio(a, b) | Derived::PerUnit(a, b, _) => (*a, *b),
        };
        let (Some(x), Some(y)) = (median_ns(dir, a), median_ns(dir, b)) else { continue };
        let (value, from) = match d {
            Derived::Ratio(..) => (format!("{:.2}×", x / y), format!("{a} / {b}")),
            Derived::PerUnit(.., units) => {
                let ns = (x - y) / units;
                let value = if ns.abs() < 1e3 { format!("{ns:.1} ns") } else { human(ns) };
                (value, format!("({a} − {b}) / {units}"))
            }
        };
        let _ = writeln!(out, "| {what} | {value} | {from} |");
    }
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.filter_map(Result::ok) {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "report" || n == "base" || n == "change") {
                continue;
            }
            collect(&p, out);
        } else if p.file_name().is_some_and(|n| n == "estimates.json")
            && p.parent().is_some_and(|d| d.ends_with("new"))
        {
            out.push(p);
        }
    }
}

fn human(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}
