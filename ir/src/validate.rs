//! Structural checks a consumer runs before compiling a snapshot. A translator bug or a
//! hand-written snapshot that fails here is rejected whole; the last good snapshot keeps serving.

use crate::{
    HttpFilter, HttpRoute, Listener, ListenerProtocol, PathMatch, PathModifier, Snapshot,
    StringMatch, WeightedBackend,
};
use std::collections::HashSet;
use std::fmt;

/// One structural problem, with the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    /// JSON-ish path, e.g. `listeners[tcp:127.0.0.1:80].virtualHosts[foo.com].routes[2]`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The path of a field in a snapshot, as errors name it
/// (`listeners[tcp:127.0.0.1:80].virtualHosts[foo.com].routes[2]`), put together only when
/// an error is reported: checking or compiling a 10,000-route listener would otherwise format
/// several paths per route that no one reads.
#[derive(Debug, Clone, Copy)]
pub enum FieldPath<'a> {
    /// A path given whole, such as `listeners[tcp:127.0.0.1:80]`.
    Root(&'a str),
    /// `parent.field[index]`.
    Index(&'a FieldPath<'a>, &'static str, usize),
    /// `parent.field[key]`.
    Key(&'a FieldPath<'a>, &'static str, &'a str),
}

impl fmt::Display for FieldPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldPath::Root(p) => f.write_str(p),
            FieldPath::Index(parent, field, i) => write!(f, "{parent}.{field}[{i}]"),
            FieldPath::Key(parent, field, k) => write!(f, "{parent}.{field}[{k}]"),
        }
    }
}

struct Checker<'a> {
    snapshot: &'a Snapshot,
    errors: Vec<ValidationError>,
}

