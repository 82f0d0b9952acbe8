//! Agent and controller over real sockets: the controller (against the scripted API server)
//! streams snapshots over mutual TLS to an agent driving the real proxy, which serves real
//! HTTP the whole time: through a controller restart, while the controller is away, and after
//! it comes back with a changed configuration. Agents without a certificate from the
//! controller's CA get nothing.

mod k8s_support;

use k8s_support::{FakeApi, eventually};
use serde_json::json;
use sluice_controller::provider::kubernetes::{Controller, ControllerOptions};
use sluice_controller::publish::agent::{self, AgentOptions, Applied, SnapshotSink};
use sluice_controller::publish::tls::{Ca, CertKey};
use sluice_ir::Snapshot;
use sluice_ir::status::StatusReport;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GW: &str = "gateway.networking.k8s.io/v1";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A backend answering every request with its name.
async fn backend(name: &'static str) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from(name)),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// One HTTP/1.1 request; (status, body) or None when the connection failed.
async fn get(port: u16, host: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Some((code, body))
}

/// The proxy as the agent's sink, recording what it applied.
#[derive(Clone)]
struct ProxySink {
    proxy: sluice_proxy::Proxy,
    applied: Arc<Mutex<Vec<u64>>>,
    status: Arc<Mutex<StatusReport>>,
}

impl SnapshotSink for ProxySink {
    async fn apply(&self, snapshot: Snapshot) -> Applied {
        let v = snapshot.version;
        let r = self.proxy.apply(snapshot).await;
        if r.applied {
            self.applied.lock().unwrap().push(v);
        }
        Applied {
            applied: r.applied,
            errors: r.validation_errors.iter().map(|e| e.to_string()).collect(),
            listener_errors: r.listener_errors,
        }
    }
    fn show_status(&self, status: StatusReport, _: &Snapshot, _: &BTreeMap<String, String>) {
        *self.status.lock().unwrap() = status;
    }
}

fn seed(api: &FakeApi, gw_port: u16, backend: SocketAddr) {
    for ns in ["sluice-system", "infra", "team-a"] {
        api.put(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    api.put(
        json!({"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": "sluice"},
        "spec": {"controllerName": "sluice.dev/gateway-controller"}}),
    );
    api.put(json!({"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "shared", "namespace": "infra"},
        "spec": {"gatewayClassName": "sluice", "listeners": [{"name": "http", "port": gw_port, "protocol": "HTTP",
            "allowedRoutes": {"namespaces": {"from": "All"}}}]}}));
    api.put(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "team-a"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "targetPort": backend.port(), "protocol": "TCP"}]}}));
    api.put(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "team-a", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": backend.port(), "protocol": "TCP"}]}));
    api.put(route("app", &["app.example"]));
}

