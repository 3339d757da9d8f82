//! Requests and responses. One JSON object per line each way.

use serde::{Deserialize, Serialize};

/// Largest request line accepted (bytes).
pub const MAX_REQUEST: usize = 4 << 20;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "method", content = "params", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Backends, governed workloads, counters.
    Status,
    /// Replace the policy set atomically: every governed workload is
    /// recompiled and swapped, or nothing changes.
    PolicyApply { documents: Vec<Document> },
    /// Apply a signed policy bundle (a directory on this host): verified
    /// k-of-n against the agent's trust config, newer than the last applied
    /// version of its name, then applied like `policy_apply`.
    PolicyApplyBundle { path: String },
    /// The policy documents in force.
    PolicyGet,
    /// Start governing a cgroup (relative to the cgroup v2 mount, or absolute).
    Govern { cgroup: String },
    /// Stop governing a cgroup.
    Ungovern { cgroup: String },
    /// Set a workload's trust tier (an audited operator action).
    TrustSet { cgroup: String, tier: crate::policy::Tier, actor: String, reason: String },
    /// Quarantine a workload now (an audited operator action).
    Quarantine { cgroup: String, actor: String, reason: String },
    /// Release a quarantine: thaw, restore the policy from before it.
    Release { cgroup: String, actor: String },
    /// The audit log: trust changes, quarantines, releases, with their reasons.
    Audit,
    /// A governed workload's digest from its trace: the whole workload, one
    /// record (`record`), or its last quarantine (`quarantine: true`).
    Explain {
        cgroup: String,
        #[serde(default)]
        record: Option<u64>,
        #[serde(default)]
        quarantine: bool,
    },
    /// Records of a governed workload's trace, from index `from` (default 0),
    /// at most `limit` (default and maximum 10000).
    TraceExport {
        cgroup: String,
        #[serde(default)]
        from: u64,
        #[serde(default)]
        limit: Option<u64>,
    },
    /// The Prometheus exposition text (what `GET /metrics` serves).
    Metrics,
    /// Verify a `.forgepkg` on this host against the agent's capsule trust
    /// configuration and start it in its own governed cgroup; answers with
    /// the run id at once (`capsule_list` has the outcome).
    CapsuleRun {
        /// Absolute path of the package on the agent's host.
        package: String,
        #[serde(default)]
        args: Vec<String>,
        /// Input files (absolute paths), checked against the capsule's intent.
        #[serde(default)]
        inputs: Vec<String>,
        /// Let calls the policy denies through the Wasm gate, recorded as would-deny.
        #[serde(default)]
        monitor: bool,
        #[serde(default)]
        tier: Option<crate::policy::Tier>,
    },
    /// Capsule runs started through the API: running ones, and the last
    /// finished ones with their reports.
    CapsuleList,
}

impl Request {
    /// The method name, as on the wire.
    pub fn method(&self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::PolicyApply { .. } => "policy_apply",
            Self::PolicyApplyBundle { .. } => "policy_apply_bundle",
            Self::PolicyGet => "policy_get",
            Self::Govern { .. } => "govern",
            Self::Ungovern { .. } => "ungovern",
            Self::TrustSet { .. } => "trust_set",
            Self::Quarantine { .. } => "quarantine",
            Self::Release { .. } => "release",
            Self::Audit => "audit",
            Self::Explain { .. } => "explain",
            Self::TraceExport { .. } => "trace_export",
            Self::Metrics => "metrics",
            Self::CapsuleRun { .. } => "capsule_run",
            Self::CapsuleList => "capsule_list",
        }
    }

    /// Whether the method changes what the agent enforces or runs (refused
    /// to callers inside a governed subtree).
    pub fn mutates(&self) -> bool {
        !matches!(
            self,
            Self::Status
                | Self::PolicyGet
                | Self::Audit
                | Self::Explain { .. }
                | Self::TraceExport { .. }
                | Self::Metrics
                | Self::CapsuleList
        )
    }
}

