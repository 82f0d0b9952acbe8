//! Idle cleartext HTTP/1.1 connections. hyper serves a connection until it has been idle (no
//! request in flight, every response byte flushed, nothing read since) for one to two
//! [`PARK_AFTER`] periods (100-200 ms); then hyper's connection is taken apart and the socket is
//! parked: it leaves the runtime (no task, no buffers, no tokio registration) for its worker's
//! parking lot, where it takes one slot of a few dozen bytes and sits in an epoll set of the
//! lot's own, waited on by a small thread. When the client sends its next request (or closes),
//! the lot hands the socket to a new task and a new hyper connection. A parked connection is
//! closed when the header read timeout, counted from the start of its idle time, runs out, or
//! when its listener stops.
//!
//! nginx and HAProxy free an idle keep-alive connection's buffers the same way; hyper keeps
//! them (8 KiB to read, 8 KiB to write, the request future's box) for the connection's life.
//!
//! Not told apart from idleness: a request body still being received after its response
//! finished, with the client pausing its upload for over a period. That happens only when an
//! upstream answers before it has read the whole body and the proxy keeps streaming it; the
//! park then ends the upload (a body dropped unread makes hyper close the connection anyway).

use crate::body::{BoxError, ProxyBody};
use crate::l4::Prefixed;
use crate::phases::{ConnCtx, handle};
use crate::server::{ConnGuard, conn_ctx, http1_builder, stopped};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mio::unix::SourceFd;
use std::cell::RefCell;
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Sleep};

/// The period of the idle check: a connection is parked after one to two periods without a
/// request. Short enough that idle connections hold little; long enough that a client sending
/// requests back to back never waits for a park and an unpark.
pub(crate) const PARK_AFTER: Duration = Duration::from_millis(100);

/// How often each lot closes the parked connections whose time is up and, when connections
/// were parked since, lets the allocator return their freed buffers (a scan of its slots: some
/// microseconds at 10,000 parked connections).
const SWEEP: Duration = Duration::from_millis(250);

