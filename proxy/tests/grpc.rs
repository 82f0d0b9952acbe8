//! gRPC through the proxy with tonic on both sides (HTTP/2 to the client, h2c upstream):
//! unary, server-streaming, client-streaming and bidirectional calls, status and metadata in
//! trailers, request trailers, UNAVAILABLE (14) without a backend, and the client's
//! `grpc-timeout` enforced as DEADLINE_EXCEEDED (4).

mod common;
use bytes::Bytes;
use common::*;
use futures::{Stream, StreamExt};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_ir::*;
use sluice_proxy::test_util::*;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status, Streaming};

#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(uint32, tag = "2")]
    n: u32,
}

fn msg(text: &str, n: u32) -> Msg {
    Msg {
        text: text.into(),
        n,
    }
}

type BoxFut<T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send>>;
type BoxStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

/// Unary: upper-cases the text; `n` > 0 sleeps that many milliseconds first.
struct Unary;
impl tonic::server::UnaryService<Msg> for Unary {
    type Response = Msg;
    type Future = BoxFut<Response<Msg>>;
    fn call(&mut self, r: Request<Msg>) -> Self::Future {
        Box::pin(async move {
            let m = r.into_inner();
            tokio::time::sleep(Duration::from_millis(m.n.into())).await;
            Ok(Response::new(msg(&m.text.to_uppercase(), m.n)))
        })
    }
}

/// Server streaming: `n` messages, then (text "fail") an error with trailing metadata.
struct Count;
impl tonic::server::ServerStreamingService<Msg> for Count {
    type Response = Msg;
    type ResponseStream = BoxStream;
    type Future = BoxFut<Response<BoxStream>>;
    fn call(&mut self, r: Request<Msg>) -> Self::Future {
        Box::pin(async move {
            let m = r.into_inner();
            let mut items: Vec<Result<Msg, Status>> =
                (0..m.n).map(|i| Ok(msg(&m.text, i))).collect();
            if m.text == "fail" {
                let mut md = tonic::metadata::MetadataMap::new();
                md.insert("x-why", "asked-for-it".parse().unwrap());
                items.push(Err(Status::with_metadata(
                    tonic::Code::ResourceExhausted,
                    "no more",
                    md,
                )));
            }
            Ok(Response::new(
                Box::pin(futures::stream::iter(items)) as BoxStream
            ))
        })
    }
}

/// Client streaming: the sum of `n` and the concatenated texts.
struct Sum;
impl tonic::server::ClientStreamingService<Msg> for Sum {
    type Response = Msg;
    type Future = BoxFut<Response<Msg>>;
    fn call(&mut self, r: Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let mut s = r.into_inner();
            let (mut text, mut n) = (String::new(), 0);
            while let Some(m) = s.message().await? {
                text.push_str(&m.text);
                n += m.n;
            }
            Ok(Response::new(msg(&text, n)))
        })
    }
}

/// Bidirectional: every message comes back with `n` doubled.
struct Bidi;
impl tonic::server::StreamingService<Msg> for Bidi {
    type Response = Msg;
    type ResponseStream = BoxStream;
    type Future = BoxFut<Response<BoxStream>>;
    fn call(&mut self, r: Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let s = r.into_inner();
            let out = s.map(|m| m.map(|m| msg(&m.text, m.n * 2)));
            Ok(Response::new(Box::pin(out) as BoxStream))
        })
    }
}

async fn serve(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<tonic::body::Body>, std::convert::Infallible> {
    let codec = || tonic_prost::ProstCodec::<Msg, Msg>::default();
    Ok(match req.uri().path() {
        "/test.Echo/Unary" => tonic::server::Grpc::new(codec()).unary(Unary, req).await,
        "/test.Echo/Count" => {
            tonic::server::Grpc::new(codec())
                .server_streaming(Count, req)
                .await
        }
        "/test.Echo/Sum" => {
            tonic::server::Grpc::new(codec())
                .client_streaming(Sum, req)
                .await
        }
        "/test.Echo/Bidi" => tonic::server::Grpc::new(codec()).streaming(Bidi, req).await,
        "/test.Echo/RequestTrailers" => {
            // Reports the request's trailers in a response header.
            let collected = req.into_body().collect().await.unwrap();
            let t = collected
                .trailers()
                .and_then(|t| t.get("x-request-trailer"))
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_else(|| "none".into());
            let mut resp = http::Response::new(tonic::body::Body::empty());
            resp.headers_mut()
                .insert("x-seen-trailer", t.parse().unwrap());
            resp
        }
        p => Status::unimplemented(format!("no method {p}")).into_http(),
    })
}

/// A gRPC server speaking HTTP/2 prior knowledge (h2c).
async fn grpc_server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), hyper::service::service_fn(serve))
                    .await;
            });
        }
    });
    addr
}

async fn grpc_client(port: u16) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .origin(http::Uri::from_str("http://grpc.example.com").unwrap())
        .connect()
        .await
        .expect("connect to the proxy");
    let mut c = tonic::client::Grpc::new(channel);
    c.ready().await.unwrap();
    c
}

fn path(m: &str) -> http::uri::PathAndQuery {
    http::uri::PathAndQuery::from_str(&format!("/test.Echo/{m}")).unwrap()
}

fn codec() -> tonic_prost::ProstCodec<Msg, Msg> {
    tonic_prost::ProstCodec::default()
}

