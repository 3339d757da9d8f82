//! One capsule run, end to end: the policy for the capsule's identity, the
//! check of what it requests against what that policy grants, its trace,
//! the run, and its outcome. And the replay of such a run from its trace.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use super::{
    gate::{AllowAll, Grant, PolicyGate, grants},
    host::{Denied, Live, Sink, journal::Journal},
    package::VerifiedPackage,
    runtime::{End, PrepareError, Runtime, Source, run},
};
use crate::{
    dna::{self, CapsuleRun, DnaError, HostCall, Identity, Record, TraceStore, WriterConfig},
    policy::{PolicyError, PolicySet, Tier, Workload},
    sign::{SigningKey, sha3_256, sha3_256_tree},
};

/// Why a capsule was not run (nothing of it ran).
#[derive(Debug, thiserror::Error)]
pub enum CapsuleError {
    #[error("policy for the capsule: {0}")]
    Policy(String),
    #[error("the policy does not grant what the capsule requests: {}", list(.0))]
    NotGranted(Vec<Grant>),
    #[error("input {path}: sha3-256:{digest} is not among the capsule's intended inputs")]
    Intent { path: PathBuf, digest: String },
    #[error("input {path}: {source}")]
    Input {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Prepare(#[from] PrepareError),
    #[error("the run's trace: {0}")]
    Trace(#[from] DnaError),
    #[error("entering the run's confinement: {0}")]
    Enter(std::io::Error),
}

fn list(denied: &[Grant]) -> String {
    let v: Vec<String> = denied
        .iter()
        .filter(|g| !g.granted)
        .map(|g| match &g.denial {
            Some(d) => format!("{} ({d})", g.capability),
            None => g.capability.clone(),
        })
        .collect();
    format!("{}; run with --monitor to record what would be denied instead", v.join(", "))
}

impl CapsuleError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Policy(_) => "bad_policy",
            Self::NotGranted(_) => "not_granted",
            Self::Intent { .. } => "unintended_input",
            Self::Input { .. } => "bad_input",
            Self::Prepare(_) => "invalid_module",
            Self::Trace(_) => "trace_failed",
            Self::Enter(_) => "confinement_failed",
        }
    }
}

/// How to run a capsule.
pub struct RunOptions {
    pub policy: PolicySet,
    /// The trust tier to run at (default: what the policy gives the capsule).
    pub tier: Option<Tier>,
    /// Let denied calls through and record them as would-deny.
    pub monitor: bool,
    /// Arguments after the capsule's name (argv[0]).
    pub args: Vec<String>,
    /// Input files: checked against the manifest's intent, appended to argv.
    pub inputs: Vec<PathBuf>,
    /// The run's id (default: a new one); the agent passes the one its cgroup is named after.
    pub run_id: Option<String>,
    /// Where the run's trace goes, signed with this key.
    pub trace: Option<(TraceStore, Arc<SigningKey>)>,
    pub stdout: Sink,
    pub stderr: Sink,
    /// Called after everything the run needs is read, compiled and opened
    /// (package, policy, module, trace), just before the capsule starts:
    /// e.g. moving this process into the capsule's governed cgroup.
    pub enter: Option<Box<dyn FnOnce() -> std::io::Result<()>>>,
}

/// What a run did.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub run_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<PathBuf>,
    pub name: String,
    pub version: u64,
    pub module_sha3: String,
    pub signers: Vec<String>,
    pub tier: Tier,
    pub policies: String,
    pub monitor: bool,
    pub module_source: Source,
    #[serde(flatten)]
    pub end: End,
    pub summary: String,
    pub output_sha3: String,
    pub host_calls: u64,
    pub denied: Vec<Denied>,
    pub elapsed_us: u64,
    pub grants: Vec<Grant>,
}

