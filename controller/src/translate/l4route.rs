//! TCPRoute and UDPRoute: listeners' connections or datagram flows to weighted backends.

use super::attach::{self, ParentRefSpec, RouteInfo, RouteVerdict};
use super::backends::{self, BackendRef, Need, ROUTE_GROUP, Referrer};
use super::gateway::{Gateways, RouteKind};
use super::{Age, Ctx, Out, convert, generation, object_ref};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sluice_ir::{L4Route, ListenerSource, RouteId, WeightedBackend};

/// A TCPRoute or UDPRoute in a kind-independent form.
struct L4Input<'a> {
    kind: RouteKind,
    meta: &'a ObjectMeta,
    parent_refs: Vec<ParentRefSpec>,
    /// `useDefaultGateways: All`.
    use_default: bool,
    /// Per rule: name and backend refs (group, kind, name, namespace, port, weight).
    rules: Vec<(Option<String>, Vec<RefIn>)>,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct RefIn {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    port: Option<i32>,
    #[serde(default)]
    weight: Option<i32>,
}

/// Translates every TCPRoute and UDPRoute.
pub(crate) fn process(ctx: &Ctx<'_>, gws: &mut Gateways, out: &mut Out) {
    let mut inputs = Vec::new();
    for r in ctx.res.tcp_routes.values() {
        inputs.push(L4Input {
            kind: RouteKind::Tcp,
            meta: &r.metadata,
            parent_refs: attach::parent_refs!(r.spec.parent_refs),
            use_default: matches!(
                r.spec.use_default_gateways,
                Some(sluice_gateway_crds::tcproutes::TcpRouteUseDefaultGateways::All)
            ),
            rules: r
                .spec
                .rules
                .iter()
                .map(|x| {
                    (
                        x.name.clone(),
                        x.backend_refs.iter().filter_map(convert).collect(),
                    )
                })
                .collect(),
        });
    }
    for r in ctx.res.udp_routes.values() {
        inputs.push(L4Input {
            kind: RouteKind::Udp,
            meta: &r.metadata,
            parent_refs: attach::parent_refs!(r.spec.parent_refs),
            use_default: matches!(
                r.spec.use_default_gateways,
                Some(sluice_gateway_crds::udproutes::UdpRouteUseDefaultGateways::All)
            ),
            rules: r
                .spec
                .rules
                .iter()
                .map(|x| {
                    (
                        x.name.clone(),
                        x.backend_refs.iter().filter_map(convert).collect(),
                    )
                })
                .collect(),
        });
    }
    for input in inputs {
        route(ctx, gws, out, input);
    }
}

fn route(ctx: &Ctx<'_>, gws: &mut Gateways, out: &mut Out, input: L4Input<'_>) {
    let kind_name = input.kind.name();
    let object = object_ref(kind_name, input.meta);
    let info = RouteInfo {
        kind: input.kind,
        object: object.clone(),
        generation: generation(input.meta),
        hostnames: &[],
    };
    let refs = attach::with_default_gateways(gws, input.parent_refs.clone(), input.use_default);
    let attachments = attach::attach(ctx, gws, &info, &refs);
    if attachments.is_empty() {
        return;
    }
    let need = if input.kind == RouteKind::Udp {
        Need::Datagram
    } else {
        Need::Stream
    };
    let from = Referrer {
        kind: kind_name,
        group: ROUTE_GROUP,
        namespace: &object.namespace,
    };
    let mut verdict = RouteVerdict {
        rules: input.rules.len(),
        ..Default::default()
    };
    let mut rules = Vec::new();
    for (ri, (name, refs)) in input.rules.iter().enumerate() {
        let mut bs = Vec::new();
        for (bi, b) in refs.iter().enumerate() {
            let r = BackendRef {
                group: b.group.as_deref(),
                kind: b.kind.as_deref(),
                name: &b.name,
                namespace: b.namespace.as_deref(),
                port: b.port,
            };
            let field = format!("spec.rules[{ri}].backendRefs[{bi}]");
            let cluster = match backends::resolve(ctx, out, from, &r, need, &field) {
                Ok(c) => Some(c),
                Err(p) => {
                    verdict.unresolved.push(p);
                    None
                }
            };
            bs.push(WeightedBackend {
                weight: b.weight.map(|w| w.max(0) as u32).unwrap_or(1),
                cluster,
                filters: Vec::new(),
            });
        }
        rules.push(L4Route {
            id: RouteId {
                route: object.clone(),
                rule: ri as u32,
                matcher: 0,
                rule_name: name.clone(),
            },
            backends: bs,
            idle_timeout_ms: None,
        });
    }
    let accepted = attach::finish_route(
        out,
        gws,
        &info,
        attachments,
        &verdict,
        &ctx.opts.controller_name,
    );
    let age = Age::of(input.meta);
    for att in &accepted {
        let gateway = gws.list[att.gateway].object.clone();
        for r in &rules {
            for c in r.backends.iter().filter_map(|b| b.cluster.as_deref()) {
                out.use_cluster(c, &gateway);
            }
        }
        for (l, _) in &att.listeners {
            if !gws.programmed(*l) {
                continue;
            }
            let ls = &gws.listeners[*l];
            let Some(protocol) = ls.protocol else {
                continue;
            };
            for &addr in &gws.list[ls.gateway].addresses {
                let source = ListenerSource {
                    parent: ls.parent.clone(),
                    listener: ls.name.clone(),
                };
                let Ok(key) = out.ir.listener(addr, ls.port, protocol, source, None) else {
                    continue;
                };
                for r in &rules {
                    out.ir.l4(
                        &key,
                        (age.clone(), kind_name.to_string(), r.id.rule),
                        r.clone(),
                    );
                }
            }
        }
    }
}
