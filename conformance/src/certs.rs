//! The certificates, Secrets and ConfigMaps the upstream suite creates in code before the base
//! manifests become ready (self-signed server certificates, CAs and CA-signed server/client
//! certificates), generated with rcgen.

use crate::echo::pem_encode_certificate;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Errors while generating certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters.
    #[error("generating certificate {name}: {source}")]
    Rcgen {
        /// Secret or ConfigMap being generated.
        name: String,
        /// Cause.
        source: rcgen::Error,
    },
}

/// A generated certificate (PEM) with its key (PKCS#8 PEM) and subject alternative names.
#[derive(Debug, Clone)]
pub struct CertPair {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PEM.
    pub key_pem: String,
    /// DER of the certificate.
    pub der: Vec<u8>,
    /// SANs as requested (DNS names, URIs, IPs).
    pub sans: Vec<String>,
}

/// Everything generated for one run.
#[derive(Debug, Clone, Default)]
pub struct Generated {
    /// `namespace/name` of each TLS Secret -> its certificate and key.
    pub secrets: BTreeMap<String, CertPair>,
    /// `namespace/name` of each CA ConfigMap -> CA certificate PEM.
    pub ca_config_maps: BTreeMap<String, String>,
    /// The Kubernetes objects (Secrets, ConfigMaps) to write next to the base manifests.
    pub objects: Vec<Value>,
}

impl Generated {
    /// The SANs of a certificate this run generated, by DER.
    pub fn sans_of(&self, der: &[u8]) -> Option<&[String]> {
        self.secrets
            .values()
            .find(|c| c.der == der)
            .map(|c| c.sans.as_slice())
    }
}

const INFRA: &str = "gateway-conformance-infra";
const APP: &str = "gateway-conformance-app-backend";
const WEB: &str = "gateway-conformance-web-backend";

fn err(name: &str) -> impl FnOnce(rcgen::Error) -> CertError + '_ {
    move |source| CertError::Rcgen {
        name: name.to_string(),
        source,
    }
}

fn leaf_params(hosts: &[&str], client: bool) -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "default");
    p.distinguished_name
        .push(DnType::OrganizationName, "Acme Co");
    p.is_ca = IsCa::NoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    for h in hosts {
        let san = if let Ok(ip) = h.parse() {
            SanType::IpAddress(ip)
        } else if h.contains("://") {
            SanType::URI((*h).try_into()?)
        } else {
            SanType::DnsName((*h).try_into()?)
        };
        p.subject_alt_names.push(san);
    }
    Ok(p)
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::OrganizationName, "Kubernetes Gateway API");
    p.distinguished_name.push(DnType::CommonName, "gatewayapi");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    p
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn b64(s: &str) -> String {
    // pem_encode_certificate wraps base64 in PEM armour; take just the body lines.
    pem_encode_certificate(s.as_bytes())
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect()
}

fn tls_secret(ns: &str, name: &str, c: &CertPair) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": b64(&c.cert_pem), "tls.key": b64(&c.key_pem)},
    })
}

fn ca_config_map(ns: &str, name: &str, cert_pem: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns},
        "data": {"ca.crt": cert_pem},
    })
}

impl Generated {
    fn self_signed(&mut self, ns: &str, name: &str, hosts: &[&str]) -> Result<(), CertError> {
        let key = KeyPair::generate().map_err(err(name))?;
        let cert = leaf_params(hosts, false)
            .and_then(|p| p.self_signed(&key))
            .map_err(err(name))?;
        self.add_secret(ns, name, hosts, cert.pem(), key.serialize_pem(), cert.der());
        Ok(())
    }

    fn add_secret(
        &mut self,
        ns: &str,
        name: &str,
        hosts: &[&str],
        cert_pem: String,
        key_pem: String,
        der: &[u8],
    ) {
        let pair = CertPair {
            cert_pem,
            key_pem,
            der: der.to_vec(),
            sans: hosts.iter().map(|h| h.to_string()).collect(),
        };
        self.objects.push(tls_secret(ns, name, &pair));
        self.secrets.insert(format!("{ns}/{name}"), pair);
    }

