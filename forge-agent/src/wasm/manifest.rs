//! `capsule.toml`: what a capsule is, what it asks for, and its limits.
//!
//! ```toml
//! name = "report"               # [A-Za-z0-9._-]{1,128}
//! version = 3                   # a newer build of the same name has a greater version
//! entry = "_start"              # exported function to call (default `_start`)
//!
//! [capabilities]
//! files = [
//!   { path = "/etc/report/config.toml", access = "read" },   # one file
//!   { path = "/var/lib/report/", access = "write" },         # a directory and everything below
//! ]
//! connect = ["10.0.0.5:443"]    # network destinations (IP:PORT)
//! env = ["LANG"]                # environment variables it may read
//! clock = true                  # read the clocks
//! random = true                 # random bytes
//!
//! [limits]
//! memory_mib = 64               # linear memory (default 64)
//! deadline_ms = 5000            # wall clock per run (default 10000)
//! fuel = 0                      # instructions budget; 0 = not metered (default)
//! max_open_files = 16           # default 16
//!
//! [intent]
//! inputs = ["sha3-256:<hex>"]   # the inputs it is meant to be run with (optional)
//! ```
//!
//! Nothing is granted because it is listed here: a capability is usable
//! only when the manifest requests it AND the local policy allows it.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Largest `capsule.toml` accepted.
pub const MAX_MANIFEST_BYTES: usize = 64 << 10;
/// Most entries in any one capability list.
pub const MAX_CAPABILITIES: usize = 256;

/// Errors of this module; each names the key it concerns.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CapsuleManifestError {
    #[error("capsule.toml is {size} bytes; at most {MAX_MANIFEST_BYTES} are accepted")]
    TooLarge { size: usize },
    #[error("capsule.toml is not UTF-8")]
    NotUtf8,
    #[error("capsule.toml: {0}")]
    Syntax(String),
    #[error("capsule.toml: {key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> CapsuleManifestError {
    CapsuleManifestError::Invalid { key: key.into(), message: message.into() }
}

/// Read or write access to a file or directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

impl Access {
    pub fn read(self) -> bool {
        matches!(self, Self::Read | Self::ReadWrite)
    }

    pub fn write(self) -> bool {
        matches!(self, Self::Write | Self::ReadWrite)
    }
}

/// A requested file or directory (a path ending in `/`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCapability {
    pub path: String,
    pub access: Access,
}

impl FileCapability {
    pub fn is_dir(&self) -> bool {
        self.path.ends_with('/')
    }

    /// Whether `path` (normalized, absolute) is this file or lies below this directory.
    pub fn covers(&self, path: &str) -> bool {
        if self.is_dir() {
            path.starts_with(&self.path) || path == self.path.trim_end_matches('/')
        } else {
            path == self.path
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default)]
    pub files: Vec<FileCapability>,
    #[serde(default)]
    pub connect: Vec<SocketAddr>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub clock: bool,
    #[serde(default)]
    pub random: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    #[serde(default = "default_deadline")]
    pub deadline_ms: u64,
    #[serde(default)]
    pub fuel: u64,
    #[serde(default = "default_files")]
    pub max_open_files: u32,
}

