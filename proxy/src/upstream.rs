//! Upstreams: clusters and their endpoints, weighted backend choice, endpoint load balancing
//! (P2C least-request, round robin, random), and per-worker connection pools (HTTP/1.1
//! keep-alive, HTTP/2 cleartext multiplexed). Pools live in a thread-local of each worker and are
//! keyed by endpoint address, so they survive configuration reloads untouched.

use crate::body::{OnDone, ProxyBody, ReqBody};
use crate::compile::CompileError;
use crate::error::{ErrorKind, HttpError, RetryType};
use crate::filters::Filters;
use crate::fxhash::FxHashMap;
use crate::h1client::{self, H1Conn};
use crate::upstream_tls::{UpStream, UpstreamTlsRt};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sluice_ir::{LoadBalancer, UpstreamProtocol};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// A fast per-thread pseudo-random number (xorshift64*), for load balancing and sampling.
pub(crate) fn rand_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let local = 0u8;
            (t ^ (&local as *const u8 as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// One endpoint; shared by every cluster and snapshot that lists its address.
#[derive(Debug)]
pub(crate) struct EndpointRt {
    pub(crate) addr: SocketAddr,
    /// Requests in flight (all workers), for least-request balancing.
    pub(crate) inflight: AtomicUsize,
}

/// A compiled [`sluice_ir::Cluster`].
#[derive(Debug)]
pub(crate) struct ClusterRt {
    pub(crate) name: Arc<str>,
    pub(crate) protocol: UpstreamProtocol,
    lb: LoadBalancer,
    endpoints: Box<[Arc<EndpointRt>]>,
    /// Ready, non-terminating endpoints (indices into `endpoints`).
    primary: Box<[u32]>,
    /// Serving but terminating endpoints: used only when `primary` is empty.
    fallback: Box<[u32]>,
    pub(crate) connect_timeout: Duration,
    pub(crate) pool: PoolSettings,
    rr: AtomicUsize,
    /// TLS to the endpoints (BackendTLSPolicy).
    pub(crate) tls: Option<Arc<UpstreamTlsRt>>,
    /// Identity of the TLS settings (0 = plain), part of the pool key; stable across reloads.
    pub(crate) tls_tag: u64,
}

/// Pool limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolSettings {
    pub(crate) idle_timeout: Duration,
    pub(crate) max_idle: usize,
}

impl ClusterRt {
    pub(crate) fn compile(
        c: &sluice_ir::Cluster,
        endpoints: &mut HashMap<SocketAddr, Arc<EndpointRt>>,
        previous: &HashMap<SocketAddr, Arc<EndpointRt>>,
        pool: PoolSettings,
    ) -> Result<ClusterRt, CompileError> {
        let mut eps = Vec::with_capacity(c.endpoints.len());
        let mut primary = Vec::new();
        let mut fallback = Vec::new();
        for e in &c.endpoints {
            let addr = SocketAddr::new(e.address, e.port);
            let ep = endpoints
                .entry(addr)
                .or_insert_with(|| {
                    previous.get(&addr).cloned().unwrap_or_else(|| {
                        Arc::new(EndpointRt {
                            addr,
                            inflight: AtomicUsize::new(0),
                        })
                    })
                })
                .clone();
            let idx = eps.len() as u32;
            if e.ready && !e.terminating {
                primary.push(idx);
            } else if e.serving && e.terminating {
                fallback.push(idx);
            }
            eps.push(ep);
        }
        let tls = match &c.tls {
            Some(t) => Some(Arc::new(crate::upstream_tls::compile(
                &format!("clusters[{}]", c.name),
                t,
                c.protocol,
            )?)),
            None => None,
        };
        Ok(ClusterRt {
            name: c.name.as_str().into(),
            protocol: c.protocol,
            lb: c.load_balancer,
            endpoints: eps.into(),
            primary: primary.into(),
            fallback: fallback.into(),
            connect_timeout: Duration::from_millis(c.connect_timeout_ms.unwrap_or(5000)),
            pool,
            rr: AtomicUsize::new(0),
            tls,
            tls_tag: c.tls.as_ref().map_or(0, |t| {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                serde_json::to_string(t).unwrap_or_default().hash(&mut h);
                (c.protocol as u8).hash(&mut h);
                h.finish() | 1
            }),
        })
    }

    /// Addresses of all endpoints (ready or not).
    pub(crate) fn endpoint_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.endpoints.iter().map(|e| e.addr)
    }

    /// Chooses an endpoint, avoiding `avoid` when another one is available.
    pub(crate) fn pick(&self, avoid: Option<SocketAddr>) -> Option<&Arc<EndpointRt>> {
        let set = if self.primary.is_empty() {
            &self.fallback
        } else {
            &self.primary
        };
        let n = set.len();
        let ep = |i: usize| &self.endpoints[set[i % n] as usize];
        match n {
            0 => None,
            1 => Some(ep(0)),
            _ => {
                let chosen = match self.lb {
                    LoadBalancer::RoundRobin => ep(self.rr.fetch_add(1, Ordering::Relaxed)),
                    LoadBalancer::Random => ep(rand_u64() as usize % n),
                    LoadBalancer::P2cLeastRequest => {
                        let r = rand_u64();
                        let a = (r as usize) % n;
                        let b = (a + 1 + ((r >> 32) as usize) % (n - 1)) % n;
                        let (ea, eb) = (ep(a), ep(b));
                        if eb.inflight.load(Ordering::Relaxed) < ea.inflight.load(Ordering::Relaxed)
                        {
                            eb
                        } else {
                            ea
                        }
                    }
                };
                match avoid {
                    Some(a) if chosen.addr == a => {
                        let i = set
                            .iter()
                            .position(|&i| self.endpoints[i as usize].addr == a);
                        Some(ep(i.map_or(0, |i| i + 1)))
                    }
                    _ => Some(chosen),
                }
            }
        }
    }
}

