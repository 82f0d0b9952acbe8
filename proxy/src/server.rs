//! Workers and listeners. Each worker is a thread with a current-thread tokio runtime; every
//! listener is bound once per worker with `SO_REUSEPORT`, so the kernel spreads connections and
//! a connection lives on one thread from accept to close (no cross-thread wakeups, per-worker
//! upstream pools). Connections are dispatched by the listener's protocol: cleartext HTTP
//! (HTTP/1.1, or HTTP/2 when the client sends the prior-knowledge preface) and HTTPS (rustls,
//! ALPN). TLS passthrough, TCP and UDP slot in as further arms of [`serve_conn`].

use crate::compile::ListenerRuntime;
use crate::metrics::Metrics;
use crate::phases::{ConnCtx, handle};
use arc_swap::ArcSwap;
use http::HeaderValue;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use sluice_ir::{ListenerProtocol, TlsMode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

/// Connection-level settings from [`crate::ProxyOptions`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnSettings {
    pub(crate) header_read_timeout: Option<Duration>,
    pub(crate) tls_handshake_timeout: Duration,
    /// UDP flows kept per listener and worker.
    pub(crate) udp_max_flows: usize,
    /// See [`crate::ProxyOptions::release_memory`].
    pub(crate) release_memory: Option<fn()>,
}

/// A live listener, shared by its accept loops (one per worker) and its connections.
#[derive(Debug)]
pub(crate) struct ListenerShared {
    pub(crate) name: Arc<str>,
    /// What the listener serves now; swapped on reload, loaded once per connection/request.
    pub(crate) slot: ArcSwap<ListenerRuntime>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) latency: Histogram,
    pub(crate) active: Gauge,
    /// Idle connections parked (see [`crate::park`]).
    pub(crate) parked: Gauge,
    /// Open connections (all workers).
    pub(crate) connections: AtomicUsize,
    /// `true`: stop accepting and drain connections.
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) settings: ConnSettings,
}

impl ListenerShared {
    pub(crate) fn new(
        rt: Arc<ListenerRuntime>,
        metrics: Arc<Metrics>,
        settings: ConnSettings,
    ) -> Arc<Self> {
        let name = rt.name.clone();
        Arc::new(ListenerShared {
            latency: metrics.latency(&name),
            active: metrics.active(&name),
            parked: metrics.parked(&name),
            name,
            slot: ArcSwap::new(rt),
            metrics,
            connections: AtomicUsize::new(0),
            stop: watch::channel(false).0,
            settings,
        })
    }

    /// Stops accepting; connections finish their requests and close (parked ones at once).
    pub(crate) fn stop_serving(&self) {
        self.stop.send_replace(true);
        crate::park::listener_stopped();
    }
}

/// Binds `n` sockets to `addr` with `SO_REUSEPORT` (one per worker).
pub(crate) fn bind(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    bind_reuseport(addr, n, socket2::Type::STREAM, socket2::Protocol::TCP)?
        .into_iter()
        .map(|s| {
            s.listen(4096)?;
            Ok(s.into())
        })
        .collect()
}

/// Binds `n` UDP sockets to `addr` with `SO_REUSEPORT` (one per worker; the kernel keeps a
/// client address on one socket).
pub(crate) fn bind_udp(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::UdpSocket>> {
    Ok(
        bind_reuseport(addr, n, socket2::Type::DGRAM, socket2::Protocol::UDP)?
            .into_iter()
            .map(Into::into)
            .collect(),
    )
}

/// `n` non-blocking sockets bound to `addr` with `SO_REUSEADDR` and `SO_REUSEPORT` (IPv6:
/// v6 only).
fn bind_reuseport(
    addr: SocketAddr,
    n: usize,
    ty: socket2::Type,
    protocol: socket2::Protocol,
) -> std::io::Result<Vec<socket2::Socket>> {
    (0..n)
        .map(|_| {
            let s = socket2::Socket::new(socket2::Domain::for_address(addr), ty, Some(protocol))?;
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            if addr.is_ipv6() {
                s.set_only_v6(true)?;
            }
            s.set_nonblocking(true)?;
            s.bind(&addr.into())?;
            Ok(s)
        })
        .collect()
}

/// A message to a worker.
pub(crate) enum Command {
    /// Accept on this socket for this listener.
    Serve(Arc<ListenerShared>, std::net::TcpListener),
    /// Forward datagrams received on this socket (UDP listener).
    ServeUdp(Arc<ListenerShared>, std::net::UdpSocket),
    /// Serve HTTP/3 on this socket (QUIC endpoint of an HTTPS listener).
    ServeQuic(Arc<crate::http3::QuicShared>, std::net::UdpSocket),
}

/// Starts a worker thread.
pub(crate) fn spawn_worker(
    index: usize,
    sweep: Duration,
) -> std::io::Result<(mpsc::UnboundedSender<Command>, std::thread::JoinHandle<()>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Command>();
    let handle = std::thread::Builder::new()
        .name(format!("sluice-worker-{index}"))
        .spawn(move || {
            rt.block_on(async move {
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(sweep);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        crate::upstream::sweep_pools();
                    }
                });
                while let Some(cmd) = rx.recv().await {
                    match cmd {
                        Command::Serve(shared, sock) => match tokio::net::TcpListener::from_std(sock)
                        {
                            Ok(l) => {
                                tokio::spawn(accept_loop(shared, l));
                            }
                            Err(e) => {
                                tracing::error!(listener = %shared.name, error = %e, "cannot register listener")
                            }
                        },
                        Command::ServeUdp(shared, sock) => match tokio::net::UdpSocket::from_std(sock) {
                            Ok(s) => {
                                let max = shared.settings.udp_max_flows;
                                tokio::spawn(crate::l4::serve_udp(shared, s, max));
                            }
                            Err(e) => {
                                tracing::error!(listener = %shared.name, error = %e, "cannot register UDP socket")
                            }
                        },
                        Command::ServeQuic(quic, sock) => crate::http3::serve(quic, sock),
                    }
                }
            });
            // Dropping the runtime cancels every task of this worker.
            drop(rt);
        })?;
    Ok((tx, handle))
}

