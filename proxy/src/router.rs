//! HTTP routing compiled off the hot path. A listener's virtual hosts become hash maps (exact
//! names, wildcard suffixes, catch-all); each virtual host's routes become an exact-path map, a
//! path-element prefix trie and a regex set. Every structure keeps the IR order as a rank, and a
//! lookup merges the candidate lists by rank, so the first IR entry that matches wins exactly as
//! a linear scan would, at a cost independent of the number of routes.

use crate::compile::CompileError;
use crate::filters::Filters;
use crate::fxhash::FxHashMap as HashMap;
use crate::upstream::Backends;
use http::{HeaderMap, HeaderName, Method};
use regex::{Regex, RegexSet};
use sluice_ir::{
    FieldPath, HttpMatch, PathMatch, RetryPolicy, RouteId, StringMatch, Timeouts, VirtualHost,
};
use smallvec::SmallVec;
use std::borrow::Cow;
use std::sync::Arc;

/// A string condition, compiled.
#[derive(Debug)]
pub(crate) enum StrMatch {
    Exact(Box<str>),
    Regex(Regex),
}

impl StrMatch {
    fn compile(m: &StringMatch, what: &FieldPath<'_>) -> Result<Self, CompileError> {
        Ok(match m {
            StringMatch::Exact(s) => StrMatch::Exact(s.as_str().into()),
            StringMatch::Regex(re) => StrMatch::Regex(anchored(re, what)?),
        })
    }

    fn matches(&self, s: &str) -> bool {
        match self {
            StrMatch::Exact(e) => &**e == s,
            StrMatch::Regex(re) => re.is_match(s),
        }
    }
}

fn anchored(re: &str, what: &FieldPath<'_>) -> Result<Regex, CompileError> {
    Regex::new(&format!("^(?:{re})$"))
        .map_err(|e| CompileError::new(what, format!("invalid regular expression {re:?}: {e}")))
}

/// One compiled route entry (an IR [`sluice_ir::HttpRoute`]).
#[derive(Debug)]
pub struct Route {
    /// Where it came from.
    pub id: RouteId,
    /// `id` as text, shared by metrics and logs.
    pub name: Arc<str>,
    pub(crate) path: PathMatch,
    /// The prefix of a `Prefix` match with any trailing `/` removed ("" for `/`).
    pub(crate) prefix: Option<Box<str>>,
    pub(crate) method: Option<Method>,
    pub(crate) headers: Box<[(HeaderName, StrMatch)]>,
    pub(crate) query: Box<[(Box<str>, StrMatch)]>,
    pub(crate) filters: Filters,
    pub(crate) backends: Backends,
    pub(crate) timeouts: Timeouts,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) grpc: bool,
}

impl Route {
    /// Method, header and query conditions (the path was matched by the index).
    fn matches_rest(&self, req: &RequestHead<'_>) -> bool {
        if let Some(m) = &self.method
            && m != req.method
        {
            return false;
        }
        for (name, cond) in self.headers.iter() {
            let mut values = req.headers.get_all(name).iter();
            let Some(first) = values.next() else {
                return false;
            };
            let ok = match values.next() {
                None => first.to_str().is_ok_and(|v| cond.matches(v)),
                Some(second) => {
                    let mut joined = String::new();
                    for v in [first, second].into_iter().chain(values) {
                        if !joined.is_empty() {
                            joined.push(',');
                        }
                        joined.push_str(v.to_str().unwrap_or(""));
                    }
                    cond.matches(&joined)
                }
            };
            if !ok {
                return false;
            }
        }
        for (name, cond) in self.query.iter() {
            match query_param(req.query, name) {
                Some(v) if cond.matches(&v) => {}
                _ => return false,
            }
        }
        true
    }

    /// The path condition.
    pub fn path(&self) -> &PathMatch {
        &self.path
    }

    /// True for gRPC routes (errors answered as gRPC status).
    pub fn is_grpc(&self) -> bool {
        self.grpc
    }
}

/// The first value of query parameter `name`, percent-decoded.
fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<Cow<'q, str>> {
    for pair in query?.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(k) == name {
            return Some(percent_decode(v));
        }
    }
    None
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// What the router looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// `Host` header or `:authority`, as received (port and case are normalized here).
    pub host: &'a str,
    /// Method.
    pub method: &'a Method,
    /// Path without the query.
    pub path: &'a str,
    /// Query string without `?`.
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

