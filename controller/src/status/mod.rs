//! The Kubernetes status writer: turns a [`StatusReport`] into each object's `status`, keeps
//! `lastTransitionTime` of conditions whose status did not change, keeps route parents and
//! policy ancestors written by other controllers, and patches an object only when what it
//! says differs from what it should say (no write storms: a reconcile of unchanged state sends
//! nothing). Patches are JSON merge patches on the `status` subresource, with the object's
//! resourceVersion as precondition and field manager `sluice-controller`.

pub mod programmed;

use crate::CONTROLLER_NAME;
use crate::provider::kubernetes::{KubeStore, Shelves};
use crate::resources::{Key, Store};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use sluice_gateway_crds::{
    BackendTlsPolicy, Gateway, GatewayClass, GrpcRoute, HttpRoute, ListenerSet, TcpRoute, TlsRoute,
    UdpRoute,
};
use sluice_ir::status::{Condition, ResourceStatus, RouteParentStatus, StatusReport};
use std::collections::BTreeMap;
use std::fmt::Debug;

/// Field manager of every write.
pub const FIELD_MANAGER: &str = "sluice-controller";

/// What one [`StatusWriter::write`] pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// Objects patched.
    pub patched: usize,
    /// Objects whose patch hit a newer resourceVersion (retried on the next pass).
    pub conflicts: usize,
    /// Other failures (logged).
    pub failed: usize,
}

/// Writes status to the API server.
#[derive(Clone)]
pub struct StatusWriter {
    client: Client,
    controller_name: String,
}

impl Debug for StatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter")
            .field("controller_name", &self.controller_name)
            .finish()
    }
}

/// The `status` an object should have, and the top-level keys Sluice manages in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// Managed keys and their values (`Value::Null` removes a key).
    pub fields: Map<String, Value>,
}

impl StatusWriter {
    /// A writer for the given controllerName (route parents and policy ancestors of other
    /// controllers are left alone).
    pub fn new(client: Client) -> Self {
        StatusWriter {
            client,
            controller_name: CONTROLLER_NAME.to_string(),
        }
    }

