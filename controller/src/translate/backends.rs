//! Backend references: Service lookup (kind, ReferenceGrant, port, appProtocol), and IR
//! clusters built from the Service's EndpointSlices.

use super::conditions::{Problem, reason};
use super::referencegrant::{self, From, To};
use super::{Ctx, GATEWAY_GROUP, Out};
use crate::Key;
use k8s_openapi::api::core::v1::{Service, ServicePort};
use sluice_ir::{Cluster, Endpoint, UpstreamProtocol};
use std::net::IpAddr;

/// A backend reference, whatever route kind or field it came from.
#[derive(Debug, Clone, Copy)]
pub struct BackendRef<'a> {
    /// `group` (default core).
    pub group: Option<&'a str>,
    /// `kind` (default `Service`).
    pub kind: Option<&'a str>,
    /// `name`.
    pub name: &'a str,
    /// `namespace` (default: the route's).
    pub namespace: Option<&'a str>,
    /// `port` (required for Services).
    pub port: Option<i32>,
}

/// What the route speaks to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// HTTP (HTTPRoute, Ingress).
    Http,
    /// gRPC: HTTP/2.
    Grpc,
    /// A TCP byte stream (TCPRoute, TLSRoute).
    Stream,
    /// UDP datagrams (UDPRoute).
    Datagram,
}

/// The referencing object, for ReferenceGrants and messages.
#[derive(Debug, Clone, Copy)]
pub struct Referrer<'a> {
    /// Kind, e.g. `HTTPRoute`.
    pub kind: &'a str,
    /// API group of that kind (empty for core kinds such as Ingress' `networking.k8s.io`).
    pub group: &'a str,
    /// Namespace.
    pub namespace: &'a str,
}

fn is_udp(p: &ServicePort) -> bool {
    p.protocol.as_deref() == Some("UDP")
}

/// The protocol a Service port naturally speaks: what the kernel datapath's cluster for it
/// says, and the cluster HTTP routes share when they need the same.
pub fn natural_protocol(p: &ServicePort) -> UpstreamProtocol {
    if is_udp(p) {
        UpstreamProtocol::Udp
    } else if matches!(p.app_protocol.as_deref(), Some("kubernetes.io/h2c" | "h2c")) {
        UpstreamProtocol::H2c
    } else {
        UpstreamProtocol::Http1
    }
}

/// The upstream protocol for a need and a Service port, or why the port cannot serve it.
fn protocol_for(need: Need, p: &ServicePort) -> Result<UpstreamProtocol, String> {
    let app = p.app_protocol.as_deref();
    let prefixed_unknown = |a: Option<&str>| {
        a.is_some_and(|a| {
            a.starts_with("kubernetes.io/")
                && !matches!(
                    a,
                    "kubernetes.io/h2c" | "kubernetes.io/ws" | "kubernetes.io/wss"
                )
        })
    };
    match need {
        Need::Http | Need::Grpc if is_udp(p) => Err("it is a UDP port".into()),
        Need::Http if prefixed_unknown(app) => Err(format!(
            "appProtocol {:?} is not an HTTP protocol Sluice speaks",
            app.unwrap_or_default()
        )),
        Need::Http => Ok(match app {
            Some("kubernetes.io/h2c" | "h2c") => UpstreamProtocol::H2c,
            _ => UpstreamProtocol::Http1,
        }),
        Need::Grpc => match app {
            None
            | Some(
                "kubernetes.io/h2c" | "h2c" | "grpc" | "http2" | "kubernetes.io/wss" | "https",
            ) => Ok(UpstreamProtocol::H2c),
            Some(a) => Err(format!(
                "appProtocol {a:?} cannot carry gRPC (HTTP/2 is needed)"
            )),
        },
        Need::Stream if is_udp(p) => Err("it is a UDP port".into()),
        Need::Stream => Ok(UpstreamProtocol::Tcp),
        Need::Datagram if !is_udp(p) => Err("it is not a UDP port".into()),
        Need::Datagram => Ok(UpstreamProtocol::Udp),
    }
}

/// The cluster name for a Service port reached with a protocol: `ns/svc:port`, with a
/// `/h2c`, `/http`, `/tcp` suffix when the protocol differs from the port's natural one, and
/// always `/udp` for UDP ports.
pub fn cluster_name(ns: &str, svc: &str, port: &ServicePort, protocol: UpstreamProtocol) -> String {
    let base = format!("{ns}/{svc}:{}", port.port);
    // A UDP port may share its number with a TCP port of the same Service.
    if protocol == natural_protocol(port) && !is_udp(port) {
        return base;
    }
    let suffix = match protocol {
        UpstreamProtocol::Http1 => "http",
        UpstreamProtocol::H2c => "h2c",
        UpstreamProtocol::H2 => "h2",
        UpstreamProtocol::Tcp => "tcp",
        UpstreamProtocol::Udp => "udp",
    };
    format!("{base}/{suffix}")
}

