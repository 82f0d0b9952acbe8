//! HTTP/3 on HTTPS listeners with `http3: true`: a quinn + h3 client through the same routes,
//! `Alt-Svc` on HTTP/1.1 and HTTP/2 responses (curl), certificate rotation for new QUIC
//! handshakes while an established QUIC connection keeps working, and HTTP/3 switched off.

mod common;
use bytes::{Buf, Bytes};
use common::*;
use sluice_ir::*;
use sluice_proxy::test_util::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

struct H3Client {
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

async fn h3_connect(port: u16, sni: &str, trust: &Cert) -> anyhow::Result<H3Client> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust.der.clone())?;
    let mut tls = rustls::ClientConfig::builder_with_provider(ring())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let qcfg = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    ));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(qcfg);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let conn =
        tokio::time::timeout(Duration::from_secs(10), endpoint.connect(addr, sni)?).await??;
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone())).await?;
    tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    Ok(H3Client {
        send,
        conn,
        _endpoint: endpoint,
    })
}

impl H3Client {
    fn peer_leaf(&self) -> rustls::pki_types::CertificateDer<'static> {
        let id = self.conn.peer_identity().expect("peer identity");
        let certs = id
            .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .expect("rustls certificates");
        certs[0].clone()
    }

    async fn request(
        &mut self,
        method: &str,
        url: &str,
        body: &str,
    ) -> anyhow::Result<(http::Response<()>, String)> {
        let req = http::Request::builder().method(method).uri(url).body(())?;
        let mut stream = self.send.send_request(req).await?;
        if !body.is_empty() {
            stream.send_data(Bytes::from(body.to_string())).await?;
        }
        stream.finish().await?;
        let resp = stream.recv_response().await?;
        let mut out = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await? {
            let b = chunk.copy_to_bytes(chunk.remaining());
            out.extend_from_slice(&b);
        }
        Ok((resp, String::from_utf8_lossy(&out).into_owned()))
    }
}

fn h3_listener(port: u16, cert: &Cert, http3: bool) -> Listener {
    let mut l = Listener::new(LOCALHOST, port, ListenerProtocol::Https);
    l.tls = Some(TlsTermination {
        certificates: vec![ir_cert(cert, &[], "default/www")],
        ..Default::default()
    });
    l.virtual_hosts = vec![vhost(
        "*",
        vec![
            route("missing")
                .prefix("/missing")
                .backend("empty", 1)
                .build(),
            route("r").backend("web", 1).build(),
        ],
    )];
    l.http3 = http3;
    l
}

