//! Gateway API filters compiled for the request path: header modifiers, redirects, URL
//! rewrites, mirrors and CORS. Compilation parses every header name and value once, so the
//! request path only copies prepared values.

use crate::compile::CompileError;
use crate::upstream::ClusterRt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use sluice_ir::{FieldPath, HttpFilter, PathModifier};
use std::collections::HashMap;
use std::sync::Arc;

/// Compiled header edits, applied set, add, remove.
#[derive(Debug, Default)]
pub(crate) struct HeaderMod {
    set: Box<[(HeaderName, HeaderValue)]>,
    add: Box<[(HeaderName, HeaderValue)]>,
    remove: Box<[HeaderName]>,
}

impl HeaderMod {
    fn compile(m: &sluice_ir::HeaderModifier, path: &FieldPath<'_>) -> Result<Self, CompileError> {
        let pair = |h: &sluice_ir::HeaderValue| -> Result<(HeaderName, HeaderValue), CompileError> {
            Ok((
                header_name(&h.name, path)?,
                HeaderValue::from_str(&h.value).map_err(|_| {
                    CompileError::new(path, format!("invalid value for header {:?}", h.name))
                })?,
            ))
        };
        Ok(HeaderMod {
            set: m.set.iter().map(pair).collect::<Result<_, _>>()?,
            add: m.add.iter().map(pair).collect::<Result<_, _>>()?,
            remove: m
                .remove
                .iter()
                .map(|n| header_name(n, path))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Applies the edits to `headers`.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for (n, v) in self.set.iter() {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in self.add.iter() {
            headers.append(n.clone(), v.clone());
        }
        for n in self.remove.iter() {
            headers.remove(n);
        }
    }
}

fn header_name(n: &str, path: &FieldPath<'_>) -> Result<HeaderName, CompileError> {
    HeaderName::from_bytes(n.as_bytes())
        .map_err(|_| CompileError::new(path, format!("invalid header name {n:?}")))
}

/// Applies a path modifier. `prefix` is the route's Prefix match with any trailing `/` removed.
///
/// ReplacePrefixMatch follows Gateway API exactly: the matched path elements are replaced, a
/// trailing `/` of the replacement is dropped when more of the path follows, and an empty
/// result becomes `/` (`/foo/bar` with prefix `/foo` and replacement `/xyz/` gives `/xyz/bar`;
/// `/foo` with replacement `` or `/` gives `/`; `/foo/` with replacement `/xyz` gives `/xyz/`).
pub fn modify_path(path: &str, m: &PathModifier, prefix: Option<&str>) -> String {
    match m {
        PathModifier::ReplaceFullPath(p) => p.clone(),
        PathModifier::ReplacePrefixMatch(r) => {
            let prefix = prefix.unwrap_or("");
            let rest = path.strip_prefix(prefix).unwrap_or(path);
            let r = r.strip_suffix('/').unwrap_or(r);
            let mut out = String::with_capacity(r.len() + rest.len() + 1);
            out.push_str(r);
            out.push_str(rest);
            if out.is_empty() {
                out.push('/');
            } else if !out.starts_with('/') {
                out.insert(0, '/');
            }
            out
        }
    }
}

/// RequestRedirect, compiled.
#[derive(Debug)]
pub(crate) struct RedirectRt {
    pub(crate) scheme: Option<Box<str>>,
    pub(crate) hostname: Option<Box<str>>,
    pub(crate) path: Option<PathModifier>,
    pub(crate) port: Option<u16>,
    pub(crate) status: http::StatusCode,
}

impl RedirectRt {
    /// The `Location` value for a request.
    ///
    /// Port rules (Gateway API): an explicit port wins; otherwise a set scheme implies its
    /// well-known port (http 80, https 443); otherwise the listener's port. The port is left
    /// out when it is the well-known port of the resulting scheme.
    pub(crate) fn location(
        &self,
        req_scheme: &str,
        req_host: &str,
        listener_port: u16,
        path: &str,
        query: Option<&str>,
        prefix: Option<&str>,
    ) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(req_scheme);
        let host = match &self.hostname {
            Some(h) => h.as_ref(),
            None => strip_port(req_host),
        };
        let port = match (self.port, &self.scheme) {
            (Some(p), _) => p,
            (None, Some(s)) => well_known_port(s).unwrap_or(listener_port),
            (None, None) => listener_port,
        };
        let new_path = match &self.path {
            Some(m) => modify_path(path, m, prefix),
            None => path.to_string(),
        };
        let mut loc = format!("{scheme}://{host}");
        if well_known_port(scheme) != Some(port) {
            loc.push(':');
            loc.push_str(&port.to_string());
        }
        loc.push_str(&new_path);
        if let Some(q) = query {
            loc.push('?');
            loc.push_str(q);
        }
        loc
    }
}

fn well_known_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// `host[:port]` -> `host` (IPv6 literals keep their brackets).
pub(crate) fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

/// URLRewrite, compiled.
#[derive(Debug)]
pub(crate) struct RewriteRt {
    pub(crate) hostname: Option<HeaderValue>,
    pub(crate) path: Option<PathModifier>,
}

/// RequestMirror, compiled.
#[derive(Debug)]
pub(crate) struct MirrorRt {
    pub(crate) cluster: Arc<ClusterRt>,
    pub(crate) per_million: u32,
}

/// An allowed CORS origin.
#[derive(Debug)]
enum Origin {
    Any,
    /// scheme, host (or `.suffix` for a wildcard, `""` for any host), port.
    Pattern {
        scheme: Box<str>,
        host: Box<str>,
        wildcard: bool,
        port: u16,
    },
}

fn parse_origin(s: &str) -> Option<(&str, &str, u16)> {
    let (scheme, rest) = s.split_once("://")?;
    let default = well_known_port(scheme)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let host = strip_port(rest);
    let port = if host.len() < rest.len() {
        rest[host.len() + 1..].parse().ok()?
    } else {
        default
    };
    Some((scheme, host, port))
}

/// The CORS filter, compiled.
#[derive(Debug)]
pub(crate) struct CorsRt {
    origins: Vec<Origin>,
    credentials: bool,
    methods: Vec<Box<str>>,
    any_method: bool,
    headers: Option<HeaderValue>,
    any_header: bool,
    expose: Option<HeaderValue>,
    max_age: HeaderValue,
}

impl CorsRt {
    fn compile(c: &sluice_ir::Cors, path: &FieldPath<'_>) -> Result<Self, CompileError> {
        let mut origins = Vec::new();
        for o in &c.allow_origins {
            if o == "*" {
                origins.push(Origin::Any);
                continue;
            }
            let (scheme, host, port) = parse_origin(o)
                .ok_or_else(|| CompileError::new(path, format!("invalid CORS origin {o:?}")))?;
            let (host, wildcard) = match host.strip_prefix('*') {
                Some(suffix) => (suffix.to_ascii_lowercase(), true),
                None => (host.to_ascii_lowercase(), false),
            };
            origins.push(Origin::Pattern {
                scheme: scheme.into(),
                host: host.into(),
                wildcard,
                port,
            });
        }
        let value = |list: &[String]| -> Result<Option<HeaderValue>, CompileError> {
            let l: Vec<&str> = list
                .iter()
                .map(String::as_str)
                .filter(|s| *s != "*")
                .collect();
            if l.is_empty() {
                return Ok(None);
            }
            HeaderValue::from_str(&l.join(", "))
                .map(Some)
                .map_err(|_| CompileError::new(path, "invalid CORS header list"))
        };
        Ok(CorsRt {
            origins,
            credentials: c.allow_credentials,
            methods: c
                .allow_methods
                .iter()
                .filter(|m| *m != "*")
                .map(|m| m.as_str().into())
                .collect(),
            any_method: c.allow_methods.iter().any(|m| m == "*"),
            headers: value(&c.allow_headers)?,
            any_header: c.allow_headers.iter().any(|h| h == "*"),
            expose: if c.expose_headers.iter().any(|h| h == "*") && !c.allow_credentials {
                Some(HeaderValue::from_static("*"))
            } else {
                value(&c.expose_headers)?
            },
            max_age: HeaderValue::from(c.max_age_seconds.unwrap_or(5)),
        })
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        let parsed = parse_origin(origin);
        self.origins.iter().any(|o| match o {
            Origin::Any => true,
            Origin::Pattern {
                scheme,
                host,
                wildcard,
                port,
            } => parsed.is_some_and(|(s, h, p)| {
                let h = h.to_ascii_lowercase();
                &**scheme == s
                    && *port == p
                    && if *wildcard {
                        host.is_empty() || (h.ends_with(&**host) && h.len() > host.len())
                    } else {
                        **host == *h
                    }
            }),
        })
    }

    /// The answer to a preflight request (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`): 204 with the CORS headers when the origin is allowed,
    /// 204 without them otherwise.
    pub(crate) fn preflight(&self, req: &HeaderMap) -> Option<HeaderMap> {
        let origin = req.get(header::ORIGIN)?;
        let method = req.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        let mut h = HeaderMap::new();
        if !origin.to_str().is_ok_and(|o| self.origin_allowed(o)) {
            return Some(h);
        }
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if self.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if self.any_method {
            let v = if self.credentials {
                method.clone()
            } else {
                HeaderValue::from_static("*")
            };
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
        } else if !self.methods.is_empty()
            && let Ok(v) = HeaderValue::from_str(&self.methods.join(", "))
        {
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
        }
        if self.any_header {
            match (
                self.credentials,
                req.get(header::ACCESS_CONTROL_REQUEST_HEADERS),
            ) {
                (true, Some(v)) => {
                    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
                }
                (true, None) => {}
                (false, _) => {
                    h.insert(
                        header::ACCESS_CONTROL_ALLOW_HEADERS,
                        HeaderValue::from_static("*"),
                    );
                }
            }
        } else if let Some(v) = &self.headers {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
        }
        if let Some(v) = &self.expose {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
        h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        Some(h)
    }

    /// Adds the CORS headers of an actual (non-preflight) cross-origin response.
    pub(crate) fn response_headers(&self, origin: Option<&HeaderValue>, resp: &mut HeaderMap) {
        let Some(origin) = origin else { return };
        if !origin.to_str().is_ok_and(|o| self.origin_allowed(o)) {
            return;
        }
        resp.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if self.credentials {
            resp.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(v) = &self.expose {
            resp.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
    }
}

/// A request-phase filter, applied in declaration order.
#[derive(Debug)]
pub(crate) enum RequestFilter {
    Headers(HeaderMod),
    Rewrite(RewriteRt),
}

/// The filters of a route or of one of its backends, split by phase.
#[derive(Debug, Default)]
pub(crate) struct Filters {
    /// Header edits and rewrites, in declaration order (upstream_request_filter).
    pub(crate) request: Box<[RequestFilter]>,
    /// ResponseHeaderModifiers in declaration order (response_filter).
    pub(crate) response: Box<[HeaderMod]>,
    /// Answers instead of proxying (request_filter).
    pub(crate) redirect: Option<Box<RedirectRt>>,
    pub(crate) mirrors: Box<[MirrorRt]>,
    pub(crate) cors: Option<Box<CorsRt>>,
}

impl Filters {
    pub(crate) fn compile(
        filters: &[HttpFilter],
        path: &FieldPath<'_>,
        clusters: &HashMap<String, Arc<ClusterRt>>,
    ) -> Result<Self, CompileError> {
        let mut f = Filters::default();
        let mut request = Vec::new();
        let mut response = Vec::new();
        let mut mirrors = Vec::new();
        for (i, filter) in filters.iter().enumerate() {
            #[cfg(feature = "fault-injection")]
            if fault::skip(filter) {
                continue;
            }
            let p = FieldPath::Index(path, "filters", i);
            match filter {
                HttpFilter::RequestHeaderModifier(m) => {
                    request.push(RequestFilter::Headers(HeaderMod::compile(m, &p)?))
                }
                HttpFilter::ResponseHeaderModifier(m) => response.push(HeaderMod::compile(m, &p)?),
                HttpFilter::UrlRewrite(r) => request.push(RequestFilter::Rewrite(RewriteRt {
                    hostname: match &r.hostname {
                        Some(h) => Some(HeaderValue::from_str(h).map_err(|_| {
                            CompileError::new(p, format!("invalid rewrite hostname {h:?}"))
                        })?),
                        None => None,
                    },
                    path: r.path.clone(),
                })),
                HttpFilter::RequestRedirect(r) => {
                    f.redirect = Some(Box::new(RedirectRt {
                        scheme: r.scheme.as_deref().map(Into::into),
                        hostname: r.hostname.as_deref().map(Into::into),
                        path: r.path.clone(),
                        port: r.port,
                        status: http::StatusCode::from_u16(r.status_code).map_err(|_| {
                            CompileError::new(p, format!("invalid status {}", r.status_code))
                        })?,
                    }))
                }
                HttpFilter::RequestMirror(m) => {
                    if let Some(c) = &m.cluster {
                        let cluster = clusters.get(c).ok_or_else(|| {
                            CompileError::new(p, format!("unknown mirror cluster {c:?}"))
                        })?;
                        mirrors.push(MirrorRt {
                            cluster: cluster.clone(),
                            per_million: m.per_million,
                        });
                    }
                }
                HttpFilter::Cors(c) => f.cors = Some(Box::new(CorsRt::compile(c, &p)?)),
            }
        }
        f.request = request.into();
        f.response = response.into();
        f.mirrors = mirrors.into();
        Ok(f)
    }
}

/// Test-only fault injection (cargo feature `fault-injection`, never in release builds of the
/// binary): filters whose IR type is listed in `SLUICE_FAULT_SKIP_FILTERS` (comma-separated,
/// e.g. `requestHeaderModifier`) are dropped when a snapshot is compiled. Tests use it to prove
/// that a broken filter is caught, e.g. that the conformance harness fails the matching case.
#[cfg(feature = "fault-injection")]
mod fault {
    use sluice_ir::HttpFilter;

    pub(super) fn skip(filter: &HttpFilter) -> bool {
        let Ok(list) = std::env::var("SLUICE_FAULT_SKIP_FILTERS") else {
            return false;
        };
        let kind = serde_json::to_value(filter)
            .ok()
            .and_then(|v| v["type"].as_str().map(str::to_string))
            .unwrap_or_default();
        list.split(',').any(|k| k.trim() == kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(path: &str, pfx: &str, repl: &str) -> String {
        let pfx = pfx.strip_suffix('/').unwrap_or(pfx);
        modify_path(
            path,
            &PathModifier::ReplacePrefixMatch(repl.into()),
            Some(pfx),
        )
    }

    #[test]
    fn replace_prefix_match_table() {
        // The table of the Gateway API spec (HTTPPathModifier.replacePrefixMatch).
        let table = [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
            ("/abc", "/", "/xyz", "/xyz/abc"),
            ("/strip-prefix/three", "/strip-prefix", "/", "/three"),
        ];
        for (path, pfx, repl, want) in table {
            assert_eq!(prefix(path, pfx, repl), want, "{path} {pfx} {repl}");
        }
    }

    #[test]
    fn redirect_ports() {
        let r = |scheme: Option<&str>, port: Option<u16>| RedirectRt {
            scheme: scheme.map(Into::into),
            hostname: Some("example.org".into()),
            path: None,
            port,
            status: http::StatusCode::FOUND,
        };
        let loc = |rd: RedirectRt, req_scheme: &str, lport: u16| {
            rd.location(req_scheme, "a.com:8080", lport, "/p", Some("q=1"), None)
        };
        assert_eq!(
            loc(r(None, None), "http", 8080),
            "http://example.org:8080/p?q=1"
        );
        assert_eq!(loc(r(None, None), "http", 80), "http://example.org/p?q=1");
        assert_eq!(
            loc(r(Some("https"), None), "http", 8080),
            "https://example.org/p?q=1"
        );
        assert_eq!(
            loc(r(Some("http"), None), "https", 8443),
            "http://example.org/p?q=1"
        );
        assert_eq!(
            loc(r(Some("https"), Some(8443)), "http", 80),
            "https://example.org:8443/p?q=1"
        );
        assert_eq!(
            loc(r(None, Some(443)), "https", 80),
            "https://example.org/p?q=1"
        );
        assert_eq!(
            loc(r(None, Some(443)), "http", 80),
            "http://example.org:443/p?q=1"
        );
    }

    #[test]
    fn cors_origins() {
        let c = CorsRt::compile(
            &sluice_ir::Cors {
                allow_origins: vec!["https://www.foo.com".into(), "https://*.bar.com".into()],
                ..Default::default()
            },
            &FieldPath::Root("t"),
        )
        .unwrap();
        assert!(c.origin_allowed("https://www.foo.com"));
        assert!(c.origin_allowed("https://www.foo.com:443"));
        assert!(!c.origin_allowed("http://www.foo.com"));
        assert!(c.origin_allowed("https://xpto.www.bar.com"));
        assert!(!c.origin_allowed("https://bar.com"));
        assert!(!c.origin_allowed("https://foo.com"));
    }
}
