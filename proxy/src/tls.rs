//! TLS termination: rustls server configurations (ring provider, TLS 1.2 and 1.3) with the
//! certificate chosen by SNI (exact name, then the longest wildcard, then the default
//! certificate), ALPN and optional client certificate validation.

use crate::compile::CompileError;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use sluice_ir::{ClientValidationMode, ServerCertificate, TlsTermination};
use std::collections::HashMap;
use std::sync::Arc;

/// The ring crypto provider, shared.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static P: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

#[derive(Debug, Default)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// (`.suffix`, key), longest suffix first, IR order among equals.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            let name = name.to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return Some(k.clone());
            }
            for (suffix, k) in &self.wildcard {
                if name.len() > suffix.len() && name.ends_with(suffix.as_str()) {
                    let label = &name[..name.len() - suffix.len()];
                    if !label.is_empty() {
                        return Some(k.clone());
                    }
                }
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

fn certified_key(path: &str, c: &ServerCertificate) -> Result<Arc<CertifiedKey>, CompileError> {
    let what = if c.source.is_empty() {
        path.to_string()
    } else {
        format!("{path} (Secret {})", c.source)
    };
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(c.cert_chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| CompileError::new(&what, format!("invalid certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(CompileError::new(&what, "no certificate in PEM"));
    }
    let key = PrivateKeyDer::from_pem_slice(c.private_key_pem.as_bytes())
        .map_err(|e| CompileError::new(&what, format!("invalid private key PEM: {e}")))?;
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| CompileError::new(&what, format!("unsupported private key: {e}")))?;
    let ck = CertifiedKey::new(certs, signer);
    if let Err(e) = ck.keys_match()
        && !matches!(
            e,
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)
        )
    {
        return Err(CompileError::new(
            &what,
            format!("certificate and key do not match: {e}"),
        ));
    }
    Ok(Arc::new(ck))
}

/// The compiled TLS settings of a listener: the TCP configuration and, for HTTP/3, the QUIC one
/// (same certificates and client validation, TLS 1.3, ALPN `h3`).
#[derive(Clone)]
pub(crate) struct ListenerTls {
    pub(crate) tcp: Arc<ServerConfig>,
    pub(crate) quic: Option<quinn::ServerConfig>,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("alpn", &self.tcp.alpn_protocols)
            .field("quic", &self.quic.is_some())
            .finish()
    }
}

/// Builds the server configurations of a listener. `default_alpn`: offered when the IR lists
/// none (`h2`, `http/1.1` on HTTPS; nothing on TLS listeners that forward streams).
pub(crate) fn server_config(
    path: &str,
    t: &TlsTermination,
    default_alpn: &[&[u8]],
    http3: bool,
) -> Result<ListenerTls, CompileError> {
    let mut r = SniResolver::default();
    let mut first = None;
    for (i, c) in t.certificates.iter().enumerate() {
        let key = certified_key(&format!("{path}.tls.certificates[{i}]"), c)?;
        first.get_or_insert_with(|| key.clone());
        if c.server_names.is_empty() {
            r.default.get_or_insert_with(|| key.clone());
        }
        for n in &c.server_names {
            let n = n.to_ascii_lowercase();
            if let Some(suffix) = n.strip_prefix('*') {
                r.wildcard.push((suffix.to_string(), key.clone()));
            } else {
                r.exact.entry(n).or_insert_with(|| key.clone());
            }
        }
    }
    if first.is_none() {
        return Err(CompileError::new(path, "no certificate"));
    }
    r.wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    if r.default.is_none() {
        r.default = first;
    }
    let resolver: Arc<dyn ResolvesServerCert> = Arc::new(r);
    let verifier = match &t.client_validation {
        None => None,
        Some(v) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(v.ca_pem.as_bytes()) {
                let c =
                    c.map_err(|e| CompileError::new(path, format!("invalid client CA PEM: {e}")))?;
                roots.add(c).map_err(|e| {
                    CompileError::new(path, format!("invalid client CA certificate: {e}"))
                })?;
            }
            let vb = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let vb = match v.mode {
                ClientValidationMode::AllowValidOnly => vb,
                ClientValidationMode::AllowInsecureFallback => vb.allow_unauthenticated(),
            };
            Some(
                vb.build()
                    .map_err(|e| CompileError::new(path, format!("client validation: {e}")))?,
            )
        }
    };
    let build = |versions: &[&'static rustls::SupportedProtocolVersion]| {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|e| CompileError::new(path, format!("TLS versions: {e}")))?;
        let builder = match &verifier {
            None => builder.with_no_client_auth(),
            Some(v) => builder.with_client_cert_verifier(v.clone()),
        };
        Ok::<_, CompileError>(builder.with_cert_resolver(resolver.clone()))
    };
    let mut cfg = build(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    cfg.alpn_protocols = if t.alpn.is_empty() {
        default_alpn.iter().map(|a| a.to_vec()).collect()
    } else {
        t.alpn.iter().map(|a| a.as_bytes().to_vec()).collect()
    };
    let quic = if http3 {
        let mut q = build(&[&rustls::version::TLS13])?;
        q.alpn_protocols = vec![b"h3".to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(q)
            .map_err(|e| CompileError::new(path, format!("QUIC TLS: {e}")))?;
        let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        // Every worker has its own endpoint on the port (SO_REUSEPORT, spread by client
        // address): a client that moved would reach an endpoint that does not know it.
        sc.migration(false);
        Some(sc)
    } else {
        None
    };
    Ok(ListenerTls {
        tcp: Arc::new(cfg),
        quic,
    })
}
