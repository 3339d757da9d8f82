//! Capsule runs started through the API. Each run is a child `forge pkg
//! run` in its own cgroup, governed by the policy compiled for the
//! capsule's identity (module digest and signers): the Wasm gate decides
//! every host call, and the kernel's backends decide what the process
//! running the capsule does, so a call the gate lets through (monitor
//! mode, or a gate bug) still meets the kernel.
//!
//! The child verifies, compiles and opens its trace first, then moves
//! itself into the cgroup (`forge pkg run --cgroup`) and runs the capsule.
//! Its JSON report is kept with the run; `capsule_list` shows both.

use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};

use super::protocol::{ApiError, Document, ErrorCode};
use crate::{
    policy::Tier,
    sign::TrustConfig,
    wasm::{Package, VerifiedPackage},
};

/// The parent cgroup of capsule runs (relative to the cgroup v2 mount).
pub const CGROUP_PARENT: &str = "forge-capsules";
/// Finished runs kept for `capsule_list`.
const KEEP_FINISHED: usize = 256;

/// What a `capsule_run` request asks for.
pub struct RunRequest {
    pub package: String,
    pub args: Vec<String>,
    pub inputs: Vec<String>,
    pub monitor: bool,
    pub tier: Option<Tier>,
}

struct Run {
    package: String,
    name: String,
    cgroup: PathBuf,
    cgroup_id: u64,
    pid: u32,
    started_unix_ms: u64,
    child: Option<Child>,
    dir: PathBuf,
    /// The child's report, once it exited.
    report: Option<Value>,
    exit_status: Option<i32>,
}

/// Starts capsule runs and keeps track of them.
pub struct CapsuleRunner {
    /// The `forge` binary the children run.
    pub forge: PathBuf,
    /// The trust configuration capsules are verified against (its path is
    /// handed to the children).
    pub trust_path: PathBuf,
    trust: TrustConfig,
    pub data_dir: PathBuf,
    runs: BTreeMap<String, Run>,
    order: Vec<String>,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

fn refused(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Refused, message)
}

impl CapsuleRunner {
    pub fn new(forge: PathBuf, trust_path: PathBuf, data_dir: PathBuf) -> Result<Self, String> {
        let trust = TrustConfig::load(&trust_path).map_err(|e| e.to_string())?;
        Ok(Self { forge, trust_path, trust, data_dir, runs: BTreeMap::new(), order: Vec::new() })
    }

    /// Reads and verifies a package on this host (refused: nothing runs).
    pub fn verify(&self, package: &str) -> Result<VerifiedPackage, ApiError> {
        let path = Path::new(package);
        if !path.is_absolute() {
            return Err(bad(format!("package {package:?}: give an absolute path on the agent's host")));
        }
        let bytes = std::fs::read(path).map_err(|e| bad(format!("package {package}: {e}")))?;
        let pkg = Package::parse(&bytes).map_err(|e| refused(format!("{package}: {e}")))?;
        let v = pkg.verify(&self.trust).map_err(|e| refused(format!("{package}: {e}")))?;
        #[cfg(feature = "runtime")]
        crate::wasm::validate(v.package.module())
            .map_err(|e| refused(format!("{package}: section WASM: {e}")))?;
        Ok(v)
    }

    /// Starts the child for `run_id` in `cgroup` (already governed), with
    /// the agent's policy documents.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        &mut self,
        run_id: &str,
        name: &str,
        cgroup: &Path,
        cgroup_id: u64,
        documents: &[Document],
        req: &RunRequest,
    ) -> Result<Value, ApiError> {
        let dir = self.data_dir.join("capsule-runs").join(run_id);
        let io = |what: &str, e: std::io::Error| ApiError::new(ErrorCode::Kernel, format!("{what}: {e}"));
        let policy = dir.join("policy");
        std::fs::create_dir_all(&policy).map_err(|e| io("run directory", e))?;
        for (i, d) in documents.iter().enumerate() {
            std::fs::write(policy.join(format!("{i:03}.yaml")), &d.text).map_err(|e| io("policy copy", e))?;
        }
        let out = File::create(dir.join("report.json")).map_err(|e| io("report file", e))?;
        let err = File::create(dir.join("output.log")).map_err(|e| io("output file", e))?;
        let mut cmd = Command::new(&self.forge);
        cmd.args(["pkg", "run", "--local", "--json"])
            .arg(&req.package)
            .arg("--trust")
            .arg(&self.trust_path)
            .arg("--policy")
            .arg(&policy)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--cgroup")
            .arg(cgroup)
            .args(["--run-id", run_id]);
        if req.monitor {
            cmd.arg("--monitor");
        }
        if let Some(t) = req.tier {
            cmd.args(["--tier", t.as_str()]);
        }
        for i in &req.inputs {
            cmd.arg("--input").arg(i);
        }
        cmd.arg("--").args(&req.args);
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).env("FORGE_LOG", "warn");
        let child = cmd.spawn().map_err(|e| io(&format!("starting {}", self.forge.display()), e))?;
        let pid = child.id();
        let started_unix_ms =
            SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        self.runs.insert(
            run_id.to_string(),
            Run {
                package: req.package.clone(),
                name: name.to_string(),
                cgroup: cgroup.to_path_buf(),
                cgroup_id,
                pid,
                started_unix_ms,
                child: Some(child),
                dir,
                report: None,
                exit_status: None,
            },
        );
        self.order.push(run_id.to_string());
        Ok(json!({"run_id": run_id, "cgroup": cgroup, "cgroup_id": cgroup_id, "pid": pid}))
    }

    /// Collects runs whose child exited; returns their cgroups (now empty,
    /// to remove).
    pub fn reap(&mut self) -> Vec<PathBuf> {
        let mut done = Vec::new();
        for (id, r) in &mut self.runs {
            let Some(child) = &mut r.child else { continue };
            match child.try_wait() {
                Ok(Some(status)) => {
                    r.exit_status = status.code();
                    r.child = None;
                    let text = std::fs::read_to_string(r.dir.join("report.json")).unwrap_or_default();
                    r.report = Some(serde_json::from_str(&text).unwrap_or_else(|e| {
                        json!({"ok": false, "error": {"code": "no_report", "message": format!("the run left no report: {e}")}})
                    }));
                    tracing::info!(run = %id, status = ?status.code(), "capsule run ended");
                    done.push(r.cgroup.clone());
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(run = %id, error = %e, "checking a capsule run"),
            }
        }
        while self.order.len() > KEEP_FINISHED {
            let oldest = self.order[0].clone();
            if self.runs.get(&oldest).is_some_and(|r| r.child.is_some()) {
                break;
            }
            self.order.remove(0);
            self.runs.remove(&oldest);
        }
        done
    }

    /// Every known run, newest last.
    pub fn list(&self) -> Value {
        let runs: Vec<Value> = self
            .order
            .iter()
            .filter_map(|id| self.runs.get(id).map(|r| (id, r)))
            .map(|(id, r)| {
                json!({
                    "run_id": id,
                    "name": r.name,
                    "package": r.package,
                    "cgroup": r.cgroup,
                    "cgroup_id": r.cgroup_id,
                    "pid": r.pid,
                    "started_unix_ms": r.started_unix_ms,
                    "state": if r.child.is_some() { "running" } else { "finished" },
                    "exit_status": r.exit_status,
                    "report": r.report,
                    "output_log": r.dir.join("output.log"),
                })
            })
            .collect();
        json!({ "runs": runs })
    }

    /// Runs still going.
    pub fn running(&self) -> usize {
        self.runs.values().filter(|r| r.child.is_some()).count()
    }
}
