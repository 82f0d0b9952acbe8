//! Backends and upstreams through real sockets: weights, invalid and missing backends,
//! endpoint failures, timeouts, retries, forwarded headers, hop-by-hop headers, upgrades, gRPC
//! error answers, HTTP/2 upstreams.

mod common;
use common::*;
use sluice_ir::*;
use sluice_proxy::test_util::*;
use std::collections::HashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn one_route(r: HttpRoute, clusters: Vec<Cluster>) -> (sluice_proxy::Proxy, u16) {
    let port = free_port();
    let s = snapshot(
        vec![http_listener(port, vec![vhost("*", vec![r])])],
        clusters,
    );
    (start(s).await, port)
}

fn dead_addr() -> std::net::SocketAddr {
    // Bound then closed: connects are refused.
    std::net::SocketAddr::from(([127, 0, 0, 1], free_port()))
}

#[tokio::test]
async fn weights_split_within_bounds() {
    let a = echo("a").await;
    let b = echo("b").await;
    let z = echo("zero").await;
    let r = route("w")
        .backend("a", 90)
        .backend("b", 10)
        .backend("z", 0)
        .build();
    let (_p, port) = one_route(
        r,
        vec![
            cluster("a", &[a.addr]),
            cluster("b", &[b.addr]),
            cluster("z", &[z.addr]),
        ],
    )
    .await;
    let c = client();
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..1000 {
        *counts
            .entry(get(&c, port, "h", "/").await.echo().pod)
            .or_default() += 1;
    }
    let a = counts.get("a").copied().unwrap_or(0);
    assert!((850..=950).contains(&a), "{counts:?}");
    assert_eq!(counts.get("zero"), None, "{counts:?}");
    assert_eq!(a + counts.get("b").copied().unwrap_or(0), 1000);
}

#[tokio::test]
async fn invalid_or_missing_backends_are_500() {
    let a = echo("a").await;
    let port = free_port();
    let routes = vec![
        route("invalid")
            .prefix("/invalid")
            .invalid_backend(1)
            .build(),
        route("none").prefix("/none").build(),
        route("zero").prefix("/zero").backend("a", 0).build(),
        route("half")
            .prefix("/half")
            .backend("a", 1)
            .invalid_backend(1)
            .build(),
    ];
    let s = snapshot(
        vec![http_listener(port, vec![vhost("*", routes)])],
        vec![cluster("a", &[a.addr])],
    );
    let _p = start(s).await;
    let c = client();
    for p in ["/invalid", "/none", "/zero"] {
        assert_eq!(get(&c, port, "h", p).await.status, 500, "{p}");
    }
    let mut errors = 0;
    for _ in 0..400 {
        match get(&c, port, "h", "/half").await.status.as_u16() {
            500 => errors += 1,
            200 => {}
            s => panic!("status {s}"),
        }
    }
    assert!((150..=250).contains(&errors), "{errors} of 400 got 500");
}

#[tokio::test]
async fn no_endpoints_503_dead_endpoint_502() {
    let port = free_port();
    let mut not_ready = Endpoint::new(LOCALHOST, 1);
    not_ready.ready = false;
    not_ready.serving = false;
    let mut unready = cluster("unready", &[]);
    unready.endpoints = vec![not_ready];
    let routes = vec![
        route("empty").prefix("/empty").backend("empty", 1).build(),
        route("unready")
            .prefix("/unready")
            .backend("unready", 1)
            .build(),
        route("dead").prefix("/dead").backend("dead", 1).build(),
        route("grpc")
            .prefix("/grpc")
            .backend("empty", 1)
            .grpc()
            .build(),
    ];
    let s = snapshot(
        vec![http_listener(port, vec![vhost("*", routes)])],
        vec![
            cluster("empty", &[]),
            unready,
            cluster("dead", &[dead_addr()]),
        ],
    );
    let _p = start(s).await;
    let c = client();
    assert_eq!(get(&c, port, "h", "/empty").await.status, 503);
    assert_eq!(get(&c, port, "h", "/unready").await.status, 503);
    assert_eq!(get(&c, port, "h", "/dead").await.status, 502);
    // gRPC routes answer trailers-only with grpc-status 14 (UNAVAILABLE).
    let r = get(&c, port, "h", "/grpc").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status"), Some("14"));
    assert_eq!(r.header("content-type"), Some("application/grpc"));
}

