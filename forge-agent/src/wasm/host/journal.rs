//! The journal of a run's host calls: recorded into the run's trace when
//! live, answered from a recording in replay.

use std::time::Instant;

use serde_json::Value;

use crate::dna::{HostCall, Record, TraceWriter};

/// A replayed capsule made a call other than the recorded one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[error("{}", describe(self))]
pub struct Divergence {
    /// Index of the first call that differs.
    pub call: u64,
    /// The recorded call (name and args), if the recording has one there.
    pub recorded: Option<(String, Value)>,
    /// The call the capsule made, if it made one.
    pub made: Option<(String, Value)>,
}

fn describe(d: &Divergence) -> String {
    match (&d.recorded, &d.made) {
        (Some((rn, ra)), Some((mn, ma))) => {
            format!("host call {} differs: recorded {rn} {ra}, the capsule made {mn} {ma}", d.call)
        }
        (None, Some((mn, ma))) => {
            format!("host call {}: the capsule made {mn} {ma}, but the recording ends there", d.call)
        }
        (Some((rn, ra)), None) => {
            format!("host call {}: the recording has {rn} {ra}, but the capsule made no more calls", d.call)
        }
        (None, None) => format!("host call {}", d.call),
    }
}

/// Writing the trace failed: the run stops (a run that cannot be recorded
/// does not go on).
#[derive(Debug, thiserror::Error)]
#[error("recording host call {call} failed: {message}")]
pub struct RecordFailed {
    pub call: u64,
    pub message: String,
}

pub enum Journal {
    Live { start: Instant, writer: Option<Box<TraceWriter>>, calls: u64 },
    Replay { calls: Vec<HostCall>, next: usize },
}

impl Journal {
    pub fn live(writer: Option<TraceWriter>) -> Self {
        Self::Live { start: Instant::now(), writer: writer.map(Box::new), calls: 0 }
    }

    pub fn replay(calls: Vec<HostCall>) -> Self {
        Self::Replay { calls, next: 0 }
    }

    pub fn is_live(&self) -> bool {
        matches!(self, Self::Live { .. })
    }

    /// Calls made so far.
    pub fn calls(&self) -> u64 {
        match self {
            Self::Live { calls, .. } => *calls,
            Self::Replay { next, .. } => *next as u64,
        }
    }

    /// The trace writer of a live run (to add the outcome and close it).
    pub fn take_writer(&mut self) -> Option<TraceWriter> {
        match self {
            Self::Live { writer, .. } => writer.take().map(|w| *w),
            Self::Replay { .. } => None,
        }
    }

    /// In replay: recorded calls the capsule did not make.
    pub fn unconsumed(&self) -> Option<Divergence> {
        match self {
            Self::Replay { calls, next } if *next < calls.len() => Some(Divergence {
                call: *next as u64,
                recorded: Some((calls[*next].name.clone(), calls[*next].args.clone())),
                made: None,
            }),
            _ => None,
        }
    }

    pub(super) fn call(
        &mut self,
        name: &str,
        args: Value,
        perform: impl FnOnce() -> (Value, bool),
    ) -> wasmtime::Result<(Value, bool)> {
        match self {
            Self::Live { start, writer, calls } => {
                let began = start.elapsed();
                let (result, allowed) = perform();
                let index = *calls;
                *calls += 1;
                if let Some(w) = writer {
                    let rec = HostCall {
                        ts_ns: began.as_nanos() as u64,
                        duration_ns: (start.elapsed() - began).as_nanos() as u64,
                        name: name.to_string(),
                        args,
                        result: result.clone(),
                        allowed,
                    };
                    w.append(&Record::HostCall(rec))
                        .map_err(|e| RecordFailed { call: index, message: e.to_string() })?;
                }
                Ok((result, allowed))
            }
            Self::Replay { calls, next } => {
                let index = *next;
                let Some(rec) = calls.get(index) else {
                    return Err(Divergence {
                        call: index as u64,
                        recorded: None,
                        made: Some((name.into(), args)),
                    }
                    .into());
                };
                if rec.name != name || rec.args != args {
                    return Err(Divergence {
                        call: index as u64,
                        recorded: Some((rec.name.clone(), rec.args.clone())),
                        made: Some((name.into(), args)),
                    }
                    .into());
                }
                *next += 1;
                Ok((rec.result.clone(), rec.allowed))
            }
        }
    }
}
