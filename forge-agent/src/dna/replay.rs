//! Deterministic replay of a cgroup trace: the recorded event stream (with
//! the counts of elided events) goes through a fresh [`Scorer`] and
//! [`TrustController`], configured as each `governed` record says, and
//! operator actions are applied where the trace has them. Every score,
//! tier change and quarantine the replay produces must match the scorer's
//! records in the trace, in order; the first difference is reported with
//! the index of the record where it shows.

use serde::Serialize;

use super::{
    error::DnaError,
    reader::{Entry, Trace},
    record::{QuarantineOp, Record, Subject},
};
use crate::{
    policy::Tier,
    trust::{Action, Observed, Scorer, TrustController},
};

/// What the scorer side produced, in a form both the replay and the trace
/// records can be put into.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "what", rename_all = "snake_case")]
pub enum Step {
    Score { ts_ns: u64, value: u32, features: Vec<String> },
    Tier { from: Tier, to: Tier, score: Option<u32>, reason: Vec<String> },
    Quarantine { reason: Vec<String> },
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Score { value, features, .. } => write!(f, "score {value} ({})", features.join("; ")),
            Self::Tier { from, to, score, .. } => {
                write!(f, "tier {} -> {}", from.as_str(), to.as_str())?;
                score.map_or(Ok(()), |s| write!(f, " at score {s}"))
            }
            Self::Quarantine { reason } => write!(f, "quarantine ({})", reason.join("; ")),
        }
    }
}

/// Where replay and trace first differ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Divergence {
    /// The trace record where it shows (the record that was not reproduced,
    /// or the event after which replay produced something the trace lacks).
    pub index: u64,
    pub recorded: Option<Step>,
    pub replayed: Option<Step>,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |s: &Option<Step>| s.as_ref().map_or_else(|| "nothing".to_string(), ToString::to_string);
        write!(
            f,
            "record {}: the trace has {}, replay produced {}",
            self.index,
            show(&self.recorded),
            show(&self.replayed)
        )
    }
}

/// The outcome of a replay.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplayReport {
    pub workload_id: String,
    /// Events fed one by one, and events fed as elided counts.
    pub events: u64,
    pub elided: u64,
    /// Scores, tier changes and quarantines reproduced.
    pub scores: u64,
    pub tier_changes: u64,
    pub quarantines: u64,
    /// Operator actions applied from the trace.
    pub operator_actions: u64,
    pub divergence: Option<Divergence>,
}

impl ReplayReport {
    pub fn ok(&self) -> bool {
        self.divergence.is_none()
    }
}

struct Replayer {
    cgroup_id: u64,
    scorer: Option<Scorer>,
    trust: TrustController,
    quarantine_at: Vec<Tier>,
    /// Produced by replay, not yet matched by a trace record.
    pending: std::collections::VecDeque<(u64, Step)>,
    report: ReplayReport,
}

fn step_of(a: &Action) -> Option<Step> {
    match a {
        Action::SetTier { from, to, reason, score, .. } => {
            Some(Step::Tier { from: *from, to: *to, score: *score, reason: reason.clone() })
        }
        Action::Quarantine { reason, .. } => Some(Step::Quarantine { reason: reason.clone() }),
        Action::Release { .. } => None,
    }
}

