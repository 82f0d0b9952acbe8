//! The echo backend answered by real clients over real sockets.

use sluice_conformance::client::{self, HttpRequest, Protocol};
use sluice_conformance::echo::{self, EchoConfig, EchoMode};
use sluice_conformance::expect::CapturedRequest;
use std::net::SocketAddr;
use std::time::Duration;

async fn start(mode: EchoMode) -> Vec<SocketAddr> {
    let mut cfg = EchoConfig::http(
        "127.0.0.1:0".parse().expect("addr"),
        "infra-backend-v1-abc-def",
        "ns1",
    );
    cfg.h2c_listen = Some("127.0.0.1:0".parse().expect("addr"));
    cfg.mode = mode;
    let running = echo::start(cfg).await.expect("start echo");
    let bound = running.bound.clone();
    tokio::spawn(running.wait());
    bound
}

fn req(addr: SocketAddr, path: &str, headers: &[(&str, &str)], protocol: Protocol) -> HttpRequest {
    HttpRequest {
        addr,
        host: "example.com".into(),
        method: "GET".into(),
        path: path.into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: None,
        protocol,
        tls: None,
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn http_echo_reports_what_it_received() {
    let a = start(EchoMode::Http).await;
    let r = client::round_trip(&req(
        a[0],
        "/foo?x=1",
        &[("x-a", "1"), ("X-Echo-Set-Header", "X-Out:v1,X-Out:v2")],
        Protocol::Http1,
    ))
    .await
    .expect("request");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-out").as_deref(), Some("v1,v2"));
    assert_eq!(
        r.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    let c = CapturedRequest::from_response(&r, "GET").expect("json");
    assert_eq!(c.path, "/foo?x=1");
    assert_eq!(c.host, "example.com");
    assert_eq!(c.proto, "HTTP/1.1");
    assert_eq!(c.headers.get("X-A"), Some(&vec!["1".to_string()]));
    assert!(!c.headers.contains_key("Host"));
    assert_eq!(c.namespace, "ns1");
    assert!(c.pod.starts_with("infra-backend-v1"));
    assert_eq!(c.http_port, a[0].port().to_string());

    let s = client::round_trip(&req(a[0], "/status/418", &[], Protocol::Http1))
        .await
        .expect("status");
    assert_eq!(s.status, 418);

    // h2c port: HTTP/2 prior knowledge works, HTTP/1 is refused.
    let h2 = client::round_trip(&req(a[1], "/h2", &[], Protocol::H2cPriorKnowledge))
        .await
        .expect("h2c");
    assert_eq!(
        CapturedRequest::from_response(&h2, "GET")
            .expect("json")
            .proto,
        "HTTP/2.0"
    );
    let h1 = client::round_trip(&req(a[1], "/h2", &[], Protocol::Http1))
        .await
        .expect("h1 on h2c");
    assert_eq!(h1.status, 400);
}

#[tokio::test]
async fn delay_retry_and_websocket() {
    let a = start(EchoMode::Http).await;
    let t = std::time::Instant::now();
    let r = client::round_trip(&req(a[0], "/?delay=300ms", &[], Protocol::Http1))
        .await
        .expect("delay");
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));

    let addr = a[0];
    let code = |p: &'static str| async move {
        client::round_trip(&req(addr, p, &[], Protocol::Http1)).await
    };
    assert_eq!(
        code("/retry/x?uuid=u1&succeedAfter=1&responseCode=503")
            .await
            .expect("1st")
            .status,
        503
    );
    assert_eq!(
        code("/retry/x?uuid=u1&succeedAfter=1&responseCode=503")
            .await
            .expect("2nd")
            .status,
        200
    );
    assert!(
        code("/retry/x?uuid=u2&succeedAfter=1").await.is_err(),
        "connection reset"
    );
    assert_eq!(
        code("/retry/x?uuid=u2&succeedAfter=1")
            .await
            .expect("after reset")
            .status,
        200
    );

    client::websocket_echo(a[0], "example.com", "/ws", Duration::from_secs(5))
        .await
        .expect("websocket echo");
}

