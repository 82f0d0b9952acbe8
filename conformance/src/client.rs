//! Clients the runner sends with: one fresh connection per request, as upstream's round tripper
//! (keep-alives off, redirects never followed), over HTTP/1.1, h2c prior knowledge or HTTPS.

use crate::certs::go_hostname_matches;
use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// Wire protocol of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 over cleartext TCP.
    Http1,
    /// HTTP/2 over cleartext TCP without upgrade.
    H2cPriorKnowledge,
    /// HTTP/1.1 over TLS.
    Https,
}

/// TLS client parameters.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// SNI and the name the server certificate must be valid for.
    pub server_name: String,
    /// Trusted certificates (PEM); a self-signed server certificate trusts itself.
    pub roots_pem: String,
    /// Client certificate chain and key (PEM), presented when the server asks for one.
    pub client_cert: Option<(String, String)>,
    /// SANs of certificates this run generated (DER -> SANs), for Go-style wildcard matching.
    pub known_sans: Arc<HashMap<Vec<u8>, Vec<String>>>,
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Value of the Host header (`:authority`).
    pub host: String,
    /// Method.
    pub method: String,
    /// Path including the query string.
    pub path: String,
    /// Headers, sent in this order.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Option<String>,
    /// Wire protocol.
    pub protocol: Protocol,
    /// TLS parameters (HTTPS only).
    pub tls: Option<ClientTls>,
    /// Whole-exchange timeout.
    pub timeout: Duration,
}

/// What came back.
#[derive(Debug, Clone, Default)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// `HTTP/1.1`, `HTTP/2.0`.
    pub protocol: String,
    /// Response headers, names lower-case, in arrival order.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
    /// Whether the server asked for a client certificate during the handshake.
    pub client_cert_requested: bool,
}

impl HttpResponse {
    /// All values of a header joined with `,`, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        let vals: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!vals.is_empty()).then(|| vals.join(","))
    }
}

/// Sends one request on a fresh connection.
pub async fn round_trip(req: &HttpRequest) -> anyhow::Result<HttpResponse> {
    tokio::time::timeout(req.timeout, round_trip_inner(req))
        .await
        .map_err(|_| anyhow::anyhow!("request timed out after {:?}", req.timeout))?
}

fn build(req: &HttpRequest, absolute: bool) -> anyhow::Result<http::Request<Full<Bytes>>> {
    let uri = if absolute {
        format!("http://{}{}", req.host, req.path)
    } else {
        req.path.clone()
    };
    let mut b = http::Request::builder()
        .method(req.method.as_str())
        .uri(uri.as_str());
    if !absolute {
        b = b.header(http::header::HOST, req.host.as_str());
    }
    for (k, v) in &req.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let body = req.body.clone().unwrap_or_default();
    b.body(Full::new(Bytes::from(body)))
        .with_context(|| format!("building request {} {}", req.method, req.path))
}

async fn collect(
    resp: http::Response<hyper::body::Incoming>,
    client_cert_requested: bool,
) -> anyhow::Result<HttpResponse> {
    let status = resp.status().as_u16();
    let protocol = format!("{:?}", resp.version());
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp
        .into_body()
        .collect()
        .await
        .context("reading response body")?
        .to_bytes();
    Ok(HttpResponse {
        status,
        protocol,
        headers,
        body,
        client_cert_requested,
    })
}

async fn round_trip_inner(req: &HttpRequest) -> anyhow::Result<HttpResponse> {
    let stream = TcpStream::connect(req.addr)
        .await
        .with_context(|| format!("connecting to {}", req.addr))?;
    let _ = stream.set_nodelay(true);
    match req.protocol {
        Protocol::Http1 => {
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let resp = send.send_request(build(req, false)?).await?;
            collect(resp, false).await
        }
        Protocol::H2cPriorKnowledge => {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await?;
            tokio::spawn(conn);
            let resp = send.send_request(build(req, true)?).await?;
            collect(resp, false).await
        }
        Protocol::Https => {
            let tls = req
                .tls
                .as_ref()
                .context("https request without TLS parameters")?;
            let (cfg, asked) = client_config(tls, vec![b"http/1.1".to_vec()])?;
            let name = ServerName::try_from(tls.server_name.clone())
                .with_context(|| format!("invalid server name {:?}", tls.server_name))?;
            let s = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, stream)
                .await
                .context("TLS handshake")?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
            tokio::spawn(conn);
            let resp = send.send_request(build(req, false)?).await?;
            collect(resp, asked.load(Ordering::SeqCst)).await
        }
    }
}

/// Verifies the chain with webpki and the name with Go's rules (which accept `*.org`).
#[derive(Debug)]
struct GoNameVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    known_sans: Arc<HashMap<Vec<u8>, Vec<String>>>,
}

impl ServerCertVerifier for GoNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {
                // webpki checks the chain before the name, so the chain is valid here.
                let host = server_name.to_str();
                let ok = self
                    .known_sans
                    .get(end_entity.as_ref())
                    .is_some_and(|sans| sans.iter().any(|s| go_hostname_matches(s, &host)));
                if ok {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName,
                    ))
                }
            }
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Presents a client certificate when asked and remembers that it was asked.
#[derive(Debug)]
struct RecordingCertResolver {
    key: Arc<rustls::sign::CertifiedKey>,
    asked: Arc<AtomicBool>,
}

