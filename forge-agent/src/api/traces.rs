//! The daemon's execution traces: one writer per governed cgroup and what
//! goes in it. Every decision (deny, kill) is recorded; allowed and info
//! events are recorded when they change the scorer's baseline or raise a
//! feature, plus a bounded sample (`sample_per_sec` per workload per second
//! of kernel time); the rest are counted into `elided` records, which is
//! enough for `forge trace replay` to reach the same scores. Scores, trust
//! changes, quarantines and lost events go in as they happen.
//!
//! A trace that cannot be written is logged and counted (`forge status`
//! shows it), and that workload's trace stops; enforcement never waits on
//! or fails because of a trace.

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use serde_json::{Value, json};

use crate::{
    cgroup::Cgroup,
    dna::{
        DnaError, ElidedEvents, Governed, Identity, Lost, Record, ScoreRecord, TraceStore, TraceWriter,
        WriterConfig,
    },
    events::{DecisionEvent, Verdict},
    sign::SigningKey,
    trust::{Elided, Observed, Score},
};

/// Where and how traces are kept.
#[derive(Clone)]
pub struct TraceSettings {
    pub data_dir: PathBuf,
    /// The agent's key: it signs every checkpoint.
    pub key: Arc<SigningKey>,
    pub writer: WriterConfig,
    /// Routine allowed events recorded in full per workload per second.
    pub sample_per_sec: u32,
}

impl TraceSettings {
    pub fn new(data_dir: impl Into<PathBuf>, key: Arc<SigningKey>) -> Self {
        Self { data_dir: data_dir.into(), key, writer: WriterConfig::default(), sample_per_sec: 8 }
    }
}

struct Open {
    writer: TraceWriter,
    elided: Elided,
    elided_span: (u64, u64),
    sample_second: u64,
    sampled: u32,
    lost_total: u64,
}

/// The open traces of the governed workloads.
pub struct Traces {
    settings: TraceSettings,
    store: TraceStore,
    open: HashMap<u64, Open>,
    /// Trace writes that failed, and the last failure.
    pub errors: u64,
    pub last_error: Option<String>,
}

/// Kernel monotonic time, the clock of the events' timestamps.
pub fn kernel_now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec()).unwrap_or(0)
    })
}

fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Traces {
    pub fn new(settings: TraceSettings) -> Self {
        let store = TraceStore::new(&settings.data_dir);
        Self { settings, store, open: HashMap::new(), errors: 0, last_error: None }
    }

    pub fn store(&self) -> &TraceStore {
        &self.store
    }

    fn failed(&mut self, cgroup_id: u64, e: &DnaError) {
        tracing::error!(cgroup_id, error = %e, "trace write failed; this workload's trace stops here");
        self.errors += 1;
        self.last_error = Some(e.to_string());
        self.open.remove(&cgroup_id);
    }

    /// Opens (or creates) the cgroup's trace and records that the agent
    /// governs it from now on.
    pub fn govern(&mut self, cgroup: &Cgroup, governed: Governed) {
        if !self.open.contains_key(&cgroup.id) {
            let mut identity = Identity::cgroup(&cgroup.path.display().to_string(), cgroup.id, unix_now_ns());
            identity.host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok());
            match self.store.open_or_create(
                &identity,
                self.settings.key.clone(),
                self.settings.writer.clone(),
            ) {
                Ok((writer, report)) => {
                    if let Some(t) = report.torn_tail {
                        tracing::warn!(path = %writer.path().display(), torn = %t, "trace reopened after a crash");
                    }
                    let open = Open {
                        writer,
                        elided: Elided::default(),
                        elided_span: (0, 0),
                        sample_second: 0,
                        sampled: 0,
                        lost_total: 0,
                    };
                    self.open.insert(cgroup.id, open);
                }
                Err(e) => return self.failed(cgroup.id, &e),
            }
        }
        self.record(cgroup.id, &Record::Governed(governed));
    }

    /// Records an event as the scorer saw it (see the module docs).
    pub fn event(&mut self, ev: &DecisionEvent, observed: &Observed) {
        let sample_per_sec = self.settings.sample_per_sec;
        let Some(o) = self.open.get_mut(&ev.cgroup_id) else { return };
        let decision = matches!(ev.verdict, Verdict::Deny | Verdict::Kill);
        let result = if decision {
            flush_elided(o).and_then(|()| o.writer.decision(ev))
        } else {
            let second = ev.ts_ns / 1_000_000_000;
            if second != o.sample_second {
                (o.sample_second, o.sampled) = (second, 0);
            }
            match observed {
                Observed::Routine { bucket } if o.sampled >= sample_per_sec => {
                    if o.elided.is_empty() {
                        o.elided_span.0 = ev.ts_ns;
                    }
                    o.elided_span.1 = ev.ts_ns;
                    o.elided.add(*bucket);
                    return;
                }
                Observed::Routine { .. } => o.sampled += 1,
                _ => {}
            }
            flush_elided(o).and_then(|()| o.writer.sampled_allowed(ev))
        };
        if let Err(e) = result {
            self.failed(ev.cgroup_id, &e);
        }
    }

    /// Appends a record (scores, trust changes, quarantines, ...).
    pub fn record(&mut self, cgroup_id: u64, record: &Record) {
        let Some(o) = self.open.get_mut(&cgroup_id) else { return };
        if let Err(e) = flush_elided(o).and_then(|()| o.writer.append(record).map(drop)) {
            self.failed(cgroup_id, &e);
        }
    }

    pub fn score(&mut self, score: &Score) {
        let rec = ScoreRecord { ts_ns: score.ts_ns, value: score.value, features: score.features.clone() };
        self.record(score.cgroup_id, &Record::Score(rec));
    }

    /// Notes the workload's lost-event total; records the increase.
    pub fn lost(&mut self, cgroup_id: u64, total: u64) {
        let Some(o) = self.open.get_mut(&cgroup_id) else { return };
        if total <= o.lost_total {
            return;
        }
        let events = total - o.lost_total;
        o.lost_total = total;
        self.record(cgroup_id, &Record::Lost(Lost { ts_ns: kernel_now_ns(), events, total }));
    }

    /// The timer: elided counts are written and quiet traces flushed and signed.
    pub fn tick(&mut self) {
        let mut failed = Vec::new();
        for (id, o) in &mut self.open {
            if let Err(e) = flush_elided(o).and_then(|()| o.writer.tick()) {
                failed.push((*id, e));
            }
        }
        for (id, e) in failed {
            self.failed(id, &e);
        }
    }

    /// The trace of cgroup `old` goes on for cgroup `new` (the workload's
    /// cgroup was made again): same file, same chain.
    pub fn rekey(&mut self, old: u64, new: u64) {
        if let Some(o) = self.open.remove(&old) {
            self.open.insert(new, o);
        }
    }

    /// Closes one workload's trace (signed and synced).
    pub fn close(&mut self, cgroup_id: u64) {
        if let Some(mut o) = self.open.remove(&cgroup_id)
            && let Err(e) = flush_elided(&mut o).and_then(|()| o.writer.close())
        {
            self.failed(cgroup_id, &e);
        }
    }

    pub fn close_all(&mut self) {
        let ids: Vec<u64> = self.open.keys().copied().collect();
        for id in ids {
            self.close(id);
        }
    }

    /// Writes a workload's buffered records (and elided counts) to its file,
    /// so a reader sees everything so far. Returns the file.
    pub fn flush(&mut self, cgroup_id: u64) -> Option<PathBuf> {
        let o = self.open.get_mut(&cgroup_id)?;
        let result = flush_elided(o).and_then(|()| o.writer.flush());
        let path = o.writer.path().to_path_buf();
        if let Err(e) = result {
            self.failed(cgroup_id, &e);
            return None;
        }
        Some(path)
    }

    /// The chain head of a workload's trace (the hash of its last record).
    pub fn head(&self, cgroup_id: u64) -> Option<crate::dna::Hash> {
        self.open.get(&cgroup_id).map(|o| o.writer.head())
    }

    /// The trace of a workload, for `forge status`.
    pub fn status(&self, cgroup_id: u64) -> Value {
        match self.open.get(&cgroup_id) {
            Some(o) => {
                json!({"path": o.writer.path(), "records": o.writer.len(), "lost_events": o.lost_total})
            }
            None => Value::Null,
        }
    }
}

fn flush_elided(o: &mut Open) -> Result<(), DnaError> {
    if o.elided.is_empty() {
        return Ok(());
    }
    let counts = std::mem::take(&mut o.elided);
    let (first_ts_ns, last_ts_ns) = o.elided_span;
    o.writer.append(&Record::Elided(ElidedEvents { first_ts_ns, last_ts_ns, counts })).map(drop)
}

#[cfg(test)]
#[path = "traces_tests.rs"]
mod tests;
