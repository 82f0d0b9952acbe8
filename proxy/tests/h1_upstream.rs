//! The HTTP/1.1 upstream client through the proxy: chunked, large, close-delimited and empty
//! bodies, HEAD, 1xx responses, upstreams that close idle connections, streamed request bodies.

mod common;
use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, StreamBody};
use sluice_proxy::test_util::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(b.into()).boxed()
}

/// A hyper upstream with a few fixed answers; other paths answer "<length> <byte sum>" of
/// the request body.
async fn upstream() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let resp = match req.uri().path() {
                            "/chunked" => {
                                let frames = ["one,", "two,", "three"].into_iter().map(|c| {
                                    Ok::<_, std::convert::Infallible>(http_body::Frame::data(
                                        Bytes::from(c),
                                    ))
                                });
                                http::Response::new(
                                    StreamBody::new(futures::stream::iter(frames)).boxed(),
                                )
                            }
                            "/big" => http::Response::new(full(vec![b'x'; 1 << 20])),
                            "/head" => http::Response::new(full(vec![b'h'; 100])),
                            "/204" => {
                                let mut r = http::Response::new(full(Bytes::new()));
                                *r.status_mut() = http::StatusCode::NO_CONTENT;
                                r
                            }
                            _ => {
                                let b = req.into_body().collect().await.unwrap().to_bytes();
                                let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
                                http::Response::new(full(format!("{} {}", b.len(), sum)))
                            }
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// A raw upstream that reads one request head per connection and writes `answer`, then closes.
async fn raw_upstream(answer: &'static [u8]) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s.write_all(answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

async fn proxy_to(addr: std::net::SocketAddr) -> (sluice_proxy::Proxy, u16) {
    let port = free_port();
    let s = snapshot(
        vec![http_listener(
            port,
            vec![vhost("*", vec![route("r").backend("c", 1).build()])],
        )],
        vec![cluster("c", &[addr])],
    );
    (start(s).await, port)
}

#[tokio::test]
async fn response_bodies_of_every_framing() {
    let (_p, port) = proxy_to(upstream().await).await;
    let c = client();
    for _ in 0..3 {
        let r = get(&c, port, "h", "/chunked").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "one,two,three");
        let r = get(&c, port, "h", "/big").await;
        assert_eq!(r.body.len(), 1 << 20);
        assert!(r.body.iter().all(|&b| b == b'x'));
        let r = send(&c, "HEAD", port, "h", "/head", &[], "").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), Some("100"));
        assert!(r.body.is_empty());
        let r = get(&c, port, "h", "/204").await;
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
    }
}

#[tokio::test]
async fn request_bodies_buffered_and_streamed() {
    let (_p, port) = proxy_to(upstream().await).await;
    let c = client();
    let body = "a".repeat(300_000);
    let r = send(&c, "POST", port, "h", "/sum", &[], &body).await;
    assert_eq!(r.text(), format!("300000 {}", 300_000 * u64::from(b'a')));
    let r = send(&c, "POST", port, "h", "/sum", &[], "").await;
    assert_eq!(r.text(), "0 0");
    // Unknown length (chunked from the client): streamed upstream chunk-encoded.
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        let data = "b".repeat(100_000);
        curl(&[
            "-s",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &data,
            &format!("http://127.0.0.1:{port}/sum"),
        ])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(out, format!("100000 {}", 100_000 * u64::from(b'b')));
}

#[tokio::test]
async fn close_delimited_and_informational_responses() {
    let (_p, port) =
        proxy_to(raw_upstream(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end").await)
            .await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(get(&c, port, "h", "/").await.text(), "until the end");
    }
    let (_p2, port) = proxy_to(
        raw_upstream(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        )
        .await,
    )
    .await;
    assert_eq!(get(&c, port, "h", "/").await.text(), "ok");
    let (_p3, port) =
        proxy_to(raw_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort").await).await;
    let req = http::Request::get(format!("http://127.0.0.1:{port}/"))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    // The body is cut short: the client sees an error, never a complete wrong body.
    let res = tokio::time::timeout(Duration::from_secs(5), c.request(req))
        .await
        .unwrap();
    if let Ok(r) = res {
        assert!(r.into_body().collect().await.is_err());
    }
    let (_p4, port) = proxy_to(raw_upstream(b"garbage\r\n\r\n").await).await;
    assert_eq!(get(&c, port, "h", "/").await.status, 502);
}

#[tokio::test]
async fn upstream_closing_idle_connections_is_invisible() {
    // Every connection serves one response (keep-alive advertised) and is then closed.
    let addr = raw_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh").await;
    let (_p, port) = proxy_to(addr).await;
    let c = client();
    for i in 0..50 {
        let r = get(&c, port, "h", "/").await;
        assert_eq!(
            (r.status.as_u16(), r.text().as_str()),
            (200, "fresh"),
            "request {i}"
        );
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test]
async fn idle_connections_closed_by_upstreams_are_swept() {
    // The upstream closes every connection after its response; the pooled socket must not
    // linger in CLOSE_WAIT until the next request happens to pick it.
    let addr = raw_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let port = free_port();
    let s = snapshot(
        vec![http_listener(
            port,
            vec![vhost("*", vec![route("r").backend("c", 1).build()])],
        )],
        vec![cluster("c", &[addr])],
    );
    let p = sluice_proxy::Proxy::start(sluice_proxy::ProxyOptions {
        workers: 1,
        pool_sweep_interval: Duration::from_millis(50),
        ..Default::default()
    })
    .unwrap();
    assert!(p.apply(s).await.applied);
    let c = client();
    assert_eq!(get(&c, port, "h", "/").await.text(), "ok");
    let close_wait = || {
        std::process::Command::new("ss")
            .args(["-tn", "state", "close-wait", &format!("dst = {addr}")])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().skip(1).count())
    };
    let Ok(_) = close_wait() else {
        eprintln!("SKIPPED: `ss` (iproute2) is not installed");
        return;
    };
    let mut lingering = usize::MAX;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        lingering = close_wait().unwrap();
        if lingering == 0 {
            break;
        }
    }
    assert_eq!(lingering, 0, "pooled connections left in CLOSE_WAIT");
}
