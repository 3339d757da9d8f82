//! Prometheus metrics: what the daemon knows at scrape time, rendered in the
//! OpenMetrics text format with `prometheus-client`. The daemon takes a
//! [`Sample`] of its state on its own task ([`super::daemon::Daemon::metrics`]);
//! [`render`] is pure, so the exposition is tested without a kernel. The HTTP
//! side is in [`http`]. Reference: docs/metrics.md.

pub mod http;

use forge_common::{CounterKey, capacity};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use crate::{
    events::{CounterVerdict, Hook, Mode},
    policy::Tier,
};

/// Trust actions the daemon carried out since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActionCounts {
    pub quarantines: u64,
    pub releases: u64,
    /// Every tier change written to a trace: trust-controller and operator
    /// `set_tier`, the move to `compromised` on quarantine, the restore on release.
    pub tier_changes: u64,
    /// Capsule runs started through the API.
    pub capsule_runs: u64,
}

/// One governed workload as the metrics show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadSample {
    pub cgroup_id: u64,
    pub cgroup: String,
    pub tier: Tier,
    pub generation: u64,
    pub frozen: bool,
    pub lost_events: u64,
}

/// The agent process's resource use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcessSample {
    pub resident_bytes: u64,
    pub cpu_seconds: f64,
}

/// Everything one scrape shows, taken on the daemon's task.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// The kernel's `COUNTERS` map (summed over CPUs).
    pub decisions: Vec<(CounterKey, u64)>,
    pub events_by_hook: Vec<(Hook, u64)>,
    pub undecodable_events: u64,
    pub ring_drops: u64,
    /// Entries in the kernel's governed-cgroup map (including cgroups kept
    /// from pins that this daemon does not manage).
    pub kernel_governed: u64,
    pub workloads: Vec<WorkloadSample>,
    pub actions: ActionCounts,
    pub trace_write_errors: u64,
    /// Capsule runs started through the API that have not ended.
    pub capsules_running: u64,
    /// `None`: /proc could not be read.
    pub process: Option<ProcessSample>,
    /// `None`: not in a fleet.
    pub fleet: Option<FleetSample>,
}

/// The fleet link as the metrics show it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetSample {
    pub connected: bool,
    pub counts: crate::fleet::link::FleetCounts,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    cgroup_id: u64,
    hook: String,
    verdict: String,
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    hook: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkloadLabels {
    cgroup_id: u64,
    cgroup: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabels {
    cgroup_id: u64,
    cgroup: String,
    tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: &'static str,
}

/// A tier's number in `forge_workload_tier`: 0 trusted … 4 compromised.
pub fn tier_level(t: Tier) -> i64 {
    Tier::ALL.iter().position(|x| *x == t).map_or(-1, |p| p as i64)
}

/// The `hook`, `verdict` and `mode` labels of a decision counter. A tag
/// this build does not know shows as its number.
pub fn decision_labels(k: &CounterKey) -> [String; 3] {
    [
        Hook::from_tag(k.hook).map_or_else(|_| k.hook.to_string(), |h| h.as_str().into()),
        CounterVerdict::from_tag(k.verdict).map_or_else(|_| k.verdict.to_string(), |v| v.as_str().into()),
        Mode::from_tag(k.mode).map_or_else(|_| k.mode.to_string(), |m| m.as_str().into()),
    ]
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help, g);
}

