//! The resource store every provider fills and the translator reads: typed Kubernetes objects
//! keyed by namespace/name in deterministic order, with where each came from.

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::Resource;
use serde::de::DeserializeOwned;
use sluice_gateway_crds::{
    BackendTlsPolicy, Gateway, GatewayClass, GrpcRoute, HttpRoute, ListenerSet, ReferenceGrant,
    TcpRoute, TlsRoute, UdpRoute,
};
use sluice_ir::ObjectRef;
use sluice_ir::status::{ConfigError, SourceLocation};
use std::collections::BTreeMap;

/// Namespace (empty for cluster-scoped kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Key {
    /// Namespace; empty for cluster-scoped objects.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl Key {
    /// A key.
    pub fn new(namespace: &str, name: &str) -> Self {
        Key {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// Objects of one kind in (namespace, name) order.
pub type Store<K> = BTreeMap<Key, K>;

/// Every object Sluice reads, plus provenance and load errors.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    /// gateway.networking.k8s.io GatewayClass (cluster-scoped).
    pub gateway_classes: Store<GatewayClass>,
    /// Gateway.
    pub gateways: Store<Gateway>,
    /// ListenerSet.
    pub listener_sets: Store<ListenerSet>,
    /// HTTPRoute.
    pub http_routes: Store<HttpRoute>,
    /// GRPCRoute.
    pub grpc_routes: Store<GrpcRoute>,
    /// TLSRoute.
    pub tls_routes: Store<TlsRoute>,
    /// TCPRoute.
    pub tcp_routes: Store<TcpRoute>,
    /// UDPRoute.
    pub udp_routes: Store<UdpRoute>,
    /// ReferenceGrant.
    pub reference_grants: Store<ReferenceGrant>,
    /// BackendTLSPolicy.
    pub backend_tls_policies: Store<BackendTlsPolicy>,
    /// networking.k8s.io Ingress.
    pub ingresses: Store<Ingress>,
    /// IngressClass (cluster-scoped).
    pub ingress_classes: Store<IngressClass>,
    /// Namespace (cluster-scoped; key namespace empty, name = namespace name).
    pub namespaces: Store<Namespace>,
    /// Service.
    pub services: Store<Service>,
    /// discovery.k8s.io EndpointSlice.
    pub endpoint_slices: Store<EndpointSlice>,
    /// Secret.
    pub secrets: Store<Secret>,
    /// ConfigMap.
    pub config_maps: Store<ConfigMap>,
    /// Where each object was defined (standalone mode).
    pub sources: BTreeMap<ObjectRef, SourceLocation>,
    /// Objects or files that could not be loaded; reported on `/status` next to object status.
    pub errors: Vec<ConfigError>,
}

/// Kind-independent operations on a [`Store`].
trait AnyStore {
    fn has(&self, k: &Key) -> bool;
    fn remove_key(&mut self, k: &Key) -> bool;
}

impl<K> AnyStore for Store<K> {
    fn has(&self, k: &Key) -> bool {
        self.contains_key(k)
    }
    fn remove_key(&mut self, k: &Key) -> bool {
        self.remove(k).is_some()
    }
}

/// One typed object of any kind Sluice reads.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Object {
    /// GatewayClass.
    GatewayClass(GatewayClass),
    /// Gateway.
    Gateway(Gateway),
    /// ListenerSet.
    ListenerSet(ListenerSet),
    /// HTTPRoute.
    HttpRoute(HttpRoute),
    /// GRPCRoute.
    GrpcRoute(GrpcRoute),
    /// TLSRoute.
    TlsRoute(TlsRoute),
    /// TCPRoute.
    TcpRoute(TcpRoute),
    /// UDPRoute.
    UdpRoute(UdpRoute),
    /// ReferenceGrant.
    ReferenceGrant(ReferenceGrant),
    /// BackendTLSPolicy.
    BackendTlsPolicy(BackendTlsPolicy),
    /// Ingress.
    Ingress(Ingress),
    /// IngressClass.
    IngressClass(IngressClass),
    /// Namespace.
    Namespace(Namespace),
    /// Service.
    Service(Service),
    /// EndpointSlice.
    EndpointSlice(EndpointSlice),
    /// Secret.
    Secret(Secret),
    /// ConfigMap.
    ConfigMap(ConfigMap),
}

