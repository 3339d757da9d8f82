//! What `forge top` shows, computed from the agent's `status` answers: one
//! row per governed workload, with decision and denial rates from the
//! `counters` deltas between two polls, and a header with the events read
//! per second from the `events_by_hook` deltas. No I/O and no clock: the
//! caller passes the answers and when they arrived.

use std::{cmp::Ordering, collections::BTreeMap, time::Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The parts of a `status` answer that `forge top` reads.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub(crate) struct Status {
    pub(crate) pid: u64,
    pub(crate) backends: BTreeMap<String, bool>,
    pub(crate) governed: Vec<Governed>,
    pub(crate) counters: Vec<Counter>,
    pub(crate) ring_drops: u64,
    pub(crate) events_by_hook: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub(crate) struct Governed {
    pub(crate) cgroup: String,
    pub(crate) id: u64,
    pub(crate) tier: String,
    pub(crate) frozen: bool,
    pub(crate) generation: u64,
    pub(crate) lost_events: u64,
    pub(crate) trace: Option<TraceStatus>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub(crate) struct TraceStatus {
    pub(crate) records: u64,
}

/// One `COUNTERS` entry. The verdict is a name, or the raw tag when the agent
/// did not know it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub(crate) struct Counter {
    pub(crate) cgroup_id: u64,
    pub(crate) verdict: Value,
    pub(crate) count: u64,
}

impl Status {
    pub(crate) fn parse(v: Value) -> Result<Self, String> {
        serde_json::from_value(v).map_err(|e| format!("unexpected status answer: {e}"))
    }

    /// `(decisions, denials)` counted for `cgroup_id`: every verdict but
    /// `dropped` (events lost to a full ring, already counted under their
    /// verdict), and of those `deny` and `kill`.
    fn totals(&self, cgroup_id: u64) -> (u64, u64) {
        self.counters.iter().filter(|c| c.cgroup_id == cgroup_id).fold((0, 0), |(all, denied), c| {
            match c.verdict.as_str() {
                Some("dropped") => (all, denied),
                Some("deny" | "kill") => (all + c.count, denied + c.count),
                _ => (all + c.count, denied),
            }
        })
    }

    fn events_read(&self) -> u64 {
        self.events_by_hook.values().sum()
    }
}

/// The agent-wide line above the rows.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct Header {
    pub(crate) pid: u64,
    pub(crate) backends: Vec<String>,
    pub(crate) ring_drops: u64,
    pub(crate) events_read: u64,
    pub(crate) events_read_per_s: Option<f64>,
}

/// One governed workload. Rates are `None` on the first poll, or when a
/// counter went backwards or the agent changed in between.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct Row {
    pub(crate) cgroup: String,
    pub(crate) id: u64,
    pub(crate) tier: String,
    pub(crate) frozen: bool,
    pub(crate) generation: u64,
    pub(crate) events_per_s: Option<f64>,
    pub(crate) denials_per_s: Option<f64>,
    pub(crate) decisions: u64,
    pub(crate) denials: u64,
    pub(crate) lost_events: u64,
    pub(crate) trace_records: Option<u64>,
}

/// Column titles, in the order of [`Row::cells`].
pub(crate) const COLUMNS: [&str; 10] =
    ["CGROUP", "TIER", "FROZEN", "GEN", "EVENTS/S", "DENIALS/S", "DECISIONS", "DENIED", "LOST", "TRACE"];

impl Row {
    /// The row as text, one cell per [`COLUMNS`] entry.
    pub(crate) fn cells(&self) -> [String; 10] {
        [
            self.cgroup.clone(),
            self.tier.clone(),
            if self.frozen { "yes" } else { "no" }.to_string(),
            self.generation.to_string(),
            rate(self.events_per_s),
            rate(self.denials_per_s),
            self.decisions.to_string(),
            self.denials.to_string(),
            self.lost_events.to_string(),
            self.trace_records.map_or_else(|| "-".to_string(), |n| n.to_string()),
        ]
    }
}

