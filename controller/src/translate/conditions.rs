//! Condition types and reasons from the Gateway API spec, and small constructors.

use sluice_ir::status::Condition;

/// `Accepted`.
pub const ACCEPTED: &str = "Accepted";
/// `Programmed`.
pub const PROGRAMMED: &str = "Programmed";
/// `ResolvedRefs`.
pub const RESOLVED_REFS: &str = "ResolvedRefs";
/// `Conflicted` (listeners).
pub const CONFLICTED: &str = "Conflicted";
/// `SupportedVersion` (GatewayClass).
pub const SUPPORTED_VERSION: &str = "SupportedVersion";
/// `PartiallyInvalid` (routes with some invalid rules).
pub const PARTIALLY_INVALID: &str = "PartiallyInvalid";
/// `InsecureFrontendValidationMode` (Gateway with `AllowInsecureFallback`).
pub const INSECURE_FRONTEND_VALIDATION_MODE: &str = "InsecureFrontendValidationMode";

/// Reasons, named as in the Gateway API Go constants.
pub mod reason {
    pub const INVALID_PARAMETERS: &str = "InvalidParameters";
    pub const INVALID: &str = "Invalid";
    pub const LISTENERS_NOT_VALID: &str = "ListenersNotValid";
    pub const UNSUPPORTED_ADDRESS: &str = "UnsupportedAddress";
    pub const ADDRESS_NOT_ASSIGNED: &str = "AddressNotAssigned";
    pub const ADDRESS_NOT_USABLE: &str = "AddressNotUsable";
    pub const NO_CONFLICTS: &str = "NoConflicts";
    pub const PROTOCOL_CONFLICT: &str = "ProtocolConflict";
    pub const HOSTNAME_CONFLICT: &str = "HostnameConflict";
    pub const UNSUPPORTED_PROTOCOL: &str = "UnsupportedProtocol";
    pub const PORT_UNAVAILABLE: &str = "PortUnavailable";
    pub const UNSUPPORTED_VALUE: &str = "UnsupportedValue";
    pub const INVALID_CERTIFICATE_REF: &str = "InvalidCertificateRef";
    pub const INVALID_ROUTE_KINDS: &str = "InvalidRouteKinds";
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
    pub const INVALID_CA_CERTIFICATE_REF: &str = "InvalidCACertificateRef";
    pub const INVALID_CA_CERTIFICATE_KIND: &str = "InvalidCACertificateKind";
    pub const NO_VALID_CA_CERTIFICATE: &str = "NoValidCACertificate";
    pub const INVALID_CLIENT_CERTIFICATE_REF: &str = "InvalidClientCertificateRef";
    pub const CONFIGURATION_CHANGED: &str = "ConfigurationChanged";
    pub const NOT_ALLOWED: &str = "NotAllowed";
    pub const CONFLICTED: &str = "Conflicted";
    pub const NOT_ALLOWED_BY_LISTENERS: &str = "NotAllowedByListeners";
    pub const NO_MATCHING_LISTENER_HOSTNAME: &str = "NoMatchingListenerHostname";
    pub const NO_MATCHING_PARENT: &str = "NoMatchingParent";
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    pub const INVALID_KIND: &str = "InvalidKind";
}

/// A condition with the given status.
pub fn cond(
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: i64,
) -> Condition {
    Condition::new(type_, ok, reason, message, generation)
}

/// A `True` condition whose reason equals its type (`Accepted`/`Accepted`, ...).
pub fn ok(type_: &str, message: impl Into<String>, generation: i64) -> Condition {
    Condition::new(type_, true, type_, message, generation)
}

/// A failed check: a spec reason and a message naming the offending field or reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Spec reason, e.g. `BackendNotFound`.
    pub reason: &'static str,
    /// One sentence.
    pub message: String,
}

impl Problem {
    /// A problem.
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Problem {
            reason,
            message: message.into(),
        }
    }
}

/// Joins the messages of several problems into one condition message (first reason wins).
pub fn summarize(problems: &[Problem]) -> Option<(&'static str, String)> {
    let first = problems.first()?;
    let mut msgs: Vec<&str> = Vec::new();
    for p in problems {
        if !msgs.contains(&p.message.as_str()) {
            msgs.push(&p.message);
        }
    }
    Some((first.reason, msgs.join("; ")))
}
