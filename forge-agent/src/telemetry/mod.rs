//! Telemetry: the agent's own log ([`logging`]) and OTLP export of spans,
//! decision log records and metrics ([`Otlp`]). The Prometheus endpoint is
//! in `api::metrics`. Reference: docs/telemetry.md.
//!
//! [`Otlp`] is owned by the daemon and called on its task; every call only
//! hands data to the SDK's queues (a full queue drops, a down collector is
//! counted in [`ExportErrors`]), so export never holds up enforcement.

pub mod config;
pub mod decisions;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod spans;

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use opentelemetry::{
    Context, KeyValue,
    logs::{LogRecord as _, Logger as _, LoggerProvider as _},
    metrics::MeterProvider as _,
    trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _},
};
use opentelemetry_sdk::{Resource, logs::SdkLogger, trace::SdkTracer};
use serde_json::{Value, json};

pub use self::{
    config::{OtlpConfig, Protocol, Signal},
    pipeline::{ExportErrors, PipelineError},
};
use crate::{events::DecisionEvent, policy::CompiledRecord, policy::Tier};

/// The instrumentation scope of everything the agent exports.
const SCOPE: &str = "forge";

/// `service.name=forge`, `service.version`, `host.name` (and what
/// `OTEL_RESOURCE_ATTRIBUTES` adds).
pub fn resource() -> Resource {
    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    Resource::builder()
        .with_service_name("forge")
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("host.name", host),
            KeyValue::new("process.pid", i64::from(std::process::id())),
        ])
        .build()
}

/// A time `elapsed` ago on the wall clock.
fn ago(elapsed: Duration) -> SystemTime {
    SystemTime::now().checked_sub(elapsed).unwrap_or_else(SystemTime::now)
}

/// An open `forge.workload.run` span.
struct Run {
    span: opentelemetry_sdk::trace::Span,
}

/// OTLP export, on when `--otlp-endpoint` is given.
pub struct Otlp {
    config: OtlpConfig,
    pipeline: pipeline::Pipeline,
    tracer: SdkTracer,
    logger: SdkLogger,
    runs: BTreeMap<u64, Run>,
    latest: metrics::Latest,
    _instruments: metrics::Instruments,
}

impl Otlp {
    /// Starts the pipeline; the collector need not be up (exports are
    /// retried at each interval, failures counted).
    pub fn start(config: OtlpConfig) -> Result<Self, PipelineError> {
        let pipeline = pipeline::Pipeline::start(&config, resource())?;
        let tracer = pipeline.tracer.tracer(SCOPE);
        let logger = pipeline.logger.logger(SCOPE);
        let latest = metrics::Latest::default();
        let instruments = metrics::register(&pipeline.meter.meter(SCOPE), &latest);
        tracing::info!(endpoint = config.endpoint(), protocol = config.protocol.as_str(), "OTLP export on");
        Ok(Self {
            config,
            pipeline,
            tracer,
            logger,
            runs: BTreeMap::new(),
            latest,
            _instruments: instruments,
        })
    }

    /// Failed exports so far.
    pub fn errors(&self) -> &Arc<ExportErrors> {
        &self.pipeline.errors
    }

    /// For `forge status`: where to, and the failed exports per signal.
    pub fn status(&self) -> Value {
        let e = self.errors();
        json!({
            "endpoint": self.config.endpoint(),
            "protocol": self.config.protocol.as_str(),
            "interval_ms": self.config.interval.as_millis() as u64,
            "workload_runs": self.runs.len(),
            "export_errors": Signal::ALL.iter().map(|s| (s.as_str().to_string(), json!(e.count(*s)))).collect::<serde_json::Map<_, _>>(),
            "last_error": e.last(),
        })
    }

    /// The sample the metric instruments report at the next collection.
    pub fn publish(&self, sample: crate::api::metrics::Sample) {
        if let Ok(mut l) = self.latest.lock() {
            *l = Some(sample);
        }
    }

    /// The context of a workload's run span, parent of its quarantines.
    fn run_context(&self, cgroup_id: u64) -> Context {
        self.runs.get(&cgroup_id).map_or_else(Context::new, |r| {
            Context::new().with_remote_span_context(r.span.span_context().clone())
        })
    }

