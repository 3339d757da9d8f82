//! The agent's own log: `tracing` events on stderr, as text or JSON lines.

/// Installs the global subscriber. `level` is a filter such as `info` or
/// `forge_agent=debug`; `RUST_LOG`, when set, wins.
pub fn init(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