/// One weighted backend of a route.
#[derive(Debug)]
pub(crate) struct BackendRt {
    pub(crate) cluster: Option<Arc<ClusterRt>>,
    pub(crate) filters: Filters,
    /// Cluster name, or `<invalid>`, for metrics.
    pub(crate) name: Arc<str>,
}

/// A route's weighted backends.
pub(crate) type Backends = Weighted<BackendRt>;

/// Entries chosen by weight (HTTP backends, and TCP/UDP/TLS route backends in `l4`).
#[derive(Debug)]
pub(crate) struct Weighted<T> {
    list: Box<[T]>,
    /// Running sum of weights, one per entry.
    cumulative: Box<[u64]>,
    total: u64,
}

impl<T> Default for Weighted<T> {
    fn default() -> Self {
        Weighted {
            list: Box::default(),
            cumulative: Box::default(),
            total: 0,
        }
    }
}

impl<T> Weighted<T> {
    pub(crate) fn new(entries: Vec<(u32, T)>) -> Self {
        let mut total = 0u64;
        let mut cumulative = Vec::with_capacity(entries.len());
        let mut list = Vec::with_capacity(entries.len());
        for (w, b) in entries {
            total += u64::from(w);
            cumulative.push(total);
            list.push(b);
        }
        Weighted {
            list: list.into(),
            cumulative: cumulative.into(),
            total,
        }
    }

    /// An entry chosen by weight; `None` when there is none with weight > 0.
    pub(crate) fn choose(&self) -> Option<&T> {
        match self.total {
            0 => None,
            _ if self.list.len() == 1 => Some(&self.list[0]),
            total => {
                let r = rand_u64() % total;
                let i = self.cumulative.partition_point(|&c| c <= r);
                self.list.get(i)
            }
        }
    }

    /// Every entry, whatever its weight.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.list.iter()
    }
}

type H1 = http1::SendRequest<ReqBody>;
type H2 = http2::SendRequest<ReqBody>;

