//! Sluice's internal configuration model (IR): the one language between config producers
//! (the Gateway API / Ingress translator, the controller's snapshot stream) and consumers (the
//! L7 proxy, the eBPF loader). Plain data with serde and [`Snapshot::validate`]; no Kubernetes,
//! no async runtime.
//!
//! Conventions: durations are milliseconds in fields ending in `_ms`; header names are stored
//! lower-case; every list that has an order documents it, and producers must emit it so that two
//! translations of the same input serialize to the same bytes.
#![forbid(unsafe_code)]

mod http;
mod l4;
pub mod status;
mod tls;
mod validate;

pub use http::*;
pub use l4::*;
pub use tls::*;
pub use validate::{FieldPath, ValidationError};

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

/// A complete, self-contained configuration. Consumers swap whole snapshots, never patch them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Assigned by the publisher; strictly increases with every published change. 0 = unpublished.
    #[serde(default)]
    pub version: u64,
    /// One entry per distinct (transport, address, port), sorted by [`Listener::name`].
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Upstream clusters referenced by routes and services, sorted by [`Cluster::name`], unique.
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    /// Kubernetes Services for the kernel datapath (ClusterIP, NodePort, external IPs), sorted by name.
    #[serde(default)]
    pub services: Vec<L4Service>,
}

impl Snapshot {
    /// The cluster with this name, if any (binary search: `clusters` is sorted).
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters
            .binary_search_by(|c| c.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.clusters[i])
    }

    /// The listener with this name, if any.
    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.name == name)
    }
}

/// A Kubernetes object reference used in ids, sources and status. `namespace` is empty for
/// cluster-scoped kinds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// Kind, e.g. `Gateway`, `HTTPRoute`, `Ingress`, `Service`.
    pub kind: String,
    /// Namespace; empty for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectRef {
    /// A namespaced object reference.
    pub fn new(kind: &str, namespace: &str, name: &str) -> Self {
        ObjectRef {
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// Transport a listener binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Transport {
    /// A TCP listening socket.
    Tcp,
    /// A UDP socket (UDPRoute, and QUIC when `http3` is set on a TCP listener's twin).
    Udp,
}

/// What a listener speaks once a connection is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ListenerProtocol {
    /// Cleartext HTTP/1.1 and HTTP/2 prior knowledge on the same port.
    Http,
    /// TLS: the ClientHello's SNI first selects a passthrough [`TlsRoute`]; otherwise the
    /// connection is terminated with [`Listener::tls`] and served as HTTP (ALPN `h2`, `http/1.1`).
    Https,
    /// TLS routed by SNI through [`Listener::tls_routes`] only (passthrough, or terminate and
    /// forward the plain stream).
    Tls,
    /// Raw TCP forwarded to [`Listener::l4_routes`].
    Tcp,
    /// UDP datagrams forwarded per flow to [`Listener::l4_routes`].
    Udp,
}

impl ListenerProtocol {
    /// The socket type this protocol needs.
    pub fn transport(self) -> Transport {
        match self {
            ListenerProtocol::Udp => Transport::Udp,
            _ => Transport::Tcp,
        }
    }
}

/// One bound socket and everything served on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// Unique key, `"<transport>:<address>:<port>"` with the address in its canonical text form
    /// (IPv6 in brackets), e.g. `tcp:127.0.0.1:80`. Use [`Listener::key`] to build it.
    pub name: String,
    /// Address to bind.
    pub address: IpAddr,
    /// Port to bind.
    pub port: u16,
    /// Protocol served.
    pub protocol: ListenerProtocol,
    /// TLS termination settings (HTTPS, and TLS listeners in Terminate mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsTermination>,
    /// HTTP virtual hosts (HTTP and HTTPS), most specific hostname first: exact names, then
    /// wildcards by decreasing suffix length, then `*`. Hostnames are unique per listener.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_hosts: Vec<VirtualHost>,
    /// SNI-routed TLS streams (TLS listeners; passthrough entries also on HTTPS listeners).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_routes: Vec<TlsRoute>,
    /// TCP/UDP routes in precedence order; the first one serves new connections/flows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub l4_routes: Vec<L4Route>,
    /// Also serve HTTP/3 (QUIC) on the same port over UDP and advertise it with `Alt-Svc`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub http3: bool,
    /// The Gateway listeners merged into this socket (for status and logs), sorted.
    #[serde(default)]
    pub sources: Vec<ListenerSource>,
}