#[tokio::test]
async fn http3_requests_alt_svc_and_certificate_rotation() {
    let e = echo("h3").await;
    let cert1 = self_signed_cert(&["www.example.com"]);
    let port = free_port();
    let clusters = || vec![cluster("web", &[e.addr]), cluster("empty", &[])];
    let p = start(snapshot(vec![h3_listener(port, &cert1, true)], clusters())).await;

    // HTTP/3 through the same routes and upstreams.
    let mut c = h3_connect(port, "www.example.com", &cert1)
        .await
        .expect("QUIC handshake");
    assert_eq!(c.peer_leaf(), cert1.der);
    let (resp, body) = c
        .request("GET", "https://www.example.com/h3path?q=1", "")
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{body}");
    assert!(
        resp.headers().get("alt-svc").is_none(),
        "no Alt-Svc over HTTP/3"
    );
    let echoed: Echoed = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed.path, "/h3path?q=1");
    assert_eq!(echoed.host, "www.example.com");
    assert_eq!(echoed.header("x-forwarded-proto"), Some("https"));
    assert_eq!(echoed.method, "GET");
    assert_eq!(
        echoed.header("transfer-encoding"),
        None,
        "a GET goes upstream without a body"
    );
    let (resp, body) = c
        .request("POST", "https://www.example.com/upload", "hello over h3")
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echoed: Echoed = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed.body, "hello over h3");
    // Errors are answered the same way (no endpoint: 503).
    let (resp, _) = c
        .request("GET", "https://www.example.com/missing", "")
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);

    // Alt-Svc on HTTP/1.1 and HTTP/2 (curl).
    let dir = std::env::temp_dir().join(format!("sluice-h3-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &cert1.cert_pem).unwrap();
    let ca = ca.to_string_lossy().into_owned();
    let url = format!("https://www.example.com:{port}/alt");
    let resolve = format!("www.example.com:{port}:127.0.0.1");
    let want = format!("alt-svc: h3=\":{port}\"; ma=86400");
    for version in ["--http1.1", "--http2"] {
        let args = [
            "-sS",
            "-D",
            "-",
            "-o",
            "/dev/null",
            version,
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            &url,
        ]
        .map(String::from);
        let (ok, out, err) = tokio::task::spawn_blocking(move || {
            curl(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .unwrap();
        assert!(ok, "{err}");
        assert!(
            out.to_ascii_lowercase().contains(&want),
            "{version}: no {want:?} in {out}"
        );
    }

    // Rotation: a new certificate for new handshakes; the open QUIC connection keeps working.
    let cert2 = self_signed_cert(&["www.example.com"]);
    let mut next = snapshot(vec![h3_listener(port, &cert2, true)], clusters());
    next.version = 2;
    let rep = p.apply(next).await;
    assert!(rep.applied && rep.listener_errors.is_empty(), "{rep:?}");
    let mut c2 = h3_connect(port, "www.example.com", &cert2)
        .await
        .expect("QUIC handshake with the new certificate");
    assert_eq!(c2.peer_leaf(), cert2.der);
    assert_eq!(
        c2.request("GET", "https://www.example.com/new", "")
            .await
            .unwrap()
            .0
            .status(),
        200
    );
    assert!(
        h3_connect(port, "www.example.com", &cert1).await.is_err(),
        "the old certificate is no longer presented"
    );
    let (resp, _) = c
        .request("GET", "https://www.example.com/still-open", "")
        .await
        .expect("the established QUIC connection survives the rotation");
    assert_eq!(resp.status(), 200);

    // HTTP/3 switched off: no Alt-Svc, and QUIC handshakes fail.
    let mut off = snapshot(vec![h3_listener(port, &cert2, false)], clusters());
    off.version = 3;
    assert!(p.apply(off).await.applied);
    let (tls, _) = tls_connect(port, "www.example.com", &cert2, &["http/1.1"])
        .await
        .unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = tx
        .send_request(
            http::Request::get("/plain")
                .header("host", "www.example.com")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("alt-svc").is_none());
    let quic = tokio::time::timeout(
        Duration::from_secs(3),
        h3_connect(port, "www.example.com", &cert2),
    )
    .await;
    assert!(!matches!(quic, Ok(Ok(_))), "QUIC still accepted");
}

#[tokio::test]
async fn http3_port_shared_with_a_udp_listener_is_reported() {
    let cert = self_signed_cert(&["www.example.com"]);
    let e = echo("x").await;
    let port = free_port();
    let mut udp = Listener::new(LOCALHOST, port, ListenerProtocol::Udp);
    udp.l4_routes = vec![];
    let p = sluice_proxy::Proxy::start(sluice_proxy::ProxyOptions {
        workers: 1,
        ..Default::default()
    })
    .unwrap();
    let rep = p
        .apply(snapshot(
            vec![h3_listener(port, &cert, true), udp],
            vec![cluster("web", &[e.addr]), cluster("empty", &[])],
        ))
        .await;
    assert!(rep.applied, "{rep:?}");
    let name = format!("tcp:127.0.0.1:{port}");
    assert!(
        rep.listener_errors[&name].contains("UDP listener"),
        "{rep:?}"
    );
    // HTTPS itself serves, without advertising HTTP/3.
    let (tls, _) = tls_connect(port, "www.example.com", &cert, &["http/1.1"])
        .await
        .unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = tx
        .send_request(
            http::Request::get("/")
                .header("host", "www.example.com")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("alt-svc").is_none());
}
