//! Explainable features: what about an event made a workload look unlike itself.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// A binary never executed during learning.
    NewBinary,
    /// An exec from a world-writable directory (/tmp, /dev/shm, /var/tmp).
    ExecFromWritableDir,
    /// A connect or send to a /24 (IPv4) or /64 (IPv6) never seen during learning.
    NewDestination,
    /// An operation the policy denied (or would deny in monitor mode).
    DeniedOperation,
    /// A syscall the policy kills for.
    DeniedSyscall,
    /// bpf(), ptrace of the agent, or a signal to it.
    SelfProtectionHit,
    /// Events per second far above the learned rate.
    RateSpike,
}

impl FeatureKind {
    /// Every kind, in declaration order (`kind as usize` indexes it).
    pub const ALL: [Self; 7] = [
        Self::NewBinary,
        Self::ExecFromWritableDir,
        Self::NewDestination,
        Self::DeniedOperation,
        Self::DeniedSyscall,
        Self::SelfProtectionHit,
        Self::RateSpike,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NewBinary => "new binary",
            Self::ExecFromWritableDir => "exec from a writable dir",
            Self::NewDestination => "new destination",
            Self::DeniedOperation => "denied operation",
            Self::DeniedSyscall => "denied syscall",
            Self::SelfProtectionHit => "self-protection hit",
            Self::RateSpike => "event rate spike",
        }
    }
}

/// One contribution to a score.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feature {
    pub kind: FeatureKind,
    pub weight: u32,
    /// e.g. "new binary /tmp/x executed", "connect to never-seen 203.0.113.0/24".
    pub detail: String,
    /// Kernel timestamp of the event that raised it.
    pub ts_ns: u64,
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (+{})", self.detail, self.weight)
    }
}
