//! Watchers (kube-runtime `watcher`: paged list, then watch from the list's resourceVersion
//! with bookmarks; a `410 Gone` starts over with a fresh list) filling one [`KubeStore`].
//! A re-list replaces the kind's objects atomically, so nothing deleted while the watch was
//! down survives it. Secrets and ConfigMaps are kept only while referenced.

use super::refs::References;
use crate::resources::{Key, Resources, Store};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use sluice_gateway_crds::{
    BackendTlsPolicy, Gateway, GatewayClass, GrpcRoute, HttpRoute, ListenerSet, ReferenceGrant,
    TcpRoute, TlsRoute, UdpRoute,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Label put on every object the controller creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "sluice-controller";

/// Retry timing of failed lists and watches.
#[derive(Debug, Clone, Copy)]
pub struct WatchOptions {
    /// First retry delay (default 500 ms), doubled up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest retry delay (default 30 s).
    pub backoff_max: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// What the watchers hold: the translator's [`Resources`] plus objects only the controller
/// needs (what it provisioned).
#[derive(Debug, Default)]
pub struct Shelves {
    /// Everything the translator reads.
    pub resources: Resources,
    /// Proxy Deployments of dedicated Gateways (label `app.kubernetes.io/managed-by=sluice-controller`).
    pub deployments: Store<Deployment>,
    /// Secrets the controller created (agent client certificates), same label.
    pub managed_secrets: Store<Secret>,
}

/// Which referenced-only kind a watcher fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    Secrets,
    ConfigMaps,
}

struct Inner {
    shelves: Mutex<Shelves>,
    changes: watch::Sender<u64>,
    kinds: Mutex<BTreeMap<&'static str, bool>>,
    refs: Mutex<RefState>,
    relist_secrets: Notify,
    relist_config_maps: Notify,
    refs_ready: watch::Sender<bool>,
}

#[derive(Default)]
struct RefState {
    wanted: References,
    /// What was wanted when each filtered kind was last listed.
    listed_secrets: BTreeSet<Key>,
    listed_config_maps: BTreeSet<Key>,
}

/// The objects read from the API server, shared by the watchers and the controller loop.
#[derive(Clone)]
pub struct KubeStore {
    inner: Arc<Inner>,
}

impl Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore").finish_non_exhaustive()
    }
}

impl Default for KubeStore {
    fn default() -> Self {
        Self::new()
    }
}

impl KubeStore {
    /// An empty store.
    pub fn new() -> Self {
        KubeStore {
            inner: Arc::new(Inner {
                shelves: Mutex::new(Shelves::default()),
                changes: watch::channel(0).0,
                kinds: Mutex::new(BTreeMap::new()),
                refs: Mutex::new(RefState::default()),
                relist_secrets: Notify::new(),
                relist_config_maps: Notify::new(),
                refs_ready: watch::channel(false).0,
            }),
        }
    }

    /// The objects (hold the guard briefly: watchers wait for it).
    pub fn lock(&self) -> MutexGuard<'_, Shelves> {
        self.inner.shelves.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes on every stored change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    fn bump(&self) {
        self.inner.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// True once every watched kind has completed its first list.
    pub fn synced(&self) -> bool {
        let kinds = self.inner.kinds.lock().unwrap_or_else(|e| e.into_inner());
        !kinds.is_empty() && kinds.values().all(|s| *s)
    }

    /// Kinds whose first list has not completed.
    pub fn unsynced(&self) -> Vec<&'static str> {
        let kinds = self.inner.kinds.lock().unwrap_or_else(|e| e.into_inner());
        kinds
            .iter()
            .filter(|(_, s)| !**s)
            .map(|(k, _)| *k)
            .collect()
    }

    /// True when every kind except Secrets and ConfigMaps is listed (references can be
    /// computed).
    pub fn synced_except_referenced(&self) -> bool {
        let kinds = self.inner.kinds.lock().unwrap_or_else(|e| e.into_inner());
        kinds
            .iter()
            .filter(|(k, _)| **k != "Secret" && **k != "ConfigMap")
            .all(|(_, s)| *s)
    }

