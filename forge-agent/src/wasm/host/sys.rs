//! Args, environment, clocks, random bytes, yield and exit.

use rand_core::RngCore as _;
use serde_json::{Value, json};
use wasmtime::Caller;

use super::{Ctx, Exit, answer, bytes_of, errno, errno_of, field, fs::ok_or_errno, mem, memory};
use crate::wasm::gate::Facility;

/// `NAME=value\0...` strings as WASI lays out argv and environ: pointers
/// at `ptrs`, the strings at `buf`.
fn put_strings(mem: &mut [u8], ptrs: i32, buf: i32, items: &[String]) -> Result<(), errno::Errno> {
    let mut at = buf;
    for (i, s) in items.iter().enumerate() {
        mem::put_u32(mem, ptrs.wrapping_add(i as i32 * 4), at as u32)?;
        mem::put(mem, at, s.as_bytes())?;
        mem::put(mem, at.wrapping_add(s.len() as i32), &[0])?;
        at = at.wrapping_add(s.len() as i32 + 1);
    }
    Ok(())
}

fn strings(v: &Value, name: &str) -> Vec<String> {
    v.get(name)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

fn sizes(mem: &mut [u8], items: &[String], count: i32, size: i32) -> Result<(), errno::Errno> {
    mem::put_u32(mem, count, items.len() as u32)?;
    mem::put_u32(mem, size, items.iter().map(|s| s.len() as u32 + 1).sum())
}

pub fn args_sizes_get(mut c: Caller<'_, Ctx>, count: i32, size: i32) -> wasmtime::Result<i32> {
    let (mem, ctx) = memory(&mut c)?;
    let r = ctx.call("args_sizes_get", json!({}), |live| json!({"errno": 0, "args": live.args}))?;
    ok_or_errno!(sizes(mem, &strings(&r, "args"), count, size));
    Ok(i32::from(errno_of(&r)))
}

pub fn args_get(mut c: Caller<'_, Ctx>, ptrs: i32, buf: i32) -> wasmtime::Result<i32> {
    let (mem, ctx) = memory(&mut c)?;
    let r = ctx.call("args_get", json!({}), |live| json!({"errno": 0, "args": live.args}))?;
    ok_or_errno!(put_strings(mem, ptrs, buf, &strings(&r, "args")));
    Ok(i32::from(errno_of(&r)))
}

/// The variables the gate lets the capsule see, as `NAME=value`; the
/// others are left out (and recorded as denied).
pub(super) fn visible_env(live: &mut super::Live) -> Value {
    let vars = live.env.clone();
    let mut env = Vec::new();
    let mut denied = Vec::new();
    for (k, v) in vars {
        if live.allow(&Facility::Env(&k)) {
            env.push(format!("{k}={v}"));
        } else {
            denied.push(k);
        }
    }
    json!({"errno": 0, "env": env, "denied": denied})
}

pub fn environ_sizes_get(mut c: Caller<'_, Ctx>, count: i32, size: i32) -> wasmtime::Result<i32> {
    let (mem, ctx) = memory(&mut c)?;
    let r = ctx.call("environ_sizes_get", json!({}), visible_env)?;
    ok_or_errno!(sizes(mem, &strings(&r, "env"), count, size));
    Ok(i32::from(errno_of(&r)))
}

pub fn environ_get(mut c: Caller<'_, Ctx>, ptrs: i32, buf: i32) -> wasmtime::Result<i32> {
    let (mem, ctx) = memory(&mut c)?;
    let r = ctx.call("environ_get", json!({}), visible_env)?;
    ok_or_errno!(put_strings(mem, ptrs, buf, &strings(&r, "env")));
    Ok(i32::from(errno_of(&r)))
}

pub(super) fn now(id: i32) -> Result<u64, errno::Errno> {
    use nix::time::{ClockId, clock_gettime};
    let clock = match id {
        0 => ClockId::CLOCK_REALTIME,
        1 => ClockId::CLOCK_MONOTONIC,
        2 => ClockId::CLOCK_PROCESS_CPUTIME_ID,
        3 => ClockId::CLOCK_THREAD_CPUTIME_ID,
        _ => return Err(errno::INVAL),
    };
    let t = clock_gettime(clock).map_err(|_| errno::INVAL)?;
    Ok(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
}

pub fn clock_time_get(mut c: Caller<'_, Ctx>, id: i32, _precision: i64, out: i32) -> wasmtime::Result<i32> {
    let (mem, ctx) = memory(&mut c)?;
    let r = ctx.call("clock_time_get", json!({"id": id}), |live| {
        if !live.allow(&Facility::Clock) {
            return answer(errno::ACCES);
        }
        match now(id) {
            Ok(t) => json!({"errno": 0, "time": t}),
            Err(e) => answer(e),
        }
    })?;
    let e = errno_of(&r);
    if e == 0 {
        ok_or_errno!(mem::put_u64(mem, out, field(&r, "time")));
    }
    Ok(i32::from(e))
}

pub fn clock_res_get(mut c: Caller<'_, Ctx>, id: i32, out: i32) -> wasmtime::Result<i32> {
    let (mem, ctx) = memory(&mut c)?;
    let r = ctx.call("clock_res_get", json!({"id": id}), |live| {
        if !live.allow(&Facility::Clock) {
            return answer(errno::ACCES);
        }
        if (0..=3).contains(&id) { json!({"errno": 0, "res": 1}) } else { answer(errno::INVAL) }
    })?;
    let e = errno_of(&r);
    if e == 0 {
        ok_or_errno!(mem::put_u64(mem, out, field(&r, "res")));
    }
    Ok(i32::from(e))
}

pub fn random_get(mut c: Caller<'_, Ctx>, buf: i32, len: i32) -> wasmtime::Result<i32> {
    let (mem, ctx) = memory(&mut c)?;
    let len = (len as u32).min(1 << 20);
    let r = ctx.call("random_get", json!({"len": len}), |live| {
        if !live.allow(&Facility::Random) {
            return answer(errno::ACCES);
        }
        let mut bytes = vec![0u8; len as usize];
        rand_core::OsRng.fill_bytes(&mut bytes);
        json!({"errno": 0, "data": hex::encode(bytes)})
    })?;
    let e = errno_of(&r);
    if e == 0 {
        ok_or_errno!(mem::put(mem, buf, &bytes_of(&r, "data")));
    }
    Ok(i32::from(e))
}

pub fn sched_yield(mut c: Caller<'_, Ctx>) -> wasmtime::Result<i32> {
    let (_, ctx) = memory(&mut c)?;
    let r = ctx.call("sched_yield", json!({}), |_| answer(0))?;
    Ok(i32::from(errno_of(&r)))
}

pub fn proc_exit(mut c: Caller<'_, Ctx>, code: i32) -> wasmtime::Result<()> {
    let (_, ctx) = memory(&mut c)?;
    ctx.call("proc_exit", json!({"code": code}), |_| answer(0))?;
    Err(Exit(code).into())
}
