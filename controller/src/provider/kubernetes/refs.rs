//! Which Secrets and ConfigMaps the watched objects reference (TLS certificates, CA bundles,
//! class parameters): only those are kept in the store and sent to the translator.

use crate::resources::{Key, Resources};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeSet;

/// Referenced Secrets and ConfigMaps by namespace/name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct References {
    /// Secrets.
    pub secrets: BTreeSet<Key>,
    /// ConfigMaps.
    pub config_maps: BTreeSet<Key>,
}

impl References {
    /// Every reference held by the objects of `res`: any object reference of core kind
    /// `Secret` or `ConfigMap` anywhere in a Gateway, ListenerSet, BackendTLSPolicy or
    /// GatewayClass (certificateRefs default to kind Secret), and Ingress `tls[].secretName`.
    pub fn of(res: &Resources) -> References {
        let mut r = References::default();
        fn walk_all<'a, K: Serialize + kube::Resource + 'a>(
            r: &mut References,
            objects: impl Iterator<Item = &'a K>,
        ) {
            for o in objects {
                let ns = o.meta().namespace.clone().unwrap_or_default();
                if let Ok(v) = serde_json::to_value(o) {
                    walk(r, &ns, &v["spec"], None);
                }
            }
        }
        walk_all(&mut r, res.gateways.values());
        walk_all(&mut r, res.listener_sets.values());
        walk_all(&mut r, res.backend_tls_policies.values());
        walk_all(&mut r, res.gateway_classes.values());
        for ing in res.ingresses.values() {
            let ns = ing.metadata.namespace.clone().unwrap_or_default();
            for tls in ing.spec.iter().flat_map(|s| s.tls.iter().flatten()) {
                if let Some(name) = tls.secret_name.as_deref().filter(|n| !n.is_empty()) {
                    r.secrets.insert(Key::new(&ns, name));
                }
            }
        }
        r
    }
}

/// Collects `{group: "", kind: Secret|ConfigMap, name, namespace?}` objects; `field` is the key
/// the value sits under (certificateRefs entries default to kind Secret).
fn walk(r: &mut References, ns: &str, v: &Value, field: Option<&str>) {
    match v {
        Value::Object(m) => {
            let group = m.get("group").and_then(Value::as_str).unwrap_or("");
            let kind = m.get("kind").and_then(Value::as_str).or(match field {
                Some("certificateRefs" | "clientCertificateRef") => Some("Secret"),
                _ => None,
            });
            if let (Some(kind), Some(name)) = (kind, m.get("name").and_then(Value::as_str))
                && (group.is_empty() || group == "core")
            {
                let ref_ns = m
                    .get("namespace")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .unwrap_or(ns);
                match kind {
                    "Secret" => {
                        r.secrets.insert(Key::new(ref_ns, name));
                    }
                    "ConfigMap" => {
                        r.config_maps.insert(Key::new(ref_ns, name));
                    }
                    _ => {}
                }
            }
            for (k, x) in m {
                walk(r, ns, x, Some(k));
            }
        }
        Value::Array(a) => {
            for x in a {
                walk(r, ns, x, field);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Object;
    use serde_json::json;

    #[test]
    fn certificate_refs_ingress_tls_and_class_parameters_are_found() {
        let mut res = Resources::default();
        for v in [
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": "g", "namespace": "infra"},
                "spec": {"gatewayClassName": "sluice", "listeners": [
                    {"name": "https", "port": 443, "protocol": "HTTPS", "tls": {"certificateRefs": [
                        {"name": "site"}, {"name": "other", "namespace": "certs", "kind": "Secret", "group": ""}]}}]}}),
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "i", "namespace": "web"},
                "spec": {"tls": [{"secretName": "web-tls"}]}}),
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                "metadata": {"name": "c"},
                "spec": {"controllerName": "sluice.dev/gateway-controller",
                    "parametersRef": {"group": "", "kind": "ConfigMap", "name": "params", "namespace": "sluice-system"}}}),
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
                "metadata": {"name": "p", "namespace": "web"},
                "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "svc"}],
                    "validation": {"hostname": "svc.example", "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "ca"}]}}}),
        ] {
            res.insert(Object::from_value(v).unwrap().unwrap(), None)
                .unwrap();
        }
        let r = References::of(&res);
        let keys = |s: &BTreeSet<Key>| s.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        assert_eq!(
            keys(&r.secrets),
            ["certs/other", "infra/site", "web/web-tls"]
        );
        assert_eq!(keys(&r.config_maps), ["sluice-system/params", "web/ca"]);
    }
}
