//! Draws `forge top`'s screen: the agent line, a status line (the last
//! poll's error, in red, while the agent does not answer), then one row per
//! governed workload.

use std::time::Duration;

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::Line,
    widgets::{Cell, Paragraph, Row, Table, Wrap},
};

use super::model::{COLUMNS, Tracker, rate};

/// Widths of every column but the first; the cgroup path gets the rest.
const WIDTHS: [u16; 9] = [11, 6, 5, 9, 9, 10, 8, 6, 8];
const SPACING: u16 = 1;

pub(super) fn draw(frame: &mut Frame, top: &Tracker, interval: Duration) {
    let status = status_line(top, interval);
    // An error wraps over a few lines rather than losing its end.
    let width = usize::from(frame.area().width.max(1));
    let n = status.chars().count();
    // Word wrapping may take one line more than the characters need.
    let status_height = (n.div_ceil(width) + usize::from(n > width)).clamp(1, 4) as u16;
    let [agent, status_area, rows] =
        Layout::vertical([Constraint::Length(1), Constraint::Length(status_height), Constraint::Fill(1)])
            .areas(frame.area());
    frame.render_widget(Paragraph::new(agent_line(top)), agent);
    let style = if top.error.is_some() {
        Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
    } else {
        Style::new().add_modifier(Modifier::DIM)
    };
    frame.render_widget(Paragraph::new(status).style(style).wrap(Wrap { trim: false }), status_area);
    draw_rows(frame, top, rows);
}

fn agent_line(top: &Tracker) -> Line<'static> {
    let Some(t) = &top.table else {
        return Line::from("forge top · waiting for the agent's first answer");
    };
    let h = &t.header;
    let backends = if h.backends.is_empty() { "none".to_string() } else { h.backends.join(",") };
    Line::from(format!(
        "forge top · agent pid {} · backends {backends} · ring drops {} · events read {}/s ({} total)",
        h.pid,
        h.ring_drops,
        rate(h.events_read_per_s),
        h.events_read
    ))
    .style(Style::new().add_modifier(Modifier::BOLD))
}

fn status_line(top: &Tracker, interval: Duration) -> String {
    let every = interval.as_secs_f64();
    match &top.error {
        Some(e) => format!("no answer, retrying every {every} s: {e}"),
        None => format!("every {every} s · sorted by {} · s: next sort · q: quit", top.sort.label()),
    }
}

fn draw_rows(frame: &mut Frame, top: &Tracker, area: Rect) {
    let Some(t) = &top.table else { return };
    if t.rows.is_empty() {
        frame.render_widget(Paragraph::new("no governed workloads"), area);
        return;
    }
    let fixed: u16 = WIDTHS.iter().sum::<u16>() + SPACING * WIDTHS.len() as u16;
    let path_width = usize::from(area.width.saturating_sub(fixed).max(8));
    let rows = t.rows.iter().map(|r| {
        let mut cells = r.cells().map(Cell::from);
        cells[0] = Cell::from(tail(&r.cgroup, path_width));
        cells[1] = Cell::from(r.tier.clone()).style(tier_style(&r.tier));
        if r.frozen {
            cells[2] = Cell::from("yes").style(Style::new().fg(Color::Cyan));
        }
        if r.denials_per_s.is_some_and(|d| d > 0.0) {
            cells[5] = Cell::from(rate(r.denials_per_s)).style(Style::new().fg(Color::Red));
        }
        Row::new(cells)
    });
    let widths = std::iter::once(Constraint::Fill(1)).chain(WIDTHS.map(Constraint::Length));
    let header = Row::new(COLUMNS).style(Style::new().add_modifier(Modifier::REVERSED));
    frame.render_widget(Table::new(rows, widths).header(header).column_spacing(SPACING), area);
}

fn tier_style(tier: &str) -> Style {
    match tier {
        "suspicious" => Style::new().fg(Color::Yellow),
        "compromised" => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        _ => Style::new(),
    }
}

/// The end of `path` in at most `width` characters: a cgroup's last
/// components tell it apart, its mount point does not.
fn tail(path: &str, width: usize) -> String {
    let n = path.chars().count();
    if n <= width {
        return path.to_string();
    }
    let keep = width.saturating_sub(1);
    std::iter::once('…').chain(path.chars().skip(n - keep)).collect()
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use ratatui::{Terminal, backend::TestBackend};
    use serde_json::json;

    use super::*;

    fn screen(top: &Tracker, width: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, 8)).unwrap();
        terminal.draw(|f| draw(f, top, Duration::from_millis(500))).unwrap();
        terminal.backend().to_string()
    }

    fn answer(denied: u64) -> serde_json::Value {
        json!({
            "pid": 42, "backends": {"cgroup": true, "lsm": false},
            "governed": [{"cgroup": "/sys/fs/cgroup/unified/forge-test/123-top", "id": 9, "tier": "unknown",
                          "generation": 2, "frozen": false, "lost_events": 0, "trace": {"records": 17}}],
            "counters": [{"cgroup_id": 9, "verdict": "deny", "count": denied}],
            "ring_drops": 0, "events_by_hook": {"cgroup/connect4": denied},
        })
    }

    #[test]
    fn rows_and_header_on_screen() {
        let t0 = Instant::now();
        let mut top = Tracker::default();
        assert!(screen(&top, 160).contains("waiting for the agent"));
        top.observe(t0, Ok(answer(1)));
        top.observe(t0 + Duration::from_secs(1), Ok(answer(4)));
        let s = screen(&top, 160);
        assert!(
            s.contains("agent pid 42 · backends cgroup · ring drops 0 · events read 3.0/s (4 total)"),
            "{s}"
        );
        assert!(s.contains("CGROUP") && s.contains("DENIALS/S"), "{s}");
        let row = s.lines().find(|l| l.contains("forge-test/123-top")).unwrap_or_else(|| panic!("{s}"));
        let words: Vec<&str> = row.trim_matches('"').split_whitespace().collect();
        assert_eq!(
            words,
            [
                "/sys/fs/cgroup/unified/forge-test/123-top",
                "unknown",
                "no",
                "2",
                "3.0",
                "3.0",
                "4",
                "4",
                "0",
                "17"
            ]
        );
        // A narrow terminal keeps the end of the path.
        let narrow = screen(&top, 90);
        assert!(narrow.contains("\"…/123-top unknown"), "{narrow}");
    }

    #[test]
    fn errors_are_shown_and_the_last_rows_kept() {
        let mut top = Tracker::default();
        top.observe(Instant::now(), Err("connecting to the agent at /x: refused".into()));
        let s = screen(&top, 120);
        assert!(s.contains("no answer, retrying every 0.5 s: connecting to the agent at /x: refused"), "{s}");
        top.observe(Instant::now(), Ok(answer(1)));
        top.observe(Instant::now(), Err("gone".into()));
        let s = screen(&top, 120);
        assert!(s.contains("retrying every 0.5 s: gone") && s.contains("123-top"), "{s}");
        // A long error wraps instead of losing its end.
        top.observe(Instant::now(), Err(format!("{}the end", "a long error ".repeat(15))));
        assert!(screen(&top, 120).contains("error the end"));
        top.observe(Instant::now(), Ok(json!({"pid": 1})));
        assert!(screen(&top, 120).contains("no governed workloads"));
    }

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail("/a/b/c", 10), "/a/b/c");
        assert_eq!(tail("/sys/fs/cgroup/web/a", 8), "…p/web/a");
        assert_eq!(tail("abc", 0), "…");
    }
}