    fn register(&self, kind: &'static str) {
        self.inner
            .kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kind, false);
    }

    fn mark_synced(&self, kind: &'static str) {
        let mut kinds = self.inner.kinds.lock().unwrap_or_else(|e| e.into_inner());
        if kinds.insert(kind, true) == Some(false) {
            tracing::debug!(kind, "initial list complete");
        }
    }

    /// Sets the Secrets and ConfigMaps the objects reference: unreferenced ones are dropped,
    /// and a referenced one never listed makes its watcher list again.
    pub fn set_references(&self, refs: References) {
        let mut st = self.inner.refs.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut sh = self.lock();
            sh.resources.secrets.retain(|k, _| refs.secrets.contains(k));
            sh.resources
                .config_maps
                .retain(|k, _| refs.config_maps.contains(k));
        }
        let first = !*self.inner.refs_ready.borrow();
        let sh = self.lock();
        let missing_secret = refs
            .secrets
            .iter()
            .any(|k| !sh.resources.secrets.contains_key(k) && !st.listed_secrets.contains(k));
        let missing_cm = refs.config_maps.iter().any(|k| {
            !sh.resources.config_maps.contains_key(k) && !st.listed_config_maps.contains(k)
        });
        drop(sh);
        st.wanted = refs;
        drop(st);
        if first {
            self.inner.refs_ready.send_replace(true);
            return;
        }
        if missing_secret {
            tracing::debug!("a newly referenced Secret was not listed: listing Secrets again");
            self.inner.relist_secrets.notify_one();
        }
        if missing_cm {
            tracing::debug!(
                "a newly referenced ConfigMap was not listed: listing ConfigMaps again"
            );
            self.inner.relist_config_maps.notify_one();
        }
    }

    fn wanted(&self, filter: Filter) -> BTreeSet<Key> {
        let st = self.inner.refs.lock().unwrap_or_else(|e| e.into_inner());
        match filter {
            Filter::Secrets => st.wanted.secrets.clone(),
            Filter::ConfigMaps => st.wanted.config_maps.clone(),
        }
    }

    fn set_listed(&self, filter: Filter, keys: BTreeSet<Key>) {
        let mut st = self.inner.refs.lock().unwrap_or_else(|e| e.into_inner());
        match filter {
            Filter::Secrets => st.listed_secrets = keys,
            Filter::ConfigMaps => st.listed_config_maps = keys,
        }
    }
}

/// Where one kind's objects go.
type ShelfFn<K> = fn(&mut Shelves) -> &mut Store<K>;

struct Spec<K> {
    kind: &'static str,
    shelf: ShelfFn<K>,
    filter: Option<Filter>,
    config: watcher::Config,
}

fn key_of<K: Resource>(o: &K) -> Key {
    let m = o.meta();
    Key::new(
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default(),
    )
}

/// Drops what nobody reads (managed fields, the last-applied annotation) to save memory.
fn clean<K: Resource>(mut o: K) -> K {
    let m = o.meta_mut();
    m.managed_fields = None;
    if let Some(a) = m.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    o
}

/// Starts one watcher per kind; they run until the returned handles are aborted (or the
/// runtime stops).
pub fn start(
    client: &Client,
    store: &KubeStore,
    opts: WatchOptions,
) -> Vec<tokio::task::JoinHandle<()>> {
    let managed = format!("{MANAGED_BY_LABEL}={MANAGED_BY}");
    let plain = watcher::Config::default;
    let mut tasks = Vec::new();
    macro_rules! spawn {
        ($ty:ty, $kind:literal, $shelf:expr, $filter:expr, $cfg:expr) => {{
            let spec: Spec<$ty> = Spec {
                kind: $kind,
                shelf: $shelf,
                filter: $filter,
                config: $cfg,
            };
            store.register($kind);
            tasks.push(tokio::spawn(run(client.clone(), store.clone(), spec, opts)));
        }};
    }
    spawn!(
        GatewayClass,
        "GatewayClass",
        |s| &mut s.resources.gateway_classes,
        None,
        plain()
    );
    spawn!(
        Gateway,
        "Gateway",
        |s| &mut s.resources.gateways,
        None,
        plain()
    );
    spawn!(
        ListenerSet,
        "ListenerSet",
        |s| &mut s.resources.listener_sets,
        None,
        plain()
    );
    spawn!(
        HttpRoute,
        "HTTPRoute",
        |s| &mut s.resources.http_routes,
        None,
        plain()
    );
    spawn!(
        GrpcRoute,
        "GRPCRoute",
        |s| &mut s.resources.grpc_routes,
        None,
        plain()
    );
    spawn!(
        TlsRoute,
        "TLSRoute",
        |s| &mut s.resources.tls_routes,
        None,
        plain()
    );
    spawn!(
        TcpRoute,
        "TCPRoute",
        |s| &mut s.resources.tcp_routes,
        None,
        plain()
    );
    spawn!(
        UdpRoute,
        "UDPRoute",
        |s| &mut s.resources.udp_routes,
        None,
        plain()
    );
    spawn!(
        ReferenceGrant,
        "ReferenceGrant",
        |s| &mut s.resources.reference_grants,
        None,
        plain()
    );
    spawn!(
        BackendTlsPolicy,
        "BackendTLSPolicy",
        |s| &mut s.resources.backend_tls_policies,
        None,
        plain()
    );
    spawn!(
        Ingress,
        "Ingress",
        |s| &mut s.resources.ingresses,
        None,
        plain()
    );
    spawn!(
        IngressClass,
        "IngressClass",
        |s| &mut s.resources.ingress_classes,
        None,
        plain()
    );
    spawn!(
        Namespace,
        "Namespace",
        |s| &mut s.resources.namespaces,
        None,
        plain()
    );
    spawn!(
        Service,
        "Service",
        |s| &mut s.resources.services,
        None,
        plain()
    );
    spawn!(
        EndpointSlice,
        "EndpointSlice",
        |s| &mut s.resources.endpoint_slices,
        None,
        plain()
    );
    spawn!(
        Secret,
        "Secret",
        |s| &mut s.resources.secrets,
        Some(Filter::Secrets),
        plain()
    );
    spawn!(
        ConfigMap,
        "ConfigMap",
        |s| &mut s.resources.config_maps,
        Some(Filter::ConfigMaps),
        plain()
    );
    spawn!(
        Deployment,
        "Deployment",
        |s| &mut s.deployments,
        None,
        plain().labels(&managed)
    );
    spawn!(
        Secret,
        "ManagedSecret",
        |s| &mut s.managed_secrets,
        None,
        plain().labels(&managed)
    );
    tasks
}

