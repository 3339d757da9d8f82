//! Policies: YAML documents in `policies/`, validated with file:line:column
//! diagnostics, composed per workload and trust tier, and compiled into the
//! per-cgroup kernel records. The language is documented in docs/policy.md.

pub mod compile;
pub mod diag;
pub mod eval;
pub mod identity;
pub mod model;
pub mod net;
pub mod seccomp;
pub mod set;
pub mod syscalls;
pub mod tier;

pub use compile::{CompiledRecord, PathEntry, RuleInfo, compile};
pub use diag::{Diagnostic, Diagnostics, Severity};
pub use model::{Policy, PolicyError};
pub use set::{PolicySet, Workload};
pub use tier::Tier;

/// The default demo policy, embedded in the binary.
pub const DEFAULT_POLICY: &str = include_str!("../../../policies/default.yaml");
/// Name shown for the embedded default policy in errors and explanations.
pub const DEFAULT_POLICY_NAME: &str = "policies/default.yaml";
