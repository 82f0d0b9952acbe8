//! A lean HTTP/1.1 upstream client driven directly by the request's task: no connection task,
//! no channels. The request head (and a buffered body) goes out in one write; the response head
//! is parsed with httparse into header values that share one buffer; a body that arrived with
//! the head is answered at once and its connection returned to the worker's pool before the
//! response is even handed on. Larger bodies stream from the socket (`Content-Length`, chunked,
//! or until close). Upgrades and HTTP/2 use hyper's client instead.

use crate::body::{BoxError, ReqBody};
use crate::error::{ErrorKind, HttpError, RetryType};
use crate::upstream::Done;
use crate::upstream_tls::UpStream;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use tokio::io::AsyncWriteExt;

const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
const READ_CHUNK: usize = 4 * 1024;

/// An idle or busy upstream HTTP/1.1 connection.
#[derive(Debug)]
pub(crate) struct H1Conn {
    stream: UpStream,
    buf: BytesMut,
    /// The last request's encoding, kept to reuse its allocation.
    pub(crate) wbuf: Vec<u8>,
    /// Requests sent on this connection.
    pub(crate) uses: u64,
}

impl H1Conn {
    pub(crate) fn new(stream: UpStream) -> Self {
        H1Conn {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: Vec::new(),
            uses: 0,
        }
    }

