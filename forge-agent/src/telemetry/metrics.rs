//! The Prometheus endpoint's metrics (docs/metrics.md) as OTLP metrics: the
//! same [`Sample`] the daemon takes for a scrape, published on the daemon's
//! timer and read by observable instruments when the periodic reader
//! collects. Names are the Prometheus family names with dots (`forge.decisions`
//! for `forge_decisions_total`: a collector's Prometheus exporter turns one
//! into the other), attributes are the Prometheus labels.

use std::sync::{Arc, Mutex};

use forge_common::capacity;
use opentelemetry::{KeyValue, metrics::Meter};

use super::spans::id;
use crate::api::metrics::{Sample, decision_labels, tier_level};

/// The latest sample (none before the daemon's first tick).
pub type Latest = Arc<Mutex<Option<Sample>>>;

/// How a family is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A monotonic sum of integers.
    Counter,
    /// A monotonic sum of seconds.
    SecondsCounter,
    Gauge,
}

/// One metric family.
#[derive(Clone, Copy, Debug)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: &'static str,
    pub description: &'static str,
}

const fn family(name: &'static str, kind: Kind, unit: &'static str, description: &'static str) -> Family {
    Family { name, kind, unit, description }
}

/// Every family, in the order of docs/metrics.md.
pub const FAMILIES: [Family; 26] = [
    family("forge.decisions", Kind::Counter, "", "Kernel decisions per cgroup, hook, verdict and mode"),
    family("forge.events_read", Kind::Counter, "", "Decision events read from the ring buffer, per hook"),
    family("forge.events_undecodable", Kind::Counter, "", "Ring buffer records that did not decode"),
    family("forge.ring_drops", Kind::Counter, "", "Events lost because the ring buffer was full"),
    family(
        "forge.workload_tier",
        Kind::Gauge,
        "",
        "Trust tier of a governed workload: 0 trusted .. 4 compromised",
    ),
    family("forge.workload_policy_generation", Kind::Gauge, "", "Generation of the policy record in force"),
    family("forge.workload_frozen", Kind::Gauge, "", "1 while a quarantine keeps the workload frozen"),
    family(
        "forge.workload_lost_events",
        Kind::Counter,
        "",
        "Events of the workload lost to a full ring buffer",
    ),
    family("forge.workloads", Kind::Gauge, "", "Workloads this daemon governs"),
    family("forge.quarantines", Kind::Counter, "", "Quarantines carried out (scorer or operator)"),
    family("forge.releases", Kind::Counter, "", "Releases from quarantine or escalation"),
    family("forge.tier_changes", Kind::Counter, "", "Trust tier changes of governed workloads"),
    family("forge.trace_write_errors", Kind::Counter, "", "Failed writes to execution traces"),
    family("forge.capsule_runs", Kind::Counter, "", "Wasm capsule runs started through the API"),
    family(
        "forge.capsules_running",
        Kind::Gauge,
        "",
        "Wasm capsule runs started through the API that have not ended",
    ),
    family("forge.fleet_connected", Kind::Gauge, "", "Whether the fleet bus (NATS) is connected"),
    family(
        "forge.fleet_bundles_applied",
        Kind::Counter,
        "",
        "Bundles from the fleet bus verified and applied",
    ),
    family("forge.fleet_bundles_refused", Kind::Counter, "", "Bundles from the fleet bus refused"),
    family(
        "forge.fleet_records_admitted",
        Kind::Counter,
        "",
        "Trust records from other nodes verified and held",
    ),
    family("forge.fleet_records_refused", Kind::Counter, "", "Trust records refused"),
    family("forge.fleet_records_published", Kind::Counter, "", "Trust records this node published"),
    family("forge.fleet_partitions", Kind::Counter, "", "Times the fleet bus was lost and came back"),
    family("forge.map_entries", Kind::Gauge, "", "Entries in a kernel map"),
    family("forge.map_capacity", Kind::Gauge, "", "Entries a kernel map can hold"),
    family("forge.process_resident_memory", Kind::Gauge, "By", "Resident memory of the agent process"),
    family("forge.process_cpu", Kind::SecondsCounter, "s", "User and system CPU time of the agent process"),
];

/// One observed value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Num {
    U64(u64),
    I64(i64),
    F64(f64),
}

fn gauge(v: u64) -> Num {
    Num::I64(i64::try_from(v).unwrap_or(i64::MAX))
}

fn workload(w: &crate::api::metrics::WorkloadSample) -> Vec<KeyValue> {
    vec![KeyValue::new("cgroup_id", id(w.cgroup_id)), KeyValue::new("cgroup", w.cgroup.clone())]
}

fn map(name: &'static str) -> Vec<KeyValue> {
    vec![KeyValue::new("map", name)]
}

