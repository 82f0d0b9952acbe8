//! HTTP mode of the echo backend: the echo handler plus `/health`, `/status/NNN`, `/retry/...`
//! and `/ws`, served over HTTP/1.1, cleartext HTTP/2 and HTTPS.

use super::tls::{cipher_suite_name, pem_encode_certificate, tls_version_name};
use super::{EchoLog, PodContext};
use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Shared state of one HTTP-mode echo instance.
#[derive(Debug)]
pub(crate) struct HttpState {
    ctx: Arc<PodContext>,
    http_port: String,
    log: EchoLog,
    retry_attempts: Mutex<HashMap<String, u64>>,
}

impl HttpState {
    pub(crate) fn new(ctx: Arc<PodContext>, http_port: u16, log: EchoLog) -> Arc<Self> {
        Arc::new(HttpState {
            ctx,
            http_port: http_port.to_string(),
            log,
            retry_attempts: Mutex::default(),
        })
    }
}

/// TLS facts of a connection, reported in the `tls` block.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TlsAssertions {
    pub version: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peer_certificates: Vec<String>,
    pub server_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub negotiated_protocol: String,
    pub cipher_suite: String,
}

impl TlsAssertions {
    pub(crate) fn from_server_conn(c: &rustls::ServerConnection) -> Self {
        TlsAssertions {
            version: tls_version_name(c.protocol_version()),
            peer_certificates: c
                .peer_certificates()
                .unwrap_or_default()
                .iter()
                .map(|d| pem_encode_certificate(d))
                .collect(),
            server_name: c.server_name().unwrap_or_default().to_string(),
            negotiated_protocol: c
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default(),
            cipher_suite: cipher_suite_name(c.negotiated_cipher_suite()),
        }
    }
}

#[derive(Debug)]
struct ConnInfo {
    peer: SocketAddr,
    tls: Option<TlsAssertions>,
    reset: Arc<AtomicBool>,
}

/// The echo JSON body, field order as upstream's.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestAssertions<'a> {
    path: &'a str,
    host: &'a str,
    method: &'a str,
    proto: &'a str,
    headers: BTreeMap<String, Vec<String>>,
    http_port: &'a str,
    namespace: &'a str,
    ingress: &'a str,
    service: &'a str,
    pod: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<&'a TlsAssertions>,
}

/// Returned by the handler to make the connection close with a TCP RST (retry simulation).
#[derive(Debug)]
struct ResetConnection;

impl std::fmt::Display for ResetConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset by retry simulation")
    }
}

impl std::error::Error for ResetConnection {}

type HttpResponse = Response<Full<Bytes>>;

/// A TCP stream that closes with an RST (SO_LINGER 0) when `reset` was set.
struct ResettableStream {
    inner: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            let _ = self.inner.set_zero_linger();
        }
    }
}

impl AsyncRead for ResettableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub(crate) async fn serve_http1(l: TcpListener, state: Arc<HttpState>) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "echo accept failed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let reset = Arc::new(AtomicBool::new(false));
            let conn = Arc::new(ConnInfo {
                peer,
                tls: None,
                reset: reset.clone(),
            });
            let io = ResettableStream {
                inner: stream,
                reset,
            };
            let svc = service_fn(move |req| mux(req, state.clone(), conn.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades()
                .await;
        });
    }
}

