//! Fleet: agents on many hosts share signed policy bundles and trust
//! records through NATS JetStream key-value buckets (docs/fleet.md).
//!
//! - [`wire`]: a policy bundle directory as one bus value.
//! - [`record`]: trust records, signed by the node that issues them.
//! - [`ledger`]: what the records received say about each identity, and
//!   the deterministic rule that resolves conflicting ones.
//! - [`store`]: the ledger's signed records on disk, verified again at start.
//! - [`bus`]: the connection task (watch, publish, reconnect).
//! - [`link`]: the daemon's side: configuration, counters, partitions.
//!
//! The bus only carries bytes: an agent verifies every bundle and record
//! itself before anything changes.

pub mod bus;
pub mod ledger;
pub mod link;
pub mod record;
pub mod store;
pub mod wire;

#[cfg(test)]
mod tests;

pub use ledger::{Admit, Effective, Ledger};
pub use link::{FleetConfig, FleetLink, Rule};
pub use record::{Identity, RecordAction, RecordError, SignedRecord, TrustRecord};

/// Default JetStream key-value bucket of policy bundles (key: bundle name).
pub const POLICY_BUCKET: &str = "forge-policy";
/// Default bucket of trust records (key: `<identity key>.<node>`).
pub const TRUST_BUCKET: &str = "forge-trust";
/// Records kept per key in each bucket (the audit history).
pub const HISTORY: i64 = 64;

/// Whether `name` may name a node or bundle on the bus: 1–64 of
/// `[A-Za-z0-9_-]` (it becomes part of a bucket key).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
