//! Clocks and random bytes. Neither has an error result in WASI 0.2, so a
//! call the policy denies stops the run ([`DeniedNoError`]) instead of
//! answering something false.

use rand_core::RngCore as _;
use serde_json::{Value, json};
use wasmtime::component::Resource;

use super::{
    DeniedNoError,
    wasi::{
        clocks::{monotonic_clock, wall_clock},
        io::poll::Pollable,
        random::{insecure, insecure_seed, random},
    },
};
use crate::wasm::{
    gate::Facility,
    host::{Ctx, Live, bytes_of, errno, field, sys::now},
};

/// preview1 clock ids.
const REALTIME: i32 = 0;
const MONOTONIC: i32 = 1;
/// At most this many random bytes per call.
const MAX_RANDOM: u64 = 1 << 20;

impl Ctx {
    /// A call that needs `facility`: denied (and enforced) stops the run.
    fn must_allow(
        &mut self,
        name: &str,
        args: Value,
        what: &'static str,
        facility: Facility<'static>,
        perform: impl FnOnce(&mut Live) -> Value,
    ) -> wasmtime::Result<Value> {
        let r = self.call(name, args, |live| {
            if !live.allow(&facility) {
                return json!({"errno": errno::ACCES});
            }
            perform(live)
        })?;
        if field(&r, "errno") != 0 {
            return Err(DeniedNoError { call: name.into(), what }.into());
        }
        Ok(r)
    }

    fn clock(&mut self, name: &str, args: Value, id: i32) -> wasmtime::Result<u64> {
        let r = self.must_allow(name, args, "a clock", Facility::Clock, |_| match now(id) {
            Ok(t) => json!({"errno": 0, "time": t}),
            Err(e) => json!({"errno": e}),
        })?;
        Ok(field(&r, "time"))
    }

    fn random(&mut self, name: &str, len: u64) -> wasmtime::Result<Vec<u8>> {
        let len = len.min(MAX_RANDOM);
        let r = self.must_allow(name, json!({"len": len}), "random data", Facility::Random, |_| {
            let mut bytes = vec![0u8; len as usize];
            rand_core::OsRng.fill_bytes(&mut bytes);
            json!({"errno": 0, "data": hex::encode(bytes)})
        })?;
        Ok(bytes_of(&r, "data"))
    }

    fn random_u64(&mut self, name: &str) -> wasmtime::Result<u64> {
        let b = self.random(name, 8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }

    /// A pollable ready at monotonic time `at` (ns).
    fn timer(&mut self, name: &str, args: Value, at: impl FnOnce(u64) -> u64) -> wasmtime::Result<u32> {
        let now = self.clock(name, args, MONOTONIC)?;
        let h = self.p2.handle();
        self.p2.pollables.insert(h, Some(at(now)));
        Ok(h)
    }
}

impl wall_clock::Host for Ctx {
    fn now(&mut self) -> wasmtime::Result<wall_clock::Datetime> {
        let t = self.clock("wall-clock.now", json!({}), REALTIME)?;
        Ok(wall_clock::Datetime { seconds: t / 1_000_000_000, nanoseconds: (t % 1_000_000_000) as u32 })
    }

    fn resolution(&mut self) -> wasmtime::Result<wall_clock::Datetime> {
        self.clock("wall-clock.resolution", json!({}), REALTIME)?;
        Ok(wall_clock::Datetime { seconds: 0, nanoseconds: 1 })
    }
}

impl monotonic_clock::Host for Ctx {
    fn now(&mut self) -> wasmtime::Result<u64> {
        self.clock("monotonic-clock.now", json!({}), MONOTONIC)
    }

    fn resolution(&mut self) -> wasmtime::Result<u64> {
        self.clock("monotonic-clock.resolution", json!({}), MONOTONIC)?;
        Ok(1)
    }

    fn subscribe_instant(&mut self, when: u64) -> wasmtime::Result<Resource<Pollable>> {
        let h = self.timer("monotonic-clock.subscribe-instant", json!({"when": when}), |_| when)?;
        Ok(Resource::new_own(h))
    }

    fn subscribe_duration(&mut self, when: u64) -> wasmtime::Result<Resource<Pollable>> {
        let h = self.timer("monotonic-clock.subscribe-duration", json!({"when": when}), |now| {
            now.saturating_add(when)
        })?;
        Ok(Resource::new_own(h))
    }
}

impl random::Host for Ctx {
    fn get_random_bytes(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
        self.random("get-random-bytes", len)
    }

    fn get_random_u64(&mut self) -> wasmtime::Result<u64> {
        self.random_u64("get-random-u64")
    }
}

impl insecure::Host for Ctx {
    fn get_insecure_random_bytes(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
        self.random("get-insecure-random-bytes", len)
    }

    fn get_insecure_random_u64(&mut self) -> wasmtime::Result<u64> {
        self.random_u64("get-insecure-random-u64")
    }
}

impl insecure_seed::Host for Ctx {
    fn insecure_seed(&mut self) -> wasmtime::Result<(u64, u64)> {
        let b = self.random("insecure-seed", 16)?;
        let (lo, hi) = b.split_at(8.min(b.len()));
        Ok((
            u64::from_le_bytes(lo.try_into().unwrap_or_default()),
            u64::from_le_bytes(hi.try_into().unwrap_or_default()),
        ))
    }
}
