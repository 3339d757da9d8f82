//! Whether the policy generation in force was applied from a signed bundle
//! verified against the trust config (k of n), for `forge doctor`. The
//! daemon reports where its policy set came from in `status.policy`
//! ([`Provenance`]); [`assess`] judges it: anything but a verified bundle is
//! a problem in strict mode (a trust config is loaded) and a warning
//! otherwise.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{
    api::{Request, client},
    sign::trust::TrustConfig,
};

/// Where the policy set in force came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The files the agent started with (`--policy`, `policies` in forge.toml).
    Files,
    /// `policy_apply` (`forge policy apply`): unsigned documents.
    Api,
    /// `policy_apply_bundle`: a bundle verified against the trust config.
    Bundle,
}

/// The signed bundle behind the set in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleSource {
    pub name: String,
    pub version: u64,
    /// Key ids of the trusted keys whose signatures counted.
    pub signers: Vec<String>,
}

/// A trust config as reports show it: k, and the ids of the n keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustSummary {
    pub threshold: usize,
    pub keys: Vec<String>,
}

impl TrustSummary {
    pub fn of(t: &TrustConfig) -> Self {
        Self { threshold: t.threshold(), keys: t.keys().iter().map(|k| k.key.id().to_string()).collect() }
    }
}

/// `status.policy`: the origin of the policy set in force and the agent's
/// signing rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    pub source: Source,
    pub bundle: Option<BundleSource>,
    /// A trust config is loaded: policy changes only from signed bundles.
    pub strict: bool,
    pub trust: Option<TrustSummary>,
}

/// The verdict on the policy generation in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signed {
    /// From a bundle signed by at least k distinct keys of the trust config.
    Verified,
    /// From a bundle whose signers do not meet the trust config checked against.
    Unverified,
    /// Not from a signed bundle.
    Unsigned,
    /// No agent answered.
    Unknown,
}

/// What doctor reports about the policy in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyCheck {
    pub signed: Signed,
    /// The agent's mode (none: no agent answered).
    pub strict: Option<bool>,
    pub detail: String,
    /// Unhealthy: counts toward doctor's exit code.
    pub problem: Option<String>,
    pub warning: Option<String>,
}

/// Judges `p`; the signers are checked against `trust` when given (doctor's
/// `--trust`), else against the trust config the agent reports.
pub fn assess(p: &Provenance, trust: Option<&TrustSummary>) -> PolicyCheck {
    let against = trust.or(p.trust.as_ref());
    let (signed, detail) = match (p.source, &p.bundle) {
        (Source::Files, _) => (Signed::Unsigned, "the policy files the agent started with".to_string()),
        (Source::Api, _) => (Signed::Unsigned, "unsigned documents applied through the API".to_string()),
        (Source::Bundle, None) => (Signed::Unverified, "a bundle the agent does not name".to_string()),
        (Source::Bundle, Some(b)) => {
            let bundle = format!("bundle {:?} version {}", b.name, b.version);
            match against {
                None => (
                    Signed::Unverified,
                    format!("{bundle}, with no trust config to check its signers against"),
                ),
                Some(t) => {
                    let mut trusted: Vec<&String> = b.signers.iter().filter(|s| t.keys.contains(s)).collect();
                    trusted.sort();
                    trusted.dedup();
                    let list = trusted.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
                    let counted = format!(
                        "{} of the {} required of {} trusted keys",
                        trusted.len(),
                        t.threshold,
                        t.keys.len()
                    );
                    if trusted.len() >= t.threshold && t.threshold > 0 {
                        (Signed::Verified, format!("{bundle}, signed by {counted} ({list})"))
                    } else {
                        (Signed::Unverified, format!("{bundle}, signed by only {counted}"))
                    }
                }
            }
        }
    };
    let (problem, warning) = match signed {
        Signed::Verified => (None, None),
        _ if p.strict => (
            Some(format!(
                "strict mode, but the policy generation in force is not a verified signed bundle: {detail}"
            )),
            None,
        ),
        _ => (
            None,
            Some(format!(
                "the policy generation in force is not a verified signed bundle: {detail} (start the agent with --trust to accept only signed bundles)"
            )),
        ),
    };
    PolicyCheck { signed, strict: Some(p.strict), detail, problem, warning }
}

