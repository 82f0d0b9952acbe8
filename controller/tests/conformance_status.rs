//! Status conformance: for every Gateway API conformance test of the profiles Sluice
//! implements, translate the upstream base manifests plus the test's manifests (with the class
//! rewritten and the Secrets the suite creates) and evaluate each status `check:` step of
//! `../shared/conformance/cases.yaml` against the translator's status report, with the
//! semantics of the upstream helpers (conditions by type/status/reason, "" = any reason;
//! expected supported kinds a subset; parents found by name/namespace; ...).
//!
//! Steps after a `mutate:` step (the suite patches objects there) are not evaluated. A test
//! listed in `KNOWN_FAILING` must fail (so the list stays honest); any other failure fails
//! this test. `CONFORMANCE_ONLY=Name` restricts the run to matching tests, `CONFORMANCE_VERBOSE=1`
//! prints every evaluated check.

use anyhow::{Context, Result, anyhow, bail};
use serde_yaml::Value;
use sluice_controller::resources::Object;
use sluice_controller::{Resources, TranslateOptions, translate};
use sluice_ir::status::{Condition, ListenerStatus, ResourceStatus, StatusReport};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Profiles whose tests are evaluated.
const PROFILES: &[&str] = &[
    "GATEWAY-HTTP",
    "GATEWAY-GRPC",
    "GATEWAY-TLS",
    "GATEWAY-TCP",
    "GATEWAY-UDP",
];

/// Tests whose status checks are known not to pass yet, with the reason.
const KNOWN_FAILING: &[(&str, &str)] = &[];

const CLASS: &str = "sluice-conformance";

/// Steps whose transcription in cases.yaml names the wrong object: (test, line, field, value).
/// HTTPRouteHostnameIntersection line 321 checks the route attached to the `-all` Gateway (a
/// loop variable upstream); the transcription kept the earlier `no-intersecting-hosts`, which
/// does not reference that Gateway at all.
/// TLSRouteHostnameIntersection lines 91, 129 and 167 check the routes of the Gateway named in
/// the step (again a loop variable upstream; `$routeNN` = the preceding step's routeNNs).
const TRANSCRIPTION_FIXES: &[(&str, i64, &str, &str)] = &[
    (
        "HTTPRouteHostnameIntersection",
        321,
        "routeNN",
        "gateway-conformance-infra/httproute-hostname-intersection-all",
    ),
    ("TLSRouteHostnameIntersection", 91, "routeNN", "$routeNN"),
    ("TLSRouteHostnameIntersection", 129, "routeNN", "$routeNN"),
    ("TLSRouteHostnameIntersection", 167, "routeNN", "$routeNN"),
];

/// Steps from which on the upstream test has changed objects in code without a `mutate:` step
/// in cases.yaml: (test, line, what it did).
const UNRECORDED_MUTATIONS: &[(&str, i64, &str)] = &[
    ("TCPRouteReferenceGrant", 89, "deletes the ReferenceGrant"),
    ("UDPRouteReferenceGrant", 88, "deletes the ReferenceGrant"),
    (
        "TCPRouteMultipleRoutesAttachment",
        99,
        "creates the newer TCPRoute",
    ),
    (
        "UDPRouteMultipleRoutesAttachment",
        102,
        "creates the newer UDPRoute",
    ),
];

/// Tests for implementations that lack a feature Sluice has (the suite skips them).
const NOT_APPLICABLE: &[(&str, &str)] = &[
    (
        "TLSRouteListenerTerminateNotSupported",
        "Sluice supports TLSRouteModeTerminate",
    ),
    (
        "TLSRouteListenerMixedTerminationNotSupported",
        "Sluice supports TLSRouteModeMixed",
    ),
];

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance")
}

