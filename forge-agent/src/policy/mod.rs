//! Policies: the YAML documents in `policies/`, validated and compiled into
//! the per-cgroup kernel records.
//!
//! This is the minimal form the kernel core needs (defaults, ordered rules,
//! modes, self-protection); it already fills the final map layout.

pub mod compile;
pub mod model;
pub mod net;
pub mod syscalls;

pub use compile::{CompileError, CompiledRecord, PathEntry, RuleInfo, compile};
pub use model::{Policy, PolicyError};

/// The default demo policy, embedded in the binary.
pub const DEFAULT_POLICY: &str = include_str!("../../../policies/default.yaml");
/// Name shown for the embedded default policy in errors and explanations.
pub const DEFAULT_POLICY_NAME: &str = "policies/default.yaml";
