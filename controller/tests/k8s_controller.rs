//! The cluster controller against a scripted API server speaking the real Kubernetes JSON:
//! initial list, watch add/modify/delete, resync after 410 Gone and dropped streams, status
//! patches only on change, leader election handover, provisioning of dedicated Gateways,
//! ReferenceGrant revocation.

mod k8s_support;

use k8s_support::{FakeApi, eventually};
use serde_json::{Value, json};
use sluice_controller::provider::kubernetes::{Controller, ControllerOptions, Observed};
use sluice_controller::publish::Scope;
use sluice_ir::status::ConditionStatus;
use std::sync::Arc;
use std::time::Duration;

const GW: &str = "gateway.networking.k8s.io/v1";

fn options(identity: &str) -> ControllerOptions {
    let mut o = ControllerOptions::new("sluice-system", identity);
    o.stream_listen = "127.0.0.1:0".parse().unwrap();
    o.debounce = Duration::from_millis(20);
    o.watch.backoff_initial = Duration::from_millis(50);
    o.watch.backoff_max = Duration::from_millis(400);
    o.lease.lease_duration = Duration::from_secs(2);
    o.lease.renew_deadline = Duration::from_millis(1500);
    o.lease.retry_period = Duration::from_millis(200);
    o
}

fn class(name: &str, params: Option<&str>) -> Value {
    let mut spec = json!({"controllerName": "sluice.dev/gateway-controller"});
    if let Some(p) = params {
        spec["parametersRef"] =
            json!({"group": "", "kind": "ConfigMap", "name": p, "namespace": "sluice-system"});
    }
    json!({"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": name}, "spec": spec})
}

fn gateway(ns: &str, name: &str, class: &str, port: u16) -> Value {
    json!({"apiVersion": GW, "kind": "Gateway", "metadata": {"name": name, "namespace": ns},
        "spec": {"gatewayClassName": class, "listeners": [
            {"name": "http", "port": port, "protocol": "HTTP",
             "allowedRoutes": {"namespaces": {"from": "All"}}}]}})
}

fn route(ns: &str, name: &str, gw_ns: &str, gw: &str, host: &str, backend_ns: &str) -> Value {
    json!({"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": name, "namespace": ns},
        "spec": {"parentRefs": [{"name": gw, "namespace": gw_ns}], "hostnames": [host],
            "rules": [{"backendRefs": [{"name": "web", "namespace": backend_ns, "port": 80}]}]}})
}

fn service(ns: &str, name: &str, ip: &str, port: u16) -> [Value; 2] {
    [
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "targetPort": port, "protocol": "TCP"}]}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-1"), "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}),
    ]
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

/// The basic world: class, namespaces, a shared Gateway and a Service with one endpoint.
fn seed(api: &FakeApi) {
    for ns in ["sluice-system", "infra", "team-a", "team-b"] {
        api.put(namespace(ns));
    }
    api.put(class("sluice", None));
    api.put(gateway("infra", "shared", "sluice", 8080));
    for o in service("team-a", "web", "10.0.0.5", 8080) {
        api.put(o);
    }
}

async fn observe(
    c: &Controller,
    what: &str,
    mut f: impl FnMut(&Observed) -> bool,
) -> Arc<Observed> {
    let mut rx = c.observed();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        {
            let o = rx.borrow_and_update().clone();
            if o.reconciles > 0 && f(&o) {
                return o;
            }
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            let o = rx.borrow().clone();
            panic!(
                "timed out waiting for: {what}\nlast status: {}",
                serde_json::to_string_pretty(&o.status).unwrap()
            );
        }
    }
}

