//! Reading a trace: its records in order, each checked against the chain
//! (checksum and link) as it is read, and the decision events for replay.
//! Signatures are checked by [`verify`](super::verify), not here.

use std::{
    fs::File,
    io::{BufReader, Read},
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::{
    chain::Hash,
    error::{DnaError, Problem, Reason, TornTail},
    frame::{FrameReader, ReadError, Step},
    record::{Identity, Record},
};
use crate::events::DecisionEvent;

/// A record and where it sits in the trace.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub index: u64,
    /// Byte offset of the record in the file.
    pub offset: u64,
    pub prev: Hash,
    pub hash: Hash,
    #[serde(flatten)]
    pub record: Record,
}

/// A trace file opened for reading. Opening reads the header and the
/// identity record; everything else is read by the iterators.
#[derive(Debug)]
pub struct Trace {
    path: PathBuf,
    identity: Identity,
}

impl Trace {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DnaError> {
        let path = path.as_ref();
        let mut records = Records::open(path)?;
        match records.next() {
            Some(Ok(Entry { record: Record::Identity(identity), .. })) => {
                Ok(Self { path: path.to_path_buf(), identity })
            }
            Some(Err(e)) => Err(e),
            // The frame reader only yields an identity record first.
            _ => Err(DnaError::Corrupt {
                path: path.to_path_buf(),
                problem: Problem { index: Some(0), offset: 0, reason: Reason::Empty },
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Every record from the identity on. The iterator yields an error at
    /// the first damaged record and then stops; a torn tail just ends it
    /// (see [`Records::torn_tail`]).
    pub fn records(&self) -> Result<Records, DnaError> {
        Records::open(&self.path)
    }

    /// The replay API: every decision event in trace order, both reported
    /// decisions and sampled allowed events, as the scorer first saw them.
    pub fn events(&self) -> Result<impl Iterator<Item = Result<DecisionEvent, DnaError>>, DnaError> {
        Ok(self.records()?.filter_map(|e| match e {
            Ok(Entry { record: Record::Decision(ev) | Record::SampledAllowed(ev), .. }) => Some(Ok(ev)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        }))
    }
}

/// Iterator over the records of a trace; see [`Trace::records`].
pub struct Records<R = BufReader<File>> {
    path: PathBuf,
    frames: FrameReader<R>,
    torn: Option<TornTail>,
    done: bool,
}

impl Records {
    /// Opens a trace file and checks its header.
    pub fn open(path: &Path) -> Result<Self, DnaError> {
        let file = File::open(path).map_err(|source| DnaError::Io {
            path: path.to_path_buf(),
            op: "open",
            source,
        })?;
        Self::from_reader(BufReader::with_capacity(1 << 16, file), path)
    }
}

impl<R: Read> Records<R> {
    /// Reads a trace from any reader; `path` names it in errors.
    pub fn from_reader(reader: R, path: &Path) -> Result<Self, DnaError> {
        let frames = FrameReader::new(reader).map_err(|e| error(path, e))?;
        Ok(Self { path: path.to_path_buf(), frames, torn: None, done: false })
    }

    /// The torn last record the iterator stopped at, if it did.
    pub fn torn_tail(&self) -> Option<TornTail> {
        self.torn
    }

    /// What record 0 links to (valid once it has been read).
    pub fn genesis(&self) -> Hash {
        self.frames.genesis()
    }

    /// Where the last good record ends.
    pub fn offset(&self) -> u64 {
        self.frames.offset()
    }
}

impl<R: Read> Iterator for Records<R> {
    type Item = Result<Entry, DnaError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let frame = match self.frames.next() {
            Ok(Step::Frame(f)) => f,
            Ok(Step::End) => {
                self.done = true;
                return None;
            }
            Ok(Step::Torn(t)) => {
                self.done = true;
                self.torn = Some(t);
                return None;
            }
            Err(e) => {
                self.done = true;
                return Some(Err(error(&self.path, e)));
            }
        };
        match Record::decode(frame.kind, &frame.payload) {
            Ok(record) => Some(Ok(Entry {
                index: frame.index,
                offset: frame.offset,
                prev: frame.prev,
                hash: frame.hash,
                record,
            })),
            Err(reason) => {
                self.done = true;
                let problem = Problem { index: Some(frame.index), offset: frame.offset, reason };
                Some(Err(DnaError::Corrupt { path: self.path.clone(), problem }))
            }
        }
    }
}

pub(crate) fn error(path: &Path, e: ReadError) -> DnaError {
    match e {
        ReadError::Io(source) => DnaError::Io { path: path.to_path_buf(), op: "read", source },
        ReadError::Bad(problem) => DnaError::Corrupt { path: path.to_path_buf(), problem },
    }
}
