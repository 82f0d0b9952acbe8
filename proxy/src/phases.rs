//! The HTTP request path as named phases, in the style of pingora's `ProxyHttp`. Every phase is
//! a method of [`HttpPhases`] whose default implementation is Sluice's Gateway API behavior; the
//! proxy runs [`Gateway`], which keeps all defaults. The chart is in `proxy/README.md`:
//!
//! ```text
//! request ─► route lookup ─► request_filter ─► upstream_peer ─► upstream_request_filter
//!              │ 404            │ answers:        │ 500 / 503       │ (backend filters,
//!              │                │ CORS preflight, │                 │  XFF/XFP, hop-by-hop)
//!              ▼                │ redirect        ▼                 ▼
//!           fail_to_proxy ◄─────┴──────────── proxy_upstream (attempts, retries, timeouts)
//!              │                                     │ 502 / 503 / 504
//!              ▼                                     ▼
//!           response ◄──────── response_filter ◄─ upstream response
//!              │
//!              ▼
//!           logging (metrics, always)
//! ```

use crate::body::{BoxError, Downstream, ProxyBody, ReqBody};
use crate::compile::ListenerRuntime;
use crate::error::{ErrorKind, HttpError, RetryType};
use crate::filters::{Filters, RequestFilter, modify_path};
use crate::router::{RequestHead, Route};
use crate::server::ListenerShared;
use crate::upstream::{BackendRt, ClusterRt, Sent, rand_u64, send};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::BodyExt;
use sluice_ir::UpstreamProtocol;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Largest request body buffered so that a retry policy can replay it (bytes).
const MAX_REPLAY_BODY: u64 = 64 * 1024;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// What a downstream connection knows about itself.
#[derive(Debug)]
pub(crate) struct ConnCtx {
    pub(crate) listener: Arc<ListenerShared>,
    /// The client's IP as a header value (for X-Forwarded-For).
    pub(crate) client_ip: HeaderValue,
    pub(crate) client: SocketAddr,
    /// Whether the connection is TLS.
    pub(crate) tls: bool,
    /// Whether the connection is HTTP/3 (QUIC).
    pub(crate) h3: bool,
}

/// State of one request as it moves through the phases.
#[derive(Debug)]
pub struct RequestCtx<'a> {
    /// The matched route.
    pub route: Option<&'a Arc<Route>>,
    /// The chosen backend.
    pub(crate) backend: Option<&'a BackendRt>,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The request's `Origin` header when the route has a CORS filter.
    pub origin: Option<HeaderValue>,
    /// Answer errors as gRPC status.
    pub grpc: bool,
    /// The listener port (redirect port rules).
    pub listener_port: u16,
    /// When the request head arrived.
    pub start: Instant,
}

