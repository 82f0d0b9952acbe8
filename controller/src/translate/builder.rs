//! Assembles IR listeners from what Gateways, routes and Ingresses contribute: one listener
//! per (transport, address, port), virtual hosts with listener isolation, route entries in
//! Gateway API precedence order, certificates by specificity.

use super::Age;
use super::gateway::{Family, Protocol};
use super::hostname;
use sluice_ir::{
    ClientValidation, HttpRoute, L4Route, Listener, ListenerProtocol, ListenerSource, PathMatch,
    ServerCertificate, TlsMode, TlsRoute, TlsTermination, VirtualHost,
};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::rc::Rc;

/// Sort key of an HTTP route entry inside a virtual host; smaller sorts first. Exact path,
/// then regular expression path, then prefix path by length (characters); then a method
/// match; then more header matches; then more query parameter matches; then the oldest route
/// (creation time, namespace/name, kind); then rule index and match index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Precedence {
    path_class: u8,
    prefix_len: Reverse<usize>,
    no_method: bool,
    headers: Reverse<usize>,
    query_params: Reverse<usize>,
    age: Rc<Age>,
    kind: Rc<str>,
    rule: u32,
    matcher: u32,
}

impl Precedence {
    /// The key of an entry.
    pub fn of(route: &HttpRoute, age: &Rc<Age>, kind: &Rc<str>) -> Self {
        let (path_class, prefix_len) = match &route.matcher.path {
            PathMatch::Exact(_) => (0, 0),
            PathMatch::Regex(_) => (1, 0),
            PathMatch::Prefix(p) => (2, p.chars().count()),
        };
        Precedence {
            path_class,
            prefix_len: Reverse(prefix_len),
            no_method: route.matcher.method.is_none(),
            headers: Reverse(route.matcher.headers.len()),
            query_params: Reverse(route.matcher.query_params.len()),
            age: age.clone(),
            kind: kind.clone(),
            rule: route.id.rule,
            matcher: route.id.matcher,
        }
    }
}

/// An HTTP route entry contributed to a virtual host through a listener hostname.
#[derive(Debug, Clone)]
struct HttpEntry {
    listener_hostname: Option<String>,
    key: Precedence,
    /// Always set until [`assemble_vhosts`] moves it into its last virtual host.
    route: Option<HttpRoute>,
}

impl HttpEntry {
    fn id(&self) -> &sluice_ir::RouteId {
        &self.route.as_ref().expect("moved out only at the end").id
    }
}

/// Ordering of TLS and L4 routes: oldest route first, then rule index.
pub type RouteOrder = (Age, String, u32);

/// One IR listener under construction.
#[derive(Debug)]
struct ListenerBuilder {
    address: IpAddr,
    port: u16,
    family: Family,
    https: bool,
    sources: BTreeSet<ListenerSource>,
    certificates: Vec<ServerCertificate>,
    client_validation: Option<ClientValidation>,
    /// Some HTTPS Gateway listener on this socket asks for HTTP/3.
    http3: bool,
    /// Hostnames of HTTP(S) Gateway listeners (`None` = no hostname) feeding this socket.
    http_listener_hostnames: BTreeSet<Option<String>>,
    vhosts: BTreeMap<String, Vec<HttpEntry>>,
    tls_routes: Vec<(RouteOrder, TlsRoute)>,
    l4_routes: Vec<(RouteOrder, L4Route)>,
}

/// Collects contributions; [`IrBuilder::finish`] produces sorted IR listeners.
#[derive(Debug, Default)]
pub struct IrBuilder {
    listeners: BTreeMap<String, ListenerBuilder>,
}

