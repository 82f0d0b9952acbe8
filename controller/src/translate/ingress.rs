//! Ingress (networking.k8s.io/v1): rules, default backend and TLS of Ingresses of our class,
//! served on the Ingress address next to (and merged with) Gateway listeners.

use super::backends::{self, BackendRef, Need, Referrer};
use super::builder::Precedence;
use super::conditions::{self as c, Problem, reason};
use super::gateway::{Gateways, Protocol};
use super::{Age, Ctx, Out, certs, generation, hostname, object_ref};
use crate::Key;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use sluice_ir::{
    HttpMatch, HttpRoute, ListenerSource, PathMatch, RouteId, ServerCertificate, Timeouts,
    WeightedBackend,
};
use std::net::IpAddr;

/// Ingress annotation naming the class (before `spec.ingressClassName` existed).
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// IngressClass annotation marking the default class.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// Whether Sluice serves an Ingress: its class (`spec.ingressClassName`, or the legacy
/// annotation) is an IngressClass with our controller, or has our class name when no such
/// IngressClass object exists; without a class, the default IngressClass must be ours.
pub(crate) fn is_ours(ctx: &Ctx<'_>, ing: &Ingress) -> bool {
    let class = ing
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.clone())
        .or_else(|| {
            ing.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(LEGACY_CLASS_ANNOTATION).cloned())
        });
    let ours = |ic: &k8s_openapi::api::networking::v1::IngressClass| {
        ic.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(crate::INGRESS_CONTROLLER)
    };
    match class {
        Some(name) => match ctx.res.ingress_classes.get(&Key::new("", &name)) {
            Some(ic) => ours(ic),
            None => name == ctx.opts.ingress_class,
        },
        None => ctx.res.ingress_classes.values().any(|ic| {
            ours(ic)
                && ic
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                    .is_some_and(|v| v == "true")
        }),
    }
}

/// Translates every Ingress of our class. Its rules join the virtual hosts of the Ingress
/// sockets as if they came through a listener without hostname: a Gateway listener with a
/// hostname on the same socket takes precedence for its hostname (listener isolation).
pub(crate) fn process(ctx: &Ctx<'_>, _gws: &Gateways, out: &mut Out) {
    let address = ctx
        .opts
        .ingress_address
        .or_else(|| ctx.opts.address_pool.first().copied());
    for ing in ctx.res.ingresses.values() {
        if !is_ours(ctx, ing) {
            continue;
        }
        translate_one(ctx, out, ing, address);
    }
}

