//! BackendTLSPolicy: TLS from the proxy to Services (SNI, CA bundle or the system trust store,
//! subject alt names), conflicts between policies for the same target, and status per
//! ancestor Gateway (the Gateways whose accepted routes send traffic to the Service).
//!
//! A policy whose CA references are (partly) invalid fails closed: its Services' clusters get
//! an empty trust bundle, so connections fail and clients get 5xx, as the spec requires.

use super::conditions::{self as c, Problem, reason};
use super::gateway::Gateways;
use super::{Age, Ctx, GATEWAY_GROUP, Out, certs, generation, hostname, object_ref};
use crate::Key;
use sluice_gateway_crds::BackendTlsPolicy;
use sluice_gateway_crds::backendtlspolicies::BackendTlsPolicyValidationSubjectAltNamesType;
use sluice_ir::status::{Condition, ParentRef, RouteParentStatus};
use sluice_ir::{ObjectRef, SubjectAltName, UpstreamProtocol, UpstreamTls};
use std::collections::{BTreeMap, BTreeSet};

/// `TargetNotFound` (policy Accepted reason).
const TARGET_NOT_FOUND: &str = "TargetNotFound";

/// A policy target: namespace, Service, port name (`None` = every port).
type Target = (String, String, Option<String>);

/// A policy's object, generation, conditions and targets, for status.
type PolicyStatus = (ObjectRef, i64, Vec<Condition>, BTreeSet<Target>);

/// What a policy resolves to.
struct Resolved {
    /// TLS settings; `None` when the policy is invalid.
    tls: Option<UpstreamTls>,
    /// CA references that did not resolve (ResolvedRefs=False).
    ref_problems: Vec<Problem>,
    /// Why the policy is not accepted.
    not_accepted: Option<Problem>,
}