/// No agent to ask: a warning, not a problem (doctor also runs before the
/// agent does).
pub fn unknown(why: String) -> PolicyCheck {
    PolicyCheck {
        signed: Signed::Unknown,
        strict: None,
        warning: Some(format!("the policy in force was not checked: {why}")),
        detail: why,
        problem: None,
    }
}

/// Asks the agent on `socket` and judges its answer.
pub fn check_agent(socket: &Path, trust: Option<&TrustSummary>) -> PolicyCheck {
    let status = match client::call(socket, &Request::Status) {
        Ok(s) => s,
        Err(e) => return unknown(format!("no agent answers on {}: {e}", socket.display())),
    };
    match serde_json::from_value::<Provenance>(status["policy"].clone()) {
        Ok(p) => assess(&p, trust),
        Err(e) => unknown(format!("the agent on {} reports no policy origin: {e}", socket.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trust(threshold: usize) -> TrustSummary {
        TrustSummary { threshold, keys: vec!["aa".into(), "bb".into(), "cc".into()] }
    }

    fn bundle(signers: &[&str], strict: bool) -> Provenance {
        Provenance {
            source: Source::Bundle,
            bundle: Some(BundleSource {
                name: "prod".into(),
                version: 4,
                signers: signers.iter().map(|s| s.to_string()).collect(),
            }),
            strict,
            trust: Some(trust(2)),
        }
    }

    #[test]
    fn a_bundle_signed_by_k_trusted_keys_is_verified() {
        let c = assess(&bundle(&["aa", "cc"], true), None);
        assert_eq!(c.signed, Signed::Verified, "{c:?}");
        assert!(c.problem.is_none() && c.warning.is_none());
        assert!(c.detail.contains("2 of the 2 required of 3 trusted keys (aa, cc)"), "{}", c.detail);
    }

    #[test]
    fn signers_are_counted_once_and_only_when_trusted() {
        let c = assess(&bundle(&["aa", "aa", "zz"], true), None);
        assert_eq!(c.signed, Signed::Unverified, "{c:?}");
        assert!(c.detail.contains("only 1 of the 2 required"), "{}", c.detail);
        assert!(c.problem.is_some());
        // Doctor's own trust config wins over the one the agent reports.
        let stricter = assess(&bundle(&["aa", "cc"], true), Some(&trust(3)));
        assert_eq!(stricter.signed, Signed::Unverified);
        let elsewhere = TrustSummary { threshold: 1, keys: vec!["dd".into()] };
        assert_eq!(assess(&bundle(&["aa", "cc"], false), Some(&elsewhere)).signed, Signed::Unverified);
    }

    #[test]
    fn unsigned_is_a_problem_in_strict_mode_and_a_warning_otherwise() {
        for source in [Source::Files, Source::Api] {
            let strict = Provenance { source, bundle: None, strict: true, trust: Some(trust(2)) };
            let c = assess(&strict, None);
            assert_eq!(c.signed, Signed::Unsigned);
            assert!(c.problem.as_deref().is_some_and(|p| p.starts_with("strict mode")), "{c:?}");
            assert!(c.warning.is_none());
            let lax = Provenance { strict: false, trust: None, ..strict };
            let c = assess(&lax, None);
            assert!(c.problem.is_none(), "{c:?}");
            assert!(c.warning.as_deref().is_some_and(|w| w.contains("--trust")), "{c:?}");
        }
        let unverified_lax = assess(&bundle(&["zz"], false), None);
        assert_eq!(unverified_lax.signed, Signed::Unverified);
        assert!(unverified_lax.problem.is_none() && unverified_lax.warning.is_some());
    }

    #[test]
    fn no_agent_is_a_warning_and_the_status_shape_round_trips() {
        let c = check_agent(Path::new("/nonexistent/forge.sock"), None);
        assert_eq!(c.signed, Signed::Unknown);
        assert!(c.problem.is_none() && c.warning.is_some(), "{c:?}");
        let p = bundle(&["aa"], true);
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["source"], "bundle");
        assert_eq!(serde_json::from_value::<Provenance>(v).unwrap(), p);
    }
}
