//! Policy documents as written in YAML, with the place of every value kept
//! so that errors can name file, line and column.

use std::collections::BTreeMap;

use marked_yaml::{LoadError, Spanned};
use serde::Deserialize;

use super::diag::{Diagnostic, Diagnostics, Place};

pub const API_VERSION: &str = "forgeone.dev/v1alpha1";

/// Errors from reading policy text: every problem found, each with its place.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub Diagnostics);

/// A `kind: Policy` document.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Policy {
    pub api_version: Spanned<String>,
    pub kind: Spanned<String>,
    pub metadata: Metadata,
    pub spec: Spec,
    /// File the document came from (set after parsing).
    #[serde(skip)]
    pub source: String,
    /// Lines before this document in its file (multi-document files).
    #[serde(skip)]
    pub line_offset: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// Which workloads this policy governs; none = every governed workload.
    #[serde(default)]
    pub selector: Option<Selector>,
    /// Initial trust tier of the selected workloads.
    #[serde(default)]
    pub trust: Option<Spanned<String>>,
    /// `enforce` (default) or `monitor`.
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
    /// Deny governed workloads bpf(), ptrace of the agent and signals to it (default true).
    #[serde(default)]
    pub self_protect: Option<Spanned<String>>,
    /// Action per operation class when no rule matches. A class no policy
    /// of a workload mentions is denied (zero trust).
    #[serde(default)]
    pub defaults: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// What each lower trust tier changes: rules and defaults added at that
    /// tier and every tier below it; `quarantine: true` isolates the workload.
    #[serde(default)]
    pub escalation: BTreeMap<String, Escalation>,
    /// What Wasm capsules governed by this policy may use beyond files and
    /// network (which follow the rules above).
    #[serde(default)]
    pub capsule: Option<CapsuleSpec>,
}

/// Host facilities of Wasm capsules that have no kernel operation class.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapsuleSpec {
    /// Environment variables capsules may read (default: none).
    #[serde(default)]
    pub env: Vec<Spanned<String>>,
    /// `allow` or `deny` (default) reading clocks.
    #[serde(default)]
    pub clock: Option<Spanned<String>>,
    /// `allow` or `deny` (default) random bytes.
    #[serde(default)]
    pub random: Option<Spanned<String>>,
}

/// Workload selection. Categories combine with AND; items in one category with OR.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// cgroup paths relative to the cgroup v2 mount; a trailing `/*` selects the children.
    #[serde(default)]
    pub cgroups: Vec<Spanned<String>>,
    /// Executable paths of the workload's main process.
    #[serde(default)]
    pub executables: Vec<Spanned<String>>,
    /// `sha3-256:<hex>` digests of the executable or capsule.
    #[serde(default)]
    pub digests: Vec<Spanned<String>>,
    /// Key ids of capsule signers.
    #[serde(default)]
    pub signers: Vec<Spanned<String>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Escalation {
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub defaults: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub quarantine: Option<Spanned<String>>,
}

/// One rule. Which fields apply depends on the operation classes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique across the policy set; shown in events and explanations.
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    /// One operation class...
    #[serde(default)]
    pub op: Option<Spanned<String>>,
    /// ...or several.
    #[serde(default)]
    pub ops: Vec<Spanned<String>>,
    pub action: Spanned<String>,
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
    /// Trust tiers at which this rule applies (default: all).
    #[serde(default)]
    pub tiers: Vec<Spanned<String>>,
    /// exec/file: absolute paths; a trailing `/` (or `/*`) makes a directory prefix.
    #[serde(default)]
    pub paths: Vec<Spanned<String>>,
    /// net: CIDRs (a bare address is one host); none = any address.
    #[serde(default)]
    pub cidrs: Vec<Spanned<String>>,
    /// net: `80`, `8000-8100` or `*`.
    #[serde(default)]
    pub ports: Option<Spanned<String>>,
    /// syscall: names (covering every ABI) or `ABI:name` (docs/policy.md).
    #[serde(default)]
    pub syscalls: Vec<Spanned<String>>,
}

impl Rule {
    /// The rule's operation classes as written, with their places.
    pub fn op_list(&self) -> Vec<&Spanned<String>> {
        self.op.iter().chain(self.ops.iter()).collect()
    }

    /// The best place to point at for the whole rule.
    pub fn anchor(&self) -> &Spanned<String> {
        self.name.as_ref().or(self.op.as_ref()).or(self.ops.first()).unwrap_or(&self.action)
    }
}

impl Policy {
    /// Parses a file of one or more documents (separated by `---` lines).
    /// Every syntax or shape error is reported with its place.
    pub fn parse_file(text: &str, source: &str) -> Result<Vec<Self>, PolicyError> {
        let mut docs = Vec::new();
        let mut diags = Vec::new();
        for (offset, chunk) in split_documents(text) {
            if chunk.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
                continue;
            }
            match parse_one(chunk, source, offset) {
                Ok(p) => docs.push(p),
                Err(d) => diags.push(d),
            }
        }
        if !diags.is_empty() {
            return Err(PolicyError(Diagnostics(diags)));
        }
        if docs.is_empty() {
            return Err(PolicyError(Diagnostics(vec![
                Place::new(source, None, 0).error("no policy document in the file"),
            ])));
        }
        Ok(docs)
    }

    /// Parses exactly one document.
    pub fn from_yaml(text: &str, source: &str) -> Result<Self, PolicyError> {
        let mut docs = Self::parse_file(text, source)?;
        if docs.len() != 1 {
            let msg = format!("expected one policy document, found {}", docs.len());
            return Err(PolicyError(Diagnostics(vec![Place::new(source, None, 0).error(msg)])));
        }
        Ok(docs.remove(0))
    }

    /// The place of a spanned value of this document.
    pub fn place<T>(&self, v: &Spanned<T>) -> Place {
        Place::of(&self.source, v, self.line_offset)
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }
}