impl Listener {
    /// The canonical listener key for a transport, address and port.
    pub fn key(transport: Transport, address: IpAddr, port: u16) -> String {
        let t = match transport {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        };
        match address {
            IpAddr::V4(a) => format!("{t}:{a}:{port}"),
            IpAddr::V6(a) => format!("{t}:[{a}]:{port}"),
        }
    }

    /// An empty listener of the given protocol; its name is derived with [`Listener::key`].
    pub fn new(address: IpAddr, port: u16, protocol: ListenerProtocol) -> Self {
        Listener {
            name: Listener::key(protocol.transport(), address, port),
            address,
            port,
            protocol,
            tls: None,
            virtual_hosts: Vec::new(),
            tls_routes: Vec::new(),
            l4_routes: Vec::new(),
            http3: false,
            sources: Vec::new(),
        }
    }
}

/// A Gateway (or ListenerSet) listener that contributes to an IR [`Listener`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerSource {
    /// The Gateway or ListenerSet.
    pub parent: ObjectRef,
    /// `spec.listeners[].name`.
    pub listener: String,
}

/// Identifies the rule and match a route entry came from, for logs, metrics and status.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteId {
    /// The route object (HTTPRoute, GRPCRoute, TLSRoute, TCPRoute, UDPRoute, Ingress).
    pub route: ObjectRef,
    /// Index of the rule in `spec.rules` (for Ingress: rule index, then path index in `path`).
    pub rule: u32,
    /// Index of the match within the rule (Ingress: path index).
    #[serde(default)]
    pub matcher: u32,
    /// `spec.rules[].name` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_name: Option<String>,
}

impl fmt::Display for RouteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/rule/{}/match/{}",
            self.route, self.rule, self.matcher
        )
    }
}

/// A route target: a cluster with a weight, or an unresolvable reference (its share of
/// requests gets HTTP 500 / connection refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedBackend {
    /// Relative weight (0 = never chosen). Gateway API default is 1.
    pub weight: u32,
    /// Name of a [`Cluster`] in the snapshot; `None` when the backendRef is invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Filters that apply only when this backend is chosen (backendRef-level filters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HttpFilter>,
}

/// An upstream service: a set of endpoints and how to talk to them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    /// Unique name, `"<namespace>/<service>:<port>"` for Services (plus a suffix when one Service
    /// port is reached with different protocol or TLS settings).
    pub name: String,
    /// Protocol spoken to the endpoints.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Endpoints, sorted by (address, port). May be empty: requests then get 503.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Endpoint choice.
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    /// TLS to the endpoints (BackendTLSPolicy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// TCP connect timeout in milliseconds (default 5000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
}

impl Cluster {
    /// A cluster with defaults and the given endpoints.
    pub fn new(name: impl Into<String>, endpoints: Vec<Endpoint>) -> Self {
        Cluster {
            name: name.into(),
            protocol: UpstreamProtocol::default(),
            endpoints,
            load_balancer: LoadBalancer::default(),
            tls: None,
            connect_timeout_ms: None,
        }
    }
}

/// Application protocol to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (upgrades such as WebSocket pass through). Default.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (`appProtocol: kubernetes.io/h2c`), also gRPC.
    H2c,
    /// HTTP/2 over TLS (`tls` set), also gRPC.
    H2,
    /// An opaque byte stream (TCPRoute, TLSRoute).
    Tcp,
    /// Datagrams (UDPRoute).
    Udp,
}

/// Endpoint selection policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LoadBalancer {
    /// Power of two random choices, fewer in-flight requests wins. Default.
    #[default]
    P2cLeastRequest,
    /// Round robin over ready endpoints.
    RoundRobin,
    /// Uniform random.
    Random,
}

/// One backend address (an EndpointSlice endpoint address with its resolved port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// IP address.
    pub address: IpAddr,
    /// Target port.
    pub port: u16,
    /// `conditions.ready` (default true).
    #[serde(default = "yes")]
    pub ready: bool,
    /// `conditions.serving` (default: equals ready).
    #[serde(default = "yes")]
    pub serving: bool,
    /// `conditions.terminating`: drained, used only when no other endpoint serves.
    #[serde(default)]
    pub terminating: bool,
    /// The pod or object behind it (`targetRef`), for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

fn yes() -> bool {
    true
}

impl Endpoint {
    /// A ready, serving endpoint.
    pub fn new(address: IpAddr, port: u16) -> Self {
        Endpoint {
            address,
            port,
            ready: true,
            serving: true,
            terminating: false,
            target: None,
        }
    }
}
