//! HTTP/3: a QUIC endpoint (quinn) on the UDP twin of an HTTPS listener's port, one per worker
//! (`SO_REUSEPORT`), with the listener's certificates (ALPN `h3`). Requests run through the same
//! routing, filters and upstreams as HTTP/1.1 and HTTP/2 ([`crate::phases::handle`]).

use crate::body::{BoxError, Downstream, ReqBody};
use crate::phases::{ConnCtx, handle};
use crate::server::{ConnGuard, ListenerShared, stopped};
use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use tokio::sync::watch;

type H3Recv = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

/// The HTTP/3 side of a live HTTPS listener: its endpoints (one per worker) and stop signal.
pub(crate) struct QuicShared {
    pub(crate) listener: Arc<ListenerShared>,
    /// `true`: stop accepting; connections get GOAWAY and finish their requests.
    pub(crate) stop: watch::Sender<bool>,
    endpoints: Mutex<Vec<quinn::Endpoint>>,
}

impl std::fmt::Debug for QuicShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicShared")
            .field("listener", &self.listener.name)
            .finish()
    }
}

impl QuicShared {
    pub(crate) fn new(listener: Arc<ListenerShared>) -> Arc<Self> {
        Arc::new(QuicShared {
            listener,
            stop: watch::channel(false).0,
            endpoints: Mutex::new(Vec::new()),
        })
    }

    /// New handshakes use the listener's current certificates (established connections keep
    /// theirs). Call after the listener's runtime was swapped.
    pub(crate) fn refresh(&self) {
        let cfg = self.current_config();
        for ep in self.endpoints.lock().expect("endpoints lock").iter() {
            ep.set_server_config(cfg.clone());
        }
    }

    /// Stops accepting and tells connections to go away.
    pub(crate) fn stop(&self) {
        let _ = self.stop.send(true);
        for ep in self.endpoints.lock().expect("endpoints lock").iter() {
            ep.set_server_config(None);
        }
    }

    fn current_config(&self) -> Option<quinn::ServerConfig> {
        self.listener
            .slot
            .load()
            .tls
            .as_ref()
            .and_then(|t| t.quic.clone())
    }
}

/// Starts a QUIC endpoint on this worker's socket (runs on the worker's runtime).
pub(crate) fn serve(quic: Arc<QuicShared>, sock: std::net::UdpSocket) {
    let mut eps = quic.endpoints.lock().expect("endpoints lock");
    if *quic.stop.borrow() {
        return;
    }
    let cfg = quic.current_config();
    let ep = match quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        cfg,
        sock,
        Arc::new(quinn::TokioRuntime),
    ) {
        Ok(ep) => ep,
        Err(e) => {
            tracing::error!(listener = %quic.listener.name, error = %e, "cannot start QUIC endpoint");
            return;
        }
    };
    eps.push(ep.clone());
    drop(eps);
    tokio::spawn(accept_loop(quic, ep));
}

async fn accept_loop(quic: Arc<QuicShared>, ep: quinn::Endpoint) {
    let mut stop = quic.stop.subscribe();
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            inc = ep.accept() => match inc {
                Some(inc) => {
                    tokio::spawn(connection(quic.clone(), inc));
                }
                None => break,
            },
        }
    }
    ep.set_server_config(None);
    // Connections finish (GOAWAY, then their requests); the endpoint closes when idle.
    ep.wait_idle().await;
}

