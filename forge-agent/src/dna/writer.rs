//! Appending to a trace: buffered writes, signed checkpoints, the fsync
//! policy, and recovery of a torn last record when a trace is reopened.
//! The module docs ([`super`]) describe the policy and its defaults.

use std::{
    fs::{File, OpenOptions},
    io::{BufReader, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;

use super::{
    chain::{self, Hash},
    error::{DnaError, TornTail},
    frame::{self, FrameReader, Step},
    reader,
    record::{Checkpoint, Identity, Record, Reopen, kind, kind_name},
};
use crate::{events::DecisionEvent, sign::SigningKey};

/// When written records are forced to stable storage (`fdatasync`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Never; the kernel writes back when it likes. Survives an agent crash
    /// (once flushed), not a power loss.
    Never,
    /// After every checkpoint, and on close.
    #[default]
    Checkpoint,
    /// After every write of the buffer to the file.
    Flush,
    /// After every record (each record is written and synced at once; slow).
    Record,
}

/// Writer settings; see the table in the module docs.
#[derive(Clone, Debug, Serialize)]
pub struct WriterConfig {
    /// Sign a checkpoint after this many records.
    pub checkpoint_every: u64,
    /// Also sign one when records have waited this long unsigned (checked on
    /// append and on [`TraceWriter::tick`]).
    pub checkpoint_interval: Option<Duration>,
    /// Write the buffer to the file when it holds this many bytes.
    pub buffer_bytes: usize,
    /// Write the buffer to the file when its oldest record is this old
    /// (checked on append and on [`TraceWriter::tick`]).
    pub flush_interval: Duration,
    pub fsync: FsyncPolicy,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            checkpoint_every: 1024,
            checkpoint_interval: Some(Duration::from_secs(10)),
            buffer_bytes: 64 << 10,
            flush_interval: Duration::from_millis(200),
            fsync: FsyncPolicy::Checkpoint,
        }
    }
}

/// What opening an existing trace found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OpenReport {
    /// Intact records found (before the writer's own `reopen` record).
    pub records: u64,
    /// A torn last record that was cut off.
    pub torn_tail: Option<TornTail>,
}

/// Appends records to one trace file. Not shared between threads: one
/// writer per workload, owned by the task that feeds it.
pub struct TraceWriter {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    key: Arc<SigningKey>,
    public: [u8; 32],
    config: WriterConfig,
    identity: Identity,
    genesis: Hash,
    head: Hash,
    next_index: u64,
    since_checkpoint: u64,
    buffered_since: Option<Instant>,
    last_checkpoint: Instant,
    poisoned: bool,
    closed: bool,
}

