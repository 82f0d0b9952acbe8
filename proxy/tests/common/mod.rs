//! Shared helpers of the proxy's in-process tests: a started proxy, HTTP clients, JSON echo.
#![allow(dead_code)]

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sluice_ir::Snapshot;
use sluice_proxy::test_util::Echoed;
use sluice_proxy::{Proxy, ProxyOptions};
use std::time::Duration;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A proxy with two workers serving `s` (panics when the apply is not clean).
pub async fn start(s: Snapshot) -> Proxy {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let p = Proxy::start(ProxyOptions {
        workers: 2,
        ..Default::default()
    })
    .expect("start");
    let r = p.apply(s).await;
    assert!(r.applied, "{:?}", r.validation_errors);
    assert!(r.listener_errors.is_empty(), "{:?}", r.listener_errors);
    p
}

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn echo(&self) -> Echoed {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not an echo ({e}): {} {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn header(&self, n: &str) -> Option<&str> {
        self.headers.get(n).and_then(|v| v.to_str().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends a request to `http://127.0.0.1:port{path}` with `Host: host` and extra headers.
pub async fn send(
    c: &HttpClient,
    method: &str,
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .expect("response in time")
        .expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(c: &HttpClient, port: u16, host: &str, path: &str) -> Reply {
    send(c, "GET", port, host, path, &[], "").await
}

/// Runs curl with args; returns stdout. Panics if curl is missing.
pub fn curl(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new("curl")
        .args(args)
        .output()
        .expect("curl installed (apt-get install curl)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A self-signed certificate and its key.
pub struct Cert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: rustls::pki_types::CertificateDer<'static>,
    pub key_der: Vec<u8>,
}

pub fn self_signed_cert(names: &[&str]) -> Cert {
    let ck =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("cert");
    Cert {
        cert_pem: ck.cert.pem(),
        key_pem: ck.signing_key.serialize_pem(),
        der: ck.cert.der().clone(),
        key_der: ck.signing_key.serialize_der(),
    }
}

/// The certificate as an IR server certificate for these SNI names (empty: default).
pub fn ir_cert(c: &Cert, names: &[&str], source: &str) -> sluice_ir::ServerCertificate {
    sluice_ir::ServerCertificate {
        server_names: names.iter().map(|s| s.to_string()).collect(),
        cert_chain_pem: c.cert_pem.clone(),
        private_key_pem: c.key_pem.clone(),
        source: source.into(),
    }
}

pub fn ring() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client configuration trusting only `trust`.
pub fn client_tls(trust: &Cert, alpn: &[&str]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust.der.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    cfg
}

/// TLS to 127.0.0.1:port with `sni`, trusting only `trust`; the stream and the leaf presented.
pub async fn tls_connect(
    port: u16,
    sni: &str,
    trust: &Cert,
    alpn: &[&str],
) -> std::io::Result<(
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    rustls::pki_types::CertificateDer<'static>,
)> {
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client_tls(trust, alpn)));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let tls = tokio::time::timeout(
        Duration::from_secs(10),
        connector.connect(
            rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap(),
            tcp,
        ),
    )
    .await
    .map_err(|_| std::io::Error::other("handshake timed out"))??;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    Ok((tls, leaf))
}

/// A TCP backend: every chunk it reads is answered with `<name>:<chunk>`; when the client
/// half-closes, it answers `<name>:bye` and closes.
pub async fn tcp_echo(name: &str) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let name = name.to_string();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(echo_stream(s, name.clone()));
        }
    });
    addr
}

/// Answers every chunk read from `s` with `<name>:<chunk>`, then `<name>:bye` at EOF.
pub async fn echo_stream<S>(mut s: S, name: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16384];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut out = format!("{name}:").into_bytes();
                out.extend_from_slice(&buf[..n]);
                if s.write_all(&out).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = s.write_all(format!("{name}:bye").as_bytes()).await;
    let _ = s.shutdown().await;
}

/// A UDP backend answering every datagram with `<name>:<source port>:<payload>`.
pub async fn udp_echo(name: &str) -> std::net::SocketAddr {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    let name = name.to_string();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, from)) = s.recv_from(&mut buf).await else {
                continue;
            };
            let mut out = format!("{name}:{}:", from.port()).into_bytes();
            out.extend_from_slice(&buf[..n]);
            let _ = s.send_to(&out, from).await;
        }
    });
    addr
}

/// Reads until EOF (or 10 s).
pub async fn read_all<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one chunk (or 10 s).
pub async fn read_some<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16384];
    match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        _ => String::new(),
    }
}
