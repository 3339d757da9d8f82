//! `forge top --once`: two polls `--interval` apart, one plain-text table
//! (or JSON with `--json`), no terminal handling. For scripts.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use forge_agent::api::{Request, client};

use super::model::{self, COLUMNS, Sort, Status, Table, rate};

pub(super) fn run(socket: &Path, interval: Duration, json: bool) -> anyhow::Result<()> {
    let (t0, first) = poll(socket)?;
    std::thread::sleep(interval);
    let (t1, second) = poll(socket)?;
    let mut table = model::build(Some(&first), &second, t1.duration_since(t0).as_secs_f64());
    Sort::Cgroup.apply(&mut table.rows);
    if json {
        crate::cli::print_json(&table)
    } else {
        print!("{}", text(&table));
        Ok(())
    }
}

fn poll(socket: &Path) -> anyhow::Result<(Instant, Status)> {
    let answer = client::call(socket, &Request::Status)?;
    Ok((Instant::now(), Status::parse(answer).map_err(anyhow::Error::msg)?))
}

/// The agent line, then the column titles and one line per workload, in
/// columns padded to their widest cell.
fn text(t: &Table) -> String {
    let h = &t.header;
    let mut out = format!(
        "agent pid {} · backends {} · ring drops {} · events read {}/s ({} total) · rates over {:.2} s\n",
        h.pid,
        if h.backends.is_empty() { "none".to_string() } else { h.backends.join(",") },
        h.ring_drops,
        rate(h.events_read_per_s),
        h.events_read,
        t.seconds.unwrap_or(0.0)
    );
    let lines: Vec<[String; 10]> =
        std::iter::once(COLUMNS.map(String::from)).chain(t.rows.iter().map(model::Row::cells)).collect();
    let widths: Vec<usize> =
        (0..COLUMNS.len()).map(|i| lines.iter().map(|l| l[i].chars().count()).max().unwrap_or(0)).collect();
    for line in &lines {
        let padded: Vec<String> = line.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    }
    if t.rows.is_empty() {
        out.push_str("no governed workloads\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn plain_table() {
        let s = |n: u64| {
            Status::parse(json!({
                "pid": 3, "backends": {"cgroup": true, "tracepoint": true},
                "governed": [{"cgroup": "/cg/web/a", "id": 1, "tier": "trusted", "generation": 1, "trace": {"records": 5}},
                             {"cgroup": "/cg/db", "id": 2, "tier": "compromised", "generation": 12, "frozen": true}],
                "counters": [{"cgroup_id": 2, "verdict": "deny", "count": n}],
                "events_by_hook": {"cgroup/connect4": n},
            }))
            .unwrap()
        };
        let mut t = model::build(Some(&s(0)), &s(5), 0.5);
        Sort::Cgroup.apply(&mut t.rows);
        assert_eq!(
            text(&t),
            "agent pid 3 · backends cgroup,tracepoint · ring drops 0 · events read 10.0/s (5 total) · rates over 0.50 s
CGROUP     TIER         FROZEN  GEN  EVENTS/S  DENIALS/S  DECISIONS  DENIED  LOST  TRACE
/cg/db     compromised  yes     12   10.0      10.0       5          5       0     -
/cg/web/a  trusted      no      1    0.0       0.0        0          0       0     5
"
        );
        let empty = model::build(None, &Status::default(), 0.0);
        assert!(text(&empty).ends_with("CGROUP  TIER  FROZEN  GEN  EVENTS/S  DENIALS/S  DECISIONS  DENIED  LOST  TRACE\nno governed workloads\n"));
    }
}
