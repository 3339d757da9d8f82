//! The bytes on disk: the file header, record frames, and a reader that
//! checks each frame's length, checksum and link to the one before, and
//! tells a torn last record (a crash mid-write) from a damaged one.
//!
//! ```text
//! header  "FORGEDNA" | u32 version = 1 | u32 flags = 0                         (16 bytes)
//! record  u32 body_len | u32 !body_len | u8 kind | [32] prev | payload | [32] hash
//!         body_len = 1 + 32 + payload length;  hash = chain::record_hash(kind, prev, payload)
//! ```
//!
//! All integers are little-endian. `!body_len` (bitwise not) guards the
//! length: a damaged length field is reported as damage, not mistaken for a
//! record that runs past the end of the file.

use std::io::{self, Read};

use super::{
    chain::{self, Hash},
    error::{Problem, Reason, TornTail},
    record::{self, kind},
};

pub const MAGIC: [u8; 8] = *b"FORGEDNA";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 16;
/// The largest payload of one record (a quarantine snapshot can be big).
pub const MAX_PAYLOAD: usize = 16 << 20;
/// Length fields, kind and prev hash.
const PREFIX: usize = 4 + 4 + 1 + 32;
const MIN_BODY: u32 = 1 + 32;
const MAX_BODY: u32 = MIN_BODY + MAX_PAYLOAD as u32;

pub(crate) fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Starts a frame at the end of `out`; the caller appends the payload, then
/// calls [`finish`] with the returned start.
pub(crate) fn begin(out: &mut Vec<u8>, kind: u8, prev: &Hash) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    out.push(kind);
    out.extend_from_slice(&prev.0);
    start
}

/// Completes the frame begun at `start`: fills in the length fields and
/// appends the hash. A payload over [`MAX_PAYLOAD`] removes the frame again
/// and returns its size.
pub(crate) fn finish(out: &mut Vec<u8>, start: usize) -> Result<Hash, usize> {
    let payload_len = out.len() - start - PREFIX;
    if payload_len > MAX_PAYLOAD {
        out.truncate(start);
        return Err(payload_len);
    }
    let body_len = MIN_BODY + payload_len as u32;
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&(!body_len).to_le_bytes());
    let mut prev = Hash::default();
    prev.0.copy_from_slice(&out[start + 9..start + PREFIX]);
    let hash = chain::record_hash(out[start + 8], &prev, &out[start + PREFIX..]);
    out.extend_from_slice(&hash.0);
    Ok(hash)
}

/// One frame whose length, checksum and link were checked.
#[derive(Debug)]
pub(crate) struct Frame {
    pub index: u64,
    pub offset: u64,
    pub kind: u8,
    pub prev: Hash,
    pub hash: Hash,
    pub payload: Vec<u8>,
}

pub(crate) enum Step {
    Frame(Frame),
    /// The file ends on a record boundary.
    End,
    Torn(TornTail),
}

#[derive(Debug)]
pub(crate) enum ReadError {
    Io(io::Error),
    Bad(Problem),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// Reads frames in order, checking each against the chain so far.
pub(crate) struct FrameReader<R> {
    r: R,
    /// Offset of the next frame (the end of the last good one).
    offset: u64,
    /// Index of the next frame (the number of good ones so far).
    index: u64,
    head: Hash,
    genesis: Hash,
}

impl<R: Read> FrameReader<R> {
    /// Reads and checks the file header.
    pub fn new(mut r: R) -> Result<Self, ReadError> {
        let mut h = [0u8; HEADER_LEN];
        let n = read_full(&mut r, &mut h)?;
        let bad = |reason| ReadError::Bad(Problem { index: None, offset: 0, reason });
        if h[..n.min(MAGIC.len())] != MAGIC[..n.min(MAGIC.len())] {
            return Err(bad(Reason::BadMagic));
        }
        if n < HEADER_LEN {
            return Err(bad(Reason::ShortHeader));
        }
        let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        if version != VERSION {
            return Err(bad(Reason::Version { version }));
        }
        let flags = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
        if flags != 0 {
            return Err(bad(Reason::Flags { flags }));
        }
        Ok(Self { r, offset: HEADER_LEN as u64, index: 0, head: Hash::default(), genesis: Hash::default() })
    }