/// A rate for display: one decimal, `-` when unknown.
pub(crate) fn rate(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_string(), |r| format!("{r:.1}"))
}

/// What one screen (or `--once`) shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct Table {
    #[serde(flatten)]
    pub(crate) header: Header,
    /// Seconds between the two polls the rates come from.
    pub(crate) seconds: Option<f64>,
    #[serde(rename = "workloads")]
    pub(crate) rows: Vec<Row>,
}

/// Builds the table for `cur`, with rates over `seconds` since `prev` when
/// `prev` is an answer of the same agent.
pub(crate) fn build(prev: Option<&Status>, cur: &Status, seconds: f64) -> Table {
    let prev = prev.filter(|p| p.pid == cur.pid && seconds > 0.0);
    let per_s = |now: u64, before: Option<u64>| Some(now.checked_sub(before?)? as f64 / seconds);
    let rows = cur
        .governed
        .iter()
        .map(|g| {
            let (decisions, denials) = cur.totals(g.id);
            let before = prev.map(|p| p.totals(g.id));
            Row {
                cgroup: g.cgroup.clone(),
                id: g.id,
                tier: g.tier.clone(),
                frozen: g.frozen,
                generation: g.generation,
                events_per_s: per_s(decisions, before.map(|b| b.0)),
                denials_per_s: per_s(denials, before.map(|b| b.1)),
                decisions,
                denials,
                lost_events: g.lost_events,
                trace_records: g.trace.as_ref().map(|t| t.records),
            }
        })
        .collect();
    let header = Header {
        pid: cur.pid,
        backends: cur.backends.iter().filter(|(_, on)| **on).map(|(b, _)| b.clone()).collect(),
        ring_drops: cur.ring_drops,
        events_read: cur.events_read(),
        events_read_per_s: per_s(cur.events_read(), prev.map(Status::events_read)),
    };
    Table { header, seconds: prev.map(|_| seconds), rows }
}

/// How rows are ordered; `s` in the live view goes to the next one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Sort {
    #[default]
    Cgroup,
    Events,
    Denials,
}

impl Sort {
    pub(crate) fn next(self) -> Self {
        match self {
            Self::Cgroup => Self::Events,
            Self::Events => Self::Denials,
            Self::Denials => Self::Cgroup,
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Cgroup => "cgroup",
            Self::Events => "events/s",
            Self::Denials => "denials/s",
        }
    }

    /// Sorts `rows`: by path, or busiest first (unknown rates last), ties by path.
    pub(crate) fn apply(self, rows: &mut [Row]) {
        let desc = |a: Option<f64>, b: Option<f64>| b.unwrap_or(-1.0).total_cmp(&a.unwrap_or(-1.0));
        rows.sort_by(|a, b| {
            let first = match self {
                Self::Cgroup => Ordering::Equal,
                Self::Events => desc(a.events_per_s, b.events_per_s),
                Self::Denials => desc(a.denials_per_s, b.denials_per_s),
            };
            first.then_with(|| a.cgroup.cmp(&b.cgroup))
        });
    }
}

/// The live view's state across polls: the last good answer, the table
/// built from it, and the last poll's error (cleared by the next success).
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    last: Option<(Instant, Status)>,
    pub(crate) table: Option<Table>,
    pub(crate) error: Option<String>,
    pub(crate) sort: Sort,
}

impl Tracker {
    /// Takes one poll's answer, received at `at`.
    pub(crate) fn observe(&mut self, at: Instant, answer: Result<Value, String>) {
        match answer.and_then(Status::parse) {
            Ok(cur) => {
                let prev = self.last.as_ref();
                let seconds = prev.map_or(0.0, |(t, _)| at.saturating_duration_since(*t).as_secs_f64());
                let mut table = build(prev.map(|(_, s)| s), &cur, seconds);
                self.sort.apply(&mut table.rows);
                self.table = Some(table);
                self.error = None;
                self.last = Some((at, cur));
            }
            Err(e) => self.error = Some(e),
        }
    }