    /// Patches every object whose status differs from `report`. Routes and policies that
    /// carry stale entries of ours (no longer attached) are cleaned up too. Patched objects
    /// are put back into `store` so the next pass compares against them.
    pub async fn write(&self, report: &StatusReport, store: &KubeStore) -> WriteSummary {
        let now = now_rfc3339();
        let by_ref: BTreeMap<(&str, &str, &str), &ResourceStatus> = report
            .resources
            .iter()
            .map(|r| {
                (
                    (
                        r.object.kind.as_str(),
                        r.object.namespace.as_str(),
                        r.object.name.as_str(),
                    ),
                    r,
                )
            })
            .collect();
        let mut todo: Vec<(&'static str, Key, String, Map<String, Value>)> = Vec::new();
        {
            let sh = store.lock();
            let cn = self.controller_name.as_str();
            let mut plan = |kind: &'static str, key: &Key, obj: Value| {
                let st = by_ref
                    .get(&(kind, key.namespace.as_str(), key.name.as_str()))
                    .copied();
                let existing = obj.get("status").cloned().unwrap_or(Value::Null);
                let Some(fields) = desired_status(kind, st, &existing, cn, &now) else {
                    return;
                };
                if differs(&existing, &fields) {
                    let rv = obj["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    todo.push((kind, key.clone(), rv, fields));
                }
            };
            fn each<K: Serialize>(
                store: &Store<K>,
                kind: &'static str,
                plan: &mut impl FnMut(&'static str, &Key, Value),
            ) {
                for (k, o) in store {
                    if let Ok(v) = serde_json::to_value(o) {
                        plan(kind, k, v);
                    }
                }
            }
            let r = &sh.resources;
            each(&r.gateway_classes, "GatewayClass", &mut plan);
            each(&r.gateways, "Gateway", &mut plan);
            each(&r.listener_sets, "ListenerSet", &mut plan);
            each(&r.http_routes, "HTTPRoute", &mut plan);
            each(&r.grpc_routes, "GRPCRoute", &mut plan);
            each(&r.tls_routes, "TLSRoute", &mut plan);
            each(&r.tcp_routes, "TCPRoute", &mut plan);
            each(&r.udp_routes, "UDPRoute", &mut plan);
            each(&r.backend_tls_policies, "BackendTLSPolicy", &mut plan);
            each(&r.ingresses, "Ingress", &mut plan);
        }
        let mut summary = WriteSummary::default();
        for (kind, key, rv, fields) in todo {
            let body =
                json!({"metadata": {"resourceVersion": rv}, "status": Value::Object(fields)});
            let result = match kind {
                "GatewayClass" => {
                    self.patch::<GatewayClass>(
                        store,
                        &key,
                        body,
                        |s| &mut s.resources.gateway_classes,
                        Api::all(self.client.clone()),
                    )
                    .await
                }
                "Gateway" => {
                    self.patch::<Gateway>(
                        store,
                        &key,
                        body,
                        |s| &mut s.resources.gateways,
                        self.ns_api(&key),
                    )
                    .await
                }
                "ListenerSet" => {
                    self.patch::<ListenerSet>(
                        store,
                        &key,
                        body,
                        |s| &mut s.resources.listener_sets,
                        self.ns_api(&key),
                    )
                    .await
                }
                "HTTPRoute" => {
                    self.patch::<HttpRoute>(
                        store,
                        &key,
                        body,
                        |s| &mut s.resources.http_routes,
                        self.ns_api(&key),
                    )
                    .await
                }
                "GRPCRoute" => {
                    self.patch::<GrpcRoute>(
                        store,
                        &key,
                        body,
                        |s| &mut s.resources.grpc_routes,
                        self.ns_api(&key),
                    )
                    .await
                }
                "TLSRoute" => {
                    self.patch::<TlsRoute>(
                        store,
                        &key,
                        body,
                        |s| &mut s.resources.tls_routes,
                        self.ns_api(&key),
                    )
                    .await
                }
                "TCPRoute" => {
                    self.patch::<TcpRoute>(
                        store,
                        &key,
                        body,
                        |s| &mut s.resources.tcp_routes,
                        self.ns_api(&key),
                    )
                    .await
                }
                "UDPRoute" => {
                    self.patch::<UdpRoute>(
                        store,
                        &key,
                        body,
                        |s| &mut s.resources.udp_routes,
                        self.ns_api(&key),
                    )
                    .await
                }
                "BackendTLSPolicy" => {
                    self.patch::<BackendTlsPolicy>(
                        store,
                        &key,
                        body,
                        |s| &mut s.resources.backend_tls_policies,
                        self.ns_api(&key),
                    )
                    .await
                }
                "Ingress" => {
                    self.patch::<Ingress>(
                        store,
                        &key,
                        body,
                        |s| &mut s.resources.ingresses,
                        self.ns_api(&key),
                    )
                    .await
                }
                _ => continue,
            };
            match result {
                Ok(()) => {
                    tracing::debug!(kind, object = %key, "status written");
                    summary.patched += 1;
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    tracing::debug!(kind, object = %key, "status patch conflicted with a newer version; retrying with it");
                    summary.conflicts += 1;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    tracing::warn!(kind, object = %key, error = %e, "status patch failed");
                    summary.failed += 1;
                }
            }
        }
        summary
    }

    fn ns_api<K>(&self, key: &Key) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        Api::namespaced(self.client.clone(), &key.namespace)
    }

    async fn patch<K>(
        &self,
        store: &KubeStore,
        key: &Key,
        body: Value,
        shelf: fn(&mut Shelves) -> &mut Store<K>,
        api: Api<K>,
    ) -> Result<(), kube::Error>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
    {
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..Default::default()
        };
        let updated = api
            .patch_status(&key.name, &pp, &Patch::Merge(&body))
            .await?;
        let mut sh = store.lock();
        let shelf = shelf(&mut sh);
        // Keep the newer of the stored object and the patch result.
        let newer = |a: &K, b: &K| {
            let rv = |o: &K| {
                o.meta()
                    .resource_version
                    .as_deref()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            rv(a) >= rv(b)
        };
        match shelf.get(key) {
            Some(cur) if !newer(&updated, cur) => {}
            _ => {
                let mut o = updated;
                o.meta_mut().managed_fields = None;
                shelf.insert(key.clone(), o);
            }
        }
        Ok(())
    }
}

/// The current time as Kubernetes writes it (RFC 3339, seconds, UTC).
pub fn now_rfc3339() -> String {
    let t = k8s_openapi::jiff::Timestamp::now();
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// True when `existing` (an object's `status`) does not say what `fields` say.
pub fn differs(existing: &Value, fields: &Map<String, Value>) -> bool {
    fields.iter().any(|(k, v)| {
        let cur = existing.get(k).unwrap_or(&Value::Null);
        match v {
            Value::Null => !cur.is_null(),
            _ => cur != v,
        }
    })
}

/// The managed status fields of one object of `kind` (None: Sluice writes nothing to it).
/// `existing` is its current `status`; conditions keep their lastTransitionTime when their
/// status is unchanged.
pub fn desired_status(
    kind: &str,
    st: Option<&ResourceStatus>,
    existing: &Value,
    controller_name: &str,
    now: &str,
) -> Option<Map<String, Value>> {
    let mut m = Map::new();
    match kind {
        "GatewayClass" => {
            let st = st?;
            m.insert(
                "conditions".into(),
                conditions(&st.conditions, &existing["conditions"], now),
            );
        }
        "Gateway" | "ListenerSet" => {
            let st = st?;
            m.insert(
                "conditions".into(),
                conditions(&st.conditions, &existing["conditions"], now),
            );
            let listeners: Vec<Value> = st
                .listeners
                .iter()
                .map(|l| {
                    let old = existing["listeners"]
                        .as_array()
                        .and_then(|a| a.iter().find(|x| x["name"] == l.name.as_str()))
                        .map_or(Value::Null, |x| x["conditions"].clone());
                    json!({
                        "name": l.name,
                        "supportedKinds": l.supported_kinds.iter().map(|k| json!({"group": k.group, "kind": k.kind})).collect::<Vec<_>>(),
                        "attachedRoutes": l.attached_routes,
                        "conditions": conditions(&l.conditions, &old, now),
                    })
                })
                .collect();
            m.insert(
                "listeners".into(),
                if listeners.is_empty() {
                    Value::Null
                } else {
                    Value::Array(listeners)
                },
            );
            if kind == "Gateway" {
                let addrs: Vec<Value> = st
                    .addresses
                    .iter()
                    .map(|a| json!({"type": a.type_, "value": a.value}))
                    .collect();
                m.insert(
                    "addresses".into(),
                    if addrs.is_empty() {
                        Value::Null
                    } else {
                        Value::Array(addrs)
                    },
                );
                if let Some(n) = st.attached_listener_sets {
                    m.insert("attachedListenerSets".into(), json!(n));
                }
            }
        }
        "HTTPRoute" | "GRPCRoute" | "TLSRoute" | "TCPRoute" | "UDPRoute" => {
            let ours = st.map(|s| s.parents.as_slice()).unwrap_or_default();
            let merged = merge_parents(
                &existing["parents"],
                ours,
                controller_name,
                now,
                "parentRef",
            );
            if merged.is_empty() && existing["parents"].is_null() {
                return None;
            }
            m.insert("parents".into(), Value::Array(merged));
        }
        "BackendTLSPolicy" => {
            let ours = st.map(|s| s.ancestors.as_slice()).unwrap_or_default();
            let merged = merge_parents(
                &existing["ancestors"],
                ours,
                controller_name,
                now,
                "ancestorRef",
            );
            if merged.is_empty() && existing["ancestors"].is_null() {
                return None;
            }
            m.insert("ancestors".into(), Value::Array(merged));
        }
        "Ingress" => {
            let st = st?;
            let ingress: Vec<Value> = st
                .load_balancer
                .iter()
                .map(|a| {
                    if a.parse::<std::net::IpAddr>().is_ok() {
                        json!({"ip": a})
                    } else {
                        json!({"hostname": a})
                    }
                })
                .collect();
            let lb = if ingress.is_empty() {
                json!({})
            } else {
                json!({"ingress": ingress})
            };
            m.insert("loadBalancer".into(), lb);
        }
        _ => return None,
    }
    Some(m)
}

/// metav1.Condition list; lastTransitionTime kept from `old` when the status is unchanged.
fn conditions(conds: &[Condition], old: &Value, now: &str) -> Value {
    Value::Array(
        conds
            .iter()
            .map(|c| {
                let status = c.status.to_string();
                let prev = old
                    .as_array()
                    .and_then(|a| a.iter().find(|x| x["type"] == c.type_.as_str()));
                let ltt = prev
                    .filter(|p| p["status"] == status.as_str())
                    .and_then(|p| p["lastTransitionTime"].as_str())
                    .unwrap_or(now);
                let reason = if c.reason.is_empty() {
                    "Unknown"
                } else {
                    c.reason.as_str()
                };
                let mut message = c.message.clone();
                if message.len() > 32_000 {
                    let mut cut = 32_000;
                    while !message.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    message.truncate(cut);
                }
                json!({
                    "type": c.type_,
                    "status": status,
                    "reason": reason,
                    "message": message,
                    "observedGeneration": c.observed_generation,
                    "lastTransitionTime": ltt,
                })
            })
            .collect(),
    )
}

/// Route `parents` (or policy `ancestors`): entries of other controllers stay where they
/// are; ours are replaced in place, dropped when no longer desired, appended when new.
fn merge_parents(
    existing: &Value,
    ours: &[RouteParentStatus],
    controller_name: &str,
    now: &str,
    ref_field: &str,
) -> Vec<Value> {
    let desired: Vec<(Value, Value)> = ours
        .iter()
        .map(|p| {
            let r = serde_json::to_value(&p.parent_ref).unwrap_or(Value::Null);
            (r, p.conditions.to_vec())
        })
        .map(|(r, conds)| {
            let old = existing
                .as_array()
                .and_then(|a| {
                    a.iter().find(|x| {
                        x["controllerName"] == controller_name && same_ref(&x[ref_field], &r)
                    })
                })
                .map_or(Value::Null, |x| x["conditions"].clone());
            let entry = json!({
                ref_field: r,
                "controllerName": controller_name,
                "conditions": conditions(&conds, &old, now),
            });
            (r, entry)
        })
        .collect();
    let mut used = vec![false; desired.len()];
    let mut out = Vec::new();
    for x in existing.as_array().into_iter().flatten() {
        if x["controllerName"] != controller_name {
            out.push(x.clone());
            continue;
        }
        if let Some(i) = desired
            .iter()
            .position(|(r, _)| same_ref(&x[ref_field], r))
            .filter(|i| !used[*i])
        {
            used[i] = true;
            out.push(desired[i].1.clone());
        }
    }
    for (i, (_, e)) in desired.into_iter().enumerate() {
        if !used[i] {
            out.push(e);
        }
    }
    out
}

/// ParentReference equality with the API defaults applied (group gateway.networking.k8s.io,
/// kind Gateway; the API server fills them in, the translator may leave them out).
fn same_ref(a: &Value, b: &Value) -> bool {
    let norm = |v: &Value| {
        let s = |k: &str, d: &str| v.get(k).and_then(Value::as_str).unwrap_or(d).to_string();
        (
            s("group", sluice_gateway_crds::GROUP),
            s("kind", "Gateway"),
            s("namespace", ""),
            s("name", ""),
            s("sectionName", ""),
            v.get("port").and_then(Value::as_i64),
        )
    };
    norm(a) == norm(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_ir::ObjectRef;
    use sluice_ir::status::ParentRef;

    fn route_status(accepted: bool) -> ResourceStatus {
        let mut st = ResourceStatus::new(ObjectRef::new("HTTPRoute", "ns", "r"), 3);
        st.parents.push(RouteParentStatus {
            parent_ref: ParentRef {
                name: "gw".into(),
                ..Default::default()
            },
            controller_name: CONTROLLER_NAME.into(),
            conditions: vec![Condition::new("Accepted", accepted, "Accepted", "", 3)],
        });
        st
    }

    #[test]
    fn other_controllers_parents_stay_and_transition_times_are_kept() {
        let theirs = json!({"parentRef": {"name": "other"}, "controllerName": "example.com/other",
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                "observedGeneration": 3, "lastTransitionTime": "2020-01-01T00:00:00Z"}]});
        let existing = json!({"parents": [theirs]});
        let st = route_status(true);
        let f = desired_status("HTTPRoute", Some(&st), &existing, CONTROLLER_NAME, "T1").unwrap();
        let parents = f["parents"].as_array().unwrap();
        assert_eq!(parents.len(), 2);
        assert_eq!(parents[0], theirs);
        assert_eq!(parents[1]["conditions"][0]["lastTransitionTime"], "T1");
        let written = json!({"parents": parents});
        // The same report later: nothing to write.
        let again =
            desired_status("HTTPRoute", Some(&st), &written, CONTROLLER_NAME, "T2").unwrap();
        assert!(!differs(&written, &again));
        // A status flip gets a new transition time; ours vanish when no longer attached.
        let flipped = desired_status(
            "HTTPRoute",
            Some(&route_status(false)),
            &written,
            CONTROLLER_NAME,
            "T3",
        )
        .unwrap();
        assert_eq!(
            flipped["parents"][1]["conditions"][0]["lastTransitionTime"],
            "T3"
        );
        let gone = desired_status("HTTPRoute", None, &written, CONTROLLER_NAME, "T4").unwrap();
        assert_eq!(gone["parents"].as_array().unwrap(), &vec![theirs]);
    }
}
