//! Expectation checking for HTTP request cases, following upstream's `CompareRoundTrip`: status
//! code, protocol, the request the echo backend saw (path, method, host, headers, absent
//! headers, port, SNI, client certificate), response headers, the backend pod and namespace,
//! and redirect targets.

use crate::client::HttpResponse;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The request as sent (the `request:` of a case).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RequestSpec {
    /// Host header; empty: the gateway address.
    pub host: String,
    /// Method; empty: GET.
    pub method: String,
    /// Path including the query string.
    pub path: String,
    /// Request headers, one value each.
    pub headers: Option<BTreeMap<String, String>>,
    /// `HTTP`, `HTTPS`, `H2C_PRIOR_KNOWLEDGE`; empty: the send step's default.
    pub protocol: String,
    /// Request body.
    pub body: String,
    /// Do not follow redirects (the runner never follows them).
    pub unfollow_redirect: bool,
    /// Expected SNI seen by a TLS backend (expectedRequest only).
    pub sni: String,
    /// Expected client certificate seen by a TLS backend, PEM (expectedRequest only).
    pub client_cert: String,
}

/// What the backend must have received (`expectedRequest:`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExpectedRequest {
    /// Request fields; `path` is compared exactly, `host` only when non-empty.
    #[serde(flatten)]
    pub request: RequestSpec,
    /// Headers that must not be present.
    pub absent_headers: Vec<String>,
    /// The echo's reported `httpPort`, when set.
    pub http_port: String,
}

/// Expected response properties (`response:`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ResponseSpec {
    /// Any of these status codes; empty: 200.
    pub status_codes: Vec<u16>,
    /// Deprecated single status code.
    pub status_code: Option<u16>,
    /// Headers with an exact value (several values joined with `,`).
    pub headers: BTreeMap<String, String>,
    /// Headers with one of several allowed values.
    pub valid_header_values: BTreeMap<String, Vec<String>>,
    /// Headers that must be absent.
    pub absent_headers: Vec<String>,
    /// `HTTP/1.1`, `HTTP/2.0`, when set.
    pub protocol: String,
    /// Remove spaces before comparing header values.
    pub ignore_whitespace: bool,
}

/// Expected redirect target (`redirect:`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RedirectSpec {
    /// Scheme; empty: the request's.
    pub scheme: String,
    /// Host; empty: not checked.
    pub host: String,
    /// Port; empty: 80/443 by scheme, or none.
    pub port: String,
    /// Path; empty: the request's path.
    pub path: String,
}

/// A mirror destination (`mirroredTo:`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MirroredBackend {
    /// `namespace/name` of the Service.
    pub backend_ref: String,
    /// Expected mirrored share, percent.
    pub percent: Option<u32>,
}

/// One request case of an http/https send step.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpCase {
    /// Upstream test case name.
    pub name: String,
    /// The request.
    pub request: RequestSpec,
    /// What the backend must see; `None`: the request unchanged.
    pub expected_request: Option<ExpectedRequest>,
    /// Headers the echo backend is asked to add to its response.
    pub backend_set_response_headers: BTreeMap<String, String>,
    /// Expected response.
    pub response: ResponseSpec,
    /// Echo `pod` must start with this.
    pub backend: String,
    /// Echo `namespace` must equal this (checked on 200/204).
    pub namespace: String,
    /// Expected redirect target (3xx only).
    pub redirect: Option<RedirectSpec>,
    /// Backends that must also receive the request.
    pub mirrored_to: Vec<MirroredBackend>,
}

impl HttpCase {
    /// Status codes that count as success (default `[200]`).
    pub fn status_codes(&self) -> Vec<u16> {
        let mut codes = self.response.status_codes.clone();
        if let Some(c) = self.response.status_code
            && !codes.contains(&c)
        {
            codes.push(c);
        }
        if codes.is_empty() {
            codes.push(200);
        }
        codes
    }

    /// A name for reports: the upstream name or `METHOD host/path`.
    pub fn display_name(&self, index: usize) -> String {
        if !self.name.is_empty() {
            return self.name.clone();
        }
        let method = if self.request.method.is_empty() {
            "GET"
        } else {
            &self.request.method
        };
        format!(
            "#{index} {method} {}{}",
            self.request.host, self.request.path
        )
    }