/// Applies BackendTLSPolicies to clusters and reports their status.
pub(crate) fn process(ctx: &Ctx<'_>, gws: &Gateways, out: &mut Out) {
    let mut policies: Vec<(&Key, &BackendTlsPolicy)> =
        ctx.res.backend_tls_policies.iter().collect();
    policies.sort_by_cached_key(|(_, p)| Age::of(&p.metadata));
    // (namespace, service, section) -> winning policy.
    let mut winners: BTreeMap<Target, ObjectRef> = BTreeMap::new();
    // Resolved settings of accepted policies by target.
    let mut applied: BTreeMap<Target, UpstreamTls> = BTreeMap::new();
    let mut statuses: Vec<PolicyStatus> = Vec::new();

    for (key, policy) in policies {
        let object = object_ref("BackendTLSPolicy", &policy.metadata);
        let generation = generation(&policy.metadata);
        let ns = key.namespace.clone();
        let mut not_accepted: Option<Problem> = None;
        let mut targets = BTreeSet::new();
        for (i, t) in policy.spec.target_refs.iter().enumerate() {
            if !t.group.is_empty() || t.kind != "Service" {
                not_accepted.get_or_insert(Problem::new(
                    reason::INVALID,
                    format!(
                        "spec.targetRefs[{i}]: {}/{} is not supported (only core Services)",
                        if t.group.is_empty() { "core" } else { &t.group },
                        t.kind
                    ),
                ));
                continue;
            }
            let Some(svc) = ctx.res.services.get(&Key::new(&ns, &t.name)) else {
                not_accepted.get_or_insert(Problem::new(
                    TARGET_NOT_FOUND,
                    format!(
                        "spec.targetRefs[{i}]: Service {ns}/{} does not exist",
                        t.name
                    ),
                ));
                continue;
            };
            let section = t.section_name.clone().filter(|s| !s.is_empty());
            if let Some(s) = &section {
                let has = svc
                    .spec
                    .as_ref()
                    .and_then(|sp| sp.ports.as_ref())
                    .is_some_and(|ps| ps.iter().any(|p| p.name.as_deref() == Some(s.as_str())));
                if !has {
                    not_accepted.get_or_insert(Problem::new(
                        TARGET_NOT_FOUND,
                        format!(
                            "spec.targetRefs[{i}]: Service {ns}/{} has no port named {s:?}",
                            t.name
                        ),
                    ));
                    continue;
                }
            }
            targets.insert((ns.clone(), t.name.clone(), section));
        }
        let Resolved {
            tls,
            ref_problems,
            not_accepted: invalid,
        } = resolve(ctx, policy, &ns);
        if let Some(p) = invalid {
            not_accepted.get_or_insert(p);
        }
        // Conflicts: an older policy (or one earlier by namespace/name) for the same target.
        if not_accepted.is_none() {
            for t in &targets {
                if let Some(w) = winners.get(t) {
                    not_accepted = Some(Problem::new(
                        reason::CONFLICTED,
                        format!(
                            "{w} already applies to Service {}/{}{}",
                            t.0,
                            t.1,
                            t.2.as_ref()
                                .map(|s| format!(" port {s:?}"))
                                .unwrap_or_default()
                        ),
                    ));
                    break;
                }
            }
        }
        let fail_closed = !ref_problems.is_empty();
        let tls = match (tls, fail_closed) {
            (Some(mut t), true) => {
                t.ca_pem = Some(String::new());
                Some(t)
            }
            (t, _) => t,
        };
        let conflicted = not_accepted
            .as_ref()
            .is_some_and(|p| p.reason == reason::CONFLICTED);
        if !conflicted {
            for t in &targets {
                winners.entry(t.clone()).or_insert_with(|| object.clone());
                // Accepted policies configure TLS; so does a policy rejected only because no
                // CA reference resolved (connections to its Services must fail).
                if let Some(tls) = &tls
                    && (not_accepted.is_none()
                        || not_accepted
                            .as_ref()
                            .is_some_and(|p| p.reason == reason::NO_VALID_CA_CERTIFICATE))
                {
                    applied.entry(t.clone()).or_insert_with(|| tls.clone());
                }
            }
        }
        let mut conditions = vec![match &not_accepted {
            None => c::ok(c::ACCEPTED, "policy is applied", generation),
            Some(p) => c::cond(c::ACCEPTED, false, p.reason, p.message.clone(), generation),
        }];
        conditions.push(match c::summarize(&ref_problems) {
            None => c::ok(c::RESOLVED_REFS, "all references resolved", generation),
            Some((r, m)) => c::cond(c::RESOLVED_REFS, false, r, m, generation),
        });
        statuses.push((object, generation, conditions, targets));
    }

    // Apply to clusters: a policy for a named port beats one for the whole Service.
    let names: Vec<String> = out.clusters.keys().cloned().collect();
    for name in names {
        let Some((svc_ns, svc_name, port)) = parse_cluster(&name) else {
            continue;
        };
        let Some(svc) = ctx.res.services.get(&Key::new(svc_ns, svc_name)) else {
            continue;
        };
        let port_name = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|ps| ps.iter().find(|p| p.port == i32::from(port)))
            .and_then(|p| p.name.clone());
        let by_section = port_name
            .and_then(|pn| applied.get(&(svc_ns.to_string(), svc_name.to_string(), Some(pn))));
        let Some(tls) =
            by_section.or_else(|| applied.get(&(svc_ns.to_string(), svc_name.to_string(), None)))
        else {
            continue;
        };
        let users: Vec<ObjectRef> = out
            .cluster_users
            .get(&name)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let cl = out.clusters.get_mut(&name).expect("cluster listed above");
        match cl.protocol {
            UpstreamProtocol::Http1 => {}
            UpstreamProtocol::H2c => cl.protocol = UpstreamProtocol::H2,
            _ => continue,
        }
        let mut tls = tls.clone();
        // The backend client certificate of the first Gateway (by namespace/name) sending
        // traffic to this cluster that has one.
        tls.client_certificate = users.iter().find_map(|u| {
            gws.gateway(&u.namespace, &u.name)
                .and_then(|g| gws.list[g].backend_client_certificate.clone())
        });
        cl.tls = Some(tls);
    }

    // Status per ancestor Gateway.
    for (object, generation, conditions, targets) in statuses {
        let mut ancestors: BTreeSet<ObjectRef> = BTreeSet::new();
        for (cluster, users) in &out.cluster_users {
            let Some((cns, csvc, port)) = parse_cluster(cluster) else {
                continue;
            };
            let matches = targets.iter().any(|(ns, svc, section)| {
                ns == cns
                    && svc == csvc
                    && section.as_ref().is_none_or(|s| {
                        ctx.res
                            .services
                            .get(&Key::new(ns, svc))
                            .and_then(|x| x.spec.as_ref())
                            .and_then(|sp| sp.ports.as_ref())
                            .is_some_and(|ps| {
                                ps.iter().any(|p| {
                                    p.port == i32::from(port)
                                        && p.name.as_deref() == Some(s.as_str())
                                })
                            })
                    })
            });
            if matches {
                ancestors.extend(users.iter().cloned());
            }
        }
        let st = out.status_mut(&object, generation);
        st.conditions = conditions.clone();
        st.ancestors = ancestors
            .into_iter()
            .map(|g| RouteParentStatus {
                parent_ref: ParentRef {
                    group: Some(GATEWAY_GROUP.into()),
                    kind: Some("Gateway".into()),
                    namespace: Some(g.namespace.clone()),
                    name: g.name.clone(),
                    section_name: None,
                    port: None,
                },
                controller_name: ctx.opts.controller_name.clone(),
                conditions: conditions.clone(),
            })
            .collect();
    }
}

