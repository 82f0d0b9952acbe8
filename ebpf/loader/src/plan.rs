//! Projection of an IR snapshot onto the datapath's maps: frontends, backend sets and
//! sk_lookup redirects. Pure: no maps, no syscalls.

use crate::maglev::hash64;
use ipnet::Ipv4Net;
use sluice_ebpf_common::{
    ListenerKey, PROTO_TCP, PROTO_UDP, SVC_AFFINITY, SVC_CLUSTER_IP, SVC_EXTERNAL, SVC_L7_REDIRECT,
    SVC_LOCAL_ONLY, SVC_NODE_PORT, ServiceKey, ip4,
};
use sluice_ir::{Endpoint, L4Protocol, Listener, ListenerProtocol, Snapshot, Transport};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

/// A backend set: the endpoints of one cluster, optionally only the node-local ones.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct SetId {
    pub cluster: String,
    pub local_only: bool,
}

/// One endpoint address as the datapath knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct BackendAddr {
    pub addr: Ipv4Addr,
    pub port: u16,
}

impl BackendAddr {
    /// The stable name Maglev hashes.
    pub fn name(&self) -> String {
        format!("{}:{}", self.addr, self.port)
    }
}

/// State of an endpoint (for `Backend::flags`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct BackendState {
    pub terminating: bool,
    pub local: bool,
}

/// One frontend entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FrontendPlan {
    pub key: ServiceKey,
    /// `namespace/name:port/PROTO`, for metrics and logs.
    pub service: String,
    pub service_id: u32,
    pub flags: u32,
    pub affinity_timeout_s: u32,
    pub redirect: Option<SocketAddrV4>,
    pub set: SetId,
}

/// Where sk_lookup delivers a destination: the proxy socket registered for `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RedirectPlan {
    pub key: ListenerKey,
    pub target: ProxyTarget,
}

/// Identifies a proxy socket: the address it serves and its transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProxyTarget {
    /// The listener address (or L7 redirect address) the socket serves.
    pub addr: SocketAddr,
    /// TCP or UDP.
    pub transport: Transport,
}

/// Everything the maps should hold for a snapshot.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub frontends: Vec<FrontendPlan>,
    /// Chosen backends per set (sorted, unique).
    pub sets: BTreeMap<SetId, Vec<BackendAddr>>,
    /// Every endpoint of every referenced cluster (chosen or not), with its state.
    pub backends: BTreeMap<BackendAddr, BackendState>,
    pub redirects: Vec<RedirectPlan>,
    /// What could not be projected (IPv6, missing clusters, duplicate frontends).
    pub warnings: Vec<String>,
}

fn proto_of(p: L4Protocol) -> (u8, &'static str) {
    match p {
        L4Protocol::Tcp => (PROTO_TCP, "TCP"),
        L4Protocol::Udp => (PROTO_UDP, "UDP"),
    }
}

fn key(addr: Ipv4Addr, port: u16, proto: u8) -> ServiceKey {
    ServiceKey {
        addr: ip4(addr.octets()),
        port: port.to_be(),
        proto,
        pad: 0,
    }
}

fn is_local(addr: Ipv4Addr, local_cidrs: &[Ipv4Net]) -> bool {
    local_cidrs.is_empty() || local_cidrs.iter().any(|n| n.contains(&addr))
}

/// Endpoints a new flow may go to: ready and serving ones; when there are none, serving
/// terminating ones (Kubernetes' terminating-endpoint fallback); never the others.
fn choose(endpoints: &[(BackendAddr, &Endpoint)]) -> Vec<BackendAddr> {
    let mut ready: Vec<BackendAddr> = endpoints
        .iter()
        .filter(|(_, e)| e.ready && e.serving && !e.terminating)
        .map(|(b, _)| *b)
        .collect();
    if ready.is_empty() {
        ready = endpoints
            .iter()
            .filter(|(_, e)| e.serving && e.terminating)
            .map(|(b, _)| *b)
            .collect();
    }
    ready.sort();
    ready.dedup();
    ready
}

