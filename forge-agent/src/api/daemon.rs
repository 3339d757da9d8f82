//! The daemon's state and request handling. Runs on the agent's main task:
//! it is the only caller of the map writer.

mod fleet;
mod lifecycle;
mod persist;

use std::{collections::BTreeMap, path::PathBuf};

pub use lifecycle::{Origin, Selector};
pub use persist::{STATE_FILE, StateError};

use serde_json::{Value, json};

use super::protocol::{ApiError, Document, ErrorCode, Request};
use crate::{
    agent::Agent,
    cgroup::{Cgroup, cgroup2_mount},
    dna::{self, QuarantineOp, Record},
    policy::{CompiledRecord, Diagnostics, Policy, PolicyError, PolicySet, Severity, Tier, Workload},
    trust::{Action, Observed, ScoreConfig, Scorer, TrustController, quarantine},
};

use super::{
    metrics::{self, ActionCounts},
    traces::{Traces, kernel_now_ns},
};
use crate::{
    integrity::policy as origin,
    telemetry::{Otlp, spans},
};

struct Governed {
    cgroup: Cgroup,
    workload: Workload,
    compiled: CompiledRecord,
    generation: u64,
    /// The record before the first trust drop or quarantine (restored on release).
    before_escalation: Option<CompiledRecord>,
    frozen: bool,
    /// The tiers at which its policy asks for quarantine.
    quarantine_at: Vec<Tier>,
    /// Quarantined by the fleet rule (released when the fleet clears it).
    fleet_hold: bool,
    /// How the agent came to govern it.
    origin: Origin,
    /// The ids its cgroup had before it was made again, oldest first.
    previous_ids: Vec<u64>,
}

pub struct Daemon {
    pub agent: Agent,
    set: PolicySet,
    documents: Vec<Document>,
    governed: BTreeMap<u64, Governed>,
    pub scorer: Scorer,
    pub trust: TrustController,
    /// Trust changes, quarantines and releases, in order.
    pub audit: Vec<Value>,
    /// Strict mode: only signed bundles are applied.
    pub signing: Option<Signing>,
    /// Execution traces (none: not kept).
    pub traces: Option<Traces>,
    /// Quarantines, releases and tier changes carried out (for the metrics).
    pub counts: ActionCounts,
    /// Where [`run`] serves `GET /metrics` (none: not served).
    pub metrics_listener: Option<std::net::TcpListener>,
    /// OTLP export of spans, decision records and metrics (none: off).
    pub telemetry: Option<Otlp>,
    /// Where the set in force came from, and its bundle if signed.
    origin: (origin::Source, Option<origin::BundleSource>),
    /// Capsule runs through the API (none: capsules are off).
    pub capsules: Option<super::capsules::CapsuleRunner>,
    /// Policy and trust shared through NATS (none: a single host).
    pub fleet: Option<crate::fleet::FleetLink>,
    /// Workloads named by path whose cgroup is gone, by path: governed
    /// again, as they were, when the path is made again.
    waiting: BTreeMap<PathBuf, Governed>,
    /// `DIR/*` selectors: the cgroups below `DIR` are governed as they appear.
    selectors: Vec<Selector>,
    /// Where what the agent governs is kept across restarts (none: not kept).
    pub state_file: Option<PathBuf>,
    /// The group whose members may call the API besides root.
    pub api_group: Option<u32>,
    /// Something the state file keeps changed since it was written.
    dirty: bool,
    /// Digest of the start files (see [`persist`]).
    files_digest: Option<String>,
}

/// The agent's signing rules for policy bundles.
pub struct Signing {
    pub trust: crate::sign::trust::TrustConfig,
    /// Where the last applied version of each bundle name is kept.
    pub state: PathBuf,
    /// Also refuse rules no available backend can enforce.
    pub require_enforceable: bool,
}

