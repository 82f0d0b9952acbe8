//! Test fixtures (feature `test-util`): IR builders and an echo upstream that answers every
//! request with its method, path, host, headers and body as JSON, plus its pod name.
//!
//! The echo server obeys a few request headers: `x-echo-delay-ms` (sleep before answering),
//! `x-echo-status` (answer with this status), `x-echo-set-header` (`name:value,name:value`
//! added to the response). An HTTP/1.1 `Upgrade` request gets `101` and the stream is echoed.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use sluice_ir::*;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What the echo upstream answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Echoed {
    /// The echo server's name.
    pub pod: String,
    /// Request method.
    pub method: String,
    /// Path and query as received.
    pub path: String,
    /// `Host` header or `:authority`.
    pub host: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: String,
    /// Headers (lower-case names), values in order.
    pub headers: BTreeMap<String, Vec<String>>,
    /// Body as UTF-8 (lossy).
    pub body: String,
}

impl Echoed {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

/// A running echo upstream; stops when dropped.
#[derive(Debug)]
pub struct Echo {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its pod name.
    pub pod: String,
    /// Requests served.
    pub requests: Arc<AtomicU64>,
    /// Connections accepted.
    pub connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo_handler(
    pod: Arc<str>,
    count: Arc<AtomicU64>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    count.fetch_add(1, Ordering::Relaxed);
    let h = req.headers().clone();
    if let Some(ms) = h
        .get("x-echo-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if h.contains_key(http::header::UPGRADE) && req.version() == http::Version::HTTP_11 {
        let up = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(io) = up.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(io));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert(http::header::UPGRADE, h[http::header::UPGRADE].clone());
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
        resp.headers_mut().insert(
            "x-pod",
            http::HeaderValue::from_str(&pod).expect("pod name"),
        );
        return Ok(resp);
    }
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    let host = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            h.get("host")
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        })
        .unwrap_or_default();
    let protocol = format!("{:?}", req.version());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &h {
        headers
            .entry(k.to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let e = Echoed {
        pod: pod.to_string(),
        method,
        path,
        host,
        protocol,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let mut resp = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(&e).expect("json"),
    )));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        "x-pod",
        http::HeaderValue::from_str(&pod).expect("pod name"),
    );
    if let Some(s) = h
        .get("x-echo-status")
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
    {
        *resp.status_mut() = s;
    }
    if let Some(set) = h.get("x-echo-set-header").and_then(|v| v.to_str().ok()) {
        for kv in set.split(',').filter(|s| !s.is_empty()) {
            if let Some((k, v)) = kv.split_once(':')
                && let (Ok(k), Ok(v)) = (
                    http::HeaderName::from_bytes(k.trim().as_bytes()),
                    http::HeaderValue::from_str(v.trim()),
                )
            {
                resp.headers_mut().append(k, v);
            }
        }
    }
    Ok(resp)
}

/// Starts an echo upstream (HTTP/1.1 and HTTP/2 cleartext) on 127.0.0.1 with a free port.
pub async fn echo(pod: &str) -> Echo {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo");
    echo_on(listener, pod)
}

