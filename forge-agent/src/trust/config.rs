//! The scoring file (`forge agent run --scoring FILE`): weights, windows and
//! thresholds over the documented defaults. TOML; every key optional:
//!
//! ```toml
//! learning_secs = 30          # how long a workload learns
//! window_secs = 60            # a score sums the features of this window
//! rate_spike_factor = 40      # events in the window vs the learned rate
//! rate_min_events = 200
//!
//! [weights]                   # per feature; unlisted ones keep their default
//! new_binary = 25
//! exec_from_writable_dir = 40
//! new_destination = 20
//! denied_operation = 15
//! denied_syscall = 40
//! self_protection_hit = 60
//! rate_spike = 25
//!
//! [thresholds]
//! suspicious = 40
//! compromised = 80
//! ```

use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;

use super::{FeatureKind, ScoreConfig, controller::Thresholds};

#[derive(Debug, thiserror::Error)]
pub enum ScoringError {
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: std::path::PathBuf, message: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    learning_secs: Option<u64>,
    window_secs: Option<u64>,
    rate_spike_factor: Option<u64>,
    rate_min_events: Option<u64>,
    #[serde(default)]
    weights: BTreeMap<FeatureKind, u32>,
    #[serde(default)]
    thresholds: Option<PartialThresholds>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialThresholds {
    suspicious: Option<u32>,
    compromised: Option<u32>,
}

/// Parses a scoring file's text; `path` names it in errors.
pub fn parse(text: &str, path: &Path) -> Result<(ScoreConfig, Thresholds), ScoringError> {
    let invalid = |message: String| ScoringError::Invalid { path: path.to_path_buf(), message };
    let f: File = toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_string()))?;
    let mut config = ScoreConfig::default();
    let secs = |name: &str, v: u64| {
        if v == 0 || v > 86_400 * 30 {
            Err(invalid(format!("{name} = {v}: expected 1 to {} seconds", 86_400 * 30)))
        } else {
            Ok(v * 1_000_000_000)
        }
    };
    if let Some(v) = f.learning_secs {
        config.learning_ns = secs("learning_secs", v)?;
    }
    if let Some(v) = f.window_secs {
        config.window_ns = secs("window_secs", v)?;
    }
    if let Some(v) = f.rate_spike_factor {
        config.rate_spike_factor = v.max(1);
    }
    if let Some(v) = f.rate_min_events {
        config.rate_min_events = v;
    }
    config.weights.extend(f.weights);
    let mut thresholds = Thresholds::default();
    if let Some(t) = f.thresholds {
        thresholds.suspicious = t.suspicious.unwrap_or(thresholds.suspicious);
        thresholds.compromised = t.compromised.unwrap_or(thresholds.compromised);
    }
    if thresholds.suspicious == 0 || thresholds.suspicious > thresholds.compromised {
        return Err(invalid(format!(
            "thresholds: suspicious ({}) must be at least 1 and at most compromised ({})",
            thresholds.suspicious, thresholds.compromised
        )));
    }
    Ok((config, thresholds))
}

/// Reads and parses a scoring file.
pub fn load(path: &Path) -> Result<(ScoreConfig, Thresholds), ScoringError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ScoringError::Io { path: path.to_path_buf(), source })?;
    parse(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_over_the_defaults() {
        let text = "learning_secs = 5\n[weights]\nnew_destination = 35\n[thresholds]\ncompromised = 70\n";
        let (c, t) = parse(text, Path::new("s.toml")).unwrap();
        assert_eq!(c.learning_ns, 5_000_000_000);
        assert_eq!(c.window_ns, ScoreConfig::default().window_ns);
        assert_eq!(c.weights[&FeatureKind::NewDestination], 35);
        assert_eq!(c.weights[&FeatureKind::NewBinary], 25);
        assert_eq!((t.suspicious, t.compromised), (40, 70));
        // The module docs' example is the defaults.
        let doc: String = include_str!("config.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| format!("{}\n", l.trim_start_matches("//!").trim_start()))
            .collect();
        let (c, t) = parse(&doc, Path::new("doc.toml")).unwrap();
        assert_eq!(c, ScoreConfig::default());
        assert_eq!(t, Thresholds::default());
    }

    #[test]
    fn mistakes_are_named_with_the_file() {
        let e = parse("[weights]\nnew_binaryy = 3\n", Path::new("s.toml")).unwrap_err().to_string();
        assert!(e.starts_with("s.toml: ") && e.contains("new_binaryy"), "{e}");
        let e = parse("learning_secs = 0\n", Path::new("s.toml")).unwrap_err().to_string();
        assert!(e.contains("learning_secs = 0: expected 1 to"), "{e}");
        let e = parse("[thresholds]\nsuspicious = 90\n", Path::new("s.toml")).unwrap_err().to_string();
        assert!(e.contains("suspicious (90) must be at least 1 and at most compromised (80)"), "{e}");
        let e = parse("bogus = 1\n", Path::new("s.toml")).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }
}
