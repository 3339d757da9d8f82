//! `cargo xtask bench`: every benchmark of the project, and one markdown
//! report with the machine and kernel (`target/bench/report.md`).

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::Context as _;

use crate::{setup, test::workspace_root};

#[derive(clap::Args, Default)]
pub(crate) struct BenchArgs {
    /// Criterion measurement time per benchmark, seconds.
    #[arg(long, default_value_t = 3)]
    pub(crate) seconds: u32,
}

fn capture(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.current_dir(workspace_root()).output().context("running a benchmark")?;
    if !out.status.success() {
        anyhow::bail!("benchmark failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

pub(crate) fn run(args: &BenchArgs) -> anyhow::Result<()> {
    setup::run(&setup::SetupArgs::default())?;
    let root = workspace_root();
    let mut report = String::from("# ForgeOne benchmarks\n\n");
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
    let _ = writeln!(report, "Machine: {} cores, {cpu}; kernel {}", cores, uname.trim());
    let _ = writeln!(
        report,
        "Each figure comes from this run; ratios compare configurations measured in the same run.\n"
    );

    println!("== criterion: policy compile, event decode, evaluator, scoring, traces, wasm capsules");
    let secs = args.seconds.to_string();
    let crit = capture(cargo().args([
        "bench",
        "-p",
        "forge-agent",
        "--",
        "--warm-up-time",
        "1",
        "--measurement-time",
        &secs,
    ]))?;
    print!("{crit}");
    report
        .push_str("## Userspace (criterion, median)\n\n| benchmark | median | throughput |\n|---|---|---|\n");
    criterion_rows(&root.join("target/criterion"), &mut report);
    report.push_str("\n### Derived from the medians above\n\n| figure | value | from |\n|---|---|---|\n");
    derived_rows(&root.join("target/criterion"), &mut report);

    println!("== kernel overhead (root)");
    let kernel = capture(cargo().args(["bench", "-p", "forge-tests", "--bench", "kernel"]))?;
    print!("{kernel}");
    report.push('\n');
    report.push_str(&kernel);

    println!("== quarantine latency (root)");
    let quarantine = capture(cargo().args(["bench", "-p", "forge-tests", "--bench", "quarantine"]))?;
    print!("{quarantine}");
    report.push('\n');
    report.push_str(&quarantine);

    println!("== fleet propagation (root, nats-server)");
    setup::run_cmd(
        cargo().args(["build", "--release", "-p", "forge-agent", "--bin", "forge"]),
        "building forge",
    )?;
    let fleet = capture(cargo().args(["bench", "-p", "forge-tests", "--bench", "fleet"]))?;
    print!("{fleet}");
    report.push('\n');
    report.push_str(&fleet);

    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("report.md");
    std::fs::write(&path, &report)?;
    println!("== report written to {}", path.display());
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