fn capsules_off() -> ApiError {
    ApiError::new(
        ErrorCode::BadRequest,
        "capsules are off: start the agent with --capsule-trust FILE (the keys capsules must be signed by)",
    )
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
    pub fn new(mut agent: Agent, documents: Vec<Document>) -> Result<Self, ApiError> {
        let set = build_set(&documents)?;
        // The scorer learns destinations from allowed connects too.
        agent.writer.set_observe_net(true);
        Ok(Self {
            agent,
            set,
            documents,
            governed: BTreeMap::new(),
            scorer: Scorer::new(ScoreConfig::default()),
            trust: TrustController::default(),
            audit: Vec::new(),
            signing: None,
            traces: None,
            counts: ActionCounts::default(),
            metrics_listener: None,
            telemetry: None,
            origin: (origin::Source::Files, None),
            capsules: None,
            fleet: None,
            waiting: BTreeMap::new(),
            selectors: Vec::new(),
            state_file: None,
            api_group: None,
            dirty: false,
            files_digest: None,
        })
    }

    /// Handles a request from `caller`: a caller inside a governed subtree
    /// may only read (see [`super::caller`]); its attempt is audited.
    pub fn handle_call(&mut self, req: Request, caller: super::caller::Caller) -> Result<Value, ApiError> {
        if req.mutates()
            && let Some(why) = self.caller_governed(&caller)
        {
            let method = req.method();
            tracing::warn!(pid = caller.pid, uid = caller.uid, method, why = %why, "API call refused: the caller is governed");
            self.audit.push(json!({"action": "api_refused", "method": method, "pid": caller.pid, "uid": caller.uid, "why": why}));
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "{method} refused: the caller (pid {}) {why}; a governed workload may not change the agent",
                    caller.pid
                ),
            ));
        }
        let r = self.handle(req);
        if r.is_ok() {
            self.save_state();
        }
        r
    }

    /// Why `caller` counts as governed (inside a governed subtree), if it
    /// does: the kernel's record of its process, or its cgroup's path. A
    /// caller whose cgroup cannot be read (it exited) counts as governed.
    fn caller_governed(&self, caller: &super::caller::Caller) -> Option<String> {
        if !caller.still_there() {
            return Some("is gone (the process that connected exited; its pid may be another's now)".into());
        }
        let w = &self.agent.writer;
        if let Some(id) = w.task_governor(caller.pid) {
            return Some(format!("belongs to governed cgroup {id}"));
        }
        match Cgroup::of_pid(&caller.pid.to_string()) {
            Ok(cg) => {
                w.governing(&cg.path).map(|id| format!("is in {} (governed cgroup {id})", cg.path.display()))
            }
            Err(e) => Some(format!("cannot be placed ({e})")),
        }
    }

    /// Scores an event and carries out what the trust controller decides.
    /// Returns the actions taken (also appended to the audit log).
    pub fn observe(&mut self, ev: &crate::events::DecisionEvent) -> Vec<Value> {
        if ev.op == crate::events::Op::Cgroup {
            self.on_cgroup_event(ev);
            return Vec::new();
        }
        if let crate::events::Target::Escape { outcome: crate::events::EscapeOutcome::LeftToAgent, .. } =
            ev.target
        {
            self.kill_doomed();
        }
        let Some(g) = self.governed.get(&ev.cgroup_id) else { return Vec::new() };
        if let Some(t) = &self.telemetry {
            t.decision(ev, g.compiled.tier, Some(&g.compiled));
        }
        let started = std::time::Instant::now();
        let observed = self.scorer.observe(ev);
        if let Some(t) = &mut self.traces {
            t.event(ev, &observed);
        }
        let Observed::Scored(score) = observed else { return Vec::new() };
        if let Some(t) = &mut self.traces {
            t.score(&score);
        }
        let q = &self.governed[&ev.cgroup_id].quarantine_at;
        let actions = self.trust.on_score(&score, |t| q.contains(&t));
        if actions.iter().any(|a| matches!(a, Action::Quarantine { .. })) {
            self.freeze_first(ev.cgroup_id);
        }
        let mut done = Vec::new();
        for a in actions {
            match self.act(&a, started) {
                Ok(mut v) => {
                    v["latency_us"] = json!(started.elapsed().as_micros() as u64);
                    v["score"] = json!(score.value);
                    if let Some(last) = self.audit.last_mut() {
                        *last = v.clone();
                    }
                    done.push(v);
                }
                Err(e) => tracing::error!(error = %e.message, action = ?a, "trust action failed"),
            }
        }
        self.save_state();
        done
    }

    fn trace(&mut self, cgroup_id: u64, record: Record) {
        if let Some(t) = &mut self.traces {
            t.record(cgroup_id, &record);
        }
    }

    /// Carries out one trust action, audits it and records it in the trace.
    /// `since`: when the event that called for it was read (for latency).
    fn act(&mut self, a: &Action, since: std::time::Instant) -> Result<Value, ApiError> {
        let entry = match a {
            Action::SetTier { cgroup_id, from, to, reason, actor, score } => {
                let g = self.governed.get_mut(cgroup_id).ok_or_else(|| {
                    ApiError::new(ErrorCode::NotFound, format!("cgroup {cgroup_id} is not governed"))
                })?;
                let compiled = self.set.compile_for(&g.workload, *to, 1).map_err(|e| invalid(e.0))?;
                let generation = self.agent.writer.govern(&g.cgroup, &compiled).map_err(kernel)?;
                if g.before_escalation.is_none() && to > from {
                    g.before_escalation = Some(g.compiled.clone());
                }
                g.compiled = compiled;
                g.generation = generation;
                self.counts.tier_changes += 1;
                let entry = json!({"action": "set_tier", "cgroup": g.cgroup.path, "cgroup_id": cgroup_id, "from": from, "to": to, "reason": reason, "actor": actor, "generation": generation});
                let change = dna::TrustChange {
                    ts_ns: kernel_now_ns(),
                    from: *from,
                    to: *to,
                    reason: reason.clone(),
                    actor: actor.clone(),
                    score: *score,
                };
                self.trace(*cgroup_id, Record::TrustChange(change));
                self.fleet_publish(*cgroup_id, crate::fleet::RecordAction::Tier, reason, actor);
                entry
            }
            Action::Quarantine { cgroup_id, reason } => {
                self.quarantine(*cgroup_id, "scorer", reason, since)?
            }
            Action::Release { cgroup_id, actor } => self.release(*cgroup_id, actor)?,
        };
        tracing::warn!(entry = %entry, "trust action");
        self.audit.push(entry.clone());
        self.dirty = true;
        Ok(entry)
    }

    /// Redzone, then freeze (if the policy says so), then the snapshot and
    /// the records. `contained_us` in the result: from `since` until the
    /// redzone was in place and the cgroup frozen.
    fn quarantine(
        &mut self,
        cgroup_id: u64,
        actor: &str,
        reason: &[String],
        since: std::time::Instant,
    ) -> Result<Value, ApiError> {
        self.dirty = true;
        let g = self.governed.get_mut(&cgroup_id).ok_or_else(|| {
            ApiError::new(ErrorCode::NotFound, format!("cgroup {cgroup_id} is not governed"))
        })?;
        // Freeze first (nothing runs on while the record changes), then the
        // redzone (the compromised-tier record), then the snapshot.
        let target = if g.compiled.tier == Tier::Compromised {
            None
        } else {
            Some(self.set.compile_for(&g.workload, Tier::Compromised, 1).map_err(|e| invalid(e.0))?)
        };
        let freeze = target.as_ref().map_or(g.compiled.freeze, |c| c.freeze);
        let from = g.compiled.tier;
        if freeze && !g.frozen {
            quarantine::freeze(&g.cgroup, std::time::Duration::from_secs(2)).map_err(kernel)?;
            g.frozen = true;
        }
        let mut change = None;
        if let Some(compiled) = target {
            let generation = self.agent.writer.govern(&g.cgroup, &compiled).map_err(kernel)?;
            g.before_escalation.get_or_insert_with(|| g.compiled.clone());
            change = Some(dna::TrustChange {
                ts_ns: kernel_now_ns(),
                from: g.compiled.tier,
                to: Tier::Compromised,
                reason: reason.to_vec(),
                actor: actor.to_string(),
                score: None,
            });
            g.compiled = compiled;
            g.generation = generation;
            self.trust.track(cgroup_id, Tier::Compromised);
            self.counts.tier_changes += 1;
        }
        let contained_us = since.elapsed().as_micros() as u64;
        // Frozen processes hold still for the snapshot.
        let snapshot = quarantine::snapshot(&g.cgroup);
        let entry = json!({"action": "quarantine", "cgroup": g.cgroup.path, "cgroup_id": cgroup_id, "frozen": freeze, "generation": g.generation, "actor": actor, "reason": reason, "snapshot": snapshot, "contained_us": contained_us});
        if let Some(c) = change {
            self.trace(cgroup_id, Record::TrustChange(c));
        }
        let q = dna::QuarantineAction {
            ts_ns: kernel_now_ns(),
            op: QuarantineOp::Freeze,
            actor: actor.to_string(),
            reason: reason.to_vec(),
            snapshot: json!({"frozen": freeze, "generation": entry["generation"], "processes": entry["snapshot"]["processes"]}),
        };
        self.trace(cgroup_id, Record::Quarantine(q));
        self.counts.quarantines += 1;
        if let (Some(t), Some(g)) = (&self.telemetry, self.governed.get(&cgroup_id)) {
            let q = spans::Quarantine {
                workload: workload_ref(g),
                from,
                to: g.compiled.tier,
                reason: reason.to_vec(),
                actor: actor.to_string(),
                freeze,
                contained_us,
                generation: g.generation,
                processes: entry["snapshot"]["processes"].as_array().map_or(0, Vec::len),
            };
            t.quarantined(since.elapsed(), &q);
        }
        self.fleet_publish(cgroup_id, crate::fleet::RecordAction::Quarantine, reason, actor);
        Ok(entry)
    }

    fn release(&mut self, cgroup_id: u64, actor: &str) -> Result<Value, ApiError> {
        self.dirty = true;
        let started = std::time::Instant::now();
        let g = self.governed.get_mut(&cgroup_id).ok_or_else(|| {
            ApiError::new(ErrorCode::NotFound, format!("cgroup {cgroup_id} is not governed"))
        })?;
        let previous = g.before_escalation.take().ok_or_else(|| {
            ApiError::new(ErrorCode::NotFound, "the workload is not quarantined or escalated")
        })?;
        let generation = self.agent.writer.govern(&g.cgroup, &previous).map_err(kernel)?;
        if g.frozen {
            quarantine::thaw(&g.cgroup).map_err(kernel)?;
            g.frozen = false;
        }
        let tier = previous.tier;
        let from = g.compiled.tier;
        g.compiled = previous;
        g.generation = generation;
        self.trust.track(cgroup_id, tier);
        self.scorer.reset(cgroup_id);
        self.counts.releases += 1;
        self.counts.tier_changes += 1;
        let entry = json!({"action": "release", "cgroup": g.cgroup.path, "cgroup_id": cgroup_id, "tier": tier, "generation": generation, "actor": actor});
        let why = vec![format!("released; policy generation {generation} at tier {}", tier.as_str())];
        let ts_ns = kernel_now_ns();
        let q = dna::QuarantineAction {
            ts_ns,
            op: QuarantineOp::Release,
            actor: actor.to_string(),
            reason: why.clone(),
            snapshot: Value::Null,
        };
        self.trace(cgroup_id, Record::Quarantine(q));
        let change =
            dna::TrustChange { ts_ns, from, to: tier, reason: why, actor: actor.to_string(), score: None };
        self.trace(cgroup_id, Record::TrustChange(change));
        if let (Some(t), Some(g)) = (&self.telemetry, self.governed.get(&cgroup_id)) {
            let r = spans::Release {
                workload: workload_ref(g),
                from,
                to: tier,
                actor: actor.to_string(),
                generation,
            };
            t.released(started.elapsed(), &r);
        }
        self.fleet_publish(cgroup_id, crate::fleet::RecordAction::Release, &[], actor);
        Ok(entry)
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
            Request::PolicyApply { documents } => {
                let started = std::time::SystemTime::now();
                let count = documents.len();
                let r = if self.signing.is_some() {
                    Err(ApiError::new(
                        ErrorCode::Refused,
                        "strict mode: this agent applies only signed bundles (policy_apply_bundle); nothing was changed",
                    ))
                } else {
                    self.apply(documents)
                };
                if r.is_ok() {
                    self.origin = (origin::Source::Api, None);
                }
                self.apply_span(started, "api", count, &r);
                r
            }
            Request::PolicyApplyBundle { path } => {
                let started = std::time::SystemTime::now();
                let r = self.apply_bundle(std::path::Path::new(&path));
                let count = r.as_ref().map_or(0, |_| self.documents.len());
                self.apply_span(started, "bundle", count, &r);
                r
            }
            Request::Govern { cgroup } => self.govern(&cgroup),
            Request::TrustSet { cgroup, tier, actor, reason } => {
                let id = self.known(&cgroup)?;
                let a = self
                    .trust
                    .set(id, tier, &actor, &reason)
                    .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "not tracked"))?;
                self.act(&a, std::time::Instant::now())
            }
            Request::Quarantine { cgroup, actor, reason } => {
                let id = self.known(&cgroup)?;
                let entry = self.quarantine(id, &actor, &[reason], std::time::Instant::now())?;
                self.audit.push(entry.clone());
                Ok(entry)
            }
            Request::Release { cgroup, actor } => {
                let id = self.known(&cgroup)?;
                self.act(&Action::Release { cgroup_id: id, actor }, std::time::Instant::now())
            }
            Request::Audit => Ok(json!(self.audit)),
            Request::Explain { cgroup, record, quarantine } => {
                let entries = self.trace_entries(&cgroup)?;
                let v = match (record, quarantine) {
                    (Some(n), _) => {
                        serde_json::to_value(crate::digest::record(&entries, n).ok_or_else(|| {
                            ApiError::new(ErrorCode::NotFound, format!("the trace has no record {n}"))
                        })?)
                    }
                    (None, true) => {
                        serde_json::to_value(crate::digest::last_quarantine(&entries).ok_or_else(|| {
                            ApiError::new(ErrorCode::NotFound, "the workload was never quarantined")
                        })?)
                    }
                    (None, false) => serde_json::to_value(crate::digest::workload(&entries)),
                };
                v.map_err(|e| ApiError::new(ErrorCode::Kernel, e.to_string()))
            }
            Request::TraceExport { cgroup, from, limit } => {
                let limit = limit.unwrap_or(10_000).min(10_000);
                let entries = self.trace_entries(&cgroup)?;
                let total = entries.len() as u64;
                let records: Vec<&dna::Entry> =
                    entries.iter().filter(|e| e.index >= from).take(limit as usize).collect();
                Ok(json!({"total": total, "from": from, "records": records}))
            }
            Request::Metrics => Ok(json!(self.metrics())),
            Request::CapsuleRun { package, args, inputs, monitor, tier } => {
                self.capsule_run(super::capsules::RunRequest { package, args, inputs, monitor, tier })
            }
            Request::CapsuleList => match &self.capsules {
                Some(c) => Ok(c.list()),
                None => Err(capsules_off()),
            },
            Request::Ungovern { cgroup } => self.ungovern(&cgroup),
        }
    }

    /// The records of a governed workload's trace, everything written so far.
    fn trace_entries(&mut self, spec: &str) -> Result<Vec<dna::Entry>, ApiError> {
        let id = self.known(spec)?;
        let path =
            self.traces.as_mut().and_then(|t| t.flush(id)).ok_or_else(|| {
                ApiError::new(ErrorCode::NotFound, "this agent keeps no trace of the workload")
            })?;
        let read = |e: dna::DnaError| ApiError::new(ErrorCode::Kernel, format!("reading the trace: {e}"));
        let trace = dna::Trace::open(&path).map_err(read)?;
        trace.records().map_err(read)?.collect::<Result<Vec<_>, _>>().map_err(read)
    }

    fn known(&self, spec: &str) -> Result<u64, ApiError> {
        let cg = Cgroup::resolve(spec).map_err(|e| ApiError::new(ErrorCode::NotFound, e.to_string()))?;
        if self.governed.contains_key(&cg.id) {
            Ok(cg.id)
        } else {
            Err(ApiError::new(ErrorCode::NotFound, format!("{} is not governed", cg.path.display())))
        }
    }

    /// Starts a capsule run: verify, a cgroup governed as the capsule, the child.
    fn capsule_run(&mut self, req: super::capsules::RunRequest) -> Result<Value, ApiError> {
        let runner = self.capsules.as_ref().ok_or_else(capsules_off)?;
        let verified = runner.verify(&req.package)?;
        let name = verified.package.manifest().name.clone();
        let digest = format!("sha3-256:{}", verified.module_digest().to_hex());
        if let Some(why) = self.fleet_refusal(&digest) {
            return Err(ApiError::new(ErrorCode::Refused, why));
        }
        let run_id = crate::wasm::new_run_id(&name);
        let spec = format!("{}/{run_id}", super::capsules::CGROUP_PARENT);
        let cgroup = Cgroup::create(&spec).map_err(|e| ApiError::new(ErrorCode::Kernel, e.to_string()))?;
        let mut workload = workload_of(&cgroup);
        workload.digest = Some(digest);
        workload.signers = verified.signer_ids();
        let (path, id) = (cgroup.path.clone(), cgroup.id);
        let governed = match self.govern_as(cgroup, workload, Origin::Capsule) {
            Ok(g) => g,
            Err(e) => {
                let _ = std::fs::remove_dir(&path);
                return Err(e);
            }
        };
        let documents = self.documents.clone();
        let Some(runner) = self.capsules.as_mut() else { return Err(capsules_off()) };
        match runner.spawn(&run_id, &name, &path, id, &documents, &req) {
            Ok(mut out) => {
                out["policies"] = governed["policies"].clone();
                out["tier"] = governed["tier"].clone();
                self.counts.capsule_runs += 1;
                self.audit.push(json!({"action": "capsule_run", "run_id": run_id, "package": req.package, "cgroup_id": id}));
                Ok(out)
            }
            Err(e) => {
                let _ = std::fs::remove_dir(&path);
                Err(e)
            }
        }
    }

    /// Governs `cgroup` as `workload`.
    fn govern_as(&mut self, cgroup: Cgroup, workload: Workload, origin: Origin) -> Result<Value, ApiError> {
        let tier = self.set.initial_tier(&workload).map_err(invalid)?;
        self.govern_at(cgroup, workload, origin, tier, None)
    }

    /// Governs `cgroup` as `workload` at `tier`; `resumed`: what a workload
    /// governed before a restart brings back (its quarantine among it).
    fn govern_at(
        &mut self,
        cgroup: Cgroup,
        workload: Workload,
        origin: Origin,
        tier: Tier,
        resumed: Option<persist::Resumed>,
    ) -> Result<Value, ApiError> {
        let compiled = self.set.compile_for(&workload, tier, 1).map_err(|e| invalid(e.0))?;
        let before_escalation = match resumed.as_ref().and_then(|r| r.before_escalation) {
            Some(t) => Some(self.set.compile_for(&workload, t, 1).map_err(|e| invalid(e.0))?),
            None => None,
        };
        let generation = self.agent.writer.govern(&cgroup, &compiled).map_err(kernel)?;
        let out = json!({"cgroup": cgroup.path, "id": cgroup.id, "policies": compiled.policy_name, "tier": compiled.tier, "generation": generation});
        self.trust.track(cgroup.id, tier);
        self.scorer.reset(cgroup.id);
        let quarantine_at = quarantine_tiers(&self.set, &workload);
        let (frozen, fleet_hold, previous_ids) =
            resumed.map_or((false, false, Vec::new()), |r| (r.frozen, r.fleet_hold, r.previous_ids));
        let g = Governed {
            cgroup,
            workload,
            compiled,
            generation,
            before_escalation,
            frozen,
            quarantine_at,
            fleet_hold,
            origin,
            previous_ids,
        };
        self.dirty = true;
        let record = self.governed_record(&g, true);
        if let Some(t) = &mut self.traces {
            t.govern(&g.cgroup, record);
        }
        if let Some(t) = &mut self.telemetry {
            t.run_started(&spans::RunStart {
                workload: workload_ref(&g),
                policies: g.compiled.policy_name.clone(),
                tier: g.compiled.tier,
                generation: g.generation,
            });
        }
        let identity = crate::fleet::Identity::of(&g.workload);
        self.governed.insert(g.cgroup.id, g);
        if let Some(identity) = identity {
            self.fleet_enforce(&identity);
        }
        Ok(out)
    }

    /// Kills the processes the kernel doomed: escaped where it could not
    /// kill them from the hook, and everything they forked since (the kernel
    /// dooms a doomed process's children at the fork, so none is missed).
    /// On such events and at every tick.
    fn kill_doomed(&mut self) {
        for pid in self.agent.writer.doomed() {
            // SAFETY: kill(2) has no memory arguments.
            let r = unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let killed = r == 0;
            tracing::warn!(
                pid,
                killed,
                "killed a process that escaped its governed subtree (the kernel could not)"
            );
            self.audit.push(json!({"action": "escaped_process_killed", "pid": pid, "killed": killed}));
        }
    }

    /// What a trace needs to know to replay this workload's scoring.
    fn governed_record(&self, g: &Governed, fresh: bool) -> dna::Governed {
        dna::Governed {
            ts_ns: kernel_now_ns(),
            fresh,
            tier: self.trust.tier(g.cgroup.id).unwrap_or(g.compiled.tier),
            policies: g.compiled.policy_name.clone(),
            generation: g.generation,
            cgroup_id: Some(g.cgroup.id),
            previous_cgroup_id: None,
            quarantine_at: g.quarantine_at.clone(),
            scoring: self.scorer.config.clone(),
            thresholds: self.trust.thresholds.clone(),
            rules: {
                // A set: a record may hold thousands of rules.
                let active: std::collections::HashSet<u32> =
                    g.compiled.active_rules.iter().copied().collect();
                g.compiled.rules.iter().filter(|r| active.contains(&r.id)).cloned().collect()
            },
        }
    }

    /// Freezes a workload about to be quarantined before its record is
    /// swapped, when its quarantine freezes (`quarantine()` then skips it).
    fn freeze_first(&mut self, cgroup_id: u64) {
        let Some(g) = self.governed.get_mut(&cgroup_id) else { return };
        let freezes = self.set.compile_for(&g.workload, Tier::Compromised, 1).is_ok_and(|c| c.freeze);
        if freezes && !g.frozen {
            match quarantine::freeze(&g.cgroup, std::time::Duration::from_secs(2)) {
                Ok(()) => g.frozen = true,
                Err(e) => tracing::error!(error = %e, cgroup_id, "freezing before the redzone swap failed"),
            }
        }
    }

    /// Writes the workload's outcome and closes its trace.
    fn end_trace(&mut self, cgroup_id: u64, summary: &str) {
        if let Some(t) = &mut self.traces {
            let outcome = dna::Outcome {
                ts_ns: kernel_now_ns(),
                exit_code: None,
                signal: None,
                summary: summary.to_string(),
                output_sha3: None,
                host_calls: None,
            };
            t.record(cgroup_id, &Record::Outcome(outcome));
            t.close(cgroup_id);
        }
    }

    /// The timer (about once a second): a governed cgroup that was removed
    /// ends (outcome in its trace, its kernel record dropped); traces are
    /// flushed and signed; events the kernel lost for a workload are
    /// recorded in its trace.
    pub fn tick(&mut self) {
        if let Some(c) = &mut self.capsules {
            for cgroup in c.reap() {
                // Empty now; removing it ends its governance below.
                if let Err(e) = std::fs::remove_dir(&cgroup) {
                    tracing::warn!(cgroup = %cgroup.display(), error = %e, "removing a finished capsule run's cgroup");
                }
            }
        }
        self.check_cgroups();
        self.kill_doomed();
        for link in self.agent.writer.repair_links() {
            self.audit.push(json!({"action": "link_repinned", "link": link}));
        }
        self.save_state();
        if let Some(t) = &self.telemetry {
            t.publish(self.metrics_sample());
        }
        let Some(traces) = &mut self.traces else { return };
        if let Ok(lost) = self.agent.writer.drops_by_cgroup() {
            for (id, total) in lost {
                if self.governed.contains_key(&id) {
                    traces.lost(id, total);
                }
            }
        }
        traces.tick();
    }

    /// A clean stop: every trace is signed, synced and closed.
    pub fn close(&mut self) {
        if let Some(t) = &mut self.traces {
            t.close_all();
        }
        if let Some(t) = &mut self.telemetry {
            t.shutdown();
        }
    }

    /// Ends a governed workload's `forge.workload.run` span.
    fn end_run(&mut self, cgroup_id: u64, end: spans::RunEnd) {
        let Some(t) = &mut self.telemetry else { return };
        let g = self.governed.get(&cgroup_id);
        t.run_ended(cgroup_id, end, g.map(|g| g.compiled.tier), g.map(|g| g.generation));
    }

    /// Exports the `forge.policy.apply` span of a request that started at
    /// `started` with `documents` documents and ended in `r`.
    fn apply_span(
        &self,
        started: std::time::SystemTime,
        source: &'static str,
        documents: usize,
        r: &Result<Value, ApiError>,
    ) {
        let Some(t) = &self.telemetry else { return };
        let duration_us = started.elapsed().map_or(0, |d| d.as_micros() as u64);
        let (outcome, error) = match r {
            Ok(_) => ("applied".to_string(), None),
            Err(e) => (
                serde_json::to_value(e.code)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                Some(e.message.as_str()),
            ),
        };
        let ok = r.as_ref().ok();
        let strings = |v: &Value| -> Vec<String> {
            v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)).collect()
        };
        let apply = spans::PolicyApply {
            source,
            documents,
            policies: ok.map(|v| strings(&v["policies"])).unwrap_or_default(),
            rules: if ok.is_some() { rule_count(&self.set) } else { 0 },
            swapped: ok
                .and_then(|v| v["swapped"].as_array())
                .into_iter()
                .flatten()
                .filter_map(|s| Some((s["cgroup_id"].as_u64()?, s["generation"].as_u64()?)))
                .collect(),
            bundle: ok.filter(|v| v["bundle"].is_object()).map(|v| spans::BundleRef {
                name: v["bundle"]["name"].as_str().unwrap_or_default().to_string(),
                version: v["bundle"]["version"].as_u64().unwrap_or_default(),
                signers: strings(&v["bundle"]["signers"]),
            }),
            outcome,
            duration_us,
        };
        t.policy_applied(started, &apply, error);
    }

    fn apply_bundle(&mut self, path: &std::path::Path) -> Result<Value, ApiError> {
        self.apply_bundle_at(path, false)
    }

    /// Verifies a bundle and applies the policy set of record with it
    /// (`sign::state`): signatures (k of n) and digests, then the trust
    /// domain's version rule, then the set composed of the latest bundle of
    /// each name, every one verified again; nothing is applied before all
    /// of that passed. `again`: the bundle of record of its name is
    /// accepted again (the fleet redelivers it after a restart or a
    /// partition); if the set of record is already in force, nothing
    /// changes and the answer says `unchanged`.
    fn apply_bundle_at(&mut self, path: &std::path::Path, again: bool) -> Result<Value, ApiError> {
        use crate::sign::{
            bundle::Bundle,
            state::{Admission, AppliedBundles},
        };
        let Some(signing) = &self.signing else {
            return Err(ApiError::new(
                ErrorCode::Refused,
                "this agent has no trust config (start it with --trust) to verify bundles against",
            ));
        };
        let refused = |e: &dyn std::fmt::Display| {
            ApiError::new(ErrorCode::Refused, format!("{e}; nothing was changed"))
        };
        let bundle = Bundle::load(path).map_err(|e| refused(&e))?;
        let mut state = AppliedBundles::load(&signing.state).map_err(|e| refused(&e))?;
        let verified = bundle.verify(&signing.trust, None).map_err(|e| refused(&e))?;
        let admission = state.admit(&verified, again).map_err(|e| refused(&e))?;
        let set = state.compose(&signing.state, &signing.trust, &verified).map_err(|e| refused(&e))?;
        let documents = documents_of(&set).map_err(|e| refused(&e))?;
        let signers: Vec<String> = verified.signer_ids().iter().map(ToString::to_string).collect();
        let bundle_json = json!({"name": verified.name, "version": verified.version, "signers": signers});
        let of_record: Vec<Value> =
            set.iter().map(|b| json!({"name": b.name, "version": b.version})).collect();
        if admission == Admission::OfRecord && documents == self.documents {
            return Ok(json!({"unchanged": true, "bundle": bundle_json, "set_of_record": of_record}));
        }
        if signing.require_enforceable {
            let set = build_set(&documents)?;
            let findings: Vec<_> = set
                .check_backends(&self.agent.writer.handles().active, true)
                .into_iter()
                .filter(|d| d.severity == Severity::Error)
                .collect();
            if !findings.is_empty() {
                return Err(invalid(Diagnostics(findings)));
            }
        }
        let state_path = signing.state.clone();
        let mut result = self.apply(documents)?;
        state
            .record(&state_path, &verified)
            .map_err(|e| kernel(format!("applied, but recording it in the state failed: {e}")))?;
        result["bundle"] = bundle_json;
        result["set_of_record"] = json!(of_record);
        self.origin = (
            origin::Source::Bundle,
            Some(origin::BundleSource { name: verified.name.clone(), version: verified.version, signers }),
        );
        self.audit.push(
            json!({"action": "policy_apply_bundle", "bundle": result["bundle"], "set_of_record": of_record}),
        );
        Ok(result)
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
                g.quarantine_at = quarantine_tiers(&set, &g.workload);
            }
        }
        self.set = set;
        let records: Vec<(u64, dna::Governed)> =
            self.governed.values().map(|g| (g.cgroup.id, self.governed_record(g, false))).collect();
        for (id, r) in records {
            self.trace(id, Record::Governed(r));
        }
        self.documents = documents;
        self.dirty = true;
        tracing::info!(policies = self.set.docs.len(), workloads = done.len(), "policy set applied");
        Ok(json!({
            "policies": self.set.docs.iter().map(|p| p.name().to_string()).collect::<Vec<_>>(),
            "swapped": done.iter().map(|(id, generation)| json!({"cgroup_id": id, "generation": generation})).collect::<Vec<_>>(),
        }))
    }

    /// What a metrics scrape shows, read now from the maps, the event
    /// reader, the governed workloads and /proc.
    pub fn metrics_sample(&self) -> metrics::Sample {
        let w = &self.agent.writer;
        let decisions = w.counters().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "metrics: reading the decision counters");
            Vec::new()
        });
        let lost = crate::ebpf::writer::sum_dropped(decisions.iter().copied());
        let workloads = self
            .governed
            .values()
            .map(|g| metrics::WorkloadSample {
                cgroup_id: g.cgroup.id,
                cgroup: g.cgroup.path.display().to_string(),
                tier: g.compiled.tier,
                generation: g.generation,
                frozen: g.frozen,
                lost_events: lost.get(&g.cgroup.id).copied().unwrap_or(0),
            })
            .collect();
        metrics::Sample {
            decisions,
            events_by_hook: self.agent.events.per_hook.iter().map(|(h, n)| (*h, *n)).collect(),
            undecodable_events: self.agent.events.decode_errors,
            ring_drops: w.drops().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "metrics: reading the ring drop counter");
                0
            }),
            kernel_governed: w.governed().len() as u64,
            workloads,
            actions: self.counts,
            trace_write_errors: self.traces.as_ref().map_or(0, |t| t.errors),
            capsules_running: self.capsules.as_ref().map_or(0, |c| c.running() as u64),
            fleet: self
                .fleet
                .as_ref()
                .map(|f| metrics::FleetSample { connected: f.connected, counts: f.counts }),
            process: metrics::process_sample(),
        }
    }

    /// The OpenMetrics text a scrape of `/metrics` gets (docs/metrics.md).
    pub fn metrics(&self) -> String {
        metrics::render(&self.metrics_sample())
    }

    fn status(&self) -> Value {
        let h = self.agent.writer.handles();
        let lost = self.agent.writer.drops_by_cgroup().unwrap_or_default();
        let known: Vec<Value> = self
            .governed
            .values()
            .map(|g| json!({"cgroup": g.cgroup.path, "id": g.cgroup.id, "previous_ids": g.previous_ids, "origin": g.origin, "policies": g.compiled.policy_name, "tier": g.compiled.tier, "generation": g.generation, "frozen": g.frozen, "lost_events": lost.get(&g.cgroup.id).copied().unwrap_or(0), "trace": self.traces.as_ref().map(|t| t.status(g.cgroup.id))}))
            .collect();
        let waiting: Vec<Value> = self
            .waiting
            .values()
            .map(|g| json!({"cgroup": g.cgroup.path, "old_id": g.cgroup.id, "previous_ids": g.previous_ids, "tier": g.compiled.tier, "frozen": g.frozen}))
            .collect();
        let links = self.agent.writer.link_states();
        let links_missing: Vec<&crate::ebpf::links::LinkState> = links.iter().filter(|l| !l.ok()).collect();
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
            .map(|(k, n)| {
                let verdict = crate::events::CounterVerdict::from_tag(k.verdict)
                    .map_or_else(|_| json!(k.verdict), |v| json!(v.as_str()));
                let hook = crate::events::Hook::from_tag(k.hook)
                    .map_or_else(|_| json!(k.hook), |h| json!(h.as_str()));
                let mode = crate::events::Mode::from_tag(k.mode)
                    .map_or_else(|_| json!(k.mode), |m| json!(m.as_str()));
                json!({"cgroup_id": k.cgroup_id, "hook": hook, "verdict": verdict, "mode": mode, "count": n})
            })
            .collect();
        json!({
            "pid": std::process::id(),
            "adopted": h.adopted,
            "backends": h.active,
            "governed": known,
            "waiting_for_cgroup": waiting,
            "selectors": self.selectors.iter().map(|s| &s.pattern).collect::<Vec<_>>(),
            "governed_from_pins_only": adopted_only,
            "links": {"expected": links.len(), "problems": links_missing, "reattached": self.agent.writer.reattached()},
            "kill_other_task_in_kernel": h.signal_task,
            "counters": counters,
            "ring_drops": self.agent.writer.drops().unwrap_or(0),
            "traces": self.traces.as_ref().map(|t| json!({"dir": t.store().dir(), "errors": t.errors, "last_error": t.last_error})),
            "decode_errors": self.agent.events.decode_errors,
            "otlp": self.telemetry.as_ref().map(Otlp::status),
            "fleet": self.fleet_status(),
            "policy": origin::Provenance {
                source: self.origin.0,
                bundle: self.origin.1.clone(),
                strict: self.signing.is_some(),
                trust: self.signing.as_ref().map(|s| origin::TrustSummary::of(&s.trust)),
            },
            "events_by_hook": self.agent.events.per_hook.iter().map(|(h, n)| (h.as_str().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

/// The documents of a policy set of record, named `<bundle>:<file>`.
fn documents_of(set: &[crate::sign::bundle::VerifiedBundle]) -> Result<Vec<Document>, String> {
    let mut documents = Vec::new();
    for b in set {
        for d in &b.documents {
            let text = d.text().map_err(|e| format!("{}:{}: not UTF-8: {e}", b.name, d.name))?;
            documents.push(Document { name: format!("{}:{}", b.name, d.name), text: text.to_string() });
        }
    }
    Ok(documents)
}

/// The tiers at which the set's policy for `workload` asks for quarantine.
fn quarantine_tiers(set: &PolicySet, workload: &Workload) -> Vec<Tier> {
    Tier::ALL.into_iter().filter(|t| set.compile_for(workload, *t, 1).is_ok_and(|c| c.quarantine)).collect()
}

/// Rules in a set, escalation rules included.
fn rule_count(set: &PolicySet) -> usize {
    set.docs
        .iter()
        .map(|d| d.spec.rules.len() + d.spec.escalation.values().map(|e| e.rules.len()).sum::<usize>())
        .sum()
}

/// A governed workload as telemetry names it.
fn workload_ref(g: &Governed) -> spans::WorkloadRef {
    spans::WorkloadRef {
        cgroup_id: g.cgroup.id,
        cgroup: g.cgroup.path.display().to_string(),
        workload: g.workload.cgroup.clone().unwrap_or_default(),
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

/// Runs the daemon: serves the API on `listener` (and the metrics on
/// [`Daemon::metrics_listener`], if set), reads events (handing each to
/// `on_event`), until `shutdown` completes. This task is the only one that
/// touches the maps; metrics scrapes are rendered here too.
pub async fn run(
    daemon: &mut Daemon,
    listener: tokio::net::UnixListener,
    shutdown: impl Future<Output = ()>,
    mut on_event: impl FnMut(&Daemon, crate::events::DecisionEvent),
) -> std::io::Result<()> {
    let (calls_tx, mut calls) = tokio::sync::mpsc::channel::<super::server::Call>(64);
    let (scrapes_tx, mut scrapes) = tokio::sync::mpsc::channel::<metrics::http::Scrape>(8);
    let metrics_server = match daemon.metrics_listener.take() {
        Some(l) => {
            l.set_nonblocking(true)?;
            let l = tokio::net::TcpListener::from_std(l)?;
            Some(tokio::spawn(metrics::http::serve(l, scrapes_tx)))
        }
        None => None,
    };
    let server = tokio::spawn(super::server::serve(listener, calls_tx, daemon.api_group));
    let mut fleet_inbox = daemon.fleet.as_mut().and_then(|f| f.inbox.take());
    tokio::pin!(shutdown);
    let mut batch = Vec::new();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            _ = tick.tick() => daemon.tick(),
            r = daemon.agent.events.read_batch(&mut batch) => {
                if let Err(e) = r {
                    break Err(e);
                }
                for ev in batch.drain(..) {
                    daemon.observe(&ev);
                    on_event(daemon, ev);
                }
            }
            Some((req, caller, reply)) = calls.recv() => {
                let resp = match daemon.handle_call(req, caller) {
                    Ok(v) => super::Response::ok(v),
                    Err(e) => super::Response::err(e),
                };
                let _ = reply.send(resp);
            }
            Some(reply) = scrapes.recv() => {
                let _ = reply.send(daemon.metrics());
            }
            Some(msg) = async { fleet_inbox.as_mut()?.recv().await } => {
                daemon.fleet_inbound(msg);
                daemon.save_state();
            }
            () = &mut shutdown => break Ok(()),
        }
    };
    server.abort();
    if let Some(m) = metrics_server {
        m.abort();
    }
    daemon.close();
    result
}