/// The phases of the request path. Each default method documents what it does; override to
/// change one phase while keeping the rest.
pub(crate) trait HttpPhases {
    /// Phase 1, `request_filter`: may answer the request before any upstream is involved.
    /// Default: answers CORS preflights of routes with a CORS filter (204 with the allowed
    /// origin, methods, headers, max-age) and RequestRedirect (the configured status with a
    /// `Location` built from Gateway API's scheme/host/port/path rules). Returns `None` to go on.
    fn request_filter<B>(
        &self,
        ctx: &mut RequestCtx<'_>,
        route: &Route,
        req: &Request<B>,
    ) -> Option<Response<ProxyBody>> {
        if let Some(cors) = &route.filters.cors {
            if req.method() == Method::OPTIONS
                && let Some(h) = cors.preflight(req.headers())
            {
                let mut resp = Response::new(ProxyBody::Empty);
                *resp.status_mut() = StatusCode::NO_CONTENT;
                *resp.headers_mut() = h;
                return Some(resp);
            }
            ctx.origin = req.headers().get(header::ORIGIN).cloned();
        }
        if let Some(rd) = &route.filters.redirect {
            let host = request_host(req).unwrap_or("");
            let loc = rd.location(
                ctx.scheme,
                host,
                ctx.listener_port,
                req.uri().path(),
                req.uri().query(),
                route.prefix.as_deref(),
            );
            let mut resp = Response::new(ProxyBody::Empty);
            *resp.status_mut() = rd.status;
            match HeaderValue::from_str(&loc) {
                Ok(v) => {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                Err(_) => *resp.status_mut() = StatusCode::BAD_REQUEST,
            }
            return Some(resp);
        }
        None
    }

    /// Phase 2, `upstream_peer`: chooses the backend. Default: by weight (weight 0 never);
    /// an invalid backend reference, no backends, or all weights 0 fail with 500.
    fn upstream_peer<'r>(&self, route: &'r Route) -> Result<&'r BackendRt, HttpError> {
        route
            .backends
            .choose()
            .filter(|b| b.cluster.is_some())
            .ok_or_else(|| HttpError::new(ErrorKind::InvalidBackend))
    }

    /// Phase 3, `upstream_request_filter`: edits the request sent upstream. Default: the route's
    /// then the backend's RequestHeaderModifier and URLRewrite filters in declaration order;
    /// hop-by-hop headers removed (an HTTP/1.1 Upgrade is kept); `X-Forwarded-For` gets the
    /// client IP appended; `X-Forwarded-Proto` set; `Host` kept or rewritten.
    fn upstream_request_filter(
        &self,
        conn: &ConnCtx,
        route: &Route,
        backend: &BackendRt,
        head: &mut http::request::Parts,
        upgrade: bool,
    ) {
        apply_request_filters(&route.filters, route, head);
        apply_request_filters(&backend.filters, route, head);
        strip_hop_by_hop(&mut head.headers, upgrade);
        forwarded(conn, &mut head.headers);
    }

    /// Phase 4, `response_filter`: edits the response sent downstream. Default: hop-by-hop
    /// headers removed (kept on 101 Switching Protocols), the backend's then the route's
    /// ResponseHeaderModifier filters, and CORS response headers for allowed origins.
    fn response_filter(
        &self,
        ctx: &RequestCtx<'_>,
        route: &Route,
        backend: &BackendRt,
        resp: &mut Response<ProxyBody>,
    ) {
        let upgrade = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        strip_hop_by_hop(h, upgrade);
        for m in backend.filters.response.iter() {
            m.apply(h);
        }
        for m in route.filters.response.iter() {
            m.apply(h);
        }
        if let Some(cors) = &route.filters.cors {
            cors.response_headers(ctx.origin.as_ref(), h);
        }
    }

    /// `fail_to_proxy`: the answer for a failed request. Default: the status of the error kind
    /// (404, 500, 502, 503, 504) with a one-line text body; on gRPC routes (or gRPC requests)
    /// a trailers-only gRPC response (`grpc-status` 14 for unavailable, 4 for deadlines).
    fn fail_to_proxy(&self, ctx: &RequestCtx<'_>, e: &HttpError) -> Response<ProxyBody> {
        error_response(e.kind, ctx.grpc)
    }

    /// `logging`: runs for every request once the response head is known. Default: counts the
    /// request in `sluice_http_requests_total` and observes its latency.
    fn logging(&self, conn: &ConnCtx, ctx: &RequestCtx<'_>, status: StatusCode) {
        static NONE: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
        let none = NONE.get_or_init(|| "none".into());
        let l = &conn.listener;
        l.metrics.request(
            &l.name,
            ctx.route.map_or(none, |r| &r.name),
            ctx.backend.map_or(none, |b| &b.name),
            status.as_u16(),
        );
        l.latency.observe(ctx.start.elapsed().as_secs_f64());
    }
}

/// Sluice's Gateway API request path: every phase keeps its default.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Gateway;

impl HttpPhases for Gateway {}

/// An error answer.
pub(crate) fn error_response(kind: ErrorKind, grpc: bool) -> Response<ProxyBody> {
    if grpc {
        let mut resp = Response::new(ProxyBody::Empty);
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(
            &GRPC_STATUS,
            HeaderValue::from(u16::from(kind.grpc_status())),
        );
        h.insert(&GRPC_MESSAGE, HeaderValue::from_static(kind.as_str()));
        return resp;
    }
    let mut resp = Response::new(ProxyBody::full(Bytes::from_static(
        kind.as_str().as_bytes(),
    )));
    *resp.status_mut() = kind.status();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn request_host<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => req.headers().get(header::HOST)?.to_str().ok(),
    }
}

