//! Per-workload baselines and scores.
//!
//! A workload learns for `learning_ns` after its first event: the binaries
//! it executes, the /24s and /64s it talks to, and its event rate. After
//! that, each event is scored against the baseline; the score is the sum of
//! the weights of the features raised within the last `window_ns`.
//!
//! # Determinism and elided events
//!
//! Time is the events' kernel timestamps, never the wall clock, so feeding
//! the same stream reproduces the same scores. [`Scorer::observe`] says how
//! much an event mattered ([`Observed`]): a *routine* event changed nothing
//! but counters (the learned event count, or one rate bucket). The agent
//! keeps routine allowed events out of the trace (all but a bounded sample)
//! and records only their counts, as an [`Elided`] summary; feeding that
//! summary to [`Scorer::absorb`] leaves the scorer in exactly the state the
//! events themselves would have. That is what makes `forge trace replay`
//! exact although the trace does not hold every allowed event.
//!
//! The rate is counted in one-second buckets (by kernel time): the events
//! in the window are those of the buckets `window_ns` back from the newest.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::features::{Feature, FeatureKind};
use crate::events::{DecisionEvent, Hook, Op, Target, Verdict};

/// Width of a rate bucket.
pub const RATE_BUCKET_NS: u64 = 1_000_000_000;

/// Weights and windows; documented defaults (docs/trust.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreConfig {
    /// How long a workload learns before it is scored (kernel time).
    pub learning_ns: u64,
    /// The score sums features raised within this window.
    pub window_ns: u64,
    pub weights: std::collections::BTreeMap<FeatureKind, u32>,
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

/// How much one event mattered to the scorer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// It raised features: the workload's score after it.
    Scored(Score),
    /// It started the workload's model or added to its baseline.
    Novel,
    /// It only moved a counter: the learned-event count (`bucket: None`)
    /// or the count of one rate bucket. Such events can be elided and
    /// [`absorb`](Scorer::absorb)ed as counts.
    Routine { bucket: Option<u64> },
}

/// The counts of routine events left out of a trace, in the order they
/// came; see the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Elided {
    /// Routine events while learning.
    pub learning: u64,
    /// `(bucket, events)` after learning, oldest first.
    pub buckets: Vec<(u64, u64)>,
}

impl Elided {
    /// Counts one routine event.
    pub fn add(&mut self, bucket: Option<u64>) {
        match (bucket, self.buckets.last_mut()) {
            (None, _) => self.learning += 1,
            (Some(b), Some((last, n))) if *last == b => *n += 1,
            (Some(b), _) => self.buckets.push((b, 1)),
        }
    }

    pub fn events(&self) -> u64 {
        self.learning + self.buckets.iter().map(|(_, n)| n).sum::<u64>()
    }

    pub fn is_empty(&self) -> bool {
        self.learning == 0 && self.buckets.is_empty()
    }
}

/// The /24 (IPv4) or /64 (IPv6) an address belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Net {
    V4([u8; 3]),
    V6([u16; 4]),
}

