//! The agent's local API: JSON lines over a unix socket (root, or an API
//! group; callers inside governed subtrees may only read).
//! Reference: docs/api.md.

pub mod caller;
pub mod capsules;
pub mod client;
pub mod daemon;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod traces;

pub use protocol::{ApiError, ErrorCode, Request, Response};

/// Default socket path.
pub const DEFAULT_SOCKET: &str = "/run/forge/agent.sock";
