//! The last applied version of each bundle, kept in a small JSON file so a
//! replayed or older bundle is refused across restarts:
//!
//! ```json
//! {"applied": {"prod": 7}}
//! ```
//!
//! A missing file means nothing was applied yet. Updates replace the file
//! atomically. Versions are kept per bundle name; a host that must follow a
//! single lineage should accept only the bundle names it expects.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use super::files::{self, Read};

const MAX_STATE_BYTES: u64 = 1 << 20;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a bundle state file: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error(
        "{path}: cannot record {name:?} version {version}: version {recorded} is already recorded (versions only increase)"
    )]
    NotNewer { path: PathBuf, name: String, version: u64, recorded: u64 },
}

/// Last applied versions by bundle name.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppliedVersions {
    pub applied: BTreeMap<String, u64>,
}

impl AppliedVersions {
    /// Reads the state file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let malformed = |reason: String| StateError::Malformed { path: path.to_path_buf(), reason };
        match files::read_regular(path, MAX_STATE_BYTES) {
            Ok(Read::Bytes(b)) => serde_json::from_slice(&b).map_err(|e| malformed(e.to_string())),
            Ok(Read::TooLarge(size)) => Err(malformed(format!("{size} bytes, more than {MAX_STATE_BYTES}"))),
            Ok(Read::NotRegular) => Err(malformed("not a regular file".to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(StateError::Io { path: path.to_path_buf(), source }),
        }
    }

    /// The last applied version of bundle `name`.
    pub fn last(&self, name: &str) -> Option<u64> {
        self.applied.get(name).copied()
    }

    /// Records `version` of `name` as applied and saves the file atomically.
    /// Refuses to move a version backwards or record it twice.
    pub fn record(&mut self, path: &Path, name: &str, version: u64) -> Result<(), StateError> {
        if let Some(recorded) = self.last(name)
            && version <= recorded
        {
            return Err(StateError::NotNewer {
                path: path.to_path_buf(),
                name: name.to_string(),
                version,
                recorded,
            });
        }
        self.applied.insert(name.to_string(), version);
        let mut bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| StateError::Malformed { path: path.to_path_buf(), reason: e.to_string() })?;
        bytes.push(b'\n');
        files::write_atomic(path, &bytes, 0o644)
            .map_err(|source| StateError::Io { path: path.to_path_buf(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_is_empty_and_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        let mut s = AppliedVersions::load(&p).unwrap();
        assert_eq!(s.last("prod"), None);
        s.record(&p, "prod", 3).unwrap();
        assert_eq!(AppliedVersions::load(&p).unwrap().last("prod"), Some(3));
        assert!(matches!(s.record(&p, "prod", 3), Err(StateError::NotNewer { recorded: 3, .. })));
        s.record(&p, "prod", 4).unwrap();
        assert_eq!(AppliedVersions::load(&p).unwrap().last("prod"), Some(4));
    }

    #[test]
    fn malformed_state_is_an_error_not_empty() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        std::fs::write(&p, "{not json").unwrap();
        assert!(matches!(AppliedVersions::load(&p), Err(StateError::Malformed { .. })));
    }
}
