//! The manifest: a list of named, digested payloads, and the exact bytes a
//! signature covers.
//!
//! A manifest has exactly one byte encoding, and the parser accepts only that
//! one, so "the manifest file" and "the signed bytes" can never disagree:
//!
//! ```text
//! forgeone-manifest v1
//! kind policy-bundle
//! name prod
//! version 7
//! file 3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532 1234 base.yaml
//! file ...
//! ```
//!
//! A payload line is `file` when its digest is the SHA3-256 of its bytes,
//! or `tree` when it is their SHA3-256 tree digest ([`super::tree`]), which
//! large payloads (a capsule's Wasm module) use because it is computed
//! several times faster. The keyword is signed with the rest.
//!
//! Rules: ASCII, `\n` line ends (the last line too), single spaces, fields in
//! this order; `kind` is `[a-z0-9-]{1,32}`; the manifest name and payload
//! names are `[A-Za-z0-9._-]{1,128}` not starting with `.` (so a payload
//! name is a plain file name, never a path); `version` and sizes are decimal
//! without leading zeros; digests are SHA3-256 in lowercase hex; at least one
//! `file` or `tree` line, sorted by name (bytewise), names unique.
//!
//! A signature covers [`SIGNING_DOMAIN`] followed by the manifest bytes. The
//! domain prefix keeps these signatures from meaning anything in another
//! protocol that uses the same keys; the `kind` line, inside the signed
//! bytes, keeps a policy bundle's signature from being accepted for a Wasm
//! capsule and vice versa.

use std::fmt::Write as _;

use super::{
    digest::{Digest, sha3_256},
    tree::sha3_256_tree,
};

/// First line of every manifest.
pub const FORMAT_LINE: &str = "forgeone-manifest v1";
/// Prefix of the signed message: `SIGNING_DOMAIN ++ manifest bytes`.
pub const SIGNING_DOMAIN: &[u8] = b"forgeone-manifest-v1\0";
/// Largest manifest accepted.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// Most payloads one manifest may list.
pub const MAX_ENTRIES: usize = 4096;
/// Longest manifest or payload name.
pub const MAX_NAME: usize = 128;

/// Errors of this module.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest is {size} bytes, more than the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("manifest does not end with a newline")]
    NoFinalNewline,
    #[error("manifest lists no payloads")]
    NoEntries,
    #[error("manifest lists more than {limit} payloads")]
    TooManyEntries { limit: usize },
    #[error("{what} {name:?}: {reason}")]
    BadName { what: &'static str, name: String, reason: &'static str },
    #[error("payload {name:?} is listed twice")]
    Duplicate { name: String },
}

/// How a payload's digest is computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Hash {
    /// `file`: the SHA3-256 of the bytes.
    #[default]
    Plain,
    /// `tree`: the SHA3-256 tree digest of the bytes.
    Tree,
}

impl Hash {
    pub fn digest(self, bytes: &[u8]) -> Digest {
        match self {
            Self::Plain => sha3_256(bytes),
            Self::Tree => sha3_256_tree(bytes),
        }
    }

    /// The line's keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            Self::Plain => "file",
            Self::Tree => "tree",
        }
    }
}

/// One payload: its file name, size in bytes and digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub size: u64,
    pub digest: Digest,
    pub hash: Hash,
}

impl Entry {
    /// The entry describing `bytes` under `name` (their SHA3-256).
    pub fn of(name: &str, bytes: &[u8]) -> Self {
        Self::hashed(name, Hash::Plain, bytes)
    }

    /// The entry describing `bytes` under `name` with their tree digest.
    pub fn tree_of(name: &str, bytes: &[u8]) -> Self {
        Self::hashed(name, Hash::Tree, bytes)
    }

    pub fn hashed(name: &str, hash: Hash, bytes: &[u8]) -> Self {
        Self { name: name.to_string(), size: bytes.len() as u64, digest: hash.digest(bytes), hash }
    }

    /// What this entry would say of `bytes`: equal to `self` if they match.
    pub fn actual(&self, bytes: &[u8]) -> Self {
        Self::hashed(&self.name, self.hash, bytes)
    }
}