#[tokio::test]
async fn terminating_endpoints_only_when_nothing_else_serves() {
    let live = echo("live").await;
    let term = echo("terminating").await;
    let port = free_port();
    let mut t = Endpoint::new(term.addr.ip(), term.addr.port());
    t.ready = false;
    t.terminating = true;
    let mut both = cluster("both", &[live.addr]);
    both.endpoints.push(t.clone());
    let mut only = cluster("only", &[]);
    only.endpoints = vec![t];
    let routes = vec![
        route("both").prefix("/both").backend("both", 1).build(),
        route("only").prefix("/only").backend("only", 1).build(),
    ];
    let s = snapshot(
        vec![http_listener(port, vec![vhost("*", routes)])],
        vec![both, only],
    );
    let _p = start(s).await;
    let c = client();
    for _ in 0..20 {
        assert_eq!(get(&c, port, "h", "/both").await.echo().pod, "live");
    }
    assert_eq!(get(&c, port, "h", "/only").await.echo().pod, "terminating");
}

#[tokio::test]
async fn request_and_backend_timeouts_are_504() {
    let e = echo("slow").await;
    let port = free_port();
    let routes = vec![
        route("req")
            .prefix("/req")
            .timeouts(Some(200), None)
            .backend("c", 1)
            .build(),
        route("be")
            .prefix("/be")
            .timeouts(None, Some(200))
            .backend("c", 1)
            .build(),
    ];
    let s = snapshot(
        vec![http_listener(port, vec![vhost("*", routes)])],
        vec![cluster("c", &[e.addr])],
    );
    let _p = start(s).await;
    let c = client();
    let slow = [("x-echo-delay-ms", "1000")];
    let t = std::time::Instant::now();
    assert_eq!(
        send(&c, "GET", port, "h", "/req", &slow, "").await.status,
        504
    );
    assert_eq!(
        send(&c, "GET", port, "h", "/be", &slow, "").await.status,
        504
    );
    assert!(
        t.elapsed() < std::time::Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        send(
            &c,
            "GET",
            port,
            "h",
            "/req",
            &[("x-echo-delay-ms", "10")],
            ""
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn retries_move_to_another_endpoint() {
    let live = echo("live").await;
    let port = free_port();
    let dead = dead_addr();
    let mut lb = cluster("c", &[live.addr, dead]);
    lb.load_balancer = LoadBalancer::RoundRobin;
    let mut lb2 = lb.clone();
    lb2.name = "d".into();
    let routes = vec![
        route("retry")
            .prefix("/retry")
            .retry(2, &[503], Some(1))
            .backend("c", 1)
            .build(),
        route("noretry").prefix("/noretry").backend("d", 1).build(),
    ];
    let s = snapshot(
        vec![http_listener(port, vec![vhost("*", routes)])],
        vec![lb, lb2],
    );
    let _p = start(s).await;
    let c = client();
    for _ in 0..20 {
        let r = send(&c, "POST", port, "h", "/retry", &[], "payload").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.echo().body, "payload");
    }
    let mut failed = 0;
    for _ in 0..20 {
        if get(&c, port, "h", "/noretry").await.status == 502 {
            failed += 1;
        }
    }
    assert!(failed > 0, "without a retry policy the dead endpoint shows");
}

#[tokio::test]
async fn retry_on_status_codes() {
    // The first attempt reaches a pod answering 503 (round robin), the retry the good pod.
    let good = echo("good").await;
    let bad_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bad_addr = bad_l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = bad_l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 3\r\n\r\nbad",
                        )
                        .await;
                }
            });
        }
    });
    let port = free_port();
    let mut c1 = cluster("c", &[good.addr, bad_addr]);
    c1.load_balancer = LoadBalancer::RoundRobin;
    let r = route("r").retry(1, &[503], Some(1)).backend("c", 1).build();
    let (_p, port) = {
        let s = snapshot(
            vec![http_listener(port, vec![vhost("*", vec![r])])],
            vec![c1],
        );
        (start(s).await, port)
    };
    let c = client();
    for _ in 0..10 {
        assert_eq!(get(&c, port, "h", "/").await.echo().pod, "good");
    }
}