    /// False when the peer closed (or sent something unasked) while the connection was idle.
    /// Costs no syscall unless the socket became readable since the last read.
    pub(crate) fn is_reusable(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let tcp = self.stream.tcp();
        let mut cx = Context::from_waker(Waker::noop());
        match tcp.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            // TLS: readable may be a session ticket or close_notify that only rustls can read;
            // a stale connection is then caught by the resend-on-stale path.
            Poll::Ready(Ok(())) if matches!(self.stream, UpStream::Tls(_)) => true,
            Poll::Ready(Ok(())) => {
                let mut b = [0u8; 1];
                matches!(tcp.try_read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            Poll::Ready(Err(_)) => false,
        }
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        let fut = tokio::io::AsyncReadExt::read_buf(&mut self.stream, &mut self.buf);
        let mut fut = std::pin::pin!(fut);
        fut.as_mut().poll(cx)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }
}

/// Writes the request line and headers of `head` into `out`, with the framing header the body
/// needs. Returns whether the body must be chunk-encoded.
pub(crate) fn encode_head(head: &http::request::Parts, body: &ReqBody, out: &mut Vec<u8>) -> bool {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        head.uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(h) = head.headers.get(header::HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in &head.headers {
        if name == header::HOST {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let has_cl = head.headers.contains_key(header::CONTENT_LENGTH);
    let mut chunked = false;
    if body.is_end_stream() {
        if !has_cl && matches!(head.method, Method::POST | Method::PUT | Method::PATCH) {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
    } else if !has_cl {
        match body.size_hint().exact() {
            Some(n) => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(n.to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                chunked = true;
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    chunked
}

fn proto_err(why: impl Into<BoxError>, retry: RetryType) -> HttpError {
    HttpError::new(ErrorKind::UpstreamProtocol)
        .retry(retry)
        .because(why)
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(u64),
    Chunked(ChunkState),
    Eof,
}

#[derive(Debug, Clone, Copy)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// Result of [`send`]: on failure, whether the request may be sent again on a fresh connection
/// (nothing of the response arrived on a reused connection and the request is replayable).
pub(crate) enum SendError {
    /// With the request bytes, for sending them again.
    Stale(HttpError, Vec<u8>),
    Failed(HttpError),
}

/// Sends a request whose encoded form (`wire`) already holds any buffered body, or streams
/// `body` after it, and reads the response head.
pub(crate) async fn send(
    mut conn: H1Conn,
    wire: Vec<u8>,
    body: ReqBody,
    chunked: bool,
    head_only: bool,
    done: Done,
    pool: crate::upstream::PoolReturn,
) -> Result<Response<H1Body>, SendError> {
    let reused = conn.uses > 0;
    conn.uses += 1;
    let stale = |e: HttpError, conn: &mut H1Conn| {
        if reused {
            SendError::Stale(e, std::mem::take(&mut conn.wbuf))
        } else {
            SendError::Failed(e)
        }
    };
    let written = conn.stream.write_all(&wire).await;
    conn.wbuf = wire;
    if let Err(e) = written {
        return Err(stale(proto_err(e, RetryType::Safe), &mut conn));
    }
    match body {
        ReqBody::Empty | ReqBody::Full(_) => {}
        mut streaming => {
            // The head is out: from here on nothing is replayable.
            while let Some(frame) =
                std::future::poll_fn(|cx| Pin::new(&mut streaming).poll_frame(cx)).await
            {
                let frame = frame.map_err(|e| {
                    SendError::Failed(HttpError::new(ErrorKind::BadRequest).because(e))
                })?;
                if let Ok(data) = frame.into_data() {
                    if data.is_empty() {
                        continue;
                    }
                    let r = if chunked {
                        let mut v = format!("{:x}\r\n", data.len()).into_bytes();
                        v.extend_from_slice(&data);
                        v.extend_from_slice(b"\r\n");
                        conn.stream.write_all(&v).await
                    } else {
                        conn.stream.write_all(&data).await
                    };
                    r.map_err(|e| SendError::Failed(proto_err(e, RetryType::Policy)))?;
                }
            }
            if chunked {
                conn.stream
                    .write_all(b"0\r\n\r\n")
                    .await
                    .map_err(|e| SendError::Failed(proto_err(e, RetryType::Policy)))?;
            }
        }
    }
    // Response head (skipping 1xx informational responses other than 101).
    loop {
        match parse_response(&mut conn, head_only)? {
            Parsed::Response(parts, framing, keep_alive) => {
                let mut body = H1Body {
                    conn: Some(conn),
                    framing,
                    keep_alive,
                    ready: None,
                    done: Some(done),
                    pool: Some(pool),
                };
                body.take_buffered();
                return Ok(Response::from_parts(parts, body));
            }
            Parsed::Informational => continue,
            Parsed::Partial => {}
        }
        if conn.buf.len() > MAX_HEAD {
            return Err(SendError::Failed(proto_err(
                "response head too large",
                RetryType::Policy,
            )));
        }
        match conn.fill().await {
            Ok(0) if conn.buf.is_empty() => {
                return Err(stale(
                    proto_err("connection closed before the response", RetryType::Policy),
                    &mut conn,
                ));
            }
            Ok(0) => {
                return Err(SendError::Failed(proto_err(
                    "connection closed in the response head",
                    RetryType::Policy,
                )));
            }
            Ok(_) => {}
            Err(e) => {
                let empty = conn.buf.is_empty();
                let e = proto_err(e, RetryType::Policy);
                return Err(if empty {
                    stale(e, &mut conn)
                } else {
                    SendError::Failed(e)
                });
            }
        }
    }
}

enum Parsed {
    Response(http::response::Parts, Framing, bool),
    Informational,
    Partial,
}

/// Parses a response head at the start of `conn.buf` (not async: the header array lives on
/// the stack, never in the request's future).
fn parse_response(conn: &mut H1Conn, head_only: bool) -> Result<Parsed, SendError> {
    let fail = |e: BoxError| SendError::Failed(proto_err(e, RetryType::Policy));
    // Uninitialized header slots: no 4 KiB memset per response.
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, &conn.buf, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(fail(e.into())),
    };
    let code = resp.code.unwrap_or(0);
    let version = resp.version.unwrap_or(1);
    let base = conn.buf.as_ptr() as usize;
    let mut offs: smallvec::SmallVec<[(HeaderName, usize, usize); 32]> = smallvec::SmallVec::new();
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| fail(e.into()))?;
        let start = h.value.as_ptr() as usize - base;
        offs.push((name, start, start + h.value.len()));
    }
    let head_bytes = conn.buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|e| fail(e.into()))?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Parsed::Informational);
    }
    let mut headers = HeaderMap::with_capacity(offs.len());
    for (name, s, e) in offs {
        let v =
            HeaderValue::from_maybe_shared(head_bytes.slice(s..e)).map_err(|e| fail(e.into()))?;
        headers.append(name, v);
    }
    let keep_alive = keep_alive(version, &headers);
    let framing = if head_only
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status.is_informational()
    {
        Framing::Length(0)
    } else if let Some(te) = headers.get(header::TRANSFER_ENCODING) {
        // RFC 9112 6.3: chunked must be the final coding; otherwise read until close.
        let last = te.as_bytes().rsplit(|&b| b == b',').next().unwrap_or(b"");
        if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked(ChunkState::Size)
        } else {
            Framing::Eof
        }
    } else if let Some(cl) = headers.get(header::CONTENT_LENGTH) {
        let n = std::str::from_utf8(cl.as_bytes())
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| fail("invalid content-length".into()))?;
        Framing::Length(n)
    } else {
        Framing::Eof
    };
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = status;
    parts.version = if version == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    parts.headers = headers;
    let keep_alive = keep_alive && !matches!(framing, Framing::Eof);
    Ok(Parsed::Response(parts, framing, keep_alive))
}

fn keep_alive(version: u8, h: &HeaderMap) -> bool {
    let mut ka = version == 1;
    for v in h.get_all(header::CONNECTION) {
        for t in v.as_bytes().split(|&b| b == b',') {
            let t = t.trim_ascii();
            if t.eq_ignore_ascii_case(b"close") {
                return false;
            }
            if t.eq_ignore_ascii_case(b"keep-alive") {
                ka = true;
            }
        }
    }
    ka
}

/// A streamed HTTP/1.1 response body that hands its connection back when complete.
pub struct H1Body {
    conn: Option<H1Conn>,
    framing: Framing,
    keep_alive: bool,
    /// A whole `Content-Length` body that arrived with the head.
    ready: Option<Bytes>,
    /// Releases the endpoint's request count.
    done: Option<Done>,
    /// Pool to return the connection to: endpoint address and idle limit.
    pool: Option<crate::upstream::PoolReturn>,
}