fn load_file(res: &mut Resources, path: &Path, rewrite: &dyn Fn(String) -> String) -> Result<()> {
    let text =
        rewrite(std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?);
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = <Value as serde::Deserialize>::deserialize(doc)?;
        if v.is_null() {
            continue;
        }
        let json: serde_json::Value = serde_json::to_value(v)?;
        match Object::from_value(json) {
            Ok(Some(mut o)) => {
                o.default_namespace("default");
                res.insert(o, None)
                    .map_err(|e| anyhow!("{}: {e}", path.display()))?;
            }
            Ok(None) => {}
            Err(e) => bail!("{}: {e}", path.display()),
        }
    }
    Ok(())
}

fn pool() -> Vec<IpAddr> {
    (1..=250u8).map(|i| IpAddr::from([10, 1, 0, i])).collect()
}

fn setup(test: &Value) -> Result<(Resources, TranslateOptions)> {
    let mut res = Resources::default();
    let opts = TranslateOptions {
        address_pool: pool(),
        ..Default::default()
    };
    let rewrite = |s: String| {
        s.replace("{GATEWAY_CLASS_NAME}", CLASS)
            .replace(
                "{GATEWAY_CONTROLLER_NAME}",
                sluice_controller::CONTROLLER_NAME,
            )
            .replace("PLACEHOLDER_USABLE_ADDRS", "10.1.0.250")
            .replace("PLACEHOLDER_UNUSABLE_ADDRS", "192.0.2.1")
    };
    load_file(
        &mut res,
        &shared().join("upstream/base/manifests.yaml"),
        &rewrite,
    )?;
    for m in test["manifests"].as_sequence().into_iter().flatten() {
        let m = m.as_str().unwrap_or_default();
        load_file(&mut res, &shared().join("upstream").join(m), &rewrite)?;
    }
    let secrets = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/conformance-secrets.yaml");
    load_file(&mut res, &secrets, &rewrite)?;
    let gc = serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": CLASS},
        "spec": {"controllerName": sluice_controller::CONTROLLER_NAME}
    });
    if let Some(o) = Object::from_value(gc)? {
        let _ = res.insert(o, None);
    }
    Ok((res, opts))
}

fn nn(s: &str) -> (&str, &str) {
    let s = s.strip_suffix(".Name").unwrap_or(s);
    s.split_once('/').unwrap_or(("", s))
}

fn get<'a>(st: &'a StatusReport, kind: &str, name: &str) -> Result<&'a ResourceStatus> {
    let (ns, n) = nn(name);
    st.get(kind, ns, n)
        .ok_or_else(|| anyhow!("no status for {kind} {name}"))
}

/// Upstream `findConditionInList`: same type, status ("" = any) and reason ("" = any).
fn has_condition(conds: &[Condition], want: &Value) -> bool {
    let ty = want["type"].as_str().unwrap_or_default();
    let status = want["status"].as_str().unwrap_or_default();
    let reason = want["reason"].as_str().unwrap_or_default();
    conds.iter().any(|c| {
        c.type_ == ty
            && (status.is_empty() || c.status.to_string() == status)
            && (reason.is_empty() || c.reason == reason)
    })
}

fn show(conds: &[Condition]) -> String {
    conds
        .iter()
        .map(|c| format!("{}={}/{}", c.type_, c.status, c.reason))
        .collect::<Vec<_>>()
        .join(", ")
}

fn want_conditions(v: &Value) -> Vec<Value> {
    if v.get("call").and_then(Value::as_str) == Some("generateAcceptedListenerConditions") {
        return ["Accepted", "Programmed", "ResolvedRefs"]
            .iter()
            .map(|t| {
                let mut m = serde_yaml::Mapping::new();
                m.insert("type".into(), (*t).into());
                m.insert("status".into(), "True".into());
                m.insert("reason".into(), (*t).into());
                Value::Mapping(m)
            })
            .collect();
    }
    v.as_sequence().cloned().unwrap_or_default()
}

