//! Body types: what Sluice sends upstream ([`ReqBody`]) and answers downstream ([`ProxyBody`]).
//! Both stream frames through untouched; the upstream response body hands its pooled connection
//! back when it reaches its end.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::sync::mpsc;

/// Boxed error of the body types.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body sent upstream.
#[derive(Debug)]
pub enum ReqBody {
    /// No body.
    Empty,
    /// A buffered body (replayable for retries and mirrors).
    Full(Option<Bytes>),
    /// The client's body, streamed.
    Incoming(Incoming),
    /// A client's body from another server than hyper's (HTTP/3), streamed.
    Boxed(BoxedBody),
    /// The client's body, streamed, with data frames also copied to a mirror.
    Tee {
        /// The client's body ([`ReqBody::Incoming`] or [`ReqBody::Boxed`]).
        body: Box<ReqBody>,
        /// Copy channel; dropped when the mirror falls behind (its request is then aborted).
        tx: Option<mpsc::Sender<Option<Bytes>>>,
    },
    /// A mirror's copy of a streamed body. `None` in the channel marks the end.
    Mirror(mpsc::Receiver<Option<Bytes>>, SizeHint),
}

/// A boxed downstream body.
pub struct BoxedBody(pub(crate) Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send>>);

impl std::fmt::Debug for BoxedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoxedBody")
    }
}

impl ReqBody {
    /// A buffered body (empty bytes become [`ReqBody::Empty`]).
    pub fn full(b: Bytes) -> Self {
        if b.is_empty() {
            ReqBody::Empty
        } else {
            ReqBody::Full(Some(b))
        }
    }
}

/// The mirror stopped receiving, or the mirrored body was cut short.
#[derive(Debug, thiserror::Error)]
#[error("mirrored request body aborted")]
pub struct MirrorAborted;

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ReqBody::Boxed(b) => b.0.as_mut().poll_frame(cx),
            ReqBody::Tee { body, tx } => {
                let r = ready!(Pin::new(body.as_mut()).poll_frame(cx));
                match &r {
                    Some(Ok(f)) => {
                        if let (Some(d), Some(s)) = (f.data_ref(), tx.as_ref())
                            && s.try_send(Some(d.clone())).is_err()
                        {
                            *tx = None;
                        }
                    }
                    None => {
                        if let Some(s) = tx.take() {
                            let _ = s.try_send(None);
                        }
                    }
                    Some(Err(_)) => *tx = None,
                }
                Poll::Ready(r)
            }
            ReqBody::Mirror(rx, _) => match ready!(rx.poll_recv(cx)) {
                Some(Some(d)) => Poll::Ready(Some(Ok(Frame::data(d)))),
                Some(None) => {
                    rx.close();
                    Poll::Ready(None)
                }
                None => Poll::Ready(Some(Err(Box::new(MirrorAborted)))),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Full(b) => b.is_none(),
            ReqBody::Incoming(b) => b.is_end_stream(),
            ReqBody::Boxed(b) => b.0.is_end_stream(),
            ReqBody::Tee { body, .. } => body.is_end_stream(),
            ReqBody::Mirror(..) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Incoming(b) => b.size_hint(),
            ReqBody::Boxed(b) => b.0.size_hint(),
            ReqBody::Tee { body, .. } => body.size_hint(),
            ReqBody::Mirror(_, h) => *h,
        }
    }
}

/// A downstream request body the request path forwards: hyper's (HTTP/1.1, HTTP/2) or an
/// HTTP/3 request stream.
pub(crate) trait Downstream: Body<Data = Bytes> + Send + Unpin + 'static
where
    Self::Error: Into<BoxError>,
{
    /// The body as it is sent upstream.
    fn into_req_body(self) -> ReqBody;
}

impl Downstream for Incoming {
    fn into_req_body(self) -> ReqBody {
        ReqBody::Incoming(self)
    }
}

/// Called once when an upstream response body is finished (`true`: read to its end).
pub(crate) trait OnDone: Send {
    fn done(self: Box<Self>, complete: bool);
}

/// A response body sent downstream.
pub enum ProxyBody {
    /// No body.
    Empty,
    /// A body generated by Sluice (errors, redirects, admin).
    Full(Option<Bytes>),
    /// An upstream response body (hyper's client: HTTP/2, upgrades), streamed.
    Upstream(UpstreamBody),
    /// An upstream HTTP/1.1 response body from Sluice's own client, streamed.
    H1(crate::h1client::H1Body),
}

/// An upstream response body and what returns its connection to the pool.
pub struct UpstreamBody {
    body: Incoming,
    /// Returns the upstream connection to its pool and releases the endpoint's request count.
    done: Option<Box<dyn OnDone>>,
}

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyBody::Empty => f.write_str("Empty"),
            ProxyBody::Full(b) => f.debug_tuple("Full").field(b).finish(),
            ProxyBody::Upstream(UpstreamBody { body, .. }) => {
                f.debug_tuple("Upstream").field(body).finish()
            }
            ProxyBody::H1(b) => f.debug_tuple("H1").field(b).finish(),
        }
    }
}

impl ProxyBody {
    /// A generated body.
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        if b.is_empty() {
            ProxyBody::Empty
        } else {
            ProxyBody::Full(Some(b))
        }
    }

    pub(crate) fn upstream(body: Incoming, done: Option<Box<dyn OnDone>>) -> Self {
        let mut b = ProxyBody::Upstream(UpstreamBody { body, done });
        b.finish_if_ended();
        b
    }

    fn finish_if_ended(&mut self) {
        if let ProxyBody::Upstream(UpstreamBody { body, done }) = self
            && body.is_end_stream()
            && let Some(d) = done.take()
        {
            d.done(true);
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let ProxyBody::Upstream(UpstreamBody { done, .. }) = self
            && let Some(d) = done.take()
        {
            d.done(false);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match this {
            ProxyBody::Empty => Poll::Ready(None),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream(UpstreamBody { body, done }) => {
                let r = ready!(Pin::new(body).poll_frame(cx));
                match &r {
                    None => {
                        if let Some(d) = done.take() {
                            d.done(true);
                        }
                    }
                    Some(Ok(_)) => this.finish_if_ended(),
                    Some(Err(_)) => {
                        if let Some(d) = done.take() {
                            d.done(false);
                        }
                    }
                }
                Poll::Ready(r.map(|r| r.map_err(Into::into)))
            }
            ProxyBody::H1(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Upstream(UpstreamBody { body, .. }) => body.is_end_stream(),
            ProxyBody::H1(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Upstream(UpstreamBody { body, .. }) => body.size_hint(),
            ProxyBody::H1(b) => b.size_hint(),
        }
    }
}