pub(crate) async fn serve_h2c(l: TcpListener, state: Arc<HttpState>) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = match l.accept().await {
            Ok(x) => x,
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let conn = Arc::new(ConnInfo {
                peer,
                tls: None,
                reset: Arc::default(),
            });
            let svc = service_fn(move |req| h2c_handler(req, state.clone(), conn.clone()));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

pub(crate) async fn serve_https(
    l: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<HttpState>,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (stream, peer) = match l.accept().await {
            Ok(x) => x,
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(tls_stream) = acceptor.accept(stream).await else {
                return;
            };
            let info = TlsAssertions::from_server_conn(tls_stream.get_ref().1);
            let conn = Arc::new(ConnInfo {
                peer,
                tls: Some(info),
                reset: Arc::default(),
            });
            let svc = service_fn(move |req| mux(req, state.clone(), conn.clone()));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls_stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, body: &str) -> HttpResponse {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    if !body.is_empty() {
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    r
}

fn json_error(status: StatusCode, msg: &str) -> HttpResponse {
    let body = serde_json::json!({ "message": msg }).to_string();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// The request URI as Go's `r.RequestURI` has it: the request target as received.
fn request_uri(req: &Request<Incoming>) -> String {
    let uri = req.uri();
    if req.version() < Version::HTTP_2 && uri.scheme().is_some() {
        return uri.to_string();
    }
    uri.path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string())
}

async fn h2c_handler(
    req: Request<Incoming>,
    state: Arc<HttpState>,
    conn: Arc<ConnInfo>,
) -> Result<HttpResponse, ResetConnection> {
    let upgrade_h2c = req
        .headers()
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"h2c"));
    if req.version() != Version::HTTP_2 && !upgrade_h2c {
        return Ok(text(StatusCode::BAD_REQUEST, "Expected h2c request"));
    }
    Ok(echo(req, &state, &conn).await)
}

async fn mux(
    req: Request<Incoming>,
    state: Arc<HttpState>,
    conn: Arc<ConnInfo>,
) -> Result<HttpResponse, ResetConnection> {
    let path = req.uri().path().replace("//", "/");
    match path.as_str() {
        "/health" => Ok(text(StatusCode::OK, "OK")),
        "/ws" => Ok(websocket(req)),
        "/status" | "/retry" => {
            let mut r = text(StatusCode::MOVED_PERMANENTLY, "");
            let loc = match req.uri().query() {
                Some(q) => format!("{path}/?{q}"),
                None => format!("{path}/"),
            };
            if let Ok(v) = HeaderValue::from_str(&loc) {
                r.headers_mut().insert(http::header::LOCATION, v);
            }
            Ok(r)
        }
        p if p.starts_with("/status/") => Ok(status(&request_uri(&req))),
        p if p.starts_with("/retry/") => retry(req, &state, &conn).await,
        _ => Ok(echo(req, &state, &conn).await),
    }
}

fn status(request_uri: &str) -> HttpResponse {
    let code = request_uri
        .strip_prefix("/status/")
        .filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::BAD_REQUEST);
    text(code, "")
}

/// Percent-decodes a query component (`+` is a space), as Go's `url.ParseQuery`.
fn query_unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first value of a query parameter.
pub(crate) fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (query_unescape(k) == key).then(|| query_unescape(v))
    })
}

/// Parses a Go duration string (`300ms`, `1.5s`, `2m`, `1h30m`).
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let orig = s;
    let mut s = s;
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(format!("time: invalid duration {orig:?}"));
    }
    let mut total = 0f64;
    while !s.is_empty() {
        let num_end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("time: missing unit in duration {orig:?}"))?;
        if num_end == 0 {
            return Err(format!("time: invalid duration {orig:?}"));
        }
        let n: f64 = s[..num_end]
            .parse()
            .map_err(|_| format!("time: invalid duration {orig:?}"))?;
        s = &s[num_end..];
        let unit_end = s
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(s.len());
        let mult = match &s[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => return Err(format!("time: unknown unit {u:?} in duration {orig:?}")),
        };
        total += n * mult;
        s = &s[unit_end..];
    }
    Ok(Duration::from_secs_f64(total))
}

/// Go's `http.CanonicalHeaderKey`: `x-header-set` -> `X-Header-Set`. Names with bytes outside
/// the token set are returned unchanged.
pub fn canonical_header_name(name: &str) -> String {
    const TOKEN: &[u8] = b"!#$%&'*+-.^_`|~";
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || TOKEN.contains(&b))
    {
        return name.to_string();
    }
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            out
        })
        .collect()
}