fn require_conditions(what: &str, conds: &[Condition], wants: &[Value]) -> Result<()> {
    for w in wants {
        if !has_condition(conds, w) {
            bail!(
                "{what}: missing condition {}={} reason {:?}; has [{}]",
                w["type"].as_str().unwrap_or_default(),
                w["status"].as_str().unwrap_or_default(),
                w["reason"].as_str().unwrap_or_default(),
                show(conds)
            );
        }
    }
    Ok(())
}

fn latest(r: &ResourceStatus) -> Result<()> {
    for c in &r.conditions {
        if c.observed_generation != r.generation {
            bail!("{}: condition {} is stale", r.object, c.type_);
        }
    }
    Ok(())
}

/// Upstream `gatewayListenersMatch`.
fn listeners_match(what: &str, actual: &[ListenerStatus], expected: &Value) -> Result<()> {
    let expected = expected.as_sequence().cloned().unwrap_or_default();
    if expected.len() != actual.len() {
        bail!(
            "{what}: expected {} listeners, got {}",
            expected.len(),
            actual.len()
        );
    }
    for e in &expected {
        let name = e["name"].as_str().unwrap_or_default();
        let a = actual
            .iter()
            .find(|l| l.name == name)
            .ok_or_else(|| anyhow!("{what}: no status for listener {name}"))?;
        let kinds: Vec<String> = match e["supportedKinds"].as_sequence() {
            Some(s) => s
                .iter()
                .map(|k| k["kind"].as_str().unwrap_or_default().to_string())
                .collect(),
            None => vec!["HTTPRoute".into()],
        };
        if kinds.is_empty() && !a.supported_kinds.is_empty() {
            bail!(
                "{what}: listener {name}: expected no supported kinds, got {:?}",
                a.supported_kinds
            );
        }
        for k in &kinds {
            if !a.supported_kinds.iter().any(|x| &x.kind == k) {
                bail!("{what}: listener {name}: {k} missing from supported kinds");
            }
        }
        let want_routes = e["attachedRoutes"].as_i64().unwrap_or(0);
        if i64::from(a.attached_routes) != want_routes {
            bail!(
                "{what}: listener {name}: attachedRoutes {} != {want_routes}",
                a.attached_routes
            );
        }
        require_conditions(
            &format!("{what} listener {name}"),
            &a.conditions,
            &want_conditions(&e["conditions"]),
        )?;
    }
    Ok(())
}

fn route_kind(check: &str) -> &'static str {
    if check.starts_with("TLSRoute") || check == "GatewayAndTLSRoutesMustBeAccepted" {
        "TLSRoute"
    } else if check.starts_with("TCPRoute") || check == "GatewayAndTCPRoutesMustBeAccepted" {
        "TCPRoute"
    } else if check.starts_with("UDPRoute") || check == "GatewayAndUDPRoutesMustBeAccepted" {
        "UDPRoute"
    } else if check.starts_with("GRPCRoute") {
        "GRPCRoute"
    } else {
        "HTTPRoute"
    }
}

fn all_listeners_ready(gw: &ResourceStatus, kind: &str) -> Result<()> {
    let wants: Vec<Value> = ["ResolvedRefs", "Accepted", "Programmed"]
        .iter()
        .map(|t| serde_yaml::from_str(&format!("{{type: {t}, status: 'True'}}")).unwrap())
        .collect();
    for l in &gw.listeners {
        require_conditions(
            &format!("{kind} {} listener {}", gw.object, l.name),
            &l.conditions,
            &wants,
        )?;
    }
    Ok(())
}

