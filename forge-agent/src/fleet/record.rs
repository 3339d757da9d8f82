//! Trust records: what one node (or the operators) say about a workload
//! identity, signed. On the bus a record travels as an envelope holding the
//! exact bytes signed. A node signs its records alone, with its agent key:
//!
//! ```json
//! {"body": "{\"node\":\"node-a\",…}", "key": "<public key hex>", "sig": "<signature hex>"}
//! ```
//!
//! Operators sign theirs (releases, in practice) k of n, as they sign policy
//! bundles: the same trust config and threshold. Several signatures travel
//! as the lines of a bundle's `SIGNATURES` file (`sign::signature`):
//!
//! ```json
//! {"body": "{\"node\":\"alice\",…}", "signatures": "ed25519 <key hex> <sig hex>\ned25519 …\n"}
//! ```
//!
//! Every signature is ed25519 over [`DOMAIN`] followed by the body bytes. A
//! record of one signature whose key is a node key is that node's record;
//! any other record is an operator record, and counts only with at least the
//! threshold's number of valid signatures from distinct operator keys (one
//! signature in the first form counts as one). Why nodes sign alone: a node
//! reports what it saw on its own host, there is nobody else to co-sign it,
//! and a node record only ever restricts (docs/fleet.md).

use serde::{Deserialize, Serialize};

use crate::{
    policy::{Tier, Workload},
    sign::{
        KeyId, PublicKey, Refusal, SigningKey,
        digest::sha3_256,
        signature::{AddOutcome, Rejection, SignatureEntry, Signatures, Signer, Tally},
        trust::TrustConfig,
    },
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
    #[error("operator record: {0}")]
    Quorum(Box<Refusal>),
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

    /// Signs this record with `key` (one signature: a node's record, or an
    /// operator's when one suffices; [`SignedRecord::cosign`] adds more).
    pub fn sign(&self, key: &SigningKey) -> SignedRecord {
        let body = serde_json::to_string(self).unwrap_or_default();
        let mut env = SignedRecord { body, key: key.public_key().to_hex(), ..SignedRecord::default() };
        env.sig = hex::encode(key.sign(&env.message()));
        env
    }
}

/// A record as it travels on the bus: the body and either one signature
/// (`key`, `sig`) or several (`signatures`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRecord {
    pub body: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sig: String,
    /// `ed25519 <key> <signature>` lines, sorted (a bundle's SIGNATURES format).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub signatures: String,
}

/// Who signed a verified record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum Issuer {
    Node(String),
    Operator(String),
}

/// A record whose signatures checked out.
#[derive(Clone, Debug)]
pub struct Verified {
    pub record: TrustRecord,
    pub issuer: Issuer,
    /// The keys whose signatures counted (a node's one, or k operators').
    pub signers: Vec<KeyId>,
    /// The envelope as received (kept by the ledger, stored on disk).
    pub envelope: SignedRecord,
}

impl SignedRecord {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The bytes every signature covers: [`DOMAIN`] and the body.
    pub fn message(&self) -> Vec<u8> {
        let mut msg = DOMAIN.to_vec();
        msg.extend_from_slice(self.body.as_bytes());
        msg
    }

