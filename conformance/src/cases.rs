//! The upstream suite as data: `cases.yaml` (tests, features, steps) and the profile/feature
//! tables the report needs.

use serde::Deserialize;
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Errors loading the suite data.
#[derive(Debug, thiserror::Error)]
pub enum CasesError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid cases.yaml.
    #[error("parsing {path}: {source}")]
    Parse {
        /// File.
        path: String,
        /// Cause.
        source: serde_yaml::Error,
    },
}

/// `cases.yaml`.
#[derive(Debug, Clone, Deserialize)]
pub struct CasesFile {
    /// Every test, upstream order.
    pub tests: Vec<TestCase>,
}

/// One upstream conformance test.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestCase {
    /// Upstream ShortName.
    pub name: String,
    /// Upstream description.
    #[serde(default)]
    pub description: String,
    /// Manifests applied for the test (`tests/x.yaml` = `upstream/tests/x.yaml`).
    #[serde(default)]
    pub manifests: Vec<String>,
    /// Features the test needs (all must be claimed).
    #[serde(default)]
    pub features: Vec<String>,
    /// Profiles the test belongs to.
    #[serde(default)]
    pub profiles: Vec<String>,
    /// Provisional upstream test.
    #[serde(default)]
    pub provisional: bool,
    /// Hand-written notes.
    #[serde(default)]
    pub notes: String,
    /// Steps, upstream order, kept as YAML and interpreted by the runner.
    #[serde(default)]
    pub steps: Vec<Value>,
}

impl CasesFile {
    /// Reads `cases.yaml`.
    pub fn load(path: &Path) -> Result<Self, CasesError> {
        let text = std::fs::read_to_string(path).map_err(|source| CasesError::Read {
            path: path.display().to_string(),
            source,
        })?;
        serde_yaml::from_str(&text).map_err(|source| CasesError::Parse {
            path: path.display().to_string(),
            source,
        })
    }
}

/// A Gateway API conformance profile.
#[derive(Debug, Clone)]
pub struct Profile {
    /// `GATEWAY-HTTP`, ...
    pub name: &'static str,
    /// Core features.
    pub core: &'static [&'static str],
    /// Extended features.
    pub extended: Vec<&'static str>,
}

const GATEWAY_EXTENDED: &[&str] = &[
    "GatewayPort8080",
    "GatewayStaticAddresses",
    "GatewayHTTPListenerIsolation",
    "GatewayHTTPSListenerDetectMisdirectedRequests",
    "GatewayInfrastructurePropagation",
    "GatewayAddressEmpty",
    "GatewayBackendClientCertificate",
    "GatewayFrontendClientCertificateValidation",
    "GatewayFrontendClientCertificateValidationInsecureFallback",
    "ListenerSet",
];

const HTTPROUTE_EXTENDED: &[&str] = &[
    "HTTPRouteQueryParamMatching",
    "HTTPRouteMethodMatching",
    "HTTPRouteResponseHeaderModification",
    "HTTPRoutePortRedirect",
    "HTTPRouteSchemeRedirect",
    "HTTPRoutePathRedirect",
    "HTTPRouteHostRewrite",
    "HTTPRoutePathRewrite",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestMultipleMirrors",
    "HTTPRouteRequestPercentageMirror",
    "HTTPRouteRequestTimeout",
    "HTTPRouteBackendTimeout",
    "HTTPRouteParentRefPort",
    "HTTPRouteBackendRequestHeaderModification",
    "HTTPRouteBackendProtocolH2C",
    "HTTPRouteBackendProtocolWebSocket",
    "HTTPRouteDestinationPortMatching",
    "HTTPRouteNamedRouteRule",
    "HTTPRouteCORS",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "HTTPRouteRetry",
    "HTTPRouteRetryBackendTimeout",
    "HTTPRouteRetryConnectionError",
];

const MESH_EXTENDED: &[&str] = &[
    "MeshClusterIPMatching",
    "MeshConsumerRoute",
    "MeshHTTPRouteRewritePath",
    "MeshHTTPRouteSchemeRedirect",
    "MeshHTTPRouteRedirectPort",
    "MeshHTTPRouteRedirectPath",
    "MeshHTTPRouteBackendRequestHeaderModification",
    "MeshHTTPRouteQueryParamMatching",
    "MeshHTTPRouteNamedRouteRule",
];

/// The profiles of upstream `conformance/utils/suite/profiles.go`, report order.
pub fn profiles() -> Vec<Profile> {
    let with = |extra: &[&'static str]| {
        let mut v: Vec<&'static str> = GATEWAY_EXTENDED.to_vec();
        v.extend_from_slice(extra);
        v
    };
    let mut http_ext = with(HTTPROUTE_EXTENDED);
    http_ext.extend(["BackendTLSPolicy", "BackendTLSPolicySANValidation"]);
    vec![
        Profile {
            name: "GATEWAY-HTTP",
            core: &["Gateway", "ReferenceGrant", "HTTPRoute"],
            extended: http_ext,
        },
        Profile {
            name: "GATEWAY-GRPC",
            core: &["Gateway", "ReferenceGrant", "GRPCRoute"],
            extended: with(&[]),
        },
        Profile {
            name: "GATEWAY-TLS",
            core: &["Gateway", "ReferenceGrant", "TLSRoute"],
            extended: with(&["TLSRouteModeTerminate", "TLSRouteModeMixed"]),
        },
        Profile {
            name: "GATEWAY-TCP",
            core: &["Gateway", "ReferenceGrant", "TCPRoute"],
            extended: with(&[]),
        },
        Profile {
            name: "GATEWAY-UDP",
            core: &["Gateway", "ReferenceGrant", "UDPRoute"],
            extended: with(&[]),
        },
        Profile {
            name: "MESH-HTTP",
            core: &["Mesh", "HTTPRoute"],
            extended: MESH_EXTENDED.to_vec(),
        },
        Profile {
            name: "MESH-GRPC",
            core: &["Mesh", "GRPCRoute"],
            extended: MESH_EXTENDED.to_vec(),
        },
    ]
}

