//! What a trace records: the record kinds, their fields, and the payload
//! bytes of each kind. Decision events and checkpoints are binary (they are
//! frequent, or signed); the rare kinds are JSON, so they can grow fields.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::event;
use crate::{
    events::DecisionEvent,
    policy::{RuleInfo, Tier},
    sign::PublicKey,
    trust::{Elided, Feature, ScoreConfig, controller::Thresholds},
};

/// One record of a trace.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", content = "record", rename_all = "snake_case")]
pub enum Record {
    /// Record 0, and only record 0: which workload this trace is about.
    Identity(Identity),
    /// A decision the kernel reported (deny, kill, would-deny, info).
    Decision(DecisionEvent),
    /// An allowed operation kept as a sample of normal behaviour.
    SampledAllowed(DecisionEvent),
    TrustChange(TrustChange),
    Quarantine(QuarantineAction),
    /// A Wasm capsule's call into the host.
    HostCall(HostCall),
    /// How the workload ended.
    Outcome(Outcome),
    /// A signature over the chain so far; written by the writer itself.
    Checkpoint(Checkpoint),
    /// A writer opened the trace again (agent restart); written by the writer itself.
    Reopen(Reopen),
    /// The agent (re)started governing the workload, or its policy changed:
    /// what replay needs to score as the agent did.
    Governed(Governed),
    /// Counts of routine allowed events left out of the trace.
    Elided(ElidedEvents),
    /// The workload's score after an event that raised features.
    Score(ScoreRecord),
    /// Events of this workload the kernel could not send (full ring buffer).
    Lost(Lost),
    /// A Wasm capsule run began: the capsule, its identity and how it ran.
    CapsuleRun(CapsuleRun),
}

/// The one-byte kind tag of each record in the file. 0 is never a kind, so
/// a zero-filled tail is not mistaken for records.
pub(crate) mod kind {
    pub const IDENTITY: u8 = 1;
    pub const DECISION: u8 = 2;
    pub const SAMPLED_ALLOWED: u8 = 3;
    pub const TRUST_CHANGE: u8 = 4;
    pub const QUARANTINE: u8 = 5;
    pub const HOST_CALL: u8 = 6;
    pub const OUTCOME: u8 = 7;
    pub const CHECKPOINT: u8 = 8;
    pub const REOPEN: u8 = 9;
    pub const GOVERNED: u8 = 10;
    pub const ELIDED: u8 = 11;
    pub const SCORE: u8 = 12;
    pub const LOST: u8 = 13;
    pub const CAPSULE_RUN: u8 = 14;
}

/// The name of a kind tag, for messages.
pub(crate) fn kind_name(tag: u8) -> &'static str {
    match tag {
        kind::IDENTITY => "identity",
        kind::DECISION => "decision",
        kind::SAMPLED_ALLOWED => "sampled_allowed",
        kind::TRUST_CHANGE => "trust_change",
        kind::QUARANTINE => "quarantine",
        kind::HOST_CALL => "host_call",
        kind::OUTCOME => "outcome",
        kind::CHECKPOINT => "checkpoint",
        kind::REOPEN => "reopen",
        kind::GOVERNED => "governed",
        kind::ELIDED => "elided",
        kind::SCORE => "score",
        kind::CAPSULE_RUN => "capsule_run",
        kind::LOST => "lost",
        _ => "unknown",
    }
}

/// Which workload a trace belongs to and when its trace began.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Also the trace's file name: `<data_dir>/traces/<workload_id>.dna`.
    pub workload_id: String,
    pub subject: Subject,
    /// Wall-clock time the trace was created (ns since the Unix epoch).
    pub created_unix_ns: u64,
    /// The agent version that created it.
    pub agent_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// What is governed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Subject {
    /// A cgroup v2 directory and its id (the directory's inode number).
    Cgroup { path: String, id: u64 },
    /// One run of a Wasm capsule.
    Capsule { package: String, digest: String, run_id: String },
}

impl Identity {
    /// A cgroup's identity; its workload id is `cgroup-<id>`.
    pub fn cgroup(path: &str, id: u64, created_unix_ns: u64) -> Self {
        Self {
            workload_id: format!("cgroup-{id}"),
            subject: Subject::Cgroup { path: path.to_string(), id },
            created_unix_ns,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            host: None,
        }
    }

    /// A capsule run's identity; its workload id is `capsule-<run_id>`.
    pub fn capsule(package: &str, digest: &str, run_id: &str, created_unix_ns: u64) -> Self {
        Self {
            workload_id: format!("capsule-{run_id}"),
            subject: Subject::Capsule {
                package: package.to_string(),
                digest: digest.to_string(),
                run_id: run_id.to_string(),
            },
            created_unix_ns,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            host: None,
        }
    }
}