struct Idle {
    conn: H1Conn,
    /// When it stops being reusable, in coarse milliseconds of this worker's clock.
    expires_ms: u64,
}

/// Where a finished HTTP/1.1 exchange returns its connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolReturn {
    pub(crate) key: PoolKey,
    pub(crate) max_idle: usize,
    pub(crate) idle_timeout_ms: u64,
}

thread_local! {
    static COARSE: Cell<(u32, u64)> = const { Cell::new((0, 0)) };
    static EPOCH: Instant = Instant::now();
}

/// Reads the clock into the coarse clock.
fn refresh_coarse_ms() -> u64 {
    let now = EPOCH.with(|e| e.elapsed().as_millis() as u64);
    COARSE.with(|c| c.set((1, now)));
    now
}

/// A coarse per-worker clock in milliseconds: one `clock_gettime` per 64 reads, and at least
/// every sweep (a few seconds).
fn coarse_ms() -> u64 {
    COARSE.with(|c| {
        let (n, ms) = c.get();
        if n % 64 == 0 {
            let now = EPOCH.with(|e| e.elapsed().as_millis() as u64);
            c.set((n.wrapping_add(1), now));
            now
        } else {
            c.set((n.wrapping_add(1), ms));
            ms
        }
    })
}

/// Pools are per endpoint address and TLS identity: connections opened with one cluster's TLS
/// settings are never handed to another cluster with different ones.
pub(crate) type PoolKey = (SocketAddr, u64);

#[derive(Default)]
struct Pool {
    h1: FxHashMap<PoolKey, Vec<Idle>>,
    h2: FxHashMap<PoolKey, H2>,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

fn checkout_h1(key: PoolKey) -> Option<H1Conn> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let list = p.h1.get_mut(&key)?;
        let now = coarse_ms();
        while let Some(idle) = list.pop() {
            if now < idle.expires_ms && idle.conn.is_reusable() {
                return Some(idle.conn);
            }
        }
        None
    })
}

/// Returns an idle HTTP/1.1 connection to this worker's pool.
pub(crate) fn checkin_h1(to: PoolReturn, conn: H1Conn) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let list = p.h1.entry(to.key).or_default();
        if list.len() < to.max_idle {
            list.push(Idle {
                conn,
                expires_ms: coarse_ms() + to.idle_timeout_ms,
            });
        }
    });
}

/// Closes this worker's expired or dead idle connections and forgets empty pools (endpoints
/// that are gone). Runs every few seconds on each worker; also refreshes the coarse clock.
pub(crate) fn sweep_pools() {
    let now = refresh_coarse_ms();
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        p.h1.retain(|_, list| {
            list.retain(|i| now < i.expires_ms && i.conn.is_reusable());
            !list.is_empty()
        });
        p.h2.retain(|_, tx| !tx.is_closed());
    });
}

/// Releases the endpoint's request count when the response is finished.
pub(crate) struct Done {
    ep: Arc<EndpointRt>,
}

impl OnDone for Done {
    fn done(self: Box<Self>, _complete: bool) {}
}