fn apply_request_filters(f: &Filters, route: &Route, head: &mut http::request::Parts) {
    for filter in f.request.iter() {
        match filter {
            RequestFilter::Headers(m) => m.apply(&mut head.headers),
            RequestFilter::Rewrite(rw) => {
                if let Some(h) = &rw.hostname {
                    head.headers.insert(header::HOST, h.clone());
                    if head.uri.authority().is_some() {
                        let mut parts = std::mem::take(&mut head.uri).into_parts();
                        parts.authority = Authority::try_from(h.as_bytes()).ok();
                        head.uri = Uri::from_parts(parts).unwrap_or_default();
                    }
                }
                if let Some(m) = &rw.path {
                    let new = modify_path(head.uri.path(), m, route.prefix.as_deref());
                    let pq = match head.uri.query() {
                        Some(q) => format!("{new}?{q}"),
                        None => new,
                    };
                    let mut parts = std::mem::take(&mut head.uri).into_parts();
                    parts.path_and_query = PathAndQuery::try_from(pq).ok();
                    head.uri = Uri::from_parts(parts).unwrap_or_default();
                }
            }
        }
    }
}

/// Removes hop-by-hop headers: `Connection` and the headers it names, `Keep-Alive`,
/// `Proxy-Connection`, `TE` (except `trailers`), `Trailer`, `Transfer-Encoding`, `Upgrade`.
/// With `upgrade`, `Connection: upgrade` and `Upgrade` are kept.
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    // One pass over the (few) names is cheaper than a hash lookup per hop-by-hop name.
    let any = h.keys().any(|n| {
        n == header::CONNECTION
            || n == header::TE
            || n == header::TRAILER
            || n == header::TRANSFER_ENCODING
            || n == header::UPGRADE
            || n == KEEP_ALIVE
            || n == PROXY_CONNECTION
    });
    if !any {
        return;
    }
    if h.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        h.remove(header::CONNECTION);
        for n in named {
            if upgrade && n == header::UPGRADE {
                continue;
            }
            if n != header::TE {
                h.remove(&n);
            }
        }
        if upgrade {
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
    h.remove(&KEEP_ALIVE);
    h.remove(&PROXY_CONNECTION);
    h.remove(header::TRAILER);
    h.remove(header::TRANSFER_ENCODING);
    if !upgrade {
        h.remove(header::UPGRADE);
    }
    if let Some(te) = h.get(header::TE) {
        let trailers = te.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
        if trailers {
            h.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            h.remove(header::TE);
        }
    }
}

