//! Streams (stdio and files), pollables and errors.
//!
//! Output to stdout and stderr goes into the run's output digest, as with
//! preview1. File streams read and write at their own offset with
//! positional I/O, gated on every call like a preview1 `fd_read`.

use std::os::unix::fs::FileExt as _;

use serde_json::{Value, json};
use wasmtime::component::Resource;

use super::{
    State, Stream,
    wasi::io::{
        error::{self, Error},
        poll::{self, Pollable},
        streams::{self, InputStream, OutputStream, StreamError},
    },
};
use crate::wasm::{
    gate::Facility,
    host::{Ctx, Live, answer, bytes_of, errno, errno::Errno, errno_of, fds::Fd, field},
};

/// Most bytes a stream moves in one call (and what `check-write` offers).
const MAX_IO: u64 = 1 << 20;

/// The file behind `fd`, once the gate let a read or write of its path through.
pub(super) fn gated_file(live: &mut Live, fd: i32, write: bool) -> Result<&std::fs::File, Errno> {
    let path = match live.fds.get(fd)? {
        Fd::File { path, .. } => path.clone(),
        Fd::Root | Fd::Dir { .. } => return Err(errno::ISDIR),
        _ => return Err(errno::BADF),
    };
    let allowed = live.allow(&if write { Facility::FileWrite(&path) } else { Facility::FileRead(&path) });
    if !allowed {
        return Err(errno::ACCES);
    }
    match live.fds.get(fd)? {
        Fd::File { file, .. } => Ok(file),
        _ => Err(errno::BADF),
    }
}

impl State {
    fn stream(&self, h: u32) -> wasmtime::Result<Stream> {
        self.streams
            .get(&h)
            .copied()
            .ok_or_else(|| wasmtime::Error::msg(format!("stream handle {h} is not open")))
    }

    /// The stream error for a failed call's errno.
    fn failed(&mut self, name: &str, e: Errno) -> StreamError {
        let h = self.handle();
        self.errors.insert(h, (format!("{name}: wasi errno {e}"), e));
        StreamError::LastOperationFailed(Resource::new_own(h))
    }
}

fn closed() -> StreamError {
    StreamError::Closed
}

impl Ctx {
    fn read_stream(
        &mut self,
        name: &str,
        h: u32,
        len: u64,
    ) -> wasmtime::Result<Result<Vec<u8>, StreamError>> {
        let stream = self.p2.stream(h)?;
        let len = len.min(MAX_IO);
        let r = self.call(name, json!({"stream": h, "len": len}), |live| match stream {
            Stream::Stdin => json!({"errno": 0, "data": "", "closed": true}),
            Stream::Stdout | Stream::Stderr => answer(errno::BADF),
            Stream::File { fd, offset } => {
                let mut buf = vec![0u8; len as usize];
                match gated_file(live, fd, false)
                    .and_then(|f| f.read_at(&mut buf, offset.unwrap_or(0)).map_err(|e| errno::from_io(&e)))
                {
                    Ok(n) => json!({"errno": 0, "data": hex::encode(&buf[..n]), "closed": n == 0 && len > 0}),
                    Err(e) => answer(e),
                }
            }
        })?;
        Ok(match errno_of(&r) {
            0 if r.get("closed").and_then(Value::as_bool) == Some(true) => Err(closed()),
            0 => {
                let data = bytes_of(&r, "data");
                if let Some(Stream::File { offset: Some(o), .. }) = self.p2.streams.get_mut(&h) {
                    *o += data.len() as u64;
                }
                Ok(data)
            }
            e => Err(self.p2.failed(name, e)),
        })
    }

    fn write_stream(&mut self, name: &str, h: u32, data: &[u8]) -> wasmtime::Result<Result<(), StreamError>> {
        let stream = self.p2.stream(h)?;
        match stream {
            Stream::Stdout => self.output(1, data),
            Stream::Stderr => self.output(2, data),
            _ => {}
        }
        let args = json!({"stream": h, "len": data.len(), "sha3": crate::sign::sha3_256(data).to_hex()});
        let r = self.call(name, args, |live| match stream {
            Stream::Stdout | Stream::Stderr => json!({"errno": 0, "n": data.len()}),
            Stream::Stdin => answer(errno::BADF),
            Stream::File { fd, offset } => {
                let wrote = gated_file(live, fd, true).and_then(|f| {
                    // Appending writes at the end as it is now (the file
                    // need not have been opened with O_APPEND).
                    let at = match offset {
                        Some(o) => Ok(o),
                        None => f.metadata().map(|m| m.len()),
                    };
                    at.and_then(|at| f.write_all_at(data, at)).map_err(|e| errno::from_io(&e))
                });
                match wrote {
                    Ok(()) => json!({"errno": 0, "n": data.len()}),
                    Err(e) => answer(e),
                }
            }
        })?;
        Ok(match errno_of(&r) {
            0 => {
                if let Some(Stream::File { offset: Some(o), .. }) = self.p2.streams.get_mut(&h) {
                    *o += field(&r, "n");
                }
                Ok(())
            }
            e => Err(self.p2.failed(name, e)),
        })
    }

