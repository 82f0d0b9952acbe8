//! Snapshot -> runtime compilation, off the hot path: clusters (reusing endpoint state of the
//! previous runtime), per-listener routers and TLS configurations. Any failure rejects the
//! whole snapshot.

use crate::filters::Filters;
use crate::l4::{L4Backend, L4Backends, L4Route};
use crate::router::{Route, Router, compile_conditions, route_prefix};
use crate::sni::{SniRoute, SniRouter};
use crate::tls::ListenerTls;
use crate::upstream::{BackendRt, Backends, ClusterRt, EndpointRt, PoolSettings};
use http::HeaderValue;
use sluice_ir::{
    FieldPath, HttpRoute, Listener, ListenerProtocol, Snapshot, TlsMode, ValidationError,
    WeightedBackend,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// A snapshot that passed validation but cannot be compiled (bad certificate, regex, header).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct CompileError {
    /// Path of the offending field, as in [`ValidationError::path`].
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl CompileError {
    pub(crate) fn new(path: impl ToString, message: impl Into<String>) -> Self {
        CompileError {
            path: path.to_string(),
            message: message.into(),
        }
    }
}

impl From<CompileError> for ValidationError {
    fn from(e: CompileError) -> Self {
        ValidationError {
            path: e.path,
            message: e.message,
        }
    }
}

/// What one listener serves, compiled. Swapped whole on reload.
#[derive(Debug)]
pub(crate) struct ListenerRuntime {
    pub(crate) name: Arc<str>,
    pub(crate) port: u16,
    pub(crate) protocol: ListenerProtocol,
    pub(crate) router: Router,
    /// TLS termination (HTTPS, TLS listeners with Terminate routes).
    pub(crate) tls: Option<ListenerTls>,
    /// SNI-routed TLS streams: every TLS route on TLS listeners, passthrough ones on HTTPS.
    pub(crate) sni: SniRouter,
    /// The TCP or UDP route (TCP and UDP listeners).
    pub(crate) l4: Option<L4Route>,
    /// `Alt-Svc` advertised on HTTP/1.1 and HTTP/2 responses when HTTP/3 is served.
    pub(crate) alt_svc: Option<HeaderValue>,
    /// Serve HTTP/3 on the same port over UDP.
    pub(crate) http3: bool,
    /// The listener's TLS settings could not be compiled (bad certificate or key); the rest
    /// of the snapshot is not affected.
    pub(crate) tls_error: Option<CompileError>,
}

/// A compiled snapshot.
#[derive(Debug, Default)]
pub(crate) struct Compiled {
    pub(crate) listeners: HashMap<String, Arc<ListenerRuntime>>,
    pub(crate) endpoints: HashMap<SocketAddr, Arc<EndpointRt>>,
}

fn compile_route(
    path: &FieldPath<'_>,
    r: &HttpRoute,
    clusters: &HashMap<String, Arc<ClusterRt>>,
) -> Result<Route, CompileError> {
    let (method, headers, query) = compile_conditions(path, &r.matcher)?;
    let filters = Filters::compile(&r.filters, path, clusters)?;
    let mut backends = Vec::with_capacity(r.backends.len());
    for (i, b) in r.backends.iter().enumerate() {
        let bpath = FieldPath::Index(path, "backends", i);
        let cluster = backend_cluster(&bpath, b, clusters)?;
        let name: Arc<str> = match &cluster {
            Some(c) => c.name.clone(),
            None => "<invalid>".into(),
        };
        backends.push((
            b.weight,
            BackendRt {
                cluster,
                filters: Filters::compile(&b.filters, &bpath, clusters)?,
                name,
            },
        ));
    }
    Ok(Route {
        id: r.id.clone(),
        name: r.id.to_string().into(),
        path: r.matcher.path.clone(),
        prefix: route_prefix(&r.matcher.path),
        method,
        headers,
        query,
        filters,
        backends: Backends::new(backends),
        timeouts: r.timeouts,
        retry: r.retry.clone(),
        grpc: r.grpc,
    })
}

/// The cluster a backend sends to (`None` for an unresolved backend, which answers an
/// error), or an error when the snapshot has no such cluster.
fn backend_cluster(
    path: &FieldPath<'_>,
    b: &WeightedBackend,
    clusters: &HashMap<String, Arc<ClusterRt>>,
) -> Result<Option<Arc<ClusterRt>>, CompileError> {
    b.cluster
        .as_ref()
        .map(|c| {
            clusters
                .get(c)
                .cloned()
                .ok_or_else(|| CompileError::new(path, format!("unknown cluster {c:?}")))
        })
        .transpose()
}

fn l4_backends(
    path: &FieldPath<'_>,
    list: &[WeightedBackend],
    clusters: &HashMap<String, Arc<ClusterRt>>,
) -> Result<L4Backends, CompileError> {
    let mut out = Vec::with_capacity(list.len());
    for (i, b) in list.iter().enumerate() {
        let cluster = backend_cluster(&FieldPath::Index(path, "backends", i), b, clusters)?;
        out.push((b.weight, L4Backend { cluster }));
    }
    Ok(L4Backends::new(out))
}

/// Default UDP flow idle timeout.
const UDP_IDLE_DEFAULT_MS: u64 = 60_000;

pub(crate) fn compile_listener(
    l: &Listener,
    clusters: &HashMap<String, Arc<ClusterRt>>,
) -> Result<ListenerRuntime, CompileError> {
    let path = format!("listeners[{}]", l.name);
    let at = FieldPath::Root(&path);
    let router = Router::compile(&at, &l.virtual_hosts, |p, r| compile_route(p, r, clusters))?;
    let mut sni = SniRouter::default();
    if matches!(l.protocol, ListenerProtocol::Https | ListenerProtocol::Tls) {
        for (i, r) in l.tls_routes.iter().enumerate() {
            // HTTPS listeners terminate everything that is not passed through.
            if l.protocol == ListenerProtocol::Https && r.mode != TlsMode::Passthrough {
                continue;
            }
            let route = SniRoute {
                name: r.id.to_string().into(),
                mode: r.mode,
                backends: l4_backends(
                    &FieldPath::Index(&at, "tlsRoutes", i),
                    &r.backends,
                    clusters,
                )?,
            };
            sni.add(&r.hostnames, Arc::new(route));
        }
        sni.finish();
    }
    let l4 = match (l.protocol, l.l4_routes.first()) {
        (ListenerProtocol::Tcp | ListenerProtocol::Udp, Some(r)) => {
            let backends =
                l4_backends(&FieldPath::Index(&at, "l4Routes", 0), &r.backends, clusters)?;
            Some(L4Route {
                name: r.id.to_string().into(),
                endpoints: backends.endpoint_addrs(),
                backends,
                idle_timeout: std::time::Duration::from_millis(
                    r.idle_timeout_ms.unwrap_or(UDP_IDLE_DEFAULT_MS).max(1),
                ),
            })
        }
        _ => None,
    };
    let http3 = l.http3 && l.protocol == ListenerProtocol::Https;
    let (tls, tls_error) = match (&l.protocol, &l.tls) {
        (ListenerProtocol::Https, Some(t)) if !t.certificates.is_empty() => {
            match crate::tls::server_config(&path, t, &[b"h2", b"http/1.1"], http3) {
                Ok(c) => (Some(c), None),
                Err(e) => (None, Some(e)),
            }
        }
        (ListenerProtocol::Tls, Some(t)) if !t.certificates.is_empty() => {
            match crate::tls::server_config(&path, t, &[], false) {
                Ok(c) => (Some(c), None),
                Err(e) => (None, Some(e)),
            }
        }
        _ => (None, None),
    };
    let alt_svc = if http3 && tls.is_some() {
        HeaderValue::from_str(&format!("h3=\":{}\"; ma=86400", l.port)).ok()
    } else {
        None
    };
    Ok(ListenerRuntime {
        name: l.name.as_str().into(),
        port: l.port,
        protocol: l.protocol,
        router,
        tls,
        sni,
        l4,
        alt_svc,
        http3,
        tls_error,
    })
}

/// Compiles a validated snapshot. `previous` endpoint states are reused so that request
/// counts carry over.
pub(crate) fn compile(
    s: &Snapshot,
    previous: &HashMap<SocketAddr, Arc<EndpointRt>>,
    pool: PoolSettings,
) -> Result<Compiled, CompileError> {
    let mut endpoints = HashMap::new();
    let mut clusters: HashMap<String, Arc<ClusterRt>> = HashMap::new();
    for c in &s.clusters {
        clusters.insert(
            c.name.clone(),
            Arc::new(ClusterRt::compile(c, &mut endpoints, previous, pool)?),
        );
    }
    let mut listeners = HashMap::new();
    for l in &s.listeners {
        listeners.insert(l.name.clone(), Arc::new(compile_listener(l, &clusters)?));
    }
    Ok(Compiled {
        listeners,
        endpoints,
    })
}

impl Router {
    /// Compiles the router of one listener of a snapshot (for benchmarks and tools; the proxy
    /// compiles whole snapshots in [`crate::Proxy::apply`]).
    pub fn from_snapshot(s: &Snapshot, listener: &str) -> Result<Router, CompileError> {
        let l = s
            .listener(listener)
            .ok_or_else(|| CompileError::new("listeners", format!("no listener {listener:?}")))?;
        let pool = PoolSettings {
            idle_timeout: std::time::Duration::from_secs(60),
            max_idle: 0,
        };
        let c = compile(
            &Snapshot {
                listeners: vec![l.clone()],
                ..s.clone()
            },
            &HashMap::new(),
            pool,
        )?;
        let rt = c.listeners.into_values().next().expect("one listener");
        Arc::try_unwrap(rt)
            .map(|r| r.router)
            .map_err(|_| CompileError::new("listeners", "router still shared"))
    }
}
