//! Ed25519 keys: generation, key files, key ids.
//!
//! Key files are one line of text:
//!
//! ```text
//! NAME.key  (mode 0600)  forgeone-ed25519-secret-key <64 hex: the 32-byte seed>
//! NAME.pub               forgeone-ed25519-public-key <64 hex: the 32-byte public key> [comment]
//! ```
//!
//! A key id is the first 16 hex characters of the SHA3-256 digest of the 32
//! public key bytes. Ids name signers in messages; trust is always decided on
//! the full public key, never on the id alone.

use std::{
    fmt,
    fs::{self, File},
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use ed25519_dalek::{Signature, Signer as _};
use rand_core::{OsRng, RngCore as _};
use zeroize::Zeroize as _;

use super::{
    digest::{is_lower_hex, sha3_256},
    files,
};

/// First word of a private key file.
pub const SECRET_TAG: &str = "forgeone-ed25519-secret-key";
/// First word of a public key file.
pub const PUBLIC_TAG: &str = "forgeone-ed25519-public-key";
/// Key files are tiny; anything larger is not one.
const MAX_KEY_FILE: u64 = 4096;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} already exists; refusing to overwrite a key file")]
    Exists { path: PathBuf },
    #[error("{what}: not a ForgeOne ed25519 {kind} key: {reason}")]
    Malformed { what: String, kind: &'static str, reason: String },
    #[error(
        "{path}: private key file has mode {mode:04o}, readable or writable by group or others; \
         refusing to use it (chmod 600 {path})"
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error("key name {name:?}: use 1-64 characters from A-Z a-z 0-9 . _ - , not starting with '.'")]
    BadName { name: String },
    #[error("the operating system's random number generator failed: {message}")]
    Random { message: String },
}

/// The short, printable name of a public key: the first 8 bytes (16 hex
/// characters) of the key's SHA3-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The key id of a public key.
pub fn key_id(key: &PublicKey) -> KeyId {
    let d = sha3_256(key.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&d.0[..8]);
    KeyId(id)
}

/// An ed25519 public key (a valid curve point).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

impl PublicKey {
    /// The key from its 32 bytes; `what` names the source in the error.
    pub fn from_bytes(bytes: &[u8; 32], what: &str) -> Result<Self, KeyError> {
        ed25519_dalek::VerifyingKey::from_bytes(bytes).map(Self).map_err(|_| KeyError::Malformed {
            what: what.to_string(),
            kind: "public",
            reason: "the bytes are not a valid ed25519 point".to_string(),
        })
    }

    /// Parses either 64 lowercase hex characters or a whole public key file
    /// line (`forgeone-ed25519-public-key HEX [comment]`).
    pub fn parse(text: &str, what: &str) -> Result<Self, KeyError> {
        let bad = |reason: &str| KeyError::Malformed {
            what: what.to_string(),
            kind: "public",
            reason: reason.to_string(),
        };
        let line = text.strip_suffix('\n').unwrap_or(text);
        if line.contains('\n') {
            return Err(bad("expected a single line"));
        }
        let hex_text = match line.split_once(' ') {
            Some((PUBLIC_TAG, rest)) => rest.split(' ').next().unwrap_or(""),
            Some((SECRET_TAG, _)) => return Err(bad("this is a private key; trust the matching .pub file")),
            Some(_) => return Err(bad(&format!("expected `{PUBLIC_TAG} <64 hex>` or 64 hex characters"))),
            None => line,
        };
        Self::from_bytes(
            &decode_32(hex_text).ok_or_else(|| bad("expected 64 lowercase hex characters"))?,
            what,
        )
    }