/// Renders a sample as an OpenMetrics text exposition (ending in `# EOF`).
pub fn render(s: &Sample) -> String {
    let mut r = Registry::with_prefix("forge");

    let decisions = Family::<DecisionLabels, Counter>::default();
    for (k, n) in &s.decisions {
        let [hook, verdict, mode] = decision_labels(k);
        let labels = DecisionLabels { cgroup_id: k.cgroup_id, hook, verdict, mode };
        decisions.get_or_create(&labels).inc_by(*n);
    }
    r.register(
        "decisions",
        "Kernel decisions per cgroup, hook, verdict and mode (verdict \"dropped\": events lost to a full ring)",
        decisions,
    );

    let read = Family::<HookLabels, Counter>::default();
    for (h, n) in &s.events_by_hook {
        read.get_or_create(&HookLabels { hook: h.as_str() }).inc_by(*n);
    }
    r.register("events_read", "Decision events read from the ring buffer, per hook", read);
    counter(&mut r, "events_undecodable", "Ring buffer records that did not decode", s.undecodable_events);
    counter(&mut r, "ring_drops", "Events lost because the ring buffer was full (all cgroups)", s.ring_drops);

    let tier = Family::<TierLabels, Gauge>::default();
    let generation = Family::<WorkloadLabels, Gauge>::default();
    let frozen = Family::<WorkloadLabels, Gauge>::default();
    let lost = Family::<WorkloadLabels, Counter>::default();
    for w in &s.workloads {
        let labels = WorkloadLabels { cgroup_id: w.cgroup_id, cgroup: w.cgroup.clone() };
        tier.get_or_create(&TierLabels {
            cgroup_id: w.cgroup_id,
            cgroup: w.cgroup.clone(),
            tier: w.tier.as_str(),
        })
        .set(tier_level(w.tier));
        generation.get_or_create(&labels).set(i64::try_from(w.generation).unwrap_or(i64::MAX));
        frozen.get_or_create(&labels).set(i64::from(w.frozen));
        lost.get_or_create(&labels).inc_by(w.lost_events);
    }
    r.register(
        "workload_tier",
        "Trust tier of the record in force for a governed workload: 0 trusted, 1 verified, 2 unknown, 3 suspicious, 4 compromised",
        tier,
    );
    r.register("workload_policy_generation", "Generation of the policy record in force", generation);
    r.register(
        "workload_frozen",
        "Whether the workload's cgroup is frozen by a quarantine (1) or not (0)",
        frozen,
    );
    r.register("workload_lost_events", "Events of the workload lost to a full ring buffer", lost);

    counter(&mut r, "quarantines", "Quarantines carried out (scorer or operator)", s.actions.quarantines);
    counter(&mut r, "releases", "Releases from quarantine or escalation", s.actions.releases);
    counter(&mut r, "tier_changes", "Trust tier changes of governed workloads", s.actions.tier_changes);
    counter(&mut r, "trace_write_errors", "Failed writes to execution traces", s.trace_write_errors);
    counter(&mut r, "capsule_runs", "Wasm capsule runs started through the API", s.actions.capsule_runs);
    let running = Gauge::<i64>::default();
    running.set(i64::try_from(s.capsules_running).unwrap_or(i64::MAX));
    r.register("capsules_running", "Wasm capsule runs started through the API that have not ended", running);
    if let Some(f) = &s.fleet {
        let c = &f.counts;
        gauge(
            &mut r,
            "fleet_connected",
            "Whether the fleet bus (NATS) is connected (1) or not (0)",
            i64::from(f.connected),
        );
        counter(
            &mut r,
            "fleet_bundles_applied",
            "Bundles from the fleet bus verified and applied",
            c.bundles_applied,
        );
        counter(
            &mut r,
            "fleet_bundles_refused",
            "Bundles from the fleet bus refused (signature, replay, invalid)",
            c.bundles_refused,
        );
        counter(
            &mut r,
            "fleet_records_admitted",
            "Trust records from other nodes verified and held",
            c.records_admitted,
        );
        counter(
            &mut r,
            "fleet_records_refused",
            "Trust records refused (unknown key, bad signature, impersonation, replay)",
            c.records_refused,
        );
        counter(&mut r, "fleet_records_published", "Trust records this node published", c.records_published);
        counter(&mut r, "fleet_partitions", "Times the fleet bus was lost and came back", c.partitions);
    }

    let entries = Family::<MapLabels, Gauge>::default();
    let capacity = Family::<MapLabels, Gauge>::default();
    entries
        .get_or_create(&MapLabels { map: "cgroups" })
        .set(i64::try_from(s.kernel_governed).unwrap_or(i64::MAX));
    capacity.get_or_create(&MapLabels { map: "cgroups" }).set(i64::from(capacity::MAX_GOVERNED));
    entries.get_or_create(&MapLabels { map: "counters" }).set(s.decisions.len() as i64);
    capacity.get_or_create(&MapLabels { map: "counters" }).set(i64::from(capacity::COUNTERS));
    r.register("map_entries", "Entries in a kernel map", entries);
    r.register("map_capacity", "Entries a kernel map can hold", capacity);

    if let Some(p) = s.process {
        let rss = Gauge::<i64>::default();
        rss.set(i64::try_from(p.resident_bytes).unwrap_or(i64::MAX));
        r.register_with_unit(
            "process_resident_memory",
            "Resident memory of the agent process",
            Unit::Bytes,
            rss,
        );
        let cpu = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        cpu.inc_by(p.cpu_seconds);
        r.register_with_unit(
            "process_cpu",
            "User and system CPU time of the agent process",
            Unit::Seconds,
            cpu,
        );
    }
    gauge(&mut r, "workloads", "Workloads this daemon governs", s.workloads.len() as i64);

    let mut out = String::new();
    // Writing to a String does not fail.
    let _ = encode(&mut out, &r);
    out
}

