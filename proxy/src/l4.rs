//! L4 forwarding: TCP streams (TCPRoute, TLS passthrough and terminated TLSRoute) spliced to a
//! backend chosen per connection, and UDP datagrams forwarded per flow (client address) with an
//! idle timeout. A stream keeps the backend it was connected to across reloads; a UDP flow keeps
//! its backend until that endpoint leaves the configuration.

use crate::server::ListenerShared;
use crate::upstream::{ClusterRt, EndpointRt, Weighted, connect_tcp};
use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::UdpSocket;

/// Buffer size of each direction of a spliced stream (bytes).
const SPLICE_BUF: usize = 16 * 1024;

/// One weighted backend of an L4 route.
#[derive(Debug)]
pub(crate) struct L4Backend {
    /// `None`: an unresolvable backendRef; connections that pick it are closed.
    pub(crate) cluster: Option<Arc<ClusterRt>>,
}

/// The weighted backends of a TCP, UDP or TLS route, chosen once per connection or flow.
pub(crate) type L4Backends = Weighted<L4Backend>;

impl Weighted<L4Backend> {
    /// A cluster chosen by weight; `None` when there is no backend with weight > 0 or the
    /// chosen one is invalid.
    pub(crate) fn cluster(&self) -> Option<&Arc<ClusterRt>> {
        self.choose()?.cluster.as_ref()
    }

    /// Every endpoint address of every backend (UDP flows check theirs after a reload).
    pub(crate) fn endpoint_addrs(&self) -> HashSet<SocketAddr> {
        self.iter()
            .filter_map(|b| b.cluster.as_ref())
            .flat_map(|c| c.endpoint_addrs())
            .collect()
    }
}

/// A TCP or UDP listener's route, compiled (the first IR `l4Routes` entry).
#[derive(Debug)]
pub(crate) struct L4Route {
    /// Route id as text, for logs.
    pub(crate) name: Arc<str>,
    pub(crate) backends: L4Backends,
    /// UDP flow idle timeout.
    pub(crate) idle_timeout: Duration,
    /// Endpoint addresses of all backends (UDP flow revalidation).
    pub(crate) endpoints: HashSet<SocketAddr>,
}

/// Releases an endpoint's connection count.
struct Inflight(Arc<EndpointRt>);

