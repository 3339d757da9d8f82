//! The OpenTelemetry SDK pipeline: one OTLP exporter per signal, behind the
//! SDK's batch span and log processors and its periodic metric reader. Each
//! of those runs on its own thread and drops what does not fit its queue, so
//! the daemon's task never waits for the collector. The gRPC client needs a
//! tokio runtime: the pipeline has its own (one worker thread), apart from
//! the daemon's. Failed exports are counted in [`ExportErrors`] and logged.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry_otlp::{
    ExporterBuildError, LogExporter, MetricExporter, SpanExporter, WithExportConfig as _,
};
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    logs::{self, BatchLogProcessor, LogBatch, SdkLoggerProvider},
    metrics::{
        PeriodicReader, SdkMeterProvider, Temporality, data::ResourceMetrics, exporter::PushMetricExporter,
    },
    trace::{self, BatchSpanProcessor, SdkTracerProvider, SpanData},
};

use super::config::{OtlpConfig, Protocol, Signal};

/// One export request gives up after this long.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// What a clean stop waits for each signal's last export.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("building the OTLP {signal} exporter for {url}: {source}")]
    Exporter {
        signal: &'static str,
        url: String,
        #[source]
        source: ExporterBuildError,
    },
    #[error("starting the OTLP export runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Failed exports per signal since the start, and the last failure.
#[derive(Debug, Default)]
pub struct ExportErrors {
    counts: [AtomicU64; 3],
    last: Mutex<Option<String>>,
}

impl ExportErrors {
    fn index(signal: Signal) -> usize {
        match signal {
            Signal::Traces => 0,
            Signal::Logs => 1,
            Signal::Metrics => 2,
        }
    }

    /// Counts a failed export; logs the 1st, 2nd, 4th, 8th... of a signal
    /// (a collector that is down would otherwise fill the log).
    fn failed(&self, signal: Signal, error: &OTelSdkError) {
        let n = self.counts[Self::index(signal)].fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut last) = self.last.lock() {
            *last = Some(format!("{}: {error}", signal.as_str()));
        }
        if n.is_power_of_two() {
            tracing::warn!(signal = signal.as_str(), failures = n, error = %error, "OTLP export failed; enforcement is not affected");
        }
    }

    /// Failed exports of `signal`.
    pub fn count(&self, signal: Signal) -> u64 {
        self.counts[Self::index(signal)].load(Ordering::Relaxed)
    }

    /// The last failure, e.g. `traces: ...`.
    pub fn last(&self) -> Option<String> {
        self.last.lock().ok().and_then(|l| l.clone())
    }
}

/// An exporter whose failures are counted.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    signal: Signal,
    errors: Arc<ExportErrors>,
}

impl<E> Counted<E> {
    fn note(&self, r: OTelSdkResult) -> OTelSdkResult {
        if let Err(e) = &r {
            self.errors.failed(self.signal, e);
        }
        r
    }
}

impl<E: trace::SpanExporter> trace::SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let r = self.inner.export(batch).await;
        self.note(r)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: logs::LogExporter> logs::LogExporter for Counted<E> {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let r = self.inner.export(batch).await;
        self.note(r)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: PushMetricExporter> PushMetricExporter for Counted<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let r = self.inner.export(metrics).await;
        self.note(r)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

/// The three providers and the runtime their gRPC clients use.
pub struct Pipeline {
    pub tracer: SdkTracerProvider,
    pub logger: SdkLoggerProvider,
    pub meter: SdkMeterProvider,
    pub errors: Arc<ExportErrors>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Pipeline {
    /// Builds the exporters and starts the processors. Nothing is sent
    /// yet: the first connection is made with the first export.
    pub fn start(config: &OtlpConfig, resource: Resource) -> Result<Self, PipelineError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("forge-otlp")
            .enable_all()
            .build()
            .map_err(PipelineError::Runtime)?;
        let errors = Arc::new(ExportErrors::default());
        let handle = runtime.handle().clone();
        // The gRPC channels spawn their workers on the runtime they are
        // built in; a thread of its own enters it whatever runtime the
        // caller is on.
        let built = std::thread::scope(|s| {
            s.spawn(|| {
                let _entered = handle.enter();
                build(config, resource, &errors)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        let (tracer, logger, meter) = built?;
        Ok(Self { tracer, logger, meter, errors, runtime: Some(runtime) })
    }

    /// Sends what is queued (waiting up to 5 s per signal) and stops.
    pub fn shutdown(&mut self) {
        let results = [
            (Signal::Traces, self.tracer.shutdown_with_timeout(SHUTDOWN_TIMEOUT)),
            (Signal::Logs, self.logger.shutdown_with_timeout(SHUTDOWN_TIMEOUT)),
            (Signal::Metrics, self.meter.shutdown_with_timeout(SHUTDOWN_TIMEOUT)),
        ];
        for (signal, r) in results {
            match r {
                Ok(()) | Err(OTelSdkError::AlreadyShutdown) => {}
                Err(e) => {
                    tracing::warn!(signal = signal.as_str(), error = %e, "OTLP: the last export at stop")
                }
            }
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics on an async task.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn exporter_error(signal: Signal, config: &OtlpConfig) -> impl FnOnce(ExporterBuildError) -> PipelineError {
    let url = config.signal_url(signal);
    move |source| PipelineError::Exporter { signal: signal.as_str(), url, source }
}

type Providers = (SdkTracerProvider, SdkLoggerProvider, SdkMeterProvider);

fn build(
    config: &OtlpConfig,
    resource: Resource,
    errors: &Arc<ExportErrors>,
) -> Result<Providers, PipelineError> {
    let counted = |signal| (signal, Arc::clone(errors));
    let url = |signal| config.signal_url(signal);

    let spans = match config.protocol {
        Protocol::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_endpoint(url(Signal::Traces))
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
        Protocol::Http => SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(url(Signal::Traces))
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
    }
    .map_err(exporter_error(Signal::Traces, config))?;
    let logs = match config.protocol {
        Protocol::Grpc => LogExporter::builder()
            .with_tonic()
            .with_endpoint(url(Signal::Logs))
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
        Protocol::Http => LogExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(url(Signal::Logs))
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
    }
    .map_err(exporter_error(Signal::Logs, config))?;
    let metrics = match config.protocol {
        Protocol::Grpc => MetricExporter::builder()
            .with_tonic()
            .with_endpoint(url(Signal::Metrics))
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
        Protocol::Http => MetricExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(url(Signal::Metrics))
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
    }
    .map_err(exporter_error(Signal::Metrics, config))?;

    let (signal, errs) = counted(Signal::Traces);
    let spans = BatchSpanProcessor::builder(Counted { inner: spans, signal, errors: errs })
        .with_batch_config(trace::BatchConfigBuilder::default().with_scheduled_delay(config.interval).build())
        .build();
    let tracer =
        SdkTracerProvider::builder().with_span_processor(spans).with_resource(resource.clone()).build();

    let (signal, errs) = counted(Signal::Logs);
    let logs = BatchLogProcessor::builder(Counted { inner: logs, signal, errors: errs })
        .with_batch_config(logs::BatchConfigBuilder::default().with_scheduled_delay(config.interval).build())
        .build();
    let logger =
        SdkLoggerProvider::builder().with_log_processor(logs).with_resource(resource.clone()).build();

    let (signal, errs) = counted(Signal::Metrics);
    let reader = PeriodicReader::builder(Counted { inner: metrics, signal, errors: errs })
        .with_interval(config.interval)
        .build();
    let meter = SdkMeterProvider::builder().with_reader(reader).with_resource(resource).build();
    Ok((tracer, logger, meter))
}
