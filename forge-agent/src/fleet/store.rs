//! The ledger on disk: every signed record it holds, in
//! `<data-dir>/fleet/records.json`, so that a restarted agent does not
//! forget a fleet quarantine because the bus lost the record, or was made
//! to (a key deleted, purged or overwritten).
//!
//! ```json
//! {"format": "forgeone-fleet-records v1",
//!  "records": [{"body": "{\"node\":\"node-a\",…}", "key": "…", "sig": "…"}, …]}
//! ```
//!
//! The records are the envelopes as signed, so nothing in the file is
//! believed: at start each one is verified again against that start's node
//! keys and operator trust ([`restore`]) and admitted to the ledger by the
//! same rule as a record from the bus. A record that no longer verifies
//! (its node key was removed from the fleet's node list, say) is dropped
//! and reported; a file that cannot be read or parsed stops the start,
//! since an empty ledger would forget the quarantines. The bus then only
//! adds: a record it no longer holds is still in force here, and only a
//! newer record (an operator release, or the issuing node's own release)
//! clears it. The file is replaced atomically (temporary file, fsync,
//! rename) after every record admitted, mode 0600.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    ledger::{Admit, Ledger},
    record::SignedRecord,
};
use crate::sign::{
    files::{self, Unusable},
    trust::TrustConfig,
};

/// The file's name in the fleet's directory (`<data-dir>/fleet`).
pub const FILE: &str = "records.json";
pub const FORMAT: &str = "forgeone-fleet-records v1";
const MAX_BYTES: u64 = 64 << 20;

/// Errors of this module; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: not a fleet records file: {reason}; refusing to start with an empty ledger, which would \
         forget the fleet's quarantines (move the file aside to do that knowingly)"
    )]
    Malformed { path: PathBuf, reason: String },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: String,
    records: Vec<SignedRecord>,
}

/// Reads the stored envelopes; a missing file holds none.
pub fn load(path: &Path) -> Result<Vec<SignedRecord>, StoreError> {
    let malformed = |reason: String| StoreError::Malformed { path: path.to_path_buf(), reason };
    let bytes = match files::read_state(path, MAX_BYTES) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(Vec::new()),
        Err(Unusable::Not(reason)) => return Err(malformed(reason)),
        Err(Unusable::Io(source)) => return Err(StoreError::Io { path: path.to_path_buf(), source }),
    };
    let f: File = serde_json::from_slice(&bytes).map_err(|e| malformed(e.to_string()))?;
    if f.format != FORMAT {
        return Err(malformed(format!("format {:?}; this agent reads {FORMAT:?}", f.format)));
    }
    Ok(f.records)
}

/// Replaces the file with `records` (creating its directory).
pub fn save(path: &Path, records: &[&SignedRecord]) -> Result<(), StoreError> {
    let io = |source| StoreError::Io { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let file = File { format: FORMAT.to_string(), records: records.iter().map(|r| (*r).clone()).collect() };
    let mut bytes = serde_json::to_vec(&file)
        .map_err(|e| StoreError::Malformed { path: path.to_path_buf(), reason: e.to_string() })?;
    bytes.push(b'\n');
    files::write_atomic(path, &bytes, 0o600).map_err(io)
}

/// What [`restore`] did.
#[derive(Debug, Default)]
pub struct Restored {
    /// Records verified and admitted.
    pub admitted: usize,
    /// Why each dropped record was dropped (its place in the file and the reason).
    pub dropped: Vec<String>,
}

/// Verifies each stored envelope against `nodes` and `operators` and admits
/// the ones that verify to `ledger`. `path` names the file in reports.
pub fn restore(
    ledger: &mut Ledger,
    records: &[SignedRecord],
    nodes: &TrustConfig,
    operators: &TrustConfig,
    path: &Path,
) -> Restored {
    let mut out = Restored::default();
    for (i, env) in records.iter().enumerate() {
        match SignedRecord::verify(&env.to_bytes(), nodes, operators) {
            Ok(v) => {
                if ledger.admit(v) == Admit::New {
                    out.admitted += 1;
                }
            }
            Err(e) => out.dropped.push(format!("{} record {}: {e}", path.display(), i + 1)),
        }
    }
    out
}