    /// The `X-Echo-Set-Header` value sent with the request.
    pub fn echo_set_header(&self) -> String {
        self.backend_set_response_headers
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// What the echo backend reported having received (from its JSON body).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CapturedRequest {
    /// Request URI.
    pub path: String,
    /// Host.
    pub host: String,
    /// Method.
    pub method: String,
    /// Protocol.
    pub proto: String,
    /// Headers by canonical name.
    pub headers: BTreeMap<String, Vec<String>>,
    /// The echo's HTTP port.
    pub http_port: String,
    /// Namespace.
    pub namespace: String,
    /// Pod.
    pub pod: String,
    /// TLS facts (TLS backends only).
    pub tls: CapturedTls,
}

/// TLS block of the echo answer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CapturedTls {
    /// SNI the backend saw.
    pub server_name: String,
    /// Client certificates the backend saw, PEM.
    pub peer_certificates: Vec<String>,
}

impl CapturedRequest {
    /// Parses the echo answer when the response is `application/json`; otherwise only the
    /// method is assumed (the backend was not an echo).
    pub fn from_response(resp: &HttpResponse, method: &str) -> Result<Self, String> {
        if resp.header("content-type").as_deref() == Some("application/json") {
            serde_json::from_slice(&resp.body)
                .map_err(|e| format!("unexpected error reading response: {e}"))
        } else {
            Ok(CapturedRequest {
                method: method.to_string(),
                ..Default::default()
            })
        }
    }
}

/// Where a redirect points.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedirectTarget {
    /// Scheme.
    pub scheme: String,
    /// Host name without port.
    pub host: String,
    /// Port, empty if none.
    pub port: String,
    /// Decoded path.
    pub path: String,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn split_host_port(authority: &str) -> (String, String) {
    if let Some(rest) = authority.strip_prefix('[')
        && let Some((h, p)) = rest.split_once(']')
    {
        return (h.to_string(), p.trim_start_matches(':').to_string());
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h.to_string(), p.to_string()),
        _ => (authority.to_string(), String::new()),
    }
}

/// Resolves a `Location` header against the request URL `scheme://authority/path`, as Go's
/// `resp.Location()` does.
pub fn resolve_location(
    location: &str,
    scheme: &str,
    authority: &str,
    path: &str,
) -> RedirectTarget {
    let (loc_scheme, rest) = match location.split_once("://") {
        Some((s, r)) if !s.contains('/') => (s.to_string(), Some(r.to_string())),
        _ => (scheme.to_string(), None),
    };
    let (auth, p) = match rest {
        Some(r) => match r.find(['/', '?', '#']) {
            Some(i) => (r[..i].to_string(), r[i..].to_string()),
            None => (r, String::new()),
        },
        None if location.starts_with("//") => {
            let r = &location[2..];
            match r.find(['/', '?', '#']) {
                Some(i) => (r[..i].to_string(), r[i..].to_string()),
                None => (r.to_string(), String::new()),
            }
        }
        None if location.starts_with('/') => (authority.to_string(), location.to_string()),
        None => {
            let base = &path[..path.rfind('/').map(|i| i + 1).unwrap_or(0)];
            (authority.to_string(), format!("{base}{location}"))
        }
    };
    let p = p.split(['?', '#']).next().unwrap_or_default().to_string();
    let (host, port) = split_host_port(&auth);
    RedirectTarget {
        scheme: loc_scheme,
        host,
        port,
        path: percent_decode(&p),
    }
}

fn is_timeout(code: u16) -> bool {
    code == 408 || code == 504
}

fn is_redirect(code: u16) -> bool {
    matches!(code, 300..=305 | 307 | 308)
}