#[derive(Debug, Default)]
struct TrieNode {
    children: HashMap<Box<str>, u32>,
    ranks: SmallVec<[u32; 2]>,
}

/// Routes of one virtual host, indexed.
///
/// A request's lookup reads the virtual host, then its routes: with many virtual hosts each
/// read is likely a cache miss, so a host's first route and the root of its prefix trie are
/// kept inline rather than behind pointers of their own (one HTTPRoute per hostname is the
/// common case: at 10,000 routes this saves two of a lookup's three misses).
#[derive(Debug)]
pub struct VHost {
    /// The hostname pattern.
    pub hostname: Box<str>,
    routes: SmallVec<[Arc<Route>; 1]>,
    exact: HashMap<Box<str>, SmallVec<[u32; 2]>>,
    /// Trie node 0 (the prefix `/`); node `i > 0` is `trie[i - 1]`.
    root: TrieNode,
    trie: Vec<TrieNode>,
    regex: Option<(RegexSet, Vec<u32>)>,
}

impl VHost {
    fn compile(
        vh: &VirtualHost,
        path: &FieldPath<'_>,
        mut compile_route: impl FnMut(
            &FieldPath<'_>,
            &sluice_ir::HttpRoute,
        ) -> Result<Route, CompileError>,
    ) -> Result<Self, CompileError> {
        let mut v = VHost {
            hostname: vh.hostname.as_str().into(),
            routes: SmallVec::with_capacity(vh.routes.len()),
            exact: HashMap::default(),
            root: TrieNode::default(),
            trie: Vec::new(),
            regex: None,
        };
        let mut regexes = Vec::new();
        let mut regex_ranks = Vec::new();
        for (rank, r) in vh.routes.iter().enumerate() {
            let rank = rank as u32;
            let rpath = FieldPath::Index(path, "routes", rank as usize);
            let route = compile_route(&rpath, r)?;
            match &r.matcher.path {
                PathMatch::Exact(p) => v.exact.entry(p.as_str().into()).or_default().push(rank),
                PathMatch::Prefix(p) => {
                    let mut node = 0u32;
                    let p = trim_prefix(p);
                    for seg in segments(p).filter(|_| !p.is_empty()) {
                        let next = v.trie.len() as u32 + 1;
                        let child = *v.node_mut(node).children.entry(seg.into()).or_insert(next);
                        if child == next {
                            v.trie.push(TrieNode::default());
                        }
                        node = child;
                    }
                    v.node_mut(node).ranks.push(rank);
                }
                PathMatch::Regex(re) => {
                    anchored(re, &rpath)?;
                    regexes.push(format!("^(?:{re})$"));
                    regex_ranks.push(rank);
                }
            }
            v.routes.push(Arc::new(route));
        }
        if !regexes.is_empty() {
            let set = RegexSet::new(&regexes)
                .map_err(|e| CompileError::new(path, format!("regex set: {e}")))?;
            v.regex = Some((set, regex_ranks));
        }
        Ok(v)
    }

    fn node(&self, i: u32) -> &TrieNode {
        match i {
            0 => &self.root,
            _ => &self.trie[i as usize - 1],
        }
    }

    fn node_mut(&mut self, i: u32) -> &mut TrieNode {
        match i {
            0 => &mut self.root,
            _ => &mut self.trie[i as usize - 1],
        }
    }

    /// The first route (in IR order) matching the request.
    pub fn find(&self, req: &RequestHead<'_>) -> Option<&Arc<Route>> {
        let regex_hits: SmallVec<[u32; 4]>;
        let mut lists: SmallVec<[&[u32]; 12]> = SmallVec::new();
        if let Some(l) = self.exact.get(req.path) {
            lists.push(l);
        }
        let root = &self.root;
        if !root.ranks.is_empty() {
            lists.push(&root.ranks);
        }
        let mut node = root;
        if !node.children.is_empty() {
            for seg in segments(req.path) {
                match node.children.get(seg) {
                    Some(&c) => {
                        node = self.node(c);
                        if !node.ranks.is_empty() {
                            lists.push(&node.ranks);
                        }
                        if node.children.is_empty() {
                            break;
                        }
                    }
                    None => break,
                }
            }
        }
        if let Some((set, ranks)) = &self.regex {
            regex_hits = set.matches(req.path).iter().map(|i| ranks[i]).collect();
            if !regex_hits.is_empty() {
                lists.push(&regex_hits);
            }
        }
        // Merge the sorted candidate lists by rank; the first full match wins.
        let mut heads: SmallVec<[usize; 12]> = SmallVec::from_elem(0, lists.len());
        loop {
            let mut best: Option<(usize, u32)> = None;
            for (i, l) in lists.iter().enumerate() {
                if let Some(&r) = l.get(heads[i])
                    && best.is_none_or(|(_, b)| r < b)
                {
                    best = Some((i, r));
                }
            }
            let (i, rank) = best?;
            heads[i] += 1;
            let route = &self.routes[rank as usize];
            if route.matches_rest(req) {
                return Some(route);
            }
        }
    }

