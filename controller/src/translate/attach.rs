//! Route attachment: resolving `parentRefs` (Gateway or ListenerSet, `sectionName`, `port`)
//! to listeners, checking `allowedRoutes` (kinds and namespaces) and hostname intersection,
//! and writing each route's `status.parents`.

use super::conditions::{self as c, Problem, reason};
use super::gateway::{AllowedNamespaces, Gateways, RouteKind};
use super::{Age, Ctx, GATEWAY_GROUP, Out, generation, hostname, object_ref};
use sluice_ir::ObjectRef;
use sluice_ir::status::{ParentRef, RouteParentStatus};
use std::collections::{BTreeMap, BTreeSet};

/// A `parentRefs[]` entry, whatever route kind it came from.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRefSpec {
    /// `group`.
    #[serde(default)]
    pub group: Option<String>,
    /// `kind`.
    #[serde(default)]
    pub kind: Option<String>,
    /// `namespace`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// `name`.
    pub name: String,
    /// `sectionName`.
    #[serde(default)]
    pub section_name: Option<String>,
    /// `port`.
    #[serde(default)]
    pub port: Option<i32>,
}

/// The `ParentRefSpec`s of a route's `spec.parentRefs` (every route kind's generated type has
/// the same fields).
macro_rules! parent_refs {
    ($refs:expr) => {
        $refs
            .iter()
            .flatten()
            .map(|p| $crate::translate::attach::ParentRefSpec {
                group: p.group.clone(),
                kind: p.kind.clone(),
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                section_name: p.section_name.clone(),
                port: p.port,
            })
            .collect::<Vec<_>>()
    };
}
pub(crate) use parent_refs;

/// Adds a parentRef for every default Gateway (`spec.defaultScope: All`) when the route asks
/// for them (`useDefaultGateways: All`); explicit references to the same Gateway are merged.
pub(crate) fn with_default_gateways(
    gws: &Gateways,
    mut refs: Vec<ParentRefSpec>,
    use_default: bool,
) -> Vec<ParentRefSpec> {
    if use_default {
        for g in gws.list.iter().filter(|g| g.default_scope_all) {
            refs.push(ParentRefSpec {
                namespace: Some(g.object.namespace.clone()),
                name: g.object.name.clone(),
                ..Default::default()
            });
        }
    }
    refs
}

/// The route being attached.
#[derive(Debug, Clone)]
pub struct RouteInfo<'a> {
    /// Its kind.
    pub kind: RouteKind,
    /// The object.
    pub object: ObjectRef,
    /// `metadata.generation`.
    pub generation: i64,
    /// Valid `spec.hostnames` (HTTPRoute, GRPCRoute, TLSRoute).
    pub hostnames: &'a [String],
}

/// The outcome for one parentRef of a Gateway of ours.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// The parentRef with defaults filled in, for status.
    pub parent_ref: ParentRef,
    /// The Gateway it resolves to.
    pub gateway: usize,
    /// Listeners that accept the route, with the hostnames it serves on each.
    pub listeners: Vec<(usize, Vec<String>)>,
    /// Why the route is not accepted by this parent.
    pub problem: Option<Problem>,
}