    /// Reads a public key file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let mut text = read_small(path)?;
        let parsed = Self::parse(&text, &path.display().to_string());
        // A private key handed over by mistake is not left in memory.
        text.zeroize();
        parsed
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    pub fn id(&self) -> KeyId {
        key_id(self)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.as_bytes())
    }

    /// The text of a `.pub` file for this key.
    pub fn to_file_text(&self, comment: &str) -> String {
        format!("{PUBLIC_TAG} {} {comment}\n", self.to_hex())
    }

    /// Strict RFC 8032 verification (rejects small-order keys and
    /// non-canonical signatures, so a signature cannot be malleated).
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.0.verify_strict(message, &Signature::from_bytes(signature)).is_ok()
    }
}

/// An ed25519 private key. Its bytes are wiped when it is dropped.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({}, secret redacted)", self.public_key().id())
    }
}

/// Paths and id of a key pair written by [`generate_files`].
#[derive(Debug)]
pub struct GeneratedKey {
    pub private_path: PathBuf,
    pub public_path: PathBuf,
    pub key_id: KeyId,
}

impl SigningKey {
    /// A new key from the operating system's random number generator.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        OsRng.try_fill_bytes(&mut seed).map_err(|e| KeyError::Random { message: e.to_string() })?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        seed.zeroize();
        Ok(Self(key))
    }

    /// Reads a private key file. Refuses a file that group or others may
    /// read or write, as ssh does.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io)?;
        let mode = file.metadata().map_err(io)?.mode();
        let mut text = read_limited(file, path)?;
        let parsed = Self::parse(&text, &path.display().to_string());
        text.zeroize();
        // A wrong kind of file is named as such; a real key must be private.
        let key = parsed?;
        if mode & 0o077 != 0 {
            return Err(KeyError::InsecurePermissions { path: path.to_path_buf(), mode: mode & 0o7777 });
        }
        Ok(key)
    }

    fn parse(text: &str, what: &str) -> Result<Self, KeyError> {
        let bad = |reason: &str| KeyError::Malformed {
            what: what.to_string(),
            kind: "private",
            reason: reason.to_string(),
        };
        let line = text.strip_suffix('\n').unwrap_or(text);
        let Some((tag, hex_text)) = line.split_once(' ') else {
            return Err(bad(&format!("expected `{SECRET_TAG} <64 hex>`")));
        };
        if tag != SECRET_TAG {
            return Err(bad(if tag == PUBLIC_TAG {
                "this is a public key file; sign with the private .key file"
            } else {
                "unknown key file type"
            }));
        }
        let mut seed = decode_32(hex_text).ok_or_else(|| bad("expected 64 lowercase hex characters"))?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        seed.zeroize();
        Ok(Self(key))
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs `message` (deterministic ed25519).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

/// Generates a key pair and writes `DIR/NAME.key` (created with mode 0600,
/// never overwriting) and `DIR/NAME.pub`. Refuses if either file exists.
pub fn generate_files(dir: &Path, name: &str) -> Result<GeneratedKey, KeyError> {
    check_name(name)?;
    let private_path = dir.join(format!("{name}.key"));
    let public_path = dir.join(format!("{name}.pub"));
    for p in [&private_path, &public_path] {
        if fs::symlink_metadata(p).is_ok() {
            return Err(KeyError::Exists { path: p.clone() });
        }
    }
    let key = SigningKey::generate()?;
    let public = key.public_key();
    let mut secret_text = format!("{SECRET_TAG} {}\n", hex::encode(key.0.to_bytes()));
    let written = write_new(&private_path, secret_text.as_bytes(), 0o600);
    secret_text.zeroize();
    written?;
    if let Err(e) = write_new(&public_path, public.to_file_text(name).as_bytes(), 0o644) {
        // Leave no half pair behind; the private file is ours (create_new).
        let _ = fs::remove_file(&private_path);
        return Err(e);
    }
    Ok(GeneratedKey { private_path, public_path, key_id: public.id() })
}

/// Key names become file names: a small safe alphabet, no path separators.
fn check_name(name: &str) -> Result<(), KeyError> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(KeyError::BadName { name: name.to_string() }) }
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    files::write_new(path, bytes, mode).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => KeyError::Exists { path: path.to_path_buf() },
        _ => KeyError::Io { path: path.to_path_buf(), source },
    })
}

