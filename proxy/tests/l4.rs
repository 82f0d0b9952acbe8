//! L4 routes on real sockets: TCPRoute (weights, half-close, connect errors, reloads),
//! UDPRoute (weights per flow, stickiness, idle timeout, reloads), TLSRoute passthrough (the
//! backend's own certificate reaches the client) and terminate (plain bytes to the backend),
//! and HTTPS listeners that pass some SNI names through and terminate the rest.

mod common;
use common::*;
use sluice_ir::*;
use sluice_proxy::test_util::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn rid(kind: &str, name: &str) -> RouteId {
    RouteId {
        route: ObjectRef::new(kind, "default", name),
        rule: 0,
        matcher: 0,
        rule_name: None,
    }
}

fn wb(cluster: &str, weight: u32) -> WeightedBackend {
    WeightedBackend {
        weight,
        cluster: Some(cluster.into()),
        filters: vec![],
    }
}

fn l4_listener(
    proto: ListenerProtocol,
    port: u16,
    backends: Vec<WeightedBackend>,
    idle_ms: Option<u64>,
) -> Listener {
    let mut l = Listener::new(LOCALHOST, port, proto);
    l.l4_routes = vec![L4Route {
        id: rid(
            if proto == ListenerProtocol::Udp {
                "UDPRoute"
            } else {
                "TCPRoute"
            },
            "r",
        ),
        backends,
        idle_timeout_ms: idle_ms,
    }];
    l
}

fn tls_route(
    name: &str,
    hosts: &[&str],
    mode: TlsMode,
    backends: Vec<WeightedBackend>,
) -> TlsRoute {
    TlsRoute {
        id: rid("TLSRoute", name),
        hostnames: hosts.iter().map(|s| s.to_string()).collect(),
        mode,
        backends,
    }
}

fn tcp_cluster(name: &str, addrs: &[SocketAddr]) -> Cluster {
    let mut c = cluster(name, addrs);
    c.protocol = UpstreamProtocol::Tcp;
    c
}

async fn tcp_exchange(port: u16, msg: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(msg.as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();
    read_all(&mut s).await
}

#[tokio::test]
async fn tcp_route_weights_half_close_and_reload() {
    let a = tcp_echo("A").await;
    let b = tcp_echo("B").await;
    let port = free_port();
    let snap = |wa: u32, wb_: u32, with_a: bool| {
        let mut clusters = vec![tcp_cluster("b", &[b])];
        if with_a {
            clusters.push(tcp_cluster("a", &[a]));
        }
        let mut backends = vec![wb("b", wb_)];
        if with_a {
            backends.insert(0, wb("a", wa));
        }
        snapshot(
            vec![l4_listener(ListenerProtocol::Tcp, port, backends, None)],
            clusters,
        )
    };
    let p = start(snap(3, 1, true)).await;

    // Half-close: the client shuts its write side and still reads the backend's answer.
    let out = tcp_exchange(port, "hello").await;
    assert!(
        out == "A:helloA:bye" || out == "B:helloB:bye",
        "unexpected answer {out:?}"
    );

    // Weights 3:1 per connection over 400 connections: mean 300 for A, sd ~8.7.
    let mut counts: HashMap<String, u32> = HashMap::new();
    for chunk in 0..8 {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..50 {
            set.spawn(tcp_exchange(
                port,
                if (chunk + i) % 2 == 0 { "x" } else { "y" },
            ));
        }
        while let Some(r) = set.join_next().await {
            let out = r.unwrap();
            *counts.entry(out[..1].to_string()).or_default() += 1;
        }
    }
    let na = counts.get("A").copied().unwrap_or(0);
    let nb = counts.get("B").copied().unwrap_or(0);
    assert_eq!(na + nb, 400, "{counts:?}");
    assert!((255..=345).contains(&na), "3:1 weights gave {counts:?}");

    // A connection open across a reload stays on its backend; new ones follow the new routes.
    let mut open = None;
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(b"1").await.unwrap();
        if read_some(&mut s).await == "A:1" {
            open = Some(s);
            break;
        }
    }
    let mut s = open.expect("a connection on A");
    let mut next = snap(0, 1, false);
    next.version = 2;
    let rep = p.apply(next).await;
    assert!(rep.applied && rep.listener_errors.is_empty(), "{rep:?}");
    for _ in 0..20 {
        assert!(tcp_exchange(port, "n").await.starts_with("B:n"));
    }
    s.write_all(b"2").await.unwrap();
    assert_eq!(
        read_some(&mut s).await,
        "A:2",
        "the open stream kept its backend"
    );
    s.shutdown().await.unwrap();
    assert_eq!(read_all(&mut s).await, "A:bye");
}

