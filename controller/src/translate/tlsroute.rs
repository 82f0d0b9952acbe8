//! TLSRoute: SNI hostnames to backends on TLS listeners (passthrough, or terminate and
//! forward the plain stream).

use super::attach::{self, RouteInfo, RouteVerdict};
use super::backends::{self, BackendRef, Need, ROUTE_GROUP, Referrer};
use super::gateway::{Gateways, RouteKind};
use super::httproute::valid_hostnames;
use super::{Age, Ctx, Out, generation, object_ref};
use sluice_ir::{ListenerSource, RouteId, TlsRoute, WeightedBackend};

/// Translates every TLSRoute.
pub(crate) fn process(ctx: &Ctx<'_>, gws: &mut Gateways, out: &mut Out) {
    for route in ctx.res.tls_routes.values() {
        let object = object_ref("TLSRoute", &route.metadata);
        let generation = generation(&route.metadata);
        let (hostnames, host_problem) = valid_hostnames(&route.spec.hostnames);
        let refs = attach::with_default_gateways(
            gws,
            attach::parent_refs!(route.spec.parent_refs),
            matches!(
                route.spec.use_default_gateways,
                Some(sluice_gateway_crds::tlsroutes::TlsRouteUseDefaultGateways::All)
            ),
        );
        let info = RouteInfo {
            kind: RouteKind::Tls,
            object: object.clone(),
            generation,
            hostnames: &hostnames,
        };
        let attachments = attach::attach(ctx, gws, &info, &refs);
        if attachments.is_empty() {
            continue;
        }
        let mut verdict = RouteVerdict {
            rules: route.spec.rules.len(),
            ..Default::default()
        };
        let from = Referrer {
            kind: "TLSRoute",
            group: ROUTE_GROUP,
            namespace: &object.namespace,
        };
        let mut rules = Vec::new();
        for (ri, rule) in route.spec.rules.iter().enumerate() {
            let mut bs = Vec::new();
            for (bi, b) in rule.backend_refs.iter().enumerate() {
                let r = BackendRef {
                    group: b.group.as_deref(),
                    kind: b.kind.as_deref(),
                    name: &b.name,
                    namespace: b.namespace.as_deref(),
                    port: b.port,
                };
                let field = format!("spec.rules[{ri}].backendRefs[{bi}]");
                let cluster = match backends::resolve(ctx, out, from, &r, Need::Stream, &field) {
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
            rules.push((ri as u32, rule.name.clone(), bs));
        }
        verdict.route_problem = host_problem;
        let accepted = attach::finish_route(
            out,
            gws,
            &info,
            attachments,
            &verdict,
            &ctx.opts.controller_name,
        );
        let age = Age::of(&route.metadata);
        for att in &accepted {
            let gateway = gws.list[att.gateway].object.clone();
            for (_, _, bs) in &rules {
                for c in bs.iter().filter_map(|b| b.cluster.as_deref()) {
                    out.use_cluster(c, &gateway);
                }
            }
            for (l, hosts) in &att.listeners {
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
                    let Ok(key) =
                        out.ir
                            .listener(addr, ls.port, protocol, source, ls.hostname.as_deref())
                    else {
                        continue;
                    };
                    for (ri, name, bs) in &rules {
                        out.ir.tls(
                            &key,
                            (age.clone(), "TLSRoute".into(), *ri),
                            TlsRoute {
                                id: RouteId {
                                    route: object.clone(),
                                    rule: *ri,
                                    matcher: 0,
                                    rule_name: name.clone(),
                                },
                                hostnames: hosts.clone(),
                                mode: ls.tls_mode,
                                backends: bs.clone(),
                            },
                        );
                    }
                }
            }
        }
    }
}