/// A validated manifest. Entries are sorted by name and unique.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    kind: String,
    name: String,
    version: u64,
    entries: Vec<Entry>,
}

impl Manifest {
    /// Builds a manifest, validating names and sorting the entries.
    pub fn new(kind: &str, name: &str, version: u64, mut entries: Vec<Entry>) -> Result<Self, ManifestError> {
        check_kind(kind).map_err(|reason| ManifestError::BadName {
            what: "kind",
            name: kind.into(),
            reason,
        })?;
        check_name(name).map_err(|reason| ManifestError::BadName {
            what: "name",
            name: name.into(),
            reason,
        })?;
        if entries.is_empty() {
            return Err(ManifestError::NoEntries);
        }
        if entries.len() > MAX_ENTRIES {
            return Err(ManifestError::TooManyEntries { limit: MAX_ENTRIES });
        }
        for e in &entries {
            check_name(&e.name).map_err(|reason| ManifestError::BadName {
                what: "payload",
                name: e.name.clone(),
                reason,
            })?;
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = entries.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(ManifestError::Duplicate { name: w[0].name.clone() });
        }
        Ok(Self { kind: kind.to_string(), name: name.to_string(), version, entries })
    }

    /// What the payloads are for, e.g. `policy-bundle`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The generation: a newer manifest of the same name has a greater version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Entries, sorted by name.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.binary_search_by(|e| e.name.as_str().cmp(name)).ok().map(|i| &self.entries[i])
    }

    /// The canonical encoding (the manifest file's bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = String::with_capacity(96 + self.entries.len() * 96);
        // Writing to a String cannot fail.
        let _ =
            write!(s, "{FORMAT_LINE}\nkind {}\nname {}\nversion {}\n", self.kind, self.name, self.version);
        for e in &self.entries {
            let _ = writeln!(s, "{} {} {} {}", e.hash.keyword(), e.digest, e.size, e.name);
        }
        s.into_bytes()
    }

    /// The bytes a signature covers: [`SIGNING_DOMAIN`] then [`Self::to_bytes`].
    pub fn signed_message(&self) -> Vec<u8> {
        let mut m = SIGNING_DOMAIN.to_vec();
        m.extend_from_slice(&self.to_bytes());
        m
    }

    /// Parses a manifest, accepting only the canonical encoding.
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge { size: bytes.len(), limit: MAX_MANIFEST_BYTES });
        }
        let Some(body) = bytes.strip_suffix(b"\n") else {
            return Err(ManifestError::NoFinalNewline);
        };
        let mut lines = body.split(|b| *b == b'\n').enumerate().map(|(i, l)| (i + 1, l));
        let mut next = |what: &str| {
            lines.next().ok_or_else(|| ManifestError::Syntax {
                line: bytes.iter().filter(|b| **b == b'\n').count() + 1,
                message: format!("missing {what}"),
            })
        };
        let (n, l) = next("the format line")?;
        if l != FORMAT_LINE.as_bytes() {
            return Err(syntax(n, format!("expected `{FORMAT_LINE}`")));
        }
        let (n, l) = next("`kind`")?;
        let kind = field(n, l, "kind")?;
        check_kind(kind).map_err(|r| syntax(n, format!("kind {kind:?}: {r}")))?;
        let (n, l) = next("`name`")?;
        let name = field(n, l, "name")?;
        check_name(name).map_err(|r| syntax(n, format!("name {name:?}: {r}")))?;
        let (n, l) = next("`version`")?;
        let version = decimal(n, field(n, l, "version")?, "version")?;

        let mut entries: Vec<Entry> = Vec::new();
        for (n, l) in lines {
            if entries.len() == MAX_ENTRIES {
                return Err(ManifestError::TooManyEntries { limit: MAX_ENTRIES });
            }
            let hash = if l.starts_with(b"tree ") { Hash::Tree } else { Hash::Plain };
            let rest = field(n, l, hash.keyword())?;
            let mut parts = rest.splitn(3, ' ');
            let (Some(digest), Some(size), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(syntax(n, format!("expected `{} <sha3-256 hex> <size> <name>`", hash.keyword())));
            };
            let digest: Digest = digest.parse().map_err(|e| syntax(n, format!("{e}")))?;
            let size = decimal(n, size, "size")?;
            check_name(file).map_err(|r| syntax(n, format!("payload name {file:?}: {r}")))?;
            if let Some(prev) = entries.last() {
                match prev.name.as_str().cmp(file) {
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => {
                        return Err(syntax(n, format!("payload {file:?} is listed twice")));
                    }
                    std::cmp::Ordering::Greater => {
                        return Err(syntax(
                            n,
                            format!("payload {file:?} must come before {:?} (sorted by name)", prev.name),
                        ));
                    }
                }
            }
            entries.push(Entry { name: file.to_string(), size, digest, hash });
        }
        if entries.is_empty() {
            return Err(ManifestError::NoEntries);
        }
        Ok(Self { kind: kind.to_string(), name: name.to_string(), version, entries })
    }
}

