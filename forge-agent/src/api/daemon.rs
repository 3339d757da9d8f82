//! The daemon's state and request handling. Runs on the agent's main task:
//! it is the only caller of the map writer.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::protocol::{ApiError, Document, ErrorCode, Request};
use crate::{
    agent::Agent,
    cgroup::{Cgroup, cgroup2_mount},
    policy::{CompiledRecord, Diagnostics, Policy, PolicyError, PolicySet, Severity, Workload},
};

struct Governed {
    cgroup: Cgroup,
    workload: Workload,
    compiled: CompiledRecord,
    generation: u64,
}

pub struct Daemon {
    pub agent: Agent,
    set: PolicySet,
    documents: Vec<Document>,
    governed: BTreeMap<u64, Governed>,
}

fn invalid(d: Diagnostics) -> ApiError {
    ApiError {
        code: ErrorCode::InvalidPolicy,
        message: format!("the policy set does not validate ({} finding(s)); nothing was changed", d.0.len()),
        details: serde_json::to_value(&d.0).ok(),
    }
}

fn kernel(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Kernel, e.to_string())
}

/// Parses and checks documents into a set; all findings on failure.
pub fn build_set(docs: &[Document]) -> Result<PolicySet, ApiError> {
    let mut parsed = Vec::new();
    let mut diags = Vec::new();
    for d in docs {
        match Policy::parse_file(&d.text, &d.name) {
            Ok(mut p) => parsed.append(&mut p),
            Err(PolicyError(Diagnostics(mut e))) => diags.append(&mut e),
        }
    }
    if !diags.is_empty() {
        return Err(invalid(Diagnostics(diags)));
    }
    let set = PolicySet::from_docs(parsed).map_err(invalid)?;
    let findings: Vec<_> = set.check().into_iter().filter(|d| d.severity == Severity::Error).collect();
    if !findings.is_empty() {
        return Err(invalid(Diagnostics(findings)));
    }
    Ok(set)
}

impl Daemon {
    pub fn new(agent: Agent, documents: Vec<Document>) -> Result<Self, ApiError> {
        let set = build_set(&documents)?;
        Ok(Self { agent, set, documents, governed: BTreeMap::new() })
    }

    /// The record governing `cgroup_id`, for explaining its events.
    pub fn compiled_for(&self, cgroup_id: u64) -> Option<&CompiledRecord> {
        self.governed.get(&cgroup_id).map(|g| &g.compiled)
    }

    pub fn handle(&mut self, req: Request) -> Result<Value, ApiError> {
        match req {
            Request::Status => Ok(self.status()),
            Request::PolicyGet => Ok(json!({
                "documents": self.documents.iter().map(|d| json!({"name": d.name, "bytes": d.text.len()})).collect::<Vec<_>>(),
                "policies": self.set.docs.iter().map(|p| p.name().to_string()).collect::<Vec<_>>(),
            })),
            Request::PolicyApply { documents } => self.apply(documents),
            Request::Govern { cgroup } => self.govern(&cgroup),
            Request::Ungovern { cgroup } => {
                let cg = Cgroup::resolve(&cgroup)
                    .map_err(|e| ApiError::new(ErrorCode::NotFound, e.to_string()))?;
                self.agent
                    .writer
                    .ungovern(cg.id)
                    .map_err(|e| ApiError::new(ErrorCode::NotFound, e.to_string()))?;
                self.governed.remove(&cg.id);
                Ok(json!({"cgroup": cg.path, "id": cg.id, "governed": false}))
            }
        }
    }

    /// Governs a cgroup with what the current set says for it.
    pub fn govern(&mut self, spec: &str) -> Result<Value, ApiError> {
        let cgroup = Cgroup::resolve(spec)
            .or_else(|_| Cgroup::create(spec))
            .map_err(|e| ApiError::new(ErrorCode::NotFound, e.to_string()))?;
        let workload = workload_of(&cgroup);
        let tier = self.set.initial_tier(&workload).map_err(invalid)?;
        let compiled = self.set.compile_for(&workload, tier, 1).map_err(|e| invalid(e.0))?;
        let generation = self.agent.writer.govern(&cgroup, &compiled).map_err(kernel)?;
        let out = json!({"cgroup": cgroup.path, "id": cgroup.id, "policies": compiled.policy_name, "tier": compiled.tier, "generation": generation});
        self.governed.insert(cgroup.id, Governed { cgroup, workload, compiled, generation });
        Ok(out)
    }

