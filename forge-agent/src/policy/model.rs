//! The policy document as written in YAML.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{source_name}:{line}:{column}: {message}")]
    Syntax { source_name: String, line: usize, column: usize, message: String },
    #[error("{source_name}: {message}")]
    Invalid { source_name: String, message: String },
}

/// A policy document (`kind: Policy`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Policy {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// `enforce` (default) or `monitor` for the whole policy.
    #[serde(default)]
    pub mode: ModeSpec,
    /// Deny governed workloads bpf(), ptrace of the agent and signals to it.
    #[serde(default = "yes")]
    pub self_protect: bool,
    /// Action per operation class when no rule matches. Zero trust: classes
    /// not listed default to `deny`.
    #[serde(default)]
    pub defaults: BTreeMap<String, ActionSpec>,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

const fn yes() -> bool {
    true
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModeSpec {
    #[default]
    Enforce,
    Monitor,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ActionSpec {
    Allow,
    Deny,
}

/// One rule. Which fields apply depends on `op`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    /// Shown in events and explanations; defaults to `rule-N`.
    #[serde(default)]
    pub name: Option<String>,
    /// `exec`, `file.read`, `file.write`, `net.connect`, `net.bind`,
    /// `net.sendto` or `syscall`. A list applies the rule to each.
    pub op: OneOrMany,
    pub action: ActionSpec,
    #[serde(default)]
    pub mode: Option<ModeSpec>,
    /// exec/file: absolute paths; a trailing `/` (or `/*`) makes a directory prefix.
    #[serde(default)]
    pub paths: Vec<String>,
    /// net: CIDRs (a bare address is a host); none = any address.
    #[serde(default)]
    pub cidrs: Vec<String>,
    /// net: `80`, `8000-8100` or `*`.
    #[serde(default)]
    pub ports: Option<PortSpec>,
    /// syscall: names for this architecture.
    #[serde(default)]
    pub syscalls: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn items(&self) -> Vec<&str> {
        match self {
            Self::One(s) => vec![s.as_str()],
            Self::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum PortSpec {
    Number(u16),
    Text(String),
}

pub const API_VERSION: &str = "forgeone.dev/v1alpha1";

impl Policy {
    /// Parses one YAML document; `source_name` (usually the file path) is
    /// named in every error.
    pub fn from_yaml(text: &str, source_name: &str) -> Result<Self, PolicyError> {
        let policy: Self = serde_yaml::from_str(text).map_err(|e| {
            let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            PolicyError::Syntax { source_name: source_name.to_string(), line, column, message: e.to_string() }
        })?;
        let invalid =
            |message: String| PolicyError::Invalid { source_name: source_name.to_string(), message };
        if policy.api_version != API_VERSION {
            return Err(invalid(format!(
                "apiVersion {:?} is not supported; expected {API_VERSION:?}",
                policy.api_version
            )));
        }
        if policy.kind != "Policy" {
            return Err(invalid(format!("kind {:?} is not supported; expected \"Policy\"", policy.kind)));
        }
        Ok(policy)
    }
}