fn parse_one(chunk: &str, source: &str, line_offset: usize) -> Result<Policy, Diagnostic> {
    let mut policy: Policy = marked_yaml::from_yaml(0, chunk).map_err(|e| {
        let (marker, message) = match &e {
            marked_yaml::FromYamlError::ParseYaml(le) => (load_error_marker(le), le.to_string()),
            marked_yaml::FromYamlError::FromNode(ne) => (ne.start_mark(), ne.to_string()),
        };
        let message = strip_location(&message);
        let marker = marker.filter(|m| m.line() > 0).or_else(|| locate_unknown_field(chunk, &message));
        Place::new(source, marker.as_ref(), line_offset).error(message)
    })?;
    policy.source = source.to_string();
    policy.line_offset = line_offset;
    if *policy.api_version != API_VERSION {
        return Err(policy.place(&policy.api_version).error(format!(
            "apiVersion {:?} is not supported; expected {API_VERSION:?}",
            *policy.api_version
        )));
    }
    if *policy.kind != "Policy" {
        return Err(policy
            .place(&policy.kind)
            .error(format!("kind {:?} is not supported; expected \"Policy\"", *policy.kind)));
    }
    Ok(policy)
}

fn load_error_marker(e: &LoadError) -> Option<marked_yaml::Marker> {
    match e {
        LoadError::TopLevelMustBeMapping(m)
        | LoadError::TopLevelMustBeSequence(m)
        | LoadError::UnexpectedAnchor(m)
        | LoadError::MappingKeyMustBeScalar(m)
        | LoadError::UnexpectedTag(m)
        | LoadError::ScanError(m, _) => Some(*m),
        _ => None,
    }
}

/// marked-yaml reports unknown fields without a place; find the key in the text.
fn locate_unknown_field(chunk: &str, message: &str) -> Option<marked_yaml::Marker> {
    let field = message.split('`').nth(1).filter(|f| !f.is_empty())?;
    for (i, line) in chunk.lines().enumerate() {
        let mut from = 0;
        while let Some(pos) = line[from..].find(field) {
            let col = from + pos;
            let before = line[..col].chars().last();
            let after = line[col + field.len()..].trim_start().chars().next();
            if before.is_none_or(|c| !c.is_alphanumeric() && c != '_' && c != '.') && after == Some(':') {
                return Some(marked_yaml::Marker::new(0, 0, i + 1, col + 1));
            }
            from = col + field.len();
        }
    }
    None
}

/// marked-yaml appends its own "at line X column Y"; we print the place first.
fn strip_location(msg: &str) -> String {
    msg.split(" at line ").next().unwrap_or(msg).trim_end_matches(':').to_string()
}

/// Splits multi-document YAML on `---` lines, returning each chunk with the
/// number of lines before it.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut start_line = 0usize;
    let mut pos = 0usize;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_end() == "---" {
            out.push((start_line, &text[start..pos]));
            start = pos + line.len();
            start_line = i + 1;
        }
        pos += line.len();
    }
    out.push((start_line, &text[start..]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "apiVersion: forgeone.dev/v1alpha1\nkind: Policy\nmetadata: {name: a}\nspec: {}\n";

    #[test]
    fn multi_document_files_keep_line_numbers() {
        let text = format!("{DOC}---\n# comment\n{}", DOC.replace("name: a", "name: b"));
        let docs = Policy::parse_file(&text, "two.yaml").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].name(), "b");
        assert_eq!(docs[1].place(&docs[1].metadata.name).line, 9);
    }

    #[test]
    fn shape_errors_name_line_and_column() {
        let text = "apiVersion: forgeone.dev/v1alpha1\nkind: Policy\nmetadata: {name: a}\nspec:\n  rules:\n    - {op: exec, action: deny, pathz: [/x]}\n";
        let err = Policy::from_yaml(text, "p.yaml").unwrap_err().0;
        assert_eq!(err.0.len(), 1);
        let d = &err.0[0];
        assert_eq!((d.file.as_str(), d.line), ("p.yaml", 6), "{d}");
        assert!(d.message.contains("pathz"), "{d}");
    }

    #[test]
    fn syntax_errors_name_the_place() {
        let err = Policy::from_yaml("apiVersion: [\n", "broken.yaml").unwrap_err().0;
        assert!(err.0[0].line >= 1, "{}", err);
        assert!(err.to_string().starts_with("broken.yaml:"), "{err}");
    }

    #[test]
    fn an_empty_unknown_field_name_is_an_error_not_a_hang() {
        let text = "apiVersion: forgeone.dev/v1alpha1\nkind: Policy\nmetadata: {name: x}\nspec:\n  \"\": 1\n";
        let err = Policy::from_yaml(text, "e.yaml").unwrap_err().to_string();
        assert!(err.starts_with("e.yaml"), "{err}");
    }

    #[test]
    fn wrong_api_version_and_kind() {
        let err = Policy::from_yaml(&DOC.replace("v1alpha1", "v9"), "v.yaml").unwrap_err().to_string();
        assert!(err.starts_with("v.yaml:1:"), "{err}");
        let err =
            Policy::from_yaml(&DOC.replace("kind: Policy", "kind: Pod"), "k.yaml").unwrap_err().to_string();
        assert!(err.starts_with("k.yaml:2:"), "{err}");
    }
}