/// A workload's trust tier changed. `ts_ns` is on the events' clock (kernel
/// monotonic ns), so the change sorts among the events that caused it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustChange {
    pub ts_ns: u64,
    pub from: Tier,
    pub to: Tier,
    /// Why: the reason text or the top anomaly features.
    pub reason: Vec<String>,
    /// Who: `scorer`, or the operator's name.
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuarantineOp {
    Freeze,
    Release,
}

/// A quarantine action and what was running at the time. `snapshot` is
/// free-form JSON (e.g. a `trust::quarantine::Snapshot`: process tree,
/// executables, open files, sockets).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineAction {
    pub ts_ns: u64,
    pub op: QuarantineOp,
    pub actor: String,
    pub reason: Vec<String>,
    #[serde(default)]
    pub snapshot: serde_json::Value,
}

/// A Wasm capsule called the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCall {
    /// When the call began (monotonic ns) and how long it took.
    pub ts_ns: u64,
    pub duration_ns: u64,
    pub name: String,
    pub args: serde_json::Value,
    pub result: serde_json::Value,
    /// Whether the host-call gate let it through.
    pub allowed: bool,
}

/// How the workload ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub ts_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// e.g. "exited", "killed by the agent", "capsule trapped: out of fuel".
    pub summary: String,
    /// A capsule run: sha3-256 of what it wrote to stdout and stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_sha3: Option<String>,
    /// A capsule run: how many host calls it made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_calls: Option<u64>,
}

/// A signed checkpoint: `signature` is ed25519 by `key` over
/// [`super::chain::checkpoint_message`] of this record's index and the hash of the
/// record before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Checkpoint {
    /// This record's own index (a checkpoint moved elsewhere no longer verifies).
    pub index: u64,
    pub unix_ns: u64,
    #[serde(with = "hex_bytes")]
    pub key: [u8; 32],
    #[serde(with = "hex_bytes")]
    pub signature: [u8; 64],
}

const CHECKPOINT_LEN: usize = 8 + 8 + 32 + 64;

/// A writer reopened the trace; `torn_bytes` of a torn last record were
/// dropped at `torn_offset` (both 0 after a clean shutdown).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reopen {
    pub unix_ns: u64,
    pub torn_offset: u64,
    pub torn_bytes: u64,
}

/// The agent governs the workload from here on with these settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Governed {
    /// Kernel monotonic ns (the events' clock).
    pub ts_ns: u64,
    /// The scorer starts this workload's baseline anew (the agent started
    /// governing it); false for a policy change, which keeps the baseline.
    pub fresh: bool,
    pub tier: Tier,
    /// The policies that apply, joined with `+`.
    pub policies: String,
    pub generation: u64,
    /// The governed cgroup's id (absent in traces written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// The id of the cgroup this one replaced: the workload's cgroup was
    /// removed and made again at the same path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_cgroup_id: Option<u64>,
    /// The tiers at which the policy quarantines the workload.
    pub quarantine_at: Vec<Tier>,
    pub scoring: ScoreConfig,
    pub thresholds: Thresholds,
    /// The rules of the record in force (id, name, `file:line`), so the
    /// trace names the rule behind each decision by itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleInfo>,
}

/// Routine allowed events between the records around it, as counts (see
/// `trust::scorer`): enough for replay to reach the same state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElidedEvents {
    pub first_ts_ns: u64,
    pub last_ts_ns: u64,
    #[serde(flatten)]
    pub counts: Elided,
}

/// A score and its top contributing features.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoreRecord {
    pub ts_ns: u64,
    pub value: u32,
    pub features: Vec<Feature>,
}

/// A capsule run began. With the module, this is what `forge pkg replay` needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapsuleRun {
    pub ts_ns: u64,
    pub name: String,
    pub version: u64,
    pub module_sha3: String,
    pub package_sha3: String,
    /// Key ids of the signers that counted.
    pub signers: Vec<String>,
    pub tier: Tier,
    /// The policies that govern the capsule, joined with `+`.
    pub policies: String,
    /// Denied calls went through and were recorded as would-deny.
    pub monitor: bool,
    pub entry: String,
    pub args: Vec<String>,
    pub limits: crate::wasm::manifest::Limits,
}

/// Events lost to a full ring buffer since the last such record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lost {
    /// Kernel monotonic ns when the agent noticed.
    pub ts_ns: u64,
    pub events: u64,
    /// All events of this workload lost since the agent loaded the programs.
    pub total: u64,
}

