//! Status assertions (the upstream `kubernetes.*MustHave*` helpers) evaluated against Sluice's
//! `/status` report and the generations the runner wrote.

use crate::cluster::{CONTROLLER_NAME, Cluster, ObjKey};
use serde_yaml::Value;
use sluice_ir::status::{Condition, ConditionStatus, ResourceStatus, StatusReport};

/// Result of evaluating a check once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The assertion holds.
    Holds,
    /// Not (yet) true: why.
    Pending(String),
    /// The runner cannot evaluate this step.
    Unsupported(String),
}

/// What checks read.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// The gateway's status report.
    pub status: &'a StatusReport,
    /// Objects and generations written.
    pub cluster: &'a Cluster,
}

/// An expected condition: empty status or reason match anything.
#[derive(Debug, Clone, Default)]
pub struct WantCondition {
    /// Type.
    pub type_: String,
    /// `True`, `False`, `Unknown` or empty.
    pub status: String,
    /// Reason or empty.
    pub reason: String,
}

impl WantCondition {
    /// Reads `{type, status, reason}`.
    pub fn from_yaml(v: &Value) -> Option<Self> {
        Some(WantCondition {
            type_: v.get("type")?.as_str()?.to_string(),
            status: v
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            reason: v
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        })
    }

    fn matches(&self, c: &Condition) -> bool {
        c.type_ == self.type_
            && (self.status.is_empty() || status_str(c.status) == self.status)
            && (self.reason.is_empty() || c.reason == self.reason)
    }
}

impl std::fmt::Display for WantCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}={}",
            self.type_,
            if self.status.is_empty() {
                "*"
            } else {
                &self.status
            }
        )?;
        if !self.reason.is_empty() {
            write!(f, " ({})", self.reason)?;
        }
        Ok(())
    }
}

fn status_str(s: ConditionStatus) -> &'static str {
    match s {
        ConditionStatus::True => "True",
        ConditionStatus::False => "False",
        ConditionStatus::Unknown => "Unknown",
    }
}

