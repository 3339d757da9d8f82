//! Events to action: per-workload anomaly scoring against a learned
//! baseline, adaptive trust tiers, and live quarantine.
//!
//! Everything here is deterministic in the event stream (time comes from the
//! events' kernel timestamps, never the wall clock), so a recorded stream
//! replayed through [`scorer::Scorer`] and [`controller::TrustController`]
//! reproduces the same scores, tier changes and actions.

pub mod config;
pub mod controller;
pub mod features;
pub mod quarantine;
pub mod scorer;

pub use controller::{Action, TrustController};
pub use features::{Feature, FeatureKind};
pub use scorer::{Elided, Observed, Score, ScoreConfig, Scorer};