fn read_small(path: &Path) -> Result<String, KeyError> {
    let file = File::open(path).map_err(|source| KeyError::Io { path: path.to_path_buf(), source })?;
    read_limited(file, path)
}

fn read_limited(file: File, path: &Path) -> Result<String, KeyError> {
    let mut text = String::new();
    file.take(MAX_KEY_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|source| KeyError::Io { path: path.to_path_buf(), source })?;
    if text.len() as u64 > MAX_KEY_FILE {
        text.zeroize();
        return Err(KeyError::Malformed {
            what: path.display().to_string(),
            kind: "key file",
            reason: format!("larger than {MAX_KEY_FILE} bytes"),
        });
    }
    Ok(text)
}

fn decode_32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !is_lower_hex(text) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn generate_writes_0600_private_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let g = generate_files(dir.path(), "alice").unwrap();
        let mode = fs::metadata(&g.private_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let key = SigningKey::load(&g.private_path).unwrap();
        let public = PublicKey::load(&g.public_path).unwrap();
        assert_eq!(key.public_key(), public);
        assert_eq!(public.id(), g.key_id);
        assert_eq!(g.key_id.to_string().len(), 16);
        assert_eq!(g.key_id.to_string(), sha3_256(public.as_bytes()).to_hex()[..16]);

        let before = fs::read(&g.private_path).unwrap();
        assert!(matches!(generate_files(dir.path(), "alice"), Err(KeyError::Exists { .. })));
        assert_eq!(fs::read(&g.private_path).unwrap(), before, "the existing key is untouched");
    }

    #[test]
    fn refuses_pub_collision_without_leaving_a_private_key() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("bob.pub"), "x").unwrap();
        assert!(matches!(generate_files(dir.path(), "bob"), Err(KeyError::Exists { .. })));
        assert!(!dir.path().join("bob.key").exists());
    }

    #[test]
    fn refuses_group_readable_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let g = generate_files(dir.path(), "k").unwrap();
        fs::set_permissions(&g.private_path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = SigningKey::load(&g.private_path).unwrap_err();
        assert!(matches!(err, KeyError::InsecurePermissions { mode: 0o640, .. }), "{err}");
    }

    #[test]
    fn names_cannot_escape_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../x", "a/b", ".hidden", "", "a b"] {
            assert!(matches!(generate_files(dir.path(), bad), Err(KeyError::BadName { .. })), "{bad:?}");
        }
    }

    #[test]
    fn key_kinds_are_not_confused() {
        let dir = tempfile::tempdir().unwrap();
        let g = generate_files(dir.path(), "k").unwrap();
        assert!(matches!(PublicKey::load(&g.private_path), Err(KeyError::Malformed { .. })));
        assert!(matches!(SigningKey::load(&g.public_path), Err(KeyError::Malformed { .. })));
    }

    #[test]
    fn public_key_parses_hex_or_file_line() {
        let k = SigningKey::generate().unwrap().public_key();
        assert_eq!(PublicKey::parse(&k.to_hex(), "t").unwrap(), k);
        assert_eq!(PublicKey::parse(&k.to_file_text("c"), "t").unwrap(), k);
        assert!(PublicKey::parse(&k.to_hex().to_uppercase(), "t").is_err());
        assert!(PublicKey::parse("00", "t").is_err());
    }

    #[test]
    fn signatures_verify_only_for_their_message() {
        let k = SigningKey::generate().unwrap();
        let sig = k.sign(b"hello");
        assert!(k.public_key().verify(b"hello", &sig));
        assert!(!k.public_key().verify(b"hellp", &sig));
        let other = SigningKey::generate().unwrap();
        assert!(!other.public_key().verify(b"hello", &sig));
    }
}