    /// Routes in IR order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }
}

/// `/foo/` -> `/foo`, `/` -> ``.
fn trim_prefix(p: &str) -> &str {
    p.strip_suffix('/').unwrap_or(p)
}

/// Path elements after the leading `/` (`/a//b/` -> `a`, ``, `b`, ``).
fn segments(path: &str) -> std::str::Split<'_, char> {
    path.strip_prefix('/').unwrap_or(path).split('/')
}

/// Host -> virtual host, then the virtual host's route index.
#[derive(Debug, Default)]
pub struct Router {
    vhosts: Vec<VHost>,
    /// Exact hostnames of up to [`ShortHost::MAX`] bytes, compared in the table itself.
    exact_short: HashMap<ShortHost, u32>,
    /// Longer exact hostnames.
    exact: HashMap<Box<str>, u32>,
    /// `.example.com` for `*.example.com`.
    wildcard: HashMap<Box<str>, u32>,
    any: Option<u32>,
    /// Longest wildcard suffix, to skip impossible lookups.
    max_wildcard: usize,
}

impl Router {
    pub(crate) fn compile(
        listener_path: &FieldPath<'_>,
        vhosts: &[VirtualHost],
        mut compile_route: impl FnMut(
            &FieldPath<'_>,
            &sluice_ir::HttpRoute,
        ) -> Result<Route, CompileError>,
    ) -> Result<Self, CompileError> {
        let mut r = Router::default();
        for vh in vhosts {
            let path = FieldPath::Key(listener_path, "virtualHosts", &vh.hostname);
            let idx = r.vhosts.len() as u32;
            r.vhosts
                .push(VHost::compile(vh, &path, &mut compile_route)?);
            let h = vh.hostname.as_str();
            if h == "*" {
                r.any.get_or_insert(idx);
            } else if let Some(suffix) = h.strip_prefix('*') {
                r.max_wildcard = r.max_wildcard.max(suffix.len());
                r.wildcard.entry(suffix.into()).or_insert(idx);
            } else if let Some(k) = ShortHost::new(h) {
                r.exact_short.entry(k).or_insert(idx);
            } else {
                r.exact.entry(h.into()).or_insert(idx);
            }
        }
        Ok(r)
    }

    /// The virtual host serving `host` (a `Host` header value: port stripped, case folded):
    /// exact name, then the longest matching wildcard, then `*`.
    pub fn vhost(&self, host: &str) -> Option<&VHost> {
        let host = normalize_host(host);
        let host = host.as_ref();
        let exact = match ShortHost::new(host) {
            Some(k) => self.exact_short.get(&k),
            None => self.exact.get(host),
        };
        if let Some(&i) = exact {
            return Some(&self.vhosts[i as usize]);
        }
        if !self.wildcard.is_empty() {
            // Suffixes starting at each '.', longest first; at least one label stays in front.
            for (pos, _) in host.match_indices('.') {
                if pos == 0 {
                    continue;
                }
                let suffix = &host[pos..];
                if suffix.len() > self.max_wildcard {
                    continue;
                }
                if let Some(&i) = self.wildcard.get(suffix) {
                    return Some(&self.vhosts[i as usize]);
                }
            }
        }
        self.any.map(|i| &self.vhosts[i as usize])
    }

    /// The route serving a request, if any.
    pub fn find(&self, req: &RequestHead<'_>) -> Option<&Arc<Route>> {
        self.vhost(req.host)?.find(req)
    }

    /// Virtual hosts in IR order.
    pub fn vhosts(&self) -> &[VHost] {
        &self.vhosts
    }
}

/// A short hostname held in place as a map key: comparing it on a lookup reads the table
/// only, where a boxed key is one more pointer to follow (a cache miss with many hosts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ShortHost {
    len: u8,
    bytes: [u8; ShortHost::MAX],
}

impl ShortHost {
    const MAX: usize = 31;