    fn ca(&mut self, ns: &str, name: &str) -> Result<Ca, CertError> {
        let key = KeyPair::generate().map_err(err(name))?;
        let params = ca_params();
        let cert = params.self_signed(&key).map_err(err(name))?;
        let pem = cert.pem();
        self.objects.push(ca_config_map(ns, name, &pem));
        self.ca_config_maps
            .insert(format!("{ns}/{name}"), pem.clone());
        Ok(Ca {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    fn signed(
        &mut self,
        ca: &Ca,
        ns: &str,
        name: &str,
        hosts: &[&str],
        client: bool,
    ) -> Result<(), CertError> {
        let key = KeyPair::generate().map_err(err(name))?;
        let cert = leaf_params(hosts, client)
            .and_then(|p| p.signed_by(&key, &ca.issuer))
            .map_err(err(name))?;
        // Serve the chain (leaf + CA) so clients trusting the CA can build the path.
        let chain = format!("{}{}", cert.pem(), ca.pem);
        self.add_secret(ns, name, hosts, chain, key.serialize_pem(), cert.der());
        Ok(())
    }
}

/// Generates the Secrets and ConfigMaps upstream's suite setup creates (names as the manifests
/// reference them).
pub fn generate() -> Result<Generated, CertError> {
    let mut g = Generated::default();
    g.self_signed(WEB, "certificate", &["*"])?;
    g.self_signed(
        INFRA,
        "tls-validity-checks-certificate",
        &["*", "*.org", "*.wildcard.org"],
    )?;
    g.ca(WEB, "web-backend-cm")?;

    let ca = g.ca(INFRA, "tls-validity-checks-ca-certificate")?;
    g.signed(
        &ca,
        INFRA,
        "tls-validity-checks-client-certificate",
        &[],
        true,
    )?;
    let ca = g.ca(INFRA, "tls-validity-checks-per-port-ca-certificate")?;
    g.signed(
        &ca,
        INFRA,
        "tls-validity-checks-per-port-client-certificate",
        &[],
        true,
    )?;

    let ca = g.ca(INFRA, "tls-checks-ca-certificate")?;
    g.signed(
        &ca,
        INFRA,
        "tls-checks-certificate",
        &[
            "abc.example.com",
            "spiffe://abc.example.com/test-identity",
            "other.example.com",
        ],
        false,
    )?;
    g.signed(&ca, INFRA, "tls-checks-client-certificate", &[], true)?;
    g.signed(
        &ca,
        INFRA,
        "tls-passthrough-checks-certificate",
        &["abc.example.com"],
        false,
    )?;
    g.signed(
        &ca,
        APP,
        "tls-passthrough-checks-certificate",
        &["abc.example.com"],
        false,
    )?;
    g.signed(
        &ca,
        INFRA,
        "tls-terminate-checks-certificate",
        &["tls.example.com"],
        false,
    )?;
    g.ca(INFRA, "mismatch-ca-certificate")?;
    Ok(g)
}

/// Go's `crypto/x509` hostname matching: exact (case-insensitive) or a leading `*.` wildcard
/// that stands for exactly one label.
pub fn go_hostname_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if pattern.is_empty() || host.is_empty() {
        return false;
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let h: Vec<&str> = host.split('.').collect();
    if p.len() != h.len() {
        return false;
    }
    p.iter()
        .zip(&h)
        .enumerate()
        .all(|(i, (pl, hl))| (i == 0 && *pl == "*" && !hl.is_empty()) || pl == hl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_every_named_object() {
        let g = generate().expect("generate");
        for name in [
            "gateway-conformance-web-backend/certificate",
            "gateway-conformance-infra/tls-validity-checks-certificate",
            "gateway-conformance-infra/tls-checks-certificate",
            "gateway-conformance-infra/tls-checks-client-certificate",
            "gateway-conformance-app-backend/tls-passthrough-checks-certificate",
            "gateway-conformance-infra/tls-terminate-checks-certificate",
            "gateway-conformance-infra/tls-validity-checks-per-port-client-certificate",
        ] {
            assert!(g.secrets.contains_key(name), "{name}");
        }
        for name in [
            "gateway-conformance-web-backend/web-backend-cm",
            "gateway-conformance-infra/tls-checks-ca-certificate",
            "gateway-conformance-infra/mismatch-ca-certificate",
            "gateway-conformance-infra/tls-validity-checks-ca-certificate",
        ] {
            assert!(g.ca_config_maps.contains_key(name), "{name}");
        }
        assert_eq!(g.objects.len(), g.secrets.len() + g.ca_config_maps.len());
        let s = &g.secrets["gateway-conformance-infra/tls-checks-certificate"];
        assert!(s.cert_pem.matches("BEGIN CERTIFICATE").count() == 2);
    }

    #[test]
    fn go_wildcards() {
        assert!(go_hostname_matches("*.org", "example.org"));
        assert!(go_hostname_matches("example.org", "EXAMPLE.org"));
        assert!(!go_hostname_matches("*", "example.org"));
        assert!(!go_hostname_matches("*.org", "a.example.org"));
        assert!(go_hostname_matches(
            "*.wildcard.org",
            "fourth-example.wildcard.org"
        ));
    }
}
