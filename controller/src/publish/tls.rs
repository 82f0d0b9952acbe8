//! The snapshot stream's certificate authority: the controller generates it once (or loads it
//! from the `sluice-ca` Secret), issues its own server certificate at every start, and one
//! client certificate per agent identity. The client certificate's common name is the
//! agent's [`Scope`](super::Scope): `sluice-agent` for node agents, `gateway:<ns>/<name>` for
//! the proxy Deployment of one dedicated Gateway.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::net::IpAddr;

/// Errors of certificate generation and loading.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen failed (bad key, bad name).
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM input could not be read.
    #[error("{what}: {message}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// Why.
        message: String,
    },
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, PartialEq, Eq)]
pub struct CertKey {
    /// Certificate (PEM).
    pub cert_pem: String,
    /// PKCS#8 private key (PEM).
    pub key_pem: String,
}

impl std::fmt::Debug for CertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertKey").finish_non_exhaustive()
    }
}

/// The certificate authority of the snapshot stream.
#[derive(Clone, Debug)]
pub struct Ca {
    /// The CA certificate and key.
    pub pair: CertKey,
}

/// Common name of the CA certificate.
pub const CA_NAME: &str = "sluice-agent-ca";

impl Ca {
    /// A new self-signed CA (ECDSA P-256).
    pub fn generate() -> Result<Ca, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(CA_NAME);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            pair: CertKey {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            },
        })
    }

    /// A CA from its certificate and key (PEM), checked to belong together.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, TlsError> {
        let ca = Ca {
            pair: CertKey {
                cert_pem: cert_pem.to_string(),
                key_pem: key_pem.to_string(),
            },
        };
        // Issue a throwaway certificate to prove the pair is usable.
        ca.issuer()?;
        Ok(ca)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, TlsError> {
        let key = KeyPair::from_pem(&self.pair.key_pem).map_err(|e| TlsError::Pem {
            what: "CA key",
            message: e.to_string(),
        })?;
        Issuer::from_ca_cert_pem(&self.pair.cert_pem, key).map_err(|e| TlsError::Pem {
            what: "CA certificate",
            message: e.to_string(),
        })
    }

    /// A server certificate for the controller's stream endpoint.
    pub fn issue_server(&self, dns_names: &[String], ips: &[IpAddr]) -> Result<CertKey, TlsError> {
        let mut params = CertificateParams::new(dns_names.to_vec())?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.distinguished_name = name(dns_names.first().map_or("sluice-controller", |s| s));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate whose common name is the agent's scope.
    pub fn issue_client(&self, common_name: &str) -> Result<CertKey, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, mut params: CertificateParams) -> Result<CertKey, TlsError> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// The subject common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

/// True when `cert_pem` was issued by `ca` (same issuer name and a valid signature).
pub fn issued_by(cert_pem: &str, ca: &Ca) -> bool {
    let parse = |pem: &str| -> Option<Vec<u8>> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
        Some(p.contents)
    };
    let (Some(cert), Some(ca_der)) = (parse(cert_pem), parse(&ca.pair.cert_pem)) else {
        return false;
    };
    let (Ok((_, c)), Ok((_, a))) = (
        x509_parser::parse_x509_certificate(&cert),
        x509_parser::parse_x509_certificate(&ca_der),
    ) else {
        return false;
    };
    c.verify_signature(Some(a.public_key())).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_the_scope_and_chain_to_the_ca() {
        let ca = Ca::generate().unwrap();
        let again = Ca::from_pem(&ca.pair.cert_pem, &ca.pair.key_pem).unwrap();
        let client = again.issue_client("gateway:team-a/web").unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(client.cert_pem.as_bytes()).unwrap();
        assert_eq!(
            common_name(&pem.contents).as_deref(),
            Some("gateway:team-a/web")
        );
        assert!(issued_by(&client.cert_pem, &ca));
        let other = Ca::generate().unwrap();
        assert!(!issued_by(&client.cert_pem, &other));
        assert!(Ca::from_pem("not a pem", &ca.pair.key_pem).is_err());
    }
}
