//! `forge.toml`, the agent's configuration file (`forge agent run --config
//! FILE`). Every key is optional and mirrors a flag of `forge agent run`;
//! the command line wins. `deploy/forge.toml` documents every key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The keys of `forge.toml`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub pin_root: Option<PathBuf>,
    /// `lsm`, `cgroup`, `tracepoint`.
    #[serde(default)]
    pub backends: Vec<String>,
    #[serde(default)]
    pub policies: Vec<PathBuf>,
    #[serde(default)]
    pub govern: Vec<String>,
    pub trust: Option<PathBuf>,
    pub capsule_trust: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub strict: Option<bool>,
    pub socket: Option<PathBuf>,
    /// A group whose members may use the API besides root.
    pub api_group: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub agent_key: Option<PathBuf>,
    pub traces: Option<bool>,
    pub trace_sample: Option<u32>,
    pub ring_bytes: Option<u32>,
    pub scoring: Option<PathBuf>,
    pub metrics_addr: Option<String>,
    /// OTLP collector URL; `otlp_protocol` `grpc` or `http`; `otlp_interval_ms`.
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: Option<String>,
    pub otlp_interval_ms: Option<u64>,
    pub json: Option<bool>,
    /// Fleet (docs/fleet.md): NATS URL, this node's name, the node keys' trust file, the rule.
    pub fleet_nats: Option<String>,
    pub fleet_node: Option<String>,
    pub fleet_nodes: Option<PathBuf>,
    pub fleet_rule: Option<crate::fleet::Rule>,
}

impl AgentConfig {
    /// Parses a file's text; `path` names it in errors. Relative paths in
    /// the file are taken relative to the file's directory.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid { path: path.to_path_buf(), message };
        let mut c: Self = toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_string()))?;
        for b in &c.backends {
            if !matches!(b.as_str(), "lsm" | "cgroup" | "tracepoint") {
                return Err(invalid(format!(
                    "backends: unknown backend {b:?}; expected lsm, cgroup or tracepoint"
                )));
            }
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for p in c.policies.iter_mut() {
            rebase(p);
        }
        for p in [
            &mut c.trust,
            &mut c.state,
            &mut c.socket,
            &mut c.data_dir,
            &mut c.agent_key,
            &mut c.scoring,
            &mut c.pin_root,
            &mut c.fleet_nodes,
        ]
        .into_iter()
        .flatten()
        {
            rebase(p);
        }
        Ok(c)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../../deploy/forge.toml");

    #[test]
    fn the_shipped_sample_parses_and_documents_every_key() {
        let c = AgentConfig::parse(SAMPLE, Path::new("/etc/forge/forge.toml")).unwrap();
        assert_eq!(c.policies, vec![PathBuf::from("/etc/forge/policies")]);
        assert_eq!(c.ring_bytes, Some(1 << 20));
        // Every key, set or commented out, appears in the sample.
        for key in [
            "pin_root",
            "backends",
            "policies",
            "govern",
            "trust",
            "state",
            "strict",
            "socket",
            "data_dir",
            "agent_key",
            "traces",
            "trace_sample",
            "ring_bytes",
            "scoring",
            "metrics_addr",
            "otlp_endpoint",
            "otlp_protocol",
            "otlp_interval_ms",
            "json",
            "capsule_trust",
            "fleet_nats",
            "fleet_node",
            "fleet_nodes",
            "fleet_rule",
        ] {
            assert!(
                SAMPLE.lines().any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} ="))),
                "deploy/forge.toml does not document {key}"
            );
        }
    }

    #[test]
    fn mistakes_are_named_and_relative_paths_follow_the_file() {
        let e = AgentConfig::parse("sockt = \"/x\"\n", Path::new("f.toml")).unwrap_err().to_string();
        assert!(e.starts_with("f.toml: ") && e.contains("sockt"), "{e}");
        let e = AgentConfig::parse("backends = [\"ebpf\"]\n", Path::new("f.toml")).unwrap_err().to_string();
        assert!(e.contains("unknown backend \"ebpf\""), "{e}");
        let c = AgentConfig::parse("policies = [\"p\"]\n", Path::new("/etc/forge/forge.toml")).unwrap();
        assert_eq!(c.policies, vec![PathBuf::from("/etc/forge/p")]);
    }
}