/// The agent process's resident memory and CPU time, from /proc/self.
pub fn process_sample() -> Option<ProcessSample> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100);
    let page = crate::ebpf::loader::page_size();
    let cpu_ticks = parse_stat_cpu_ticks(&stat)?;
    let pages = parse_statm_resident(&statm)?;
    Some(ProcessSample {
        resident_bytes: pages.saturating_mul(page),
        cpu_seconds: cpu_ticks as f64 / ticks.max(1) as f64,
    })
}

/// utime + stime (clock ticks) from a `/proc/<pid>/stat` line. The command
/// name in parentheses may hold spaces and parentheses, so the fields are
/// counted from the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace();
    // After ")": state(3) ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime(14) stime(15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// Resident pages (the second field) from `/proc/<pid>/statm`.
pub fn parse_statm_resident(statm: &str) -> Option<u64> {
    statm.split_ascii_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use forge_common::{hook, mode, verdict};

    use super::*;

    fn key(cgroup_id: u64, hook: u16, verdict: u8, mode: u8) -> CounterKey {
        CounterKey { cgroup_id, hook, verdict, mode, _pad: 0 }
    }

    fn sample() -> Sample {
        Sample {
            decisions: vec![
                (key(42, hook::CGROUP_CONNECT4, verdict::DENY, mode::ENFORCE), 3),
                (key(42, hook::CGROUP_CONNECT4, verdict::DROPPED, mode::ENFORCE), 2),
                (key(42, 999, 77, 9), 1),
            ],
            events_by_hook: vec![(Hook::CgroupConnect4, 5)],
            undecodable_events: 1,
            ring_drops: 2,
            kernel_governed: 1,
            workloads: vec![WorkloadSample {
                cgroup_id: 42,
                cgroup: "/sys/fs/cgroup/a \"b\"\nc".into(),
                tier: Tier::Suspicious,
                generation: 7,
                frozen: true,
                lost_events: 2,
            }],
            actions: ActionCounts { quarantines: 1, releases: 0, tier_changes: 2, capsule_runs: 3 },
            trace_write_errors: 0,
            capsules_running: 1,
            fleet: Some(FleetSample { connected: true, counts: Default::default() }),
            process: Some(ProcessSample { resident_bytes: 4096, cpu_seconds: 1.5 }),
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn renders_every_family_with_its_labels_and_values() {
        let text = render(&sample());
        let l = lines(&text);
        for want in [
            r#"forge_decisions_total{cgroup_id="42",hook="cgroup/connect4",verdict="deny",mode="enforce"} 3"#,
            r#"forge_decisions_total{cgroup_id="42",hook="cgroup/connect4",verdict="dropped",mode="enforce"} 2"#,
            r#"forge_decisions_total{cgroup_id="42",hook="999",verdict="77",mode="9"} 1"#,
            r#"forge_events_read_total{hook="cgroup/connect4"} 5"#,
            "forge_events_undecodable_total 1",
            "forge_ring_drops_total 2",
            r#"forge_workload_tier{cgroup_id="42",cgroup="/sys/fs/cgroup/a \"b\"\nc",tier="suspicious"} 3"#,
            r#"forge_workload_policy_generation{cgroup_id="42",cgroup="/sys/fs/cgroup/a \"b\"\nc"} 7"#,
            r#"forge_workload_frozen{cgroup_id="42",cgroup="/sys/fs/cgroup/a \"b\"\nc"} 1"#,
            r#"forge_workload_lost_events_total{cgroup_id="42",cgroup="/sys/fs/cgroup/a \"b\"\nc"} 2"#,
            "forge_quarantines_total 1",
            "forge_releases_total 0",
            "forge_tier_changes_total 2",
            "forge_trace_write_errors_total 0",
            "forge_capsule_runs_total 3",
            "forge_capsules_running 1",
            r#"forge_map_entries{map="cgroups"} 1"#,
            r#"forge_map_entries{map="counters"} 3"#,
            r#"forge_map_capacity{map="counters"} 16384"#,
            "forge_process_resident_memory_bytes 4096",
            "forge_process_cpu_seconds_total 1.5",
            "forge_workloads 1",
        ] {
            assert!(l.contains(&want), "missing {want:?} in\n{text}");
        }
        assert!(text.contains("# TYPE forge_decisions counter"), "{text}");
        assert!(text.contains("# TYPE forge_workload_tier gauge"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn an_empty_sample_renders_zeroes_and_no_process_metrics() {
        let text = render(&Sample::default());
        let l = lines(&text);
        assert!(l.contains(&"forge_ring_drops_total 0"), "{text}");
        assert!(l.contains(&"forge_workloads 0"), "{text}");
        assert!(!text.contains("forge_process_"), "{text}");
        assert!(!l.iter().any(|x| x.starts_with("forge_decisions_total")), "{text}");
    }

    #[test]
    fn tiers_are_numbered_from_trusted() {
        let levels: Vec<i64> = Tier::ALL.iter().map(|t| tier_level(*t)).collect();
        assert_eq!(levels, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn stat_cpu_ticks_count_from_the_last_parenthesis() {
        let stat = "1234 (forge) S 1 1234 1234 0 -1 4194560 500 0 0 0 17 4 0 0 20 0 3 0 100 1000000 300 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(21));
        let tricky = "1234 (a) b) (c ) R 1 2 3 4 5 6 7 8 9 10 100 23 0 0";
        assert_eq!(parse_stat_cpu_ticks(tricky), Some(123));
        for bad in [
            "",
            "1234 forge S 1",
            "1 (x) S 1 2 3",
            "1 (x) S 1 2 3 4 5 6 7 8 9 10 abc 2",
            "1 (x) S 1 2 3 4 5 6 7 8 9 10 5",
        ] {
            assert_eq!(parse_stat_cpu_ticks(bad), None, "{bad:?}");
        }
        let huge = format!("1 (x) S 1 2 3 4 5 6 7 8 9 10 {} 1", u64::MAX);
        assert_eq!(parse_stat_cpu_ticks(&huge), None);
    }

    #[test]
    fn statm_resident_is_the_second_field() {
        assert_eq!(parse_statm_resident("5000 1200 300 10 0 900 0\n"), Some(1200));
        for bad in ["", "5000", "5000 x 1", "-1 -2"] {
            assert_eq!(parse_statm_resident(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        let p = process_sample().expect("/proc/self is readable");
        assert!(p.resident_bytes > 0);
        assert!(p.cpu_seconds >= 0.0);
    }
}