/// One fleet counter (no point when the agent is not in a fleet).
fn fleet(s: &Sample, f: impl Fn(&crate::fleet::link::FleetCounts) -> u64) -> Vec<(Num, Vec<KeyValue>)> {
    s.fleet.map(|x| vec![(Num::U64(f(&x.counts)), Vec::new())]).unwrap_or_default()
}

/// The points of family `name` in a sample (empty for an unknown name).
pub fn points(s: &Sample, name: &str) -> Vec<(Num, Vec<KeyValue>)> {
    let one = |n: Num| vec![(n, Vec::new())];
    match name {
        "forge.decisions" => s
            .decisions
            .iter()
            .map(|(k, n)| {
                let [hook, verdict, mode] = decision_labels(k);
                let attrs = vec![
                    KeyValue::new("cgroup_id", id(k.cgroup_id)),
                    KeyValue::new("hook", hook),
                    KeyValue::new("verdict", verdict),
                    KeyValue::new("mode", mode),
                ];
                (Num::U64(*n), attrs)
            })
            .collect(),
        "forge.events_read" => s
            .events_by_hook
            .iter()
            .map(|(h, n)| (Num::U64(*n), vec![KeyValue::new("hook", h.as_str())]))
            .collect(),
        "forge.events_undecodable" => one(Num::U64(s.undecodable_events)),
        "forge.ring_drops" => one(Num::U64(s.ring_drops)),
        "forge.workload_tier" => s
            .workloads
            .iter()
            .map(|w| {
                let mut a = workload(w);
                a.push(KeyValue::new("tier", w.tier.as_str()));
                (Num::I64(tier_level(w.tier)), a)
            })
            .collect(),
        "forge.workload_policy_generation" => {
            s.workloads.iter().map(|w| (gauge(w.generation), workload(w))).collect()
        }
        "forge.workload_frozen" => {
            s.workloads.iter().map(|w| (Num::I64(i64::from(w.frozen)), workload(w))).collect()
        }
        "forge.workload_lost_events" => {
            s.workloads.iter().map(|w| (Num::U64(w.lost_events), workload(w))).collect()
        }
        "forge.workloads" => one(gauge(s.workloads.len() as u64)),
        "forge.quarantines" => one(Num::U64(s.actions.quarantines)),
        "forge.releases" => one(Num::U64(s.actions.releases)),
        "forge.tier_changes" => one(Num::U64(s.actions.tier_changes)),
        "forge.trace_write_errors" => one(Num::U64(s.trace_write_errors)),
        "forge.capsule_runs" => one(Num::U64(s.actions.capsule_runs)),
        "forge.capsules_running" => one(gauge(s.capsules_running)),
        "forge.fleet_connected" => s.fleet.map(|f| one(Num::I64(i64::from(f.connected)))).unwrap_or_default(),
        "forge.fleet_bundles_applied" => fleet(s, |c| c.bundles_applied),
        "forge.fleet_bundles_refused" => fleet(s, |c| c.bundles_refused),
        "forge.fleet_records_admitted" => fleet(s, |c| c.records_admitted),
        "forge.fleet_records_refused" => fleet(s, |c| c.records_refused),
        "forge.fleet_records_published" => fleet(s, |c| c.records_published),
        "forge.fleet_partitions" => fleet(s, |c| c.partitions),
        "forge.map_entries" => {
            vec![
                (gauge(s.kernel_governed), map("cgroups")),
                (gauge(s.decisions.len() as u64), map("counters")),
            ]
        }
        "forge.map_capacity" => vec![
            (Num::I64(i64::from(capacity::MAX_GOVERNED)), map("cgroups")),
            (Num::I64(i64::from(capacity::COUNTERS)), map("counters")),
        ],
        "forge.process_resident_memory" => {
            s.process.iter().map(|p| (gauge(p.resident_bytes), Vec::new())).collect()
        }
        "forge.process_cpu" => s.process.iter().map(|p| (Num::F64(p.cpu_seconds), Vec::new())).collect(),
        _ => Vec::new(),
    }
}

/// Calls `observe` for each point of `name` in the latest sample.
fn observe_latest(latest: &Latest, name: &str, mut observe: impl FnMut(Num, &[KeyValue])) {
    let Ok(guard) = latest.lock() else { return };
    if let Some(s) = guard.as_ref() {
        for (n, attrs) in points(s, name) {
            observe(n, &attrs);
        }
    }
}