fn fmt_conds(cs: &[Condition]) -> String {
    cs.iter()
        .map(|c| format!("{}={}({})", c.type_, status_str(c.status), c.reason))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `list` has a condition matching `want`.
pub fn has_condition(list: &[Condition], want: &WantCondition) -> bool {
    list.iter().any(|c| want.matches(c))
}

/// Splits `ns/name` (or `name`).
pub fn nn(s: &str) -> (String, String) {
    match s.split_once('/') {
        Some((a, b)) => (a.to_string(), b.to_string()),
        None => (String::new(), s.to_string()),
    }
}

fn key(kind: &str, s: &str) -> ObjKey {
    let (namespace, name) = nn(s);
    ObjKey {
        kind: kind.to_string(),
        namespace,
        name,
    }
}

/// Route kinds a generic route check can refer to.
const ROUTE_KINDS: &[&str] = &["HTTPRoute", "GRPCRoute", "TLSRoute", "TCPRoute", "UDPRoute"];

impl<'a> View<'a> {
    /// The kind of the applied route `ns/name`; an error when no or several route kinds have
    /// that name.
    fn applied_route_kind(&self, route: &str) -> Result<&'static str, String> {
        let found: Vec<&'static str> = ROUTE_KINDS
            .iter()
            .copied()
            .filter(|k| self.cluster.get(&key(k, route)).is_some())
            .collect();
        match found.as_slice() {
            [k] => Ok(k),
            [] => Err(format!("no route {route} is applied")),
            ks => Err(format!(
                "\u{0}route {route} is ambiguous: {}",
                ks.join(", ")
            )),
        }
    }

    fn resource(&self, k: &ObjKey) -> Result<&'a ResourceStatus, String> {
        self.status
            .get(&k.kind, &k.namespace, &k.name)
            .ok_or_else(|| format!("{k} has no status yet"))
    }

    /// Errors unless every condition's observedGeneration equals the generation written.
    fn latest(&self, k: &ObjKey, conds: &[Condition]) -> Result<(), String> {
        let Some(want) = self.cluster.generation(k) else {
            return Err(format!("{k} was not written by the runner"));
        };
        let stale: Vec<String> = conds
            .iter()
            .filter(|c| c.observed_generation != want)
            .map(|c| format!("{} (generation {})", c.type_, c.observed_generation))
            .collect();
        if stale.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{k}: expected observedGeneration {want} on all conditions, stale: {}",
                stale.join(", ")
            ))
        }
    }

    fn gateway(&self, s: &str) -> Result<(ObjKey, &'a ResourceStatus), String> {
        let k = key("Gateway", s);
        let r = self.resource(&k)?;
        self.latest(&k, &r.conditions)?;
        Ok((k, r))
    }

    /// The first typed status address of a Gateway (conditions must be current).
    pub fn gateway_address(&self, gw: &str) -> Result<String, String> {
        let (k, r) = self.gateway(gw)?;
        r.addresses
            .iter()
            .find(|a| !a.type_.is_empty())
            .map(|a| a.value.clone())
            .ok_or_else(|| format!("{k} has no address in status"))
    }

    fn listeners_have(
        &self,
        gw: &str,
        conds: &[WantCondition],
        only: &[String],
    ) -> Result<(), String> {
        let k = key("Gateway", gw);
        let r = self.resource(&k)?;
        let mut missing: Vec<&String> = only.iter().collect();
        for want in conds {
            for l in &r.listeners {
                if !only.is_empty() && !only.contains(&l.name) {
                    continue;
                }
                if !has_condition(&l.conditions, want) {
                    return Err(format!(
                        "{k} listener {} lacks {want}: [{}]",
                        l.name,
                        fmt_conds(&l.conditions)
                    ));
                }
                missing.retain(|m| **m != l.name);
            }
        }
        if !missing.is_empty() {
            return Err(format!("{k}: listeners {missing:?} not in status"));
        }
        Ok(())
    }

    fn route_parents_accepted(
        &self,
        kind: &str,
        route: &str,
        gw: &str,
        listeners: usize,
    ) -> Result<(), String> {
        let rk = key(kind, route);
        let r = self.resource(&rk)?;
        self.latest(
            &rk,
            &r.parents
                .iter()
                .flat_map(|p| p.conditions.clone())
                .collect::<Vec<_>>(),
        )?;
        let (gns, gname) = nn(gw);
        let namespace_required = rk.namespace != gns;
        let accepted = WantCondition {
            type_: "Accepted".into(),
            status: "True".into(),
            reason: "Accepted".into(),
        };
        let found = r.parents.iter().any(|p| {
            p.controller_name == CONTROLLER_NAME
                && p.parent_ref
                    .group
                    .as_deref()
                    .unwrap_or("gateway.networking.k8s.io")
                    == "gateway.networking.k8s.io"
                && p.parent_ref.kind.as_deref().unwrap_or("Gateway") == "Gateway"
                && p.parent_ref.name == gname
                && match &p.parent_ref.namespace {
                    Some(ns) => *ns == gns,
                    None => !namespace_required,
                }
                && has_condition(&p.conditions, &accepted)
        });
        if found || listeners == 0 {
            Ok(())
        } else {
            Err(format!(
                "{rk} has no parent {gw} with Accepted=True (Accepted); parents: {}",
                r.parents
                    .iter()
                    .map(|p| format!("{}: [{}]", p.parent_ref.name, fmt_conds(&p.conditions)))
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        }
    }

    fn route_condition(
        &self,
        kind: &str,
        route: &str,
        gw: &str,
        want: &WantCondition,
    ) -> Result<(), String> {
        let rk = key(kind, route);
        let r = self.resource(&rk)?;
        let (gns, gname) = nn(gw);
        let mut found = false;
        for p in &r.parents {
            self.latest(&rk, &p.conditions)?;
            if p.parent_ref.name == gname
                && p.parent_ref.namespace.as_deref().is_none_or(|n| n == gns)
                && has_condition(&p.conditions, want)
            {
                found = true;
            }
        }
        if found {
            Ok(())
        } else {
            Err(format!(
                "{rk} parent {gw} lacks {want}; parents: {}",
                r.parents
                    .iter()
                    .map(|p| format!("{}: [{}]", p.parent_ref.name, fmt_conds(&p.conditions)))
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        }
    }

    fn no_accepted_parents(
        &self,
        kind: &str,
        route: &str,
        seen_empty: &mut bool,
    ) -> Result<(), String> {
        let rk = key(kind, route);
        let parents = match self.status.get(&rk.kind, &rk.namespace, &rk.name) {
            Some(r) => r.parents.clone(),
            None => Vec::new(),
        };
        if parents.is_empty() {
            if !*seen_empty {
                *seen_empty = true;
                return Err(format!("{rk}: no parents yet (confirming)"));
            }
            return Ok(());
        }
        if parents.len() > 1 {
            return Err(format!(
                "{rk}: {} parents, expected at most one",
                parents.len()
            ));
        }
        self.latest(&rk, &parents[0].conditions)?;
        let want = WantCondition {
            type_: "Accepted".into(),
            status: "False".into(),
            reason: String::new(),
        };
        if has_condition(&parents[0].conditions, &want) {
            Ok(())
        } else {
            Err(format!(
                "{rk}: parent conditions [{}] lack Accepted=False",
                fmt_conds(&parents[0].conditions)
            ))
        }
    }

    fn listeners_match(&self, gw: &str, want: &Value) -> Result<(), String> {
        let (k, r) = self.gateway(gw)?;
        let want = want.as_sequence().ok_or("listeners is not a list")?;
        if want.len() != r.listeners.len() {
            return Err(format!(
                "{k}: expected {} listeners in status, got {}",
                want.len(),
                r.listeners.len()
            ));
        }
        for w in want {
            let name = w.get("name").and_then(Value::as_str).unwrap_or_default();
            let Some(l) = r.listeners.iter().find(|l| l.name == name) else {
                return Err(format!("{k}: listener {name} not in status"));
            };
            let kinds = w
                .get("supportedKinds")
                .and_then(Value::as_sequence)
                .cloned()
                .unwrap_or_default();
            if kinds.is_empty() && !l.supported_kinds.is_empty() {
                return Err(format!(
                    "{k} listener {name}: expected no supportedKinds, got {:?}",
                    l.supported_kinds
                ));
            }
            for wk in &kinds {
                let g = wk
                    .get("group")
                    .and_then(Value::as_str)
                    .unwrap_or("gateway.networking.k8s.io");
                let kind = wk.get("kind").and_then(Value::as_str).unwrap_or_default();
                if !l.supported_kinds.iter().any(|a| {
                    let ag = if a.group.is_empty() {
                        "gateway.networking.k8s.io"
                    } else {
                        &a.group
                    };
                    ag == g && a.kind == kind
                }) {
                    return Err(format!(
                        "{k} listener {name}: {g}/{kind} not in supportedKinds"
                    ));
                }
            }
            let attached = w.get("attachedRoutes").and_then(Value::as_i64).unwrap_or(0);
            if i64::from(l.attached_routes) != attached {
                return Err(format!(
                    "{k} listener {name}: expected attachedRoutes {attached}, got {}",
                    l.attached_routes
                ));
            }
            for c in w
                .get("conditions")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                let Some(c) = WantCondition::from_yaml(c) else {
                    continue;
                };
                if !has_condition(&l.conditions, &c) {
                    return Err(format!(
                        "{k} listener {name} lacks {c}: [{}]",
                        fmt_conds(&l.conditions)
                    ));
                }
            }
        }
        Ok(())
    }
}

fn s<'v>(args: &'v Value, k: &str) -> Result<&'v str, String> {
    args.get(k)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("argument {k} missing"))
}

