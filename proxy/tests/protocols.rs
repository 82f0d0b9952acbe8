//! Downstream protocols: HTTPS with certificates chosen by SNI, HTTP/2 prior knowledge with
//! hyper's and the h2 crate's clients, and curl for HTTP/1.1, h2c and HTTPS.

mod common;
use common::*;
use http_body_util::BodyExt;
use rustls::pki_types::{CertificateDer, ServerName};
use sluice_ir::*;
use sluice_proxy::test_util::*;
use std::sync::Arc;

struct Cert {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn self_signed(names: &[&str]) -> Cert {
    let ck =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("cert");
    Cert {
        cert_pem: ck.cert.pem(),
        key_pem: ck.signing_key.serialize_pem(),
        der: ck.cert.der().clone(),
    }
}

fn server_cert(c: &Cert, names: &[&str]) -> ServerCertificate {
    ServerCertificate {
        server_names: names.iter().map(|s| s.to_string()).collect(),
        cert_chain_pem: c.cert_pem.clone(),
        private_key_pem: c.key_pem.clone(),
        source: "default/cert".into(),
    }
}

/// TLS handshake with `sni`, trusting only `trust`; returns the presented leaf and ALPN.
async fn handshake(
    port: u16,
    sni: &str,
    trust: &Cert,
    alpn: &[&str],
) -> std::io::Result<(
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    CertificateDer<'static>,
)> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust.der.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let tls = connector
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    Ok((tls, leaf))
}

async fn https_proxy(e: &Echo, a: &Cert, b: &Cert) -> (sluice_proxy::Proxy, u16) {
    let port = free_port();
    let mut l = Listener::new(LOCALHOST, port, ListenerProtocol::Https);
    l.tls = Some(TlsTermination {
        certificates: vec![
            server_cert(a, &["a.example.com"]),
            server_cert(b, &["*.b.example.com", "b.example.com"]),
        ],
        ..Default::default()
    });
    l.virtual_hosts = vec![vhost("*", vec![route("r").backend("c", 1).build()])];
    let s = snapshot(vec![l], vec![cluster("c", &[e.addr])]);
    (start(s).await, port)
}

#[tokio::test]
async fn https_certificate_chosen_by_sni() {
    let e = echo("tls").await;
    let a = self_signed(&["a.example.com"]);
    let b = self_signed(&["*.b.example.com", "b.example.com"]);
    let (_p, port) = https_proxy(&e, &a, &b).await;

    let (_, leaf) = handshake(port, "a.example.com", &a, &["http/1.1"])
        .await
        .unwrap();
    assert_eq!(leaf, a.der);
    let (_, leaf) = handshake(port, "x.b.example.com", &b, &["http/1.1"])
        .await
        .unwrap();
    assert_eq!(leaf, b.der);
    // Unknown SNI: the default (first) certificate, which the client trusting b rejects.
    assert!(
        handshake(port, "other.example.com", &b, &["http/1.1"])
            .await
            .is_err()
    );

    // HTTP/1.1 and HTTP/2 (ALPN) over TLS reach the upstream with X-Forwarded-Proto https.
    for (alpn, want) in [("http/1.1", "HTTP/1.1"), ("h2", "HTTP/2.0")] {
        let (tls, _) = handshake(port, "x.b.example.com", &b, &[alpn])
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn.as_bytes()));
        let io = hyper_util::rt::TokioIo::new(tls);
        let req = http::Request::builder()
            .uri("https://x.b.example.com/secure")
            .header("host", "x.b.example.com")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = if alpn == "h2" {
            let (mut tx, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            tx.send_request(req).await.unwrap()
        } else {
            let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            let (mut parts, body) = req.into_parts();
            parts.uri = "/secure".parse().unwrap();
            tx.send_request(http::Request::from_parts(parts, body))
                .await
                .unwrap()
        };
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.version(),
            if alpn == "h2" {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            }
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let echoed: Echoed = serde_json::from_slice(&body).unwrap();
        assert_eq!(echoed.header("x-forwarded-proto"), Some("https"));
        assert_eq!(echoed.host, "x.b.example.com");
        assert_eq!(
            echoed.protocol, "HTTP/1.1",
            "{want} downstream, HTTP/1.1 upstream"
        );
    }
}

#[tokio::test]
async fn https_with_curl_and_tls12() {
    let e = echo("tls").await;
    let a = self_signed(&["a.example.com"]);
    let b = self_signed(&["b.example.com"]);
    let (_p, port) = https_proxy(&e, &a, &b).await;
    let dir = tempfile_dir();
    let ca = format!("{dir}/a.pem");
    std::fs::write(&ca, &a.cert_pem).unwrap();
    let url = format!("https://a.example.com:{port}/curl");
    let resolve = format!("a.example.com:{port}:127.0.0.1");
    let out = tokio::task::spawn_blocking(move || {
        let h2 = curl(&[
            "-sS",
            "--http2",
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            "-w",
            "\n%{http_version}",
            &url,
        ]);
        let tls12 = curl(&[
            "-sS",
            "--http1.1",
            "--tls-max",
            "1.2",
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            "-w",
            "\n%{http_version}",
            &url,
        ]);
        (h2, tls12)
    })
    .await
    .unwrap();
    let ((ok, out, err), (ok12, out12, err12)) = out;
    assert!(ok, "{err}");
    assert!(out.ends_with("\n2"), "{out}");
    assert!(out.contains("\"path\":\"/curl\""), "{out}");
    assert!(ok12, "{err12}");
    assert!(out12.ends_with("\n1.1"), "{out12}");
}