impl IrBuilder {
    /// Registers a Gateway (or Ingress) listener on a socket. Fails, naming the family in
    /// use, when the socket already serves an incompatible family.
    pub fn listener(
        &mut self,
        address: IpAddr,
        port: u16,
        protocol: Protocol,
        source: ListenerSource,
        listener_hostname: Option<&str>,
    ) -> Result<String, String> {
        let key = Listener::key(protocol.transport(), address, port);
        let fam = protocol.family();
        let lb = self
            .listeners
            .entry(key.clone())
            .or_insert_with(|| ListenerBuilder {
                address,
                port,
                family: fam,
                https: false,
                sources: BTreeSet::new(),
                certificates: Vec::new(),
                client_validation: None,
                http3: false,
                http_listener_hostnames: BTreeSet::new(),
                vhosts: BTreeMap::new(),
                tls_routes: Vec::new(),
                l4_routes: Vec::new(),
            });
        if lb.family != fam {
            return Err(format!(
                "{address}:{port} already serves {} listeners of {}, which cannot share it",
                lb.family.describe(),
                lb.sources
                    .iter()
                    .map(|s| s.parent.to_string())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        lb.https |= protocol == Protocol::Https;
        lb.sources.insert(source);
        if matches!(protocol, Protocol::Http | Protocol::Https) {
            lb.http_listener_hostnames
                .insert(listener_hostname.map(str::to_string));
        }
        Ok(key)
    }

    /// Adds certificates to a listener (duplicates are dropped).
    pub fn certificates(&mut self, key: &str, certs: &[ServerCertificate]) {
        if let Some(lb) = self.listeners.get_mut(key) {
            for c in certs {
                if !lb.certificates.contains(c) {
                    lb.certificates.push(c.clone());
                }
            }
        }
    }

    /// Sets client certificate validation on a listener (the first setting wins).
    pub fn client_validation(&mut self, key: &str, v: &ClientValidation) {
        if let Some(lb) = self.listeners.get_mut(key) {
            lb.client_validation.get_or_insert_with(|| v.clone());
        }
    }

    /// Serves HTTP/3 on the listener's port too (HTTPS listeners only).
    pub fn http3(&mut self, key: &str) {
        if let Some(lb) = self.listeners.get_mut(key) {
            lb.http3 = true;
        }
    }

    /// Adds an HTTP route entry to a virtual host.
    pub fn http(
        &mut self,
        key: &str,
        vhost: &str,
        listener_hostname: Option<&str>,
        precedence: Precedence,
        route: HttpRoute,
    ) {
        if let Some(lb) = self.listeners.get_mut(key) {
            lb.vhosts
                .entry(vhost.to_string())
                // Most virtual hosts get one entry; a Vec grows to four at its first push.
                .or_insert_with(|| Vec::with_capacity(1))
                .push(HttpEntry {
                    listener_hostname: listener_hostname.map(str::to_string),
                    key: precedence,
                    route: Some(route),
                });
        }
    }

    /// Adds a TLS route.
    pub fn tls(&mut self, key: &str, order: RouteOrder, route: TlsRoute) {
        if let Some(lb) = self.listeners.get_mut(key) {
            lb.tls_routes.push((order, route));
        }
    }

    /// Adds a TCP or UDP route.
    pub fn l4(&mut self, key: &str, order: RouteOrder, route: L4Route) {
        if let Some(lb) = self.listeners.get_mut(key) {
            lb.l4_routes.push((order, route));
        }
    }

    /// The IR listeners, sorted by name.
    pub fn finish(self) -> Vec<Listener> {
        self.listeners
            .into_iter()
            .map(|(name, lb)| lb.finish(name))
            .collect()
    }
}

/// Whether virtual host pattern `outer` matches every host `inner` matches.
fn vhost_covers(outer: &str, inner: &str) -> bool {
    outer == "*" || hostname::covers(Some(outer), inner)
}

/// Builds the virtual hosts of one socket.
///
/// Listener isolation: a request is served by the most specific listener hostname that
/// matches it, so a virtual host only takes entries that came through that listener.
/// Hostname precedence: a request matches the routes of its most specific route hostname
/// first, then those of less specific route hostnames that still match it (same listener),
/// then match precedence applies; each virtual host therefore also carries the entries of the
/// wildcard virtual hosts covering it, after its own. Listener hostnames without routes get an
/// empty virtual host (404), so that their requests do not fall through to a less specific
/// listener.
fn assemble_vhosts(
    listener_hosts: &[Option<String>],
    raw: BTreeMap<String, Vec<HttpEntry>>,
) -> Vec<VirtualHost> {
    let best_listener = |host: &str| -> Option<&Option<String>> {
        listener_hosts
            .iter()
            .filter(|lh| hostname::covers(lh.as_deref(), host))
            .min_by(|a, b| {
                hostname::specificity_cmp(a.as_deref().unwrap_or("*"), b.as_deref().unwrap_or("*"))
            })
    };
    let (names, mut lists): (Vec<String>, Vec<Vec<HttpEntry>>) = raw.into_iter().unzip();
    let find = |h: &str| names.binary_search_by(|n| n.as_str().cmp(h)).ok();
    let wildcards: Vec<usize> = (0..names.len())
        .filter(|&i| hostname::is_wildcard(&names[i]) || names[i] == "*")
        .collect();
    let mut hosts: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    hosts.extend(listener_hosts.iter().flatten().map(String::as_str));

    // Plan every virtual host as (list, entry) indices, then move each entry into its last
    // use and clone it for the others.
    let mut plans: Vec<(String, Vec<(usize, usize)>)> = Vec::new();
    let mut uses: Vec<Vec<u32>> = lists.iter().map(|l| vec![0; l.len()]).collect();
    for host in hosts {
        let best = best_listener(host);
        let keep = |e: &HttpEntry| best.is_none_or(|b| &e.listener_hostname == b);
        let own = find(host);
        let mut sources: Vec<usize> = wildcards
            .iter()
            .copied()
            .filter(|&w| names[w] != host && vhost_covers(&names[w], host))
            .collect();
        sources.sort_by(|&a, &b| hostname::specificity_cmp(&names[a], &names[b]));
        let mut picked: Vec<(usize, &Precedence, usize, usize)> = Vec::new();
        for (rank, li) in own.into_iter().chain(sources).enumerate() {
            for (ei, e) in lists[li].iter().enumerate() {
                if keep(e) {
                    picked.push((rank, &e.key, li, ei));
                }
            }
        }
        picked.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let id = |&(_, _, li, ei): &(usize, &Precedence, usize, usize)| lists[li][ei].id();
        let plan: Vec<(usize, usize)> = if picked.iter().all(|p| p.0 == 0) {
            // One list: an entry's precedence names its route entry, so the copies of one
            // entry (from listeners that share a hostname) sort next to each other.
            picked.dedup_by(|a, b| id(a) == id(b));
            picked.into_iter().map(|(_, _, li, ei)| (li, ei)).collect()
        } else {
            let mut seen = BTreeSet::new();
            picked
                .into_iter()
                .filter(|p| seen.insert(id(p)))
                .map(|(_, _, li, ei)| (li, ei))
                .collect()
        };
        let is_listener_host = listener_hosts.iter().flatten().any(|h| h == host);
        let has_own = own.is_some_and(|li| lists[li].iter().any(keep));
        if has_own || is_listener_host {
            for &(li, ei) in &plan {
                uses[li][ei] += 1;
            }
            plans.push((host.to_string(), plan));
        }
    }
    let mut out: Vec<VirtualHost> = plans
        .into_iter()
        .map(|(hostname, plan)| {
            let routes = plan
                .into_iter()
                .filter_map(|(li, ei)| {
                    uses[li][ei] -= 1;
                    let cell = &mut lists[li][ei].route;
                    if uses[li][ei] == 0 {
                        cell.take()
                    } else {
                        cell.clone()
                    }
                })
                .collect();
            VirtualHost { hostname, routes }
        })
        .collect();
    out.sort_by(|a, b| hostname::specificity_cmp(&a.hostname, &b.hostname));
    out
}

impl ListenerBuilder {
    fn finish(self, name: String) -> Listener {
        let protocol = match self.family {
            Family::Http => ListenerProtocol::Http,
            Family::Tls if self.https => ListenerProtocol::Https,
            Family::Tls => ListenerProtocol::Tls,
            Family::Tcp => ListenerProtocol::Tcp,
            Family::Udp => ListenerProtocol::Udp,
        };
        let listener_hosts: Vec<Option<String>> =
            self.http_listener_hostnames.iter().cloned().collect();
        let virtual_hosts = assemble_vhosts(&listener_hosts, self.vhosts);

        let mut certificates = self.certificates;
        let cert_rank = |c: &ServerCertificate| match c.server_names.first() {
            None => (2, Reverse(0)),
            Some(n) if hostname::is_wildcard(n) => (1, Reverse(n.len())),
            Some(n) => (0, Reverse(n.len())),
        };
        certificates.sort_by_key(|c| cert_rank(c));
        let has_terminate = self
            .tls_routes
            .iter()
            .any(|(_, r)| r.mode == TlsMode::Terminate);
        let tls = (!certificates.is_empty()
            && (protocol == ListenerProtocol::Https || has_terminate))
            .then(|| TlsTermination {
                certificates,
                alpn: Vec::new(),
                client_validation: self.client_validation,
            });

        let mut tls_routes = self.tls_routes;
        tls_routes.sort_by(|a, b| a.0.cmp(&b.0));
        tls_routes.dedup_by(|a, b| a.1.id == b.1.id);
        let mut l4_routes = self.l4_routes;
        l4_routes.sort_by(|a, b| a.0.cmp(&b.0));
        l4_routes.dedup_by(|a, b| a.1.id == b.1.id);
        Listener {
            name,
            address: self.address,
            port: self.port,
            protocol,
            tls,
            virtual_hosts: if matches!(protocol, ListenerProtocol::Http | ListenerProtocol::Https) {
                virtual_hosts
            } else {
                Vec::new()
            },
            tls_routes: tls_routes.into_iter().map(|(_, r)| r).collect(),
            l4_routes: l4_routes.into_iter().map(|(_, r)| r).collect(),
            http3: self.http3 && self.https,
            sources: self.sources.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_ir::{HttpMatch, ObjectRef, RouteId, Timeouts};

    fn entry(name: &str, path: PathMatch, method: bool, headers: usize, rule: u32) -> HttpRoute {
        HttpRoute {
            id: RouteId {
                route: ObjectRef::new("HTTPRoute", "ns", name),
                rule,
                matcher: 0,
                rule_name: None,
            },
            matcher: HttpMatch {
                path,
                method: method.then(|| "GET".to_string()),
                headers: (0..headers)
                    .map(|i| sluice_ir::HeaderMatch {
                        name: format!("h{i}"),
                        value: sluice_ir::StringMatch::Exact("v".into()),
                    })
                    .collect(),
                query_params: Vec::new(),
            },
            filters: Vec::new(),
            backends: Vec::new(),
            timeouts: Timeouts::default(),
            retry: None,
            grpc: false,
        }
    }

    fn age(name: &str, t: Option<i64>) -> Rc<Age> {
        Rc::new(Age {
            created: t.map(|s| {
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::from_second(s).unwrap(),
                )
            }),
            namespace: "ns".into(),
            name: name.into(),
        })
    }

    fn p(r: &HttpRoute, a: &Rc<Age>) -> Precedence {
        Precedence::of(r, a, &Rc::from(r.id.route.kind.as_str()))
    }

    #[test]
    fn precedence_follows_the_spec_order() {
        let cases = vec![
            (
                entry("z", PathMatch::Prefix("/".into()), false, 0, 0),
                age("z", Some(1)),
            ),
            (
                entry("a", PathMatch::Prefix("/foo".into()), false, 0, 0),
                age("a", Some(5)),
            ),
            (
                entry("b", PathMatch::Exact("/foo".into()), false, 0, 0),
                age("b", Some(9)),
            ),
            (
                entry("c", PathMatch::Regex("/f.*".into()), false, 0, 0),
                age("c", Some(1)),
            ),
            (
                entry("d", PathMatch::Prefix("/foo".into()), true, 0, 0),
                age("d", Some(9)),
            ),
            (
                entry("e", PathMatch::Prefix("/foo".into()), false, 2, 0),
                age("e", Some(9)),
            ),
            (
                entry("f", PathMatch::Prefix("/foo".into()), false, 2, 0),
                age("f", Some(3)),
            ),
            (
                entry("g", PathMatch::Prefix("/foo".into()), false, 2, 0),
                age("g", Some(3)),
            ),
            (
                entry("g", PathMatch::Prefix("/foo".into()), false, 2, 1),
                age("g", Some(3)),
            ),
            (
                entry("h", PathMatch::Prefix("/foo/bar".into()), false, 0, 0),
                age("h", Some(9)),
            ),
            (
                entry("u", PathMatch::Prefix("/foo".into()), false, 2, 0),
                age("u", None),
            ),
        ];
        let mut keyed: Vec<_> = cases
            .iter()
            .map(|(r, a)| (p(r, a), format!("{}#{}", r.id.route.name, r.id.rule)))
            .collect();
        keyed.sort();
        let order: Vec<_> = keyed.into_iter().map(|(_, n)| n).collect();
        assert_eq!(
            order,
            vec![
                "b#0", "c#0", "h#0", "d#0", "u#0", "f#0", "g#0", "g#1", "e#0", "a#0", "z#0"
            ]
        );
    }

    #[test]
    fn isolation_keeps_the_most_specific_listener_and_adds_empty_vhosts() {
        let mut b = IrBuilder::default();
        let addr: IpAddr = "127.0.0.1".parse().unwrap();
        let src = |l: &str| ListenerSource {
            parent: ObjectRef::new("Gateway", "ns", "gw"),
            listener: l.into(),
        };
        let k = b
            .listener(addr, 80, Protocol::Http, src("any"), None)
            .unwrap();
        b.listener(addr, 80, Protocol::Http, src("wild"), Some("*.example.com"))
            .unwrap();
        b.listener(
            addr,
            80,
            Protocol::Http,
            src("foo"),
            Some("*.foo.example.com"),
        )
        .unwrap();
        let r = entry("r", PathMatch::Prefix("/".into()), false, 0, 0);
        let a = age("r", None);
        // Through the empty-hostname listener, for a host the wildcard listener covers.
        b.http(&k, "x.example.com", None, p(&r, &a), r.clone());
        // Through the empty-hostname listener, for an uncovered host.
        b.http(&k, "bar.com", None, p(&r, &a), r.clone());
        // Through the wildcard listener.
        let r2 = entry("r2", PathMatch::Prefix("/".into()), false, 0, 0);
        b.http(&k, "*.example.com", Some("*.example.com"), p(&r2, &a), r2);
        assert!(
            b.listener(addr, 80, Protocol::Tcp, src("tcp"), None)
                .is_err()
        );
        let ls = b.finish();
        assert_eq!(ls.len(), 1);
        let hosts: Vec<(&str, usize)> = ls[0]
            .virtual_hosts
            .iter()
            .map(|v| (v.hostname.as_str(), v.routes.len()))
            .collect();
        assert_eq!(
            hosts,
            vec![
                ("bar.com", 1),
                ("*.foo.example.com", 0),
                ("*.example.com", 1)
            ]
        );
        assert_eq!(ls[0].sources.len(), 3);
    }

    #[test]
    fn less_specific_route_hostnames_follow_the_more_specific_ones() {
        let mut b = IrBuilder::default();
        let addr: IpAddr = "127.0.0.1".parse().unwrap();
        let src = ListenerSource {
            parent: ObjectRef::new("Gateway", "ns", "gw"),
            listener: "http".into(),
        };
        let k = b.listener(addr, 80, Protocol::Http, src, None).unwrap();
        let a = entry("a", PathMatch::Prefix("/foo".into()), false, 0, 0);
        let w = entry("w", PathMatch::Prefix("/".into()), false, 0, 0);
        let any = entry("any", PathMatch::Exact("/x".into()), false, 0, 0);
        let age_ = age("x", None);
        b.http(&k, "a.example.com", None, p(&a, &age_), a);
        b.http(&k, "*.example.com", None, p(&w, &age_), w);
        b.http(&k, "*", None, p(&any, &age_), any);
        let ls = b.finish();
        let hosts: Vec<(&str, Vec<&str>)> = ls[0]
            .virtual_hosts
            .iter()
            .map(|v| {
                (
                    v.hostname.as_str(),
                    v.routes.iter().map(|r| r.id.route.name.as_str()).collect(),
                )
            })
            .collect();
        // The exact-path entry of the catch-all route comes last for a.example.com: hostname
        // specificity decides before match precedence.
        assert_eq!(
            hosts,
            vec![
                ("a.example.com", vec!["a", "w", "any"]),
                ("*.example.com", vec!["w", "any"]),
                ("*", vec!["any"]),
            ]
        );
    }

    #[test]
    fn a_route_from_two_listeners_on_one_port_is_served_once() {
        let mut b = IrBuilder::default();
        let addr: IpAddr = "127.0.0.1".parse().unwrap();
        let mut keys = Vec::new();
        for gw in ["gw-1", "gw-2"] {
            let src = ListenerSource {
                parent: ObjectRef::new("Gateway", "ns", gw),
                listener: "http".into(),
            };
            keys.push(b.listener(addr, 80, Protocol::Http, src, None).unwrap());
        }
        let r = entry("r", PathMatch::Prefix("/".into()), false, 0, 0);
        let q = entry("q", PathMatch::Prefix("/api".into()), false, 0, 0);
        let (age_r, age_q) = (age("r", Some(1)), age("q", Some(2)));
        for k in &keys {
            b.http(k, "a.example.com", None, p(&r, &age_r), r.clone());
        }
        b.http(&keys[0], "a.example.com", None, p(&q, &age_q), q);
        let ls = b.finish();
        assert_eq!(ls.len(), 1);
        let names: Vec<&str> = ls[0].virtual_hosts[0]
            .routes
            .iter()
            .map(|r| r.id.route.name.as_str())
            .collect();
        assert_eq!(names, vec!["q", "r"]);
    }
}
