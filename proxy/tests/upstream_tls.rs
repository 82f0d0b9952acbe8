//! TLS to upstream endpoints (BackendTLSPolicy): HTTP/1.1 and HTTP/2 over TLS, verification by
//! SNI or subject alternative names, and failures when the name or CA does not match.

mod common;
use common::*;
use sluice_ir::*;
use sluice_proxy::test_util::*;
use std::sync::Arc;

/// An HTTPS upstream (ALPN h2 and http/1.1) answering "tls:<protocol>:<path>".
async fn tls_upstream(names: &[&str]) -> (std::net::SocketAddr, String) {
    let ck =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    tls_upstream_with(ck.cert, ck.signing_key).await
}

/// An HTTPS upstream presenting this certificate.
async fn tls_upstream_with(
    cert: rcgen::Certificate,
    signing_key: rcgen::KeyPair,
) -> (std::net::SocketAddr, String) {
    let ck = rcgen::CertifiedKey { cert, signing_key };
    let cert_pem = ck.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let body = format!("tls:{:?}:{}", req.version(), req.uri().path());
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
            });
        }
    });
    (addr, cert_pem)
}

fn tls_cluster(
    name: &str,
    addr: std::net::SocketAddr,
    ca: &str,
    sni: &str,
    sans: &[&str],
    proto: UpstreamProtocol,
) -> Cluster {
    let mut c = cluster(name, &[addr]);
    c.protocol = proto;
    c.tls = Some(UpstreamTls {
        sni: sni.into(),
        ca_pem: Some(ca.into()),
        subject_alt_names: sans
            .iter()
            .map(|s| SubjectAltName::Hostname(s.to_string()))
            .collect(),
        client_certificate: None,
        alpn: vec![],
    });
    c
}

#[tokio::test]
async fn tls_to_upstreams() {
    let (addr, ca) = tls_upstream(&["backend.internal", "alt.internal"]).await;
    let (_, other_ca) = tls_upstream(&["backend.internal"]).await;
    let port = free_port();
    let routes = vec![
        route("h1").prefix("/h1").backend("h1", 1).build(),
        route("h2").prefix("/h2").backend("h2", 1).build(),
        route("san").prefix("/san").backend("san", 1).build(),
        route("wrong-name")
            .prefix("/wrong-name")
            .backend("wrong-name", 1)
            .build(),
        route("wrong-ca")
            .prefix("/wrong-ca")
            .backend("wrong-ca", 1)
            .build(),
        route("no-ca").prefix("/no-ca").backend("no-ca", 1).build(),
    ];
    let clusters = vec![
        tls_cluster(
            "h1",
            addr,
            &ca,
            "backend.internal",
            &[],
            UpstreamProtocol::Http1,
        ),
        tls_cluster(
            "h2",
            addr,
            &ca,
            "backend.internal",
            &[],
            UpstreamProtocol::H2,
        ),
        tls_cluster(
            "san",
            addr,
            &ca,
            "ignored.example",
            &["nope.internal", "alt.internal"],
            UpstreamProtocol::Http1,
        ),
        tls_cluster(
            "wrong-name",
            addr,
            &ca,
            "other.internal",
            &[],
            UpstreamProtocol::Http1,
        ),
        tls_cluster(
            "wrong-ca",
            addr,
            &other_ca,
            "backend.internal",
            &[],
            UpstreamProtocol::Http1,
        ),
        // An empty bundle (a policy without a valid CA) applies and trusts nothing.
        tls_cluster(
            "no-ca",
            addr,
            "",
            "backend.internal",
            &[],
            UpstreamProtocol::Http1,
        ),
    ];
    let s = snapshot(
        vec![http_listener(port, vec![vhost("*", routes)])],
        clusters,
    );
    let _p = start(s).await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(get(&c, port, "h", "/h1").await.text(), "tls:HTTP/1.1:/h1");
        assert_eq!(get(&c, port, "h", "/h2").await.text(), "tls:HTTP/2.0:/h2");
        assert_eq!(get(&c, port, "h", "/san").await.text(), "tls:HTTP/1.1:/san");
    }
    assert_eq!(get(&c, port, "h", "/wrong-name").await.status, 502);
    assert_eq!(get(&c, port, "h", "/wrong-ca").await.status, 502);
    assert_eq!(get(&c, port, "h", "/no-ca").await.status, 502);
}

#[tokio::test]
async fn system_trust_store_and_uri_subject_alt_names() {
    // A certificate carrying a SPIFFE id as URI subject alternative name.
    let spiffe = "spiffe://cluster.local/ns/default/sa/backend";
    let mut params = rcgen::CertificateParams::new(vec!["backend.internal".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::URI(spiffe.try_into().unwrap()));
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (addr, ca) = tls_upstream_with(cert, key).await;

    let port = free_port();
    let uri_cluster = |name: &str, uri: &str| {
        let mut c = cluster(name, &[addr]);
        c.tls = Some(UpstreamTls {
            sni: "ignored.example".into(),
            ca_pem: Some(ca.clone()),
            subject_alt_names: vec![
                SubjectAltName::Hostname("nope.internal".into()),
                SubjectAltName::Uri(uri.into()),
            ],
            client_certificate: None,
            alpn: vec![],
        });
        c
    };
    // No CA: the system trust store, which does not know this self-signed certificate.
    let mut system = cluster("system", &[addr]);
    system.tls = Some(UpstreamTls {
        sni: "backend.internal".into(),
        ca_pem: None,
        subject_alt_names: vec![],
        client_certificate: None,
        alpn: vec![],
    });
    let routes = vec![
        route("uri").prefix("/uri").backend("uri", 1).build(),
        route("wrong-uri")
            .prefix("/wrong-uri")
            .backend("wrong-uri", 1)
            .build(),
        route("system")
            .prefix("/system")
            .backend("system", 1)
            .build(),
    ];
    let s = snapshot(
        vec![http_listener(port, vec![vhost("*", routes)])],
        vec![
            uri_cluster("uri", spiffe),
            uri_cluster("wrong-uri", "spiffe://cluster.local/ns/default/sa/other"),
            system,
        ],
    );
    // `start` asserts the snapshot applies: a cluster without CA is no longer rejected.
    let _p = start(s).await;
    let c = client();
    let r = get(&c, port, "h", "/uri").await;
    assert_eq!(r.text(), "tls:HTTP/1.1:/uri", "{r:?}");
    assert_eq!(get(&c, port, "h", "/wrong-uri").await.status, 502);
    assert_eq!(
        get(&c, port, "h", "/system").await.status,
        502,
        "a self-signed upstream is not trusted by the system store"
    );
}