/// Hostnames served by the shared data plane.
fn hosts(o: &Observed) -> Vec<String> {
    o.snapshots
        .get(&Scope::Shared)
        .map(|s| {
            s.listeners
                .iter()
                .flat_map(|l| l.virtual_hosts.iter().map(|v| v.hostname.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn parent_condition(
    o: &Observed,
    ns: &str,
    name: &str,
    ty: &str,
) -> Option<(ConditionStatus, String)> {
    let rs = o.status.get("HTTPRoute", ns, name)?;
    let c = rs
        .parents
        .first()?
        .conditions
        .iter()
        .find(|c| c.type_ == ty)?;
    Some((c.status, c.reason.clone()))
}

#[tokio::test]
async fn list_watch_and_resync_after_gone_and_dropped_streams() {
    let api = FakeApi::start(1).await;
    seed(&api);
    api.put(route(
        "team-a",
        "one",
        "infra",
        "shared",
        "one.example",
        "team-a",
    ));
    let c = Controller::start(api.client(0), options("c1"))
        .await
        .unwrap();

    // Initial list.
    observe(&c, "route one served", |o| hosts(o) == ["one.example"]).await;
    // The watch started from the list's resourceVersion with bookmarks.
    let watches: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/httproutes") && r.query.contains("watch=true"))
        .collect();
    assert!(!watches.is_empty(), "no HTTPRoute watch was opened");
    assert!(
        watches[0].query.contains("resourceVersion="),
        "{:?}",
        watches[0]
    );
    assert!(
        watches[0].query.contains("allowWatchBookmarks=true"),
        "{:?}",
        watches[0]
    );

    // Watch: add, modify, delete.
    api.put(route(
        "team-a",
        "two",
        "infra",
        "shared",
        "two.example",
        "team-a",
    ));
    observe(&c, "route two added", |o| {
        hosts(o).contains(&"two.example".to_string())
    })
    .await;
    api.put(route(
        "team-a",
        "two",
        "infra",
        "shared",
        "zwei.example",
        "team-a",
    ));
    observe(&c, "route two modified", |o| {
        let h = hosts(o);
        h.contains(&"zwei.example".to_string()) && !h.contains(&"two.example".to_string())
    })
    .await;
    api.delete(GW, "HTTPRoute", "team-a", "two", false);
    observe(&c, "route two deleted", |o| hosts(o) == ["one.example"]).await;

    // The watch breaks while a route is deleted and history is compacted: the watcher gets
    // 410 Gone on resume, lists again and forgets the deleted route.
    let lists_before = api
        .requests()
        .iter()
        .filter(|r| {
            r.method == "GET" && r.path.ends_with("/httproutes") && !r.query.contains("watch=true")
        })
        .count();
    api.delete(GW, "HTTPRoute", "team-a", "one", true);
    api.drop_watches();
    observe(&c, "route one gone after the re-list", |o| {
        hosts(o).is_empty()
    })
    .await;
    let lists_after = api
        .requests()
        .iter()
        .filter(|r| {
            r.method == "GET" && r.path.ends_with("/httproutes") && !r.query.contains("watch=true")
        })
        .count();
    assert!(
        lists_after > lists_before,
        "the HTTPRoute watcher did not list again"
    );

    // 410 Gone on the next watches: events in between are not lost.
    api.expire_next_watches(3);
    api.drop_watches();
    api.put(route(
        "team-a",
        "three",
        "infra",
        "shared",
        "three.example",
        "team-a",
    ));
    observe(&c, "route three after expired watches", |o| {
        hosts(o) == ["three.example"]
    })
    .await;

    // The Gateway's status survives a controller restart unchanged (it is recomputed).
    let gw_status = eventually(10, "gateway status written", || {
        api.get(GW, "Gateway", "infra", "shared")
            .and_then(|g| g.get("status").cloned())
            .filter(|s| s["listeners"][0]["attachedRoutes"] == 1)
    })
    .await;
    c.shutdown().await;
    let patches = api.count("PATCH", "/status");
    let c2 = Controller::start(api.client(0), options("c2"))
        .await
        .unwrap();
    observe(&c2, "route three after restart", |o| {
        hosts(o) == ["three.example"]
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let after = api.get(GW, "Gateway", "infra", "shared").unwrap()["status"].clone();
    assert_eq!(after["listeners"], gw_status["listeners"]);
    assert_eq!(after["addresses"], gw_status["addresses"]);
    let ltt = |s: &Value| {
        s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["lastTransitionTime"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ltt(&after),
        ltt(&gw_status),
        "transition times must survive a restart"
    );
    let _ = patches;
    c2.shutdown().await;
}

#[tokio::test]
async fn status_is_patched_only_when_it_changes() {
    let api = FakeApi::start(1).await;
    seed(&api);
    api.put(route(
        "team-a",
        "web",
        "infra",
        "shared",
        "web.example",
        "team-a",
    ));
    // Another controller's parent entry must survive our writes.
    let theirs = json!({"parentRef": {"group": GW.split('/').next().unwrap(), "kind": "Gateway", "name": "elsewhere"},
        "controllerName": "example.com/other-controller",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
            "observedGeneration": 1, "lastTransitionTime": "2020-01-01T00:00:00Z"}]});
    api.set_status(
        GW,
        "HTTPRoute",
        "team-a",
        "web",
        json!({"parents": [theirs]}),
    );
    api.put(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "sluice"}, "spec": {"controller": "sluice.dev/ingress-controller"}}),
    );
    api.put(json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "legacy", "namespace": "team-a"},
        "spec": {"ingressClassName": "sluice", "rules": [{"host": "legacy.example", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}));
    let c = Controller::start(api.client(0), options("c1"))
        .await
        .unwrap();
    eventually(10, "leader", || c.is_leader().then_some(())).await;
    // Ingress status.loadBalancer carries the address Ingress is served on.
    eventually(10, "Ingress status.loadBalancer", || {
        let i = api.get("networking.k8s.io/v1", "Ingress", "team-a", "legacy")?;
        (i["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.0.0.1").then_some(())
    })
    .await;

    let route_status = eventually(10, "route status written", || {
        api.get(GW, "HTTPRoute", "team-a", "web")
            .map(|r| r["status"]["parents"].clone())
            .filter(|p| p.as_array().is_some_and(|a| a.len() == 2))
    })
    .await;
    assert_eq!(
        route_status[0], theirs,
        "the other controller's entry was changed"
    );
    assert_eq!(
        route_status[1]["controllerName"],
        "sluice.dev/gateway-controller"
    );
    let accepted = route_status[1]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Accepted")
        .unwrap()
        .clone();
    assert_eq!(accepted["status"], "True");
    assert_eq!(accepted["observedGeneration"], 1);
    let class = api.get(GW, "GatewayClass", "", "sluice").unwrap();
    assert_eq!(class["status"]["conditions"][0]["type"], "Accepted");
    assert_eq!(class["status"]["conditions"][0]["status"], "True");

    // Quiet: nothing more is written, even though every write came back as a watch event and
    // the periodic resync ran.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let settled = api.count("PATCH", "/status");
    assert!(
        settled >= 3,
        "expected class, gateway and route status writes, got {settled}"
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        api.count("PATCH", "/status"),
        settled,
        "status was re-written without a change"
    );

    // A change that touches no status (a label on the Service) writes nothing.
    let mut svc = api.get("v1", "Service", "team-a", "web").unwrap();
    svc["metadata"]["labels"] = json!({"tier": "frontend"});
    api.put(svc);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(api.count("PATCH", "/status"), settled);

    // Breaking the route's backend changes exactly the route's status: one patch, with the
    // Accepted condition's transition time kept and ResolvedRefs flipped.
    let mut r = route("team-a", "web", "infra", "shared", "web.example", "team-a");
    r["spec"]["rules"][0]["backendRefs"][0]["name"] = json!("missing");
    api.put(r);
    let parents = eventually(10, "ResolvedRefs=False written", || {
        let p = api.get(GW, "HTTPRoute", "team-a", "web")?["status"]["parents"].clone();
        let ours = p
            .as_array()?
            .iter()
            .find(|x| x["controllerName"] == "sluice.dev/gateway-controller")?
            .clone();
        let rr = ours["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "ResolvedRefs")?
            .clone();
        (rr["status"] == "False").then_some((p, ours))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let route_patches = api
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.contains("/httproutes/web/status"))
        .count();
    assert_eq!(route_patches, 2, "one patch initially, one for the change");
    let patched: Vec<String> = api
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/status"))
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(patched.len(), settled + 1, "{patched:#?}");
    let (all, ours) = parents;
    assert_eq!(all[0], theirs);
    let acc = ours["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Accepted")
        .unwrap();
    assert_eq!(acc["lastTransitionTime"], accepted["lastTransitionTime"]);
    assert_eq!(acc["observedGeneration"], 2);
    c.shutdown().await;
}

#[tokio::test]
async fn one_leader_writes_and_hands_over() {
    let api = FakeApi::start(2).await;
    seed(&api);
    api.put(route(
        "team-a",
        "web",
        "infra",
        "shared",
        "web.example",
        "team-a",
    ));
    let a = Controller::start(api.client(0), options("a"))
        .await
        .unwrap();
    let b = Controller::start(api.client(1), options("b"))
        .await
        .unwrap();
    let leader = eventually(10, "a leader", || match (a.is_leader(), b.is_leader()) {
        (true, false) => Some(0),
        (false, true) => Some(1),
        _ => None,
    })
    .await;
    // Both translate; only the leader writes.
    observe(&a, "a translated", |o| hosts(o) == ["web.example"]).await;
    observe(&b, "b translated", |o| hosts(o) == ["web.example"]).await;
    eventually(10, "status written", || {
        (api.count("PATCH", "/status") >= 3).then_some(())
    })
    .await;
    let writers = |api: &FakeApi| {
        let mut w: Vec<usize> = api
            .requests()
            .iter()
            .filter(|r| r.method == "PATCH")
            .map(|r| r.listener)
            .collect();
        w.sort();
        w.dedup();
        w
    };
    assert_eq!(writers(&api), vec![leader], "the standby wrote");
    for _ in 0..10 {
        assert!(!(a.is_leader() && b.is_leader()), "two leaders");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The leader dies without releasing: the standby takes over after the lease expires and
    // its writes follow.
    let (dead, standby) = if leader == 0 { (a, b) } else { (b, a) };
    dead.kill();
    let t0 = std::time::Instant::now();
    eventually(10, "standby takes over", || {
        standby.is_leader().then_some(())
    })
    .await;
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "took over before the lease expired: {:?}",
        t0.elapsed()
    );
    let lease = api
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            "sluice-system",
            "sluice-controller",
        )
        .unwrap();
    let next = if leader == 0 { "b" } else { "a" };
    assert_eq!(lease["spec"]["holderIdentity"], next);
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    let mut r = route("team-a", "web", "infra", "shared", "web.example", "team-a");
    r["spec"]["rules"][0]["backendRefs"][0]["name"] = json!("missing");
    api.put(r);
    eventually(10, "new leader writes", || {
        api.requests()
            .iter()
            .any(|r| r.method == "PATCH" && r.listener != leader)
            .then_some(())
    })
    .await;

    // A graceful stop releases the lease: a fresh candidate takes over at once.
    let c = Controller::start(api.client(leader), options("c"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!c.is_leader());
    standby.shutdown().await;
    let t0 = std::time::Instant::now();
    eventually(10, "c takes over", || c.is_leader().then_some(())).await;
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "released lease not taken at once: {:?}",
        t0.elapsed()
    );
    c.shutdown().await;
}

#[tokio::test]
async fn dedicated_gateways_get_a_proxy_deployment_and_service() {
    let api = FakeApi::start(1).await;
    seed(&api);
    api.put(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "dedicated", "namespace": "sluice-system"},
        "data": {"mode": "dedicated", "replicas": "2", "resources": "requests: {cpu: 100m, memory: 64Mi}"}}));
    api.put(class("sluice-dedicated", Some("dedicated")));
    let mut gw = gateway("team-b", "edge", "sluice-dedicated", 80);
    gw["spec"]["infrastructure"] = json!({"labels": {"team": "b"}});
    api.put(gw);
    api.put(route(
        "team-b",
        "edge",
        "team-b",
        "edge",
        "b.example",
        "team-a",
    ));
    api.put(json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
        "metadata": {"name": "from-b", "namespace": "team-a"},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "team-b"}],
                 "to": [{"group": "", "kind": "Service"}]}}));
    let c = Controller::start(api.client(0), options("c1"))
        .await
        .unwrap();

    let deploy = eventually(10, "proxy Deployment", || {
        api.get("apps/v1", "Deployment", "team-b", "sluice-edge")
    })
    .await;
    let gw_uid = api.get(GW, "Gateway", "team-b", "edge").unwrap()["metadata"]["uid"].clone();
    let owner = &deploy["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Gateway");
    assert_eq!(owner["uid"], gw_uid);
    assert_eq!(owner["controller"], true);
    assert_eq!(deploy["spec"]["replicas"], 2);
    assert_eq!(deploy["metadata"]["labels"]["team"], "b");
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["resources"]["requests"]["cpu"], "100m");
    assert_eq!(container["args"][0], "agent");
    let svc = eventually(10, "proxy Service", || {
        api.get("v1", "Service", "team-b", "sluice-edge")
    })
    .await;
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["metadata"]["ownerReferences"][0]["uid"], gw_uid);
    let secret = eventually(10, "proxy certificate", || {
        api.get("v1", "Secret", "team-b", "sluice-edge-tls")
    })
    .await;
    assert!(secret["data"]["tls.crt"].is_string());
    // The shared agents' certificate exists too.
    eventually(10, "agent certificate", || {
        api.get("v1", "Secret", "sluice-system", "sluice-agent-tls")
    })
    .await;

    // Its own snapshot, bound on the pod's wildcard address; the shared one does not have it.
    let o = observe(&c, "dedicated snapshot", |o| {
        o.snapshots
            .contains_key(&Scope::Gateway("team-b".into(), "edge".into()))
    })
    .await;
    let ded = &o.snapshots[&Scope::Gateway("team-b".into(), "edge".into())];
    assert_eq!(ded.listeners.len(), 1);
    assert_eq!(ded.listeners[0].name, "tcp:0.0.0.0:80");
    assert!(!hosts(&o).contains(&"b.example".to_string()));

    // No address yet: Programmed=False, AddressNotAssigned.
    let gst = eventually(10, "AddressNotAssigned", || {
        let s = api.get(GW, "Gateway", "team-b", "edge")?["status"].clone();
        let p = s["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Programmed")?
            .clone();
        (p["reason"] == "AddressNotAssigned").then_some(s)
    })
    .await;
    assert_eq!(
        gst["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Accepted")
            .unwrap()["status"],
        "True"
    );
    // The cloud assigns one: it becomes the Gateway's address.
    api.set_status(
        "v1",
        "Service",
        "team-b",
        "sluice-edge",
        json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}),
    );
    eventually(10, "address from the LoadBalancer", || {
        let s = api.get(GW, "Gateway", "team-b", "edge")?["status"].clone();
        (s["addresses"] == json!([{"type": "IPAddress", "value": "203.0.113.7"}])).then_some(())
    })
    .await;

    // Applied once: re-reconciles do not re-apply.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let applies = api.count("PATCH", "/deployments/");
    assert_eq!(applies, 1, "the Deployment was applied more than once");

    // A spec change re-applies the Deployment (ports follow the listeners).
    let mut gw = gateway("team-b", "edge", "sluice-edge-unused", 80);
    gw = api
        .get(GW, "Gateway", "team-b", "edge")
        .map(|mut g| {
            g["spec"]["listeners"] = json!([{"name": "http", "port": 8081, "protocol": "HTTP"}]);
            g
        })
        .unwrap_or(gw);
    api.put(gw);
    eventually(10, "Deployment follows the listeners", || {
        let d = api.get("apps/v1", "Deployment", "team-b", "sluice-edge")?;
        (d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] == 8081)
            .then_some(())
    })
    .await;

    // Deleting the Gateway deletes what was provisioned for it.
    api.delete(GW, "Gateway", "team-b", "edge", false);
    eventually(10, "provisioned objects deleted", || {
        (api.get("apps/v1", "Deployment", "team-b", "sluice-edge")
            .is_none()
            && api.get("v1", "Service", "team-b", "sluice-edge").is_none()
            && api
                .get("v1", "Secret", "team-b", "sluice-edge-tls")
                .is_none())
        .then_some(())
    })
    .await;
    c.shutdown().await;
}