/// Resolves a route's parentRefs. ParentRefs to objects that are not ours (other classes,
/// unknown kinds, missing Gateways) are skipped: they get no status from Sluice.
pub(crate) fn attach(
    ctx: &Ctx<'_>,
    gws: &Gateways,
    route: &RouteInfo<'_>,
    refs: &[ParentRefSpec],
) -> Vec<Attachment> {
    let route_ns = route.object.namespace.as_str();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for r in refs {
        let group = r.group.as_deref().unwrap_or(GATEWAY_GROUP);
        let kind = r.kind.as_deref().unwrap_or("Gateway");
        let ns = r
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(route_ns);
        if group != GATEWAY_GROUP {
            continue;
        }
        let (gateway, candidates): (usize, Vec<usize>) = match kind {
            "Gateway" => {
                let Some(g) = gws.gateway(ns, &r.name) else {
                    continue;
                };
                (g, gws.list[g].listeners.clone())
            }
            "ListenerSet" => {
                let Some(s) = gws.set(ns, &r.name) else {
                    continue;
                };
                let set = &gws.sets[s];
                (set.gateway, set.listeners.clone())
            }
            _ => continue,
        };
        // For messages only.
        let what = || format!("{kind} {ns}/{}", r.name);
        let parent_ref = ParentRef {
            group: Some(group.to_string()),
            kind: Some(kind.to_string()),
            namespace: Some(ns.to_string()),
            name: r.name.clone(),
            section_name: r.section_name.clone().filter(|s| !s.is_empty()),
            port: r.port.and_then(|p| u16::try_from(p).ok()),
        };
        if !seen.insert(parent_ref.clone()) {
            continue;
        }
        let mut att = Attachment {
            parent_ref,
            gateway,
            listeners: Vec::new(),
            problem: None,
        };
        if kind == "ListenerSet"
            && let Some(p) = gws
                .set(ns, &r.name)
                .and_then(|s| gws.sets[s].not_allowed.as_ref())
        {
            att.problem = Some(Problem::new(
                reason::NO_MATCHING_PARENT,
                format!("{} is not attached to its Gateway: {}", what(), p.message),
            ));
            out.push(att);
            continue;
        }
        let section = r.section_name.as_deref().filter(|s| !s.is_empty());
        let selected: Vec<usize> = candidates
            .into_iter()
            .filter(|&l| {
                let ls = &gws.listeners[l];
                section.is_none_or(|s| ls.name == s)
                    && r.port.is_none_or(|p| i32::from(ls.port) == p)
            })
            .collect();
        if selected.is_empty() {
            let what = what();
            let m = match (section, r.port) {
                (Some(s), Some(p)) => format!("{what} has no listener named {s:?} on port {p}"),
                (Some(s), None) => format!("{what} has no listener named {s:?}"),
                (None, Some(p)) => format!("{what} has no listener on port {p}"),
                (None, None) => format!("{what} has no listeners"),
            };
            att.problem = Some(Problem::new(reason::NO_MATCHING_PARENT, m));
            out.push(att);
            continue;
        }
        let mut allowed_any = false;
        let mut conflicted_any = false;
        let mut why_not = Vec::new();
        let conflicts = gws.route_conflicts.get(&route.object);
        for l in selected {
            let ls = &gws.listeners[l];
            if !ls.kinds.contains(&route.kind) {
                why_not.push(format!(
                    "listener {:?} does not allow {}s",
                    ls.name,
                    route.kind.name()
                ));
                continue;
            }
            let ns_ok = match &ls.allowed_namespaces {
                AllowedNamespaces::All => true,
                AllowedNamespaces::Same => ls.namespace() == route_ns,
                AllowedNamespaces::Selector(sel) => sel.matches(&ctx.namespace_labels(route_ns)),
            };
            if !ns_ok {
                why_not.push(format!(
                    "listener {:?} does not allow routes from namespace {route_ns}",
                    ls.name
                ));
                continue;
            }
            allowed_any = true;
            let uses_hostnames = ls.protocol.is_some_and(|p| p.uses_hostname())
                && matches!(
                    route.kind,
                    RouteKind::Http | RouteKind::Grpc | RouteKind::Tls
                );
            let hosts = if uses_hostnames {
                hostname::effective(ls.hostname.as_deref(), route.hostnames)
            } else {
                vec!["*".to_string()]
            };
            if hosts.is_empty() {
                why_not.push(format!(
                    "no route hostname matches hostname {} of listener {:?}",
                    ls.hostname.as_deref().unwrap_or("*"),
                    ls.name
                ));
                continue;
            }
            if let Some(m) = conflicts.and_then(|c| c.get(&l)) {
                conflicted_any = true;
                why_not.push(m.clone());
                continue;
            }
            att.listeners.push((l, hosts));
        }
        if att.listeners.is_empty() {
            att.problem = Some(if conflicted_any {
                Problem::new(reason::NOT_ALLOWED_BY_LISTENERS, why_not.join("; "))
            } else if allowed_any {
                Problem::new(reason::NO_MATCHING_LISTENER_HOSTNAME, why_not.join("; "))
            } else {
                Problem::new(reason::NOT_ALLOWED_BY_LISTENERS, why_not.join("; "))
            });
        }
        out.push(att);
    }
    out
}

