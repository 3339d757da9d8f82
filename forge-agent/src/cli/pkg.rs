//! `forge pkg`: build, sign, verify, inspect, run and replay `.forgepkg`
//! capsules.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use forge_agent::{
    dna::{DEFAULT_DATA_DIR, TraceStore},
    policy::{PolicySet, Tier},
    sign::{SigningKey, TrustConfig, signature::AddOutcome},
    wasm::{
        self, Package, PackageError, RunOptions, Runtime, VerifiedPackage,
        cache::ModuleCache,
        gate::{PolicyGate, grants},
        host::Sink,
        runtime::End,
    },
};
use serde_json::json;

/// Exit code of `forge pkg run` when the capsule was stopped (a limit or a trap).
pub(crate) const EXIT_STOPPED: u8 = 125;

#[derive(Subcommand)]
pub(crate) enum PkgCommand {
    /// Build an unsigned .forgepkg from capsule.toml and a module (.wasm, or .wat text).
    Build(BuildArgs),
    /// Add your signature (k-of-n: each signer runs this with their own key).
    Sign(SignArgs),
    /// Verify signatures (k distinct trusted keys), digests and the module.
    Verify(VerifyArgs),
    /// Show the manifest, digests, signers, requested capabilities, and
    /// (with --policy) what the local policy would grant.
    Inspect(InspectArgs),
    /// Verify and run a capsule in this process, every host call gated by
    /// the policy and recorded in a signed trace. Exits with the capsule's
    /// exit code, 125 when a limit or a trap stopped it, 1 when refused.
    Run(RunArgs),
    /// Run a recorded capsule again with every host call answered from its
    /// trace (no real I/O); exits 0 when the outcome, output and calls are
    /// the same, 1 with the first difference otherwise.
    Replay(ReplayArgs),
}

#[derive(Args)]
pub(crate) struct BuildArgs {
    /// capsule.toml (see docs/capsules.md).
    #[arg(long)]
    manifest: PathBuf,
    /// The Wasm module: binary .wasm or .wat text.
    #[arg(long)]
    module: PathBuf,
    /// Output file.
    #[arg(short, long)]
    output: PathBuf,
    /// Make the module a WASI 0.2 component first: a preview1 command
    /// module (what `clang --target=wasm32-wasi` builds) is wrapped with
    /// Wasmtime's preview1 adapter, and the package carries the component.
    #[arg(long)]
    component: bool,
    /// Overwrite the output file.
    #[arg(long)]
    force: bool,
    /// Print `{"package", "name", "version", "module_sha3", "package_sha3"}`.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct SignArgs {
    /// The package, signed in place.
    package: PathBuf,
    /// Your private key (`forge key generate`).
    #[arg(long)]
    key: PathBuf,
    /// Print `{"key_id", "outcome", "signatures"}`.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct TrustArg {
    /// trust.toml: the trusted keys and the threshold k (the same file as for policy bundles).
    #[arg(long)]
    trust: PathBuf,
}

