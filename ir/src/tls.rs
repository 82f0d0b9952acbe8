//! TLS: termination on listeners, SNI routing, TLS to upstreams.

use crate::{RouteId, WeightedBackend};
use serde::{Deserialize, Serialize};

/// TLS termination on a listener.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsTermination {
    /// Certificates chosen by SNI: the first whose `serverNames` match wins (exact names before
    /// wildcards); a certificate with empty `serverNames` is the default for any SNI (and for
    /// clients that send none).
    pub certificates: Vec<ServerCertificate>,
    /// ALPN protocols offered, in preference order (default `h2`, `http/1.1` for HTTPS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
    /// Client certificate validation (Gateway `tls.frontend`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_validation: Option<ClientValidation>,
}

/// A certificate chain and its key, PEM. The admin API's `/config_dump` redacts the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerCertificate {
    /// Hostname patterns (`foo.com`, `*.foo.com`) this certificate serves; empty = default.
    #[serde(default)]
    pub server_names: Vec<String>,
    /// Leaf first, PEM.
    pub cert_chain_pem: String,
    /// PKCS#8, PKCS#1 or SEC1 private key, PEM.
    pub private_key_pem: String,
    /// The Secret it came from, `namespace/name`.
    #[serde(default)]
    pub source: String,
}

/// How client certificates are checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientValidation {
    /// Trusted CA certificates, PEM (concatenated).
    pub ca_pem: String,
    /// Require a valid certificate, or accept connections without one.
    #[serde(default)]
    pub mode: ClientValidationMode,
}

/// Gateway API `frontendValidation.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ClientValidationMode {
    /// Only connections with a valid client certificate are accepted. Default.
    #[default]
    AllowValidOnly,
    /// Connections without a (valid) certificate are accepted too.
    AllowInsecureFallback,
}

/// TLS to upstream endpoints (BackendTLSPolicy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamTls {
    /// SNI sent, and the name verified when `subjectAltNames` is empty.
    pub sni: String,
    /// Trusted CA certificates, PEM; `None` = the system's trust store; empty = no certificate
    /// is trusted and every connection fails verification (fail closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Names the server certificate must carry (any one), instead of `sni`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<SubjectAltName>,
    /// Client certificate presented to the upstream (Gateway `tls.backend.clientCertificateRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ServerCertificate>,
    /// ALPN offered to the upstream.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
}

/// A subject alternative name to verify.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SubjectAltName {
    /// DNS name.
    Hostname(String),
    /// URI (e.g. SPIFFE id).
    Uri(String),
}

/// How a TLS route handles the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum TlsMode {
    /// Forward the encrypted stream untouched (the ClientHello is only read). Default.
    #[default]
    Passthrough,
    /// Terminate with the listener's certificates and forward the plain stream.
    Terminate,
}

/// A TLSRoute entry: SNI hostnames to backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsRoute {
    /// Where it came from.
    pub id: RouteId,
    /// SNI patterns (`foo.com`, `*.foo.com`, `*`); exact beats wildcard, longer suffix beats shorter.
    pub hostnames: Vec<String>,
    /// Passthrough or terminate.
    #[serde(default)]
    pub mode: TlsMode,
    /// Weighted backends; chosen once per connection.
    pub backends: Vec<WeightedBackend>,
}
