//! `forge trace list|show|verify|export|replay`: read a workload's execution trace.

use std::{
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::bail;
use clap::{Args, Subcommand};
use forge_agent::{
    dna::{self, Entry, Trace, TraceStore, VerifyOptions, VerifyReport},
    sign::PublicKey,
};

#[derive(Subcommand)]
pub(crate) enum TraceCommand {
    /// List the traces in the data directory: workload, records, size.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Print a trace, one line per record, checking every checksum and link
    /// on the way (signatures: `forge trace verify`).
    Show {
        /// A trace file, or a workload id (`<data-dir>/traces/<id>.dna`).
        trace: String,
        /// JSON lines, one record per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Verify the hash chain and every checkpoint signature. Exits 1 naming
    /// the first bad record.
    Verify {
        /// A trace file, or a workload id.
        trace: String,
        #[arg(long)]
        json: bool,
        /// The agent's public key: 64 hex characters, a `.pub` file, or its line.
        /// Without it, signatures are checked against the key each checkpoint names.
        #[arg(long, value_name = "PUBKEY")]
        key: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Replay a cgroup trace: feed its recorded events through a fresh scorer
    /// and trust controller, configured as the trace says, and check that
    /// they reproduce every recorded score, tier change and quarantine.
    /// Exits 1 naming the first record where they differ.
    Replay {
        /// A trace file, or a workload id.
        trace: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Export a trace as JSON: one document, or JSON lines with `--jsonl`.
    Export {
        /// A trace file, or a workload id.
        trace: String,
        #[arg(long)]
        jsonl: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Args)]
pub(crate) struct ExplainArgs {
    /// A trace file, or a workload id.
    trace: String,
    /// Explain this record (its index, as `forge trace show` prints it).
    #[arg(long, value_name = "N", conflicts_with = "quarantine")]
    record: Option<u64>,
    /// Explain the workload's last quarantine.
    #[arg(long)]
    quarantine: bool,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArgs,
}

pub(crate) fn explain(a: &ExplainArgs) -> anyhow::Result<ExitCode> {
    use forge_agent::digest;
    let path = resolve(&a.trace, &a.store)?;
    let trace = Trace::open(&path)?;
    let entries = trace.records()?.collect::<Result<Vec<Entry>, _>>()?;
    let out: Box<dyn std::fmt::Display> = match (a.record, a.quarantine) {
        (Some(n), _) => {
            let d = digest::record(&entries, n).ok_or_else(|| {
                anyhow::anyhow!("{}: no record {n} (it has {})", path.display(), entries.len())
            })?;
            if a.json {
                println!("{}", serde_json::to_string(&d)?);
                return Ok(ExitCode::SUCCESS);
            }
            Box::new(d)
        }
        (None, true) => {
            let d = digest::last_quarantine(&entries)
                .ok_or_else(|| anyhow::anyhow!("{}: the workload was never quarantined", path.display()))?;
            if a.json {
                println!("{}", serde_json::to_string(&d)?);
                return Ok(ExitCode::SUCCESS);
            }
            Box::new(d)
        }
        (None, false) => {
            let d = digest::workload(&entries);
            if a.json {
                println!("{}", serde_json::to_string(&d)?);
                return Ok(ExitCode::SUCCESS);
            }
            Box::new(d)
        }
    };
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub(crate) struct StoreArgs {
    /// The agent's data directory, where workload ids are looked up.
    #[arg(long, env = "FORGE_DATA_DIR", default_value = dna::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
}

pub(crate) fn run(cmd: &TraceCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TraceCommand::List { json, store } => list(store, *json),
        TraceCommand::Show { trace, json, store } => show(&resolve(trace, store)?, *json),
        TraceCommand::Verify { trace, json, key, store } => {
            let trusted_key = key.as_deref().map(parse_key).transpose()?;
            verify(&resolve(trace, store)?, &VerifyOptions { trusted_key }, *json)
        }
        TraceCommand::Export { trace, jsonl, store } => export(&resolve(trace, store)?, *jsonl),
        TraceCommand::Replay { trace, json, store } => replay(&resolve(trace, store)?, *json),
    }
}

/// A path if there is such a file (or it looks like one), else a workload id.
fn resolve(arg: &str, store: &StoreArgs) -> anyhow::Result<PathBuf> {
    let path = Path::new(arg);
    if path.exists() || arg.contains('/') || arg.ends_with(".dna") {
        return Ok(path.to_path_buf());
    }
    let file = TraceStore::new(&store.data_dir).path(arg)?;
    if !file.exists() {
        bail!("no trace file {arg:?}, and no trace of workload {arg:?} at {}", file.display());
    }
    Ok(file)
}

/// Parses `--key`: the path of a `.pub` file, its line, or 64 hex characters.
fn parse_key(arg: &str) -> anyhow::Result<PublicKey> {
    Ok(if Path::new(arg).is_file() {
        PublicKey::load(Path::new(arg))?
    } else {
        PublicKey::parse(arg, "--key")?
    })
}

fn show(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let trace = Trace::open(path)?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    if !json {
        writeln!(out, "trace {} of workload {}", path.display(), trace.identity().workload_id)?;
    }
    let mut records = trace.records()?;
    for entry in records.by_ref() {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                out.flush()?;
                return Err(e.into());
            }
        };
        if json {
            serde_json::to_writer(&mut out, &entry)?;
            writeln!(out)?;
        } else {
            writeln!(out, "{:>7}  {:<15}  {}", entry.index, entry.record.kind_name(), entry.record)?;
        }
    }
    out.flush()?;
    if let Some(t) = records.torn_tail() {
        eprintln!("forge: note: {}: {t}; the writer cuts it off when it reopens the trace", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(path: &Path, opts: &VerifyOptions, json: bool) -> anyhow::Result<ExitCode> {
    let report = dna::verify_file(path, opts)?;
    if json {
        super::print_json(&report)?;
    } else {
        print_report(&report);
    }
    Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn print_report(r: &VerifyReport) {
    let path = r.path.display();
    let workload = r.workload_id.as_deref().unwrap_or("?");
    let signers = if r.signers.is_empty() { "nobody".to_string() } else { r.signers.join(", ") };
    let whose = match &r.trusted_key {
        Some(k) => format!("key {k}, the trusted key"),
        None => format!("key {signers} (not checked against a trusted key: pass --key)"),
    };
    match &r.problem {
        None => {
            println!(
                "{path}: ok: workload {workload}, {} records, {} checkpoints signed by {whose}",
                r.records, r.checkpoints
            );
        }
        Some(p) => {
            println!("{path}: BAD: {p}");
            match p.index {
                Some(0) | None => println!("  nothing in this trace can be trusted"),
                Some(i) => {
                    println!("  records 0 to {} verify; checkpoints before it: {}", i - 1, r.checkpoints)
                }
            }
        }
    }
    if r.unsigned_tail > 0 && r.problem.is_none() {
        println!("  {} records after the last checkpoint are chained but not yet signed", r.unsigned_tail);
    }
    if let Some(t) = r.torn_tail {
        println!("  note: {t}; the writer cuts it off when it reopens the trace");
    }
}

fn list(store: &StoreArgs, json: bool) -> anyhow::Result<ExitCode> {
    let store = TraceStore::new(&store.data_dir);
    let mut rows = Vec::new();
    for id in store.list()? {
        let path = store.path(&id)?;
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let (subject, problem) = match Trace::open(&path) {
            Ok(t) => (serde_json::to_value(&t.identity().subject)?, None),
            Err(e) => (serde_json::Value::Null, Some(e.to_string())),
        };
        rows.push(serde_json::json!({"workload_id": id, "path": path, "bytes": bytes, "subject": subject, "error": problem}));
    }
    if json {
        super::print_json(&rows)?;
    } else if rows.is_empty() {
        println!("no traces in {}", store.dir().display());
    } else {
        for r in &rows {
            let what = match (&r["subject"]["type"], &r["error"]) {
                (_, serde_json::Value::String(e)) => format!("unreadable: {e}"),
                (t, _) if t == "cgroup" => format!("cgroup {}", r["subject"]["path"].as_str().unwrap_or("?")),
                _ => format!("capsule {}", r["subject"]["package"].as_str().unwrap_or("?")),
            };
            println!("{:<24} {:>10} bytes  {what}", r["workload_id"].as_str().unwrap_or(""), r["bytes"]);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn replay(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let trace = Trace::open(path)?;
    let r = dna::replay(&trace)?;
    if json {
        super::print_json(&r)?;
    } else {
        let what = format!(
            "{} events and {} elided events replayed; {} scores, {} tier changes, {} quarantines reproduced; {} operator actions applied",
            r.events, r.elided, r.scores, r.tier_changes, r.quarantines, r.operator_actions
        );
        match &r.divergence {
            None => println!("{}: ok: {what}", path.display()),
            Some(d) => println!(
                "{}: DIVERGES at {d}
  before it: {what}",
                path.display()
            ),
        }
    }
    Ok(if r.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn export(path: &Path, jsonl: bool) -> anyhow::Result<ExitCode> {
    let trace = Trace::open(path)?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    if jsonl {
        for entry in trace.records()? {
            serde_json::to_writer(&mut out, &entry?)?;
            writeln!(out)?;
        }
    } else {
        let mut records = trace.records()?;
        let entries = records.by_ref().collect::<Result<Vec<Entry>, _>>()?;
        let doc = serde_json::json!({
            "path": path,
            "workload_id": trace.identity().workload_id,
            "records": entries,
            "torn_tail": records.torn_tail(),
        });
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
