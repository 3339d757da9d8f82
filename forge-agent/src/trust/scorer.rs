//! Per-workload baselines and scores.
//!
//! A workload learns for `learning_ns` after its first event: the binaries
//! it executes, the /24s and /64s it talks to, and its event rate. After
//! that, each event is scored against the baseline; the score is the sum of
//! the weights of the features raised within the last `window_ns`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::features::{Feature, FeatureKind};
use crate::events::{DecisionEvent, Hook, Op, Target, Verdict};

/// Weights and windows; documented defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreConfig {
    /// How long a workload learns before it is scored (kernel time).
    pub learning_ns: u64,
    /// The score sums features raised within this window.
    pub window_ns: u64,
    pub weights: BTreeMap<FeatureKind, u32>,
    /// A rate this many times the learned one is a spike.
    pub rate_spike_factor: u64,
    /// Minimum events in a window before a rate can spike (quiet workloads).
    pub rate_min_events: u64,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        let weights = [
            (FeatureKind::NewBinary, 25),
            (FeatureKind::ExecFromWritableDir, 40),
            (FeatureKind::NewDestination, 20),
            (FeatureKind::DeniedOperation, 15),
            (FeatureKind::DeniedSyscall, 40),
            (FeatureKind::SelfProtectionHit, 60),
            (FeatureKind::RateSpike, 25),
        ]
        .into_iter()
        .collect();
        Self {
            learning_ns: 30_000_000_000,
            window_ns: 60_000_000_000,
            weights,
            rate_spike_factor: 40,
            rate_min_events: 200,
        }
    }
}

/// A score with its top contributing features (largest weight first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Score {
    pub cgroup_id: u64,
    pub value: u32,
    pub features: Vec<Feature>,
    pub ts_ns: u64,
}

#[derive(Default)]
struct Model {
    first_ts: Option<u64>,
    binaries: BTreeSet<String>,
    destinations: BTreeSet<String>,
    learned_events: u64,
    recent: VecDeque<Feature>,
    recent_events: VecDeque<u64>,
    spiking: bool,
}

/// Scores every governed workload's events.
pub struct Scorer {
    pub config: ScoreConfig,
    models: BTreeMap<u64, Model>,
}

const WRITABLE_DIRS: [&str; 3] = ["/tmp/", "/dev/shm/", "/var/tmp/"];

/// The /24 or /64 an address belongs to.
fn network_of(t: &Target) -> Option<String> {
    match t {
        Target::Addr { addr: std::net::IpAddr::V4(a), .. } => {
            let o = a.octets();
            Some(format!("{}.{}.{}.0/24", o[0], o[1], o[2]))
        }
        Target::Addr { addr: std::net::IpAddr::V6(a), .. } => {
            let s = a.segments();
            Some(format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3]))
        }
        _ => None,
    }
}

impl Scorer {
    pub fn new(config: ScoreConfig) -> Self {
        Self { config, models: BTreeMap::new() }
    }

    /// Whether `cgroup_id` is still learning.
    pub fn learning(&self, cgroup_id: u64, now_ns: u64) -> bool {
        self.models
            .get(&cgroup_id)
            .and_then(|m| m.first_ts)
            .is_none_or(|t| now_ns < t + self.config.learning_ns)
    }

    /// Seeds a workload's baseline, e.g. from its policy profile.
    pub fn seed_binaries(&mut self, cgroup_id: u64, binaries: impl IntoIterator<Item = String>) {
        self.models.entry(cgroup_id).or_default().binaries.extend(binaries);
    }

