//! A policy bundle directory as one bus value:
//!
//! ```json
//! {"format": "forgeone-bundle-wire v1", "name": "prod", "version": 7,
//!  "files": {"MANIFEST": "<hex>", "SIGNATURES": "<hex>", "documents/base.yaml": "<hex>"}}
//! ```
//!
//! Only the transport: the receiver writes the files back into a bundle
//! directory and verifies it like any other bundle. `name` and `version`
//! are a convenience for listings; the signed manifest is what counts.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::sign::bundle::{Bundle, DOCUMENTS_DIR, MANIFEST_FILE, SIGNATURES_FILE};

pub const FORMAT: &str = "forgeone-bundle-wire v1";
/// Largest value accepted (NATS's default payload limit is 1 MiB).
pub const MAX_WIRE_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("not a bundle on the wire: {0}")]
    Malformed(String),
    #[error("bundle too large for the bus: {0} bytes (at most {MAX_WIRE_BYTES})")]
    TooLarge(usize),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    format: String,
    name: String,
    version: u64,
    files: BTreeMap<String, String>,
}

/// A bundle packed for the bus.
pub struct Packed {
    pub name: String,
    pub version: u64,
    pub bytes: Vec<u8>,
}

/// Packs a loaded bundle (its manifest, signatures and documents).
pub fn pack(bundle: &Bundle) -> Result<Packed, WireError> {
    let mut files = BTreeMap::new();
    files.insert(MANIFEST_FILE.to_string(), hex::encode(bundle.manifest().to_bytes()));
    files.insert(SIGNATURES_FILE.to_string(), hex::encode(bundle.signatures().to_bytes()));
    for d in bundle.documents() {
        files.insert(format!("{DOCUMENTS_DIR}/{}", d.name), hex::encode(&d.bytes));
    }
    let (name, version) = (bundle.manifest().name().to_string(), bundle.manifest().version());
    let wire = Wire { format: FORMAT.into(), name: name.clone(), version, files };
    let bytes = serde_json::to_vec(&wire).map_err(|e| WireError::Malformed(e.to_string()))?;
    if bytes.len() > MAX_WIRE_BYTES {
        return Err(WireError::TooLarge(bytes.len()));
    }
    Ok(Packed { name, version, bytes })
}

/// The name and version a packed bundle claims (unverified).
pub fn peek(bytes: &[u8]) -> Result<(String, u64), WireError> {
    let w = parse(bytes)?;
    Ok((w.name, w.version))
}

fn parse(bytes: &[u8]) -> Result<Wire, WireError> {
    if bytes.len() > MAX_WIRE_BYTES {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let w: Wire = serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    if w.format != FORMAT {
        return Err(WireError::Malformed(format!("format {:?}, expected {FORMAT:?}", w.format)));
    }
    Ok(w)
}

fn safe_file(name: &str) -> bool {
    if name == MANIFEST_FILE || name == SIGNATURES_FILE {
        return true;
    }
    name.strip_prefix(DOCUMENTS_DIR)
        .and_then(|r| r.strip_prefix('/'))
        .is_some_and(|n| !n.is_empty() && n != "." && n != ".." && !n.contains(['/', '\0']))
}

/// Writes a packed bundle into the new directory `dir` (replacing an old
/// one) and returns it, ready for [`Bundle::load`].
pub fn unpack(bytes: &[u8], dir: &Path) -> Result<PathBuf, WireError> {
    let w = parse(bytes)?;
    let mut decoded = Vec::with_capacity(w.files.len());
    for (name, hex_text) in &w.files {
        if !safe_file(name) {
            return Err(WireError::Malformed(format!("file {name:?} has no place in a bundle")));
        }
        let b = hex::decode(hex_text).map_err(|e| WireError::Malformed(format!("file {name:?}: {e}")))?;
        decoded.push((name, b));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WireError::Io { path, source }
    };
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join(DOCUMENTS_DIR)).map_err(io(dir))?;
    for (name, b) in decoded {
        let p = dir.join(name);
        std::fs::write(&p, b).map_err(io(&p))?;
    }
    Ok(dir.to_path_buf())
}
