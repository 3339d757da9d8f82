//! The unix-socket listener: reads request lines, hands them to the daemon's
//! task, writes the answers. A bad request gets an error answer; the
//! connection and the daemon carry on.

use std::{io, os::unix::fs::PermissionsExt as _, path::Path};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use super::protocol::{MAX_REQUEST, Request, Response, parse_request};

/// A request on its way to the daemon, with where to send the answer.
pub type Call = (Request, oneshot::Sender<Response>);

/// Binds the socket (removing a stale one), readable and writable by root only.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts connections forever, each in its own task.
pub async fn serve(listener: UnixListener, calls: mpsc::Sender<Call>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, calls.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting an API connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(stream: UnixStream, calls: mpsc::Sender<Call>) {
    let (read, mut write) = stream.into_split();
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
                    if calls.send((req, tx)).await.is_err() {
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