impl Checker<'_> {
    fn err(&mut self, path: impl ToString, message: impl Into<String>) {
        self.errors.push(ValidationError {
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn backends(&mut self, path: &FieldPath<'_>, backends: &[WeightedBackend]) {
        for (i, b) in backends.iter().enumerate() {
            let bpath = FieldPath::Index(path, "backends", i);
            if let Some(c) = &b.cluster
                && self.snapshot.cluster(c).is_none()
            {
                self.err(bpath, format!("unknown cluster {c:?}"));
            }
            self.filters(&bpath, &b.filters, None);
        }
    }

    fn regex(&mut self, path: &FieldPath<'_>, re: &str) {
        if let Err(e) = regex::Regex::new(re) {
            self.err(path, format!("invalid regular expression {re:?}: {e}"));
        }
    }

    fn string_match(&mut self, path: &FieldPath<'_>, m: &StringMatch) {
        if let StringMatch::Regex(re) = m {
            self.regex(path, re);
        }
    }

    fn header_name(&mut self, path: &FieldPath<'_>, name: &str) {
        let ok = !name.is_empty()
            && name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
            });
        if !ok {
            self.err(
                path,
                format!("invalid header name {name:?} (lower-case token expected)"),
            );
        }
    }

    fn filters(
        &mut self,
        path: &FieldPath<'_>,
        filters: &[HttpFilter],
        route_path: Option<&PathMatch>,
    ) {
        for (i, f) in filters.iter().enumerate() {
            let p = FieldPath::Index(path, "filters", i);
            match f {
                HttpFilter::RequestHeaderModifier(m) | HttpFilter::ResponseHeaderModifier(m) => {
                    for h in m.set.iter().chain(&m.add) {
                        self.header_name(&p, &h.name);
                    }
                    for h in &m.remove {
                        self.header_name(&p, h);
                    }
                }
                HttpFilter::RequestRedirect(r) => {
                    if ![301, 302, 303, 307, 308].contains(&r.status_code) {
                        self.err(p, format!("redirect status {} not allowed", r.status_code));
                    }
                    if let Some(s) = &r.scheme
                        && s != "http"
                        && s != "https"
                    {
                        self.err(p, format!("redirect scheme {s:?} not supported"));
                    }
                    self.path_modifier(&p, r.path.as_ref(), route_path);
                }
                HttpFilter::UrlRewrite(r) => self.path_modifier(&p, r.path.as_ref(), route_path),
                HttpFilter::RequestMirror(m) => {
                    if let Some(c) = &m.cluster
                        && self.snapshot.cluster(c).is_none()
                    {
                        self.err(p, format!("unknown mirror cluster {c:?}"));
                    }
                    if m.per_million > 1_000_000 {
                        self.err(p, "mirror share above 100%");
                    }
                }
                HttpFilter::Cors(_) => {}
            }
        }
    }

    fn path_modifier(
        &mut self,
        p: &FieldPath<'_>,
        m: Option<&PathModifier>,
        route_path: Option<&PathMatch>,
    ) {
        match m {
            Some(PathModifier::ReplacePrefixMatch(_)) => {
                if let Some(rp) = route_path
                    && !matches!(rp, PathMatch::Prefix(_))
                {
                    self.err(p, "ReplacePrefixMatch needs a PathPrefix match");
                }
            }
            Some(PathModifier::ReplaceFullPath(s)) if !s.starts_with('/') => {
                self.err(p, format!("path {s:?} must start with '/'"));
            }
            _ => {}
        }
    }

    fn route(&mut self, path: &FieldPath<'_>, r: &HttpRoute) {
        match &r.matcher.path {
            PathMatch::Exact(s) | PathMatch::Prefix(s) if !s.starts_with('/') => {
                self.err(path, format!("path {s:?} must start with '/'"));
            }
            PathMatch::Regex(re) => self.regex(path, re),
            _ => {}
        }
        for h in &r.matcher.headers {
            self.header_name(path, &h.name);
            self.string_match(path, &h.value);
        }
        for q in &r.matcher.query_params {
            self.string_match(path, &q.value);
        }
        self.filters(path, &r.filters, Some(&r.matcher.path));
        self.backends(path, &r.backends);
    }

    fn listener(&mut self, l: &Listener) {
        let name = format!("listeners[{}]", l.name);
        let path = FieldPath::Root(&name);
        if l.name != Listener::key(l.protocol.transport(), l.address, l.port) {
            self.err(path, "name does not match transport, address and port");
        }
        match l.protocol {
            ListenerProtocol::Https => {
                if l.tls.as_ref().is_none_or(|t| t.certificates.is_empty())
                    && l.tls_routes.is_empty()
                {
                    self.err(path, "HTTPS listener without certificates");
                }
            }
            ListenerProtocol::Http | ListenerProtocol::Tcp | ListenerProtocol::Udp => {
                if l.tls.is_some() {
                    self.err(path, "TLS settings on a cleartext listener");
                }
            }
            ListenerProtocol::Tls => {}
        }
        let mut hosts = HashSet::new();
        for vh in &l.virtual_hosts {
            let vpath = FieldPath::Key(&path, "virtualHosts", &vh.hostname);
            if !hosts.insert(vh.hostname.as_str()) {
                self.err(vpath, "duplicate virtual host");
            }
            if !valid_host_pattern(&vh.hostname) {
                self.err(vpath, "invalid hostname pattern");
            }
            for (i, r) in vh.routes.iter().enumerate() {
                self.route(&FieldPath::Index(&vpath, "routes", i), r);
            }
        }
        for (i, r) in l.tls_routes.iter().enumerate() {
            self.backends(&FieldPath::Index(&path, "tlsRoutes", i), &r.backends);
        }
        for (i, r) in l.l4_routes.iter().enumerate() {
            self.backends(&FieldPath::Index(&path, "l4Routes", i), &r.backends);
        }
    }
}