async fn echo(req: Request<Incoming>, state: &HttpState, conn: &ConnInfo) -> HttpResponse {
    let uri = request_uri(&req);
    state.log.record(&uri, conn.peer);
    if let Some(d) = query_param(req.uri().query(), "delay").filter(|d| !d.is_empty()) {
        match parse_go_duration(&d) {
            Ok(d) => tokio::time::sleep(d).await,
            Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, &e),
        }
    }
    let host = req
        .headers()
        .get(http::header::HOST)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in req.headers() {
        if name == http::header::HOST {
            continue;
        }
        headers
            .entry(canonical_header_name(name.as_str()))
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let proto = match req.version() {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    };
    let body = RequestAssertions {
        path: &uri,
        host: &host,
        method: req.method().as_str(),
        proto,
        headers: headers.clone(),
        http_port: &state.http_port,
        namespace: &state.ctx.namespace,
        ingress: &state.ctx.ingress,
        service: &state.ctx.service,
        pod: &state.ctx.pod,
        tls: conn.tls.as_ref(),
    };
    let json = match serde_json::to_string_pretty(&body) {
        Ok(j) => reindent_one_space(&j),
        Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(json)));
    // X-Echo-Set-Header: "Name:value,Name2:value2"; repeated names are joined with ",".
    let mut set: Vec<(String, String)> = Vec::new();
    for v in headers.get("X-Echo-Set-Header").into_iter().flatten() {
        for kv in v.split(',') {
            let kv = kv.trim();
            let (name, value) = kv.split_once(':').unwrap_or((kv, ""));
            match set.iter_mut().find(|(n, _)| n == name) {
                Some((_, existing)) => {
                    existing.push(',');
                    existing.push_str(value.trim());
                }
                None => set.push((name.to_string(), value.to_string())),
            }
        }
    }
    for (name, value) in set {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            resp.headers_mut().insert(n, v);
        }
    }
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// serde_json pretty-prints with two spaces; Go's `MarshalIndent(v, "", " ")` uses one.
fn reindent_one_space(s: &str) -> String {
    s.lines()
        .map(|l| {
            let indent = l.len() - l.trim_start_matches(' ').len();
            format!("{}{}", " ".repeat(indent / 2), &l[indent..])
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn retry(
    req: Request<Incoming>,
    state: &HttpState,
    conn: &ConnInfo,
) -> Result<HttpResponse, ResetConnection> {
    let q = req.uri().query();
    let Some(uuid) = query_param(q, "uuid").filter(|u| !u.is_empty()) else {
        return Ok(text(StatusCode::BAD_REQUEST, "uuid is required"));
    };
    let Some(succeed_after) = query_param(q, "succeedAfter").and_then(|s| s.parse::<u64>().ok())
    else {
        return Ok(text(StatusCode::BAD_REQUEST, "succeedAfter is required"));
    };
    let response_code = query_param(q, "responseCode")
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok());
    let fail = {
        let mut attempts = state
            .retry_attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = attempts.entry(uuid).or_insert(0);
        if *n < succeed_after {
            *n += 1;
            true
        } else {
            false
        }
    };
    if !fail {
        return Ok(echo(req, state, conn).await);
    }
    if let Some(d) = query_param(q, "delayRetry").filter(|d| !d.is_empty()) {
        match parse_go_duration(&d) {
            Ok(d) => tokio::time::sleep(d).await,
            Err(e) => return Ok(json_error(StatusCode::INTERNAL_SERVER_ERROR, &e)),
        }
    }
    match response_code {
        Some(code) => Ok(text(code, "")),
        None => {
            conn.reset.store(true, Ordering::SeqCst);
            Err(ResetConnection)
        }
    }
}

fn websocket(req: Request<Incoming>) -> HttpResponse {
    let is_upgrade = req
        .headers()
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let Some(key) = req.headers().get(http::header::SEC_WEBSOCKET_KEY).cloned() else {
        return text(StatusCode::BAD_REQUEST, "Bad Request");
    };
    if !is_upgrade {
        return text(StatusCode::BAD_REQUEST, "Bad Request");
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut r = text(StatusCode::SWITCHING_PROTOCOLS, "");
    let h = r.headers_mut();
    h.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(http::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names_follow_go() {
        assert_eq!(canonical_header_name("x-header-set"), "X-Header-Set");
        assert_eq!(canonical_header_name("USER-AGENT"), "User-Agent");
        assert_eq!(canonical_header_name("x_under"), "X_under");
        assert_eq!(canonical_header_name("bad header"), "bad header");
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_go_duration("10").is_err());
        assert!(parse_go_duration("abc").is_err());
    }

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(
            query_param(Some("a=1&delay=1%2E5s&b"), "delay").as_deref(),
            Some("1.5s")
        );
        assert_eq!(query_param(Some("x=a+b"), "x").as_deref(), Some("a b"));
        assert_eq!(query_param(None, "x"), None);
        assert_eq!(query_param(Some("b"), "b").as_deref(), Some(""));
    }

    #[test]
    fn status_codes_from_uri() {
        assert_eq!(status("/status/418").status(), StatusCode::IM_A_TEAPOT);
        assert_eq!(status("/status/4180").status(), StatusCode::BAD_REQUEST);
        assert_eq!(status("/status/200?x=1").status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn reindent_halves_indentation() {
        assert_eq!(
            reindent_one_space("{\n  \"a\": [\n    1\n  ]\n}"),
            "{\n \"a\": [\n  1\n ]\n}"
        );
    }
}