fn syntax(line: usize, message: String) -> ManifestError {
    ManifestError::Syntax { line, message }
}

/// `KEY value` → value; checks the key, ASCII and single spacing.
fn field<'a>(n: usize, line: &'a [u8], key: &str) -> Result<&'a str, ManifestError> {
    let Ok(text) = std::str::from_utf8(line) else {
        return Err(syntax(n, "not ASCII text".to_string()));
    };
    if !text.is_ascii() || text.bytes().any(|b| b.is_ascii_control()) {
        return Err(syntax(n, "only printable ASCII is allowed".to_string()));
    }
    match text.split_once(' ') {
        Some((k, v))
            if k == key && !v.is_empty() && !v.starts_with(' ') && !v.ends_with(' ') && !v.contains("  ") =>
        {
            Ok(v)
        }
        _ => Err(syntax(n, format!("expected `{key} <value>` (single spaces, no trailing space)"))),
    }
}

/// A `u64` in canonical decimal: digits only, no leading zero (except "0").
fn decimal(n: usize, text: &str, what: &str) -> Result<u64, ManifestError> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    match text.parse::<u64>() {
        Ok(v) if canonical => Ok(v),
        _ => {
            Err(syntax(n, format!("{what} {text:?} is not a decimal number without leading zeros (0..2^64)")))
        }
    }
}

fn check_kind(kind: &str) -> Result<(), &'static str> {
    let ok = (1..=32).contains(&kind.len())
        && kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok { Ok(()) } else { Err("use 1-32 characters from a-z 0-9 -") }
}

