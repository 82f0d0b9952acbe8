//! Hot reload and the admin API: applies under load, listeners added and removed live, a
//! taken port, rejected snapshots, `/ready`, `/config_dump`, `/status`, `/metrics`.

mod common;
use common::*;
use sluice_ir::*;
use sluice_proxy::admin::{self, AdminState};
use sluice_proxy::test_util::*;
use sluice_proxy::{Proxy, ProxyOptions};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

fn snap(port: u16, version: u64, header: &str, echo: &Echo) -> Snapshot {
    let r = route("r")
        .filter(HttpFilter::RequestHeaderModifier(headers(
            &[("x-version", header)],
            &[],
            &[],
        )))
        .backend("c", 1)
        .build();
    let mut s = snapshot(
        vec![http_listener(port, vec![vhost("*", vec![r])])],
        vec![cluster("c", &[echo.addr])],
    );
    s.version = version;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_applies_under_load_fail_nothing() {
    let e = echo("p").await;
    let port = free_port();
    let p = start(snap(port, 1, "1", &e)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let c = client();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 100_000 {
                n += 1;
                let req = http::Request::builder()
                    .uri(format!("http://127.0.0.1:{port}/load"))
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap();
                match c.request(req).await {
                    Ok(r) if r.status() == 200 => {
                        use http_body_util::BodyExt;
                        match r.into_body().collect().await {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for v in 2..52u64 {
        let rep = p.apply(snap(port, v, &v.to_string(), &e)).await;
        assert!(rep.applied && rep.listener_errors.is_empty(), "{rep:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{} ok",
        ok.load(Ordering::Relaxed)
    );
    assert!(ok.load(Ordering::Relaxed) > 100);
    assert_eq!(p.snapshot().version, 51);
    let c = client();
    assert_eq!(
        get(&c, port, "h", "/").await.echo().header("x-version"),
        Some("51")
    );
}

#[tokio::test]
async fn listeners_added_and_removed_live() {
    let e = echo("p").await;
    let (a, b) = (free_port(), free_port());
    let p = start(snap(a, 1, "a", &e)).await;
    let c = client();
    assert_eq!(get(&c, a, "h", "/").await.status, 200);
    // Add b, keep a.
    let mut s = snap(a, 2, "a", &e);
    let mut lb = http_listener(
        b,
        vec![vhost("*", vec![route("r").backend("c", 1).build()])],
    );
    lb.virtual_hosts[0].routes[0].filters = vec![HttpFilter::RequestHeaderModifier(headers(
        &[("x-listener", "b")],
        &[],
        &[],
    ))];
    s.listeners.push(lb);
    s.listeners.sort_by(|x, y| x.name.cmp(&y.name));
    let rep = p.apply(s).await;
    assert!(rep.applied && rep.listener_errors.is_empty(), "{rep:?}");
    assert_eq!(
        get(&c, b, "h", "/").await.echo().header("x-listener"),
        Some("b")
    );
    assert_eq!(get(&c, a, "h", "/").await.status, 200);
    // Remove a: it stops accepting; b keeps serving.
    let mut s = snap(b, 3, "b", &e);
    s.listeners[0].virtual_hosts[0].routes[0].id.route.name = "only-b".into();
    assert!(p.apply(s).await.applied);
    assert_eq!(get(&c, b, "h", "/").await.status, 200);
    let mut refused = false;
    for _ in 0..50 {
        if std::net::TcpStream::connect(("127.0.0.1", a)).is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "removed listener still accepts");
    assert_eq!(p.listeners().await, vec![format!("tcp:127.0.0.1:{b}")]);
}

#[tokio::test]
async fn taken_port_is_reported_and_retried() {
    let e = echo("p").await;
    let (good, taken) = (free_port(), free_port());
    let blocker = std::net::TcpListener::bind(("127.0.0.1", taken)).unwrap();
    let p = Proxy::start(ProxyOptions {
        workers: 2,
        ..Default::default()
    })
    .unwrap();
    let mut s = snap(good, 1, "x", &e);
    s.listeners.push(http_listener(
        taken,
        vec![vhost("*", vec![route("r").backend("c", 1).build()])],
    ));
    s.listeners.sort_by(|x, y| x.name.cmp(&y.name));
    let rep = p.apply(s.clone()).await;
    assert!(rep.applied);
    let key = format!("tcp:127.0.0.1:{taken}");
    assert_eq!(rep.listener_errors.keys().collect::<Vec<_>>(), vec![&key]);
    assert!(
        rep.listener_errors[&key].contains("cannot bind"),
        "{:?}",
        rep.listener_errors
    );
    let c = client();
    assert_eq!(get(&c, good, "h", "/").await.status, 200);
    // Freed: the next apply binds it.
    drop(blocker);
    let rep = p.apply(s).await;
    assert!(rep.listener_errors.is_empty(), "{rep:?}");
    assert_eq!(get(&c, taken, "h", "/").await.status, 200);
}

#[tokio::test]
async fn invalid_snapshots_are_rejected_and_old_one_serves() {
    let e = echo("p").await;
    let port = free_port();
    let p = start(snap(port, 1, "good", &e)).await;
    let c = client();
    // Validation error: unknown cluster.
    let mut bad = snap(port, 2, "bad", &e);
    bad.listeners[0].virtual_hosts[0].routes[0].backends[0].cluster = Some("missing".into());
    let rep = p.apply(bad).await;
    assert!(!rep.applied);
    assert!(
        rep.validation_errors[0].message.contains("unknown cluster"),
        "{rep:?}"
    );
    assert_eq!(p.snapshot().version, 1);
    assert_eq!(
        get(&c, port, "h", "/").await.echo().header("x-version"),
        Some("good")
    );
    // A bad certificate on another (new) HTTPS listener only fails that listener: the rest of
    // the snapshot applies.
    let mut next = snap(port, 3, "next", &e);
    let mut l = Listener::new(LOCALHOST, free_port(), ListenerProtocol::Https);
    l.tls = Some(TlsTermination {
        certificates: vec![ServerCertificate {
            server_names: vec![],
            cert_chain_pem: "not a pem".into(),
            private_key_pem: "nope".into(),
            source: "default/broken".into(),
        }],
        ..Default::default()
    });
    let bad_name = l.name.clone();
    next.listeners.push(l);
    next.listeners.sort_by(|x, y| x.name.cmp(&y.name));
    let rep = p.apply(next).await;
    assert!(rep.applied, "{rep:?}");
    assert_eq!(rep.listener_errors.len(), 1, "{rep:?}");
    assert!(
        rep.listener_errors[&bad_name].contains("default/broken"),
        "{rep:?}"
    );
    assert_eq!(p.snapshot().version, 3);
    assert_eq!(
        get(&c, port, "h", "/").await.echo().header("x-version"),
        Some("next")
    );
}

async fn admin_get(port: u16, path: &str) -> Reply {
    get(&client(), port, "admin", path).await
}

#[tokio::test]
async fn admin_endpoints() {
    let e = echo("p").await;
    let port = free_port();
    let p = Proxy::start(ProxyOptions {
        workers: 1,
        ..Default::default()
    })
    .unwrap();
    let state = AdminState::new(p.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let aport = l.local_addr().unwrap().port();
    tokio::spawn(admin::serve_listener(l, state.clone()));

    assert_eq!(admin_get(aport, "/ready").await.status, 503);
    let mut s = snap(port, 7, "v", &e);
    let mut tls_l = Listener::new(LOCALHOST, free_port(), ListenerProtocol::Https);
    let ck = rcgen::generate_simple_self_signed(vec!["a.example".to_string()]).unwrap();
    tls_l.tls = Some(TlsTermination {
        certificates: vec![ServerCertificate {
            server_names: vec![],
            cert_chain_pem: ck.cert.pem(),
            private_key_pem: ck.signing_key.serialize_pem(),
            source: "default/secret".into(),
        }],
        ..Default::default()
    });
    s.listeners.push(tls_l);
    s.listeners.sort_by(|x, y| x.name.cmp(&y.name));
    assert!(p.apply(s).await.applied);
    assert_eq!(admin_get(aport, "/ready").await.status, 200);

    let dump = admin_get(aport, "/config_dump").await;
    assert_eq!(dump.status, 200);
    let back: Snapshot = serde_json::from_slice(&dump.body).unwrap();
    assert_eq!(back.version, 7);
    assert!(!dump.text().contains("PRIVATE KEY"), "key leaked");
    assert!(dump.text().contains("[redacted]"));

    let mut report = sluice_ir::status::StatusReport::default();
    report
        .resources
        .push(sluice_ir::status::ResourceStatus::new(
            ObjectRef::new("HTTPRoute", "default", "r"),
            3,
        ));
    state.status.store(Arc::new(report));
    let st = admin_get(aport, "/status").await;
    let back: sluice_ir::status::StatusReport = serde_json::from_slice(&st.body).unwrap();
    assert_eq!(back.resources[0].object.name, "r");

    let c = client();
    for _ in 0..3 {
        assert_eq!(get(&c, port, "h", "/").await.status, 200);
    }
    let m = admin_get(aport, "/metrics").await.text();
    let line = m
        .lines()
        .find(|l| l.starts_with("sluice_http_requests_total{") && l.contains("code=\"200\""))
        .unwrap_or_else(|| panic!("{m}"));
    assert!(
        line.contains(&format!("listener=\"tcp:127.0.0.1:{port}\"")),
        "{line}"
    );
    assert!(
        line.contains("route=\"HTTPRoute/default/r/rule/0/match/0\""),
        "{line}"
    );
    assert!(line.contains("backend=\"c\""), "{line}");
    assert!(line.ends_with(" 3"), "{line}");
    assert!(
        m.contains("sluice_http_request_duration_seconds_bucket"),
        "{m}"
    );
    assert!(m.contains("sluice_active_connections"), "{m}");
    assert_eq!(admin_get(aport, "/nope").await.status, 404);

    p.shutdown(Duration::from_secs(1)).await;
    assert_eq!(admin_get(aport, "/ready").await.status, 503);
}

#[tokio::test]
async fn dead_endpoint_counts_connect_errors() {
    let port = free_port();
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let s = snapshot(
        vec![http_listener(
            port,
            vec![vhost("*", vec![route("r").backend("dead", 1).build()])],
        )],
        vec![cluster("dead", &[dead])],
    );
    let p = start(s).await;
    let c = client();
    assert_eq!(get(&c, port, "h", "/").await.status, 502);
    let m = p.metrics().encode();
    assert!(
        m.contains("sluice_upstream_connect_errors_total{cluster=\"dead\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let e = echo("slow").await;
    let port = free_port();
    let p = start(snap(port, 1, "x", &e)).await;
    let c = client();
    let inflight = tokio::spawn(async move {
        send(&c, "GET", port, "h", "/", &[("x-echo-delay-ms", "300")], "").await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    p.shutdown(Duration::from_secs(5)).await;
    assert_eq!(inflight.await.unwrap().status, 200);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[tokio::test]
async fn upstream_pool_survives_reloads() {
    let e = echo("p").await;
    let port = free_port();
    // One worker: every request uses the same pool.
    let p = Proxy::start(ProxyOptions {
        workers: 1,
        ..Default::default()
    })
    .unwrap();
    assert!(p.apply(snap(port, 1, "1", &e)).await.applied);
    let c = client();
    for v in 2..12u64 {
        assert_eq!(get(&c, port, "h", "/").await.status, 200);
        // A new snapshot with a different route config, same cluster and endpoint.
        assert!(p.apply(snap(port, v, &v.to_string(), &e)).await.applied);
    }
    assert_eq!(
        get(&c, port, "h", "/").await.echo().header("x-version"),
        Some("11")
    );
    assert_eq!(e.requests.load(Ordering::Relaxed), 11);
    assert_eq!(
        e.connections.load(Ordering::Relaxed),
        1,
        "upstream connection reused across reloads"
    );
}

#[tokio::test]
async fn open_connections_survive_reloads_and_see_new_routes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let e = echo("p").await;
    let port = free_port();
    let p = start(snap(port, 1, "before", &e)).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    async fn roundtrip(s: &mut tokio::net::TcpStream) -> String {
        s.write_all(b"GET /keep HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed by the proxy");
            buf.extend_from_slice(&chunk[..n]);
            let t = String::from_utf8_lossy(&buf).into_owned();
            if let Some(i) = t.find("\r\n\r\n") {
                let cl: usize = t[..i]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap();
                if buf.len() >= i + 4 + cl {
                    return t[i + 4..].to_string();
                }
            }
        }
    }
    let first: Echoed = serde_json::from_str(&roundtrip(&mut s).await).unwrap();
    assert_eq!(first.header("x-version"), Some("before"));
    assert!(p.apply(snap(port, 2, "after", &e)).await.applied);
    // Same TCP connection, next request: served with the new snapshot.
    let second: Echoed = serde_json::from_str(&roundtrip(&mut s).await).unwrap();
    assert_eq!(second.header("x-version"), Some("after"));
}

#[tokio::test]
async fn tcp_and_passthrough_only_listeners_are_bound() {
    let e = echo("p").await;
    let port = free_port();
    let mut s = snap(port, 1, "x", &e);
    let tcp_port = free_port();
    // No route: connections are accepted and closed.
    let tcp = Listener::new(LOCALHOST, tcp_port, ListenerProtocol::Tcp);
    let pt_port = free_port();
    let mut passthrough = Listener::new(LOCALHOST, pt_port, ListenerProtocol::Https);
    passthrough.tls_routes.push(TlsRoute {
        id: RouteId {
            route: ObjectRef::new("TLSRoute", "default", "t"),
            rule: 0,
            matcher: 0,
            rule_name: None,
        },
        hostnames: vec!["t.example".into()],
        mode: TlsMode::Passthrough,
        backends: vec![],
    });
    s.listeners.extend([tcp, passthrough]);
    s.listeners.sort_by(|x, y| x.name.cmp(&y.name));
    let p = Proxy::start(ProxyOptions {
        workers: 1,
        ..Default::default()
    })
    .unwrap();
    let rep = p.apply(s).await;
    assert!(rep.applied, "{rep:?}");
    assert!(rep.listener_errors.is_empty(), "{rep:?}");
    assert_eq!(p.listeners().await.len(), 3);
    assert_eq!(get(&client(), port, "h", "/").await.status, 200);
    for port in [tcp_port, pt_port] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("bound");
        let _ = c.write_all(b"\x16\x03\x01\x00\x05hello").await;
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("closed in time");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }
}
