//! The cluster controller: watchers fill the store; every change (debounced) is translated per
//! data plane, published to the agents, folded with their acknowledgements into status, and,
//! on the Lease holder only, written to the API server and provisioned. Every replica watches
//! and translates (a standby is ready to take over at once); only the leader serves the
//! snapshot stream (its port is closed otherwise, so the Service's readiness probe routes
//! agents to the leader), writes status and creates objects. Nothing is kept between restarts
//! that cannot be recomputed from the API server.

use super::leader::{self, LeaseOptions};
use super::refs::References;
use super::watch::{self, KubeStore, MANAGED_BY, MANAGED_BY_LABEL, WatchOptions};
use crate::provision::partition::{Plan, plan};
use crate::provision::{
    self, CONFIG_HASH_ANNOTATION, GATEWAY_LABEL, ProvisionConfig, config_hash, proxy_name,
    service_addresses,
};
use crate::publish::tls::{Ca, CertKey, TlsError, common_name, issued_by};
use crate::publish::{Publisher, Scope};
use crate::resources::Key;
use crate::status::programmed::{PublishedGateway, apply_acks, gateway_fingerprint};
use crate::status::{FIELD_MANAGER, StatusWriter};
use crate::translate::TranslateOptions;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_gateway_crds::Gateway;
use sluice_ir::status::{Condition, ConditionStatus, StatusReport, set_condition};
use sluice_ir::{ObjectRef, Snapshot};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch as tokio_watch;

/// Controller settings.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Namespace the controller runs in (Lease, CA Secret, node agent Secret).
    pub namespace: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// Translation settings (address pool of shared Gateways, Ingress ports).
    pub translate: TranslateOptions,
    /// Where the snapshot stream listens while this replica leads (default 0.0.0.0:9902).
    pub stream_listen: SocketAddr,
    /// DNS names in the stream's server certificate (the Service names agents dial).
    pub stream_dns_names: Vec<String>,
    /// IP addresses in the stream's server certificate.
    pub stream_ips: Vec<IpAddr>,
    /// Leader election.
    pub lease: LeaseOptions,
    /// Dedicated proxies.
    pub provision: ProvisionConfig,
    /// Watch retry timing.
    pub watch: WatchOptions,
    /// Quiet time after a change before reconciling (default 100 ms).
    pub debounce: Duration,
    /// How long a programmed Gateway stays programmed while agents apply a new version
    /// (default 10 s).
    pub ack_grace: Duration,
    /// Secret holding the stream CA (default `sluice-ca`).
    pub ca_secret: String,
    /// Secret holding the node agents' client certificate (default `sluice-agent-tls`).
    pub agent_secret: String,
}

impl ControllerOptions {
    /// Defaults for a controller in `namespace` named `identity`.
    pub fn new(namespace: &str, identity: &str) -> Self {
        let svc = "sluice-controller";
        ControllerOptions {
            namespace: namespace.to_string(),
            identity: identity.to_string(),
            translate: TranslateOptions::default(),
            stream_listen: SocketAddr::from(([0, 0, 0, 0], 9902)),
            stream_dns_names: vec![
                svc.to_string(),
                format!("{svc}.{namespace}"),
                format!("{svc}.{namespace}.svc"),
                format!("{svc}.{namespace}.svc.cluster.local"),
            ],
            stream_ips: vec![IpAddr::from([127, 0, 0, 1])],
            lease: LeaseOptions::new(namespace, identity),
            provision: ProvisionConfig {
                image: "ghcr.io/sluice-dev/sluice:latest".into(),
                controller_endpoint: format!("https://{svc}.{namespace}.svc:9902"),
            },
            watch: WatchOptions::default(),
            debounce: Duration::from_millis(100),
            ack_grace: Duration::from_secs(10),
            ca_secret: "sluice-ca".into(),
            agent_secret: "sluice-agent-tls".into(),
        }
    }
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// Reading or creating the CA Secret failed.
    #[error("CA Secret {namespace}/{name}: {message}")]
    Ca {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Why.
        message: String,
    },
    /// Certificate generation failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// No usable cluster configuration (in-cluster service account or KUBECONFIG).
    #[error("connecting to the Kubernetes API: {0}")]
    Client(#[source] kube::Error),
}

/// What the controller computed last (for tests and logs).
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The merged status (with Programmed from the agents).
    pub status: StatusReport,
    /// Snapshots per scope as published.
    pub snapshots: BTreeMap<Scope, Snapshot>,
    /// Completed reconciles.
    pub reconciles: u64,
}

