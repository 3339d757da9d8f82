//! OTLP export settings: where to (`--otlp-endpoint`), how (`--otlp-protocol`)
//! and how often (`--otlp-interval-ms`).

use std::time::Duration;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("OTLP endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: &'static str },
    #[error("OTLP protocol {0:?}: expected grpc or http")]
    Protocol(String),
    #[error("OTLP interval {0} ms: expected 100 ms to 1 hour")]
    Interval(u64),
}

/// The OTLP transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (the collector's port 4317).
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318): `/v1/traces`, `/v1/logs`, `/v1/metrics`.
    Http,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Http => "http",
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "grpc" => Ok(Self::Grpc),
            "http" | "http/protobuf" => Ok(Self::Http),
            other => Err(ConfigError::Protocol(other.to_string())),
        }
    }
}

/// The three OTLP signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Logs,
    Metrics,
}

impl Signal {
    pub const ALL: [Self; 3] = [Self::Traces, Self::Logs, Self::Metrics];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Traces => "traces",
            Self::Logs => "logs",
            Self::Metrics => "metrics",
        }
    }
}

/// Batches of spans and log records are sent, and metrics collected, this often by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// Validated OTLP export settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpConfig {
    /// `http://HOST:PORT` (a trailing `/` is dropped).
    endpoint: String,
    pub protocol: Protocol,
    /// How long spans and log records wait to be batched, and the metric
    /// collection interval.
    pub interval: Duration,
}

impl OtlpConfig {
    /// Checks `endpoint`: plain `http://` only, since this build carries no
    /// TLS (send to a collector on the host or a trusted network). An
    /// `interval_ms` of `None` is [`DEFAULT_INTERVAL`].
    pub fn new(endpoint: &str, protocol: Protocol, interval_ms: Option<u64>) -> Result<Self, ConfigError> {
        let bad = |reason| ConfigError::Endpoint { endpoint: endpoint.to_string(), reason };
        let rest = if let Some(rest) = endpoint.strip_prefix("http://") {
            rest
        } else if endpoint.starts_with("https://") {
            return Err(bad(
                "https is not supported (this build has no TLS); use http:// to a local collector",
            ));
        } else {
            return Err(bad("expected http://HOST:PORT"));
        };
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() || authority.contains(['?', '#', '@', ' ']) {
            return Err(bad("expected http://HOST:PORT"));
        }
        let interval = match interval_ms {
            None => DEFAULT_INTERVAL,
            Some(ms @ 100..=3_600_000) => Duration::from_millis(ms),
            Some(ms) => return Err(ConfigError::Interval(ms)),
        };
        Ok(Self { endpoint: endpoint.trim_end_matches('/').to_string(), protocol, interval })
    }

    /// The configured endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Where a signal is sent: the endpoint itself over gRPC; over HTTP the
    /// endpoint with the signal's path (`/v1/traces`, ...) appended, as
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is read by other OTLP exporters.
    pub fn signal_url(&self, signal: Signal) -> String {
        match self.protocol {
            Protocol::Grpc => self.endpoint.clone(),
            Protocol::Http => format!("{}/v1/{}", self.endpoint, signal.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_endpoints_get_the_signal_paths_and_grpc_ones_do_not() {
        let c = OtlpConfig::new("http://127.0.0.1:4318/", Protocol::Http, None).unwrap();
        assert_eq!(c.endpoint(), "http://127.0.0.1:4318");
        let urls: Vec<String> = Signal::ALL.iter().map(|s| c.signal_url(*s)).collect();
        assert_eq!(
            urls,
            [
                "http://127.0.0.1:4318/v1/traces",
                "http://127.0.0.1:4318/v1/logs",
                "http://127.0.0.1:4318/v1/metrics"
            ]
        );
        let c = OtlpConfig::new("http://collector:4317", Protocol::Grpc, Some(500)).unwrap();
        assert_eq!(c.signal_url(Signal::Logs), "http://collector:4317");
        assert_eq!(c.interval, Duration::from_millis(500));
        let c = OtlpConfig::new("http://c:4318/otlp", Protocol::Http, None).unwrap();
        assert_eq!(c.signal_url(Signal::Metrics), "http://c:4318/otlp/v1/metrics");
        assert_eq!(c.interval, DEFAULT_INTERVAL);
    }

    #[test]
    fn endpoints_without_plain_http_and_odd_intervals_are_refused() {
        for bad in ["https://c:4317", "c:4317", "", "http://", "http:///v1", "http://u@c:4317", "grpc://c:1"]
        {
            let e = OtlpConfig::new(bad, Protocol::Grpc, None).unwrap_err();
            assert!(matches!(e, ConfigError::Endpoint { .. }), "{bad:?}: {e}");
        }
        let e = OtlpConfig::new("https://c:4317", Protocol::Grpc, None).unwrap_err().to_string();
        assert!(e.contains("no TLS"), "{e}");
        for ms in [0, 99, 3_600_001] {
            assert!(matches!(
                OtlpConfig::new("http://c:4317", Protocol::Grpc, Some(ms)),
                Err(ConfigError::Interval(_))
            ));
        }
    }

    #[test]
    fn protocols_parse_by_name() {
        assert_eq!("grpc".parse::<Protocol>().unwrap(), Protocol::Grpc);
        assert_eq!("http".parse::<Protocol>().unwrap(), Protocol::Http);
        assert_eq!("http/protobuf".parse::<Protocol>().unwrap(), Protocol::Http);
        assert!(matches!("udp".parse::<Protocol>(), Err(ConfigError::Protocol(p)) if p == "udp"));
    }
}