    /// Replaces the set: validate, compile for every governed workload, then
    /// swap each. If the kernel refuses a swap, the ones done are rolled back.
    fn apply(&mut self, documents: Vec<Document>) -> Result<Value, ApiError> {
        let set = build_set(&documents)?;
        let mut plans = Vec::new();
        for (id, g) in &self.governed {
            let tier = g.compiled.tier;
            let compiled = set.compile_for(&g.workload, tier, 1).map_err(|e| invalid(e.0))?;
            plans.push((*id, compiled));
        }
        let mut done: Vec<(u64, u64)> = Vec::new();
        for (id, compiled) in &plans {
            let g = &self.governed[id];
            match self.agent.writer.govern(&g.cgroup, compiled) {
                Ok(generation) => done.push((*id, generation)),
                Err(e) => {
                    for (undo, _) in &done {
                        let g = &self.governed[undo];
                        let _ = self.agent.writer.govern(&g.cgroup, &g.compiled);
                    }
                    return Err(kernel(format!(
                        "applying to cgroup {}: {e}; earlier swaps were rolled back",
                        g.cgroup.path.display()
                    )));
                }
            }
        }
        for ((id, compiled), (_, generation)) in plans.into_iter().zip(&done) {
            if let Some(g) = self.governed.get_mut(&id) {
                g.compiled = compiled;
                g.generation = *generation;
            }
        }
        self.set = set;
        self.documents = documents;
        tracing::info!(policies = self.set.docs.len(), workloads = done.len(), "policy set applied");
        Ok(json!({
            "policies": self.set.docs.iter().map(|p| p.name().to_string()).collect::<Vec<_>>(),
            "swapped": done.iter().map(|(id, generation)| json!({"cgroup_id": id, "generation": generation})).collect::<Vec<_>>(),
        }))
    }

    fn status(&self) -> Value {
        let h = self.agent.writer.handles();
        let known: Vec<Value> = self
            .governed
            .values()
            .map(|g| json!({"cgroup": g.cgroup.path, "id": g.cgroup.id, "policies": g.compiled.policy_name, "tier": g.compiled.tier, "generation": g.generation, "quarantine": g.compiled.quarantine}))
            .collect();
        let adopted_only: Vec<u64> = self
            .agent
            .writer
            .governed()
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| !self.governed.contains_key(id))
            .collect();
        let counters: Vec<Value> = self
            .agent
            .writer
            .counters()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, n)| json!({"cgroup_id": k.cgroup_id, "hook": k.hook, "verdict": k.verdict, "mode": k.mode, "count": n}))
            .collect();
        json!({
            "pid": std::process::id(),
            "adopted": h.adopted,
            "backends": h.active,
            "governed": known,
            "governed_from_pins_only": adopted_only,
            "counters": counters,
            "ring_drops": self.agent.writer.drops().unwrap_or(0),
            "decode_errors": self.agent.events.decode_errors,
            "events_by_hook": self.agent.events.per_hook.iter().map(|(h, n)| (h.as_str().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

/// The workload identity of a cgroup: its path relative to the v2 mount.
pub fn workload_of(cgroup: &Cgroup) -> Workload {
    let rel = cgroup2_mount()
        .ok()
        .and_then(|m| cgroup.path.strip_prefix(m).ok().map(|p| p.display().to_string()))
        .unwrap_or_else(|| cgroup.path.display().to_string());
    Workload::cgroup(&rel)
}

/// Runs the daemon: serves the API on `listener`, reads events (handing each
/// to `on_event`), until `shutdown` completes. This task is the only one that
/// touches the maps.
pub async fn run(
    daemon: &mut Daemon,
    listener: tokio::net::UnixListener,
    shutdown: impl Future<Output = ()>,
    mut on_event: impl FnMut(&Daemon, crate::events::DecisionEvent),
) -> std::io::Result<()> {
    let (calls_tx, mut calls) = tokio::sync::mpsc::channel::<super::server::Call>(64);
    let server = tokio::spawn(super::server::serve(listener, calls_tx));
    tokio::pin!(shutdown);
    let mut batch = Vec::new();
    let result = loop {
        tokio::select! {
            r = daemon.agent.events.read_batch(&mut batch) => {
                if let Err(e) = r {
                    break Err(e);
                }
                for ev in batch.drain(..) {
                    on_event(daemon, ev);
                }
            }
            Some((req, reply)) = calls.recv() => {
                let resp = match daemon.handle(req) {
                    Ok(v) => super::Response::ok(v),
                    Err(e) => super::Response::err(e),
                };
                let _ = reply.send(resp);
            }
            () = &mut shutdown => break Ok(()),
        }
    };
    server.abort();
    result
}