/// Compares one response with a case, as upstream's `CompareRoundTrip` does. `scheme`,
/// `authority` and `path` are the URL the request went to (for redirect defaults and relative
/// locations).
pub fn compare_round_trip(
    case: &HttpCase,
    resp: &HttpResponse,
    scheme: &str,
    authority: &str,
) -> Result<(), String> {
    let codes = case.status_codes();
    if is_timeout(resp.status) && codes.iter().any(|c| is_timeout(*c)) {
        return Ok(());
    }
    if !codes.contains(&resp.status) {
        return Err(format!(
            "expected status code to be one of {codes:?}, got {}",
            resp.status
        ));
    }
    if !case.response.protocol.is_empty() && case.response.protocol != resp.protocol {
        return Err(format!(
            "expected protocol to be {}, got {}",
            case.response.protocol, resp.protocol
        ));
    }
    let method = if case.request.method.is_empty() {
        "GET"
    } else {
        &case.request.method
    };
    if resp.status == 200 || resp.status == 204 {
        let creq = CapturedRequest::from_response(resp, method)?;
        let exp = case
            .expected_request
            .clone()
            .unwrap_or_else(|| ExpectedRequest {
                request: case.request.clone(),
                ..Default::default()
            });
        let exp_method = if exp.request.method.is_empty() {
            "GET"
        } else {
            &exp.request.method
        };
        if !exp.request.host.is_empty() && exp.request.host != creq.host {
            return Err(format!(
                "expected host to be {}, got {}",
                exp.request.host, creq.host
            ));
        }
        if exp.request.path != creq.path {
            return Err(format!(
                "expected path to be {}, got {}",
                exp.request.path, creq.path
            ));
        }
        if exp_method != creq.method {
            return Err(format!(
                "expected method to be {exp_method}, got {}",
                creq.method
            ));
        }
        if case.namespace != creq.namespace {
            return Err(format!(
                "expected namespace to be {}, got {}",
                case.namespace, creq.namespace
            ));
        }
        let lower: BTreeMap<String, &Vec<String>> = creq
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        if let Some(headers) = &exp.request.headers {
            if creq.headers.is_empty() && !headers.is_empty() {
                return Err(format!("no headers captured, expected {}", headers.len()));
            }
            for (name, want) in headers {
                match lower.get(&name.to_ascii_lowercase()) {
                    None => {
                        return Err(format!(
                            "expected {name} header to be set, actual headers: {:?}",
                            creq.headers
                        ));
                    }
                    Some(got) if got.join(",") != *want => {
                        return Err(format!(
                            "expected {name} header to be set to {want}, got {}",
                            got.join(",")
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        if !exp.http_port.is_empty() && exp.http_port != creq.http_port {
            return Err(format!(
                "expected httpPort {:?}, got {:?}",
                exp.http_port, creq.http_port
            ));
        }
        let squash = |s: &str| {
            if case.response.ignore_whitespace {
                s.replace(' ', "")
            } else {
                s.to_string()
            }
        };
        for (name, allowed) in &case.response.valid_header_values {
            let Some(got) = resp.header(name) else {
                return Err(format!(
                    "expected {name} header to be set, actual headers: {:?}",
                    resp.headers
                ));
            };
            let got = squash(&got);
            if !allowed.iter().any(|a| squash(a) == got) {
                return Err(format!(
                    "expected {name} header to be set to one of {allowed:?}, got {got}"
                ));
            }
        }
        for (name, want) in &case.response.headers {
            let Some(got) = resp.header(name) else {
                return Err(format!(
                    "expected {name} header to be set, actual headers: {:?}",
                    resp.headers
                ));
            };
            if squash(&got) != squash(want) {
                return Err(format!(
                    "expected {name} header to be set to {want}, got {got}"
                ));
            }
        }
        for name in &case.response.absent_headers {
            if let Some(got) = resp.header(name) {
                return Err(format!("expected {name} header to not be set, got {got}"));
            }
        }
        for name in &exp.absent_headers {
            if let Some(got) = lower.get(&name.to_ascii_lowercase()) {
                return Err(format!("expected {name} header to not be set, got {got:?}"));
            }
        }
        if !creq.pod.starts_with(&case.backend) {
            return Err(format!(
                "expected pod name to start with {}, got {}",
                case.backend, creq.pod
            ));
        }
        if !exp.request.sni.is_empty() && exp.request.sni != creq.tls.server_name {
            return Err(format!(
                "expected SNI {:?}, backend saw {:?}",
                exp.request.sni, creq.tls.server_name
            ));
        }
        if !exp.request.client_cert.is_empty()
            && !creq
                .tls
                .peer_certificates
                .iter()
                .any(|c| c.trim() == exp.request.client_cert.trim())
        {
            return Err("expected client certificate was not captured".to_string());
        }
    } else if is_redirect(resp.status) {
        let Some(want) = &case.redirect else {
            return Ok(());
        };
        let Some(location) = resp.header("location") else {
            return Err(format!(
                "{} response without a Location header",
                resp.status
            ));
        };
        let request_path = case.request.path.split('?').next().unwrap_or_default();
        let got = resolve_location(&location, scheme, authority, request_path);
        let want_host = if want.host.is_empty() {
            &got.host
        } else {
            &want.host
        };
        if *want_host != got.host {
            return Err(format!(
                "expected redirected hostname to be {want_host:?}, got {:?}",
                got.host
            ));
        }
        if want.port.is_empty() {
            let s = got.scheme.to_ascii_lowercase();
            if s == "http" && !got.port.is_empty() && got.port != "80" {
                return Err(format!(
                    "for http scheme, expected redirected port to be 80 or not set, got {:?}",
                    got.port
                ));
            }
            if s == "https" && !got.port.is_empty() && got.port != "443" {
                return Err(format!(
                    "for https scheme, expected redirected port to be 443 or not set, got {:?}",
                    got.port
                ));
            }
        } else if want.port != got.port {
            return Err(format!(
                "expected redirected port to be {:?}, got {:?}",
                want.port, got.port
            ));
        }
        let want_scheme = if want.scheme.is_empty() {
            scheme
        } else {
            &want.scheme
        };
        if want_scheme != got.scheme {
            return Err(format!(
                "expected redirected scheme to be {want_scheme:?}, got {:?}",
                got.scheme
            ));
        }
        let want_path = if want.path.is_empty() {
            request_path
        } else {
            &want.path
        };
        if want_path != got.path {
            return Err(format!(
                "expected redirected path to be {want_path:?}, got {:?}",
                got.path
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo(status: u16, body: serde_json::Value, headers: &[(&str, &str)]) -> HttpResponse {
        let mut h: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        h.push(("content-type".into(), "application/json".into()));
        HttpResponse {
            status,
            protocol: "HTTP/1.1".into(),
            headers: h,
            body: bytes::Bytes::from(body.to_string()),
            client_cert_requested: false,
        }
    }

    fn seen(path: &str, headers: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "path": path, "host": "example.com", "method": "GET", "proto": "HTTP/1.1",
            "headers": headers, "namespace": "ns", "pod": "infra-backend-v1-abc-def",
            "httpPort": "3000",
        })
    }

    fn case(yaml: &str) -> HttpCase {
        serde_yaml::from_str(yaml).expect("case yaml")
    }

    fn check(c: &HttpCase, r: &HttpResponse) -> Result<(), String> {
        compare_round_trip(c, r, "http", "10.0.0.1")
    }

    const BASE: &str = "{request: {path: /a}, backend: infra-backend-v1, namespace: ns}";

    #[test]
    fn status_code() {
        let c = case(BASE);
        assert!(check(&c, &echo(200, seen("/a", serde_json::json!({})), &[])).is_ok());
        let e = check(&c, &echo(404, serde_json::json!({}), &[])).unwrap_err();
        assert!(e.contains("got 404"), "{e}");
        let t = case("{request: {path: /a}, response: {statusCodes: [504]}}");
        assert!(
            check(&t, &echo(408, serde_json::json!({}), &[])).is_ok(),
            "timeouts are interchangeable"
        );
    }

    #[test]
    fn path_namespace_and_backend() {
        let c = case(BASE);
        assert!(
            check(&c, &echo(200, seen("/b", serde_json::json!({})), &[]))
                .unwrap_err()
                .contains("path")
        );
        let mut wrong_ns = seen("/a", serde_json::json!({}));
        wrong_ns["namespace"] = "other".into();
        assert!(
            check(&c, &echo(200, wrong_ns, &[]))
                .unwrap_err()
                .contains("namespace")
        );
        let mut wrong_pod = seen("/a", serde_json::json!({}));
        wrong_pod["pod"] = "infra-backend-v2-abc-def".into();
        assert!(
            check(&c, &echo(200, wrong_pod, &[]))
                .unwrap_err()
                .contains("pod name")
        );
    }

    #[test]
    fn expected_request_headers_and_absent_headers() {
        let c = case(
            "{request: {path: /a}, expectedRequest: {path: /a, headers: {X-Header-Add: 'v1,v2'}, absentHeaders: [X-Gone]}, namespace: ns}",
        );
        let good = seen("/a", serde_json::json!({"X-Header-Add": ["v1", "v2"]}));
        assert!(check(&c, &echo(200, good, &[])).is_ok());
        let missing = seen("/a", serde_json::json!({"Other": ["x"]}));
        assert!(
            check(&c, &echo(200, missing, &[]))
                .unwrap_err()
                .contains("X-Header-Add header to be set")
        );
        let wrong = seen("/a", serde_json::json!({"X-Header-Add": ["v1"]}));
        assert!(
            check(&c, &echo(200, wrong, &[]))
                .unwrap_err()
                .contains("got v1")
        );
        let present = seen(
            "/a",
            serde_json::json!({"X-Header-Add": ["v1", "v2"], "X-Gone": ["x"]}),
        );
        assert!(
            check(&c, &echo(200, present, &[]))
                .unwrap_err()
                .contains("X-Gone")
        );
    }

    #[test]
    fn rewritten_host_and_method() {
        let c = case(
            "{request: {path: /a, method: POST}, expectedRequest: {path: /a, host: example.com, method: POST}, namespace: ns}",
        );
        let mut s = seen("/a", serde_json::json!({}));
        s["method"] = "POST".into();
        assert!(check(&c, &echo(200, s.clone(), &[])).is_ok());
        s["host"] = "other.com".into();
        assert!(
            check(&c, &echo(200, s.clone(), &[]))
                .unwrap_err()
                .contains("host")
        );
        s["host"] = "example.com".into();
        s["method"] = "GET".into();
        assert!(
            check(&c, &echo(200, s, &[]))
                .unwrap_err()
                .contains("method")
        );
    }

    #[test]
    fn response_headers_valid_values_and_absent() {
        let c = case(
            "{request: {path: /a}, response: {headers: {X-Set: 'a,b'}, validHeaderValues: {X-One: [p, q]}, absentHeaders: [X-No]}, namespace: ns}",
        );
        let s = seen("/a", serde_json::json!({}));
        assert!(
            check(
                &c,
                &echo(
                    200,
                    s.clone(),
                    &[("x-set", "a"), ("x-set", "b"), ("x-one", "q")]
                )
            )
            .is_ok()
        );
        assert!(
            check(&c, &echo(200, s.clone(), &[("x-set", "a"), ("x-one", "q")]))
                .unwrap_err()
                .contains("X-Set")
        );
        assert!(
            check(
                &c,
                &echo(200, s.clone(), &[("x-set", "a,b"), ("x-one", "r")])
            )
            .unwrap_err()
            .contains("one of")
        );
        assert!(
            check(
                &c,
                &echo(200, s, &[("x-set", "a,b"), ("x-one", "p"), ("x-no", "1")])
            )
            .unwrap_err()
            .contains("X-No")
        );
    }

    #[test]
    fn ignore_whitespace() {
        let c = case(
            "{request: {path: /a}, response: {headers: {M: 'GET, OPTIONS'}, ignoreWhitespace: true}, namespace: ns}",
        );
        let s = seen("/a", serde_json::json!({}));
        assert!(check(&c, &echo(200, s.clone(), &[("m", "GET,OPTIONS")])).is_ok());
        assert!(check(&c, &echo(200, s, &[("m", "GET")])).is_err());
    }

    #[test]
    fn redirects() {
        let c = case(
            "{request: {path: /r, host: a.com}, response: {statusCodes: [302]}, redirect: {host: b.com, port: '8443', scheme: https, path: /x}}",
        );
        let ok = |loc: &str| HttpResponse {
            status: 302,
            headers: vec![("location".into(), loc.into())],
            ..Default::default()
        };
        assert!(check(&c, &ok("https://b.com:8443/x")).is_ok());
        assert!(
            check(&c, &ok("https://c.com:8443/x"))
                .unwrap_err()
                .contains("hostname")
        );
        assert!(
            check(&c, &ok("https://b.com:443/x"))
                .unwrap_err()
                .contains("port")
        );
        assert!(
            check(&c, &ok("http://b.com:8443/x"))
                .unwrap_err()
                .contains("scheme")
        );
        assert!(
            check(&c, &ok("https://b.com:8443/y"))
                .unwrap_err()
                .contains("path")
        );
        let d =
            case("{request: {path: /r}, response: {statusCodes: [301]}, redirect: {host: b.com}}");
        let r = HttpResponse {
            status: 301,
            headers: vec![("location".into(), "http://b.com/r".into())],
            ..Default::default()
        };
        assert!(
            check(&d, &r).is_ok(),
            "scheme and path default to the request's, port 80 may be omitted"
        );
        let bad = HttpResponse {
            status: 301,
            headers: vec![("location".into(), "http://b.com:81/r".into())],
            ..Default::default()
        };
        assert!(check(&d, &bad).unwrap_err().contains("80 or not set"));
    }

    #[test]
    fn non_json_responses_only_carry_the_method() {
        let c = case(
            "{request: {path: /a, method: OPTIONS}, expectedRequest: {path: '', method: OPTIONS}, response: {statusCodes: [200, 204]}}",
        );
        let r = HttpResponse {
            status: 204,
            ..Default::default()
        };
        assert!(check(&c, &r).is_ok());
    }

    #[test]
    fn relative_locations_resolve_against_the_request() {
        assert_eq!(
            resolve_location("/p%20q", "http", "1.2.3.4:8080", "/x/y"),
            RedirectTarget {
                scheme: "http".into(),
                host: "1.2.3.4".into(),
                port: "8080".into(),
                path: "/p q".into()
            }
        );
        assert_eq!(resolve_location("z", "https", "h", "/x/y").path, "/x/z");
    }
}
