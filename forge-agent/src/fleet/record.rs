//! Trust records: what one node (or an operator) says about a workload
//! identity, signed with its key. On the bus a record travels as an
//! envelope holding the exact bytes signed:
//!
//! ```json
//! {"body": "{\"node\":\"node-a\",…}", "key": "<public key hex>", "sig": "<signature hex>"}
//! ```
//!
//! The signature is ed25519 over [`DOMAIN`] followed by the body bytes.

use serde::{Deserialize, Serialize};

use crate::{
    policy::{Tier, Workload},
    sign::{KeyId, PublicKey, SigningKey, digest::sha3_256, trust::TrustConfig},
};

/// Domain separation: a record signature is never valid as anything else.
pub const DOMAIN: &[u8] = b"forgeone-fleet-trust-v1\0";
/// Largest envelope accepted from the bus.
pub const MAX_RECORD_BYTES: usize = 64 << 10;

/// Errors of this module; each names what is wrong with the record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("not a trust record envelope: {0}")]
    Malformed(String),
    #[error("record too large: {0} bytes (at most {MAX_RECORD_BYTES})")]
    TooLarge(usize),
    #[error("signed by key {0}, which is neither a fleet node key nor an operator key here")]
    UnknownKey(KeyId),
    #[error("bad signature by key {0}")]
    BadSignature(KeyId),
    #[error("record names node {node:?} but is signed by the key of {label:?}")]
    NodeMismatch { node: String, label: String },
    #[error("invalid record: {0}")]
    Invalid(String),
}

/// Who a workload is across nodes: a module or executable digest (with
/// its signers), or else a cgroup path relative to the cgroup v2 mount.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// `sha3-256:<hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

impl Identity {
    /// The identity of a governed workload: its digest when it has one.
    pub fn of(w: &Workload) -> Option<Self> {
        match (&w.digest, &w.cgroup) {
            (Some(d), _) => Some(Self { digest: Some(d.clone()), signers: w.signers.clone(), cgroup: None }),
            (None, Some(c)) => Some(Self { cgroup: Some(c.clone()), ..Self::default() }),
            (None, None) => None,
        }
    }

    /// Parses `sha3-256:<64 hex>` or `cgroup:<path>`.
    pub fn parse(s: &str) -> Result<Self, RecordError> {
        if let Some(hex) = s.strip_prefix("sha3-256:") {
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(RecordError::Invalid(format!("{s:?}: a digest is sha3-256: and 64 hex digits")));
            }
            return Ok(Self {
                digest: Some(format!("sha3-256:{}", hex.to_ascii_lowercase())),
                ..Self::default()
            });
        }
        if let Some(path) = s.strip_prefix("cgroup:") {
            let path = path.trim_matches('/');
            if path.is_empty() {
                return Err(RecordError::Invalid(format!("{s:?}: empty cgroup path")));
            }
            return Ok(Self { cgroup: Some(path.to_string()), ..Self::default() });
        }
        Err(RecordError::Invalid(format!("{s:?}: expected sha3-256:<hex> or cgroup:<path>")))
    }

    /// The bucket key part for this identity (`d-<hex>` or `c-<hex>`).
    pub fn key(&self) -> String {
        match (&self.digest, &self.cgroup) {
            (Some(d), _) => format!("d-{}", d.trim_start_matches("sha3-256:")),
            (None, Some(c)) => format!("c-{}", &sha3_256(c.as_bytes()).to_hex()[..32]),
            (None, None) => "none".to_string(),
        }
    }

    /// Whether a local workload is this identity (by digest, else by cgroup).
    pub fn matches(&self, w: &Workload) -> bool {
        match &self.digest {
            Some(d) => w.digest.as_deref() == Some(d.as_str()),
            None => self.cgroup.is_some() && self.cgroup == w.cgroup,
        }
    }

    fn check(&self) -> Result<(), RecordError> {
        match (&self.digest, &self.cgroup) {
            (Some(d), None) => Self::parse(d).map(drop),
            (None, Some(c)) if !c.is_empty() => Ok(()),
            _ => Err(RecordError::Invalid("identity: exactly one of digest or cgroup".into())),
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.digest, &self.cgroup) {
            (Some(d), _) => f.write_str(d),
            (None, Some(c)) => write!(f, "cgroup:{c}"),
            (None, None) => f.write_str("(none)"),
        }
    }
}