/// Resolves a backend reference to a cluster (created on first use).
pub(crate) fn resolve(
    ctx: &Ctx<'_>,
    out: &mut Out,
    from: Referrer<'_>,
    r: &BackendRef<'_>,
    need: Need,
    field: &str,
) -> Result<String, Problem> {
    let group = r.group.unwrap_or_default();
    let kind = r.kind.unwrap_or("Service");
    let ns = r
        .namespace
        .filter(|n| !n.is_empty())
        .unwrap_or(from.namespace);
    if !group.is_empty() || kind != "Service" {
        return Err(Problem::new(
            reason::INVALID_KIND,
            format!(
                "{field}: {}/{kind} {:?} is not a supported backend kind (only core Services)",
                if group.is_empty() { "core" } else { group },
                r.name
            ),
        ));
    }
    let allowed = referencegrant::allowed(
        ctx.res,
        From {
            group: from.group,
            kind: from.kind,
            namespace: from.namespace,
        },
        To {
            group: "",
            kind: "Service",
            namespace: ns,
            name: r.name,
        },
    );
    if !allowed {
        return Err(Problem::new(
            reason::REF_NOT_PERMITTED,
            format!(
                "{field}: Service {ns}/{} is in another namespace and no ReferenceGrant in {ns} allows {}s from {} to use it",
                r.name, from.kind, from.namespace
            ),
        ));
    }
    let Some(svc) = ctx.res.services.get(&Key::new(ns, r.name)) else {
        return Err(Problem::new(
            reason::BACKEND_NOT_FOUND,
            format!("{field}: Service {ns}/{} does not exist", r.name),
        ));
    };
    let spec = svc.spec.as_ref();
    if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
        return Err(Problem::new(
            reason::BACKEND_NOT_FOUND,
            format!(
                "{field}: Service {ns}/{} is of type ExternalName, which Sluice does not route to",
                r.name
            ),
        ));
    }
    let Some(port_num) = r.port else {
        return Err(Problem::new(
            reason::BACKEND_NOT_FOUND,
            format!("{field}: port is required for Service {ns}/{}", r.name),
        ));
    };
    let Some(port) = spec
        .and_then(|s| s.ports.as_ref())
        .and_then(|ps| ps.iter().find(|p| p.port == port_num))
    else {
        return Err(Problem::new(
            reason::BACKEND_NOT_FOUND,
            format!("{field}: Service {ns}/{} has no port {port_num}", r.name),
        ));
    };
    let protocol = protocol_for(need, port).map_err(|why| {
        Problem::new(
            reason::UNSUPPORTED_PROTOCOL,
            format!("{field}: Service {ns}/{} port {port_num}: {why}", r.name),
        )
    })?;
    Ok(ensure_cluster(ctx, out, svc, ns, r.name, port, protocol))
}

/// The cluster for a Service port and protocol, created with its endpoints on first use.
pub(crate) fn ensure_cluster(
    ctx: &Ctx<'_>,
    out: &mut Out,
    _svc: &Service,
    ns: &str,
    name: &str,
    port: &ServicePort,
    protocol: UpstreamProtocol,
) -> String {
    let cname = cluster_name(ns, name, port, protocol);
    if !out.clusters.contains_key(&cname) {
        let mut cl = Cluster::new(cname.clone(), endpoints(ctx, ns, name, port));
        cl.protocol = protocol;
        out.clusters.insert(cname.clone(), cl);
    }
    cname
}

/// The endpoints of a Service port: every EndpointSlice labelled with the Service's name, the
/// slice port with the same name (and protocol) as the Service port, every IP address with its
/// conditions. Sorted by (address, port), duplicates dropped.
pub(crate) fn endpoints(ctx: &Ctx<'_>, ns: &str, svc: &str, port: &ServicePort) -> Vec<Endpoint> {
    let want_name = port.name.as_deref().unwrap_or_default();
    let want_proto = port.protocol.as_deref().unwrap_or("TCP");
    let mut eps: Vec<Endpoint> = Vec::new();
    for slice in ctx.endpoint_slices(ns, svc) {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let Some(target) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or_default() == want_name
                && p.protocol.as_deref().unwrap_or("TCP") == want_proto
        }) else {
            continue;
        };
        let Some(tport) = target.port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for ep in &slice.endpoints {
            let cond = ep.conditions.as_ref();
            let ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
            let target = ep.target_ref.as_ref().map(|t| {
                format!(
                    "{}/{}/{}",
                    t.kind.as_deref().unwrap_or("Pod"),
                    t.namespace.as_deref().unwrap_or(ns),
                    t.name.as_deref().unwrap_or_default()
                )
            });
            for a in &ep.addresses {
                let Ok(ip) = a.parse::<IpAddr>() else {
                    continue;
                };
                eps.push(Endpoint {
                    address: ip,
                    port: tport,
                    ready,
                    serving,
                    terminating,
                    target: target.clone(),
                });
            }
        }
    }
    eps.sort_by_key(|e| (e.address, e.port));
    eps.dedup_by(|a, b| a.address == b.address && a.port == b.port);
    eps
}

/// The group of a Gateway API route kind, for [`Referrer`].
pub const ROUTE_GROUP: &str = GATEWAY_GROUP;
