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

/// Builds the server configuration of an HTTPS listener.
pub(crate) fn server_config(
    path: &str,
    t: &TlsTermination,
) -> Result<Arc<ServerConfig>, CompileError> {
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
    r.wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    if r.default.is_none() {
        r.default = first;
    }
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| CompileError::new(path, format!("TLS versions: {e}")))?;
    let builder = match &t.client_validation {
        None => builder.with_no_client_auth(),
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
            let verifier = vb
                .build()
                .map_err(|e| CompileError::new(path, format!("client validation: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(r));
    cfg.alpn_protocols = if t.alpn.is_empty() {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        t.alpn.iter().map(|a| a.as_bytes().to_vec()).collect()
    };
    Ok(Arc::new(cfg))
}