#[tokio::test]
async fn revoking_a_reference_grant_removes_the_cross_namespace_backend() {
    let api = FakeApi::start(1).await;
    seed(&api);
    // A route in team-b sends to a Service in team-a, allowed by a ReferenceGrant in team-a.
    api.put(route(
        "team-b",
        "cross",
        "infra",
        "shared",
        "cross.example",
        "team-a",
    ));
    api.put(json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
        "metadata": {"name": "from-b", "namespace": "team-a"},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "team-b"}],
                 "to": [{"group": "", "kind": "Service"}]}}));
    let c = Controller::start(api.client(0), options("c1"))
        .await
        .unwrap();
    let backend_cluster = |o: &Observed| -> Option<Option<String>> {
        let s = o.snapshots.get(&Scope::Shared)?;
        let vh = s
            .listeners
            .iter()
            .flat_map(|l| l.virtual_hosts.iter())
            .find(|v| v.hostname == "cross.example")?;
        let r = vh.routes.first()?;
        Some(r.backends.first().and_then(|b| b.cluster.clone()))
    };
    let o = observe(&c, "cross-namespace backend allowed", |o| {
        backend_cluster(o).flatten().is_some()
    })
    .await;
    let cluster = backend_cluster(&o).flatten().unwrap();
    assert!(
        o.snapshots[&Scope::Shared]
            .cluster(&cluster)
            .is_some_and(|c| !c.endpoints.is_empty())
    );
    assert_eq!(
        parent_condition(&o, "team-b", "cross", "ResolvedRefs")
            .unwrap()
            .0,
        ConditionStatus::True
    );
    eventually(10, "ResolvedRefs=True written", || {
        let p = api.get(GW, "HTTPRoute", "team-b", "cross")?["status"]["parents"][0]["conditions"]
            .clone();
        p.as_array()?
            .iter()
            .any(|c| c["type"] == "ResolvedRefs" && c["status"] == "True")
            .then_some(())
    })
    .await;

    api.delete(
        "gateway.networking.k8s.io/v1beta1",
        "ReferenceGrant",
        "team-a",
        "from-b",
        false,
    );
    let o = observe(&c, "backend refused after revocation", |o| {
        backend_cluster(o).is_some_and(|c| c.is_none())
    })
    .await;
    assert_eq!(
        parent_condition(&o, "team-b", "cross", "ResolvedRefs").unwrap(),
        (ConditionStatus::False, "RefNotPermitted".to_string())
    );
    eventually(10, "RefNotPermitted written", || {
        let p = api.get(GW, "HTTPRoute", "team-b", "cross")?["status"]["parents"][0]["conditions"]
            .clone();
        p.as_array()?
            .iter()
            .any(|c| c["type"] == "ResolvedRefs" && c["reason"] == "RefNotPermitted")
            .then_some(())
    })
    .await;
    c.shutdown().await;
}