impl Replayer {
    fn feed(&mut self, index: u64, record: Record) -> Result<(), Divergence> {
        match record {
            Record::Governed(g) => {
                if g.fresh || self.scorer.is_none() {
                    self.scorer = Some(Scorer::new(g.scoring));
                    self.trust = TrustController::new(g.thresholds);
                    self.trust.track(self.cgroup_id, g.tier);
                } else if let Some(s) = &mut self.scorer {
                    s.set_config(g.scoring);
                    self.trust.thresholds = g.thresholds;
                }
                self.quarantine_at = g.quarantine_at;
            }
            Record::Decision(ev) | Record::SampledAllowed(ev) => {
                self.report.events += 1;
                let Some(scorer) = &mut self.scorer else { return Ok(()) };
                if let Observed::Scored(score) = scorer.observe(&ev) {
                    let features = score.features.iter().map(ToString::to_string).collect();
                    self.pending
                        .push_back((index, Step::Score { ts_ns: score.ts_ns, value: score.value, features }));
                    let q = &self.quarantine_at;
                    for a in self.trust.on_score(&score, |t| q.contains(&t)) {
                        if let Some(step) = step_of(&a) {
                            self.pending.push_back((index, step));
                        }
                    }
                }
            }
            Record::Elided(e) => {
                self.report.elided += e.counts.events();
                if let Some(s) = &mut self.scorer {
                    s.absorb(self.cgroup_id, &e.counts);
                }
            }
            Record::Score(s) => {
                let features = s.features.iter().map(ToString::to_string).collect();
                self.matched(index, Step::Score { ts_ns: s.ts_ns, value: s.value, features })?;
                self.report.scores += 1;
            }
            Record::TrustChange(t) if t.actor == "scorer" => {
                self.matched(index, Step::Tier { from: t.from, to: t.to, score: t.score, reason: t.reason })?;
                self.report.tier_changes += 1;
            }
            Record::TrustChange(t) => {
                self.no_pending(index)?;
                self.trust.track(self.cgroup_id, t.to);
                self.report.operator_actions += 1;
            }
            Record::Quarantine(q) if q.op == QuarantineOp::Freeze && q.actor == "scorer" => {
                self.matched(index, Step::Quarantine { reason: q.reason })?;
                self.report.quarantines += 1;
            }
            Record::Quarantine(q) => {
                self.no_pending(index)?;
                if q.op == QuarantineOp::Release
                    && let Some(s) = &mut self.scorer
                {
                    s.reset(self.cgroup_id);
                }
                self.report.operator_actions += 1;
            }
            _ => {}
        }
        Ok(())
    }

    /// A trace record of the scorer's must be the next thing replay produced.
    fn matched(&mut self, index: u64, recorded: Step) -> Result<(), Divergence> {
        match self.pending.pop_front() {
            Some((_, replayed)) if replayed == recorded => Ok(()),
            replayed => Err(Divergence { index, recorded: Some(recorded), replayed: replayed.map(|r| r.1) }),
        }
    }

    /// Everything replay produced must be in the trace before anything else happens.
    fn no_pending(&mut self, _index: u64) -> Result<(), Divergence> {
        match self.pending.pop_front() {
            None => Ok(()),
            Some((at, replayed)) => Err(Divergence { index: at, recorded: None, replayed: Some(replayed) }),
        }
    }
}

/// Replays a cgroup trace; see the module docs. An error means the trace
/// could not be read (or is not a cgroup's); a divergence is in the report.
pub fn replay(trace: &Trace) -> Result<ReplayReport, DnaError> {
    let identity = trace.identity();
    let Subject::Cgroup { id, .. } = identity.subject else {
        return Err(DnaError::NotReplayable {
            path: trace.path().to_path_buf(),
            reason: "only cgroup traces hold a kernel event stream (capsule runs replay with `forge pkg replay`)",
        });
    };
    let mut r = Replayer {
        cgroup_id: id,
        scorer: None,
        trust: TrustController::default(),
        quarantine_at: Vec::new(),
        pending: Default::default(),
        report: ReplayReport { workload_id: identity.workload_id.clone(), ..Default::default() },
    };
    for entry in trace.records()? {
        let Entry { index, record, .. } = entry?;
        // Events are keyed by the trace's cgroup, whatever id they carry.
        let record = match record {
            Record::Decision(mut ev) => {
                ev.cgroup_id = id;
                Record::Decision(ev)
            }
            Record::SampledAllowed(mut ev) => {
                ev.cgroup_id = id;
                Record::SampledAllowed(ev)
            }
            other => other,
        };
        if let Err(d) = r.feed(index, record) {
            r.report.divergence = Some(d);
            return Ok(r.report);
        }
    }
    if let Some((index, replayed)) = r.pending.pop_front() {
        r.report.divergence = Some(Divergence { index, recorded: None, replayed: Some(replayed) });
    }
    Ok(r.report)
}