impl Net {
    fn of(t: &Target) -> Option<Self> {
        match t {
            Target::Addr { addr: std::net::IpAddr::V4(a), .. } => {
                let o = a.octets();
                Some(Self::V4([o[0], o[1], o[2]]))
            }
            Target::Addr { addr: std::net::IpAddr::V6(a), .. } => {
                let s = a.segments();
                Some(Self::V6([s[0], s[1], s[2], s[3]]))
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::V4([a, b, c]) => write!(f, "{a}.{b}.{c}.0/24"),
            Self::V6([a, b, c, d]) => write!(f, "{a:x}:{b:x}:{c:x}:{d:x}::/64"),
        }
    }
}

#[derive(Default)]
struct Model {
    first_ts: Option<u64>,
    binaries: HashSet<String>,
    destinations: HashSet<Net>,
    learned_events: u64,
    /// Features raised within the window, per kind (oldest first), and the
    /// sum of their weights: a score costs the same however many there are.
    recent: [VecDeque<Feature>; FeatureKind::ALL.len()],
    recent_sum: u32,
    /// `(bucket, events)`, oldest first, within the window of the newest.
    buckets: VecDeque<(u64, u64)>,
    in_window: u64,
    spiking: bool,
}

impl Model {
    /// Counts `n` events in bucket `b` (an older bucket counts in the
    /// newest: events from several CPUs arrive slightly out of order) and
    /// drops buckets that left the window. Returns the bucket counted in.
    fn count(&mut self, b: u64, n: u64, window_buckets: u64) -> u64 {
        let b = match self.buckets.back_mut() {
            Some((last, c)) if *last >= b => {
                *c += n;
                *last
            }
            _ => {
                self.buckets.push_back((b, n));
                b
            }
        };
        self.in_window += n;
        while let Some(&(old, c)) = self.buckets.front() {
            if old + window_buckets > b {
                break;
            }
            self.buckets.pop_front();
            self.in_window -= c;
        }
        b
    }
}

/// Scores every governed workload's events.
pub struct Scorer {
    pub config: ScoreConfig,
    weights: [u32; FeatureKind::ALL.len()],
    models: HashMap<u64, Model>,
}

/// Features a score names.
const TOP: usize = 5;

const WRITABLE_DIRS: [&str; 3] = ["/tmp/", "/dev/shm/", "/var/tmp/"];

impl Scorer {
    pub fn new(config: ScoreConfig) -> Self {
        let mut s = Self { config, weights: [0; FeatureKind::ALL.len()], models: HashMap::new() };
        s.set_config(s.config.clone());
        s
    }

    /// Replaces the configuration (models are kept).
    pub fn set_config(&mut self, config: ScoreConfig) {
        for k in FeatureKind::ALL {
            self.weights[k as usize] = config.weights.get(&k).copied().unwrap_or(0);
        }
        self.config = config;
    }

    /// Whether `cgroup_id` is still learning.
    pub fn learning(&self, cgroup_id: u64, now_ns: u64) -> bool {
        self.models
            .get(&cgroup_id)
            .and_then(|m| m.first_ts)
            .is_none_or(|t| now_ns < t.saturating_add(self.config.learning_ns))
    }

    /// Seeds a workload's baseline, e.g. from its policy profile.
    pub fn seed_binaries(&mut self, cgroup_id: u64, binaries: impl IntoIterator<Item = String>) {
        self.models.entry(cgroup_id).or_default().binaries.extend(binaries);
    }

    fn window_buckets(&self) -> u64 {
        (self.config.window_ns / RATE_BUCKET_NS).max(1)
    }