#[derive(Args)]
pub(crate) struct VerifyArgs {
    package: PathBuf,
    #[command(flatten)]
    trust: TrustArg,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct InspectArgs {
    package: PathBuf,
    /// Also verify the signatures against this trust configuration.
    #[arg(long)]
    trust: Option<PathBuf>,
    /// Policy files or directories: show what they grant the capsule.
    #[arg(long)]
    policy: Vec<PathBuf>,
    /// Evaluate at this trust tier (default: what the policy gives the capsule).
    #[arg(long)]
    tier: Option<Tier>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct RunArgs {
    package: PathBuf,
    /// trust.toml for a local run: the trusted keys and the threshold k.
    /// (Through the agent, its --capsule-trust decides.)
    #[arg(long)]
    trust: Option<PathBuf>,
    /// Policy files or directories for a local run. A capsule no policy
    /// selects gets nothing (zero trust). (Through the agent, its policy set decides.)
    #[arg(long)]
    policy: Vec<PathBuf>,
    /// Run in this process even if an agent answers on --socket.
    #[arg(long)]
    local: bool,
    /// The agent's API socket: when an agent answers there (and --local is
    /// not given), it runs the capsule in its own governed cgroup.
    #[arg(long, default_value = forge_agent::api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Move this process into this (governed) cgroup once everything is
    /// read and compiled, just before the capsule starts (what the agent
    /// does for the runs it starts).
    #[arg(long, value_name = "DIR")]
    cgroup: Option<PathBuf>,
    /// The run's id, which names its trace (default: `<name>-<unix ms>-<random>`;
    /// the agent passes the one its cgroup is named after).
    #[arg(long)]
    run_id: Option<String>,
    /// Run at this trust tier (default: what the policy gives the capsule).
    #[arg(long)]
    tier: Option<Tier>,
    /// Let calls the policy denies through, and record them as would-deny.
    #[arg(long)]
    monitor: bool,
    /// An input file (repeatable): checked against the capsule's intended
    /// inputs, and passed as an argument after ARGS.
    #[arg(long)]
    input: Vec<PathBuf>,
    /// Traces go to DATA_DIR/traces, the agent key is DATA_DIR/agent.key,
    /// compiled modules are cached in DATA_DIR/wasm-cache.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// The key that signs the run's trace (default: DATA_DIR/agent.key, created if missing).
    #[arg(long)]
    agent_key: Option<PathBuf>,
    /// Print a JSON report on stdout after the run (the capsule's own
    /// output then goes to stderr).
    #[arg(long)]
    json: bool,
    /// Arguments for the capsule (after `--`).
    #[arg(last = true)]
    args: Vec<String>,
}

#[derive(Args)]
pub(crate) struct ReplayArgs {
    /// The run's trace (DATA_DIR/traces/capsule-<run id>.dna).
    trace: PathBuf,
    /// The package that ran (its module must have the recorded digest).
    #[arg(long = "pkg")]
    package: PathBuf,
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(c: &PkgCommand) -> anyhow::Result<ExitCode> {
    match c {
        PkgCommand::Build(a) => build(a),
        PkgCommand::Sign(a) => sign(a),
        PkgCommand::Verify(a) => verify(a),
        PkgCommand::Inspect(a) => inspect(a),
        PkgCommand::Run(a) => run_pkg(a),
        PkgCommand::Replay(a) => replay(a),
    }
}

fn read_package(path: &Path) -> anyhow::Result<Result<Package, PackageError>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Package::parse(&bytes))
}

fn refused(path: &Path, e: &dyn std::fmt::Display, code: &str, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        super::print_json(
            &json!({"ok": false, "package": path, "error": {"code": code, "message": e.to_string()}}),
        )?;
    } else {
        eprintln!("forge: refused: {}: {e}", path.display());
    }
    Ok(ExitCode::FAILURE)
}