impl Profile {
    /// Whether a test counts as extended in this profile (any feature outside the core set).
    pub fn test_is_extended(&self, t: &TestCase) -> bool {
        t.features.iter().any(|f| !self.core.contains(&f.as_str()))
    }

    /// Whether every feature of the test is in this profile's core or extended set.
    pub fn covers(&self, t: &TestCase) -> bool {
        t.features
            .iter()
            .all(|f| self.core.contains(&f.as_str()) || self.extended.contains(&f.as_str()))
    }
}

/// The feature set Sluice claims (`conformance/features.yaml`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    /// Claimed SupportedFeatures.
    pub supported_features: BTreeSet<String>,
    /// Tests to skip even though their features are claimed, with the reason.
    #[serde(default)]
    pub skip_tests: BTreeMap<String, String>,
}

impl Claims {
    /// Reads the claims file.
    pub fn load(path: &Path) -> Result<Self, CasesError> {
        let text = std::fs::read_to_string(path).map_err(|source| CasesError::Read {
            path: path.display().to_string(),
            source,
        })?;
        serde_yaml::from_str(&text).map_err(|source| CasesError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// The first feature of a test that is not claimed.
    pub fn missing_feature<'a>(&self, t: &'a TestCase) -> Option<&'a str> {
        t.features
            .iter()
            .find(|f| !self.supported_features.contains(*f))
            .map(String::as_str)
    }

    /// Whether the profile's core features are all claimed (the profile is reported).
    pub fn claims_profile(&self, p: &Profile) -> bool {
        p.core.iter().all(|f| self.supported_features.contains(*f))
    }
}

/// Substitutes `$name` placeholders in a YAML value: a string that is exactly a placeholder is
/// replaced by the variable's value (any type); placeholders inside longer strings are replaced
/// by the variable's string form. Unknown placeholders are errors.
pub fn substitute(v: &Value, vars: &BTreeMap<String, Value>) -> Result<Value, String> {
    match v {
        Value::String(s) if s.contains('$') => {
            if let Some(val) = vars.get(s.as_str()) {
                return Ok(val.clone());
            }
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(i) = rest.find('$') {
                out.push_str(&rest[..i]);
                let tail = &rest[i..];
                let end = tail[1..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                    .map(|e| e + 1)
                    .unwrap_or(tail.len());
                let mut key = &tail[..end];
                // Longest known prefix ($policyNN.Name before $policyNN).
                while !vars.contains_key(key) {
                    match key.rfind('.') {
                        Some(d) => key = &key[..d],
                        None => return Err(format!("unresolved placeholder {}", &tail[..end])),
                    }
                }
                match &vars[key] {
                    Value::String(x) => out.push_str(x),
                    Value::Number(n) => out.push_str(&n.to_string()),
                    Value::Bool(b) => out.push_str(&b.to_string()),
                    other => return Err(format!("placeholder {key} is not a scalar: {other:?}")),
                }
                rest = &tail[key.len()..];
            }
            out.push_str(rest);
            Ok(Value::String(out))
        }
        Value::Sequence(items) => items
            .iter()
            .map(|i| substitute(i, vars))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Sequence),
        Value::Mapping(m) => {
            let mut out = serde_yaml::Mapping::new();
            for (k, val) in m {
                out.insert(k.clone(), substitute(val, vars)?);
            }
            Ok(Value::Mapping(out))
        }
        other => Ok(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_substitute() {
        let mut vars = BTreeMap::new();
        vars.insert("$tc.statusCode".to_string(), Value::from(404));
        vars.insert("$tc.host".to_string(), Value::from("example.org"));
        vars.insert("$policyNN".to_string(), Value::from("ns/p"));
        let v: Value = serde_yaml::from_str(
            "{codes: [$tc.statusCode], host: $tc.host, path: '/x-$tc.host/y'}",
        )
        .unwrap_or_default();
        let out = substitute(&v, &vars).expect("substitute");
        assert_eq!(out["codes"][0], Value::from(404));
        assert_eq!(out["host"], Value::from("example.org"));
        assert_eq!(out["path"], Value::from("/x-example.org/y"));
        let bad: Value = Value::from("$nope");
        assert!(substitute(&bad, &vars).is_err());
    }

    #[test]
    fn profile_levels() {
        let p = &profiles()[0];
        let t = TestCase {
            name: "X".into(),
            description: String::new(),
            manifests: vec![],
            features: vec!["Gateway".into(), "HTTPRoute".into()],
            profiles: vec![],
            provisional: false,
            notes: String::new(),
            steps: vec![],
        };
        assert!(!p.test_is_extended(&t));
        assert!(p.covers(&t));
    }
}