fn default_memory() -> u32 {
    64
}
fn default_deadline() -> u64 {
    10_000
}
fn default_files() -> u32 {
    16
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mib: default_memory(),
            deadline_ms: default_deadline(),
            fuel: 0,
            max_open_files: default_files(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intent {
    /// `sha3-256:<hex>` of each input the capsule is meant to be run with.
    #[serde(default)]
    pub inputs: Vec<String>,
}

/// A parsed and validated `capsule.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapsuleManifest {
    pub name: String,
    pub version: u64,
    #[serde(default = "default_entry")]
    pub entry: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub capabilities: Capabilities,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub intent: Intent,
}

fn default_entry() -> String {
    "_start".into()
}

impl CapsuleManifest {
    /// Parses and validates `capsule.toml` bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, CapsuleManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(CapsuleManifestError::TooLarge { size: bytes.len() });
        }
        let text = std::str::from_utf8(bytes).map_err(|_| CapsuleManifestError::NotUtf8)?;
        let m: Self = toml::from_str(text).map_err(|e| CapsuleManifestError::Syntax(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), CapsuleManifestError> {
        crate::sign::manifest::check_name(&self.name).map_err(|r| invalid("name", r))?;
        if self.entry.is_empty() || self.entry.len() > 128 {
            return Err(invalid("entry", "must be an exported function name of 1 to 128 bytes"));
        }
        let caps = &self.capabilities;
        for (key, n) in
            [("files", caps.files.len()), ("connect", caps.connect.len()), ("env", caps.env.len())]
        {
            if n > MAX_CAPABILITIES {
                return Err(invalid(
                    format!("capabilities.{key}"),
                    format!("{n} entries; at most {MAX_CAPABILITIES}"),
                ));
            }
        }
        for (i, f) in caps.files.iter().enumerate() {
            let bare = f.path.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(&f.path);
            if !crate::policy::eval::kernel_reported(bare) {
                return Err(invalid(
                    format!("capabilities.files[{i}].path"),
                    format!(
                        "{:?} must be absolute and normalized (no `.`, `..`, `//`); end a directory with `/`",
                        f.path
                    ),
                ));
            }
        }
        for (i, e) in caps.env.iter().enumerate() {
            if e.is_empty() || e.contains('=') || e.contains('\0') {
                return Err(invalid(
                    format!("capabilities.env[{i}]"),
                    format!("{e:?} is not a variable name"),
                ));
            }
        }
        let l = &self.limits;
        if !(1..=4096).contains(&l.memory_mib) {
            return Err(invalid("limits.memory_mib", "must be 1 to 4096"));
        }
        if !(1..=3_600_000).contains(&l.deadline_ms) {
            return Err(invalid("limits.deadline_ms", "must be 1 to 3600000"));
        }
        if !(1..=1024).contains(&l.max_open_files) {
            return Err(invalid("limits.max_open_files", "must be 1 to 1024"));
        }
        for (i, d) in self.intent.inputs.iter().enumerate() {
            let ok = d.strip_prefix("sha3-256:").is_some_and(|h| {
                h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            });
            if !ok {
                return Err(invalid(
                    format!("intent.inputs[{i}]"),
                    format!("{d:?} is not `sha3-256:<64 lowercase hex>`"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_round_trip() {
        let m = CapsuleManifest::parse(b"name = \"a\"\nversion = 1\n").unwrap();
        assert_eq!(m.entry, "_start");
        assert_eq!(m.limits, Limits::default());
        assert!(m.capabilities.files.is_empty() && !m.capabilities.clock);
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("name = \"../x\"\nversion = 1\n", "name"),
            (
                "name = \"a\"\nversion = 1\n[capabilities]\nfiles = [{path = \"etc/x\", access = \"read\"}]\n",
                "capabilities.files[0].path",
            ),
            (
                "name = \"a\"\nversion = 1\n[capabilities]\nfiles = [{path = \"/a/../b\", access = \"read\"}]\n",
                "capabilities.files[0].path",
            ),
            ("name = \"a\"\nversion = 1\n[limits]\nmemory_mib = 0\n", "limits.memory_mib"),
            ("name = \"a\"\nversion = 1\n[intent]\ninputs = [\"md5:00\"]\n", "intent.inputs[0]"),
        ];
        for (text, key) in cases {
            match CapsuleManifest::parse(text.as_bytes()) {
                Err(CapsuleManifestError::Invalid { key: k, .. }) => assert_eq!(k, *key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        let e = CapsuleManifest::parse(b"name = \"a\"\nversion = 1\nsurprise = 2\n").unwrap_err();
        assert!(e.to_string().contains("surprise"), "{e}");
        let e = CapsuleManifest::parse(
            b"name = \"a\"\nversion = 1\n[capabilities]\nfiles = [{path = \"/x\", access = \"exec\"}]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("exec"), "{e}");
    }

    #[test]
    fn directory_capabilities_cover_what_is_below() {
        let d = FileCapability { path: "/var/out/".into(), access: Access::Write };
        assert!(d.covers("/var/out/a") && d.covers("/var/out/a/b") && d.covers("/var/out"));
        assert!(!d.covers("/var/outside") && !d.covers("/var"));
        let f = FileCapability { path: "/etc/a.toml".into(), access: Access::Read };
        assert!(f.covers("/etc/a.toml") && !f.covers("/etc/a.toml.bak"));
    }
}