/// True for errors meaning the kind does not exist on this API server (CRD not installed).
fn not_installed(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}

async fn run<K>(client: Client, store: KubeStore, spec: Spec<K>, opts: WatchOptions)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    if spec.filter.is_some() {
        // Referenced-only kinds list once the references are known.
        let mut ready = store.inner.refs_ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
    }
    let mut delay = opts.backoff_initial;
    let mut missing_logged = false;
    'restart: loop {
        let api: Api<K> = Api::all(client.clone());
        let stream = watcher(api, spec.config.clone());
        futures::pin_mut!(stream);
        let mut buffer: Option<Store<K>> = None;
        let mut wanted = spec.filter.map(|f| store.wanted(f)).unwrap_or_default();
        loop {
            let relist = async {
                match spec.filter {
                    Some(Filter::Secrets) => store.inner.relist_secrets.notified().await,
                    Some(Filter::ConfigMaps) => store.inner.relist_config_maps.notified().await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                e = stream.next() => e,
                _ = relist => continue 'restart,
            };
            let Some(event) = event else {
                continue 'restart;
            };
            match event {
                Ok(ev) => {
                    delay = opts.backoff_initial;
                    missing_logged = false;
                    match ev {
                        watcher::Event::Init => {
                            if let Some(f) = spec.filter {
                                wanted = store.wanted(f);
                            }
                            buffer = Some(Store::new());
                        }
                        watcher::Event::InitApply(o) => {
                            let k = key_of(&o);
                            if spec.filter.is_none() || wanted.contains(&k) {
                                buffer.get_or_insert_with(Store::new).insert(k, clean(o));
                            }
                        }
                        watcher::Event::InitDone => {
                            let objects = buffer.take().unwrap_or_default();
                            tracing::debug!(kind = spec.kind, count = objects.len(), "listed");
                            *(spec.shelf)(&mut store.lock()) = objects;
                            if let Some(f) = spec.filter {
                                store.set_listed(f, wanted.clone());
                            }
                            store.mark_synced(spec.kind);
                            store.bump();
                        }
                        watcher::Event::Apply(o) => {
                            let k = key_of(&o);
                            if spec.filter.is_some() {
                                wanted = store.wanted(spec.filter.unwrap_or(Filter::Secrets));
                            }
                            let mut sh = store.lock();
                            let shelf = (spec.shelf)(&mut sh);
                            if spec.filter.is_none() || wanted.contains(&k) {
                                shelf.insert(k, clean(o));
                            } else if shelf.remove(&k).is_none() {
                                continue;
                            }
                            drop(sh);
                            store.bump();
                        }
                        watcher::Event::Delete(o) => {
                            let removed = (spec.shelf)(&mut store.lock()).remove(&key_of(&o));
                            if removed.is_some() {
                                store.bump();
                            }
                        }
                    }
                }
                Err(e) => {
                    if not_installed(&e) {
                        // The CRD is not installed: serve without this kind, look again later.
                        if !missing_logged {
                            tracing::warn!(
                                kind = spec.kind,
                                "the API server does not serve this kind (CRD not installed?); continuing without it"
                            );
                            missing_logged = true;
                        }
                        let had = !(spec.shelf)(&mut store.lock()).is_empty();
                        (spec.shelf)(&mut store.lock()).clear();
                        store.mark_synced(spec.kind);
                        if had {
                            store.bump();
                        } else {
                            store.inner.changes.send_modify(|_| {});
                        }
                        delay = opts.backoff_max;
                    } else {
                        tracing::warn!(kind = spec.kind, error = %e, retry_ms = delay.as_millis() as u64, "watch failed; the last known objects stay until the next list");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(opts.backoff_max);
                }
            }
        }
    }
}