fn forwarded(conn: &ConnCtx, h: &mut HeaderMap) {
    let mut values = h.get_all(&X_FORWARDED_FOR).iter();
    match values.next() {
        None => {
            h.insert(&X_FORWARDED_FOR, conn.client_ip.clone());
        }
        Some(first) => {
            let mut v = first.as_bytes().to_vec();
            for more in values {
                v.extend_from_slice(b", ");
                v.extend_from_slice(more.as_bytes());
            }
            v.extend_from_slice(b", ");
            v.extend_from_slice(conn.client_ip.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                h.insert(&X_FORWARDED_FOR, v);
            }
        }
    }
    h.insert(
        &X_FORWARDED_PROTO,
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req.headers().get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Entry point of the service: one request through all phases.
pub(crate) async fn handle<B>(
    req: Request<B>,
    conn: Arc<ConnCtx>,
) -> Result<Response<ProxyBody>, Infallible>
where
    B: Downstream,
    B::Error: Into<BoxError>,
{
    let phases = Gateway;
    let rt = conn.listener.slot.load_full();
    let mut ctx = RequestCtx {
        route: None,
        backend: None,
        scheme: if conn.tls { "https" } else { "http" },
        origin: None,
        grpc: false,
        listener_port: rt.port,
        start: Instant::now(),
    };
    let mut resp = match proxy(&phases, &rt, &conn, &mut ctx, req).await {
        Ok(r) => r,
        Err(e) => {
            if e.kind != ErrorKind::NoRoute {
                tracing::debug!(listener = %conn.listener.name, client = %conn.client,
                    route = ctx.route.map(|r| &*r.name), error = %e, "request failed");
            }
            phases.fail_to_proxy(&ctx, &e)
        }
    };
    if let Some(v) = &rt.alt_svc
        && !conn.h3
    {
        resp.headers_mut().insert(header::ALT_SVC, v.clone());
    }
    phases.logging(&conn, &ctx, resp.status());
    Ok(resp)
}

async fn proxy<'a, P: HttpPhases, B>(
    phases: &P,
    rt: &'a ListenerRuntime,
    conn: &ConnCtx,
    ctx: &mut RequestCtx<'a>,
    mut req: Request<B>,
) -> Result<Response<ProxyBody>, HttpError>
where
    B: Downstream,
    B::Error: Into<BoxError>,
{
    ctx.grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    // The client's gRPC deadline bounds the wait for the response head.
    let grpc_deadline = if ctx.grpc {
        req.headers()
            .get(&GRPC_TIMEOUT)
            .and_then(|v| parse_grpc_timeout(v.as_bytes()))
    } else {
        None
    };
    let route = {
        let head = RequestHead {
            host: request_host(&req).unwrap_or(""),
            method: req.method(),
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
        };
        rt.router
            .find(&head)
            .ok_or_else(|| HttpError::new(ErrorKind::NoRoute))?
    };
    ctx.route = Some(route);
    ctx.grpc |= route.grpc;

    if let Some(resp) = phases.request_filter(ctx, route, &req) {
        return Ok(resp);
    }
    let backend = phases.upstream_peer(route)?;
    ctx.backend = Some(backend);
    let cluster = backend.cluster.as_ref().expect("checked by upstream_peer");

    let upgrade = is_upgrade(&req);
    let downstream_upgrade = if upgrade {
        Some(hyper::upgrade::on(&mut req))
    } else {
        None
    };
    let (mut head, body) = req.into_parts();
    phases.upstream_request_filter(conn, route, backend, &mut head, upgrade);
    prepare_uri(&mut head, cluster.protocol)?;

    // The body: replayable when empty or small enough for a retry policy.
    let retries = route.retry.as_ref().map_or(0, |r| r.attempts);
    let mut body = if body.is_end_stream() {
        ReqBody::Empty
    } else if retries > 0
        && body
            .size_hint()
            .upper()
            .is_some_and(|n| n <= MAX_REPLAY_BODY)
    {
        // Boxed: rare, and keeps the collector out of the request's future.
        match Box::pin(body.collect()).await {
            Ok(c) => ReqBody::full(c.to_bytes()),
            Err(e) => {
                return Err(HttpError::new(ErrorKind::BadRequest).because(e.into()));
            }
        }
    } else {
        body.into_req_body()
    };

    // Mirrors see the request as it goes upstream.
    let mirrors = route
        .filters
        .mirrors
        .iter()
        .chain(backend.filters.mirrors.iter());
    for m in mirrors {
        if m.per_million < 1_000_000 && (rand_u64() % 1_000_000) as u32 >= m.per_million {
            continue;
        }
        let mbody = match &mut body {
            ReqBody::Empty => ReqBody::Empty,
            ReqBody::Full(b) => ReqBody::Full(b.clone()),
            ReqBody::Mirror(..) => ReqBody::Empty,
            other => {
                let (tx, rx) = mpsc::channel(64);
                let hint = other.size_hint();
                let taken = std::mem::replace(other, ReqBody::Empty);
                *other = match taken {
                    t @ (ReqBody::Incoming(_) | ReqBody::Boxed(_)) => ReqBody::Tee {
                        body: Box::new(t),
                        tx: Some(tx),
                    },
                    t => t,
                };
                ReqBody::Mirror(rx, hint)
            }
        };
        let mut mreq = Request::new(mbody);
        *mreq.method_mut() = head.method.clone();
        *mreq.uri_mut() = head.uri.clone();
        *mreq.headers_mut() = head.headers.clone();
        let cluster = m.cluster.clone();
        let mut mhead = mreq.into_parts();
        if prepare_uri(&mut mhead.0, cluster.protocol).is_ok() {
            let mreq = Request::from_parts(mhead.0, mhead.1);
            tokio::spawn(mirror(cluster, mreq));
        }
    }

    let req = Request::from_parts(head, body);
    let metrics = &conn.listener.metrics;
    let sent = if route.retry.is_none() && route.timeouts.is_empty() && grpc_deadline.is_none() {
        // The common case: one attempt, no timers. Kept flat so that the request's future
        // (moved into hyper's dispatcher for every request) stays small.
        let ep = cluster
            .pick(None)
            .ok_or_else(|| HttpError::new(ErrorKind::NoEndpoint))?;
        match send(cluster, ep, req, upgrade).await {
            Ok(s) => s,
            Err((e, _)) => {
                if matches!(e.kind, ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout) {
                    metrics.connect_error(&cluster.name);
                }
                return Err(e);
            }
        }
    } else {
        Box::pin(with_policies(
            route,
            cluster,
            req,
            upgrade,
            metrics,
            grpc_deadline,
        ))
        .await?
    };
    let Sent { mut response } = sent;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(down) = downstream_upgrade
    {
        let up = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            if let (Ok(down), Ok(up)) = (down.await, up.await) {
                let mut down = hyper_util::rt::TokioIo::new(down);
                let mut up = hyper_util::rt::TokioIo::new(up);
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            }
        });
    }
    phases.response_filter(ctx, route, backend, &mut response);
    Ok(response)
}