fn build(a: &BuildArgs) -> anyhow::Result<ExitCode> {
    let caps = std::fs::read(&a.manifest).with_context(|| format!("reading {}", a.manifest.display()))?;
    let raw = std::fs::read(&a.module).with_context(|| format!("reading {}", a.module.display()))?;
    let module = if raw.starts_with(b"\0asm") {
        raw
    } else {
        wat::parse_bytes(&raw).map_err(|e| anyhow::anyhow!("{}: {e}", a.module.display()))?.into_owned()
    };
    let module = if a.component {
        wasm::component::from_preview1(&module).map_err(|e| anyhow::anyhow!("{}: {e}", a.module.display()))?
    } else {
        module
    };
    if let Err(e) = wasm::validate(&module) {
        anyhow::bail!("{}: {e}", a.module.display());
    }
    let pkg = Package::build(caps, module).map_err(|e| anyhow::anyhow!("{}: {e}", a.manifest.display()))?;
    if a.output.exists() && !a.force {
        anyhow::bail!("{} already exists; pass --force to overwrite it", a.output.display());
    }
    std::fs::write(&a.output, pkg.to_bytes()).with_context(|| format!("writing {}", a.output.display()))?;
    let m = pkg.manifest();
    if a.json {
        super::print_json(&json!({
            "package": a.output, "name": m.name, "version": m.version,
            "module_sha3": pkg.module_digest().to_hex(), "package_sha3": pkg.package_digest().to_hex(),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "built {} ({} version {}, module sha3-256:{}); unsigned: sign it with `forge pkg sign`",
        a.output.display(),
        m.name,
        m.version,
        pkg.module_digest().to_hex()
    );
    Ok(ExitCode::SUCCESS)
}

fn sign(a: &SignArgs) -> anyhow::Result<ExitCode> {
    let key = SigningKey::load(&a.key).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut pkg = match read_package(&a.package)? {
        Ok(p) => p,
        Err(e) => return refused(&a.package, &e, e.code(), a.json),
    };
    let outcome = match pkg.sign(&key) {
        Ok(o) => o,
        Err(e) => return refused(&a.package, &e, e.code(), false),
    };
    forge_agent::sign::files::write_atomic(&a.package, &pkg.to_bytes(), 0o644)
        .with_context(|| format!("writing {}", a.package.display()))?;
    if a.json {
        super::print_json(&json!({
            "key_id": key.public_key().id().to_string(),
            "outcome": format!("{outcome:?}").to_lowercase(),
            "signatures": pkg.signatures().entries().len(),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let what = match outcome {
        AddOutcome::Added => "signed",
        AddOutcome::Replaced => "replaced the earlier signature of",
        AddOutcome::Unchanged => "had already signed",
    };
    println!(
        "{} {what} {} version {}; {} signature(s)",
        key.public_key().id(),
        pkg.manifest().name,
        pkg.manifest().version,
        pkg.signatures().entries().len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Parses, verifies against `trust` and validates the module.
fn load_verified(path: &Path, trust: &Path) -> anyhow::Result<Result<VerifiedPackage, (String, String)>> {
    let trust = TrustConfig::load(trust).map_err(|e| anyhow::anyhow!("{e}"))?;
    let pkg = match read_package(path)? {
        Ok(p) => p,
        Err(e) => return Ok(Err((e.code().into(), e.to_string()))),
    };
    let v = match pkg.verify(&trust) {
        Ok(v) => v,
        Err(e) => return Ok(Err((e.code().into(), e.to_string()))),
    };
    if let Err(e) = wasm::validate(v.package.module()) {
        return Ok(Err(("invalid_module".into(), format!("section WASM: {e}"))));
    }
    Ok(Ok(v))
}

/// How the module's digest is computed, as `inspect` names it.
fn digest_kind(pkg: &Package) -> &'static str {
    match pkg.module_hash() {
        forge_agent::sign::manifest::Hash::Tree => "tree",
        forge_agent::sign::manifest::Hash::Plain => "plain",
    }
}

fn verify(a: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let v = match load_verified(&a.package, &a.trust.trust)? {
        Ok(v) => v,
        Err((code, msg)) => return refused(&a.package, &msg, &code, a.json),
    };
    let m = v.package.manifest();
    if a.json {
        super::print_json(&json!({
            "ok": true, "package": a.package, "name": m.name, "version": m.version,
            "module_sha3": v.package.module_digest().to_hex(), "package_sha3": v.package.package_digest().to_hex(),
            "threshold": v.threshold, "signers": v.signers,
            "not_counted": v.rejected.iter().map(|r| json!({"key_id": r.key_id(), "reason": r.code(), "message": r.to_string()})).collect::<Vec<_>>(),
        }))?;
    } else {
        let signers: Vec<String> = v.signers.iter().map(ToString::to_string).collect();
        println!("verified: {} version {} ({})", m.name, m.version, a.package.display());
        println!(
            "  {} of {} required trusted signatures: {}",
            v.signers.len(),
            v.threshold,
            signers.join(", ")
        );
        for r in &v.rejected {
            println!("  not counted: {r}");
        }
        println!(
            "  module sha3-256:{} ({} bytes): digest matches, valid",
            v.package.module_digest().to_hex(),
            v.package.module().len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(a: &InspectArgs) -> anyhow::Result<ExitCode> {
    let pkg = match read_package(&a.package)? {
        Ok(p) => p,
        Err(e) => return refused(&a.package, &e, e.code(), a.json),
    };
    let digests_ok = pkg.check_digests().map_err(|e| e.to_string());
    let keys: Vec<String> = pkg.signatures().entries().iter().map(|e| e.key.id().to_string()).collect();
    let (verified, signer_ids) = match &a.trust {
        None => (None, keys.clone()),
        Some(t) => {
            let trust = TrustConfig::load(t).map_err(|e| anyhow::anyhow!("{e}"))?;
            match pkg.clone().verify(&trust) {
                Ok(v) => (Some(Ok(v.signer_ids())), v.signer_ids()),
                Err(e) => (Some(Err(e.to_string())), Vec::new()),
            }
        }
    };
    let granted = if a.policy.is_empty() {
        None
    } else {
        let policy = PolicySet::load(&a.policy).map_err(|e| anyhow::anyhow!("{e}"))?;
        let w = forge_agent::policy::Workload {
            digest: Some(format!("sha3-256:{}", pkg.module_digest().to_hex())),
            signers: signer_ids,
            ..Default::default()
        };
        let tier = match a.tier {
            Some(t) => t,
            None => policy.initial_tier(&w).map_err(|d| anyhow::anyhow!("{d}"))?,
        };
        let record = policy.compile_for(&w, tier, 1).map_err(|e| anyhow::anyhow!("{e}"))?;
        let name = record.policy_name.clone();
        Some((name, tier, grants(&PolicyGate::new(pkg.manifest().capabilities.clone(), record, false))))
    };
    let m = pkg.manifest();
    if a.json {
        super::print_json(&json!({
            "package": a.package, "manifest": m,
            "module_sha3": pkg.module_digest().to_hex(), "package_sha3": pkg.package_digest().to_hex(),
            "module_bytes": pkg.module().len(), "module_kind": wasm::module_kind(pkg.module()),
            "module_digest": digest_kind(&pkg), "digests_match": digests_ok.is_ok(),
            "signature_keys": keys,
            "verified": verified.as_ref().map(|v| match v { Ok(ids) => json!({"ok": true, "signers": ids}), Err(e) => json!({"ok": false, "error": e}) }),
            "policy": granted.as_ref().map(|(name, tier, g)| json!({"policies": name, "tier": tier, "grants": g})),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} version {} (entry {})", m.name, m.version, m.entry);
    if let Some(d) = &m.description {
        println!("  {d}");
    }
    let kind =
        if wasm::is_component(pkg.module()) { "WASI 0.2 component" } else { "core module, WASI preview1" };
    println!(
        "  module sha3-256:{} ({} digest; {} bytes, {kind})",
        pkg.module_digest().to_hex(),
        digest_kind(&pkg),
        pkg.module().len()
    );
    println!("  package sha3-256:{}", pkg.package_digest().to_hex());
    match &digests_ok {
        Ok(()) => println!("  payloads match the signed manifest"),
        Err(e) => println!("  {e}"),
    }
    println!("  signatures by: {}", if keys.is_empty() { "nobody".into() } else { keys.join(", ") });
    match &verified {
        Some(Ok(ids)) => println!("  verified against the trust configuration: signers {}", ids.join(", ")),
        Some(Err(e)) => println!("  NOT verified: {e}"),
        None => println!("  (pass --trust to verify the signatures)"),
    }
    let c = &m.capabilities;
    println!("  requests:");
    for f in &c.files {
        println!("    file {} {:?}", f.path, f.access);
    }
    for a in &c.connect {
        println!("    connect {a}");
    }
    for v in &c.env {
        println!("    env {v}");
    }
    if c.clock {
        println!("    clock");
    }
    if c.random {
        println!("    random");
    }
    let l = &m.limits;
    println!(
        "  limits: memory {} MiB, deadline {} ms, fuel {}, {} open files",
        l.memory_mib,
        l.deadline_ms,
        if l.fuel == 0 { "unmetered".into() } else { l.fuel.to_string() },
        l.max_open_files
    );
    if !m.intent.inputs.is_empty() {
        println!("  intended inputs: {}", m.intent.inputs.join(", "));
    }
    if let Some((name, tier, g)) = &granted {
        println!(
            "  the local policy ({}) at tier {} would grant:",
            if name.is_empty() { "none selects it" } else { name },
            tier.as_str()
        );
        for x in g {
            match &x.denial {
                None => println!("    {}: granted", x.capability),
                Some(d) => println!("    {}: DENIED, {d}", x.capability),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether an agent answers on `socket`.
fn agent_answers(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

fn run_pkg(a: &RunArgs) -> anyhow::Result<ExitCode> {
    if !a.local && a.cgroup.is_none() && agent_answers(&a.socket) {
        return run_via_agent(a);
    }
    let (Some(trust), false) = (&a.trust, a.policy.is_empty()) else {
        anyhow::bail!(
            "no agent answers on {}; a local run needs --trust FILE and --policy PATH",
            a.socket.display()
        );
    };
    let v = match load_verified(&a.package, trust)? {
        Ok(v) => v,
        Err((code, msg)) => return refused(&a.package, &msg, &code, a.json),
    };
    let policy = PolicySet::load(&a.policy).map_err(|e| anyhow::anyhow!("{e}"))?;
    let key = super::run::agent_key_at(a.agent_key.clone(), &a.data_dir)?;
    let cache = match ModuleCache::open(&a.data_dir.join("wasm-cache")) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "compiled modules are not cached");
            None
        }
    };
    let rt = Runtime::new(cache);
    let opts = RunOptions {
        policy,
        tier: a.tier,
        monitor: a.monitor,
        args: a.args.clone(),
        inputs: a.input.clone(),
        run_id: a.run_id.clone(),
        trace: Some((TraceStore::new(&a.data_dir), Arc::new(key))),
        stdout: if a.json { Sink::Capture(Vec::new()) } else { Sink::Inherit },
        stderr: Sink::Inherit,
        enter: a.cgroup.clone().map(|dir| -> Box<dyn FnOnce() -> std::io::Result<()>> {
            Box::new(move || std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string()))
        }),
    };
    let (report, live) = match wasm::run_capsule(&rt, &v, opts) {
        Ok(r) => r,
        Err(e) => return refused(&a.package, &e, e.code(), a.json),
    };
    if a.json {
        if let Sink::Capture(out) = &live.stdout {
            use std::io::Write as _;
            let _ = std::io::stderr().write_all(out);
        }
        super::print_json(&report)?;
    } else {
        eprintln!("forge: capsule {} {}", report.name, report.summary);
        for d in &report.denied {
            let what = if d.enforced { "denied" } else { "would deny (monitor)" };
            eprintln!("forge:   {what}: {} {}: {}", d.name, d.facility, d.denial);
        }
        if let Some(t) = &report.trace {
            eprintln!(
                "forge:   trace {} ({} host calls); replay: forge pkg replay {} --pkg {}",
                t.display(),
                report.host_calls,
                t.display(),
                a.package.display()
            );
        }
    }
    Ok(match report.end {
        End::Exited { code } => ExitCode::from(code.clamp(0, 255) as u8),
        _ => ExitCode::from(EXIT_STOPPED),
    })
}

/// Asks the agent to run the capsule, waits for it, prints its report.
fn run_via_agent(a: &RunArgs) -> anyhow::Result<ExitCode> {
    use forge_agent::api::{Request, client};
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string();
    let req = Request::CapsuleRun {
        package: abs(&a.package),
        args: a.args.clone(),
        inputs: a.input.iter().map(|p| abs(p)).collect(),
        monitor: a.monitor,
        tier: a.tier,
    };
    let started = match client::call(&a.socket, &req) {
        Ok(v) => v,
        Err(client::ClientError::Api(e)) => {
            return refused(&a.package, &e.message, &format!("{:?}", e.code), a.json);
        }
        Err(e) => return Err(e.into()),
    };
    let run_id = started["run_id"].as_str().unwrap_or_default().to_string();
    if !a.json {
        eprintln!(
            "forge: the agent runs {} as {run_id} in cgroup {} (policies {}, tier {})",
            a.package.display(),
            started["cgroup"].as_str().unwrap_or("?"),
            started["policies"],
            started["tier"]
        );
    }
    let run = loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let list = client::call(&a.socket, &Request::CapsuleList)?;
        let found =
            list["runs"].as_array().and_then(|r| r.iter().find(|r| r["run_id"] == run_id.as_str())).cloned();
        match found {
            Some(r) if r["state"] == "finished" => break r,
            Some(_) => {}
            None => anyhow::bail!("the agent no longer knows run {run_id}"),
        }
    };
    let report = &run["report"];
    if a.json {
        super::print_json(&run)?;
    } else {
        if let Some(log) = run["output_log"].as_str() {
            use std::io::Write as _;
            let _ = std::io::stderr().write_all(&std::fs::read(log).unwrap_or_default());
        }
        eprintln!(
            "forge: capsule {} {}",
            report["name"].as_str().unwrap_or("?"),
            report["summary"].as_str().unwrap_or("(no report)")
        );
        for d in report["denied"].as_array().into_iter().flatten() {
            let what = if d["enforced"] == true { "denied" } else { "would deny (monitor)" };
            eprintln!(
                "forge:   {what}: {} {}",
                d["name"].as_str().unwrap_or(""),
                d["facility"].as_str().unwrap_or("")
            );
        }
        if let Some(t) = report["trace"].as_str() {
            eprintln!("forge:   trace {t}");
        }
    }
    Ok(match (report["end"].as_str(), report["code"].as_i64()) {
        (Some("exited"), Some(code)) => ExitCode::from(code.clamp(0, 255) as u8),
        (Some(_), _) => ExitCode::from(EXIT_STOPPED),
        (None, _) => ExitCode::FAILURE,
    })
}

fn replay(a: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let pkg = match read_package(&a.package)? {
        Ok(p) => p,
        Err(e) => return refused(&a.package, &e, e.code(), a.json),
    };
    let rt = Runtime::new(None);
    let r = wasm::replay(&rt, &a.trace, pkg.module())
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.trace.display()))?;
    if a.json {
        super::print_json(&r)?;
    } else if r.identical {
        println!(
            "replayed {}: identical ({}; {} host calls; output sha3-256:{})",
            a.trace.display(),
            r.replayed.summary,
            r.replayed.host_calls,
            r.replayed.output_sha3.as_deref().unwrap_or("")
        );
    } else {
        println!("replayed {}: DIFFERENT", a.trace.display());
        if let Some(d) = &r.divergence {
            println!("  first difference: {d}");
        }
        println!(
            "  recorded: {} ({} calls, output {:?})",
            r.recorded.summary, r.recorded.host_calls, r.recorded.output_sha3
        );
        println!(
            "  replayed: {} ({} calls, output {:?})",
            r.replayed.summary, r.replayed.host_calls, r.replayed.output_sha3
        );
    }
    Ok(if r.identical { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
