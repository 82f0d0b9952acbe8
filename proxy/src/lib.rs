//! Sluice's L7 data plane: listeners (HTTP/1.1, HTTP/2 cleartext and HTTPS), Gateway API
//! routing and filters run as named phases, upstream pools and load balancing, hot reload of
//! IR snapshots, and the admin API.
//!
//! ```no_run
//! # async fn run(snapshot: sluice_ir::Snapshot) -> Result<(), Box<dyn std::error::Error>> {
//! let proxy = sluice_proxy::Proxy::start(sluice_proxy::ProxyOptions::default())?;
//! let report = proxy.apply(snapshot).await;
//! assert!(report.applied, "{:?}", report.validation_errors);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod admin;
mod body;
mod compile;
pub mod error;
mod filters;
mod fxhash;
mod h1client;
mod http3;
mod l4;
pub mod metrics;
mod park;
mod phases;
pub mod router;
mod server;
mod sni;
#[cfg(feature = "test-util")]
pub mod test_util;
mod tls;
mod upstream;
mod upstream_tls;

pub use body::{ProxyBody, UpstreamBody};
pub use compile::CompileError;
pub use error::{ErrorKind, ErrorSource, HttpError, ProxyError, RetryType};
pub use filters::modify_path;
pub use h1client::H1Body;

use crate::compile::compile;
use crate::http3::QuicShared;
use crate::metrics::Metrics;
use crate::server::{Command, ConnSettings, ListenerShared};
use crate::upstream::{EndpointRt, PoolSettings};
use arc_swap::ArcSwap;
use sluice_ir::{Listener, ListenerProtocol, Snapshot, Transport, ValidationError};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Settings of the data plane.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Proxy worker threads, each with its own runtime and its own socket per listener
    /// (default: one per core).
    pub workers: usize,
    /// Time a client may take to send a request head on HTTP/1.1, counted from the start of the
    /// connection or from the end of the previous response, so it also closes connections that
    /// send nothing and keep-alive connections left idle (default 30 s; `None` = none).
    pub header_read_timeout: Option<Duration>,
    /// Time a TLS handshake may take (default 10 s).
    pub tls_handshake_timeout: Duration,
    /// Idle upstream HTTP/1.1 connections older than this are not reused (default 60 s).
    pub upstream_idle_timeout: Duration,
    /// Idle upstream HTTP/1.1 connections kept per endpoint and worker (default 256).
    pub max_idle_per_endpoint: usize,
    /// How often each worker closes expired or dead idle upstream connections and forgets the
    /// pools of endpoints that are gone (default 5 s).
    pub pool_sweep_interval: Duration,
    /// UDP flows (client addresses) tracked per UDP listener and worker; a new flow beyond
    /// this replaces the one idle the longest (default 16384).
    pub udp_max_flows: usize,
    /// Called on a worker thread, at most four times a second, after idle connections were parked
    /// there: for the allocator to return the memory their buffers used (a burst of new
    /// connections leaves it free but resident otherwise). `None` (default): nothing is called.
    pub release_memory: Option<fn()>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            header_read_timeout: Some(Duration::from_secs(30)),
            tls_handshake_timeout: Duration::from_secs(10),
            upstream_idle_timeout: Duration::from_secs(60),
            max_idle_per_endpoint: 256,
            pool_sweep_interval: Duration::from_secs(5),
            udp_max_flows: 16_384,
            release_memory: None,
        }
    }
}

/// The outcome of [`Proxy::apply`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// The snapshot is now serving (possibly without the listeners in `listener_errors`).
    pub applied: bool,
    /// Why the snapshot was rejected (validation or compilation); the previous one keeps serving.
    pub validation_errors: Vec<ValidationError>,
    /// Listeners that could not be served (e.g. port taken), by [`sluice_ir::Listener::name`].
    /// They are retried on the next apply.
    pub listener_errors: BTreeMap<String, String>,
}