/// Kinds that are valid Kubernetes objects but carry nothing Sluice routes by (a directory of
/// manifests often holds them next to routes). They are accepted and ignored.
pub const IGNORED_KINDS: &[(&str, &str)] = &[
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "DaemonSet"),
    ("apps/v1", "ReplicaSet"),
    ("v1", "Pod"),
    ("v1", "ServiceAccount"),
    ("v1", "Endpoints"),
    ("batch/v1", "Job"),
    ("policy/v1", "PodDisruptionBudget"),
];

/// Why a document could not become an [`Object`].
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// `apiVersion`/`kind` not one Sluice knows (and not in [`IGNORED_KINDS`]).
    #[error("unknown kind {kind:?} in apiVersion {api_version:?}")]
    UnknownKind {
        /// apiVersion.
        api_version: String,
        /// kind.
        kind: String,
    },
    /// A known kind whose content does not fit its schema.
    #[error("{0}")]
    Schema(String),
}

/// Something that can be deserialized into any typed object: a JSON value, or a YAML document
/// (whose errors then carry line numbers).
pub trait ObjectSource {
    /// Deserializes into `K`; the error message names the offending field.
    fn typed<K: DeserializeOwned>(self) -> Result<K, ObjectError>;
}

impl ObjectSource for serde_json::Value {
    fn typed<K: DeserializeOwned>(self) -> Result<K, ObjectError> {
        serde_json::from_value(self).map_err(|e| ObjectError::Schema(e.to_string()))
    }
}

