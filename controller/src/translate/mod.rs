//! PURE translation: `fn translate(&Resources, &TranslateOptions) -> Translation`. No I/O, no
//! clock, no randomness: the same store always yields byte-identical output.
//!
//! Stages, each in its own module:
//! 1. [`gatewayclass`]: which GatewayClasses are ours and accepted.
//! 2. [`gateway`]: Gateways and ListenerSets of those classes: listener validation, TLS
//!    certificates, conflicts, addresses, ports shared across Gateways.
//! 3. Routes ([`httproute`], [`grpcroute`], [`tlsroute`], [`l4route`]) attach to listeners
//!    through [`attach`] and resolve backends through [`backends`]; [`ingress`] adds Ingress
//!    rules. All of them feed the [`builder`], which assembles IR listeners and virtual hosts
//!    and sorts route entries by Gateway API precedence.
//! 4. [`services`] adds the Services of the kernel datapath, [`backendtls`] applies
//!    BackendTLSPolicies to clusters.

mod attach;
mod backends;
mod backendtls;
mod builder;
mod certs;
mod conditions;
mod duration;
mod gateway;
mod gatewayclass;
mod grpcroute;
mod hostname;
mod httproute;
mod ingress;
mod l4route;
mod referencegrant;
mod selector;
mod services;
mod tlsroute;

use crate::resources::Resources;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use sluice_ir::status::{ResourceStatus, StatusReport};
use sluice_ir::{Cluster, L4Service, ObjectRef, Snapshot};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// Settings of the translation that do not come from the objects.
#[derive(Debug, Clone)]
pub struct TranslateOptions {
    /// GatewayClass `controllerName` served (default [`crate::CONTROLLER_NAME`]).
    pub controller_name: String,
    /// Addresses handed to Gateways without `spec.addresses`, in order (from `--address-pool`;
    /// default just 127.0.0.1, shared by all Gateways).
    pub address_pool: Vec<IpAddr>,
    /// IngressClass name served (default [`crate::INGRESS_CLASS`]).
    pub ingress_class: String,
    /// Address Ingress rules are served on (default: the pool's first address).
    pub ingress_address: Option<IpAddr>,
    /// Port for Ingress HTTP (default 80).
    pub ingress_http_port: u16,
    /// Port for Ingress TLS (default 443).
    pub ingress_https_port: u16,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        TranslateOptions {
            controller_name: crate::CONTROLLER_NAME.to_string(),
            address_pool: vec![IpAddr::from([127, 0, 0, 1])],
            ingress_class: crate::INGRESS_CLASS.to_string(),
            ingress_address: None,
            ingress_http_port: 80,
            ingress_https_port: 443,
        }
    }
}

/// The output of [`translate`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Translation {
    /// What the data plane serves (version 0; the publisher numbers it).
    pub snapshot: Snapshot,
    /// Status of every object Sluice is responsible for, plus `resources.errors`.
    pub status: StatusReport,
}

/// Translates the store into an IR snapshot and statuses.
pub fn translate(resources: &Resources, options: &TranslateOptions) -> Translation {
    let ctx = Ctx::new(resources, options);
    let mut out = Out::default();

    let classes = gatewayclass::process(&ctx, &mut out);
    let mut gws = gateway::process(&ctx, &classes, &mut out);
    httproute::register_listeners(&gws, &mut out);
    attach::http_grpc_conflicts(&ctx, &mut gws);

    httproute::process(&ctx, &mut gws, &mut out);
    grpcroute::process(&ctx, &mut gws, &mut out);
    tlsroute::process(&ctx, &mut gws, &mut out);
    l4route::process(&ctx, &mut gws, &mut out);
    ingress::process(&ctx, &gws, &mut out);

    gateway::finish(&ctx, &gws, &mut out);
    services::process(&ctx, &mut out);
    backendtls::process(&ctx, &gws, &mut out);

    out.finish(resources)
}

/// Indexes over the store shared by all stages.
pub(crate) struct Ctx<'a> {
    pub res: &'a Resources,
    pub opts: &'a TranslateOptions,
    /// EndpointSlices by (namespace, `kubernetes.io/service-name`), in name order.
    slices: BTreeMap<&'a str, BTreeMap<&'a str, Vec<&'a EndpointSlice>>>,
    empty_labels: BTreeMap<String, String>,
}