    /// A stream call with nothing to do outside (writes are not buffered):
    /// recorded like every call.
    fn no_effect(&mut self, name: &str, h: u32) -> wasmtime::Result<()> {
        self.p2.stream(h)?;
        self.call(name, json!({"stream": h}), |_| json!({"errno": 0}))?;
        Ok(())
    }

    /// A pollable that is ready at once (stdio and files never block).
    fn ready_pollable(&mut self, name: &str, h: u32) -> wasmtime::Result<Resource<Pollable>> {
        self.p2.stream(h)?;
        self.call(name, json!({"stream": h}), |_| json!({"errno": 0}))?;
        let p = self.p2.handle();
        self.p2.pollables.insert(p, None);
        Ok(Resource::new_own(p))
    }

    /// Drops a handle from the state. Dropping a stream, pollable, error or
    /// listing has no effect outside, and is not recorded.
    fn forget(&mut self, h: u32) {
        self.p2.streams.remove(&h);
        self.p2.pollables.remove(&h);
        self.p2.errors.remove(&h);
        self.p2.listings.remove(&h);
    }
}

impl streams::Host for Ctx {}

impl streams::HostInputStream for Ctx {
    fn read(&mut self, s: Resource<InputStream>, len: u64) -> wasmtime::Result<Result<Vec<u8>, StreamError>> {
        self.read_stream("input-stream.read", s.rep(), len)
    }