/// `(namespace, service, port)` of a Service cluster name `ns/svc:port[/suffix]`.
fn parse_cluster(name: &str) -> Option<(&str, &str, u16)> {
    let (ns, rest) = name.split_once('/')?;
    let (svc, rest) = rest.split_once(':')?;
    let port = rest.split('/').next()?.parse().ok()?;
    Some((ns, svc, port))
}

/// Resolves a policy's validation settings.
fn resolve(ctx: &Ctx<'_>, policy: &BackendTlsPolicy, ns: &str) -> Resolved {
    let v = &policy.spec.validation;
    let invalid = |m: String| Resolved {
        tls: None,
        ref_problems: Vec::new(),
        not_accepted: Some(Problem::new(reason::INVALID, m)),
    };
    if hostname::is_wildcard(&v.hostname) {
        return invalid(format!(
            "validation.hostname {:?} must not be a wildcard",
            v.hostname
        ));
    }
    if let Err(e) = hostname::validate(&v.hostname) {
        return invalid(format!("validation.hostname: {e}"));
    }
    let refs = v.ca_certificate_refs.as_deref().unwrap_or_default();
    let well_known = v
        .well_known_ca_certificates
        .as_deref()
        .filter(|w| !w.is_empty());
    let mut subject_alt_names = Vec::new();
    for (i, s) in v.subject_alt_names.iter().flatten().enumerate() {
        match s.r#type {
            BackendTlsPolicyValidationSubjectAltNamesType::Hostname => {
                match s.hostname.as_deref() {
                    Some(h) if !h.is_empty() => {
                        subject_alt_names.push(SubjectAltName::Hostname(h.to_string()))
                    }
                    _ => {
                        return invalid(format!(
                            "validation.subjectAltNames[{i}]: type Hostname needs hostname"
                        ));
                    }
                }
            }
            BackendTlsPolicyValidationSubjectAltNamesType::Uri => match s.uri.as_deref() {
                Some(u) if u.contains("://") => {
                    subject_alt_names.push(SubjectAltName::Uri(u.to_string()))
                }
                _ => {
                    return invalid(format!(
                        "validation.subjectAltNames[{i}]: type URI needs a uri with a scheme"
                    ));
                }
            },
        }
    }
    let tls = |ca_pem: Option<String>| UpstreamTls {
        sni: v.hostname.clone(),
        ca_pem,
        subject_alt_names: subject_alt_names.clone(),
        client_certificate: None,
        alpn: Vec::new(),
    };
    match (refs.is_empty(), well_known) {
        (false, Some(_)) => invalid(
            "validation: only one of caCertificateRefs and wellKnownCACertificates may be set"
                .into(),
        ),
        (true, None) => invalid(
            "validation: one of caCertificateRefs and wellKnownCACertificates must be set".into(),
        ),
        (true, Some("System")) => Resolved {
            tls: Some(tls(None)),
            ref_problems: Vec::new(),
            not_accepted: None,
        },
        (true, Some(other)) => invalid(format!(
            "validation.wellKnownCACertificates {other:?} is not supported (only \"System\")"
        )),
        (false, None) => {
            let mut bundle = String::new();
            let mut problems = Vec::new();
            for (i, r) in refs.iter().enumerate() {
                let field = format!("validation.caCertificateRefs[{i}]");
                let key = Key::new(ns, &r.name);
                let res = match (r.group.as_str(), r.kind.as_str()) {
                    ("", "ConfigMap") => match ctx.res.config_maps.get(&key) {
                        Some(cm) => certs::ca_config_map(cm),
                        None => Err(format!("ConfigMap {ns}/{} does not exist", r.name)),
                    },
                    ("", "Secret") => match ctx.res.secrets.get(&key) {
                        Some(s) => certs::ca_secret(s),
                        None => Err(format!("Secret {ns}/{} does not exist", r.name)),
                    },
                    (g, k) => {
                        problems.push(Problem::new(
                            reason::INVALID_KIND,
                            format!(
                                "{field}: {}/{k} is not supported (only core ConfigMaps and Secrets)",
                                if g.is_empty() { "core" } else { g }
                            ),
                        ));
                        continue;
                    }
                };
                match res {
                    Ok(pem) => {
                        bundle.push_str(&pem);
                        if !bundle.ends_with('\n') {
                            bundle.push('\n');
                        }
                    }
                    Err(e) => problems.push(Problem::new(
                        reason::INVALID_CA_CERTIFICATE_REF,
                        format!("{field}: {e}"),
                    )),
                }
            }
            let not_accepted = bundle.is_empty().then(|| {
                Problem::new(
                    reason::NO_VALID_CA_CERTIFICATE,
                    "validation.caCertificateRefs: no CA certificate could be loaded; connections to the backend fail",
                )
            });
            Resolved {
                tls: Some(tls(Some(bundle))),
                ref_problems: problems,
                not_accepted,
            }
        }
    }
}