    pub(crate) fn next_sort(&mut self) {
        self.sort = self.sort.next();
        if let Some(t) = self.table.as_mut() {
            self.sort.apply(&mut t.rows);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn status(pid: u64, counts: &[(u64, &str, u64)], read: u64) -> Value {
        json!({
            "pid": pid,
            "adopted": false,
            "backends": {"lsm": false, "cgroup": true, "tracepoint": true},
            "governed": [
                {"cgroup": "/sys/fs/cgroup/web/b", "id": 7, "policies": "web", "tier": "suspicious",
                 "generation": 3, "frozen": true, "lost_events": 2, "trace": null},
                {"cgroup": "/sys/fs/cgroup/web/a", "id": 5, "policies": "web", "tier": "trusted",
                 "generation": 1, "frozen": false, "lost_events": 0,
                 "trace": {"path": "/var/lib/forge/traces/cgroup-5.dna", "records": 40, "lost_events": 0}},
            ],
            "counters": counts.iter().map(|(id, verdict, n)| json!({
                "cgroup_id": id, "hook": "cgroup/connect4", "verdict": verdict, "mode": "enforce", "count": n
            })).collect::<Vec<_>>(),
            "ring_drops": 4,
            "decode_errors": 0,
            "events_by_hook": {"cgroup/connect4": read, "lsm/file_open": 10},
        })
    }

    fn parse(v: Value) -> Status {
        Status::parse(v).unwrap()
    }

    #[test]
    fn first_poll_has_totals_but_no_rates() {
        let cur =
            parse(status(1, &[(5, "allow", 10), (5, "deny", 3), (5, "dropped", 9), (7, "kill", 1)], 20));
        let t = build(None, &cur, 0.0);
        assert_eq!(t.header.backends, ["cgroup", "tracepoint"]);
        assert_eq!((t.header.pid, t.header.ring_drops, t.header.events_read), (1, 4, 30));
        assert_eq!((t.header.events_read_per_s, t.seconds), (None, None));
        let a = t.rows.iter().find(|r| r.id == 5).unwrap();
        assert_eq!((a.decisions, a.denials, a.events_per_s, a.denials_per_s), (13, 3, None, None));
        assert_eq!(
            (a.tier.as_str(), a.frozen, a.generation, a.trace_records),
            ("trusted", false, 1, Some(40))
        );
        let b = t.rows.iter().find(|r| r.id == 7).unwrap();
        assert_eq!((b.decisions, b.denials, b.lost_events, b.trace_records, b.frozen), (1, 1, 2, None, true));
    }

    #[test]
    fn rates_are_deltas_over_the_interval() {
        let prev = parse(status(1, &[(5, "allow", 10), (5, "deny", 3)], 20));
        let cur =
            parse(status(1, &[(5, "allow", 14), (5, "deny", 5), (5, "kill", 1), (5, "dropped", 50)], 26));
        let t = build(Some(&prev), &cur, 2.0);
        let a = t.rows.iter().find(|r| r.id == 5).unwrap();
        // 7 new decisions (4 allow, 2 deny, 1 kill) and 3 denials over 2 s.
        assert_eq!((a.events_per_s, a.denials_per_s), (Some(3.5), Some(1.5)));
        assert_eq!(t.header.events_read_per_s, Some(3.0));
        assert_eq!(t.seconds, Some(2.0));
        // A cgroup with no counters yet has zero rates, not unknown ones.
        let b = t.rows.iter().find(|r| r.id == 7).unwrap();
        assert_eq!((b.events_per_s, b.denials_per_s), (Some(0.0), Some(0.0)));
    }

    #[test]
    fn no_rates_across_an_agent_restart_or_a_counter_reset() {
        let prev = parse(status(1, &[(5, "allow", 10)], 20));
        let restarted = parse(status(2, &[(5, "allow", 12)], 25));
        let t = build(Some(&prev), &restarted, 1.0);
        assert!(t.rows.iter().all(|r| r.events_per_s.is_none()) && t.header.events_read_per_s.is_none());
        let reset = parse(status(1, &[(5, "allow", 4)], 25));
        let t = build(Some(&prev), &reset, 1.0);
        let a = t.rows.iter().find(|r| r.id == 5).unwrap();
        assert_eq!((a.events_per_s, a.decisions), (None, 4));
        assert_eq!(t.header.events_read_per_s, Some(5.0));
    }

    #[test]
    fn unknown_verdict_tags_count_as_decisions() {
        let cur = parse(json!({"pid": 1, "governed": [{"cgroup": "x", "id": 5}],
            "counters": [{"cgroup_id": 5, "verdict": 9, "count": 2}, {"cgroup_id": 6, "verdict": "deny", "count": 8}]}));
        let t = build(None, &cur, 0.0);
        assert_eq!((t.rows[0].decisions, t.rows[0].denials), (2, 0));
    }

    #[test]
    fn cells_and_json() {
        let cur = parse(status(1, &[(5, "deny", 3)], 0));
        let t = build(Some(&parse(status(1, &[], 0))), &cur, 0.5);
        let a = t.rows.iter().find(|r| r.id == 5).unwrap();
        assert_eq!(
            a.cells(),
            ["/sys/fs/cgroup/web/a", "trusted", "no", "1", "6.0", "6.0", "3", "3", "0", "40"]
                .map(String::from)
        );
        let b = t.rows.iter().find(|r| r.id == 7).unwrap();
        assert_eq!(b.cells()[2..].to_vec(), ["yes", "3", "0.0", "0.0", "0", "0", "2", "-"].map(String::from));
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["pid"], 1);
        assert_eq!(v["seconds"], 0.5);
        assert_eq!(v["workloads"].as_array().unwrap().len(), 2);
        let w = v["workloads"].as_array().unwrap().iter().find(|w| w["id"] == 5).unwrap();
        assert_eq!((w["denials_per_s"].as_f64(), w["denials"].as_u64()), (Some(6.0), Some(3)));
        assert_eq!(w["tier"], "trusted");
    }

    #[test]
    fn sorting() {
        let prev = parse(status(1, &[], 0));
        let cur = parse(status(1, &[(5, "allow", 9), (7, "deny", 2)], 0));
        let mut t = build(Some(&prev), &cur, 1.0);
        let order = |t: &Table| t.rows.iter().map(|r| r.id).collect::<Vec<_>>();
        Sort::Cgroup.apply(&mut t.rows);
        assert_eq!(order(&t), [5, 7]);
        Sort::Denials.apply(&mut t.rows);
        assert_eq!(order(&t), [7, 5]);
        Sort::Events.apply(&mut t.rows);
        assert_eq!(order(&t), [5, 7]);
        assert_eq!(Sort::Cgroup.next().next().next(), Sort::Cgroup);
    }

    #[test]
    fn tracker_keeps_the_last_table_through_errors() {
        let t0 = Instant::now();
        let mut top = Tracker::default();
        top.observe(t0, Err("connecting: refused".into()));
        assert_eq!((top.table.is_none(), top.error.as_deref()), (true, Some("connecting: refused")));
        top.observe(t0 + Duration::from_secs(1), Ok(status(1, &[(5, "deny", 1)], 0)));
        assert!(top.error.is_none());
        assert_eq!(top.table.as_ref().unwrap().rows[0].cgroup, "/sys/fs/cgroup/web/a");
        top.observe(t0 + Duration::from_secs(2), Err("gone".into()));
        assert_eq!(top.error.as_deref(), Some("gone"));
        assert!(top.table.is_some());
        // Rates span the whole time since the last good answer.
        top.observe(t0 + Duration::from_secs(5), Ok(status(1, &[(5, "deny", 9)], 0)));
        let a = top.table.as_ref().unwrap().rows.iter().find(|r| r.id == 5).cloned().unwrap();
        assert_eq!(a.denials_per_s, Some(2.0));
        top.next_sort();
        assert_eq!((top.sort, top.table.as_ref().unwrap().rows[0].id), (Sort::Events, 5));
        top.observe(t0 + Duration::from_secs(6), Ok(json!({"pid": "not a number"})));
        assert!(top.error.as_deref().unwrap().starts_with("unexpected status answer"));
    }
}