/// Evaluates one check step. `Ok(false)` = not a status check (skipped).
fn check(
    res: &Resources,
    st: &StatusReport,
    step: &Value,
    route_nns: &mut Vec<String>,
    default_route_kind: &str,
) -> Result<bool> {
    let name = step["check"].as_str().unwrap_or_default();
    let s = |k: &str| step[k].as_str().unwrap_or_default().to_string();
    match name {
        "NamespacesMustBeReady" => {
            let namespaces: Vec<&str> = step["namespaces"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            for (key, gw) in &res.gateways {
                let skip = gw
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("gateway-api/skip-this-for-readiness"))
                    .is_some_and(|v| v == "true");
                if skip || !namespaces.contains(&key.namespace.as_str()) {
                    continue;
                }
                let g = get(st, "Gateway", &key.to_string())?;
                latest(g)?;
                for t in ["Accepted", "Programmed"] {
                    if !g.condition(t).is_some_and(|c| c.is_true()) {
                        bail!("Gateway {key} is not {t}: [{}]", show(&g.conditions));
                    }
                }
            }
        }
        "BackendTLSPolicyMustHaveCondition" | "BackendTLSPolicyMustHaveAcceptedConditionTrue" => {
            let want: Value = if name.ends_with("AcceptedConditionTrue") {
                serde_yaml::from_str("{type: Accepted, status: 'True', reason: Accepted}")?
            } else {
                step["condition"].clone()
            };
            let gw_nn = s("gwNN");
            let (gns, gn) = nn(&gw_nn);
            // `$policyNN`: every policy of the test (a loop variable upstream).
            let policies: Vec<String> = if s("policyNN") == "$policyNN" {
                res.backend_tls_policies
                    .keys()
                    .map(|k| k.to_string())
                    .collect()
            } else {
                vec![s("policyNN")]
            };
            for pnn in policies {
                let p = get(st, "BackendTLSPolicy", &pnn)?;
                let ok = p.ancestors.iter().any(|a| {
                    a.parent_ref.name == gn
                        && a.parent_ref.namespace.as_deref().is_none_or(|n| n == gns)
                        && a.conditions
                            .iter()
                            .all(|c| c.observed_generation == p.generation)
                        && has_condition(&a.conditions, &want)
                });
                if !ok {
                    bail!(
                        "BackendTLSPolicy {pnn}: no ancestor {gw_nn} with {}={} {:?}; ancestors: {:?}",
                        want["type"].as_str().unwrap_or_default(),
                        want["status"].as_str().unwrap_or_default(),
                        want["reason"].as_str().unwrap_or_default(),
                        p.ancestors
                            .iter()
                            .map(|a| (&a.parent_ref.name, show(&a.conditions)))
                            .collect::<Vec<_>>()
                    );
                }
            }
        }
        "GatewayMustHaveCondition" => {
            let gw = get(st, "Gateway", &s("gwNN"))?;
            latest(gw)?;
            require_conditions(
                &s("gwNN"),
                &gw.conditions,
                &[step["expectedCondition"].clone()],
            )?;
        }
        "GatewayMustHaveLatestConditions" => {
            let gw = get(st, "Gateway", &s("gwNN"))?;
            if gw.conditions.is_empty() {
                bail!("{}: no conditions", gw.object);
            }
            latest(gw)?;
        }
        "GWCMustHaveAcceptedConditionAny" | "GatewayClassMustHaveLatestConditions" => {
            let key = if name.starts_with("GWC") {
                s("gwcName")
            } else {
                s("gwcNN")
            };
            let gc = get(st, "GatewayClass", &key)?;
            latest(gc)?;
            if gc.condition("Accepted").is_none() {
                bail!("{key}: no Accepted condition");
            }
        }
        "GatewayStatusMustHaveListeners" => {
            let gw = get(st, "Gateway", &s("gwNN"))?;
            latest(gw)?;
            listeners_match(&s("gwNN"), &gw.listeners, &step["listeners"])?;
        }
        "ListenerSetStatusMustHaveListeners" => {
            let ls = get(st, "ListenerSet", &s("lsNN"))?;
            latest(ls)?;
            listeners_match(&s("lsNN"), &ls.listeners, &step["listeners"])?;
        }
        "GatewayListenerMustHaveConditions" => {
            let gw = get(st, "Gateway", &s("gwName"))?;
            let l = gw
                .listeners
                .iter()
                .find(|l| l.name == s("lName"))
                .ok_or_else(|| anyhow!("no listener {}", s("lName")))?;
            require_conditions(
                &format!("{} {}", s("gwName"), l.name),
                &l.conditions,
                &want_conditions(&step["conditions"]),
            )?;
        }
        "GatewayListenersMustHaveConditions" | "ListenerSetListenersMustHaveConditions" => {
            let (kind, key) = if name.starts_with("Gateway") {
                ("Gateway", s("gwName"))
            } else {
                ("ListenerSet", s("lsName"))
            };
            let r = get(st, kind, &key)?;
            let names: Vec<String> = step["listenerNames"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            let wants = want_conditions(&step["conditions"]);
            for n in &names {
                if !r.listeners.iter().any(|l| &l.name == n) {
                    bail!("{key}: no listener {n}");
                }
            }
            for l in r
                .listeners
                .iter()
                .filter(|l| names.is_empty() || names.contains(&l.name))
            {
                require_conditions(&format!("{key} {}", l.name), &l.conditions, &wants)?;
            }
        }
        "GatewayMustHaveZeroRoutes" => {
            let gw = get(st, "Gateway", &s("gwName"))?;
            let ok = gw.listeners.is_empty()
                || (gw.listeners.len() == 1 && gw.listeners[0].attached_routes == 0);
            if !ok {
                bail!(
                    "{}: expected zero routes, listeners {:?}",
                    s("gwName"),
                    gw.listeners
                        .iter()
                        .map(|l| (&l.name, l.attached_routes))
                        .collect::<Vec<_>>()
                );
            }
        }
        "GatewayMustHaveAttachedListeners" => {
            let gw = get(st, "Gateway", &s("gwName"))?;
            let want = step["expectedCount"].as_i64().unwrap_or(0);
            let got = i64::from(gw.attached_listener_sets.unwrap_or(0));
            if got != want {
                bail!("{}: attachedListenerSets {got} != {want}", s("gwName"));
            }
        }
        "ListenerSetMustHaveCondition" => {
            let ls = get(st, "ListenerSet", &s("lsNN"))?;
            latest(ls)?;
            require_conditions(
                &s("lsNN"),
                &ls.conditions,
                &[step["expectedCondition"].clone()],
            )?;
        }
        "WaitForGatewayAddress" => {
            let gwname = step["gwRef"]["gateway"].as_str().unwrap_or_default();
            let gw = get(st, "Gateway", gwname)?;
            if gw.addresses.is_empty() {
                bail!("{gwname}: no address");
            }
        }
        "GatewayAndHTTPRoutesMustBeAccepted"
        | "GatewayAndRoutesMustBeAccepted"
        | "GatewayAndTLSRoutesMustBeAccepted"
        | "GatewayAndTCPRoutesMustBeAccepted"
        | "GatewayAndUDPRoutesMustBeAccepted"
        | "RoutesAndParentMustBeAccepted" => {
            let (pkind, pname, sections): (String, String, Vec<Option<String>>) =
                if name == "RoutesAndParentMustBeAccepted" {
                    (
                        step["resource"]["groupKind"]["kind"]
                            .as_str()
                            .unwrap_or("Gateway")
                            .to_string(),
                        step["resource"]["resource"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        vec![None],
                    )
                } else {
                    let ls: Vec<Option<String>> = step["gw"]["listeners"]
                        .as_sequence()
                        .map(|s| s.iter().map(|v| v.as_str().map(str::to_string)).collect())
                        .unwrap_or_else(|| vec![None]);
                    (
                        "Gateway".into(),
                        step["gw"]["gateway"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        ls,
                    )
                };
            let parent = get(st, &pkind, &pname)?;
            if pkind == "Gateway" && parent.addresses.is_empty() {
                bail!("{pname}: no address");
            }
            all_listeners_ready(parent, &pkind)?;
            let rk = if name == "GatewayAndRoutesMustBeAccepted"
                || name == "RoutesAndParentMustBeAccepted"
            {
                default_route_kind.to_string()
            } else {
                route_kind(name).to_string()
            };
            let (pns, pn) = nn(&pname);
            *route_nns = step["routeNNs"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            for r in route_nns.iter() {
                let route = get(st, &rk, r)?;
                let (rns, _) = nn(r);
                for _section in &sections {
                    let found = route.parents.iter().any(|p| {
                        p.controller_name == sluice_controller::CONTROLLER_NAME
                            && p.parent_ref.group.as_deref() == Some("gateway.networking.k8s.io")
                            && p.parent_ref.kind.as_deref() == Some(pkind.as_str())
                            && p.parent_ref.name == pn
                            && (p.parent_ref.namespace.as_deref() == Some(pns)
                                || (rns == pns && p.parent_ref.namespace.is_none()))
                            && p.conditions.iter().any(|c| {
                                c.type_ == "Accepted" && c.is_true() && c.reason == "Accepted"
                            })
                    });
                    if !found {
                        bail!(
                            "{rk} {r}: no accepted parent {pkind} {pname}; parents: {:?}",
                            route
                                .parents
                                .iter()
                                .map(|p| (&p.parent_ref.name, show(&p.conditions)))
                                .collect::<Vec<_>>()
                        );
                    }
                }
                for p in &route.parents {
                    for c in &p.conditions {
                        if c.observed_generation != route.generation {
                            bail!("{r}: stale condition {}", c.type_);
                        }
                    }
                }
            }
        }
        "HTTPRouteMustHaveCondition"
        | "TLSRouteMustHaveCondition"
        | "TCPRouteMustHaveCondition"
        | "UDPRouteMustHaveCondition"
        | "HTTPRouteMustHaveResolvedRefsConditionsTrue"
        | "TLSRouteMustHaveResolvedRefsConditionsTrue" => {
            let rk = route_kind(name);
            let want: Value = if name.ends_with("ResolvedRefsConditionsTrue") {
                serde_yaml::from_str("{type: ResolvedRefs, status: 'True', reason: ResolvedRefs}")?
            } else {
                step["condition"].clone()
            };
            let routes: Vec<String> = if s("routeNN") == "$routeNN" {
                route_nns.clone()
            } else {
                vec![s("routeNN")]
            };
            let gw_nn = s("gwNN");
            let (gns, gn) = nn(&gw_nn);
            let (gns, gn) = (gns.to_string(), gn.to_string());
            for r in routes {
                let route = get(st, rk, &r)?;
                let ok = route.parents.iter().any(|p| {
                    p.parent_ref.name == gn
                        && p.parent_ref.namespace.as_deref().is_none_or(|n| n == gns)
                        && has_condition(&p.conditions, &want)
                });
                if !ok {
                    bail!(
                        "{rk} {r}: no parent {gns}/{gn} with {}={} {:?}; parents: {:?}",
                        want["type"].as_str().unwrap_or_default(),
                        want["status"].as_str().unwrap_or_default(),
                        want["reason"].as_str().unwrap_or_default(),
                        route
                            .parents
                            .iter()
                            .map(|p| (&p.parent_ref.name, show(&p.conditions)))
                            .collect::<Vec<_>>()
                    );
                }
            }
        }
        "HTTPRouteMustHaveNoAcceptedParents" | "TLSRouteMustHaveNoAcceptedParents" => {
            let rk = route_kind(name);
            let (ns, n) = nn(step["routeName"].as_str().unwrap_or_default());
            let parents = st
                .get(rk, ns, n)
                .map(|r| r.parents.clone())
                .unwrap_or_default();
            let ok = parents.is_empty()
                || (parents.len() == 1
                    && parents[0]
                        .conditions
                        .iter()
                        .any(|c| c.type_ == "Accepted" && !c.is_true()));
            if !ok {
                bail!(
                    "{rk} {ns}/{n}: expected no accepted parents, got {:?}",
                    parents
                        .iter()
                        .map(|p| (&p.parent_ref.name, show(&p.conditions)))
                        .collect::<Vec<_>>()
                );
            }
        }
        "HTTPRouteMustHaveParents" | "TCPRouteMustHaveParents" | "UDPRouteMustHaveParents" => {
            let rk = route_kind(name);
            let r = s("routeName");
            let route = get(st, rk, &r)?;
            for e in step["parents"].as_sequence().into_iter().flatten() {
                if e.get("call").and_then(Value::as_str) == Some("acceptedParent") {
                    let ok = route.parents.iter().any(|p| {
                        p.conditions
                            .iter()
                            .any(|c| c.type_ == "Accepted" && c.is_true() && c.reason == "Accepted")
                    });
                    if !ok {
                        bail!("{rk} {r}: no accepted parent");
                    }
                    continue;
                }
                let pref = &e["parentRef"];
                let (pns, pn) = if pref.get("call").is_some() {
                    let a = pref["args"][0].as_str().unwrap_or_default();
                    let (x, y) = nn(a);
                    (x.to_string(), y.to_string())
                } else {
                    (
                        pref["namespace"].as_str().unwrap_or_default().to_string(),
                        pref["name"].as_str().unwrap_or_default().to_string(),
                    )
                };
                let wants = want_conditions(&e["conditions"]);
                let ok = route.parents.iter().any(|p| {
                    p.parent_ref.name == pn
                        && p.parent_ref.namespace.as_deref().is_none_or(|n| n == pns)
                        && wants.iter().all(|w| has_condition(&p.conditions, w))
                });
                if !ok {
                    bail!(
                        "{rk} {r}: no parent {pns}/{pn} with {wants:?}; parents: {:?}",
                        route
                            .parents
                            .iter()
                            .map(|p| (&p.parent_ref.name, show(&p.conditions)))
                            .collect::<Vec<_>>()
                    );
                }
            }
        }
        "HTTPRouteMustHaveLatestConditions" => {
            let route = get(st, "HTTPRoute", &s("rNN"))?;
            for p in &route.parents {
                for c in &p.conditions {
                    if c.observed_generation != route.generation {
                        bail!("stale");
                    }
                }
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Substitutes `$tc.<field>` values of a table row into a step.
fn substitute(v: &Value, row: &Value) -> Value {
    match v {
        Value::String(s) if s.starts_with("$tc.") => row[&s[4..]].clone(),
        Value::String(s) if s.contains("$s.") => {
            let (head, field) = s.split_once("$s.").unwrap_or_default();
            Value::from(format!("{head}{}", row[field].as_str().unwrap_or_default()))
        }
        Value::Sequence(xs) => Value::Sequence(xs.iter().map(|x| substitute(x, row)).collect()),
        Value::Mapping(m) => Value::Mapping(
            m.iter()
                .map(|(k, x)| (k.clone(), substitute(x, row)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn run_test(test: &Value, verbose: bool) -> Result<(usize, usize)> {
    let (res, opts) = setup(test)?;
    let t = translate(&res, &opts);
    if let Err(e) = t.snapshot.validate() {
        bail!("snapshot fails validation: {e:?}");
    }
    let default_kind = if test["features"]
        .as_sequence()
        .is_some_and(|f| f.iter().any(|x| x.as_str() == Some("HTTPRoute")))
    {
        "HTTPRoute"
    } else if test["features"]
        .as_sequence()
        .is_some_and(|f| f.iter().any(|x| x.as_str() == Some("GRPCRoute")))
    {
        "GRPCRoute"
    } else {
        "HTTPRoute"
    };
    let mut rows: Vec<Value> = vec![Value::Null];
    let mut route_nns = Vec::new();
    let (mut done, mut skipped) = (0, 0);
    let mut errors = Vec::new();
    for step in test["steps"].as_sequence().into_iter().flatten() {
        let test_name = test["name"].as_str().unwrap_or_default();
        let line = step["line"].as_i64().unwrap_or(0);
        if step.get("mutate").is_some()
            || UNRECORDED_MUTATIONS
                .iter()
                .any(|(t, l, _)| *t == test_name && *l == line)
        {
            break;
        }
        if let Some(r) = step.get("rows").and_then(Value::as_sequence) {
            rows = r.clone();
            continue;
        }
        if step.get("check").is_none() {
            continue;
        }
        let mut step = step.clone();
        for (t, line, field, value) in TRANSCRIPTION_FIXES {
            if *t == test_name && step["line"].as_i64() == Some(*line) {
                step[*field] = Value::from(*value);
            }
        }
        let step = &step;
        let text = serde_yaml::to_string(step)?;
        let uses_row = text.contains("$tc.") || text.contains("$s.");
        let variants: Vec<Value> = if uses_row {
            rows.iter().map(|r| substitute(step, r)).collect()
        } else {
            vec![step.clone()]
        };
        for v in variants {
            match check(&res, &t.status, &v, &mut route_nns, default_kind) {
                Ok(true) => {
                    done += 1;
                    if verbose {
                        eprintln!(
                            "  ok   {} (line {})",
                            v["check"].as_str().unwrap_or_default(),
                            v["line"].as_i64().unwrap_or(0)
                        );
                    }
                }
                Ok(false) => skipped += 1,
                Err(e) => errors.push(format!(
                    "line {}: {} : {e:#}",
                    v["line"].as_i64().unwrap_or(0),
                    v["check"].as_str().unwrap_or_default()
                )),
            }
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n    "));
    }
    Ok((done, skipped))
}

#[test]
fn conformance_status_checks() -> Result<()> {
    let cases_file = shared().join("cases.yaml");
    let cases: Value =
        serde_yaml::from_str(&std::fs::read_to_string(&cases_file).with_context(|| {
            format!(
                "reading {} (the shared conformance data must sit beside the checkout, as in CI)",
                cases_file.display()
            )
        })?)?;
    let only = std::env::var("CONFORMANCE_ONLY").ok();
    let verbose = std::env::var_os("CONFORMANCE_VERBOSE").is_some();
    let mut failures = Vec::new();
    let mut unexpected_passes = Vec::new();
    let (mut total, mut checks, mut skipped) = (0, 0, 0);
    for test in cases["tests"].as_sequence().into_iter().flatten() {
        let name = test["name"].as_str().unwrap_or_default();
        let in_profile = test["profiles"].as_sequence().is_some_and(|ps| {
            ps.iter()
                .any(|p| PROFILES.contains(&p.as_str().unwrap_or_default()))
        });
        if !in_profile || only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        total += 1;
        if verbose {
            eprintln!("{name}");
        }
        if NOT_APPLICABLE.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let known = KNOWN_FAILING.iter().find(|(n, _)| *n == name);
        match run_test(test, verbose) {
            Ok((d, s)) => {
                checks += d;
                skipped += s;
                if known.is_some() {
                    unexpected_passes.push(name.to_string());
                }
            }
            Err(e) if known.is_some() => {
                if verbose {
                    eprintln!("  known failure: {e:#}");
                }
            }
            Err(e) => failures.push(format!("{name}:\n    {e:#}")),
        }
    }
    eprintln!(
        "{total} conformance tests, {checks} status checks passed, {skipped} non-status steps skipped, {} failing, {} known failing",
        failures.len(),
        KNOWN_FAILING.len()
    );
    if !failures.is_empty() || !unexpected_passes.is_empty() {
        bail!(
            "status checks failed:\n{}\nknown-failing tests that now pass (remove them from KNOWN_FAILING): {unexpected_passes:?}",
            failures.join("\n")
        );
    }
    Ok(())
}