/// A policy document as text, with the name errors should cite.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Document {
    pub name: String,
    pub text: String,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, unknown method, bad or missing parameters, too large.
    BadRequest,
    /// The policy set does not validate; `details` lists the diagnostics.
    InvalidPolicy,
    NotFound,
    /// The kernel refused an update; the previous state is kept.
    Kernel,
    /// Refused by the agent's signing rules (unsigned in strict mode, too few
    /// signers, modified bytes, a replayed version); nothing changed.
    Refused,
    /// The caller may not do this: not root nor in the API group, or inside
    /// a governed subtree asking for a change (docs/api.md, "Who may call").
    Forbidden,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), details: None }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Response {
    Ok { ok: bool, result: serde_json::Value },
    Err { ok: bool, error: ApiError },
}

impl Response {
    pub fn ok(result: serde_json::Value) -> Self {
        Self::Ok { ok: true, result }
    }

    pub fn err(error: ApiError) -> Self {
        Self::Err { ok: false, error }
    }

    pub fn into_result(self) -> Result<serde_json::Value, ApiError> {
        match self {
            Self::Ok { result, .. } => Ok(result),
            Self::Err { error, .. } => Err(error),
        }
    }
}

/// Parses one request line; every failure is a `BadRequest` saying why.
pub fn parse_request(line: &[u8]) -> Result<Request, ApiError> {
    if line.len() > MAX_REQUEST {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("request of {} bytes exceeds {MAX_REQUEST}", line.len()),
        ));
    }
    serde_json::from_slice(line)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("bad request: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Status,
            Request::PolicyGet,
            Request::Govern { cgroup: "web/a".into() },
            Request::PolicyApply { documents: vec![Document { name: "a.yaml".into(), text: "x".into() }] },
        ] {
            let line = serde_json::to_vec(&r).unwrap();
            assert_eq!(parse_request(&line).unwrap(), r);
        }
        assert_eq!(parse_request(br#"{"method":"status"}"#).unwrap(), Request::Status);
    }

    #[test]
    fn methods_name_themselves_and_say_whether_they_mutate() {
        let reads = [
            r#"{"method":"status"}"#,
            r#"{"method":"policy_get"}"#,
            r#"{"method":"audit"}"#,
            r#"{"method":"metrics"}"#,
            r#"{"method":"capsule_list"}"#,
            r#"{"method":"explain","params":{"cgroup":"x"}}"#,
            r#"{"method":"trace_export","params":{"cgroup":"x"}}"#,
        ];
        let writes = [
            r#"{"method":"govern","params":{"cgroup":"x"}}"#,
            r#"{"method":"ungovern","params":{"cgroup":"x"}}"#,
            r#"{"method":"policy_apply","params":{"documents":[]}}"#,
            r#"{"method":"policy_apply_bundle","params":{"path":"/b"}}"#,
            r#"{"method":"trust_set","params":{"cgroup":"x","tier":"trusted","actor":"a","reason":"r"}}"#,
            r#"{"method":"quarantine","params":{"cgroup":"x","actor":"a","reason":"r"}}"#,
            r#"{"method":"release","params":{"cgroup":"x","actor":"a"}}"#,
            r#"{"method":"capsule_run","params":{"package":"/p"}}"#,
        ];
        for (lines, mutating) in [(&reads[..], false), (&writes[..], true)] {
            for line in lines {
                let r = parse_request(line.as_bytes()).unwrap();
                assert_eq!(r.mutates(), mutating, "{line}");
                let wire: serde_json::Value = serde_json::from_str(line).unwrap();
                assert_eq!(r.method(), wire["method"], "{line}");
            }
        }
    }

    #[test]
    fn bad_requests_say_why() {
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            b"{\"method\":\"fly\"}",
            b"{\"method\":\"govern\"}",
            b"{\"method\":\"govern\",\"params\":{\"cgroup\":1}}",
            b"\xff\xfe",
        ] {
            let e = parse_request(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{bad:?}");
            assert!(e.message.starts_with("bad request:"), "{}", e.message);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let seeds: [&[u8]; 3] = [
            br#"{"method":"policy_apply","params":{"documents":[{"name":"a","text":"b"}]}}"#,
            br#"{"method":"govern","params":{"cgroup":"x"}}"#,
            br#"{"method":"status"}"#,
        ];
        for round in 0..20_000 {
            let mut line = seeds[round % seeds.len()].to_vec();
            for _ in 0..3 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let i = (state as usize) % line.len();
                line[i] = (state >> 32) as u8;
            }
            let _ = parse_request(&line);
        }
    }
}
