//! Decision events: decoding the kernel's bytes into typed values.

pub mod decode;

pub use decode::{
    CounterVerdict, DecisionEvent, DecodeError, EscapeOutcome, Hook, Mode, Op, Target, Verdict,
};
