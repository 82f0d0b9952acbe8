//! Translation time (store to IR snapshot and status) with 10 and 10,000 HTTPRoutes. The store
//! is generated: one Gateway with an HTTP and an HTTPS listener, routes spread over 10
//! namespaces, each with its own hostname, two rules (an exact path and a prefix with a header
//! match and a header modifier) and its own Service with an EndpointSlice of three endpoints,
//! plus one catch-all route without hostname. `translate-one-service` is the peer benchmark's
//! route table: one listener, routes of one hostname and one rule, all to one Service.

// The `sluice` binary allocates with mimalloc; so do its benchmarks.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use sluice_controller::resources::Object;
use sluice_controller::{Resources, TranslateOptions, translate};
use std::hint::black_box;

const CERT: &str = include_str!("../../controller/testdata/certs/example.crt");
const KEY: &str = include_str!("../../controller/testdata/certs/example.key");

fn insert(res: &mut Resources, v: Value) {
    let obj = Object::from_value(v)
        .expect("generated object is valid")
        .expect("generated kind is known");
    res.insert(obj, None).expect("generated names are unique");
}

fn route(i: usize, ns: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": format!("route-{i}"), "namespace": ns,
                     "creationTimestamp": format!("2024-01-01T00:{:02}:{:02}Z", (i / 60) % 60, i % 60)},
        "spec": {
            "parentRefs": [{"name": "gw", "namespace": "infra"}],
            "hostnames": [format!("svc-{i}.example.com")],
            "rules": [
                {"matches": [{"path": {"type": "Exact", "value": "/healthz"}}],
                 "backendRefs": [{"name": format!("svc-{i}"), "port": 80}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": format!("/api/v{}", i % 3)},
                              "headers": [{"name": "x-tenant", "value": format!("t{}", i % 7)}]}],
                 "filters": [{"type": "RequestHeaderModifier",
                              "requestHeaderModifier": {"set": [{"name": "X-Route", "value": format!("{i}")}]}}],
                 "backendRefs": [{"name": format!("svc-{i}"), "port": 80, "weight": 9},
                                 {"name": "shared", "namespace": "infra", "port": 80, "weight": 1}]}
            ]
        }
    })
}

/// A store with the GatewayClass `sluice`, of Sluice's controller.
fn with_class() -> Resources {
    let mut res = Resources::default();
    insert(
        &mut res,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
               "metadata": {"name": "sluice"},
               "spec": {"controllerName": sluice_controller::CONTROLLER_NAME}}),
    );
    res
}

/// A store with `n` HTTPRoutes.
fn store(n: usize) -> Resources {
    let mut res = with_class();
    insert(
        &mut res,
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
               "metadata": {"name": "cert", "namespace": "infra"},
               "stringData": {"tls.crt": CERT, "tls.key": KEY}}),
    );
    insert(
        &mut res,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "gw", "namespace": "infra"},
               "spec": {"gatewayClassName": "sluice", "listeners": [
                   {"name": "http", "port": 80, "protocol": "HTTP",
                    "allowedRoutes": {"namespaces": {"from": "All"}}},
                   {"name": "https", "port": 443, "protocol": "HTTPS",
                    "allowedRoutes": {"namespaces": {"from": "All"}},
                    "tls": {"certificateRefs": [{"name": "cert"}]}}]}}),
    );
    insert(
        &mut res,
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "shared", "namespace": "infra"},
               "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80, "targetPort": 8080}]}}),
    );
    for ns in 0..10 {
        insert(
            &mut res,
            json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
                   "metadata": {"name": format!("from-team-{ns}"), "namespace": "infra"},
                   "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                                      "namespace": format!("team-{ns}")}],
                            "to": [{"group": "", "kind": "Service"}]}}),
        );
    }
    insert(
        &mut res,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "catch-all", "namespace": "infra"},
               "spec": {"parentRefs": [{"name": "gw"}],
                        "rules": [{"backendRefs": [{"name": "shared", "port": 80}]}]}}),
    );
    for i in 0..n {
        let ns = format!("team-{}", i % 10);
        insert(&mut res, route(i, &ns));
        insert(
            &mut res,
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": format!("svc-{i}"), "namespace": ns},
                   "spec": {"clusterIP": format!("10.97.{}.{}", i / 250, i % 250 + 1),
                            "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        );
        insert(
            &mut res,
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": format!("svc-{i}-abc"), "namespace": ns,
                                "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
                   "addressType": "IPv4",
                   "ports": [{"name": "http", "port": 8080}],
                   "endpoints": (0..3).map(|e| json!({"addresses": [format!("10.{}.{}.{}", 100 + e, i / 250, i % 250 + 1)]})).collect::<Vec<_>>()}),
        );
    }
    res
}