/// `*`, `*.suffix` or a plain lower-case DNS name.
fn valid_host_pattern(h: &str) -> bool {
    if h == "*" {
        return true;
    }
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

impl Snapshot {
    /// Checks internal consistency: unique and correctly keyed listeners, sorted unique
    /// clusters, resolvable cluster references, compilable regular expressions, valid header
    /// names and filter combinations.
    pub fn validate(&self) -> Result<(), Vec<ValidationError>> {
        let mut c = Checker {
            snapshot: self,
            errors: Vec::new(),
        };
        if !self.clusters.windows(2).all(|w| w[0].name < w[1].name) {
            c.err("clusters", "not sorted by name or names not unique");
        }
        let mut names = HashSet::new();
        for l in &self.listeners {
            if !names.insert(l.name.as_str()) {
                c.err(format!("listeners[{}]", l.name), "duplicate listener");
            }
            c.listener(l);
        }
        for s in &self.services {
            for p in &s.ports {
                if self.cluster(&p.cluster).is_none() {
                    c.err(
                        format!("services[{}].ports[{}]", s.name, p.port),
                        format!("unknown cluster {:?}", p.cluster),
                    );
                }
            }
        }
        if c.errors.is_empty() {
            Ok(())
        } else {
            Err(c.errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    fn route(path: PathMatch, filters: Vec<HttpFilter>, cluster: &str) -> HttpRoute {
        HttpRoute {
            id: RouteId {
                route: ObjectRef::new("HTTPRoute", "default", "r"),
                rule: 0,
                matcher: 0,
                rule_name: None,
            },
            matcher: HttpMatch {
                path,
                ..Default::default()
            },
            filters,
            backends: vec![WeightedBackend {
                weight: 1,
                cluster: Some(cluster.into()),
                filters: vec![],
            }],
            timeouts: Timeouts::default(),
            retry: None,
            grpc: false,
        }
    }

    fn snapshot(r: HttpRoute) -> Snapshot {
        let mut l = Listener::new("127.0.0.1".parse().unwrap(), 80, ListenerProtocol::Http);
        l.virtual_hosts.push(VirtualHost {
            hostname: "*".into(),
            routes: vec![r],
        });
        Snapshot {
            listeners: vec![l],
            clusters: vec![Cluster::new("default/svc:80", vec![])],
            ..Default::default()
        }
    }

    #[test]
    fn valid_snapshot_passes() {
        let s = snapshot(route(
            PathMatch::Prefix("/".into()),
            vec![],
            "default/svc:80",
        ));
        assert_eq!(s.validate(), Ok(()));
        let json = serde_json::to_string(&s).unwrap();
        let back: Snapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn unknown_cluster_bad_regex_and_prefix_rewrite_are_reported() {
        let rewrite = HttpFilter::UrlRewrite(UrlRewrite {
            hostname: None,
            path: Some(PathModifier::ReplacePrefixMatch("/x".into())),
        });
        let s = snapshot(route(PathMatch::Regex("(".into()), vec![rewrite], "nope"));
        let errs = s.validate().unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 3, "{text:?}");
        assert!(text[0].contains("invalid regular expression"), "{text:?}");
        assert!(
            text[1].contains("ReplacePrefixMatch needs a PathPrefix"),
            "{text:?}"
        );
        assert!(text[2].contains("unknown cluster \"nope\""), "{text:?}");
        assert!(text[2].starts_with("listeners[tcp:127.0.0.1:80].virtualHosts[*].routes[0]"));
    }

    #[test]
    fn listener_keys() {
        let v6: std::net::IpAddr = "::1".parse().unwrap();
        assert_eq!(Listener::key(Transport::Udp, v6, 53), "udp:[::1]:53");
        let mut l = Listener::new("127.0.0.1".parse().unwrap(), 80, ListenerProtocol::Http);
        l.port = 81;
        let s = Snapshot {
            listeners: vec![l],
            ..Default::default()
        };
        assert!(
            s.validate().unwrap_err()[0]
                .message
                .contains("name does not match")
        );
    }

    #[test]
    fn host_patterns() {
        assert!(valid_host_pattern("*"));
        assert!(valid_host_pattern("*.example.com"));
        assert!(valid_host_pattern("foo-1.example.com"));
        assert!(!valid_host_pattern("Foo.com"));
        assert!(!valid_host_pattern("foo..com"));
        assert!(!valid_host_pattern("*foo.com"));
    }
}