/// Starts an echo upstream on a bound listener.
pub fn echo_on(listener: tokio::net::TcpListener, pod: &str) -> Echo {
    let addr = listener.local_addr().expect("local addr");
    let name: Arc<str> = pod.into();
    let requests = Arc::new(AtomicU64::new(0));
    let count = requests.clone();
    let connections = Arc::new(AtomicU64::new(0));
    let conns = connections.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            conns.fetch_add(1, Ordering::Relaxed);
            let name = name.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| echo_handler(name.clone(), count.clone(), req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Echo {
        addr,
        pod: pod.to_string(),
        requests,
        connections,
        task,
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// 127.0.0.1.
pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A cluster with ready endpoints at `addrs`.
pub fn cluster(name: &str, addrs: &[SocketAddr]) -> Cluster {
    let mut eps: Vec<Endpoint> = addrs
        .iter()
        .map(|a| Endpoint::new(a.ip(), a.port()))
        .collect();
    eps.sort_by_key(|e| (e.address, e.port));
    Cluster::new(name, eps)
}

/// A cleartext HTTP listener on 127.0.0.1:`port` with these virtual hosts.
pub fn http_listener(port: u16, vhosts: Vec<VirtualHost>) -> Listener {
    let mut l = Listener::new(LOCALHOST, port, ListenerProtocol::Http);
    l.virtual_hosts = vhosts;
    l
}

/// A virtual host.
pub fn vhost(hostname: &str, routes: Vec<HttpRoute>) -> VirtualHost {
    VirtualHost {
        hostname: hostname.into(),
        routes,
    }
}

/// A snapshot; clusters are sorted by name and listeners by name, as the IR requires.
pub fn snapshot(mut listeners: Vec<Listener>, mut clusters: Vec<Cluster>) -> Snapshot {
    listeners.sort_by(|a, b| a.name.cmp(&b.name));
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    Snapshot {
        version: 1,
        listeners,
        clusters,
        services: vec![],
    }
}

/// Builds an [`HttpRoute`].
#[derive(Debug, Clone)]
pub struct RouteBuilder(HttpRoute);

/// A route named `HTTPRoute/default/<name>` matching path prefix `/`, no backends yet.
pub fn route(name: &str) -> RouteBuilder {
    RouteBuilder(HttpRoute {
        id: RouteId {
            route: ObjectRef::new("HTTPRoute", "default", name),
            rule: 0,
            matcher: 0,
            rule_name: None,
        },
        matcher: HttpMatch::default(),
        filters: vec![],
        backends: vec![],
        timeouts: Timeouts::default(),
        retry: None,
        grpc: false,
    })
}

impl RouteBuilder {
    /// Path prefix match.
    pub fn prefix(mut self, p: &str) -> Self {
        self.0.matcher.path = PathMatch::Prefix(p.into());
        self
    }
    /// Exact path match.
    pub fn exact(mut self, p: &str) -> Self {
        self.0.matcher.path = PathMatch::Exact(p.into());
        self
    }
    /// Regex path match.
    pub fn regex(mut self, p: &str) -> Self {
        self.0.matcher.path = PathMatch::Regex(p.into());
        self
    }
    /// Method condition.
    pub fn method(mut self, m: &str) -> Self {
        self.0.matcher.method = Some(m.into());
        self
    }
    /// Exact header condition.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.0.matcher.headers.push(HeaderMatch {
            name: name.into(),
            value: StringMatch::Exact(value.into()),
        });
        self
    }
    /// Regex header condition.
    pub fn header_regex(mut self, name: &str, re: &str) -> Self {
        self.0.matcher.headers.push(HeaderMatch {
            name: name.into(),
            value: StringMatch::Regex(re.into()),
        });
        self
    }
    /// Exact query parameter condition.
    pub fn query(mut self, name: &str, value: &str) -> Self {
        self.0.matcher.query_params.push(QueryParamMatch {
            name: name.into(),
            value: StringMatch::Exact(value.into()),
        });
        self
    }
    /// A weighted backend.
    pub fn backend(mut self, cluster: &str, weight: u32) -> Self {
        self.0.backends.push(WeightedBackend {
            weight,
            cluster: Some(cluster.into()),
            filters: vec![],
        });
        self
    }
    /// A backend with its own filters.
    pub fn backend_with(mut self, cluster: &str, weight: u32, filters: Vec<HttpFilter>) -> Self {
        self.0.backends.push(WeightedBackend {
            weight,
            cluster: Some(cluster.into()),
            filters,
        });
        self
    }
    /// An unresolvable backend reference.
    pub fn invalid_backend(mut self, weight: u32) -> Self {
        self.0.backends.push(WeightedBackend {
            weight,
            cluster: None,
            filters: vec![],
        });
        self
    }
    /// A rule-level filter.
    pub fn filter(mut self, f: HttpFilter) -> Self {
        self.0.filters.push(f);
        self
    }
    /// Timeouts in milliseconds.
    pub fn timeouts(mut self, request_ms: Option<u64>, backend_request_ms: Option<u64>) -> Self {
        self.0.timeouts = Timeouts {
            request_ms,
            backend_request_ms,
        };
        self
    }
    /// A retry policy.
    pub fn retry(mut self, attempts: u32, codes: &[u16], backoff_ms: Option<u64>) -> Self {
        self.0.retry = Some(RetryPolicy {
            codes: codes.to_vec(),
            attempts,
            backoff_ms,
        });
        self
    }
    /// Mark as gRPC route.
    pub fn grpc(mut self) -> Self {
        self.0.grpc = true;
        self
    }
    /// Rule and match indices of the id.
    pub fn rule(mut self, rule: u32, matcher: u32) -> Self {
        self.0.id.rule = rule;
        self.0.id.matcher = matcher;
        self
    }
    /// The route.
    pub fn build(self) -> HttpRoute {
        self.0
    }
}

/// A header modifier.
pub fn headers(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> HeaderModifier {
    let hv = |l: &[(&str, &str)]| {
        l.iter()
            .map(|(n, v)| sluice_ir::HeaderValue {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect()
    };
    HeaderModifier {
        set: hv(set),
        add: hv(add),
        remove: remove.iter().map(|s| s.to_string()).collect(),
    }
}
