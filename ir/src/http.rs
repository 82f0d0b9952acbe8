//! HTTP routing: virtual hosts, route entries, matches, filters.

use crate::{RouteId, WeightedBackend};
use serde::{Deserialize, Serialize};

/// Routes served for one hostname on a listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualHost {
    /// `foo.example.com` (exact), `*.example.com` (any name with at least one more label in
    /// front of the suffix), or `*` (any host). Lower-case, no port.
    pub hostname: String,
    /// Route entries in precedence order: the first entry whose [`HttpMatch`] matches serves the
    /// request. Producers sort them by the Gateway API rules (see `controller::translate`):
    /// exact path, regex path, longest prefix, method, most headers, most query params, oldest
    /// route, route namespace/name, rule index, match index.
    pub routes: Vec<HttpRoute>,
}

/// One (rule, match) pair of a route, flattened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    /// Where it came from.
    pub id: RouteId,
    /// Request conditions; all must hold.
    #[serde(rename = "match")]
    pub matcher: HttpMatch,
    /// Filters in declaration order (rule-level).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HttpFilter>,
    /// Weighted backends. Empty, or all weights 0, or the chosen backend invalid: HTTP 500
    /// (unless a filter such as RequestRedirect answers first).
    #[serde(default)]
    pub backends: Vec<WeightedBackend>,
    /// Request and per-try timeouts.
    #[serde(default, skip_serializing_if = "Timeouts::is_empty")]
    pub timeouts: Timeouts,
    /// Retries of failed upstream attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// A gRPC route: errors are answered as gRPC status (`grpc-status` in trailers-only responses).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub grpc: bool,
}

/// Conditions on a request. Empty header/query lists match anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatch {
    /// Path condition (default: prefix `/`).
    pub path: PathMatch,
    /// HTTP method, upper-case, exact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Header conditions (names lower-case); all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// Query parameter conditions (names case-sensitive); all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<QueryParamMatch>,
}

impl Default for HttpMatch {
    fn default() -> Self {
        HttpMatch {
            path: PathMatch::Prefix("/".into()),
            method: None,
            headers: Vec::new(),
            query_params: Vec::new(),
        }
    }
}

/// Path condition. Paths are compared without the query string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PathMatch {
    /// The whole path equals this (case-sensitive).
    Exact(String),
    /// Element-wise prefix: `/foo` matches `/foo`, `/foo/` and `/foo/bar`, not `/foobar`.
    /// A trailing `/` in the prefix is ignored (`/foo/` behaves as `/foo`).
    Prefix(String),
    /// The whole path matches this RE2-syntax regular expression (anchored at both ends).
    Regex(String),
}

/// A header condition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    /// Header name, lower-case.
    pub name: String,
    /// Value condition. Several values of one header are joined with `,` before matching.
    pub value: StringMatch,
}

/// A query parameter condition; the first occurrence of the parameter is compared.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryParamMatch {
    /// Parameter name, case-sensitive.
    pub name: String,
    /// Value condition.
    pub value: StringMatch,
}

/// A string condition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    /// Equal.
    Exact(String),
    /// Matches this RE2-syntax regular expression (anchored at both ends).
    Regex(String),
}

/// Request/response processing applied by a route or one of its backends, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum HttpFilter {
    /// Edit request headers before proxying.
    RequestHeaderModifier(HeaderModifier),
    /// Edit response headers before answering the client.
    ResponseHeaderModifier(HeaderModifier),
    /// Answer with a redirect instead of proxying.
    RequestRedirect(Redirect),
    /// Rewrite host and/or path before proxying.
    UrlRewrite(UrlRewrite),
    /// Send a copy of the request to another cluster; its response is ignored.
    RequestMirror(Mirror),
    /// Answer CORS preflights and add CORS response headers.
    Cors(Cors),
}

/// Header edits: `set` replaces, `add` appends, `remove` deletes; applied set, add, remove.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderModifier {
    /// Name (lower-case) and value pairs that replace any existing values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderValue>,
    /// Name (lower-case) and value pairs appended to existing values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderValue>,
    /// Names (lower-case) removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderValue {
    /// Lower-case name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// A path edit relative to the route's match.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PathModifier {
    /// Replace the whole path (the query string is kept).
    ReplaceFullPath(String),
    /// Replace the matched prefix (only valid on routes with a [`PathMatch::Prefix`]).
    ReplacePrefixMatch(String),
}

/// RequestRedirect. Unset parts keep the request's value; see Gateway API for the port rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Redirect {
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Host to redirect to (no port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Path edit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    /// Port; when unset: the scheme's well-known port if `scheme` is set, else the listener port.
    /// Omitted from `Location` when it is the scheme's well-known port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// 301, 302, 303, 307 or 308 (default 302).
    pub status_code: u16,
}

/// URLRewrite.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UrlRewrite {
    /// New `Host` / `:authority`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Path edit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

/// RequestMirror.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mirror {
    /// Target cluster; `None` when the backendRef is invalid (nothing is mirrored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Share of requests mirrored, in millionths (1_000_000 = all). From `percent` or `fraction`.
    pub per_million: u32,
}

/// CORS policy (HTTPRoute `CORS` filter).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cors {
    /// Allowed origins: `*`, exact `scheme://host[:port]`, or with a `*` wildcard host label.
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true`.
    #[serde(default)]
    pub allow_credentials: bool,
    /// Allowed methods (`*` allowed).
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// Allowed request headers (`*` allowed).
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Exposed response headers.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Preflight cache lifetime in seconds (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_seconds: Option<u32>,
}

/// Timeouts in milliseconds; `None` = no timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// From request start to the complete response head (HTTPRoute `timeouts.request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_ms: Option<u64>,
    /// One upstream attempt (HTTPRoute `timeouts.backendRequest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request_ms: Option<u64>,
}

impl Timeouts {
    /// True when no timeout is set.
    pub fn is_empty(&self) -> bool {
        self.request_ms.is_none() && self.backend_request_ms.is_none()
    }
}

/// HTTPRoute `retry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Response status codes that are retried (connection errors are always retryable).
    #[serde(default)]
    pub codes: Vec<u16>,
    /// Maximum number of retries after the first attempt.
    pub attempts: u32,
    /// Backoff between attempts in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
}