impl Record {
    pub(crate) fn kind(&self) -> u8 {
        match self {
            Self::Identity(_) => kind::IDENTITY,
            Self::Decision(_) => kind::DECISION,
            Self::SampledAllowed(_) => kind::SAMPLED_ALLOWED,
            Self::TrustChange(_) => kind::TRUST_CHANGE,
            Self::Quarantine(_) => kind::QUARANTINE,
            Self::HostCall(_) => kind::HOST_CALL,
            Self::Outcome(_) => kind::OUTCOME,
            Self::Checkpoint(_) => kind::CHECKPOINT,
            Self::Reopen(_) => kind::REOPEN,
            Self::Governed(_) => kind::GOVERNED,
            Self::Elided(_) => kind::ELIDED,
            Self::Score(_) => kind::SCORE,
            Self::Lost(_) => kind::LOST,
            Self::CapsuleRun(_) => kind::CAPSULE_RUN,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        kind_name(self.kind())
    }

    /// Appends the payload bytes to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        match self {
            Self::Identity(v) => serde_json::to_writer(out, v),
            Self::Decision(ev) | Self::SampledAllowed(ev) => {
                event::encode(ev, out);
                Ok(())
            }
            Self::TrustChange(v) => serde_json::to_writer(out, v),
            Self::Quarantine(v) => serde_json::to_writer(out, v),
            Self::HostCall(v) => serde_json::to_writer(out, v),
            Self::Outcome(v) => serde_json::to_writer(out, v),
            Self::Checkpoint(c) => {
                out.extend_from_slice(&c.index.to_le_bytes());
                out.extend_from_slice(&c.unix_ns.to_le_bytes());
                out.extend_from_slice(&c.key);
                out.extend_from_slice(&c.signature);
                Ok(())
            }
            Self::Reopen(v) => serde_json::to_writer(out, v),
            Self::Governed(v) => serde_json::to_writer(out, v),
            Self::Elided(v) => serde_json::to_writer(out, v),
            Self::Score(v) => serde_json::to_writer(out, v),
            Self::Lost(v) => serde_json::to_writer(out, v),
            Self::CapsuleRun(v) => serde_json::to_writer(out, v),
        }
    }

    /// Decodes a payload of kind `tag`; the error is a [`Reason`](super::Reason)
    /// for the record that holds it.
    pub(crate) fn decode(tag: u8, payload: &[u8]) -> Result<Self, super::Reason> {
        let name = kind_name(tag);
        let bad = |message: String| super::Reason::BadPayload { kind: name, message };
        fn json<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, String> {
            serde_json::from_slice(payload).map_err(|e| e.to_string())
        }
        Ok(match tag {
            kind::IDENTITY => Self::Identity(json(payload).map_err(bad)?),
            kind::DECISION => Self::Decision(event::decode(payload).map_err(bad)?),
            kind::SAMPLED_ALLOWED => Self::SampledAllowed(event::decode(payload).map_err(bad)?),
            kind::TRUST_CHANGE => Self::TrustChange(json(payload).map_err(bad)?),
            kind::QUARANTINE => Self::Quarantine(json(payload).map_err(bad)?),
            kind::HOST_CALL => Self::HostCall(json(payload).map_err(bad)?),
            kind::OUTCOME => Self::Outcome(json(payload).map_err(bad)?),
            kind::CHECKPOINT => {
                if payload.len() != CHECKPOINT_LEN {
                    return Err(bad(format!("{} bytes, expected {CHECKPOINT_LEN}", payload.len())));
                }
                let mut c = Checkpoint { index: 0, unix_ns: 0, key: [0; 32], signature: [0; 64] };
                c.index = u64::from_le_bytes(payload[0..8].try_into().unwrap_or_default());
                c.unix_ns = u64::from_le_bytes(payload[8..16].try_into().unwrap_or_default());
                c.key.copy_from_slice(&payload[16..48]);
                c.signature.copy_from_slice(&payload[48..112]);
                Self::Checkpoint(c)
            }
            kind::REOPEN => Self::Reopen(json(payload).map_err(bad)?),
            kind::GOVERNED => Self::Governed(json(payload).map_err(bad)?),
            kind::ELIDED => Self::Elided(json(payload).map_err(bad)?),
            kind::SCORE => Self::Score(json(payload).map_err(bad)?),
            kind::LOST => Self::Lost(json(payload).map_err(bad)?),
            kind::CAPSULE_RUN => Self::CapsuleRun(json(payload).map_err(bad)?),
            other => return Err(super::Reason::UnknownKind { kind: other }),
        })
    }
}