/// Serves cleartext HTTP/1.1 on `stream` until the client closes, the listener stops, or the
/// connection goes idle and is parked (the task then ends; the lot starts a new one when the
/// client sends more).
pub(crate) async fn serve(mut stream: TcpStream, ctx: Arc<ConnCtx>, mut guard: ConnGuard) {
    let mut read = Vec::new();
    loop {
        match serve_until_idle(stream, read, &ctx).await {
            Ended::Closed => return,
            Ended::Idle {
                stream: s, read: r, ..
            } if !r.is_empty() => {
                // Part of a pipelined request head was read: serve on with it.
                (stream, read) = (s, r);
            }
            Ended::Idle {
                stream: s, since, ..
            } => {
                let close_at = ctx.listener.settings.header_read_timeout.map(|t| since + t);
                let Some((s, g)) = park(s, guard, close_at) else {
                    return;
                };
                // No lot (out of file descriptors): wait here, holding no buffers.
                (stream, guard, read) = (s, g, Vec::new());
                let mut stop = ctx.listener.stop.subscribe();
                let expired = async {
                    match close_at {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = stream.readable() => if r.is_err() { return },
                    _ = expired => return,
                    _ = stopped(&mut stop) => return,
                }
            }
        }
    }
}

enum Ended {
    /// The client closed, the listener stopped, or the protocol was upgraded.
    Closed,
    /// Idle since `since`; `read`: bytes hyper had read and not yet parsed.
    Idle {
        stream: TcpStream,
        read: Vec<u8>,
        since: Instant,
    },
}

/// What [`poll_idle`] saw.
enum Event {
    /// The hyper connection finished.
    Done,
    /// The connection has been idle long enough to park.
    Idle,
}

async fn serve_until_idle(stream: TcpStream, prefix: Vec<u8>, ctx: &Arc<ConnCtx>) -> Ended {
    let shared = &ctx.listener;
    let watch = Arc::new(IdleWatch::default());
    let io = TokioIo::new(Watched {
        io: Prefixed::new(prefix, stream),
        watch: watch.clone(),
    });
    let svc = {
        let (ctx, watch) = (ctx.clone(), watch.clone());
        service_fn(move |req| {
            watch.begin();
            let fut = handle(req, ctx.clone());
            let watch = watch.clone();
            async move {
                let resp = fut.await?;
                Ok::<_, Infallible>(resp.map(|body| Counted { body, watch }))
            }
        })
    };
    let mut conn = http1_builder(&shared.settings)
        .serve_connection(io, svc)
        .with_upgrades();
    let mut stop = shared.stop.subscribe();
    let park = tokio::time::sleep(PARK_AFTER);
    tokio::pin!(park);
    let mut period = None;
    let event = tokio::select! {
        biased;
        e = poll_fn(|cx| poll_idle(&mut conn, &watch, &mut period, park.as_mut(), cx)) => Some(e),
        _ = stopped(&mut stop) => None,
    };
    match event {
        Some(Event::Done) => Ended::Closed,
        None => {
            Pin::new(&mut conn).graceful_shutdown();
            let _ = conn.await;
            Ended::Closed
        }
        Some(Event::Idle) => {
            // Idle since the start of the last period at least.
            let since = park.deadline() - PARK_AFTER;
            let Some(parts) = conn.into_parts() else {
                return Ended::Closed;
            };
            let (prefix, stream) = parts.io.into_inner().io.into_parts();
            // Bytes hyper read come before the prefix bytes it has not read yet.
            let mut read = parts.read_buf.to_vec();
            read.extend_from_slice(&prefix);
            Ended::Idle {
                stream,
                read,
                since,
            }
        }
    }
}

/// Polls the hyper connection, and at the end of each [`PARK_AFTER`] period checks whether it
/// was idle all along: nothing started or finished since the period began (`period` holds the
/// [`IdleWatch::events`] count then; `None` before the first period) and idle now. Then it is
/// parked, after one to two periods of idleness; else a new period starts. A busy connection
/// pays one timer reset per period, nothing per request.
fn poll_idle<C: Future + Unpin>(
    conn: &mut C,
    watch: &IdleWatch,
    period: &mut Option<u32>,
    mut park: Pin<&mut Sleep>,
    cx: &mut Context<'_>,
) -> Poll<Event> {
    if Pin::new(conn).poll(cx).is_ready() {
        return Poll::Ready(Event::Done);
    }
    let events = watch.events.load(Relaxed);
    match *period {
        Some(_) if !park.is_elapsed() => return Poll::Pending,
        Some(start) if start == events && watch.idle() => return Poll::Ready(Event::Idle),
        Some(_) => park.as_mut().reset(Instant::now() + PARK_AFTER),
        None => {}
    }
    *period = Some(events);
    // Registers this task with the timer (a timer that fired has let go of it).
    park.poll(cx).map(|()| Event::Idle)
}

/// What a connection is doing, as seen from its socket and its service.
#[derive(Debug, Default)]
struct IdleWatch {
    /// Requests handed to the service whose response body is not finished.
    in_flight: AtomicU32,
    /// Requests started and finished (wrapping).
    events: AtomicU32,
    /// Bytes were read since a request started or a response finished (part of a head).
    read_since: AtomicBool,
    /// The last read found the socket empty.
    read_blocked: AtomicBool,
    /// Bytes were written and not flushed since.
    unflushed: AtomicBool,
}

impl IdleWatch {
    fn begin(&self) {
        self.in_flight.fetch_add(1, Relaxed);
        self.events.fetch_add(1, Relaxed);
        self.read_since.store(false, Relaxed);
    }

    fn end(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
        self.events.fetch_add(1, Relaxed);
        self.read_since.store(false, Relaxed);
    }

    fn idle(&self) -> bool {
        self.in_flight.load(Relaxed) == 0
            && self.read_blocked.load(Relaxed)
            && !self.read_since.load(Relaxed)
            && !self.unflushed.load(Relaxed)
    }
}

/// A response body that marks its request finished when hyper drops it (after its last frame
/// was encoded, or when the connection fails).
struct Counted {
    body: ProxyBody,
    watch: Arc<IdleWatch>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.watch.end();
    }
}

