//! The host a capsule runs against: WASI preview1 (the calls C programs
//! built with wasi-libc make), plus `forge.sock_connect`, which preview1
//! lacks. Every call is journaled: live, it passes the gate, does the real
//! I/O and is recorded; in replay, its answer comes from the recording and
//! nothing outside is touched.
//!
//! | module | concern |
//! |---|---|
//! | [`errno`] | WASI error numbers |
//! | [`mem`] | bounds-checked guest memory |
//! | [`journal`] | live recording and replay of calls |
//! | [`fds`] | the descriptor table |
//! | [`fs`] | files and directories |
//! | [`sys`] | args, env, clocks, random, exit |
//! | [`net`] | `forge.sock_connect` |
//! | [`link`] | the linker: every import the module asks for |
//! | [`p2`] | the WASI 0.2 host for component capsules |

pub mod errno;
mod fds;
mod fs;
pub mod journal;
pub mod link;
pub mod mem;
mod net;
pub mod p2;
mod sys;

use std::io::Write as _;

use serde_json::Value;
use sha3::{Digest as _, Sha3_256};
use wasmtime::{Caller, Memory};

use self::{errno::Errno, fds::FdTable, journal::Journal};
use super::gate::{Decision, Denial, Facility, Gate};

pub use link::{HOST_MODULE, LinkError, WASI_MODULE, component_linker, linker};

/// Where a capsule's stdout or stderr goes when it runs live.
pub enum Sink {
    Inherit,
    Capture(Vec<u8>),
    Discard,
}

impl Sink {
    fn write(&mut self, fd: i32, bytes: &[u8]) {
        match self {
            Self::Inherit if fd == 2 => {
                let _ = std::io::stderr().write_all(bytes);
            }
            Self::Inherit => {
                let _ = std::io::stdout().write_all(bytes);
            }
            Self::Capture(v) => v.extend_from_slice(bytes),
            Self::Discard => {}
        }
    }
}

/// A call the gate refused (or, in monitor mode, would have).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Denied {
    /// Index of the call among the run's host calls.
    pub call: u64,
    pub name: String,
    pub facility: String,
    #[serde(flatten)]
    pub denial: Denial,
    /// False in monitor mode: the call went through.
    pub enforced: bool,
}

/// What the live half of a call needs: the gate, the descriptors, the world.
pub struct Live {
    pub gate: Box<dyn Gate>,
    fds: FdTable,
    pub args: Vec<String>,
    /// Host values of the variables the manifest requests.
    pub env: Vec<(String, String)>,
    pub stdout: Sink,
    pub stderr: Sink,
    /// Denials of the call being made (drained into [`Ctx::denied`]).
    pending: Vec<(String, Denial, bool)>,
}

impl Live {
    pub fn new(
        gate: Box<dyn Gate>,
        args: Vec<String>,
        env: Vec<(String, String)>,
        max_open_files: u32,
    ) -> Self {
        Self {
            gate,
            fds: FdTable::new(max_open_files as usize),
            args,
            env,
            stdout: Sink::Inherit,
            stderr: Sink::Inherit,
            pending: Vec::new(),
        }
    }

    /// Asks the gate; notes a denial for the call's record.
    fn allow(&mut self, facility: &Facility<'_>) -> bool {
        let Decision { allowed, denial } = self.gate.check(facility);
        if let Some(d) = denial {
            self.pending.push((facility.describe(), d, !allowed));
        }
        allowed
    }
}

/// Resource limits a run is held to (the store's limiter).
pub struct StoreLimits {
    pub memory_bytes: usize,
    /// When the run's deadline passes: a host call that waits (a WASI 0.2
    /// poll) waits no longer than this.
    pub deadline: std::time::Instant,
}

/// The store's data: everything the host calls work with.
pub struct Ctx {
    pub live: Live,
    pub journal: Journal,
    pub limits: StoreLimits,
    output: Sha3_256,
    pub denied: Vec<Denied>,
    /// What a component's handles stand for.
    p2: p2::State,
}

/// Ends a run from inside a host call (the capsule called `proc_exit`).
#[derive(Debug, thiserror::Error)]
#[error("capsule exited with code {0}")]
pub struct Exit(pub i32);

/// The capsule grew its memory past the limit.
#[derive(Debug, thiserror::Error)]
#[error("memory limit of {limit} bytes exceeded (the capsule asked for {desired})")]
pub struct MemoryLimit {
    pub limit: usize,
    pub desired: usize,
}

impl Ctx {
    pub fn new(live: Live, journal: Journal, limits: StoreLimits) -> Self {
        Self { live, journal, limits, output: Sha3_256::new(), denied: Vec::new(), p2: p2::State::default() }
    }

    /// sha3-256 of what the capsule wrote to stdout and stderr so far.
    pub fn output_digest(&self) -> String {
        hex::encode(self.output.clone().finalize())
    }

    /// Output to fd 1 or 2: into the digest (live and replay), and to its
    /// sink (live only).
    fn output(&mut self, fd: i32, bytes: &[u8]) {
        self.output.update([fd as u8]);
        self.output.update((bytes.len() as u64).to_le_bytes());
        self.output.update(bytes);
        if self.journal.is_live() {
            match fd {
                1 => self.live.stdout.write(1, bytes),
                _ => self.live.stderr.write(2, bytes),
            }
        }
    }

    /// Makes one host call: live, `perform` does it (through the gate) and
    /// it is recorded; in replay, the recorded answer is returned after
    /// checking that the capsule made the same call. The answer is a JSON
    /// object with at least `errno`.
    fn call(
        &mut self,
        name: &str,
        args: Value,
        perform: impl FnOnce(&mut Live) -> Value,
    ) -> wasmtime::Result<Value> {
        let index = self.journal.calls();
        let live = &mut self.live;
        let (result, _) = self.journal.call(name, args, || {
            let result = perform(live);
            let allowed = !live.pending.iter().any(|(_, _, enforced)| *enforced);
            (result, allowed)
        })?;
        for (facility, denial, enforced) in self.live.pending.drain(..) {
            tracing::info!(call = name, %facility, %denial, enforced, "capsule host call denied");
            self.denied.push(Denied { call: index, name: name.to_string(), facility, denial, enforced });
        }
        Ok(result)
    }
}

/// The errno of a call's answer.
fn errno_of(v: &Value) -> Errno {
    v.get("errno").and_then(Value::as_u64).map_or(errno::IO, |e| e as Errno)
}

fn field(v: &Value, name: &str) -> u64 {
    v.get(name).and_then(Value::as_u64).unwrap_or(0)
}

fn bytes_of(v: &Value, name: &str) -> Vec<u8> {
    v.get(name).and_then(Value::as_str).and_then(|h| hex::decode(h).ok()).unwrap_or_default()
}

fn answer(errno: Errno) -> Value {
    serde_json::json!({ "errno": errno })
}

/// The capsule's exported memory and the store data.
fn memory<'a>(caller: &'a mut Caller<'_, Ctx>) -> wasmtime::Result<(&'a mut [u8], &'a mut Ctx)> {
    let Some(mem) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
        return Err(wasmtime::Error::msg("the capsule exports no `memory`; WASI calls need one"));
    };
    Ok(Memory::data_and_store_mut(&mem, caller))
}

impl wasmtime::ResourceLimiter for Ctx {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limits.memory_bytes {
            return Err(MemoryLimit { limit: self.limits.memory_bytes, desired }.into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}
