//! The unix-socket listener: reads request lines, hands them to the daemon's
//! task with the caller the kernel names, writes the answers. A bad request
//! gets an error answer; the connection and the daemon carry on. A caller
//! who is neither root nor in the API group is refused here, before any
//! request is read.

use std::{
    io,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::Path,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use super::{
    caller::Caller,
    protocol::{MAX_REQUEST, Request, Response, parse_request},
};

/// A request on its way to the daemon, with who made it and where to send
/// the answer.
pub type Call = (Request, Caller, oneshot::Sender<Response>);

/// Binds the socket (removing a stale one). Its directory is made if
/// missing (mode 0755) and otherwise left as it is. The socket is
/// readable and writable by root only, or by root and `group` (mode 0660).
pub fn bind(path: &Path, group: Option<u32>) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    match group {
        Some(gid) => {
            std::os::unix::fs::chown(path, Some(0), Some(gid))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
        }
        None => std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?,
    }
    Ok(listener)
}

/// Accepts connections forever, each in its own task. `group`: the API
/// group, whose members may call besides root.
pub async fn serve(listener: UnixListener, calls: mpsc::Sender<Call>, group: Option<u32>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, calls.clone(), group));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting an API connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(stream: UnixStream, calls: mpsc::Sender<Call>, group: Option<u32>) {
    let caller = match Caller::of(&stream) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "API connection without peer credentials; closed");
            return;
        }
    };
    let (read, mut write) = stream.into_split();
    if !caller.allowed(group) {
        tracing::warn!(
            pid = caller.pid,
            uid = caller.uid,
            "API caller refused: not root and not in the API group"
        );
        let who = match group {
            Some(g) => format!("root and members of group {g}"),
            None => "root".to_string(),
        };
        let refusal = Response::err(super::ApiError::new(
            super::ErrorCode::Forbidden,
            format!("uid {} may not use the agent's API (it answers {who}; see --api-group)", caller.uid),
        ));
        let mut out = serde_json::to_vec(&refusal).unwrap_or_default();
        out.push(b'\n');
        // Read (and drop) the caller's first line before answering, so the
        // refusal is what it reads, not a broken pipe; nothing is parsed.
        let mut line = Vec::new();
        let mut first = BufReader::new(read).take((MAX_REQUEST + 1) as u64);
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), first.read_until(b'\n', &mut line)).await;
        let _ = write.write_all(&out).await;
        return;
    }
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let limit = (MAX_REQUEST + 1) as u64;
        let n = match (&mut reader).take(limit).read_until(b'\n', &mut line).await {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "API connection read");
                return;
            }
        };
        let oversized = n as u64 >= limit && line.last() != Some(&b'\n');
        let response = if oversized {
            Response::err(super::ApiError::new(
                super::ErrorCode::BadRequest,
                format!("request exceeds {MAX_REQUEST} bytes"),
            ))
        } else {
            match parse_request(line.trim_ascii()) {
                Err(e) => Response::err(e),
                Ok(req) => {
                    let (tx, rx) = oneshot::channel();
                    if calls.send((req, caller, tx)).await.is_err() {
                        return;
                    }
                    match rx.await {
                        Ok(r) => r,
                        Err(_) => return,
                    }
                }
            }
        };
        let mut out = serde_json::to_vec(&response).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
        out.push(b'\n');
        if write.write_all(&out).await.is_err() {
            return;
        }
        if oversized {
            // The rest of the oversized line cannot be resynchronised.
            return;
        }
    }
}