impl<'a> Ctx<'a> {
    fn new(res: &'a Resources, opts: &'a TranslateOptions) -> Self {
        let mut slices: BTreeMap<&str, BTreeMap<&str, Vec<&EndpointSlice>>> = BTreeMap::new();
        for (key, s) in &res.endpoint_slices {
            if let Some(svc) = s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))
            {
                slices
                    .entry(key.namespace.as_str())
                    .or_default()
                    .entry(svc.as_str())
                    .or_default()
                    .push(s);
            }
        }
        Ctx {
            res,
            opts,
            slices,
            empty_labels: BTreeMap::new(),
        }
    }

    /// The labels of a namespace, with `kubernetes.io/metadata.name` set as the API server
    /// does (also for namespaces without a Namespace object, as in standalone mode).
    pub fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        let mut labels = self
            .res
            .namespaces
            .get(&crate::Key::new("", ns))
            .and_then(|n| n.metadata.labels.as_ref())
            .unwrap_or(&self.empty_labels)
            .clone();
        labels.insert("kubernetes.io/metadata.name".into(), ns.to_string());
        labels
    }

    /// EndpointSlices of a Service.
    pub fn endpoint_slices(&self, ns: &str, service: &str) -> &[&'a EndpointSlice] {
        self.slices
            .get(ns)
            .and_then(|m| m.get(service))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// Accumulated output.
#[derive(Default)]
pub(crate) struct Out {
    pub status: BTreeMap<ObjectRef, ResourceStatus>,
    pub clusters: BTreeMap<String, Cluster>,
    pub services: Vec<L4Service>,
    pub ir: builder::IrBuilder,
    /// The IR listener key of every programmed Gateway listener (by index in
    /// [`gateway::Gateways::listeners`]) on each of its addresses, once it is registered.
    pub listener_keys: HashMap<(usize, IpAddr), String>,
    /// Gateways whose accepted routes use a cluster (BackendTLSPolicy ancestors).
    pub cluster_users: BTreeMap<String, std::collections::BTreeSet<ObjectRef>>,
}

impl Out {
    /// The status entry of an object, created on first use.
    pub fn status_mut(&mut self, object: &ObjectRef, generation: i64) -> &mut ResourceStatus {
        self.status
            .entry(object.clone())
            .or_insert_with(|| ResourceStatus::new(object.clone(), generation))
    }

    /// Records that a Gateway's accepted routes send traffic to a cluster.
    pub fn use_cluster(&mut self, cluster: &str, gateway: &ObjectRef) {
        match self.cluster_users.get_mut(cluster) {
            Some(users) => {
                if !users.contains(gateway) {
                    users.insert(gateway.clone());
                }
            }
            None => {
                self.cluster_users
                    .insert(cluster.to_string(), [gateway.clone()].into());
            }
        }
    }

    fn finish(self, res: &Resources) -> Translation {
        let Out {
            status,
            clusters,
            services,
            ir,
            listener_keys: _,
            cluster_users: _,
        } = self;
        let listeners = ir.finish();
        // Only clusters something sends traffic to (routes of rejected parents resolve
        // backends too, for their status).
        let used = used_clusters(&listeners, &services);
        let clusters: Vec<Cluster> = clusters
            .into_values()
            .filter(|c| used.contains(c.name.as_str()))
            .collect();
        // Both maps are ordered by object, (kind, namespace, name): walk them side by side
        // instead of looking every status up.
        let mut sources = res.sources.iter().peekable();
        let resources: Vec<ResourceStatus> = status
            .into_values()
            .map(|mut s| {
                while sources.next_if(|(o, _)| **o < s.object).is_some() {}
                s.source = sources
                    .next_if(|(o, _)| **o == s.object)
                    .map(|(_, l)| l.clone());
                s
            })
            .collect();
        let mut errors = res.errors.clone();
        errors.sort_by(|a, b| {
            a.source
                .cmp(&b.source)
                .then_with(|| a.message.cmp(&b.message))
        });
        Translation {
            snapshot: Snapshot {
                version: 0,
                listeners,
                clusters,
                services,
            },
            status: StatusReport { resources, errors },
        }
    }
}

/// Names of the clusters the listeners and services send traffic to.
fn used_clusters<'l>(
    listeners: &'l [sluice_ir::Listener],
    services: &'l [L4Service],
) -> std::collections::HashSet<&'l str> {
    use sluice_ir::{HttpFilter, WeightedBackend};
    fn mirrors(filters: &[HttpFilter]) -> impl Iterator<Item = &str> {
        filters.iter().filter_map(|f| match f {
            HttpFilter::RequestMirror(m) => m.cluster.as_deref(),
            _ => None,
        })
    }
    fn backends(bs: &[WeightedBackend]) -> impl Iterator<Item = &str> {
        bs.iter()
            .flat_map(|b| b.cluster.as_deref().into_iter().chain(mirrors(&b.filters)))
    }
    // A hash set: every backend of every route is inserted, mostly names already in it.
    let mut used = std::collections::HashSet::new();
    for l in listeners {
        for r in l.virtual_hosts.iter().flat_map(|v| v.routes.iter()) {
            used.extend(backends(&r.backends));
            used.extend(mirrors(&r.filters));
        }
        for r in &l.tls_routes {
            used.extend(backends(&r.backends));
        }
        for r in &l.l4_routes {
            used.extend(backends(&r.backends));
        }
    }
    used.extend(
        services
            .iter()
            .flat_map(|s| s.ports.iter().map(|p| p.cluster.as_str())),
    );
    used
}

/// `metadata.generation`, 1 when unset (objects read from files have none).
pub(crate) fn generation(meta: &ObjectMeta) -> i64 {
    meta.generation.filter(|g| *g > 0).unwrap_or(1)
}

/// Route and object age for precedence: creation time (unset counts as oldest), then
/// namespace, then name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Age {
    /// `metadata.creationTimestamp` (unset sorts first).
    pub created: Option<Time>,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

impl Age {
    /// The age of an object.
    pub fn of(meta: &ObjectMeta) -> Self {
        Age {
            created: meta.creation_timestamp.clone(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// The object reference of a typed object.
pub(crate) fn object_ref(kind: &str, meta: &ObjectMeta) -> ObjectRef {
    ObjectRef::new(
        kind,
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

/// The Gateway API group.
pub(crate) const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Deep-converts between generated types with the same JSON shape (for example a GRPCRoute
/// filter into an HTTPRoute filter, or a ListenerSet listener into a Gateway listener).
pub(crate) fn convert<A: serde::Serialize, B: serde::de::DeserializeOwned>(a: &A) -> Option<B> {
    serde_json::to_value(a)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
}