/// The policy record of a capsule: its module digest and signers select
/// the policies; the tier is `tier` or what they give it.
fn policy_for(
    pkg: &VerifiedPackage,
    opts: &RunOptions,
) -> Result<(crate::policy::CompiledRecord, Tier), CapsuleError> {
    let w = Workload {
        digest: Some(format!("sha3-256:{}", pkg.module_digest().to_hex())),
        signers: pkg.signer_ids(),
        ..Workload::default()
    };
    let tier = match opts.tier {
        Some(t) => t,
        None => opts.policy.initial_tier(&w).map_err(|d| CapsuleError::Policy(d.to_string()))?,
    };
    let record =
        opts.policy.compile_for(&w, tier, 1).map_err(|PolicyError(d)| CapsuleError::Policy(d.to_string()))?;
    Ok((record, tier))
}

/// Runs a verified capsule. Refuses (running nothing) when the policy does
/// not grant a requested capability (unless in monitor mode) or an input
/// is not one the capsule intends.
pub fn run_capsule(
    rt: &Runtime,
    pkg: &VerifiedPackage,
    opts: RunOptions,
) -> Result<(RunReport, Live), CapsuleError> {
    let m = pkg.package.manifest();
    let (record, tier) = policy_for(pkg, &opts)?;
    let policies = record.policy_name.clone();
    let gate = PolicyGate::new(m.capabilities.clone(), record, opts.monitor);
    let granted = grants(&gate);
    if !opts.monitor && granted.iter().any(|g| !g.granted) {
        return Err(CapsuleError::NotGranted(granted));
    }
    for path in &opts.inputs {
        let bytes =
            std::fs::read(path).map_err(|source| CapsuleError::Input { path: path.clone(), source })?;
        let digest = sha3_256(&bytes).to_hex();
        if !m.intent.inputs.is_empty()
            && !m.intent.inputs.iter().any(|d| d.strip_prefix("sha3-256:") == Some(&digest))
        {
            return Err(CapsuleError::Intent { path: path.clone(), digest });
        }
    }
    let prepared = rt.prepare_verified(pkg)?;
    let mut args = vec![m.name.clone()];
    args.extend(opts.args.iter().cloned());
    args.extend(opts.inputs.iter().map(|p| p.display().to_string()));
    let env =
        m.capabilities.env.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v))).collect();
    let module_sha3 = prepared.digest.to_hex();
    let run_id = opts.run_id.clone().unwrap_or_else(|| super::new_run_id(&m.name));
    let signers = pkg.signer_ids();

    let mut trace_path = None;
    let writer = match &opts.trace {
        None => None,
        Some((store, key)) => {
            let unix_ns = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
            let identity = Identity::capsule(&m.name, &format!("sha3-256:{module_sha3}"), &run_id, unix_ns);
            let (mut w, _) = store.open_or_create(&identity, key.clone(), WriterConfig::default())?;
            w.append(&Record::CapsuleRun(CapsuleRun {
                ts_ns: 0,
                name: m.name.clone(),
                version: m.version,
                module_sha3: module_sha3.clone(),
                package_sha3: pkg.package.package_digest().to_hex(),
                signers: signers.clone(),
                tier,
                policies: policies.clone(),
                monitor: opts.monitor,
                entry: m.entry.clone(),
                args: args.clone(),
                limits: m.limits.clone(),
            }))?;
            trace_path = Some(w.path().to_path_buf());
            Some(w)
        }
    };
    let mut writer = writer;
    if let Some(enter) = opts.enter
        && let Err(e) = enter()
    {
        // The trace says why nothing ran.
        if let Some(mut w) = writer.take() {
            let outcome = dna::Outcome {
                ts_ns: 0,
                exit_code: None,
                signal: None,
                summary: format!("not run: entering the run's confinement failed: {e}"),
                output_sha3: None,
                host_calls: Some(0),
            };
            w.append(&Record::Outcome(outcome))?;
            w.close()?;
        }
        return Err(CapsuleError::Enter(e));
    }
    let mut live = Live::new(Box::new(gate), args, env, m.limits.max_open_files);
    live.stdout = opts.stdout;
    live.stderr = opts.stderr;
    let mut result = run(&prepared, &m.entry, &m.limits, live, Journal::live(writer));
    let summary = result.end.summary();
    if let Some(mut w) = result.ctx.journal.take_writer() {
        let outcome = dna::Outcome {
            ts_ns: result.elapsed.as_nanos() as u64,
            exit_code: result.end.exit_code(),
            signal: None,
            summary: summary.clone(),
            output_sha3: Some(result.output_sha3.clone()),
            host_calls: Some(result.host_calls),
        };
        w.append(&Record::Outcome(outcome))?;
        w.close()?;
    }
    let report = RunReport {
        run_id,
        trace: trace_path,
        name: m.name.clone(),
        version: m.version,
        module_sha3,
        signers,
        tier,
        policies,
        monitor: opts.monitor,
        module_source: prepared.source,
        end: result.end,
        summary,
        output_sha3: result.output_sha3,
        host_calls: result.host_calls,
        denied: result.denied,
        elapsed_us: result.elapsed.as_micros() as u64,
        grants: granted,
    };
    Ok((report, result.ctx.live))
}