/// Origin-form URI and a `Host` header for HTTP/1.1 upstreams; absolute URI for HTTP/2.
fn prepare_uri(head: &mut http::request::Parts, proto: UpstreamProtocol) -> Result<(), HttpError> {
    match proto {
        UpstreamProtocol::H2c | UpstreamProtocol::H2 => {
            let authority = match head.uri.authority() {
                Some(a) => a.clone(),
                None => head
                    .headers
                    .get(header::HOST)
                    .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                    .ok_or_else(|| HttpError::new(ErrorKind::BadRequest).because("missing Host"))?,
            };
            head.headers.remove(header::HOST);
            let mut parts = std::mem::take(&mut head.uri).into_parts();
            parts.scheme = Some(Scheme::HTTP);
            parts.authority = Some(authority);
            if parts.path_and_query.is_none() {
                parts.path_and_query = Some(PathAndQuery::from_static("/"));
            }
            head.uri = Uri::from_parts(parts)
                .map_err(|e| HttpError::new(ErrorKind::BadRequest).because(e))?;
            head.version = Version::HTTP_2;
        }
        _ => {
            if let Some(a) = head.uri.authority() {
                if !head.headers.contains_key(header::HOST)
                    && let Ok(v) = HeaderValue::from_str(a.as_str())
                {
                    head.headers.insert(header::HOST, v);
                }
                let pq = head
                    .uri
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/"));
                head.uri = Uri::from(pq);
            }
            head.version = Version::HTTP_11;
        }
    }
    Ok(())
}

/// Retries and timeouts: `timeouts.request` (or the client's shorter `grpc-timeout`) around
/// all attempts.
async fn with_policies(
    route: &Route,
    cluster: &ClusterRt,
    req: Request<ReqBody>,
    upgrade: bool,
    metrics: &crate::metrics::Metrics,
    grpc_deadline: Option<Duration>,
) -> Result<Sent, HttpError> {
    let retries = route.retry.as_ref().map_or(0, |r| r.attempts);
    let replay = retries > 0 && matches!(req.body(), ReqBody::Empty | ReqBody::Full(_));
    let template = replay.then(|| {
        (
            req.method().clone(),
            req.uri().clone(),
            req.headers().clone(),
        )
    });
    let replay_body = match (req.body(), replay) {
        (ReqBody::Full(b), true) => b.clone(),
        _ => None,
    };
    let attempts = attempts(route, cluster, req, template, replay_body, upgrade, metrics);
    let limit = match (
        route.timeouts.request_ms.map(Duration::from_millis),
        grpc_deadline,
    ) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    match limit {
        Some(d) => tokio::time::timeout(d, attempts)
            .await
            .map_err(|_| HttpError::new(ErrorKind::RequestTimeout))?,
        None => attempts.await,
    }
}