/// A running controller.
pub struct Controller {
    /// The objects read from the API server.
    pub store: KubeStore,
    /// The snapshot publisher.
    pub publisher: Publisher,
    /// The stream CA.
    pub ca: Ca,
    leader: tokio_watch::Receiver<bool>,
    observed: tokio_watch::Receiver<Arc<Observed>>,
    stop: tokio_watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

impl Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("leader", &*self.leader.borrow())
            .finish_non_exhaustive()
    }
}

impl Controller {
    /// Loads (or creates) the CA, starts the watchers, the election, the stream and the
    /// reconcile loop.
    pub async fn start(
        client: Client,
        opts: ControllerOptions,
    ) -> Result<Controller, ControllerError> {
        let ca = load_or_create_ca(&client, &opts.namespace, &opts.ca_secret).await?;
        let server_cert = ca.issue_server(&opts.stream_dns_names, &opts.stream_ips)?;
        let store = KubeStore::new();
        let watchers = watch::start(&client, &store, opts.watch);
        let publisher = Publisher::new();
        let (stop, stop_rx) = tokio_watch::channel(false);
        let (leader_tx, leader_rx) = tokio_watch::channel(false);
        let (observed_tx, observed_rx) = tokio_watch::channel(Arc::new(Observed::default()));
        let mut tasks = Vec::new();

        let mut s = stop_rx.clone();
        tasks.push(tokio::spawn(leader::run(
            client.clone(),
            opts.lease.clone(),
            leader_tx,
            async move {
                let _ = s.wait_for(|v| *v).await;
            },
        )));
        tasks.push(tokio::spawn(serve_while_leading(
            publisher.clone(),
            opts.stream_listen,
            server_cert,
            ca.clone(),
            leader_rx.clone(),
            stop_rx.clone(),
        )));
        let rec = Reconciler {
            client: client.clone(),
            opts: opts.clone(),
            store: store.clone(),
            publisher: publisher.clone(),
            writer: StatusWriter::new(client),
            ca: ca.clone(),
            leader: leader_rx.clone(),
            gateway_versions: BTreeMap::new(),
            observed: observed_tx,
            reconciles: 0,
        };
        tasks.push(tokio::spawn(rec.run(stop_rx)));
        Ok(Controller {
            store,
            publisher,
            ca,
            leader: leader_rx,
            observed: observed_rx,
            stop,
            tasks,
            watchers,
        })
    }

    /// True while this replica holds the Lease.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Changes of leadership.
    pub fn leadership(&self) -> tokio_watch::Receiver<bool> {
        self.leader.clone()
    }

    /// The last reconcile's results.
    pub fn observed(&self) -> tokio_watch::Receiver<Arc<Observed>> {
        self.observed.clone()
    }

    /// Stops everything: releases the Lease, closes the stream, stops the watchers.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        for w in self.watchers {
            w.abort();
        }
    }

    /// Stops abruptly, as a killed process would: no Lease release, no goodbye.
    pub fn kill(self) {
        for t in self.tasks.iter().chain(self.watchers.iter()) {
            t.abort();
        }
    }
}

/// Runs a controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    opts: ControllerOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ControllerError> {
    let c = Controller::start(client, opts).await?;
    shutdown.await;
    tracing::info!("shutting down: releasing the lease");
    c.shutdown().await;
    Ok(())
}