fn translate_one(ctx: &Ctx<'_>, out: &mut Out, ing: &Ingress, address: Option<IpAddr>) {
    let object = object_ref("Ingress", &ing.metadata);
    let generation = generation(&ing.metadata);
    let age = std::rc::Rc::new(Age::of(&ing.metadata));
    let kind: std::rc::Rc<str> = "Ingress".into();
    let ns = object.namespace.clone();
    let from = Referrer {
        kind: "Ingress",
        group: "networking.k8s.io",
        namespace: &ns,
    };
    let mut unresolved: Vec<Problem> = Vec::new();
    let mut invalid: Vec<Problem> = Vec::new();
    let spec = ing.spec.clone().unwrap_or_default();

    let resolve_backend =
        |out: &mut Out, b: &IngressBackend, field: &str, unresolved: &mut Vec<Problem>| {
            let res = match (&b.service, &b.resource) {
                (Some(s), _) => {
                    let port = s
                        .port
                        .as_ref()
                        .and_then(|p| match (p.number, p.name.as_deref()) {
                            (Some(n), _) => Some(n),
                            (None, Some(name)) => ctx
                                .res
                                .services
                                .get(&Key::new(&ns, &s.name))
                                .and_then(|svc| svc.spec.as_ref())
                                .and_then(|sp| sp.ports.as_ref())
                                .and_then(|ps| ps.iter().find(|p| p.name.as_deref() == Some(name)))
                                .map(|p| p.port),
                            _ => None,
                        });
                    if port.is_none()
                        && let Some(pname) = s.port.as_ref().and_then(|p| p.name.as_deref())
                    {
                        Err(Problem::new(
                            reason::BACKEND_NOT_FOUND,
                            format!(
                                "{field}: Service {ns}/{} has no port named {pname:?}",
                                s.name
                            ),
                        ))
                    } else {
                        backends::resolve(
                            ctx,
                            out,
                            from,
                            &BackendRef {
                                group: None,
                                kind: None,
                                name: &s.name,
                                namespace: None,
                                port,
                            },
                            Need::Http,
                            field,
                        )
                    }
                }
                (None, Some(r)) => Err(Problem::new(
                    reason::INVALID_KIND,
                    format!(
                        "{field}: resource backend {}/{} {:?} is not supported (only Services)",
                        r.api_group.as_deref().unwrap_or("core"),
                        r.kind,
                        r.name
                    ),
                )),
                (None, None) => Err(Problem::new(
                    reason::BACKEND_NOT_FOUND,
                    format!("{field}: neither service nor resource is set"),
                )),
            };
            match res {
                Ok(cl) => Some(cl),
                Err(p) => {
                    unresolved.push(p);
                    None
                }
            }
        };

    // (vhost, entry) pairs.
    let mut entries: Vec<(String, HttpRoute)> = Vec::new();
    let rules = spec.rules.clone().unwrap_or_default();
    for (ri, rule) in rules.iter().enumerate() {
        let host = match rule.host.as_deref().filter(|h| !h.is_empty()) {
            None => "*".to_string(),
            Some(h) => match hostname::validate(h) {
                Ok(()) => h.to_string(),
                Err(e) => {
                    invalid.push(Problem::new(
                        reason::UNSUPPORTED_VALUE,
                        format!("spec.rules[{ri}].host: {e}"),
                    ));
                    continue;
                }
            },
        };
        for (pi, p) in rule.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
            let field = format!("spec.rules[{ri}].http.paths[{pi}]");
            let path = p
                .path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into());
            if !path.starts_with('/') {
                invalid.push(Problem::new(
                    reason::UNSUPPORTED_VALUE,
                    format!("{field}.path: {path:?} must start with \"/\""),
                ));
                continue;
            }
            let matcher = match p.path_type.as_str() {
                "Exact" => PathMatch::Exact(path),
                "Prefix" | "ImplementationSpecific" => PathMatch::Prefix(path),
                other => {
                    invalid.push(Problem::new(
                        reason::UNSUPPORTED_VALUE,
                        format!("{field}.pathType: {other:?} is not Exact, Prefix or ImplementationSpecific"),
                    ));
                    continue;
                }
            };
            let cluster = resolve_backend(
                out,
                &p.backend,
                &format!("{field}.backend"),
                &mut unresolved,
            );
            entries.push((
                host.clone(),
                entry(&object, ri as u32, pi as u32, matcher, cluster),
            ));
        }
    }
    if let Some(db) = &spec.default_backend {
        let cluster = resolve_backend(out, db, "spec.defaultBackend", &mut unresolved);
        let e = entry(
            &object,
            rules.len() as u32,
            0,
            PathMatch::Prefix("/".into()),
            cluster,
        );
        // In the catch-all virtual host, after every rule: the virtual hosts of the Ingress's
        // hosts take the catch-all entries after their own.
        entries.push(("*".to_string(), e));
    }

    // TLS.
    let mut certificates: Vec<ServerCertificate> = Vec::new();
    for (ti, t) in spec.tls.iter().flatten().enumerate() {
        let field = format!("spec.tls[{ti}]");
        let Some(name) = t.secret_name.as_deref().filter(|n| !n.is_empty()) else {
            unresolved.push(Problem::new(
                reason::INVALID_CERTIFICATE_REF,
                format!("{field}.secretName is not set (no default certificate is configured)"),
            ));
            continue;
        };
        let server_names: Vec<String> = t
            .hosts
            .iter()
            .flatten()
            .filter(|h| hostname::validate(h).is_ok())
            .cloned()
            .collect();
        match ctx.res.secrets.get(&Key::new(&ns, name)) {
            None => unresolved.push(Problem::new(
                reason::INVALID_CERTIFICATE_REF,
                format!("{field}: Secret {ns}/{name} does not exist"),
            )),
            Some(secret) => match certs::tls_secret(secret) {
                Ok(kp) => certificates.push(ServerCertificate {
                    server_names,
                    cert_chain_pem: kp.cert_chain_pem,
                    private_key_pem: kp.private_key_pem,
                    source: format!("{ns}/{name}"),
                }),
                Err(e) => unresolved.push(Problem::new(
                    reason::INVALID_CERTIFICATE_REF,
                    format!("{field}: {e}"),
                )),
            },
        }
    }

    // Listeners.
    let mut port_problem = None;
    let mut served = false;
    if let Some(addr) = address {
        let mut sockets = vec![(ctx.opts.ingress_http_port, Protocol::Http, "http")];
        if !certificates.is_empty() {
            sockets.push((ctx.opts.ingress_https_port, Protocol::Https, "https"));
        }
        for (port, protocol, name) in sockets {
            let source = ListenerSource {
                parent: object.clone(),
                listener: name.into(),
            };
            match out.ir.listener(addr, port, protocol, source, None) {
                Err(e) => {
                    port_problem.get_or_insert(Problem::new(reason::PORT_UNAVAILABLE, e));
                }
                Ok(key) => {
                    served = true;
                    out.ir.certificates(&key, &certificates);
                    for (h, e) in &entries {
                        out.ir
                            .http(&key, h, None, Precedence::of(e, &age, &kind), e.clone());
                    }
                }
            }
        }
    }

    let st = out.status_mut(&object, generation);
    if served && let Some(a) = address {
        st.load_balancer = vec![a.to_string()];
    }
    st.conditions.push(match (&port_problem, address) {
        (_, None) => c::cond(
            c::ACCEPTED,
            false,
            reason::ADDRESS_NOT_ASSIGNED,
            "no Ingress address: the address pool is empty",
            generation,
        ),
        (Some(p), _) if !served => {
            c::cond(c::ACCEPTED, false, p.reason, p.message.clone(), generation)
        }
        _ if !invalid.is_empty() && entries.is_empty() => {
            let (r, m) = c::summarize(&invalid).unwrap_or_default();
            c::cond(c::ACCEPTED, false, r, m, generation)
        }
        _ => {
            let mut notes: Vec<String> = invalid.iter().map(|p| p.message.clone()).collect();
            if let Some(p) = &port_problem {
                notes.push(p.message.clone());
            }
            if notes.is_empty() {
                c::ok(c::ACCEPTED, "Ingress is served", generation)
            } else {
                c::ok(
                    c::ACCEPTED,
                    format!("Ingress is served, except: {}", notes.join("; ")),
                    generation,
                )
            }
        }
    });
    st.conditions.push(match c::summarize(&unresolved) {
        None => c::ok(c::RESOLVED_REFS, "all references resolved", generation),
        Some((r, m)) => c::cond(c::RESOLVED_REFS, false, r, m, generation),
    });
}

fn entry(
    object: &sluice_ir::ObjectRef,
    rule: u32,
    path: u32,
    matcher: PathMatch,
    cluster: Option<String>,
) -> HttpRoute {
    HttpRoute {
        id: RouteId {
            route: object.clone(),
            rule,
            matcher: path,
            rule_name: None,
        },
        matcher: HttpMatch {
            path: matcher,
            ..Default::default()
        },
        filters: Vec::new(),
        backends: vec![WeightedBackend {
            weight: 1,
            cluster,
            filters: Vec::new(),
        }],
        timeouts: Timeouts::default(),
        retry: None,
        grpc: false,
    }
}