impl std::fmt::Debug for TraceWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceWriter")
            .field("path", &self.path)
            .field("records", &self.next_index)
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> DnaError {
    let path = path.to_path_buf();
    move |source| DnaError::Io { path, op, source }
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl TraceWriter {
    /// Creates a new trace: header, identity record and a first checkpoint
    /// signed with `key` (the agent's key, from [`SigningKey::load`]),
    /// written to a temporary file, synced, and renamed into place (never
    /// over an existing file), so a trace file always starts complete.
    pub fn create(
        path: impl AsRef<Path>,
        identity: &Identity,
        key: Arc<SigningKey>,
        config: WriterConfig,
    ) -> Result<Self, DnaError> {
        let path = path.as_ref();
        let tmp = path.with_extension("dna.tmp");
        // A leftover from a crash during an earlier create is never a trace.
        let _ = std::fs::remove_file(&tmp);
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp, "create"))?;
        let mut w = Self::new(tmp.clone(), file, key, config, identity.clone());
        let result = w.start(identity).and_then(|()| w.rename_into(path));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
            w.closed = true;
        }
        result.map(|()| w)
    }

    fn new(
        path: PathBuf,
        file: File,
        key: Arc<SigningKey>,
        config: WriterConfig,
        identity: Identity,
    ) -> Self {
        let now = Instant::now();
        Self {
            path,
            file,
            buf: Vec::with_capacity(config.buffer_bytes + 4096),
            public: *key.public_key().as_bytes(),
            key,
            config,
            identity,
            genesis: Hash::default(),
            head: Hash::default(),
            next_index: 0,
            since_checkpoint: 0,
            buffered_since: None,
            last_checkpoint: now,
            poisoned: false,
            closed: false,
        }
    }

    fn start(&mut self, identity: &Identity) -> Result<(), DnaError> {
        let mut payload = Vec::new();
        Record::Identity(identity.clone()).encode(&mut payload).map_err(|source| DnaError::Encode {
            path: self.path.clone(),
            kind: "identity",
            source,
        })?;
        self.genesis = chain::genesis(&payload);
        self.buf.extend_from_slice(&frame::header());
        let start = frame::begin(&mut self.buf, kind::IDENTITY, &self.genesis);
        self.buf.extend_from_slice(&payload);
        self.head = frame::finish(&mut self.buf, start).map_err(|size| DnaError::TooLarge {
            path: self.path.clone(),
            kind: "identity",
            size,
            max: frame::MAX_PAYLOAD,
        })?;
        self.next_index = 1;
        self.checkpoint()?;
        self.file.sync_all().map_err(io(&self.path, "fsync"))
    }

    fn rename_into(&mut self, path: &Path) -> Result<(), DnaError> {
        let noreplace = nix::fcntl::RenameFlags::RENAME_NOREPLACE;
        match nix::fcntl::renameat2(nix::fcntl::AT_FDCWD, &self.path, nix::fcntl::AT_FDCWD, path, noreplace) {
            Ok(()) => {}
            Err(nix::errno::Errno::EEXIST) => return Err(DnaError::Exists { path: path.to_path_buf() }),
            Err(e) => return Err(io(path, "rename")(e.into())),
        }
        self.path = path.to_path_buf();
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir, "fsync directory"))
    }

    /// Opens an existing trace to append to it. Reads the whole file,
    /// checking every checksum and link; a torn last record is cut off (and
    /// the cut synced), anything else damaged is an error and nothing is
    /// changed. Then appends a `reopen` record noting what was cut.
    pub fn open(
        path: impl AsRef<Path>,
        key: Arc<SigningKey>,
        config: WriterConfig,
    ) -> Result<(Self, OpenReport), DnaError> {
        let path = path.as_ref();
        let file = OpenOptions::new().read(true).append(true).open(path).map_err(io(path, "open"))?;
        let mut frames =
            FrameReader::new(BufReader::with_capacity(1 << 16, &file)).map_err(|e| reader::error(path, e))?;
        let mut identity = None;
        let mut since_checkpoint = 0;
        let torn_tail = loop {
            match frames.next().map_err(|e| reader::error(path, e))? {
                Step::Frame(f) if f.kind == kind::IDENTITY => match Record::decode(f.kind, &f.payload) {
                    Ok(Record::Identity(i)) => identity = Some(i),
                    Ok(_) => {}
                    Err(reason) => {
                        let problem = super::Problem { index: Some(f.index), offset: f.offset, reason };
                        return Err(DnaError::Corrupt { path: path.to_path_buf(), problem });
                    }
                },
                Step::Frame(f) if f.kind == kind::CHECKPOINT => since_checkpoint = 0,
                Step::Frame(_) => since_checkpoint += 1,
                Step::End => break None,
                Step::Torn(t) => break Some(t),
            }
        };
        let Some(identity) = identity else {
            // The frame reader accepts no first record other than an identity.
            let problem = super::Problem { index: Some(0), offset: 0, reason: super::Reason::Empty };
            return Err(DnaError::Corrupt { path: path.to_path_buf(), problem });
        };
        if let Some(t) = torn_tail {
            tracing::warn!(path = %path.display(), offset = t.offset, bytes = t.bytes, "trace: cutting off a torn last record");
            file.set_len(t.offset).map_err(io(path, "truncate"))?;
            file.sync_all().map_err(io(path, "fsync"))?;
        }
        let report = OpenReport { records: frames.index(), torn_tail };
        let (genesis, head, next_index) = (frames.genesis(), frames.head(), frames.index());
        let mut w = Self::new(path.to_path_buf(), file, key, config, identity);
        w.genesis = genesis;
        w.head = head;
        w.next_index = next_index;
        w.since_checkpoint = since_checkpoint;
        let t = torn_tail.unwrap_or(TornTail { offset: 0, bytes: 0 });
        let reopen =
            Record::Reopen(Reopen { unix_ns: unix_ns(), torn_offset: t.offset, torn_bytes: t.bytes });
        w.push(&reopen)?;
        w.after_append()?;
        Ok((w, report))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The number of records in the trace (buffered ones included).
    pub fn len(&self) -> u64 {
        self.next_index
    }

    /// Never true: a trace holds at least its identity record.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The hash of the last record: the chain head.
    pub fn head(&self) -> Hash {
        self.head
    }

    /// Appends a record and returns its index. Identity, checkpoint and
    /// reopen records are the writer's own and are refused.
    pub fn append(&mut self, record: &Record) -> Result<u64, DnaError> {
        if matches!(record, Record::Identity(_) | Record::Checkpoint(_) | Record::Reopen(_)) {
            return Err(DnaError::NotAppendable { path: self.path.clone(), kind: record.kind_name() });
        }
        let index = self.push(record)?;
        self.after_append()?;
        Ok(index)
    }

    /// Appends a decision event (without copying it into a [`Record`]).
    pub fn decision(&mut self, ev: &DecisionEvent) -> Result<u64, DnaError> {
        self.event(kind::DECISION, ev)
    }

    /// Appends a sampled allowed event.
    pub fn sampled_allowed(&mut self, ev: &DecisionEvent) -> Result<u64, DnaError> {
        self.event(kind::SAMPLED_ALLOWED, ev)
    }

    fn event(&mut self, tag: u8, ev: &DecisionEvent) -> Result<u64, DnaError> {
        let index = self.push_with(tag, |out| {
            super::event::encode(ev, out);
            Ok(())
        })?;
        self.after_append()?;
        Ok(index)
    }

    /// Signs a checkpoint over every record so far, writes the buffer to the
    /// file and, unless the policy is `Never`, syncs it.
    pub fn checkpoint(&mut self) -> Result<u64, DnaError> {
        let index = self.next_index;
        let unix_ns = unix_ns();
        let key = self.public;
        let message = chain::checkpoint_message(&self.genesis, index, &self.head, unix_ns, &key);
        let signature = self.key.sign(&message);
        self.push(&Record::Checkpoint(Checkpoint { index, unix_ns, key, signature }))?;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        self.write_out(self.config.fsync != FsyncPolicy::Never)?;
        Ok(index)
    }

    /// Writes buffered records to the file (they then survive an agent
    /// crash, not yet a power loss).
    pub fn flush(&mut self) -> Result<(), DnaError> {
        self.write_out(false)
    }

    /// Writes buffered records and syncs the file.
    pub fn sync(&mut self) -> Result<(), DnaError> {
        self.write_out(true)
    }

    /// The timer hook: the owner calls it now and then (say once a second)
    /// so a quiet trace is flushed and signed too.
    pub fn tick(&mut self) -> Result<(), DnaError> {
        let now = Instant::now();
        if self.since_checkpoint > 0
            && self.config.checkpoint_interval.is_some_and(|i| now.duration_since(self.last_checkpoint) >= i)
        {
            self.checkpoint()?;
        } else if self.buffered_since.is_some_and(|t| now.duration_since(t) >= self.config.flush_interval) {
            self.write_out(false)?;
        }
        Ok(())
    }

    /// A clean stop: a last checkpoint if records are unsigned, then write
    /// and sync (unless the policy is `Never`).
    pub fn close(mut self) -> Result<(), DnaError> {
        self.closed = true;
        if self.since_checkpoint > 0 {
            self.checkpoint()?;
        }
        self.write_out(self.config.fsync != FsyncPolicy::Never)
    }

    fn push(&mut self, record: &Record) -> Result<u64, DnaError> {
        self.push_with(record.kind(), |out| record.encode(out))
    }

    /// Frames one record into the buffer and advances the chain.
    fn push_with(
        &mut self,
        tag: u8,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), serde_json::Error>,
    ) -> Result<u64, DnaError> {
        if self.poisoned {
            return Err(DnaError::Poisoned { path: self.path.clone() });
        }
        let start = frame::begin(&mut self.buf, tag, &self.head);
        if let Err(source) = encode(&mut self.buf) {
            self.buf.truncate(start);
            return Err(DnaError::Encode { path: self.path.clone(), kind: kind_name(tag), source });
        }
        self.head = frame::finish(&mut self.buf, start).map_err(|size| DnaError::TooLarge {
            path: self.path.clone(),
            kind: kind_name(tag),
            size,
            max: frame::MAX_PAYLOAD,
        })?;
        if self.buffered_since.is_none() {
            self.buffered_since = Some(Instant::now());
        }
        let index = self.next_index;
        self.next_index += 1;
        Ok(index)
    }

    /// After a non-checkpoint record: checkpoint, write or sync as due.
    fn after_append(&mut self) -> Result<(), DnaError> {
        self.since_checkpoint += 1;
        if self.since_checkpoint >= self.config.checkpoint_every {
            self.checkpoint()?;
        } else if self.config.fsync == FsyncPolicy::Record {
            self.write_out(true)?;
        } else if self.buf.len() >= self.config.buffer_bytes {
            self.write_out(false)?;
        } else {
            self.tick()?;
        }
        Ok(())
    }

    fn write_out(&mut self, sync: bool) -> Result<(), DnaError> {
        if self.poisoned {
            return Err(DnaError::Poisoned { path: self.path.clone() });
        }
        if !self.buf.is_empty() {
            if let Err(source) = self.file.write_all(&self.buf) {
                // Part of the buffer may be in the file: a torn record that
                // only a reopen (which cuts it off) can repair.
                self.poisoned = true;
                return Err(DnaError::Io { path: self.path.clone(), op: "write", source });
            }
            self.buf.clear();
            if self.buf.capacity() > 4 * (self.config.buffer_bytes + 4096) {
                self.buf.shrink_to(self.config.buffer_bytes + 4096);
            }
            self.buffered_since = None;
        }
        if (sync || self.config.fsync == FsyncPolicy::Flush)
            && let Err(source) = self.file.sync_data()
        {
            // After a failed fsync the kernel may have dropped the written
            // pages: what is on disk is unknown until a reopen reads it.
            self.poisoned = true;
            return Err(DnaError::Io { path: self.path.clone(), op: "fsync", source });
        }
        Ok(())
    }
}

impl Drop for TraceWriter {
    /// Best effort: buffered records go to the file; no checkpoint, no sync
    /// (call [`TraceWriter::close`] for a clean stop).
    fn drop(&mut self) {
        if !self.closed
            && !self.poisoned
            && !self.buf.is_empty()
            && let Err(e) = self.file.write_all(&self.buf)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "trace: records lost on drop");
        }
    }
}