async fn connection(quic: Arc<QuicShared>, inc: quinn::Incoming) {
    let shared = quic.listener.clone();
    let _guard = ConnGuard::new(&shared);
    let peer = inc.remote_address();
    let conn = match tokio::time::timeout(shared.settings.tls_handshake_timeout, inc).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(listener = %shared.name, client = %peer, error = %e, "QUIC handshake failed");
            return;
        }
        Err(_) => return,
    };
    let ip = peer.ip().to_canonical();
    let ctx = Arc::new(ConnCtx {
        listener: shared.clone(),
        client_ip: HeaderValue::from_str(&ip.to_string()).expect("an IP is a header value"),
        client: peer,
        tls: true,
        h3: true,
    });
    let mut h3c = match h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(conn))
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(listener = %shared.name, client = %peer, error = %e, "HTTP/3 setup failed");
            return;
        }
    };
    let mut stop = quic.stop.subscribe();
    let mut draining = false;
    loop {
        let next = if draining {
            h3c.accept().await
        } else {
            tokio::select! {
                biased;
                _ = stopped(&mut stop) => {
                    draining = true;
                    let _ = h3c.shutdown(0).await;
                    continue;
                }
                r = h3c.accept() => r,
            }
        };
        match next {
            Ok(Some(resolver)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    match resolver.resolve_request().await {
                        Ok((req, stream)) => request(req, stream, ctx).await,
                        Err(e) => tracing::debug!(error = %e, "HTTP/3 request head not received"),
                    }
                });
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(listener = %shared.name, client = %peer, error = %e, "HTTP/3 connection closed");
                break;
            }
        }
    }
}

async fn request(
    req: Request<()>,
    stream: h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    ctx: Arc<ConnCtx>,
) {
    let (mut send, recv) = stream.split();
    let (parts, ()) = req.into_parts();
    let body = H3Body::new(recv, &parts.headers);
    let Ok(resp) = handle(Request::from_parts(parts, body), ctx).await;
    let (head, mut body) = resp.into_parts();
    if send
        .send_response(Response::from_parts(head, ()))
        .await
        .is_err()
    {
        return;
    }
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(error = %e, "upstream body failed; HTTP/3 stream reset");
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return;
            }
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                if send.send_data(data).await.is_err() {
                    return;
                }
                continue;
            }
            Err(f) => f,
        };
        if let Ok(trailers) = frame.into_trailers() {
            if send.send_trailers(trailers).await.is_err() {
                return;
            }
            break;
        }
    }
    let _ = send.finish().await;
}

/// An HTTP/3 request body: DATA frames, then trailers.
struct H3Body {
    recv: H3Recv,
    /// A chunk read while checking for an empty body.
    first: Option<Bytes>,
    data_done: bool,
    ended: bool,
    hint: SizeHint,
}

impl H3Body {
    /// Checks (without waiting) whether the stream already ended, so that a request without a
    /// body goes upstream as one.
    fn new(mut recv: H3Recv, headers: &HeaderMap) -> Self {
        let mut hint = SizeHint::default();
        if let Some(n) = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        {
            hint.set_exact(n);
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut first = None;
        let mut data_done = false;
        let mut ended = false;
        match recv.poll_recv_data(&mut cx) {
            Poll::Ready(Ok(Some(mut b))) => first = Some(b.copy_to_bytes(b.remaining())),
            Poll::Ready(Ok(None)) => {
                data_done = true;
                if let Poll::Ready(Ok(None)) = recv.poll_recv_trailers(&mut cx) {
                    ended = true;
                }
            }
            _ => {}
        }
        if ended {
            hint = SizeHint::with_exact(0);
        }
        H3Body {
            recv,
            first,
            data_done,
            ended,
            hint,
        }
    }
}

impl Body for H3Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(b) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match std::task::ready!(this.recv.poll_recv_data(cx)) {
                Ok(Some(mut b)) => {
                    return Poll::Ready(Some(Ok(Frame::data(b.copy_to_bytes(b.remaining())))));
                }
                Ok(None) => this.data_done = true,
                Err(e) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
        let r = std::task::ready!(this.recv.poll_recv_trailers(cx));
        this.ended = true;
        match r {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(Box::new(e)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.first.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

impl Downstream for H3Body {
    fn into_req_body(self) -> ReqBody {
        ReqBody::Boxed(crate::body::BoxedBody(Box::pin(self)))
    }
}