/// Projects a snapshot. `local_cidrs` says which endpoints are on this node (empty: all).
pub(crate) fn project(snapshot: &Snapshot, local_cidrs: &[Ipv4Net]) -> Plan {
    let mut plan = Plan::default();
    let mut ids: HashMap<u32, String> = HashMap::new();
    let mut seen: HashMap<ServiceKey, String> = HashMap::new();
    let mut sets: BTreeSet<SetId> = BTreeSet::new();
    let mut redirects: BTreeMap<(u32, u16, u8), RedirectPlan> = BTreeMap::new();

    for svc in &snapshot.services {
        for port in &svc.ports {
            let (proto, proto_name) = proto_of(port.protocol);
            let port_label = if port.name.is_empty() {
                port.port.to_string()
            } else {
                port.name.clone()
            };
            let service = format!("{}:{}/{}", svc.name, port_label, proto_name);
            let service_id = allocate_id(&service, &mut ids);
            let mut base_flags = 0;
            let affinity = svc.session_affinity_timeout_s.unwrap_or(0);
            if affinity > 0 {
                base_flags |= SVC_AFFINITY;
            }
            let redirect = match port.l7_redirect {
                Some(SocketAddr::V4(a)) => {
                    base_flags |= SVC_L7_REDIRECT;
                    Some(a)
                }
                Some(SocketAddr::V6(a)) => {
                    plan.warnings.push(format!(
                        "service {service}: IPv6 L7 redirect {a} is not supported by the eBPF \
                         datapath; balancing to endpoints instead"
                    ));
                    None
                }
                None => None,
            };
            let mut add = |plan: &mut Plan, key: ServiceKey, flags: u32, local_only: bool| {
                let set = SetId {
                    cluster: port.cluster.clone(),
                    local_only,
                };
                if let Some(first) = seen.get(&key) {
                    plan.warnings.push(format!(
                        "service {service}: frontend {} already used by {first}; ignored",
                        describe(&key)
                    ));
                    return;
                }
                seen.insert(key, service.clone());
                sets.insert(set.clone());
                plan.frontends.push(FrontendPlan {
                    key,
                    service: service.clone(),
                    service_id,
                    flags: base_flags | flags | if local_only { SVC_LOCAL_ONLY } else { 0 },
                    affinity_timeout_s: affinity,
                    redirect,
                    set,
                });
            };
            let mut redirect_to = |key: ListenerKey| {
                if let Some(r) = redirect {
                    redirects
                        .entry((key.addr, key.port, key.proto))
                        .or_insert(RedirectPlan {
                            key,
                            target: ProxyTarget {
                                addr: SocketAddr::V4(r),
                                transport: match port.protocol {
                                    L4Protocol::Tcp => Transport::Tcp,
                                    L4Protocol::Udp => Transport::Udp,
                                },
                            },
                        });
                }
            };
            match svc.cluster_ip {
                Some(IpAddr::V4(ip)) => {
                    let k = key(ip, port.port, proto);
                    add(&mut plan, k, SVC_CLUSTER_IP, false);
                    redirect_to(listener_key(k));
                }
                Some(IpAddr::V6(ip)) => plan.warnings.push(format!(
                    "service {service}: IPv6 ClusterIP {ip} is not supported by the eBPF datapath"
                )),
                None => {}
            }
            for ip in &svc.external_ips {
                match ip {
                    IpAddr::V4(ip) => {
                        let k = key(*ip, port.port, proto);
                        add(&mut plan, k, SVC_EXTERNAL, svc.external_traffic_local);
                        redirect_to(listener_key(k));
                    }
                    IpAddr::V6(ip) => plan.warnings.push(format!(
                        "service {service}: IPv6 external IP {ip} is not supported by the eBPF \
                         datapath"
                    )),
                }
            }
            if let Some(np) = port.node_port {
                let k = key(Ipv4Addr::UNSPECIFIED, np, proto);
                add(&mut plan, k, SVC_NODE_PORT, svc.external_traffic_local);
                redirect_to(listener_key(k));
            }
        }
    }

    // TCPRoute/UDPRoute listeners the kernel can balance itself: one route with one backend
    // (nothing to weigh per connection). Their address and port become a frontend like an
    // external IP; the proxy keeps serving the listener for everything the programs do not see.
    let mut offloaded: BTreeSet<String> = BTreeSet::new();
    for l in &snapshot.listeners {
        let Some(cluster) = kernel_l4_cluster(snapshot, l) else {
            continue;
        };
        let IpAddr::V4(addr) = l.address else {
            continue;
        };
        let proto = match l.protocol.transport() {
            Transport::Tcp => PROTO_TCP,
            Transport::Udp => PROTO_UDP,
        };
        let k = key(addr, l.port, proto);
        let service = format!("listener {}", l.name);
        if let Some(first) = seen.get(&k) {
            plan.warnings.push(format!(
                "{service}: frontend {} already used by {first}; left to the proxy",
                describe(&k)
            ));
            continue;
        }
        seen.insert(k, service.clone());
        let set = SetId {
            cluster: cluster.to_string(),
            local_only: false,
        };
        sets.insert(set.clone());
        plan.frontends.push(FrontendPlan {
            key: k,
            service_id: allocate_id(&service, &mut ids),
            service,
            flags: SVC_EXTERNAL,
            affinity_timeout_s: 0,
            redirect: None,
            set,
        });
        offloaded.insert(l.name.clone());
    }

    for set in sets {
        let Some(cluster) = snapshot.cluster(&set.cluster) else {
            plan.warnings.push(format!(
                "cluster {} is referenced by a service but missing from the snapshot; its \
                 frontends have no backend",
                set.cluster
            ));
            plan.sets.insert(set, Vec::new());
            continue;
        };
        let mut eps = Vec::new();
        for e in &cluster.endpoints {
            let IpAddr::V4(addr) = e.address else {
                continue;
            };
            let b = BackendAddr { addr, port: e.port };
            let local = is_local(addr, local_cidrs);
            let st = plan.backends.entry(b).or_default();
            st.terminating |= e.terminating;
            st.local |= local;
            if !set.local_only || local {
                eps.push((b, e));
            }
        }
        plan.sets.insert(set, choose(&eps));
    }

    for l in snapshot
        .listeners
        .iter()
        .filter(|l| !offloaded.contains(&l.name))
    {
        let IpAddr::V4(addr) = l.address else {
            plan.warnings.push(format!(
                "listener {}: IPv6 addresses are not steered by the eBPF datapath",
                l.name
            ));
            continue;
        };
        let mut transports = vec![l.protocol.transport()];
        if l.http3 {
            transports.push(Transport::Udp);
        }
        for t in transports {
            let proto = match t {
                Transport::Tcp => PROTO_TCP,
                Transport::Udp => PROTO_UDP,
            };
            let k = ListenerKey {
                addr: ip4(addr.octets()),
                port: l.port.to_be(),
                proto,
                pad: 0,
            };
            redirects
                .entry((k.addr, k.port, proto))
                .or_insert(RedirectPlan {
                    key: k,
                    target: ProxyTarget {
                        addr: SocketAddr::new(l.address, l.port),
                        transport: t,
                    },
                });
        }
    }
    plan.redirects = redirects.into_values().collect();
    plan
}