/// What a record says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordAction {
    /// The node lowered the workload's trust tier.
    Tier,
    /// The node quarantined it.
    Quarantine,
    /// Released: by the node (withdraws its own record) or by an operator
    /// (clears every earlier record of the identity).
    Release,
}

/// One statement about an identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustRecord {
    /// The issuing node (or operator key name).
    pub node: String,
    pub identity: Identity,
    pub action: RecordAction,
    /// The tier in force after the action.
    pub tier: Tier,
    /// Why: the top anomaly features, or the operator's words.
    pub reason: Vec<String>,
    /// The head hash of the workload's execution trace on the issuing node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_head: Option<String>,
    /// Unix time in milliseconds on the issuing node.
    pub issued_at_ms: u64,
    /// Orders records of one node issued in the same millisecond.
    pub seq: u64,
}

impl TrustRecord {
    /// The bucket key: one value per identity and issuer.
    pub fn bucket_key(&self) -> String {
        format!("{}.{}", self.identity.key(), self.node)
    }

    /// Signs this record with `key`.
    pub fn sign(&self, key: &SigningKey) -> SignedRecord {
        let body = serde_json::to_string(self).unwrap_or_default();
        let mut msg = DOMAIN.to_vec();
        msg.extend_from_slice(body.as_bytes());
        SignedRecord { body, key: key.public_key().to_hex(), sig: hex::encode(key.sign(&msg)) }
    }
}

/// A record as it travels on the bus.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRecord {
    pub body: String,
    pub key: String,
    pub sig: String,
}

/// Who signed a verified record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum Issuer {
    Node(String),
    Operator(String),
}

/// A record whose signature checked out.
#[derive(Clone, Debug)]
pub struct Verified {
    pub record: TrustRecord,
    pub issuer: Issuer,
    pub key_id: KeyId,
}

impl SignedRecord {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and verifies an envelope. A node key (in `nodes`) may only
    /// speak for the node its name says; an operator key (in `operators`)
    /// may issue any record, typically a release.
    pub fn verify(
        bytes: &[u8],
        nodes: &TrustConfig,
        operators: &TrustConfig,
    ) -> Result<Verified, RecordError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge(bytes.len()));
        }
        let env: SignedRecord =
            serde_json::from_slice(bytes).map_err(|e| RecordError::Malformed(e.to_string()))?;
        let key =
            PublicKey::parse(&env.key, "record key").map_err(|e| RecordError::Malformed(e.to_string()))?;
        let sig: [u8; 64] = hex::decode(&env.sig)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| RecordError::Malformed("sig: not 64 hex-encoded bytes".into()))?;
        let (issuer_label, operator) = match (nodes.find(&key), operators.find(&key)) {
            (Some(k), _) => (k.label.clone(), false),
            (None, Some(k)) => (k.label.clone(), true),
            (None, None) => return Err(RecordError::UnknownKey(key.id())),
        };
        let mut msg = DOMAIN.to_vec();
        msg.extend_from_slice(env.body.as_bytes());
        if !key.verify(&msg, &sig) {
            return Err(RecordError::BadSignature(key.id()));
        }
        let record: TrustRecord =
            serde_json::from_str(&env.body).map_err(|e| RecordError::Malformed(format!("body: {e}")))?;
        record.identity.check()?;
        if !super::valid_name(&record.node) {
            return Err(RecordError::Invalid(format!("node {:?}: 1-64 of [A-Za-z0-9_-]", record.node)));
        }
        if record.node != issuer_label {
            return Err(RecordError::NodeMismatch { node: record.node, label: issuer_label });
        }
        let issuer = if operator { Issuer::Operator(issuer_label) } else { Issuer::Node(issuer_label) };
        Ok(Verified { record, issuer, key_id: key.id() })
    }
}