impl Inflight {
    fn new(ep: &Arc<EndpointRt>) -> Self {
        ep.inflight.fetch_add(1, Ordering::Relaxed);
        Inflight(ep.clone())
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Connects to a backend chosen by weight (then by the cluster's endpoint policy, one more
/// endpoint tried when the first refuses), writes `prefix` (a buffered ClientHello), and splices
/// both directions until both are closed. Half-closes are passed on. Any failure before the
/// splice closes the client connection.
pub(crate) async fn forward<C>(
    listener: &ListenerShared,
    route: &str,
    backends: &L4Backends,
    mut client: C,
    prefix: &[u8],
    peer: SocketAddr,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let Some(cluster) = backends.cluster() else {
        tracing::debug!(listener = %listener.name, route, client = %peer, "no valid backend; connection closed");
        return;
    };
    let mut avoid = None;
    let mut upstream = None;
    for _ in 0..2 {
        let Some(ep) = cluster.pick(avoid) else { break };
        if avoid == Some(ep.addr) {
            break;
        }
        avoid = Some(ep.addr);
        match connect_tcp(cluster, ep.addr).await {
            Ok(s) => {
                upstream = Some((s, Inflight::new(ep)));
                break;
            }
            Err(e) => {
                listener.metrics.connect_error(&cluster.name);
                tracing::debug!(listener = %listener.name, route, cluster = %cluster.name, error = %e, "backend connect failed");
            }
        }
    }
    let Some((mut up, _inflight)) = upstream else {
        tracing::debug!(listener = %listener.name, route, client = %peer, cluster = %cluster.name, "no backend reachable; connection closed");
        return;
    };
    if !prefix.is_empty() && up.write_all(prefix).await.is_err() {
        return;
    }
    match tokio::io::copy_bidirectional_with_sizes(&mut client, &mut up, SPLICE_BUF, SPLICE_BUF)
        .await
    {
        Ok((tx, rx)) => {
            tracing::trace!(listener = %listener.name, route, client = %peer, tx, rx, "stream closed")
        }
        Err(e) => {
            tracing::debug!(listener = %listener.name, route, client = %peer, error = %e, "stream ended with an error")
        }
    }
}

/// A stream that first yields bytes already read from it (a sniffed ClientHello).
#[derive(Debug)]
pub(crate) struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub(crate) fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }

    /// The prefix bytes not read yet, and the stream.
    pub(crate) fn into_parts(mut self) -> (Vec<u8>, S) {
        self.prefix.drain(..self.pos);
        (self.prefix, self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// One UDP flow: the client's datagrams go out of `up` (connected to the chosen endpoint), and
/// whatever `up` receives goes back to the client from the listener socket.
struct Flow {
    up: Arc<UdpSocket>,
    /// The same socket for sends from the listener task: a plain non-blocking `send`, which
    /// does not wait for the reactor to report the new socket writable.
    tx: std::net::UdpSocket,
    endpoint: SocketAddr,
    /// Last datagram in either direction, in ms since the worker's UDP clock started.
    last: Arc<AtomicU64>,
    /// The listener runtime this flow's backend was last checked against.
    checked: usize,
    task: tokio::task::AbortHandle,
    _inflight: Inflight,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Flows = Arc<Mutex<crate::fxhash::FxHashMap<SocketAddr, Flow>>>;

/// Serves a UDP listener on one worker's socket (the kernel spreads clients over workers by
/// address, so a flow stays on one worker). At most `max_flows` flows are kept; a new flow then
/// replaces the one idle the longest.
pub(crate) async fn serve_udp(shared: Arc<ListenerShared>, sock: UdpSocket, max_flows: usize) {
    let sock = Arc::new(sock);
    let flows: Flows = Arc::default();
    let clock = Instant::now();
    let mut stop = shared.stop.subscribe();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, peer) = tokio::select! {
            biased;
            _ = crate::server::stopped(&mut stop) => break,
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(listener = %shared.name, error = %e, "UDP receive failed");
                    continue;
                }
            },
        };
        let rt = shared.slot.load();
        let Some(route) = rt.l4.as_ref() else {
            continue;
        };
        let epoch = Arc::as_ptr(&*rt) as usize;
        let now = clock.elapsed().as_millis() as u64;
        let mut table = flows.lock().expect("flow table lock");
        if let Some(f) = table.get_mut(&peer)
            && f.checked != epoch
        {
            if route.endpoints.contains(&f.endpoint) {
                f.checked = epoch;
            } else {
                table.remove(&peer);
            }
        }
        if !table.contains_key(&peer) {
            if table.len() >= max_flows
                && let Some(oldest) = table
                    .iter()
                    .min_by_key(|(_, f)| f.last.load(Ordering::Relaxed))
                    .map(|(a, _)| *a)
            {
                table.remove(&oldest);
            }
            match new_flow(&shared, route, &sock, &flows, peer, epoch, clock) {
                Some(f) => {
                    table.insert(peer, f);
                }
                None => continue,
            }
        }
        let f = table.get(&peer).expect("flow just inserted");
        f.last.store(now, Ordering::Relaxed);
        if let Err(e) = f.tx.send(&buf[..n]) {
            tracing::trace!(listener = %shared.name, client = %peer, error = %e, "UDP datagram dropped");
        }
    }
    // Dropping the table aborts every flow's reply task.
    flows.lock().expect("flow table lock").clear();
}

fn new_flow(
    shared: &Arc<ListenerShared>,
    route: &L4Route,
    sock: &Arc<UdpSocket>,
    flows: &Flows,
    client: SocketAddr,
    checked: usize,
    clock: Instant,
) -> Option<Flow> {
    let Some(cluster) = route.backends.cluster() else {
        tracing::debug!(listener = %shared.name, route = %route.name, %client, "no valid backend; datagram dropped");
        return None;
    };
    let Some(ep) = cluster.pick(None) else {
        tracing::debug!(listener = %shared.name, cluster = %cluster.name, %client, "no endpoint; datagram dropped");
        return None;
    };
    let target = ep.addr;
    let bind: SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let up = std::net::UdpSocket::bind(bind).and_then(|s| {
        s.connect(target)?;
        s.set_nonblocking(true)?;
        let tx = s.try_clone()?;
        Ok((UdpSocket::from_std(s)?, tx))
    });
    let (up, tx) = match up {
        Ok((s, tx)) => (Arc::new(s), tx),
        Err(e) => {
            shared.metrics.connect_error(&cluster.name);
            tracing::debug!(listener = %shared.name, %target, error = %e, "cannot open UDP flow");
            return None;
        }
    };
    let last = Arc::new(AtomicU64::new(clock.elapsed().as_millis() as u64));
    let idle = route.idle_timeout;
    let task = tokio::spawn(reply_loop(
        up.clone(),
        sock.clone(),
        client,
        last.clone(),
        idle,
        clock,
        flows.clone(),
    ));
    tracing::trace!(listener = %shared.name, %client, %target, "UDP flow opened");
    Some(Flow {
        up,
        tx,
        endpoint: target,
        last,
        checked,
        task: task.abort_handle(),
        _inflight: Inflight::new(ep),
    })
}

async fn reply_loop(
    up: Arc<UdpSocket>,
    sock: Arc<UdpSocket>,
    client: SocketAddr,
    last: Arc<AtomicU64>,
    idle: Duration,
    clock: Instant,
    flows: Flows,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let deadline = clock + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            r = up.recv(&mut buf) => match r {
                Ok(n) => {
                    last.store(clock.elapsed().as_millis() as u64, Ordering::Relaxed);
                    let _ = sock.send_to(&buf[..n], client).await;
                }
                // ICMP errors (port unreachable) surface here once each; keep the flow.
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            },
            _ = tokio::time::sleep_until(deadline.into()) => {
                let idle_for = clock.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                if idle_for >= idle {
                    let mut table = flows.lock().expect("flow table lock");
                    if table.get(&client).is_some_and(|f| Arc::ptr_eq(&f.up, &up)) {
                        // Dropping the flow aborts this task at its next await point.
                        let f = table.remove(&client);
                        drop(table);
                        drop(f);
                    }
                    return;
                }
            }
        }
    }
}