async fn accept_loop(shared: Arc<ListenerShared>, listener: tokio::net::TcpListener) {
    let mut stop = shared.stop.subscribe();
    if *stop.borrow_and_update() {
        return;
    }
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    tokio::spawn(serve_conn(shared.clone(), stream, peer));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = %shared.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        }
    }
}

/// Counts a downstream connection (QUIC ones too) while it lives.
pub(crate) struct ConnGuard(pub(crate) Arc<ListenerShared>);

impl ConnGuard {
    pub(crate) fn new(shared: &Arc<ListenerShared>) -> Self {
        shared.connections.fetch_add(1, Ordering::AcqRel);
        shared.active.inc();
        ConnGuard(shared.clone())
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0.active.dec();
    }
}

async fn serve_conn(shared: Arc<ListenerShared>, stream: TcpStream, peer: SocketAddr) {
    let guard = ConnGuard::new(&shared);
    let _ = stream.set_nodelay(true);
    let rt = shared.slot.load_full();
    match rt.protocol {
        ListenerProtocol::Http => {
            drop(rt);
            // A client that sends nothing gets the header read timeout too.
            let sniff = sniff_h2(&stream);
            let h2 = match shared.settings.header_read_timeout {
                Some(t) => tokio::time::timeout(t, sniff).await.ok().flatten(),
                None => sniff.await,
            };
            let Some(h2) = h2 else {
                return;
            };
            let ctx = conn_ctx(&shared, peer, false);
            if h2 {
                serve_http(TokioIo::new(stream), true, ctx).await;
            } else {
                // Parks the connection when it goes idle (the guard goes with it).
                crate::park::serve(stream, ctx, guard).await;
            }
        }
        ListenerProtocol::Https if rt.sni.is_empty() => {
            let Some(cfg) = rt.tls.as_ref().map(|t| t.tcp.clone()) else {
                return;
            };
            drop(rt);
            // Boxed, like the arms below: the task of every connection is as large as its
            // largest arm, and plain HTTP connections should not carry TLS state.
            Box::pin(serve_https(&shared, cfg, stream, peer)).await;
        }
        ListenerProtocol::Https | ListenerProtocol::Tls => {
            Box::pin(serve_sni(&shared, rt, stream, peer)).await;
        }
        ListenerProtocol::Tcp => {
            let Some(route) = rt.l4.as_ref() else {
                return;
            };
            Box::pin(crate::l4::forward(
                &shared,
                &route.name,
                &route.backends,
                stream,
                &[],
                peer,
            ))
            .await;
        }
        // UDP listeners bind datagram sockets (see `crate::l4::serve_udp`).
        ListenerProtocol::Udp => {}
    }
}

pub(crate) fn conn_ctx(shared: &Arc<ListenerShared>, peer: SocketAddr, tls: bool) -> Arc<ConnCtx> {
    let ip = peer.ip().to_canonical();
    Arc::new(ConnCtx {
        listener: shared.clone(),
        client_ip: HeaderValue::from_str(&ip.to_string()).expect("an IP is a header value"),
        client: peer,
        tls,
        h3: false,
    })
}