#[tokio::test]
async fn tcp_route_failures_close_the_client() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let live = tcp_echo("L").await;
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let mut invalid = l4_listener(ListenerProtocol::Tcp, p2, vec![], None);
    invalid.l4_routes[0].backends = vec![WeightedBackend {
        weight: 1,
        cluster: None,
        filters: vec![],
    }];
    let s = snapshot(
        vec![
            l4_listener(ListenerProtocol::Tcp, p1, vec![wb("dead", 1)], None),
            invalid,
            // Two endpoints, one refusing: the second is tried.
            l4_listener(ListenerProtocol::Tcp, p3, vec![wb("mixed", 1)], None),
        ],
        vec![
            tcp_cluster("dead", &[dead]),
            tcp_cluster("mixed", &[dead, live]),
        ],
    );
    let _p = start(s).await;
    for port in [p1, p2] {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let _ = c.write_all(b"hi").await;
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("closed in time");
        assert!(matches!(r, Ok(0) | Err(_)), "port {port}: {r:?}");
    }
    for _ in 0..10 {
        assert_eq!(tcp_exchange(p3, "m").await, "L:mL:bye");
    }
}

async fn udp_ask(s: &tokio::net::UdpSocket, port: u16, msg: &str) -> String {
    s.send_to(msg.as_bytes(), ("127.0.0.1", port))
        .await
        .unwrap();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf))
        .await
        .expect("UDP answer in time")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