/// The cluster a TCP or UDP listener sends everything to, when that is a single choice:
/// exactly one route whose only backend with a non-zero weight resolves to a cluster.
fn kernel_l4_cluster<'s>(snapshot: &'s Snapshot, l: &'s Listener) -> Option<&'s str> {
    if !matches!(l.protocol, ListenerProtocol::Tcp | ListenerProtocol::Udp) {
        return None;
    }
    let [route] = l.l4_routes.as_slice() else {
        return None;
    };
    let mut live = route.backends.iter().filter(|b| b.weight > 0);
    let (Some(only), None) = (live.next(), live.next()) else {
        return None;
    };
    let cluster = only.cluster.as_deref()?;
    snapshot.cluster(cluster).map(|c| c.name.as_str())
}

fn listener_key(k: ServiceKey) -> ListenerKey {
    ListenerKey {
        addr: k.addr,
        port: k.port,
        proto: k.proto,
        pad: 0,
    }
}

/// `addr:port/proto` of a frontend key, for messages.
pub(crate) fn describe(k: &ServiceKey) -> String {
    let a = Ipv4Addr::from(k.addr.to_ne_bytes());
    let proto = if k.proto == PROTO_TCP { "TCP" } else { "UDP" };
    if k.addr == 0 {
        format!("NodePort {}/{}", u16::from_be(k.port), proto)
    } else {
        format!("{}:{}/{}", a, u16::from_be(k.port), proto)
    }
}