/// The registered instruments; their callbacks live as long as these.
pub struct Instruments {
    _held: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

/// Registers an observable instrument per family on `meter`.
pub fn register(meter: &Meter, latest: &Latest) -> Instruments {
    let mut held: Vec<Box<dyn std::any::Any + Send + Sync>> = Vec::new();
    for f in FAMILIES {
        let l = Arc::clone(latest);
        match f.kind {
            Kind::Counter => held.push(Box::new(
                meter
                    .u64_observable_counter(f.name)
                    .with_description(f.description)
                    .with_unit(f.unit)
                    .with_callback(move |o| {
                        observe_latest(&l, f.name, |n, a| {
                            if let Num::U64(v) = n {
                                o.observe(v, a);
                            }
                        });
                    })
                    .build(),
            )),
            Kind::SecondsCounter => held.push(Box::new(
                meter
                    .f64_observable_counter(f.name)
                    .with_description(f.description)
                    .with_unit(f.unit)
                    .with_callback(move |o| {
                        observe_latest(&l, f.name, |n, a| {
                            if let Num::F64(v) = n {
                                o.observe(v, a);
                            }
                        });
                    })
                    .build(),
            )),
            Kind::Gauge => held.push(Box::new(
                meter
                    .i64_observable_gauge(f.name)
                    .with_description(f.description)
                    .with_unit(f.unit)
                    .with_callback(move |o| {
                        observe_latest(&l, f.name, |n, a| {
                            if let Num::I64(v) = n {
                                o.observe(v, a);
                            }
                        });
                    })
                    .build(),
            )),
        }
    }
    Instruments { _held: held }
}

#[cfg(test)]
mod tests {
    use forge_common::{CounterKey, hook, mode, verdict};

    use super::*;
    use crate::{
        api::metrics::{ActionCounts, ProcessSample, WorkloadSample},
        events::Hook,
        policy::Tier,
    };

    fn sample() -> Sample {
        Sample {
            decisions: vec![(
                CounterKey {
                    cgroup_id: 42,
                    hook: hook::CGROUP_CONNECT4,
                    verdict: verdict::DENY,
                    mode: mode::ENFORCE,
                    _pad: 0,
                },
                3,
            )],
            events_by_hook: vec![(Hook::CgroupConnect4, 5)],
            undecodable_events: 1,
            ring_drops: 2,
            kernel_governed: 1,
            workloads: vec![WorkloadSample {
                cgroup_id: 42,
                cgroup: "/sys/fs/cgroup/a".into(),
                tier: Tier::Suspicious,
                generation: 7,
                frozen: true,
                lost_events: 2,
            }],
            actions: ActionCounts { quarantines: 1, releases: 0, tier_changes: 2, capsule_runs: 3 },
            trace_write_errors: 0,
            capsules_running: 1,
            fleet: Some(crate::api::metrics::FleetSample { connected: true, counts: Default::default() }),
            process: Some(ProcessSample { resident_bytes: 4096, cpu_seconds: 1.5 }),
        }
    }

    #[test]
    fn every_family_has_points_of_its_kind_and_prometheus_labels() {
        let s = sample();
        for f in FAMILIES {
            let p = points(&s, f.name);
            assert!(!p.is_empty(), "{} has no point", f.name);
            for (n, _) in &p {
                let ok = matches!(
                    (f.kind, n),
                    (Kind::Counter, Num::U64(_))
                        | (Kind::Gauge, Num::I64(_))
                        | (Kind::SecondsCounter, Num::F64(_))
                );
                assert!(ok, "{}: {n:?} for {:?}", f.name, f.kind);
            }
        }
        let d = points(&s, "forge.decisions");
        assert_eq!(d[0].0, Num::U64(3));
        let keys: Vec<&str> = d[0].1.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["cgroup_id", "hook", "verdict", "mode"]);
        assert_eq!(d[0].1[2], KeyValue::new("verdict", "deny"));
        let t = points(&s, "forge.workload_tier");
        assert_eq!(t[0].0, Num::I64(3));
        assert!(t[0].1.contains(&KeyValue::new("tier", "suspicious")));
        assert_eq!(points(&s, "forge.process_cpu")[0].0, Num::F64(1.5));
        assert_eq!(points(&s, "forge.quarantines")[0].0, Num::U64(1));
        assert!(points(&s, "forge.nonexistent").is_empty());
    }

    #[test]
    fn families_mirror_the_prometheus_exposition() {
        let text = crate::api::metrics::render(&sample());
        for f in FAMILIES {
            let base = f.name.replace('.', "_");
            let prom = match f.unit {
                "By" => format!("{base}_bytes"),
                "s" => format!("{base}_seconds"),
                _ => base,
            };
            assert!(text.contains(&format!("# TYPE {prom} ")), "{} has no Prometheus family {prom}", f.name);
        }
    }

    #[test]
    fn without_proc_there_are_no_process_points() {
        let s = Sample { process: None, ..sample() };
        assert!(points(&s, "forge.process_cpu").is_empty());
        assert!(points(&s, "forge.process_resident_memory").is_empty());
    }
}