impl Drop for Done {
    fn drop(&mut self) {
        self.ep.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// TCP connect, then the TLS handshake when the cluster has TLS, within the connect timeout.
pub(crate) async fn connect_tcp(
    cluster: &ClusterRt,
    addr: SocketAddr,
) -> Result<UpStream, HttpError> {
    let fut = async {
        let s = TcpStream::connect(addr).await?;
        let _ = s.set_nodelay(true);
        match &cluster.tls {
            None => Ok(UpStream::Plain(s)),
            Some(t) => t
                .connector
                .connect(t.server_name.clone(), s)
                .await
                .map(|s| UpStream::Tls(Box::new(s))),
        }
    };
    match tokio::time::timeout(cluster.connect_timeout, fut).await {
        Err(_) => Err(HttpError::new(ErrorKind::ConnectTimeout)
            .retry(RetryType::Safe)
            .because(format!("connect to {addr} timed out"))),
        Ok(Err(e)) => Err(HttpError::new(ErrorKind::ConnectFailed)
            .retry(RetryType::Safe)
            .because(format!("connect to {addr}: {e}"))),
        Ok(Ok(s)) => Ok(s),
    }
}

async fn connect_upgrade(cluster: &ClusterRt, addr: SocketAddr) -> Result<H1, HttpError> {
    let stream = connect_tcp(cluster, addr).await?;
    let (tx, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| {
            HttpError::new(ErrorKind::UpstreamProtocol)
                .retry(RetryType::Safe)
                .because(e)
        })?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(tx)
}

async fn connect_h2(cluster: &ClusterRt, addr: SocketAddr) -> Result<H2, HttpError> {
    let stream = connect_tcp(cluster, addr).await?;
    let (tx, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| {
            HttpError::new(ErrorKind::UpstreamProtocol)
                .retry(RetryType::Safe)
                .because(e)
        })?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(tx)
}

fn protocol_error(e: hyper::Error) -> HttpError {
    let retry = if e.is_canceled() {
        RetryType::Safe
    } else {
        RetryType::Policy
    };
    HttpError::new(ErrorKind::UpstreamProtocol)
        .retry(retry)
        .because(e)
}

/// An upstream response; its body releases the connection and the endpoint's request count.
pub(crate) struct Sent {
    pub(crate) response: Response<ProxyBody>,
}

fn hyper_response(r: Response<Incoming>, done: Done) -> Sent {
    Sent {
        response: r.map(|b| ProxyBody::upstream(b, Some(Box::new(done)))),
    }
}

/// Sends one attempt to `ep`. On failure the request comes back when it was not consumed.
/// `upgrade`: a dedicated HTTP/1.1 connection that carries a protocol upgrade.
pub(crate) async fn send(
    cluster: &ClusterRt,
    ep: &Arc<EndpointRt>,
    req: Request<ReqBody>,
    upgrade: bool,
) -> Result<Sent, (HttpError, Option<Request<ReqBody>>)> {
    ep.inflight.fetch_add(1, Ordering::Relaxed);
    let done = Done { ep: ep.clone() };
    let addr = ep.addr;
    match cluster.protocol {
        UpstreamProtocol::H2c | UpstreamProtocol::H2 => {
            // Boxed: hyper's futures are large and this path is not the common one; the
            // request future stays small (it is moved into hyper's dispatcher per request).
            Box::pin(send_h2(cluster, addr, req, done)).await
        }
        _ if upgrade => Box::pin(send_upgrade(cluster, addr, req, done)).await,
        _ => send_h1(cluster, ep, req, done).await,
    }
}

async fn send_h2(
    cluster: &ClusterRt,
    addr: SocketAddr,
    mut req: Request<ReqBody>,
    done: Done,
) -> Result<Sent, (HttpError, Option<Request<ReqBody>>)> {
    let key = (addr, cluster.tls_tag);
    {
        {
            for attempt in 0..2 {
                let existing = POOL.with(|p| {
                    let p = p.borrow();
                    p.h2.get(&key).filter(|tx| !tx.is_closed()).cloned()
                });
                let mut tx = match existing {
                    Some(tx) => tx,
                    None => match connect_h2(cluster, addr).await {
                        Ok(tx) => {
                            POOL.with(|p| p.borrow_mut().h2.insert(key, tx.clone()));
                            tx
                        }
                        Err(e) => return Err((e, Some(req))),
                    },
                };
                if tx.ready().await.is_err() {
                    POOL.with(|p| p.borrow_mut().h2.remove(&key));
                    continue;
                }
                match tx.try_send_request(req).await {
                    Ok(response) => return Ok(hyper_response(response, done)),
                    Err(mut e) => match e.take_message() {
                        Some(r) if attempt == 0 => {
                            POOL.with(|p| p.borrow_mut().h2.remove(&key));
                            req = r;
                        }
                        msg => return Err((protocol_error(e.into_error()), msg)),
                    },
                }
            }
            Err((
                HttpError::new(ErrorKind::UpstreamProtocol)
                    .retry(RetryType::Safe)
                    .because(format!("HTTP/2 connection to {addr} not usable")),
                Some(req),
            ))
        }
    }
}

async fn send_upgrade(
    cluster: &ClusterRt,
    addr: SocketAddr,
    req: Request<ReqBody>,
    done: Done,
) -> Result<Sent, (HttpError, Option<Request<ReqBody>>)> {
    {
        {
            let mut tx = match connect_upgrade(cluster, addr).await {
                Ok(tx) => tx,
                Err(e) => return Err((e, Some(req))),
            };
            if let Err(e) = tx.ready().await {
                return Err((protocol_error(e), Some(req)));
            }
            match tx.try_send_request(req).await {
                Ok(response) => Ok(hyper_response(response, done)),
                Err(mut e) => {
                    let msg = e.take_message();
                    Err((protocol_error(e.into_error()), msg))
                }
            }
        }
    }
}

async fn send_h1(
    cluster: &ClusterRt,
    ep: &Arc<EndpointRt>,
    req: Request<ReqBody>,
    done: Done,
) -> Result<Sent, (HttpError, Option<Request<ReqBody>>)> {
    let addr = ep.addr;
    {
        {
            let key = (addr, cluster.tls_tag);
            let pooled = checkout_h1(key);
            let mut conn = match pooled {
                Some(c) => c,
                None => match Box::pin(connect_tcp(cluster, addr)).await {
                    Ok(s) => H1Conn::new(s),
                    Err(e) => return Err((e, Some(req))),
                },
            };
            let (head, body) = req.into_parts();
            let head_only = head.method == http::Method::HEAD;
            let mut wire = std::mem::take(&mut conn.wbuf);
            wire.clear();
            wire.reserve(256 + head.headers.len() * 32);
            let chunked = h1client::encode_head(&head, &body, &mut wire);
            // A buffered body goes out with the head; the request stays replayable.
            let body = match body {
                ReqBody::Full(Some(b)) => {
                    wire.extend_from_slice(&b);
                    ReqBody::Empty
                }
                b => b,
            };
            let replayable = matches!(body, ReqBody::Empty | ReqBody::Full(None));
            let pool = PoolReturn {
                key,
                max_idle: cluster.pool.max_idle,
                idle_timeout_ms: cluster.pool.idle_timeout.as_millis() as u64,
            };
            match h1client::send(conn, wire, body, chunked, head_only, done, pool).await {
                Ok(r) => Ok(Sent {
                    response: r.map(ProxyBody::H1),
                }),
                Err(h1client::SendError::Stale(_, wire)) if replayable => {
                    // The pooled connection was closed under us before any response byte
                    // arrived: send the same bytes on a fresh connection.
                    let stream = Box::pin(connect_tcp(cluster, addr))
                        .await
                        .map_err(|e| (e, None))?;
                    ep.inflight.fetch_add(1, Ordering::Relaxed);
                    let done = Done { ep: ep.clone() };
                    // Boxed: rare, and keeps a second exchange out of the request's future.
                    match Box::pin(h1client::send(
                        H1Conn::new(stream),
                        wire,
                        ReqBody::Empty,
                        false,
                        head_only,
                        done,
                        pool,
                    ))
                    .await
                    {
                        Ok(r) => Ok(Sent {
                            response: r.map(ProxyBody::H1),
                        }),
                        Err(h1client::SendError::Stale(e, _) | h1client::SendError::Failed(e)) => {
                            Err((e, None))
                        }
                    }
                }
                Err(h1client::SendError::Stale(e, _) | h1client::SendError::Failed(e)) => {
                    Err((e, None))
                }
            }
        }
    }
}