#[tokio::test]
async fn tcp_udp_and_grpc_modes() {
    let t = start(EchoMode::Tcp).await;
    let v = client::tcp_echo_test(t[0], Duration::from_secs(5))
        .await
        .expect("tcp");
    assert_eq!(v["pod"], "infra-backend-v1-abc-def");
    assert_eq!(v["isTLS"], false);

    let u = start(EchoMode::Udp).await;
    let v = client::udp_echo(u[0], "hello", Duration::from_secs(5))
        .await
        .expect("udp");
    assert_eq!(v["request"], "hello");
    assert_eq!(v["namespace"], "ns1");

    let g = start(EchoMode::Grpc).await;
    let md = vec![("x-md".to_string(), "1".to_string())];
    let (code, resp) = echo::grpc_echo_client_call(
        g[0],
        "grpc.example.com",
        "Echo",
        &md,
        Duration::from_secs(5),
    )
    .await
    .expect("grpc");
    assert_eq!(code, tonic::Code::Ok);
    let a = resp.and_then(|r| r.assertions).expect("assertions");
    assert_eq!(
        a.fully_qualified_method,
        format!("/{}/Echo", echo::GRPC_SERVICE)
    );
    assert_eq!(a.authority, "grpc.example.com");
    assert!(a.headers.iter().any(|h| h.key == "x-md" && h.value == "1"));
    assert_eq!(
        a.context.map(|c| c.pod).as_deref(),
        Some("infra-backend-v1-abc-def")
    );
    let (code, _) = echo::grpc_echo_client_call(
        g[0],
        "grpc.example.com",
        "EchoThree",
        &[],
        Duration::from_secs(5),
    )
    .await
    .expect("grpc");
    assert_eq!(code, tonic::Code::Unimplemented);
}

#[tokio::test]
async fn l4_sends_check_what_the_backend_saw() {
    use sluice_conformance::l4_send::{self, TcpCase, TcpTls, UdpCase};
    let certs = sluice_conformance::certs::generate().expect("certs");
    let pair = &certs.secrets["gateway-conformance-infra/tls-passthrough-checks-certificate"];
    let ca = &certs.ca_config_maps["gateway-conformance-infra/tls-checks-ca-certificate"];
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("crt"), dir.path().join("key"));
    std::fs::write(&cert, &pair.cert_pem).expect("write cert");
    std::fs::write(&key, &pair.key_pem).expect("write key");
    let mut cfg = EchoConfig::http(
        "127.0.0.1:0".parse().expect("addr"),
        "tcp-backend-abc12-def34",
        "ns1",
    );
    cfg.mode = EchoMode::Tcp;
    cfg.tls_listen = Some("127.0.0.1:0".parse().expect("addr"));
    cfg.tls = Some(echo::EchoTls {
        cert,
        key,
        client_ca: None,
    });
    let running = echo::start(cfg).await.expect("start echo");
    let (plain, tls_port) = (running.bound[0], running.bound[1]);
    tokio::spawn(running.wait());
    let timeout = Duration::from_secs(5);

    let case = TcpCase {
        backend: "tcp-backend".into(),
        namespace: "ns1".into(),
        backend_is_tls: true,
        hostname: "abc.example.com".into(),
    };
    let tls = TcpTls {
        server_name: "abc.example.com".into(),
        roots_pem: ca.clone(),
        known_sans: Default::default(),
    };
    let s = l4_send::tcp_session(tls_port, Some(&tls), timeout)
        .await
        .expect("TLS session");
    l4_send::check_tcp(&case, &s).expect("passthrough-like session checks");
    // The same backend in plain text fails a case that wants TLS, and another backend fails.
    let s = l4_send::tcp_session(plain, None, timeout)
        .await
        .expect("plain session");
    assert!(l4_send::check_tcp(&case, &s).is_err());
    let other = TcpCase {
        backend: "tcp-backend-2".into(),
        ..TcpCase::default()
    };
    assert!(l4_send::check_tcp(&other, &s).is_err());
    // A server name the certificate does not cover is refused by the client.
    let wrong = TcpTls {
        server_name: "other.example.org".into(),
        ..tls
    };
    assert!(
        l4_send::tcp_session(tls_port, Some(&wrong), timeout)
            .await
            .is_err()
    );
    assert_eq!(
        l4_send::tcp_echo_pod(plain, timeout).await.expect("pod"),
        "tcp-backend-abc12-def34"
    );

    let u = start(EchoMode::Udp).await;
    let want = UdpCase {
        service: String::new(),
        namespace: "ns1".into(),
    };
    l4_send::udp_round_trip(u[0], l4_send::UDP_PROBE, &want, timeout)
        .await
        .expect("udp");
    let wrong_ns = UdpCase {
        namespace: "ns2".into(),
        ..want
    };
    assert!(
        l4_send::udp_round_trip(u[0], l4_send::UDP_PROBE, &wrong_ns, timeout)
            .await
            .is_err()
    );
}