/// The route table of the peer benchmark's `reload-*` and `routes-*` scenarios: one Gateway
/// with one HTTP listener, `n` HTTPRoutes with one hostname and one rule each, all sending to
/// one Service.
fn one_service_store(n: usize) -> Resources {
    let mut res = with_class();
    insert(
        &mut res,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "bench", "namespace": "default"},
               "spec": {"gatewayClassName": "sluice", "listeners": [
                   {"name": "http", "port": 80, "protocol": "HTTP"}]}}),
    );
    insert(
        &mut res,
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "backend", "namespace": "default"},
               "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
    );
    insert(
        &mut res,
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "backend-local", "namespace": "default",
                            "labels": {"kubernetes.io/service-name": "backend"}},
               "addressType": "IPv4",
               "ports": [{"name": "http", "port": 8080}],
               "endpoints": [{"addresses": ["127.0.0.1"]}]}),
    );
    for i in 0..n {
        insert(
            &mut res,
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                   "metadata": {"name": format!("r{i}"), "namespace": "default"},
                   "spec": {"parentRefs": [{"name": "bench"}],
                            "hostnames": [format!("r{i}.bench.example")],
                            "rules": [{"backendRefs": [{"name": "backend", "port": 80}]}]}}),
        );
    }
    res
}

fn bench_translate(c: &mut Criterion) {
    let opts = TranslateOptions::default();
    let mut group = c.benchmark_group("translate");
    group.sample_size(10);
    for n in [10usize, 10_000] {
        let res = store(n);
        // The store must translate into what the benchmark claims to measure.
        let t = translate(&res, &opts);
        let entries: usize = t
            .snapshot
            .listeners
            .iter()
            .flat_map(|l| l.virtual_hosts.iter())
            .map(|v| v.routes.len())
            .sum();
        assert!(
            entries >= 2 * 2 * n,
            "expected route entries for every route on both listeners, got {entries}"
        );
        // GatewayClass, Gateway and every route, all accepted.
        assert_eq!(t.status.resources.len(), n + 3);
        let accepted = t
            .status
            .resources
            .iter()
            .flat_map(|r| r.parents.iter())
            .filter(|p| {
                p.conditions
                    .iter()
                    .any(|c| c.type_ == "Accepted" && c.is_true())
            })
            .count();
        assert_eq!(accepted, n + 1);
        group.bench_with_input(BenchmarkId::from_parameter(n), &res, |b, res| {
            b.iter(|| black_box(translate(black_box(res), &opts)))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("translate-one-service");
    group.sample_size(20);
    for n in [10usize, 10_000] {
        let res = one_service_store(n);
        let t = translate(&res, &opts);
        let hosts = t
            .snapshot
            .listeners
            .iter()
            .map(|l| l.virtual_hosts.len())
            .sum::<usize>();
        assert_eq!(hosts, n, "one virtual host per route");
        group.bench_with_input(BenchmarkId::from_parameter(n), &res, |b, res| {
            b.iter(|| black_box(translate(black_box(res), &opts)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_translate);
criterion_main!(benches);