/// Runs a controller against the cluster this process runs in (in-cluster service account,
/// or `KUBECONFIG` / `~/.kube/config` outside a cluster) until `shutdown` resolves.
pub async fn run_in_cluster(
    opts: ControllerOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ControllerError> {
    let client = Client::try_default()
        .await
        .map_err(ControllerError::Client)?;
    run(client, opts, shutdown).await
}

async fn load_or_create_ca(client: &Client, ns: &str, name: &str) -> Result<Ca, ControllerError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let err = |message: String| ControllerError::Ca {
        namespace: ns.to_string(),
        name: name.to_string(),
        message,
    };
    for _ in 0..3 {
        match api.get_opt(name).await.map_err(|e| err(e.to_string()))? {
            Some(s) => {
                let data = s.data.unwrap_or_default();
                let get = |k: &str| {
                    data.get(k)
                        .map(|b| String::from_utf8_lossy(&b.0).to_string())
                        .ok_or_else(|| err(format!("has no {k}")))
                };
                let ca = Ca::from_pem(&get("ca.crt")?, &get("ca.key")?)?;
                tracing::info!(secret = %format!("{ns}/{name}"), "loaded the snapshot stream CA");
                return Ok(ca);
            }
            None => {
                let ca = Ca::generate()?;
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(name.to_string()),
                        namespace: Some(ns.to_string()),
                        labels: Some(BTreeMap::from([(
                            MANAGED_BY_LABEL.to_string(),
                            MANAGED_BY.to_string(),
                        )])),
                        ..Default::default()
                    },
                    type_: Some("Opaque".into()),
                    data: Some(BTreeMap::from([
                        (
                            "ca.crt".to_string(),
                            ByteString(ca.pair.cert_pem.clone().into_bytes()),
                        ),
                        (
                            "ca.key".to_string(),
                            ByteString(ca.pair.key_pem.clone().into_bytes()),
                        ),
                    ])),
                    ..Default::default()
                };
                match api.create(&PostParams::default(), &secret).await {
                    Ok(_) => {
                        tracing::info!(secret = %format!("{ns}/{name}"), "created the snapshot stream CA");
                        return Ok(ca);
                    }
                    // Another replica created it first: use theirs.
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => return Err(err(e.to_string())),
                }
            }
        }
    }
    Err(err("could neither read nor create it".into()))
}

/// Serves the snapshot stream while this replica leads.
async fn serve_while_leading(
    publisher: Publisher,
    addr: SocketAddr,
    cert: CertKey,
    ca: Ca,
    mut leader: tokio_watch::Receiver<bool>,
    mut stop: tokio_watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = leader.wait_for(|l| *l) => if r.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot bind the snapshot stream; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        tracing::info!(%addr, "serving the snapshot stream");
        let mut l2 = leader.clone();
        let mut s2 = stop.clone();
        let until = async move {
            tokio::select! {
                _ = l2.wait_for(|l| !*l) => {}
                _ = s2.wait_for(|s| *s) => {}
            }
        };
        if let Err(e) = publisher.serve(listener, &cert, &ca, until).await {
            tracing::error!(error = %e, "snapshot stream stopped");
            tokio::time::sleep(Duration::from_secs(1)).await;
        } else {
            tracing::info!("snapshot stream closed");
        }
    }
}

struct Reconciler {
    client: Client,
    opts: ControllerOptions,
    store: KubeStore,
    publisher: Publisher,
    writer: StatusWriter,
    ca: Ca,
    leader: tokio_watch::Receiver<bool>,
    /// Per Gateway: fingerprint of its listeners and the version that introduced it.
    gateway_versions: BTreeMap<ObjectRef, (String, u64)>,
    observed: tokio_watch::Sender<Arc<Observed>>,
    reconciles: u64,
}

/// What a reconcile reads from the store under the lock.
struct Live {
    plan: Plan,
    gateways: BTreeMap<Key, Gateway>,
    lb_services: BTreeMap<Key, Service>,
    programmed: BTreeMap<ObjectRef, bool>,
    managed_deployments: BTreeMap<Key, (Option<String>, Option<String>)>,
    managed_services: BTreeMap<Key, (Option<String>, Option<String>)>,
    managed_secrets: BTreeMap<Key, (Option<String>, Secret)>,
}

fn hash_and_gateway(meta: &ObjectMeta) -> (Option<String>, Option<String>) {
    (
        meta.annotations
            .as_ref()
            .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned()),
        meta.labels
            .as_ref()
            .and_then(|l| l.get(GATEWAY_LABEL).cloned()),
    )
}