/// Names are plain file names from a small alphabet.
pub(crate) fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err("use 1-128 characters");
    }
    if name.starts_with('.') {
        return Err("must not start with '.'");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err("use only A-Z a-z 0-9 . _ - (a plain file name, no path)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest::new(
            "policy-bundle",
            "prod",
            7,
            vec![Entry::of("web.yaml", b"web"), Entry::of("base.yaml", b"base")],
        )
        .unwrap()
    }

    #[test]
    fn canonical_bytes_are_exact_and_sorted() {
        let text = String::from_utf8(sample().to_bytes()).unwrap();
        assert_eq!(
            text,
            format!(
                "forgeone-manifest v1\nkind policy-bundle\nname prod\nversion 7\n\
                 file {} 4 base.yaml\nfile {} 3 web.yaml\n",
                sha3_256(b"base"),
                sha3_256(b"web")
            )
        );
    }

    #[test]
    fn entry_order_does_not_change_the_bytes() {
        let a = Manifest::new("k", "n", 1, vec![Entry::of("a", b"1"), Entry::of("b", b"2")]).unwrap();
        let b = Manifest::new("k", "n", 1, vec![Entry::of("b", b"2"), Entry::of("a", b"1")]).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
    }

    #[test]
    fn signed_message_is_domain_then_manifest() {
        let m = sample();
        let msg = m.signed_message();
        assert!(msg.starts_with(b"forgeone-manifest-v1\0"));
        assert_eq!(&msg[SIGNING_DOMAIN.len()..], &m.to_bytes()[..]);
    }

    #[test]
    fn every_field_changes_the_signed_bytes() {
        let base = sample().signed_message();
        let variants = [
            Manifest::new("forgepkg", "prod", 7, sample().entries).unwrap(),
            Manifest::new("policy-bundle", "prod2", 7, sample().entries).unwrap(),
            Manifest::new("policy-bundle", "prod", 8, sample().entries).unwrap(),
            Manifest::new("policy-bundle", "prod", 7, vec![Entry::of("web.yaml", b"web")]).unwrap(),
            Manifest::new(
                "policy-bundle",
                "prod",
                7,
                vec![Entry::of("web.yaml", b"wex"), Entry::of("base.yaml", b"base")],
            )
            .unwrap(),
        ];
        for v in variants {
            assert_ne!(v.signed_message(), base, "{v:?}");
        }
    }

    #[test]
    fn parse_round_trips() {
        let m = sample();
        assert_eq!(Manifest::parse(&m.to_bytes()).unwrap(), m);
        let big = vec![7u8; 70_000];
        let t =
            Manifest::new("k", "n", 1, vec![Entry::tree_of("m.wasm", &big), Entry::of("c", b"c")]).unwrap();
        let text = String::from_utf8(t.to_bytes()).unwrap();
        assert!(text.ends_with(&format!(
            "file {} 1 c\ntree {} 70000 m.wasm\n",
            sha3_256(b"c"),
            sha3_256_tree(&big)
        )));
        let back = Manifest::parse(text.as_bytes()).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.entry("m.wasm").unwrap().hash, Hash::Tree);
        assert_eq!(back.entry("m.wasm").unwrap().actual(&big), *t.entry("m.wasm").unwrap());
        for bad in ["trees", "Tree", "tree:"] {
            let e = Manifest::parse(text.replace("tree ", &format!("{bad} ")).as_bytes()).unwrap_err();
            assert!(e.to_string().starts_with("line 6: expected `file "), "{bad}: {e}");
        }
    }

    #[test]
    fn parse_rejects_every_non_canonical_spelling() {
        let good = String::from_utf8(sample().to_bytes()).unwrap();
        let d = sha3_256(b"base").to_hex();
        let cases: Vec<(String, &str)> = vec![
            (good.replace("version 7", "version 07"), "leading zero"),
            (good.replace("version 7", "version +7"), "sign"),
            (good.replace("version 7", "version  7"), "double space"),
            (good.replace("name prod", "name prod "), "trailing space"),
            (good.replace('\n', "\r\n"), "CRLF"),
            (good.trim_end().to_string(), "no final newline"),
            (good.replace(&d, &d.to_uppercase()), "uppercase digest"),
            (good.replace("base.yaml", "../base.yaml"), "path in name"),
            (good.replace("base.yaml", "zzz.yaml"), "unsorted"),
            (good.replace("web.yaml", "base.yaml").replace(&sha3_256(b"web").to_hex(), &d), "duplicate"),
            (good.replace("kind policy-bundle\n", ""), "missing kind"),
            (good.replace("forgeone-manifest v1", "forgeone-manifest v2"), "format"),
            (format!("{good}\n"), "blank line"),
            (good.replace("name prod", "name pröd"), "non-ASCII"),
            ("forgeone-manifest v1\nkind k\nname n\nversion 1\n".to_string(), "no entries"),
        ];
        for (text, why) in cases {
            assert!(Manifest::parse(text.as_bytes()).is_err(), "accepted {why}: {text:?}");
        }
    }

    #[test]
    fn errors_name_the_line() {
        let good = String::from_utf8(sample().to_bytes()).unwrap();
        let err = Manifest::parse(good.replace("version 7", "version x").as_bytes()).unwrap_err();
        assert!(matches!(err, ManifestError::Syntax { line: 4, .. }), "{err}");
    }

    #[test]
    fn builder_rejects_bad_names_and_duplicates() {
        assert!(matches!(
            Manifest::new("k", "n", 1, vec![Entry::of("a/b", b"")]),
            Err(ManifestError::BadName { what: "payload", .. })
        ));
        assert!(matches!(
            Manifest::new("k", "n", 1, vec![Entry::of("a", b""), Entry::of("a", b"x")]),
            Err(ManifestError::Duplicate { .. })
        ));
        assert_eq!(Manifest::new("k", "n", 1, vec![]), Err(ManifestError::NoEntries));
        assert!(matches!(
            Manifest::new("K", "n", 1, vec![Entry::of("a", b"")]),
            Err(ManifestError::BadName { .. })
        ));
    }
}