impl std::fmt::Debug for H1Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Body")
            .field("framing", &self.framing)
            .finish()
    }
}

impl H1Body {
    /// Fast path: the whole body is already buffered; release the connection now.
    fn take_buffered(&mut self) {
        if let Framing::Length(n) = self.framing
            && let Some(conn) = &mut self.conn
            && (conn.buf.len() as u64) >= n
        {
            if n > 0 {
                self.ready = Some(conn.buf.split_to(n as usize).freeze());
            }
            self.framing = Framing::Length(0);
            self.finish(true);
        }
    }

    fn finish(&mut self, complete: bool) {
        if let Some(conn) = self.conn.take()
            && complete
            && self.keep_alive
            && conn.buf.is_empty()
            && let Some(to) = self.pool.take()
        {
            crate::upstream::checkin_h1(to, conn);
        }
        self.done = None;
    }

    fn poll_chunked(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Framing::Chunked(state) = self.framing else {
                return Poll::Ready(None);
            };
            let conn = self.conn.as_mut().ok_or("body already finished")?;
            let buf = &mut conn.buf;
            let need_more = match state {
                ChunkState::Size => match find_crlf(buf) {
                    Some(i) => {
                        let line = buf.split_to(i + 2);
                        let hex = line[..i].split(|&b| b == b';').next().unwrap_or(b"");
                        let size = std::str::from_utf8(hex)
                            .ok()
                            .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                            .ok_or("invalid chunk size")?;
                        self.framing = Framing::Chunked(if size == 0 {
                            ChunkState::Trailers
                        } else {
                            ChunkState::Data(size)
                        });
                        false
                    }
                    None => true,
                },
                ChunkState::Data(n) => {
                    if buf.is_empty() {
                        true
                    } else {
                        let take = (buf.len() as u64).min(n) as usize;
                        let data = buf.split_to(take).freeze();
                        let left = n - take as u64;
                        self.framing = Framing::Chunked(if left == 0 {
                            ChunkState::DataEnd
                        } else {
                            ChunkState::Data(left)
                        });
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                ChunkState::DataEnd => {
                    if buf.len() >= 2 {
                        if &buf[..2] != b"\r\n" {
                            return Poll::Ready(Some(Err("invalid chunk end".into())));
                        }
                        buf.advance(2);
                        self.framing = Framing::Chunked(ChunkState::Size);
                        false
                    } else {
                        true
                    }
                }
                ChunkState::Trailers => match find_crlf(buf) {
                    Some(0) => {
                        buf.advance(2);
                        self.framing = Framing::Length(0);
                        self.finish(true);
                        return Poll::Ready(None);
                    }
                    Some(i) => {
                        buf.advance(i + 2);
                        false
                    }
                    None => true,
                },
            };
            if need_more {
                let conn = self.conn.as_mut().ok_or("body already finished")?;
                match ready!(conn.poll_fill(cx)) {
                    Ok(0) => return Poll::Ready(Some(Err("upstream closed mid-body".into()))),
                    Ok(_) => {}
                    Err(e) => return Poll::Ready(Some(Err(e.into()))),
                }
            }
        }
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

impl Drop for H1Body {
    fn drop(&mut self) {
        if self.done.is_some() {
            // Not read to the end: the connection is closed, not reused.
            self.conn = None;
            self.done = None;
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(b) = this.ready.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        match this.framing {
            Framing::Length(0) => {
                if this.conn.is_some() {
                    this.finish(true);
                }
                Poll::Ready(None)
            }
            Framing::Length(n) => {
                let Some(conn) = this.conn.as_mut() else {
                    return Poll::Ready(None);
                };
                if conn.buf.is_empty() {
                    match ready!(conn.poll_fill(cx)) {
                        Ok(0) => {
                            this.finish(false);
                            return Poll::Ready(Some(Err("upstream closed mid-body".into())));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            this.finish(false);
                            return Poll::Ready(Some(Err(e.into())));
                        }
                    }
                }
                let take = (conn.buf.len() as u64).min(n) as usize;
                let data = conn.buf.split_to(take).freeze();
                this.framing = Framing::Length(n - take as u64);
                if n == take as u64 {
                    this.finish(true);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Framing::Eof => {
                let Some(conn) = this.conn.as_mut() else {
                    return Poll::Ready(None);
                };
                if conn.buf.is_empty() {
                    match ready!(conn.poll_fill(cx)) {
                        Ok(0) => {
                            this.finish(true);
                            return Poll::Ready(None);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            this.finish(false);
                            return Poll::Ready(Some(Err(e.into())));
                        }
                    }
                }
                let data = conn.buf.split().freeze();
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Framing::Chunked(_) => {
                let r = ready!(this.poll_chunked(cx));
                if matches!(r, Some(Err(_))) {
                    this.finish(false);
                }
                Poll::Ready(r)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_none() && matches!(self.framing, Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match (self.framing, &self.ready) {
            (_, Some(b)) => SizeHint::with_exact(b.len() as u64),
            (Framing::Length(n), None) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
