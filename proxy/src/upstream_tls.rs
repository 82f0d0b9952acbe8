//! TLS to upstream endpoints (BackendTLSPolicy): rustls client configurations and the stream
//! type that carries plain or TLS connections to endpoints.

use crate::compile::CompileError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sluice_ir::{SubjectAltName, UpstreamProtocol, UpstreamTls};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How to open TLS to a cluster's endpoints.
pub(crate) struct UpstreamTlsRt {
    pub(crate) connector: tokio_rustls::TlsConnector,
    pub(crate) server_name: ServerName<'static>,
}

impl std::fmt::Debug for UpstreamTlsRt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTlsRt")
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// Accepts the server certificate when its chain leads to a trusted CA and it carries any of
/// the listed subject alternative names (the IR's `subjectAltNames`: DNS names, or URIs such
/// as SPIFFE ids compared exactly), instead of the SNI.
#[derive(Debug)]
struct SanVerifier {
    roots: Arc<RootCertStore>,
    names: Vec<ServerName<'static>>,
    uris: Vec<String>,
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl SanVerifier {
    fn has_uri(&self, end_entity: &CertificateDer<'_>) -> bool {
        if self.uris.is_empty() {
            return false;
        }
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(end_entity.as_ref()) else {
            return false;
        };
        let Ok(Some(san)) = cert.subject_alternative_name() else {
            return false;
        };
        san.value.general_names.iter().any(|n| {
            matches!(n, x509_parser::extensions::GeneralName::URI(u) if self.uris.iter().any(|w| w == u))
        })
    }
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        if self
            .names
            .iter()
            .any(|n| rustls::client::verify_server_name(&parsed, n).is_ok())
            || self.has_uri(end_entity)
        {
            return Ok(ServerCertVerified::assertion());
        }
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The system trust store (`WellKnownCACertificates: System`), loaded once.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: std::sync::OnceLock<Arc<RootCertStore>> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let loaded = rustls_native_certs::load_native_certs();
            for e in &loaded.errors {
                tracing::warn!(error = %e, "reading the system trust store");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                tracing::warn!(
                    "the system trust store has no usable CA certificate; TLS to upstreams without a CA will fail verification"
                );
            } else {
                tracing::debug!(added, ignored, "system trust store loaded");
            }
            Arc::new(roots)
        })
        .clone()
}

/// Compiles a cluster's upstream TLS settings.
pub(crate) fn compile(
    path: &str,
    t: &UpstreamTls,
    protocol: UpstreamProtocol,
) -> Result<UpstreamTlsRt, CompileError> {
    let err = |m: String| CompileError::new(format!("{path}.tls"), m);
    let roots = match &t.ca_pem {
        None => system_roots(),
        // An empty bundle trusts nothing: every handshake fails verification, so requests get
        // a 5xx (a BackendTLSPolicy none of whose CA references resolved fails closed).
        Some(ca) if ca.trim().is_empty() => Arc::new(RootCertStore::empty()),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                let c = c.map_err(|e| err(format!("invalid CA PEM: {e}")))?;
                roots
                    .add(c)
                    .map_err(|e| err(format!("invalid CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(err("no CA certificate in PEM".into()));
            }
            Arc::new(roots)
        }
    };
    let server_name = ServerName::try_from(t.sni.clone())
        .map_err(|e| err(format!("invalid SNI {:?}: {e}", t.sni)))?;
    let provider = crate::tls::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?;
    let builder = if t.subject_alt_names.is_empty() {
        builder.with_root_certificates(roots)
    } else {
        let mut names = Vec::new();
        let mut uris = Vec::new();
        for san in &t.subject_alt_names {
            match san {
                SubjectAltName::Hostname(h) => names
                    .push(ServerName::try_from(h.clone()).map_err(|e| {
                        err(format!("invalid subject alternative name {h:?}: {e}"))
                    })?),
                SubjectAltName::Uri(u) => uris.push(u.clone()),
            }
        }
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SanVerifier {
                roots,
                names,
                uris,
                algs: provider.signature_verification_algorithms,
            }))
    };
    let mut cfg = match &t.client_certificate {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(c.cert_chain_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|e| err(format!("invalid client certificate PEM: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(c.private_key_pem.as_bytes())
                .map_err(|e| err(format!("invalid client key PEM: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| err(format!("client certificate: {e}")))?
        }
    };
    cfg.alpn_protocols = if !t.alpn.is_empty() {
        t.alpn.iter().map(|a| a.as_bytes().to_vec()).collect()
    } else if matches!(protocol, UpstreamProtocol::H2 | UpstreamProtocol::H2c) {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(UpstreamTlsRt {
        connector: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
        server_name,
    })
}

/// A connection to an endpoint, plain or TLS.
#[derive(Debug)]
pub(crate) enum UpStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl UpStream {
    /// The TCP socket underneath.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            UpStream::Plain(s) => s,
            UpStream::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for UpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpStream::Plain(s) => s.is_write_vectored(),
            UpStream::Tls(s) => s.is_write_vectored(),
        }
    }
}
