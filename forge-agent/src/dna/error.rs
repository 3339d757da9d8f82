//! The errors of the trace store, and the findings of a reader or verifier:
//! where a trace stops being trustworthy ([`Problem`]) and where a crash cut
//! the last record short ([`TornTail`]).

use std::{fmt, path::PathBuf};

use serde::Serialize;

/// Errors of the `dna` module. A damaged trace is [`DnaError::Corrupt`],
/// naming the file, the record and its byte offset.
#[derive(Debug, thiserror::Error)]
pub enum DnaError {
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Corrupt { path: PathBuf, problem: Problem },
    #[error("{path} already exists; a trace is created once and then only appended to")]
    Exists { path: PathBuf },
    #[error("workload id {id:?}: use 1-128 characters from A-Z a-z 0-9 . _ - , not starting with '.'")]
    BadWorkloadId { id: String },
    #[error("{path} is the trace of workload {found:?}, not {expected:?}")]
    WrongWorkload { path: PathBuf, expected: String, found: String },
    #[error("{path}: a {kind} record is {size} bytes, more than the {max}-byte limit")]
    TooLarge { path: PathBuf, kind: &'static str, size: usize, max: usize },
    #[error("{path}: cannot replay: {reason}")]
    NotReplayable { path: PathBuf, reason: &'static str },
    #[error("{path}: a {kind} record cannot be appended (the writer makes those itself)")]
    NotAppendable { path: PathBuf, kind: &'static str },
    #[error("{path}: could not encode a {kind} record: {source}")]
    Encode {
        path: PathBuf,
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{path}: an earlier write or fsync failed, so the file may end in a partial record; reopen the trace"
    )]
    Poisoned { path: PathBuf },
}

/// The first place where a trace fails a check. `index` is the record's
/// position (0 is the identity record); `None` means the file header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub index: Option<u64>,
    /// Byte offset of the record (or header) in the file.
    pub offset: u64,
    pub reason: Reason,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "record {i}: {} (byte {})", self.reason, self.offset),
            None => write!(f, "file header: {}", self.reason),
        }
    }
}

/// As JSON: the fields, and `message`, the text a person reads.
impl Serialize for Problem {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut st = s.serialize_struct("Problem", 4)?;
        st.serialize_field("index", &self.index)?;
        st.serialize_field("offset", &self.offset)?;
        st.serialize_field("reason", &self.reason)?;
        st.serialize_field("message", &self.to_string())?;
        st.end()
    }
}

/// Why a record (or the header) fails.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Reason {
    #[error("not a ForgeOne trace (bad magic)")]
    BadMagic,
    #[error("unsupported trace format version {version}")]
    Version { version: u32 },
    #[error("unknown header flags {flags:#x}")]
    Flags { flags: u32 },
    #[error("file ends inside the header")]
    ShortHeader,
    #[error("bad length field")]
    BadLength,
    #[error("implausible record length {len}")]
    Length { len: u32 },
    #[error("checksum mismatch")]
    ChecksumMismatch,
    #[error("prev hash mismatch")]
    PrevHashMismatch,
    #[error("unknown record kind {kind}")]
    UnknownKind { kind: u8 },
    #[error("bad {kind} payload: {message}")]
    BadPayload { kind: &'static str, message: String },
    #[error("the first record is a {kind} record, not the identity")]
    NotIdentity { kind: &'static str },
    #[error("a second identity record")]
    SecondIdentity,
    #[error("no records: the identity record is missing")]
    Empty,
    #[error("checkpoint claims to be record {claimed}")]
    CheckpointIndex { claimed: u64 },
    #[error("bad checkpoint signature")]
    BadCheckpointSignature,
    #[error("checkpoint signed by key {key_id}, not the trusted key")]
    UntrustedKey { key_id: String },
    #[error("the trace ends before any checkpoint: nothing in it is signed")]
    Unsigned,
}

/// A last record cut short (a crash mid-write): `bytes` bytes from `offset`
/// to the end of the file. Every record before it is intact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TornTail {
    pub offset: u64,
    pub bytes: u64,
}

impl fmt::Display for TornTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "torn last record: {} bytes from byte {} (a crash mid-write)", self.bytes, self.offset)
    }
}