impl Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket as hyper sees it: reads first drain the prefix; reads, writes and flushes are
/// recorded in the [`IdleWatch`].
struct Watched {
    io: Prefixed<TcpStream>,
    watch: Arc<IdleWatch>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        match r {
            Poll::Pending => this.watch.read_blocked.store(true, Relaxed),
            Poll::Ready(_) => {
                this.watch.read_blocked.store(false, Relaxed);
                if buf.filled().len() > before {
                    this.watch.read_since.store(true, Relaxed);
                }
            }
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.watch.unflushed.store(true, Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.watch.unflushed.store(true, Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            this.watch.unflushed.store(false, Relaxed);
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Bumped whenever a listener stops, so that every lot closes that listener's parked
/// connections at once (a shutdown waits for connections to close).
static STOPS: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::channel(0).0);

/// Tells the lots that a listener stopped.
pub(crate) fn listener_stopped() {
    STOPS.send_modify(|n| *n += 1);
}

thread_local! {
    /// This worker's lot, started by the first connection it parks.
    static LOT: RefCell<Option<Arc<Lot>>> = const { RefCell::new(None) };
}

/// A worker's parked connections: their slots, and the registry of the epoll set (waited on by
/// the lot's thread) that watches their sockets.
struct Lot {
    registry: mio::Registry,
    slots: Mutex<Slots>,
    /// The lot's thread ended (its epoll set failed); a new lot is started.
    closed: AtomicBool,
}

#[derive(Default)]
struct Slots {
    parked: Vec<Option<Parked>>,
    free: Vec<u32>,
    /// Occupied slots.
    len: usize,
    /// Connections were parked since the last sweep: their buffers were freed.
    freed: bool,
    /// [`crate::ProxyOptions::release_memory`] of the last parked connection's proxy.
    release_memory: Option<fn()>,
}

struct Parked {
    stream: std::net::TcpStream,
    /// Keeps counting the connection as open on its listener.
    guard: ConnGuard,
    close_at: Option<Instant>,
}

impl Slots {
    fn insert(&mut self, p: Parked) -> usize {
        self.len += 1;
        self.freed = true;
        self.release_memory = p.guard.0.settings.release_memory;
        p.guard.0.parked.inc();
        match self.free.pop() {
            Some(k) => {
                self.parked[k as usize] = Some(p);
                k as usize
            }
            None => {
                self.parked.push(Some(p));
                self.parked.len() - 1
            }
        }
    }

    fn remove(&mut self, key: usize) -> Option<Parked> {
        let p = self.parked.get_mut(key)?.take()?;
        self.len -= 1;
        p.guard.0.parked.dec();
        self.free.push(key as u32);
        if self.len == 0 {
            // Everything left: give the memory of a burst of idle connections back.
            self.parked = Vec::new();
            self.free = Vec::new();
            self.freed = true;
        }
        Some(p)
    }
}

/// This worker's lot (started on first use).
fn lot() -> io::Result<Arc<Lot>> {
    LOT.with(|cell| {
        let mut cell = cell.borrow_mut();
        if let Some(lot) = cell.as_ref().filter(|l| !l.closed.load(Relaxed)) {
            return Ok(lot.clone());
        }
        let poll = mio::Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("sluice-idle".into())
            .stack_size(64 * 1024)
            .spawn(move || watch_sockets(poll, tx))?;
        let lot = Arc::new(Lot {
            registry,
            slots: Mutex::default(),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(run(lot.clone(), rx));
        *cell = Some(lot.clone());
        Ok(lot)
    })
}

/// The lot's thread: waits on the parked sockets' epoll set and sends the worker the slots
/// whose socket became readable. Ends when the worker's runtime is gone.
fn watch_sockets(mut poll: mio::Poll, tx: mpsc::UnboundedSender<Vec<usize>>) {
    let mut events = mio::Events::with_capacity(256);
    loop {
        match poll.poll(&mut events, Some(SWEEP)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "idle connections: epoll failed");
                return;
            }
        }
        if events.is_empty() {
            if tx.is_closed() {
                return;
            }
            continue;
        }
        if tx
            .send(events.iter().map(|e| e.token().0).collect())
            .is_err()
        {
            return;
        }
    }
}

/// Parks `stream`. Gives it back when there is no lot to park it in.
fn park(
    stream: TcpStream,
    guard: ConnGuard,
    close_at: Option<Instant>,
) -> Option<(TcpStream, ConnGuard)> {
    let lot = match lot() {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(listener = %guard.0.name, error = %e, "cannot park an idle connection");
            return Some((stream, guard));
        }
    };
    // Leaves tokio's epoll set (an error: the socket is gone; the connection is closed).
    let stream = stream.into_std().ok()?;
    let fd = stream.as_raw_fd();
    let mut slots = lot.lock();
    let key = slots.insert(Parked {
        stream,
        guard,
        close_at,
    });
    // Edge-triggered; a socket that is readable already is reported at once.
    let r = lot
        .registry
        .register(&mut SourceFd(&fd), mio::Token(key), mio::Interest::READABLE);
    if let Err(e) = r {
        let p = slots.remove(key).expect("just parked");
        tracing::debug!(listener = %p.guard.0.name, error = %e, "cannot park an idle connection");
        return TcpStream::from_std(p.stream).ok().map(|s| (s, p.guard));
    }
    None
}

impl Lot {
    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self, key: usize) -> Option<Parked> {
        let p = self.lock().remove(key)?;
        let _ = self
            .registry
            .deregister(&mut SourceFd(&p.stream.as_raw_fd()));
        Some(p)
    }

    /// The client of `key` sent something or closed: serve it again.
    fn wake(&self, key: usize) {
        if let Some(p) = self.take(key) {
            tokio::spawn(resume(p));
        }
    }

    /// Closes the connections whose header read timeout ran out or whose listener stopped, and
    /// lets the allocator return what connections parked since the last sweep freed.
    fn sweep(&self) {
        let now = Instant::now();
        let mut slots = self.lock();
        let release = std::mem::take(&mut slots.freed)
            .then_some(slots.release_memory)
            .flatten();
        let expired: Vec<usize> = slots
            .parked
            .iter()
            .enumerate()
            .filter_map(|(k, p)| {
                let p = p.as_ref()?;
                (p.close_at.is_some_and(|t| t <= now) || *p.guard.0.stop.borrow()).then_some(k)
            })
            .collect();
        drop(slots);
        for k in expired {
            drop(self.take(k));
        }
        if let Some(release) = release {
            release();
        }
    }

    fn close_all(&self) {
        let n = self.lock().parked.len();
        for k in 0..n {
            drop(self.take(k));
        }
    }
}

/// The lot's task on its worker: serves parked connections whose socket became readable, and
/// closes expired ones every [`SWEEP`] and at once when a listener stops.
async fn run(lot: Arc<Lot>, mut ready: mpsc::UnboundedReceiver<Vec<usize>>) {
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stops = STOPS.subscribe();
    loop {
        tokio::select! {
            keys = ready.recv() => match keys {
                Some(keys) => keys.into_iter().for_each(|k| lot.wake(k)),
                None => break,
            },
            _ = sweep.tick() => lot.sweep(),
            _ = stops.changed() => lot.sweep(),
        }
    }
    lot.closed.store(true, Relaxed);
    lot.close_all();
}

/// A parked connection's client sent something (or closed): a new task and hyper connection.
async fn resume(p: Parked) {
    let Parked { stream, guard, .. } = p;
    let Ok(stream) = TcpStream::from_std(stream) else {
        return;
    };
    // Gone already (reset while parked): nothing to serve.
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
    let ctx = conn_ctx(&guard.0, peer, false);
    serve(stream, ctx, guard).await;
}
