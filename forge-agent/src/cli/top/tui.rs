//! `forge top`'s live view: a poller thread asks the agent for its status
//! every interval; this loop feeds the answers to the model, redraws, and
//! reads keys. The terminal is restored on every way out: quitting, an error
//! (the guard's drop) and a panic (ratatui's panic hook).

use std::{
    io::IsTerminal as _,
    path::PathBuf,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use forge_agent::api::{Request, client};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::{model::Tracker, view};

/// How often keys are checked and the screen redrawn.
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, PartialEq, Eq)]
enum Action {
    Quit,
    NextSort,
}

pub(super) fn run(socket: PathBuf, interval: Duration) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() {
        bail!("forge top needs a terminal; `forge top --once [--json]` prints one table");
    }
    let answers = spawn_poller(socket, interval);
    let _restore = Restore;
    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let mut top = Tracker::default();
    loop {
        while let Ok((at, answer)) = answers.try_recv() {
            top.observe(at, answer);
        }
        terminal.draw(|f| view::draw(f, &top, interval)).context("drawing")?;
        if !event::poll(TICK).context("reading the terminal")? {
            continue;
        }
        if let Event::Key(key) = event::read().context("reading the terminal")? {
            match action(key) {
                Some(Action::Quit) => return Ok(()),
                Some(Action::NextSort) => top.next_sort(),
                None => {}
            }
        }
    }
}

/// Leaves raw mode and the alternate screen when dropped.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Asks for the status now and then every `interval`, until the receiver is
/// gone. A thread of its own, so that a slow or stuck agent never stops the
/// keys from working.
fn spawn_poller(
    socket: PathBuf,
    interval: Duration,
) -> mpsc::Receiver<(Instant, Result<serde_json::Value, String>)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        loop {
            let answer = client::call(&socket, &Request::Status).map_err(|e| e.to_string());
            if tx.send((Instant::now(), answer)).is_err() {
                return;
            }
            std::thread::sleep(interval);
        }
    });
    rx
}

/// q, Esc or Ctrl-C quit (raw mode turns Ctrl-C into a key); s sorts.
fn action(key: KeyEvent) -> Option<Action> {
    if key.kind != KeyEventKind::Press {
        return None;
    }
    match key.code {
        KeyCode::Char('q') | KeyCode::Esc => Some(Action::Quit),
        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Some(Action::Quit),
        KeyCode::Char('s') => Some(Action::NextSort),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let key = |code, modifiers| action(KeyEvent::new(code, modifiers));
        assert_eq!(key(KeyCode::Char('q'), KeyModifiers::NONE), Some(Action::Quit));
        assert_eq!(key(KeyCode::Esc, KeyModifiers::NONE), Some(Action::Quit));
        assert_eq!(key(KeyCode::Char('c'), KeyModifiers::CONTROL), Some(Action::Quit));
        assert_eq!(key(KeyCode::Char('c'), KeyModifiers::NONE), None);
        assert_eq!(key(KeyCode::Char('s'), KeyModifiers::NONE), Some(Action::NextSort));
        let mut release = KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE);
        release.kind = KeyEventKind::Release;
        assert_eq!(action(release), None);
    }
}