async fn udp_client() -> tokio::net::UdpSocket {
    tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

#[tokio::test]
async fn udp_route_flows_weights_idle_and_reload() {
    let a = udp_echo("A").await;
    let b = udp_echo("B").await;
    let port = free_port();
    let snap = |version: u64, wa: u32, with_a: bool, idle: u64| {
        let mut clusters = vec![cluster("b", &[b])];
        let mut backends = vec![wb("b", 1)];
        if with_a {
            clusters.push(cluster("a", &[a]));
            backends.insert(0, wb("a", wa));
        }
        for c in &mut clusters {
            c.protocol = UpstreamProtocol::Udp;
        }
        let mut s = snapshot(
            vec![l4_listener(
                ListenerProtocol::Udp,
                port,
                backends,
                Some(idle),
            )],
            clusters,
        );
        s.version = version;
        s
    };
    let p = start(snap(1, 3, true, 400)).await;
    assert_eq!(p.listeners().await, vec![format!("udp:127.0.0.1:{port}")]);

    // One flow: every datagram of a client goes to the same backend, from the same socket.
    let c = udp_client().await;
    let first = udp_ask(&c, port, "0").await;
    let (backend, src) = {
        let mut it = first.splitn(3, ':');
        (
            it.next().unwrap().to_string(),
            it.next().unwrap().to_string(),
        )
    };
    for i in 1..10 {
        let got = udp_ask(&c, port, &i.to_string()).await;
        assert_eq!(got, format!("{backend}:{src}:{i}"));
    }

    // Weights per flow: 200 clients, 3:1 -> mean 150 on A, sd ~6.1.
    let mut na = 0;
    for _ in 0..200 {
        let c = udp_client().await;
        if udp_ask(&c, port, "w").await.starts_with("A:") {
            na += 1;
        }
    }
    assert!((115..=185).contains(&na), "3:1 weights gave {na}/200 on A");

    // Idle timeout: after 400 ms without traffic the flow is gone; the next datagram opens a
    // new one (a new source port towards the backend).
    tokio::time::sleep(Duration::from_millis(900)).await;
    let again = udp_ask(&c, port, "late").await;
    let src2 = again.split(':').nth(1).unwrap().to_string();
    assert_ne!(
        src2, src,
        "flow expired: new upstream socket ({first} / {again})"
    );

    // Reload with A at weight 0 but still configured: a flow on A keeps it.
    let mut on_a = None;
    for _ in 0..100 {
        let c = udp_client().await;
        if udp_ask(&c, port, "p").await.starts_with("A:") {
            on_a = Some(c);
            break;
        }
    }
    let on_a = on_a.expect("a flow on A");
    let rep = p.apply(snap(2, 0, true, 60_000)).await;
    assert!(rep.applied && rep.listener_errors.is_empty(), "{rep:?}");
    assert!(udp_ask(&on_a, port, "kept").await.starts_with("A:"));
    for _ in 0..10 {
        let c = udp_client().await;
        assert!(udp_ask(&c, port, "new").await.starts_with("B:"));
    }
    // A removed from the configuration: the flow moves to B.
    let rep = p.apply(snap(3, 0, false, 60_000)).await;
    assert!(rep.applied, "{rep:?}");
    assert!(udp_ask(&on_a, port, "moved").await.starts_with("B:"));
}

/// A TLS backend with its own certificate: after the handshake it echoes like [`tcp_echo`].
async fn tls_backend(name: &str, cert: &Cert) -> SocketAddr {
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.key_der.clone()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der.clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let name = name.to_string();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let name = name.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(s).await {
                    echo_stream(tls, name).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn tls_listener_passthrough_and_terminate_by_sni() {
    let backend_cert = self_signed_cert(&["db.example.com", "other.example.com"]);
    let db = tls_backend("DB", &backend_cert).await;
    let plain = tcp_echo("PLAIN").await;
    let proxy_cert = self_signed_cert(&["www.example.com"]);
    let port = free_port();
    let mut l = Listener::new(LOCALHOST, port, ListenerProtocol::Tls);
    l.tls = Some(TlsTermination {
        certificates: vec![ir_cert(&proxy_cert, &["www.example.com"], "default/www")],
        ..Default::default()
    });
    l.tls_routes = vec![
        tls_route(
            "db",
            &["db.example.com"],
            TlsMode::Passthrough,
            vec![wb("db", 1)],
        ),
        tls_route(
            "www",
            &["www.example.com"],
            TlsMode::Terminate,
            vec![wb("plain", 1)],
        ),
    ];
    let _p = start(snapshot(
        vec![l],
        vec![tcp_cluster("db", &[db]), tcp_cluster("plain", &[plain])],
    ))
    .await;

    // Passthrough: the client completes its handshake with the backend's certificate.
    let (mut tls, leaf) = tls_connect(port, "db.example.com", &backend_cert, &[])
        .await
        .expect("handshake with the backend through the proxy");
    assert_eq!(
        leaf, backend_cert.der,
        "the backend's certificate reached the client"
    );
    tls.write_all(b"secret").await.unwrap();
    assert_eq!(read_some(&mut tls).await, "DB:secret");
    tls.shutdown().await.unwrap();
    assert_eq!(read_all(&mut tls).await, "DB:bye");

    // Terminate: the proxy's certificate, and the backend sees plain bytes.
    let (mut tls, leaf) = tls_connect(port, "www.example.com", &proxy_cert, &[])
        .await
        .expect("terminated handshake");
    assert_eq!(leaf, proxy_cert.der);
    tls.write_all(b"plain please").await.unwrap();
    assert_eq!(read_some(&mut tls).await, "PLAIN:plain please");

    // No route for the SNI: the connection is closed (the spec's behaviour).
    assert!(
        tls_connect(port, "other.example.com", &backend_cert, &[])
            .await
            .is_err()
    );
}

#[tokio::test]
async fn https_listener_passes_sni_through_and_terminates_the_rest() {
    let backend_cert = self_signed_cert(&["pass.example.com"]);
    let pass = tls_backend("PASS", &backend_cert).await;
    let e = echo("http").await;
    let proxy_cert = self_signed_cert(&["www.example.com"]);
    let (p1, p2) = (free_port(), free_port());
    let passthrough = tls_route(
        "pass",
        &["*.pass.example.com", "pass.example.com"],
        TlsMode::Passthrough,
        vec![wb("pass", 1)],
    );
    let mut with_certs = Listener::new(LOCALHOST, p1, ListenerProtocol::Https);
    with_certs.tls = Some(TlsTermination {
        certificates: vec![ir_cert(&proxy_cert, &[], "default/www")],
        ..Default::default()
    });
    with_certs.tls_routes = vec![passthrough.clone()];
    with_certs.virtual_hosts = vec![vhost("*", vec![route("r").backend("web", 1).build()])];
    // No certificate at all: only passthrough.
    let mut no_certs = Listener::new(LOCALHOST, p2, ListenerProtocol::Https);
    no_certs.tls_routes = vec![passthrough];
    let _p = start(snapshot(
        vec![with_certs, no_certs],
        vec![tcp_cluster("pass", &[pass]), cluster("web", &[e.addr])],
    ))
    .await;

    for port in [p1, p2] {
        let (mut tls, leaf) = tls_connect(port, "pass.example.com", &backend_cert, &[])
            .await
            .expect("passthrough handshake");
        assert_eq!(leaf, backend_cert.der);
        tls.write_all(b"x").await.unwrap();
        assert_eq!(read_some(&mut tls).await, "PASS:x");
    }
    // Another SNI on the listener with certificates: terminated and served as HTTP.
    let (tls, leaf) = tls_connect(p1, "www.example.com", &proxy_cert, &["http/1.1"])
        .await
        .expect("terminated handshake");
    assert_eq!(leaf, proxy_cert.der);
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = tx
        .send_request(
            http::Request::get("/over-tls")
                .header("host", "www.example.com")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Without certificates, an SNI that is not passed through is closed.
    assert!(
        tls_connect(p2, "www.example.com", &proxy_cert, &[])
            .await
            .is_err()
    );
}