fn tempfile_dir() -> String {
    let d = std::env::temp_dir().join(format!(
        "sluice-proxy-test-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d.to_string_lossy().into_owned()
}

#[tokio::test]
async fn h2_prior_knowledge_with_hyper_h2_and_curl() {
    let e = echo("p").await;
    let port = free_port();
    let s = snapshot(
        vec![http_listener(
            port,
            vec![vhost("*", vec![route("r").backend("c", 1).build()])],
        )],
        vec![cluster("c", &[e.addr])],
    );
    let _p = start(s).await;

    // hyper's client, HTTP/2 only (prior knowledge).
    let c = h2c_client();
    let r = send(
        &c,
        "POST",
        port,
        "h2.example",
        "/hyper?x=1",
        &[("x-test", "1")],
        "hello",
    )
    .await;
    assert_eq!(r.status, 200);
    let echoed = r.echo();
    assert_eq!(echoed.path, "/hyper?x=1");
    assert_eq!(echoed.host, "h2.example");
    assert_eq!(echoed.body, "hello");
    assert_eq!(echoed.header("x-test"), Some("1"));

    // The h2 crate directly, several streams on one connection.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (h2c, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut h2c = h2c.ready().await.unwrap();
    let mut streams = Vec::new();
    for i in 0..5 {
        let req = http::Request::builder()
            .uri(format!("http://h2.example/stream/{i}"))
            .body(())
            .unwrap();
        let (resp, _) = h2c.send_request(req, true).unwrap();
        streams.push(resp);
        h2c = h2c.ready().await.unwrap();
    }
    for (i, resp) in streams.into_iter().enumerate() {
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let echoed: Echoed = serde_json::from_slice(&data).unwrap();
        assert_eq!(echoed.path, format!("/stream/{i}"));
    }

    // curl: HTTP/2 prior knowledge and HTTP/1.1 on the same port.
    let (h2, h1) = tokio::task::spawn_blocking(move || {
        let url = format!("http://127.0.0.1:{port}/curl");
        (
            curl(&[
                "-sS",
                "--http2-prior-knowledge",
                "-H",
                "Host: curl.example",
                "-w",
                "\n%{http_version}",
                &url,
            ]),
            curl(&[
                "-sS",
                "--http1.1",
                "-H",
                "Host: curl.example",
                "-w",
                "\n%{http_version}",
                &url,
            ]),
        )
    })
    .await
    .unwrap();
    assert!(h2.0, "{}", h2.2);
    assert!(h2.1.ends_with("\n2"), "{}", h2.1);
    assert!(h2.1.contains("\"host\":\"curl.example\""), "{}", h2.1);
    assert!(h1.0, "{}", h1.2);
    assert!(h1.1.ends_with("\n1.1"), "{}", h1.1);
    assert!(h1.1.contains("\"path\":\"/curl\""), "{}", h1.1);
}

#[tokio::test]
async fn grpc_error_over_h2_is_trailers_only() {
    let port = free_port();
    let s = snapshot(
        vec![http_listener(
            port,
            vec![vhost(
                "*",
                vec![route("g").backend("empty", 1).grpc().build()],
            )],
        )],
        vec![cluster("empty", &[])],
    );
    let _p = start(s).await;
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
    let (resp, _) = h2c.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["grpc-status"], "14");
    assert!(resp.body().is_end_stream(), "trailers-only response");
}

#[tokio::test]
async fn client_certificates_validated_when_configured() {
    let e = echo("mtls").await;
    let server = self_signed(&["mtls.example.com"]);
    // A CA and a client certificate it signs; a second, untrusted client.
    let mut ca_params = rcgen::CertificateParams::new(vec!["client-ca".to_string()]).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client_cert = rcgen::CertificateParams::new(vec!["client".to_string()])
        .unwrap()
        .signed_by(&client_key, &ca)
        .unwrap();
    let rogue = rcgen::generate_simple_self_signed(vec!["client".to_string()]).unwrap();

    let port = free_port();
    let mut l = Listener::new(LOCALHOST, port, ListenerProtocol::Https);
    l.tls = Some(TlsTermination {
        certificates: vec![server_cert(&server, &[])],
        client_validation: Some(ClientValidation {
            ca_pem: ca.pem(),
            mode: ClientValidationMode::AllowValidOnly,
        }),
        ..Default::default()
    });
    l.virtual_hosts = vec![vhost("*", vec![route("r").backend("c", 1).build()])];
    let _p = start(snapshot(vec![l], vec![cluster("c", &[e.addr])])).await;

    let connect = |cert: Option<(
        rustls::pki_types::CertificateDer<'static>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(server.der.clone()).unwrap();
        let b = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let cfg = match cert {
            Some((c, k)) => b.with_client_auth_cert(vec![c], k).unwrap(),
            None => b.with_no_client_auth(),
        };
        async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(ServerName::try_from("mtls.example.com").unwrap(), tcp)
                .await?;
            let (mut tx, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            let req = http::Request::get("/")
                .header("host", "mtls.example.com")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let resp = tx.send_request(req).await.map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>(resp.status())
        }
    };
    let key =
        |k: &rcgen::KeyPair| rustls::pki_types::PrivateKeyDer::try_from(k.serialize_der()).unwrap();
    let good = connect(Some((client_cert.der().clone(), key(&client_key)))).await;
    assert_eq!(good.unwrap(), 200);
    assert!(
        connect(None).await.is_err(),
        "no client certificate must fail"
    );
    assert!(
        connect(Some((rogue.cert.der().clone(), key(&rogue.signing_key))))
            .await
            .is_err(),
        "an untrusted client certificate must fail"
    );
}
