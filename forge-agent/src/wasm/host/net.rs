//! `forge.sock_connect(addr, addr_len, fd_out) -> errno`: a TCP connection
//! to `IP:PORT` (a UTF-8 string), gated as `net.connect`. WASI preview1 has
//! no way to open a socket; C capsules declare this import themselves:
//!
//! ```c
//! __attribute__((import_module("forge"), import_name("sock_connect")))
//! int forge_sock_connect(const char *addr, size_t len, int *fd);
//! ```
//!
//! The descriptor it gives is read and written with `fd_read`/`fd_write`.

use std::{net::SocketAddr, time::Duration};

use serde_json::json;
use wasmtime::Caller;

use super::{Ctx, answer, errno, errno_of, fds::Fd, field, fs::ok_or_errno, mem, memory};
use crate::wasm::gate::Facility;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub fn sock_connect(mut c: Caller<'_, Ctx>, addr: i32, len: i32, out: i32) -> wasmtime::Result<i32> {
    let (mem, ctx) = memory(&mut c)?;
    let text = ok_or_errno!(mem::str_at(mem, addr, len)).to_string();
    let r = ctx.call("sock_connect", json!({"addr": text}), |live| {
        let Ok(peer) = text.parse::<SocketAddr>() else {
            return answer(errno::INVAL);
        };
        if !live.allow(&Facility::Connect(peer)) {
            return answer(errno::ACCES);
        }
        match std::net::TcpStream::connect_timeout(&peer, CONNECT_TIMEOUT) {
            Ok(stream) => match live.fds.insert(Fd::Socket { stream, peer }) {
                Ok(fd) => json!({"errno": 0, "fd": fd}),
                Err(e) => answer(e),
            },
            Err(e) => answer(errno::from_io(&e)),
        }
    })?;
    let e = errno_of(&r);
    if e == 0 {
        ok_or_errno!(mem::put_u32(mem, out, field(&r, "fd") as u32));
    }
    Ok(i32::from(e))
}