impl Reconciler {
    async fn run(mut self, mut stop: tokio_watch::Receiver<bool>) {
        let mut changes = self.store.changes();
        let mut acks = self.publisher.ack_changes();
        let mut leader = self.leader.clone();
        let mut ticker = tokio::time::interval(Duration::from_secs(5));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_synced = false;
        loop {
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                r = acks.changed() => if r.is_err() { return },
                r = leader.changed() => if r.is_err() { return },
                _ = ticker.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            tokio::time::sleep(self.opts.debounce).await;
            changes.borrow_and_update();
            acks.borrow_and_update();
            leader.borrow_and_update();
            if !self.store.synced_except_referenced() {
                continue;
            }
            let refs = {
                let sh = self.store.lock();
                References::of(&sh.resources)
            };
            self.store.set_references(refs);
            if !self.store.synced() {
                tracing::debug!(waiting = ?self.store.unsynced(), "waiting for the initial lists");
                continue;
            }
            if !was_synced {
                tracing::info!("all kinds listed; reconciling");
                was_synced = true;
            }
            self.reconcile().await;
        }
    }

    fn read(&self) -> Live {
        let mut sh = self.store.lock();
        let plan = plan(&mut sh.resources, &self.opts.translate);
        let gateways: BTreeMap<Key, Gateway> = plan
            .dedicated
            .keys()
            .filter_map(|k| sh.resources.gateways.get(k).map(|g| (k.clone(), g.clone())))
            .collect();
        let lb_services = gateways
            .keys()
            .filter_map(|k| {
                let sk = Key::new(&k.namespace, &proxy_name(&k.name));
                sh.resources
                    .services
                    .get(&sk)
                    .map(|s| (k.clone(), s.clone()))
            })
            .collect();
        let programmed = sh
            .resources
            .gateways
            .iter()
            .map(|(k, g)| {
                let p = g
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| {
                        c.iter()
                            .any(|c| c.type_ == "Programmed" && c.status == "True")
                    });
                (ObjectRef::new("Gateway", &k.namespace, &k.name), p)
            })
            .collect();
        let managed = |m: &ObjectMeta| {
            m.labels
                .as_ref()
                .is_some_and(|l| l.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY))
        };
        let managed_deployments = sh
            .deployments
            .iter()
            .map(|(k, d)| (k.clone(), hash_and_gateway(&d.metadata)))
            .collect();
        let managed_services = sh
            .resources
            .services
            .iter()
            .filter(|(_, s)| managed(&s.metadata))
            .map(|(k, s)| (k.clone(), hash_and_gateway(&s.metadata)))
            .collect();
        let managed_secrets = sh
            .managed_secrets
            .iter()
            .map(|(k, s)| (k.clone(), (hash_and_gateway(&s.metadata).1, s.clone())))
            .collect();
        Live {
            plan,
            gateways,
            lb_services,
            programmed,
            managed_deployments,
            managed_services,
            managed_secrets,
        }
    }

    async fn reconcile(&mut self) {
        let started = Instant::now();
        let live = self.read();
        let plan = &live.plan;
        for (class, e) in &plan.param_errors {
            tracing::warn!(gatewayclass = %class, error = %e, "class parameters ignored; serving the class shared");
        }

        // Publish.
        let mut snapshots = BTreeMap::new();
        let v = self
            .publisher
            .publish(Scope::Shared, plan.shared.clone(), &plan.status);
        let mut shared = plan.shared.clone();
        shared.version = v;
        snapshots.insert(Scope::Shared, shared);
        for (k, (snap, _)) in &plan.dedicated {
            let scope = Scope::Gateway(k.namespace.clone(), k.name.clone());
            let st = plan.dedicated_status.get(k).cloned().unwrap_or_default();
            let v = self.publisher.publish(scope.clone(), snap.clone(), &st);
            let mut s = snap.clone();
            s.version = v;
            snapshots.insert(scope, s);
        }
        let keep: Vec<Scope> = snapshots.keys().cloned().collect();
        self.publisher.retain_scopes(|s| keep.contains(s));

        // Status: dedicated addresses, then Programmed from the agents.
        let mut status = plan.status.clone();
        for k in plan.dedicated.keys() {
            let Some(rs) = status.get_mut("Gateway", &k.namespace, &k.name) else {
                continue;
            };
            let addrs = live
                .lb_services
                .get(k)
                .map(service_addresses)
                .unwrap_or_default();
            rs.addresses = addrs;
            if rs.addresses.is_empty()
                && rs
                    .condition("Accepted")
                    .is_some_and(|c| c.status == ConditionStatus::True)
            {
                let g = rs.generation;
                set_condition(
                    &mut rs.conditions,
                    Condition::new(
                        "Programmed",
                        false,
                        "AddressNotAssigned",
                        format!(
                            "waiting for Service {}/{} to get an address",
                            k.namespace,
                            proxy_name(&k.name)
                        ),
                        g,
                    ),
                );
            }
        }
        let mut published = BTreeMap::new();
        for rs in status
            .resources
            .iter()
            .filter(|r| r.object.kind == "Gateway")
        {
            let key = Key::new(&rs.object.namespace, &rs.object.name);
            let scope = if plan.dedicated.contains_key(&key) {
                Scope::Gateway(key.namespace.clone(), key.name.clone())
            } else {
                Scope::Shared
            };
            let Some(snap) = snapshots.get(&scope) else {
                continue;
            };
            let Some(p) = self.publisher.current(&scope) else {
                continue;
            };
            let fp = gateway_fingerprint(snap, &rs.object);
            let entry = self
                .gateway_versions
                .entry(rs.object.clone())
                .or_insert_with(|| (fp.clone(), p.version));
            if entry.0 != fp {
                *entry = (fp, p.version);
            }
            published.insert(
                rs.object.clone(),
                PublishedGateway {
                    scope,
                    version: p.version,
                    fingerprint: p.fingerprint.clone(),
                    changed_at: entry.1,
                    age: p.since.elapsed(),
                },
            );
        }
        self.gateway_versions
            .retain(|k, _| published.contains_key(k));
        let agents = self.publisher.agents();
        apply_acks(
            &mut status,
            &published,
            &agents,
            &snapshots,
            |g| live.programmed.get(g).copied().unwrap_or(false),
            self.opts.ack_grace,
        );

        // Leader only: write status and provision.
        if *self.leader.borrow() {
            let w = self.writer.write(&status, &self.store).await;
            if w.patched + w.conflicts + w.failed > 0 {
                tracing::info!(
                    patched = w.patched,
                    conflicts = w.conflicts,
                    failed = w.failed,
                    "status written"
                );
            }
            self.provision(&live).await;
        }
        self.reconciles += 1;
        tracing::debug!(took_ms = started.elapsed().as_millis() as u64, "reconciled");
        self.observed.send_replace(Arc::new(Observed {
            status,
            snapshots,
            reconciles: self.reconciles,
        }));
    }

    async fn provision(&self, live: &Live) {
        // The node agents' certificate.
        let agent_key = Key::new(&self.opts.namespace, &self.opts.agent_secret);
        let valid = |s: &Secret, cn: &str| {
            let data = s.data.clone().unwrap_or_default();
            let cert = data
                .get("tls.crt")
                .map(|b| String::from_utf8_lossy(&b.0).to_string())
                .unwrap_or_default();
            let ca_ok = data.get("ca.crt").map(|b| b.0.as_slice())
                == Some(self.ca.pair.cert_pem.as_bytes());
            let cn_ok = x509_parser::pem::parse_x509_pem(cert.as_bytes())
                .ok()
                .and_then(|(_, p)| common_name(&p.contents))
                .is_some_and(|c| c == cn);
            ca_ok && cn_ok && issued_by(&cert, &self.ca)
        };
        let shared_cn = Scope::Shared.common_name();
        if !live
            .managed_secrets
            .get(&agent_key)
            .is_some_and(|(_, s)| valid(s, &shared_cn))
        {
            match self.ca.issue_client(&shared_cn) {
                Ok(cert) => {
                    let secret = Secret {
                        metadata: ObjectMeta {
                            name: Some(self.opts.agent_secret.clone()),
                            namespace: Some(self.opts.namespace.clone()),
                            labels: Some(BTreeMap::from([(
                                MANAGED_BY_LABEL.to_string(),
                                MANAGED_BY.to_string(),
                            )])),
                            ..Default::default()
                        },
                        type_: Some("kubernetes.io/tls".into()),
                        data: Some(provision::tls_data(&self.ca.pair.cert_pem, &cert)),
                        ..Default::default()
                    };
                    self.apply(&agent_key, &secret).await;
                }
                Err(e) => tracing::error!(error = %e, "cannot issue the node agents' certificate"),
            }
        }

        // Dedicated Gateways.
        for (k, (_, params)) in &live.plan.dedicated {
            let Some(gw) = live.gateways.get(k) else {
                continue;
            };
            if gw.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let scope = Scope::Gateway(k.namespace.clone(), k.name.clone());
            let sk = Key::new(&k.namespace, &provision::agent_secret_name(&k.name));
            if !live
                .managed_secrets
                .get(&sk)
                .is_some_and(|(_, s)| valid(s, &scope.common_name()))
            {
                match self.ca.issue_client(&scope.common_name()) {
                    Ok(cert) => {
                        let s = provision::agent_secret(gw, &self.ca.pair.cert_pem, &cert);
                        self.apply(&sk, &s).await;
                    }
                    Err(e) => {
                        tracing::error!(gateway = %k, error = %e, "cannot issue the proxy certificate")
                    }
                }
            }
            let name = proxy_name(&k.name);
            let dk = Key::new(&k.namespace, &name);
            let mut d = provision::deployment(gw, params, &self.opts.provision);
            let h = config_hash(&d);
            if live
                .managed_deployments
                .get(&dk)
                .and_then(|x| x.0.as_deref())
                != Some(h.as_str())
            {
                d.metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(CONFIG_HASH_ANNOTATION.into(), h);
                self.apply(&dk, &d).await;
            }
            let mut s = provision::service(gw, params);
            let h = config_hash(&s);
            if live.managed_services.get(&dk).and_then(|x| x.0.as_deref()) != Some(h.as_str()) {
                s.metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(CONFIG_HASH_ANNOTATION.into(), h);
                self.apply(&dk, &s).await;
            }
        }

        // Objects of Gateways that are gone or no longer dedicated (owner references let the
        // garbage collector do this too when the controller is down).
        let wanted = |k: &Key, gw_label: &Option<String>| {
            gw_label
                .as_ref()
                .is_some_and(|g| live.plan.dedicated.contains_key(&Key::new(&k.namespace, g)))
        };
        for (k, (_, g)) in &live.managed_deployments {
            if g.is_some() && !wanted(k, g) {
                self.delete::<Deployment>(k).await;
            }
        }
        for (k, (_, g)) in &live.managed_services {
            if g.is_some() && !wanted(k, g) {
                self.delete::<Service>(k).await;
            }
        }
        for (k, (g, _)) in &live.managed_secrets {
            if g.is_some() && !wanted(k, g) {
                self.delete::<Secret>(k).await;
            }
        }
    }

    async fn apply<K>(&self, key: &Key, obj: &K)
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Serialize
            + DeserializeOwned
            + Clone
            + Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &key.namespace);
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch(&key.name, &pp, &Patch::Apply(obj)).await {
            Ok(_) => tracing::info!(kind = %K::kind(&()), object = %key, "applied"),
            Err(e) => {
                tracing::warn!(kind = %K::kind(&()), object = %key, error = %e, "apply failed; retrying on the next reconcile")
            }
        }
    }

    async fn delete<K>(&self, key: &Key)
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + DeserializeOwned
            + Clone
            + Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &key.namespace);
        match api.delete(&key.name, &DeleteParams::background()).await {
            Ok(_) => {
                tracing::info!(kind = %K::kind(&()), object = %key, "deleted: its Gateway is gone or no longer dedicated")
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                tracing::warn!(kind = %K::kind(&()), object = %key, error = %e, "delete failed; retrying on the next reconcile")
            }
        }
    }
}
