//! `forge top`: a live view of the running agent from its `status` answers.
//! model.rs computes the rows and rates, view.rs draws them, tui.rs runs the
//! terminal loop, once.rs prints one table for scripts.

mod model;
mod once;
mod tui;
mod view;

use std::{process::ExitCode, time::Duration};

use clap::Args;

use super::SocketArgs;

#[derive(Args)]
pub(crate) struct TopArgs {
    #[command(flatten)]
    socket: SocketArgs,
    /// Seconds between polls (fractions allowed, at least 0.1).
    #[arg(long, default_value = "1", value_parser = parse_interval, value_name = "SECS")]
    interval: Duration,
    /// Print one plain-text table from two polls `--interval` apart and exit.
    #[arg(long)]
    once: bool,
    /// With `--once`: the agent line and the rows as JSON.
    #[arg(long, requires = "once")]
    json: bool,
}

pub(crate) fn run(a: &TopArgs) -> anyhow::Result<ExitCode> {
    if a.once {
        once::run(&a.socket.socket, a.interval, a.json)?;
    } else {
        tui::run(a.socket.socket.clone(), a.interval)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if !(0.1..=86_400.0).contains(&secs) {
        return Err(format!("{s}: between 0.1 and 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
        for bad in ["0", "0.05", "-1", "NaN", "inf", "x", "1e9"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }
}