struct Control {
    listeners: HashMap<String, Arc<ListenerShared>>,
    /// HTTP/3 endpoints, by the name of the HTTPS listener they belong to.
    quic: HashMap<String, Arc<QuicShared>>,
    /// Listeners stopped but possibly still draining connections.
    draining: Vec<Arc<ListenerShared>>,
    endpoints: HashMap<SocketAddr, Arc<EndpointRt>>,
}

struct Inner {
    opts: ProxyOptions,
    workers: std::sync::Mutex<Vec<mpsc::UnboundedSender<Command>>>,
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
    control: tokio::sync::Mutex<Control>,
    current: ArcSwap<Snapshot>,
    ready: AtomicBool,
    metrics: Arc<Metrics>,
}

/// The L7 proxy. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("workers", &self.inner.opts.workers)
            .field("version", &self.inner.current.load().version)
            .finish()
    }
}

impl Proxy {
    /// Spawns the worker threads; nothing is served until [`Proxy::apply`].
    pub fn start(opts: ProxyOptions) -> Result<Proxy, ProxyError> {
        if opts.workers == 0 {
            return Err(ProxyError::Options("workers must be at least 1".into()));
        }
        let mut senders = Vec::with_capacity(opts.workers);
        let mut threads = Vec::with_capacity(opts.workers);
        for i in 0..opts.workers {
            let (tx, handle) = server::spawn_worker(i, opts.pool_sweep_interval)
                .map_err(|source| ProxyError::Worker { worker: i, source })?;
            senders.push(tx);
            threads.push(handle);
        }
        Ok(Proxy {
            inner: Arc::new(Inner {
                opts,
                workers: std::sync::Mutex::new(senders),
                threads: std::sync::Mutex::new(threads),
                control: tokio::sync::Mutex::new(Control {
                    listeners: HashMap::new(),
                    quic: HashMap::new(),
                    draining: Vec::new(),
                    endpoints: HashMap::new(),
                }),
                current: ArcSwap::from_pointee(Snapshot::default()),
                ready: AtomicBool::new(false),
                metrics: Arc::new(Metrics::new()),
            }),
        })
    }