/// One line per record, as `forge trace show` prints it (without the index).
impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Identity(i) => {
                match &i.subject {
                    Subject::Cgroup { path, id } => {
                        write!(f, "workload {} (cgroup {path}, id {id})", i.workload_id)?
                    }
                    Subject::Capsule { package, digest, run_id } => {
                        write!(f, "workload {} (capsule {package} {digest}, run {run_id})", i.workload_id)?;
                    }
                }
                write!(f, ", created at {} ns, agent {}", i.created_unix_ns, i.agent_version)?;
                if let Some(h) = &i.host {
                    write!(f, ", host {h}")?;
                }
                Ok(())
            }
            Self::Decision(ev) | Self::SampledAllowed(ev) => write!(f, "{ev}"),
            Self::TrustChange(t) => {
                write!(f, "{} -> {} by {}", t.from.as_str(), t.to.as_str(), t.actor)?;
                if let Some(s) = t.score {
                    write!(f, " (score {s})")?;
                }
                write!(f, ": {}", t.reason.join("; "))
            }
            Self::Quarantine(q) => {
                let op = match q.op {
                    QuarantineOp::Freeze => "freeze",
                    QuarantineOp::Release => "release",
                };
                write!(f, "{op} by {}: {}", q.actor, q.reason.join("; "))?;
                match q.snapshot.get("processes").and_then(|p| p.as_array()) {
                    Some(p) => write!(f, " (snapshot: {} processes)", p.len()),
                    None if q.snapshot.is_null() => Ok(()),
                    None => f.write_str(" (snapshot attached)"),
                }
            }
            Self::HostCall(h) => {
                let verdict = if h.allowed { "" } else { " [denied]" };
                write!(f, "{}({}) -> {} in {} ns{verdict}", h.name, h.args, h.result, h.duration_ns)
            }
            Self::Outcome(o) => {
                f.write_str(&o.summary)?;
                if let Some(c) = o.exit_code {
                    write!(f, " (exit code {c})")?;
                }
                if let Some(s) = o.signal {
                    write!(f, " (signal {s})")?;
                }
                Ok(())
            }
            Self::Checkpoint(c) => {
                let key = PublicKey::from_bytes(&c.key, "checkpoint key")
                    .map_or_else(|_| "(not a valid key)".to_string(), |k| k.id().to_string());
                write!(
                    f,
                    "signed by key {key}: records 0 to {} at {} ns",
                    c.index.saturating_sub(1),
                    c.unix_ns
                )
            }
            Self::Reopen(r) if r.torn_bytes == 0 => {
                write!(f, "reopened at {} ns; the file ended on a record boundary", r.unix_ns)
            }
            Self::Reopen(r) => write!(
                f,
                "reopened at {} ns; a torn last record ({} bytes at byte {}) was dropped",
                r.unix_ns, r.torn_bytes, r.torn_offset
            ),
            Self::Governed(g) => {
                let remade;
                let start = match (g.fresh, g.previous_cgroup_id, g.cgroup_id) {
                    (_, Some(old), Some(new)) => {
                        remade = format!("cgroup made again (id {old} -> {new}), governed as before");
                        remade.as_str()
                    }
                    (true, ..) => "governed",
                    (false, ..) => "policy changed",
                };
                let q: Vec<&str> = g.quarantine_at.iter().map(|t| t.as_str()).collect();
                write!(
                    f,
                    "{start}: {} at tier {}, generation {}; quarantine at [{}]; learning {} s",
                    g.policies,
                    g.tier.as_str(),
                    g.generation,
                    q.join(", "),
                    g.scoring.learning_ns / 1_000_000_000
                )
            }
            Self::Elided(e) => write!(
                f,
                "{} routine allowed events elided ({} while learning), {} to {} ns",
                e.counts.events(),
                e.counts.learning,
                e.first_ts_ns,
                e.last_ts_ns
            ),
            Self::Score(s) => {
                let why: Vec<String> = s.features.iter().map(ToString::to_string).collect();
                write!(f, "score {}: {}", s.value, why.join("; "))
            }
            Self::Lost(l) => write!(
                f,
                "{} events lost to a full ring buffer ({} in total for this workload)",
                l.events, l.total
            ),
            Self::CapsuleRun(r) => write!(
                f,
                "capsule {} version {} (module sha3-256:{}) signed by [{}], tier {}{}; policy {}",
                r.name,
                r.version,
                r.module_sha3,
                r.signers.join(", "),
                r.tier.as_str(),
                if r.monitor { ", monitor mode" } else { "" },
                r.policies
            ),
        }
    }
}

mod hex_bytes {
    pub fn serialize<S: serde::Serializer, const N: usize>(b: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }
}