    /// The signatures, whichever form they travel in.
    pub fn signature_list(&self) -> Result<Signatures, RecordError> {
        match (self.key.is_empty() && self.sig.is_empty(), self.signatures.is_empty()) {
            (false, true) => {
                let key = PublicKey::parse(&self.key, "record key")
                    .map_err(|e| RecordError::Malformed(e.to_string()))?;
                let signature: [u8; 64] = hex::decode(&self.sig)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| RecordError::Malformed("sig: not 64 hex-encoded bytes".into()))?;
                Ok(Signatures::from_entries(vec![SignatureEntry { key, signature }]))
            }
            (true, false) => Signatures::parse(self.signatures.as_bytes())
                .map_err(|e| RecordError::Malformed(format!("signatures: {e}"))),
            _ => Err(RecordError::Malformed("needs either key and sig, or signatures".into())),
        }
    }

    /// Adds `key`'s signature (operator records, k of n); the envelope then
    /// carries its signatures as `signatures` lines. Signing twice with one
    /// key replaces its signature.
    pub fn cosign(&mut self, key: &SigningKey) -> Result<AddOutcome, RecordError> {
        let mut list = self.signature_list()?;
        let outcome = list.add(key, &self.message());
        self.key.clear();
        self.sig.clear();
        self.signatures = String::from_utf8_lossy(&list.to_bytes()).into_owned();
        Ok(outcome)
    }

    /// Parses and verifies an envelope. A node key (in `nodes`) signing
    /// alone may only speak for the node its name says; any other record
    /// needs the threshold of `operators` (k of n distinct operator keys)
    /// and must name one of the operators who signed it.
    pub fn verify(
        bytes: &[u8],
        nodes: &TrustConfig,
        operators: &TrustConfig,
    ) -> Result<Verified, RecordError> {
        Self::verify_with(bytes, Some(nodes), operators)
    }

    /// Verifies an operator record alone (what `forge fleet` checks before
    /// publishing one).
    pub fn verify_operator(bytes: &[u8], operators: &TrustConfig) -> Result<Verified, RecordError> {
        Self::verify_with(bytes, None, operators)
    }

    fn verify_with(
        bytes: &[u8],
        nodes: Option<&TrustConfig>,
        operators: &TrustConfig,
    ) -> Result<Verified, RecordError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge(bytes.len()));
        }
        let env: SignedRecord =
            serde_json::from_slice(bytes).map_err(|e| RecordError::Malformed(e.to_string()))?;
        let list = env.signature_list()?;
        let msg = env.message();
        let node = match list.entries() {
            [one] if env.signatures.is_empty() => {
                nodes.and_then(|n| n.find(&one.key)).map(|k| (one, k.label.clone()))
            }
            _ => None,
        };
        let (node_label, counted) = match node {
            Some((one, label)) => {
                if !one.key.verify(&msg, &one.signature) {
                    return Err(RecordError::BadSignature(one.key.id()));
                }
                (Some(label.clone()), vec![Signer { key_id: one.key.id(), label }])
            }
            None => (None, operator_quorum(&list, &msg, operators)?),
        };
        let record: TrustRecord =
            serde_json::from_str(&env.body).map_err(|e| RecordError::Malformed(format!("body: {e}")))?;
        record.identity.check()?;
        if !super::valid_name(&record.node) {
            return Err(RecordError::Invalid(format!("node {:?}: 1-64 of [A-Za-z0-9_-]", record.node)));
        }
        if !counted.iter().any(|s| s.label == record.node) {
            let labels: Vec<&str> = counted.iter().map(|s| s.label.as_str()).collect();
            return Err(RecordError::NodeMismatch { node: record.node, label: labels.join(", ") });
        }
        let issuer = match node_label {
            Some(label) => Issuer::Node(label),
            None => Issuer::Operator(record.node.clone()),
        };
        let signers = counted.iter().map(|s| s.key_id).collect();
        Ok(Verified { record, issuer, signers, envelope: env })
    }
}

/// The operator signatures that count, if they meet the threshold. A lone
/// signature by nobody's key, or one that does not verify, is reported as
/// just that.
fn operator_quorum(
    list: &Signatures,
    msg: &[u8],
    operators: &TrustConfig,
) -> Result<Vec<Signer>, RecordError> {
    let Tally { counted, rejected } = list.tally(msg, operators);
    if counted.len() >= operators.threshold() {
        return Ok(counted);
    }
    match (counted.as_slice(), rejected.as_slice()) {
        ([], [Rejection::Untrusted { key_id }]) => Err(RecordError::UnknownKey(*key_id)),
        ([], [Rejection::BadSignature { key_id, .. }]) => Err(RecordError::BadSignature(*key_id)),
        _ => Err(RecordError::Quorum(Box::new(Refusal::TooFewSignatures {
            valid: counted.len(),
            required: operators.threshold(),
            counted,
            rejected,
        }))),
    }
}