async fn attempts(
    route: &Route,
    cluster: &ClusterRt,
    mut req: Request<ReqBody>,
    template: Option<(Method, Uri, HeaderMap)>,
    replay_body: Option<Bytes>,
    upgrade: bool,
    metrics: &crate::metrics::Metrics,
) -> Result<Sent, HttpError> {
    let policy = route.retry.as_ref();
    let max = policy.map_or(0, |p| p.attempts);
    let backoff = Duration::from_millis(policy.and_then(|p| p.backoff_ms).unwrap_or(25));
    let per_try = route.timeouts.backend_request_ms.map(Duration::from_millis);
    let mut attempt = 0u32;
    let mut avoid = None;
    loop {
        let ep = cluster
            .pick(avoid)
            .ok_or_else(|| HttpError::new(ErrorKind::NoEndpoint))?;
        avoid = Some(ep.addr);
        let fut = send(cluster, ep, req, upgrade);
        let result = match per_try {
            Some(d) => match tokio::time::timeout(d, fut).await {
                Ok(r) => r,
                Err(_) => Err((
                    HttpError::new(ErrorKind::BackendTimeout).retry(RetryType::Policy),
                    None,
                )),
            },
            None => fut.await,
        };
        let next = |t: &Option<(Method, Uri, HeaderMap)>| {
            t.as_ref().map(|(m, u, h)| {
                let mut r = Request::new(match &replay_body {
                    Some(b) => ReqBody::Full(Some(b.clone())),
                    None => ReqBody::Empty,
                });
                *r.method_mut() = m.clone();
                *r.uri_mut() = u.clone();
                *r.headers_mut() = h.clone();
                r
            })
        };
        match result {
            Ok(sent) => {
                let code = sent.response.status().as_u16();
                let retry = attempt < max && policy.is_some_and(|p| p.codes.contains(&code));
                match (retry, next(&template)) {
                    (true, Some(r)) => {
                        drop(sent);
                        req = r;
                    }
                    _ => return Ok(sent),
                }
            }
            Err((e, returned)) => {
                if matches!(e.kind, ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout) {
                    metrics.connect_error(&cluster.name);
                }
                let allowed = attempt < max
                    && match e.retry {
                        RetryType::Safe => true,
                        RetryType::Policy => {
                            e.kind != ErrorKind::BackendTimeout
                                || policy.is_some_and(|p| p.codes.contains(&504))
                        }
                        RetryType::Never => false,
                    };
                let again = if allowed {
                    // An unsent request comes back; a sent one is rebuilt from the template.
                    match returned {
                        Some(r) => Some(r),
                        None => next(&template),
                    }
                } else {
                    None
                };
                match again {
                    Some(r) => req = r,
                    None => return Err(e),
                }
            }
        }
        attempt += 1;
        tokio::time::sleep(backoff).await;
    }
}

/// A `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Sends a mirrored request and drains its response; failures are only logged.
async fn mirror(cluster: Arc<ClusterRt>, req: Request<ReqBody>) {
    let Some(ep) = cluster.pick(None).cloned() else {
        return;
    };
    match send(&cluster, &ep, req, false).await {
        Ok(Sent { response }) => {
            let mut body = response.into_body();
            while let Some(Ok(_)) = body.frame().await {}
        }
        Err((e, _)) => tracing::debug!(cluster = %cluster.name, error = %e, "mirror failed"),
    }
}

#[cfg(test)]
mod grpc_tests {
    use super::parse_grpc_timeout;
    use std::time::Duration;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout(b"1S"), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_grpc_timeout(b"250m"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_grpc_timeout(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(
            parse_grpc_timeout(b"99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(parse_grpc_timeout(b"123456789S"), None);
        assert_eq!(parse_grpc_timeout(b"S"), None);
        assert_eq!(parse_grpc_timeout(b"10x"), None);
        assert_eq!(parse_grpc_timeout(b"-1S"), None);
    }
}

#[cfg(test)]
mod size_tests {
    fn ret_size<A, B, Fut>(_: fn(A, B) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// hyper moves the request future into its dispatcher for every request: keep it small
    /// (rare paths are boxed). ~3.4 KiB in release builds when this was written.
    #[test]
    fn request_future_stays_small() {
        let size = ret_size(super::handle::<hyper::body::Incoming> as fn(_, _) -> _);
        assert!(size < 8192, "request future grew to {size} bytes");
    }
}