#[tokio::test]
async fn grpc_calls_trailers_and_status_through_the_proxy() {
    let up = grpc_server().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let port = free_port();
    let mut g = cluster("grpc", &[up]);
    g.protocol = UpstreamProtocol::H2c;
    let mut gone = cluster("gone", &[dead]);
    gone.protocol = UpstreamProtocol::H2c;
    let routes = vec![
        route("down")
            .prefix("/test.Down")
            .backend("gone", 1)
            .grpc()
            .build(),
        route("none")
            .prefix("/test.None")
            .backend("empty", 1)
            .grpc()
            .build(),
        route("echo")
            .prefix("/test.Echo")
            .backend("grpc", 1)
            .grpc()
            .build(),
    ];
    let _p = start(snapshot(
        vec![http_listener(port, vec![vhost("grpc.example.com", routes)])],
        vec![g, gone, cluster("empty", &[])],
    ))
    .await;
    let mut c = grpc_client(port).await;

    // Unary.
    let r = c
        .unary(Request::new(msg("hello", 0)), path("Unary"), codec())
        .await
        .expect("unary call");
    assert_eq!(r.into_inner(), msg("HELLO", 0));

    // Server streaming: messages, then OK in trailers (tonic fails without them).
    c.ready().await.unwrap();
    let mut s = c
        .server_streaming(Request::new(msg("tick", 5)), path("Count"), codec())
        .await
        .expect("server streaming call")
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = s.message().await.expect("stream ends with OK") {
        got.push(m.n);
    }
    assert_eq!(got, vec![0, 1, 2, 3, 4]);

    // An error status and its metadata after data: carried in the trailers.
    c.ready().await.unwrap();
    let mut s = c
        .server_streaming(Request::new(msg("fail", 2)), path("Count"), codec())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.message().await.unwrap().unwrap().n, 0);
    assert_eq!(s.message().await.unwrap().unwrap().n, 1);
    let status = s.message().await.expect_err("error status in trailers");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), "no more");
    assert_eq!(status.metadata().get("x-why").unwrap(), "asked-for-it");

    // Client streaming.
    c.ready().await.unwrap();
    let input = futures::stream::iter(vec![msg("a", 1), msg("b", 2), msg("c", 3)]);
    let r = c
        .client_streaming(Request::new(input), path("Sum"), codec())
        .await
        .expect("client streaming call");
    assert_eq!(r.into_inner(), msg("abc", 6));

    // Bidirectional: each answer arrives before the next request is sent.
    c.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(4);
    let mut replies = c
        .streaming(
            Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            path("Bidi"),
            codec(),
        )
        .await
        .expect("bidi call")
        .into_inner();
    for i in 1..=4 {
        tx.send(msg("ping", i)).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .expect("reply before the next request")
            .unwrap()
            .unwrap();
        assert_eq!(m, msg("ping", i * 2));
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none(), "clean end");

    // No usable backend: trailers-only UNAVAILABLE.
    for svc in ["Down", "None"] {
        c.ready().await.unwrap();
        let p = http::uri::PathAndQuery::from_str(&format!("/test.{svc}/Unary")).unwrap();
        let e = c
            .unary(Request::new(msg("x", 0)), p, codec())
            .await
            .expect_err("no backend");
        assert_eq!(e.code(), tonic::Code::Unavailable, "{svc}: {e:?}");
    }

    // The client's deadline (grpc-timeout: 300m) is enforced by the proxy while the server
    // still works on the call (2 s): DEADLINE_EXCEEDED. (tonic's channel would time out by
    // itself, so the raw h2 client shows what the proxy answers.)
    let t0 = Instant::now();
    let (status, headers) = raw_grpc_call(port, "300m", &msg("slow", 2000)).await;
    assert_eq!(status, 200);
    assert_eq!(headers["grpc-status"], "4", "{headers:?}");
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    // A deadline long enough passes.
    c.ready().await.unwrap();
    let mut req = Request::new(msg("quick", 10));
    req.set_timeout(Duration::from_secs(5));
    assert_eq!(
        c.unary(req, path("Unary"), codec())
            .await
            .unwrap()
            .into_inner()
            .text,
        "QUICK"
    );
}

#[tokio::test]
async fn grpc_request_trailers_reach_the_upstream() {
    let up = grpc_server().await;
    let port = free_port();
    let mut g = cluster("grpc", &[up]);
    g.protocol = UpstreamProtocol::H2c;
    let _p = start(snapshot(
        vec![http_listener(
            port,
            vec![vhost(
                "*",
                vec![route("r").backend("grpc", 1).grpc().build()],
            )],
        )],
        vec![g],
    ))
    .await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (h2c, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut h2c = h2c.ready().await.unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri("http://grpc.example.com/test.Echo/RequestTrailers")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut body) = h2c.send_request(req, false).unwrap();
    body.send_data(Bytes::from_static(b"\0\0\0\0\0"), false)
        .unwrap();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-request-trailer", "carried".parse().unwrap());
    body.send_trailers(trailers).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.headers()["x-seen-trailer"], "carried");
}

/// A unary call with the h2 crate and a `grpc-timeout`; the response status and headers.
async fn raw_grpc_call(port: u16, timeout: &str, m: &Msg) -> (u16, http::HeaderMap) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (h2c, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut h2c = h2c.ready().await.unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri("http://grpc.example.com/test.Echo/Unary")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(())
        .unwrap();
    let payload = prost::Message::encode_to_vec(m);
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    let (resp, mut body) = h2c.send_request(req, false).unwrap();
    body.send_data(Bytes::from(frame), true).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .unwrap()
        .unwrap();
    (resp.status().as_u16(), resp.headers().clone())
}
