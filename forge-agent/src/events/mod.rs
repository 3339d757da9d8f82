//! Decision events: decoding the kernel's bytes into typed values.

pub mod decode;

pub use decode::{DecodeError, DecisionEvent, Hook, Mode, Op, Target, Verdict};
