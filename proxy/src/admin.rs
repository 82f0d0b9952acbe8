//! The admin API: `GET /ready` (200 once a snapshot serves, else 503), `GET /config_dump` (the
//! serving IR snapshot as JSON, private keys redacted), `GET /status` (the StatusReport JSON
//! the binary publishes), `GET /metrics` (Prometheus text).

use crate::Proxy;
use crate::body::ProxyBody;
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sluice_ir::Snapshot;
use sluice_ir::status::StatusReport;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What the admin API serves.
#[derive(Debug)]
pub struct AdminState {
    /// Forced not-ready (e.g. while the binary shuts down); `/ready` is 200 only when this is
    /// false and the proxy serves a snapshot.
    pub not_ready: AtomicBool,
    /// The status report, set by the binary after each translation.
    pub status: ArcSwap<StatusReport>,
    /// The proxy, for `/ready` and `/config_dump`.
    pub proxy: Proxy,
    /// The metrics registry served on `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Metrics of other parts of the process (e.g. the eBPF datapath), served after the
    /// proxy's.
    pub extra_metrics: std::sync::Mutex<prometheus_client::registry::Registry>,
}

impl AdminState {
    /// Admin state for a proxy, with an empty status report.
    pub fn new(proxy: Proxy) -> Arc<Self> {
        Arc::new(AdminState {
            not_ready: AtomicBool::new(false),
            status: ArcSwap::from_pointee(StatusReport::default()),
            metrics: proxy.metrics(),
            extra_metrics: std::sync::Mutex::new(
                prometheus_client::registry::Registry::with_prefix("sluice"),
            ),
            proxy,
        })
    }

    /// Adds metrics of another component to `/metrics`.
    pub fn register_metrics(&self, f: impl FnOnce(&mut prometheus_client::registry::Registry)) {
        let mut r = self
            .extra_metrics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut r);
    }

    /// `/metrics`: the proxy's metrics, then the registered ones, one OpenMetrics exposition.
    pub fn encode_metrics(&self) -> String {
        let mut text = self.metrics.encode();
        let extra = self
            .extra_metrics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut more = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut more, &extra);
        if more.trim() != "# EOF" {
            if let Some(stripped) = text.strip_suffix("# EOF\n") {
                text.truncate(stripped.len());
            }
            text.push_str(&more);
        }
        text
    }

    /// True when `/ready` answers 200.
    pub fn ready(&self) -> bool {
        !self.not_ready.load(Ordering::Acquire) && self.proxy.is_ready()
    }
}

/// A copy of `s` with every private key replaced by `[redacted]`.
pub fn redact(s: &Snapshot) -> Snapshot {
    let mut s = s.clone();
    const R: &str = "[redacted]";
    for l in &mut s.listeners {
        if let Some(t) = &mut l.tls {
            for c in &mut t.certificates {
                c.private_key_pem = R.into();
            }
        }
    }
    for c in &mut s.clusters {
        if let Some(t) = &mut c.tls
            && let Some(cc) = &mut t.client_certificate
        {
            cc.private_key_pem = R.into();
        }
    }
    s
}

fn reply(
    status: StatusCode,
    ctype: &'static str,
    body: impl Into<bytes::Bytes>,
) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(ctype));
    r
}

fn route(state: &AdminState, req: &Request<Incoming>) -> Response<ProxyBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    match req.uri().path() {
        "/ready" => {
            if state.ready() {
                reply(StatusCode::OK, "text/plain", "ready\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
            }
        }
        "/config_dump" => {
            let s = redact(&state.proxy.snapshot());
            match serde_json::to_vec_pretty(&s) {
                Ok(b) => reply(StatusCode::OK, "application/json", b),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    e.to_string(),
                ),
            }
        }
        "/status" => match serde_json::to_vec_pretty(&**state.status.load()) {
            Ok(b) => reply(StatusCode::OK, "application/json", b),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                e.to_string(),
            ),
        },
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.encode_metrics(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /ready /config_dump /status /metrics\n",
        ),
    }
}

/// Serves the admin API on an already bound listener until the task is dropped.
pub async fn serve_listener(listener: tokio::net::TcpListener, state: Arc<AdminState>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let r = route(&state, &req);
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Binds `addr` and serves the admin API until the task is dropped.
pub async fn serve(addr: SocketAddr, state: Arc<AdminState>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "admin API listening");
    serve_listener(listener, state).await;
    Ok(())
}