/// A stable, non-zero id for a service port, probing past collisions.
fn allocate_id(service: &str, ids: &mut HashMap<u32, String>) -> u32 {
    let mut id = (hash64(service.as_bytes(), 0x5e41) as u32).max(1);
    loop {
        match ids.get(&id) {
            None => {
                ids.insert(id, service.to_string());
                return id;
            }
            Some(s) if s == service => return id,
            Some(_) => id = id.wrapping_add(1).max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_ir::{Cluster, Endpoint, L4Service, Listener, ListenerProtocol, ServicePort};

    fn ep(a: &str, port: u16) -> Endpoint {
        Endpoint::new(a.parse().unwrap(), port)
    }

    fn service(
        name: &str,
        ip: &str,
        port: u16,
        node_port: Option<u16>,
        cluster: &str,
    ) -> L4Service {
        L4Service {
            name: name.into(),
            cluster_ip: Some(ip.parse().unwrap()),
            external_ips: vec![],
            ports: vec![ServicePort {
                name: String::new(),
                protocol: L4Protocol::Tcp,
                port,
                node_port,
                cluster: cluster.into(),
                l7_redirect: None,
            }],
            session_affinity_timeout_s: None,
            external_traffic_local: false,
        }
    }

    fn snap(services: Vec<L4Service>, mut clusters: Vec<Cluster>) -> Snapshot {
        clusters.sort_by(|a, b| a.name.cmp(&b.name));
        Snapshot {
            services,
            clusters,
            ..Snapshot::default()
        }
    }

    #[test]
    fn cluster_ip_and_node_port_share_one_backend_set() {
        let s = snap(
            vec![service(
                "default/web",
                "10.96.0.10",
                80,
                Some(30080),
                "default/web:80",
            )],
            vec![Cluster::new(
                "default/web:80",
                vec![ep("10.0.1.2", 8080), ep("10.0.1.3", 8080)],
            )],
        );
        let p = project(&s, &[]);
        assert_eq!(p.frontends.len(), 2);
        assert_eq!(p.frontends[0].key.addr, ip4([10, 96, 0, 10]));
        assert_eq!(p.frontends[0].key.port, 80u16.to_be());
        assert_eq!(p.frontends[0].flags, SVC_CLUSTER_IP);
        assert_eq!(p.frontends[1].key.addr, 0);
        assert_eq!(p.frontends[1].flags, SVC_NODE_PORT);
        assert_eq!(p.frontends[0].set, p.frontends[1].set);
        assert_eq!(p.frontends[0].service_id, p.frontends[1].service_id);
        assert_eq!(p.sets.len(), 1);
        assert_eq!(p.sets.values().next().unwrap().len(), 2);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn terminating_endpoints_are_drained_unless_nothing_else_serves() {
        let mut term = ep("10.0.1.9", 8080);
        term.terminating = true;
        term.ready = false;
        let mut notready = ep("10.0.1.8", 8080);
        notready.ready = false;
        notready.serving = false;
        let s = snap(
            vec![service("default/web", "10.96.0.10", 80, None, "c")],
            vec![Cluster::new(
                "c",
                vec![ep("10.0.1.2", 8080), term.clone(), notready.clone()],
            )],
        );
        let p = project(&s, &[]);
        let set = p.sets.values().next().unwrap();
        assert_eq!(
            set,
            &vec![BackendAddr {
                addr: "10.0.1.2".parse().unwrap(),
                port: 8080
            }]
        );
        // The terminating endpoint stays known (established flows keep it) and is flagged.
        let st = p.backends[&BackendAddr {
            addr: "10.0.1.9".parse().unwrap(),
            port: 8080,
        }];
        assert!(st.terminating);

        let s = snap(
            vec![service("default/web", "10.96.0.10", 80, None, "c")],
            vec![Cluster::new("c", vec![term, notready])],
        );
        let p = project(&s, &[]);
        let set = p.sets.values().next().unwrap();
        assert_eq!(
            set,
            &vec![BackendAddr {
                addr: "10.0.1.9".parse().unwrap(),
                port: 8080
            }]
        );
    }

    #[test]
    fn external_traffic_local_uses_only_local_endpoints() {
        let mut svc = service("default/web", "10.96.0.10", 80, Some(30080), "c");
        svc.external_traffic_local = true;
        svc.external_ips = vec!["192.0.2.10".parse().unwrap()];
        let s = snap(
            vec![svc],
            vec![Cluster::new(
                "c",
                vec![ep("10.0.1.2", 8080), ep("10.0.2.2", 8080)],
            )],
        );
        let p = project(&s, &["10.0.1.0/24".parse().unwrap()]);
        assert_eq!(p.frontends.len(), 3);
        let np = p
            .frontends
            .iter()
            .find(|f| f.flags & SVC_NODE_PORT != 0)
            .unwrap();
        assert!(np.flags & SVC_LOCAL_ONLY != 0);
        assert_eq!(p.sets[&np.set].len(), 1);
        let cip = p
            .frontends
            .iter()
            .find(|f| f.flags & SVC_CLUSTER_IP != 0)
            .unwrap();
        assert_eq!(p.sets[&cip.set].len(), 2);
    }

    #[test]
    fn affinity_l7_and_listeners_project() {
        let mut svc = service("default/api", "10.96.0.20", 80, Some(30081), "c");
        svc.session_affinity_timeout_s = Some(10800);
        svc.ports[0].l7_redirect = Some("127.0.0.1:15001".parse().unwrap());
        let mut s = snap(vec![svc], vec![Cluster::new("c", vec![ep("10.0.1.2", 80)])]);
        let mut l = Listener::new("192.0.2.1".parse().unwrap(), 443, ListenerProtocol::Https);
        l.http3 = true;
        s.listeners = vec![l];
        let p = project(&s, &[]);
        assert!(p.frontends.iter().all(|f| f.flags & SVC_AFFINITY != 0
            && f.flags & SVC_L7_REDIRECT != 0
            && f.affinity_timeout_s == 10800
            && f.redirect == Some("127.0.0.1:15001".parse().unwrap())));
        // ClusterIP and NodePort of the L7 service, plus the listener over TCP and UDP.
        assert_eq!(p.redirects.len(), 4);
        assert!(p.redirects.iter().any(|r| r.key.port == 443u16.to_be()
            && r.key.proto == PROTO_UDP
            && r.target.transport == Transport::Udp));
    }

    #[test]
    fn single_backend_tcp_and_udp_listeners_are_balanced_in_the_kernel() {
        use sluice_ir::{L4Route, ObjectRef, RouteId, WeightedBackend};
        let route = |backends: &[(&str, u32)]| L4Route {
            id: RouteId {
                route: ObjectRef::new("TCPRoute", "default", "r"),
                rule: 0,
                matcher: 0,
                rule_name: None,
            },
            backends: backends
                .iter()
                .map(|(c, w)| WeightedBackend {
                    weight: *w,
                    cluster: Some(c.to_string()),
                    filters: vec![],
                })
                .collect(),
            idle_timeout_ms: None,
        };
        let listener = |port: u16, proto: ListenerProtocol, r: L4Route| {
            let mut l = Listener::new("192.0.2.1".parse().unwrap(), port, proto);
            l.l4_routes = vec![r];
            l
        };
        let mut s = snap(
            vec![],
            vec![
                Cluster::new("a", vec![ep("10.0.1.2", 7000)]),
                Cluster::new("b", vec![ep("10.0.1.3", 7000)]),
            ],
        );
        s.listeners = vec![
            // One backend (the zero-weight one never counts): the kernel balances it.
            listener(7000, ListenerProtocol::Tcp, route(&[("a", 1), ("b", 0)])),
            listener(7001, ListenerProtocol::Udp, route(&[("b", 3)])),
            // A weighted choice per connection stays in the proxy, steered there.
            listener(7002, ListenerProtocol::Tcp, route(&[("a", 1), ("b", 1)])),
        ];
        let p = project(&s, &[]);
        assert_eq!(p.frontends.len(), 2, "{:?}", p.frontends);
        let tcp = &p.frontends[0];
        assert_eq!(tcp.service, "listener tcp:192.0.2.1:7000");
        assert_eq!((tcp.key.port, tcp.key.proto), (7000u16.to_be(), PROTO_TCP));
        assert_eq!(tcp.flags, SVC_EXTERNAL);
        assert_eq!(tcp.set.cluster, "a");
        let udp = &p.frontends[1];
        assert_eq!((udp.key.port, udp.key.proto), (7001u16.to_be(), PROTO_UDP));
        assert_eq!(udp.set.cluster, "b");
        assert_eq!(p.redirects.len(), 1);
        assert_eq!(p.redirects[0].key.port, 7002u16.to_be());
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn bad_input_becomes_warnings() {
        let mut a = service("default/a", "10.96.0.10", 80, None, "missing");
        a.external_ips = vec!["2001:db8::1".parse().unwrap()];
        let b = service("default/b", "10.96.0.10", 80, None, "missing");
        let p = project(&snap(vec![a, b], vec![]), &[]);
        assert_eq!(p.frontends.len(), 1);
        assert_eq!(p.frontends[0].service, "default/a:80/TCP");
        let w = p.warnings.join("\n");
        assert!(w.contains("IPv6 external IP 2001:db8::1"), "{w}");
        assert!(w.contains("already used by default/a:80/TCP"), "{w}");
        assert!(w.contains("cluster missing is referenced"), "{w}");
        assert!(p.sets.values().all(|s| s.is_empty()));
    }
}

#[cfg(test)]
mod proto_tests {
    use super::*;

    #[test]
    fn tcp_and_udp_on_the_same_port_are_distinct_frontends() {
        let text = include_str!("../examples/snapshot.json");
        let s: Snapshot = serde_json::from_str(text).unwrap();
        let p = project(&s, &[]);
        let mut keys: Vec<String> = p.frontends.iter().map(|f| describe(&f.key)).collect();
        keys.sort();
        assert_eq!(
            keys,
            vec![
                "10.96.0.10:80/TCP",
                "10.96.0.10:80/UDP",
                "NodePort 30080/TCP",
                "NodePort 30080/UDP"
            ]
        );
        assert_eq!(p.sets.len(), 1);
    }
}
