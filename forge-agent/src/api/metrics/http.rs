//! Plain HTTP/1.x for the metrics endpoint: `GET /metrics` (and `HEAD`), one
//! request per connection. The request head is read with a size and a time
//! limit and never trusted: anything else gets an error status and the
//! connection is closed. The text comes from the daemon's task through a
//! channel; nothing a client sends reaches the daemon but "render now".

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc, oneshot},
};

/// A scrape on its way to the daemon, with where to send the exposition.
pub type Scrape = oneshot::Sender<String>;

/// The one path served.
pub const PATH: &str = "/metrics";
/// The largest request head (request line and headers) read.
pub const MAX_HEAD: usize = 8 * 1024;
/// The media type of [`super::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// How long a client may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a scrape waits for the daemon's answer.
const RENDER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 16;

/// What to do with a request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Answer with the metrics (`head`: headers only).
    Metrics { head: bool },
    /// Answer with this error status.
    Error(u16),
}

/// Routes a request head (request line first; the headers are not needed).
pub fn route(head: &[u8]) -> Route {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else { return Route::Error(400) };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::Error(400);
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) || !target.starts_with('/') {
        return Route::Error(400);
    }
    match version {
        "HTTP/1.0" | "HTTP/1.1" => {}
        v if v.starts_with("HTTP/") => return Route::Error(505),
        _ => return Route::Error(400),
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path != PATH {
        return Route::Error(404);
    }
    match method {
        "GET" => Route::Metrics { head: false },
        "HEAD" => Route::Metrics { head: true },
        _ => Route::Error(405),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// A whole response; the connection closes after it.
pub fn response(status: u16, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    if status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(body);
    }
    out.into_bytes()
}

fn error(status: u16) -> Vec<u8> {
    response(status, "text/plain; charset=utf-8", &format!("{status} {}\n", reason(status)), false)
}

/// Where the request head ends (after the blank line), if it has.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Reads the request head: `Err(status)` if it is too large or never ends;
/// `Err(0)` if the client went away.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, u16> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let read = async {
        loop {
            let n = stream.read(&mut chunk).await.map_err(|_| 0u16)?;
            if n == 0 {
                return Err(0);
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = head_end(&buf) {
                buf.truncate(end);
                return Ok(());
            }
            if buf.len() > MAX_HEAD {
                return Err(431);
            }
        }
    };
    match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(Ok(())) => Ok(buf),
        Ok(Err(status)) => Err(status),
        Err(_) => Err(408),
    }
}

/// Accepts connections until the task is aborted, each in its own task.
pub async fn serve(listener: TcpListener, scrapes: mpsc::Sender<Scrape>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        match listener.accept().await {
            Ok((stream, _)) => {
                let scrapes = scrapes.clone();
                tokio::spawn(async move {
                    connection(stream, scrapes).await;
                    drop(slot);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a metrics connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(mut stream: TcpStream, scrapes: mpsc::Sender<Scrape>) {
    let out = match read_head(&mut stream).await {
        Err(0) => return,
        Err(status) => error(status),
        Ok(head) => match route(&head) {
            Route::Error(status) => error(status),
            Route::Metrics { head } => match render(&scrapes).await {
                Some(text) => response(200, CONTENT_TYPE, &text, head),
                None => error(503),
            },
        },
    };
    if let Err(e) = stream.write_all(&out).await {
        tracing::debug!(error = %e, "writing a metrics response");
        return;
    }
    let _ = stream.shutdown().await;
    // Closing with unread input would reset the connection and could lose
    // the answer: read (and drop) what the client still sends, briefly.
    let mut sink = [0u8; 1024];
    let drain = async {
        let mut left = 4 * MAX_HEAD;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// Asks the daemon's task for the exposition.
async fn render(scrapes: &mpsc::Sender<Scrape>) -> Option<String> {
    let (tx, rx) = oneshot::channel();
    scrapes.send(tx).await.ok()?;
    tokio::time::timeout(RENDER_TIMEOUT, rx).await.ok()?.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_get_and_head_of_metrics_only() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Route::Metrics { head: false });
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics { head: false });
        assert_eq!(route(b"HEAD /metrics HTTP/1.1\r\n\r\n"), Route::Metrics { head: true });
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::Error(405));
        assert_eq!(route(b"DELETE /metrics HTTP/1.1\r\n\r\n"), Route::Error(405));
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::Error(404));
        assert_eq!(route(b"GET /metricsx HTTP/1.1\r\n\r\n"), Route::Error(404));
        assert_eq!(route(b"POST /other HTTP/1.1\r\n\r\n"), Route::Error(404));
        assert_eq!(route(b"GET /metrics HTTP/2.0\r\n\r\n"), Route::Error(505));
    }

    #[test]
    fn bad_request_lines_are_400() {
        for bad in [
            &b""[..],
            b"\r\n\r\n",
            b"GET\r\n\r\n",
            b"GET /metrics\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b" GET /metrics HTTP/1.1\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET http://host/metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics FTP/1.1\r\n\r\n",
            b"GET /metrics \xff\xfe\r\n\r\n",
            b"\x00\x01\x02 / HTTP/1.1",
        ] {
            assert_eq!(route(bad), Route::Error(400), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn responses_carry_length_type_and_close() {
        let r = String::from_utf8(response(200, CONTENT_TYPE, "a 1\n# EOF\n", false)).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Length: 10\r\n"), "{r}");
        assert!(r.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")), "{r}");
        assert!(r.contains("Connection: close\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\na 1\n# EOF\n"), "{r}");
        let h = String::from_utf8(response(200, CONTENT_TYPE, "a 1\n", true)).unwrap();
        assert!(h.contains("Content-Length: 4\r\n") && h.ends_with("\r\n\r\n"), "{h}");
        let e = String::from_utf8(error(405)).unwrap();
        assert!(
            e.starts_with("HTTP/1.1 405 Method Not Allowed\r\n") && e.contains("Allow: GET, HEAD\r\n"),
            "{e}"
        );
    }

    #[test]
    fn head_ends_at_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
        assert_eq!(head_end(b""), None);
    }

    /// A real socket: a scrape is answered from the channel; bad, oversized
    /// and silent clients get their status; the server keeps serving.
    #[test]
    fn serves_over_tcp_and_survives_bad_clients() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, mut rx) = mpsc::channel::<Scrape>(4);
            let server = tokio::spawn(serve(listener, tx));
            tokio::spawn(async move {
                while let Some(reply) = rx.recv().await {
                    let _ = reply.send("forge_x 1\n# EOF\n".to_string());
                }
            });
            let ask = |req: Vec<u8>| async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let _ = s.write_all(&req).await;
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out).await;
                String::from_utf8_lossy(&out).into_owned()
            };
            let ok = ask(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()).await;
            assert!(ok.starts_with("HTTP/1.1 200 OK") && ok.ends_with("forge_x 1\n# EOF\n"), "{ok}");
            assert!(ask(b"garbage\r\n\r\n".to_vec()).await.starts_with("HTTP/1.1 400"));
            assert!(ask(b"PUT /metrics HTTP/1.1\r\n\r\n".to_vec()).await.starts_with("HTTP/1.1 405"));
            let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
            big.resize(MAX_HEAD * 2, b'a');
            assert!(ask(big).await.starts_with("HTTP/1.1 431"));
            // A client that connects and closes without a word.
            drop(TcpStream::connect(addr).await.unwrap());
            let again = ask(b"GET /metrics HTTP/1.0\r\n\r\n".to_vec()).await;
            assert!(again.starts_with("HTTP/1.1 200 OK"), "{again}");
            server.abort();
        });
    }
}