/// TLS termination, then HTTP/1.1 or HTTP/2 by ALPN.
async fn serve_https<S>(
    shared: &Arc<ListenerShared>,
    cfg: Arc<rustls::ServerConfig>,
    stream: S,
    peer: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(tls_stream) = tls_accept(shared, cfg, stream, peer).await else {
        return;
    };
    let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
    serve_http(TokioIo::new(tls_stream), h2, conn_ctx(shared, peer, true)).await;
}

async fn tls_accept<S>(
    shared: &Arc<ListenerShared>,
    cfg: Arc<rustls::ServerConfig>,
    stream: S,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let hs = tokio::time::timeout(
        shared.settings.tls_handshake_timeout,
        acceptor.accept(stream),
    )
    .await;
    match hs {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(listener = %shared.name, client = %peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => None,
    }
}

/// TLS listeners and HTTPS listeners with passthrough routes: the ClientHello's SNI picks a
/// TLS route (passthrough: the encrypted stream goes to the backend untouched; terminate: the
/// plain stream does); without a matching route an HTTPS listener terminates and serves HTTP,
/// a TLS listener closes the connection.
async fn serve_sni(
    shared: &Arc<ListenerShared>,
    rt: Arc<ListenerRuntime>,
    mut stream: TcpStream,
    peer: SocketAddr,
) {
    let hello = tokio::time::timeout(
        shared.settings.tls_handshake_timeout,
        crate::sni::read_client_hello(&mut stream),
    )
    .await;
    let hello = match hello {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            tracing::debug!(listener = %shared.name, client = %peer, error = %e, "no ClientHello");
            return;
        }
        Err(_) => return,
    };
    match rt.sni.find(hello.sni.as_deref()) {
        Some(route) if route.mode == TlsMode::Passthrough => {
            let route = route.clone();
            drop(rt);
            crate::l4::forward(
                shared,
                &route.name,
                &route.backends,
                stream,
                &hello.bytes,
                peer,
            )
            .await;
        }
        Some(route) => {
            let route = route.clone();
            let Some(cfg) = rt.tls.as_ref().map(|t| t.tcp.clone()) else {
                tracing::debug!(listener = %shared.name, client = %peer, route = %route.name, "no certificate to terminate with; connection closed");
                return;
            };
            drop(rt);
            let stream = crate::l4::Prefixed::new(hello.bytes, stream);
            let Some(tls) = tls_accept(shared, cfg, stream, peer).await else {
                return;
            };
            crate::l4::forward(shared, &route.name, &route.backends, tls, &[], peer).await;
        }
        None if rt.protocol == ListenerProtocol::Https => {
            let Some(cfg) = rt.tls.as_ref().map(|t| t.tcp.clone()) else {
                tracing::debug!(listener = %shared.name, client = %peer, sni = ?hello.sni, "no TLS route and no certificate; connection closed");
                return;
            };
            drop(rt);
            serve_https(
                shared,
                cfg,
                crate::l4::Prefixed::new(hello.bytes, stream),
                peer,
            )
            .await;
        }
        None => {
            tracing::debug!(listener = %shared.name, client = %peer, sni = ?hello.sni, "no TLS route matches; connection closed");
        }
    }
}

/// Resolves once the listener is told to stop (never if its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// `Some(true)` when the client starts with the HTTP/2 preface, `Some(false)` for anything
/// else, `None` when it closed first. Peeks, so the bytes stay in the socket.
async fn sniff_h2(stream: &TcpStream) -> Option<bool> {
    let mut buf = [0u8; 24];
    for _ in 0..1000 {
        let n = stream.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != PREFACE[..n] {
            return Some(false);
        }
        if n == PREFACE.len() {
            return Some(true);
        }
        // A partial preface: wait for the rest.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Some(false)
}

/// hyper's HTTP/1.1 server settings for downstream connections.
pub(crate) fn http1_builder(settings: &ConnSettings) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new());
    b.header_read_timeout(settings.header_read_timeout);
    // Small responses: one contiguous write beats writev of head and body.
    b.writev(false);
    b
}

pub(crate) async fn serve_http<I>(io: TokioIo<I>, h2: bool, ctx: Arc<ConnCtx>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = ctx.listener.clone();
    let mut stop = shared.stop.subscribe();
    let svc = service_fn(move |req| handle(req, ctx.clone()));
    if h2 {
        // Boxed: HTTP/1.1 connections, the many idle ones, should not carry HTTP/2 state.
        let mut conn = Box::pin(
            http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .serve_connection(io, svc),
        );
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = stopped(&mut stop) => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    } else {
        let conn = http1_builder(&shared.settings)
            .serve_connection(io, svc)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = stopped(&mut stop) => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }
}