    /// Validates and compiles `snapshot`, binds added listeners, keeps unchanged ones (with
    /// their sockets and connections), drains removed ones, and swaps the routing of every
    /// listener. An invalid snapshot is rejected whole and the previous one keeps serving.
    pub async fn apply(&self, snapshot: Snapshot) -> ApplyReport {
        let mut ctl = self.inner.control.lock().await;
        let mut report = ApplyReport::default();
        if let Err(errors) = snapshot.validate() {
            tracing::warn!(version = snapshot.version, errors = errors.len(), first = %errors[0], "snapshot rejected");
            report.validation_errors = errors;
            return report;
        }
        let pool = PoolSettings {
            idle_timeout: self.inner.opts.upstream_idle_timeout,
            max_idle: self.inner.opts.max_idle_per_endpoint,
        };
        let mut compiled = match compile(&snapshot, &ctl.endpoints, pool) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(version = snapshot.version, error = %e, "snapshot rejected");
                report.validation_errors = vec![e.into()];
                return report;
            }
        };
        let settings = ConnSettings {
            header_read_timeout: self.inner.opts.header_read_timeout,
            tls_handshake_timeout: self.inner.opts.tls_handshake_timeout,
            udp_max_flows: self.inner.opts.udp_max_flows.max(1),
            release_memory: self.inner.opts.release_memory,
        };

        // Each listener's runtime. A listener whose certificates do not compile keeps its
        // previous ones (or, new, serves only what needs none); no other listener is affected.
        let mut runtimes: HashMap<&str, Arc<compile::ListenerRuntime>> = HashMap::new();
        for l in &snapshot.listeners {
            let mut rt = compiled
                .listeners
                .remove(&l.name)
                .expect("every listener is compiled");
            if let Some(e) = rt.tls_error.clone() {
                let previous = ctl
                    .listeners
                    .get(&l.name)
                    .and_then(|live| live.slot.load().tls.clone());
                let r = Arc::get_mut(&mut rt).expect("fresh runtime");
                let why = match previous {
                    Some(tls) => {
                        if r.http3 && tls.quic.is_some() {
                            r.alt_svc = http::HeaderValue::from_str(&format!(
                                "h3=\":{}\"; ma=86400",
                                l.port
                            ))
                            .ok();
                        }
                        r.tls = Some(tls);
                        format!("{e}; the previous certificates keep serving")
                    }
                    None => format!("{e}; the listener serves no TLS termination"),
                };
                tracing::warn!(listener = %l.name, error = %why, "listener certificates rejected");
                report.listener_errors.insert(l.name.clone(), why);
            }
            runtimes.insert(l.name.as_str(), rt);
        }
        // HTTPS needs certificates or passthrough routes to be served at all.
        let keep: HashMap<&str, bool> = snapshot
            .listeners
            .iter()
            .map(|l| {
                let rt = &runtimes[l.name.as_str()];
                let ok =
                    l.protocol != ListenerProtocol::Https || rt.tls.is_some() || !rt.sni.is_empty();
                (l.name.as_str(), ok)
            })
            .collect();

        // Remove listeners that are gone (or no longer servable).
        let removed: Vec<String> = ctl
            .listeners
            .keys()
            .filter(|n| !keep.get(n.as_str()).copied().unwrap_or(false))
            .cloned()
            .collect();
        for name in removed {
            if let Some(l) = ctl.listeners.remove(&name) {
                tracing::info!(listener = %name, "listener removed; draining");
                l.stop_serving();
                ctl.draining.push(l);
            }
        }
        // HTTP/3 endpoints whose listener is gone or no longer offers HTTP/3.
        let quic_gone: Vec<String> = ctl
            .quic
            .keys()
            .filter(|n| {
                !ctl.listeners.contains_key(n.as_str())
                    || runtimes
                        .get(n.as_str())
                        .is_none_or(|rt| rt.tls.as_ref().is_none_or(|t| t.quic.is_none()))
            })
            .cloned()
            .collect();
        for name in quic_gone {
            if let Some(q) = ctl.quic.remove(&name) {
                tracing::info!(listener = %name, "HTTP/3 stopped");
                q.stop();
            }
        }
        ctl.draining
            .retain(|l| l.connections.load(Ordering::Acquire) > 0);

        let workers = self.inner.workers.lock().expect("workers lock").clone();
        for l in &snapshot.listeners {
            let mut rt = runtimes.remove(l.name.as_str()).expect("runtime");
            if !keep[l.name.as_str()] {
                report
                    .listener_errors
                    .entry(l.name.clone())
                    .or_insert_with(|| {
                        "HTTPS listener without usable certificates or TLS passthrough routes"
                            .into()
                    });
                continue;
            }
            let addr = SocketAddr::new(l.address, l.port);
            if workers.is_empty() {
                report
                    .listener_errors
                    .insert(l.name.clone(), "the proxy is shut down".into());
                continue;
            }
            // HTTP/3: a UDP endpoint next to the TCP socket, unless it is already running.
            let wants_quic = rt.tls.as_ref().is_some_and(|t| t.quic.is_some());
            let mut quic_sockets = None;
            if wants_quic && !ctl.quic.contains_key(&l.name) {
                let twin = Listener::key(Transport::Udp, l.address, l.port);
                let bound = if snapshot.listener(&twin).is_some() {
                    Err(format!(
                        "HTTP/3 not served: UDP listener {twin} uses the same port"
                    ))
                } else {
                    server::bind_udp(addr, workers.len())
                        .map_err(|e| format!("HTTP/3 not served: cannot bind UDP {addr}: {e}"))
                };
                match bound {
                    Ok(socks) => quic_sockets = Some(socks),
                    Err(why) => {
                        tracing::warn!(listener = %l.name, error = %why, "HTTP/3 unavailable");
                        if let Some(r) = Arc::get_mut(&mut rt) {
                            r.alt_svc = None;
                        }
                        report.listener_errors.entry(l.name.clone()).or_insert(why);
                    }
                }
            }
            let shared = if let Some(live) = ctl.listeners.get(&l.name) {
                live.slot.store(rt);
                live.clone()
            } else {
                let bound = if l.protocol == ListenerProtocol::Udp {
                    server::bind_udp(addr, workers.len()).map(|socks| {
                        let shared = ListenerShared::new(rt, self.inner.metrics.clone(), settings);
                        for (w, s) in workers.iter().zip(socks) {
                            let _ = w.send(Command::ServeUdp(shared.clone(), s));
                        }
                        shared
                    })
                } else {
                    server::bind(addr, workers.len()).map(|socks| {
                        let shared = ListenerShared::new(rt, self.inner.metrics.clone(), settings);
                        for (w, s) in workers.iter().zip(socks) {
                            let _ = w.send(Command::Serve(shared.clone(), s));
                        }
                        shared
                    })
                };
                match bound {
                    Ok(shared) => {
                        tracing::info!(listener = %l.name, %addr, "listener bound");
                        ctl.listeners.insert(l.name.clone(), shared.clone());
                        shared
                    }
                    Err(e) => {
                        tracing::warn!(listener = %l.name, %addr, error = %e, "cannot bind listener");
                        report
                            .listener_errors
                            .insert(l.name.clone(), format!("cannot bind {addr}: {e}"));
                        continue;
                    }
                }
            };
            if let Some(q) = ctl.quic.get(&l.name) {
                q.refresh();
            } else if let Some(socks) = quic_sockets {
                let q = QuicShared::new(shared);
                for (w, s) in workers.iter().zip(socks) {
                    let _ = w.send(Command::ServeQuic(q.clone(), s));
                }
                tracing::info!(listener = %l.name, %addr, "HTTP/3 bound");
                ctl.quic.insert(l.name.clone(), q);
            }
        }
        ctl.endpoints = compiled.endpoints;
        tracing::info!(
            version = snapshot.version,
            listeners = snapshot.listeners.len(),
            clusters = snapshot.clusters.len(),
            "snapshot applied"
        );
        self.inner.current.store(Arc::new(snapshot));
        self.inner.ready.store(true, Ordering::Release);
        report.applied = true;
        report
    }

    /// The snapshot that is serving (empty before the first successful apply).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.current.load_full()
    }

    /// True once a snapshot has been applied.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// The data plane's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.inner.metrics.clone()
    }

    /// Names of the listeners being served, sorted (for tools and tests).
    pub async fn listeners(&self) -> Vec<String> {
        let ctl = self.inner.control.lock().await;
        let mut v: Vec<String> = ctl.listeners.keys().cloned().collect();
        v.sort();
        v
    }

    /// Stops accepting, lets in-flight requests finish for up to `grace`, then stops the
    /// workers (remaining connections are closed).
    pub async fn shutdown(&self, grace: Duration) {
        let mut guard = self.inner.control.lock().await;
        let ctl = &mut *guard;
        for (_, q) in ctl.quic.drain() {
            q.stop();
        }
        let all: Vec<Arc<ListenerShared>> = ctl
            .listeners
            .drain()
            .map(|(_, l)| l)
            .chain(ctl.draining.drain(..))
            .collect();
        for l in &all {
            l.stop_serving();
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline
            && all
                .iter()
                .any(|l| l.connections.load(Ordering::Acquire) > 0)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.inner.workers.lock().expect("workers lock").clear();
        let threads: Vec<_> = self
            .inner
            .threads
            .lock()
            .expect("threads lock")
            .drain(..)
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        self.inner.ready.store(false, Ordering::Release);
    }
}
