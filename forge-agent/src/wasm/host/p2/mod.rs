//! The WASI 0.2 host for component capsules. The interfaces are the ones
//! `wit/host.wit` lists (CLI, clocks, filesystem, random, I/O streams);
//! each function goes through the same journal and gate as the preview1
//! host, and most share its code: live, a call passes the gate, does the
//! real I/O and is recorded; in replay, its answer comes from the
//! recording.
//!
//! Resources: a descriptor's handle is its number in the descriptor table
//! (the preopened root `/` is 3); streams, directory listings, pollables
//! and errors live in [`State`], which both live runs and replays keep, so
//! their handles are the same in both.
//!
//! | module | concern |
//! |---|---|
//! | [`cli`] | arguments, environment, exit, stdio, terminals |
//! | [`io`] | streams, pollables, errors |
//! | [`fs`] | descriptors, preopens, directory listings |
//! | [`sys`] | clocks and random |

mod cli;
mod fs;
mod io;
mod sys;

use std::collections::{BTreeMap, VecDeque};

use serde_json::Value;
use wasmtime::component::{HasSelf, Linker};

use super::{Ctx, errno, errno::Errno, errno_of};

wasmtime::component::bindgen!({
    path: "wit",
    world: "forgeone:capsule/host",
    imports: { default: trappable },
});

use wasi::filesystem::types::ErrorCode;

/// Where a stream reads from or writes to.
#[derive(Clone, Copy, Debug)]
enum Stream {
    Stdin,
    Stdout,
    Stderr,
    /// A file descriptor, at `offset`; `None` appends.
    File {
        fd: i32,
        offset: Option<u64>,
    },
}

/// A directory entry: name and preview1 file type.
type Entry = (String, u8);

/// The component-side state: what handles stand for. Kept the same way
/// live and in replay (it changes only with the answers of calls).
#[derive(Default)]
pub struct State {
    next: u32,
    streams: BTreeMap<u32, Stream>,
    listings: BTreeMap<u32, VecDeque<Entry>>,
    /// Pollables: the monotonic time they are ready at (`None`: at once).
    pollables: BTreeMap<u32, Option<u64>>,
    /// Errors: a message and the preview1 errno they stand for.
    errors: BTreeMap<u32, (String, Errno)>,
}

impl State {
    fn handle(&mut self) -> u32 {
        self.next += 1;
        self.next
    }
}

/// Why a call cannot answer at all: it has no error to return, so the run
/// stops (clocks and random bytes the policy does not grant).
#[derive(Debug, thiserror::Error)]
#[error("{call}: denied by the capsule's policy ({what} has no error result in WASI 0.2, so the run stops)")]
pub struct DeniedNoError {
    pub call: String,
    pub what: &'static str,
}

/// The WASI 0.2 error code for a preview1 errno.
fn code(e: Errno) -> ErrorCode {
    match e {
        errno::ACCES => ErrorCode::Access,
        errno::BADF => ErrorCode::BadDescriptor,
        errno::EXIST => ErrorCode::Exist,
        errno::INVAL => ErrorCode::Invalid,
        errno::ISDIR => ErrorCode::IsDirectory,
        errno::LOOP => ErrorCode::Loop,
        errno::MFILE => ErrorCode::InsufficientMemory,
        errno::NAMETOOLONG => ErrorCode::NameTooLong,
        errno::NOENT => ErrorCode::NoEntry,
        errno::NOSPC => ErrorCode::InsufficientSpace,
        errno::NOSYS => ErrorCode::Unsupported,
        errno::NOTDIR => ErrorCode::NotDirectory,
        errno::NOTEMPTY => ErrorCode::NotEmpty,
        errno::PERM => ErrorCode::NotPermitted,
        errno::SPIPE => ErrorCode::InvalidSeek,
        _ => ErrorCode::Io,
    }
}

/// `Ok(r)` when the answer's errno is 0, else its error code.
fn fs_result(r: Value) -> Result<Value, ErrorCode> {
    match errno_of(&r) {
        0 => Ok(r),
        e => Err(code(e)),
    }
}

/// Adds every interface of the host world to `linker`.
pub fn add_to_linker(linker: &mut Linker<Ctx>) -> wasmtime::Result<()> {
    Host_::add_to_linker::<Ctx, HasSelf<Ctx>>(linker, |c| c)
}

/// Whether a component's import is one this host provides (by name,
/// without the version: any 0.2 version links).
pub fn provides(import: &str) -> bool {
    let name = import.split('@').next().unwrap_or(import);
    PROVIDED.contains(&name)
}

const PROVIDED: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:clocks/wall-clock",
    "wasi:clocks/monotonic-clock",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
];