    /// Feeds one event. Returns the workload's score after it, once learning
    /// is over and the event raised a feature.
    pub fn observe(&mut self, ev: &DecisionEvent) -> Option<Score> {
        let cfg = self.config.clone();
        let learning = {
            let m = self.models.entry(ev.cgroup_id).or_default();
            let first = *m.first_ts.get_or_insert(ev.ts_ns);
            ev.ts_ns < first + cfg.learning_ns
        };
        let m = self.models.get_mut(&ev.cgroup_id)?;
        if learning {
            m.learned_events += 1;
            match (&ev.hook, &ev.target) {
                (Hook::ProcExec | Hook::LsmBprmCheck | Hook::ExecTracepoint, Target::Path { path })
                    if ev.verdict != Verdict::Deny =>
                {
                    m.binaries.insert(path.clone());
                }
                _ => {}
            }
            if ev.verdict == Verdict::Allow
                && let Some(n) = network_of(&ev.target)
            {
                m.destinations.insert(n);
            }
            return None;
        }

        let mut raised = Vec::new();
        let weight = |k| cfg.weights.get(&k).copied().unwrap_or(0);
        let mut raise = |kind: FeatureKind, detail: String| {
            raised.push(Feature { kind, weight: weight(kind), detail, ts_ns: ev.ts_ns })
        };
        if ev.hook == Hook::ProcExec
            && let Target::Path { path } = &ev.target
        {
            // A binary the workload ran while learning is part of its normal
            // behaviour, wherever it lives; a new one is a feature, and more
            // so when it comes from a world-writable directory.
            if !m.binaries.contains(path) {
                raise(FeatureKind::NewBinary, format!("new binary {path} executed"));
                if WRITABLE_DIRS.iter().any(|d| path.starts_with(d)) {
                    raise(FeatureKind::ExecFromWritableDir, format!("exec from a writable dir: {path}"));
                }
                m.binaries.insert(path.clone());
            }
        }
        if matches!(ev.op, Op::NetConnect | Op::NetSendto)
            && let Some(n) = network_of(&ev.target)
            && !m.destinations.contains(&n)
        {
            raise(FeatureKind::NewDestination, format!("{} to never-seen {n} ({})", ev.op, ev.target));
            m.destinations.insert(n);
        }
        match (ev.verdict, ev.op) {
            (Verdict::Deny | Verdict::Kill, Op::Protect) => {
                raise(FeatureKind::SelfProtectionHit, format!("self-protection: {} ({})", ev.hook, ev.target))
            }
            (Verdict::Kill, Op::Syscall) => {
                raise(FeatureKind::DeniedSyscall, format!("denied syscall {}", ev.target))
            }
            (Verdict::Deny | Verdict::Kill, op) => {
                raise(FeatureKind::DeniedOperation, format!("denied {op} {}", ev.target))
            }
            _ => {}
        }
        // Rate: events in the window against the learned rate.
        m.recent_events.push_back(ev.ts_ns);
        while m.recent_events.front().is_some_and(|t| *t + cfg.window_ns < ev.ts_ns) {
            m.recent_events.pop_front();
        }
        let learned_per_window = (m.learned_events * cfg.window_ns / cfg.learning_ns.max(1)).max(1);
        let n = m.recent_events.len() as u64;
        let spiking = n >= cfg.rate_min_events && n > learned_per_window * cfg.rate_spike_factor;
        if spiking && !m.spiking {
            raise(FeatureKind::RateSpike, format!("event rate {}x the learned rate", n / learned_per_window));
        }
        m.spiking = spiking;

        if raised.is_empty() {
            return None;
        }
        m.recent.extend(raised);
        while m.recent.front().is_some_and(|f| f.ts_ns + cfg.window_ns < ev.ts_ns) {
            m.recent.pop_front();
        }
        let value = m.recent.iter().map(|f| f.weight).sum();
        let mut features: Vec<Feature> = m.recent.iter().cloned().collect();
        features.sort_by(|a, b| b.weight.cmp(&a.weight).then(a.ts_ns.cmp(&b.ts_ns)));
        features.truncate(5);
        Some(Score { cgroup_id: ev.cgroup_id, value, features, ts_ns: ev.ts_ns })
    }