/// HTTPRoutes and GRPCRoutes with intersecting hostnames on one listener: the spec accepts
/// exactly one of each such pair, the oldest route (then namespace/name). Records, for every
/// younger route, the listeners it is not accepted on, in [`Gateways::route_conflicts`].
pub(crate) fn http_grpc_conflicts(ctx: &Ctx<'_>, gws: &mut Gateways) {
    if ctx.res.grpc_routes.is_empty() || ctx.res.http_routes.is_empty() {
        return;
    }
    // (age, kind, object, listener, hostnames) of every attachment.
    let mut entries = Vec::new();
    let mut collect = |kind: RouteKind,
                       object: ObjectRef,
                       generation: i64,
                       meta_age: Age,
                       hostnames: &[String],
                       refs: &[ParentRefSpec]| {
        let (valid, _) = super::httproute::valid_hostnames(hostnames);
        let info = RouteInfo {
            kind,
            object: object.clone(),
            generation,
            hostnames: &valid,
        };
        for att in attach(ctx, gws, &info, refs) {
            for (l, hosts) in att.listeners {
                entries.push((meta_age.clone(), kind, object.clone(), l, hosts));
            }
        }
    };
    for r in ctx.res.http_routes.values() {
        let refs = with_default_gateways(
            gws,
            parent_refs!(r.spec.parent_refs),
            matches!(
                r.spec.use_default_gateways,
                Some(sluice_gateway_crds::httproutes::HttpRouteUseDefaultGateways::All)
            ),
        );
        collect(
            RouteKind::Http,
            object_ref("HTTPRoute", &r.metadata),
            generation(&r.metadata),
            Age::of(&r.metadata),
            r.spec.hostnames.as_deref().unwrap_or_default(),
            &refs,
        );
    }
    for r in ctx.res.grpc_routes.values() {
        let refs = with_default_gateways(
            gws,
            parent_refs!(r.spec.parent_refs),
            matches!(
                r.spec.use_default_gateways,
                Some(sluice_gateway_crds::grpcroutes::GrpcRouteUseDefaultGateways::All)
            ),
        );
        collect(
            RouteKind::Grpc,
            object_ref("GRPCRoute", &r.metadata),
            generation(&r.metadata),
            Age::of(&r.metadata),
            r.spec.hostnames.as_deref().unwrap_or_default(),
            &refs,
        );
    }
    entries.sort_by(|a, b| (&a.0, a.1, &a.2, a.3).cmp(&(&b.0, b.1, &b.2, b.3)));
    let intersects =
        |a: &str, b: &str| a == "*" || b == "*" || hostname::intersect(Some(a), b).is_some();
    // Accepted (kind, object, hostnames) per listener.
    let mut accepted: BTreeMap<usize, Vec<(RouteKind, ObjectRef, Vec<String>)>> = BTreeMap::new();
    for (_, kind, object, l, hosts) in entries {
        let list = accepted.entry(l).or_default();
        let clash = list.iter().find(|(k, o, hs)| {
            *k != kind && *o != object && hs.iter().any(|a| hosts.iter().any(|b| intersects(a, b)))
        });
        match clash {
            Some((_, o, _)) => {
                let m = format!(
                    "{o} is older and serves an intersecting hostname on listener {:?} (an HTTPRoute and a GRPCRoute cannot share a hostname)",
                    gws.listeners[l].name
                );
                gws.route_conflicts.entry(object).or_default().insert(l, m);
            }
            None => list.push((kind, object, hosts)),
        }
    }
}

/// What a route's rules and references came to, for status.
#[derive(Debug, Clone, Default)]
pub struct RouteVerdict {
    /// A problem with the route as a whole (e.g. an invalid hostname): `Accepted=False`.
    pub route_problem: Option<Problem>,
    /// Invalid rules (`Accepted=False` when every rule is invalid, else `PartiallyInvalid`).
    pub invalid_rules: Vec<Problem>,
    /// Number of rules.
    pub rules: usize,
    /// Unresolved backend references.
    pub unresolved: Vec<Problem>,
}

impl RouteVerdict {
    /// True when at least one rule is usable (a route without rules is usable).
    pub fn usable(&self) -> bool {
        self.route_problem.is_none() && (self.rules == 0 || self.invalid_rules.len() < self.rules)
    }
}

/// Writes `status.parents` and counts attached routes on listeners. Returns the attachments
/// that are accepted (and whose listeners then serve the route).
pub(crate) fn finish_route(
    out: &mut Out,
    gws: &mut Gateways,
    route: &RouteInfo<'_>,
    attachments: Vec<Attachment>,
    verdict: &RouteVerdict,
    controller_name: &str,
) -> Vec<Attachment> {
    if attachments.is_empty() {
        return attachments;
    }
    let generation = route.generation;
    let mut parents = Vec::new();
    let mut accepted = Vec::new();
    let mut counted = BTreeSet::new();
    for att in attachments {
        let mut conditions = Vec::new();
        let problem = att
            .problem
            .clone()
            .or_else(|| verdict.route_problem.clone())
            .or_else(|| {
                (!verdict.usable()).then(|| {
                    let (r, m) = c::summarize(&verdict.invalid_rules)
                        .unwrap_or((reason::UNSUPPORTED_VALUE, String::new()));
                    Problem::new(r, format!("no valid rule: {m}"))
                })
            });
        conditions.push(match &problem {
            None => c::ok(c::ACCEPTED, "route is accepted", generation),
            Some(p) => c::cond(c::ACCEPTED, false, p.reason, p.message.clone(), generation),
        });
        conditions.push(match c::summarize(&verdict.unresolved) {
            None => c::ok(c::RESOLVED_REFS, "all references resolved", generation),
            Some((r, m)) => c::cond(c::RESOLVED_REFS, false, r, m, generation),
        });
        if verdict.usable()
            && let Some((r, m)) = c::summarize(&verdict.invalid_rules)
        {
            conditions.push(c::cond(
                c::PARTIALLY_INVALID,
                true,
                r,
                format!("invalid rules are not served: {m}"),
                generation,
            ));
        }
        parents.push(RouteParentStatus {
            parent_ref: att.parent_ref.clone(),
            controller_name: controller_name.to_string(),
            conditions,
        });
        if problem.is_none() {
            for (l, _) in &att.listeners {
                if counted.insert(*l) {
                    gws.listeners[*l].attached_routes += 1;
                }
            }
            accepted.push(att);
        }
    }
    out.status_mut(&route.object, generation).parents = parents;
    accepted
}
