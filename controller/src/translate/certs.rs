//! TLS material from Secrets and ConfigMaps: PEM parsing and key/certificate consistency
//! checks, done here (pure, no I/O) so that a bad Secret becomes a status condition instead of
//! a data-plane failure.

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A validated certificate chain and key, PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// Leaf first.
    pub cert_chain_pem: String,
    /// The private key.
    pub private_key_pem: String,
}

fn secret_value(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    if let Some(v) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
        return Some(v.as_bytes().to_vec());
    }
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
}

fn name_of(secret: &Secret) -> String {
    format!(
        "{}/{}",
        secret.metadata.namespace.as_deref().unwrap_or_default(),
        secret.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Parses PEM certificates; at least one is required.
pub fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("malformed PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate found".into());
    }
    Ok(certs)
}

/// Checks a PEM chain and key: both parse, the key type is supported, and the key belongs to
/// the leaf certificate.
pub fn check_key_pair(cert_pem: &[u8], key_pem: &[u8]) -> Result<(), String> {
    let certs = parse_certs(cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("malformed PEM private key: {e}"))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    let ck = rustls::sign::CertifiedKey::new(certs, signing);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err("private key does not match the certificate".into())
        }
        Err(e) => Err(format!("invalid certificate: {e}")),
    }
}

/// The key pair of a `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`; `stringData` is read
/// too). A Secret without a type is accepted (standalone files often omit it).
pub fn tls_secret(secret: &Secret) -> Result<KeyPair, String> {
    let name = name_of(secret);
    if let Some(t) = secret.type_.as_deref()
        && t != "kubernetes.io/tls"
    {
        return Err(format!(
            "Secret {name} has type {t:?}, expected \"kubernetes.io/tls\""
        ));
    }
    let crt = secret_value(secret, "tls.crt")
        .ok_or_else(|| format!("Secret {name} has no \"tls.crt\""))?;
    let key = secret_value(secret, "tls.key")
        .ok_or_else(|| format!("Secret {name} has no \"tls.key\""))?;
    check_key_pair(&crt, &key).map_err(|e| format!("Secret {name}: {e}"))?;
    let text = |b: Vec<u8>, what: &str| {
        String::from_utf8(b).map_err(|_| format!("Secret {name}: {what} is not UTF-8 PEM"))
    };
    Ok(KeyPair {
        cert_chain_pem: text(crt, "tls.crt")?,
        private_key_pem: text(key, "tls.key")?,
    })
}

/// Checks a PEM CA bundle: one or more certificates usable as trust anchors.
pub fn check_ca_bundle(pem: &str) -> Result<(), String> {
    let certs = parse_certs(pem.as_bytes())?;
    let mut store = rustls::RootCertStore::empty();
    for c in certs {
        store
            .add(c)
            .map_err(|e| format!("invalid CA certificate: {e}"))?;
    }
    Ok(())
}

/// The validated `ca.crt` of a ConfigMap.
pub fn ca_config_map(cm: &ConfigMap) -> Result<String, String> {
    let name = format!(
        "{}/{}",
        cm.metadata.namespace.as_deref().unwrap_or_default(),
        cm.metadata.name.as_deref().unwrap_or_default()
    );
    let pem = cm
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .ok_or_else(|| format!("ConfigMap {name} has no \"ca.crt\" key"))?;
    check_ca_bundle(pem).map_err(|e| format!("ConfigMap {name}: {e}"))?;
    Ok(pem.clone())
}

/// The validated `ca.crt` of a Secret.
pub fn ca_secret(secret: &Secret) -> Result<String, String> {
    let name = name_of(secret);
    let pem = secret_value(secret, "ca.crt")
        .ok_or_else(|| format!("Secret {name} has no \"ca.crt\" key"))?;
    let pem = String::from_utf8(pem).map_err(|_| format!("Secret {name}: ca.crt is not UTF-8"))?;
    check_ca_bundle(&pem).map_err(|e| format!("Secret {name}: {e}"))?;
    Ok(pem)
}
