//! A blocking client for the CLI.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
};

use super::protocol::{ApiError, Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to the agent at {path}: {source} (is `forge agent run` running?)")]
    Connect { path: String, source: io::Error },
    #[error("talking to the agent: {0}")]
    Io(#[from] io::Error),
    #[error("the agent's answer is not valid: {0}")]
    Decode(#[from] serde_json::Error),
    /// The agent answered with an error (its details, if any, are kept).
    #[error("the agent refused: {}", .0.message)]
    Api(ApiError),
}

impl From<ApiError> for ClientError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

/// Sends one request and returns the result.
pub fn call(socket: &Path, req: &Request) -> Result<serde_json::Value, ClientError> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|source| ClientError::Connect { path: socket.display().to_string(), source })?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer)?;
    let resp: Response = serde_json::from_str(&answer)?;
    Ok(resp.into_result()?)
}
