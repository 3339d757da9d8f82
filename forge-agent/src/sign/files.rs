//! Small file helpers shared by the signing modules: bounded reads that do
//! not follow symlinks, and atomic replacement. They return `io::Error`; the
//! caller adds the path to its own error.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
};

/// What a bounded read found.
pub(crate) enum Read {
    Bytes(Vec<u8>),
    /// The file is larger than the limit (its size).
    TooLarge(u64),
    /// Not a regular file (a symlink, directory, device, ...).
    NotRegular,
}

/// Reads a regular file of at most `limit` bytes without following a
/// symlink in its last component.
pub(crate) fn read_regular(path: &Path, limit: u64) -> io::Result<Read> {
    let file =
        match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(Read::NotRegular),
            Err(e) => return Err(e),
        };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Read::NotRegular);
    }
    if meta.len() > limit {
        return Ok(Read::TooLarge(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Ok(Read::TooLarge(bytes.len() as u64));
    }
    Ok(Read::Bytes(bytes))
}

/// Why a state file (one the agent writes and reads back) cannot be used.
pub(crate) enum Unusable {
    Io(io::Error),
    /// Too large, or not a regular file: the reason.
    Not(String),
}

/// Reads a state file of at most `limit` bytes with [`read_regular`]; a
/// missing file is `None` (nothing recorded yet), anything else that is not
/// its bytes is [`Unusable`].
pub(crate) fn read_state(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, Unusable> {
    match read_regular(path, limit) {
        Ok(Read::Bytes(b)) => Ok(Some(b)),
        Ok(Read::TooLarge(size)) => Err(Unusable::Not(format!("{size} bytes, more than {limit}"))),
        Ok(Read::NotRegular) => Err(Unusable::Not("not a regular file".to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Unusable::Io(e)),
    }
}

/// Replaces `path` with `bytes` atomically: a temporary file in the same
/// directory, fsync, rename. Readers see the old or the new file, never half.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `path` with `mode` atomically (`O_CREAT|O_EXCL`: an existing file
/// or symlink is never followed or replaced) and writes `bytes`. On a failed
/// write the new file is removed.
pub(crate) fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
    let result = f.write_all(bytes).and_then(|()| f.sync_all());
    if result.is_err() {
        let _ = fs::remove_file(path);
    }
    result
}