    /// The number of good frames read so far.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Where the last good frame ends.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The hash of the last good frame.
    pub fn head(&self) -> Hash {
        self.head
    }

    /// The genesis value, once the identity record has been read.
    pub fn genesis(&self) -> Hash {
        self.genesis
    }

    pub fn next(&mut self) -> Result<Step, ReadError> {
        let step = self.read_frame()?;
        if self.index == 0 && !matches!(step, Step::Frame(_)) {
            return Err(self.bad(Reason::Empty));
        }
        if let Step::Frame(f) = &step {
            self.offset += (PREFIX + f.payload.len() + 32) as u64;
            self.index += 1;
            self.head = f.hash;
        }
        Ok(step)
    }

    fn bad(&self, reason: Reason) -> ReadError {
        ReadError::Bad(Problem { index: Some(self.index), offset: self.offset, reason })
    }

    fn torn(&self, bytes: usize) -> Step {
        Step::Torn(TornTail { offset: self.offset, bytes: bytes as u64 })
    }

    fn read_frame(&mut self) -> Result<Step, ReadError> {
        let mut h = [0u8; 8];
        let n = read_full(&mut self.r, &mut h)?;
        if n == 0 {
            return Ok(Step::End);
        }
        if n < h.len() {
            return Ok(self.torn(n));
        }
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        if !len != u32::from_le_bytes([h[4], h[5], h[6], h[7]]) {
            // A file the filesystem extended but never filled (power loss)
            // ends in zeros: that is a torn tail too. Anything else is damage.
            if h == [0; 8]
                && let Some(rest) = zeros_to_end(&mut self.r)?
            {
                return Ok(self.torn(h.len() + rest));
            }
            return Err(self.bad(Reason::BadLength));
        }
        if !(MIN_BODY..=MAX_BODY).contains(&len) {
            return Err(self.bad(Reason::Length { len }));
        }
        let want = len as usize + 32;
        let mut body = Vec::with_capacity(want.min(1 << 16));
        (&mut self.r).take(want as u64).read_to_end(&mut body)?;
        if body.len() < want {
            return Ok(self.torn(h.len() + body.len()));
        }
        let hash = Hash(body[len as usize..].try_into().unwrap_or_default());
        body.truncate(len as usize);
        let tag = body[0];
        let prev = Hash(body[1..33].try_into().unwrap_or_default());
        let payload = body.split_off(33);
        if chain::record_hash(tag, &prev, &payload) != hash {
            return Err(self.bad(Reason::ChecksumMismatch));
        }
        if self.index == 0 {
            if tag != kind::IDENTITY {
                return Err(self.bad(Reason::NotIdentity { kind: record::kind_name(tag) }));
            }
            self.genesis = chain::genesis(&payload);
            if prev != self.genesis {
                return Err(self.bad(Reason::PrevHashMismatch));
            }
        } else {
            if prev != self.head {
                return Err(self.bad(Reason::PrevHashMismatch));
            }
            if tag == kind::IDENTITY {
                return Err(self.bad(Reason::SecondIdentity));
            }
        }
        Ok(Step::Frame(Frame { index: self.index, offset: self.offset, kind: tag, prev, hash, payload }))
    }
}

/// Fills `buf` as far as the reader allows; returns how much was read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// `Some(count)` if everything up to the end is zero bytes.
fn zeros_to_end<R: Read>(r: &mut R) -> io::Result<Option<usize>> {
    let mut buf = [0u8; 8192];
    let mut total = 0;
    loop {
        let n = read_full(r, &mut buf)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(None);
        }
        total += n;
        if n < buf.len() {
            return Ok(Some(total));
        }
    }
}