    fn new(host: &str) -> Option<ShortHost> {
        let b = host.as_bytes();
        let mut bytes = [0; ShortHost::MAX];
        bytes.get_mut(..b.len())?.copy_from_slice(b);
        Some(ShortHost {
            len: b.len() as u8,
            bytes,
        })
    }
}

/// Strips the port (and a trailing dot) and lower-cases, borrowing when nothing changes.
pub(crate) fn normalize_host(host: &str) -> Cow<'_, str> {
    let name = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.rfind(':') {
            Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
            _ => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// Method, header and query conditions.
pub(crate) type Conditions = (
    Option<Method>,
    Box<[(HeaderName, StrMatch)]>,
    Box<[(Box<str>, StrMatch)]>,
);

/// The HttpMatch conditions other than the path, compiled.
pub(crate) fn compile_conditions(
    path: &FieldPath<'_>,
    m: &HttpMatch,
) -> Result<Conditions, CompileError> {
    let method = match &m.method {
        Some(s) => Some(
            Method::from_bytes(s.as_bytes())
                .map_err(|_| CompileError::new(path, format!("invalid method {s:?}")))?,
        ),
        None => None,
    };
    let mut headers = Vec::with_capacity(m.headers.len());
    for h in &m.headers {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| CompileError::new(path, format!("invalid header name {:?}", h.name)))?;
        headers.push((name, StrMatch::compile(&h.value, path)?));
    }
    let mut query = Vec::with_capacity(m.query_params.len());
    for q in &m.query_params {
        query.push((q.name.as_str().into(), StrMatch::compile(&q.value, path)?));
    }
    Ok((method, headers.into(), query.into()))
}

/// The normalized prefix of a Prefix match.
pub(crate) fn route_prefix(p: &PathMatch) -> Option<Box<str>> {
    match p {
        PathMatch::Prefix(p) => Some(trim_prefix(p).into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_normalize() {
        assert_eq!(normalize_host("Foo.COM:8080"), "foo.com");
        assert_eq!(normalize_host("foo.com."), "foo.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert!(matches!(normalize_host("a.b"), Cow::Borrowed(_)));
    }

    #[test]
    fn query_params_decode() {
        assert_eq!(query_param(Some("a=1&b=x%20y&a=2"), "a").unwrap(), "1");
        assert_eq!(query_param(Some("a=1&b=x%20y"), "b").unwrap(), "x y");
        assert_eq!(query_param(Some("flag"), "flag").unwrap(), "");
        assert!(query_param(Some("a=1"), "A").is_none());
        assert_eq!(percent_decode("%4"), "%4");
    }

    /// Exact hostnames are found whether they fit a [`ShortHost`] or not, and a name that
    /// only shares a prefix, or differs in its last byte, is not taken for one.
    #[test]
    fn exact_hosts_of_every_length_are_found() {
        use crate::test_util::{http_listener, route, snapshot, vhost};
        let short = "a.example";
        let max = format!("{}.example", "b".repeat(ShortHost::MAX - 8));
        let over = format!("{}.example", "c".repeat(ShortHost::MAX - 7));
        let long = format!("{}.example", "d".repeat(60));
        assert_eq!(max.len(), ShortHost::MAX);
        assert_eq!(over.len(), ShortHost::MAX + 1);
        let vhosts = [short, &max, &over, &long, "*"]
            .into_iter()
            .map(|h| vhost(h, vec![route(&h.replace('*', "any")).build()]))
            .collect();
        let snapshot = snapshot(vec![http_listener(8080, vhosts)], vec![]);
        let router = Router::from_snapshot(&snapshot, "tcp:127.0.0.1:8080").expect("compiles");
        let host_of = |h: &str| router.vhost(h).map(|v| v.hostname.to_string());
        for h in [short, &max, &over, &long] {
            assert_eq!(host_of(h).as_deref(), Some(h));
            assert_eq!(
                host_of(&format!("{}:8080", h.to_uppercase())).as_deref(),
                Some(h)
            );
            // Same length, last byte differs; a longer name with the same start.
            let mut other = h.to_string();
            other.pop();
            other.push('X');
            assert_eq!(host_of(&other).as_deref(), Some("*"), "{other}");
            assert_eq!(host_of(&format!("{h}.com")).as_deref(), Some("*"));
        }
        assert_eq!(host_of("a.exampl").as_deref(), Some("*"));
    }

    #[test]
    fn segments_split() {
        assert_eq!(segments("/a//b/").collect::<Vec<_>>(), ["a", "", "b", ""]);
        assert_eq!(trim_prefix("/"), "");
    }
}