impl Object {
    /// The typed object for a JSON value with `apiVersion` and `kind`. `Ok(None)` for
    /// [`IGNORED_KINDS`].
    pub fn from_value(v: serde_json::Value) -> Result<Option<Object>, ObjectError> {
        let field = |f: &str| {
            v.get(f)
                .and_then(|x| x.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let (api_version, kind) = (field("apiVersion"), field("kind"));
        Object::decode(&api_version, &kind, v)
    }

    /// The typed object of this `apiVersion` and `kind`, deserialized from `v`. `Ok(None)` for
    /// [`IGNORED_KINDS`].
    pub fn decode(
        api_version: &str,
        kind: &str,
        v: impl ObjectSource,
    ) -> Result<Option<Object>, ObjectError> {
        let gw = |versions: &[&str]| {
            versions
                .iter()
                .any(|ver| api_version == format!("gateway.networking.k8s.io/{ver}"))
        };
        let obj = match kind {
            "GatewayClass" if gw(&["v1", "v1beta1"]) => Object::GatewayClass(v.typed()?),
            "Gateway" if gw(&["v1", "v1beta1"]) => Object::Gateway(v.typed()?),
            "ListenerSet" if gw(&["v1"]) => Object::ListenerSet(v.typed()?),
            "HTTPRoute" if gw(&["v1", "v1beta1"]) => Object::HttpRoute(v.typed()?),
            "GRPCRoute" if gw(&["v1"]) => Object::GrpcRoute(v.typed()?),
            "TLSRoute" if gw(&["v1", "v1alpha2", "v1alpha3"]) => Object::TlsRoute(v.typed()?),
            "TCPRoute" if gw(&["v1", "v1alpha2"]) => Object::TcpRoute(v.typed()?),
            "UDPRoute" if gw(&["v1", "v1alpha2"]) => Object::UdpRoute(v.typed()?),
            "ReferenceGrant" if gw(&["v1", "v1beta1"]) => Object::ReferenceGrant(v.typed()?),
            "BackendTLSPolicy" if gw(&["v1", "v1alpha3"]) => Object::BackendTlsPolicy(v.typed()?),
            "Ingress" if api_version == "networking.k8s.io/v1" => Object::Ingress(v.typed()?),
            "IngressClass" if api_version == "networking.k8s.io/v1" => {
                Object::IngressClass(v.typed()?)
            }
            "Namespace" if api_version == "v1" => Object::Namespace(v.typed()?),
            "Service" if api_version == "v1" => Object::Service(v.typed()?),
            "EndpointSlice" if api_version == "discovery.k8s.io/v1" => {
                Object::EndpointSlice(v.typed()?)
            }
            "Secret" if api_version == "v1" => Object::Secret(v.typed()?),
            "ConfigMap" if api_version == "v1" => Object::ConfigMap(v.typed()?),
            _ if IGNORED_KINDS
                .iter()
                .any(|(a, k)| *a == api_version && *k == kind) =>
            {
                return Ok(None);
            }
            _ => {
                return Err(ObjectError::UnknownKind {
                    api_version: api_version.to_string(),
                    kind: kind.to_string(),
                });
            }
        };
        Ok(Some(obj))
    }

    /// Kind, namespace and name.
    pub fn object_ref(&self) -> ObjectRef {
        fn r<K: Resource<DynamicType = ()>>(o: &K) -> ObjectRef {
            let m = o.meta();
            ObjectRef::new(
                &K::kind(&()),
                m.namespace.as_deref().unwrap_or_default(),
                m.name.as_deref().unwrap_or_default(),
            )
        }
        match self {
            Object::GatewayClass(o) => r(o),
            Object::Gateway(o) => r(o),
            Object::ListenerSet(o) => r(o),
            Object::HttpRoute(o) => r(o),
            Object::GrpcRoute(o) => r(o),
            Object::TlsRoute(o) => r(o),
            Object::TcpRoute(o) => r(o),
            Object::UdpRoute(o) => r(o),
            Object::ReferenceGrant(o) => r(o),
            Object::BackendTlsPolicy(o) => r(o),
            Object::Ingress(o) => r(o),
            Object::IngressClass(o) => r(o),
            Object::Namespace(o) => r(o),
            Object::Service(o) => r(o),
            Object::EndpointSlice(o) => r(o),
            Object::Secret(o) => r(o),
            Object::ConfigMap(o) => r(o),
        }
    }

    /// True for cluster-scoped kinds (their namespace is ignored).
    pub fn cluster_scoped(&self) -> bool {
        matches!(
            self,
            Object::GatewayClass(_) | Object::IngressClass(_) | Object::Namespace(_)
        )
    }

    /// Gives a namespaced object without a namespace the `default` one (what kubectl does) and
    /// strips the namespace of cluster-scoped objects.
    pub fn default_namespace(&mut self, default: &str) {
        fn set<K: Resource>(o: &mut K, ns: Option<&str>) {
            let m = o.meta_mut();
            match ns {
                None => m.namespace = None,
                Some(d) => {
                    if m.namespace.as_deref().is_none_or(str::is_empty) {
                        m.namespace = Some(d.to_string());
                    }
                }
            }
        }
        let ns = (!self.cluster_scoped()).then_some(default);
        match self {
            Object::GatewayClass(o) => set(o, ns),
            Object::Gateway(o) => set(o, ns),
            Object::ListenerSet(o) => set(o, ns),
            Object::HttpRoute(o) => set(o, ns),
            Object::GrpcRoute(o) => set(o, ns),
            Object::TlsRoute(o) => set(o, ns),
            Object::TcpRoute(o) => set(o, ns),
            Object::UdpRoute(o) => set(o, ns),
            Object::ReferenceGrant(o) => set(o, ns),
            Object::BackendTlsPolicy(o) => set(o, ns),
            Object::Ingress(o) => set(o, ns),
            Object::IngressClass(o) => set(o, ns),
            Object::Namespace(o) => set(o, ns),
            Object::Service(o) => set(o, ns),
            Object::EndpointSlice(o) => set(o, ns),
            Object::Secret(o) => set(o, ns),
            Object::ConfigMap(o) => set(o, ns),
        }
    }
}

/// An object with the same kind, namespace and name is already in the store.
#[derive(Debug, thiserror::Error)]
#[error("{0} is defined more than once")]
pub struct Duplicate(pub ObjectRef);

impl Resources {
    /// Adds an object (its namespace already defaulted). Rejects a second object with the same
    /// kind, namespace and name; the first one stays.
    pub fn insert(&mut self, obj: Object, source: Option<SourceLocation>) -> Result<(), Duplicate> {
        let r = obj.object_ref();
        let key = Key::new(&r.namespace, &r.name);
        fn put<K>(store: &mut Store<K>, key: Key, o: K, r: &ObjectRef) -> Result<(), Duplicate> {
            if store.contains_key(&key) {
                return Err(Duplicate(r.clone()));
            }
            store.insert(key, o);
            Ok(())
        }
        match obj {
            Object::GatewayClass(o) => put(&mut self.gateway_classes, key, o, &r),
            Object::Gateway(o) => put(&mut self.gateways, key, o, &r),
            Object::ListenerSet(o) => put(&mut self.listener_sets, key, o, &r),
            Object::HttpRoute(o) => put(&mut self.http_routes, key, o, &r),
            Object::GrpcRoute(o) => put(&mut self.grpc_routes, key, o, &r),
            Object::TlsRoute(o) => put(&mut self.tls_routes, key, o, &r),
            Object::TcpRoute(o) => put(&mut self.tcp_routes, key, o, &r),
            Object::UdpRoute(o) => put(&mut self.udp_routes, key, o, &r),
            Object::ReferenceGrant(o) => put(&mut self.reference_grants, key, o, &r),
            Object::BackendTlsPolicy(o) => put(&mut self.backend_tls_policies, key, o, &r),
            Object::Ingress(o) => put(&mut self.ingresses, key, o, &r),
            Object::IngressClass(o) => put(&mut self.ingress_classes, key, o, &r),
            Object::Namespace(o) => put(&mut self.namespaces, key, o, &r),
            Object::Service(o) => put(&mut self.services, key, o, &r),
            Object::EndpointSlice(o) => put(&mut self.endpoint_slices, key, o, &r),
            Object::Secret(o) => put(&mut self.secrets, key, o, &r),
            Object::ConfigMap(o) => put(&mut self.config_maps, key, o, &r),
        }?;
        if let Some(s) = source {
            self.sources.insert(r, s);
        }
        Ok(())
    }

    /// The store of a kind (`HTTPRoute`, `Service`, ...), type-erased.
    fn store_of(&self, kind: &str) -> Option<&dyn AnyStore> {
        Some(match kind {
            "GatewayClass" => &self.gateway_classes,
            "Gateway" => &self.gateways,
            "ListenerSet" => &self.listener_sets,
            "HTTPRoute" => &self.http_routes,
            "GRPCRoute" => &self.grpc_routes,
            "TLSRoute" => &self.tls_routes,
            "TCPRoute" => &self.tcp_routes,
            "UDPRoute" => &self.udp_routes,
            "ReferenceGrant" => &self.reference_grants,
            "BackendTLSPolicy" => &self.backend_tls_policies,
            "Ingress" => &self.ingresses,
            "IngressClass" => &self.ingress_classes,
            "Namespace" => &self.namespaces,
            "Service" => &self.services,
            "EndpointSlice" => &self.endpoint_slices,
            "Secret" => &self.secrets,
            "ConfigMap" => &self.config_maps,
            _ => return None,
        })
    }

    fn store_of_mut(&mut self, kind: &str) -> Option<&mut dyn AnyStore> {
        Some(match kind {
            "GatewayClass" => &mut self.gateway_classes,
            "Gateway" => &mut self.gateways,
            "ListenerSet" => &mut self.listener_sets,
            "HTTPRoute" => &mut self.http_routes,
            "GRPCRoute" => &mut self.grpc_routes,
            "TLSRoute" => &mut self.tls_routes,
            "TCPRoute" => &mut self.tcp_routes,
            "UDPRoute" => &mut self.udp_routes,
            "ReferenceGrant" => &mut self.reference_grants,
            "BackendTLSPolicy" => &mut self.backend_tls_policies,
            "Ingress" => &mut self.ingresses,
            "IngressClass" => &mut self.ingress_classes,
            "Namespace" => &mut self.namespaces,
            "Service" => &mut self.services,
            "EndpointSlice" => &mut self.endpoint_slices,
            "Secret" => &mut self.secrets,
            "ConfigMap" => &mut self.config_maps,
            _ => return None,
        })
    }

    /// True when an object of this kind, namespace and name is held.
    pub fn contains(&self, r: &ObjectRef) -> bool {
        self.store_of(&r.kind)
            .is_some_and(|s| s.has(&Key::new(&r.namespace, &r.name)))
    }

    /// Removes an object (and its source); true when it was held.
    pub fn remove(&mut self, r: &ObjectRef) -> bool {
        let removed = self
            .store_of_mut(&r.kind)
            .is_some_and(|s| s.remove_key(&Key::new(&r.namespace, &r.name)));
        if removed {
            self.sources.remove(r);
        }
        removed
    }

    /// Where an object was defined, if known.
    pub fn source(&self, kind: &str, namespace: &str, name: &str) -> Option<&SourceLocation> {
        self.sources.get(&ObjectRef::new(kind, namespace, name))
    }

    /// Total number of objects held.
    pub fn len(&self) -> usize {
        self.gateway_classes.len()
            + self.gateways.len()
            + self.listener_sets.len()
            + self.http_routes.len()
            + self.grpc_routes.len()
            + self.tls_routes.len()
            + self.tcp_routes.len()
            + self.udp_routes.len()
            + self.reference_grants.len()
            + self.backend_tls_policies.len()
            + self.ingresses.len()
            + self.ingress_classes.len()
            + self.namespaces.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.secrets.len()
            + self.config_maps.len()
    }

    /// True when no object is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn typed_objects_are_keyed_and_duplicates_rejected() {
        let v = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r"}, "spec": {}});
        let mut o = Object::from_value(v).unwrap().unwrap();
        o.default_namespace("default");
        assert_eq!(o.object_ref(), ObjectRef::new("HTTPRoute", "default", "r"));
        let mut res = Resources::default();
        res.insert(o.clone(), None).unwrap();
        let err = res.insert(o, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "HTTPRoute/default/r is defined more than once"
        );
        assert_eq!(res.len(), 1);
    }

    #[test]
    fn unknown_ignored_and_invalid_kinds() {
        let unknown =
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}});
        assert!(matches!(
            Object::from_value(unknown),
            Err(ObjectError::UnknownKind { .. })
        ));
        let deploy =
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}});
        assert!(Object::from_value(deploy).unwrap().is_none());
        let bad = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
            "spec": {"ports": [{"port": "eighty"}]}});
        let e = Object::from_value(bad).unwrap_err().to_string();
        assert!(e.contains("invalid type"), "{e}");
    }

    #[test]
    fn cluster_scoped_kinds_lose_their_namespace() {
        let v = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": "c", "namespace": "x"}, "spec": {"controllerName": "sluice.dev/gateway-controller"}});
        let mut o = Object::from_value(v).unwrap().unwrap();
        o.default_namespace("default");
        assert_eq!(o.object_ref(), ObjectRef::new("GatewayClass", "", "c"));
    }
}