    /// Opens `forge.workload.run` (ending one left open for the same cgroup).
    pub fn run_started(&mut self, start: &spans::RunStart) {
        self.run_ended(start.workload.cgroup_id, spans::RunEnd::Ungoverned, None, None);
        let span = self
            .tracer
            .span_builder("forge.workload.run")
            .with_kind(SpanKind::Internal)
            .with_attributes(start.attributes())
            .start_with_context(&self.tracer, &Context::new());
        self.runs.insert(start.workload.cgroup_id, Run { span });
    }

    /// Ends a workload's run span, if open.
    pub fn run_ended(
        &mut self,
        cgroup_id: u64,
        end: spans::RunEnd,
        tier: Option<Tier>,
        generation: Option<u64>,
    ) {
        if let Some(mut run) = self.runs.remove(&cgroup_id) {
            run.span.set_attributes(end.attributes(tier, generation));
            run.span.end();
        }
    }

    /// Exports a finished `forge.policy.apply` that started at `started`.
    pub fn policy_applied(&self, started: SystemTime, apply: &spans::PolicyApply, error: Option<&str>) {
        let mut span = self
            .tracer
            .span_builder("forge.policy.apply")
            .with_kind(SpanKind::Internal)
            .with_start_time(started)
            .with_attributes(apply.attributes())
            .start_with_context(&self.tracer, &Context::new());
        if let Some(e) = error {
            span.set_status(Status::error(e.to_string()));
        }
        span.end();
    }

    /// Exports `forge.quarantine`, from `elapsed` ago until now, in the workload's run.
    pub fn quarantined(&self, elapsed: Duration, q: &spans::Quarantine) {
        let mut span = self
            .tracer
            .span_builder("forge.quarantine")
            .with_kind(SpanKind::Internal)
            .with_start_time(ago(elapsed))
            .with_attributes(q.attributes())
            .start_with_context(&self.tracer, &self.run_context(q.workload.cgroup_id));
        span.end();
    }

    /// Exports `forge.release` in the workload's run.
    pub fn released(&self, elapsed: Duration, r: &spans::Release) {
        let mut span = self
            .tracer
            .span_builder("forge.release")
            .with_kind(SpanKind::Internal)
            .with_start_time(ago(elapsed))
            .with_attributes(r.attributes())
            .start_with_context(&self.tracer, &self.run_context(r.workload.cgroup_id));
        span.end();
    }

    /// Emits a decision event as a `forge.decision` log record (denies and
    /// kills only), tied to the workload's run span.
    pub fn decision(&self, ev: &DecisionEvent, tier: Tier, compiled: Option<&CompiledRecord>) {
        if !decisions::wanted(ev) {
            return;
        }
        let mut record = self.logger.create_log_record();
        let behind = crate::api::traces::kernel_now_ns().saturating_sub(ev.ts_ns);
        record.set_timestamp(ago(Duration::from_nanos(behind)));
        record.set_observed_timestamp(SystemTime::now());
        record.set_event_name("forge.decision");
        let (severity, text) = decisions::severity(ev);
        record.set_severity_number(severity);
        record.set_severity_text(text);
        record.set_body(crate::explain::explain(ev, compiled).to_string().into());
        let rule = compiled.and_then(|c| c.rule(ev.rule_id));
        record.add_attributes(decisions::attributes(ev, tier, rule));
        if let Some(run) = self.runs.get(&ev.cgroup_id) {
            let sc = run.span.span_context();
            record.set_trace_context(sc.trace_id(), sc.span_id(), Some(sc.trace_flags()));
        }
        self.logger.emit(record);
    }

    /// A clean stop: open runs end (`agent_stopped`), queued data is sent
    /// (up to 5 s per signal).
    pub fn shutdown(&mut self) {
        let open: Vec<u64> = self.runs.keys().copied().collect();
        for id in open {
            self.run_ended(id, spans::RunEnd::AgentStopped, None, None);
        }
        self.pipeline.shutdown();
    }
}
