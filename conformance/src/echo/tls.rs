//! TLS for the echo backend: server configuration from PEM files and the Go-style names the
//! upstream echo server reports (version, cipher suite, PEM peer certificates).

use super::{EchoMode, EchoTls};
use anyhow::Context as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// Installs the ring crypto provider as the process default (idempotent).
pub(crate) fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub(crate) fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    Ok(certs)
}

pub(crate) fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .with_context(|| format!("parsing private key in {}", path.display()))?
        .with_context(|| format!("no private key in {}", path.display()))
}

/// The server configuration of an echo TLS port: ALPN h2 + http/1.1 for HTTP, h2 for gRPC,
/// none for TCP; client certificates verified against `client_ca` when the client sends one.
pub(crate) fn server_config(
    t: &EchoTls,
    mode: EchoMode,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    ensure_crypto_provider();
    let certs = read_certs(&t.cert)?;
    let key = read_key(&t.key)?;
    let builder = rustls::ServerConfig::builder();
    let builder = match &t.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca)? {
                roots.add(c).context("client CA certificate")?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .allow_unauthenticated()
                .build()
                .context("client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .context("server certificate and key")?;
    cfg.alpn_protocols = match mode {
        EchoMode::Http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        EchoMode::Grpc => vec![b"h2".to_vec()],
        EchoMode::Tcp | EchoMode::Udp => vec![],
    };
    Ok(Arc::new(cfg))
}

/// Go's name of a TLS version (`TLSv1.3`).
pub fn tls_version_name(v: Option<rustls::ProtocolVersion>) -> String {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".into(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".into(),
        Some(rustls::ProtocolVersion::TLSv1_1) => "TLSv1.1".into(),
        Some(rustls::ProtocolVersion::TLSv1_0) => "TLSv1.0".into(),
        _ => String::new(),
    }
}

/// Go's name of a cipher suite (`TLS_AES_128_GCM_SHA256`,
/// `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`).
pub fn cipher_suite_name(s: Option<rustls::SupportedCipherSuite>) -> String {
    let Some(s) = s else { return String::new() };
    let name = format!("{:?}", s.suite());
    match name.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => name,
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A DER certificate as a PEM block, with 64-column lines as Go's `pem.Encode` writes it.
pub fn pem_encode_certificate(der: &[u8]) -> String {
    let b = base64(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn pem_lines_are_64_columns() {
        let pem = pem_encode_certificate(&[7u8; 100]);
        let body: Vec<&str> = pem.lines().skip(1).collect();
        assert_eq!(body[0].len(), 64);
        assert!(pem.ends_with("-----END CERTIFICATE-----\n"));
    }
}