fn str_of<'v>(v: &'v Value, k: &str) -> Option<&'v str> {
    v.get(k).and_then(Value::as_str)
}

fn strs(args: &Value, k: &str) -> Vec<String> {
    args.get(k)
        .and_then(Value::as_sequence)
        .map(|v| {
            v.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn cond(args: &Value, k: &str) -> Result<WantCondition, String> {
    args.get(k)
        .and_then(WantCondition::from_yaml)
        .ok_or_else(|| format!("argument {k} missing"))
}

fn conds(args: &Value, k: &str) -> Result<Vec<WantCondition>, String> {
    args.get(k)
        .and_then(Value::as_sequence)
        .map(|v| v.iter().filter_map(WantCondition::from_yaml).collect())
        .ok_or_else(|| format!("argument {k} is not a condition list"))
}

/// Mutable per-check state kept across polls.
#[derive(Debug, Default)]
pub struct CheckState {
    seen_empty: bool,
}

fn to_outcome(r: Result<(), String>) -> Outcome {
    match r {
        Ok(()) => Outcome::Holds,
        Err(e) => Outcome::Pending(e),
    }
}

/// Evaluates a check step once.
pub fn evaluate(name: &str, args: &Value, view: View<'_>, st: &mut CheckState) -> Outcome {
    let route_kind = |n: &str| -> &'static str {
        if n.starts_with("TLSRoute") || n.starts_with("GatewayAndTLS") {
            "TLSRoute"
        } else if n.starts_with("TCPRoute") || n.starts_with("GatewayAndTCP") {
            "TCPRoute"
        } else if n.starts_with("UDPRoute") || n.starts_with("GatewayAndUDP") {
            "UDPRoute"
        } else if n.starts_with("GRPCRoute") {
            "GRPCRoute"
        } else {
            "HTTPRoute"
        }
    };
    let r: Result<(), String> = (|| match name {
        "NamespacesMustBeReady" => {
            for ns in strs(args, "namespaces") {
                for gw in view.cluster.list("Gateway", &ns) {
                    if gw
                        .pointer("/metadata/annotations/gateway-api~1skip-this-for-readiness")
                        .and_then(serde_json::Value::as_str)
                        == Some("true")
                    {
                        continue;
                    }
                    let n = format!(
                        "{ns}/{}",
                        gw["metadata"]["name"].as_str().unwrap_or_default()
                    );
                    let (k, r) = view.gateway(&n)?;
                    for t in ["Accepted", "Programmed"] {
                        let w = WantCondition {
                            type_: t.into(),
                            status: "True".into(),
                            reason: String::new(),
                        };
                        if !has_condition(&r.conditions, &w) {
                            return Err(format!("{k} not {t} yet: [{}]", fmt_conds(&r.conditions)));
                        }
                    }
                }
            }
            Ok(())
        }
        "GatewayAndHTTPRoutesMustBeAccepted"
        | "GatewayAndRoutesMustBeAccepted"
        | "GatewayAndTLSRoutesMustBeAccepted"
        | "GatewayAndTCPRoutesMustBeAccepted"
        | "GatewayAndUDPRoutesMustBeAccepted" => {
            let gw = args.get("gw").ok_or("argument gw missing")?;
            let g = s(gw, "gateway")?;
            view.gateway_address(g)?;
            let listeners = strs(gw, "listeners").len().max(1);
            for r in strs(args, "routeNNs") {
                // The generic helper takes the route type as a Go value, which cases.yaml
                // transcribes as `routeType: {}`: the kind is the one of the applied route.
                let kind = if name == "GatewayAndRoutesMustBeAccepted" {
                    view.applied_route_kind(&r)?
                } else {
                    route_kind(name)
                };
                view.route_parents_accepted(kind, &r, g, listeners)?;
            }
            let all = ["ResolvedRefs", "Accepted", "Programmed"].map(|t| WantCondition {
                type_: t.into(),
                status: "True".into(),
                reason: String::new(),
            });
            view.listeners_have(g, &all, &[])
        }
        "WaitForGatewayAddress" => {
            let gw = args.get("gwRef").ok_or("argument gwRef missing")?;
            view.gateway_address(s(gw, "gateway")?).map(|_| ())
        }
        "HTTPRouteMustHaveCondition"
        | "TLSRouteMustHaveCondition"
        | "TCPRouteMustHaveCondition"
        | "UDPRouteMustHaveCondition" => view.route_condition(
            route_kind(name),
            s(args, "routeNN")?,
            s(args, "gwNN")?,
            &cond(args, "condition")?,
        ),
        "HTTPRouteMustHaveResolvedRefsConditionsTrue"
        | "TLSRouteMustHaveResolvedRefsConditionsTrue" => view.route_condition(
            route_kind(name),
            s(args, "routeNN")?,
            s(args, "gwNN")?,
            &WantCondition {
                type_: "ResolvedRefs".into(),
                status: "True".into(),
                reason: "ResolvedRefs".into(),
            },
        ),
        "HTTPRouteMustHaveNoAcceptedParents" | "TLSRouteMustHaveNoAcceptedParents" => {
            view.no_accepted_parents(route_kind(name), s(args, "routeName")?, &mut st.seen_empty)
        }
        "GatewayMustHaveZeroRoutes" => {
            let (k, r) = view.gateway(s(args, "gwName")?)?;
            if r.listeners.is_empty()
                || (r.listeners.len() == 1 && r.listeners[0].attached_routes == 0)
            {
                Ok(())
            } else {
                Err(format!(
                    "{k}: expected no listeners or one with zero routes, got {:?}",
                    r.listeners
                        .iter()
                        .map(|l| (&l.name, l.attached_routes))
                        .collect::<Vec<_>>()
                ))
            }
        }
        "GatewayStatusMustHaveListeners" => view.listeners_match(
            s(args, "gwNN")?,
            args.get("listeners").unwrap_or(&Value::Null),
        ),
        "GatewayMustHaveCondition" => {
            let (k, r) = view.gateway(s(args, "gwNN")?)?;
            let want = cond(args, "expectedCondition")?;
            if has_condition(&r.conditions, &want) {
                Ok(())
            } else {
                Err(format!("{k} lacks {want}: [{}]", fmt_conds(&r.conditions)))
            }
        }
        "GatewayListenersMustHaveConditions" => view.listeners_have(
            s(args, "gwName")?,
            &conds(args, "conditions")?,
            &strs(args, "listenerNames"),
        ),
        "GatewayListenerMustHaveConditions" => view.listeners_have(
            s(args, "gwName")?,
            &conds(args, "conditions")?,
            &[s(args, "lName")?.to_string()],
        ),
        "GatewayMustHaveLatestConditions" => view.gateway(s(args, "gwNN")?).map(|_| ()),
        "GatewayClassMustHaveLatestConditions" => {
            let k = key("GatewayClass", s(args, "gwcNN")?);
            let r = view.resource(&k)?;
            view.latest(&k, &r.conditions)
        }
        "GWCMustHaveAcceptedConditionAny" => {
            let n = s(args, "gwcName")?.trim_end_matches(".Name");
            let k = key("GatewayClass", n);
            let r = view.resource(&k)?;
            view.latest(&k, &r.conditions)?;
            let w = WantCondition {
                type_: "Accepted".into(),
                status: String::new(),
                reason: String::new(),
            };
            if has_condition(&r.conditions, &w) {
                Ok(())
            } else {
                Err(format!("{k} has no Accepted condition"))
            }
        }
        "HTTPRouteMustHaveLatestConditions" | "BackendTLSPolicyMustHaveLatestConditions" => {
            // Every parent's (route) or ancestor's (policy) conditions are current.
            let k = if name.starts_with("HTTPRoute") {
                key("HTTPRoute", s(args, "rNN")?)
            } else {
                key("BackendTLSPolicy", s(args, "policyNN")?)
            };
            let r = view.resource(&k)?;
            for p in r.parents.iter().chain(&r.ancestors) {
                view.latest(&k, &p.conditions)?;
            }
            Ok(())
        }
        "HTTPRouteMustHaveParents" | "TCPRouteMustHaveParents" | "UDPRouteMustHaveParents" => {
            let rk = key(route_kind(name), s(args, "routeName")?);
            let namespace_required = args
                .get("namespaceRequired")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let r = view.resource(&rk)?;
            for p in &r.parents {
                view.latest(&rk, &p.conditions)?;
            }
            for want in args
                .get("parents")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                let pr = want.get("parentRef").ok_or("parent without parentRef")?;
                let (group, kind, wns, wname) = if str_of(pr, "call") == Some("parentRefTo") {
                    let target = pr
                        .get("args")
                        .and_then(|a| a.get(0))
                        .and_then(Value::as_str)
                        .ok_or("parentRefTo without argument")?;
                    let (ns, n) = nn(target);
                    (
                        "gateway.networking.k8s.io".to_string(),
                        "Gateway".to_string(),
                        Some(ns),
                        n,
                    )
                } else {
                    (
                        str_of(pr, "group")
                            .unwrap_or("gateway.networking.k8s.io")
                            .to_string(),
                        str_of(pr, "kind").unwrap_or("Gateway").to_string(),
                        str_of(pr, "namespace").map(str::to_string),
                        str_of(pr, "name").unwrap_or_default().to_string(),
                    )
                };
                let controller = str_of(want, "controllerName").unwrap_or(CONTROLLER_NAME);
                let wconds: Vec<WantCondition> = want
                    .get("conditions")
                    .and_then(Value::as_sequence)
                    .into_iter()
                    .flatten()
                    .filter_map(WantCondition::from_yaml)
                    .collect();
                let found = r.parents.iter().any(|p| {
                    p.controller_name == controller
                        && p.parent_ref
                            .group
                            .as_deref()
                            .unwrap_or("gateway.networking.k8s.io")
                            == group
                        && p.parent_ref.kind.as_deref().unwrap_or("Gateway") == kind
                        && p.parent_ref.name == wname
                        && (p.parent_ref.namespace == wns
                            || (p.parent_ref.namespace.is_none() && !namespace_required))
                        && wconds.iter().all(|c| has_condition(&p.conditions, c))
                });
                if !found {
                    return Err(format!(
                        "{rk} has no parent {kind} {wname} with [{}]; parents: {}",
                        wconds
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", "),
                        r.parents
                            .iter()
                            .map(|p| format!(
                                "{}: [{}]",
                                p.parent_ref.name,
                                fmt_conds(&p.conditions)
                            ))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ));
                }
            }
            Ok(())
        }
        "BackendTLSPolicyMustHaveCondition" | "BackendTLSPolicyMustHaveAcceptedConditionTrue" => {
            let k = key("BackendTLSPolicy", s(args, "policyNN")?);
            let want = if name.ends_with("AcceptedConditionTrue") {
                WantCondition {
                    type_: "Accepted".into(),
                    status: "True".into(),
                    reason: "Accepted".into(),
                }
            } else {
                cond(args, "condition")?
            };
            let (gns, gname) = nn(s(args, "gwNN")?);
            let r = view.resource(&k)?;
            for a in &r.ancestors {
                view.latest(&k, &a.conditions)?;
                if a.parent_ref.name == gname
                    && a.parent_ref.namespace.as_deref().is_none_or(|n| n == gns)
                    && has_condition(&a.conditions, &want)
                {
                    return Ok(());
                }
            }
            Err(format!("{k} ancestor {gns}/{gname} lacks {want}"))
        }
        other => Err(format!("\u{0}unsupported check {other}")),
    })();
    match r {
        Err(e) if e.starts_with('\u{0}') => Outcome::Unsupported(e[1..].to_string()),
        other => to_outcome(other),
    }
}