#[tokio::test]
async fn forwarded_headers() {
    let e = echo("p").await;
    let (_p, port) = one_route(
        route("r").backend("c", 1).build(),
        vec![cluster("c", &[e.addr])],
    )
    .await;
    let c = client();
    let r = get(&c, port, "h", "/").await.echo();
    assert_eq!(r.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(r.header("x-forwarded-proto"), Some("http"));
    let r = send(
        &c,
        "GET",
        port,
        "h",
        "/",
        &[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
        ],
        "",
    )
    .await
    .echo();
    assert_eq!(r.header("x-forwarded-for"), Some("10.0.0.1, 127.0.0.1"));
    assert_eq!(r.header("x-forwarded-proto"), Some("http"));
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed() {
    let e = echo("p").await;
    let (_p, port) = one_route(
        route("r").backend("c", 1).build(),
        vec![cluster("c", &[e.addr])],
    )
    .await;
    // Raw HTTP/1.1 so that nothing in a client library touches the headers.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = "GET /hop HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, x-private\r\nX-Private: secret\r\n\
               Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers, deflate\r\n\
               Upgrade: foo/1\r\nX-Kept: yes\r\n\
               X-Echo-Set-Header: keep-alive:timeout=9,x-resp-private:1\r\n\r\n";
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let text = loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        let t = String::from_utf8_lossy(&buf).into_owned();
        if let Some(i) = t.find("\r\n\r\n")
            && let Some(cl) = t[..i].lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            })
            && buf.len() >= i + 4 + cl
        {
            break t;
        }
    };
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let echoed: Echoed = serde_json::from_str(body).unwrap();
    for h in [
        "connection",
        "x-private",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(
            !echoed.headers.contains_key(h),
            "{h} forwarded: {:?}",
            echoed.headers
        );
    }
    assert_eq!(echoed.header("te"), Some("trailers"));
    assert_eq!(echoed.header("x-kept"), Some("yes"));
    assert!(
        !head.to_ascii_lowercase().contains("keep-alive: timeout=9"),
        "{head}"
    );
}

#[tokio::test]
async fn websocket_upgrade_is_carried_both_ways() {
    let e = echo("ws").await;
    let (_p, port) = one_route(
        route("r").backend("c", 1).build(),
        vec![cluster("c", &[e.addr])],
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");
    for msg in ["hello", "world"] {
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(std::time::Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg.as_bytes());
    }
}

#[tokio::test]
async fn h2c_upstream_multiplexed() {
    let e = echo("h2").await;
    let mut cl = cluster("c", &[e.addr]);
    cl.protocol = UpstreamProtocol::H2c;
    let (_p, port) = one_route(route("r").backend("c", 1).build(), vec![cl]).await;
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            send(
                &c,
                "POST",
                port,
                "h2.example",
                &format!("/{i}"),
                &[],
                &format!("b{i}"),
            )
            .await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap().echo();
        assert_eq!(r.protocol, "HTTP/2.0");
        assert_eq!(r.path, format!("/{i}"));
        assert_eq!(r.host, "h2.example");
        assert_eq!(r.body, format!("b{i}"));
    }
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let e = echo("p").await;
    let (_p, port) = one_route(
        route("r").backend("c", 1).build(),
        vec![cluster("c", &[e.addr])],
    )
    .await;
    let c = client();
    for _ in 0..50 {
        assert_eq!(get(&c, port, "h", "/").await.status, 200);
    }
    // Connections to the echo server are counted by its accept loop through requests per
    // connection: with keep-alive, 50 sequential requests need at most one connection per worker.
    let (ok, out, _) = tokio::task::spawn_blocking(move || {
        curl(&[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{num_connects}",
            &format!("http://127.0.0.1:{port}/"),
        ])
    })
    .await
    .unwrap();
    assert!(ok);
    assert_eq!(out, "1");
    let conns = std::process::Command::new("ss")
        .args(["-tn", "state", "established", &format!("dst = {}", e.addr)])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().skip(1).count());
    if let Ok(n) = conns {
        assert!(
            (1..=2).contains(&n),
            "{n} upstream connections for 51 requests"
        );
    }
}

#[tokio::test]
async fn grpc_trailers_pass_through_h2c() {
    // An HTTP/2 upstream answering like a gRPC server: data, then grpc-status in trailers.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        use http_body_util::BodyExt;
                        let te = req.headers().get("te").cloned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        trailers.insert(
                            "x-te-seen",
                            te.unwrap_or(http::HeaderValue::from_static("none")),
                        );
                        let frames = vec![
                            Ok::<_, std::convert::Infallible>(http_body::Frame::data(body)),
                            Ok(http_body::Frame::trailers(trailers)),
                        ];
                        let mut resp = http::Response::new(http_body_util::StreamBody::new(
                            futures::stream::iter(frames),
                        ));
                        resp.headers_mut().insert(
                            "content-type",
                            http::HeaderValue::from_static("application/grpc"),
                        );
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
            });
        }
    });
    let mut cl = cluster("grpc", &[addr]);
    cl.protocol = UpstreamProtocol::H2c;
    let (_p, port) = one_route(route("g").grpc().backend("grpc", 1).build(), vec![cl]).await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (h2c, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut h2c = h2c.ready().await.unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri("http://grpc.example/pkg.Svc/Method")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut send) = h2c.send_request(req, false).unwrap();
    send.send_data(bytes::Bytes::from_static(b"\0\0\0\0\x02hi"), true)
        .unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    assert_eq!(data, b"\0\0\0\0\x02hi");
    let trailers = body.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-te-seen"], "trailers");
}