    /// Feeds one event; see [`Observed`].
    pub fn observe(&mut self, ev: &DecisionEvent) -> Observed {
        let window_buckets = self.window_buckets();
        let cfg = &self.config;
        let weights = &self.weights;
        let m = self.models.entry(ev.cgroup_id).or_default();
        let mut novel = m.first_ts.is_none();
        let first = *m.first_ts.get_or_insert(ev.ts_ns);
        if ev.ts_ns < first.saturating_add(cfg.learning_ns) {
            m.learned_events += 1;
            if let (Hook::ProcExec | Hook::LsmBprmCheck | Hook::ExecTracepoint, Target::Path { path }) =
                (&ev.hook, &ev.target)
                && ev.verdict != Verdict::Deny
                && !m.binaries.contains(path)
            {
                m.binaries.insert(path.clone());
                novel = true;
            }
            if ev.verdict == Verdict::Allow
                && let Some(n) = Net::of(&ev.target)
            {
                novel |= m.destinations.insert(n);
            }
            return if novel { Observed::Novel } else { Observed::Routine { bucket: None } };
        }

        let mut raised = Vec::new();
        let mut raise = |kind: FeatureKind, detail: String| {
            raised.push(Feature { kind, weight: weights[kind as usize], detail, ts_ns: ev.ts_ns })
        };
        if ev.hook == Hook::ProcExec
            && let Target::Path { path } = &ev.target
            && !m.binaries.contains(path)
        {
            // A binary the workload ran while learning is part of its normal
            // behaviour, wherever it lives; a new one is a feature, and more
            // so when it comes from a world-writable directory.
            raise(FeatureKind::NewBinary, format!("new binary {path} executed"));
            if WRITABLE_DIRS.iter().any(|d| path.starts_with(d)) {
                raise(FeatureKind::ExecFromWritableDir, format!("exec from a writable dir: {path}"));
            }
            m.binaries.insert(path.clone());
        }
        if matches!(ev.op, Op::NetConnect | Op::NetSendto)
            && let Some(n) = Net::of(&ev.target)
            && m.destinations.insert(n)
        {
            raise(FeatureKind::NewDestination, format!("{} to never-seen {n} ({})", ev.op, ev.target));
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
        let bucket = m.count(ev.ts_ns / RATE_BUCKET_NS, 1, window_buckets);
        let learned_per_window = (m.learned_events * cfg.window_ns / cfg.learning_ns.max(1)).max(1);
        let spiking = spiking(m, cfg, learned_per_window);
        if spiking && !m.spiking {
            let times = m.in_window / learned_per_window;
            raise(FeatureKind::RateSpike, format!("event rate {times}x the learned rate"));
        }
        m.spiking = spiking;

        if raised.is_empty() {
            return Observed::Routine { bucket: Some(bucket) };
        }
        for f in raised {
            m.recent_sum = m.recent_sum.saturating_add(f.weight);
            m.recent[f.kind as usize].push_back(f);
        }
        let mut top: Vec<&Feature> = Vec::with_capacity(TOP * FeatureKind::ALL.len());
        for kind in &mut m.recent {
            while kind.front().is_some_and(|f| f.ts_ns.saturating_add(cfg.window_ns) < ev.ts_ns) {
                let f = kind.pop_front();
                m.recent_sum = m.recent_sum.saturating_sub(f.map_or(0, |f| f.weight));
            }
        }
        for kind in &m.recent {
            top.extend(kind.iter().take(TOP));
        }
        top.sort_by(|a, b| b.weight.cmp(&a.weight).then(a.ts_ns.cmp(&b.ts_ns)).then(a.kind.cmp(&b.kind)));
        let features = top.into_iter().take(TOP).cloned().collect();
        Observed::Scored(Score { cgroup_id: ev.cgroup_id, value: m.recent_sum, features, ts_ns: ev.ts_ns })
    }

    /// Feeds the counts of routine events that were left out (see the
    /// module docs): the same state as feeding the events themselves.
    pub fn absorb(&mut self, cgroup_id: u64, elided: &Elided) {
        let window_buckets = self.window_buckets();
        let cfg = &self.config;
        let m = self.models.entry(cgroup_id).or_default();
        m.learned_events += elided.learning;
        if elided.buckets.is_empty() {
            return;
        }
        for &(b, n) in &elided.buckets {
            m.count(b, n, window_buckets);
        }
        let learned_per_window = (m.learned_events * cfg.window_ns / cfg.learning_ns.max(1)).max(1);
        m.spiking = spiking(m, cfg, learned_per_window);
    }

    /// Forgets a workload (after release, its behaviour is learned anew).
    pub fn reset(&mut self, cgroup_id: u64) {
        self.models.remove(&cgroup_id);
    }

    /// The workload of cgroup `old` goes on as cgroup `new` (its cgroup was
    /// made again): its baseline and windows go with it.
    pub fn rekey(&mut self, old: u64, new: u64) {
        if let Some(m) = self.models.remove(&old) {
            self.models.insert(new, m);
        }
    }
}

fn spiking(m: &Model, cfg: &ScoreConfig, learned_per_window: u64) -> bool {
    m.in_window >= cfg.rate_min_events
        && m.in_window > learned_per_window.saturating_mul(cfg.rate_spike_factor)
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
            actual_cgroup_id: 9,
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

    fn scored(o: Observed) -> Option<Score> {
        match o {
            Observed::Scored(s) => Some(s),
            _ => None,
        }
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
        let scores: Vec<Score> = stream().iter().filter_map(|e| scored(s.observe(e))).collect();
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
        assert_eq!(s.observe(&exec(0, "/tmp/build/tool")), Observed::Novel);
        assert_eq!(s.observe(&exec(40, "/tmp/build/tool")), Observed::Routine { bucket: Some(40) });
        let sc = scored(s.observe(&exec(41, "/tmp/other"))).unwrap();
        assert_eq!(sc.value, 25 + 40);
    }

    #[test]
    fn replay_reproduces_the_same_scores() {
        let run = || {
            let mut s = Scorer::new(ScoreConfig::default());
            stream().iter().filter_map(|e| scored(s.observe(e))).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn features_age_out_of_the_window() {
        let mut s = Scorer::new(ScoreConfig::default());
        for e in &stream()[..50] {
            s.observe(e);
        }
        let first = scored(s.observe(&connect(100, "198.51.100.1", Verdict::Allow))).unwrap();
        let later = scored(s.observe(&connect(200, "192.0.2.1", Verdict::Allow))).unwrap();
        assert_eq!((first.value, later.value), (20, 20), "the first feature left the 60 s window");
    }

    #[test]
    fn a_rate_spike_is_a_feature_once() {
        let mut s =
            Scorer::new(ScoreConfig { rate_min_events: 50, rate_spike_factor: 10, ..ScoreConfig::default() });
        s.observe(&exec(0, "/usr/bin/cc"));
        s.observe(&exec(29, "/usr/bin/cc"));
        let spikes: Vec<Score> =
            (0..300).filter_map(|i| scored(s.observe(&exec(31 + i / 100, "/usr/bin/cc")))).collect();
        assert_eq!(spikes.len(), 1, "{spikes:#?}");
        assert_eq!(spikes[0].features[0].kind, FeatureKind::RateSpike);
    }

    /// A long stream with learning, routine repeats, rate spikes (up and
    /// down again), new destinations and denials, out-of-order timestamps.
    fn long_stream() -> Vec<DecisionEvent> {
        let mut v = Vec::new();
        let mut ts = 0u64;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..60_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Bursts every ~20 s of kernel time; quiet otherwise.
            let burst = ts / S >= 40 && (ts / S) % 20 == 10;
            ts += if burst { 200_000 } else { 20_000_000 } + x % 1000;
            let t = if i % 97 == 0 { ts.saturating_sub(2 * S) } else { ts };
            let e = match x % 50 {
                0 => connect(0, &format!("10.{}.{}.1", x % 3, (x >> 8) % 3), Verdict::Allow),
                1 => connect(0, "10.0.0.5", Verdict::Deny),
                2 => exec(0, ["/usr/bin/cc", "/usr/bin/ld", "/tmp/x"][(x >> 9) as usize % 3]),
                _ => exec(0, "/usr/bin/cc"),
            };
            v.push(DecisionEvent { ts_ns: t, ..e });
        }
        v
    }

    #[test]
    fn absorbing_elided_counts_is_the_same_as_feeding_the_events() {
        let config = ScoreConfig { rate_min_events: 100, rate_spike_factor: 3, ..ScoreConfig::default() };
        let events = long_stream();
        let mut all = Scorer::new(config.clone());
        let mut expected = Vec::new();
        let mut kept = Vec::new();
        let mut elided = Elided::default();
        for e in &events {
            match all.observe(e) {
                Observed::Routine { bucket } => elided.add(bucket),
                o => {
                    kept.push((std::mem::take(&mut elided), e.clone()));
                    if let Observed::Scored(s) = o {
                        expected.push(s);
                    }
                }
            }
        }
        assert!(expected.iter().any(|s| s.features.iter().any(|f| f.kind == FeatureKind::RateSpike)));
        assert!(expected.len() > 3, "{expected:#?}");
        assert!(kept.len() * 10 < events.len(), "most events are routine: kept {}", kept.len());
        let mut replay = Scorer::new(config);
        let mut got = Vec::new();
        for (elided, e) in &kept {
            replay.absorb(e.cgroup_id, elided);
            if let Some(s) = scored(replay.observe(e)) {
                got.push(s);
            }
        }
        assert_eq!(got, expected);
    }
}