/// Why a trace cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Trace(#[from] DnaError),
    #[error("{path}: not a capsule run's trace (no capsule_run record)")]
    NotACapsuleRun { path: PathBuf },
    #[error("the module's sha3-256 is {given}, the trace recorded a run of {recorded}")]
    WrongModule { given: String, recorded: String },
    #[error("{0}")]
    Prepare(#[from] PrepareError),
}

/// What the recording says and what the replay did.
#[derive(Clone, Debug, Serialize)]
pub struct ReplayReport {
    pub trace: PathBuf,
    /// Same end, same output digest, same sequence of calls.
    pub identical: bool,
    pub recorded: Ended,
    pub replayed: Ended,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub divergence: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Ended {
    pub summary: String,
    pub exit_code: Option<i32>,
    pub output_sha3: Option<String>,
    pub host_calls: u64,
}

/// Runs the module again with every host call answered from the trace.
pub fn replay(rt: &Runtime, trace: &Path, module: &[u8]) -> Result<ReplayReport, ReplayError> {
    let mut run_rec: Option<CapsuleRun> = None;
    let mut calls: Vec<HostCall> = Vec::new();
    let mut outcome: Option<dna::Outcome> = None;
    for e in dna::Records::open(trace)? {
        match e?.record {
            Record::CapsuleRun(r) if run_rec.is_none() => run_rec = Some(r),
            Record::HostCall(c) => calls.push(c),
            Record::Outcome(o) => outcome = Some(o),
            _ => {}
        }
    }
    let r = run_rec.ok_or_else(|| ReplayError::NotACapsuleRun { path: trace.to_path_buf() })?;
    // The module digest as recorded: the tree digest, or the plain
    // SHA3-256 in traces of packages built before the tree digest.
    let given = sha3_256_tree(module).to_hex();
    if given != r.module_sha3 && sha3_256(module).to_hex() != r.module_sha3 {
        return Err(ReplayError::WrongModule { given, recorded: r.module_sha3 });
    }
    let recorded_calls = calls.len() as u64;
    let prepared = rt.prepare(module)?;
    let mut live = Live::new(Box::new(AllowAll), r.args.clone(), Vec::new(), r.limits.max_open_files);
    live.stdout = Sink::Discard;
    live.stderr = Sink::Discard;
    let result = run(&prepared, &r.entry, &r.limits, live, Journal::replay(calls));
    let recorded = match &outcome {
        Some(o) => Ended {
            summary: o.summary.clone(),
            exit_code: o.exit_code,
            output_sha3: o.output_sha3.clone(),
            host_calls: o.host_calls.unwrap_or(recorded_calls),
        },
        None => Ended {
            summary: "no outcome recorded (the run did not finish)".into(),
            exit_code: None,
            output_sha3: None,
            host_calls: recorded_calls,
        },
    };
    let divergence = match &result.end {
        End::Diverged { divergence } => Some(divergence.to_string()),
        _ => None,
    };
    let replayed = Ended {
        summary: result.end.summary(),
        exit_code: result.end.exit_code(),
        output_sha3: Some(result.output_sha3),
        host_calls: result.host_calls,
    };
    let identical = divergence.is_none() && recorded == replayed;
    Ok(ReplayReport { trace: trace.to_path_buf(), identical, recorded, replayed, divergence })
}
