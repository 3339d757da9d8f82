//! A real OTLP receiver for the tests: a tonic gRPC server implementing the
//! collector's trace, logs and metrics services from the official OTLP
//! protobufs (`opentelemetry-proto`), and an HTTP/1.1 server (hyper) taking
//! protobuf bodies at `/v1/traces`, `/v1/logs` and `/v1/metrics`. Both keep
//! every request they decode; nothing is checked here.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, StatusCode, body::Bytes};
use libtest_mimic::Failed;
use opentelemetry_proto::tonic::collector::{
    logs::v1::{
        ExportLogsServiceRequest, ExportLogsServiceResponse,
        logs_service_server::{LogsService, LogsServiceServer},
    },
    metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
};
use prost::Message as _;

use forge_tests::fail;

/// Everything received, decoded.
#[derive(Default)]
pub(crate) struct Received {
    pub traces: Vec<ExportTraceServiceRequest>,
    pub logs: Vec<ExportLogsServiceRequest>,
    pub metrics: Vec<ExportMetricsServiceRequest>,
    /// HTTP requests that were not a decodable OTLP export: `method path: why`.
    pub rejected: Vec<String>,
    /// The `Content-Type` of each HTTP request.
    pub content_types: Vec<String>,
}

type Store = Arc<Mutex<Received>>;

#[derive(Clone)]
struct Grpc(Store);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().map_err(|_| tonic::Status::internal("poisoned"))?.traces.push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.0.lock().map_err(|_| tonic::Status::internal("poisoned"))?.logs.push(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.lock().map_err(|_| tonic::Status::internal("poisoned"))?.metrics.push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

fn reply(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-protobuf"),
    );
    r
}

/// One OTLP/HTTP request: decoded by path, kept, answered with the empty
/// export response (or 400/404 for what is not an export).
async fn http_export(
    req: Request<hyper::body::Incoming>,
    store: Store,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let what = format!("{} {}", req.method(), req.uri().path());
    let path = req.uri().path().to_string();
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(reply(StatusCode::BAD_REQUEST, e.to_string().into_bytes())),
    };
    let Ok(mut r) = store.lock() else { return Ok(reply(StatusCode::INTERNAL_SERVER_ERROR, Vec::new())) };
    r.content_types.push(content_type);
    let decoded = match path.as_str() {
        "/v1/traces" => ExportTraceServiceRequest::decode(body)
            .map(|m| r.traces.push(m))
            .map(|()| ExportTraceServiceResponse::default().encode_to_vec()),
        "/v1/logs" => ExportLogsServiceRequest::decode(body)
            .map(|m| r.logs.push(m))
            .map(|()| ExportLogsServiceResponse::default().encode_to_vec()),
        "/v1/metrics" => ExportMetricsServiceRequest::decode(body)
            .map(|m| r.metrics.push(m))
            .map(|()| ExportMetricsServiceResponse::default().encode_to_vec()),
        _ => {
            r.rejected.push(format!("{what}: unknown path"));
            return Ok(reply(StatusCode::NOT_FOUND, Vec::new()));
        }
    };
    Ok(match decoded {
        Ok(bytes) => reply(StatusCode::OK, bytes),
        Err(e) => {
            r.rejected.push(format!("{what}: {e}"));
            reply(StatusCode::BAD_REQUEST, Vec::new())
        }
    })
}

async fn serve_http(listener: tokio::net::TcpListener, store: Store) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| http_export(req, Arc::clone(&store)));
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}

/// The receiver's transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Grpc,
    Http,
}

/// A receiver on a free loopback port, on a runtime of its own; stopped on drop.
pub(crate) struct Receiver {
    pub addr: SocketAddr,
    store: Store,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Receiver {
    pub fn start(transport: Transport) -> Result<Self, Failed> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-receiver")
            .enable_all()
            .build()
            .map_err(fail)?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(fail)?;
        listener.set_nonblocking(true).map_err(fail)?;
        let addr = listener.local_addr().map_err(fail)?;
        let store = Store::default();
        let s = Arc::clone(&store);
        let _entered = runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener).map_err(fail)?;
        match transport {
            Transport::Grpc => {
                let g = Grpc(s);
                let server = tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(g.clone()))
                    .add_service(LogsServiceServer::new(g.clone()))
                    .add_service(MetricsServiceServer::new(g))
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
                runtime.spawn(server);
            }
            Transport::Http => {
                runtime.spawn(serve_http(listener, s));
            }
        }
        drop(_entered);
        Ok(Self { addr, store, runtime: Some(runtime) })
    }

    /// Waits until `done` holds for what was received, returning its answer;
    /// fails with `what` and a summary if it does not within `timeout`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Received) -> Option<T>,
    ) -> Result<T, Failed> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let r = self.store.lock().map_err(|_| "receiver store poisoned")?;
                if let Some(t) = done(&r) {
                    return Ok(t);
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "{what}: not received within {timeout:?} ({} trace, {} log, {} metric requests; rejected: {:?})",
                        r.traces.len(),
                        r.logs.len(),
                        r.metrics.len(),
                        r.rejected
                    )
                    .into());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
