//! Where traces live: `<data_dir>/traces/<workload-id>.dna`, the directory
//! mode 0700 and each file 0600 (a trace shows what a workload did).

use std::{
    fs::DirBuilder,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    error::DnaError,
    record::Identity,
    writer::{OpenReport, TraceWriter, WriterConfig},
};
use crate::sign::SigningKey;

/// The agent's default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/forge";
/// File name extension of a trace.
pub const EXTENSION: &str = "dna";

/// The traces under one data directory.
#[derive(Clone, Debug)]
pub struct TraceStore {
    dir: PathBuf,
}

/// Checks that a workload id is a safe file name.
pub fn check_workload_id(id: &str) -> Result<(), DnaError> {
    let ok = (1..=128).contains(&id.len())
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok { Ok(()) } else { Err(DnaError::BadWorkloadId { id: id.to_string() }) }
}

impl TraceStore {
    pub fn new(data_dir: impl AsRef<Path>) -> Self {
        Self { dir: data_dir.as_ref().join("traces") }
    }

    /// The `traces` directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The trace file of a workload.
    pub fn path(&self, workload_id: &str) -> Result<PathBuf, DnaError> {
        check_workload_id(workload_id)?;
        Ok(self.dir.join(format!("{workload_id}.{EXTENSION}")))
    }

    /// Opens the workload's trace to append to it, creating the directory
    /// and the trace if needed. An existing trace of another workload under
    /// the same id is refused.
    pub fn open_or_create(
        &self,
        identity: &Identity,
        key: Arc<SigningKey>,
        config: WriterConfig,
    ) -> Result<(TraceWriter, OpenReport), DnaError> {
        let path = self.path(&identity.workload_id)?;
        DirBuilder::new().recursive(true).mode(0o700).create(&self.dir).map_err(|source| DnaError::Io {
            path: self.dir.clone(),
            op: "create directory",
            source,
        })?;
        if !path.exists() {
            match TraceWriter::create(&path, identity, key.clone(), config.clone()) {
                Ok(w) => {
                    let records = w.len();
                    return Ok((w, OpenReport { records, torn_tail: None }));
                }
                Err(DnaError::Exists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let found = super::reader::Trace::open(&path)?.identity().workload_id.clone();
        if found != identity.workload_id {
            return Err(DnaError::WrongWorkload { path, expected: identity.workload_id.clone(), found });
        }
        TraceWriter::open(&path, key, config)
    }

    /// The workload ids that have a trace, sorted.
    pub fn list(&self) -> Result<Vec<String>, DnaError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(DnaError::Io { path: self.dir.clone(), op: "list", source }),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|source| DnaError::Io { path: self.dir.clone(), op: "list", source })?;
            let name = entry.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(EXTENSION)?.strip_suffix('.'))
                && check_workload_id(id).is_ok()
            {
                ids.push(id.to_string());
            }
        }
        ids.sort();
        Ok(ids)
    }
}