fn route(name: &str, hosts: &[&str]) -> serde_json::Value {
    json!({"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": name, "namespace": "team-a"},
        "spec": {"parentRefs": [{"name": "shared", "namespace": "infra"}], "hostnames": hosts,
            "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}})
}

fn options(identity: &str, stream_port: u16) -> ControllerOptions {
    let mut o = ControllerOptions::new("sluice-system", identity);
    o.stream_listen = SocketAddr::from(([127, 0, 0, 1], stream_port));
    o.translate.address_pool = vec!["127.0.0.1".parse().unwrap()];
    o.debounce = Duration::from_millis(20);
    o.watch.backoff_initial = Duration::from_millis(50);
    o.lease.lease_duration = Duration::from_secs(2);
    o.lease.renew_deadline = Duration::from_millis(1500);
    o.lease.retry_period = Duration::from_millis(200);
    o
}

fn secret_pair(api: &FakeApi, name: &str) -> (String, CertKey) {
    let s = api.get("v1", "Secret", "sluice-system", name).unwrap();
    let field = |k: &str| {
        use base64_decode as d;
        d(s["data"][k].as_str().unwrap())
    };
    (
        field("ca.crt"),
        CertKey {
            cert_pem: field("tls.crt"),
            key_pem: field("tls.key"),
        },
    )
}

/// Minimal base64 (standard alphabet) for reading Secret data.
fn base64_decode(s: &str) -> String {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut n: u32 = 0;
        for (i, c) in chunk.iter().enumerate() {
            n |= u32::from(val(*c)) << (18 - 6 * i);
        }
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_serves_through_controller_restart_and_picks_up_changes() {
    let api = FakeApi::start(1).await;
    let b = backend("backend-1").await;
    let gw_port = free_port();
    let stream_port = free_port();
    seed(&api, gw_port, b);
    let c = Controller::start(api.client(0), options("c1", stream_port))
        .await
        .unwrap();
    eventually(10, "agent certificate issued", || {
        api.get("v1", "Secret", "sluice-system", "sluice-agent-tls")
    })
    .await;
    let (ca_pem, identity) = secret_pair(&api, "sluice-agent-tls");

    let proxy = sluice_proxy::Proxy::start(sluice_proxy::ProxyOptions {
        workers: 1,
        ..Default::default()
    })
    .unwrap();
    let sink = ProxySink {
        proxy: proxy.clone(),
        applied: Arc::default(),
        status: Arc::default(),
    };
    let mut opts = AgentOptions::new(
        &format!("https://127.0.0.1:{stream_port}"),
        &ca_pem,
        identity,
        "node-1",
    );
    opts.server_name = Some("sluice-controller.sluice-system.svc".into());
    opts.backoff_initial = Duration::from_millis(100);
    opts.backoff_max = Duration::from_millis(500);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent_task = tokio::spawn(agent::run(opts, sink.clone(), async move {
        let _ = stop_rx.await;
    }));

    // The snapshot arrives and is served.
    let (code, body) = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Some(r) = get(gw_port, "app.example").await.filter(|(c, _)| *c == 200) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("never served through the proxy");
    assert_eq!((code, body.as_str()), (200, "backend-1"));
    // The acknowledgement makes the Gateway Programmed.
    eventually(10, "Programmed=True from the agent's ack", || {
        let g = api.get(GW, "Gateway", "infra", "shared")?;
        g["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Programmed" && c["status"] == "True")
            .then_some(())
    })
    .await;
    // The agent's /status shows what the controller computed.
    assert!(
        sink.status
            .lock()
            .unwrap()
            .get("HTTPRoute", "team-a", "app")
            .is_some()
    );
    let first_versions = sink.applied.lock().unwrap().clone();
    assert_eq!(first_versions.len(), 1, "{first_versions:?}");

    // The controller goes away; the agent keeps serving its last snapshot.
    c.shutdown().await;
    api.put(route("app", &["app.example", "new.example"]));
    for _ in 0..10 {
        let r = get(gw_port, "app.example").await;
        assert_eq!(
            r.map(|x| x.0),
            Some(200),
            "a request failed while the controller was away"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(gw_port, "new.example").await.map(|x| x.0), Some(404));

    // A new controller (same CA from its Secret, new versions) comes back: the agent
    // reconnects and gets the change; requests never fail.
    let c2 = Controller::start(api.client(0), options("c2", stream_port))
        .await
        .unwrap();
    let poll = async {
        loop {
            let r = get(gw_port, "app.example").await;
            assert_eq!(
                r.map(|x| x.0),
                Some(200),
                "a request failed during the reconnect"
            );
            if get(gw_port, "new.example").await.map(|x| x.0) == Some(200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), poll)
        .await
        .expect("the change made while the controller was away was never served");
    let versions = sink.applied.lock().unwrap().clone();
    assert!(
        versions.len() >= 2 && versions.windows(2).all(|w| w[0] < w[1]),
        "versions must increase: {versions:?}"
    );
    c2.shutdown().await;
    let _ = stop_tx.send(());
    let _ = agent_task.await;
    proxy.shutdown(Duration::from_secs(1)).await;
}

/// A sink that only counts what it is given.
#[derive(Clone, Default)]
struct Counting(Arc<Mutex<usize>>);

impl SnapshotSink for Counting {
    async fn apply(&self, _snapshot: Snapshot) -> Applied {
        *self.0.lock().unwrap() += 1;
        Applied {
            applied: true,
            ..Default::default()
        }
    }
    fn show_status(&self, _: StatusReport, _: &Snapshot, _: &BTreeMap<String, String>) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_without_a_certificate_from_the_controller_ca_get_nothing() {
    let api = FakeApi::start(1).await;
    let b = backend("backend-1").await;
    let stream_port = free_port();
    seed(&api, free_port(), b);
    let c = Controller::start(api.client(0), options("c1", stream_port))
        .await
        .unwrap();
    eventually(10, "agent certificate issued", || {
        api.get("v1", "Secret", "sluice-system", "sluice-agent-tls")
    })
    .await;
    let (ca_pem, good) = secret_pair(&api, "sluice-agent-tls");
    let rogue_ca = Ca::generate().unwrap();
    let cases = [
        (
            "a certificate from another CA",
            rogue_ca.issue_client("sluice-agent").unwrap(),
        ),
        (
            "a certificate of our CA naming no scope",
            c.ca.issue_client("admin").unwrap(),
        ),
    ];
    let run = |identity: CertKey| {
        let sink = Counting::default();
        let mut opts = AgentOptions::new(
            &format!("https://127.0.0.1:{stream_port}"),
            &ca_pem,
            identity,
            "intruder",
        );
        opts.server_name = Some("sluice-controller".into());
        opts.backoff_initial = Duration::from_millis(100);
        let s = sink.clone();
        let t = tokio::spawn(agent::run(
            opts,
            s,
            tokio::time::sleep(Duration::from_secs(3)),
        ));
        (sink, t)
    };
    let mut runs = Vec::new();
    for (what, id) in cases {
        runs.push((what, run(id)));
    }
    let (good_sink, good_task) = run(good);
    for (what, (sink, t)) in runs {
        t.await.unwrap();
        assert_eq!(
            *sink.0.lock().unwrap(),
            0,
            "an agent with {what} got a snapshot"
        );
    }
    good_task.await.unwrap();
    assert!(
        *good_sink.0.lock().unwrap() >= 1,
        "the genuine agent got nothing"
    );
    c.shutdown().await;
}
