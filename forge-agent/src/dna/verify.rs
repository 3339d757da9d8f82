//! Verifying a whole trace: the chain (checksums, links, identity first) and
//! every checkpoint (its index, its signer, its signature). The result names
//! the first bad record and why, or says what was proven.
//!
//! What a good result proves: with a trusted key, records `0..=last_checkpoint`
//! are exactly what that key's holder wrote, in that order, nothing removed
//! or inserted. Records after the last checkpoint (`unsigned_tail`) are only
//! chained: whoever can write the file could rewrite or drop them, and could
//! cut the file back to an earlier checkpoint. Shipping the latest checkpoint
//! elsewhere (telemetry) closes that gap.

use std::{
    io::Read,
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::{
    chain,
    error::{DnaError, Problem, Reason, TornTail},
    reader::Records,
    record::{Checkpoint, Record},
};
use crate::sign::PublicKey;

#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// The agent's public key. Without it, checkpoints are checked against
    /// the key each one names, which proves integrity but not authorship.
    pub trusted_key: Option<PublicKey>,
}

/// The outcome of [`verify_file`]. `problem` is the first failure, if any.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub path: PathBuf,
    pub ok: bool,
    pub workload_id: Option<String>,
    /// Records that verified (all of them when `ok`).
    pub records: u64,
    pub checkpoints: u64,
    /// Index of the last good checkpoint: records before it are signed.
    pub last_checkpoint: Option<u64>,
    /// Records after the last checkpoint: chained, not yet signed.
    pub unsigned_tail: u64,
    /// Key ids of the checkpoint signers, in order of first appearance.
    pub signers: Vec<String>,
    /// The key id checkpoints were required to be signed by, if one was given.
    pub trusted_key: Option<String>,
    /// A torn last record (a crash mid-write); the writer drops it on open.
    pub torn_tail: Option<TornTail>,
    pub problem: Option<Problem>,
}

/// Verifies a trace file. An error means the file could not be read; a
/// damaged or forged trace is a report with a `problem`.
pub fn verify_file(path: &Path, opts: &VerifyOptions) -> Result<VerifyReport, DnaError> {
    let file = std::fs::File::open(path).map_err(|source| DnaError::Io {
        path: path.to_path_buf(),
        op: "open",
        source,
    })?;
    verify_reader(std::io::BufReader::with_capacity(1 << 16, file), path, opts)
}

/// Verifies a trace read from `reader`; `path` names it in the report.
pub fn verify_reader<R: Read>(
    reader: R,
    path: &Path,
    opts: &VerifyOptions,
) -> Result<VerifyReport, DnaError> {
    let mut report = VerifyReport {
        path: path.to_path_buf(),
        ok: false,
        workload_id: None,
        records: 0,
        checkpoints: 0,
        last_checkpoint: None,
        unsigned_tail: 0,
        signers: Vec::new(),
        trusted_key: opts.trusted_key.map(|k| k.id().to_string()),
        torn_tail: None,
        problem: None,
    };
    let mut records = match Records::from_reader(reader, path) {
        Ok(r) => r,
        Err(DnaError::Corrupt { problem, .. }) => {
            report.problem = Some(problem);
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    while let Some(item) = records.next() {
        let entry = match item {
            Ok(entry) => entry,
            Err(DnaError::Corrupt { problem, .. }) => {
                report.problem = Some(problem);
                break;
            }
            Err(e) => return Err(e),
        };
        match &entry.record {
            Record::Identity(id) => report.workload_id = Some(id.workload_id.clone()),
            Record::Checkpoint(c) => match check_checkpoint(c, &entry, &records.genesis(), opts) {
                Ok(key) => {
                    report.checkpoints += 1;
                    report.last_checkpoint = Some(entry.index);
                    let id = key.id().to_string();
                    if !report.signers.contains(&id) {
                        report.signers.push(id);
                    }
                }
                Err(reason) => {
                    report.problem = Some(Problem { index: Some(entry.index), offset: entry.offset, reason });
                    break;
                }
            },
            _ => {}
        }
        report.records = entry.index + 1;
    }
    report.torn_tail = records.torn_tail();
    report.unsigned_tail = report.records - report.last_checkpoint.map_or(0, |c| c + 1);
    if report.problem.is_none() && opts.trusted_key.is_some() && report.checkpoints == 0 {
        report.problem =
            Some(Problem { index: Some(report.records), offset: records.offset(), reason: Reason::Unsigned });
    }
    report.ok = report.problem.is_none();
    Ok(report)
}

/// A checkpoint's index, signer and signature; returns the signer.
fn check_checkpoint(
    c: &Checkpoint,
    entry: &super::Entry,
    genesis: &chain::Hash,
    opts: &VerifyOptions,
) -> Result<PublicKey, Reason> {
    if c.index != entry.index {
        return Err(Reason::CheckpointIndex { claimed: c.index });
    }
    // A key that is not a curve point signs nothing.
    let key = PublicKey::from_bytes(&c.key, "checkpoint key").map_err(|_| Reason::BadCheckpointSignature)?;
    if opts.trusted_key.is_some_and(|t| t != key) {
        return Err(Reason::UntrustedKey { key_id: key.id().to_string() });
    }
    let message = chain::checkpoint_message(genesis, entry.index, &entry.prev, c.unix_ns, &c.key);
    if key.verify(&message, &c.signature) { Ok(key) } else { Err(Reason::BadCheckpointSignature) }
}