impl rustls::client::ResolvesClientCert for RecordingCertResolver {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.asked.store(true, Ordering::SeqCst);
        Some(self.key.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

fn pem_certs(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    Ok(rustls_pemfile::certs(&mut pem.as_bytes()).collect::<Result<Vec<_>, _>>()?)
}

fn pem_key(pem: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut pem.as_bytes())?.context("no private key in PEM")
}

/// A rustls client configuration for `tls`, and a flag set when the server asked for a client
/// certificate.
pub fn client_config(
    tls: &ClientTls,
    alpn: Vec<Vec<u8>>,
) -> anyhow::Result<(Arc<rustls::ClientConfig>, Arc<AtomicBool>)> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certs(&tls.roots_pem)? {
        roots.add(c).context("adding trusted certificate")?;
    }
    let inner = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
        .build()
        .context("building certificate verifier")?;
    let verifier = Arc::new(GoNameVerifier {
        inner,
        known_sans: tls.known_sans.clone(),
    });
    let builder = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let asked = Arc::new(AtomicBool::new(false));
    let mut cfg = match &tls.client_cert {
        Some((cert, key)) => {
            let provider = rustls::crypto::ring::default_provider();
            let certified =
                rustls::sign::CertifiedKey::from_der(pem_certs(cert)?, pem_key(key)?, &provider)
                    .context("client certificate")?;
            builder.with_client_cert_resolver(Arc::new(RecordingCertResolver {
                key: Arc::new(certified),
                asked: asked.clone(),
            }))
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn;
    Ok((Arc::new(cfg), asked))
}

/// Whether a TLS handshake with `server_name` at `addr` is rejected (connection reset or
/// closed during the handshake), as upstream's `MakeTLSConnectionAndExpectEventuallyConnectionRejection`
/// checks. `Ok(false)` means the handshake got a server hello through.
pub async fn tls_connection_rejected(
    addr: SocketAddr,
    server_name: &str,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    #[derive(Debug)]
    struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);
    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => bail!("client could not connect: {e}"),
        Err(_) => bail!("connect timed out"),
    };
    let name = ServerName::try_from(server_name.to_string())?;
    match tokio::time::timeout(
        timeout,
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, stream),
    )
    .await
    {
        Ok(Ok(_)) => Ok(false),
        Ok(Err(e)) => {
            let rejected = matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) || e.to_string().contains("reset by peer");
            if rejected {
                Ok(true)
            } else {
                bail!("handshake failed without a reset or close: {e}")
            }
        }
        Err(_) => bail!("handshake timed out"),
    }
}

/// Opens a WebSocket to `ws://host/path` through `addr`, sends a text and a binary message and
/// returns an error unless both come back unchanged.
pub async fn websocket_echo(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let fut = async {
        let stream = TcpStream::connect(addr).await?;
        let url = format!("ws://{host}{path}");
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                url.as_str(),
            )?;
        req.headers_mut().insert(
            http::header::ORIGIN,
            http::HeaderValue::from_static("ws://gateway/conformance"),
        );
        let (mut ws, _) = tokio_tungstenite::client_async(req, stream).await?;
        let text = "Websocket Support!";
        ws.send(Message::text(text)).await?;
        match ws.next().await {
            Some(Ok(m)) if m.clone().into_data().as_ref() == text.as_bytes() => {}
            other => bail!("text frame not echoed: got {other:?}"),
        }
        let bin = vec![1u8, 2, 3, 4, 5, 6, 7];
        ws.send(Message::binary(bin.clone())).await?;
        match ws.next().await {
            Some(Ok(m)) if m.clone().into_data().as_ref() == bin.as_slice() => {}
            other => bail!("binary frame not echoed: got {other:?}"),
        }
        let _ = ws.close(None).await;
        Ok(())
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| anyhow::anyhow!("websocket exchange timed out"))?
}

/// Connects to a TCP echo through `addr`, reads the welcome line, sends `TEST` and returns the
/// JSON answer.
pub async fn tcp_echo_test(
    addr: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let fut = async {
        let stream = TcpStream::connect(addr).await?;
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        let welcome = lines
            .next_line()
            .await?
            .context("connection closed before welcome")?;
        if welcome != crate::echo::TCP_WELCOME.trim_end() {
            bail!("unexpected welcome line {welcome:?}");
        }
        w.write_all(b"TEST\n").await?;
        let line = lines
            .next_line()
            .await?
            .context("connection closed before answer")?;
        serde_json::from_str(&line).with_context(|| format!("bad TEST answer {line:?}"))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| anyhow::anyhow!("tcp exchange timed out"))?
}

/// Sends one datagram to a UDP echo through `addr` and returns the JSON answer.
pub async fn udp_echo(
    addr: SocketAddr,
    payload: &str,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let sock = tokio::net::UdpSocket::bind(bind).await?;
    sock.connect(addr).await?;
    sock.send(payload.as_bytes()).await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(timeout, sock.recv(&mut buf))
        .await
        .map_err(|_| anyhow::anyhow!("no UDP answer within {timeout:?}"))??;
    Ok(serde_json::from_slice(&buf[..n])?)
}