    fn blocking_read(
        &mut self,
        s: Resource<InputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<Vec<u8>, StreamError>> {
        self.read_stream("input-stream.blocking-read", s.rep(), len)
    }

    fn skip(&mut self, s: Resource<InputStream>, len: u64) -> wasmtime::Result<Result<u64, StreamError>> {
        Ok(self.read_stream("input-stream.skip", s.rep(), len)?.map(|d| d.len() as u64))
    }

    fn blocking_skip(
        &mut self,
        s: Resource<InputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<u64, StreamError>> {
        Ok(self.read_stream("input-stream.blocking-skip", s.rep(), len)?.map(|d| d.len() as u64))
    }

    fn subscribe(&mut self, s: Resource<InputStream>) -> wasmtime::Result<Resource<Pollable>> {
        self.ready_pollable("input-stream.subscribe", s.rep())
    }

    fn drop(&mut self, s: Resource<InputStream>) -> wasmtime::Result<()> {
        self.forget(s.rep());
        Ok(())
    }
}

impl streams::HostOutputStream for Ctx {
    fn check_write(&mut self, s: Resource<OutputStream>) -> wasmtime::Result<Result<u64, StreamError>> {
        self.no_effect("output-stream.check-write", s.rep())?;
        Ok(Ok(MAX_IO))
    }

    fn write(
        &mut self,
        s: Resource<OutputStream>,
        contents: Vec<u8>,
    ) -> wasmtime::Result<Result<(), StreamError>> {
        if contents.len() as u64 > MAX_IO {
            return Err(wasmtime::Error::msg("output-stream.write of more than check-write allowed"));
        }
        self.write_stream("output-stream.write", s.rep(), &contents)
    }

    fn blocking_write_and_flush(
        &mut self,
        s: Resource<OutputStream>,
        contents: Vec<u8>,
    ) -> wasmtime::Result<Result<(), StreamError>> {
        if contents.len() > 4096 {
            return Err(wasmtime::Error::msg(
                "output-stream.blocking-write-and-flush of more than 4096 bytes",
            ));
        }
        self.write_stream("output-stream.blocking-write-and-flush", s.rep(), &contents)
    }

    fn flush(&mut self, s: Resource<OutputStream>) -> wasmtime::Result<Result<(), StreamError>> {
        self.no_effect("output-stream.flush", s.rep())?;
        Ok(Ok(()))
    }

    fn blocking_flush(&mut self, s: Resource<OutputStream>) -> wasmtime::Result<Result<(), StreamError>> {
        self.no_effect("output-stream.blocking-flush", s.rep())?;
        Ok(Ok(()))
    }

    fn subscribe(&mut self, s: Resource<OutputStream>) -> wasmtime::Result<Resource<Pollable>> {
        self.ready_pollable("output-stream.subscribe", s.rep())
    }

    fn write_zeroes(
        &mut self,
        s: Resource<OutputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<(), StreamError>> {
        let zeroes = vec![0u8; len.min(MAX_IO) as usize];
        self.write_stream("output-stream.write-zeroes", s.rep(), &zeroes)
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        s: Resource<OutputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<(), StreamError>> {
        let zeroes = vec![0u8; len.min(4096) as usize];
        self.write_stream("output-stream.blocking-write-zeroes-and-flush", s.rep(), &zeroes)
    }

    fn splice(
        &mut self,
        s: Resource<OutputStream>,
        src: Resource<InputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<u64, StreamError>> {
        let data = match self.read_stream("output-stream.splice", src.rep(), len)? {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        Ok(self.write_stream("output-stream.splice", s.rep(), &data)?.map(|()| data.len() as u64))
    }

    fn blocking_splice(
        &mut self,
        s: Resource<OutputStream>,
        src: Resource<InputStream>,
        len: u64,
    ) -> wasmtime::Result<Result<u64, StreamError>> {
        self.splice(s, src, len)
    }

    fn drop(&mut self, s: Resource<OutputStream>) -> wasmtime::Result<()> {
        self.forget(s.rep());
        Ok(())
    }
}

impl error::Host for Ctx {}

impl error::HostError for Ctx {
    fn to_debug_string(&mut self, e: Resource<Error>) -> wasmtime::Result<String> {
        let message = self.p2.errors.get(&e.rep()).map(|(m, _)| m.clone()).unwrap_or_default();
        self.call(
            "error.to-debug-string",
            json!({"error": e.rep()}),
            |_| json!({"errno": 0, "message": message}),
        )?;
        Ok(message)
    }

    fn drop(&mut self, e: Resource<Error>) -> wasmtime::Result<()> {
        self.forget(e.rep());
        Ok(())
    }
}

impl Ctx {
    /// Monotonic time now, for pollables (journaled: a replay sees the
    /// recorded time and so the same readiness).
    fn poll_now(&mut self, name: &str, args: Value) -> wasmtime::Result<u64> {
        let r = self.call(name, args, |_| match crate::wasm::host::sys::now(1) {
            Ok(t) => json!({"errno": 0, "time": t}),
            Err(e) => answer(e),
        })?;
        Ok(field(&r, "time"))
    }

    fn ready_at(&self, p: u32) -> wasmtime::Result<Option<u64>> {
        self.p2
            .pollables
            .get(&p)
            .copied()
            .ok_or_else(|| wasmtime::Error::msg(format!("pollable handle {p} is not open")))
    }

    /// Waits until the earliest of `ps` is ready (live only), then says
    /// which are ready.
    fn wait(&mut self, name: &str, ps: &[u32]) -> wasmtime::Result<Vec<u32>> {
        let mut at = Vec::with_capacity(ps.len());
        for p in ps {
            at.push(self.ready_at(*p)?);
        }
        let earliest = at.iter().map(|a| a.unwrap_or(0)).min().unwrap_or(0);
        if self.journal.is_live() {
            // Never past the run's deadline: the epoch stops the capsule
            // once it is back in Wasm.
            let now = crate::wasm::host::sys::now(1).unwrap_or(0);
            let left = self.limits.deadline.saturating_duration_since(std::time::Instant::now());
            if earliest > now {
                std::thread::sleep(std::time::Duration::from_nanos(earliest - now).min(left));
            }
        }
        let now = self.poll_now(name, json!({"pollables": ps}))?;
        Ok(at.iter().enumerate().filter(|(_, a)| a.unwrap_or(0) <= now).map(|(i, _)| i as u32).collect())
    }
}

impl poll::Host for Ctx {
    fn poll(&mut self, ps: Vec<Resource<Pollable>>) -> wasmtime::Result<Vec<u32>> {
        if ps.is_empty() {
            return Err(wasmtime::Error::msg("poll of an empty list"));
        }
        let reps: Vec<u32> = ps.iter().map(Resource::rep).collect();
        self.wait("poll", &reps)
    }
}

impl poll::HostPollable for Ctx {
    fn ready(&mut self, p: Resource<Pollable>) -> wasmtime::Result<bool> {
        let at = self.ready_at(p.rep())?;
        let now = self.poll_now("pollable.ready", json!({"pollable": p.rep()}))?;
        Ok(at.unwrap_or(0) <= now)
    }

    fn block(&mut self, p: Resource<Pollable>) -> wasmtime::Result<()> {
        self.wait("pollable.block", &[p.rep()])?;
        Ok(())
    }

    fn drop(&mut self, p: Resource<Pollable>) -> wasmtime::Result<()> {
        self.forget(p.rep());
        Ok(())
    }
}