    /// Forgets a workload (after release, its behaviour is learned anew).
    pub fn reset(&mut self, cgroup_id: u64) {
        self.models.remove(&cgroup_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Mode, Verdict};

    const S: u64 = 1_000_000_000;

    fn ev(ts_s: u64, hook: Hook, op: Op, verdict: Verdict, target: Target) -> DecisionEvent {
        DecisionEvent {
            ts_ns: ts_s * S,
            cgroup_id: 9,
            generation: 1,
            pid: 100,
            tgid: 100,
            ppid: 1,
            comm: "w".into(),
            hook,
            op,
            verdict,
            mode: Mode::Enforce,
            rule_id: 0,
            target,
        }
    }

    fn exec(ts: u64, path: &str) -> DecisionEvent {
        ev(ts, Hook::ProcExec, Op::Process, Verdict::Info, Target::Path { path: path.into() })
    }

    fn connect(ts: u64, addr: &str, verdict: Verdict) -> DecisionEvent {
        ev(
            ts,
            Hook::CgroupConnect4,
            Op::NetConnect,
            verdict,
            Target::Addr { addr: addr.parse().unwrap(), port: 443 },
        )
    }

    fn stream() -> Vec<DecisionEvent> {
        let mut v = Vec::new();
        for t in 0..25 {
            v.push(exec(t, "/usr/bin/cc"));
            v.push(connect(t, "10.0.0.5", Verdict::Allow));
        }
        // After learning (30 s): benign repeats, then a reverse-shell-like burst.
        v.push(exec(40, "/usr/bin/cc"));
        v.push(connect(41, "10.0.0.9", Verdict::Allow));
        v.push(connect(50, "203.0.113.7", Verdict::Allow));
        v.push(exec(51, "/tmp/x"));
        v.push(ev(52, Hook::SysEnter, Op::Syscall, Verdict::Kill, Target::Syscall { nr: 101 }));
        v
    }

    #[test]
    fn benign_repeats_score_nothing_and_anomalies_explain_themselves() {
        let mut s = Scorer::new(ScoreConfig::default());
        let scores: Vec<Score> = stream().iter().filter_map(|e| s.observe(e)).collect();
        assert_eq!(scores.len(), 3, "{scores:#?}");
        assert_eq!(scores[0].value, 20);
        assert!(scores[0].features[0].detail.contains("never-seen 203.0.113.0/24"));
        assert_eq!(scores[1].value, 20 + 25 + 40);
        let details: Vec<&str> = scores[1].features.iter().map(|f| f.detail.as_str()).collect();
        assert_eq!(details[0], "exec from a writable dir: /tmp/x");
        assert_eq!(details[1], "new binary /tmp/x executed");
        assert_eq!(scores[2].value, 125);
        assert!(
            scores[2]
                .features
                .iter()
                .any(|f| f.kind == FeatureKind::DeniedSyscall && f.detail == "denied syscall ptrace(101)")
        );
    }

    #[test]
    fn a_learned_binary_in_tmp_is_not_a_feature() {
        let mut s = Scorer::new(ScoreConfig::default());
        s.observe(&exec(0, "/tmp/build/tool"));
        assert_eq!(s.observe(&exec(40, "/tmp/build/tool")), None);
        let sc = s.observe(&exec(41, "/tmp/other")).unwrap();
        assert_eq!(sc.value, 25 + 40);
    }

    #[test]
    fn replay_reproduces_the_same_scores() {
        let run = || {
            let mut s = Scorer::new(ScoreConfig::default());
            stream().iter().filter_map(|e| s.observe(e)).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn features_age_out_of_the_window() {
        let mut s = Scorer::new(ScoreConfig::default());
        for e in &stream()[..50] {
            s.observe(e);
        }
        let first = s.observe(&connect(100, "198.51.100.1", Verdict::Allow)).unwrap();
        let later = s.observe(&connect(200, "192.0.2.1", Verdict::Allow)).unwrap();
        assert_eq!((first.value, later.value), (20, 20), "the first feature left the 60 s window");
    }

    #[test]
    fn a_rate_spike_is_a_feature_once() {
        let mut s =
            Scorer::new(ScoreConfig { rate_min_events: 50, rate_spike_factor: 10, ..ScoreConfig::default() });
        s.observe(&exec(0, "/usr/bin/cc"));
        s.observe(&exec(29, "/usr/bin/cc"));
        let spikes: Vec<Score> =
            (0..300).filter_map(|i| s.observe(&exec(31 + i / 100, "/usr/bin/cc"))).collect();
        assert_eq!(spikes.len(), 1, "{spikes:#?}");
        assert_eq!(spikes[0].features[0].kind, FeatureKind::RateSpike);
    }
}
